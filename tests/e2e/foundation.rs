//! The foundation, proven end to end: a real nats-server, real agents, the real ctl and
//! real processes, observed through /proc.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use protocol::{Errno, Subjects};
use serde_json::{json, Value};

/// The bound on every wait: generous, because the machine is shared; a wait ends as
/// soon as its condition holds.
const T: Duration = Duration::from_secs(20);

/// A `[watcher.NAME]` table running `sleep SECS`, `n` times.
fn sleeper(name: &str, secs: &str, n: u32) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = {n}\n\n")
}

/// The `status` summary of one watcher.
fn summary(agent: &Agent, watcher: &str) -> Value {
    let r = agent.ctl_ok(&["status", watcher]);
    r["watchers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == watcher))
        .cloned()
        .unwrap_or_else(|| panic!("no watcher {watcher} in {r}"))
}

/// The process slots of one watcher, from `list`.
fn slots(agent: &Agent, watcher: &str) -> Vec<Value> {
    let r = agent.ctl_ok(&["list", watcher]);
    r["processes"].as_array().cloned().unwrap_or_default()
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

/// The pids `list` reports, sorted.
fn listed_pids(agent: &Agent, watcher: &str) -> Vec<u32> {
    sorted(agent.pids(watcher).into_iter().map(|(_, p)| p).collect())
}

fn wids(agent: &Agent, watcher: &str) -> Vec<u32> {
    agent.pids(watcher).into_iter().map(|(w, _)| w).collect()
}

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the agent has exactly `n` children, all listed by `ctl list watcher`.
fn wait_children(agent: &Agent, watcher: &str, n: usize) -> Vec<u32> {
    wait_for(
        T,
        &format!("{n} processes of {watcher}, as children and in `list`"),
        || {
            let kids = agent.children();
            (kids.len() == n && listed_pids(agent, watcher) == kids).then_some(kids)
        },
    )
}

#[test]
fn processes_start_at_numprocesses() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("dummy", &secs, 3));
    let kids = wait_children(&agent, "dummy", 3);
    for pid in &kids {
        assert_eq!(cmdline(*pid), Some(format!("sleep {secs}")));
        // Each process leads a process group of its own.
        assert_eq!(pgrp_of(*pid), Some(*pid));
    }
    assert_eq!(wids(&agent, "dummy"), vec![1, 2, 3]);
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 3);
    let s = summary(&agent, "dummy");
    assert_eq!(s["numprocesses"], 3);
    assert_eq!(s["running"], 3);
    assert_eq!(s["state"], "active");
}

#[test]
fn incr_decr_and_numprocesses_change_the_real_count() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("dummy", &secs, 2));
    let first = wait_children(&agent, "dummy", 2);
    let wid1 = agent.pids("dummy")[0].1;

    let r = agent.ctl_ok(&["incr", "dummy"]);
    assert_eq!(r["numprocesses"], 3);
    let after = wait_children(&agent, "dummy", 3);
    assert!(
        first.iter().all(|p| after.contains(p)),
        "incr replaced processes"
    );

    assert_eq!(agent.ctl_ok(&["incr", "dummy", "2"])["numprocesses"], 5);
    wait_children(&agent, "dummy", 5);

    assert_eq!(agent.ctl_ok(&["decr", "dummy"])["numprocesses"], 4);
    wait_children(&agent, "dummy", 4);
    // The highest wid goes first.
    assert_eq!(wids(&agent, "dummy"), vec![1, 2, 3, 4]);

    assert_eq!(
        agent.ctl_ok(&["numprocesses", "dummy", "1"])["numprocesses"],
        1
    );
    wait_children(&agent, "dummy", 1);
    assert_eq!(agent.pids("dummy"), vec![(1, wid1)], "wid 1 was kept");
    assert_eq!(agent.ctl_ok(&["numprocesses", "dummy"])["numprocesses"], 1);

    agent.ctl_ok(&["numprocesses", "dummy", "0"]);
    wait_until(T, "no processes left", || agent.children().is_empty());
    assert_eq!(summary(&agent, "dummy")["running"], 0);

    agent.ctl_ok(&["incr", "dummy"]);
    wait_children(&agent, "dummy", 1);
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 1);
}

#[test]
fn a_killed_process_is_respawned() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("dummy", &secs, 2));
    wait_children(&agent, "dummy", 2);
    let before = agent.pids("dummy");
    let (old1, old2) = (before[0].1, before[1].1);

    kill(Pid::from_raw(old1 as i32), Signal::SIGKILL).expect("kill a child");
    let new1 = wait_for(T, "wid 1 running again under a new pid", || {
        agent
            .pids("dummy")
            .iter()
            .find(|(w, p)| *w == 1 && *p != old1)
            .map(|(_, p)| *p)
    });
    assert!(!is_alive(old1));
    assert!(is_alive(new1));
    assert_eq!(cmdline(new1), Some(format!("sleep {secs}")));
    assert_eq!(
        agent.pids("dummy"),
        vec![(1, new1), (2, old2)],
        "the other process was left alone"
    );
    let slot1 = &slots(&agent, "dummy")[0];
    assert_eq!(slot1["restarts"], 1, "{slot1}");
    assert_eq!(slot1["last_exit"]["signal"], "SIGKILL", "{slot1}");
    assert_eq!(summary(&agent, "dummy")["restarts"], 1);
    wait_children(&agent, "dummy", 2);
}

