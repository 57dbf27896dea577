//! Every `[watcher]` and `[agent]` key of the README, proven by its effect on the
//! system: ids, directory and environment in /proc, signals caught by real traps, start
//! order and spacing from /proc start times, restart timing from the agent's own events,
//! where output goes from /proc/PID/fd.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use e2e::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn sleeper(name: &str, secs: &str, extra: &str) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n{extra}\n\n")
}

fn one_pid(agent: &Agent, watcher: &str) -> u32 {
    wait_for(T, &format!("a running process of {watcher}"), || {
        agent.pids(watcher).first().map(|p| p.1)
    })
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn watcher_summary(agent: &Agent, watcher: &str) -> Value {
    let r = agent.ctl_ok(&["status", watcher]);
    r["watchers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == watcher))
        .cloned()
        .unwrap_or_else(|| panic!("no watcher {watcher} in {r}"))
}

#[test]
fn uid_gid_working_dir_env_and_copy_env_reach_the_process() {
    let nats = NatsServer::start();
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .ok()
        .flatten()
        .map(|g| ("nogroup".to_owned(), g.gid.as_raw()))
        .unwrap_or_else(|| ("65534".to_owned(), 65534));
    let wd = tempfile::tempdir().expect("a temporary dir");
    let wd_path = wd.path().canonicalize().expect("canonical path");
    // nobody must be able to enter it.
    std::fs::set_permissions(
        &wd_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (secs, secs2) = (unique_secs(), unique_secs());
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}",
            sleeper(
                "ids",
                &secs,
                &format!(
                    "uid = \"nobody\"\ngid = \"{}\"\nworking_dir = \"{}\"\n\
                     env = {{ E2E_GREETING = \"hi-$(wid)\", E2E_NAME = \"$(name)\" }}\n",
                    nogroup.0,
                    wd_path.display()
                )
            ),
            sleeper(
                "copied",
                &secs2,
                "uid = 65534\ncopy_env = true\nenv = { E2E_GREETING = \"there\" }\n"
            ),
        ),
    );
    let pid = one_pid(&agent, "ids");
    assert_eq!(
        ids(pid, "Uid"),
        Some(vec![nobody.uid.as_raw(); 4]),
        "uid = nobody: real, effective, saved and fs uid"
    );
    assert_eq!(
        ids(pid, "Gid"),
        Some(vec![nogroup.1; 4]),
        "gid = {}",
        nogroup.0
    );
    assert_eq!(cwd(pid), Some(wd_path.clone()), "working_dir");
    // copy_env = false: only PATH, the agent's NODEAGENT_* and what `env` says.
    let env = environ(pid);
    let keys: BTreeSet<&str> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "E2E_GREETING",
            "E2E_NAME",
            "NODEAGENT_NODE",
            "NODEAGENT_WATCHER",
            "NODEAGENT_WID",
            "PATH"
        ]),
        "the environment of a copy_env = false process: {env:?}"
    );
    assert_eq!(env_var(pid, "E2E_GREETING").as_deref(), Some("hi-1"));
    assert_eq!(env_var(pid, "E2E_NAME").as_deref(), Some("ids"));
    assert_eq!(env_var(pid, "NODEAGENT_WATCHER").as_deref(), Some("ids"));
    assert_eq!(env_var(pid, "NODEAGENT_WID").as_deref(), Some("1"));

    // copy_env = true: the agent's environment, with `env` on top.
    let pid2 = one_pid(&agent, "copied");
    assert_eq!(
        ids(pid2, "Uid"),
        Some(vec![nobody.uid.as_raw(); 4]),
        "uid by number"
    );
    assert_eq!(env_var(pid2, "E2E_GREETING").as_deref(), Some("there"));
    assert_eq!(
        env_var(pid2, "E2E_MARK").as_deref(),
        Some(agent.marker()),
        "copy_env = true passes the agent's own variables"
    );
    assert_eq!(
        env_var(pid2, "RUST_LOG"),
        env_var(agent.pid(), "RUST_LOG"),
        "copy_env = true passes the agent's own variables"
    );
    // The reply says the same.
    let opts = agent.ctl_ok(&["options", "ids"]);
    assert_eq!(opts["options"]["uid"], "nobody", "{opts}");
    assert_eq!(opts["options"]["copy_env"], false, "{opts}");
}

