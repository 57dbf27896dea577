//! The waits of commands: a `--waiting` command answers once its watchers have settled
//! (and, for watchers with a `ready` check, their processes are ready), a restart of
//! one slot once its new process is up; each has a bounded deadline. It
//! owns when a wait is over and what it answers; it must not perform effects (its
//! answers are [`Effect::Reply`](super::model::Effect::Reply)s).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use protocol::reply::{ActionData, NoData, ProcessState};
use protocol::Errno;

use super::live::{later, KILL_GRACE};
use super::model::{ReplyId, Supervisor};
use super::{data, CmdError, Outcome};
use crate::config::WatcherConfig;

/// What a wait for watchers to settle allows on top of stopping and warming up.
pub(super) const SETTLE_MARGIN: Duration = Duration::from_secs(60);

/// The longest any wait of a command lasts.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A command waiting for watchers to settle (or go, for rm).
#[derive(Debug)]
pub(super) struct Waiter {
    pub names: Vec<String>,
    /// When it answers with an error if the watchers have not settled by then.
    pub deadline: Instant,
    pub reply: ReplyId,
    /// Whether it also waits for readiness: then processes of this generation and
    /// later were started for the command, and one of them that is not ready in time
    /// fails the wait.
    pub since_gen: Option<u64>,
}

/// A restart of one slot waiting for its new process to be up.
#[derive(Debug)]
pub(super) struct SlotWaiter {
    pub name: String,
    pub wid: u32,
    /// The slot's generation when the restart began; a newer one is the new process.
    pub old_gen: u64,
    pub deadline: Instant,
    pub reply: ReplyId,
    /// Why its replacement could not take over (a restart with surge), once known.
    pub failure: Option<String>,
}

/// The longest a watcher may take to settle after a command: stopping (its graceful
/// timeout, then the SIGKILL grace), then starting every process (`warmup_delay`
/// apart), and with a `ready` check `min_uptime` and `ready.timeout`, plus a margin
/// for spawning; at most [`MAX_WAIT`].
pub(super) fn settle_budget(cfg: &WatcherConfig) -> Duration {
    let l = &cfg.lifecycle;
    let ready = cfg
        .ready
        .as_ref()
        .map_or(Duration::ZERO, |r| r.timeout.saturating_add(l.min_uptime));
    l.graceful_timeout
        .saturating_add(KILL_GRACE)
        .saturating_add(l.warmup_delay.saturating_mul(cfg.command.numprocesses))
        .saturating_add(ready)
        .saturating_add(SETTLE_MARGIN)
        .min(MAX_WAIT)
}

/// What a watcher related by `depends_on` adds to a wait: its stop (a dependency stops
/// only after it), or its start and the time its processes take to be up (a dependent
/// starts only after): `min_uptime`, and `ready.timeout` with a `ready` check.
pub(super) fn dependency_budget(cfg: &WatcherConfig) -> Duration {
    let l = &cfg.lifecycle;
    let ready = cfg.ready.as_ref().map_or(Duration::ZERO, |r| r.timeout);
    l.graceful_timeout
        .saturating_add(KILL_GRACE)
        .saturating_add(l.warmup_delay.saturating_mul(cfg.command.numprocesses))
        .saturating_add(l.min_uptime)
        .saturating_add(ready)
}

/// The longest a replacement may take to be up in a restart with surge: `min_uptime`
/// and the readiness check (`ready.timeout`, 30s without one), plus a margin.
pub(super) fn surge_budget(cfg: &WatcherConfig) -> Duration {
    let ready = cfg
        .ready
        .as_ref()
        .map_or(crate::config::READY_TIMEOUT, |r| r.timeout);
    cfg.lifecycle
        .min_uptime
        .saturating_add(ready)
        .saturating_add(Duration::from_secs(5))
        .min(MAX_WAIT)
}

/// The longest the restart of one slot may take: stopping, then `min_uptime` and the
/// readiness check of the new process (`ready.timeout`, 30s without one), plus a
/// margin; at most [`MAX_WAIT`].
pub(super) fn restart_budget(cfg: &WatcherConfig) -> Duration {
    let ready = cfg
        .ready
        .as_ref()
        .map_or(crate::config::READY_TIMEOUT, |r| r.timeout);
    let l = &cfg.lifecycle;
    l.graceful_timeout
        .saturating_add(KILL_GRACE)
        .saturating_add(l.min_uptime)
        .saturating_add(ready)
        .saturating_add(Duration::from_secs(5))
        .min(MAX_WAIT)
}

