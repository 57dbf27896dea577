//! Across the agent's own exec (hot upgrade): what the supervisor hands over before it
//! (its processes, frozen), and how the next image's supervisor adopts them (same pids,
//! wids and restart counters), as pure transitions over the model. The actor carries
//! out the effects: waiting on each adopted pid and capturing its inherited pipes.

use std::os::fd::OwnedFd;
use std::time::Duration;

use protocol::reply::ProcessState;

use super::model::{Effect, Slot, Stage, Supervisor, Timer};
use crate::config::Probe;

/// A process the agent's previous image ran, checked to be this process's child.
#[derive(Debug)]
pub struct Adopted {
    pub process: HandedProcess,
    /// The read ends of its captured stdout and stderr.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// One live process, as the supervisor hands it over before the agent's exec, and as the
/// next image's supervisor takes it back.
#[derive(Debug, Clone, PartialEq)]
pub struct HandedProcess {
    pub watcher: String,
    pub wid: u32,
    pub pid: u32,
    pub restarts: u32,
    /// Unix time it started.
    pub started_at: f64,
    /// It was ready (its readiness check passed, min_uptime reached).
    pub ready: bool,
}

/// A captured pipe the output sink hands over: whose, which stream, which fd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedPipe {
    pub watcher: String,
    pub wid: u32,
    pub stdout: bool,
    pub fd: std::os::fd::RawFd,
}

/// The supervisor, frozen for the exec: it acts on nothing until `resume` is sent or
/// dropped (the exec failed), and an exec ends it.
#[derive(Debug)]
pub struct Frozen {
    pub processes: Vec<HandedProcess>,
    /// The captured pipes, close-on-exec cleared; `None` when the output sink could not
    /// stop reading in time.
    pub pipes: Option<Vec<HandedPipe>>,
    /// The node's listening sockets.
    pub sockets: crate::sockets::SocketSet,
    pub resume: tokio::sync::oneshot::Sender<()>,
}