#[test]
fn stop_reaches_the_whole_process_group() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.grp]\ncmd = \"sh\"\nargs = [\"-c\", \"sleep {secs} & sleep {secs} & wait\"]\n"
        ),
    );
    let leader = wait_children(&agent, "grp", 1)[0];
    let members = wait_for(T, "the shell and its two sleeps in one group", || {
        let m = group_members(leader);
        (m.len() == 3).then_some(m)
    });
    // The shell's own command line names the sleeps too.
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 3);

    let r = agent.ctl_ok(&["stop", "grp"]);
    assert_eq!(r["statuses"]["grp"], "stopped", "{r}");
    // `stop` waits until the group is gone: no poll needed.
    for pid in &members {
        assert!(!is_alive(*pid), "{pid} of group {leader} outlived stop");
    }
    assert!(group_members(leader).is_empty());
    assert!(agent.children().is_empty());
    let s = summary(&agent, "grp");
    assert_eq!(
        (s["state"].as_str(), s["running"].as_u64()),
        (Some("stopped"), Some(0))
    );
}

#[test]
fn stop_waits_graceful_timeout_then_kills() {
    let nats = NatsServer::start();
    let marker = format!("stubborn-{}", unique_secs());
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.stubborn]\ncmd = \"sh\"\n\
             args = [\"-c\", \"trap '' TERM; touch {{dir}}/ready; while :; do sleep 0.1; done\", \"{marker}\"]\n\
             graceful_timeout = \"1s\"\n"
        ),
    );
    let leader = wait_children(&agent, "stubborn", 1)[0];
    let ready = agent.dir().join("ready");
    wait_until(T, "the child ignores SIGTERM", || ready.exists());

    let (r, took) = timed(|| agent.ctl_ok(&["stop", "stubborn"]));
    assert_eq!(r["statuses"]["stubborn"], "stopped", "{r}");
    assert!(
        took >= Duration::from_millis(950),
        "stop took {took:?}, less than graceful_timeout 1s"
    );
    assert!(!is_alive(leader));
    assert!(group_members(leader).is_empty());
    assert_eq!(count_processes_with_cmdline(&marker), 0);
    assert!(
        agent
            .stderr_log()
            .contains("graceful_timeout passed; sending SIGKILL"),
        "the agent did not say it escalated"
    );
}

#[test]
fn wid_expands_in_args_and_env() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.w]\ncmd = \"sh\"\n\
             args = [\"-c\", \"echo $(wid) $MY_WID $NODEAGENT_WID $(name) > {{dir}}/out.$(wid); exec sleep {secs}\"]\n\
             env = {{ MY_WID = \"w$(wid)\" }}\nnumprocesses = 3\n"
        ),
    );
    wait_children(&agent, "w", 3);
    for wid in 1..=3 {
        let path = agent.dir().join(format!("out.{wid}"));
        let want = format!("{wid} w{wid} {wid} w");
        wait_until(T, &format!("{} holds {want:?}", path.display()), || {
            read_lines(&path) == [want.clone()]
        });
    }
    assert!(!agent.dir().join("out.4").exists());
}

