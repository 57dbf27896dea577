//! Measures what the stats sampler costs: spawns N `sleep` processes, samples them once
//! per simulated second and prints the mean wall time and CPU time of one sample, and the
//! CPU share that makes at a 1 s interval, with the stat files kept open between samples
//! (the default) and reopened at each sample (when the open files limit is low). `cargo bench -p nodeagent --bench stats`;
//! `STATS_BENCH_ITERS` sets the number of samples (default 30).

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
}