/// The longest age taken from a handed-over start time (a bad clock is not a reason to
/// overflow an `Instant`).
const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Supervisor {
    /// The live processes, for the hand-over: each slot's process and a replacement
    /// running next to it.
    pub(super) fn handed_processes(&self) -> Vec<HandedProcess> {
        let mut out = Vec::new();
        for (name, w) in &self.watchers {
            for s in w.slots.values().flat_map(Slot::processes) {
                let Some(pid) = s.pid.filter(|_| s.alive()) else {
                    continue;
                };
                out.push(HandedProcess {
                    watcher: name.clone(),
                    wid: s.wid,
                    pid,
                    restarts: s.restarts,
                    started_at: s.started.map(|(_, t)| t).unwrap_or_default(),
                    ready: s.is_ready(),
                });
            }
        }
        out
    }

    /// Takes the processes of the agent's previous image into their slots, before the
    /// watchers start (`Input::Boot` then fills only the missing slots and stops the
    /// excess ones). Returns the ones no watcher or slot takes (gone from the config,
    /// or a second process for one slot): the actor stops them.
    ///
    /// Each adopted process is starting until the rest of its `min_uptime` has passed;
    /// one that was ready stays healthy, one that was not is probed again (a notify
    /// process, which will not say READY=1 twice, is taken as ready). Its `max_age`
    /// timer is armed for the rest of its age. No hook runs: it was not spawned, and
    /// its watcher (which `Input::Boot` then finds with processes) was started already.
    pub(super) fn adopt(&mut self, list: Vec<HandedProcess>, unix_now: f64) -> Vec<HandedProcess> {
        let mut refused = Vec::new();
        for a in list {
            let Some(w) = self.watchers.get(&a.watcher) else {
                refused.push(a);
                continue;
            };
            if w.slots.contains_key(&a.wid) || a.wid == 0 {
                refused.push(a);
                continue;
            }
            let (min_uptime, ready, stop, run) = (
                w.cfg.lifecycle.min_uptime,
                w.cfg.ready.clone(),
                (
                    w.cfg.lifecycle.stop_signal,
                    w.cfg.lifecycle.graceful_timeout,
                ),
                w.run,
            );
            let age = Duration::try_from_secs_f64((unix_now - a.started_at).max(0.0))
                .unwrap_or(MAX_AGE)
                .min(MAX_AGE);
            let gen = self.next_gen;
            self.next_gen += 1;
            let mut slot = Slot::new(a.wid);
            slot.gen = gen;
            slot.pid = Some(a.pid);
            slot.state = ProcessState::Starting;
            slot.restarts = a.restarts;
            slot.started = Some((self.now.checked_sub(age).unwrap_or(self.now), a.started_at));
            let notify = ready.as_ref().is_some_and(|r| r.probe == Probe::Notify);
            slot.healthy = ready.is_none() || a.ready || notify;
            let name = a.watcher.clone();
            let wid = a.wid;
            if let Some(w) = self.watchers.get_mut(&name) {
                w.slots.insert(wid, slot);
            }
            self.out.push(Effect::Watch {
                watcher: name.clone(),
                wid,
                gen,
                pid: a.pid,
                stop,
            });
            let timer = Timer::UptimeReached {
                name: name.clone(),
                wid,
                gen,
            };
            self.timer(min_uptime.saturating_sub(age), timer);
            // Its `max_age` counts from its start, before the upgrade; `max_memory`
            // covers it as any slot's process (readings go by slot and pid).
            self.arm_max_age_after(&name, wid, gen, age);
            if let Some(ready) = ready.filter(|_| !a.ready && !notify) {
                let deadline = Timer::ReadyDeadline {
                    name: name.clone(),
                    wid,
                    gen,
                };
                self.timer(ready.timeout.saturating_sub(age), deadline);
                let probe = Timer::Probe {
                    name: name.clone(),
                    wid,
                    gen,
                    stage: Stage::Ready,
                };
                self.timer(Duration::ZERO, probe);
            }
            if !run {
                self.stop_slot(&name, wid, false);
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::model::{Limits, Watcher};
    use super::*;
    use crate::config::WatcherConfig;

    fn sup() -> Supervisor {
        let mut s = Supervisor::new(
            Limits {
                node: "n".into(),
                allow_remote_exec: false,
                max_processes: 100,
            },
            Instant::now(),
        );
        let options = protocol::WatcherOptions {
            cmd: Some("sleep".into()),
            ..Default::default()
        };
        let mut cfg = WatcherConfig::from_options("w", &options).unwrap();
        cfg.command.numprocesses = 2;
        s.watchers.insert("w".into(), Watcher::new(cfg, true));
        s
    }

    fn slot(watcher: &str, wid: u32, pid: u32) -> HandedProcess {
        HandedProcess {
            watcher: watcher.into(),
            wid,
            pid,
            restarts: 4,
            started_at: 1000.0,
            ready: true,
        }
    }

    #[test]
    fn adopts_into_slots_and_refuses_strangers_and_doubles() {
        let mut s = sup();
        let refused = s.adopt(
            vec![
                slot("w", 1, 100),
                slot("w", 1, 101),
                slot("gone", 1, 102),
                slot("w", 0, 103),
            ],
            1010.0,
        );
        let pids: Vec<u32> = refused.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [101, 102, 103]);
        let w = &s.watchers["w"];
        let adopted = &w.slots[&1];
        assert_eq!((adopted.pid, adopted.restarts), (Some(100), 4));
        assert!(adopted.healthy);
        let watches = s
            .out
            .iter()
            .filter(|e| matches!(e, Effect::Watch { pid: 100, .. }))
            .count();
        assert_eq!(watches, 1);
        // The process ran 10s, past min_uptime: it is up at once.
        assert!(s.out.iter().any(|e| matches!(
            e,
            Effect::ArmTimer { after, timer: Timer::UptimeReached { .. } } if after.is_zero()
        )));
        assert_eq!(s.handed_processes().len(), 1);
    }

    #[test]
    fn a_stopped_watchers_process_is_stopped() {
        let mut s = sup();
        if let Some(w) = s.watchers.get_mut("w") {
            w.run = false;
        }
        s.adopt(vec![slot("w", 2, 200)], 1010.0);
        assert!(s
            .out
            .iter()
            .any(|e| matches!(e, Effect::Signal { pid: 200, .. })));
    }

    /// An adopted process's `max_age` counts from its start before the upgrade: the
    /// timer is armed for the rest of it.
    #[test]
    fn an_adopted_process_keeps_its_age() {
        let mut s = sup();
        if let Some(w) = s.watchers.get_mut("w") {
            w.cfg.max_age = Some(Duration::from_secs(60));
        }
        s.adopt(vec![slot("w", 1, 100)], 1010.0);
        let armed: Vec<Duration> = s
            .out
            .iter()
            .filter_map(|e| match e {
                Effect::ArmTimer {
                    after,
                    timer: Timer::MaxAge { wid: 1, .. },
                } => Some(*after),
                _ => None,
            })
            .collect();
        assert_eq!(armed, [Duration::from_secs(50)]);
    }

    /// The boot after an upgrade neither holds a watcher with adopted processes for
    /// its `before_start` hook nor runs its `after_start`: it was started before; its
    /// missing process starts (with its spawn hooks, a new process).
    #[test]
    fn the_boot_after_an_upgrade_runs_no_start_hooks_for_adopted_watchers() {
        use crate::config::guards::{HookConfig, HookKind};
        let mut s = sup();
        if let Some(w) = s.watchers.get_mut("w") {
            for kind in [HookKind::BeforeStart, HookKind::AfterStart] {
                let hook = HookConfig {
                    argv: vec!["true".into()],
                    timeout: Duration::from_secs(5),
                };
                w.cfg.hooks.insert(kind, hook);
            }
        }
        s.adopt(vec![slot("w", 1, 100)], 1010.0);
        let now = s.now;
        let out = s.step(super::super::model::Input::Boot, now);
        assert!(!out.iter().any(|e| matches!(e, Effect::Hook(_))), "{out:?}");
        assert!(!s.watchers["w"].after_start_due);
        assert!(
            out.iter()
                .any(|e| matches!(e, Effect::Spawn(o) if o.wid == 2)),
            "{out:?}"
        );
    }
}
