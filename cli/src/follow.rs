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

/// Prints live log lines until Ctrl-C, renewing the agents' follow lease with `req`.
pub async fn run(conn: &Conn, mut f: Follow, req: &Request, json: bool, multi: bool) -> ExitCode {
    let renew: bytes::Bytes = {
        let mut req = req.clone();
        if let Command::Logs(p) = &mut req.command {
            // Only the lease: no tail again.
            p.lines = Some(0);
        }
        serde_json::to_vec(&req)
            .expect("a request serializes")
            .into()
    };
    let client = &conn.client;
    let every = Duration::from_secs(u64::from(args::FOLLOW_LEASE_SECS) / 3);
    let watched = [f.listen.clone(), f.renew_subject.clone()];
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
            _ = tick.tick() => {
                // The replies go to an inbox nobody reads; a node that missed one renewal
                // gets the next.
                tracing::debug!("renewing the follow lease on {}", f.renew_subject);
                let _ = client
                    .publish_with_reply_and_headers(
                        f.renew_subject.clone(),
                        client.new_inbox(),
                        f.headers.clone(),
                        renew.clone(),
                    )
                    .await;
            }
            msg = f.sub.next() => {
                let Some(msg) = msg else { return ExitCode::from(crate::EXIT_NO_ANSWER) };
                let Ok(line) = serde_json::from_slice::<protocol::logs::LogLine>(&msg.payload) else { continue };
                if f.nodes.len() > 1 && !f.nodes.contains(&line.node) {
                    continue;
                }
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
