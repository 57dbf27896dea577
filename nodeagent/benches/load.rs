//! A load client for one agent: several NATS clients send a mix of commands at a fixed
//! total rate to `<prefix>.<node>.cmd` for a while, then print a table of requests
//! sent, lost replies, error replies, latency percentiles, and the agent's RSS and CPU
//! (read from /proc) at the start and the end. Driven by `bench/load.sh`, which starts
//! the server and the agent; exits non-zero when a reply was lost.
//!
//! `cargo bench -p nodeagent --bench load -- --url URL --node NAME --pid PID
//!  [--rate 1000] [--secs 60] [--clients 4] [--watcher load] [--prefix cluster]
//!  [--mix all|reads|writes|resize|set]`
//!
//! The mix, per 20 requests: 6 status, 4 list, 4 numprocesses (reads), 3 incr or decr
//! (each client sends a decr when the processes it added and has not removed, counting
//! the requests still in flight, are more than zero, else an incr; a request that
//! fails, is `busy` or gets no reply is taken back, so the count stays within a few
//! of the start however many requests fail), 3 set of `priority` (harmless: it only
//! orders starts). A `busy` reply (errno 9) counts as an error reply, shown apart.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{Command, Request};
use serde_json::json;

/// How long a reply may take before it counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    url: String,
    node: String,
    pid: Option<i32>,
    rate: u32,
    secs: u64,
    clients: u32,
    watcher: String,
    prefix: String,
    /// Which requests of the mix are sent: all, reads, writes, or one kind of write
    /// (resize: incr and decr; set).
    mix: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "nats://127.0.0.1:4222".into(),
        node: "load".into(),
        pid: None,
        rate: 1000,
        secs: 60,
        clients: 4,
        watcher: "load".into(),
        prefix: "cluster".into(),
        mix: "all".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench to every benchmark.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v:?}: {e}"));
        match flag.as_str() {
            "--url" => a.url = value,
            "--node" => a.node = value,
            "--pid" => a.pid = Some(num(&value)? as i32),
            "--rate" => a.rate = num(&value)?.clamp(1, 1_000_000) as u32,
            "--secs" => a.secs = num(&value)?.max(1),
            "--clients" => a.clients = num(&value)?.clamp(1, 1000) as u32,
            "--watcher" => a.watcher = value,
            "--prefix" => a.prefix = value,
            "--mix" if ["all", "reads", "writes", "resize", "set"].contains(&value.as_str()) => {
                a.mix = value
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// What happened to one request.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(Duration),
    /// An error reply; `busy` when it is the agent's `busy` answer (errno 9: too many
    /// requests in flight), which is a reply, not a lost one.
    Error {
        took: Duration,
        busy: bool,
        reason: String,
    },
    Lost,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// Error replies, `busy` ones included.
    errors: u64,
    /// Error replies that were `busy`.
    busy: u64,
    lost: u64,
    first_error: Option<String>,
    first_busy: Option<String>,
}

/// Classifies a reply's payload, received `took` after the request was sent.
fn outcome(payload: &[u8], took: Duration) -> Outcome {
    // The envelope alone: any data reads as no data.
    match serde_json::from_slice::<protocol::Reply<protocol::reply::NoData>>(payload) {
        Ok(r) if r.is_ok() => Outcome::Ok(took),
        Ok(r) => Outcome::Error {
            took,
            busy: r.errno == Some(protocol::Errno::Busy.code()),
            reason: r.reason.unwrap_or_default(),
        },
        Err(e) => Outcome::Error {
            took,
            busy: false,
            reason: format!("unreadable reply: {e}"),
        },
    }
}

/// The agent's resident memory in bytes and CPU time in seconds.
fn agent_usage(pid: i32) -> Option<(u64, f64)> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Some((stat.rss * procfs::page_size(), cpu))
}

/// The request number `i` of client `client_no`, and the change it asks of the count
/// of processes (+1 incr, -1 decr, else 0), already applied to `added`: the processes
/// this client added and has not removed, counting its requests in flight.
fn request(i: u64, client_no: u32, watcher: &str, mix: &str, added: &AtomicI64) -> (Request, i64) {
    let name = watcher.to_owned();
    let slot = match mix {
        "reads" => i % 14,
        "writes" => 14 + i % 6,
        "resize" => 14 + i % 3,
        "set" => 17 + i % 3,
        _ => i % 20,
    };
    let mut delta = 0;
    let command = match slot {
        0..=5 => Command::Status(protocol::command::MaybeName { name: Some(name) }),
        6..=9 => Command::List(protocol::command::MaybeName { name: Some(name) }),
        10..=13 => Command::Numprocesses(protocol::command::Numprocesses { name, nb: None }),
        14..=16 => {
            // Takes back what this client added, else adds one: the count stays
            // bounded even when requests fail (a fixed alternation would drift).
            let r = protocol::command::Resize { name, nb: 1 };
            if added.load(Ordering::SeqCst) > 0 {
                delta = -1;
                Command::Decr(r)
            } else {
                delta = 1;
                Command::Incr(r)
            }
        }
        _ => Command::Set(protocol::command::SetProps {
            name,
            options: [("priority".to_owned(), json!((i % 7) as i64))].into(),
        }),
    };
    added.fetch_add(delta, Ordering::SeqCst);
    let request = Request {
        id: Some(format!("{client_no}-{i}")),
        command,
    };
    (request, delta)
}

