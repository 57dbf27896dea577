//! A sniffing subscription on a test's NATS server: every message under the prefix
//! (requests from ctl, registry announcements, stats, events, log lines) and every
//! reply to a request it saw is checked against the committed schema file for its
//! subject. Commands are recognised on the plain subjects (`<p>.<node>.cmd`,
//! `<p>.all.cmd`, `<p>.svc.<S>.cmd`) and on the per-command ones (`....cmd.<command>`,
//! whose body must name the same command).
//!
//! ```text
//! let sniff = Sniffer::start(&nats.url(), "cluster");
//! ... run ctl, let agents talk ...
//! let seen = sniff.check();      // panics listing every message that broke its schema
//! assert!(seen.count("registry") > 0);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::schema::violations;

/// What a sniffer saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Messages per kind: request, reply, members, registry, stats, event, log.
    pub counts: BTreeMap<String, usize>,
    /// The commands of the requests seen, with the subject form: `status`,
    /// `status (per-command subject)`.
    pub commands: BTreeSet<String>,
    /// Every message that broke its schema, or whose subject the protocol does not name.
    pub violations: Vec<String>,
    /// Reply subject to the command of the request that named it.
    inboxes: HashMap<String, String>,
    /// The sentinels seen (to know everything before them was seen).
    ends: BTreeSet<u64>,
}

impl Seen {
    pub fn count(&self, kind: &str) -> usize {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

/// A subscription to everything on one server, checking each message.
pub struct Sniffer {
    url: String,
    seen: Arc<Mutex<Seen>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    next_end: u64,
}

const END: &str = "_E2E_SNIFF_END";

impl Sniffer {
    /// Subscribes to every subject on the server at `url`; returns once the
    /// subscription is in place. `prefix` is the agents' subject prefix.
    pub fn start(url: &str, prefix: &str) -> Sniffer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (url_owned, prefix, seen2) = (url.to_owned(), prefix.to_owned(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let client = match async_nats::connect(&url_owned).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot connect: {e}")));
                        return;
                    }
                };
                let mut sub = match client.subscribe(">").await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot subscribe: {e}")));
                        return;
                    }
                };
                let _ = client.flush().await;
                let _ = ready_tx.send(Ok(()));
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        msg = sub.next() => {
                            let Some(msg) = msg else { break };
                            let mut s = seen2.lock().unwrap_or_else(|e| e.into_inner());
                            let reply = msg.reply.as_ref().map(|r| r.as_str());
                            observe(&mut s, &prefix, msg.subject.as_str(), reply, &msg.payload);
                        }
                    }
                }
            });
        });
        match ready_rx.recv_timeout(crate::wait::bound(Duration::from_secs(10))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the sniffer on {url}: {e}"),
            Err(_) => panic!("the sniffer on {url} did not subscribe within 10 s"),
        }
        Sniffer {
            url: url.to_owned(),
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
            next_end: 0,
        }
    }

    /// What was seen so far, once every message published before this call reached
    /// the sniffer; panics listing every violation.
    pub fn check(&mut self) -> Seen {
        let seen = self.snapshot();
        assert!(
            seen.violations.is_empty(),
            "{} message(s) on the wire broke their schema:\n{}",
            seen.violations.len(),
            seen.violations.join("\n")
        );
        seen
    }

    /// What was seen so far (after a sentinel went round), without judging it.
    pub fn snapshot(&mut self) -> Seen {
        self.next_end += 1;
        let n = self.next_end;
        let url = self.url.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            if let Ok(c) = async_nats::connect(&url).await {
                let _ = c.publish(format!("{END}.{n}"), "".into()).await;
                let _ = c.flush().await;
            }
        });
        let seen = self.seen.clone();
        crate::wait::wait_until(
            Duration::from_secs(10),
            "the sniffer to see its sentinel",
            || {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .ends
                    .contains(&n)
            },
        );
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        s.clone()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bump(seen: &mut Seen, kind: &str) {
    *seen.counts.entry(kind.to_owned()).or_default() += 1;
}

fn check(seen: &mut Seen, subject: &str, schema: &str, v: &Value) {
    for e in violations(schema, v) {
        seen.violations
            .push(format!("{subject} vs {schema}: {e}\n    {v}"));
    }
}