#[test]
fn a_program_that_cannot_run_fails_with_the_system_s_words_and_spares_the_rest() {
    let nats = NatsServer::start();
    // Both watchers start at boot, their processes forked in the same batch.
    let config = format!(
        "[watcher.bad]\ncmd = \"/nonexistent/prog\"\nnumprocesses = 2\n\
         restart_delay = \"20ms\"\nmax_retry = 1\n\n{}",
        sleeper("good", "1000", 3)
    );
    let agent = Agent::start(&nats, "n1", &config);
    let s = wait_for(T, "bad to be fatal", || {
        let s = summary(&agent, "bad");
        (s["state"] == "fatal").then_some(s)
    });
    assert_eq!(s["running"], 0, "{s}");
    // Each failed start is logged with why, in the system's words: 2 slots, 2 tries.
    let want = "cannot start \"/nonexistent/prog\": No such file or directory (os error 2)";
    agent.wait_log(T, &[want]);
    let lines = agent.log_lines(&["WARN", want]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let good = wait_for(T, "good to run 3", || {
        let pids: Vec<u64> = slots(&agent, "good")
            .iter()
            .filter(|p| p["state"] == "running")
            .filter_map(|p| p["pid"].as_u64())
            .collect();
        (pids.len() == 3).then_some(pids)
    });
    for pid in good {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(cmdline.starts_with(b"sleep\x001000"), "{pid}: {cmdline:?}");
    }
}

#[test]
fn a_crash_loop_backs_off_then_ends_fatal_and_start_revives_it() {
    let nats = NatsServer::start();
    let agent = Agent::start(
        &nats,
        "n1",
        "[watcher.crash]\ncmd = \"sh\"\nargs = [\"-c\", \"date +%s%N >> {dir}/starts; exit 1\"]\n\
         restart_delay = \"50ms\"\nmax_retry = 3\n",
    );
    let s = wait_for(T, "crash to be fatal", || {
        let s = summary(&agent, "crash");
        (s["state"] == "fatal").then_some(s)
    });
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gave up after 4 failed starts"),
        "reason: {reason:?}"
    );
    assert_eq!(s["restarts"], 3, "{s}");
    assert_eq!(s["running"], 0);
    let slot = &slots(&agent, "crash")[0];
    assert_eq!(slot["state"], "fatal");
    assert_eq!(slot["last_exit"]["code"], 1);

    // One start, then max_retry = 3 more, each after a doubled delay.
    let starts: Vec<u128> = read_lines(&agent.dir().join("starts"))
        .iter()
        .map(|l| l.parse().expect("a timestamp"))
        .collect();
    assert_eq!(starts.len(), 4, "{starts:?}");
    let tolerance = 5;
    for (i, pair) in starts.windows(2).enumerate() {
        let gap_ms = (pair[1] - pair[0]) / 1_000_000;
        let backoff_ms = 50u128 << i;
        assert!(
            gap_ms + tolerance >= backoff_ms,
            "restart {} came after {gap_ms}ms, before its backoff of {backoff_ms}ms",
            i + 1
        );
    }

    // The human table says it too.
    let out = agent.ctl(&["status"]);
    out.expect_code(0, "ctl status");
    let rows = out.table();
    assert_eq!(rows.len(), 1, "{}", out.stdout);
    assert_eq!(rows[0]["WATCHER"], "crash", "{}", out.stdout);
    assert_eq!(rows[0]["STATE"], "fatal", "{}", out.stdout);
    assert_eq!(rows[0]["PROCESSES"], "0/1", "{}", out.stdout);
    assert_eq!(rows[0]["RESTARTS"], "3", "{}", out.stdout);
    assert!(
        rows[0]["REASON"].starts_with("gave up after 4 failed starts"),
        "{}",
        out.stdout
    );

    agent.ctl_ok(&["start", "crash"]);
    let path = agent.dir().join("starts");
    wait_until(T, "crash to run again after start", || {
        read_lines(&path).len() > 4
    });
}

