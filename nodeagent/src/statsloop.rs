//! The stats task: samples /proc on `stats_interval` through [`crate::stats::Sampler`],
//! publishes `cluster.<node>.stats` through the transport's [`Publisher`], and answers
//! the `stats` command from the latest sample (or a fresh one when the stream is off).
//! Each sample's memory readings of watchers with `max_memory` go to the supervisor's
//! guard (sampled every [`GUARD_INTERVAL`] for those watchers alone when the stream is
//! off). It reads supervisor snapshots and never changes supervisor state itself.

use std::time::Duration;

use protocol::stats::{StatsData, StatsMessage};
use protocol::Subjects;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::stats::{ProcessInput, Sampler, WatcherInput};
use crate::supervisor::{MemoryReading, SupervisorHandle};
use crate::transport::Publisher;

/// Asks the stats task for a snapshot.
#[derive(Clone)]
pub struct StatsHandle {
    tx: mpsc::Sender<oneshot::Sender<Option<StatsData>>>,
}

impl StatsHandle {
    pub async fn snapshot(&self) -> Option<StatsData> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// How often the memory of watchers with `max_memory` is read when the stats stream is
/// off.
pub const GUARD_INTERVAL: Duration = Duration::from_secs(1);

/// The readings of a sample's processes whose watcher has a `max_memory`.
fn memory_readings(data: &StatsData, guarded: &[String]) -> Vec<MemoryReading> {
    data.watchers
        .iter()
        .filter(|w| guarded.contains(&w.name))
        .flat_map(|w| {
            w.processes.iter().map(|p| MemoryReading {
                watcher: w.name.clone(),
                wid: p.wid,
                pid: p.pid,
                rss_bytes: p.rss_bytes,
            })
        })
        .collect()
}

/// Samples every watcher, or with `guarded_only` those with `max_memory` alone; returns
/// the sample and the names of the watchers with `max_memory`.
async fn sample_some(
    sampler: &mut Option<Sampler>,
    supervisor: &SupervisorHandle,
    guarded_only: bool,
) -> Option<(StatsData, Vec<String>)> {
    let snapshot = supervisor.snapshot().await.ok()?;
    let guarded: Vec<String> = snapshot
        .iter()
        .filter(|w| w.max_memory.is_some())
        .map(|w| w.name.clone())
        .collect();
    if guarded_only && guarded.is_empty() {
        return None;
    }
    let input: Vec<WatcherInput> = snapshot
        .into_iter()
        .filter(|w| !guarded_only || w.max_memory.is_some())
        .map(|w| WatcherInput {
            name: w.name,
            service: w.service,
            state: w.state,
            numprocesses: w.numprocesses,
            restarts: w.restarts,
            processes: w
                .processes
                .into_iter()
                .map(|p| ProcessInput {
                    wid: p.wid,
                    pid: p.pid,
                    started_at: p.started_at,
                    restarts: p.restarts,
                    health: p.health,
                })
                .collect(),
        })
        .collect();
    let mut s = sampler.take().unwrap_or_default();
    let (s, (host, watchers)) = tokio::task::spawn_blocking(move || {
        let out = s.sample(&input);
        (s, out)
    })
    .await
    .ok()?;
    *sampler = Some(s);
    Some((StatsData { host, watchers }, guarded))
}

async fn sample(sampler: &mut Option<Sampler>, supervisor: &SupervisorHandle) -> Option<StatsData> {
    sample_some(sampler, supervisor, false)
        .await
        .map(|(d, _)| d)
}

/// Whether a watcher of `snapshot` has a `max_memory`; unknown (no snapshot yet) counts
/// as yes.
fn any_guarded(snapshot: &Option<Vec<crate::supervisor::WatcherSnapshot>>) -> bool {
    snapshot
        .as_ref()
        .is_none_or(|s| s.iter().any(|w| w.max_memory.is_some()))
}

/// Starts the stats task.
pub fn start(
    bus: Publisher,
    subjects: Subjects,
    identity: Identity,
    interval: Duration,
    supervisor: SupervisorHandle,
    shutdown: CancellationToken,
) -> StatsHandle {
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Option<StatsData>>>(16);
    tokio::spawn(async move {
        let mut sampler = Some(Sampler::new());
        let mut last: Option<(StatsData, tokio::time::Instant)> = None;
        let period = if interval.is_zero() {
            GUARD_INTERVAL
        } else {
            interval
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stream = !interval.is_zero();
        // With the stream off, the task sleeps while no watcher has a `max_memory`: it
        // learns of one from the supervisor's snapshots (a reload may add it).
        let mut snapshots = supervisor.snapshots();
        let mut guarded = any_guarded(&snapshots.borrow_and_update());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = snapshots.changed(), if !stream => {
                    guarded = any_guarded(&snapshots.borrow_and_update());
                }
                _ = tick.tick(), if stream || guarded => {
                    crate::fatal::inject("stats");
                    let Some((data, guarded)) = sample_some(&mut sampler, &supervisor, !stream).await else {
                        continue;
                    };
                    supervisor.memory(memory_readings(&data, &guarded)).await;
                    if stream {
                        let msg = StatsMessage::new(&identity.node, &identity.boot_id, interval.as_secs_f64(), data.clone());
                        bus.publish_json(subjects.stats(&identity.node), &msg).await;
                        last = Some((data, tokio::time::Instant::now()));
                    }
                }
                Some(reply) = rx.recv() => {
                    let fresh = last
                        .as_ref()
                        .filter(|(_, t)| !interval.is_zero() && t.elapsed() <= interval.saturating_mul(2))
                        .map(|(d, _)| d.clone());
                    let data = match fresh {
                        Some(d) => Some(d),
                        None => sample(&mut sampler, &supervisor).await,
                    };
                    let _ = reply.send(data);
                }
            }
        }
    });
    StatsHandle { tx }
}
