//! The process groups that are running right now, each with how its watcher stops it,
//! kept outside the supervisor actor so that they can still be stopped gracefully when
//! the actor (or any other task) has panicked. The actor notes each group it starts and
//! each it is done with; [`LiveGroups::stop_all`] is the last resort of a failing agent.
//!
//! It is one record per process ([`LIVE`]): a panic hook or `main` must find it after
//! its owner is gone, so it cannot live inside the actor.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process;

/// How long a group may survive SIGKILL before it is given up on (a process in
/// uninterruptible sleep cannot die until its I/O ends).
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often a stopping group is checked.
const POLL: Duration = Duration::from_millis(20);

/// The live groups of this agent.
pub static LIVE: LazyLock<LiveGroups> = LazyLock::new(LiveGroups::default);

/// Live process groups and how each is stopped.
#[derive(Debug, Default)]
pub struct LiveGroups {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// pgid -> its watcher.
    groups: BTreeMap<u32, String>,
    /// watcher -> (stop signal, graceful timeout).
    stops: BTreeMap<String, (Signal, Duration)>,
}

impl LiveGroups {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How `watcher`'s processes are stopped; set at each spawn and each change.
    pub fn configure(&self, watcher: &str, stop_signal: Signal, graceful: Duration) {
        self.lock()
            .stops
            .insert(watcher.to_owned(), (stop_signal, graceful));
    }

    /// Notes the group led by `pgid`, a process of `watcher` just started.
    pub fn started(&self, pgid: u32, watcher: &str) {
        self.lock().groups.insert(pgid, watcher.to_owned());
    }

    /// Notes that the group `pgid` is stopped (or given up on).
    pub fn ended(&self, pgid: u32) {
        self.lock().groups.remove(&pgid);
    }

    /// The longest graceful timeout of the watchers that have live groups.
    pub fn longest_graceful(&self) -> Duration {
        let inner = self.lock();
        inner
            .groups
            .values()
            .filter_map(|w| inner.stops.get(w).map(|(_, g)| *g))
            .max()
            .unwrap_or_default()
    }

    /// How many groups are noted.
    pub fn len(&self) -> usize {
        self.lock().groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every noted group as its watcher would: the stop signal, then SIGKILL to
    /// the group after its graceful timeout, all groups at once. Returns when every
    /// group is gone, or [`KILL_GRACE`] after the last SIGKILL. Returns how many groups
    /// were still running.
    pub async fn stop_all(&self) -> usize {
        let groups: Vec<(u32, Signal, Duration)> = {
            let inner = self.lock();
            inner
                .groups
                .iter()
                .map(|(pgid, w)| {
                    let (sig, graceful) = inner
                        .stops
                        .get(w)
                        .copied()
                        .unwrap_or((Signal::SIGTERM, Duration::from_secs(30)));
                    (*pgid, sig, graceful)
                })
                .collect()
        };
        let start = Instant::now();
        let mut pending: Vec<(u32, Instant)> = vec![];
        for (pgid, sig, graceful) in &groups {
            let sig = if graceful.is_zero() {
                Signal::SIGKILL
            } else {
                *sig
            };
            if let Err(e) = process::signal_group(*pgid, sig) {
                tracing::warn!(pgid, "cannot signal: {e}");
            }
            pending.push((*pgid, later(start, *graceful)));
        }
        let count = pending.len();
        let mut killed = vec![];
        while !pending.is_empty() {
            let now = Instant::now();
            pending.retain(|(pgid, kill_at)| {
                if !process::group_alive(*pgid) {
                    self.ended(*pgid);
                    return false;
                }
                if now < *kill_at {
                    return true;
                }
                if !killed.contains(pgid) {
                    tracing::info!(
                        pgid,
                        "graceful_timeout passed; sending SIGKILL to the group"
                    );
                    let _ = process::signal_group(*pgid, Signal::SIGKILL);
                    killed.push(*pgid);
                }
                if now >= later(*kill_at, KILL_GRACE) {
                    tracing::error!(pgid, "process group survived SIGKILL; giving up on it");
                    self.ended(*pgid);
                    return false;
                }
                true
            });
            if !pending.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
        count
    }
}

/// `now + d`, saturating at a far future instead of overflowing.
pub fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
    }

    /// Waits (bounded) until `pid` ignores SIGTERM, so that the stop does not race
    /// the shell's `trap`.
    async fn ignores_term(pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ignored = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if ignored & (1 << (Signal::SIGTERM as i32 - 1)) != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} never ignored SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn stops_gracefully_then_kills() {
        let live = LiveGroups::default();
        let spec = |script: &str| process::SpawnSpec {
            cmd: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            clear_env: false,
            working_dir: None,
            uid: None,
            gid: None,
            stdout: crate::config::Output::Discard,
            stderr: crate::config::Output::Discard,
            listen: vec![],
            rlimits: Vec::new(),
        };
        let mut polite = process::spawn(&spec("sleep 1000 & wait")).unwrap();
        let mut stubborn = process::spawn(&spec("trap '' TERM; sleep 1000 & wait")).unwrap();
        live.configure("polite", Signal::SIGTERM, Duration::from_secs(30));
        live.configure("stubborn", Signal::SIGTERM, Duration::from_millis(300));
        live.started(polite.pid, "polite");
        live.started(stubborn.pid, "stubborn");
        ignores_term(stubborn.pid).await;
        let reap = tokio::spawn(async move {
            let _ = polite.child.wait().await;
            let _ = stubborn.child.wait().await;
        });
        let start = Instant::now();
        assert_eq!(live.stop_all().await, 2);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(live.is_empty());
        reap.await.unwrap();
    }
}
