//! The agent under hostile values, bugs and load: out-of-range values are refused with
//! their range (also from an old state file), a per-node process limit, a panic in any
//! task stops every process gracefully and exits 70, a large scale-up never makes the
//! node suspect, and SIGTERM finishes even when NATS has been gone long enough to fill
//! the client's buffer.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(20);

/// A watcher whose processes write `{dir}/term-<wid>` when they get SIGTERM, then exit.
fn trapping(name: &str, marker: &str, n: u32, graceful: &str) -> String {
    format!(
        "[watcher.{name}]\ncmd = \"sh\"\nargs = [\"-c\", \"trap 'echo term > {{dir}}/term-{name}-$NODEAGENT_WID; exit 0' TERM; \
         while :; do sleep 0.05; done\", \"{marker}\"]\nnumprocesses = {n}\ngraceful_timeout = \"{graceful}\"\n\
         copy_env = true\nstdout = \"discard\"\nstderr = \"discard\"\n"
    )
}

/// The live processes of the groups led by `leaders`.
fn left_in_groups(leaders: &[u32]) -> Vec<u32> {
    leaders.iter().flat_map(|g| group_members(*g)).collect()
}

fn term_files(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("term-{name}-"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn out_of_range_values_are_refused_with_their_range_and_stop_still_works() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let mut agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.web]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\ngraceful_timeout = \"2s\"\n"
        ),
    );
    wait_until(T, "1 child", || agent.children().len() == 1);

    let (out, replies) = agent.ctl_json(&["set", "web", "graceful_timeout", "300000000000y"]);
    assert_ne!(out.code, 0);
    let reason = replies[0]["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        reason, "option 'graceful_timeout': 300000000000y is out of range; use 0s to 1h",
        "{replies:?}"
    );
    for (key, value, range) in [
        ("numprocesses", "100001", "use 0 to 100000"),
        ("priority", "-2147483648", "use -1000000 to 1000000"),
        ("restart_delay", "2h", "use 0s to 1h"),
        ("log_max_bytes", "1", "use 1024 to"),
    ] {
        let (_, r) = agent.ctl_json(&["set", "web", key, value]);
        let reason = r[0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with(&format!("option '{key}': {value} is out of range; {range}")),
            "{key}: {r:?}"
        );
    }
    let r = agent.ctl_ok(&["stop", "web"]);
    assert_eq!(r["status"], "ok");
    wait_until(T, "no child", || agent.children().is_empty());
    agent.ctl_ok(&["start", "web"]);
    wait_until(T, "1 child again", || agent.children().len() == 1);

    // A state file saved by an older agent with an out-of-range value: refused with a
    // log line, the config's value used.
    assert_eq!(agent.terminate().code(), Some(0));
    let path = agent.state_dir().join("state.json");
    let text = std::fs::read_to_string(&path).expect("state.json");
    let mut state: serde_json::Value = serde_json::from_str(&text).expect("state json");
    state["watchers"]["web"]["options"]["graceful_timeout"] = "300000000000y".into();
    std::fs::write(&path, state.to_string()).expect("write state.json");
    agent.start_again();
    wait_until(T, "1 child after the restart", || {
        agent.children().len() == 1
    });
    let r = agent.ctl_ok(&["get", "web", "graceful_timeout"]);
    assert_eq!(r["options"]["graceful_timeout"], "2s", "{r}");
    assert!(
        agent.stderr_log().contains("300000000000y is out of range"),
        "{}",
        agent.stderr_log()
    );
    agent.ctl_ok(&["stop", "web"]);
    wait_until(T, "no child", || agent.children().is_empty());
}

#[test]
fn max_processes_caps_every_watcher_together() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start_config(
        &nats,
        &format!(
            "[agent]\nname = \"n1\"\nmax_processes = 5\nallow_remote_exec = true\n\
             state_dir = \"{{dir}}/state\"\n[nats]\nservers = [\"{{nats_url}}\"]\n\
             [watcher.a]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 3\n"
        ),
    );
    wait_until(T, "3 children", || agent.children().len() == 3);
    let refused = |args: &[&str]| {
        let (out, r) = agent.ctl_json(args);
        assert_ne!(out.code, 0, "{args:?} was taken");
        let reason = r[0]["reason"].as_str().unwrap_or_default().to_owned();
        assert!(
            reason.contains("allows at most 5 processes (max_processes)"),
            "{args:?}: {reason}"
        );
    };
    refused(&["numprocesses", "a", "6"]);
    refused(&["incr", "a", "3"]);
    refused(&["set", "a", "numprocesses", "9"]);
    refused(&["add", "b", "-o", "numprocesses=3", "--", "sleep", &secs]);
    let r = agent.ctl_ok(&["add", "b", "-o", "numprocesses=2", "--", "sleep", &secs]);
    assert_eq!(r["status"], "ok");
    wait_until(T, "5 children", || agent.children().len() == 5);
    refused(&["incr", "b"]);
}