#[test]
fn an_expected_exit_is_not_restarted_under_on_failure() {
    let nats = NatsServer::start();
    let agent = Agent::start(
        &nats,
        "n1",
        "[watcher.clean]\ncmd = \"sh\"\nargs = [\"-c\", \"echo run >> {dir}/clean; exit 7\"]\n\
         restart = \"on-failure\"\nexit_codes = [0, 7]\nrestart_delay = \"50ms\"\n\n\
         [watcher.dirty]\ncmd = \"sh\"\nargs = [\"-c\", \"echo run >> {dir}/dirty; exit 1\"]\n\
         restart = \"on-failure\"\nexit_codes = [0, 7]\nrestart_delay = \"50ms\"\nmax_retry = -1\n",
    );
    // Both started together with the same delay: by the time the unexpected exit was
    // restarted twice, an expected one would have been restarted too.
    wait_until(T, "dirty to be restarted twice", || {
        summary(&agent, "dirty")["restarts"]
            .as_u64()
            .is_some_and(|r| r >= 2)
    });
    assert!(read_lines(&agent.dir().join("dirty")).len() >= 3);
    let clean = wait_for(T, "clean to be exited", || {
        let s = slots(&agent, "clean");
        (s.first()?["state"] == "exited").then(|| s[0].clone())
    });
    assert_eq!(clean["restarts"], 0, "{clean}");
    assert_eq!(clean["last_exit"]["code"], 7, "{clean}");
    assert!(clean.get("pid").is_none(), "{clean}");
    assert_eq!(read_lines(&agent.dir().join("clean")).len(), 1);
    let s = summary(&agent, "clean");
    assert_eq!(
        (s["restarts"].as_u64(), s["running"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn bad_input_gets_an_error_reply_and_changes_nothing() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("dummy", &secs, 2));
    let before = wait_children(&agent, "dummy", 2);
    let before_slots = agent.pids("dummy");

    let huge = format!(
        r#"{{"command":"status","properties":{{"name":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    // (payload, errno, part of the reason, the command whose reply schema applies)
    let cases: Vec<(Vec<u8>, Errno, &str, Option<&str>)> = vec![
        (
            b"{not json".to_vec(),
            Errno::BadMessage,
            "not valid JSON",
            None,
        ),
        (b"".to_vec(), Errno::BadMessage, "not valid JSON", None),
        (
            vec![0xff, 0xfe, 0x00],
            Errno::BadMessage,
            "not valid JSON",
            None,
        ),
        (b"[1,2]".to_vec(), Errno::BadMessage, "JSON object", None),
        (
            b"\"status\"".to_vec(),
            Errno::BadMessage,
            "JSON object",
            None,
        ),
        (b"null".to_vec(), Errno::BadMessage, "JSON object", None),
        (
            br#"{"properties":{}}"#.to_vec(),
            Errno::BadMessage,
            "no 'command'",
            None,
        ),
        (
            br#"{"command":5}"#.to_vec(),
            Errno::BadMessage,
            "'command' must be a string",
            None,
        ),
        (
            br#"{"command":"nope"}"#.to_vec(),
            Errno::UnknownCommand,
            "unknown command 'nope'",
            None,
        ),
        (
            br#"{"command":"status","extra":1}"#.to_vec(),
            Errno::BadMessage,
            "unknown field 'extra'",
            None,
        ),
        (
            br#"{"command":"status","properties":[]}"#.to_vec(),
            Errno::BadMessage,
            "'properties' must be an object",
            None,
        ),
        (
            br#"{"command":"status","properties":{"nme":"dummy"}}"#.to_vec(),
            Errno::BadOption,
            "unknown field",
            Some("status"),
        ),
        (
            br#"{"command":"incr","properties":{"name":"dummy","nb":"two"}}"#.to_vec(),
            Errno::BadOption,
            "bad properties for 'incr'",
            Some("incr"),
        ),
        (
            br#"{"command":"incr","properties":{"name":5}}"#.to_vec(),
            Errno::BadOption,
            "bad properties for 'incr'",
            Some("incr"),
        ),
        (
            br#"{"command":"decr","properties":{"name":"dummy","nb":-1}}"#.to_vec(),
            Errno::BadOption,
            "bad properties for 'decr'",
            Some("decr"),
        ),
        (
            br#"{"command":"numprocesses","properties":{"name":"dummy","nb":1000000}}"#.to_vec(),
            Errno::BadOption,
            "is out of range; use 0 to 100000",
            Some("numprocesses"),
        ),
        (
            br#"{"command":"incr","properties":{"name":"nosuch"}}"#.to_vec(),
            Errno::UnknownWatcher,
            "unknown watcher 'nosuch'",
            Some("incr"),
        ),
        (
            br#"{"command":"stop","properties":{"name":"nosuch"}}"#.to_vec(),
            Errno::UnknownWatcher,
            "unknown watcher 'nosuch'",
            Some("stop"),
        ),
        (
            br#"{"command":"signal","properties":{"name":"dummy","signum":"NOPE"}}"#.to_vec(),
            Errno::BadOption,
            "not a signal",
            Some("signal"),
        ),
        (
            br#"{"command":"signal","properties":{"name":"dummy","signum":"KILL","pid":1}}"#
                .to_vec(),
            Errno::BadOption,
            "not a process of watcher",
            Some("signal"),
        ),
        (
            br#"{"command":"set","properties":{"name":"dummy","options":{"numprocesses":"many"}}}"#
                .to_vec(),
            Errno::BadOption,
            "invalid type: string \"many\"",
            Some("set"),
        ),
        (
            br#"{"command":"set","properties":{"name":"dummy","options":{"bogus":1}}}"#.to_vec(),
            Errno::BadOption,
            "unknown option 'bogus'",
            Some("set"),
        ),
        (
            br#"{"command":"get","properties":{"name":"dummy","keys":["bogus"]}}"#.to_vec(),
            Errno::BadOption,
            "unknown option 'bogus'",
            Some("get"),
        ),
        (
            huge.into_bytes(),
            Errno::BadMessage,
            "larger than the limit",
            None,
        ),
    ];

    let subject = Subjects::new(protocol::subjects::DEFAULT_PREFIX).node_cmd("n1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let replies: Vec<Value> = rt.block_on(async {
        let client = nats.client().await;
        let mut replies = vec![];
        let mut payloads: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
        payloads.push(br#"{"id":"abc","command":"nope"}"#.to_vec());
        payloads.push(br#"{"id":"p1","command":"ping"}"#.to_vec());
        for p in payloads {
            let msg = tokio::time::timeout(T, client.request(subject.clone(), p.into()))
                .await
                .expect("a reply in time")
                .expect("a reply");
            replies.push(serde_json::from_slice(&msg.payload).expect("a JSON reply"));
        }
        replies
    });

    for ((payload, errno, needle, command), reply) in cases.iter().zip(&replies) {
        let what = String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned();
        validate("reply.schema.json", reply);
        if let Some(c) = command {
            validate_reply(c, reply);
        }
        assert_eq!(reply["status"], "error", "{what}: {reply}");
        assert_eq!(reply["node"], "n1", "{what}: {reply}");
        assert_eq!(reply["errno"], errno.code(), "{what}: {reply}");
        let reason = reply["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "{what}: {reason:?} lacks {needle:?}"
        );
    }
    let echoed = &replies[cases.len()];
    assert_eq!(
        (echoed["id"].as_str(), echoed["errno"].as_u64()),
        (Some("abc"), Some(Errno::UnknownCommand.code() as u64))
    );
    let ping = &replies[cases.len() + 1];
    validate_reply("ping", ping);
    assert_eq!(
        (ping["status"].as_str(), ping["id"].as_str()),
        (Some("ok"), Some("p1"))
    );

    // Nothing changed, and the agent still answers.
    assert_eq!(agent.children(), before);
    assert_eq!(agent.pids("dummy"), before_slots);
    assert_eq!(agent.ctl_ok(&["numprocesses", "dummy"])["numprocesses"], 2);
    assert_eq!(summary(&agent, "dummy")["restarts"], 0);
    agent.ctl_ok(&["ping"]);
}

#[test]
fn an_invalid_config_exits_2_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let cases = [
        (
            "[agent]\nname = \"n1\"\n[watcher.w]\ncmd = \"sleep\"\nnumprocesses = \"two\"\n",
            vec!["numprocesses"],
        ),
        (
            "[agent]\nname = \"n1\"\n[watcher.w]\ncmd = \"sleep\"\nnumproceses = 2\n",
            vec!["numproceses"],
        ),
        (
            "[agent]\nname = \"n1\"\nheartbeat = \"often\"\n[watcher.w]\ncmd = \"sleep\"\ngraceful_timeout = \"soon\"\n",
            vec!["[agent] heartbeat", "[watcher.w] graceful_timeout"],
        ),
        ("[agent]\nname = \"all\"\n", vec!["[agent] name", "reserved"]),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write the config");
        let p = path.to_str().expect("a UTF-8 path");
        for args in [vec!["-c", p], vec!["--check", "-c", p]] {
            let out = nodeagent(&args, T);
            out.expect_code(2, &format!("nodeagent {args:?} with\n{text}"));
            assert!(
                out.stderr.contains(p),
                "does not name the file: {}",
                out.stderr
            );
            for n in needles {
                assert!(
                    out.stderr.contains(n),
                    "does not name {n:?}: {}",
                    out.stderr
                );
            }
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[agent]\nname = \"n1\"\n{}", sleeper("w", "1000", 2)),
    )
    .expect("write the config");
    let out = nodeagent(&["--check", "-c", good.to_str().expect("UTF-8")], T);
    out.expect_code(0, "nodeagent --check good.toml");
    assert!(out.stdout.contains("valid"), "{}", out.stdout);
}

#[test]
fn ctl_exit_codes() {
    let nats = NatsServer::start();
    let agent = Agent::start(&nats, "n1", &sleeper("dummy", &unique_secs(), 1));

    agent.ctl(&["status"]).expect_code(0, "status");

    let out = agent.ctl(&["status", "nosuch"]);
    out.expect_code(1, "status of an unknown watcher");
    assert!(
        out.stderr.contains("unknown watcher 'nosuch'"),
        "{}",
        out.stderr
    );

    let out = ctl(&nats, &["status"]);
    out.expect_code(2, "no target");
    assert!(out.stderr.contains("--node"), "{}", out.stderr);
    let out = ctl(&nats, &["--tag", "novalue", "status"]);
    out.expect_code(2, "bad tag");
    assert!(out.stderr.contains("KEY=VALUE"), "{}", out.stderr);
    ctl(&nats, &["--node", "bad name!", "status"]).expect_code(2, "bad node name");
    ctl(&nats, &["--node", "n1", "frobnicate"]).expect_code(2, "unknown subcommand");

    let out = ctl(&nats, &["--node", "nosuch", "status"]);
    out.expect_code(3, "an unknown node");
    assert!(out.stderr.contains("nosuch"), "{}", out.stderr);
    assert!(out.stderr.contains("down or misnamed"), "{}", out.stderr);

    // No NATS at all.
    let closed = free_port();
    let out = ctl_url(
        &format!("nats://127.0.0.1:{closed}"),
        &["--node", "n1", "status"],
    );
    out.expect_code(3, "NATS unreachable");
    assert!(
        out.stderr.contains("cannot connect to NATS"),
        "{}",
        out.stderr
    );
}

#[test]
fn remote_exec_needs_allow_remote_exec() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let added = unique_secs();
    let locked = Agent::start(&nats, "locked", &sleeper("w", &secs, 1));
    wait_children(&locked, "w", 1);

    let refused = |args: &[&str]| {
        let mut all = vec!["--node", "locked"];
        all.extend_from_slice(args);
        let (out, replies) = ctl_json_output(&nats, &all);
        out.expect_code(1, &format!("{args:?} on a locked node"));
        let r = &replies[0];
        assert_eq!(r["errno"], Errno::Forbidden.code(), "{r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("allow_remote_exec"), "{reason}");
    };
    refused(&["add", "x", "--", "sleep", &added]);
    refused(&["set", "w", "cmd", "true"]);
    refused(&["set", "w", "args", "[\"1\"]"]);
    refused(&["set", "w", "env", "{\"A\":\"1\"}"]);
    assert_eq!(count_processes_with_cmdline(&format!("sleep {added}")), 0);
    let status = locked.ctl_ok(&["status"]);
    assert_eq!(status["statuses"], json!({"w": "active"}));
    let opts = locked.ctl_ok(&["options", "w"]);
    assert_eq!(opts["options"]["cmd"], "sleep");
    assert_eq!(opts["options"]["args"], json!([secs]));
    // Options that start no new program are fine.
    locked.ctl_ok(&["set", "w", "numprocesses", "2"]);
    wait_children(&locked, "w", 2);

    let open = Agent::start_config(
        &nats,
        "[agent]\nname = \"open\"\nallow_remote_exec = true\nstate_dir = \"{dir}/state\"\n\n\
         [nats]\nservers = [\"{nats_url}\"]\n",
    );
    let r = open.ctl_ok(&["add", "x", "-o", "numprocesses=2", "--", "sleep", &added]);
    assert_eq!(r["statuses"]["x"], "active", "{r}");
    let kids = wait_children(&open, "x", 2);
    for pid in kids {
        assert_eq!(cmdline(pid), Some(format!("sleep {added}")));
    }
    let changed = unique_secs();
    open.ctl_ok(&["set", "x", "args", &format!("[\"{changed}\"]")]);
    wait_until(T, "x to run the new args", || {
        count_processes_with_cmdline(&format!("sleep {changed}")) == 2
            && count_processes_with_cmdline(&format!("sleep {added}")) == 0
    });
    open.ctl_ok(&["rm", "x"]);
    assert!(open.children().is_empty());
    assert_eq!(count_processes_with_cmdline(&format!("sleep {changed}")), 0);
}

#[test]
fn sigterm_stops_every_child_gracefully_and_exits_0() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let mut agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}[watcher.grp]\ncmd = \"sh\"\n\
             args = [\"-c\", \"trap 'echo term > {{dir}}/term.$(wid); exit 0' TERM; touch {{dir}}/ready.$(wid); sleep {secs} & wait\"]\n\
             numprocesses = 2\n",
            sleeper("plain", &secs, 2)
        ),
    );
    for wid in 1..=2 {
        let ready = agent.dir().join(format!("ready.{wid}"));
        wait_until(T, "the shells to trap TERM", || ready.exists());
    }
    // Two sleeps of `plain`, two shells of `grp` and a sleep in each shell's group.
    let kids = wait_for(T, "4 children", || {
        let k = agent.children();
        (k.len() == 4).then_some(k)
    });
    let everyone: BTreeSet<u32> = wait_for(T, "6 processes in the children's groups", || {
        let all: BTreeSet<u32> = kids.iter().flat_map(|k| group_members(*k)).collect();
        (all.len() == 6).then_some(all)
    });
    // plain's sleeps, grp's shells (their command line names the sleep) and sleeps.
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 6);

    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "the agent exited with {status}");
    for pid in &everyone {
        assert!(!is_alive(*pid), "{pid} outlived the agent");
    }
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
    for wid in 1..=2 {
        let path = agent.dir().join(format!("term.{wid}"));
        assert_eq!(read_lines(&path), ["term"], "grp {wid} did not get SIGTERM");
    }
}

