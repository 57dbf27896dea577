//! Resource guards on real processes: a process that grows past `max_memory` is
//! restarted with a `max_memory` event (with the stats stream off, so the guard samples
//! on its own), `rlimits` show in the child's /proc/PID/limits, and `max_age` recycles
//! one process at a time, stopping first (never below N-1 running) or with surge
//! (never below N).

use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(30);

/// A node "a" with the stats stream off, and `watchers`.
fn node(watchers: &str) -> String {
    format!(
        "[agent]\nname = \"a\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\
         stats_interval = \"0s\"\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{watchers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_above_max_memory_is_restarted_with_its_event() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.hog.>").await;
    let secs = unique_secs();
    // About 80MiB written (so resident) once started, then it sleeps.
    let w = format!(
        "[watcher.hog]\ncmd = \"python3\"\n\
         args = [\"-c\", \"import time; b = b'x' * (80 << 20)\\nwhile True: time.sleep(60)\", \"{secs}\"]\n\
         min_uptime = \"100ms\"\nmax_memory = \"40MiB\"\nmax_memory_samples = 2\n\
         graceful_timeout = \"2s\"\n"
    );
    let agent = Agent::start_config(&nats, &node(&w));
    let first = wait_for(T, "hog running", || agent.pids("hog").first().map(|p| p.1));
    let ev = events
        .next_where(T, "a max_memory event", |v| v["kind"] == "max_memory")
        .await;
    eprintln!("max_memory: {ev}");
    assert_eq!(ev["pid"], first);
    assert_eq!(ev["wid"], 1);
    assert_eq!(ev["max_memory"], 40u64 << 20);
    let rss = ev["rss_bytes"].as_u64().expect("rss_bytes");
    assert!(rss > 40 << 20, "{rss}");
    let reason = ev["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("above max_memory = 40MiB"), "{reason}");
    // Stopped as a stop would (SIGTERM), then started again.
    let exit = events
        .next_where(T, "an exit event", |v| v["kind"] == "exit")
        .await;
    assert_eq!(exit["pid"], first);
    assert_eq!(exit["exit"]["signal"], "SIGTERM", "{exit}");
    let again = events
        .next_where(T, "a spawn event", |v| v["kind"] == "spawn")
        .await;
    assert_ne!(again["pid"], first);
    wait_until(T, "the first process gone", || !is_alive(first));
    let restarts = wait_for(T, "a restart counted", || {
        let s = agent.ctl_ok(&["status", "hog"])["watchers"][0].clone();
        (s["restarts"].as_u64() >= Some(1)).then_some(s["restarts"].clone())
    });
    eprintln!("restarts: {restarts}");
    // `set` checks the value as the config does.
    let out = agent.ctl(&["set", "hog", "max_memory", "10k"]);
    out.expect_code(1, "a max_memory below 1MiB");
    assert!(
        out.stderr.contains("max_memory") && out.stderr.contains("out of range; use 1MiB to 1TiB"),
        "{}",
        out.stderr
    );
    agent.ctl_ok(&["set", "hog", "max_memory", "1GiB"]);
    let o = agent.ctl_ok(&["get", "hog", "max_memory"]);
    assert_eq!(o["options"]["max_memory"], "1GiB", "{o}");
}

/// With the stream off and no watcher guarded, the stats task samples nothing; a
/// `max_memory` set at run time wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_memory_set_at_run_time_is_guarded_with_the_stream_off() {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.hog.>").await;
    let secs = unique_secs();
    let w = format!(
        "[watcher.hog]\ncmd = \"python3\"\n\
         args = [\"-c\", \"import time; b = b'x' * (80 << 20)\\nwhile True: time.sleep(60)\", \"{secs}\"]\n\
         min_uptime = \"100ms\"\nmax_memory_samples = 2\ngraceful_timeout = \"2s\"\n"
    );
    let agent = Agent::start_config(&nats, &node(&w));
    let first = wait_for(T, "hog running", || agent.pids("hog").first().map(|p| p.1));
    agent.ctl_ok(&["set", "hog", "max_memory", "40MiB"]);
    let ev = events
        .next_where(T, "a max_memory event", |v| v["kind"] == "max_memory")
        .await;
    assert_eq!(ev["pid"], first);
    assert_eq!(ev["max_memory"], 40u64 << 20);
}

