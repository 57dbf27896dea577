//! `depends_on` and `reloadconfig`'s plan, proven on real processes: start order from
//! /proc start times, stop order from what the processes' TERM traps wrote, a cycle
//! refused at start and at runtime, and a reload whose dry run changes nothing (pids in
//! /proc) and whose application touches only what the plan listed.

use std::path::Path;
use std::time::Duration;

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// A shell process that notes `<time> start|term <watcher> <wid>` in `{dir}/log` when it
/// starts and when it gets TERM (and takes 300 ms to exit after TERM).
fn noting(name: &str, extra: &str) -> String {
    format!(
        "[watcher.{name}]\ncmd = \"sh\"\n\
         args = [\"-c\", \"echo $(date +%s.%N) start $(name) $(wid) >> {{dir}}/log; \
         trap 'echo $(date +%s.%N) term $(name) $(wid) >> {{dir}}/log; sleep 0.3; exit 0' TERM; \
         while :; do sleep 0.05; done\"]\n{extra}\n\n"
    )
}

/// The lines of `{dir}/log`: (time, start|term, watcher, wid).
fn noted(dir: &Path) -> Vec<(f64, String, String, u32)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                (*f.get(1)?).to_owned(),
                (*f.get(2)?).to_owned(),
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

/// The times of `what` (start or term) lines of `watcher`, from line `from` on.
fn times(lines: &[(f64, String, String, u32)], from: usize, what: &str, watcher: &str) -> Vec<f64> {
    lines
        .iter()
        .skip(from)
        .filter(|(_, w, n, _)| w == what && n == watcher)
        .map(|(t, ..)| *t)
        .collect()
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

/// Checks that every process of `web` got TERM, and exited, before any of `db` got it.
fn web_stopped_before_db(lines: &[(f64, String, String, u32)], from: usize) {
    let (web, db) = (
        times(lines, from, "term", "web"),
        times(lines, from, "term", "db"),
    );
    assert_eq!(
        (web.len(), db.len()),
        (2, 2),
        "every process got TERM: {lines:?}"
    );
    // web takes 300 ms to exit after TERM; db's stop begins only after.
    assert!(
        min(&db) >= max(&web) + 0.25,
        "db began stopping before web had stopped: web TERM at {web:?}, db at {db:?}"
    );
}

#[test]
fn depends_on_orders_the_start_and_the_stop() {
    let nats = NatsServer::start();
    // web has the higher priority, but depends on db, which must be up (past its
    // min_uptime of 700 ms) first.
    let mut agent = Agent::start(
        &nats,
        "n1",
        &format!(
            "{}{}",
            noting(
                "web",
                "numprocesses = 2\npriority = 10\ndepends_on = [\"db\"]\nmin_uptime = \"100ms\""
            ),
            noting("db", "numprocesses = 2\nmin_uptime = \"700ms\""),
        ),
    );
    let dir = agent.dir().to_owned();
    let started = |agent: &Agent| {
        let web = wait_for(T, "2 processes of web", || {
            let p = agent.pids("web");
            (p.len() == 2).then_some(p)
        });
        let db = agent.pids("db");
        let secs = |ps: &[(u32, u32)]| -> Vec<f64> {
            ps.iter()
                .filter_map(|(_, pid)| procs::start_secs(*pid))
                .collect()
        };
        (secs(&web), secs(&db))
    };
    let (web, db) = started(&agent);
    assert_eq!((web.len(), db.len()), (2, 2));
    assert!(
        min(&web) >= max(&db) + 0.6,
        "web started before db was up: /proc start times web {web:?}, db {db:?}"
    );
    let status = agent.ctl_ok(&["status"]);
    assert_eq!(status["statuses"], json!({"db": "active", "web": "active"}));

    // `stop` of all: web stops, then db.
    wait_until(T, "4 start lines", || noted(&dir).len() == 4);
    agent.ctl_ok(&["stop"]);
    let lines = noted(&dir);
    web_stopped_before_db(&lines, 4);
    assert!(agent.children().is_empty());

    // `start web` alone starts db first (it was stopped), then web once db is up.
    let r = agent.ctl_ok(&["start", "web"]);
    assert_eq!(
        r["statuses"],
        json!({"db": "active", "web": "active"}),
        "{r}"
    );
    let from = lines.len();
    wait_until(T, "web and db started again", || {
        times(&noted(&dir), from, "start", "web").len() == 2
    });
    let lines = noted(&dir);
    let (web, db) = (
        times(&lines, from, "start", "web"),
        times(&lines, from, "start", "db"),
    );
    assert!(
        min(&web) >= max(&db) + 0.6,
        "start web: web started before db was up: web {web:?}, db {db:?}"
    );

    // An agent's shutdown: web stops, then db.
    let from = lines.len();
    let exit = agent.terminate();
    assert!(exit.success(), "{exit:?}");
    web_stopped_before_db(&noted(&dir), from);
}

#[test]
fn a_dependency_cycle_is_refused_at_start_and_at_runtime() {
    // At start: exit code 2, the cycle named.
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("cycle.toml");
    std::fs::write(
        &path,
        "[agent]\nname = \"n1\"\n\
         [watcher.a]\ncmd = \"sleep\"\ndepends_on = [\"b\"]\n\
         [watcher.b]\ncmd = \"sleep\"\ndepends_on = [\"c\"]\n\
         [watcher.c]\ncmd = \"sleep\"\ndepends_on = [\"a\", \"nope\"]\n",
    )
    .expect("write the config");
    let p = path.to_str().expect("a UTF-8 path");
    for args in [vec!["-c", p], vec!["--check", "-c", p]] {
        let out = nodeagent(&args, T);
        out.expect_code(2, "a config with a dependency cycle");
        for needle in [
            "[watcher.a] depends_on: dependency cycle: a -> b -> c -> a",
            "[watcher.c] depends_on: 'c' depends on 'nope', which is not a watcher",
        ] {
            assert!(
                out.stderr.contains(needle),
                "no {needle:?} in {}",
                out.stderr
            );
        }
    }

    // At runtime: add and set refuse a cycle, a missing watcher, or the watcher itself
    // (errno 2), and change nothing; rm of a watcher others depend on is refused.
    let nats = NatsServer::start();
    let s = procs::unique_secs();
    let agent = Agent::start_config(
        &nats,
        &format!(
            "[agent]\nname = \"n1\"\nallow_remote_exec = true\nstate_dir = \"{{dir}}/state\"\n\
             [nats]\nservers = [\"{{nats_url}}\"]\n\
             [watcher.db]\ncmd = \"sleep\"\nargs = [\"{s}\"]\n\
             [watcher.web]\ncmd = \"sleep\"\nargs = [\"{s}\"]\ndepends_on = [\"db\"]\n"
        ),
    );
    wait_until(T, "db and web running", || agent.children().len() == 2);
    let refused = |args: &[&str], errno: u64, needle: &str| {
        let (out, replies) = agent.ctl_json(args);
        out.expect_code(1, &format!("ctl {args:?}"));
        let r = &replies[0];
        assert_eq!(r["errno"], errno, "{args:?}: {r}");
        let reason = r["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "{args:?}: {reason}");
    };
    refused(
        &["add", "x", "-o", "depends_on=[\"x\"]", "--", "sleep", &s],
        2,
        "'x' depends on itself",
    );
    refused(
        &["add", "x", "-o", "depends_on=[\"nope\"]", "--", "sleep", &s],
        2,
        "'x' depends on 'nope', which is not a watcher of this node",
    );
    refused(
        &["set", "db", "depends_on", "[\"web\"]"],
        2,
        "option 'depends_on': dependency cycle: db -> web -> db",
    );
    refused(
        &["rm", "db"],
        7,
        "watcher 'db' cannot be removed: 'web' depends on it",
    );
    let names = agent.ctl_ok(&["list"]);
    assert_eq!(names["watchers"], json!(["db", "web"]), "{names}");
    assert!(agent.ctl_ok(&["get", "db", "depends_on"])["options"]
        .get("depends_on")
        .is_none());
    // What is allowed still is: a watcher added with a dependency.
    agent.ctl_ok(&[
        "add",
        "api",
        "-o",
        "depends_on=[\"db\",\"web\"]",
        "--",
        "sleep",
        &s,
    ]);
    wait_until(T, "api running", || agent.children().len() == 3);
}

/// A watcher of `sleep SECS`; `extra` adds keys.
fn sleeper(name: &str, secs: &str, extra: &str) -> String {
    format!("[watcher.{name}]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n{extra}\n\n")
}

fn plan_names(r: &Value) -> (Value, Value, Value, Value) {
    (
        r["added"].clone(),
        r["removed"].clone(),
        r["changed"].clone(),
        r["scaled"].clone(),
    )
}

#[test]
fn reloadconfig_shows_its_plan_then_applies_only_that() {
    let nats = NatsServer::start();
    let (s_keep, s_db, s_old, s_extra) = (
        procs::unique_secs(),
        procs::unique_secs(),
        procs::unique_secs(),
        procs::unique_secs(),
    );
    let web = |version: &str| {
        noting(
            "web",
            &format!(
                "numprocesses = 2\nmin_uptime = \"200ms\"\nenv = {{ VERSION = \"{version}\" }}"
            ),
        )
    };
    let before = format!(
        "{}{}{}{}",
        sleeper("keep", &s_keep, "numprocesses = 2"),
        sleeper("db", &s_db, ""),
        sleeper("old", &s_old, ""),
        web("1"),
    );
    let agent = Agent::start(&nats, "n1", &before);
    let dir = agent.dir().to_owned();
    wait_until(T, "6 processes", || agent.children().len() == 6);
    wait_until(T, "web's processes to note their start", || {
        times(&noted(&dir), 0, "start", "web").len() == 2
    });
    let pids = |w: &str| agent.pids(w);
    // A runtime change the file does not know: keep gets a third process.
    agent.ctl_ok(&["incr", "keep"]);
    wait_until(T, "3 processes of keep", || pids("keep").len() == 3);
    let (keep0, db0, old0, web0) = (pids("keep"), pids("db"), pids("old"), pids("web"));
    let start_times = |ps: &[(u32, u32)]| -> Vec<Option<f64>> {
        ps.iter().map(|(_, p)| procs::start_secs(*p)).collect()
    };
    let keep_started = start_times(&keep0);

    // The file changes web's env, scales db, drops old and adds extra.
    agent.write_watchers(&format!(
        "{}{}{}{}",
        sleeper("keep", &s_keep, "numprocesses = 2"),
        sleeper("db", &s_db, "numprocesses = 2"),
        web("2"),
        sleeper("extra", &s_extra, ""),
    ));

    // The dry run: the plan, and nothing changes.
    let plan = agent.ctl_ok(&["reloadconfig", "--dry-run"]);
    assert_eq!(plan["dry_run"], true, "{plan}");
    // keep's entry in the file did not change: its runtime count stays.
    assert_eq!(plan["kept"], json!(["keep"]), "{plan}");
    assert_eq!(
        plan_names(&plan),
        (
            json!(["extra"]),
            json!(["old"]),
            json!(["web"]),
            json!(["db"])
        ),
        "{plan}"
    );
    let web_plan = plan["watchers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(web_plan["action"], "changed", "{plan}");
    assert_eq!(web_plan["restart"], true, "{plan}");
    assert_eq!(
        web_plan["changes"],
        json!([{"key": "env", "old": {"VERSION": "1"}, "new": {"VERSION": "2"}}]),
        "{plan}"
    );
    let db_plan = plan["watchers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "db"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        db_plan["changes"],
        json!([{"key": "numprocesses", "old": 1, "new": 2}]),
        "{plan}"
    );
    // As a person reads it.
    let out = agent.ctl(&["reloadconfig", "--dry-run"]);
    out.expect_code(0, "ctl reloadconfig --dry-run");
    println!("ctl reloadconfig --dry-run:\n{}", out.stdout);
    for needle in [
        "dry run: the plan below, nothing was changed",
        "changed  web",
        "env: {\"VERSION\":\"1\"} -> {\"VERSION\":\"2\"} (rolling restart)",
        "scaled   db",
        "numprocesses: 1 -> 2",
        "added    extra",
        "removed  old",
        "kept     keep",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no {needle:?} in\n{}",
            out.stdout
        );
    }
    for (w, was) in [
        ("keep", &keep0),
        ("db", &db0),
        ("old", &old0),
        ("web", &web0),
    ] {
        assert_eq!(pids(w), *was, "the dry run changed {w}");
        assert!(was.iter().all(|(_, p)| procs::is_alive(*p)), "{w}: {was:?}");
    }
    assert_eq!(
        procs::count_processes_with_cmdline(&format!("sleep {s_extra}")),
        0
    );
    assert_eq!(agent.children().len(), 7);

    // The reload applies that plan, and only that.
    let from = noted(&dir).len();
    let (applied, took) = timed(|| agent.ctl_ok(&["reloadconfig"]));
    println!("reloadconfig applied in {took:?}");
    assert_eq!(applied["dry_run"], false, "{applied}");
    assert_eq!(plan_names(&applied), plan_names(&plan), "{applied}");
    // keep: untouched, same processes (its runtime third one too).
    assert_eq!(pids("keep"), keep0);
    assert_eq!(start_times(&keep0), keep_started);
    // db: resized, its first process untouched.
    wait_until(T, "db resized to 2", || pids("db").len() == 2);
    assert!(pids("db").contains(&db0[0]), "db's process was replaced");
    // old gone, extra running.
    wait_until(T, "old gone, extra running", || {
        procs::count_processes_with_cmdline(&format!("sleep {s_old}")) == 0
            && procs::count_processes_with_cmdline(&format!("sleep {s_extra}")) == 1
    });
    // web: both processes replaced (the reply came once they were), one at a time.
    let web1 = pids("web");
    assert_eq!(web1.len(), 2);
    for (_, p) in &web1 {
        assert!(
            !web0.iter().any(|(_, o)| o == p),
            "web {p} was not replaced"
        );
        assert_eq!(procs::env_var(*p, "VERSION").as_deref(), Some("2"));
    }
    let web_lines: Vec<(String, u32)> = noted(&dir)
        .into_iter()
        .skip(from)
        .filter(|(_, _, w, _)| w == "web")
        .map(|(_, what, _, wid)| (what, wid))
        .collect();
    assert_eq!(
        web_lines,
        [
            ("term".to_owned(), 1),
            ("start".to_owned(), 1),
            ("term".to_owned(), 2),
            ("start".to_owned(), 2)
        ],
        "web was not restarted one process at a time"
    );
    let status = agent.ctl_ok(&["status"]);
    assert_eq!(
        status["statuses"],
        json!({"db": "active", "extra": "active", "keep": "active", "web": "active"})
    );

    // Nothing left to do: an empty plan, and nothing restarts.
    let again = agent.ctl_ok(&["reloadconfig", "--dry-run"]);
    assert_eq!(
        plan_names(&again),
        (json!([]), json!([]), json!([]), json!([])),
        "{again}"
    );
    assert_eq!(pids("web"), web1);
}