#[test]
fn runtime_changes_survive_an_agent_restart() {
    let nats = NatsServer::start();
    let (s1, s2) = (unique_secs(), unique_secs());
    let (w, v) = (format!("sleep {s1}"), format!("sleep {s2}"));
    let mut agent = Agent::start(
        &nats,
        "n1",
        &format!("{}{}", sleeper("w", &s1, 1), sleeper("v", &s2, 1)),
    );
    wait_until(T, "2 children", || agent.children().len() == 2);
    agent.ctl_ok(&["incr", "w", "2"]);
    agent.ctl_ok(&["stop", "v"]);
    agent.ctl_ok(&["set", "w", "graceful_timeout", "7s"]);
    wait_children(&agent, "w", 3);

    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(count_processes_with_cmdline(&w), 0, "orphans after SIGTERM");

    let check = |agent: &Agent| {
        wait_children(agent, "w", 3);
        assert_eq!(count_processes_with_cmdline(&w), 3, "duplicates");
        assert_eq!(count_processes_with_cmdline(&v), 0);
        let s = summary(agent, "w");
        assert_eq!(
            (s["numprocesses"].as_u64(), s["running"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(summary(agent, "v")["state"], "stopped");
        let r = agent.ctl_ok(&["get", "w", "graceful_timeout"]);
        assert_eq!(r["options"]["graceful_timeout"], "7s");
    };
    agent.start_again();
    check(&agent);

    // A crash of the agent takes its children with it (parent death signal), and the
    // next start brings back the same count, not more.
    let kids = agent.children();
    agent.kill();
    wait_until(T, "the children to die with the agent", || {
        kids.iter().all(|p| !is_alive(*p))
    });
    assert_eq!(count_processes_with_cmdline(&w), 0, "orphans after SIGKILL");
    agent.start_again();
    check(&agent);
}

#[test]
fn reloadconfig_applies_an_edited_config() {
    let nats = NatsServer::start();
    let (sa, sb, sc, sd) = (unique_secs(), unique_secs(), unique_secs(), unique_secs());
    let agent = Agent::start(
        &nats,
        "n1",
        &format!("{}{}", sleeper("a", &sa, 1), sleeper("b", &sb, 1)),
    );
    wait_until(T, "2 children", || agent.children().len() == 2);
    let a_pid = agent.pids("a");

    let edited = format!("{}{}", sleeper("a", &sa, 1), sleeper("c", &sc, 2));
    agent.write_watchers(&edited);
    let r = agent.ctl_ok(&["reloadconfig"]);
    assert_eq!(
        (&r["added"], &r["removed"], &r["changed"]),
        (&json!(["c"]), &json!(["b"]), &json!([])),
        "{r}"
    );
    wait_until(T, "b gone and c running", || {
        count_processes_with_cmdline(&format!("sleep {sb}")) == 0
            && count_processes_with_cmdline(&format!("sleep {sc}")) == 2
    });
    let status = agent.ctl_ok(&["status"]);
    assert_eq!(status["statuses"], json!({"a": "active", "c": "active"}));
    assert_eq!(agent.pids("a"), a_pid, "a was left alone");
    let kids = wait_until_children(&agent, 3);

    // An invalid edit is refused and changes nothing.
    agent.write_watchers(&format!(
        "{}graceful_timeout = \"soon\"\n\n{}",
        sleeper("a", &sa, 1),
        sleeper("d", &sd, 1)
    ));
    let (out, replies) = ctl_json_output(&nats, &["--node", "n1", "reloadconfig"]);
    out.expect_code(1, "reloadconfig of an invalid file");
    let reason = replies[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("[watcher.a] graceful_timeout"), "{reason}");
    assert!(reason.contains("nothing was changed"), "{reason}");
    assert_eq!(agent.ctl_ok(&["status"])["statuses"], status["statuses"]);
    assert_eq!(agent.children(), kids);
    assert_eq!(count_processes_with_cmdline(&format!("sleep {sd}")), 0);

    // SIGHUP reloads too.
    agent.write_watchers(&format!("{edited}{}", sleeper("d", &sd, 1)));
    kill(Pid::from_raw(agent.pid() as i32), Signal::SIGHUP).expect("SIGHUP the agent");
    wait_until(T, "d to run after SIGHUP", || {
        count_processes_with_cmdline(&format!("sleep {sd}")) == 1
    });
    assert_eq!(agent.pids("a"), a_pid);
}

fn wait_until_children(agent: &Agent, n: usize) -> Vec<u32> {
    wait_for(T, &format!("{n} children"), || {
        let k = agent.children();
        (k.len() == n).then_some(k)
    })
}

#[test]
fn json_output_is_one_valid_object_per_line() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let n1 = Agent::start(&nats, "n1", &sleeper("w", &secs, 1));
    let mut n2 = Agent::start(&nats, "n2", &sleeper("w", &secs, 1));
    wait_until_children(&n1, 1);
    wait_until_children(&n2, 1);

    let commands: &[&[&str]] = &[
        &["status"],
        &["status", "w"],
        &["list"],
        &["list", "w"],
        &["numwatchers"],
        &["numprocesses", "w"],
        &["incr", "w"],
        &["decr", "w"],
        &["resize", "w", "2"],
        &["options", "w"],
        &["get", "w", "numprocesses", "cmd"],
        &["set", "w", "graceful_timeout", "5s"],
        &["signal", "w", "CONT"],
        &["stop", "w"],
        &["start", "w"],
        &["restart", "w"],
        &["reload", "w"],
        &["dstats"],
        &["ping"],
        &["logs", "w"],
        &["reloadconfig"],
        &["rm", "w"],
    ];
    for args in commands {
        let mut all = vec!["--node", "n1"];
        all.extend_from_slice(args);
        let (out, replies) = ctl_json_output(&nats, &all);
        out.expect_code(0, &format!("ctl {all:?}"));
        assert_eq!(out.stdout.lines().count(), 1, "{args:?}: {}", out.stdout);
        assert!(out.stdout.ends_with('\n'));
        assert_eq!(replies[0]["node"], "n1");
        assert_eq!(replies[0]["status"], "ok");
    }

    // Two nodes: one line each.
    let (out, replies) = ctl_json_output(&nats, &["--node", "n1", "--node", "n2", "ping"]);
    out.expect_code(0, "ping two nodes");
    let nodes: BTreeSet<&str> = replies.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert_eq!(nodes, BTreeSet::from(["n1", "n2"]));

    // Any one agent answers `members`; a newly started agent learns of the others from
    // their next heartbeat, so both know each other within a heartbeat.
    wait_until(T, "members to list n1 and n2 as alive", || {
        let replies = ctl_json(&nats, &["members"]);
        replies.len() == 1
            && replies[0]["members"]
                .as_array()
                .is_some_and(|ms| ms.len() == 2 && ms.iter().all(|m| m["state"] == "alive"))
    });
    let (out, replies) = wait_for(T, "--all to reach both nodes", || {
        let (out, replies) = ctl_json_output(&nats, &["--all", "ping"]);
        (replies.len() == 2).then_some((out, replies))
    });
    out.expect_code(0, "ping every node");
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let nodes: BTreeSet<&str> = replies.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["n1", "n2"]));

    // An error reply is a line too, and valid.
    let (out, replies) = ctl_json_output(&nats, &["--node", "n2", "status", "nosuch"]);
    out.expect_code(1, "status of an unknown watcher");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["errno"], Errno::UnknownWatcher.code());

    // quit answers, then the agent stops its processes and exits 0.
    let kids = n2.children();
    let r = n2.ctl_ok(&["quit"]);
    assert_eq!(r["node"], "n2");
    let status = n2.wait_exit(T);
    assert!(status.success(), "{status}");
    assert!(kids.iter().all(|p| !is_alive(*p)));
}

