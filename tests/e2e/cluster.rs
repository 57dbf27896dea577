//! The cluster features, proven end to end with three or more real agents on one
//! nats-server: membership and failure detection, duplicate names, targeting, missing
//! targets, rolling restarts, spreading a service and quitting everything. Process
//! counts come from /proc (the children of each agent), not from the agents' replies.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The bound on every wait; a wait ends as soon as its condition holds.
const T: Duration = Duration::from_secs(20);
/// The heartbeat every agent here uses, and its suspect delay (3 heartbeats).
const HEARTBEAT: Duration = Duration::from_millis(200);
const SUSPECT_AFTER: Duration = Duration::from_millis(600);
const FAILED_AFTER: Duration = Duration::from_secs(2);

/// A whole agent config: short heartbeats, `tags` as TOML inline-table content
/// (`role = "x"`), then `watchers` tables.
fn node_config(name: &str, tags: &str, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\ntags = {{ {tags} }}\nheartbeat = \"200ms\"\n\
         failed_after = \"2s\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\n\
         [nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

/// A `[watcher.NAME]` table running `sleep SECS`, `n` times, with extra lines.
fn sleeper(name: &str, secs: &str, n: u32, extra: &str) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = {n}\n{extra}\n")
}

/// The member rows of `ctl members --json`, by name, checked against the schema.
fn members(nats: &NatsServer) -> BTreeMap<String, Value> {
    let (out, replies) = ctl_json_output(nats, &["--timeout", "3s", "members"]);
    out.expect_code(0, "ctl members");
    assert_eq!(replies.len(), 1, "expected one reply: {}", out.stdout);
    replies[0]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {}", replies[0]))
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or_default().to_owned(), m.clone()))
        .collect()
}

/// One member's state as `ctl members` shows it, if listed.
fn state_of(nats: &NatsServer, name: &str) -> Option<String> {
    members(nats)
        .get(name)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
}

/// Waits until `names` are all alive in `members`, steadily for 3 heartbeats. `members`
/// is answered by any one agent (queue group), so a single good answer does not mean
/// the newest agent has heard the others yet; 3 heartbeats later it has.
fn wait_all_alive(nats: &NatsServer, names: &[&str]) {
    let mut good_since: Option<Instant> = None;
    wait_until(T, &format!("{names:?} all alive in members"), || {
        let ms = members(nats);
        if names
            .iter()
            .all(|n| ms.get(*n).is_some_and(|m| m["state"] == "alive"))
        {
            let since = *good_since.get_or_insert_with(Instant::now);
            since.elapsed() >= SUSPECT_AFTER
        } else {
            good_since = None;
            false
        }
    });
}

fn counts(agents: &[&Agent]) -> Vec<usize> {
    agents.iter().map(|a| a.children().len()).collect()
}

fn wait_counts(agents: &[&Agent], want: &[usize], what: &str) {
    wait_until(T, &format!("{what}: process counts {want:?}"), || {
        counts(agents) == want
    });
}

