//! Readiness and liveness checks on real processes: each `ready` form (tcp, http,
//! exec, notify) holds a start and each step of a rolling restart until the new process
//! is ready; a process not ready in time is stopped and its start counted as failed;
//! a process failing its `live` check is restarted with an `unhealthy` event; a process
//! that gets a shared socket reports ready by notify too. The test servers are small
//! Python programs that become ready after a delay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// How long a test server takes to become ready.
const DELAY: Duration = Duration::from_millis(1500);

/// One server for every form: sleeps, then becomes ready as `mode` says. `tcp` and
/// `http` listen on the port (`http` answers 200, or 500 while the sick file exists);
/// `file` creates `<dir>/ready-<its pid>`; `notify` sends READY=1 to NOTIFY_SOCKET.
const SERVER: &str = r#"
import os, socket, sys, time
mode, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
extra = sys.argv[4] if len(sys.argv) > 4 else None
time.sleep(delay)
if mode == "notify":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"STATUS=warming up", os.environ["NOTIFY_SOCKET"])
    s.sendto(b"STATUS=done\nREADY=1\n", os.environ["NOTIFY_SOCKET"])
    while True:
        time.sleep(3600)
if mode == "file":
    open(os.path.join(extra, "ready-%d" % os.getpid()), "w").close()
    while True:
        time.sleep(3600)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(64)
while True:
    c, _ = ls.accept()
    if mode == "http":
        c.settimeout(2)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            sick = extra is not None and os.path.exists(extra)
            code = "500 Sick" if sick else "200 OK"
            c.sendall(("HTTP/1.1 %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok" % code).encode())
        except OSError:
            pass
    c.close()
"#;

/// The Python interpreter itself (not a shim that needs the caller's environment).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes the test server into `dir`.
fn server(dir: &Path) -> PathBuf {
    let path = dir.join("server.py");
    std::fs::write(&path, SERVER).expect("write the server");
    path
}

/// A prefix `p` such that ports `p1` and `p2` (`"{p}$(wid)"`) are free now, below the
/// range the kernel hands out for outgoing connections and port 0 (so that no
/// client or server of another test takes them meanwhile).
fn port_prefix() -> u32 {
    let free = |p: u32| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
    (0..200)
        .map(|i| 1100 + (free_port() as u32 + i * 37) % 2000)
        .find(|p| free(p * 10 + 1) && free(p * 10 + 2))
        .expect("two free ports")
}

