//! The slot lifecycle as pure transitions: an input (a command, an exit, a timer, a
//! spawn's or a probe's result) and the time in, the new state and a list of effects
//! out. It owns the decisions to spawn, respawn (through [`policy`]), stop with SIGKILL
//! escalation, warm up, and check readiness and liveness (which probe when, and what a
//! result or a deadline does). It must not perform effects: no process calls, signals,
//! probes, tasks, clocks or channels; the actor carries out what it returns.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protocol::reply::{ExitStatus, NoData, ProcessState};

use super::hooks::{About, GateOp};
use super::live::{later, KILL_GRACE};
use super::model::{AfterStop, Effect, Input, ReplyId, Slot, SpawnOrder, Stage, Supervisor, Timer};
use super::policy;
use super::waiters::{restart_budget, SlotWaiter};
use crate::config::deps::{start_order, stop_order};
use crate::config::guards::HookKind;
use crate::config::{expand, format_duration, Output, Probe, Rollout, WatcherConfig};
use crate::probe::Check;
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
            Input::Reload(r, bound, reply) => self.reload(*r, bound.map(|b| *b), reply),
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
            Input::Probe {
                name,
                wid,
                gen,
                stage,
                result,
            } => self.on_probe(&name, wid, gen, stage, result),
            Input::StopCheck {
                name,
                wid,
                gen,
                group_alive,
            } => self.stop_check(&name, wid, gen, group_alive),
            Input::Timer(timer) => self.on_timer(timer),
            Input::Memory(readings) => self.on_memory(readings),
            Input::HookDone(done) => self.on_hook(*done),
        }
        self.follow_dependencies();
        self.advance_surges();
        self.advance_recycles();
        self.advance_hooks();
        self.check_waiters();
        std::mem::take(&mut self.out)
    }

    /// Starts the watchers that should run: each after the watchers it depends on are
    /// up (those that should not run are started first, as `start` does), the others by
    /// priority.
    fn boot(&mut self) {
        for name in self.start_order(self.watchers.keys().cloned().collect()) {
            if self.watchers.get(&name).is_some_and(|w| w.run) {
                // A watcher with processes already took them over from the agent's
                // previous image (an upgrade): it was started then, its start hooks
                // ran then; only its missing processes start, each with its spawn hooks.
                let adopted = self
                    .watchers
                    .get(&name)
                    .is_some_and(|w| !w.slots.is_empty());
                // Its `before_start` hook first, if it has one.
                if !adopted {
                    if self.gate(GateOp::Start, std::slice::from_ref(&name), false, None, 0) {
                        continue;
                    }
                    self.hook_due(&name, HookKind::AfterStart);
                }
                self.pull_dependencies(&name);
                self.ensure(&name);
            }
        }
    }

    /// Stops every process, each watcher's once no watcher that depends on it has any
    /// left; the actor ends once they are all gone.
    fn begin_shutdown(&mut self) {
        let names = self.stop_order(self.watchers.keys().cloned().collect());
        for name in &names {
            if let Some(w) = self.watchers.get_mut(name) {
                w.run = false;
                w.warmup_pending = false;
                w.restart_pending = false;
                w.held = None;
            }
        }
        // The watchers some watcher with processes depends on, found once (linear).
        let needed: std::collections::BTreeSet<String> = self
            .watchers
            .values()
            .filter(|w| !w.slots.is_empty())
            .flat_map(|w| w.cfg.lifecycle.depends_on.iter().cloned())
            .collect();
        for name in names {
            if needed.contains(&name) {
                self.stop_when_free(&name);
            } else {
                self.stop_all_slots(&name);
                self.after_slot_change(&name);
            }
        }
        self.shutting_down = true;
    }

    /// `names` in the order they start: after their dependencies, then by priority.
    pub(super) fn start_order(&self, names: Vec<String>) -> Vec<String> {
        start_order(&names, &self.graph(), |n| self.priority(n))
    }

    /// `names` in the order they stop: before their dependencies, then by priority.
    pub(super) fn stop_order(&self, names: Vec<String>) -> Vec<String> {
        stop_order(&names, &self.graph(), |n| self.priority(n))
    }

    /// The watchers `name` depends on, directly or not, that are stopped or fatal:
    /// what starting `name` starts first.
    pub(super) fn dependencies_to_start(&self, name: &str) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let mut todo: Vec<String> = self
            .watchers
            .get(name)
            .map(|w| w.cfg.lifecycle.depends_on.clone())
            .unwrap_or_default();
        while let Some(d) = todo.pop() {
            if seen.contains(&d) || d == name {
                continue;
            }
            if let Some(w) = self.watchers.get(&d).filter(|w| !w.removing) {
                todo.extend(w.cfg.lifecycle.depends_on.iter().cloned());
                seen.push(d);
            }
        }
        if seen.is_empty() {
            return seen;
        }
        let down = seen
            .into_iter()
            .filter(|d| {
                self.watchers
                    .get(d)
                    .is_some_and(|w| !w.run || w.state() == protocol::reply::WatcherState::Fatal)
            })
            .collect();
        self.start_order(down)
    }

    /// The watchers that depend on `name`, directly or not, and should run: what
    /// stopping `name` stops first.
    pub(super) fn dependents_to_stop(&self, name: &str) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let mut todo = self.dependents(name);
        while let Some(d) = todo.pop() {
            if seen.contains(&d) || d == name {
                continue;
            }
            todo.extend(self.dependents(&d));
            seen.push(d);
        }
        let running = seen
            .into_iter()
            .filter(|d| self.watchers.get(d).is_some_and(|w| w.run))
            .collect();
        self.stop_order(running)
    }

    /// Starts the stopped or fatal watchers `name` depends on (systemd's `Requires=`
    /// with `After=`); `name` itself then waits until they are up.
    fn pull_dependencies(&mut self, name: &str) {
        for d in self.dependencies_to_start(name) {
            self.start_watcher(&d);
        }
    }

    /// Asks a stopping watcher's processes to stop, or holds them until no watcher
    /// that depends on it has processes left.
    fn stop_when_free(&mut self, name: &str) {
        let wait = self.dependents_left(name);
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        if wait && !w.slots.is_empty() {
            w.stop_held = true;
            return;
        }
        w.stop_held = false;
        self.stop_all_slots(name);
        self.after_slot_change(name);
    }

    /// After each input: starts the watchers whose dependencies are now up, and stops
    /// those whose dependents have now stopped, in dependency order, then by priority.
    fn follow_dependencies(&mut self) {
        let held: Vec<String> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.held.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if !held.is_empty() {
            for name in self.start_order(held) {
                if self.dependency_down(&name).is_none() {
                    if let Some(w) = self.watchers.get_mut(&name) {
                        w.held = None;
                    }
                    self.ensure(&name);
                }
            }
        }
        let stopping: Vec<String> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.stop_held)
            .map(|(n, _)| n.clone())
            .collect();
        if !stopping.is_empty() {
            for name in self.stop_order(stopping) {
                if !self.dependents_left(&name) {
                    self.stop_when_free(&name);
                }
            }
        }
    }

    // ----- watcher operations -----

    pub(super) fn start_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = true;
        w.stop_held = false;
        self.pull_dependencies(name);
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
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
        self.hook_due(name, HookKind::AfterStart);
        self.ensure(name);
    }

    pub(super) fn stop_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = false;
        w.warmup_pending = false;
        w.restart_pending = false;
        w.held = None;
        self.emit(name, "stop", None);
        self.hook_due(name, HookKind::AfterStop);
        self.stop_when_free(name);
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
        w.held = None;
        self.stop_when_free(name);
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
        let n = w.cfg.command.numprocesses;
        let excess: Vec<u32> = w
            .slots
            .keys()
            .rev()
            .copied()
            .filter(|wid| *wid > n)
            .collect();
        let missing: Vec<u32> = (1..=n).filter(|wid| !w.slots.contains_key(wid)).collect();
        let warmup = w.cfg.lifecycle.warmup_delay;
        for wid in excess {
            self.stop_slot(name, wid, false);
        }
        // New processes wait until every watcher this one depends on is up.
        let down = if missing.is_empty() {
            None
        } else {
            self.dependency_down(name)
        };
        if let Some(w) = self.watchers.get_mut(name) {
            if down.is_some() {
                w.warmup_pending = false;
                w.held = down;
                return;
            }
            w.held = None;
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
        let Some(slot) = self.slot_at_mut(name, wid) else {
            return;
        };
        slot.gen = gen;
        slot.kill_at = None;
        slot.leader_gone = false;
        slot.after_stop = AfterStop::Remove;
        slot.uptime_reached = false;
        match listen {
            Ok(()) => self.launch(order),
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
        let capture = cfg.stdout == Output::Capture || cfg.stderr == Output::Capture;
        let order = SpawnOrder {
            watcher: name.to_owned(),
            wid,
            gen,
            spec: SpawnSpec {
                cmd: expand(&cfg.command.cmd, name, wid),
                args: cfg
                    .command
                    .args
                    .iter()
                    .map(|a| expand(a, name, wid))
                    .collect(),
                env: process_env(cfg, &node, wid),
                clear_env: !cfg.command.copy_env,
                working_dir: cfg.command.working_dir.clone(),
                uid: cfg.command.uid_num,
                gid: cfg.command.gid_num,
                stdout: cfg.stdout.clone(),
                stderr: cfg.stderr.clone(),
                listen: listen.clone().unwrap_or_default(),
                rlimits: cfg.rlimits.clone(),
            },
            stop: (cfg.lifecycle.stop_signal, cfg.lifecycle.graceful_timeout),
            capture: capture.then_some((cfg.log_max_bytes, cfg.log_backups)),
            respawn,
            notify: cfg.ready.as_ref().is_some_and(|r| r.probe == Probe::Notify),
        };
        Some((order, listen.map(|_| ())))
    }

    /// A process started: it is starting until `min_uptime` has passed and its
    /// readiness check (if any) has passed within `ready.timeout`.
    fn on_spawned(&mut self, name: &str, wid: u32, gen: u64, pid: u32, unix: f64, respawn: bool) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (min_uptime, ready) = (w.cfg.lifecycle.min_uptime, w.cfg.ready.clone());
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        slot.pid = Some(pid);
        slot.state = ProcessState::Starting;
        slot.started = Some((now, unix));
        slot.reason = None;
        slot.healthy = ready.is_none();
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
        self.arm_max_age(name, wid, gen);
        if let Some(ready) = ready {
            let deadline = Timer::ReadyDeadline {
                name: name.to_owned(),
                wid,
                gen,
            };
            self.timer(ready.timeout, deadline);
            self.probe(name, wid, gen, Stage::Ready);
        }
        if respawn {
            self.emit_slot(name, wid, "respawn");
        }
        let about = About {
            wid: Some(wid),
            pid: Some(pid),
            exit: None,
        };
        self.run_hook(name, HookKind::AfterSpawn, gen, about);
    }

    /// A process could not start: the restart policy decides, as after an exit.
    pub(super) fn on_spawn_failed(
        &mut self,
        name: &str,
        wid: u32,
        gen: u64,
        reason: String,
        respawn: bool,
    ) {
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

    /// Asks the actor to probe a process for `stage`, from the watcher's check as it is
    /// now: a readiness probe may take until the ready deadline, a liveness probe
    /// `live.timeout`. A notify check is not probed: the process reports.
    fn probe(&mut self, name: &str, wid: u32, gen: u64, stage: Stage) {
        let now = self.now;
        let node = self.limits.node.clone();
        let Some(w) = self.watchers.get(name) else {
            return;
        };
        let Some(slot) = self.slot(name, wid, gen) else {
            return;
        };
        let (Some(pid), Some((started, _))) = (slot.pid, slot.started) else {
            return;
        };
        let (probe, timeout) = match (stage, &w.cfg.ready, &w.cfg.live) {
            (Stage::Ready, Some(r), _) => {
                let deadline = later(started, r.timeout);
                (&r.probe, deadline.saturating_duration_since(now))
            }
            (Stage::Live, _, Some(l)) => (&l.probe, l.timeout),
            // The check was removed meanwhile: nothing to probe.
            (Stage::Ready, None, _) | (Stage::Live, _, None) => return,
        };
        let check = match probe.expanded(name, wid, pid) {
            Probe::Tcp(t) => Check::Tcp(t),
            Probe::Http(u) => Check::Http(u),
            Probe::Exec(argv) => Check::Exec(SpawnSpec {
                cmd: argv.first().cloned().unwrap_or_default(),
                args: argv.get(1..).unwrap_or_default().to_vec(),
                env: process_env(&w.cfg, &node, wid),
                clear_env: !w.cfg.command.copy_env,
                working_dir: w.cfg.command.working_dir.clone(),
                uid: w.cfg.command.uid_num,
                gid: w.cfg.command.gid_num,
                stdout: Output::Discard,
                stderr: Output::Discard,
                listen: Vec::new(),
                rlimits: Vec::new(),
            }),
            Probe::Notify => return,
        };
        self.out.push(Effect::Probe {
            watcher: name.to_owned(),
            wid,
            gen,
            stage,
            check: Box::new(check),
            timeout,
        });
    }

    /// A probe's result. A result for another process of the slot, or for a stage the
    /// process is no longer in, is stale and changes nothing.
    fn on_probe(
        &mut self,
        name: &str,
        wid: u32,
        gen: u64,
        stage: Stage,
        result: Result<(), String>,
    ) {
        let Some(w) = self.watchers.get(name) else {
            return;
        };
        let (interval, failures) = match (stage, &w.cfg.ready, &w.cfg.live) {
            (Stage::Ready, Some(r), _) => (r.interval, 0),
            (Stage::Live, _, Some(l)) => (l.interval, l.failures),
            (Stage::Ready, None, _) | (Stage::Live, _, None) => (Duration::ZERO, 0),
        };
        let Some(s) = self.slot_mut(name, wid, gen) else {
            return;
        };
        let next = Timer::Probe {
            name: name.to_owned(),
            wid,
            gen,
            stage,
        };
        match stage {
            Stage::Ready => {
                if s.state != ProcessState::Starting || s.healthy || s.health_failed {
                    return;
                }
                match result {
                    Ok(()) => {
                        s.healthy = true;
                        s.check_error = None;
                        if s.uptime_reached {
                            self.became_ready(name, wid, gen);
                        }
                    }
                    Err(why) => {
                        s.check_error = Some(why);
                        self.timer(interval, next);
                    }
                }
            }
            Stage::Live => {
                if s.state != ProcessState::Running || s.health_failed {
                    return;
                }
                match result {
                    Ok(()) => {
                        s.live_failures = 0;
                        s.check_error = None;
                        self.timer(interval, next);
                    }
                    Err(why) => {
                        s.live_failures = s.live_failures.saturating_add(1);
                        let n = s.live_failures;
                        tracing::info!(
                            watcher = name,
                            wid,
                            "liveness probe failed ({n} in a row): {why}"
                        );
                        s.check_error = Some(why.clone());
                        if n >= failures {
                            let reason = format!(
                                "liveness check failed {n} time{} in a row (last: {why})",
                                if n == 1 { "" } else { "s" }
                            );
                            self.check_failed(name, wid, gen, reason, false);
                        } else {
                            self.timer(interval, next);
                        }
                    }
                }
            }
        }
    }

    /// A starting process has run `min_uptime` and passed its readiness check: it is
    /// ready, and its liveness probes begin.
    fn became_ready(&mut self, name: &str, wid: u32, gen: u64) {
        let live = self
            .watchers
            .get(name)
            .and_then(|w| w.cfg.live.as_ref())
            .map(|l| l.interval);
        let Some(s) = self.slot_mut(name, wid, gen) else {
            return;
        };
        s.state = ProcessState::Running;
        s.live_failures = 0;
        if let Some(interval) = live {
            let timer = Timer::Probe {
                name: name.to_owned(),
                wid,
                gen,
                stage: Stage::Live,
            };
            self.timer(interval, timer);
        }
    }

    /// A process failed a check: it is stopped as a stop would, with an `unhealthy`
    /// event, and then the restart policy decides (a readiness failure counting as a
    /// failed start). A replacement that fails one is stopped and the slot's own
    /// process keeps running; the restart waiting on it fails saying why.
    fn check_failed(&mut self, name: &str, wid: u32, gen: u64, reason: String, failed_start: bool) {
        let replacement = self.is_replacement(name, wid, gen);
        let Some(s) = self.slot_mut(name, wid, gen) else {
            return;
        };
        s.health_failed = true;
        if failed_start {
            s.not_ready = Some((s.gen, reason.clone()));
        }
        s.reason = Some(reason.clone());
        let said = s.clone();
        self.emit(name, "unhealthy", Some(&said));
        if replacement {
            let then = self.old_process_fate(name, wid);
            let why = format!("its replacement failed: {reason}; {then}");
            tracing::warn!(watcher = name, wid, "{why}");
            self.fail_restart(name, wid, why);
            self.stop_replacement(name, wid);
            return;
        }
        tracing::warn!(watcher = name, wid, "{reason}; restarting it");
        self.stop_slot_then(name, wid, AfterStop::Unhealthy { failed_start });
    }

    /// A readiness deadline: a process still not ready is stopped.
    fn ready_deadline(&mut self, name: &str, wid: u32, gen: u64) {
        let timeout = self
            .watchers
            .get(name)
            .and_then(|w| w.cfg.ready.as_ref())
            .map(|r| r.timeout);
        let Some(s) = self.slot_mut(name, wid, gen) else {
            return;
        };
        if s.state != ProcessState::Starting || s.healthy || s.health_failed {
            return;
        }
        let Some(timeout) = timeout else {
            // The check was removed meanwhile.
            s.healthy = true;
            if s.uptime_reached {
                self.became_ready(name, wid, gen);
            }
            return;
        };
        let last = s
            .check_error
            .clone()
            .unwrap_or_else(|| "no answer yet".into());
        let reason = format!(
            "not ready: health check did not pass within {} (last: {last})",
            format_duration(timeout)
        );
        self.check_failed(name, wid, gen, reason, true);
    }

    /// Asks one slot's process, and its replacement if one is starting, to stop.
    /// `respawn` starts it again once stopped.
    pub(super) fn stop_slot(&mut self, name: &str, wid: u32, respawn: bool) {
        self.stop_replacement(name, wid);
        self.stop_process(name, wid, respawn);
    }

    /// Asks one slot's own process to stop (not its replacement). `respawn` starts it
    /// again once stopped.
    pub(super) fn stop_process(&mut self, name: &str, wid: u32, respawn: bool) {
        let after = if respawn {
            AfterStop::Respawn
        } else {
            AfterStop::Remove
        };
        self.stop_slot_then(name, wid, after);
    }

    /// Asks one slot's process to stop; `after` says what becomes of the slot then.
    fn stop_slot_then(&mut self, name: &str, wid: u32, after: AfterStop) {
        let now = self.now;
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let (sig, graceful) = (
            w.cfg.lifecycle.stop_signal,
            w.cfg.lifecycle.graceful_timeout,
        );
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        slot.after_stop = after;
        if slot.state == ProcessState::Stopping {
            return;
        }
        slot.state = ProcessState::Stopping;
        let Some(pid) = slot.pid else {
            self.finish_stop(name, wid);
            return;
        };
        slot.kill_at = Some(later(now, graceful));
        let gen = slot.gen;
        self.signal_stop(name, wid, gen, pid, sig, graceful);
    }

    /// Sends a stopping process its stop signal (SIGKILL when `graceful` is zero) and
    /// checks on its group once `graceful` has passed.
    pub(super) fn signal_stop(
        &mut self,
        name: &str,
        wid: u32,
        gen: u64,
        pid: u32,
        sig: Signal,
        graceful: Duration,
    ) {
        let signal = if graceful.is_zero() {
            Signal::SIGKILL
        } else {
            sig
        };
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
        let wanted =
            w.run && !w.restart_pending && !w.removing && wid <= w.cfg.command.numprocesses;
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
        let mut unhealthy = None;
        match (slot.after_stop, wanted) {
            (AfterStop::Respawn, true) => {
                slot.restarts += 1;
                slot.failures = 0;
            }
            (AfterStop::Start, true) => *slot = Slot::new(wid),
            (AfterStop::Unhealthy { failed_start }, true) => unhealthy = Some(failed_start),
            (AfterStop::Remove, _) | (_, false) => {
                w.slots.remove(&wid);
            }
        }
        let respawn = w.slots.contains_key(&wid);
        if let Some(pid) = ended {
            self.out.push(Effect::Ended { pid });
        }
        match unhealthy {
            Some(failed_start) => self.after_check_failure(name, wid, failed_start),
            None if respawn => self.spawn_slot(name, wid, false),
            None => {}
        }
        self.after_slot_change(name);
    }

    /// The restart policy for a slot whose process was stopped for a failed check:
    /// under `never` it stays exited; otherwise a liveness failure (the process was
    /// ready, so it ran `min_uptime`) restarts it at once, and a readiness failure is a
    /// failed start, backed off and counted towards `max_retry`.
    fn after_check_failure(&mut self, name: &str, wid: u32, failed_start: bool) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let rules = w.rules();
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        let reason = slot.reason.clone().unwrap_or_default();
        let decision = match rules.restart {
            protocol::RestartPolicy::Never => policy::Decision::Stay,
            protocol::RestartPolicy::Always | protocol::RestartPolicy::OnFailure
                if !failed_start =>
            {
                slot.failures = 0;
                policy::Decision::Respawn {
                    delay: Duration::ZERO,
                }
            }
            protocol::RestartPolicy::Always | protocol::RestartPolicy::OnFailure => {
                let (d, failures) = policy::after_exit(&rules, None, Duration::ZERO, slot.failures);
                slot.failures = failures;
                match d {
                    policy::Decision::Fatal { .. } => policy::Decision::Fatal {
                        reason: format!(
                            "gave up after {failures} failed start{} in a row (last: {reason})",
                            if failures == 1 { "" } else { "s" }
                        ),
                    },
                    d @ (policy::Decision::Respawn { .. } | policy::Decision::Stay) => d,
                }
            }
        };
        self.apply_decision(name, wid, decision);
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
                        self.became_ready(&name, wid, gen);
                    }
                }
            }
            Timer::Probe {
                name,
                wid,
                gen,
                stage,
            } => {
                let due = self.slot_mut(&name, wid, gen).is_some_and(|s| match stage {
                    Stage::Ready => {
                        s.state == ProcessState::Starting && !s.healthy && !s.health_failed
                    }
                    Stage::Live => s.state == ProcessState::Running && !s.health_failed,
                });
                if due {
                    self.probe(&name, wid, gen, stage);
                }
            }
            Timer::ReadyDeadline { name, wid, gen } => self.ready_deadline(&name, wid, gen),
            Timer::MaxAge { name, wid, gen } => self.age_reached(&name, wid, gen),
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
        let about = About {
            wid: Some(wid),
            pid,
            exit: Some(exit.clone()),
        };
        self.run_hook(name, HookKind::AfterExit, gen, about);
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
        let run = w.run && wid <= w.cfg.command.numprocesses;
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
        self.apply_decision(name, wid, decision);
    }

    /// Carries out the restart policy's decision for a slot whose process is gone.
    fn apply_decision(&mut self, name: &str, wid: u32, decision: policy::Decision) {
        let Some(slot) = self.slot_at_mut(name, wid) else {
            return;
        };
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

/// The environment of a process of watcher `cfg` (and of its `exec` checks): the
/// agent's own variables, then the watcher's `env` with `$(wid)`, `$(name)` and
/// `$(sockets.NAME)` expanded.
pub(super) fn process_env(cfg: &WatcherConfig, node: &str, wid: u32) -> Vec<(String, String)> {
    let name = cfg.name.as_str();
    let mut env: Vec<(String, String)> = vec![
        ("NODEAGENT_WID".into(), wid.to_string()),
        ("NODEAGENT_WATCHER".into(), name.to_owned()),
        ("NODEAGENT_NODE".into(), node.to_owned()),
    ];
    env.extend(cfg.command.env.iter().map(|(k, v)| {
        (
            k.clone(),
            crate::sockets::expand(&expand(v, name, wid), &cfg.sockets),
        )
    }));
    env
}
