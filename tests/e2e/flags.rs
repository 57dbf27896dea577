//! Every ctl flag and environment variable of the README, end to end: what reaches the
//! agents (their events, their processes, the wire) and what ctl prints and returns.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const T: Duration = Duration::from_secs(20);

fn node(name: &str, extra_agent: &str, watchers: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nheartbeat = \"200ms\"\nstate_dir = \"{{dir}}/state\"\n\
         log_dir = \"{{dir}}/logs\"\n{extra_agent}\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

fn sleeper(name: &str, secs: &str, extra: &str) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n{extra}\n\n")
}

/// `ctl` with the given environment and no `-s`.
fn ctl_env(env: &[(&str, &str)], args: &[&str]) -> CtlOutput {
    let mut cmd = e2e::bins::hermetic(bin("ctl"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    e2e::bins::run(cmd, e2e::bins::CTL_DEADLINE)
}

#[test]
fn rolling_restart_batch_never_restarts_more_than_n_nodes_at_once() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let names = ["a", "b", "c", "d"];
    let agents: Vec<Agent> = names
        .iter()
        .map(|n| {
            Agent::start_config(
                &nats,
                &node(n, "", &sleeper("w", &s, "min_uptime = \"400ms\"")),
            )
        })
        .collect();
    wait_all_know_each_other(&agents.iter().collect::<Vec<_>>(), T);
    let mut sniff = Sniffer::start(&nats.url(), "cluster");
    let events = Subscription::new(&nats.url(), "cluster.*.events.w.*");
    let out = ctl(
        &nats,
        &["--all", "restart", "w", "--rolling", "--batch", "2"],
    );
    out.expect_code(0, "ctl --all restart w --rolling --batch 2");
    for n in names {
        assert!(
            out.stdout.contains(&format!("/4] {n}: restarted in")),
            "no progress line for {n}:\n{}",
            out.stdout
        );
    }
    // Per node, from the agents' own clocks: when its old process exited, and when its
    // new one had been up for min_uptime (then the node's roll is done).
    let mut exit_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut up_at: BTreeMap<String, f64> = BTreeMap::new();
    while up_at.len() < names.len() {
        let e = events
            .find(T, |_, v| v["kind"] == "exit" || v["kind"] == "spawn")
            .unwrap_or_else(|| panic!("missing events; exits {exit_at:?}, spawns {up_at:?}"));
        let (n, t) = (
            e["node"].as_str().unwrap_or_default().to_owned(),
            e["time"].as_f64().unwrap_or_default(),
        );
        match e["kind"].as_str() {
            Some("exit") => {
                exit_at.entry(n).or_insert(t);
            }
            _ => {
                up_at.insert(n, t + 0.4);
            }
        }
    }
    let windows: Vec<(f64, f64, &String)> =
        exit_at.iter().map(|(n, t)| (*t, up_at[n], n)).collect();
    let most = windows
        .iter()
        .map(|(start, _, _)| {
            windows
                .iter()
                .filter(|(s, e, _)| s <= start && *start < *e - 0.01)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!("restart windows (exit, up past min_uptime): {windows:?}");
    assert_eq!(
        most, 2,
        "with --batch 2 at most 2 nodes restart at once, and 2 do: {windows:?}"
    );
    for a in &agents {
        assert_eq!(a.children().len(), 1, "{}", a.name());
    }
    // The rolling restarts and their replies, as they went on the wire.
    let seen = sniff.check();
    assert!(
        seen.commands.iter().any(|c| c.starts_with("restart")),
        "{seen:?}"
    );
}

const STUBBORN: &str = "[watcher.stubborn]\ncmd = \"sh\"\n\
    args = [\"-c\", \"trap '' TERM; while :; do sleep 0.05; done\"]\ngraceful_timeout = \"2s\"\n";

#[test]
fn no_wait_replies_before_the_processes_are_gone() {
    let nats = NatsServer::start();
    // Ignores SIGTERM: only the SIGKILL after graceful_timeout ends it.
    let agent = Agent::start(&nats, "n1", STUBBORN);
    let running = || {
        wait_for(T, "stubborn running", || {
            agent.pids("stubborn").first().map(|p| p.1)
        })
    };
    let pid = running();

    // Without --no-wait, the reply waits for the SIGKILL.
    let (out, took) = timed(|| agent.ctl(&["stop", "stubborn"]));
    out.expect_code(0, "stop");
    assert!(!is_alive(pid), "stop replied while the process ran");
    assert!(
        took >= Duration::from_millis(1900),
        "stop took {took:?} < graceful_timeout"
    );

    let (out, took) = timed(|| agent.ctl(&["start", "stubborn", "--no-wait"]));
    out.expect_code(0, "start --no-wait");
    assert!(
        took < bound(Duration::from_millis(1500)),
        "start --no-wait took {took:?}"
    );
    let pid = running();

    let (out, took) = timed(|| agent.ctl(&["stop", "stubborn", "--no-wait"]));
    out.expect_code(0, "stop --no-wait");
    assert!(
        is_alive(pid),
        "stop --no-wait returned after the process was gone ({took:?})"
    );
    assert!(
        took < bound(Duration::from_millis(1500)),
        "stop --no-wait took {took:?}"
    );
    wait_until(T, "SIGKILL after graceful_timeout", || !is_alive(pid));

    let (out, took) = timed(|| agent.ctl(&["rm", "stubborn", "--no-wait"]));
    out.expect_code(0, "rm --no-wait");
    assert!(
        took < bound(Duration::from_millis(1500)),
        "rm --no-wait took {took:?}"
    );
    wait_until(T, "stubborn removed", || {
        agent.ctl_ok(&["list"])["watchers"] == serde_json::json!([])
    });
}

#[test]
fn start_after_a_no_wait_stop_that_needed_sigkill_runs_the_process() {
    let nats = NatsServer::start();
    let agent = Agent::start(&nats, "n1", STUBBORN);
    let running = || {
        wait_for(T, "stubborn running", || {
            agent.pids("stubborn").first().map(|p| p.1)
        })
    };
    let pid = running();
    agent
        .ctl(&["stop", "stubborn", "--no-wait"])
        .expect_code(0, "stop --no-wait");
    wait_until(T, "SIGKILL after graceful_timeout", || !is_alive(pid));
    agent.ctl_ok(&["start", "stubborn"]);
    let again = running();
    assert_ne!(again, pid);
}

#[test]
fn events_watcher_follows_one_watcher_only() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let a = Agent::start_config(
        &nats,
        &node(
            "a",
            "",
            &format!("{}{}", sleeper("mine", &s, ""), sleeper("other", &s, "")),
        ),
    );
    let lines = CtlLines::spawn(&nats.url(), &["events", "--watcher", "mine"]);
    let kill_one = |w: &str| {
        let pid = wait_for(T, &format!("{w} running"), || {
            a.pids(w).first().map(|p| p.1)
        });
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        wait_until(T, &format!("{w} respawned"), || {
            a.pids(w).first().is_some_and(|p| p.1 != pid)
        });
    };
    // Until ctl has subscribed: other's events go first, then mine's; once a line about
    // mine arrives, everything other published before it would have arrived too.
    let mut skipped = vec![];
    let mut found = None;
    for _ in 0..20 {
        kill_one("other");
        kill_one("mine");
        found = lines.find(Duration::from_secs(1), &mut skipped, |l| {
            l.contains(" a mine exit")
        });
        if found.is_some() {
            break;
        }
    }
    assert!(found.is_some(), "no event of mine printed; got {skipped:?}");
    kill_one("other");
    kill_one("mine");
    lines
        .find(T, &mut skipped, |l| l.contains(" a mine respawn"))
        .expect("mine's respawn");
    assert!(
        !skipped.iter().any(|l| l.contains(" other ")),
        "events --watcher mine printed other's events: {skipped:?}"
    );
}

#[test]
fn stats_w_shows_only_that_watcher() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}",
            sleeper("one", &s, "numprocesses = 2"),
            sleeper("two", &s, "")
        ),
    );
    let pids: Vec<String> = wait_for(T, "2 processes of one", || {
        let p = agent.pids("one");
        (p.len() == 2).then(|| p.iter().map(|(_, pid)| pid.to_string()).collect())
    });
    let out = agent.ctl(&["stats", "one"]);
    out.expect_code(0, "ctl stats one");
    let rows = out.table();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    for (row, pid) in rows.iter().zip(&pids) {
        assert_eq!(row["NODE"], "n1");
        assert_eq!(row["WATCHER"], "one", "{}", out.stdout);
        assert_eq!(&row["PID"], pid, "{}", out.stdout);
    }
    let r = agent.ctl_ok(&["stats", "one"]);
    let names: Vec<&str> = r["watchers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["one"], "{r}");
    agent
        .ctl(&["stats", "nosuch"])
        .expect_code(1, "stats of an unknown watcher");
}