#[test]
fn rlimits_are_set_in_the_child() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let w = format!(
        "[watcher.lim]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n\
         rlimits = {{ nofile = {{ soft = 123, hard = 456 }}, core = 0, \
         fsize = \"unlimited\", nproc = 789 }}\n"
    );
    let agent = Agent::start_config(&nats, &node(&w));
    let pid = wait_for(T, "lim running", || {
        agent.pids("lim").first().map(|(_, pid)| *pid)
    });
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let row = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("Max open files"), ["123", "456"], "{limits}");
    assert_eq!(row("Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(row("Max file size"), ["unlimited", "unlimited"], "{limits}");
    assert_eq!(row("Max processes"), ["789", "789"], "{limits}");
    // `options` shows them as set.
    let o = agent.ctl_ok(&["options", "lim"]);
    assert_eq!(o["options"]["rlimits"]["nofile"]["soft"], 123, "{o}");
    assert_eq!(o["options"]["rlimits"]["fsize"], "unlimited", "{o}");
    // A bad limit is refused with its name, and changes nothing.
    let out = agent.ctl(&[
        "set",
        "lim",
        "rlimits",
        r#"{"nofiles": 10, "core": "lots"}"#,
    ]);
    out.expect_code(1, "a bad rlimits");
    for needle in [
        "rlimits.nofiles",
        "unknown limit",
        "rlimits.core",
        "\"lots\"",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    assert_eq!(agent.pids("lim"), [(1, pid)]);
}

/// Recycles a watcher of three processes with `max_age = "1s"` until four recycles
/// happened, and checks from its events that recycles never overlap (the next begins
/// once the previous replacement has been up `min_uptime`) and how many ran at least.
async fn recycles_one_at_a_time(surge: bool) {
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.old.>").await;
    let secs = unique_secs();
    let w = format!(
        "[watcher.old]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 3\n\
         min_uptime = \"300ms\"\nmax_age = \"1s\"\nmax_age_variance = \"500ms\"\n\
         graceful_timeout = \"2s\"\n{}",
        if surge { "max_surge = 1\n" } else { "" }
    );
    let agent = Agent::start_config(&nats, &node(&w));
    wait_until(T, "3 processes of old", || agent.pids("old").len() >= 3);
    let mut running = 0i32;
    let mut least = i32::MAX;
    let mut recycles = 0;
    // The recycle under way: (its wid, its time, whether its replacement spawned).
    let mut current: Option<(u64, f64, bool)> = None;
    let mut last_spawn = 0.0f64;
    while recycles < 4 || current.is_some_and(|(_, _, spawned)| !spawned) {
        let ev = events.next(T).await;
        let seen = events.seen();
        let time = ev["time"].as_f64().unwrap_or_default();
        // The processes' first spawns may come before the agent's events are on the
        // bus: the count starts at the first recycle, which happens with all 3 up.
        if recycles == 0 && ev["kind"] != "max_age" {
            continue;
        }
        if recycles == 0 {
            running = 3;
        }
        match ev["kind"].as_str().unwrap_or_default() {
            "spawn" => {
                running += 1;
                last_spawn = time;
                if let Some((wid, _, spawned)) = current.as_mut() {
                    assert_eq!(
                        ev["wid"], *wid,
                        "a spawn of another slot mid-recycle: {seen:?}"
                    );
                    *spawned = true;
                }
            }
            "exit" => {
                running -= 1;
                if running < 3 {
                    least = least.min(running);
                }
            }
            "max_age" => {
                assert_eq!(running, 3, "a recycle while not all ran: {seen:?}");
                if let Some((wid, at, spawned)) = current {
                    assert!(
                        spawned,
                        "recycle of {} before {wid}'s replacement: {seen:?}",
                        ev["wid"]
                    );
                    assert!(time > at);
                    // The replacement was up (min_uptime) before this one began.
                    assert!(
                        time - last_spawn >= 0.3 - 0.02,
                        "next recycle {:.3}s after the last spawn",
                        time - last_spawn
                    );
                }
                current = Some((ev["wid"].as_u64().unwrap_or_default(), time, false));
                recycles += 1;
            }
            _ => {}
        }
        if recycles > 0 && running >= 3 {
            least = least.min(running);
        }
    }
    eprintln!("{recycles} recycles; fewest running {least}");
    let seen = events.seen();
    let wids: std::collections::BTreeSet<u64> = seen
        .iter()
        .filter(|v| v["kind"] == "max_age")
        .filter_map(|v| v["wid"].as_u64())
        .collect();
    assert!(wids.len() >= 2, "recycles spread over slots: {wids:?}");
    if surge {
        assert_eq!(least, 3, "with surge, never below 3 running: {seen:?}");
    } else {
        assert_eq!(least, 2, "stopping first, never below 2 running: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_recycles_one_process_at_a_time() {
    recycles_one_at_a_time(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_with_surge_never_runs_fewer() {
    recycles_one_at_a_time(true).await;
}

/// One GET on a fresh connection to `addr`: the answering pid, or what went wrong.
fn get(addr: std::net::SocketAddr) -> Result<u32, String> {
    use std::io::{Read, Write};
    let timeout = bound(Duration::from_secs(5));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    answer
        .rsplit("hello from pid ")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .filter(|_| answer.starts_with("HTTP/1.0 200"))
        .ok_or_else(|| format!("not a 200 with a pid: {answer:?}"))
}

/// A web watcher on a shared socket with a readiness check and `max_age`: its
/// processes are recycled, the replacement first, while a client's loop of requests
/// sees no failure, and no process is stopped before its replacement passed its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_on_a_socket_with_readiness_leaves_no_gap() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let nats = NatsServer::start();
    let mut events = Events::subscribe(&nats.url(), "cluster.a.events.web.>").await;
    let server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_http.py");
    let w = format!(
        "[socket.http]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [watcher.web]\ncmd = \"python3\"\nargs = [\"{}\"]\nnumprocesses = 2\n\
         sockets = [\"http\"]\nmin_uptime = \"300ms\"\ngraceful_timeout = \"10s\"\n\
         ready = {{ exec = [\"kill\", \"-0\", \"$(pid)\"], interval = \"100ms\" }}\n\
         max_age = \"1500ms\"\nmax_age_variance = \"500ms\"\n",
        server.display()
    );
    let agent = Agent::start_config(&nats, &node(&w));
    let addr: std::net::SocketAddr = {
        let r = agent.ctl_ok(&["listsockets"]);
        r["sockets"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {r}"))
    };
    let stop = AtomicBool::new(false);
    let (failures, requests, pids, seen) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let (mut failures, mut requests, mut pids) =
                (vec![], 0u64, std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                requests += 1;
                match get(addr) {
                    Ok(pid) => {
                        pids.insert(pid);
                    }
                    Err(e) => failures.push(e),
                }
            }
            (failures, requests, pids)
        });
        // Three recycles, each one's old process gone.
        let rt = tokio::runtime::Handle::current();
        let seen = tokio::task::block_in_place(|| {
            rt.block_on(async {
                for _ in 0..3 {
                    let ev = events
                        .next_where(T, "a max_age event", |v| v["kind"] == "max_age")
                        .await;
                    let pid = ev["pid"].clone();
                    events
                        .next_where(T, "the recycled process's exit", |v| {
                            v["kind"] == "exit" && v["pid"] == pid
                        })
                        .await;
                }
                events.seen().to_vec()
            })
        });
        stop.store(true, Ordering::Relaxed);
        let (failures, requests, pids) = client.join().expect("the client");
        (failures, requests, pids, seen)
    });
    eprintln!(
        "figures: {requests} requests over 3 recycles, {} failed, {} pids answered",
        failures.len(),
        pids.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    // Each recycled process exited only after its replacement (same wid) spawned.
    for (i, ev) in seen
        .iter()
        .enumerate()
        .filter(|(_, v)| v["kind"] == "max_age")
    {
        let spawned = seen[i..]
            .iter()
            .position(|v| v["kind"] == "spawn" && v["wid"] == ev["wid"]);
        let exited = seen[i..]
            .iter()
            .position(|v| v["kind"] == "exit" && v["pid"] == ev["pid"]);
        assert!(spawned < exited && spawned.is_some(), "{seen:?}");
    }
    assert!(pids.len() >= 3, "{pids:?}");
}