/// Classifies one message by its subject and checks it.
fn observe(seen: &mut Seen, prefix: &str, subject: &str, reply: Option<&str>, payload: &[u8]) {
    if let Some(n) = subject.strip_prefix(&format!("{END}.")) {
        if let Ok(n) = n.parse() {
            seen.ends.insert(n);
        }
        return;
    }
    if subject.starts_with("_INBOX.") {
        let Some(command) = seen.inboxes.get(subject).cloned() else {
            return;
        };
        if payload.is_empty() {
            return; // a no-responders status
        }
        bump(seen, "reply");
        match serde_json::from_slice::<Value>(payload) {
            Ok(v) => {
                check(seen, subject, "reply.schema.json", &v);
                check(
                    seen,
                    subject,
                    &format!("commands/{command}.reply.schema.json"),
                    &v,
                );
            }
            Err(e) => seen
                .violations
                .push(format!("{subject}: a reply to {command} is not JSON: {e}")),
        }
        return;
    }
    let Some(rest) = subject.strip_prefix(&format!("{prefix}.")) else {
        return;
    };
    let tokens: Vec<&str> = rest.split('.').collect();
    let body: Result<Value, _> = serde_json::from_slice(payload);
    let Ok(v) = body else {
        seen.violations
            .push(format!("{subject}: the body is not JSON: {:?}", payload));
        return;
    };
    let cmd_at = tokens.iter().position(|t| *t == "cmd");
    let is_cmd = matches!(
        (cmd_at, tokens.as_slice()),
        (Some(1), [_, "cmd"] | [_, "cmd", _]) | (Some(2), ["svc", _, "cmd"] | ["svc", _, "cmd", _])
    );
    if is_cmd {
        bump(seen, "request");
        check(seen, subject, "request.schema.json", &v);
        let command = v["command"].as_str().unwrap_or_default().to_owned();
        if !command.is_empty() {
            check(
                seen,
                subject,
                &format!("commands/{command}.request.schema.json"),
                &v,
            );
        }
        let at = cmd_at.unwrap_or_default();
        match tokens.get(at + 1) {
            Some(named) => {
                if *named != command {
                    seen.violations.push(format!(
                        "{subject}: the subject names {named} but the body {command}"
                    ));
                }
                seen.commands
                    .insert(format!("{command} (per-command subject)"));
            }
            None => {
                seen.commands.insert(command.clone());
            }
        }
        if let Some(reply) = reply {
            seen.inboxes.insert(reply.to_owned(), command);
        }
        return;
    }
    match tokens.as_slice() {
        ["members"] => {
            bump(seen, "members");
            check(seen, subject, "commands/members.request.schema.json", &v);
            seen.commands.insert("members".into());
            if let Some(reply) = reply {
                seen.inboxes.insert(reply.to_owned(), "members".into());
            }
        }
        ["registry", _] | ["registry", "keepers", _] => {
            bump(seen, "registry");
            check(seen, subject, "registry.schema.json", &v);
        }
        [_, "stats"] => {
            bump(seen, "stats");
            check(seen, subject, "stats.schema.json", &v);
        }
        [_, "events", _, _] => {
            bump(seen, "event");
            check(seen, subject, "events.schema.json", &v);
        }
        [_, "logs", _] => {
            bump(seen, "log");
            check(seen, subject, "log-line.schema.json", &v);
        }
        _ => seen
            .violations
            .push(format!("{subject}: a subject the protocol does not name")),
    }
}

/// A plain subscription read from synchronous test code: messages arrive on a channel
/// from a thread of its own; in place (the server has it) once [`Subscription::new`]
/// returns.
pub struct Subscription {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Subscription {
    /// Subscribes to `subject` on the server at `url`.
    pub fn new(url: &str, subject: &str) -> Subscription {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (url_owned, subject_owned) = (url.to_owned(), subject.to_owned());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let client = match async_nats::connect(&url_owned).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot connect: {e}")));
                        return;
                    }
                };
                let mut sub = match client.subscribe(subject_owned).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot subscribe: {e}")));
                        return;
                    }
                };
                let _ = client.flush().await;
                let _ = ready_tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        msg = sub.next() => {
                            let Some(msg) = msg else { break };
                            if tx.send((msg.subject.to_string(), msg.payload.to_vec())).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        });
        match ready_rx.recv_timeout(crate::wait::bound(Duration::from_secs(10))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("subscription to {subject} on {url}: {e}"),
            Err(_) => panic!("subscription to {subject} on {url} not in place within 10 s"),
        }
        Subscription {
            rx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The next message within `timeout` (scaled by the slack): its subject and body.
    pub fn next(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.rx.recv_timeout(crate::wait::bound(timeout)).ok()
    }

    /// The next message whose body parses as JSON and satisfies `f`, within `timeout`;
    /// the others are dropped.
    pub fn find(&self, timeout: Duration, f: impl Fn(&str, &Value) -> bool) -> Option<Value> {
        let deadline = std::time::Instant::now() + crate::wait::bound(timeout);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (s, body) = self.rx.recv_timeout(left).ok()?;
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if f(&s, &v) {
                    return Some(v);
                }
            }
        }
    }

    /// Every message received so far, without waiting.
    pub fn drain(&self) -> Vec<(String, Vec<u8>)> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_plain_and_per_command_subjects() {
        let mut s = Seen::default();
        let status = br#"{"command":"status"}"#;
        observe(
            &mut s,
            "cluster",
            "cluster.n1.cmd",
            Some("_INBOX.a"),
            status,
        );
        observe(
            &mut s,
            "cluster",
            "cluster.n1.cmd.status",
            Some("_INBOX.b"),
            status,
        );
        observe(&mut s, "cluster", "cluster.all.cmd.status", None, status);
        observe(
            &mut s,
            "cluster",
            "cluster.svc.web.cmd.status",
            None,
            status,
        );
        assert_eq!(s.count("request"), 4);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert!(s.commands.contains("status (per-command subject)"));
        // The body must name the subject's command.
        observe(&mut s, "cluster", "cluster.n1.cmd.stop", None, status);
        assert!(s.violations[0].contains("names stop but the body status"));
        // A reply to a request seen is checked against that command's reply schema.
        let bad = br#"{"node":"n1","status":"ok","time":1.0}"#;
        observe(&mut s, "cluster", "_INBOX.b", None, bad);
        assert_eq!(s.count("reply"), 1);
        assert!(s.violations.len() > 1, "{:?}", s.violations);
        // An unknown subject under the prefix is a violation too.
        observe(&mut s, "cluster", "cluster.n1.what", None, b"{}");
        assert!(s.violations.last().unwrap().contains("does not name"));
    }
}
