//! The hot upgrade (`ctl upgrade`, SIGUSR2, `--all upgrade --rolling`): the agent
//! executes its binary again in the same pid, and its processes never notice: same
//! pids and restart counts, no line of output lost, the node never suspect, failed or
//! left in a peer's view; `ping` shows the new boot. A binary that cannot start changes
//! nothing, or (one that dies after the exec) leaves nothing behind once the agent is
//! started again. Each agent runs from a copy of the built binary, which the test
//! replaces.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// A node with the disconnect advisories on: a closed connection fails its member at
/// once, unless the member said it is upgrading.
fn node(name: &str, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nheartbeat = \"200ms\"\nstate_dir = \"{{dir}}/state\"\n\
         log_dir = \"{{dir}}/logs\"\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\
         system_events_account = \"CLUSTER\"\n\n{watchers}"
    )
}

/// Prints `<tag> N` with N = 1, 2, 3, ... every few milliseconds.
fn counter(name: &str, tag: &str, n: u32) -> String {
    format!(
        "[watcher.{name}]\ncmd = \"sh\"\n\
         args = [\"-c\", \"i=0; while :; do i=$((i+1)); echo {tag} $i; sleep 0.003; done\"]\n\
         numprocesses = {n}\n\n"
    )
}

fn sleeper(name: &str, secs: &str, n: u32) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = {n}\n\n")
}

/// Fails once, then runs: its slot shows one restart.
fn flaky(name: &str, secs: &str) -> String {
    format!(
        "[watcher.{name}]\ncmd = \"sh\"\n\
         args = [\"-c\", \"if [ -e {{dir}}/{name}.once ]; then exec sleep {secs}; fi; \
         touch {{dir}}/{name}.once; exit 3\"]\nrestart_delay = \"0s\"\n\n"
    )
}

fn server() -> NatsServer {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats.conf");
    NatsServer::start_with_config(&conf)
}