#[test]
fn a_duplicate_node_name_is_refused() {
    let nats = NatsServer::start();
    let first = Agent::start(&nats, "n1", &sleeper("w", &unique_secs(), 1));
    let dir = tempfile::tempdir().expect("a temporary dir");
    let config = dir.path().join("dup.toml");
    let secs = unique_secs();
    std::fs::write(
        &config,
        format!(
            "{}{}",
            e2e::agent::base_config("n1", &nats.url(), dir.path()),
            sleeper("w", &secs, 1)
        ),
    )
    .expect("write the config");
    let out = nodeagent(&["-c", config.to_str().expect("UTF-8")], T);
    out.expect_code(1, "a second agent named n1");
    assert!(out.stderr.contains("already taken"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&first.pid().to_string()),
        "does not name the running agent: {}",
        out.stderr
    );
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
    first.ctl_ok(&["ping"]);
}

#[test]
fn concurrent_commands_are_all_applied() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("w", &secs, 1));
    wait_children(&agent, "w", 1);
    let url = nats.url();
    let runs: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || ctl_url(&url, &["--node", "n1", "incr", "w"]))
        })
        .collect();
    for run in runs {
        run.join()
            .expect("a ctl run")
            .expect_code(0, "a concurrent incr");
    }
    assert_eq!(agent.ctl_ok(&["numprocesses", "w"])["numprocesses"], 17);
    wait_children(&agent, "w", 17);
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 17);
}

