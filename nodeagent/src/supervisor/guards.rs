//! Resource guards as pure transitions: `max_memory` (a process above it for
//! `max_memory_samples` readings in a row is restarted as a stop would stop it, with a
//! `max_memory` event) and `max_age` (a process that has run it, plus its share of
//! `max_age_variance`, is recycled: one process of a watcher at a time, only while every
//! other is up, through a surge replacement when the watcher restarts with surge). It
//! must not perform effects; readings come in as inputs, from the stats task.

use std::time::Duration;

use protocol::reply::ProcessState;

use super::model::{Effect, Supervisor, Timer};
use super::{LifecycleEvent, MemoryReading};
use crate::config::guards::format_size;
use crate::config::{format_duration, Rollout};

/// How early a `max_age` timer may be taken as due.
const AGE_TOLERANCE: Duration = Duration::from_millis(5);

/// A well-mixed 64-bit value of `x` (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Supervisor {
    /// The share of `variance` a process of generation `gen` waits on top of
    /// `max_age`: spread evenly over 0..variance by the generation and the agent's seed,
    /// so that processes started together are recycled apart.
    pub(super) fn age_jitter(&self, gen: u64, variance: Duration) -> Duration {
        if variance.is_zero() {
            return Duration::ZERO;
        }
        let fraction = (mix(self.seed ^ mix(gen)) >> 11) as f64 / (1u64 << 53) as f64;
        variance.mul_f64(fraction)
    }

    /// Arms the `max_age` timer of a process that just started.
    pub(super) fn arm_max_age(&mut self, name: &str, wid: u32, gen: u64) {
        self.arm_max_age_after(name, wid, gen, Duration::ZERO);
    }

    /// Arms the `max_age` timer of a process that has run `ran` already (one adopted
    /// across an upgrade): its age counts from its start, not from now.
    pub(super) fn arm_max_age_after(&mut self, name: &str, wid: u32, gen: u64, ran: Duration) {
        let Some(w) = self.watchers.get(name) else {
            return;
        };
        let Some(age) = w.cfg.max_age else {
            return;
        };
        let after = age
            .saturating_add(self.age_jitter(gen, w.cfg.max_age_variance))
            .saturating_sub(ran);
        let timer = Timer::MaxAge {
            name: name.to_owned(),
            wid,
            gen,
        };
        self.timer(after, timer);
    }

    /// `max_age` changed: each running process gets a timer by the new value, counted
    /// from its start (a timer armed before finds another deadline and is ignored).
    pub(super) fn rearm_max_age(&mut self, name: &str) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let Some(age) = w.cfg.max_age else {
            for s in w.slots.values_mut() {
                s.age_due = false;
            }
            return;
        };
        let variance = w.cfg.max_age_variance;
        let running: Vec<(u32, u64, Duration)> = w
            .slots
            .values()
            .filter(|s| s.alive())
            .map(|s| {
                let ran = s
                    .started
                    .map(|(t, _)| now.saturating_duration_since(t))
                    .unwrap_or_default();
                (s.wid, s.gen, ran)
            })
            .collect();
        for (wid, gen, ran) in running {
            let due = age.saturating_add(self.age_jitter(gen, variance));
            let timer = Timer::MaxAge {
                name: name.to_owned(),
                wid,
                gen,
            };
            self.timer(due.saturating_sub(ran), timer);
        }
    }

    /// A process has run its `max_age`: it is due for recycling.
    /// A timer armed by an older `max_age` (changed since) is ignored, as the process
    /// has not run the current one yet.
    pub(super) fn age_reached(&mut self, name: &str, wid: u32, gen: u64) {
        let now = self.now;
        let due = self.watchers.get(name).and_then(|w| {
            let age = w.cfg.max_age?;
            Some(age.saturating_add(self.age_jitter(gen, w.cfg.max_age_variance)))
        });
        let Some(due) = due else {
            return;
        };
        if let Some(s) = self.slot_mut(name, wid, gen) {
            let ran = s
                .started
                .map(|(t, _)| now.saturating_duration_since(t))
                .unwrap_or_default();
            if s.alive() && ran.saturating_add(AGE_TOLERANCE) >= due {
                s.age_due = true;
            }
        }
    }

    /// Each turn: recycles one due process of each watcher with `max_age` whose
    /// processes are all up (each of its slots holds a process that is ready, none is
    /// stopping or being replaced), so that a watcher never recycles two at once and
    /// each replacement is up before the next recycle begins.
    pub(super) fn advance_recycles(&mut self) {
        let mut due = Vec::new();
        for (name, w) in &self.watchers {
            if w.cfg.max_age.is_none()
                || !w.all_ready()
                || w.slots.len() as u32 != w.cfg.command.numprocesses
            {
                continue;
            }
            let busy = w
                .slots
                .values()
                .any(|s| s.replacement.is_some() || s.state == ProcessState::Stopping);
            if busy {
                continue;
            }
            if let Some(s) = w.slots.values().find(|s| s.age_due) {
                due.push((name.clone(), s.wid));
            }
        }
        for (name, wid) in due {
            self.recycle(&name, wid);
        }
    }

    /// Recycles the process of slot `wid`: with surge, its replacement starts first;
    /// otherwise it stops and starts again.
    fn recycle(&mut self, name: &str, wid: u32) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (age, surge) = (
            w.cfg.max_age.unwrap_or_default(),
            matches!(w.cfg.rollout(), Rollout::Surge(_)),
        );
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        slot.age_due = false;
        let ran = slot
            .started
            .map(|(t, _)| self.now.saturating_duration_since(t))
            .unwrap_or_default();
        let reason = format!(
            "ran {} (max_age {}); recycling it{}",
            format_duration(Duration::from_secs(ran.as_secs())),
            format_duration(age),
            if surge { ", its replacement first" } else { "" }
        );
        tracing::info!(watcher = name, wid, "{reason}");
        let pid = slot.pid;
        self.out.push(Effect::Emit(LifecycleEvent {
            watcher: name.to_owned(),
            kind: "max_age",
            wid: Some(wid),
            pid,
            reason: Some(reason),
            ..Default::default()
        }));
        if surge {
            self.start_replacement(name, wid);
        } else {
            self.stop_process(name, wid, true);
        }
    }

    /// Memory readings: a slot's own process above its watcher's `max_memory` for
    /// `max_memory_samples` readings in a row is restarted (its watcher's stop signal,
    /// then SIGKILL after `graceful_timeout`), with a `max_memory` event. A reading at or
    /// below the limit starts the count again; readings of other processes (an older
    /// pid, a replacement, one stopping) change nothing.
    pub(super) fn on_memory(&mut self, readings: Vec<MemoryReading>) {
        for r in readings {
            let Some(w) = self.watchers.get_mut(&r.watcher) else {
                continue;
            };
            let (Some(limit), samples) = (w.cfg.max_memory, w.cfg.max_memory_samples) else {
                continue;
            };
            let Some(slot) = w.slots.get_mut(&r.wid) else {
                continue;
            };
            if slot.pid != Some(r.pid) || !slot.alive() || slot.state == ProcessState::Stopping {
                continue;
            }
            if r.rss_bytes <= limit {
                slot.mem_over = 0;
                continue;
            }
            slot.mem_over = slot.mem_over.saturating_add(1);
            if slot.mem_over < samples {
                continue;
            }
            slot.mem_over = 0;
            let reason = format!(
                "resident memory {:.1}MiB above max_memory = {} for {samples} reading{} in a \
                 row; restarting it",
                r.rss_bytes as f64 / f64::from(1u32 << 20),
                format_size(limit),
                if samples == 1 { "" } else { "s" }
            );
            tracing::warn!(watcher = r.watcher, wid = r.wid, pid = r.pid, "{reason}");
            self.out.push(Effect::Emit(LifecycleEvent {
                watcher: r.watcher.clone(),
                kind: "max_memory",
                wid: Some(r.wid),
                pid: Some(r.pid),
                reason: Some(reason),
                rss_bytes: Some(r.rss_bytes),
                max_memory: Some(limit),
                ..Default::default()
            }));
            self.stop_process(&r.watcher, r.wid, true);
        }
    }
}
