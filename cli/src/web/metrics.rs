//! `/metrics`: the whole cluster as one Prometheus scrape target, built from the
//! dashboard's [`View`] (the stats stream and the announcements) at each scrape, and
//! written by the prometheus-client crate in the OpenMetrics text format.
//!
//! Names and labels: `nodeagent_process_cpu_seconds_total`,
//! `nodeagent_process_resident_memory_bytes`, `nodeagent_process_restarts_total` and
//! `nodeagent_process_health` per process (`node`, `watcher`, `wid`);
//! `nodeagent_watcher_state`, `nodeagent_watcher_processes` and
//! `nodeagent_watcher_processes_wanted` per watcher (`node`, `watcher`);
//! `nodeagent_member_state` per member (`node`, `state`) and
//! `nodeagent_stats_timestamp_seconds` per node.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use protocol::registry::MemberState;
use protocol::reply::{ProcessHealth, WatcherState};

use super::view::View;

/// The media type of what [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    node: String,
    watcher: String,
    wid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    node: String,
    watcher: String,
    wid: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatcherLabels {
    node: String,
    watcher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatcherStateLabels {
    node: String,
    watcher: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    node: String,
    state: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

const WATCHER_STATES: [WatcherState; 4] = [
    WatcherState::Active,
    WatcherState::Stopping,
    WatcherState::Stopped,
    WatcherState::Fatal,
];
const HEALTHS: [ProcessHealth; 3] = [
    ProcessHealth::Starting,
    ProcessHealth::Ready,
    ProcessHealth::Unhealthy,
];

fn flag(on: bool) -> i64 {
    i64::from(on)
}

/// The metrics of every node whose member is alive or suspect (or not yet announced),
/// and the member state of every member.
pub fn render(view: &View) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("nodeagent");
    let cpu = Family::<ProcessLabels, FloatCounter>::default();
    reg.register_with_unit(
        "process_cpu",
        "CPU time a process has used since it started (user and system)",
        Unit::Seconds,
        cpu.clone(),
    );
    let rss = Family::<ProcessLabels, Gauge>::default();
    reg.register_with_unit(
        "process_resident_memory",
        "Resident memory of a process",
        Unit::Bytes,
        rss.clone(),
    );
    let restarts = Family::<ProcessLabels, Counter>::default();
    reg.register(
        "process_restarts",
        "How many times a process slot was started again after an exit",
        restarts.clone(),
    );
    let health = Family::<HealthLabels, Gauge>::default();
    reg.register(
        "process_health",
        "A running process's health by its checks: 1 for its current one (starting, ready, unhealthy, or none without checks)",
        health.clone(),
    );
    let wstate = Family::<WatcherStateLabels, Gauge>::default();
    reg.register(
        "watcher_state",
        "A watcher's state: 1 for its current one (active, stopping, stopped, fatal)",
        wstate.clone(),
    );
    let running = Family::<WatcherLabels, Gauge>::default();
    reg.register(
        "watcher_processes",
        "How many processes of a watcher run",
        running.clone(),
    );
    let wanted = Family::<WatcherLabels, Gauge>::default();
    reg.register(
        "watcher_processes_wanted",
        "How many processes a watcher should run (numprocesses)",
        wanted.clone(),
    );
    let sampled = Family::<NodeLabels, FloatGauge>::default();
    reg.register_with_unit(
        "stats_timestamp",
        "Unix time of a node's last stats sample (its clock)",
        Unit::Seconds,
        sampled.clone(),
    );
    let member = Family::<MemberLabels, Gauge>::default();
    reg.register(
        "member_state",
        "A member's state as the dashboard judges it: 1 for its current one (alive, suspect, failed, leaving, left)",
        member.clone(),
    );

    for m in view.members() {
        for s in MemberState::ALL {
            member
                .get_or_create(&MemberLabels {
                    node: m.name.clone(),
                    state: s.to_string(),
                })
                .set(flag(m.state == s));
        }
    }
    for n in view.nodes() {
        if view
            .member_state(&n.node)
            .is_some_and(|s| !s.is_reachable())
        {
            // Stale figures of a member that is gone are not exported.
            continue;
        }
        sampled
            .get_or_create(&NodeLabels {
                node: n.node.clone(),
            })
            .set(n.time);
        for w in &n.watchers {
            let wl = WatcherLabels {
                node: n.node.clone(),
                watcher: w.name.clone(),
            };
            running.get_or_create(&wl).set(i64::from(w.running));
            wanted.get_or_create(&wl).set(i64::from(w.numprocesses));
            for s in WATCHER_STATES {
                wstate
                    .get_or_create(&WatcherStateLabels {
                        node: n.node.clone(),
                        watcher: w.name.clone(),
                        state: s.to_string(),
                    })
                    .set(flag(w.state == s));
            }
            for p in &w.processes {
                let pl = ProcessLabels {
                    node: n.node.clone(),
                    watcher: w.name.clone(),
                    wid: p.wid.to_string(),
                };
                cpu.get_or_create(&pl).inc_by(p.cpu_seconds);
                rss.get_or_create(&pl)
                    .set(i64::try_from(p.rss).unwrap_or(i64::MAX));
                restarts.get_or_create(&pl).inc_by(u64::from(p.restarts));
                let names = HEALTHS
                    .iter()
                    .map(|h| (h.to_string(), Some(*h)))
                    .chain([("none".to_owned(), None)]);
                for (name, h) in names {
                    health
                        .get_or_create(&HealthLabels {
                            node: n.node.clone(),
                            watcher: w.name.clone(),
                            wid: p.wid.to_string(),
                            health: name,
                        })
                        .set(flag(p.health == h));
                }
            }
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::fixtures::stats;

    #[test]
    fn writes_conventional_names_and_labels() {
        let mut v = View::new();
        let mut msg = stats("n1", 5.0, 7, 0.0);
        let w = &mut msg.watchers[0];
        w.restarts = 2;
        let p = &mut w.processes[0];
        p.cpu_seconds = 1.25;
        p.restarts = 2;
        p.health = Some(ProcessHealth::Ready);
        v.stats("n1", msg);
        let text = render(&v).unwrap();
        let want = [
            "# TYPE nodeagent_process_cpu_seconds counter",
            r#"nodeagent_process_cpu_seconds_total{node="n1",watcher="web",wid="1"} 1.25"#,
            r#"nodeagent_process_resident_memory_bytes{node="n1",watcher="web",wid="1"} 4096"#,
            r#"nodeagent_process_restarts_total{node="n1",watcher="web",wid="1"} 2"#,
            r#"nodeagent_process_health{node="n1",watcher="web",wid="1",health="ready"} 1"#,
            r#"nodeagent_watcher_state{node="n1",watcher="web",state="active"} 1"#,
            r#"nodeagent_watcher_state{node="n1",watcher="web",state="fatal"} 0"#,
            "# EOF",
        ];
        for line in want {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
