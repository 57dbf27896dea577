//! Rolling restarts with surge: an HTTP server on a shared socket (the example's
//! examples/socket_http.py) is restarted rolling while a client sends requests in a
//! loop, with 2 processes and with 1, and no request fails; each replacement starts
//! before the process it replaces exits (from the agent's events), on one node and node
//! by node across a cluster; a replacement that exits or is not up in time leaves the
//! old process running, and the restart says where it stopped; a stop, `rm` or agent
//! shutdown during the overlap leaves no process behind; with a `ready` check, the old
//! process runs until its replacement passes it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// How long one request may take before it counts as failed (scaled by the slack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The Python to run: the system's, not a version manager's shim (which wants a home).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The example server: on SIGTERM it stops accepting and finishes its requests.
fn example_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_http.py")
}

/// A socket-served web watcher with `n` processes and the default rollout (surge).
fn web(n: u32) -> String {
    web_with(n, "")
}

/// The same with `extra` keys.
fn web_with(n: u32, extra: &str) -> String {
    format!(
        r#"
[socket.http]
host = "127.0.0.1"
port = 0

[watcher.web]
cmd = "{py}"
args = ["{server}"]
numprocesses = {n}
sockets = ["http"]
min_uptime = "300ms"
graceful_timeout = "10s"
{extra}
"#,
        py = python(),
        server = example_server().display(),
    )
}