#[test]
fn stop_signal_is_what_stop_sends() {
    let nats = NatsServer::start();
    // The program exits 0 on SIGUSR1 only; SIGTERM would kill it without a trace.
    let agent = Agent::start(
        &nats,
        "n1",
        "[watcher.trap]\ncmd = \"sh\"\n\
         args = [\"-c\", \"trap 'echo caught > {dir}/caught; exit 0' USR1; while :; do sleep 0.05; done\"]\n\
         stop_signal = \"USR1\"\ngraceful_timeout = \"30s\"\n",
    );
    one_pid(&agent, "trap");
    let (out, took) = timed(|| agent.ctl(&["stop", "trap"]));
    out.expect_code(0, "ctl stop trap");
    assert_eq!(
        read_lines(&agent.dir().join("caught")),
        vec!["caught"],
        "the process did not catch SIGUSR1"
    );
    assert!(
        took < bound(Duration::from_secs(10)),
        "stop took {took:?}: it waited for graceful_timeout instead of the trap's exit"
    );
    let slot = &agent.ctl_ok(&["list", "trap"])["processes"][0];
    assert!(slot.get("pid").is_none() || slot["pid"].is_null(), "{slot}");
}

/// A leader that traps SIGUSR1 and starts a child that traps it too; each writes a line
/// to `file` per signal it gets.
fn trap_pair_script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("pair.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         trap 'echo leader >> \"$1\"' USR1\n\
         sh -c 'trap \"echo child >> $0\" USR1; while :; do sleep 0.05; done' \"$1\" &\n\
         while :; do sleep 0.05; done\n",
    )
    .expect("write the script");
    script
}

fn counts(path: &Path) -> (usize, usize) {
    let lines = read_lines(path);
    (
        lines.iter().filter(|l| *l == "leader").count(),
        lines.iter().filter(|l| *l == "child").count(),
    )
}

#[test]
fn signal_reaches_the_group_or_only_the_leader_or_only_one_pid() {
    let nats = NatsServer::start();
    let scripts = tempfile::tempdir().expect("a temporary dir");
    let script = trap_pair_script(scripts.path());
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.pair]\ncmd = \"sh\"\nargs = [\"{}\", \"{{dir}}/got-$(wid)\"]\nnumprocesses = 2\n",
            script.display()
        ),
    );
    let pids = wait_for(T, "2 leaders with a child each", || {
        let p = agent.pids("pair");
        (p.len() == 2 && p.iter().all(|(_, pid)| group_members(*pid).len() >= 2)).then_some(p)
    });
    let (p1, got1, got2) = (
        pids[0].1,
        agent.dir().join("got-1"),
        agent.dir().join("got-2"),
    );

    // --pid P --leader-only: the leader of wid 1 only.
    let r = agent.ctl_ok(&[
        "signal",
        "pair",
        "USR1",
        "--pid",
        &p1.to_string(),
        "--leader-only",
    ]);
    assert_eq!(r["pids"], serde_json::json!([p1]), "{r}");
    wait_until(T, "wid 1's leader to catch SIGUSR1", || {
        counts(&got1).0 == 1
    });

    // --pid P: wid 1's whole group. Had the child got the first signal, its line would
    // be written before this one's.
    agent.ctl_ok(&["signal", "pair", "USR1", "--pid", &p1.to_string()]);
    wait_until(T, "wid 1's leader and child to catch SIGUSR1", || {
        counts(&got1) == (2, 1)
    });

    // No --pid: every process of the watcher, with its group.
    let out = agent.ctl(&["signal", "pair", "USR1"]);
    out.expect_code(0, "ctl signal pair USR1");
    wait_until(T, "both groups to catch SIGUSR1", || {
        counts(&got1) == (3, 2) && counts(&got2) == (1, 1)
    });
    // wid 2 got nothing before: exactly one line each.
    assert_eq!(counts(&got2), (1, 1));

    // A pid that is not the watcher's is refused.
    let (out, replies) = agent.ctl_json(&["signal", "pair", "USR1", "--pid", "1"]);
    out.expect_code(1, "signal to a pid the watcher does not own");
    assert_eq!(replies[0]["status"], "error", "{}", replies[0]);
    assert_eq!(counts(&got1), (3, 2), "no signal went anywhere");
}

