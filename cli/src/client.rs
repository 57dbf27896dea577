//! Sending a command to its targets and collecting the replies: one node, several
//! nodes (one broadcast with a node filter), every alive node or the tagged ones (one
//! broadcast, waiting for exactly the alive members), or one member of a service.
//! It returns as soon as every expected target answered; never a fixed wait.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use protocol::{Reply, Request, Subjects};

/// Broadcast header naming the nodes that should act (comma separated).
pub const HEADER_NODES: &str = "Cluster-Nodes";
/// Broadcast header with the tags (k=v, comma separated) a node must all have to act.
pub const HEADER_TAGS: &str = "Cluster-Tags";

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
    /// Said last, after the errors (for example where a rolling restart stopped).
    pub epilogue: Vec<String>,
}

fn decode(payload: &[u8], from: &str) -> Reply {
    serde_json::from_slice(payload).unwrap_or_else(|e| {
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
    client: &Client,
    subject: String,
    who: &str,
    req: &Request,
    timeout: Duration,
) -> Outcome {
    request(client, subject, who, req, timeout, None).await
}

/// How long a read-only query to a queue group waits before asking every agent.
const HEDGE_AFTER: Duration = Duration::from_millis(200);

/// Sends a read-only request to a queue group and takes the first reply. When none
/// comes within [`HEDGE_AFTER`] the request goes to every agent on `broadcast` (again
/// each [`HEDGE_AFTER`]), and the first answer wins: a stopped or hung member that the
/// server picked never fails the call while another one is alive. Only for requests
/// that may run more than once.
pub async fn request_any(
    client: &Client,
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
    client: &Client,
    subject: String,
    who: &str,
    req: &Request,
    timeout: Duration,
    then: Option<(Duration, String)>,
) -> Outcome {
    let payload: bytes::Bytes = serde_json::to_vec(req)
        .expect("a request serializes")
        .into();
    let mut out = Outcome::default();
    let deadline = Instant::now() + timeout;
    let inbox = client.new_inbox();
    let sent = async {
        let mut sub = client.subscribe(inbox.clone()).await?;
        let mut to = subject;
        loop {
            client
                .publish_with_reply(to.clone(), inbox.clone(), payload.clone())
                .await?;
            client.flush().await?;
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = then.as_ref().map_or(left, |(every, _)| left.min(*every));
            if let Ok(msg) = tokio::time::timeout(wait, sub.next()).await {
                return Ok::<_, async_nats::Error>(msg);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if let Some((_, next)) = &then {
                to.clone_from(next);
            }
        }
    };
    match sent.await {
        Ok(Some(msg)) if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) => {
            out.missing.push((who.to_owned(), NO_LISTENER.into()))
        }
        Ok(Some(msg)) => out.replies.push(decode(&msg.payload, who)),
        Ok(None) => out
            .missing
            .push((who.to_owned(), no_answer_within(timeout))),
        Err(e) => out
            .missing
            .push((who.to_owned(), format!("could not send the request: {e}"))),
    }
    out
}

const NO_LISTENER: &str =
    "no agent is listening: it may be down or misnamed (`ctl members` lists the nodes)";

fn no_answer_within(timeout: Duration) -> String {
    format!(
        "no answer within {}: the agent may be down, busy or misnamed (try --timeout)",
        humantime::format_duration(timeout)
    )
}

/// Broadcasts one request on `cluster.all.cmd` with target headers and collects the
/// replies of `expected`, returning as soon as all of them answered.
pub async fn broadcast(
    client: &Client,
    subjects: &Subjects,
    headers: HeaderMap,
    expected: BTreeSet<String>,
    req: &Request,
    timeout: Duration,
) -> Result<Outcome, async_nats::Error> {
    let payload = serde_json::to_vec(req).expect("a request serializes");
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply_and_headers(subjects.all_cmd(), inbox, headers, payload.into())
        .await?;
    client.flush().await?;
    let mut out = Outcome::default();
    let mut waiting = expected;
    let deadline = Instant::now() + timeout;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(msg)) => {
                let reply = decode(&msg.payload, "?");
                waiting.remove(&reply.node);
                out.replies.push(reply);
            }
            _ => break,
        }
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
