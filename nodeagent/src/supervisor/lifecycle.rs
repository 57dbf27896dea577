//! The slot lifecycle as pure transitions: an input (a command, an exit, a timer, a
//! spawn's result) and the time in, the new state and a list of effects out. It owns
//! the decisions to spawn, respawn (through [`policy`]), stop with SIGKILL escalation,
//! warm up and check health. It must not perform effects: no process calls, signals,
//! tasks, clocks or channels; the actor carries out what it returns.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protocol::reply::{ExitStatus, NoData, ProcessState};

use super::live::{later, KILL_GRACE};
use super::model::{AfterStop, Effect, Input, ReplyId, Slot, SpawnOrder, Supervisor, Timer};
use super::policy;
use super::waiters::{restart_budget, SlotWaiter};
use crate::config::{expand, Output, Rollout};
use crate::process::SpawnSpec;

/// How often a stopping group is checked once its leader is gone or SIGKILL was sent.
pub(super) const STOP_POLL: Duration = Duration::from_millis(20);

/// The most processes started in one turn of the actor; more wait for the next turn,
/// so that commands, snapshots (heartbeats, stats) and exits are served in between.
pub(super) const SPAWN_BATCH: usize = 25;

impl Supervisor {
    /// The transition: applies `input` at time `now` and returns the effects, in order.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Boot => self.boot(),
            Input::Command(command, reply) => self.command(command, reply),
            Input::RestartSlot { name, wid, reply } => self.restart_slot(&name, wid, reply),
            Input::Reload(watchers, sockets, reply) => self.reload(watchers, *sockets, reply),
            Input::Shutdown => self.begin_shutdown(),
            Input::Tick => {}
            Input::Spawned {
                name,
                wid,
                gen,
                pid,
                unix,
                respawn,
            } => self.on_spawned(&name, wid, gen, pid, unix, respawn),
            Input::SpawnFailed {
                name,
                wid,
                gen,
                reason,
                respawn,
            } => self.on_spawn_failed(&name, wid, gen, reason, respawn),
            Input::Exited {
                name,
                wid,
                gen,
                exit,
                group_alive,
            } => self.on_exit(&name, wid, gen, exit, group_alive),
            Input::Health { name, wid, gen, ok } => self.on_health(&name, wid, gen, ok),
            Input::StopCheck {
                name,
                wid,
                gen,
                group_alive,
            } => self.stop_check(&name, wid, gen, group_alive),
            Input::Timer(timer) => self.on_timer(timer),
        }
        self.advance_surges();
        self.check_waiters();
        std::mem::take(&mut self.out)
    }

    /// Starts the watchers that should run, by priority.
    fn boot(&mut self) {
        let mut order: Vec<(std::cmp::Reverse<i32>, String)> = self
            .watchers
            .iter()
            .map(|(n, w)| (std::cmp::Reverse(w.cfg.priority), n.clone()))
            .collect();
        order.sort();
        for (_, name) in order {
            self.ensure(&name);
        }
    }

    /// Stops every process; the actor ends once they are all gone.
    fn begin_shutdown(&mut self) {
        let names: Vec<String> = self.watchers.keys().cloned().collect();
        for name in names {
            if let Some(w) = self.watchers.get_mut(&name) {
                w.run = false;
                w.warmup_pending = false;
                w.restart_pending = false;
            }
            self.stop_all_slots(&name);
        }
        self.shutting_down = true;
    }

    // ----- watcher operations -----

    pub(super) fn start_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = true;
        // A fatal or exited slot gets a fresh start.
        w.slots
            .retain(|_, s| !matches!(s.state, ProcessState::Fatal | ProcessState::Exited));
        // A slot still stopping is not running: it starts afresh once its group is gone
        // (`ensure` skips it, as its number is taken until then).
        for s in w.slots.values_mut() {
            if s.state == ProcessState::Stopping && s.after_stop == AfterStop::Remove {
                s.after_stop = AfterStop::Start;
            }
        }
        self.emit(name, "start", None);
        self.ensure(name);
    }

    pub(super) fn stop_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = false;
        w.warmup_pending = false;
        w.restart_pending = false;
        self.emit(name, "stop", None);
        self.stop_all_slots(name);
    }

    pub(super) fn restart_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        if !w.run || w.slots.is_empty() {
            self.start_watcher(name);
            return;
        }
        w.restart_pending = true;
        w.warmup_pending = false;
        self.stop_all_slots(name);
        self.after_slot_change(name);
    }

    pub(super) fn remove_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = false;
        w.removing = true;
        w.restart_pending = false;
        w.warmup_pending = false;
        self.stop_all_slots(name);
        self.after_slot_change(name);
    }

    fn stop_all_slots(&mut self, name: &str) {
        let wids: Vec<u32> = match self.watchers.get(name) {
            Some(w) => w.slots.keys().rev().copied().collect(),
            None => return,
        };
        for wid in wids {
            self.stop_slot(name, wid, false);
        }
    }

    /// Brings the slots in line with `numprocesses` while the watcher should run:
    /// starts missing slots (one per `warmup_delay`), stops slots above the count.
    pub(super) fn ensure(&mut self, name: &str) {
        let Some(w) = self.watchers.get(name) else {
            return;
        };
        if !w.run || w.restart_pending || w.removing {
            return;
        }
        let n = w.cfg.numprocesses;
        let excess: Vec<u32> = w
            .slots
            .keys()
            .rev()
            .copied()
            .filter(|wid| *wid > n)
            .collect();
        let missing: Vec<u32> = (1..=n).filter(|wid| !w.slots.contains_key(wid)).collect();
        let warmup = w.cfg.warmup_delay;
        for wid in excess {
            self.stop_slot(name, wid, false);
        }
        let timer = Timer::Warmup {
            name: name.to_owned(),
        };
        for (i, wid) in missing.iter().enumerate() {
            let later = if i >= SPAWN_BATCH {
                // The rest at the next turn, after whatever else is waiting.
                Some(Effect::NextTurn(timer.clone()))
            } else if i > 0 && !warmup.is_zero() {
                Some(Effect::ArmTimer {
                    after: warmup,
                    timer: timer.clone(),
                })
            } else {
                None
            };
            let Some(w) = self.watchers.get_mut(name) else {
                return;
            };
            if let Some(effect) = later {
                w.warmup_pending = true;
                self.out.push(effect);
                return;
            }
            w.slots.insert(*wid, Slot::new(*wid));
            self.spawn_slot(name, *wid, false);
        }
        if let Some(w) = self.watchers.get_mut(name) {
            w.warmup_pending = false;
        }
    }

    /// Asks for a new process in an existing slot; its result comes back as
    /// [`Input::Spawned`] or [`Input::SpawnFailed`]. `respawn` says it after the spawn.
    fn spawn_slot(&mut self, name: &str, wid: u32, respawn: bool) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let Some((order, listen)) = self.spawn_order(name, wid, gen, respawn) else {
            return;
        };
        let Some(slot) = self
            .watchers
            .get_mut(name)
            .and_then(|w| w.slots.get_mut(&wid))
        else {
            return;
        };
        slot.gen = gen;
        slot.kill_at = None;
        slot.leader_gone = false;
        slot.after_stop = AfterStop::Remove;
        slot.uptime_reached = false;
        match listen {
            Ok(()) => self.out.push(Effect::Spawn(Box::new(order))),
            Err(reason) => self.on_spawn_failed(name, wid, gen, reason, respawn),
        }
    }

    /// The order to start generation `gen` of a slot, and whether its sockets can be
    /// passed (the reason when not).
    pub(super) fn spawn_order(
        &self,
        name: &str,
        wid: u32,
        gen: u64,
        respawn: bool,
    ) -> Option<(SpawnOrder, Result<(), String>)> {
        let node = self.limits.node.clone();
        let w = self.watchers.get(name)?;
        let cfg = &w.cfg;
        let listen = self.sockets.fds(&cfg.sockets);
        let expand = |s: &str, name: &str, wid: u32| {
            crate::sockets::expand(&expand(s, name, wid), &cfg.sockets)
        };
        let mut env: Vec<(String, String)> = vec![
            ("NODEAGENT_WID".into(), wid.to_string()),
            ("NODEAGENT_WATCHER".into(), name.to_owned()),
            ("NODEAGENT_NODE".into(), node),
        ];
        env.extend(
            cfg.env
                .iter()
                .map(|(k, v)| (k.clone(), expand(v, name, wid))),
        );
        let capture = cfg.stdout == Output::Capture || cfg.stderr == Output::Capture;
        let order = SpawnOrder {
            watcher: name.to_owned(),
            wid,
            gen,
            spec: SpawnSpec {
                cmd: expand(&cfg.cmd, name, wid),
                args: cfg.args.iter().map(|a| expand(a, name, wid)).collect(),
                env,
                clear_env: !cfg.copy_env,
                working_dir: cfg.working_dir.clone(),
                uid: cfg.uid_num,
                gid: cfg.gid_num,
                stdout: cfg.stdout.clone(),
                stderr: cfg.stderr.clone(),
                listen: listen.clone().unwrap_or_default(),
            },
            stop: (cfg.stop_signal, cfg.graceful_timeout),
            capture: capture.then_some((cfg.log_max_bytes, cfg.log_backups)),
            respawn,
        };
        Some((order, listen.map(|_| ())))
    }

    /// A process started: it is starting until `min_uptime` (and its health check).
    fn on_spawned(&mut self, name: &str, wid: u32, gen: u64, pid: u32, unix: f64, respawn: bool) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (min_uptime, health, health_timeout) = (
            w.cfg.min_uptime,
            w.cfg.health_cmd.clone(),
            w.cfg.health_timeout,
        );
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        slot.pid = Some(pid);
        slot.state = ProcessState::Starting;
        slot.started = Some((now, unix));
        slot.reason = None;
        slot.healthy = health.is_none();
        slot.health_failed = false;
        // Said of this process, which may be a replacement next to the slot's own.
        let said = slot.clone();
        self.emit(name, "spawn", Some(&said));
        let timer = Timer::UptimeReached {
            name: name.to_owned(),
            wid,
            gen,
        };
        self.timer(min_uptime, timer);
        if let Some(cmd) = health {
            let argv = cmd
                .iter()
                .map(|a| expand(a, name, wid).replace("$(pid)", &pid.to_string()))
                .collect();
            self.out.push(Effect::HealthCheck {
                watcher: name.to_owned(),
                wid,
                gen,
                argv,
                timeout: health_timeout,
            });
        }
        if respawn {
            self.emit_slot(name, wid, "respawn");
        }
    }

    /// A process could not start: the restart policy decides, as after an exit.
    fn on_spawn_failed(&mut self, name: &str, wid: u32, gen: u64, reason: String, respawn: bool) {
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        tracing::warn!(watcher = name, wid, "{reason}");
        slot.pid = None;
        slot.started = None;
        slot.reason = Some(reason.clone());
        if self.is_replacement(name, wid, gen) {
            return self.replacement_failed(name, wid, reason);
        }
        self.after_exit(name, wid, None);
        if respawn {
            self.emit_slot(name, wid, "respawn");
        }
    }

    fn on_health(&mut self, name: &str, wid: u32, gen: u64, ok: bool) {
        let Some(s) = self.slot_mut(name, wid, gen) else {
            return;
        };
        if ok {
            s.healthy = true;
            if s.state == ProcessState::Starting && s.uptime_reached {
                s.state = ProcessState::Running;
            }
        } else {
            s.health_failed = true;
            s.reason = Some("health check did not pass within health_timeout".into());
        }
    }

    /// Asks one slot's process, and its replacement if one is starting, to stop.
    /// `respawn` starts it again once stopped.
    pub(super) fn stop_slot(&mut self, name: &str, wid: u32, respawn: bool) {
        self.stop_replacement(name, wid);
        self.stop_process(name, wid, respawn);
    }

    /// Asks one slot's own process to stop (not its replacement).
    pub(super) fn stop_process(&mut self, name: &str, wid: u32, respawn: bool) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (sig, graceful) = (w.cfg.stop_signal, w.cfg.graceful_timeout);
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        slot.after_stop = if respawn {
            AfterStop::Respawn
        } else {
            AfterStop::Remove
        };
        if slot.state == ProcessState::Stopping {
            return;
        }
        slot.state = ProcessState::Stopping;
        let Some(pid) = slot.pid else {
            self.finish_stop(name, wid);
            return;
        };
        slot.kill_at = Some(later(now, graceful));
        let signal = if graceful.is_zero() {
            Signal::SIGKILL
        } else {
            sig
        };
        let gen = slot.gen;
        self.out.push(Effect::Signal {
            watcher: name.to_owned(),
            wid,
            pid,
            signal,
        });
        let timer = Timer::StopCheck {
            name: name.to_owned(),
            wid,
            gen,
            pid,
        };
        self.timer(graceful, timer);
    }

    /// A slot's process and its whole group are gone after a stop.
    pub(super) fn finish_stop(&mut self, name: &str, wid: u32) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let wanted = w.run && !w.restart_pending && !w.removing && wid <= w.cfg.numprocesses;
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        let ended = slot.pid.take();
        slot.kill_at = None;
        slot.leader_gone = false;
        if slot.replacement.is_some() {
            self.replacement_takes_over(name, wid);
            if let Some(pid) = ended {
                self.out.push(Effect::Ended { pid });
            }
            self.after_slot_change(name);
            return;
        }
        match (slot.after_stop, wanted) {
            (AfterStop::Respawn, true) => {
                slot.restarts += 1;
                slot.failures = 0;
            }
            (AfterStop::Start, true) => *slot = Slot::new(wid),
            (AfterStop::Remove, _) | (_, false) => {
                w.slots.remove(&wid);
            }
        }
        let respawn = w.slots.contains_key(&wid);
        if let Some(pid) = ended {
            self.out.push(Effect::Ended { pid });
        }
        if respawn {
            self.spawn_slot(name, wid, false);
        }
        self.after_slot_change(name);
    }

    /// After slots went away: a pending restart starts anew, a removed watcher goes.
    pub(super) fn after_slot_change(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let stopping = w.slots.values().any(|s| s.state == ProcessState::Stopping);
        if w.removing && w.slots.is_empty() {
            self.watchers.remove(name);
            self.out.push(Effect::ForgetOutput(name.to_owned()));
            self.emit(name, "rm", None);
            return;
        }
        if w.restart_pending && !stopping {
            w.restart_pending = false;
            // Slots still present are fatal or exited ones; they start afresh.
            w.slots.clear();
            self.ensure(name);
        }
    }

    /// Restarts one slot (a step of a rolling restart); replies once its new process is
    /// up, or could not come up.
    fn restart_slot(&mut self, name: &str, wid: u32, reply: ReplyId) {
        if self.shutting_down {
            return self.reply(reply, Err(super::gone()));
        }
        let w = match self.watcher(name) {
            Ok(w) => w,
            Err(e) => return self.reply(reply, Err(e)),
        };
        let timeout = restart_budget(&w.cfg);
        let Some(slot) = w.slots.get(&wid) else {
            return self.reply(reply, super::data(NoData {}));
        };
        let old_gen = slot.gen;
        let surge = matches!(w.cfg.rollout(), Rollout::Surge(_));
        if slot.replacement.is_some() {
            return self.reply(
                reply,
                Err(super::CmdError::new(
                    protocol::Errno::CommandFailed,
                    format!(
                        "process {wid} of '{name}' is already being replaced; wait for \
                         that restart to end"
                    ),
                )),
            );
        }
        let replace_first = surge && slot.alive() && slot.state != ProcessState::Stopping;
        let idle = slot.pid.is_none();
        // Waiting before anything starts: a replacement that fails at once says so here.
        self.slot_waiters.push(SlotWaiter {
            name: name.to_owned(),
            wid,
            old_gen,
            deadline: later(self.now, timeout),
            reply,
            failure: None,
        });
        if replace_first {
            self.start_replacement(name, wid);
        } else if idle {
            // Nothing runs in this slot: start it afresh.
            if let Some(w) = self.watchers.get_mut(name) {
                w.slots.insert(wid, Slot::new(wid));
            }
            self.spawn_slot(name, wid, false);
        } else {
            self.stop_slot(name, wid, true);
        }
    }

    // ----- timers and exits -----

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::RespawnDue { name, wid, gen } => {
                let Some(s) = self.slot_mut(&name, wid, gen) else {
                    return;
                };
                if s.state == ProcessState::Backoff {
                    s.restarts += 1;
                    self.spawn_slot(&name, wid, true);
                }
            }
            Timer::UptimeReached { name, wid, gen } => {
                if let Some(s) = self.slot_mut(&name, wid, gen) {
                    s.uptime_reached = true;
                    if s.state == ProcessState::Starting && s.healthy {
                        s.state = ProcessState::Running;
                    }
                }
            }
            // The actor turns it into `Input::StopCheck` with what it found.
            Timer::StopCheck { name, wid, gen, .. } => {
                self.stop_check(&name, wid, gen, true);
            }
            Timer::Warmup { name } => {
                if let Some(w) = self.watchers.get_mut(&name) {
                    w.warmup_pending = false;
                }
                self.ensure(&name);
            }
        }
    }

    /// A stopping slot's check: done once its group is gone; SIGKILL once
    /// `graceful_timeout` has passed; given up on [`KILL_GRACE`] after that.
    fn stop_check(&mut self, name: &str, wid: u32, gen: u64, group_alive: bool) {
        let now = self.now;
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        if slot.state != ProcessState::Stopping {
            return;
        }
        let Some(pid) = slot.pid else {
            return;
        };
        if !group_alive {
            if slot.leader_gone {
                self.finish(name, wid, gen);
            }
            return;
        }
        let kill_due = slot.kill_at.is_some_and(|t| now >= t);
        if slot.kill_at.is_some_and(|t| now >= later(t, KILL_GRACE)) {
            tracing::error!(
                watcher = name,
                wid,
                pid,
                "the process group survived SIGKILL for {KILL_GRACE:?} (uninterruptible \
                 sleep?); giving up on it"
            );
            self.finish(name, wid, gen);
            return;
        }
        if kill_due {
            if !slot.killed {
                tracing::info!(
                    watcher = name,
                    wid,
                    pid,
                    "graceful_timeout passed; sending SIGKILL to the process group"
                );
            }
            slot.killed = true;
        }
        let leader_gone = slot.leader_gone;
        if kill_due {
            self.out.push(Effect::Signal {
                watcher: name.to_owned(),
                wid,
                pid,
                signal: Signal::SIGKILL,
            });
        }
        if leader_gone || kill_due {
            let timer = Timer::StopCheck {
                name: name.to_owned(),
                wid,
                gen,
                pid,
            };
            self.timer(STOP_POLL, timer);
        }
    }

    /// A process's leader exited: a stop goes on until its group is gone; otherwise the
    /// rest of its group is killed and the restart policy decides.
    fn on_exit(&mut self, name: &str, wid: u32, gen: u64, exit: ExitStatus, group_alive: bool) {
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        slot.last_exit = Some(exit.clone());
        let pid = slot.pid;
        let stopping = slot.state == ProcessState::Stopping;
        if stopping {
            slot.leader_gone = true;
        }
        // Said with the pid of the process that ended.
        let mut said = slot.clone();
        said.leader_gone = false;
        self.emit(name, "exit", Some(&said));
        if stopping {
            match pid {
                Some(pid) if group_alive => {
                    let timer = Timer::StopCheck {
                        name: name.to_owned(),
                        wid,
                        gen,
                        pid,
                    };
                    self.timer(STOP_POLL, timer);
                }
                _ => self.finish(name, wid, gen),
            }
            return;
        }
        // The main process died on its own: whatever it left in its group goes too.
        if let Some(pid) = pid {
            self.out.push(Effect::Signal {
                watcher: name.to_owned(),
                wid,
                pid,
                signal: Signal::SIGKILL,
            });
            self.out.push(Effect::Ended { pid });
        }
        if let Some(slot) = self.slot_mut(name, wid, gen) {
            slot.pid = None;
        }
        if self.is_replacement(name, wid, gen) {
            return self.replacement_failed(name, wid, format!("exited ({exit})"));
        }
        self.after_exit(name, wid, Some(exit));
    }

    /// Applies the restart policy to a slot whose process ended (or never started).
    fn after_exit(&mut self, name: &str, wid: u32, exit: Option<ExitStatus>) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let rules = w.rules();
        let run = w.run && wid <= w.cfg.numprocesses;
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        if slot.replacement.is_some() {
            // The old process ended on its own during the overlap: its replacement,
            // already started, takes the slot.
            self.replacement_takes_over(name, wid);
            self.after_slot_change(name);
            return;
        }
        let uptime = slot
            .started
            .map(|(t, _)| now.saturating_duration_since(t))
            .unwrap_or_default();
        if !run {
            w.slots.remove(&wid);
            self.after_slot_change(name);
            return;
        }
        let (decision, failures) = policy::after_exit(&rules, exit.as_ref(), uptime, slot.failures);
        slot.failures = failures;
        match decision {
            policy::Decision::Respawn { delay } if delay.is_zero() => {
                slot.restarts += 1;
                self.spawn_slot(name, wid, true);
            }
            policy::Decision::Respawn { delay } => {
                slot.state = ProcessState::Backoff;
                let timer = Timer::RespawnDue {
                    name: name.to_owned(),
                    wid,
                    gen: slot.gen,
                };
                self.timer(delay, timer);
            }
            policy::Decision::Stay => slot.state = ProcessState::Exited,
            policy::Decision::Fatal { reason } => {
                tracing::warn!(watcher = name, wid, "{reason}");
                slot.state = ProcessState::Fatal;
                slot.reason = Some(reason);
                self.emit_slot(name, wid, "flapping");
            }
        }
    }
}