#[test]
fn priority_orders_the_starts_and_warmup_delay_spaces_them() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}{}{}",
            sleeper("low", &s, "priority = -5"),
            sleeper("high", &s, "priority = 10"),
            sleeper("mid", &s, "priority = 3"),
            sleeper(
                "spaced",
                &unique_secs(),
                "numprocesses = 3\nwarmup_delay = \"300ms\"\npriority = -10"
            ),
        ),
    );
    let firsts: Vec<(u64, u32)> = ["high", "mid", "low"]
        .iter()
        .map(|w| {
            let pid = one_pid(&agent, w);
            let st = e2e::procs::stat(pid).expect("alive");
            (st.start_ticks, pid)
        })
        .collect();
    // Started in this order: start times never go back; within one clock tick, the pid
    // order tells (pids grow, save for a wrap at pid_max).
    for pair in firsts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let pid_after = b.1 > a.1 || a.1 - b.1 > 16384;
        assert!(
            b.0 > a.0 || (b.0 == a.0 && pid_after),
            "priority order broken: (start ticks, pid) high, mid, low = {firsts:?}"
        );
    }
    let spaced = wait_for(T, "3 processes of spaced", || {
        let p = agent.pids("spaced");
        (p.len() == 3).then_some(p)
    });
    let starts: Vec<f64> = spaced
        .iter()
        .map(|(_, pid)| start_secs(*pid).expect("alive"))
        .collect();
    for (i, pair) in starts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        // One clock tick (10 ms) of rounding.
        assert!(
            gap >= 0.29,
            "wid {} started {gap:.3}s after wid {}, before warmup_delay 300ms",
            i + 2,
            i + 1
        );
        assert!(
            gap < bound(Duration::from_millis(1300)).as_secs_f64(),
            "wid {} started {gap:.3}s after wid {}: warmup_delay is 300ms",
            i + 2,
            i + 1
        );
    }
}

#[test]
fn autostart_false_respawn_false_and_restart_never() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let run = |name: &str, extra: &str| {
        format!(
            "[watcher.{name}]\ncmd = \"sh\"\nargs = [\"-c\", \"echo run >> {{dir}}/{name}; exit 3\"]\n\
             restart_delay = \"20ms\"\nmax_retry = -1\n{extra}\n\n"
        )
    };
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}{}{}",
            sleeper("idle", &s, "autostart = false"),
            run("once", "respawn = false"),
            run("never", "restart = \"never\""),
            run("again", ""),
        ),
    );
    // The control: the same program under the default policy is restarted.
    wait_until(T, "again to be restarted twice", || {
        read_lines(&agent.dir().join("again")).len() >= 3
    });
    for w in ["once", "never"] {
        assert_eq!(
            read_lines(&agent.dir().join(w)).len(),
            1,
            "{w} ran again after its exit"
        );
        let slot = &agent.ctl_ok(&["list", w])["processes"][0];
        assert_eq!(slot["state"], "exited", "{w}: {slot}");
        assert_eq!(slot["restarts"], 0, "{w}: {slot}");
        assert_eq!(slot["last_exit"]["code"], 3, "{w}: {slot}");
    }
    // autostart = false: nothing runs, the watcher is stopped, until `start`.
    assert_eq!(count_processes_with_cmdline(&format!("sleep {s}")), 0);
    assert_eq!(watcher_summary(&agent, "idle")["state"], "stopped");
    let table = agent.ctl(&["status"]);
    table.expect_code(0, "ctl status");
    let row = table
        .table()
        .into_iter()
        .find(|r| r["WATCHER"] == "idle")
        .unwrap_or_else(|| panic!("no row for idle:\n{}", table.stdout));
    assert_eq!(row["STATE"], "stopped", "{}", table.stdout);
    assert_eq!(row["PROCESSES"], "0/1", "{}", table.stdout);
    agent.ctl_ok(&["start", "idle"]);
    let pid = one_pid(&agent, "idle");
    assert_eq!(cmdline(pid), Some(format!("sleep {s}")));
}