#[test]
fn prefix_flag_and_cluster_prefix_env_reach_agents_on_another_prefix() {
    let nats = NatsServer::start();
    let mut sniff = Sniffer::start(&nats.url(), "e2e.pfx");
    let s = unique_secs();
    let _agent = Agent::start_config_as(
        &nats,
        &format!(
            "[agent]\nname = \"p1\"\nstate_dir = \"{{dir}}/state\"\n\n\
             [nats]\nservers = [\"{{nats_url}}\"]\nprefix = \"e2e.pfx\"\n\n{}",
            sleeper("w", &s, "")
        ),
        &nats.url(),
        &["--prefix", "e2e.pfx"],
    );
    let r = ctl_ok(&nats, &["--prefix", "e2e.pfx", "--node", "p1", "status"]);
    assert_eq!(r["node"], "p1");
    ctl_env(
        &[("NATS_URL", &nats.url()), ("CLUSTER_PREFIX", "e2e.pfx")],
        &["--node", "p1", "status"],
    )
    .expect_code(0, "CLUSTER_PREFIX=e2e.pfx");
    // On the default prefix nobody answers.
    ctl(&nats, &["--timeout", "1s", "--node", "p1", "status"]).expect_code(3, "default prefix");
    let out = ctl(&nats, &["--prefix", "e2e.pfx", "members"]);
    out.expect_code(0, "members on the prefix");
    assert_eq!(out.table()[0]["NAME"], "p1", "{}", out.stdout);
    ctl(&nats, &["--prefix", "bad prefix", "--node", "p1", "status"]).expect_code(2, "bad prefix");
    let seen = sniff.check();
    assert!(seen.count("request") >= 2, "{seen:?}");
    assert!(seen.count("registry") >= 1, "{seen:?}");
}

