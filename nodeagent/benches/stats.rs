//! Measures what stats cost the agent, in two tables. `cargo bench -p nodeagent --bench
//! stats`; `STATS_BENCH_ITERS` sets the number of samples (default 30).
//!
//! 1. The sampler alone: N `sleep` processes sampled once per simulated second; the mean
//!    wall and CPU time of one sample, with the stat files kept open between samples
//!    (the default) and reopened at each sample (when the open files limit is low).
//! 2. The whole path, as the agent runs it: a real supervisor runs N `sleep` processes in
//!    10 watchers; the real stats task takes the supervisor's snapshot, samples /proc,
//!    encodes the message and publishes it to a real local `nats-server` (started here;
//!    the table is skipped, saying so, when none is installed). The process's CPU time
//!    over a window with the stats task running, minus the same window without it,
//!    divided by the messages the server counted (its /varz), is the cost of one
//!    message; at a 1 s interval that is the CPU share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use nodeagent::stats::{ProcessInput, Sampler, WatcherInput};
use protocol::reply::WatcherState;

/// Kills and reaps every child on drop, also when the benchmark panics.
struct Children(Vec<Child>);

impl Children {
    fn spawn(n: usize) -> Children {
        let mut children = Children(Vec::with_capacity(n));
        for _ in 0..n {
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            children.0.push(child);
        }
        children
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// The children as 10 watchers, as the supervisor would hand them over.
fn input(children: &Children) -> Vec<WatcherInput> {
    let started_at = protocol::unix_time();
    let per = children.0.len().div_ceil(10).max(1);
    children
        .0
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| WatcherInput {
            name: format!("w{i}"),
            service: format!("w{i}"),
            state: WatcherState::Active,
            numprocesses: chunk.len() as u32,
            restarts: 0,
            processes: chunk
                .iter()
                .enumerate()
                .map(|(wid, c)| ProcessInput {
                    wid: wid as u32 + 1,
                    pid: c.id(),
                    started_at,
                    restarts: 0,
                    health: None,
                })
                .collect(),
        })
        .collect()
}

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread cpu clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

struct Row {
    processes: usize,
    kept_files: bool,
    samples: usize,
    wall_mean: Duration,
    wall_max: Duration,
    cpu_mean: Duration,
}

fn measure(n: usize, kept_files: bool, samples: usize) -> Row {
    let children = Children::spawn(n);
    let input = input(&children);
    let mut sampler = if kept_files {
        Sampler::with_max_kept_files(n)
    } else {
        Sampler::with_max_kept_files(0)
    };
    // The first sample gives every pid its first mark.
    let (_, first) = sampler.sample(&input);
    let seen: usize = first.iter().map(|w| w.processes.len()).sum();
    assert_eq!(seen, n, "every child is sampled");

    let mut wall_total = Duration::ZERO;
    let mut wall_max = Duration::ZERO;
    let mut cpu_total = Duration::ZERO;
    for _ in 0..samples {
        // A simulated second: enough wall time for the deltas to mean something.
        std::thread::sleep(Duration::from_millis(20));
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let (_, watchers) = sampler.sample(&input);
        let wall = t0.elapsed();
        cpu_total += thread_cpu().saturating_sub(cpu0);
        wall_total += wall;
        wall_max = wall_max.max(wall);
        std::hint::black_box(watchers);
    }
    drop(children);
    Row {
        processes: n,
        kept_files,
        samples,
        wall_mean: wall_total / samples as u32,
        wall_max,
        cpu_mean: cpu_total / samples as u32,
    }
}

/// A `nats-server` on free ports (client and monitoring), killed on drop.
struct Server {
    child: Child,
    port: u16,
    http: u16,
}

impl Server {
    fn start() -> Option<Server> {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())?;
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .ok()
        };
        for _ in 0..5 {
            let (port, http) = (free()?, free()?);
            let mut child = Command::new(bin)
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-m",
                    &http.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
                {
                    return Some(Server { child, port, http });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    /// (in_msgs, in_bytes) from /varz.
    fn counts(&self) -> (u64, u64) {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else {
            return (0, 0);
        };
        let _ = write!(s, "GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        (
            v["in_msgs"].as_u64().unwrap_or(0),
            v["in_bytes"].as_u64().unwrap_or(0),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("process cpu clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

struct PathRow {
    processes: usize,
    messages: u64,
    bytes_mean: u64,
    cpu_per_message: Duration,
    baseline_cpu_pct: f64,
}

/// The whole path for `n` processes: stats every `interval` over `window`.
fn measure_path(server: &Server, n: usize, interval: Duration, window: Duration) -> PathRow {
    use nodeagent::supervisor::{self, DrainOutput, Settings};
    use std::collections::{BTreeMap, BTreeSet};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let per = n / 10;
    let mut text = String::from("[agent]\nname = \"bench\"\n\n");
    for i in 0..10 {
        text.push_str(&format!(
            "[watcher.w{i}]\ncmd = \"sleep\"\nargs = [\"600\"]\nnumprocesses = {per}\nstdout = \"discard\"\nstderr = \"discard\"\n\n"
        ));
    }
    let config = nodeagent::config::parse(std::path::Path::new("bench.toml"), &text)
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    rt.block_on(async move {
        let (sup, task) = supervisor::start(
            config.watchers,
            BTreeSet::new(),
            Settings {
                node: "bench".into(),
                allow_remote_exec: false,
                persist: None,
                groups: None,
                notify_dir: None,
                max_processes: config.agent.max_processes,
                sockets: Default::default(),
            },
            Box::new(DrainOutput),
        );
        // Every process running.
        let start = Instant::now();
        loop {
            let running: usize = sup
                .snapshot()
                .await
                .map(|ws| ws.iter().map(|w| w.processes.len()).sum())
                .unwrap_or(0);
            if running == n {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{running} of {n} running"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = async_nats::connect(format!("nats://127.0.0.1:{}", server.port))
            .await
            .expect("connect to the bench server");
        // Without stats: what the supervisor and the connection cost at rest.
        let c0 = process_cpu();
        tokio::time::sleep(window).await;
        let baseline = process_cpu().saturating_sub(c0);
        // With the stats task.
        let token = tokio_util::sync::CancellationToken::new();
        let identity = nodeagent::identity::Identity {
            node: "bench".into(),
            boot_id: "bench-boot".into(),
            started_at: protocol::unix_time(),
            started: Instant::now(),
            pid: std::process::id(),
            hostname: "bench".into(),
            tags: BTreeMap::new(),
            version: "bench".into(),
        };
        let (m0, b0) = server.counts();
        let c0 = process_cpu();
        let _handle = nodeagent::statsloop::start(
            nodeagent::transport::Publisher::new(client.clone()),
            protocol::Subjects::new("cluster"),
            identity,
            interval,
            sup.clone(),
            token.clone(),
        );
        tokio::time::sleep(window).await;
        token.cancel();
        let _ = client.flush().await;
        let with = process_cpu().saturating_sub(c0);
        let (m1, b1) = server.counts();
        let messages = m1.saturating_sub(m0).max(1);
        sup.shutdown().await;
        let _ = task.await;
        PathRow {
            processes: n,
            messages,
            bytes_mean: b1.saturating_sub(b0) / messages,
            cpu_per_message: with.saturating_sub(baseline) / messages as u32,
            baseline_cpu_pct: baseline.as_secs_f64() * 100.0 / window.as_secs_f64(),
        }
    })
}

fn main() {
    let samples: usize = std::env::var("STATS_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(30);
    let rows: Vec<Row> = [(100, true), (1000, true), (100, false), (1000, false)]
        .into_iter()
        .map(|(n, kept)| measure(n, kept, samples))
        .collect();
    println!(
        "{:>9}  {:>10}  {:>7}  {:>11}  {:>11}  {:>11}  {:>10}",
        "processes", "stat files", "samples", "wall mean", "wall max", "cpu mean", "cpu% at 1s"
    );
    for r in rows {
        println!(
            "{:>9}  {:>10}  {:>7}  {:>9.3}ms  {:>9.3}ms  {:>9.3}ms  {:>9.2}%",
            r.processes,
            if r.kept_files {
                "kept open"
            } else {
                "reopened"
            },
            r.samples,
            r.wall_mean.as_secs_f64() * 1e3,
            r.wall_max.as_secs_f64() * 1e3,
            r.cpu_mean.as_secs_f64() * 1e3,
            r.cpu_mean.as_secs_f64() * 100.0,
        );
    }

    println!();
    let Some(server) = Server::start() else {
        println!(
            "whole path (snapshot, sample, encode, publish): skipped, no nats-server installed"
        );
        return;
    };
    // As many messages as samples above, 5 a second.
    let interval = Duration::from_millis(200);
    let window = interval * samples as u32;
    let rows: Vec<PathRow> = [100, 1000]
        .into_iter()
        .map(|n| measure_path(&server, n, interval, window))
        .collect();
    println!("whole path: supervisor snapshot, /proc sample, JSON encoding, publish to a local nats-server");
    println!(
        "{:>9}  {:>8}  {:>10}  {:>14}  {:>10}  {:>14}",
        "processes", "messages", "bytes each", "cpu / message", "cpu% at 1s", "cpu% at rest"
    );
    for r in rows {
        println!(
            "{:>9}  {:>8}  {:>10}  {:>12.3}ms  {:>9.2}%  {:>13.2}%",
            r.processes,
            r.messages,
            r.bytes_mean,
            r.cpu_per_message.as_secs_f64() * 1e3,
            r.cpu_per_message.as_secs_f64() * 100.0,
            r.baseline_cpu_pct,
        );
    }
}