fn http_address(agent: &Agent) -> SocketAddr {
    let r = agent.ctl_ok(&["listsockets"]);
    r["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "http"))
        .and_then(|s| s["address"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no address for socket http in {r}"))
}

/// One GET on a fresh connection: the pid that answered, or what went wrong.
fn get(addr: SocketAddr) -> Result<u32, String> {
    let timeout = bound(REQUEST_TIMEOUT);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if !answer.starts_with("HTTP/1.0 200") {
        return Err(format!("not a 200: {answer:?}"));
    }
    answer
        .rsplit("hello from pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {answer:?}"))
}

/// What a client saw while it sent requests in a loop.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    failures: Vec<String>,
    slowest: Duration,
    pids: BTreeSet<u32>,
}

/// Sends requests to `addr` in a loop until `stop` is set; counts each in `done`.
fn load(addr: SocketAddr, stop: &AtomicBool, done: &AtomicU64) -> Tally {
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let answer = get(addr);
        t.slowest = t.slowest.max(start.elapsed());
        t.requests += 1;
        match answer {
            Ok(pid) => {
                t.pids.insert(pid);
            }
            Err(e) => t.failures.push(e),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    t
}

/// Sets the client's stop flag when dropped, so that a failed assertion ends the client
/// loop (and the scope that waits for it) instead of hanging.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn wait_requests(done: &AtomicU64, more: u64) {
    let from = done.load(Ordering::Relaxed);
    wait_until(T, &format!("{more} more requests"), || {
        done.load(Ordering::Relaxed) >= from + more
    });
}

fn pid_set(agent: &Agent, watcher: &str) -> BTreeSet<u32> {
    agent.pids(watcher).into_iter().map(|(_, p)| p).collect()
}

/// Restarts the web watcher of `n` processes rolling under a client's loop of
/// requests: none fails, and every process is replaced.
fn no_request_fails(node: &str, n: u32, extra: &str) {
    let nats = NatsServer::start();
    let agent = Agent::start(&nats, node, &web_with(n, extra));
    let addr = http_address(&agent);
    wait_until(T, "every process of web up", || {
        let st = agent.ctl_ok(&["status", "web"]);
        agent.pids("web").len() == n as usize && st.to_string().contains("active")
    });
    let old = pid_set(&agent, "web");
    let (stop, done) = (AtomicBool::new(false), AtomicU64::new(0));
    let (tally, took) = std::thread::scope(|s| {
        let client = s.spawn(|| load(addr, &stop, &done));
        let _stop = StopOnDrop(&stop);
        wait_requests(&done, 20);
        let (out, took) = timed(|| agent.ctl(&["restart", "web", "--rolling"]));
        let restarted = out.code == 0;
        if restarted {
            wait_requests(&done, 20);
        }
        stop.store(true, Ordering::Relaxed);
        let tally = client.join().expect("the client");
        out.expect_code(0, "restart web --rolling");
        (tally, took)
    });
    eprintln!(
        "figures: {n} process(es) {extra:?}: {} requests (20 before and after a rolling \
         restart of {:.1}s), {} failed, slowest {:.1} ms",
        tally.requests,
        took.as_secs_f64(),
        tally.failures.len(),
        tally.slowest.as_secs_f64() * 1000.0
    );
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    let new = pid_set(&agent, "web");
    assert_eq!(new.len(), n as usize, "{new:?}");
    assert!(
        old.is_disjoint(&new),
        "not every process was replaced: {old:?} {new:?}"
    );
    for pid in &old {
        wait_until(T, &format!("old process {pid} gone from /proc"), || {
            !is_alive(*pid)
        });
    }
    for pid in &new {
        assert!(is_alive(*pid), "new process {pid} is not in /proc");
    }
    // The client was answered by the old processes and by their replacements.
    assert!(
        !tally.pids.is_disjoint(&old) && !tally.pids.is_disjoint(&new),
        "answers came from {:?}; old {old:?}, new {new:?}",
        tally.pids
    );
}

#[test]
fn no_request_fails_during_a_rolling_restart_of_two_processes() {
    no_request_fails("surge2", 2, "");
}

#[test]
fn no_request_fails_during_a_rolling_restart_of_one_process() {
    no_request_fails("surge1", 1, "");
}

/// Stopping first, a request waits in the shared socket's queue while no process
/// accepts (it is not refused, as the agent holds the socket): slower, still no failure.
#[test]
fn stopping_first_makes_requests_wait_not_fail() {
    no_request_fails("surge0", 1, "max_surge = 0");
}

fn event_pos(seen: &[Value], node: &str, kind: &str, pid: u32) -> Option<usize> {
    seen.iter().position(|v| {
        v["node"] == node && v["kind"] == kind && v["pid"].as_u64() == Some(u64::from(pid))
    })
}

/// Every old pid of `node` has exited and every new one has spawned.
fn replaced(seen: &[Value], node: &str, old: &BTreeSet<u32>, new: &BTreeSet<u32>) -> bool {
    old.iter()
        .all(|p| event_pos(seen, node, "exit", *p).is_some())
        && new
            .iter()
            .all(|p| event_pos(seen, node, "spawn", *p).is_some())
}

/// On `node`, each replacement (by wid) spawned before the process it replaced exited,
/// by the order of the events and by their times.
fn surged(seen: &[Value], node: &str, old: &[(u32, u32)], new: &[(u32, u32)]) {
    for (wid, old_pid) in old {
        let (_, new_pid) = new
            .iter()
            .find(|(w, _)| w == wid)
            .unwrap_or_else(|| panic!("no new process in slot {wid}: {new:?}"));
        let spawn = event_pos(seen, node, "spawn", *new_pid).expect("a spawn event");
        let exit = event_pos(seen, node, "exit", *old_pid).expect("an exit event");
        assert!(
            spawn < exit,
            "{node} slot {wid}: the replacement {new_pid} spawned after {old_pid} exited: \
             {seen:#?}"
        );
        let (ts, te) = (seen[spawn]["time"].as_f64(), seen[exit]["time"].as_f64());
        assert!(
            ts <= te,
            "{node} slot {wid}: spawn at {ts:?}, exit at {te:?}"
        );
        let st = start_secs(*new_pid);
        assert!(st.is_some(), "the replacement {new_pid} is not in /proc");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replacement_starts_before_the_old_process_exits() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.surge3.events.web.>").await;
    let agent = Agent::start(&nats, "surge3", &web(2));
    let agent = &agent;
    wait_until(T, "2 processes of web", || agent.pids("web").len() == 2);
    let old = agent.pids("web");
    let out = tokio::task::block_in_place(|| agent.ctl(&["restart", "web", "--rolling"]));
    out.expect_code(0, "restart web --rolling");
    let new = agent.pids("web");
    let (olds, news) = (
        old.iter().map(|p| p.1).collect(),
        new.iter().map(|p| p.1).collect(),
    );
    let seen = events
        .until(T, "every process of web replaced", |s| {
            replaced(s, "surge3", &olds, &news)
        })
        .await;
    surged(&seen, "surge3", &old, &new);
    // One slot at a time: slot 1's old process exited before slot 2's replacement
    // started.
    let exit1 = event_pos(&seen, "surge3", "exit", old[0].1).expect("exit of slot 1");
    let spawn2 = event_pos(&seen, "surge3", "spawn", new[1].1).expect("spawn of slot 2");
    assert!(exit1 < spawn2, "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_surge_2_replaces_two_slots_at_once() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.surge6.events.w.>").await;
    let secs = unique_secs();
    let agent = Agent::start(
        &nats,
        "surge6",
        &format!(
            "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 3\n\
             max_surge = 2\nmin_uptime = \"300ms\"\n"
        ),
    );
    let agent = &agent;
    wait_until(T, "3 processes of w", || agent.pids("w").len() == 3);
    let old = agent.pids("w");
    let out = tokio::task::block_in_place(|| agent.ctl(&["restart", "w", "--rolling"]));
    out.expect_code(0, "restart w --rolling");
    let new = agent.pids("w");
    let set = |v: &[(u32, u32)]| -> BTreeSet<u32> { v.iter().map(|p| p.1).collect() };
    let seen = events
        .until(T, "every process of w replaced", |s| {
            replaced(s, "surge6", &set(&old), &set(&new))
        })
        .await;
    surged(&seen, "surge6", &old, &new);
    let at = |kind: &str, pid: u32| event_pos(&seen, "surge6", kind, pid).expect("an event");
    // Slots 1 and 2 together: both replacements spawned before either old one exited;
    // slot 3 after both.
    let first_exit = at("exit", old[0].1).min(at("exit", old[1].1));
    assert!(at("spawn", new[0].1) < first_exit && at("spawn", new[1].1) < first_exit);
    assert!(at("spawn", new[2].1) > at("exit", old[0].1).max(at("exit", old[1].1)));
}

#[test]
fn max_surge_and_max_unavailable_on_get_and_set() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(
        &nats,
        "surge7",
        &format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 2\n"),
    );
    agent.ctl_ok(&["set", "w", "max_surge", "2"]);
    let got = agent.ctl_ok(&["get", "w", "max_surge", "max_unavailable"]);
    assert_eq!(got["options"]["max_surge"], 2, "{got}");
    let (out, replies) = agent.ctl_json(&["set", "w", "max_surge", "0", "max_unavailable", "0"]);
    assert_ne!(out.code, 0);
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("'max_surge': is 0 and so is max_unavailable"),
        "{reason}"
    );
    let (out, replies) = agent.ctl_json(&["set", "w", "max_unavailable", "100001"]);
    assert_ne!(out.code, 0);
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("'max_unavailable': 100001 is out of range; use 0 to 100000"),
        "{reason}"
    );
    let (out, _) = agent.ctl_json(&["set", "w", "max_surge", "1.5"]);
    assert_ne!(out.code, 0);
    let got = agent.ctl_ok(&["get", "w", "max_surge"]);
    assert_eq!(got["options"]["max_surge"], 2, "nothing changed: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_nodes_goes_node_by_node_with_surge() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.*.events.web.>").await;
    let a = Agent::start(&nats, "surge-a", &web(1));
    let b = Agent::start(&nats, "surge-b", &web(1));
    let (a, b) = (&a, &b);
    for agent in [a, b] {
        wait_until(T, "web running", || agent.pids("web").len() == 1);
    }
    // `--all` reaches the members the answering agent knows: both, once each knows the
    // other.
    tokio::task::block_in_place(|| wait_all_know_each_other(&[a, b], T));
    let (old_a, old_b) = (a.pids("web"), b.pids("web"));
    let out = tokio::task::block_in_place(|| ctl(&nats, &["--all", "restart", "web", "--rolling"]));
    out.expect_code(0, "ctl --all restart web --rolling");
    let (new_a, new_b) = (a.pids("web"), b.pids("web"));
    let set = |v: &[(u32, u32)]| -> BTreeSet<u32> { v.iter().map(|p| p.1).collect() };
    let seen = events
        .until(T, "web replaced on both nodes", |s| {
            replaced(s, "surge-a", &set(&old_a), &set(&new_a))
                && replaced(s, "surge-b", &set(&old_b), &set(&new_b))
        })
        .await;
    surged(&seen, "surge-a", &old_a, &new_a);
    surged(&seen, "surge-b", &old_b, &new_b);
    // Node by node: one node's restart ended before the other's began.
    let (first, second, f_old, s_new) = if event_pos(&seen, "surge-a", "spawn", new_a[0].1)
        < event_pos(&seen, "surge-b", "spawn", new_b[0].1)
    {
        ("surge-a", "surge-b", &old_a, &new_b)
    } else {
        ("surge-b", "surge-a", &old_b, &new_a)
    };
    let ended = event_pos(&seen, first, "exit", f_old[0].1).expect("exit on the first node");
    let began = event_pos(&seen, second, "spawn", s_new[0].1).expect("spawn on the second");
    assert!(ended < began, "not node by node: {seen:#?}");
    for pid in set(&old_a).iter().chain(set(&old_b).iter()) {
        wait_until(T, &format!("old process {pid} gone"), || !is_alive(*pid));
    }
}

