//! What the page may ask with `--allow-control`: start, stop, restart (also rolling,
//! node by node), incr, decr, numprocesses and signal, on one node or on every alive
//! one. Each action becomes the typed protocol command ctl sends for it and goes the
//! way ctl sends it (one node, or one broadcast to the alive members); the replies come
//! back as one [`ActionResult`].

use std::collections::BTreeSet;
use std::time::Duration;

use protocol::command::{Numprocesses, Resize, Restart, SignalProps, SignalSpec, StartStop};
use protocol::subjects::{validate_node_name, validate_token, CmdTarget};
use protocol::{Command, Request, Subjects};
use serde::{Deserialize, Serialize};

use crate::client::{self, Conn, Outcome};
use crate::cluster;

/// What the page asks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action: Kind,
    /// One node, or every alive node when absent.
    #[serde(default)]
    pub node: Option<String>,
    pub watcher: String,
    /// incr/decr: how many (default 1); numprocesses: the new count.
    #[serde(default)]
    pub nb: Option<u32>,
    /// signal: a name (TERM, SIGHUP) or a number.
    #[serde(default)]
    pub signal: Option<String>,
    /// restart: replace the processes a few at a time and, on every node, node by node.
    #[serde(default)]
    pub rolling: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Start,
    Stop,
    Restart,
    Incr,
    Decr,
    Numprocesses,
    Signal,
}

/// One node's answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub ok: bool,
    /// The error, or what did not answer and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the page shows after an action.
#[derive(Debug, Clone, Serialize)]
pub struct ActionResult {
    pub ok: bool,
    /// One line for people.
    pub message: String,
    pub nodes: Vec<NodeResult>,
}

/// A rolling restart's progress, sent to every page as it goes.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub watcher: String,
    pub done: usize,
    pub total: usize,
    pub node: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The most processes the page may ask for at once.
const MAX_NB: u32 = 1_000;

impl Action {
    /// The protocol command, or what is wrong with the action.
    pub fn command(&self) -> Result<Command, String> {
        validate_token(&self.watcher)
            .map_err(|e| format!("bad watcher name '{}': {e}", self.watcher))?;
        if let Some(n) = &self.node {
            validate_node_name(n).map_err(|e| format!("bad node name '{n}': {e}"))?;
        }
        let name = self.watcher.clone();
        let nb = |default: Option<u32>| match self.nb.or(default) {
            Some(n) if n <= MAX_NB => Ok(n),
            Some(n) => Err(format!("{n} processes is too many (at most {MAX_NB})")),
            None => Err("give the process count (nb)".to_owned()),
        };
        Ok(match self.action {
            Kind::Start => Command::Start(StartStop {
                name: Some(name),
                waiting: true,
            }),
            Kind::Stop => Command::Stop(StartStop {
                name: Some(name),
                waiting: true,
            }),
            Kind::Restart => Command::Restart(Restart {
                name: Some(name),
                waiting: true,
                rolling: self.rolling,
            }),
            Kind::Incr => Command::Incr(Resize {
                name,
                nb: nb(Some(1))?,
            }),
            Kind::Decr => Command::Decr(Resize {
                name,
                nb: nb(Some(1))?,
            }),
            Kind::Numprocesses => Command::Numprocesses(Numprocesses {
                name,
                nb: Some(nb(None)?),
            }),
            Kind::Signal => {
                let s = self
                    .signal
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or("give the signal, e.g. HUP or 15")?;
                Command::Signal(SignalProps {
                    name,
                    signum: match s.parse::<i32>() {
                        Ok(n) => SignalSpec::Number(n),
                        Err(_) => SignalSpec::Name(s.to_owned()),
                    },
                    pid: None,
                    leader_only: false,
                })
            }
        })
    }

    /// How long to wait: as ctl, long for what starts or stops processes.
    fn timeout(&self) -> Duration {
        match self.action {
            Kind::Start | Kind::Stop | Kind::Restart => Duration::from_secs(60),
            Kind::Incr | Kind::Decr | Kind::Numprocesses | Kind::Signal => Duration::from_secs(10),
        }
    }