async fn one(client: async_nats::Client, subject: String, payload: bytes::Bytes) -> Outcome {
    let t = Instant::now();
    match tokio::time::timeout(REPLY_TIMEOUT, client.request(subject, payload)).await {
        Ok(Ok(msg)) => outcome(&msg.payload, t.elapsed()),
        _ => Outcome::Lost,
    }
}

async fn run_client(a: Args, client_no: u32, tally: Arc<Mutex<Tally>>) -> Result<u64, String> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("load-{client_no}"))
        .connect(a.url.as_str())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", a.url))?;
    let subject = format!("{}.{}.cmd", a.prefix, a.node);
    let per_client = f64::from(a.rate) / f64::from(a.clients);
    let every = Duration::from_secs_f64(1.0 / per_client);
    // Clients start spread over one period, not all at once.
    let offset = every.mul_f64(f64::from(client_no) / f64::from(a.clients));
    let start = tokio::time::Instant::now() + offset;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (per_client * a.secs as f64).round() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let added = Arc::new(AtomicI64::new(0));
    for i in 0..total {
        tick.tick().await;
        let (req, delta) = request(i, client_no, &a.watcher, &a.mix, &added);
        let payload: bytes::Bytes = serde_json::to_vec(&req)
            .expect("a request serializes")
            .into();
        let (client, subject, tally, added) = (
            client.clone(),
            subject.clone(),
            tally.clone(),
            added.clone(),
        );
        // Open loop: a slow reply never delays the next request.
        tasks.spawn(async move {
            let out = one(client, subject, payload).await;
            if !matches!(out, Outcome::Ok(_)) {
                // Not done (or not known to be): taken back.
                added.fetch_sub(delta, Ordering::SeqCst);
            }
            let mut t = tally.lock().expect("tally");
            match out {
                Outcome::Ok(d) => t.latencies.push(d),
                Outcome::Error { took, busy, reason } => {
                    t.latencies.push(took);
                    t.errors += 1;
                    if busy {
                        t.busy += 1;
                        t.first_busy.get_or_insert(reason);
                    } else {
                        t.first_error.get_or_insert(reason);
                    }
                }
                Outcome::Lost => t.lost += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(total)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let before = a.pid.and_then(agent_usage);
    // The agent's RSS once per second: the peak, and the value once warmed up.
    let samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sampler = a.pid.map(|pid| {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some((rss, _)) = agent_usage(pid) {
                    samples.lock().expect("samples").push(rss);
                }
            }
        })
    });
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..a.clients {
        clients.spawn(run_client(a.clone(), n, tally.clone()));
    }
    let mut sent = 0;
    while let Some(r) = clients.join_next().await {
        match r {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => {
                eprintln!("load: {e}");
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("load: a client failed: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let wall = started.elapsed();
    let after = a.pid.and_then(agent_usage);
    if let Some(s) = sampler {
        s.abort();
    }
    let mut t = tally.lock().expect("tally");
    t.latencies.sort();
    let lat = &t.latencies;
    let row = |k: &str, v: String| println!("| {k:<38} | {v:>14} |");
    let title = format!(
        "load: {} clients, {} req/s, {} s",
        a.clients, a.rate, a.secs
    );
    let title = match a.mix.as_str() {
        "all" => title,
        mix => format!("{title}, {mix}"),
    };
    println!("| {title:<38} | {:>14} |", "value");
    println!("|{:-<40}|{:->16}|", "", "");
    row("requests sent", sent.to_string());
    row(
        "achieved rate",
        format!("{:.0} req/s", sent as f64 / wall.as_secs_f64()),
    );
    row("replies", lat.len().to_string());
    row("lost replies (no reply in 5 s)", t.lost.to_string());
    row("error replies", t.errors.to_string());
    row("  of which busy (errno 9)", t.busy.to_string());
    row("latency p50", ms(percentile(lat, 0.50)));
    row("latency p99", ms(percentile(lat, 0.99)));
    row("latency max", ms(lat.last().copied().unwrap_or_default()));
    if let (Some((rss0, cpu0)), Some((rss1, cpu1))) = (before, after) {
        let samples = samples.lock().expect("samples");
        // Warm-up: the first sixth of the run (10 s of 60).
        let warm = samples.get(samples.len() / 6).copied().unwrap_or(rss0);
        let peak = samples.iter().copied().max().unwrap_or(rss1);
        row("agent RSS at start", mib(rss0));
        row("agent RSS after warm-up (1/6 of run)", mib(warm));
        row("agent RSS at end", mib(rss1));
        row("agent RSS peak (sampled 1/s)", mib(peak));
        row(
            "agent CPU (of one core)",
            format!("{:.1} %", (cpu1 - cpu0) / wall.as_secs_f64() * 100.0),
        );
    }
    if let Some(e) = &t.first_error {
        eprintln!("load: first error reply: {e}");
    }
    if let Some(e) = &t.first_busy {
        eprintln!("load: first busy reply: {e}");
    }
    if t.lost > 0 {
        eprintln!("load: {} replies lost", t.lost);
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}
