//! Running on real hosts: the agent tells systemd it is ready and stopping (a real
//! agent and a notify socket the test binds, as systemd does for `Type=notify`), the
//! shipped unit passes `systemd-analyze verify`, and the three-server NATS cluster of
//! examples/nats-cluster/ forms (two routes on each server) and carries a command from
//! ctl on one server to an agent on another, and `$SRV.PING` on one server to every
//! agent.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(20);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The datagrams on `socket` until one has `want` as a line; all of them, in order.
fn notifications_until(socket: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + bound(T);
    let mut got = vec![];
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {want} on the notify socket; got {got:?}"
        );
        socket.set_read_timeout(Some(left)).expect("a read timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                got.push(msg);
                if done {
                    return got;
                }
            }
            Err(e) => panic!("no {want} on the notify socket ({e}); got {got:?}"),
        }
    }
}

#[test]
fn the_agent_tells_systemd_ready_once_it_serves_and_stopping_when_it_stops() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temporary dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind a notify socket");
    let config = "[agent]\nname = \"first\"\nstate_dir = \"{dir}/state\"\n\n\
                  [nats]\nservers = [\"{nats_url}\"]\n\n\
                  [watcher.dummy]\ncmd = \"sleep\"\nargs = [\"1000\"]\nnumprocesses = 1\n";
    let path_text = path.to_str().expect("a UTF-8 path");
    let mut agent = Agent::start_config_env(&nats, config, &[("NOTIFY_SOCKET", path_text)]);

    // The harness's ping is answered: READY=1 was sent before, with a status line.
    let ready = notifications_until(&socket, "READY=1");
    let last = ready.last().expect("a notification");
    assert!(
        last.lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("first")),
        "{ready:?}"
    );
    // Its processes do not inherit systemd's socket.
    wait_until(T, "the agent to run its process", || {
        agent.running_children().len() == 1
    });
    for pid in agent.running_children() {
        assert_eq!(env_var(pid, "NOTIFY_SOCKET"), None, "process {pid}");
    }

    let status = agent.terminate();
    assert!(status.success(), "the agent exited with {status}");
    let stopping = notifications_until(&socket, "STOPPING=1");
    assert!(
        stopping.iter().any(|m| m.contains("STATUS=stopping")),
        "{stopping:?}"
    );
}

/// `systemd-analyze verify` on `unit`; `None` (with the reason printed) where the tool
/// is missing.
fn verify_unit(unit: &Path) -> Option<(bool, String)> {
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: systemd-analyze cannot run here ({e})");
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && text.trim().is_empty(), text))
}

/// The shipped unit with its /usr/bin programs taken from `bin_dir` instead, so that
/// the check finds them.
fn unit_for(unit_text: &str, bin_dir: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("nodeagent.service");
    let text = unit_text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(repo("examples/systemd/nodeagent.service"))
        .expect("read examples/systemd/nodeagent.service");
    for key in [
        "Type=notify",
        "KillMode=mixed",
        "Restart=on-failure",
        "User=nodeagent",
    ] {
        assert!(text.lines().any(|l| l == key), "the unit lacks {key}");
    }
    let dir = tempfile::tempdir().expect("a temporary dir");
    let bins = bin("nodeagent");
    let unit = unit_for(&text, bins.parent().expect("a bin dir"), dir.path());
    if let Some((ok, report)) = verify_unit(&unit) {
        assert!(ok, "systemd-analyze verify:\n{report}");
    }
    // A typo is caught: the check is real.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).expect("a dir");
    let unit = unit_for(
        &text.replace("KillMode=mixed", "KilMode=mixed"),
        bins.parent().expect("a bin dir"),
        &broken,
    );
    if let Some((ok, report)) = verify_unit(&unit) {
        assert!(!ok && report.contains("KilMode"), "{report}");
    }
}

/// `GET path` on a monitoring port; the body, empty when it cannot be read.
fn monitor(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[test]
fn the_example_nats_cluster_forms_and_carries_commands_between_its_servers() {
    let example = repo("examples/nats-cluster");
    // The cluster's roles are the secure config's.
    let secure = std::fs::read_to_string(repo("examples/nats-secure.conf")).expect("read");
    let auth = std::fs::read_to_string(example.join("auth.conf")).expect("read auth.conf");
    let roles = |t: &str| t[t.find("# ----- what each role may do").expect("roles")..].to_owned();
    assert_eq!(
        roles(&auth),
        roles(&secure),
        "examples/nats-cluster/auth.conf and examples/nats-secure.conf differ"
    );

    // The three servers on loopback, each on its own free ports.
    let dir = tempfile::tempdir().expect("a temporary dir");
    std::fs::copy(example.join("auth.conf"), dir.path().join("auth.conf")).expect("copy");
    let names = ["a", "b", "c"];
    let routes: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let https: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut servers = vec![];
    for (i, name) in names.iter().enumerate() {
        let mut text = std::fs::read_to_string(example.join(format!("nats-{name}.conf")))
            .expect("read a server config");
        text = text
            .replace(
                "http: 127.0.0.1:8222",
                &format!("http: 127.0.0.1:{}", https[i]),
            )
            .replace(
                "listen: 0.0.0.0:6222",
                &format!("listen: 127.0.0.1:{}", routes[i]),
            );
        for (j, other) in names.iter().enumerate() {
            text = text.replace(
                &format!("nats-{other}.example.internal:6222"),
                &format!("127.0.0.1:{}", routes[j]),
            );
        }
        assert!(
            !text
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("example.internal")),
            "{text}"
        );
        let path = dir.path().join(format!("nats-{name}.conf"));
        std::fs::write(&path, text).expect("write a server config");
        servers.push(NatsServer::start_with_config(&path));
    }
    for (i, name) in names.iter().enumerate() {
        wait_until(T, &format!("server {name} to have 2 routes"), || {
            let routez: serde_json::Value =
                serde_json::from_str(&monitor(https[i], "/routez")).unwrap_or_default();
            routez["num_routes"] == 2
        });
    }

    // An agent on server A, answered by ctl on server C.
    let config = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\n\n[nats]\n\
             servers = [\"{{nats_url}}\"]\nuser = \"{name}\"\npassword = \"change-me-{name}\"\n\n\
             [watcher.dummy]\ncmd = \"sleep\"\nargs = [\"1000\"]\nnumprocesses = 1\n"
        )
    };
    let admin_c = servers[2].url_as("admin", "change-me-admin");
    let _first = Agent::start_config_as(&servers[0], &config("first"), &admin_c, &[]);
    let _second = Agent::start_config_as(&servers[1], &config("second"), &admin_c, &[]);
    let out = ctl_url(&admin_c, &["--node", "first", "status"]);
    out.expect_code(0, "ctl on server C: --node first status");
    assert!(out.stdout.contains("dummy"), "{}", out.stdout);
    // NATS's own discovery, asked on server C, finds the agents on A and B.
    let mut monitor_c =
        e2e::rawnats::RawNats::connect(servers[2].port(), Some(("monitor", "change-me-monitor")));
    let pings = monitor_c.request_json("$SRV.PING.nodeagent", b"", 2, T);
    let mut nodes: Vec<&str> = pings
        .iter()
        .filter_map(|p| p["metadata"]["node"].as_str())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["first", "second"], "{pings:?}");
    wait_until(T, "ctl on server C to list both members alive", || {
        let out = ctl_url(&admin_c, &["--timeout", "2s", "members"]);
        out.code == 0
            && ["first", "second"].iter().all(|n| {
                out.table()
                    .iter()
                    .any(|r| r.values().any(|v| v == n) && r.values().any(|v| v == "alive"))
            })
    });
}
