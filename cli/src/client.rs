//! Sending a command to its targets and collecting the replies: one node, several
//! nodes (one broadcast with a node filter), every alive node or the tagged ones (one
//! broadcast, waiting for exactly the alive members), or one member of a service.
//! Each command goes on its own subject (`cluster.<node>.cmd.<token>`), so that NATS
//! permissions can allow reads and deny writes; a publish the server refuses ends the
//! wait at once with a [`Denial`]. It returns as soon as every expected target
//! answered; never a fixed wait.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use protocol::subjects::CmdTarget;
use protocol::{Command, Reply, Request, Subjects};
use tokio::sync::watch;

/// What the server refused this connection: a publish or a subscription, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// "publish to" or "subscribe to".
    pub action: &'static str,
    pub subject: String,
    /// The server's own words.
    pub message: String,
}

impl Denial {
    /// Reads a server error such as `Permissions Violation for Publish to "x.y"`.
    pub fn parse(message: &str) -> Option<Denial> {
        let rest = message.strip_prefix("Permissions Violation for ")?;
        let (action, rest) = if let Some(r) = rest.strip_prefix("Publish to ") {
            ("publish to", r)
        } else if let Some(r) = rest.strip_prefix("Publish with Reply of ") {
            ("publish with a reply to", r)
        } else if let Some(r) = rest.strip_prefix("Subscription to ") {
            ("subscribe to", r)
        } else {
            return None;
        };
        // The subject may be followed by more words (`using queue "q"`).
        let subject = rest.split_whitespace().next()?.trim_matches('"').to_owned();
        Some(Denial {
            action,
            subject,
            message: message.to_owned(),
        })
    }

    /// What to tell the user.
    pub fn explain(&self) -> String {
        format!(
            "this NATS user may not {} {} (the server said: {}); \
             ask for a user with write permission, or one allowed this subject \
             (see examples/nats-secure.conf)",
            self.action, self.subject, self.message
        )
    }
}

/// A connection to NATS and what the server refused on it so far.
#[derive(Clone)]
pub struct Conn {
    pub client: Client,
    denials: watch::Receiver<Vec<Denial>>,
}

/// Where the connection's event callback reports refusals; see [`Conn::new`].
pub type DenialSender = watch::Sender<Vec<Denial>>;

impl Conn {
    /// The sender goes to the connection's event callback ([`note_server_error`]).
    pub fn channel() -> (DenialSender, watch::Receiver<Vec<Denial>>) {
        watch::channel(Vec::new())
    }

    pub fn new(client: Client, denials: watch::Receiver<Vec<Denial>>) -> Conn {
        Conn { client, denials }
    }

