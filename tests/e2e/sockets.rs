//! Sockets bound by the agent (`[socket.NAME]`) and handed to processes: a Python
//! server receives its fd under systemd's convention (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`, fds from 3) and under Circus's (`$(sockets.NAME)` in args and in
//! env), two processes accept on one socket, a taken port stops the agent's start (and
//! a reload) naming the socket, `listsockets` lists them, IPv6 and unix sockets work,
//! and `sockets` on `set` is guarded like the other keys that change what a process
//! gets.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// A server on an inherited listening socket: it answers each connection with one line
/// saying how it found its fd, then closes it.
const SERVER: &str = r#"
import os, socket, sys
mode, pid = sys.argv[1], os.getpid()
if mode == "systemd":
    names = os.environ["LISTEN_FDNAMES"].split(":")
    fd = 3 + names.index(sys.argv[2])
    info = "LISTEN_PID=%s LISTEN_FDS=%s LISTEN_FDNAMES=%s" % (
        os.environ["LISTEN_PID"], os.environ["LISTEN_FDS"], os.environ["LISTEN_FDNAMES"])
elif mode == "args":
    fd, info = int(sys.argv[2]), ""
else:
    fd, info = int(os.environ["WEB_FD"]), ""
sock = socket.socket(fileno=fd)
while True:
    conn, _ = sock.accept()
    with conn:
        conn.sendall(("%s pid=%d fd=%d %s\n" % (mode, pid, fd, info)).encode())
"#;

/// The Python to run: the system's, not a version manager's shim (which wants a home).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Writes the server script into `dir`.
fn server_script(dir: &Path) -> PathBuf {
    let path = dir.join("server.py");
    std::fs::write(&path, SERVER).expect("write the server script");
    path
}