/// The wanted count of `watcher` on one node, from `ctl numprocesses`.
fn wanted(agent: &Agent, watcher: &str) -> u64 {
    agent.ctl_ok(&["numprocesses", watcher])["numprocesses"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numprocesses from {}", agent.name()))
}

#[test]
fn three_agents_join_and_members_lists_them_alive_with_tags() {
    let nats = NatsServer::start();
    let a = Agent::start_config(&nats, &node_config("a", "role = \"web\", zone = \"1\"", ""));
    let b = Agent::start_config(&nats, &node_config("b", "role = \"db\"", ""));
    let c = Agent::start_config(&nats, &node_config("c", "", ""));
    wait_all_alive(&nats, &["a", "b", "c"]);

    let (out, replies) = ctl_json_output(&nats, &["members"]);
    out.expect_code(0, "ctl members");
    assert_eq!(replies.len(), 1, "{}", out.stdout);
    validate_reply("members", &replies[0]);
    let ms = members(&nats);
    assert_eq!(
        ms.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    for (agent, tags) in [
        (&a, serde_json::json!({"role": "web", "zone": "1"})),
        (&b, serde_json::json!({"role": "db"})),
        (&c, serde_json::json!({})),
    ] {
        let m = &ms[agent.name()];
        assert_eq!(m["state"], "alive", "{m}");
        assert_eq!(m["tags"], tags, "{m}");
        assert_eq!(m["pid"], agent.pid(), "{m}");
        assert_eq!(m["heartbeat_ms"], 200, "{m}");
    }

    // The human table names them too.
    let human = ctl(&nats, &["members"]);
    human.expect_code(0, "ctl members");
    let mut rows: Vec<(String, String, String)> = human
        .table()
        .into_iter()
        .map(|r| {
            (
                r["NAME"].clone(),
                r["STATE"].clone(),
                r["PROCESSES"].clone(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        ["a", "b", "c"].map(|n| (n.to_owned(), "alive".to_owned(), "0/0".to_owned())),
        "{}",
        human.stdout
    );
}

#[test]
fn sigkill_is_suspect_then_failed_sigterm_is_left_and_a_restart_is_alive() {
    let nats = NatsServer::start();
    let _a = Agent::start_config(&nats, &node_config("a", "", ""));
    let mut b = Agent::start_config(&nats, &node_config("b", "", ""));
    let mut c = Agent::start_config(&nats, &node_config("c", "", ""));
    wait_all_alive(&nats, &["a", "b", "c"]);

    b.kill();
    let killed = Instant::now();
    let killed_unix = protocol::unix_time();
    // The failed row, from whichever agent answers `members` (a or c); the suspect
    // moment from that agent's own log, not from a poll that must land in the window
    // between suspect_after and failed_after.
    let (failed_at, answering, failed) = wait_for(T, "b to be failed", || {
        let (_, replies) = ctl_json_output(&nats, &["--timeout", "3s", "members"]);
        let r = replies.first()?;
        let row = r["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "b")?
            .clone();
        (row["state"] == "failed").then(|| {
            (
                killed.elapsed(),
                r["node"].as_str().unwrap_or("").to_owned(),
                row,
            )
        })
    });
    let observer = if answering == "c" { &c } else { &_a };
    let suspect_unix = observer.wait_log(T, &["member suspect", "member=\"b\""]);
    let last_seen = failed["last_seen"].as_f64().unwrap_or(0.0);
    let secs = |t: f64| Duration::from_secs_f64((t - last_seen).max(0.0));
    // How long after the last heartbeat it saw did the answering agent change b's
    // state? That is what the settings promise, whatever the load did to the
    // heartbeats before the kill.
    let (to_suspect, to_failed) = (
        secs(suspect_unix),
        secs(failed["since"].as_f64().unwrap_or(0.0)),
    );
    let suspect_at = Duration::from_secs_f64((suspect_unix - killed_unix).max(0.0));
    eprintln!(
        "SIGKILL of b: {answering} logged suspect {suspect_at:?} and showed failed {failed_at:?} \
         after the kill; {to_suspect:?} and {to_failed:?} after its last heartbeat"
    );
    // Never early (a few ms for the float round trip of the times)...
    let eps = Duration::from_millis(5);
    assert!(
        to_suspect + eps >= SUSPECT_AFTER,
        "suspect too early: {to_suspect:?}"
    );
    assert!(
        to_failed + eps >= FAILED_AFTER,
        "failed too early: {to_failed:?}"
    );
    // ...and on time, with room for a loaded machine.
    let late = bound(Duration::from_millis(1500));
    assert!(
        to_suspect < SUSPECT_AFTER + late,
        "suspect too late: {to_suspect:?}"
    );
    assert!(
        to_failed < FAILED_AFTER + late,
        "failed too late: {to_failed:?}"
    );
    assert!(
        failed_at < FAILED_AFTER + late + HEARTBEAT * 5,
        "failed too late: {failed_at:?}"
    );
    assert_eq!(state_of(&nats, "a").as_deref(), Some("alive"));

    let status = c.terminate();
    assert!(status.success(), "c exited with {status}");
    let (_, left_after) = timed(|| {
        wait_until(T, "c to be left", || {
            state_of(&nats, "c").as_deref() == Some("left")
        })
    });
    eprintln!("SIGTERM of c: left seen {left_after:?} after it exited");
    assert_eq!(state_of(&nats, "b").as_deref(), Some("failed"));

    c.start_again();
    let (_, back) = timed(|| wait_all_alive(&nats, &["a", "c"]));
    eprintln!("c alive again {back:?} after it answered a ping");
    assert_eq!(members(&nats)["c"]["pid"], c.pid());
}

#[test]
fn a_second_agent_with_an_alive_name_is_refused() {
    let nats = NatsServer::start();
    let first = Agent::start_config(&nats, &node_config("a", "", ""));
    let _b = Agent::start_config(&nats, &node_config("b", "", ""));
    let _c = Agent::start_config(&nats, &node_config("c", "", ""));
    wait_all_alive(&nats, &["a", "b", "c"]);

    let dir = tempfile::tempdir().expect("a temporary dir");
    let config = dir.path().join("dup.toml");
    let text = node_config("a", "", "")
        .replace("{dir}", &dir.path().display().to_string())
        .replace("{nats_url}", &nats.url());
    std::fs::write(&config, text).expect("write the config");
    let out = nodeagent(
        &["-c", &config.display().to_string()],
        Duration::from_secs(30),
    );
    out.expect_code(1, "an agent under a name that is alive");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("node name 'a' is already taken"),
        "no word of the taken name: {said}"
    );
    assert!(said.contains(&first.pid().to_string()), "{said}");
    // The first one is unharmed.
    first.ctl(&["ping"]).expect_code(0, "ping a");
    assert_eq!(members(&nats)["a"]["pid"], first.pid());
    assert_eq!(state_of(&nats, "a").as_deref(), Some("alive"));
}

#[test]
fn targeting_reaches_exactly_the_right_nodes() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = sleeper("w", &secs, 1, "service = \"s\"");
    let a = Agent::start_config(&nats, &node_config("a", "role = \"x\"", &w));
    let b = Agent::start_config(&nats, &node_config("b", "role = \"x\"", &w));
    let c = Agent::start_config(&nats, &node_config("c", "role = \"y\"", &w));
    let all = [&a, &b, &c];
    wait_all_alive(&nats, &["a", "b", "c"]);
    wait_counts(&all, &[1, 1, 1], "start");

    ctl(&nats, &["--all", "incr", "w"]).expect_code(0, "--all incr");
    wait_counts(&all, &[2, 2, 2], "--all incr");

    ctl(&nats, &["--tag", "role=x", "incr", "w"]).expect_code(0, "--tag incr");
    wait_counts(&all, &[3, 3, 2], "--tag role=x incr");
    assert_eq!(wanted(&c, "w"), 2, "c was told too");

    ctl(&nats, &["--node", "a", "--node", "c", "incr", "w"]).expect_code(0, "--node incr");
    wait_counts(&all, &[4, 3, 3], "--node a --node c incr");
    assert_eq!(wanted(&b, "w"), 3, "b was told too");

    let before = counts(&all);
    let out = ctl(&nats, &["--json", "--service", "s", "incr", "w"]);
    out.expect_code(0, "--service incr");
    let replies = out.json_lines();
    assert_eq!(replies.len(), 1, "exactly one node answers: {}", out.stdout);
    let who = replies[0]["node"].as_str().unwrap_or_default().to_owned();
    let i = ["a", "b", "c"]
        .iter()
        .position(|n| *n == who)
        .unwrap_or_else(|| panic!("unknown node in {}", replies[0]));
    let mut want = before.clone();
    want[i] += 1;
    wait_counts(&all, &want, "--service s incr");
    let wanted_now: Vec<u64> = all.iter().map(|x| wanted(x, "w")).collect();
    assert_eq!(
        wanted_now,
        want.iter().map(|n| *n as u64).collect::<Vec<_>>()
    );
    for agent in all {
        for pid in agent.children() {
            assert_eq!(cmdline(pid), Some(format!("sleep {secs}")));
        }
    }
}

#[test]
fn a_target_that_does_not_answer_is_named_with_exit_3() {
    let nats = NatsServer::start();
    // A longer failed_after, so that b stays a target while ctl is retried below.
    let config = |n: &str| node_config(n, "", "").replace("\"2s\"", "\"10s\"");
    let _a = Agent::start_config(&nats, &config("a"));
    let b = Agent::start_config(&nats, &config("b"));
    let _c = Agent::start_config(&nats, &config("c"));
    wait_all_alive(&nats, &["a", "b", "c"]);

    let out = ctl(
        &nats,
        &[
            "--timeout",
            "1s",
            "--node",
            "a",
            "--node",
            "ghost",
            "status",
        ],
    );
    out.expect_code(3, "status of a and ghost");
    assert!(out.stderr.contains("ghost"), "{}", out.stderr);
    assert!(!out.stderr.contains("node a "), "{}", out.stderr);
    assert!(!out.stdout.is_empty(), "a's status is printed too");

    /// Resumes a stopped agent even when the test fails.
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGCONT);
        }
    }
    let stopped = Cont(b.pid());
    kill(Pid::from_raw(b.pid() as i32), Signal::SIGSTOP).expect("SIGSTOP b");
    // `--all` first asks one agent (queue group `cluster.members`) for the alive
    // members; when the server hands that to the stopped b, ctl asks every agent on
    // `cluster.all.cmd` after 200 ms, so every run names b, and only b.
    for _ in 0..6 {
        let out = ctl(&nats, &["--all", "--timeout", "1s", "status"]);
        out.expect_code(3, "--all status with b stopped");
        assert!(
            out.stderr.contains("node b did not answer"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("node a "), "{}", out.stderr);
        assert!(!out.stderr.contains("node c "), "{}", out.stderr);
    }
    drop(stopped);
    b.ctl(&["--timeout", "5s", "ping"])
        .expect_code(0, "b answers again after SIGCONT");
}

#[test]
fn a_rolling_restart_goes_node_by_node_and_keeps_n_minus_1_up() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = sleeper("w", &secs, 3, "min_uptime = \"300ms\"");
    let a = Agent::start_config(&nats, &node_config("a", "", &w));
    let b = Agent::start_config(&nats, &node_config("b", "", &w));
    let c = Agent::start_config(&nats, &node_config("c", "", &w));
    let all = [&a, &b, &c];
    wait_all_alive(&nats, &["a", "b", "c"]);
    wait_counts(&all, &[3, 3, 3], "start");
    let old: Vec<BTreeSet<u32>> = all
        .iter()
        .map(|x| x.children().into_iter().collect())
        .collect();
    // Each new process's spawn, as its own agent tells it (the agents share this
    // machine's clock): the order of the nodes is read from these, not from samples.
    let spawns = Subscription::new(&nats.url(), "cluster.*.events.w.spawn");

    let mut cmd = e2e::bins::hermetic(bin("ctl"));
    cmd.args([
        "-s",
        &nats.url(),
        "--all",
        "--timeout",
        "60s",
        "restart",
        "w",
        "--rolling",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().expect("run ctl"));
    // Per node: the fewest live processes seen.
    let mut lowest = [usize::MAX; 3];
    let mut samples = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for ctl") {
            break s;
        }
        assert!(
            started.elapsed() < bound(Duration::from_secs(90)),
            "ctl hangs"
        );
        for (i, agent) in all.iter().enumerate() {
            // A process that ended but is not reaped yet is gone for a client.
            lowest[i] = lowest[i].min(agent.running_children().len());
        }
        samples += 1;
        // A few ms per turn: enough samples, without starving the agents of CPU.
        std::thread::sleep(Duration::from_millis(3));
    };
    let took = started.elapsed();
    let read = |r: Option<&mut dyn std::io::Read>| {
        let mut text = String::new();
        if let Some(r) = r {
            let _ = r.read_to_string(&mut text);
        }
        text
    };
    let stdout = read(child.stdout.as_mut().map(|r| r as &mut dyn std::io::Read));
    let stderr = read(child.stderr.as_mut().map(|r| r as &mut dyn std::io::Read));
    // Per node, in the agents' time: its first and its last spawn.
    let mut first_spawn: [Option<f64>; 3] = [None; 3];
    let mut last_spawn: [Option<f64>; 3] = [None; 3];
    let mut spawned = [0usize; 3];
    while spawned.iter().sum::<usize>() < 9 {
        let Some((subject, body)) = spawns.next(T) else {
            panic!("only {spawned:?} spawns were told");
        };
        let e: Value = serde_json::from_slice(&body).expect("an event is JSON");
        let time = e["time"].as_f64().unwrap_or_default();
        let Some(i) = ["a", "b", "c"]
            .iter()
            .position(|n| subject.starts_with(&format!("cluster.{n}.")))
        else {
            continue;
        };
        spawned[i] += 1;
        first_spawn[i] = Some(first_spawn[i].map_or(time, |t: f64| t.min(time)));
        last_spawn[i] = Some(last_spawn[i].map_or(time, |t: f64| t.max(time)));
    }
    eprintln!(
        "rolling restart of 3 nodes x 3 processes took {took:?}, {samples} samples; \
         lowest {lowest:?}; first spawn {first_spawn:?}; last spawn {last_spawn:?}"
    );
    assert!(status.success(), "ctl exited {status}\n{stdout}\n{stderr}");
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        assert!(
            stdout.contains(&format!("/3] {n}: restarted in")),
            "no progress line for {n}:\n{stdout}"
        );
        assert!(
            lowest[i] >= 2,
            "node {n} dropped to {} processes",
            lowest[i]
        );
    }
    assert!(stdout.contains("rolling restart done: 3 nodes"), "{stdout}");
    // Node by node, in the order the progress lines give.
    let order: Vec<usize> = {
        let mut v: Vec<(usize, usize)> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| (stdout.find(&format!("] {n}:")).unwrap_or(usize::MAX), i))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, i)| i).collect()
    };
    for pair in order.windows(2) {
        let (done, next) = (pair[0], pair[1]);
        // The later node's first replacement starts after the earlier node's last one
        // has run its min_uptime (300 ms; 50 ms off for where in the agent's turn an
        // event is stamped): never two nodes at once.
        let done_at = last_spawn[done].expect("the earlier node spawned") + 0.25;
        let next_at = first_spawn[next].expect("the later node spawned");
        assert!(
            done_at <= next_at,
            "node {next} began ({next_at:?}) before node {done} was done ({done_at:?})"
        );
    }
    for (i, agent) in all.iter().enumerate() {
        let now = agent.running_children();
        assert_eq!(now.len(), 3, "node {}", agent.name());
        assert!(
            now.iter().all(|p| !old[i].contains(p)),
            "an old pid survived on {}",
            agent.name()
        );
    }
}