    /// Resolves when the server refuses a publish to, or a subscription to, one of
    /// `subjects`; never otherwise.
    pub async fn denied(&self, subjects: &[&str]) -> Denial {
        let mut rx = self.denials.clone();
        loop {
            let found = rx
                .borrow_and_update()
                .iter()
                .find(|d| subjects.contains(&d.subject.as_str()))
                .cloned();
            if let Some(d) = found {
                return d;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Records a permissions violation the server reported (for the event callback).
pub fn note_server_error(tx: &DenialSender, event: &async_nats::Event) {
    if let async_nats::Event::ServerError(async_nats::ServerError::Other(message)) = event {
        if let Some(d) = Denial::parse(message) {
            tx.send_modify(|all| all.push(d));
        }
    }
}

use protocol::subjects::{HEADER_NODES, HEADER_TAGS};

/// Who a command goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Nodes(Vec<String>),
    /// Every alive member whose tags match all of these (empty: every member).
    Members(Vec<(String, String)>),
    Service(String),
}

/// The replies, and the targets that did not answer with why.
#[derive(Debug, Default)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub missing: Vec<(String, String)>,
    /// What the server did not let this user do.
    pub denied: Vec<Denial>,
    /// Said last, after the errors (for example where a rolling restart stopped).
    pub epilogue: Vec<String>,
}

/// Reads a reply to `command` from its bytes, its data typed as the command's reply
/// kind says; one that does not read becomes an error reply from `from`.
fn decode(payload: &[u8], from: &str, command: &Command) -> Reply {
    command.reply_kind().decode(payload).unwrap_or_else(|e| {
        Reply::error(
            None,
            from,
            protocol::unix_time(),
            protocol::Errno::BadMessage,
            format!("unreadable reply: {e}"),
        )
    })
}

/// Sends one request and waits for one reply.
pub async fn request_one(
    client: &Conn,
    subject: String,
    who: &str,
    req: &Request,
    timeout: Duration,
) -> Outcome {
    request(client, subject, who, req, timeout, None).await
}

/// How long a read-only query to a queue group waits before asking every agent.
const HEDGE_AFTER: Duration = Duration::from_millis(200);

/// How long a read-only query to a queue group asks again while nobody is in the
/// group: the agents that keep the member table join it within a second or two of
/// starting.
const NO_RESPONDERS_GRACE: Duration = Duration::from_secs(2);

/// Sends a read-only request to a queue group and takes the first reply. When none
/// comes within [`HEDGE_AFTER`] the request goes to every agent on `broadcast` (again
/// each [`HEDGE_AFTER`]), and the first answer wins: a stopped or hung member that the
/// server picked never fails the call while another one is alive. While nobody
/// listens, it asks again for [`NO_RESPONDERS_GRACE`]. Only for requests that may run
/// more than once.
pub async fn request_any(
    client: &Conn,
    subject: String,
    broadcast: String,
    who: &str,
    req: &Request,
    timeout: Duration,
) -> Outcome {
    let then = Some((HEDGE_AFTER, broadcast));
    request(client, subject, who, req, timeout, then).await
}

/// Sends `req` on `subject` and, while no reply has come, on `then`'s subject after
/// each of its intervals, until one reply comes or `timeout` ends.
async fn request(
    conn: &Conn,
    subject: String,
    who: &str,
    req: &Request,
    timeout: Duration,
    then: Option<(Duration, String)>,
) -> Outcome {
    let client = &conn.client;
    let payload: bytes::Bytes = serde_json::to_vec(req)
        .expect("a request serializes")
        .into();
    let mut out = Outcome::default();
    let started = Instant::now();
    let deadline = started + timeout;
    let inbox = client.new_inbox();
    let name = req.command.name();
    let sent = async {
        let mut sub = client.subscribe(inbox.clone()).await?;
        let mut to = subject;
        tracing::info!("sending '{name}' to {who} on {to}, replies to {inbox}");
        loop {
            client
                .publish_with_reply(to.clone(), inbox.clone(), payload.clone())
                .await?;
            client.flush().await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = then.as_ref().map_or(left, |(every, _)| left.min(*every));
            let watched = [to.as_str(), inbox.as_str()];
            tokio::select! {
                r = tokio::time::timeout(wait, sub.next()) => {
                    if let Ok(msg) = r {
                        let nobody = msg.as_ref().is_some_and(|m| m.status == Some(NO_RESPONDERS));
                        if nobody {
                            tracing::info!("no responders on {to}");
                        }
                        let grace = started.elapsed() < NO_RESPONDERS_GRACE.min(timeout);
                        if !(nobody && grace && then.is_some()) {
                            return Ok::<_, async_nats::Error>(Ok(msg));
                        }
                        tokio::time::sleep(wait.min(HEDGE_AFTER)).await;
                    }
                }
                d = conn.denied(&watched) => return Ok(Err(d)),
            }
            if Instant::now() >= deadline {
                return Ok(Ok(None));
            }
            if let Some((every, next)) = &then {
                if to == *next {
                    tracing::debug!("still no reply; asking every agent on {next} again");
                } else {
                    tracing::info!(
                        "no reply on {to} within {every:?}; asking every agent on {next}, \
                         the first answer wins"
                    );
                    to.clone_from(next);
                }
            }
        }
    };
    let result = sent.await;
    let took = started.elapsed();
    match result {
        Ok(Err(denial)) => {
            tracing::info!("the server refused after {took:.1?}: {}", denial.message);
            out.denied.push(denial)
        }
        Ok(Ok(Some(msg))) if msg.status == Some(NO_RESPONDERS) => {
            out.missing.push((who.to_owned(), NO_LISTENER.into()))
        }
        Ok(Ok(Some(msg))) => {
            let reply = decode(&msg.payload, who, &req.command);
            log_reply(&reply, took, msg.payload.len());
            out.replies.push(reply)
        }
        Ok(Ok(None)) => {
            tracing::info!("no reply from {who} within {took:.1?}");
            out.missing
                .push((who.to_owned(), no_answer_within(timeout)))
        }
        Err(e) => out
            .missing
            .push((who.to_owned(), format!("could not send the request: {e}"))),
    }
    out
}

/// Logs who answered, how, and how long it took.
fn log_reply(reply: &Reply, took: Duration, bytes: usize) {
    let status = if reply.is_ok() {
        "ok".to_owned()
    } else {
        format!(
            "error: {}",
            reply.reason.as_deref().unwrap_or("no reason given")
        )
    };
    tracing::info!(
        "reply from node {} in {took:.1?} ({bytes} bytes, {status})",
        reply.node
    );
}

const NO_RESPONDERS: async_nats::StatusCode = async_nats::StatusCode::NO_RESPONDERS;

const NO_LISTENER: &str =
    "no agent is listening: it may be down or misnamed (`ctl members` lists the nodes)";

fn no_answer_within(timeout: Duration) -> String {
    format!(
        "no answer within {}: the agent may be down, busy or misnamed (try --timeout)",
        humantime::format_duration(timeout)
    )
}

/// The most replies a broadcast keeps from nodes it did not expect (or a second reply
/// of one node).
const MAX_UNEXPECTED: usize = 1000;

/// Broadcasts one request on `cluster.all.cmd.<token>` with target headers and
/// collects the replies of `expected`, returning as soon as all of them answered.
pub async fn broadcast(
    conn: &Conn,
    subjects: &Subjects,
    headers: HeaderMap,
    expected: BTreeSet<String>,
    req: &Request,
    timeout: Duration,
) -> Result<Outcome, async_nats::Error> {
    let client = &conn.client;
    let payload = serde_json::to_vec(req).expect("a request serializes");
    let subject = subjects.command(&CmdTarget::All, &req.command);
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    let started = Instant::now();
    tracing::info!(
        "broadcasting '{}' on {subject} to {} nodes, replies to {inbox}",
        req.command.name(),
        expected.len()
    );
    tracing::debug!("broadcast to {expected:?}");
    tracing::debug!("broadcast headers: {headers:?}");
    client
        .publish_with_reply_and_headers(subject.clone(), inbox.clone(), headers, payload.into())
        .await?;
    client.flush().await?;
    let mut out = Outcome::default();
    let mut waiting = expected;
    let mut unexpected = 0usize;
    let deadline = started + timeout;
    let watched = [subject.as_str(), inbox.as_str()];
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            r = tokio::time::timeout(left, sub.next()) => match r {
                Ok(Some(msg)) => {
                    let reply = decode(&msg.payload, "?", &req.command);
                    log_reply(&reply, started.elapsed(), msg.payload.len());
                    if !waiting.remove(&reply.node) {
                        // Not one of the expected targets, or one that answered already:
                        // kept (a member that joined since the list was made), but only
                        // so many, whoever sends them.
                        unexpected += 1;
                        if unexpected > MAX_UNEXPECTED {
                            if unexpected == MAX_UNEXPECTED + 1 {
                                tracing::warn!(
                                    "more than {MAX_UNEXPECTED} replies from nodes not asked \
                                     or answering twice; ignoring the rest"
                                );
                            }
                            continue;
                        }
                    }
                    out.replies.push(reply);
                }
                _ => break,
            },
            d = conn.denied(&watched) => {
                tracing::info!("the server refused after {:.1?}: {}", started.elapsed(), d.message);
                out.denied.push(d);
                return Ok(out);
            }
        }
    }
    if !waiting.is_empty() {
        let left: Vec<&str> = waiting.iter().map(String::as_str).collect();
        tracing::info!(
            "no reply from {} within {:.1?}",
            left.join(", "),
            started.elapsed()
        );
    }
    for node in waiting {
        out.missing.push((
            node,
            format!(
                "no answer within {}: the agent may be down or busy (try --timeout)",
                humantime::format_duration(timeout)
            ),
        ));
    }
    out.replies.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// Headers that make a broadcast reach only the named nodes.
pub fn nodes_header(nodes: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_NODES, nodes.join(",").as_str());
    h
}