/// Each watcher's processes as (wid, pid, restarts), and the agent's boot.
fn snapshot(agent: &Agent, watchers: &[&str]) -> BTreeMap<String, Vec<(u64, u64, u64)>> {
    watchers
        .iter()
        .map(|w| {
            let r = agent.ctl_ok(&["list", w]);
            let mut ps: Vec<(u64, u64, u64)> = r["processes"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["wid"].as_u64().unwrap_or(0),
                                p["pid"].as_u64().unwrap_or(0),
                                p["restarts"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            ps.sort();
            (w.to_string(), ps)
        })
        .collect()
}

fn boot(agent: &Agent) -> String {
    agent.ctl_ok(&["ping"])["boot_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits until the agent answers ping with a boot other than `was`; the new one.
fn wait_new_boot(agent: &Agent, was: &str) -> String {
    wait_for(T, "the agent to answer with a new boot", || {
        let (out, replies) = agent.ctl_json(&["--timeout", "1s", "ping"]);
        let b = replies.first()?["boot_id"].as_str()?.to_owned();
        (out.code == 0 && b != was).then_some(b)
    })
}

/// The numbers of the `<tag> N` lines of `watcher` in the agent's log file, per wid.
fn numbers(agent: &Agent, watcher: &str, tag: &str) -> BTreeMap<u32, Vec<u64>> {
    let path = agent
        .dir()
        .join("logs")
        .join(format!("{watcher}.stdout.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        // TIME WID | TEXT
        let mut it = line.splitn(2, " | ");
        let (Some(head), Some(body)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(wid) = head.split_whitespace().nth(1).and_then(|w| w.parse().ok()) else {
            continue;
        };
        if let Some(n) = body
            .strip_prefix(tag)
            .and_then(|r| r.trim().parse::<u64>().ok())
        {
            out.entry(wid).or_default().push(n);
        }
    }
    out
}

/// Every wid's numbers run 1, 2, 3, ... with no gap and no repeat.
fn assert_no_line_lost(got: &BTreeMap<u32, Vec<u64>>) {
    for (wid, ns) in got {
        for (i, n) in ns.iter().enumerate() {
            assert_eq!(
                *n,
                i as u64 + 1,
                "wid {wid}: line {} is {n} (lost or repeated lines around it)",
                i + 1
            );
        }
    }
}

/// The member states of `node` that a poller saw, from any agent's view, while `f` ran.
fn states_during<T>(url: &str, node: &str, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop, url, node) = (seen.clone(), stop.clone(), url.to_owned(), node.to_owned());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (n, st) in member_states(&url) {
                    if n == node {
                        seen.lock().unwrap().push(st);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (out, seen)
}

#[test]
fn an_upgrade_keeps_every_process_every_line_and_the_membership() {
    let nats = server();
    let s = unique_secs();
    let watchers = format!(
        "{}{}{}",
        counter("count", "n", 2),
        sleeper("sl", &s, 2),
        flaky("flaky", &s)
    );
    let agent = Agent::start_config_copied(&nats, &node("n1", &watchers));
    let peer = Agent::start_config(&nats, &node("n2", ""));
    wait_all_alive(&nats.url(), &["n1", "n2"], T);
    wait_until(T, "flaky restarted once and running", || {
        snapshot(&agent, &["flaky"])["flaky"]
            .first()
            .is_some_and(|(_, pid, r)| *pid > 0 && *r == 1)
    });
    wait_until(T, "the counters printing", || {
        numbers(&agent, "count", "n").values().all(|v| v.len() > 20)
            && numbers(&agent, "count", "n").len() == 2
    });
    let names = ["count", "sl", "flaky"];
    let before = snapshot(&agent, &names);
    let was = boot(&agent);
    let agent_pid = agent.pid();
    let children_before = {
        let mut c = agent.running_children();
        c.sort();
        c
    };

    // The node must never be suspect, failed or left, in n2's view or any other.
    let ((reply, new_boot), seen) = states_during(&nats.url(), "n1", || {
        let r = agent.ctl_ok(&["upgrade"]);
        (r.clone(), wait_new_boot(&agent, &was))
    });
    validate_reply("upgrade", &reply);
    assert_eq!(reply["was_boot_id"], Value::from(was.clone()), "{reply}");
    assert_eq!(reply["processes"], 5, "{reply}");
    assert_ne!(new_boot, was);
    assert!(
        seen.iter().all(|s| s == "alive"),
        "n1 was seen {seen:?} during its upgrade"
    );
    for bad in [
        "member suspect",
        "member failed",
        "member left",
        "member leaving",
    ] {
        assert!(
            peer.log_lines(&[bad, "member=\"n1\""]).is_empty(),
            "n2 logged n1 {bad}:\n{}",
            peer.stderr_log()
        );
    }

    // Same agent pid, same processes, same restart counts.
    assert_eq!(agent.pid(), agent_pid);
    assert_eq!(agent.ctl_ok(&["ping"])["pid"], agent_pid);
    let after = snapshot(&agent, &names);
    assert_eq!(before, after, "the processes changed across the upgrade");
    let mut children_after = agent.running_children();
    children_after.sort();
    assert_eq!(children_before, children_after);
    agent.wait_log(T, &["upgraded from boot", &was, "adopting 5 process(es)"]);

    // Lines printed during the exec waited in the pipes: none lost.
    let upgraded_at = numbers(&agent, "count", "n");
    wait_until(T, "the counters printing on after the upgrade", || {
        let now = numbers(&agent, "count", "n");
        now.iter()
            .all(|(w, v)| v.len() > upgraded_at.get(w).map_or(0, Vec::len) + 50)
    });
    assert_no_line_lost(&numbers(&agent, "count", "n"));

    // Exits of adopted processes are still seen, and restarted as before.
    let (_, old_pid, _) = after["sl"][0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(T, "the killed adopted process replaced", || {
        let now = snapshot(&agent, &["sl"]);
        now["sl"].len() == 2
            && now["sl"].iter().all(|(_, p, _)| *p != old_pid)
            && now["sl"][0].2 == 1
    });
    // A stop reaches adopted processes too.
    agent.ctl_ok(&["stop", "count"]);
    for (_, ps) in before.iter().filter(|(w, _)| *w == "count") {
        for (_, pid, _) in ps {
            assert!(
                !is_alive(*pid as u32),
                "count's {pid} still runs after stop"
            );
        }
    }
}

#[test]
fn sigusr2_upgrades_as_the_command_does() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let agent = Agent::start_config_copied(&nats, &node("n1", &sleeper("sl", &s, 3)));
    wait_until(T, "3 sleepers", || agent.running_children().len() == 3);
    let before = snapshot(&agent, &["sl"]);
    let was = boot(&agent);
    let events = Subscription::new(&nats.url(), "cluster.n1.events._agent.>");
    // A new file at the same path: the agent runs the new one.
    agent.replace_exe(&std::fs::read(bin("nodeagent")).unwrap(), 0o755);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let new_boot = wait_new_boot(&agent, &was);
    assert_eq!(snapshot(&agent, &["sl"]), before);
    agent.wait_log(T, &["SIGUSR2: upgrading"]);
    // The old boot says it upgrades, the new one joins.
    let upgrade = events
        .find(T, |_, e| e["kind"] == "upgrade")
        .expect("an upgrade event");
    validate("events.schema.json", &upgrade);
    assert_eq!(upgrade["boot_id"], Value::from(was.clone()));
    assert!(upgrade["reason"]
        .as_str()
        .unwrap_or_default()
        .starts_with("executing"));
    let join = events
        .find(T, |_, e| e["kind"] == "join")
        .expect("a join event of the new boot");
    assert_eq!(join["boot_id"], Value::from(new_boot));
    // The exec ran the new file, not the deleted one.
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap();
    assert_eq!(exe, agent.exe());
}

/// Every process of `watchers` runs as a child of the agent, and nothing else of the
/// test's runs: no orphan.
fn assert_no_orphans(agent: &Agent, secs: &str, n: usize) {
    let kids = agent.running_children();
    let sleepers = pids_with_cmdline(&format!("sleep {secs}"));
    assert_eq!(sleepers.len(), n, "{sleepers:?}");
    for p in &sleepers {
        assert!(kids.contains(p), "sleep {p} is not the agent's child");
    }
}

#[test]
fn an_upgrade_to_a_binary_that_cannot_start_loses_nothing() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let watchers = format!("{}{}", sleeper("sl", &s, 2), counter("count", "n", 1));
    let mut agent = Agent::start_config_copied(&nats, &node("n1", &watchers));
    wait_until(T, "3 processes", || agent.running_children().len() == 3);
    let before = snapshot(&agent, &["sl", "count"]);
    let was = boot(&agent);
    let good = std::fs::read(agent.exe()).unwrap();

    // Not executable: refused before anything changes.
    agent.replace_exe(&good, 0o644);
    let out = agent.ctl(&["upgrade"]);
    out.expect_code(1, "upgrade to a file that cannot run");
    assert!(
        out.stderr.contains("does not start") && out.stderr.contains("nothing was changed"),
        "{}",
        out.stderr
    );
    // A script that fails its config check: refused the same way.
    agent.replace_exe(b"#!/bin/sh\necho broken build >&2\nexit 1\n", 0o755);
    let out = agent.ctl(&["upgrade"]);
    out.expect_code(1, "upgrade to a binary that fails its check");
    assert!(out.stderr.contains("broken build"), "{}", out.stderr);
    assert_eq!(boot(&agent), was);
    assert_eq!(snapshot(&agent, &["sl", "count"]), before);
    assert_no_orphans(&agent, &s, 2);

    // One that passes the check and then dies in place of the agent: the processes
    // die with it (their parent-death signal), and the next start, by hand, finds the
    // hand-over of that pid, says so, ends what is left and starts everything afresh.
    agent.replace_exe(
        b"#!/bin/sh\ncase \"$*\" in *--check*) exit 0;; esac\nexit 1\n",
        0o755,
    );
    agent.ctl_ok(&["upgrade"]);
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(1));
    agent.replace_exe(&good, 0o755);
    agent.start_again();
    agent.wait_log(
        T,
        &["found the hand-over of an upgrade that did not complete"],
    );
    wait_until(T, "the watchers running afresh", || {
        let now = snapshot(&agent, &["sl", "count"]);
        now["sl"].len() == 2 && now["count"].len() == 1
    });
    let after = snapshot(&agent, &["sl", "count"]);
    for (w, ps) in &before {
        for (_, pid, _) in ps {
            assert!(!is_alive(*pid as u32), "{w}'s old {pid} survived");
            assert!(after[w].iter().all(|(_, p, _)| p != pid));
        }
    }
    assert_no_orphans(&agent, &s, 2);
}

#[test]
fn a_rolling_upgrade_goes_node_by_node() {
    let nats = server();
    let s = unique_secs();
    let a = Agent::start_config_copied(&nats, &node("n1", &sleeper("sl", &s, 1)));
    let b = Agent::start_config_copied(&nats, &node("n2", &sleeper("sl", &s, 1)));
    wait_all_know_each_other(&[&a, &b], T);
    let (was_a, was_b) = (boot(&a), boot(&b));
    let (pids_a, pids_b) = (snapshot(&a, &["sl"]), snapshot(&b, &["sl"]));
    let out = ctl_url(&nats.url(), &["--all", "upgrade", "--rolling"]);
    out.expect_code(0, "--all upgrade --rolling");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.len() >= 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("[1/2] n1: upgraded in"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("[2/2] n2: upgraded in"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("rolling upgrade done: 2 nodes"),
        "{}",
        out.stdout
    );
    assert_ne!(boot(&a), was_a);
    assert_ne!(boot(&b), was_b);
    assert_eq!(snapshot(&a, &["sl"]), pids_a);
    assert_eq!(snapshot(&b, &["sl"]), pids_b);
    // n1 was back before n2 was asked.
    let n1_back = a.wait_log(T, &["agent started", "node=n1"]);
    let n1_back = a
        .log_lines(&["agent started"])
        .last()
        .map(|(t, _)| *t)
        .unwrap_or(n1_back);
    let n2_asked = b.wait_log(T, &["upgrade requested"]);
    assert!(
        n1_back < n2_asked,
        "n2 was asked to upgrade at {n2_asked} before n1 was back at {n1_back}"
    );
}

#[test]
fn listening_sockets_survive_an_upgrade() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let port = free_port();
    let watchers = format!(
        "[socket.web]\nport = {port}\n\n[socket.local]\npath = \"{{dir}}/local.sock\"\n\n\
         [watcher.w]\ncmd = \"sleep\"\nargs = [\"{s}\"]\nsockets = [\"web\", \"local\"]\n\n"
    );
    let agent = Agent::start_config_copied(&nats, &node("n1", &watchers));
    wait_until(T, "w running", || agent.running_children().len() == 1);
    let listed = |agent: &Agent| {
        let r = agent.ctl_ok(&["listsockets"]);
        let mut v: Vec<(String, String)> = r["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["address"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listed(&agent);
    let pids = snapshot(&agent, &["w"]);
    let was = boot(&agent);
    // The process holds both sockets: binding them again would fail, so the new image
    // must take the agent's own.
    agent.ctl_ok(&["upgrade"]);
    wait_new_boot(&agent, &was);
    assert_eq!(listed(&agent), before);
    assert_eq!(snapshot(&agent, &["w"]), pids);
    agent.wait_log(T, &["adopting 1 process(es) and 2 socket(s)"]);
    // A new process gets the same sockets, still listening.
    agent.ctl_ok(&["incr", "w"]);
    wait_until(T, "2 processes", || agent.running_children().len() == 2);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the TCP socket listens");
    std::os::unix::net::UnixStream::connect(agent.dir().join("local.sock"))
        .expect("the unix socket listens");
}

#[test]
fn an_upgrade_that_fails_after_the_reply_is_undone_and_the_agent_goes_on() {
    let nats = server();
    let s = unique_secs();
    let watchers = format!("{}{}", sleeper("sl", &s, 2), counter("count", "n", 1));
    let agent = Agent::start_config_copied(&nats, &node("n1", &watchers));
    let _peer = Agent::start_config(&nats, &node("n2", ""));
    wait_until(T, "3 processes", || agent.running_children().len() == 3);
    let before = snapshot(&agent, &["sl", "count"]);
    let was = boot(&agent);
    // The hand-over file cannot be written: a directory sits where its temporary goes.
    std::fs::create_dir_all(agent.state_dir().join("handoff.json.tmp").join("x")).unwrap();
    let events = Subscription::new(&nats.url(), "cluster.n1.events._agent.upgrade");
    let r = agent.ctl_ok(&["upgrade"]);
    assert_eq!(r["was_boot_id"], Value::from(was.clone()));
    agent.wait_log(
        T,
        &[
            "upgrade failed",
            "hand-over file",
            "going on as the running version",
        ],
    );
    agent.wait_log(T, &["the supervisor goes on"]);
    let failed = events
        .find(T, |_, e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed:"))
        })
        .expect("an upgrade event saying it failed");
    validate("events.schema.json", &failed);
    assert_eq!(boot(&agent), was);
    assert_eq!(snapshot(&agent, &["sl", "count"]), before);
    // Still supervised: an exit is seen and the process restarted.
    let (_, victim, _) = before["sl"][0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(T, "the killed process replaced", || {
        let now = snapshot(&agent, &["sl"]);
        now["sl"].len() == 2 && now["sl"].iter().all(|(_, p, _)| *p != victim)
    });
    // The output is read again, with nothing lost while it was paused.
    let paused = numbers(&agent, "count", "n");
    wait_until(T, "the counter read again", || {
        numbers(&agent, "count", "n")
            .values()
            .all(|v| v.len() > paused.values().map(Vec::len).max().unwrap_or(0) + 20)
    });
    assert_no_line_lost(&numbers(&agent, "count", "n"));
    // The peers were told the upgrade is off: n1 is a plain alive member again, and a
    // later upgrade works.
    std::fs::remove_dir_all(agent.state_dir().join("handoff.json.tmp")).unwrap();
    agent.ctl_ok(&["upgrade"]);
    wait_new_boot(&agent, &was);
    assert_eq!(snapshot(&agent, &["count"])["count"], before["count"]);
}

/// A process adopted across an upgrade keeps its `max_age`: the new image recycles it,
/// counting its age from its start, and its replacement runs.
#[test]
fn max_age_still_recycles_an_adopted_process() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let watcher = format!(
        "[watcher.aged]\ncmd = \"sleep\"\nargs = [\"{s}\"]\nmin_uptime = \"300ms\"\n\
         max_age = \"6s\"\nmax_age_variance = \"0s\"\n\n"
    );
    let agent = Agent::start_config_copied(&nats, &node("n1", &watcher));
    let pid = wait_for(T, "the aged process", || {
        let ps = snapshot(&agent, &["aged"]);
        ps["aged"]
            .first()
            .map(|(_, pid, _)| *pid)
            .filter(|p| *p > 0)
    });
    let events = Subscription::new(&nats.url(), "cluster.n1.events.aged.>");
    let was = boot(&agent);
    agent.ctl_ok(&["upgrade"]);
    wait_new_boot(&agent, &was);
    let adopted = snapshot(&agent, &["aged"])["aged"]
        .first()
        .map(|(_, p, _)| *p);
    assert_eq!(
        adopted,
        Some(pid),
        "the process was recycled before the upgrade ended"
    );
    let recycled = events
        .find(T, |_, e| e["kind"] == "max_age")
        .expect("a max_age event from the new image");
    validate("events.schema.json", &recycled);
    assert_eq!(recycled["pid"], Value::from(pid));
    wait_until(T, "its replacement running", || {
        snapshot(&agent, &["aged"])["aged"]
            .first()
            .is_some_and(|(_, p, _)| *p > 0 && *p != pid)
    });
}

/// While a hook runs, the upgrade is refused (its result would be lost across the
/// exec) and the agent goes on; once it finished, an upgrade goes through.
#[test]
fn an_upgrade_waits_for_no_running_hook() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let hook = format!("8.{}", std::process::id() % 1000);
    let watcher = format!(
        "[watcher.hooked]\ncmd = \"sleep\"\nargs = [\"{s}\"]\n\
         [watcher.hooked.hooks]\nafter_spawn = [\"sleep\", \"{hook}\"]\n\n"
    );
    let agent = Agent::start_config_copied(&nats, &node("n1", &watcher));
    wait_until(T, "the after_spawn hook running", || {
        !pids_with_cmdline(&format!("sleep {hook}")).is_empty()
    });
    let before = snapshot(&agent, &["hooked"]);
    let was = boot(&agent);
    let events = Subscription::new(&nats.url(), "cluster.n1.events._agent.upgrade");
    agent.ctl_ok(&["upgrade"]);
    let failed = events
        .find(T, |_, e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed:") && r.contains("hook(s) running"))
        })
        .expect("an upgrade event saying a hook runs");
    validate("events.schema.json", &failed);
    assert_eq!(boot(&agent), was);
    assert_eq!(snapshot(&agent, &["hooked"]), before);
    wait_until(T, "the hook finished", || {
        pids_with_cmdline(&format!("sleep {hook}")).is_empty()
    });
    agent.ctl_ok(&["upgrade"]);
    wait_new_boot(&agent, &was);
    assert_eq!(snapshot(&agent, &["hooked"]), before);
}