#[test]
fn nats_url_env_is_the_server_when_s_is_absent() {
    let nats = NatsServer::start();
    let _agent = Agent::start(&nats, "n1", &sleeper("w", &unique_secs(), ""));
    let out = ctl_env(
        &[("NATS_URL", &nats.url())],
        &["--node", "n1", "--json", "ping"],
    );
    out.expect_code(0, "NATS_URL");
    assert_eq!(out.json_lines()[0]["node"], "n1");
    // -s wins over NATS_URL.
    let closed = format!("nats://127.0.0.1:{}", free_port());
    let out = ctl_env(
        &[("NATS_URL", &closed)],
        &["-s", &nats.url(), "--node", "n1", "ping"],
    );
    out.expect_code(0, "-s over NATS_URL");
    let out = ctl_env(&[("NATS_URL", &closed)], &["--node", "n1", "ping"]);
    out.expect_code(3, "NATS_URL of a closed port");
    assert!(
        out.stderr.contains("cannot connect to NATS"),
        "{}",
        out.stderr
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_are_accepted_by_their_shells() {
    for (shell, check) in [("bash", "-n"), ("zsh", "-n"), ("fish", "--no-execute")] {
        let out = ctl_env(&[], &["completions", shell]);
        out.expect_code(0, &format!("ctl completions {shell}"));
        assert!(out.stdout.contains("ctl"), "{shell}: {}", out.stdout);
        let dir = tempfile::tempdir().expect("a temporary dir");
        let file = dir.path().join(format!("ctl.{shell}"));
        std::fs::write(&file, &out.stdout).expect("write the script");
        match std::process::Command::new(shell)
            .arg(check)
            .arg(&file)
            .output()
        {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} {check} rejects the completion script: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => {
                eprintln!("note: {shell} is not installed; its script was produced but not checked")
            }
        }
    }
    ctl_env(&[], &["completions", "tcsh"]).expect_code(2, "an unknown shell");
}

#[test]
fn members_status_and_name_filter_the_view() {
    let nats = NatsServer::start();
    let s = unique_secs();
    let mut agents: Vec<Agent> = ["web1", "web2", "db1"]
        .iter()
        .map(|n| Agent::start_config(&nats, &node(n, "", &sleeper("w", &s, ""))))
        .collect();
    wait_all_alive(&nats.url(), &["web1", "web2", "db1"], T);
    let status = agents[2].terminate();
    assert_eq!(status.code(), Some(0));
    let rows = |args: &[&str]| -> Vec<(String, String)> {
        let mut all = vec!["members"];
        all.extend_from_slice(args);
        let out = ctl(&nats, &all);
        out.expect_code(0, &format!("ctl {all:?}"));
        out.table()
            .into_iter()
            .map(|r| (r["NAME"].clone(), r["STATE"].clone()))
            .collect()
    };
    wait_until(T, "db1 left", || {
        rows(&["--name", "db1"]) == [("db1".into(), "left".into())]
    });
    let mut alive = rows(&["--status", "alive"]);
    alive.sort();
    assert_eq!(
        alive,
        [
            ("web1".into(), "alive".into()),
            ("web2".into(), "alive".into())
        ]
    );
    assert_eq!(rows(&["--status", "left"]), [("db1".into(), "left".into())]);
    let mut web = rows(&["--name", "web*"]);
    web.sort();
    assert_eq!(
        web,
        [
            ("web1".into(), "alive".into()),
            ("web2".into(), "alive".into())
        ]
    );
    assert_eq!(rows(&["--name", "web*", "--status", "left"]), []);
    let mut both = rows(&["--status", "alive", "--status", "left"]);
    both.sort();
    assert_eq!(both.len(), 3, "{both:?}");
    let out = ctl(&nats, &["members", "--status", "sleepy"]);
    out.expect_code(2, "an unknown state");
    assert!(
        out.stderr.contains("unknown state 'sleepy'"),
        "{}",
        out.stderr
    );
    let _ = agents.pop();
}

#[test]
fn a_hung_member_picked_for_members_is_passed_over_every_time() {
    // The agent may not subscribe to the members subject, so the only member of its
    // queue group is a client that never answers: every members query ctl sends lands
    // on the hung member first, and must be answered through cluster.all.cmd.
    let dir = tempfile::tempdir().expect("a temporary dir");
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        "authorization {\n  users = [\n\
         { user: agent, password: a, permissions: { subscribe: { deny: [\"cluster.members\"] } } }\n\
         { user: ctl, password: c }\n  ]\n}\n",
    )
    .expect("write the server config");
    let nats = NatsServer::start_with_config(&conf);
    let url = nats.url_as("ctl", "c");
    let s = unique_secs();
    let _agent = Agent::start_config_as(
        &nats,
        &node("only", "", &sleeper("w", &s, ""))
            .replace("[nats]\n", "[nats]\nuser = \"agent\"\npassword = \"a\"\n"),
        &url,
        &[],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (hung_client, mut hung) = rt.block_on(async {
        let c = async_nats::ConnectOptions::with_user_and_password("ctl".into(), "c".into())
            .connect(nats.url())
            .await
            .expect("connect");
        let sub = c
            .queue_subscribe("cluster.members", "cluster-members".into())
            .await
            .expect("queue subscribe");
        c.flush().await.expect("flush");
        (c, sub)
    });
    for round in 0..3 {
        let (out, replies) = ctl_json_output_url(&url, &["members"]);
        out.expect_code(0, &format!("members, round {round}"));
        assert_eq!(replies.len(), 1, "{}", out.stdout);
        assert_eq!(replies[0]["node"], "only", "{}", replies[0]);
        assert!(
            out.took >= Duration::from_millis(200),
            "round {round}: answered in {:?}, before the 200 ms fall-back",
            out.took
        );
        assert!(
            out.took < bound(Duration::from_secs(3)),
            "round {round}: the fall-back took {:?}",
            out.took
        );
        // The hung member did get the query.
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut hung)).await
        });
        assert!(
            matches!(got, Ok(Some(_))),
            "round {round}: the hung member got no query"
        );
    }
    // --all asks for the members first: it gets past the hung member the same way.
    ctl_url(&url, &["--all", "status"]).expect_code(0, "--all status");
    drop(hung_client);
}

