//! The supervisor: an actor that owns the watchers and their process table. Commands
//! arrive on a bounded channel with a oneshot for the reply; child exits arrive from one
//! wait task per child (no polling loop). The restart decision is the pure
//! [`policy::after_exit`]. It publishes nothing itself: lifecycle events go out on a
//! broadcast channel that never blocks supervision.

pub mod live;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use protocol::command::{
    AddProps, Command, GetProps, Numprocesses, Resize, Restart, SetProps, SignalProps, StartStop,
};
use protocol::options::OPTION_NAMES;
use protocol::reply::{
    ActionData, ExitStatus, ListData, NumprocessesData, NumwatchersData, OptionsData, ProcessInfo,
    ProcessState, ReloadData, StatusData, WatcherState, WatcherSummary,
};
use protocol::{Errno, WatcherOptions};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::{expand, parse_signal, Output, WatcherConfig};
use crate::process::{self, SpawnSpec};
use live::{later, KILL_GRACE, LIVE};

/// A command's error: its number and a reason that says what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdError {
    pub errno: Errno,
    pub reason: String,
}

impl CmdError {
    pub fn new(errno: Errno, reason: impl Into<String>) -> Self {
        CmdError {
            errno,
            reason: reason.into(),
        }
    }
}

/// A command's result: the reply's fields, or an error.
pub type Outcome = Result<Map<String, Value>, CmdError>;

fn data(v: impl serde::Serialize) -> Outcome {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Ok(Map::new()),
        Err(e) => Err(CmdError::new(Errno::CommandFailed, e.to_string())),
    }
}

fn unknown_watcher(name: &str) -> CmdError {
    CmdError::new(
        Errno::UnknownWatcher,
        format!("unknown watcher '{name}'; `ctl list` shows the watchers of a node"),
    )
}

/// A lifecycle event, for the transport to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub watcher: String,
    /// spawn, exit, respawn, flapping, start, stop, add, rm, reload.
    pub kind: &'static str,
    pub wid: Option<u32>,
    pub pid: Option<u32>,
    pub exit: Option<ExitStatus>,
    pub reason: Option<String>,
}

/// One live process, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSnapshot {
    pub wid: u32,
    pub pid: u32,
    /// Unix time it started.
    pub started_at: f64,
    pub restarts: u32,
}

/// One watcher, for stats and membership announcements.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherSnapshot {
    pub name: String,
    pub service: String,
    pub state: WatcherState,
    pub numprocesses: u32,
    pub running: u32,
    pub restarts: u32,
    pub processes: Vec<ProcessSnapshot>,
}

/// Captured output of a process, handed to whoever stores logs.
pub struct CapturedOutput {
    pub watcher: String,
    pub wid: u32,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    pub max_bytes: u64,
    pub backups: u32,
}

/// Where captured output goes; the default drains it.
pub trait OutputSink: Send + 'static {
    fn capture(&mut self, out: CapturedOutput);
    /// A watcher was removed; its files may be closed.
    fn forget(&mut self, _watcher: &str) {}
}

/// Reads and drops captured output, so that no child blocks on a full pipe.
pub struct DrainOutput;

impl OutputSink for DrainOutput {
    fn capture(&mut self, out: CapturedOutput) {
        if let Some(mut s) = out.stdout {
            tokio::spawn(async move { tokio::io::copy(&mut s, &mut tokio::io::sink()).await });
        }
        if let Some(mut s) = out.stderr {
            tokio::spawn(async move { tokio::io::copy(&mut s, &mut tokio::io::sink()).await });
        }
    }
}

/// Every watcher's options and whether it should run, as persisted.
pub type DesiredState = BTreeMap<String, (WatcherOptions, bool)>;

/// Saves the desired state after each change.
pub type PersistFn = Box<dyn FnMut(&DesiredState) + Send>;

/// What the supervisor needs besides the watchers.
pub struct Settings {
    pub node: String,
    pub allow_remote_exec: bool,
    /// Called after every change of desired state, with every watcher's options and
    /// whether it should run; persists them.
    pub persist: Option<PersistFn>,
    /// Where every process group started is noted, for the next start after a crash.
    pub groups: Option<std::sync::Arc<crate::groups::Groups>>,
    /// The most processes all watchers together may ask for (`[agent] max_processes`).
    pub max_processes: u32,
}

enum Cmd {
    Exec(Command, oneshot::Sender<Outcome>),
    RestartSlot {
        name: String,
        wid: u32,
        reply: oneshot::Sender<Result<(), CmdError>>,
    },
    Snapshot(oneshot::Sender<Vec<WatcherSnapshot>>),
    Reload(BTreeMap<String, WatcherConfig>, oneshot::Sender<Outcome>),
    Shutdown(oneshot::Sender<()>),
}

/// The handle other rooms use to talk to the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Cmd>,
    events: broadcast::Sender<LifecycleEvent>,
    services: watch::Receiver<BTreeSet<String>>,
}

fn gone() -> CmdError {
    CmdError::new(Errno::ShuttingDown, "the agent is shutting down")
}

impl SupervisorHandle {
    /// Runs one watcher command.
    pub async fn exec(&self, command: Command) -> Outcome {
        if let Command::Restart(r) | Command::Reload(r) = &command {
            if r.rolling {
                return self.rolling_restart(r).await;
            }
        }
        self.exec_plain(command).await
    }

    async fn exec_plain(&self, command: Command) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Exec(command, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Restarts each process of the watcher(s) in turn; each new process must be up
    /// (past `min_uptime`, and healthy where a health check is set) before the next
    /// one is stopped, so at most one process of a watcher is down at any moment.
    async fn rolling_restart(&self, r: &Restart) -> Outcome {
        let names: Vec<String> = match &r.name {
            Some(n) => vec![n.clone()],
            None => self.snapshot().await?.into_iter().map(|w| w.name).collect(),
        };
        let mut statuses = BTreeMap::new();
        for name in names {
            let list = self
                .exec_plain(Command::List(protocol::command::MaybeName {
                    name: Some(name.clone()),
                }))
                .await?;
            let list: ListData = serde_json::from_value(Value::Object(list))
                .map_err(|e| CmdError::new(Errno::CommandFailed, e.to_string()))?;
            for p in list.processes.unwrap_or_default() {
                let (tx, rx) = oneshot::channel();
                self.tx
                    .send(Cmd::RestartSlot {
                        name: name.clone(),
                        wid: p.wid,
                        reply: tx,
                    })
                    .await
                    .map_err(|_| gone())?;
                rx.await.map_err(|_| gone())??;
            }
            statuses.insert(name, WatcherState::Active);
        }
        data(ActionData {
            statuses,
            pids: None,
        })
    }

    /// Every watcher with its live processes.
    pub async fn snapshot(&self) -> Result<Vec<WatcherSnapshot>, CmdError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Snapshot(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Applies a newly read config's watchers.
    pub async fn reload(&self, watchers: BTreeMap<String, WatcherConfig>) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Reload(watchers, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Stops every process gracefully and ends the actor.
    pub async fn shutdown(&self) {
        self.begin_shutdown().await.await;
    }

    /// Asks the actor to stop every process gracefully and end; the returned future
    /// completes once it has (at once if the actor is gone).
    pub async fn begin_shutdown(&self) -> impl std::future::Future<Output = ()> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Cmd::Shutdown(tx)).await.is_ok();
        async move {
            if sent {
                let _ = rx.await;
            }
        }
    }

    /// Lifecycle events as they happen.
    pub fn events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.events.subscribe()
    }

