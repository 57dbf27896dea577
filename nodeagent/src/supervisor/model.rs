//! The supervisor's model: watchers, their slots and what is derived from them (states,
//! summaries, snapshots), plus the inputs a transition takes and the effects it returns.
//! It must not perform any effect: no processes, signals, tasks, clocks or channels.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protocol::command::Command;
use protocol::reply::{
    ExitStatus, ProcessHealth, ProcessInfo, ProcessState, WatcherState, WatcherSummary,
};

use super::waiters::{SlotWaiter, Waiter};
use super::{policy, DesiredState, LifecycleEvent, Outcome, ProcessSnapshot, WatcherSnapshot};
use crate::config::WatcherConfig;
use crate::probe::Check;
use crate::process::SpawnSpec;
use crate::sockets::SocketSet;

/// Who gets a reply: the actor keeps the channel, the model only its number.
pub(super) type ReplyId = u64;

/// What becomes of a slot once its process group is gone after a stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum AfterStop {
    /// It goes: the watcher stops, shrinks, restarts as a whole or is removed.
    Remove,
    /// Its process starts again, counted as a restart (restart of one slot).
    Respawn,
    /// A fresh process starts: the watcher was started while this slot stopped.
    Start,
    /// It failed a check (see [`Slot::health_failed`]): the restart policy decides, a
    /// readiness failure counting as a failed start.
    Unhealthy { failed_start: bool },
}

/// Which check a probe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Until the process is ready (`ready`).
    Ready,
    /// While it is ready (`live`).
    Live,
}

/// One numbered place for a process of a watcher (its `wid`).
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub wid: u32,
    /// Which process of the slot this is; inputs about an older one are ignored.
    pub gen: u64,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub started: Option<(Instant, f64)>,
    pub restarts: u32,
    pub failures: u32,
    pub last_exit: Option<ExitStatus>,
    pub reason: Option<String>,
    /// While stopping: when the group gets SIGKILL.
    pub kill_at: Option<Instant>,
    /// While stopping: the leader has exited, the rest of its group may not have.
    pub leader_gone: bool,
    /// While stopping: SIGKILL was sent (said once in the log).
    pub killed: bool,
    /// What becomes of it once its process group is gone after a stop.
    pub after_stop: AfterStop,
    /// Its readiness check passed since it started (or it has none).
    pub healthy: bool,
    /// It failed a check (not ready within `ready.timeout`, or `live.failures` failed
    /// probes in a row) and is being stopped for it.
    pub health_failed: bool,
    pub uptime_reached: bool,
    /// Failed liveness probes in a row.
    pub live_failures: u32,
    /// What the last failed probe said, while not ready or while live probes fail.
    pub check_error: Option<String>,
    /// The generation of the last process of this slot that was not ready in time, and
    /// why; kept across restarts so that a wait can tell.
    pub not_ready: Option<(u64, String)>,
    /// During a restart with surge: the slot's new process, started next to this one
    /// with a newer generation (same wid). It takes the slot once this one is gone.
    pub replacement: Option<Box<Slot>>,
    /// Of a replacement: when it must be up, or the restart gives up on it.
    pub up_by: Option<Instant>,
    /// Memory readings above `max_memory` in a row.
    pub mem_over: u32,
    /// It has run `max_age` (and its share of `max_age_variance`): it is recycled once
    /// the watcher's other processes are up.
    pub age_due: bool,
}

impl Slot {
    pub fn new(wid: u32) -> Slot {
        Slot {
            wid,
            gen: 0,
            state: ProcessState::Backoff,
            pid: None,
            started: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            reason: None,
            kill_at: None,
            leader_gone: false,
            killed: false,
            after_stop: AfterStop::Remove,
            healthy: false,
            health_failed: false,
            uptime_reached: false,
            live_failures: 0,
            check_error: None,
            not_ready: None,
            replacement: None,
            up_by: None,
            mem_over: 0,
            age_due: false,
        }
    }

    /// The one test of whether a slot's process is up: it runs, it passed its
    /// readiness check (if any) and it has run `min_uptime` (the slot is then
    /// [`ProcessState::Running`]). Rolling restarts (with or without surge), `--waiting`
    /// commands and the watchers that depend on this one (`depends_on`) wait for it;
    /// `status` counts it as ready.
    pub fn is_ready(&self) -> bool {
        self.alive() && self.state == ProcessState::Running
    }