#[test]
fn a_replacement_that_fails_leaves_the_old_process_running() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temporary dir");
    let flag = dir.path().join("broken");
    let secs = unique_secs();
    let agent = Agent::start(
        &nats,
        "surge4",
        &format!(
            r#"
[watcher.w]
cmd = "sh"
args = ["-c", "if [ -e {flag} ]; then exit 3; fi; exec sleep {secs}"]
max_surge = 1
min_uptime = "300ms"
restart_delay = "10s"

[watcher.slow]
cmd = "sleep"
args = ["{secs}"]
max_surge = 1
min_uptime = "300ms"
health_cmd = ["sh", "-c", "test ! -e {flag}"]
health_timeout = "1s"
"#,
            flag = flag.display()
        ),
    );
    let running = |w: &str| {
        agent.ctl_ok(&["list", w])["processes"]
            .as_array()
            .is_some_and(|p| p.len() == 1 && p[0]["state"] == "running")
    };
    wait_until(T, "w and slow running", || running("w") && running("slow"));
    let (old_w, old_slow) = (agent.pids("w"), agent.pids("slow"));
    std::fs::write(&flag, "").expect("write the flag");
    // The replacement exits at once.
    let (out, replies) = agent.ctl_json(&["restart", "w", "--rolling"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("process 1 of 'w' was not replaced: its replacement exited")
            && reason.contains("the old process keeps running"),
        "{reason}"
    );
    assert_eq!(agent.pids("w"), old_w);
    assert!(is_alive(old_w[0].1));
    assert!(running("w"));
    // The replacement never passes its health check: it is stopped at its deadline.
    let (out, replies) = agent.ctl_json(&["restart", "slow", "--rolling"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "process 1 of 'slow' was not replaced: its replacement failed: not ready: health \
             check did not pass within 1s"
        ) && reason.contains("the old process keeps running"),
        "{reason}"
    );
    wait_until(T, "slow back to its one process", || {
        agent.pids("slow") == old_slow
    });
    assert!(running("slow"));
    // Once the cause is gone, the restart goes through.
    std::fs::remove_file(&flag).expect("remove the flag");
    agent.ctl_ok(&["restart", "w", "--rolling"]);
    assert_ne!(agent.pids("w"), old_w);
    wait_until(T, "the old process of w gone", || !is_alive(old_w[0].1));
}