    /// The services of the watchers, updated on every change.
    pub fn services(&self) -> watch::Receiver<BTreeSet<String>> {
        self.services.clone()
    }
}

/// Starts the supervisor actor with the config's watchers and returns its handle and
/// the task that runs it. Watchers with `autostart` start at once, by priority.
pub fn start(
    watchers: BTreeMap<String, WatcherConfig>,
    stopped: BTreeSet<String>,
    settings: Settings,
    output: Box<dyn OutputSink>,
) -> (SupervisorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(4096);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (services_tx, services_rx) = watch::channel(BTreeSet::new());
    let mut actor = Actor {
        watchers: BTreeMap::new(),
        next_gen: 1,
        internal: ev_tx,
        events: events.clone(),
        waiters: Vec::new(),
        slot_waiters: Vec::new(),
        settings,
        output,
        services: services_tx,
        shutdown: None,
        spawned_batch: false,
    };
    for (name, cfg) in watchers {
        let run = cfg.autostart && !stopped.contains(&name);
        actor.watchers.insert(name, Watcher::new(cfg, run));
    }
    actor.services_changed();
    let total = actor
        .watchers
        .values()
        .fold(0u64, |n, w| n.saturating_add(w.cfg.numprocesses.into()));
    if total > u64::from(actor.settings.max_processes) {
        tracing::warn!(
            "the watchers ask for {total} processes together (saved state included), more \
             than max_processes = {}; they run, but none may grow until they are below it",
            actor.settings.max_processes
        );
    }
    let handle = SupervisorHandle {
        tx,
        events,
        services: services_rx,
    };
    let task = tokio::spawn(actor.run(rx, ev_rx));
    (handle, task)
}

/// A watcher's config from options sent over NATS; every problem in one error.
fn watcher_config(name: &str, options: &WatcherOptions) -> Result<WatcherConfig, CmdError> {
    WatcherConfig::from_options(name, options).map_err(|problems| {
        let all: Vec<String> = problems
            .iter()
            .map(|p| match p.location.rsplit_once(' ') {
                Some((_, key)) if !key.is_empty() => format!("option '{key}': {}", p.message),
                _ => p.to_string(),
            })
            .collect();
        CmdError::new(Errno::BadOption, all.join("; "))
    })
}

enum Internal {
    Exited {
        name: String,
        wid: u32,
        gen: u64,
        status: std::io::Result<std::process::ExitStatus>,
    },
    RespawnDue {
        name: String,
        wid: u32,
        gen: u64,
    },
    UptimeReached {
        name: String,
        wid: u32,
        gen: u64,
    },
    Health {
        name: String,
        wid: u32,
        gen: u64,
        ok: bool,
    },
    StopCheck {
        name: String,
        wid: u32,
        gen: u64,
    },
    Warmup {
        name: String,
    },
}

/// What becomes of a slot once its process group is gone after a stop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AfterStop {
    /// It goes: the watcher stops, shrinks, restarts as a whole or is removed.
    Remove,
    /// Its process starts again, counted as a restart (restart of one slot).
    Respawn,
    /// A fresh process starts: the watcher was started while this slot stopped.
    Start,
}

#[derive(Debug)]
struct Slot {
    wid: u32,
    gen: u64,
    state: ProcessState,
    pid: Option<u32>,
    started: Option<(Instant, f64)>,
    restarts: u32,
    failures: u32,
    last_exit: Option<ExitStatus>,
    reason: Option<String>,
    /// While stopping: when the group gets SIGKILL.
    kill_at: Option<Instant>,
    /// While stopping: the leader has exited, the rest of its group may not have.
    leader_gone: bool,
    /// While stopping: SIGKILL was sent (said once in the log).
    killed: bool,
    /// What becomes of it once its process group is gone after a stop.
    after_stop: AfterStop,
    /// Healthy since it started (or no health check).
    healthy: bool,
    /// Its health check gave up (health_timeout passed without a success).
    health_failed: bool,
    uptime_reached: bool,
}

impl Slot {
    fn new(wid: u32) -> Slot {
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
        }
    }

    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            wid: self.wid,
            pid: self.pid.filter(|_| !self.leader_gone),
            state: self.state,
            started_at: self.started.map(|(_, t)| t),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    fn alive(&self) -> bool {
        self.pid.is_some() && !self.leader_gone
    }
}

struct Watcher {
    cfg: WatcherConfig,
    slots: BTreeMap<u32, Slot>,
    run: bool,
    restart_pending: bool,
    removing: bool,
    warmup_pending: bool,
}

impl Watcher {
    fn new(cfg: WatcherConfig, run: bool) -> Watcher {
        Watcher {
            cfg,
            slots: BTreeMap::new(),
            run,
            restart_pending: false,
            removing: false,
            warmup_pending: false,
        }
    }

    fn state(&self) -> WatcherState {
        let slots = || self.slots.values();
        if slots().any(|s| s.state == ProcessState::Stopping) || self.removing {
            WatcherState::Stopping
        } else if !self.run {
            WatcherState::Stopped
        } else if slots().any(|s| s.state == ProcessState::Fatal) {
            WatcherState::Fatal
        } else if self.cfg.numprocesses > 0
            && !self.slots.is_empty()
            && slots().all(|s| s.state == ProcessState::Exited)
        {
            WatcherState::Stopped
        } else {
            WatcherState::Active
        }
    }

    fn settled(&self) -> bool {
        !self.restart_pending
            && !self.warmup_pending
            && !self
                .slots
                .values()
                .any(|s| s.state == ProcessState::Stopping)
    }

    fn running(&self) -> u32 {
        self.slots.values().filter(|s| s.alive()).count() as u32
    }

    fn restarts(&self) -> u32 {
        self.slots.values().map(|s| s.restarts).sum()
    }

    fn reason(&self) -> Option<String> {
        self.slots
            .values()
            .find(|s| s.state == ProcessState::Fatal)
            .and_then(|s| s.reason.clone())
    }

    fn summary(&self) -> WatcherSummary {
        WatcherSummary {
            name: self.cfg.name.clone(),
            state: self.state(),
            numprocesses: self.cfg.numprocesses,
            running: self.running(),
            restarts: self.restarts(),
            service: self.cfg.service.clone(),
            reason: self.reason(),
        }
    }

    fn rules(&self) -> policy::Rules {
        policy::Rules {
            restart: self.cfg.restart,
            exit_codes: self.cfg.exit_codes.clone(),
            max_retry: self.cfg.max_retry,
            min_uptime: self.cfg.min_uptime,
            restart_delay: self.cfg.restart_delay,
            max_restart_delay: self.cfg.max_restart_delay,
        }
    }
}

enum WaitFor {
    /// The watchers are settled (or gone, for rm).
    Settled(Vec<String>),
}