    /// How its process is doing by its checks, while one runs.
    pub fn health(&self) -> Option<ProcessHealth> {
        if !self.alive() {
            return None;
        }
        if self.health_failed || self.live_failures > 0 {
            return Some(ProcessHealth::Unhealthy);
        }
        match self.state {
            ProcessState::Running => Some(ProcessHealth::Ready),
            ProcessState::Starting => Some(ProcessHealth::Starting),
            ProcessState::Stopping
            | ProcessState::Backoff
            | ProcessState::Exited
            | ProcessState::Fatal => None,
        }
    }

    /// The slot's process, then its replacement if one is there.
    pub fn processes(&self) -> impl Iterator<Item = &Slot> {
        std::iter::once(self).chain(self.replacement.as_deref())
    }

    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            wid: self.wid,
            pid: self.pid.filter(|_| !self.leader_gone),
            state: self.state,
            started_at: self.started.map(|(_, t)| t),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            health: self.health(),
            reason: match self.health() {
                Some(ProcessHealth::Unhealthy) if self.health_failed => self.reason.clone(),
                Some(ProcessHealth::Unhealthy) => self.check_error.clone(),
                Some(ProcessHealth::Starting | ProcessHealth::Ready) | None => None,
            },
        }
    }

    pub fn alive(&self) -> bool {
        self.pid.is_some() && !self.leader_gone
    }
}

/// A watcher: its config, its slots and what it should be doing.
#[derive(Debug, Clone)]
pub(super) struct Watcher {
    pub cfg: WatcherConfig,
    pub slots: BTreeMap<u32, Slot>,
    pub run: bool,
    pub restart_pending: bool,
    pub removing: bool,
    pub warmup_pending: bool,
    /// Its processes wait to start until this dependency is up (`depends_on`).
    pub held: Option<String>,
    /// It is stopping, but its processes are asked to stop only once no watcher that
    /// depends on it has any left.
    pub stop_held: bool,
    /// It was started (stopped) and its `after_start` (`after_stop`) hook runs once
    /// every process runs (is gone).
    pub after_start_due: bool,
    pub after_stop_due: bool,
}

impl Watcher {
    pub fn new(cfg: WatcherConfig, run: bool) -> Watcher {
        Watcher {
            cfg,
            slots: BTreeMap::new(),
            run,
            restart_pending: false,
            removing: false,
            warmup_pending: false,
            held: None,
            stop_held: false,
            after_start_due: false,
            after_stop_due: false,
        }
    }

    /// Every process of the watcher is ready: it should run, and each of its
    /// `numprocesses` slots holds a process that is ready ([`Slot::is_ready`]). What a
    /// watcher that depends on it waits for.
    pub fn all_ready(&self) -> bool {
        self.run
            && !self.removing
            && !self.restart_pending
            && (1..=self.cfg.command.numprocesses)
                .all(|wid| self.slots.get(&wid).is_some_and(Slot::is_ready))
    }

    pub fn state(&self) -> WatcherState {
        let slots = || self.slots.values();
        if slots().any(|s| s.state == ProcessState::Stopping) || self.removing || self.stop_held {
            WatcherState::Stopping
        } else if !self.run {
            WatcherState::Stopped
        } else if slots().any(|s| s.state == ProcessState::Fatal) {
            WatcherState::Fatal
        } else if self.cfg.command.numprocesses > 0
            && !self.slots.is_empty()
            && slots().all(|s| s.state == ProcessState::Exited)
        {
            WatcherState::Stopped
        } else {
            WatcherState::Active
        }
    }

    pub fn settled(&self) -> bool {
        !self.restart_pending
            && !self.warmup_pending
            && self.held.is_none()
            && !self.stop_held
            && !self
                .slots
                .values()
                .flat_map(Slot::processes)
                .any(|s| s.state == ProcessState::Stopping)
    }

    /// Whether it is up as far as a `--waiting` command cares: a watcher with a
    /// `ready` check that runs has every process ready ([`Slot::is_ready`]), or given
    /// up on (fatal, or exited and not restarted); any other watcher is up as soon as
    /// it has settled.
    pub fn waited_up(&self) -> bool {
        if !self.run || self.removing || self.cfg.ready.is_none() {
            return true;
        }
        self.slots
            .values()
            .all(|s| s.is_ready() || matches!(s.state, ProcessState::Fatal | ProcessState::Exited))
    }

    pub fn running(&self) -> u32 {
        self.slots.values().filter(|s| s.alive()).count() as u32
    }

    /// How many of its processes are ready ([`Slot::is_ready`]).
    pub fn ready(&self) -> u32 {
        self.slots.values().filter(|s| s.is_ready()).count() as u32
    }

    pub fn restarts(&self) -> u32 {
        self.slots.values().map(|s| s.restarts).sum()
    }

