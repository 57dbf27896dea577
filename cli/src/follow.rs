//! `ctl logs -f`: the tail, then the live lines until Ctrl-C, renewing the agents'
//! follow lease on the way.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use protocol::subjects::CmdTarget;
use protocol::{Command, Request, Subjects};

use crate::client::{self, Conn, Target};
use crate::{args, output};

/// A `logs -f` in progress: the live lines, whose they are, and where the follow
/// lease is renewed.
pub struct Follow {
    sub: async_nats::Subscriber,
    /// The subject of `sub`.
    listen: String,
    /// The nodes asked for (empty: all that match).
    nodes: Vec<String>,
    renew_subject: String,
    headers: async_nats::HeaderMap,
}

/// Subscribes to the live lines of `watcher` on the targets, before the tail is asked
/// for, so that no line is lost. A service is not followed: the caller refuses it.
pub async fn start(
    conn: &Conn,
    subjects: &Subjects,
    target: &Target,
    command: &Command,
    watcher: &str,
) -> Result<Follow, String> {
    let (renew_subject, headers, nodes, listen) = match target {
        Target::Nodes(n) if n.len() == 1 => (
            subjects.command(&CmdTarget::Node(n[0].clone()), command),
            async_nats::HeaderMap::new(),
            n.clone(),
            subjects.logs(&n[0], watcher),
        ),
        Target::Nodes(n) => (
            subjects.command(&CmdTarget::All, command),
            client::nodes_header(n),
            n.clone(),
            subjects.logs("*", watcher),
        ),
        Target::Members(tags) => (
            subjects.command(&CmdTarget::All, command),
            client::tags_header(tags),
            vec![],
            subjects.logs("*", watcher),
        ),
        Target::Service(_) => return Err(NO_SERVICE.to_owned()),
    };
    match conn.client.subscribe(listen.clone()).await {
        Ok(sub) => Ok(Follow {
            listen,
            sub,
            nodes,
            renew_subject,
            headers,
        }),
        Err(e) => Err(format!("cannot follow logs: {e}")),
    }
}

/// Why `logs -f` takes no service.
pub const NO_SERVICE: &str = "logs -f follows nodes: use --node, --all or --tag";

/// How often the follow lease is renewed: a third of its length.
pub fn renew_every() -> Duration {
    Duration::from_secs(u64::from(args::FOLLOW_LEASE_SECS) / 3)
}

/// The body that renews the lease of `req` (a `logs` request with `follow_secs`): the
/// same request asking for no tail.
pub fn renewal(req: &Request) -> bytes::Bytes {
    let mut req = req.clone();
    if let Command::Logs(p) = &mut req.command {
        p.lines = Some(0);
    }
    serde_json::to_vec(&req)
        .expect("a request serializes")
        .into()
}

impl Follow {
    /// The subjects whose refusal by the server ends the follow: the lines' and the
    /// renewal's.
    pub fn watched(&self) -> [String; 2] {
        [self.listen.clone(), self.renew_subject.clone()]
    }

    /// Renews the agents' follow lease with `renewal` (from [`renewal`]). The replies
    /// go to an inbox nobody reads; a node that missed one renewal gets the next.
    pub async fn renew(&self, client: &async_nats::Client, renewal: bytes::Bytes) {
        tracing::debug!("renewing the follow lease on {}", self.renew_subject);
        let _ = client
            .publish_with_reply_and_headers(
                self.renew_subject.clone(),
                client.new_inbox(),
                self.headers.clone(),
                renewal,
            )
            .await;
    }

    /// The next live line of the followed nodes, skipping what does not parse; `None`
    /// when the subscription ended.
    pub async fn next_line(&mut self) -> Option<protocol::logs::LogLine> {
        loop {
            let msg = self.sub.next().await?;
            let Ok(line) = serde_json::from_slice::<protocol::logs::LogLine>(&msg.payload) else {
                continue;
            };
            if self.nodes.len() > 1 && !self.nodes.contains(&line.node) {
                continue;
            }
            return Some(line);
        }
    }
}

/// Prints live log lines until Ctrl-C, renewing the agents' follow lease with `req`.
pub async fn run(conn: &Conn, mut f: Follow, req: &Request, json: bool, multi: bool) -> ExitCode {
    let renew = renewal(req);
    let client = &conn.client;
    let every = renew_every();
    let watched = f.watched();
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tracing::info!(
        "following log lines on {}; renewing the lease on {} every {}",
        f.listen,
        f.renew_subject,
        humantime::format_duration(every)
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            d = conn.denied(&watched) => return crate::not_permitted(&d),
            _ = tick.tick() => f.renew(client, renew.clone()).await,
            line = f.next_line() => {
                let Some(line) = line else { return ExitCode::from(crate::EXIT_NO_ANSWER) };
                let text = if json {
                    // Re-encoded: one line, control characters escaped.
                    format!("{}\n", serde_json::to_string(&line).unwrap_or_default())
                } else {
                    output::log_line(&line, multi)
                };
                let mut out = std::io::stdout().lock();
                if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}