/// Arms a fault in `task` of the agent, then wakes that task until the agent exits.
/// Returns how it exited and how long it took.
fn inject(agent: &mut Agent, task: &str) -> (std::process::ExitStatus, Duration) {
    std::fs::write(agent.state_dir().join("inject-fault"), task).expect("write the fault file");
    let start = Instant::now();
    // A command wakes the supervisor; the other tasks wake on their own timers.
    let _ = agent.ctl(&["--timeout", "1s", "status"]);
    let status = agent.wait_exit(T);
    (status, start.elapsed())
}

fn panic_stops_everything(task: &str) {
    if !cfg!(debug_assertions) {
        eprintln!("fault injection exists in debug builds only; skipped");
        return;
    }
    let nats = NatsServer::start();
    let marker = format!("marker-{}", unique_secs());
    let mut agent = Agent::start_config(
        &nats,
        &format!(
            "[agent]\nname = \"n1\"\nheartbeat = \"100ms\"\nstats_interval = \"100ms\"\n\
             state_dir = \"{{dir}}/state\"\n[nats]\nservers = [\"{{nats_url}}\"]\n{}",
            trapping("w", &marker, 3, "5s")
        ),
    );
    let leaders = wait_for(T, "3 children", || {
        let k = agent.children();
        (k.len() == 3).then_some(k)
    });
    let (status, took) = inject(&mut agent, task);
    eprintln!("a panic in the {task} task: the agent exited ({status}) after {took:?}");
    assert_eq!(status.code(), Some(70), "{}", agent.stderr_log());
    let log = agent.stderr_log();
    assert!(
        log.contains(&format!("fault injected into the {task} task")),
        "{log}"
    );
    assert!(log.contains("exiting with code 70"), "{log}");
    if task == "supervisor" {
        assert!(log.contains("from the record of live groups"), "{log}");
    }
    assert_eq!(
        term_files(agent.dir(), "w"),
        3,
        "every process got the stop signal: {log}"
    );
    assert_eq!(left_in_groups(&leaders), Vec::<u32>::new());
    assert_eq!(count_processes_with_cmdline(&marker), 0);
}

#[test]
fn a_panic_in_the_supervisor_stops_every_process_gracefully_and_exits_70() {
    panic_stops_everything("supervisor");
}

#[test]
fn a_panic_in_the_membership_task_stops_every_process_gracefully_and_exits_70() {
    panic_stops_everything("membership");
}

#[test]
fn sigterm_finishes_after_nats_was_gone_long_enough_to_fill_the_buffer() {
    let mut nats = NatsServer::start();
    let marker = format!("marker-{}", unique_secs());
    // Events of a crash loop, stats and heartbeats every 50 ms fill the client's buffer
    // within seconds of NATS going away.
    let mut agent = Agent::start_config(
        &nats,
        &format!(
            "[agent]\nname = \"n1\"\nheartbeat = \"50ms\"\nstats_interval = \"50ms\"\n\
             state_dir = \"{{dir}}/state\"\n[nats]\nservers = [\"{{nats_url}}\"]\n\
             ping_interval = \"1s\"\n{}\
             [watcher.crash]\ncmd = \"sh\"\nargs = [\"-c\", \"exit 1\"]\nmin_uptime = \"0s\"\n\
             stdout = \"discard\"\nstderr = \"discard\"\n",
            trapping("w", &marker, 2, "3s")
        ),
    );
    let leaders = wait_for(T, "the 2 trapping processes", || {
        let k: Vec<u32> = agent
            .children()
            .into_iter()
            .filter(|p| cmdline(*p).is_some_and(|c| c.contains(&marker)))
            .collect();
        (k.len() == 2).then_some(k)
    });
    nats.kill();
    wait_until(
        Duration::from_secs(60),
        "the client's buffer to be full",
        || {
            agent
                .stderr_log()
                .contains("the client's send buffer is full")
        },
    );
    let start = Instant::now();
    let status = agent.terminate();
    let took = start.elapsed();
    eprintln!("SIGTERM with NATS gone and the buffer full: exited ({status}) after {took:?}");
    assert_eq!(status.code(), Some(0), "{}", agent.stderr_log());
    // graceful_timeout is 3s; the processes stop at once on TERM.
    assert!(took < Duration::from_secs(3 + 7), "took {took:?}");
    assert_eq!(term_files(agent.dir(), "w"), 2);
    assert_eq!(left_in_groups(&leaders), Vec::<u32>::new());
    assert_eq!(count_processes_with_cmdline(&marker), 0);
}