impl Supervisor {
    /// The earliest deadline of a wait: the actor wakes then even if nothing happens.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slot_waiters
            .iter()
            .map(|w| w.deadline)
            .chain(self.waiters.iter().map(|w| w.deadline))
            .chain(self.next_surge_deadline())
            .min()
    }

    /// Replies once `names` have settled, or with an error at their deadline.
    /// With `since_gen` (the first generation the command may have started), it also
    /// waits for the processes of watchers with a `ready` check to be ready.
    pub(super) fn wait_settled(
        &mut self,
        names: Vec<String>,
        reply: ReplyId,
        since_gen: Option<u64>,
    ) {
        // A watcher waits for the watchers it depends on to be up before it starts, and
        // for those that depend on it to stop before it stops.
        let related = self.related_budgets();
        let budget = names
            .iter()
            .filter_map(|n| self.watchers.get(n))
            .map(|w| {
                let more = related.get(&w.cfg.name).copied().unwrap_or_default();
                settle_budget(&w.cfg).saturating_add(more).min(MAX_WAIT)
            })
            .max()
            .unwrap_or(SETTLE_MARGIN);
        self.waiters.push(Waiter {
            names,
            deadline: later(self.now, budget),
            reply,
            since_gen,
        });
    }

    /// For each watcher related to others by `depends_on`, what the others of its
    /// group (the watchers it depends on, or that depend on it, directly or not) add to
    /// its waits: the sum of their [`dependency_budget`]s. Linear in the watchers and
    /// their dependencies.
    fn related_budgets(&self) -> BTreeMap<String, Duration> {
        let graph = self.graph();
        if graph.values().all(Vec::is_empty) {
            return BTreeMap::new();
        }
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (w, deps) in &graph {
            for d in deps.iter().filter(|d| graph.contains_key(*d)) {
                next.entry(w.as_str()).or_default().push(d.as_str());
                next.entry(d.as_str()).or_default().push(w.as_str());
            }
        }
        let cost = |n: &str| {
            self.watchers
                .get(n)
                .map_or(Duration::ZERO, |w| dependency_budget(&w.cfg))
        };
        let mut out = BTreeMap::new();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for start in next.keys() {
            if !seen.insert(start) {
                continue;
            }
            let mut group = vec![*start];
            let mut todo = vec![*start];
            while let Some(n) = todo.pop() {
                for m in next.get(n).into_iter().flatten() {
                    if seen.insert(m) {
                        group.push(m);
                        todo.push(m);
                    }
                }
            }
            let total = group
                .iter()
                .fold(Duration::ZERO, |t, n| t.saturating_add(cost(n)));
            for n in group {
                out.insert(n.to_owned(), total.saturating_sub(cost(n)));
            }
        }
        out
    }

    /// Answers every wait that is over.
    pub(super) fn check_waiters(&mut self) {
        for w in std::mem::take(&mut self.waiters) {
            match self.settled_outcome(&w) {
                Some(outcome) => self.reply(w.reply, outcome),
                None => self.waiters.push(w),
            }
        }
        for w in std::mem::take(&mut self.slot_waiters) {
            match self.slot_outcome(&w) {
                Some(outcome) => self.reply(w.reply, outcome.and_then(|()| data(NoData {}))),
                None => self.slot_waiters.push(w),
            }
        }
    }

    fn settled_outcome(&self, w: &Waiter) -> Option<Outcome> {
        let not_ready = w.names.iter().find_map(|n| {
            let since_gen = w.since_gen?;
            let watcher = self.watchers.get(n)?;
            watcher.slots.values().find_map(|s| match &s.not_ready {
                Some((gen, why)) if *gen >= since_gen => Some(format!(
                    "process {} of '{n}' did not come up: {why}; it is restarted as its \
                     restart policy says, and `ctl list {n}` shows how it goes",
                    s.wid
                )),
                _ => None,
            })
        });
        if let Some(why) = not_ready {
            return Some(Err(CmdError::new(Errno::CommandFailed, why)));
        }
        let done = w.names.iter().all(|n| {
            self.watchers
                .get(n)
                .is_none_or(|x| x.settled() && (w.since_gen.is_none() || x.waited_up()))
        });
        if done {
            return Some(data(ActionData {
                statuses: self.statuses(&w.names),
                pids: None,
            }));
        }
        if self.now < w.deadline {
            return None;
        }
        let states: Vec<String> = self
            .statuses(&w.names)
            .iter()
            .map(|(n, st)| format!("'{n}' is {st}"))
            .collect();
        Some(Err(CmdError::new(
            Errno::CommandFailed,
            format!(
                "gave up waiting: {} did not settle in time; `ctl status` shows \
                 where they are",
                states.join(", ")
            ),
        )))
    }

    fn slot_outcome(&self, sw: &SlotWaiter) -> Option<Result<(), CmdError>> {
        let failed = |what: String| Some(Err(CmdError::new(Errno::CommandFailed, what)));
        let who = format!("process {} of '{}'", sw.wid, sw.name);
        let Some(s) = self.slot_at(&sw.name, sw.wid) else {
            return failed(format!("{who} went away during the restart"));
        };
        if let Some(why) = &sw.failure {
            return failed(format!("{who} was not replaced: {why}"));
        }
        let new = s.gen > sw.old_gen;
        let down = matches!(
            s.state,
            ProcessState::Fatal | ProcessState::Backoff | ProcessState::Exited
        );
        if new && s.is_ready() {
            Some(Ok(()))
        } else if new && (s.health_failed || down) {
            let why = s
                .reason
                .clone()
                .or_else(|| s.last_exit.as_ref().map(|e| e.to_string()))
                .unwrap_or_else(|| "it exited".into());
            failed(format!("{who} did not come back up: {why}"))
        } else if self.now >= sw.deadline {
            let why = s
                .reason
                .clone()
                .unwrap_or_else(|| format!("state {}", s.state));
            failed(format!("{who} was not up in time ({why})"))
        } else {
            None
        }
    }
}