    pub fn reason(&self) -> Option<String> {
        self.slots
            .values()
            .find(|s| s.state == ProcessState::Fatal)
            .and_then(|s| s.reason.clone())
            .or_else(|| {
                let dep = self.held.as_ref()?;
                Some(format!("waiting for '{dep}' to be up (depends_on)"))
            })
            .or_else(|| {
                self.stop_held
                    .then(|| "waiting for the watchers that depend on it to stop".to_owned())
            })
    }

    pub fn summary(&self) -> WatcherSummary {
        WatcherSummary {
            name: self.cfg.name.clone(),
            state: self.state(),
            numprocesses: self.cfg.command.numprocesses,
            running: self.running(),
            ready: self.ready(),
            restarts: self.restarts(),
            service: self.cfg.service.clone(),
            reason: self.reason(),
        }
    }

    pub fn rules(&self) -> policy::Rules {
        policy::Rules::from(&self.cfg.lifecycle)
    }

    pub fn snapshot(&self) -> WatcherSnapshot {
        WatcherSnapshot {
            name: self.cfg.name.clone(),
            service: self.cfg.service.clone(),
            state: self.state(),
            numprocesses: self.cfg.command.numprocesses,
            running: self.running(),
            restarts: self.restarts(),
            processes: self
                .slots
                .values()
                .flat_map(Slot::processes)
                .filter(|s| s.alive())
                .filter_map(|s| {
                    Some(ProcessSnapshot {
                        wid: s.wid,
                        pid: s.pid?,
                        started_at: s.started.map(|(_, t)| t).unwrap_or_default(),
                        restarts: s.restarts,
                        health: s.health(),
                    })
                })
                .collect(),
            max_memory: self.cfg.max_memory,
        }
    }
}

/// The node's limits on what commands may ask.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub node: String,
    pub allow_remote_exec: bool,
    pub max_processes: u32,
}

/// A process to start in a slot.
#[derive(Debug, Clone)]
pub(super) struct SpawnOrder {
    pub watcher: String,
    pub wid: u32,
    pub gen: u64,
    pub spec: SpawnSpec,
    /// How its watcher stops it, for the last-resort stop of live groups.
    pub stop: (Signal, Duration),
    /// Captured output's rotation (`log_max_bytes`, `log_backups`), when captured.
    pub capture: Option<(u64, u32)>,
    /// It is a respawn (said after the spawn).
    pub respawn: bool,
    /// It reports readiness on a notify socket (`NOTIFY_SOCKET`), answered with
    /// [`Input::Probe`].
    pub notify: bool,
}

/// What a transition asks the actor to do, in order.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    /// Start a process; the actor answers with [`Input::Spawned`] or
    /// [`Input::SpawnFailed`] before it carries out the next effect.
    Spawn(Box<SpawnOrder>),
    /// Send `signal` to the process group led by `pid` (a failure is logged).
    Signal {
        watcher: String,
        wid: u32,
        pid: u32,
        signal: Signal,
    },
    /// Probe a process once, giving up after `timeout`; answered with
    /// [`Input::Probe`].
    Probe {
        watcher: String,
        wid: u32,
        gen: u64,
        stage: Stage,
        check: Box<Check>,
        timeout: Duration,
    },
    /// Deliver `timer` after `after`.
    ArmTimer { after: Duration, timer: Timer },
    /// Deliver `timer` at the next turn, once what waits already is served.
    NextTurn(Timer),
    /// Publish a lifecycle event.
    Emit(LifecycleEvent),
    /// Save the desired state; replies after it wait for the save.
    Persist(DesiredState),
    /// Answer a command.
    Reply { to: ReplyId, outcome: Outcome },
    /// The `signal` command: send `signal` to `pids` (their groups unless
    /// `leader_only`), then reply `outcome`, or the first error.
    SignalProcesses {
        pids: Vec<u32>,
        signal: Signal,
        leader_only: bool,
        to: ReplyId,
        outcome: Outcome,
    },
    /// How `watcher`'s processes stop changed.
    Configure {
        watcher: String,
        stop: (Signal, Duration),
    },
    /// The group led by `pid` is stopped or given up on.
    Ended { pid: u32 },
    /// A removed watcher's captured output may be closed.
    ForgetOutput(String),
    /// Wait on process `pid`, adopted across the agent's exec (see [`super::adopt`]),
    /// as on a spawned one; its watcher stops it with `stop`.
    Watch {
        watcher: String,
        wid: u32,
        gen: u64,
        pid: u32,
        stop: (Signal, Duration),
    },
    /// Run a hook; answered with [`Input::HookDone`].
    Hook(Box<super::hooks::HookOrder>),
}