    fn describe(&self) -> String {
        let what = serde_json::to_value(self.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let rolling = if self.rolling { " --rolling" } else { "" };
        let on = self.node.as_deref().unwrap_or("every alive node");
        format!("{what}{rolling} {} on {on}", self.watcher)
    }
}

/// Runs a request with a bound of its own: while NATS is unreachable the client's
/// flush waits for the reconnection, and a page must not wait forever.
async fn bounded(
    who: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    match tokio::time::timeout(timeout + Duration::from_secs(2), f).await {
        Ok(out) => out,
        Err(_) => Outcome {
            missing: vec![(
                who.to_owned(),
                format!(
                    "no answer within {}: is NATS reachable?",
                    humantime::format_duration(timeout)
                ),
            )],
            ..Outcome::default()
        },
    }
}

fn results(out: Outcome) -> Vec<NodeResult> {
    let mut nodes: Vec<NodeResult> = out
        .replies
        .into_iter()
        .map(|r| NodeResult {
            ok: r.is_ok(),
            reason: r.reason.clone(),
            node: r.node,
        })
        .collect();
    nodes.extend(out.missing.into_iter().map(|(node, why)| NodeResult {
        node,
        ok: false,
        reason: Some(format!("did not answer: {why}")),
    }));
    nodes.extend(out.denied.into_iter().map(|d| NodeResult {
        node: "-".into(),
        ok: false,
        reason: Some(d.explain()),
    }));
    nodes
}

fn finish(a: &Action, nodes: Vec<NodeResult>) -> ActionResult {
    let failed = nodes.iter().filter(|n| !n.ok).count();
    let ok = failed == 0 && !nodes.is_empty();
    let message = if nodes.is_empty() {
        format!("{}: no node answered", a.describe())
    } else if ok {
        format!("{}: done on {} node(s)", a.describe(), nodes.len())
    } else {
        format!(
            "{}: failed on {failed} of {} node(s)",
            a.describe(),
            nodes.len()
        )
    };
    ActionResult { ok, message, nodes }
}

/// Carries out `a`; `progress` hears each node of a rolling restart over every node.
pub async fn run(
    conn: &Conn,
    subjects: &Subjects,
    a: &Action,
    progress: impl Fn(Progress),
) -> ActionResult {
    let command = match a.command() {
        Ok(c) => c,
        Err(e) => {
            return ActionResult {
                ok: false,
                message: e,
                nodes: vec![],
            }
        }
    };
    let req = Request::new(command);
    let timeout = a.timeout();
    tracing::info!("web: {}", a.describe());
    if let Some(node) = &a.node {
        let subject = subjects.command(&CmdTarget::Node(node.clone()), &req.command);
        let out = client::request_one(conn, subject, node, &req, timeout);
        return finish(a, results(bounded(node, timeout, out).await));
    }
    let ask = Duration::from_secs(5);
    let members = cluster::alive_members(conn, subjects, &[], ask);
    let alive = match tokio::time::timeout(ask * 2, members)
        .await
        .unwrap_or_else(|_| {
            Err("no agent answered the member query: is NATS reachable?"
                .to_owned()
                .into())
        }) {
        Ok(ms) => ms,
        Err(e) => {
            return ActionResult {
                ok: false,
                message: format!("{}: {e}", a.describe()),
                nodes: vec![],
            }
        }
    };
    let names: Vec<String> = alive.into_iter().map(|m| m.name).collect();
    if a.rolling && matches!(a.action, Kind::Restart) {
        return rolling(conn, subjects, a, &req, &names, timeout, progress).await;
    }
    let expected: BTreeSet<String> = names.into_iter().collect();
    let sent = client::broadcast(
        conn,
        subjects,
        client::tags_header(&[]),
        expected,
        &req,
        timeout,
    );
    let out = match tokio::time::timeout(timeout + Duration::from_secs(2), sent)
        .await
        .unwrap_or_else(|_| Err("no answer: is NATS reachable?".into()))
    {
        Ok(o) => o,
        Err(e) => {
            return ActionResult {
                ok: false,
                message: format!("{}: cannot send: {e}", a.describe()),
                nodes: vec![],
            }
        }
    };
    finish(a, results(out))
}

/// A rolling restart over `nodes`, one node at a time, each replacing its processes a
/// few at a time; stops at the first node that fails.
async fn rolling(
    conn: &Conn,
    subjects: &Subjects,
    a: &Action,
    req: &Request,
    nodes: &[String],
    timeout: Duration,
    progress: impl Fn(Progress),
) -> ActionResult {
    let total = nodes.len();
    let mut all = vec![];
    for (i, node) in nodes.iter().enumerate() {
        let subject = subjects.command(&CmdTarget::Node(node.clone()), &req.command);
        let out = client::request_one(conn, subject, node, req, timeout);
        let rs = results(bounded(node, timeout, out).await);
        let ok = !rs.is_empty() && rs.iter().all(|r| r.ok);
        progress(Progress {
            watcher: a.watcher.clone(),
            done: i + 1,
            total,
            node: node.clone(),
            ok,
            reason: rs.iter().find_map(|r| r.reason.clone()),
        });
        all.extend(rs);
        if !ok {
            let mut r = finish(a, all);
            r.message = format!(
                "{}: stopped after {} of {total} node(s); not restarted: {}",
                a.describe(),
                i + 1,
                if i + 1 == total {
                    "-".to_owned()
                } else {
                    nodes[i + 1..].join(", ")
                }
            );
            return r;
        }
    }
    finish(a, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(json: &str) -> Result<Command, String> {
        serde_json::from_str::<Action>(json)
            .map_err(|e| e.to_string())
            .and_then(|a| a.command())
    }

    #[test]
    fn actions_become_typed_commands() {
        let c = action(r#"{"action":"restart","node":"a","watcher":"web","rolling":true}"#);
        assert!(matches!(
            c,
            Ok(Command::Restart(Restart { rolling: true, .. }))
        ));
        let c = action(r#"{"action":"incr","watcher":"web"}"#).unwrap();
        assert!(matches!(c, Command::Incr(Resize { nb: 1, .. })));
        let c = action(r#"{"action":"signal","watcher":"web","signal":"HUP"}"#).unwrap();
        assert!(matches!(
            c,
            Command::Signal(SignalProps {
                signum: SignalSpec::Name(_),
                ..
            })
        ));
        let bad = [
            (
                r#"{"action":"numprocesses","watcher":"web"}"#,
                "process count",
            ),
            (
                r#"{"action":"incr","watcher":"web","nb":100000}"#,
                "too many",
            ),
            (r#"{"action":"stop","watcher":"a.b"}"#, "bad watcher"),
            (
                r#"{"action":"stop","watcher":"w","node":"all"}"#,
                "bad node",
            ),
            (r#"{"action":"signal","watcher":"w"}"#, "give the signal"),
            (r#"{"action":"rm","watcher":"w"}"#, "unknown variant"),
            (r#"{"action":"stop","watcher":"w","x":1}"#, "unknown field"),
        ];
        for (json, want) in bad {
            let e = action(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
