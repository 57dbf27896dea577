//! Hooks on real processes: every hook runs in order with its environment (each
//! appends a line to a file), a failing `before_start` stops the start with its reason
//! and a `hook_failed` event, and `add`/`set` of hooks need `allow_remote_exec`.

use std::path::Path;
use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(30);

/// A node "a", allowing remote exec or not, with `watchers`.
fn node(remote_exec: bool, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"a\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\
         allow_remote_exec = {remote_exec}\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

/// A hook that appends `NAME WATCHER WID PID EXIT` to `file`.
fn note(file: &Path, name: &str) -> String {
    format!(
        "[\"sh\", \"-c\", \"echo {name} $NODEAGENT_WATCHER ${{NODEAGENT_WID:--}} \
         ${{NODEAGENT_PID:--}} ${{NODEAGENT_EXIT_CODE:--}}${{NODEAGENT_EXIT_SIGNAL:-}} $PWD \
         $GREETING >> {}\"]",
        file.display()
    )
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn hooks_run_in_order_with_their_environment() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("hooks.log");
    let secs = unique_secs();
    let hooks: Vec<String> = [
        "before_start",
        "after_start",
        "before_spawn",
        "after_spawn",
        "before_stop",
        "after_stop",
        "after_exit",
    ]
    .iter()
    .map(|h| format!("{h} = {}", note(&file, h)))
    .collect();
    let w = format!(
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nautostart = false\n\
         working_dir = \"{}\"\nenv = {{ GREETING = \"hi\" }}\ngraceful_timeout = \"5s\"\n\
         [watcher.w.hooks]\n{}\n",
        dir.path().display(),
        hooks.join("\n")
    );
    let agent = Agent::start_config(&nats, &node(false, &w));
    agent.ctl_ok(&["start", "w"]);
    let pid = wait_for(T, "w running", || agent.pids("w").first().map(|(_, p)| *p));
    wait_until(T, "after_start", || lines(&file).len() >= 4);
    agent.ctl_ok(&["stop", "w"]);
    wait_until(T, "after_stop", || lines(&file).len() >= 7);
    let got = lines(&file);
    eprintln!("{}", got.join("\n"));
    let d = dir.path().display().to_string();
    let want = [
        format!("before_start w - - - {d} hi"),
        format!("before_spawn w 1 - - {d} hi"),
        format!("after_spawn w 1 {pid} - {d} hi"),
        format!("after_start w - - - {d} hi"),
        format!("before_stop w - - - {d} hi"),
        format!("after_exit w 1 {pid} -SIGTERM {d} hi"),
        format!("after_stop w - - - {d} hi"),
    ];
    // after_spawn and after_start may finish in either order (they run side by side),
    // as may after_exit and after_stop.
    let mut sorted_got = got.clone();
    let mut sorted_want = want.to_vec();
    sorted_got.sort();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want);
    let at = |s: &str| got.iter().position(|l| l.starts_with(s)).unwrap();
    assert!(at("before_start") < at("before_spawn"));
    assert!(at("before_spawn") < at("after_spawn"));
    assert!(at("after_spawn") < at("before_stop"));
    assert!(at("before_stop") < at("after_exit"));
    assert!(at("after_start") < at("before_stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_before_start_aborts_the_start_with_its_reason() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.w.>").await;
    let secs = unique_secs();
    let w = format!(
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nautostart = false\n\
         [watcher.w.hooks]\n\
         before_start = [\"sh\", \"-c\", \"echo checking >&2; echo the disk is full >&2; exit 3\"]\n"
    );
    let agent = Agent::start_config(&nats, &node(false, &w));
    let (out, replies) = agent.ctl_json(&["start", "w"]);
    eprintln!("{:?}\n{}", replies, out.stderr);
    let r = replies.first().expect("a reply");
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["errno"], 10, "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    for needle in [
        "before_start hook of 'w' failed",
        "code 3",
        "the disk is full",
        "nothing was started",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason}");
    }
    assert!(agent.pids("w").is_empty());
    let s = agent.ctl_ok(&["status", "w"]);
    assert_eq!(s["watchers"][0]["state"], "stopped", "{s}");
    // Its event.
    let ev = events
        .next_where(T, "a hook_failed event", |v| v["kind"] == "hook_failed")
        .await;
    assert_eq!(ev["hook"], "before_start", "{ev}");
    assert!(ev["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("the disk is full"));
}

#[test]
fn hooks_are_remote_exec_keys() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n");
    let agent = Agent::start_config(&nats, &node(false, &w));
    let out = agent.ctl(&[
        "set",
        "w",
        "hooks",
        r#"{"after_exit": ["touch", "/tmp/x"]}"#,
    ]);
    out.expect_code(1, "set of hooks without allow_remote_exec");
    assert!(
        out.stderr.contains("setting 'hooks'") && out.stderr.contains("allow_remote_exec"),
        "{}",
        out.stderr
    );
    let o = agent.ctl_ok(&["options", "w"]);
    assert!(o["options"].get("hooks").is_none(), "{o}");
    let out = agent.ctl(&[
        "add",
        "w2",
        "-o",
        r#"hooks={"after_exit": ["touch", "/tmp/x"]}"#,
        "--",
        "sleep",
        &secs,
    ]);
    out.expect_code(1, "add without allow_remote_exec");
    assert!(out.stderr.contains("allow_remote_exec"), "{}", out.stderr);
}

/// A `before_stop` hook that outlives its timeout keeps the watcher running; set (on a
/// node that allows remote exec) to one that passes, the stop goes through.
#[test]
fn a_before_stop_past_its_timeout_keeps_the_watcher_running() {
    let nats = NatsServer::start();
    let (secs, hook_secs) = (unique_secs(), unique_secs());
    let w = format!(
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n\
         hooks = {{ before_stop = {{ cmd = \"sleep {hook_secs}\", timeout = \"300ms\" }} }}\n"
    );
    let agent = Agent::start_config(&nats, &node(true, &w));
    let pid = wait_for(T, "w running", || agent.pids("w").first().map(|(_, p)| *p));
    let (out, took) = timed(|| agent.ctl(&["stop", "w"]));
    out.expect_code(1, "a stop whose before_stop hook times out");
    for needle in [
        "before_stop hook of 'w' failed",
        "timeout (300ms)",
        "nothing was stopped",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    assert!(took < bound(Duration::from_secs(10)), "{took:?}");
    assert_eq!(agent.pids("w"), [(1, pid)]);
    let s = agent.ctl_ok(&["status", "w"]);
    assert_eq!(s["watchers"][0]["state"], "active", "{s}");
    // The hook's process is not left behind.
    wait_until(T, "the hook's process killed", || {
        pids_with_cmdline(&hook_secs).is_empty()
    });
    agent.ctl_ok(&["set", "w", "hooks", r#"{"before_stop": "true"}"#]);
    let o = agent.ctl_ok(&["options", "w"]);
    assert_eq!(
        o["options"]["hooks"]["before_stop"]["cmd"][0], "true",
        "{o}"
    );
    agent.ctl_ok(&["stop", "w"]);
    wait_until(T, "w's process gone", || !is_alive(pid));
}