/// What a timer delivers.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Timer {
    /// A slot in backoff may start again.
    RespawnDue { name: String, wid: u32, gen: u64 },
    /// A process has run for `min_uptime`.
    UptimeReached { name: String, wid: u32, gen: u64 },
    /// Check a stopping group; the actor looks whether group `pid` is alive.
    StopCheck {
        name: String,
        wid: u32,
        gen: u64,
        pid: u32,
    },
    /// The next process of a watcher may start.
    Warmup { name: String },
    /// The next probe of a process is due.
    Probe {
        name: String,
        wid: u32,
        gen: u64,
        stage: Stage,
    },
    /// A process had `ready.timeout` to be ready.
    ReadyDeadline { name: String, wid: u32, gen: u64 },
    /// A process has run `max_age` (and its share of `max_age_variance`).
    MaxAge { name: String, wid: u32, gen: u64 },
}

/// What a transition takes.
#[derive(Debug)]
pub(super) enum Input {
    /// The actor starts: watchers start by priority.
    Boot,
    Command(Command, ReplyId),
    RestartSlot {
        name: String,
        wid: u32,
        reply: ReplyId,
    },
    /// A reload, with the sockets the actor bound for it (none for a dry run).
    Reload(Box<super::Reload>, Option<Box<SocketSet>>, ReplyId),
    Shutdown,
    /// Nothing happened but time passed (a wait's deadline).
    Tick,
    Spawned {
        name: String,
        wid: u32,
        gen: u64,
        pid: u32,
        /// Unix time it started.
        unix: f64,
        respawn: bool,
    },
    SpawnFailed {
        name: String,
        wid: u32,
        gen: u64,
        reason: String,
        respawn: bool,
    },
    /// A process's leader exited; `group_alive` says whether its group still runs.
    Exited {
        name: String,
        wid: u32,
        gen: u64,
        exit: ExitStatus,
        group_alive: bool,
    },
    /// A probe's result: passed, or why not.
    Probe {
        name: String,
        wid: u32,
        gen: u64,
        stage: Stage,
        result: Result<(), String>,
    },
    /// A stop check found the group alive or not.
    StopCheck {
        name: String,
        wid: u32,
        gen: u64,
        group_alive: bool,
    },
    /// Any other timer.
    Timer(Timer),
    /// Memory readings of processes (`max_memory`).
    Memory(Vec<super::MemoryReading>),
    /// A hook's result.
    HookDone(Box<super::hooks::HookDone>),
}

/// The whole supervisor state: the watchers, the waits of commands, and the effects the
/// current transition returns.
#[derive(Debug)]
pub(super) struct Supervisor {
    pub watchers: BTreeMap<String, Watcher>,
    pub next_gen: u64,
    pub waiters: Vec<Waiter>,
    pub slot_waiters: Vec<SlotWaiter>,
    pub limits: Limits,
    /// Every process is being stopped, and the actor ends once they are.
    pub shutting_down: bool,
    /// The time of the current transition.
    pub now: Instant,
    /// The effects of the current transition, in order.
    pub out: Vec<Effect>,
    /// The node's bound sockets, which processes get by name.
    pub sockets: SocketSet,
    /// Spreads `max_age_variance` over the processes (see [`Supervisor::age_jitter`]).
    pub seed: u64,
    /// Commands waiting for their `before_start` or `before_stop` hooks.
    pub gates: Vec<super::hooks::Gate>,
    /// Spawn orders waiting for their `before_spawn` hook, by generation.
    pub held_spawns: BTreeMap<u64, Box<SpawnOrder>>,
}

impl Supervisor {
    pub fn new(limits: Limits, now: Instant) -> Supervisor {
        Supervisor {
            watchers: BTreeMap::new(),
            next_gen: 1,
            waiters: Vec::new(),
            slot_waiters: Vec::new(),
            limits,
            shutting_down: false,
            now,
            out: Vec::new(),
            sockets: SocketSet::default(),
            seed: 0,
            gates: Vec::new(),
            held_spawns: BTreeMap::new(),
        }
    }

    /// Every watcher with its live processes, for stats and heartbeats.
    pub fn snapshot(&self) -> Vec<WatcherSnapshot> {
        self.watchers
            .values()
            .filter(|w| !w.removing)
            .map(Watcher::snapshot)
            .collect()
    }

    /// The services of the watchers.
    pub fn services(&self) -> BTreeSet<String> {
        self.watchers
            .values()
            .filter(|w| !w.removing)
            .map(|w| w.cfg.service.clone())
            .collect()
    }