#[test]
fn a_killed_agent_is_failed_at_once_with_system_events() {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats.conf");
    let nats = NatsServer::start_with_config(&conf);
    let s = unique_secs();
    let extra = "failed_after = \"30s\"\nsuspect_after = \"20s\"";
    let agent_conf = |name: &str| {
        node(name, extra, &sleeper("w", &s, ""))
            .replace("[nats]\n", "[nats]\nsystem_events_account = \"CLUSTER\"\n")
    };
    let _watcher = Agent::start_config(&nats, &agent_conf("watcher"));
    let mut victim = Agent::start_config(&nats, &agent_conf("victim"));
    wait_all_alive(&nats.url(), &["watcher", "victim"], T);
    victim.kill();
    let (_, took) = timed(|| {
        wait_until(T, "victim failed in the surviving agent's view", || {
            member_states(&nats.url())
                .iter()
                .any(|(n, st)| n == "victim" && st == "failed")
        })
    });
    eprintln!("SIGKILLed agent seen failed after {took:?} (failed_after 30s, suspect_after 20s)");
    assert!(
        took < bound(Duration::from_secs(3)),
        "failed after {took:?}: the disconnect advisory was not used"
    );
}

#[test]
fn the_traffic_of_a_session_matches_the_schemas() {
    let nats = NatsServer::start();
    let mut sniff = Sniffer::start(&nats.url(), "cluster");
    let s = unique_secs();
    let extra = "stats_interval = \"200ms\"\nallow_remote_exec = true";
    let a = Agent::start_config(&nats, &node("a", extra, &sleeper("w", &s, "")));
    let _b = Agent::start_config(&nats, &node("b", extra, &sleeper("w", &s, "")));
    wait_all_alive(&nats.url(), &["a", "b"], T);
    for args in [
        &["status"][..],
        &["list", "w"],
        &["incr", "w"],
        &["decr", "w"],
        &["numprocesses", "w"],
        &["numwatchers"],
        &["options", "w"],
        &["get", "w", "numprocesses"],
        &["set", "w", "graceful_timeout", "5s"],
        &["signal", "w", "CONT"],
        &["stats"],
        &["dstats"],
        &["ping"],
        &["logs", "w"],
        &["listsockets"],
        &["restart", "w"],
        &["stop", "w"],
        &["start", "w"],
        &["reloadconfig"],
        &["add", "x", "--", "sleep", &s],
        &["rm", "x"],
        &["status", "nosuch"],
    ] {
        a.ctl(args);
    }
    for args in [
        &["--all", "status"][..],
        &["--tag", "none=none", "status"],
        &["--service", "w", "list", "w"],
        &["--node", "a", "--node", "b", "ping"],
        &["members"],
    ] {
        ctl(&nats, args);
    }
    let seen = sniff.check();
    eprintln!("sniffed: {:?}; commands {:?}", seen.counts, seen.commands);
    for kind in ["request", "reply", "members", "registry", "stats", "event"] {
        assert!(
            seen.count(kind) > 0,
            "no {kind} message seen: {:?}",
            seen.counts
        );
    }
    for c in [
        "status", "list", "incr", "set", "add", "rm", "members", "logs",
    ] {
        assert!(
            seen.commands.iter().any(|x| x.starts_with(c)),
            "no {c} request seen: {:?}",
            seen.commands
        );
    }
}

