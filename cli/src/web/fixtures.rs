//! What the dashboard's tests feed it: a node's stats with one watcher `web` of one
//! process (wid 1), to change field by field where a test needs other figures.

use protocol::reply::WatcherState;
use protocol::stats::{HostStats, ProcessStats, StatsData, StatsMessage, WatcherStats};

/// `node`'s stats at unix time `time`: watcher `web` active with process 1 (`pid`)
/// at `cpu` percent, 4096 bytes resident, 1.5 s of CPU, 2 s old, never restarted, no
/// health.
pub fn stats(node: &str, time: f64, pid: u32, cpu: f64) -> StatsMessage {
    StatsMessage {
        time,
        ..StatsMessage::new(
            node,
            "b",
            1.0,
            StatsData {
                host: HostStats::default(),
                watchers: vec![WatcherStats {
                    name: "web".into(),
                    service: "web".into(),
                    state: WatcherState::Active,
                    numprocesses: 1,
                    running: 1,
                    cpu_percent: cpu,
                    rss_bytes: 4096,
                    restarts: 0,
                    processes: vec![ProcessStats {
                        wid: 1,
                        pid,
                        cpu_percent: cpu,
                        rss_bytes: 4096,
                        cpu_seconds: 1.5,
                        age_secs: 2.0,
                        restarts: 0,
                        health: None,
                    }],
                }],
            },
        )
    }
}