    /// What is persisted: every watcher's options and whether it should run.
    pub fn desired(&self) -> DesiredState {
        self.watchers
            .iter()
            .filter(|(_, w)| !w.removing)
            .map(|(n, w)| (n.clone(), (w.cfg.to_options(), w.run)))
            .collect()
    }

    /// The actor may end: a shutdown has stopped every process.
    pub fn finished(&self) -> bool {
        self.shutting_down && self.watchers.values().all(|w| w.slots.is_empty())
    }

    pub fn emit(&mut self, watcher: &str, kind: &'static str, slot: Option<&Slot>) {
        self.out.push(Effect::Emit(LifecycleEvent {
            watcher: watcher.to_owned(),
            kind,
            wid: slot.map(|s| s.wid),
            pid: slot.and_then(|s| s.pid),
            exit: slot.and_then(|s| s.last_exit.clone()),
            reason: slot.and_then(|s| s.reason.clone()),
            // The actor stamps it with its turn's time.
            time: 0.0,
            ..Default::default()
        }));
    }

    pub fn emit_slot(&mut self, name: &str, wid: u32, kind: &'static str) {
        let slot = self.slot_at(name, wid).cloned();
        if let Some(s) = slot {
            self.emit(name, kind, Some(&s));
        }
    }

    pub fn persist(&mut self) {
        let desired = self.desired();
        self.out.push(Effect::Persist(desired));
    }

    pub fn reply(&mut self, to: ReplyId, outcome: Outcome) {
        self.out.push(Effect::Reply { to, outcome });
    }

    pub fn timer(&mut self, after: Duration, timer: Timer) {
        self.out.push(Effect::ArmTimer { after, timer });
    }

    /// The first dependency of `name` that is not up (or not there), if any.
    pub fn dependency_down(&self, name: &str) -> Option<String> {
        let w = self.watchers.get(name)?;
        w.cfg
            .lifecycle
            .depends_on
            .iter()
            .find(|d| !self.watchers.get(*d).is_some_and(Watcher::all_ready))
            .cloned()
    }

    /// The watchers (not being removed) that depend on `name`, by name.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.watchers
            .iter()
            .filter(|(_, w)| !w.removing && w.cfg.lifecycle.depends_on.iter().any(|d| d == name))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a watcher that depends on `name` still has processes (or slots).
    pub fn dependents_left(&self, name: &str) -> bool {
        self.watchers
            .values()
            .any(|w| w.cfg.lifecycle.depends_on.iter().any(|d| d == name) && !w.slots.is_empty())
    }

    /// The dependency graph of the watchers (without those being removed).
    pub fn graph(&self) -> BTreeMap<String, Vec<String>> {
        crate::config::deps::graph_of(
            self.watchers
                .values()
                .filter(|w| !w.removing)
                .map(|w| &w.cfg),
        )
    }

    /// A watcher's priority (0 when there is no such watcher).
    pub fn priority(&self, name: &str) -> i32 {
        self.watchers
            .get(name)
            .map_or(0, |w| w.cfg.lifecycle.priority)
    }

    /// Slot `wid` of watcher `name`, when both are there.
    pub fn slot_at(&self, name: &str, wid: u32) -> Option<&Slot> {
        self.watchers.get(name)?.slots.get(&wid)
    }

    /// Slot `wid` of watcher `name`, when both are there, to change.
    pub fn slot_at_mut(&mut self, name: &str, wid: u32) -> Option<&mut Slot> {
        self.watchers.get_mut(name)?.slots.get_mut(&wid)
    }

    /// The process of generation `gen` in a slot: the slot's own, or its replacement.
    pub fn slot(&self, name: &str, wid: u32, gen: u64) -> Option<&Slot> {
        let slot = self.slot_at(name, wid)?;
        if slot.gen == gen {
            return Some(slot);
        }
        slot.replacement.as_deref().filter(|r| r.gen == gen)
    }

    /// The process of generation `gen` in a slot: the slot's own, or its replacement.
    pub fn slot_mut(&mut self, name: &str, wid: u32, gen: u64) -> Option<&mut Slot> {
        let slot = self.slot_at_mut(name, wid)?;
        if slot.gen == gen {
            return Some(slot);
        }
        slot.replacement.as_deref_mut().filter(|r| r.gen == gen)
    }

    /// Whether generation `gen` is the replacement in a slot (see [`Slot::replacement`]).
    pub fn is_replacement(&self, name: &str, wid: u32, gen: u64) -> bool {
        self.slot_at(name, wid)
            .and_then(|s| s.replacement.as_deref())
            .is_some_and(|r| r.gen == gen)
    }
}
