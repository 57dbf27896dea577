//! Observing a cluster end to end: the stats stream and `ctl stats`, lifecycle and agent
//! events on NATS and `ctl events`, captured output with rotation and `ctl logs`, and
//! `ctl top` in a real terminal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::tmux::Tmux;
use e2e::*;
use futures::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The bound on every wait; a wait ends as soon as its condition holds.
const T: Duration = Duration::from_secs(20);

/// A whole agent config: `[agent]` with `extra` keys, `[nats]`, then `watchers`.
fn config(name: &str, extra: &str, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n{extra}\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

/// A process's CPU time (user + system) in seconds, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

fn json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stream_from_both_nodes_at_the_interval() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut sub = client
        .subscribe("cluster.*.stats")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let busy = "[watcher.busy]\ncmd = \"sh\"\nargs = [\"-c\", \"while :; do :; done\"]\n";
    let extra = "stats_interval = \"300ms\"";
    let a = Agent::start_config(&nats, &config("a", extra, busy));
    let _b = Agent::start_config(&nats, &config("b", extra, ""));

    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // The busy process as the stats report it, next to its CPU time read here from
    // /proc when each message arrived.
    let mut busy: Vec<(Instant, f64, f64, u64)> = vec![];
    let mut busy_pid = None;
    let deadline = Instant::now() + T;
    loop {
        let enough = times.values().filter(|t| t.len() >= 8).count() == 2;
        if enough && busy.len() >= 8 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("stats within {T:?}: got {times:?}, busy {busy:?}"))
            .expect("subscription open");
        let v = json(&msg.payload);
        validate("stats.schema.json", &v);
        let node = v["node"].as_str().expect("node").to_owned();
        assert_eq!(msg.subject.as_str(), format!("cluster.{node}.stats"));
        times
            .entry(node.clone())
            .or_default()
            .push(v["time"].as_f64().expect("time"));
        let process = v["watchers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == "busy"))
            .and_then(|w| w["processes"].get(0));
        if let (Some(p), true) = (process, node == "a") {
            let pid = p["pid"].as_u64().expect("pid") as u32;
            if *busy_pid.get_or_insert(pid) != pid {
                panic!("the busy process was restarted: {busy_pid:?} then {pid}");
            }
            let cpu_secs = cpu_seconds(pid).expect("the busy process in /proc");
            let (cpu, rss) = (p["cpu_percent"].as_f64(), p["rss_bytes"].as_u64());
            busy.push((
                Instant::now(),
                cpu_secs,
                cpu.unwrap_or(0.0),
                rss.unwrap_or(0),
            ));
        }
    }
    for (node, ts) in &times {
        let gaps: Vec<f64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("stats gaps of {node} (s): {gaps:.3?}");
        for g in &gaps {
            assert!(
                (0.15..=1.5).contains(g),
                "{node}: stats {g:.3} s apart, outside 0.15..1.5 s: {gaps:?}"
            );
        }
    }
    // The CPU the kernel gave the busy loop over the window (all of a core on an idle
    // machine, less when the machine is loaded), against what the agent reported.
    let (first, last) = (busy[0], busy[busy.len() - 1]);
    let measured = (last.1 - first.1) / (last.0 - first.0).as_secs_f64() * 100.0;
    let reported: f64 = busy[1..].iter().map(|b| b.2).sum::<f64>() / (busy.len() - 1) as f64;
    // The first sample may be taken while the process is still being exec'd (no memory
    // mapped yet); from the second on it runs.
    let rss = busy[1..].iter().map(|b| b.3).min().unwrap_or(0);
    eprintln!(
        "busy loop: cpu reported {reported:.1}%, measured from /proc {measured:.1}%, rss {rss} bytes"
    );
    assert!(measured > 5.0, "the busy loop hardly ran: {measured:.1}%");
    assert!(
        (reported - measured).abs() <= (0.3 * measured).max(15.0),
        "reported {reported:.1}% but /proc says {measured:.1}%: {busy:?}"
    );
    assert!(rss > 0, "{busy:?}");

    let replies = a.ctl_json(&["stats"]).1;
    assert_eq!(replies.len(), 1, "{replies:?}");
    validate_reply("stats", &replies[0]);
    let human = a.ctl(&["stats"]);
    human.expect_code(0, "ctl stats");
    let header = human.stdout.lines().next().unwrap_or_default();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        ["NODE", "WATCHER", "WID", "PID", "CPU%", "MEM", "AGE", "RESTARTS"],
        "{}",
        human.stdout
    );
    let rows = human.table();
    let busy_row = rows
        .iter()
        .find(|r| r["WATCHER"] == "busy")
        .unwrap_or_else(|| panic!("no row for busy:\n{}", human.stdout));
    assert_eq!(busy_row["NODE"], "a", "{}", human.stdout);
    let pid = busy_pid.map(|p| p.to_string()).unwrap_or_default();
    assert_eq!(busy_row["PID"], pid, "{}", human.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_spawn_respawn_and_join_events() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.>").await;

    let secs = unique_secs();
    let w = format!("[watcher.sl]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 2\n");
    let a = Agent::start_config(&nats, &config("a", "", &w));

    // The agent announces itself (on cluster.a.events._agent.join).
    let join = events
        .next_where(T, "the agent's join", |v| {
            v["watcher"] == "_agent" && v["kind"] == "join"
        })
        .await;
    assert_eq!(join["node"], "a");
    wait_until(T, "2 children", || a.children().len() == 2);
    let pids = a.pids("sl");
    let (wid, old) = pids[0];
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill");

    let mut exit = None;
    let mut respawn = None;
    let mut spawn = None;
    while exit.is_none() || respawn.is_none() || spawn.is_none() {
        let v = events.next(T).await;
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        if v["watcher"] != "sl" || v["wid"].as_u64() != Some(wid as u64) {
            continue;
        }
        match kind.as_str() {
            "exit" if v["pid"].as_u64() == Some(old as u64) => exit = Some(v),
            "respawn" if exit.is_some() => respawn = Some(v),
            "spawn" if exit.is_some() => spawn = Some(v),
            _ => {}
        }
    }
    let exit = exit.unwrap();
    assert_eq!(exit["exit"]["signal"], "SIGKILL", "{exit}");
    let new = spawn.unwrap()["pid"].as_u64().expect("spawn pid") as u32;
    assert_ne!(new, old);
    wait_until(T, "the new pid listed", || {
        a.pids("sl").contains(&(wid, new))
    });
    let respawn = respawn.unwrap();
    if let Some(p) = respawn["pid"].as_u64() {
        assert_eq!(p as u32, new, "{respawn}");
    }
}