#[test]
fn a_scale_up_to_5000_processes_never_makes_the_node_suspect() {
    const N: u32 = 5000;
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let running_now = all_processes_count();
    let nproc = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .map(|(soft, _)| soft)
        .unwrap_or(u64::MAX);
    if pid_max < running_now + 2 * N || nproc < u64::from(running_now + 2 * N) {
        eprintln!(
            "pid_max {pid_max} or the process limit {nproc} leaves no room for {N} more \
             processes; skipped"
        );
        return;
    }
    let nats = NatsServer::start();
    let secs = unique_secs();
    let node = |name: &str, watchers: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\n\
             [nats]\nservers = [\"{{nats_url}}\"]\n{watchers}"
        )
    };
    let big = Agent::start_config(
        &nats,
        &node(
            "big",
            &format!(
                "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 1\n\
                 stdout = \"discard\"\nstderr = \"discard\"\n"
            ),
        ),
    );
    let watcher = Agent::start_config(&nats, &node("watcher", ""));
    // The watching agent's own view, asked of it alone (not of the members queue group,
    // where big might answer for itself).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let client = rt
        .block_on(async_nats::connect(nats.url()))
        .expect("connect");
    let view = || -> Option<String> {
        let ask = client.request("cluster.watcher.cmd", r#"{"command":"members"}"#.into());
        let msg = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), ask).await })
            .ok()?
            .ok()?;
        let r: serde_json::Value = serde_json::from_slice(&msg.payload).ok()?;
        r["members"].as_array()?.iter().find_map(|m| {
            (m["name"] == "big").then(|| m["state"].as_str().unwrap_or_default().to_owned())
        })
    };
    wait_until(T, "big alive in the watcher's view", || {
        view().as_deref() == Some("alive")
    });
    // Counted in /proc: how fast the agent answers a status in the middle of a mass
    // spawn on a loaded machine is not what this test measures.
    let running = || count_processes_with_cmdline(&format!("sleep {secs}")) as u64;

    let start = Instant::now();
    let r = big.ctl_ok(&["--timeout", "60s", "numprocesses", "w", &N.to_string()]);
    assert_eq!(r["numprocesses"], N);
    let mut states = std::collections::BTreeSet::new();
    // The view is asked at every poll (a suspect spell is short); the count, which reads
    // all of /proc, twice a second.
    let mut counted = Instant::now();
    wait_until(Duration::from_secs(300), "all 5000 running", || {
        if let Some(s) = view() {
            states.insert(s);
        }
        if counted.elapsed() < Duration::from_millis(500) {
            return false;
        }
        counted = Instant::now();
        running() == u64::from(N)
    });
    let took = start.elapsed();
    eprintln!("{N} processes all running after {took:?}; big's states seen meanwhile: {states:?}");
    assert_eq!(
        count_processes_with_cmdline(&format!("sleep {secs}")),
        N as usize
    );

    let start = Instant::now();
    big.ctl_ok(&["--timeout", "60s", "numprocesses", "w", "0"]);
    wait_until(Duration::from_secs(300), "all stopped", || {
        count_processes_with_cmdline(&format!("sleep {secs}")) == 0
    });
    if let Some(s) = view() {
        states.insert(s);
    }
    eprintln!("scaled down to 0 in {:?}", start.elapsed());
    let suspected = watcher.stderr_log().lines().any(|l| {
        l.contains("big") && (l.contains("member suspect") || l.contains("member failed"))
    });
    assert!(
        !suspected && states.iter().all(|s| s == "alive"),
        "big was not alive all along: {states:?}\n{}",
        watcher.stderr_log()
    );
}

fn all_processes_count() -> u32 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count() as u32
        })
        .unwrap_or(0)
}

#[test]
fn a_panic_in_the_stats_task_stops_every_process_gracefully_and_exits_70() {
    panic_stops_everything("stats");
}