/// The pids of slot 1 of `watcher` once its replacement runs next to its process.
fn overlap(agent: &Agent, watcher: &str) -> Vec<u32> {
    wait_for(T, "a replacement next to the process of slot 1", || {
        let p = agent.pids(watcher);
        (p.len() == 2 && p.iter().all(|(wid, _)| *wid == 1))
            .then(|| p.into_iter().map(|(_, pid)| pid).collect())
    })
}

/// A `ctl restart WATCHER --rolling` left running; its reply once it ends.
fn rolling(nats: &NatsServer, node: &str, watcher: &str) -> KillOnDrop {
    spawn_ctl(
        &nats.url(),
        &["--node", node, "--json", "restart", watcher, "--rolling"],
    )
}

fn reply_of(mut restart: KillOnDrop) -> String {
    let mut out = String::new();
    restart
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("read the reply");
    let _ = restart.wait();
    out
}

#[test]
fn stop_rm_and_shutdown_during_the_overlap_leave_no_process() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    // A replacement is not up for a minute: the overlap lasts.
    let watcher = |name: &str| {
        format!(
            "[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nmax_surge = 1\n\
             min_uptime = \"60s\"\n"
        )
    };
    let mut agent = Agent::start(&nats, "surge5", &(watcher("w") + &watcher("v")));
    for w in ["w", "v"] {
        wait_until(T, "w and v started", || agent.pids(w).len() == 1);
    }
    for (how, w) in [("stop", "w"), ("rm", "v")] {
        let restart = rolling(&nats, "surge5", w);
        let pids = overlap(&agent, w);
        agent.ctl_ok(&[how, w]);
        let reply = reply_of(restart);
        assert!(
            reply.contains("went away during the restart"),
            "{how}: {reply}"
        );
        for pid in &pids {
            wait_until(T, &format!("{how}: process {pid} gone"), || !is_alive(*pid));
        }
    }
    agent.ctl_ok(&["start", "w"]);
    wait_until(T, "w started again", || agent.pids("w").len() == 1);
    let _restart = rolling(&nats, "surge5", "w");
    let pids = overlap(&agent, "w");
    agent.terminate();
    for pid in &pids {
        assert!(!is_alive(*pid), "process {pid} outlived the agent");
    }
}