#[test]
fn restart_delay_doubles_up_to_max_restart_delay() {
    let nats = NatsServer::start();
    let agent = Agent::start(
        &nats,
        "n1",
        "[watcher.crash]\ncmd = \"sh\"\nargs = [\"-c\", \"exit 1\"]\nautostart = false\n\
         restart_delay = \"60ms\"\nmax_restart_delay = \"250ms\"\nmax_retry = -1\n",
    );
    let events = Subscription::new(&nats.url(), "cluster.n1.events.crash.*");
    agent.ctl_ok(&["start", "crash", "--no-wait"]);
    // (kind, agent time) of each exit and spawn, until 7 exits.
    let mut seen: Vec<(String, f64)> = vec![];
    while seen.iter().filter(|(k, _)| k == "exit").count() < 7 {
        let e = events
            .find(T, |_, v| v["kind"] == "exit" || v["kind"] == "spawn")
            .unwrap_or_else(|| panic!("no more exit or spawn events after {seen:?}"));
        validate("events.schema.json", &e);
        seen.push((
            e["kind"].as_str().unwrap_or_default().to_owned(),
            e["time"].as_f64().unwrap_or_default(),
        ));
    }
    agent.ctl_ok(&["stop", "crash"]);
    // Each backoff: from an exit to the next spawn.
    let delays: Vec<f64> = seen
        .windows(2)
        .filter(|w| w[0].0 == "exit" && w[1].0 == "spawn")
        .map(|w| w[1].1 - w[0].1)
        .collect();
    eprintln!("backoffs (s): {delays:?}");
    assert!(delays.len() >= 6, "{seen:?}");
    let want = [0.06, 0.12, 0.24, 0.25, 0.25, 0.25];
    // Without the cap, backoffs 5 and 6 would be 0.96 s and 1.92 s.
    let late = 0.35 * slack();
    for (i, (got, want)) in delays.iter().zip(want).enumerate() {
        assert!(
            *got >= want - 0.005,
            "backoff {} was {got:.3}s, shorter than {want}s",
            i + 1
        );
        assert!(
            *got < want + late,
            "backoff {} was {got:.3}s; expected {want}s (max_restart_delay 250ms)",
            i + 1
        );
    }
}

#[test]
fn min_uptime_decides_what_counts_as_a_failed_start() {
    let nats = NatsServer::start();
    // Both run 0.4 s then fail; one of them counts that as a good run.
    let w = |name: &str, min: &str| {
        format!(
            "[watcher.{name}]\ncmd = \"sh\"\nargs = [\"-c\", \"echo run >> {{dir}}/{name}; sleep 0.4; exit 1\"]\n\
             min_uptime = \"{min}\"\nmax_retry = 0\nrestart_delay = \"10ms\"\n\n"
        )
    };
    let agent = Agent::start(
        &nats,
        "n1",
        &format!("{}{}", w("long_enough", "100ms"), w("too_short", "2s")),
    );
    let s = wait_for(T, "too_short to be fatal", || {
        let s = watcher_summary(&agent, "too_short");
        (s["state"] == "fatal").then_some(s)
    });
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("min_uptime"), "{reason}");
    assert_eq!(read_lines(&agent.dir().join("too_short")).len(), 1);
    // Runs past min_uptime reset the count: restarted at once, again and again, with
    // max_retry = 0.
    wait_until(T, "long_enough to run 3 times", || {
        read_lines(&agent.dir().join("long_enough")).len() >= 3
    });
    assert_eq!(watcher_summary(&agent, "long_enough")["state"], "active");
}