#[test]
fn restart_replaces_every_process() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "n1", &sleeper("w", &secs, 3));
    let before = wait_children(&agent, "w", 3);
    let r = agent.ctl_ok(&["restart", "w"]);
    assert_eq!(r["statuses"]["w"], "active", "{r}");
    let after = wait_children(&agent, "w", 3);
    assert!(
        before.iter().all(|p| !after.contains(p) && !is_alive(*p)),
        "{before:?} -> {after:?}"
    );
    assert_eq!(wids(&agent, "w"), vec![1, 2, 3]);

    // One at a time: every process is new again.
    let r = agent.ctl_ok(&["restart", "--rolling", "w"]);
    assert_eq!(r["statuses"]["w"], "active", "{r}");
    let rolled = wait_children(&agent, "w", 3);
    assert!(
        after.iter().all(|p| !rolled.contains(p)),
        "{after:?} -> {rolled:?}"
    );
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 3);
}

#[test]
fn a_crashed_agent_leaves_no_orphans_after_restart() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let mut agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "[watcher.grp]\ncmd = \"sh\"\nargs = [\"-c\", \"sleep {secs} & sleep {secs} & wait\"]\n"
        ),
    );
    let leader = wait_children(&agent, "grp", 1)[0];
    let _cleanup = KillGroupOnDrop(leader);
    wait_until(T, "the shell and its two sleeps", || {
        group_members(leader).len() == 3
    });
    agent.kill();
    agent.start_again();
    wait_children(&agent, "grp", 1);
    wait_until(T, "only the new group's processes", || {
        count_processes_with_cmdline(&format!("sleep {secs}")) == 3
    });
    assert!(
        group_members(leader).is_empty(),
        "orphans of group {leader}"
    );
}
