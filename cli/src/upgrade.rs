//! `upgrade --rolling`: the nodes are upgraded one at a time, each asked to upgrade,
//! then pinged until it answers with a new boot, before the next; it stops at the first
//! that fails or does not come back in time. The time printed for each node runs from
//! the request to the first ping answered by the new boot.

use std::io::Write;
use std::time::{Duration, Instant};

use protocol::command::{Command, Empty};
use protocol::reply::{KindData, PingData, UpgradeData};
use protocol::subjects::CmdTarget;
use protocol::{Errno, Reply, Request, Subjects};

use crate::client::{self, Conn, Outcome};

/// How long one ping waits for the upgraded node while it is coming back.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// How long between two pings of a node that is coming back.
const PING_EVERY: Duration = Duration::from_millis(50);

/// Upgrades `nodes` one after the other; `timeout` bounds each node (its reply, then
/// its return with a new boot).
pub async fn rolling_upgrade(
    conn: &Conn,
    subjects: &Subjects,
    nodes: &[String],
    timeout: Duration,
    json: bool,
) -> Outcome {
    let mut all = Outcome::default();
    let total = nodes.len();
    let started = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        let t = Instant::now();
        let result = upgrade_one(conn, subjects, node, timeout).await;
        match result {
            Ok((reply, boot)) => {
                if json {
                    println!("{}", serde_json::to_string(&reply).unwrap_or_default());
                } else {
                    println!(
                        "[{}/{total}] {node}: upgraded in {:.2}s (boot {boot})",
                        i + 1,
                        t.elapsed().as_secs_f64()
                    );
                }
                let _ = std::io::stdout().flush();
            }
            Err(out) => {
                all.replies.extend(out.replies);
                all.missing.extend(out.missing);
                all.denied.extend(out.denied);
                let rest: Vec<&str> = nodes[i + 1..].iter().map(String::as_str).collect();
                all.epilogue.push(format!(
                    "rolling upgrade stopped at {node} ({} of {total}); not upgraded: {}",
                    i + 1,
                    if rest.is_empty() {
                        "-".to_owned()
                    } else {
                        rest.join(", ")
                    }
                ));
                return all;
            }
        }
    }
    if !json {
        println!(
            "rolling upgrade done: {total} nodes in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    all
}

/// Upgrades one node and waits until it answers `ping` with another boot: its reply
/// and the new boot id, or what went wrong as an outcome to report.
async fn upgrade_one(
    conn: &Conn,
    subjects: &Subjects,
    node: &str,
    timeout: Duration,
) -> Result<(Reply, String), Outcome> {
    let until = Instant::now() + timeout;
    let req = Request::new(Command::Upgrade(Empty {}));
    let subject = subjects.command(&CmdTarget::Node(node.to_owned()), &req.command);
    let out = client::request_one(conn, subject, node, &req, timeout).await;
    let Some(reply) = out.replies.first().filter(|r| r.is_ok()).cloned() else {
        return Err(out);
    };
    let was = match reply.data.as_ref().and_then(UpgradeData::of) {
        Some(d) => d.was_boot_id.clone(),
        None => {
            return Err(failed(
                node,
                "its upgrade reply carries no upgrade data".into(),
            ))
        }
    };
    let ping = Request::new(Command::Ping(Empty {}));
    let subject = subjects.command(&CmdTarget::Node(node.to_owned()), &ping.command);
    loop {
        let out = client::request_one(conn, subject.clone(), node, &ping, PING_TIMEOUT).await;
        let boot = out
            .replies
            .first()
            .and_then(|r| r.data.as_ref().and_then(PingData::of))
            .map(|p| p.boot_id.clone());
        match boot {
            Some(b) if b != was => return Ok((reply, b)),
            _ if Instant::now() >= until => {
                return Err(failed(
                    node,
                    format!(
                        "did not answer with a new boot within {} (still boot {was}, or \
                         gone: `ctl --node {node} ping` and the agent's log say more)",
                        humantime::format_duration(timeout)
                    ),
                ))
            }
            _ => tokio::time::sleep(PING_EVERY).await,
        }
    }
}

fn failed(node: &str, reason: String) -> Outcome {
    Outcome {
        replies: vec![Reply::error(
            None,
            node,
            protocol::unix_time(),
            Errno::CommandFailed,
            reason,
        )],
        ..Outcome::default()
    }
}