/// A server on the shared socket (fd 3) that warms up for `delay` seconds before it
/// accepts, then answers one readiness probe (a GET on 127.0.0.1:`port`) and closes
/// that port, so that the next process of its slot can listen there. Just before it
/// answers the probe it writes `<dir>/ready-<wid>-<pid>` with the time it started and
/// the time it answered. It serves with the example's server
/// (`examples/socket_http.py`'s `serve`), without a log line per request.
const WARMING_SERVER: &str = r#"
import os, socket, sys, threading, time
started = time.time()
port, delay, wid, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
time.sleep(delay)
hs = socket.socket()
hs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
for _ in range(300):
    try:
        hs.bind(("127.0.0.1", port))
        break
    except OSError:
        time.sleep(0.05)
hs.listen(8)

def answer_one_probe():
    c, _ = hs.accept()
    c.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    path = os.path.join(out, "ready-%s-%d" % (wid, os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write("%f %f\n" % (started, time.time()))
    os.rename(path + ".tmp", path)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
    hs.close()

threading.Thread(target=answer_one_probe, daemon=True).start()

# The example's server (examples/socket_http.py, its directory the fifth argument),
# without a log line per request.
sys.path.insert(0, sys.argv[5])
sys.dont_write_bytecode = True  # no __pycache__ in examples/
import socket_http

class Quiet(socket_http.Hello):
    def log_message(self, *args):
        pass

socket_http.serve(socket.socket(fileno=3), Quiet)
"#;

/// How long the warming server is not ready.
const WARMUP: Duration = Duration::from_secs(1);

/// A prefix `p` such that ports `p1` and `p2` (`"{p}$(wid)"`) are free now: 31001 to
/// 32692, below the range the kernel hands out for outgoing connections and port 0,
/// and above the ports the probes tests take.
fn health_port_prefix() -> u32 {
    let free = |p: u32| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
    (0..200)
        .map(|i| 3100 + (free_port() as u32 + i * 41) % 170)
        .find(|p| free(p * 10 + 1) && free(p * 10 + 2))
        .expect("two free ports")
}

/// The replacements that passed their readiness probe so far: (wid, pid) -> (started,
/// answered), as the servers wrote them.
fn ready_files(dir: &Path) -> std::collections::BTreeMap<(u32, u32), (f64, f64)> {
    let mut found = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read the dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ready-") else {
            continue;
        };
        let Some((wid, pid)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(wid), Ok(pid)) = (wid.parse(), pid.parse()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let times: Vec<f64> = text
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        if let [started, answered] = times[..] {
            found.insert((wid, pid), (started, answered));
        }
    }
    found
}

/// A watcher with a shared socket and an http readiness check, whose processes are not
/// ready for a second: during a `restart --rolling` with surge, no old process leaves
/// /proc before its replacement has passed its readiness probe, and a client's loop of
/// requests on the socket sees no failure.
#[test]
fn with_a_ready_check_the_old_process_stays_until_its_replacement_is_ready() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temporary dir");
    let script = dir.path().join("warming.py");
    std::fs::write(&script, WARMING_SERVER).expect("write the server");
    let prefix = health_port_prefix();
    let config = format!(
        r#"
[socket.http]
host = "127.0.0.1"
port = 0

[watcher.web]
cmd = "{py}"
args = ["{script}", "{prefix}$(wid)", "{delay}", "$(wid)", "{dir}", "{examples}"]
numprocesses = 2
sockets = ["http"]
max_surge = 1
min_uptime = "300ms"
graceful_timeout = "10s"
ready = {{ http = "http://127.0.0.1:{prefix}$(wid)/ready", timeout = "20s", interval = "100ms" }}
"#,
        py = python(),
        script = script.display(),
        examples = example_server().parent().expect("examples/").display(),
        delay = WARMUP.as_secs_f64(),
        dir = dir.path().display(),
    );
    let agent = Agent::start(&nats, "surge-ready", &config);
    let addr = http_address(&agent);
    wait_until(T, "both processes of web ready", || {
        agent.ctl_ok(&["status", "web"])["watchers"][0]["ready"].as_u64() == Some(2)
    });
    let old = agent.pids("web");
    let old_pids: BTreeSet<u32> = old.iter().map(|p| p.1).collect();
    let url = nats.url();
    let (stop, done) = (AtomicBool::new(false), AtomicU64::new(0));
    let (tally, restart, checks) = std::thread::scope(|s| {
        let client = s.spawn(|| load(addr, &stop, &done));
        let _stop = StopOnDrop(&stop);
        wait_requests(&done, 20);
        let restart = s.spawn(|| {
            ctl_url(
                &url,
                &["--node", "surge-ready", "restart", "web", "--rolling"],
            )
        });
        // Until the restart ends and every old process is gone: an old process that
        // has left /proc has a replacement in its slot that answered its probe (the
        // server writes its file before it answers, and the agent stops the old
        // process only after the answer).
        let mut checks = 0u32;
        wait_until(
            T,
            "the rolling restart over, every old process gone",
            || {
                let gone: Vec<(u32, u32)> = old
                    .iter()
                    .filter(|(_, pid)| !is_alive(*pid))
                    .copied()
                    .collect();
                let ready = ready_files(dir.path());
                for (wid, pid) in &gone {
                    assert!(
                        ready.keys().any(|(w, p)| w == wid && !old_pids.contains(p)),
                        "old process {pid} of slot {wid} left /proc before its replacement was \
                     ready; ready so far: {ready:?}"
                    );
                }
                checks += 1;
                restart.is_finished() && gone.len() == old.len()
            },
        );
        let out = restart.join().expect("the restart");
        wait_requests(&done, 20);
        stop.store(true, Ordering::Relaxed);
        (client.join().expect("the client"), out, checks)
    });
    restart.expect_code(0, "restart web --rolling");
    let new = agent.pids("web");
    let ready = ready_files(dir.path());
    let mut warmups = Vec::new();
    for (wid, pid) in &new {
        assert!(
            !old_pids.contains(pid),
            "slot {wid} was not replaced: {new:?}"
        );
        assert!(is_alive(*pid), "new process {pid} is not in /proc");
        let (started, answered) = ready
            .get(&(*wid, *pid))
            .unwrap_or_else(|| panic!("no readiness answer from {pid}: {ready:?}"));
        warmups.push(answered - started);
        assert!(
            answered - started >= WARMUP.as_secs_f64() * 0.95,
            "replacement {pid} was ready after {:.2}s",
            answered - started
        );
    }
    eprintln!(
        "figures: ready check with surge: {} requests, {} failed, slowest {:.1} ms; \
         replacements ready after {warmups:.2?} s; {checks} /proc checks",
        tally.requests,
        tally.failures.len(),
        tally.slowest.as_secs_f64() * 1000.0
    );
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert!(
        !tally.pids.is_disjoint(&old_pids),
        "no answer from the old processes: {:?}",
        tally.pids
    );
}