#[test]
fn service_numprocesses_spreads_over_the_members() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = sleeper("w", &secs, 1, "service = \"s\"");
    let a = Agent::start_config(&nats, &node_config("a", "", &w));
    let b = Agent::start_config(&nats, &node_config("b", "", &w));
    let c = Agent::start_config(&nats, &node_config("c", "", &w));
    let all = [&a, &b, &c];
    wait_all_alive(&nats, &["a", "b", "c"]);
    wait_counts(&all, &[1, 1, 1], "start");

    ctl(&nats, &["--service", "s", "numprocesses", "w", "7"]).expect_code(0, "spread 7");
    let got = wait_for(T, "7 processes spread 3/2/2", || {
        let n = counts(&all);
        (n.iter().sum::<usize>() == 7 && n.iter().all(|x| (2..=3).contains(x))).then_some(n)
    });
    eprintln!("7 spread as {got:?}");
    let wanted_now: Vec<u64> = all.iter().map(|x| wanted(x, "w")).collect();
    assert_eq!(wanted_now.iter().sum::<u64>(), 7, "{wanted_now:?}");
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 7);
}

#[test]
fn all_quit_stops_every_agent_and_its_processes() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = sleeper("w", &secs, 2, "");
    let mut a = Agent::start_config(&nats, &node_config("a", "", &w));
    let mut b = Agent::start_config(&nats, &node_config("b", "", &w));
    let mut c = Agent::start_config(&nats, &node_config("c", "", &w));
    wait_all_alive(&nats, &["a", "b", "c"]);
    wait_counts(&[&a, &b, &c], &[2, 2, 2], "start");
    let kids: Vec<u32> = [&a, &b, &c].iter().flat_map(|x| x.children()).collect();
    assert_eq!(kids.len(), 6);

    ctl(&nats, &["--all", "quit"]).expect_code(0, "--all quit");
    for agent in [&mut a, &mut b, &mut c] {
        let status = agent.wait_exit(T);
        assert!(status.success(), "{} exited with {status}", agent.name());
    }
    for pid in kids {
        assert!(!is_alive(pid), "process {pid} outlived its agent");
    }
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
}