fn node(name: &str, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\n\
         [nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

/// The processes of `w` as `ctl list w --json` gives them.
fn processes(agent: &Agent, w: &str) -> Vec<Value> {
    agent.ctl_ok(&["list", w])["processes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ready_count(agent: &Agent, w: &str) -> u64 {
    agent.ctl_ok(&["status", w])["watchers"][0]["ready"]
        .as_u64()
        .unwrap_or(0)
}

/// Every process of `w` runs and is ready; returns their pids.
fn all_ready(agent: &Agent, w: &str, n: usize) -> Vec<u32> {
    let ps = processes(agent, w);
    assert_eq!(ps.len(), n, "{ps:?}");
    for p in &ps {
        assert_eq!(p["state"], "running", "{p}");
        assert_eq!(p["health"], "ready", "{p}");
    }
    ps.iter()
        .filter_map(|p| p["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// Runs `ctl --node NODE ARGS...` on a thread of its own.
fn ctl_in_background(
    nats: &NatsServer,
    node: &str,
    args: &[&str],
) -> std::thread::JoinHandle<CtlOutput> {
    let url = nats.url();
    let mut all = vec!["--node".to_owned(), node.to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    std::thread::spawn(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        ctl_url(&url, &args)
    })
}

/// The form under test: what the processes run and their `ready` check.
fn watcher(form: &str, script: &Path, dir: &Path, prefix: u32) -> String {
    let py = python();
    let script = script.display();
    let delay = DELAY.as_secs_f64();
    let (mode, extra, ready) = match form {
        "tcp" => (
            "tcp",
            String::new(),
            format!("{{ tcp = \"127.0.0.1:{prefix}$(wid)\" }}"),
        ),
        "http" => (
            "http",
            String::new(),
            format!("{{ http = \"http://127.0.0.1:{prefix}$(wid)/health\" }}"),
        ),
        "exec" => (
            "file",
            format!(", \"{}\"", dir.display()),
            format!(
                "{{ exec = [\"test\", \"-e\", \"{}/ready-$(pid)\"] }}",
                dir.display()
            ),
        ),
        "notify" => ("notify", String::new(), "{ notify = true }".to_owned()),
        other => panic!("no form {other}"),
    };
    let ready = ready.replace(" }", ", interval = \"100ms\", timeout = \"20s\" }");
    format!(
        "[watcher.w]\ncmd = \"{py}\"\nargs = [\"{script}\", \"{mode}\", \"{prefix}$(wid)\", \"{delay}\"{extra}]\n\
         numprocesses = 2\nautostart = false\nmin_uptime = \"100ms\"\ngraceful_timeout = \"5s\"\n\
         ready = {ready}\n"
    )
}

/// A start waits until every process is ready (status shows them starting
/// meanwhile), and a rolling restart waits for each new process in turn.
fn readiness_gates_start_and_rolling_restart(form: &str) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let script = server(tmp.path());
    let prefix = port_prefix();
    let nats = NatsServer::start();
    let agent = Agent::start_config(
        &nats,
        &node("a", &watcher(form, &script, tmp.path(), prefix)),
    );

    let start = ctl_in_background(&nats, "a", &["start", "w"]);
    let starting = wait_for(T, "both processes starting", || {
        let ps = processes(&agent, "w");
        let n = ps
            .iter()
            .filter(|p| p["pid"].is_u64() && p["health"] == "starting" && p["state"] == "starting")
            .count();
        (n == 2).then_some(ps)
    });
    eprintln!("{form}: starting: {starting:?}");
    assert_eq!(ready_count(&agent, "w"), 0);
    let out = start.join().expect("ctl start");
    out.expect_code(0, "ctl start w");
    eprintln!("{form}: start took {:?}", out.took);
    assert!(
        out.took >= DELAY - Duration::from_millis(100),
        "start returned after {:?}, before the processes could be ready",
        out.took
    );
    // Ready the moment the start returned.
    let old = all_ready(&agent, "w", 2);
    assert_eq!(ready_count(&agent, "w"), 2);
    if form == "tcp" || form == "http" {
        for wid in 1..=2 {
            let port = (prefix * 10 + wid) as u16;
            std::net::TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("{form}: port {port} is not served: {e}"));
        }
    }
    let sockets: Vec<String> = old
        .iter()
        .filter_map(|pid| env_var(*pid, "NOTIFY_SOCKET"))
        .collect();
    if form == "notify" {
        assert_eq!(sockets.len(), 2, "every process has a NOTIFY_SOCKET");
        for s in &sockets {
            let path = Path::new(s);
            assert!(path.starts_with(agent.state_dir().join("notify")), "{s}");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .expect("the socket")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{s}");
        }
    } else {
        assert!(sockets.is_empty(), "{sockets:?}");
    }

    // The rolling restart: one process at a time, each new one ready before the next
    // goes; at least one process is ready throughout.
    let roll = ctl_in_background(&nats, "a", &["restart", "w", "--rolling"]);
    let mut lowest = u64::MAX;
    while !roll.is_finished() {
        lowest = lowest.min(ready_count(&agent, "w"));
    }
    let out = roll.join().expect("ctl restart");
    out.expect_code(0, "ctl restart w --rolling");
    eprintln!(
        "{form}: rolling restart took {:?}; fewest ready during it: {lowest}",
        out.took
    );
    assert!(
        out.took >= 2 * DELAY - Duration::from_millis(200),
        "the roll took {:?}: it did not wait for each new process",
        out.took
    );
    assert!(
        lowest >= 1,
        "no process was ready at some point of the roll"
    );
    let new = all_ready(&agent, "w", 2);
    for pid in &old {
        assert!(!new.contains(pid), "{pid} was not restarted");
        assert!(!is_alive(*pid), "{pid} still runs");
    }
    for s in &sockets {
        assert!(!Path::new(s).exists(), "{s} outlived its process");
    }
}

#[test]
fn tcp_readiness_gates_start_and_rolling_restart() {
    readiness_gates_start_and_rolling_restart("tcp");
}

#[test]
fn http_readiness_gates_start_and_rolling_restart() {
    readiness_gates_start_and_rolling_restart("http");
}

#[test]
fn exec_readiness_gates_start_and_rolling_restart() {
    readiness_gates_start_and_rolling_restart("exec");
}

#[test]
fn notify_readiness_gates_start_and_rolling_restart() {
    readiness_gates_start_and_rolling_restart("notify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_not_ready_in_time_is_stopped_and_its_start_fails() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.w.>").await;
    let secs = unique_secs();
    // Nothing ever listens on the port.
    let port = port_prefix() * 10 + 1;
    let w = format!(
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nautostart = false\n\
         min_uptime = \"100ms\"\nmax_retry = 1\nrestart_delay = \"200ms\"\n\
         ready = {{ tcp = \"127.0.0.1:{port}\", timeout = \"1s\", interval = \"100ms\" }}\n"
    );
    let agent = Agent::start_config(&nats, &node("a", &w));

    let out = agent.ctl(&["start", "w"]);
    eprintln!("start: {:?}\n{}{}", out.took, out.stdout, out.stderr);
    out.expect_code(1, "a start whose process is never ready");
    for needle in [
        "process 1 of 'w' did not come up: not ready: health check did not pass within 1s",
        &format!("tcp 127.0.0.1:{port}"),
        "refused",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    assert!(out.took >= Duration::from_millis(900), "{:?}", out.took);

    let ev = events
        .next_where(T, "an unhealthy event", |v| v["kind"] == "unhealthy")
        .await;
    eprintln!("unhealthy: {ev}");
    assert_eq!(ev["wid"], 1);
    assert!(ev["pid"].is_u64(), "{ev}");
    let reason = ev["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("did not pass within 1s"), "{reason}");
    // The process it was about is stopped.
    let pid = ev["pid"].as_u64().unwrap_or_default() as u32;
    wait_until(T, "the unready process gone", || !is_alive(pid));

    // A failed start each time: after max_retry + 1 of them, fatal with the reason.
    let summary = wait_for(T, "w fatal", || {
        let s = agent.ctl_ok(&["status", "w"])["watchers"][0].clone();
        (s["state"] == "fatal").then_some(s)
    });
    eprintln!("status: {summary}");
    let reason = summary["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("gave up after 2 failed starts in a row (last: not ready: health check did not pass within 1s"),
        "{reason}"
    );
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_failure_restarts_the_process_with_an_unhealthy_event() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let script = server(tmp.path());
    let sick = tmp.path().join("sick");
    let port = port_prefix() * 10 + 1;
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.w.>").await;
    let url = format!("http://127.0.0.1:{port}/health");
    let w = format!(
        "[watcher.w]\ncmd = \"{py}\"\nargs = [\"{script}\", \"http\", \"{port}\", \"0.2\", \"{sick}\"]\n\
         min_uptime = \"100ms\"\ngraceful_timeout = \"5s\"\n\
         ready = {{ http = \"{url}\", interval = \"100ms\" }}\n\
         live = {{ http = \"{url}\", interval = \"200ms\", timeout = \"1s\", failures = 2 }}\n",
        py = python(),
        script = script.display(),
        sick = sick.display(),
    );
    let agent = Agent::start_config(&nats, &node("a", &w));
    let old = wait_for(T, "the process ready", || {
        let ps = processes(&agent, "w");
        (ps.len() == 1 && ps[0]["health"] == "ready").then(|| ps[0]["pid"].as_u64())?
    }) as u32;
    // Stats carry its health (from the latest sample, every stats_interval).
    wait_until(T, "stats saying it is ready", || {
        let stats = agent.ctl_ok(&["stats", "w"]);
        let p = &stats["watchers"][0]["processes"][0];
        p["pid"] == old && p["health"] == "ready"
    });
    // Live probes pass: it keeps running.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(processes(&agent, "w")[0]["pid"], old);

    std::fs::write(&sick, "").expect("make it sick");
    let sick_at = std::time::Instant::now();
    let ev = events
        .next_where(T, "an unhealthy event", |v| v["kind"] == "unhealthy")
        .await;
    std::fs::remove_file(&sick).expect("make it well");
    eprintln!("unhealthy after {:?}: {ev}", sick_at.elapsed());
    assert_eq!(ev["pid"], old, "{ev}");
    assert_eq!(ev["wid"], 1, "{ev}");
    let reason = ev["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("liveness check failed 2 times in a row")
            && reason.contains(&format!("http {url}"))
            && reason.contains("answered 500"),
        "{reason}"
    );
    let exit = events
        .next_where(T, "an exit event", |v| v["kind"] == "exit")
        .await;
    assert_eq!(exit["pid"], old, "{exit}");
    let spawn = events
        .next_where(T, "a spawn event", |v| v["kind"] == "spawn")
        .await;
    let new = spawn["pid"].as_u64().expect("a pid") as u32;
    assert_ne!(new, old);
    wait_until(T, "the new process ready", || {
        let ps = processes(&agent, "w");
        ps.len() == 1 && ps[0]["pid"] == new && ps[0]["health"] == "ready"
    });
    eprintln!("ready again {:?} after it fell sick", sick_at.elapsed());
    assert!(!is_alive(old), "the unhealthy process {old} still runs");
    assert!(is_alive(new));
    assert_eq!(processes(&agent, "w")[0]["restarts"], 1);
}

/// Without checks, a process is starting for `min_uptime`, then ready, in `list`,
/// `status` and the stats, and its wire state is as before (`starting`, `running`).
#[test]
fn without_checks_a_process_is_ready_after_min_uptime_everywhere() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = format!(
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nmin_uptime = \"300ms\"\n\
         numprocesses = 2\n"
    );
    let agent = Agent::start_config(&nats, &node("a", &w));
    wait_until(T, "both processes ready in list", || {
        let ps = processes(&agent, "w");
        ps.len() == 2
            && ps
                .iter()
                .all(|p| p["state"] == "running" && p["health"] == "ready")
    });
    assert_eq!(ready_count(&agent, "w"), 2);
    let table = agent.ctl(&["status", "w"]).table();
    assert_eq!(table[0]["READY"], "2", "{table:?}");
    let table = agent.ctl(&["list", "w"]).table();
    assert!(table.iter().all(|r| r["HEALTH"] == "ready"), "{table:?}");
    // The stats stream's sample follows without any other change.
    wait_until(T, "stats saying both are ready", || {
        let stats = agent.ctl_ok(&["stats", "w"]);
        let ps = stats["watchers"][0]["processes"].as_array().cloned();
        ps.is_some_and(|ps| ps.len() == 2 && ps.iter().all(|p| p["health"] == "ready"))
    });
}

/// Over NATS: a check that runs a command needs allow_remote_exec, as health_cmd does;
/// a tcp check does not, and a hostile one is refused with its range.
#[test]
fn a_remote_exec_check_is_refused_and_a_tcp_check_is_set() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n");
    let agent = Agent::start_config(&nats, &node("a", &w));
    let refused = |args: &[&str], errno: u32| {
        let (out, replies) = agent.ctl_json(args);
        out.expect_code(1, &format!("{args:?}"));
        assert_eq!(replies[0]["errno"], errno, "{args:?}: {}", replies[0]);
        replies[0]["reason"].as_str().unwrap_or_default().to_owned()
    };
    for (key, value) in [
        ("ready", r#"{"exec": ["touch", "/tmp/owned"]}"#),
        (
            "live",
            r#"{"exec": ["touch", "/tmp/owned"], "failures": 1}"#,
        ),
        ("health_cmd", r#"["touch", "/tmp/owned"]"#),
    ] {
        let reason = refused(&["set", "w", key, value], 5);
        assert!(reason.contains("allow_remote_exec"), "{reason}");
    }
    let reason = refused(
        &[
            "set",
            "w",
            "live",
            r#"{"tcp": "127.0.0.1:1", "failures": 0}"#,
        ],
        2,
    );
    assert!(
        reason.contains("option 'live.failures': 0 is out of range; use 1 to 1000"),
        "{reason}"
    );
    agent.ctl_ok(&[
        "set",
        "w",
        "ready",
        r#"{"tcp": "127.0.0.1:80$(wid)", "timeout": "5s"}"#,
    ]);
    let got = agent.ctl_ok(&["get", "w", "ready"]);
    assert_eq!(
        got["options"]["ready"],
        serde_json::json!({"tcp": "127.0.0.1:80$(wid)", "timeout": "5s", "interval": "200ms"}),
        "{got}"
    );
}

/// A server on the socket the agent passes at fd 3 that, after `DELAY`, reports
/// READY=1 and answers each connection with its pid and the socket variables it got.
const SOCKET_SERVER: &str = r#"
import os, socket, sys, time
sock = socket.socket(fileno=3)
time.sleep(float(sys.argv[1]))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    c, _ = sock.accept()
    with c:
        c.sendall(("pid=%d LISTEN_FDS=%s LISTEN_PID=%s\n" % (
            os.getpid(), os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID"))).encode())
"#;

/// A watcher with a shared socket and a notify check: its processes get both the socket
/// (at fd 3, with LISTEN_*) and NOTIFY_SOCKET, a start waits until they report ready,
/// and they answer on the socket.
#[test]
fn a_watcher_with_a_socket_is_ready_by_notify_and_answers_on_it() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let script = tmp.path().join("socket_server.py");
    std::fs::write(&script, SOCKET_SERVER).expect("write the server");
    let nats = NatsServer::start();
    let watchers = format!(
        "[socket.web]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [watcher.w]\ncmd = \"{py}\"\nargs = [\"{script}\", \"{delay}\"]\nnumprocesses = 2\n\
         autostart = false\nmin_uptime = \"100ms\"\ngraceful_timeout = \"5s\"\n\
         sockets = [\"web\"]\n\
         ready = {{ notify = true, interval = \"100ms\", timeout = \"20s\" }}\n",
        py = python(),
        script = script.display(),
        delay = DELAY.as_secs_f64(),
    );
    let agent = Agent::start_config(&nats, &node("a", &watchers));

    let out = agent.ctl(&["start", "w"]);
    out.expect_code(0, "ctl start w");
    assert!(
        out.took >= DELAY - Duration::from_millis(100),
        "start returned after {:?}, before the processes could be ready",
        out.took
    );
    let pids = all_ready(&agent, "w", 2);
    assert_eq!(ready_count(&agent, "w"), 2);
    for pid in &pids {
        let notify = env_var(*pid, "NOTIFY_SOCKET")
            .unwrap_or_else(|| panic!("{pid} has no NOTIFY_SOCKET: {:?}", environ(*pid)));
        assert!(
            Path::new(&notify).starts_with(agent.state_dir().join("notify")),
            "{notify}"
        );
        assert_eq!(env_var(*pid, "LISTEN_FDS").as_deref(), Some("1"));
        assert_eq!(env_var(*pid, "LISTEN_PID"), Some(pid.to_string()));
    }

    let listed = agent.ctl_ok(&["listsockets"]);
    let web = listed["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .unwrap_or_else(|| panic!("no socket web in {listed}"))
        .clone();
    assert_eq!(web["watchers"], serde_json::json!(["w"]), "{web}");
    let addr = web["address"].as_str().expect("an address").to_owned();
    let mut conn =
        std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(bound(T)))
        .expect("a read timeout");
    let mut line = String::new();
    std::io::Read::read_to_string(&mut conn, &mut line)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let pid = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    assert!(pids.contains(&pid), "{line:?} is not from {pids:?}");
    assert!(line.contains("LISTEN_FDS=1 "), "{line:?}");
}