/// Where fd `n` of `pid` points.
fn fd(pid: u32, n: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{n}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn stdout_and_stderr_discard_inherit_and_file() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let talk = |name: &str, extra: &str| {
        format!(
            "[watcher.{name}]\ncmd = \"sh\"\n\
             args = [\"-c\", \"echo out-$(name); echo err-$(name) >&2; exec sleep {s}\"]\n{extra}\n\n"
        )
    };
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}{}",
            talk("disc", "stdout = \"discard\"\nstderr = \"discard\""),
            talk("inh", "stdout = \"inherit\"\nstderr = \"inherit\""),
            talk(
                "file",
                "stdout = \"{dir}/logs/file-out.log\"\nstderr = \"{dir}/logs/file-err.log\""
            ),
        ),
    );
    let logs = agent.dir().join("logs");
    // discard: /dev/null, and nothing captured.
    let disc = one_pid(&agent, "disc");
    assert_eq!(
        (fd(disc, 1), fd(disc, 2)),
        ("/dev/null".into(), "/dev/null".into())
    );
    let r = agent.ctl_ok(&["logs", "disc"]);
    assert_eq!(r["lines"], serde_json::json!([]), "{r}");

    // inherit: the agent's own stdout and stderr.
    let inh = one_pid(&agent, "inh");
    assert_eq!(fd(inh, 1), fd(agent.pid(), 1), "stdout = inherit");
    assert_eq!(fd(inh, 2), fd(agent.pid(), 2), "stderr = inherit");
    wait_until(T, "the inherited lines in the agent's output", || {
        let log = agent.stderr_log();
        log.contains("out-inh") && log.contains("err-inh")
    });

    // A file path under log_dir: the lines are in it.
    let file = one_pid(&agent, "file");
    let (out, err) = (logs.join("file-out.log"), logs.join("file-err.log"));
    assert_eq!(fd(file, 1), out.display().to_string());
    assert_eq!(fd(file, 2), err.display().to_string());
    wait_until(T, "the lines in the files", || {
        read_lines(&out) == ["out-file"] && read_lines(&err) == ["err-file"]
    });
    // Neither discard nor inherit wrote capture files of their own.
    let names: Vec<String> = std::fs::read_dir(&logs)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("disc") || n.starts_with("inh")),
        "capture files for discard/inherit watchers: {names:?}"
    );
}

#[test]
fn a_crash_loop_that_gives_up_publishes_flapping() {
    let nats = NatsServer::start();
    let agent = Agent::start(
        &nats,
        "n1",
        "[watcher.crash]\ncmd = \"sh\"\nargs = [\"-c\", \"exit 2\"]\nautostart = false\n\
         restart_delay = \"20ms\"\nmax_retry = 2\n",
    );
    let events = Subscription::new(&nats.url(), "cluster.n1.events.crash.>");
    agent.ctl_ok(&["start", "crash", "--no-wait"]);
    let e = events
        .find(T, |s, _| s.ends_with(".flapping"))
        .expect("a flapping event");
    validate("events.schema.json", &e);
    assert_eq!(e["kind"], "flapping", "{e}");
    assert_eq!(e["wid"], 1, "{e}");
    let reason = e["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gave up after 3 failed starts"), "{e}");
    assert_eq!(watcher_summary(&agent, "crash")["state"], "fatal");
}

#[test]
fn sigint_stops_the_agent_gracefully_with_exit_0() {
    let nats = NatsServer::start();
    let mut agent = Agent::start(
        &nats,
        "n1",
        "[watcher.trap]\ncmd = \"sh\"\n\
         args = [\"-c\", \"trap 'echo bye > {dir}/bye-$(wid); exit 0' TERM; while :; do sleep 0.05; done\"]\n\
         numprocesses = 2\n",
    );
    let kids = wait_for(T, "2 processes", || {
        let k = agent.children();
        (k.len() == 2).then_some(k)
    });
    let left = Subscription::new(&nats.url(), "cluster.registry.n1");
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGINT).expect("SIGINT");
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(0), "after SIGINT: {status}");
    for wid in [1, 2] {
        assert_eq!(
            read_lines(&agent.dir().join(format!("bye-{wid}"))),
            ["bye"],
            "wid {wid} was not stopped with its stop signal"
        );
    }
    assert!(
        kids.iter().all(|p| !is_alive(*p)),
        "a process outlived the agent"
    );
    // It said goodbye to the cluster.
    left.find(T, |_, v| v["kind"] == "left")
        .unwrap_or_else(|| panic!("no 'left' announcement after SIGINT"));
}