struct Waiter {
    what: WaitFor,
    /// When it answers with an error if the watchers have not settled by then.
    deadline: Instant,
    reply: oneshot::Sender<Outcome>,
}

struct SlotWaiter {
    name: String,
    wid: u32,
    /// The slot's generation when the restart began; a newer one is the new process.
    old_gen: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), CmdError>>,
}

struct Actor {
    watchers: BTreeMap<String, Watcher>,
    next_gen: u64,
    internal: mpsc::UnboundedSender<Internal>,
    events: broadcast::Sender<LifecycleEvent>,
    waiters: Vec<Waiter>,
    slot_waiters: Vec<SlotWaiter>,
    settings: Settings,
    output: Box<dyn OutputSink>,
    services: watch::Sender<BTreeSet<String>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// A batch of spawns ran this turn.
    spawned_batch: bool,
}

const STOP_POLL: Duration = Duration::from_millis(20);

/// The most processes started in one turn of the actor; more wait for the next turn,
/// so that commands, snapshots (heartbeats, stats) and exits are served in between.
const SPAWN_BATCH: usize = 25;

/// What a wait for watchers to settle allows on top of stopping and warming up.
const SETTLE_MARGIN: Duration = Duration::from_secs(60);

/// The longest any wait of a command lasts.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The longest a watcher may take to settle after a command: stopping (its graceful
/// timeout, then the SIGKILL grace), then starting every process (`warmup_delay`
/// apart), plus a margin for spawning; at most [`MAX_WAIT`].
fn settle_budget(cfg: &WatcherConfig) -> Duration {
    cfg.graceful_timeout
        .saturating_add(KILL_GRACE)
        .saturating_add(cfg.warmup_delay.saturating_mul(cfg.numprocesses))
        .saturating_add(SETTLE_MARGIN)
        .min(MAX_WAIT)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut order: Vec<(std::cmp::Reverse<i32>, String)> = self
            .watchers
            .iter()
            .map(|(n, w)| (std::cmp::Reverse(w.cfg.priority), n.clone()))
            .collect();
        order.sort();
        for (_, name) in order {
            self.ensure(&name);
        }
        loop {
            let deadline = self
                .slot_waiters
                .iter()
                .map(|w| w.deadline)
                .chain(self.waiters.iter().map(|w| w.deadline))
                .min();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => self.begin_shutdown(None),
                },
                Some(ev) = internal.recv() => self.on_internal(ev),
                // A wait has a deadline even when nothing else happens.
                _ = sleep_until(deadline) => {}
            }
            crate::fatal::inject("supervisor");
            self.check_waiters();
            if std::mem::take(&mut self.spawned_batch) {
                // Let heartbeats, stats and replies run between batches of spawns.
                tokio::task::yield_now().await;
            }
            if self.shutdown.is_some() && self.watchers.values().all(|w| w.slots.is_empty()) {
                if let Some(tx) = self.shutdown.take() {
                    let _ = tx.send(());
                }
                return;
            }
        }
    }

    fn emit(&self, watcher: &str, kind: &'static str, slot: Option<&Slot>) {
        let _ = self.events.send(LifecycleEvent {
            watcher: watcher.to_owned(),
            kind,
            wid: slot.map(|s| s.wid),
            pid: slot.and_then(|s| s.pid),
            exit: slot.and_then(|s| s.last_exit.clone()),
            reason: slot.and_then(|s| s.reason.clone()),
        });
    }

    fn persist(&mut self) {
        if let Some(f) = self.settings.persist.as_mut() {
            let state = self
                .watchers
                .iter()
                .filter(|(_, w)| !w.removing)
                .map(|(n, w)| (n.clone(), (w.cfg.to_options(), w.run)))
                .collect();
            f(&state);
        }
    }

    fn services_changed(&self) {
        let set: BTreeSet<String> = self
            .watchers
            .values()
            .filter(|w| !w.removing)
            .map(|w| w.cfg.service.clone())
            .collect();
        self.services.send_if_modified(|old| {
            if *old != set {
                *old = set;
                true
            } else {
                false
            }
        });
    }

    fn timer(&self, after: Duration, ev: Internal) {
        let tx = self.internal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(ev);
        });
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        let names: Vec<String> = self.watchers.keys().cloned().collect();
        for name in names {
            if let Some(w) = self.watchers.get_mut(&name) {
                w.run = false;
                w.warmup_pending = false;
                w.restart_pending = false;
            }
            self.stop_all_slots(&name);
        }
        self.shutdown = Some(reply.unwrap_or_else(|| oneshot::channel().0));
    }

    // ----- commands -----

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Exec(command, reply) => {
                if self.shutdown.is_some() {
                    let _ = reply.send(Err(gone()));
                    return;
                }
                self.exec(command, reply);
            }
            Cmd::RestartSlot { reply, .. } if self.shutdown.is_some() => {
                let _ = reply.send(Err(gone()));
            }
            Cmd::RestartSlot { name, wid, reply } => self.restart_slot(&name, wid, reply),
            Cmd::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::Reload(watchers, reply) => {
                let outcome = self.reload(watchers);
                let _ = reply.send(outcome);
            }
            Cmd::Shutdown(reply) => self.begin_shutdown(Some(reply)),
        }
    }

    fn targets(&self, name: &Option<String>) -> Result<Vec<String>, CmdError> {
        match name {
            Some(n) if self.watchers.contains_key(n) => Ok(vec![n.clone()]),
            Some(n) => Err(unknown_watcher(n)),
            None => {
                let mut v: Vec<(std::cmp::Reverse<i32>, String)> = self
                    .watchers
                    .iter()
                    .filter(|(_, w)| !w.removing)
                    .map(|(n, w)| (std::cmp::Reverse(w.cfg.priority), n.clone()))
                    .collect();
                v.sort();
                Ok(v.into_iter().map(|(_, n)| n).collect())
            }
        }
    }

    fn watcher(&self, name: &str) -> Result<&Watcher, CmdError> {
        self.watchers
            .get(name)
            .filter(|w| !w.removing)
            .ok_or_else(|| unknown_watcher(name))
    }

    fn statuses(&self, names: &[String]) -> BTreeMap<String, WatcherState> {
        names
            .iter()
            .filter_map(|n| self.watchers.get(n).map(|w| (n.clone(), w.state())))
            .collect()
    }

    fn exec(&mut self, command: Command, reply: oneshot::Sender<Outcome>) {
        let waiting = |names: Vec<String>, this: &mut Actor, reply: oneshot::Sender<Outcome>| {
            this.wait_settled(names, reply);
        };
        let outcome = match command {
            Command::Status(p) => self.targets(&p.name).map(|names| {
                let ws: Vec<&Watcher> = names.iter().filter_map(|n| self.watchers.get(n)).collect();
                data(StatusData {
                    statuses: ws.iter().map(|w| (w.cfg.name.clone(), w.state())).collect(),
                    watchers: ws.iter().map(|w| w.summary()).collect(),
                })
            }),
            Command::List(p) => match &p.name {
                None => Ok(data(ListData {
                    watchers: Some(self.targets(&None).unwrap_or_default()),
                    pids: None,
                    processes: None,
                })),
                Some(n) => self.watcher(n).map(|w| {
                    data(ListData {
                        watchers: None,
                        pids: Some(
                            w.slots
                                .values()
                                .filter_map(|s| s.pid.filter(|_| s.alive()))
                                .collect(),
                        ),
                        processes: Some(w.slots.values().map(Slot::info).collect()),
                    })
                }),
            },
            Command::Start(StartStop { name, waiting }) => {
                return self.act(&name, waiting, Actor::start_watcher, reply)
            }
            Command::Stop(StartStop { name, waiting }) => {
                return self.act(&name, waiting, Actor::stop_watcher, reply)
            }
            Command::Restart(r) | Command::Reload(r) => {
                return self.act(&r.name, r.waiting, Actor::restart_watcher, reply)
            }
            Command::Incr(Resize { name, nb }) => self.resize(&name, |n| n.saturating_add(nb)),
            Command::Decr(Resize { name, nb }) => self.resize(&name, |n| n.saturating_sub(nb)),
            Command::Numprocesses(Numprocesses { name, nb }) => match nb {
                Some(nb) => self.resize(&name, |_| nb),
                None => self.watcher(&name).map(|w| {
                    data(NumprocessesData {
                        numprocesses: w.cfg.numprocesses,
                    })
                }),
            },
            Command::Numwatchers(_) => Ok(data(NumwatchersData {
                numwatchers: self.watchers.values().filter(|w| !w.removing).count() as u32,
            })),
            Command::Signal(p) => self.signal(p),
            Command::Options(p) => self.watcher(&p.name).map(|w| {
                data(OptionsData {
                    options: w.cfg.to_options(),
                })
            }),
            Command::Get(p) => self.get(p),
            Command::Set(p) => match self.set(p) {
                Ok(names) => return waiting(names, self, reply),
                Err(e) => Err(e),
            },
            Command::Add(p) => match self.add(*p) {
                Ok(names) => return waiting(names, self, reply),
                Err(e) => Err(e),
            },
            Command::Rm(p) => match self.watcher(&p.name) {
                Err(e) => Err(e),
                Ok(_) => {
                    let name = p.name.clone();
                    self.remove_watcher(&name);
                    self.persist();
                    self.services_changed();
                    if p.waiting {
                        return waiting(vec![name], self, reply);
                    }
                    Ok(data(ActionData {
                        statuses: BTreeMap::new(),
                        pids: None,
                    }))
                }
            },
            other => Err(CmdError::new(
                Errno::CommandFailed,
                format!("'{}' is not a watcher command", other.name()),
            )),
        };
        let outcome = match outcome {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) | Err(e) => Err(e),
        };
        let _ = reply.send(outcome);
    }

    /// Replies once `names` have settled, or with an error at their deadline.
    fn wait_settled(&mut self, names: Vec<String>, reply: oneshot::Sender<Outcome>) {
        let budget = names
            .iter()
            .filter_map(|n| self.watchers.get(n))
            .map(|w| settle_budget(&w.cfg))
            .max()
            .unwrap_or(SETTLE_MARGIN);
        self.waiters.push(Waiter {
            what: WaitFor::Settled(names),
            deadline: later(Instant::now(), budget),
            reply,
        });
    }

    /// Applies `op` to the named watcher (or all, by priority), persists, and replies
    /// at once or, with `wait`, once the watchers have settled.
    fn act(
        &mut self,
        name: &Option<String>,
        wait: bool,
        op: fn(&mut Actor, &str),
        reply: oneshot::Sender<Outcome>,
    ) {
        let names = match self.targets(name) {
            Ok(names) => names,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        for n in &names {
            op(self, n);
        }
        self.persist();
        if wait {
            self.wait_settled(names, reply);
        } else {
            let _ = reply.send(data(ActionData {
                statuses: self.statuses(&names),
                pids: None,
            }));
        }
    }

    fn resize(&mut self, name: &str, f: impl FnOnce(u32) -> u32) -> Result<Outcome, CmdError> {
        let old = self.watcher(name)?.cfg.numprocesses;
        let n = f(old);
        if let Err(m) = crate::config::check_count("numprocesses", n.into()) {
            return Err(CmdError::new(
                Errno::BadOption,
                format!("option 'numprocesses': {m}"),
            ));
        }
        if n > old {
            self.check_node_limit(name, n)?;
        }
        let w = self.watchers.get_mut(name).expect("checked above");
        w.cfg.numprocesses = n;
        self.ensure(name);
        self.persist();
        Ok(data(NumprocessesData { numprocesses: n }))
    }

    /// Refuses a watcher `name` asking for `n` processes when all watchers together
    /// would ask for more than the node's `max_processes`.
    fn check_node_limit(&self, name: &str, n: u32) -> Result<(), CmdError> {
        let others = self
            .watchers
            .iter()
            .filter(|(other, w)| other.as_str() != name && !w.removing)
            .fold(0u64, |sum, (_, w)| {
                sum.saturating_add(w.cfg.numprocesses.into())
            });
        let total = others.saturating_add(n.into());
        let max = self.settings.max_processes;
        if total > u64::from(max) {
            return Err(CmdError::new(
                Errno::BadOption,
                format!(
                    "node '{}' allows at most {max} processes (max_processes), and its watchers \
                     would ask for {total}; lower numprocesses somewhere or raise [agent] \
                     max_processes in the node's config",
                    self.settings.node
                ),
            ));
        }
        Ok(())
    }

    fn signal(&mut self, p: SignalProps) -> Result<Outcome, CmdError> {
        let w = self.watcher(&p.name)?;
        let sig = match &p.signum {
            protocol::command::SignalSpec::Number(n) => {
                Signal::try_from(*n).map_err(|_| format!("{n} is not a signal number"))
            }
            protocol::command::SignalSpec::Name(s) => parse_signal(s),
        }
        .map_err(|m| CmdError::new(Errno::BadOption, m))?;
        let pids: Vec<u32> = w
            .slots
            .values()
            .filter(|s| s.alive())
            .filter_map(|s| s.pid)
            .collect();
        let pids = match p.pid {
            Some(pid) if pids.contains(&pid) => vec![pid],
            Some(pid) => {
                return Err(CmdError::new(
                    Errno::BadOption,
                    format!(
                        "pid {pid} is not a process of watcher '{}'; `ctl list {}` shows its pids",
                        p.name, p.name
                    ),
                ))
            }
            None => pids,
        };
        for pid in &pids {
            let r = if p.leader_only {
                process::signal_pid(*pid, sig)
            } else {
                process::signal_group(*pid, sig)
            };
            if let Err(e) = r {
                return Err(CmdError::new(
                    Errno::CommandFailed,
                    format!("cannot send {sig} to {pid}: {e}"),
                ));
            }
        }
        Ok(data(ActionData {
            statuses: self.statuses(std::slice::from_ref(&p.name)),
            pids: Some(pids),
        }))
    }

    fn get(&self, p: GetProps) -> Result<Outcome, CmdError> {
        let w = self.watcher(&p.name)?;
        if let Some(bad) = p.keys.iter().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
            return Err(CmdError::new(
                Errno::BadOption,
                format!(
                    "unknown option '{bad}'; options are: {}",
                    OPTION_NAMES.join(", ")
                ),
            ));
        }
        let all = serde_json::to_value(w.cfg.to_options()).unwrap_or_default();
        let mut picked = Map::new();
        for k in &p.keys {
            if let Some(v) = all.get(k) {
                picked.insert(k.clone(), v.clone());
            }
        }
        let options: WatcherOptions = serde_json::from_value(Value::Object(picked))
            .map_err(|e| CmdError::new(Errno::CommandFailed, e.to_string()))?;
        Ok(data(OptionsData { options }))
    }

    fn remote_exec_refused(&self, what: &str) -> Option<CmdError> {
        (!self.settings.allow_remote_exec).then(|| {
            CmdError::new(
                Errno::Forbidden,
                format!(
                    "{what} would start a program remotely, and node '{}' does not allow it; \
                     set allow_remote_exec = true in its [agent] config to permit it",
                    self.settings.node
                ),
            )
        })
    }

    /// Changes options; returns the watchers to wait for.
    fn set(&mut self, p: SetProps) -> Result<Vec<String>, CmdError> {
        let w = self.watcher(&p.name)?;
        if let Some(bad) = p
            .options
            .keys()
            .find(|k| !OPTION_NAMES.contains(&k.as_str()))
        {
            return Err(CmdError::new(
                Errno::BadOption,
                format!(
                    "unknown option '{bad}'; options are: {}",
                    OPTION_NAMES.join(", ")
                ),
            ));
        }
        // What runs, as whom, with what environment, and where it writes.
        const EXEC_KEYS: &[&str] = &[
            "cmd",
            "args",
            "env",
            "copy_env",
            "uid",
            "gid",
            "health_cmd",
            "working_dir",
        ];
        let file_key = |(k, v): &(&String, &Value)| {
            matches!(k.as_str(), "stdout" | "stderr") && crate::config::is_file_output(v)
        };
        if let Some((k, _)) = p.options.iter().find(file_key) {
            if !self.settings.allow_remote_exec {
                return Err(CmdError::new(
                    Errno::Forbidden,
                    format!(
                        "setting '{k}' to a file would let a remote client choose where \
                         node '{}' writes, and it does not allow remote exec; use capture, \
                         discard or inherit, or set allow_remote_exec = true in its [agent] \
                         config to permit it",
                        self.settings.node
                    ),
                ));
            }
        }
        if let Some(k) = p.options.keys().find(|k| EXEC_KEYS.contains(&k.as_str())) {
            if let Some(e) = self.remote_exec_refused(&format!("setting '{k}'")) {
                return Err(e);
            }
        }
        for (k, v) in p.options.iter().filter(|(_, v)| !v.is_null()) {
            protocol::options::check_option(k, v)
                .map_err(|e| CmdError::new(Errno::BadOption, e))?;
        }
        let mut merged = match serde_json::to_value(w.cfg.to_options()) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in &p.options {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        if p.options.contains_key("respawn") && !p.options.contains_key("restart") {
            merged.remove("restart");
        }
        let options: WatcherOptions = serde_json::from_value(Value::Object(merged))
            .map_err(|e| CmdError::new(Errno::BadOption, format!("bad option value: {e}")))?;
        let new = watcher_config(&p.name, &options)?;
        if new.numprocesses > w.cfg.numprocesses {
            self.check_node_limit(&p.name, new.numprocesses)?;
        }
        let name = p.name.clone();
        let w = self.watchers.get_mut(&name).expect("checked above");
        let restart = w.cfg.spawn_differs(&new) && w.run;
        let service_changed = w.cfg.service != new.service;
        LIVE.configure(&name, new.stop_signal, new.graceful_timeout);
        w.cfg = new;
        if restart {
            self.restart_watcher(&name);
        } else {
            self.ensure(&name);
        }
        if service_changed {
            self.services_changed();
        }
        self.persist();
        Ok(vec![name])
    }

    /// Adds a watcher; returns the watchers to wait for.
    fn add(&mut self, p: AddProps) -> Result<Vec<String>, CmdError> {
        if let Some(e) = self.remote_exec_refused("add") {
            return Err(e);
        }
        if self.watchers.contains_key(&p.name) {
            return Err(CmdError::new(
                Errno::AlreadyExists,
                format!(
                    "watcher '{}' already exists; remove it first with `ctl rm {}` or change it with `ctl set`",
                    p.name, p.name
                ),
            ));
        }
        let mut options = p.options.unwrap_or_default();
        options.cmd = Some(p.cmd);
        options.args = Some(p.args);
        let cfg = watcher_config(&p.name, &options)?;
        self.check_node_limit(&p.name, cfg.numprocesses)?;
        let name = p.name.clone();
        self.watchers
            .insert(name.clone(), Watcher::new(cfg, p.start));
        self.emit(&name, "add", None);
        self.ensure(&name);
        self.services_changed();
        self.persist();
        Ok(vec![name])
    }

    fn reload(&mut self, new: BTreeMap<String, WatcherConfig>) -> Outcome {
        let mut result = ReloadData {
            added: vec![],
            removed: vec![],
            changed: vec![],
        };
        let old: Vec<String> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.removing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &old {
            if !new.contains_key(name) {
                self.remove_watcher(name);
                result.removed.push(name.clone());
            }
        }
        for (name, cfg) in new {
            match self.watchers.get_mut(&name) {
                Some(w) if !w.removing => {
                    if w.cfg == cfg {
                        continue;
                    }
                    let restart = w.cfg.spawn_differs(&cfg) && w.run;
                    LIVE.configure(&name, cfg.stop_signal, cfg.graceful_timeout);
                    w.cfg = cfg;
                    result.changed.push(name.clone());
                    self.emit(&name, "reload", None);
                    if restart {
                        self.restart_watcher(&name);
                    } else {
                        self.ensure(&name);
                    }
                }
                Some(_) => {}
                None => {
                    let run = cfg.autostart;
                    self.watchers.insert(name.clone(), Watcher::new(cfg, run));
                    self.emit(&name, "add", None);
                    self.ensure(&name);
                    result.added.push(name);
                }
            }
        }
        self.services_changed();
        self.persist();
        data(result)
    }

    fn snapshot(&self) -> Vec<WatcherSnapshot> {
        self.watchers
            .values()
            .filter(|w| !w.removing)
            .map(|w| WatcherSnapshot {
                name: w.cfg.name.clone(),
                service: w.cfg.service.clone(),
                state: w.state(),
                numprocesses: w.cfg.numprocesses,
                running: w.running(),
                restarts: w.restarts(),
                processes: w
                    .slots
                    .values()
                    .filter(|s| s.alive())
                    .filter_map(|s| {
                        Some(ProcessSnapshot {
                            wid: s.wid,
                            pid: s.pid?,
                            started_at: s.started.map(|(_, t)| t).unwrap_or_default(),
                            restarts: s.restarts,
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    // ----- watcher operations -----

    fn start_watcher(&mut self, name: &str) {
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

    fn stop_watcher(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        w.run = false;
        w.warmup_pending = false;
        w.restart_pending = false;
        self.emit(name, "stop", None);
        self.stop_all_slots(name);
    }

    fn restart_watcher(&mut self, name: &str) {
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

    fn remove_watcher(&mut self, name: &str) {
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
    fn ensure(&mut self, name: &str) {
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
        for (i, wid) in missing.iter().enumerate() {
            if i >= SPAWN_BATCH {
                // The rest at the next turn, after whatever else is waiting.
                if let Some(w) = self.watchers.get_mut(name) {
                    w.warmup_pending = true;
                }
                self.spawned_batch = true;
                let _ = self.internal.send(Internal::Warmup {
                    name: name.to_owned(),
                });
                return;
            }
            if i > 0 && !warmup.is_zero() {
                if let Some(w) = self.watchers.get_mut(name) {
                    w.warmup_pending = true;
                }
                self.timer(
                    warmup,
                    Internal::Warmup {
                        name: name.to_owned(),
                    },
                );
                return;
            }
            self.watchers
                .get_mut(name)
                .expect("present")
                .slots
                .insert(*wid, Slot::new(*wid));
            self.spawn_slot(name, *wid);
        }
        if let Some(w) = self.watchers.get_mut(name) {
            w.warmup_pending = false;
        }
    }

    fn spawn_slot(&mut self, name: &str, wid: u32) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let node = self.settings.node.clone();
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let cfg = &w.cfg;
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
        let spec = SpawnSpec {
            cmd: expand(&cfg.cmd, name, wid),
            args: cfg.args.iter().map(|a| expand(a, name, wid)).collect(),
            env,
            clear_env: !cfg.copy_env,
            working_dir: cfg.working_dir.clone(),
            uid: cfg.uid_num,
            gid: cfg.gid_num,
            stdout: cfg.stdout.clone(),
            stderr: cfg.stderr.clone(),
        };
        let min_uptime = cfg.min_uptime;
        let cfg_stop = (cfg.stop_signal, cfg.graceful_timeout);
        let health = cfg.health_cmd.clone();
        let health_timeout = cfg.health_timeout;
        let (max_bytes, backups) = (cfg.log_max_bytes, cfg.log_backups);
        let capture = cfg.stdout == Output::Capture || cfg.stderr == Output::Capture;
        let slot = w.slots.get_mut(&wid).expect("slot exists before spawn");
        slot.gen = gen;
        slot.kill_at = None;
        slot.leader_gone = false;
        slot.after_stop = AfterStop::Remove;
        slot.uptime_reached = false;
        match process::spawn(&spec) {
            Ok(mut spawned) => {
                slot.pid = Some(spawned.pid);
                slot.state = ProcessState::Starting;
                slot.started = Some((Instant::now(), protocol::unix_time()));
                slot.reason = None;
                slot.healthy = health.is_none();
                slot.health_failed = false;
                let pid = spawned.pid;
                let tx = self.internal.clone();
                let owned = name.to_owned();
                let groups = self.settings.groups.clone();
                if let Some(g) = &groups {
                    g.started(pid);
                }
                LIVE.configure(name, cfg_stop.0, cfg_stop.1);
                LIVE.started(pid, name);
                tokio::spawn(async move {
                    let status = spawned.child.wait().await;
                    if let Some(g) = &groups {
                        g.ended(pid);
                    }
                    let _ = tx.send(Internal::Exited {
                        name: owned,
                        wid,
                        gen,
                        status,
                    });
                });
                if capture {
                    self.output.capture(CapturedOutput {
                        watcher: name.to_owned(),
                        wid,
                        stdout: spawned.stdout.take(),
                        stderr: spawned.stderr.take(),
                        max_bytes,
                        backups,
                    });
                }
                let slot_ref = &self.watchers[name].slots[&wid];
                self.emit(name, "spawn", Some(slot_ref));
                self.timer(
                    min_uptime,
                    Internal::UptimeReached {
                        name: name.to_owned(),
                        wid,
                        gen,
                    },
                );
                if let Some(h) = health {
                    self.health_check(name, wid, gen, pid, h, health_timeout);
                }
            }
            Err(e) => {
                let reason = format!("cannot start {:?}: {e}", spec.cmd);
                tracing::warn!(watcher = name, wid, "{reason}");
                slot.pid = None;
                slot.started = None;
                slot.reason = Some(reason);
                self.after_exit(name, wid, None);
            }
        }
    }

    fn health_check(
        &self,
        name: &str,
        wid: u32,
        gen: u64,
        pid: u32,
        cmd: Vec<String>,
        timeout: Duration,
    ) {
        let tx = self.internal.clone();
        let name = name.to_owned();
        let argv: Vec<String> = cmd
            .iter()
            .map(|a| expand(a, &name, wid).replace("$(pid)", &pid.to_string()))
            .collect();
        tokio::spawn(async move {
            let deadline = later(Instant::now(), timeout);
            let ok = loop {
                let status = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status();
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left.max(Duration::from_millis(1)), status).await {
                    Ok(Ok(s)) if s.success() => break true,
                    _ if Instant::now() >= deadline => break false,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let _ = tx.send(Internal::Health { name, wid, gen, ok });
        });
    }

    /// Asks one slot's process to stop. `respawn` starts it again once stopped.
    fn stop_slot(&mut self, name: &str, wid: u32, respawn: bool) {
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
        match slot.pid {
            Some(pid) => {
                slot.state = ProcessState::Stopping;
                let kill_at = later(Instant::now(), graceful);
                slot.kill_at = Some(kill_at);
                let sig = if graceful.is_zero() {
                    Signal::SIGKILL
                } else {
                    sig
                };
                if let Err(e) = process::signal_group(pid, sig) {
                    tracing::warn!(watcher = name, wid, pid, "cannot signal: {e}");
                }
                let gen = slot.gen;
                self.timer(
                    graceful,
                    Internal::StopCheck {
                        name: name.to_owned(),
                        wid,
                        gen,
                    },
                );
            }
            None => {
                slot.state = ProcessState::Stopping;
                self.finish_stop(name, wid);
            }
        }
    }

    /// A slot's process and its whole group are gone after a stop.
    fn finish_stop(&mut self, name: &str, wid: u32) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        if let Some(pid) = slot.pid.take() {
            LIVE.ended(pid);
        }
        slot.kill_at = None;
        slot.leader_gone = false;
        let wanted = w.run && !w.restart_pending && !w.removing && wid <= w.cfg.numprocesses;
        match (slot.after_stop, wanted) {
            (AfterStop::Respawn, true) => {
                slot.restarts += 1;
                slot.failures = 0;
                self.spawn_slot(name, wid);
            }
            (AfterStop::Start, true) => {
                *slot = Slot::new(wid);
                self.spawn_slot(name, wid);
            }
            (AfterStop::Remove, _) | (_, false) => {
                w.slots.remove(&wid);
            }
        }
        self.after_slot_change(name);
    }

    /// After slots went away: a pending restart starts anew, a removed watcher goes.
    fn after_slot_change(&mut self, name: &str) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let stopping = w.slots.values().any(|s| s.state == ProcessState::Stopping);
        if w.removing && w.slots.is_empty() {
            self.watchers.remove(name);
            self.output.forget(name);
            self.emit(name, "rm", None);
            self.services_changed();
            return;
        }
        if w.restart_pending && !stopping {
            w.restart_pending = false;
            // Slots still present are fatal or exited ones; they start afresh.
            w.slots.clear();
            self.ensure(name);
        }
    }

    fn restart_slot(&mut self, name: &str, wid: u32, reply: oneshot::Sender<Result<(), CmdError>>) {
        let Ok(w) = self.watcher(name) else {
            let _ = reply.send(Err(unknown_watcher(name)));
            return;
        };
        let timeout = w
            .cfg
            .graceful_timeout
            .saturating_add(KILL_GRACE)
            .saturating_add(w.cfg.min_uptime)
            .saturating_add(w.cfg.health_timeout)
            .saturating_add(Duration::from_secs(5))
            .min(MAX_WAIT);
        let Some(slot) = w.slots.get(&wid) else {
            let _ = reply.send(Ok(()));
            return;
        };
        let old_gen = slot.gen;
        if slot.pid.is_none() {
            // Nothing runs in this slot: start it afresh.
            let w = self.watchers.get_mut(name).expect("checked");
            w.slots.insert(wid, Slot::new(wid));
            self.spawn_slot(name, wid);
        } else {
            self.stop_slot(name, wid, true);
        }
        self.slot_waiters.push(SlotWaiter {
            name: name.to_owned(),
            wid,
            old_gen,
            deadline: later(Instant::now(), timeout),
            reply,
        });
    }

    // ----- internal events -----

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Exited {
                name,
                wid,
                gen,
                status,
            } => self.on_exit(&name, wid, gen, status),
            Internal::RespawnDue { name, wid, gen } => {
                let due = self
                    .watchers
                    .get(&name)
                    .and_then(|w| w.slots.get(&wid))
                    .is_some_and(|s| s.gen == gen && s.state == ProcessState::Backoff);
                if due {
                    if let Some(s) = self
                        .watchers
                        .get_mut(&name)
                        .and_then(|w| w.slots.get_mut(&wid))
                    {
                        s.restarts += 1;
                    }
                    self.spawn_slot(&name, wid);
                    self.emit_slot(&name, wid, "respawn");
                }
            }
            Internal::UptimeReached { name, wid, gen } => {
                if let Some(s) = self.slot_mut(&name, wid, gen) {
                    s.uptime_reached = true;
                    if s.state == ProcessState::Starting && s.healthy {
                        s.state = ProcessState::Running;
                    }
                }
            }
            Internal::Health { name, wid, gen, ok } => {
                if let Some(s) = self.slot_mut(&name, wid, gen) {
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
            }
            Internal::StopCheck { name, wid, gen } => self.stop_check(&name, wid, gen),
            Internal::Warmup { name } => {
                if let Some(w) = self.watchers.get_mut(&name) {
                    w.warmup_pending = false;
                }
                self.ensure(&name);
            }
        }
    }

    fn slot_mut(&mut self, name: &str, wid: u32, gen: u64) -> Option<&mut Slot> {
        self.watchers
            .get_mut(name)?
            .slots
            .get_mut(&wid)
            .filter(|s| s.gen == gen)
    }

    fn emit_slot(&self, name: &str, wid: u32, kind: &'static str) {
        if let Some(s) = self.watchers.get(name).and_then(|w| w.slots.get(&wid)) {
            self.emit(name, kind, Some(s));
        }
    }

    fn stop_check(&mut self, name: &str, wid: u32, gen: u64) {
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        if slot.state != ProcessState::Stopping {
            return;
        }
        let Some(pid) = slot.pid else {
            return;
        };
        if !process::group_alive(pid) {
            if slot.leader_gone {
                self.finish_stop(name, wid);
            }
            return;
        }
        if slot
            .kill_at
            .is_some_and(|t| Instant::now() >= later(t, KILL_GRACE))
        {
            tracing::error!(
                watcher = name,
                wid,
                pid,
                "the process group survived SIGKILL for {KILL_GRACE:?} (uninterruptible \
                 sleep?); giving up on it"
            );
            self.finish_stop(name, wid);
            return;
        }
        if slot.kill_at.is_some_and(|t| Instant::now() >= t) {
            if !slot.killed {
                tracing::info!(
                    watcher = name,
                    wid,
                    pid,
                    "graceful_timeout passed; sending SIGKILL to the process group"
                );
            }
            let _ = process::signal_group(pid, Signal::SIGKILL);
            slot.killed = true;
        }
        if slot.leader_gone || slot.kill_at.is_some_and(|t| Instant::now() >= t) {
            self.timer(
                STOP_POLL,
                Internal::StopCheck {
                    name: name.to_owned(),
                    wid,
                    gen,
                },
            );
        }
    }

    fn on_exit(
        &mut self,
        name: &str,
        wid: u32,
        gen: u64,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        let Some(slot) = self.slot_mut(name, wid, gen) else {
            return;
        };
        let exit = match status {
            Ok(s) => process::exit_status(s),
            Err(_) => ExitStatus {
                code: None,
                signal: None,
            },
        };
        slot.last_exit = Some(exit);
        let pid = slot.pid;
        let stopping = slot.state == ProcessState::Stopping;
        self.emit_slot(name, wid, "exit");
        if stopping {
            let slot = self.slot_mut(name, wid, gen).expect("present");
            slot.leader_gone = true;
            if pid.is_some_and(process::group_alive) {
                self.timer(
                    STOP_POLL,
                    Internal::StopCheck {
                        name: name.to_owned(),
                        wid,
                        gen,
                    },
                );
            } else {
                self.finish_stop(name, wid);
            }
            return;
        }
        // The main process died on its own: whatever it left in its group goes too.
        if let Some(pid) = pid {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            LIVE.ended(pid);
        }
        let slot = self.slot_mut(name, wid, gen).expect("present");
        slot.pid = None;
        let exit = slot.last_exit.clone();
        self.after_exit(name, wid, exit);
    }

    /// Applies the restart policy to a slot whose process ended (or never started).
    fn after_exit(&mut self, name: &str, wid: u32, exit: Option<ExitStatus>) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let rules = w.rules();
        let run = w.run && wid <= w.cfg.numprocesses;
        let Some(slot) = w.slots.get_mut(&wid) else {
            return;
        };
        let uptime = slot.started.map(|(t, _)| t.elapsed()).unwrap_or_default();
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
                self.spawn_slot(name, wid);
                self.emit_slot(name, wid, "respawn");
            }
            policy::Decision::Respawn { delay } => {
                slot.state = ProcessState::Backoff;
                let gen = slot.gen;
                self.timer(
                    delay,
                    Internal::RespawnDue {
                        name: name.to_owned(),
                        wid,
                        gen,
                    },
                );
            }
            policy::Decision::Stay => {
                slot.state = ProcessState::Exited;
            }
            policy::Decision::Fatal { reason } => {
                tracing::warn!(watcher = name, wid, "{reason}");
                slot.state = ProcessState::Fatal;
                slot.reason = Some(reason);
                self.emit_slot(name, wid, "flapping");
            }
        }
    }

    // ----- waiters -----

    fn check_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            let WaitFor::Settled(names) = &self.waiters[i].what;
            let done = names
                .iter()
                .all(|n| self.watchers.get(n).is_none_or(|w| w.settled()));
            if done {
                let w = self.waiters.swap_remove(i);
                let WaitFor::Settled(names) = &w.what;
                let _ = w.reply.send(data(ActionData {
                    statuses: self.statuses(names),
                    pids: None,
                }));
            } else if Instant::now() >= self.waiters[i].deadline {
                let w = self.waiters.swap_remove(i);
                let WaitFor::Settled(names) = &w.what;
                let states: Vec<String> = self
                    .statuses(names)
                    .iter()
                    .map(|(n, st)| format!("'{n}' is {st}"))
                    .collect();
                let _ = w.reply.send(Err(CmdError::new(
                    Errno::CommandFailed,
                    format!(
                        "gave up waiting: {} did not settle in time; `ctl status` shows \
                         where they are",
                        states.join(", ")
                    ),
                )));
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.slot_waiters.len() {
            let sw = &self.slot_waiters[i];
            let slot = self
                .watchers
                .get(&sw.name)
                .and_then(|w| w.slots.get(&sw.wid));
            let result = match slot {
                None => Some(Err(CmdError::new(
                    Errno::CommandFailed,
                    format!(
                        "process {} of '{}' went away during the restart",
                        sw.wid, sw.name
                    ),
                ))),
                Some(s) if s.gen > sw.old_gen && s.state == ProcessState::Running => Some(Ok(())),
                Some(s)
                    if s.gen > sw.old_gen
                        && (s.health_failed
                            || matches!(
                                s.state,
                                ProcessState::Fatal | ProcessState::Backoff | ProcessState::Exited
                            )) =>
                {
                    Some(Err(CmdError::new(
                        Errno::CommandFailed,
                        format!(
                            "process {} of '{}' did not come back up: {}",
                            sw.wid,
                            sw.name,
                            s.reason
                                .clone()
                                .or_else(|| s.last_exit.as_ref().map(|e| e.to_string()))
                                .unwrap_or_else(|| "it exited".into())
                        ),
                    )))
                }
                Some(s) if Instant::now() >= sw.deadline => Some(Err(CmdError::new(
                    Errno::CommandFailed,
                    format!(
                        "process {} of '{}' was not up in time ({})",
                        sw.wid,
                        sw.name,
                        s.reason
                            .clone()
                            .unwrap_or_else(|| format!("state {}", s.state))
                    ),
                ))),
                Some(_) => None,
            };
            match result {
                Some(r) => {
                    let sw = self.slot_waiters.swap_remove(i);
                    let _ = sw.reply.send(r);
                }
                None => i += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopped-or-stopping watcher "w" whose slot 1 is stopping a process group
    /// (`pid` is out of range, so the group counts as gone), without real processes:
    /// its command does not exist and it is never respawned, so any start shows as one
    /// failed spawn.
    fn stopping_actor() -> Actor {
        let cfg = WatcherConfig::from_options(
            "w",
            &WatcherOptions {
                cmd: Some("/nonexistent/never-runs".into()),
                respawn: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        let (internal, _) = mpsc::unbounded_channel();
        let (services, _) = watch::channel(BTreeSet::new());
        let mut actor = Actor {
            watchers: BTreeMap::new(),
            next_gen: 10,
            internal,
            events: broadcast::channel(16).0,
            waiters: Vec::new(),
            slot_waiters: Vec::new(),
            settings: Settings {
                node: "n".into(),
                allow_remote_exec: false,
                persist: None,
                groups: None,
                max_processes: 10,
            },
            output: Box::new(DrainOutput),
            services,
            shutdown: None,
            spawned_batch: false,
        };
        let mut w = Watcher::new(cfg, true);
        let mut slot = Slot::new(1);
        slot.gen = 1;
        slot.state = ProcessState::Running;
        slot.pid = Some(u32::MAX);
        slot.restarts = 3;
        w.slots.insert(1, slot);
        actor.watchers.insert("w".into(), w);
        actor
    }

    fn leader_killed(actor: &mut Actor) {
        use std::os::unix::process::ExitStatusExt;
        actor.on_internal(Internal::Exited {
            name: "w".into(),
            wid: 1,
            gen: 1,
            status: Ok(std::process::ExitStatus::from_raw(9)),
        });
    }

    #[tokio::test]
    async fn a_start_while_a_slot_stops_starts_it_once_its_group_is_gone() {
        type Step = fn(&mut Actor);
        let stop: Step = |a| a.stop_watcher("w");
        let start: Step = |a| a.start_watcher("w");
        let restart_one: Step = |a| a.stop_slot("w", 1, true);
        // What happens while slot 1 stops, then the restarts of the new process started
        // in slot 1 once the group is gone, or None when the slot goes.
        let cases: &[(&str, &[Step], Option<u32>)] = &[
            ("stop", &[stop], None),
            ("stop, start", &[stop, start], Some(0)),
            ("stop, start, stop", &[stop, start, stop], None),
            ("stop, start, start", &[stop, start, start], Some(0)),
            ("restart one", &[restart_one], Some(4)),
            ("restart one, start", &[restart_one, start], Some(4)),
            ("restart one, stop", &[restart_one, stop], None),
        ];
        for (what, steps, restarts) in cases {
            let mut actor = stopping_actor();
            for step in *steps {
                step(&mut actor);
            }
            let w = &actor.watchers["w"];
            // Until the group is gone, the watcher says it is stopping, not active.
            assert_eq!(w.state(), WatcherState::Stopping, "{what}");
            assert!(!w.settled(), "{what}");
            leader_killed(&mut actor);
            let w = &actor.watchers["w"];
            assert!(w.settled(), "{what}");
            match (w.slots.get(&1), restarts) {
                (None, None) => {}
                (Some(s), Some(restarts)) => {
                    // A new process was spawned (here it cannot start, and stays exited).
                    assert!(s.gen >= 10, "{what}: {s:?}");
                    assert_eq!(s.restarts, *restarts, "{what}: {s:?}");
                    assert!(
                        s.reason
                            .as_deref()
                            .is_some_and(|r| r.contains("cannot start")),
                        "{what}: {s:?}"
                    );
                    assert_eq!(s.state, ProcessState::Exited, "{what}: {s:?}");
                }
                (slot, _) => panic!("{what}: slot 1 is {slot:?}, expected {restarts:?}"),
            }
            // A watcher that should run has its process started; one that should not,
            // none.
            assert_eq!(w.run, restarts.is_some(), "{what}");
        }
    }

    #[test]
    fn every_wait_has_a_bounded_budget() {
        let mut cfg = WatcherConfig::from_options(
            "w",
            &WatcherOptions {
                cmd: Some("sleep".into()),
                ..Default::default()
            },
        )
        .unwrap();
        // 30s graceful, 5s SIGKILL grace, no warmup, 60s margin.
        assert_eq!(settle_budget(&cfg), Duration::from_secs(95));
        cfg.warmup_delay = Duration::from_secs(3600);
        cfg.numprocesses = 100_000;
        assert_eq!(settle_budget(&cfg), MAX_WAIT);
        cfg.graceful_timeout = Duration::MAX;
        assert_eq!(settle_budget(&cfg), MAX_WAIT);
    }
}
