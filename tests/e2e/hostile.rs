//! What a hostile peer on the bus sends to `ctl`: an event from the year 1e300 with
//! escape sequences in its watcher and reason, a forged `members` reply and a forged
//! announcement full of them. `ctl` keeps running, prints sanitised lines, and never
//! writes an escape sequence or control character to the terminal.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::bins::hermetic;
use e2e::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// The bound on every wait; a wait ends as soon as its condition holds.
const T: Duration = Duration::from_secs(20);

/// A terminal title change, a bell and a screen clear.
const PWN: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J";

/// Panics if `text` holds anything a terminal would act on: C0 controls but tab and
/// newline, DEL, C1 controls (the 8-bit CSI among them).
fn assert_clean(text: &str, what: &str) {
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && c != '\t' && c != '\n')
    {
        panic!("{what} printed {c:?}: {text:?}");
    }
}

/// `ctl` running with its stdout read line by line (as raw bytes, so that nothing is
/// lost to UTF-8 decoding); killed on drop.
struct Running {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<String>,
}

impl Running {
    fn ctl(args: &[&str]) -> Running {
        let mut child = hermetic(bin("ctl"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run ctl: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            rx,
            seen: vec![],
        }
    }

    /// Waits up to `timeout` for a line containing `needle`; every line read is kept.
    fn find(&mut self, timeout: Duration, needle: &str) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = self.rx.recv_timeout(left).ok()?;
            let line = String::from_utf8(bytes).expect("ctl prints UTF-8");
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_events_survives_an_event_from_1e300_with_escape_sequences() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let url = nats.url();
    let mut events = tokio::task::spawn_blocking(move || Running::ctl(&["-s", &url, "events"]))
        .await
        .unwrap();
    let hostile = json!({
        "node": "n1",
        "watcher": format!("w{PWN}"),
        "kind": "flapping",
        "time": 1e300,
        "wid": 1,
        "reason": format!("gave {PWN}up\u{9b}31m\u{7f}\r\nnow"),
    });
    let payload = serde_json::to_vec(&hostile).unwrap();
    // ctl has subscribed once one of these comes out; until then they are lost.
    let mut line = None;
    for _ in 0..40 {
        client
            .publish("cluster.n1.events.w.flapping", payload.clone().into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let (found, back) = tokio::task::spawn_blocking(move || {
            let found = events.find(Duration::from_millis(500), " n1 w flapping");
            (found, events)
        })
        .await
        .unwrap();
        events = back;
        if found.is_some() {
            line = found;
            break;
        }
    }
    let line = line.expect("ctl events printed the hostile event");
    eprintln!("ctl events: {line}");
    assert_eq!(line, "(bad time 1.0e300) n1 w flapping wid=1: gave up  now");

    // Garbage with raw escapes is skipped; a normal event after it still shows.
    let garbage = format!("{{\"node\": \"{PWN}\"").into_bytes();
    client
        .publish("cluster.n1.events.w.exit", garbage.into())
        .await
        .unwrap();
    let normal = json!({"node": "n1", "watcher": "w", "kind": "stop",
        "time": protocol::unix_time(), "reason": "still here"});
    client
        .publish(
            "cluster.n1.events.w.stop",
            serde_json::to_vec(&normal).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let events = tokio::task::spawn_blocking(move || {
        let found = events.find(T, "still here");
        assert!(found.is_some(), "ctl events went on: {:?}", events.seen);
        events
    })
    .await
    .unwrap();
    let mut events = events;
    assert!(events.is_running(), "ctl events is still running");
    for l in &events.seen {
        assert_clean(l, "ctl events");
    }
}

/// A member row whose every string is hostile and whose times are absurd.
fn hostile_member(name: &str) -> Value {
    json!({
        "name": format!("{name}{PWN}"),
        "state": "alive",
        "since": -1e300,
        "boot_id": format!("b{PWN}"),
        "seq": u64::MAX,
        "hostname": format!("host{PWN}"),
        "address": format!("10.0.0.1\u{9b}2J"),
        "tags": {format!("role{PWN}"): format!("web\u{1b}[31m")},
        "version": format!("\u{9d}0;x\u{9c}1.0{PWN}"),
        "pid": u32::MAX,
        "started_at": 1e300,
        "last_seen": 1e300,
        "heartbeat_ms": u64::MAX,
        "watchers": [{"name": format!("web{PWN}"), "service": "web", "state": "active",
            "numprocesses": u32::MAX, "running": u32::MAX}],
        "services": [format!("web{PWN}")],
        "numprocesses": u32::MAX,
        "running": u32::MAX,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_members_prints_a_forged_reply_sanitised() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let subjects = protocol::Subjects::new(protocol::subjects::DEFAULT_PREFIX);
    // A fake agent in the members queue group, answering with a forged view.
    let mut sub = client
        .queue_subscribe(subjects.members(), subjects.members_queue())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let responder = client.clone();
    let fake = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply else { continue };
            let forged = json!({
                "node": format!("evil{PWN}"),
                "status": "ok",
                "time": 1e300,
                "members": [hostile_member("n1"), hostile_member("n2")],
            });
            let _ = responder
                .publish(reply, serde_json::to_vec(&forged).unwrap().into())
                .await;
            let _ = responder.flush().await;
        }
    });
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || ctl_url(&url, &["members"]))
        .await
        .unwrap();
    fake.abort();
    eprintln!("ctl members:\n{}", out.stdout);
    out.expect_code(0, "ctl members");
    assert_clean(&out.stdout, "ctl members");
    assert_clean(&out.stderr, "ctl members (stderr)");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "a header and two members: {rows:?}");
    assert!(rows[1].starts_with("n1 "), "{rows:?}");
    assert!(rows[1].contains("role=web"), "{rows:?}");
    assert!(rows[1].contains("web("), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_announcement_is_listed_sanitised_or_refused() {
    let nats = NatsServer::start();
    let a = Agent::start(&nats, "a", "");
    let client = nats.client().await;
    let subjects = protocol::Subjects::new(protocol::subjects::DEFAULT_PREFIX);
    let announcement = |node: &str, hostile: bool| {
        let s = |v: &str| {
            if hostile {
                format!("{v}{PWN}")
            } else {
                v.to_owned()
            }
        };
        json!({
            "node": node,
            "kind": "join",
            "boot_id": s("boot"),
            "seq": 1,
            "started_at": if hostile { 1e300 } else { protocol::unix_time() },
            "time": if hostile { 1e300 } else { protocol::unix_time() },
            "heartbeat_ms": 1000,
            "tags": {s("role"): s("web")},
            "version": s("\u{9b}31m9.9"),
            "hostname": s("host"),
            "pid": 7,
            "address": s("10.0.0.9"),
            "watchers": [{"name": s("web"), "service": "web", "state": "active",
                "numprocesses": u32::MAX, "running": u32::MAX}],
            "services": [s("web")],
        })
    };
    // One connection keeps the order: once "good" is listed, "evil" has been read.
    for (node, hostile) in [("evil", true), ("good", false)] {
        client
            .publish(
                subjects.registry(node),
                serde_json::to_vec(&announcement(node, hostile))
                    .unwrap()
                    .into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        wait_for(T, "the agent lists member good", || {
            let out = ctl_url(&url, &["members"]);
            (out.code == 0 && out.stdout.contains("\ngood ")).then_some(out)
        })
    })
    .await
    .unwrap();
    eprintln!("ctl members:\n{}", out.stdout);
    assert_clean(&out.stdout, "ctl members");
    if let Some(row) = out.stdout.lines().find(|l| l.starts_with("evil ")) {
        assert!(row.contains("10.0.0.9"), "{row}");
        assert!(row.contains("role=web"), "{row}");
    }
    assert!(
        a.ctl(&["--node", "a", "ping"]).code == 0,
        "the agent still answers"
    );
}