#[test]
fn stats_interval_0_publishes_no_stats_at_all() {
    let nats = NatsServer::start();
    let stats = Subscription::new(&nats.url(), "cluster.*.stats");
    let quiet = Agent::start_config(
        &nats,
        "[agent]\nname = \"quiet\"\nstats_interval = \"0\"\nheartbeat = \"100ms\"\n\
         state_dir = \"{dir}/state\"\n\n[nats]\nservers = [\"{nats_url}\"]\n\n\
         [watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\n",
    );
    let chatty = Agent::start_config(
        &nats,
        "[agent]\nname = \"chatty\"\nstats_interval = \"100ms\"\n\
         state_dir = \"{dir}/state\"\n\n[nats]\nservers = [\"{nats_url}\"]\n",
    );
    // 10 stats from the other agent: 1 s of quiet's life.
    let mut from = vec![];
    while from
        .iter()
        .filter(|s: &&String| s.as_str() == "cluster.chatty.stats")
        .count()
        < 10
    {
        let (s, _) = stats
            .next(T)
            .unwrap_or_else(|| panic!("stats stopped coming: {from:?}"));
        from.push(s);
    }
    assert!(
        !from.iter().any(|s| s == "cluster.quiet.stats"),
        "stats_interval = 0 still published: {from:?}"
    );
    // `ctl stats` still answers with a snapshot.
    let r = quiet.ctl_ok(&["stats"]);
    assert_eq!(r["watchers"][0]["name"], "w", "{r}");
    drop(chatty);
}

#[test]
fn suspect_after_failed_after_and_reap_after_from_the_agents_log() {
    let nats = NatsServer::start();
    let timing = "heartbeat = \"100ms\"\nsuspect_after = \"400ms\"\nfailed_after = \"1200ms\"\nreap_after = \"2s\"";
    let conf = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\n{timing}\nstate_dir = \"{{dir}}/state\"\n\n\
             [nats]\nservers = [\"{{nats_url}}\"]\n"
        )
    };
    let obs = Agent::start_config(&nats, &conf("obs"));
    let mut victim = Agent::start_config(&nats, &conf("victim"));
    obs.wait_log(T, &["member joined", "victim"]);
    // A SIGKILL without system events: only the missed heartbeats tell.
    let killed = protocol::unix_time();
    victim.kill();
    let said = |what: &str| obs.wait_log(T, &[&format!("member {what}"), "member=\"victim\""]);
    let (suspect, failed) = (said("suspect"), said("failed"));
    // When obs last heard from the victim, from its members view (a late heartbeat on
    // a loaded machine moves every deadline with it).
    let r = ctl_ok(&nats, &["members", "--name", "victim"]);
    let last_seen = r["members"][0]["last_seen"]
        .as_f64()
        .unwrap_or_else(|| panic!("victim already gone from the view: {r}"));
    let reaped = said("reaped");
    eprintln!(
        "after the last heartbeat: suspect {:.3}s, failed {:.3}s, reaped {:.3}s; the kill came {:.3}s after it",
        suspect - last_seen,
        failed - last_seen,
        reaped - last_seen,
        killed - last_seen
    );
    let (eps, late) = (0.005, bound(Duration::from_millis(1000)).as_secs_f64());
    assert!(suspect - last_seen >= 0.4 - eps, "suspect too early");
    assert!(failed - last_seen >= 1.2 - eps, "failed too early");
    assert!(reaped - failed >= 2.0 - eps, "reaped too early");
    assert!(
        suspect - killed < 0.4 + late,
        "suspect {:.3}s after the kill",
        suspect - killed
    );
    assert!(
        failed - killed < 1.2 + late,
        "failed {:.3}s after the kill",
        failed - killed
    );
    assert!(
        reaped - failed < 2.0 + late,
        "reaped {:.3}s after failed",
        reaped - failed
    );
    let names: Vec<String> = member_states(&nats.url())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["obs"], "a reaped member is forgotten");
}
