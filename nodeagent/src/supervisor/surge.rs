//! Restarts with surge as pure transitions: a slot's replacement starts next to its
//! process (same wid, newer generation, held in [`Slot::replacement`]); once the
//! replacement is up ([`Slot::is_ready`], the one predicate of readiness), the old
//! process stops, and when it is gone the replacement takes the slot. A replacement that exits, cannot start, or is not up by its deadline is
//! dropped and the old process keeps running. It must not perform effects.

use protocol::reply::ProcessState;

use super::live::later;
use super::model::{AfterStop, Effect, Slot, Supervisor};
use super::waiters::surge_budget;

impl Supervisor {
    /// Starts a replacement next to the process of slot `wid`.
    pub(super) fn start_replacement(&mut self, name: &str, wid: u32) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let Some((order, listen)) = self.spawn_order(name, wid, gen, false) else {
            return;
        };
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let up_by = later(now, surge_budget(&w.cfg));
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        let mut new = Slot::new(wid);
        new.gen = gen;
        new.state = ProcessState::Starting;
        new.restarts = slot.restarts;
        new.up_by = Some(up_by);
        slot.replacement = Some(Box::new(new));
        match listen {
            Ok(()) => self.launch(order),
            Err(reason) => self.replacement_failed(name, wid, reason),
        }
    }

    /// Asks a slot's replacement to stop, unless it is stopping already.
    pub(super) fn stop_replacement(&mut self, name: &str, wid: u32) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (sig, graceful) = (
            w.cfg.lifecycle.stop_signal,
            w.cfg.lifecycle.graceful_timeout,
        );
        let Some(r) = w
            .slots
            .get_mut(&wid)
            .and_then(|s| s.replacement.as_deref_mut())
        else {
            return;
        };
        if r.state == ProcessState::Stopping {
            return;
        }
        r.state = ProcessState::Stopping;
        r.after_stop = AfterStop::Remove;
        r.up_by = None;
        let Some(pid) = r.pid else {
            return self.drop_replacement(name, wid);
        };
        r.kill_at = Some(later(now, graceful));
        let gen = r.gen;
        self.signal_stop(name, wid, gen, pid, sig, graceful);
    }

    /// A stopped process of generation `gen` is gone, with its whole group.
    pub(super) fn finish(&mut self, name: &str, wid: u32, gen: u64) {
        if self.is_replacement(name, wid, gen) {
            self.drop_replacement(name, wid);
        } else {
            self.finish_stop(name, wid);
        }
    }

    /// A slot's replacement is gone (stopped, or it never started).
    fn drop_replacement(&mut self, name: &str, wid: u32) {
        let Some(r) = self
            .slot_at_mut(name, wid)
            .and_then(|s| s.replacement.take())
        else {
            return;
        };
        if let Some(pid) = r.pid {
            self.out.push(Effect::Ended { pid });
        }
        self.after_slot_change(name);
    }

    /// A replacement exited or could not start before it was up: it goes, the old
    /// process keeps running, and the restart waiting on it fails saying why.
    pub(super) fn replacement_failed(&mut self, name: &str, wid: u32, why: String) {
        let then = self.old_process_fate(name, wid);
        tracing::warn!(watcher = name, wid, "its replacement {why}; {then}");
        self.fail_restart(name, wid, format!("its replacement {why}; {then}"));
        self.drop_replacement(name, wid);
    }

    /// What becomes of a slot's own process when its replacement fails, in words.
    pub(super) fn old_process_fate(&self, name: &str, wid: u32) -> &'static str {
        let old_stopping = self
            .slot_at(name, wid)
            .is_some_and(|s| s.state == ProcessState::Stopping);
        if old_stopping {
            "the old process was stopping already; the slot starts afresh"
        } else {
            "the old process keeps running"
        }
    }

    /// The slot's own process is gone: its replacement takes the slot, counted as a
    /// restart when it was taking over (not when it was stopping too).
    pub(super) fn replacement_takes_over(&mut self, name: &str, wid: u32) {
        let Some(slot) = self.slot_at_mut(name, wid) else {
            return;
        };
        let Some(mut r) = slot.replacement.take() else {
            return;
        };
        if r.state == ProcessState::Stopping {
            if slot.after_stop == AfterStop::Start {
                r.after_stop = AfterStop::Start;
            }
        } else {
            r.restarts = slot.restarts.saturating_add(1);
        }
        r.up_by = None;
        *slot = *r;
    }

    /// Each turn: a replacement that is up has its old process stopped; one that is
    /// not up by its deadline is stopped, and the old process keeps running.
    pub(super) fn advance_surges(&mut self) {
        let now = self.now;
        let mut up_now = Vec::new();
        let mut late = Vec::new();
        for (name, w) in &self.watchers {
            for slot in w.slots.values() {
                let Some(r) = slot.replacement.as_deref() else {
                    continue;
                };
                if r.is_ready() && slot.state != ProcessState::Stopping {
                    up_now.push((name.clone(), slot.wid));
                } else if r.is_ready() || r.state == ProcessState::Stopping {
                    continue;
                } else if r.health_failed {
                    let why = r.reason.as_deref().unwrap_or("its ready check failed");
                    late.push((name.clone(), slot.wid, format!("failed: {why}")));
                } else if r.up_by.is_some_and(|t| now >= t) {
                    let why = format!("was not up in time (still {})", r.state);
                    late.push((name.clone(), slot.wid, why));
                }
            }
        }
        for (name, wid) in up_now {
            // Should the replacement go before the old process is gone, the slot
            // starts afresh.
            self.stop_process(&name, wid, true);
        }
        for (name, wid, why) in late {
            let why = format!("its replacement {why}; the old process keeps running");
            tracing::warn!(watcher = name, wid, "{why}");
            self.fail_restart(&name, wid, why);
            self.stop_replacement(&name, wid);
        }
    }

    /// Marks the restart waiting on slot `wid` as failed.
    pub(super) fn fail_restart(&mut self, name: &str, wid: u32, why: String) {
        for sw in &mut self.slot_waiters {
            if sw.name == name && sw.wid == wid && sw.failure.is_none() {
                sw.failure = Some(why.clone());
            }
        }
    }

    /// The earliest deadline of a replacement: the actor wakes then.
    pub(super) fn next_surge_deadline(&self) -> Option<std::time::Instant> {
        self.watchers
            .values()
            .flat_map(|w| w.slots.values())
            .filter_map(|s| s.replacement.as_deref()?.up_by)
            .min()
    }
}