#[test]
fn a_rolling_restart_stops_where_a_health_check_fails_and_says_where() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let healthy = sleeper("w", &secs, 2, "health_cmd = [\"true\"]");
    let sick = sleeper(
        "w",
        &secs,
        2,
        "health_cmd = [\"false\"]\nhealth_timeout = \"1s\"",
    );
    let a = Agent::start_config(&nats, &node_config("a", "", &healthy));
    let b = Agent::start_config(&nats, &node_config("b", "", &sick));
    let c = Agent::start_config(&nats, &node_config("c", "", &healthy));
    let all = [&a, &b, &c];
    wait_all_alive(&nats, &["a", "b", "c"]);
    wait_counts(&all, &[2, 2, 2], "start");
    let old: Vec<BTreeSet<u32>> = all
        .iter()
        .map(|x| x.children().into_iter().collect())
        .collect();

    let (out, took) = timed(|| {
        ctl(
            &nats,
            &["--all", "--timeout", "30s", "restart", "w", "--rolling"],
        )
    });
    eprintln!(
        "stopped roll took {took:?}:\n{}\n{}",
        out.stdout, out.stderr
    );
    out.expect_code(1, "a roll stopped by a failed health check");
    assert!(
        out.stdout.contains("[1/3] a: restarted in"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("health check did not pass"),
        "no reason given: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("rolling restart stopped after 2 of 3 nodes; not restarted: c"),
        "{}",
        out.stderr
    );
    // The failed check ends the wait at once, not at the restart's deadline.
    assert!(took < bound(Duration::from_secs(15)), "{took:?}");
    let now: Vec<BTreeSet<u32>> = all
        .iter()
        .map(|x| x.children().into_iter().collect())
        .collect();
    assert!(now[0].is_disjoint(&old[0]), "a was restarted: {now:?}");
    assert_eq!(now[2], old[2], "c was left alone");
}