#[test]
fn info_is_ping_and_add_no_start_adds_a_stopped_watcher() {
    let nats = NatsServer::start();
    let agent = Agent::start_config(
        &nats,
        &node(
            "n1",
            "allow_remote_exec = true",
            &sleeper("w", &unique_secs(), ""),
        ),
    );
    // info is ping.
    let info = agent.ctl_ok(&["info"]);
    assert_eq!(info["pid"], agent.pid(), "{info}");
    let out = agent.ctl(&["info"]);
    out.expect_code(0, "ctl info");
    let rows = out.table();
    assert_eq!(rows.len(), 1, "{}", out.stdout);
    assert_eq!(rows[0]["NODE"], "n1");
    assert_eq!(rows[0]["PID"], agent.pid().to_string());
    // add --no-start: the watcher exists, stopped, and nothing runs until start.
    let secs = unique_secs();
    agent.ctl_ok(&["add", "later", "--no-start", "--", "sleep", &secs]);
    let st = agent.ctl_ok(&["status", "later"]);
    assert_eq!(st["statuses"]["later"], "stopped", "{st}");
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
    agent.ctl_ok(&["start", "later"]);
    wait_until(T, "later to run after start", || {
        count_processes_with_cmdline(&format!("sleep {secs}")) == 1
    });
}

#[test]
fn verbose_logs_more_on_stderr() {
    let nats = NatsServer::start();
    let agent = Agent::start(&nats, "n1", &sleeper("w", &unique_secs(), ""));
    let quiet = agent.ctl(&["ping"]);
    let loud = agent.ctl(&["-vv", "ping"]);
    loud.expect_code(0, "ctl -vv ping");
    assert_eq!(quiet.table()[0]["NODE"], loud.table()[0]["NODE"]);
    assert!(
        loud.stderr.len() > quiet.stderr.len(),
        "-vv logged nothing more: {:?}",
        loud.stderr
    );
}