/// `listsockets --json`: name to (kind, address, fd, watchers).
fn sockets(agent: &Agent) -> Vec<Value> {
    let r = agent.ctl_ok(&["listsockets"]);
    r["sockets"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no sockets in {r}"))
}

fn address(agent: &Agent, name: &str) -> String {
    sockets(agent)
        .into_iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["address"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no socket {name}"))
}

/// One line from a server at `addr` (the connection waits in the backlog until a
/// process accepts it).
fn ask(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(bound(T))).expect("a read timeout");
    let mut line = String::new();
    s.read_to_string(&mut line)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    line
}

fn one_pid(agent: &Agent, watcher: &str) -> u32 {
    wait_for(T, &format!("a running process of {watcher}"), || {
        agent.pids(watcher).first().map(|p| p.1)
    })
}

/// The fds of `pid` that are sockets.
fn socket_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's fds")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    fds
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn a_python_server_gets_its_socket_under_both_conventions() {
    let nats = NatsServer::start();
    let scripts = tempfile::tempdir().expect("a temporary dir");
    let server = server_script(scripts.path());
    let py = python();
    let server = server.display();
    let agent = Agent::start(
        &nats,
        "sock1",
        &format!(
            r#"
[socket.sd]
port = 0
[socket.spare]
port = 0
[socket.byargs]
host = "127.0.0.1"
port = 0
backlog = 64
[socket.byenv]
port = 0
reuseport = true

[watcher.sd]
cmd = "{py}"
args = ["{server}", "systemd", "sd"]
numprocesses = 2
sockets = ["sd"]

[watcher.byargs]
cmd = "{py}"
args = ["{server}", "args", "$(sockets.byargs)"]
sockets = ["spare", "byargs"]

[watcher.byenv]
cmd = "{py}"
args = ["{server}", "env"]
env = {{ WEB_FD = "$(circus.sockets.byenv)" }}
sockets = ["byenv"]

[watcher.plain]
cmd = "sleep"
args = ["1000"]
"#
        ),
    );
    // systemd's convention: LISTEN_PID is the process's own pid.
    let line = ask(&address(&agent, "sd"));
    assert_eq!(field(&line, "LISTEN_PID"), field(&line, "pid"), "{line}");
    assert_eq!(field(&line, "LISTEN_FDS"), "1", "{line}");
    assert_eq!(field(&line, "LISTEN_FDNAMES"), "sd", "{line}");
    assert_eq!(field(&line, "fd"), "3", "{line}");
    // Both processes of the watcher accept on the one socket.
    let sd = address(&agent, "sd");
    let mut seen = BTreeSet::new();
    wait_until(T, "both processes of sd to answer", || {
        seen.insert(field(&ask(&sd), "pid").to_owned());
        seen.len() == 2
    });
    let pids: BTreeSet<String> = agent
        .pids("sd")
        .into_iter()
        .map(|(_, p)| p.to_string())
        .collect();
    assert_eq!(seen, pids, "the answers come from the watcher's processes");
    // Circus's convention in args: the second socket of the list is fd 4.
    let line = ask(&address(&agent, "byargs"));
    assert!(line.starts_with("args "), "{line}");
    assert_eq!(field(&line, "fd"), "4", "{line}");
    // ... and in env.
    let line = ask(&address(&agent, "byenv"));
    assert!(line.starts_with("env "), "{line}");
    assert_eq!(field(&line, "fd"), "3", "{line}");
    // A watcher without sockets gets no socket and no LISTEN_ variable; one with a
    // socket has that one only, at fd 3 (no leftover copy).
    let plain = one_pid(&agent, "plain");
    assert_eq!(socket_fds(plain), Vec::<String>::new());
    for (_, pid) in agent.pids("sd") {
        assert_eq!(socket_fds(pid), ["3"]);
    }
    assert!(
        !environ(plain).iter().any(|kv| kv.starts_with("LISTEN_")),
        "{:?}",
        environ(plain)
    );
    // After a restart, the new processes get the same socket.
    agent.ctl_ok(&["restart", "sd"]);
    let line = ask(&sd);
    assert_eq!(field(&line, "LISTEN_PID"), field(&line, "pid"), "{line}");
    assert!(!seen.contains(field(&line, "pid")), "{line}");
}

#[test]
fn listsockets_shows_each_socket_its_real_port_and_its_watchers() {
    let nats = NatsServer::start();
    let agent = Agent::start(
        &nats,
        "sock2",
        r#"
[socket.web]
port = 0
[socket.idle]
host = "127.0.0.1"
port = 0

[watcher.w]
cmd = "sleep"
args = ["1000"]
sockets = ["web"]
"#,
    );
    let all = sockets(&agent);
    assert_eq!(all.len(), 2, "{all:?}");
    let web = all.iter().find(|s| s["name"] == "web").expect("web");
    assert_eq!(web["kind"], "tcp");
    assert_eq!(web["watchers"], serde_json::json!(["w"]));
    let addr: std::net::SocketAddr = web["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a socket address: {web}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port is shown");
    assert!(web["fd"].as_i64().is_some_and(|fd| fd > 2), "{web}");
    // A socket no watcher lists is bound all the same.
    let idle = all.iter().find(|s| s["name"] == "idle").expect("idle");
    assert_eq!(idle["watchers"], serde_json::json!([]));
    let idle_addr = idle["address"].as_str().expect("an address");
    TcpStream::connect(idle_addr).expect("the idle socket listens");
    // The table.
    let out = agent.ctl(&["listsockets"]);
    out.expect_code(0, "listsockets");
    let rows = out.table();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    let row = rows.iter().find(|r| r["NAME"] == "web").expect("a web row");
    assert_eq!(row["KIND"], "tcp");
    assert_eq!(row["ADDRESS"], addr.to_string());
    assert_eq!(row["FD"], web["fd"].to_string());
    assert_eq!(row["WATCHERS"], "w");
    // The process got it at fd 3.
    let pid = one_pid(&agent, "w");
    let link = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3");
    assert!(link.to_string_lossy().starts_with("socket:"), "{link:?}");
    assert_eq!(env_var(pid, "LISTEN_FDS").as_deref(), Some("1"));
    assert_eq!(env_var(pid, "LISTEN_PID"), Some(pid.to_string()));
}

#[test]
fn a_port_in_use_stops_the_start_and_a_reload_naming_the_socket() {
    let nats = NatsServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port();
    let dir = tempfile::tempdir().expect("a temporary dir");
    let conf = dir.path().join("node.toml");
    let text = format!(
        "{}[socket.web]\nport = {port}\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\nsockets = [\"web\"]\n",
        e2e::agent::base_config("sock3", &nats.url(), dir.path())
    );
    std::fs::write(&conf, text).expect("write the config");
    let p = conf.to_str().expect("a UTF-8 path");
    let out = nodeagent(&["-c", p], T);
    out.expect_code(2, "an agent whose socket's port is taken");
    for needle in [p, "[socket.web]", &format!("127.0.0.1:{port}"), "in use"] {
        assert!(out.stderr.contains(needle), "no {needle:?}: {}", out.stderr);
    }
    // A reload that adds a socket on a taken port is refused; nothing changes.
    let agent = Agent::start(
        &nats,
        "sock4",
        "[socket.web]\nport = 0\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\nsockets = [\"web\"]\n",
    );
    let before = agent.pids("w");
    let web = address(&agent, "web");
    agent.write_watchers(&format!(
        "[socket.web]\nport = 0\n[socket.busy]\nport = {port}\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\nsockets = [\"web\", \"busy\"]\n"
    ));
    let (out, replies) = agent.ctl_json(&["reloadconfig"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("[socket.busy]")
            && reason.contains(&format!("127.0.0.1:{port}"))
            && reason.contains("nothing was changed"),
        "{reason}"
    );
    assert_eq!(agent.pids("w"), before);
    assert_eq!(address(&agent, "web"), web);
    assert_eq!(sockets(&agent).len(), 1);
    drop(taken);
}

#[test]
fn ipv6_and_unix_sockets_with_their_mode() {
    let nats = NatsServer::start();
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !v6 {
        eprintln!("note: ::1 is not available here; the IPv6 socket is left out");
    }
    let scripts = tempfile::tempdir().expect("a temporary dir");
    let server = server_script(scripts.path());
    let (py, server) = (python(), server.display());
    let mut toml = format!(
        r#"
[socket.local]
path = "{{dir}}/web.sock"
mode = "0660"

[watcher.local]
cmd = "{py}"
args = ["{server}", "systemd", "local"]
sockets = ["local"]
"#
    );
    if v6 {
        toml.push_str(&format!(
            r#"
[socket.v6]
host = "::1"
port = 0

[watcher.v6]
cmd = "{py}"
args = ["{server}", "systemd", "v6"]
sockets = ["v6"]
"#
        ));
    }
    let agent = Agent::start(&nats, "sock5", &toml);
    let path = agent.dir().join("web.sock");
    let meta = std::fs::symlink_metadata(&path).expect("the socket file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(address(&agent, "local"), path.display().to_string());
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect the unix socket");
    s.set_read_timeout(Some(bound(T))).expect("a read timeout");
    let _ = s.write_all(b"");
    let mut line = String::new();
    s.read_to_string(&mut line).expect("read its answer");
    assert_eq!(field(&line, "LISTEN_FDNAMES"), "local", "{line}");
    assert_eq!(field(&line, "LISTEN_PID"), field(&line, "pid"), "{line}");
    if v6 {
        let addr = address(&agent, "v6");
        assert!(addr.starts_with("[::1]:"), "{addr}");
        let line = ask(&addr);
        assert_eq!(field(&line, "LISTEN_FDNAMES"), "v6", "{line}");
    }
}

#[test]
fn sockets_on_set_need_remote_exec_and_a_known_socket() {
    let nats = NatsServer::start();
    let watchers = "[socket.web]\nport = 0\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\n";
    let agent = Agent::start(&nats, "sock6", watchers);
    let (out, replies) = agent.ctl_json(&["set", "w", "sockets", "[\"web\"]"]);
    assert_ne!(out.code, 0);
    assert_eq!(replies[0]["errno"], 5, "{:?}", replies);
    assert!(
        replies[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("'sockets'")),
        "{replies:?}"
    );
    let open = Agent::start_config(
        &nats,
        &format!(
            "[agent]\nname = \"sock7\"\nstate_dir = \"{{dir}}/state\"\nallow_remote_exec = true\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
        ),
    );
    let (_, replies) = open.ctl_json(&["set", "w", "sockets", "[\"nope\"]"]);
    assert_eq!(replies[0]["errno"], 2, "{replies:?}");
    assert!(
        replies[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no socket 'nope'")),
        "{replies:?}"
    );
    let before = one_pid(&open, "w");
    open.ctl_ok(&["set", "w", "sockets", "[\"web\"]"]);
    // What a process gets changed: it was restarted with the socket.
    let pid = wait_for(T, "a new process of w", || {
        open.pids("w").first().map(|p| p.1).filter(|p| *p != before)
    });
    assert_eq!(env_var(pid, "LISTEN_FDS").as_deref(), Some("1"));
    assert_eq!(env_var(pid, "LISTEN_FDNAMES").as_deref(), Some("web"));
    let web = sockets(&open)
        .into_iter()
        .find(|s| s["name"] == "web")
        .expect("web");
    assert_eq!(web["watchers"], serde_json::json!(["w"]));
}

/// The README's example: `examples/socket_http.py` serves HTTP on the inherited socket,
/// under either convention.
#[test]
fn the_example_web_server_answers_http_on_its_socket() {
    let nats = NatsServer::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_http.py");
    let script = script.canonicalize().expect("examples/socket_http.py");
    let (py, script) = (python(), script.display());
    let agent = Agent::start(
        &nats,
        "sock8",
        &format!(
            r#"
[socket.http]
port = 0
[socket.alt]
port = 0

[watcher.web]
cmd = "{py}"
args = ["{script}"]
numprocesses = 2
sockets = ["http"]

[watcher.web-circus]
cmd = "{py}"
args = ["{script}", "--fd", "$(sockets.alt)"]
sockets = ["http", "alt"]
"#
        ),
    );
    for name in ["http", "alt"] {
        let addr = address(&agent, name);
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(bound(T))).expect("a read timeout");
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("send a request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read the answer");
        assert!(
            answer.starts_with("HTTP/1.0 200") && answer.contains("hello from pid"),
            "{name}: {answer}"
        );
    }
}

/// A reload that moves a socket binds the new address first, restarts the watchers
/// that use it, and closes the old one once no process holds it.
#[test]
fn a_reload_that_moves_a_socket_restarts_its_watchers_on_the_new_one() {
    let nats = NatsServer::start();
    let scripts = tempfile::tempdir().expect("a temporary dir");
    let server = server_script(scripts.path());
    let watcher = format!(
        "[watcher.w]\ncmd = \"{}\"\nargs = [\"{}\", \"systemd\", \"web\"]\nsockets = [\"web\"]\ngraceful_timeout = \"2s\"\n",
        python(),
        server.display()
    );
    let agent = Agent::start(
        &nats,
        "sock9",
        &format!("[socket.web]\nport = 0\n\n{watcher}"),
    );
    let old = address(&agent, "web");
    let first = ask(&old);
    let port = free_port();
    agent.write_watchers(&format!(
        "[socket.web]\nport = {port}\n[socket.extra]\npath = \"{{dir}}/extra.sock\"\n\n{watcher}"
    ));
    let r = agent.ctl_ok(&["reloadconfig"]);
    assert_eq!(r["changed"], serde_json::json!(["w"]), "{r}");
    let new = address(&agent, "web");
    assert_eq!(new, format!("127.0.0.1:{port}"));
    let line = ask(&new);
    assert_eq!(field(&line, "LISTEN_PID"), field(&line, "pid"), "{line}");
    assert_ne!(field(&line, "pid"), field(&first, "pid"), "{line}");
    assert!(agent.dir().join("extra.sock").exists());
    wait_until(T, "the old address to be closed", || {
        TcpStream::connect(&old).is_err()
    });
}

/// `reloadconfig --dry-run` after a socket's port is edited lists the socket's change
/// and the watcher that would restart to get it, and changes nothing: the same
/// processes, the same sockets, the new port not bound. The reload then applies it:
/// the watcher's processes are replaced, one at a time, on the new socket; a watcher
/// without sockets is left alone.
#[test]
fn a_dry_run_lists_a_moved_socket_and_its_watcher_and_changes_nothing() {
    let nats = NatsServer::start();
    let scripts = tempfile::tempdir().expect("a temporary dir");
    let server = server_script(scripts.path());
    let secs = unique_secs();
    let watchers = format!(
        "[watcher.w]\ncmd = \"{}\"\nargs = [\"{}\", \"systemd\", \"web\"]\nsockets = [\"web\"]\n\
         numprocesses = 2\ngraceful_timeout = \"2s\"\n\n\
         [watcher.idle]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n",
        python(),
        server.display()
    );
    let agent = Agent::start(
        &nats,
        "sock10",
        &format!("[socket.web]\nport = 0\n\n{watchers}"),
    );
    wait_until(T, "2 processes of w and 1 of idle", || {
        agent.pids("w").len() == 2 && agent.pids("idle").len() == 1
    });
    let (w0, idle0, listed0) = (agent.pids("w"), agent.pids("idle"), sockets(&agent));
    let old = address(&agent, "web");
    let port = free_port();
    agent.write_watchers(&format!("[socket.web]\nport = {port}\n\n{watchers}"));

    let plan = agent.ctl_ok(&["reloadconfig", "--dry-run"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["changed"], json!(["w"]), "{plan}");
    assert_eq!(
        plan["sockets"],
        json!([{"name": "web", "action": "changed",
                "changes": [{"key": "port", "old": 0, "new": port}]}]),
        "{plan}"
    );
    assert_eq!(
        plan["watchers"],
        json!([{"name": "w", "action": "changed", "restart": true,
                "changes": [{"key": "socket.web", "old": old,
                             "new": format!("127.0.0.1:{port}")}]}]),
        "{plan}"
    );
    let out = agent.ctl(&["reloadconfig", "--dry-run"]);
    out.expect_code(0, "ctl reloadconfig --dry-run");
    println!("ctl reloadconfig --dry-run:\n{}", out.stdout);
    for needle in [
        "dry run: the plan below, nothing was changed".to_owned(),
        format!("socket.web: {old} -> 127.0.0.1:{port} (rolling restart)"),
        "socket changed".to_owned(),
        format!("port: 0 -> {port}"),
    ] {
        assert!(
            out.stdout.contains(&needle),
            "no {needle:?} in\n{}",
            out.stdout
        );
    }
    // Nothing changed.
    assert_eq!(agent.pids("w"), w0);
    assert_eq!(agent.pids("idle"), idle0);
    assert_eq!(sockets(&agent), listed0);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "{port} is bound"
    );
    assert!(ask(&old).starts_with("systemd"));

    let (applied, took) = timed(|| agent.ctl_ok(&["reloadconfig"]));
    println!("reloadconfig applied in {took:?}");
    assert_eq!(applied["dry_run"], false, "{applied}");
    assert_eq!(applied["changed"], json!(["w"]), "{applied}");
    assert_eq!(applied["watchers"][0]["restart"], true, "{applied}");
    let new = address(&agent, "web");
    assert_eq!(new, format!("127.0.0.1:{port}"));
    // The reply came once both processes of w were replaced.
    let w1 = agent.pids("w");
    assert_eq!(w1.len(), 2, "{w1:?}");
    assert!(w1.iter().all(|p| !w0.contains(p)), "{w0:?} -> {w1:?}");
    let line = ask(&new);
    let pid: u32 = field(&line, "pid").parse().expect("a pid");
    assert!(
        w1.iter().any(|(_, p)| *p == pid),
        "{line} from none of {w1:?}"
    );
    assert_eq!(agent.pids("idle"), idle0);
    wait_until(T, "the old address to be closed", || {
        TcpStream::connect(&old).is_err()
    });
}

/// After a crash, what is left of the old run (a process its child started, which
/// inherited the socket) is ended before the socket is bound again, so the agent starts.
#[test]
fn after_a_crash_the_agent_binds_its_port_again() {
    let nats = NatsServer::start();
    let port = free_port();
    let secs = unique_secs();
    let mut agent = Agent::start(
        &nats,
        "sock10",
        &format!(
            "[socket.web]\nport = {port}\n\n[watcher.w]\ncmd = \"sh\"\nargs = [\"-c\", \"sleep {secs} & wait\"]\nsockets = [\"web\"]\n"
        ),
    );
    let (_, leader) = wait_for(T, "a process of w", || agent.pids("w").first().copied());
    let _cleanup = KillGroupOnDrop(leader);
    wait_until(T, "the shell and its sleep", || {
        group_members(leader).len() == 2
    });
    agent.kill();
    // The sleep outlives the shell and holds the listening socket.
    wait_until(T, "the shell to be gone", || !is_alive(leader));
    assert_eq!(group_members(leader).len(), 1);
    agent.start_again();
    assert_eq!(address(&agent, "web"), format!("127.0.0.1:{port}"));
    // The new run's shell and sleep (both name it), and nothing of the old run.
    wait_until(T, "only the new run's shell and sleep", || {
        count_processes_with_cmdline(&format!("sleep {secs}")) == 2
            && group_members(leader).is_empty()
    });
}