/// Headers that make a broadcast reach only nodes with all these tags.
pub fn tags_header(tags: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if !tags.is_empty() {
        let v: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        h.insert(HEADER_TAGS, v.join(",").as_str());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_permission_violations() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            (
                r#"Permissions Violation for Publish to "cluster.n.cmd.stop""#,
                Some(("publish to", "cluster.n.cmd.stop")),
            ),
            (
                r#"Permissions Violation for Subscription to "cluster.*.logs.w""#,
                Some(("subscribe to", "cluster.*.logs.w")),
            ),
            (
                r#"Permissions Violation for Subscription to "x.y" using queue "q""#,
                Some(("subscribe to", "x.y")),
            ),
            (
                r#"Permissions Violation for Publish with Reply of "_INBOX.a""#,
                Some(("publish with a reply to", "_INBOX.a")),
            ),
            ("Maximum Payload Violation", None),
            ("authorization violation", None),
        ];
        for (message, want) in cases {
            let got = Denial::parse(message);
            assert_eq!(
                got.as_ref().map(|d| (d.action, d.subject.as_str())),
                *want,
                "{message}"
            );
        }
        let d = Denial::parse(r#"Permissions Violation for Publish to "c.n.cmd.stop""#).unwrap();
        let e = d.explain();
        assert!(
            e.contains("may not publish to c.n.cmd.stop") && e.contains("write permission"),
            "{e}"
        );
    }
}
