//! Load for `ctl web` (bench/web.sh): publishes, every second, what N agents publish:
//! an `alive` announcement and a stats message per node (W watchers of P processes
//! each, with CPU and memory that move), spread over the second, and a few lifecycle
//! events. The real message types; no real agent.
//!
//!   cargo run --release -p ctl --example web_load -- NATS_URL [NODES] [SECONDS]

use std::time::{Duration, Instant};

use protocol::events::{Event, EventKind};
use protocol::registry::{AnnounceKind, Announcement, WatcherBrief};
use protocol::reply::{ProcessHealth, WatcherState};
use protocol::stats::{HostStats, ProcessStats, StatsData, StatsMessage, WatcherStats};
use protocol::Subjects;

const WATCHERS: u32 = 5;
const PROCESSES: u32 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or("nats://127.0.0.1:4222".into());
    let nodes: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(70);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(url, nodes, secs))
}

async fn run(url: String, nodes: u32, secs: u64) -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(url).await?;
    let subjects = Subjects::default();
    let started = protocol::unix_time();
    let boot = |n: u32| format!("boot-{n}");
    let name = |n: u32| format!("node-{n:03}");
    let watchers = |n: u32, tick: u64| -> Vec<WatcherStats> {
        (0..WATCHERS)
            .map(|w| {
                let processes: Vec<ProcessStats> = (1..=PROCESSES)
                    .map(|wid| {
                        let phase = f64::from(n * 7 + w * 3 + wid) + tick as f64 / 5.0;
                        let cpu = 2.0 + 10.0 * (phase.sin() + 1.0);
                        ProcessStats {
                            wid,
                            pid: 10_000 + n * 100 + w * 10 + wid,
                            cpu_percent: cpu,
                            rss_bytes: 30_000_000
                                + u64::from(n * 1000 + w * 100 + wid) * 1000
                                + (tick % 60) * 4096,
                            cpu_seconds: tick as f64 * cpu / 100.0,
                            age_secs: tick as f64 + 3600.0,
                            restarts: w % 2,
                            health: Some(ProcessHealth::Ready),
                        }
                    })
                    .collect();
                WatcherStats {
                    name: format!("svc{w}"),
                    service: format!("svc{w}"),
                    state: WatcherState::Active,
                    numprocesses: PROCESSES,
                    running: PROCESSES,
                    cpu_percent: processes.iter().map(|p| p.cpu_percent).sum(),
                    rss_bytes: processes.iter().map(|p| p.rss_bytes).sum(),
                    restarts: (w % 2) * PROCESSES,
                    processes,
                }
            })
            .collect()
    };
    let t0 = Instant::now();
    let gap = Duration::from_secs(1) / nodes.max(1);
    let mut sent = 0u64;
    for tick in 0..secs {
        for n in 0..nodes {
            let node = name(n);
            let ws = watchers(n, tick);
            let ann = Announcement {
                node: node.clone(),
                kind: AnnounceKind::Alive,
                boot_id: boot(n),
                seq: tick + 1,
                started_at: started,
                time: protocol::unix_time(),
                heartbeat_ms: 1000,
                tags: [("zone".to_owned(), format!("z{}", n % 3))].into(),
                version: protocol::VERSION.to_owned(),
                hostname: format!("host-{n}"),
                pid: 1000 + n,
                address: None,
                upgrading_ms: None,
                watchers: ws
                    .iter()
                    .map(|w| WatcherBrief {
                        name: w.name.clone(),
                        service: w.service.clone(),
                        state: w.state,
                        numprocesses: w.numprocesses,
                        running: w.running,
                    })
                    .collect(),
                services: ws.iter().map(|w| w.service.clone()).collect(),
                server_id: None,
                client_id: None,
            };
            let host = HostStats {
                cpu_count: 8,
                load1: 1.5,
                load5: 1.2,
                load15: 1.0,
                mem_total_bytes: 16 << 30,
                mem_available_bytes: 10 << 30,
                agent_pid: 1000 + n,
                agent_cpu_percent: 0.3,
                agent_rss_bytes: 12_000_000,
            };
            let stats = StatsMessage::new(&node, &boot(n), 1.0, StatsData { host, watchers: ws });
            client
                .publish(subjects.registry(&node), serde_json::to_vec(&ann)?.into())
                .await?;
            client
                .publish(subjects.stats(&node), serde_json::to_vec(&stats)?.into())
                .await?;
            sent += 2;
            // A few events a second over the cluster: one process of one node exits and
            // comes back.
            if n % 25 == (tick % 25) as u32 {
                for kind in [EventKind::Exit, EventKind::Spawn] {
                    let e = Event::new(&node, "svc0", kind)
                        .with_wid(1)
                        .with_pid(10_000 + n);
                    client
                        .publish(e.subject(&subjects), serde_json::to_vec(&e)?.into())
                        .await?;
                    sent += 1;
                }
            }
            let due = t0 + Duration::from_secs(tick) + gap * (n + 1);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    client.flush().await?;
    eprintln!(
        "web_load: {sent} messages for {nodes} nodes in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