#[test]
fn ctl_events_prints_a_stop() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = format!("[watcher.sl]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n\n[watcher.other]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n");
    let a = Agent::start_config(&nats, &config("a", "", &w));
    let url = nats.url();
    let events = CtlLines::spawn(&url, &["events"]);
    // Subscribed once an event caused after it started shows up.
    let mut subscribed = false;
    for _ in 0..20 {
        let pid = a.pids("other")[0].1;
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        if events
            .find_line(Duration::from_secs(1), |l| l.contains(" other "))
            .is_some()
        {
            subscribed = true;
            break;
        }
        wait_until(T, "other running again", || {
            a.pids("other").first().map(|p| p.1) != Some(pid) && !a.pids("other").is_empty()
        });
    }
    assert!(subscribed, "ctl events printed nothing about watcher other");
    a.ctl(&["stop", "sl"]).expect_code(0, "ctl stop");
    let line = events
        .find_line(T, |l| l.contains(" a sl stop"))
        .expect("a stop line for sl");
    eprintln!("ctl events: {line}");
}

fn log_lines(reply: &Value) -> Vec<Value> {
    reply["lines"]
        .as_array()
        .or_else(|| reply["data"]["lines"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no lines in {reply}"))
}

#[test]
fn logs_tail_streams_rotation_and_follow() {
    let nats = NatsServer::start();
    // 1000 numbered lines on each stream (several rotations), then one per 100 ms.
    let script = "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo out-$i; echo err-$i >&2; done; \
                  while :; do i=$((i+1)); echo out-$i; echo err-$i >&2; sleep 0.1; done";
    let w = format!(
        "[watcher.W]\ncmd = \"sh\"\nargs = [\"-c\", \"{script}\"]\nlog_max_bytes = 2048\nlog_backups = 2\n"
    );
    let a = Agent::start_config(&nats, &config("a", "", &w));
    let logs = a.dir().join("logs");
    // Rotation: enough output for more rotations than backups.
    wait_until(T, "W.stdout.log.2 in the log dir", || {
        logs.join("W.stdout.log.2").exists()
    });
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&logs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("W.stdout"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // The burst is captured once its last line shows.
    wait_until(T, "the end of the burst in ctl logs", || {
        a.ctl(&["logs", "W", "-l", "1", "--stream", "stdout"])
            .stdout
            .lines()
            .any(|l| {
                l.strip_prefix("[W.1] out-")
                    .and_then(|n| n.parse::<u64>().ok())
                    >= Some(1000)
            })
    });
    let files = names();
    eprintln!("log files: {files:?}");
    assert_eq!(files, ["W.stdout.log", "W.stdout.log.1", "W.stdout.log.2"]);

    // The last 5 lines, newest last, in order.
    let out = a.ctl(&["logs", "W", "-l", "5", "--stream", "stdout"]);
    out.expect_code(0, "ctl logs");
    let shown: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(shown.len(), 5, "{}", out.stdout);
    let nums: Vec<u64> = shown
        .iter()
        .map(|l| {
            let rest = l
                .strip_prefix("[W.1] out-")
                .unwrap_or_else(|| panic!("not a [W.1] stdout line: {l}"));
            rest.parse().expect("a number")
        })
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    assert!(nums[0] >= 996, "not the newest lines: {nums:?}");

    // Across rotated files: asking for 300 lines gives every line still kept, which is
    // more than the current file holds, consecutive and ending with the newest.
    let current = std::fs::read_to_string(logs.join("W.stdout.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let many = a.ctl(&["logs", "W", "-l", "300", "--stream", "stdout"]);
    many.expect_code(0, "ctl logs -l 300");
    let nums: Vec<u64> = many
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[W.1] out-")?.parse().ok())
        .collect();
    eprintln!(
        "ctl logs -l 300: {} lines ({}..{}), current file {current} lines",
        nums.len(),
        nums.first().unwrap_or(&0),
        nums.last().unwrap_or(&0)
    );
    assert!(nums.len() > current, "{}", many.stdout);
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    assert!(nums.last() >= Some(&1000), "{nums:?}");

    let both = a.ctl(&["logs", "W", "-l", "5"]);
    both.expect_code(0, "ctl logs");
    assert_eq!(both.stdout.lines().count(), 5, "{}", both.stdout);
    assert!(
        both.stdout.lines().all(|l| l.starts_with("[W.1")),
        "{}",
        both.stdout
    );

    let err = a.ctl(&["logs", "W", "-l", "5", "--stream", "stderr"]);
    err.expect_code(0, "ctl logs --stream stderr");
    assert_eq!(err.stdout.lines().count(), 5, "{}", err.stdout);
    assert!(
        err.stdout.lines().all(|l| l.starts_with("[W.1:err] err-")),
        "{}",
        err.stdout
    );

    let r = a.ctl_ok(&["logs", "W", "-l", "5"]);
    let lines = log_lines(&r);
    assert_eq!(lines.len(), 5, "{r}");
    let (_, raw) = ctl_json_output(&nats, &["--node", "a", "logs", "W", "-l", "5"]);
    for v in &raw {
        validate_reply("logs", v);
    }

    // Follow: a line written after ctl started.
    let url = nats.url();
    let follow = CtlLines::spawn(&url, &["--node", "a", "logs", "W", "-l", "1", "-f"]);
    let first = follow
        .find_line(T, |l| l.starts_with("[W.1] out-"))
        .expect("the tail line");
    let n0: u64 = first["[W.1] out-".len()..].parse().expect("a number");
    let later = follow
        .find_line(T, |l| {
            l.strip_prefix("[W.1] out-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > n0 + 3)
        })
        .expect("a line written after ctl logs -f started");
    eprintln!("followed: {first} .. {later}");
    assert_eq!(
        names(),
        ["W.stdout.log", "W.stdout.log.1", "W.stdout.log.2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_a_terminal_shows_nodes_and_quits() {
    let nats = NatsServer::start();
    let extra = "stats_interval = \"300ms\"";
    let _a = Agent::start_config(&nats, &config("first", extra, ""));
    let _b = Agent::start_config(&nats, &config("second", extra, ""));
    let ctl = bin("ctl");
    let ctl = ctl.to_string_lossy();
    let url = nats.url();
    let tmux = Tmux::start(&[&ctl, "-s", &url, "top"], 80, 24, &[]).expect("tmux");
    tmux.wait_for("q quit", T).await.expect("top drawn");
    tmux.wait_for("first", T).await.expect("first shown");
    let screen = tmux.wait_for("second", T).await.expect("second shown");
    eprintln!("top:\n{screen}");
    tmux.send_keys(&["q"]).expect("send q");
    assert_eq!(tmux.wait_exit(T).await.expect("top exits"), 0);
    let after = tmux.capture().expect("capture");
    assert!(
        !after.contains("q quit"),
        "the screen was not restored:\n{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_are_published_only_while_someone_follows() {
    let nats = NatsServer::start();
    let w = "[watcher.W]\ncmd = \"sh\"\n\
             args = [\"-c\", \"i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.05; done\"]\n";
    let a = Agent::start_config(&nats, &config("a", "", w));
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut raw = client
        .subscribe("cluster.a.logs.W")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    // While nobody follows, lines are captured (ctl logs reads them back) but not sent.
    let tick = |a: &Agent| -> u64 {
        a.ctl(&["logs", "W", "-l", "1"])
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("[W.1] tick-")?.parse().ok())
            .next_back()
            .unwrap_or(0)
    };
    let start = tick(&a);
    wait_until(T, "20 more lines captured", || tick(&a) >= start + 20);
    let unfollowed = tokio::time::timeout(Duration::from_millis(1), raw.next()).await;
    assert!(
        unfollowed.is_err(),
        "a line was published with no follower: {unfollowed:?}"
    );

    // `ctl logs -f` asks for them: from then on they arrive, valid against the schema.
    let url = nats.url();
    let follow = CtlLines::spawn(&url, &["--node", "a", "logs", "W", "-l", "1", "-f"]);
    follow
        .find_line(T, |l| l.starts_with("[W.1] tick-"))
        .expect("the tail line");
    let msg = tokio::time::timeout(T, raw.next())
        .await
        .expect("a published line once followed")
        .expect("subscription open");
    let v = json(&msg.payload);
    validate("log-line.schema.json", &v);
    assert_eq!(v["watcher"], "W", "{v}");
    drop(follow);
}
