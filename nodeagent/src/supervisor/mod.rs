//! The supervisor: its handle and public types. It owns the watchers and their process
//! table through an actor ([`actor`]) that carries out the effects of pure transitions
//! ([`lifecycle`], [`commands`], [`waiters`] over the [`model`]); the restart decision
//! is the pure [`policy::after_exit`]. This file must not hold state transitions or I/O.

mod actor;
pub mod adopt;
mod commands;
mod guards;
mod hooks;
mod lifecycle;
pub mod live;
mod model;
mod plan;
pub mod policy;
mod surge;
mod waiters;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use protocol::command::{Command, Restart};
use protocol::reply::{ActionData, ExitStatus, PlanData, ReplyData, ReplyKind, WatcherState};
use protocol::{Errno, WatcherOptions};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::WatcherConfig;
use crate::sockets::{SocketSet, SocketSpec};

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

/// A command's result: the reply's typed data, or an error.
pub type Outcome = Result<ReplyData, CmdError>;

/// A successful outcome carrying `d`.
fn data(d: impl Into<ReplyData>) -> Outcome {
    Ok(d.into())
}

/// A lifecycle event, for the transport to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LifecycleEvent {
    pub watcher: String,
    /// spawn, exit, respawn, flapping, unhealthy, start, stop, add, rm, reload.
    pub kind: &'static str,
    pub wid: Option<u32>,
    pub pid: Option<u32>,
    pub exit: Option<ExitStatus>,
    pub reason: Option<String>,
    /// When the supervisor saw it (unix seconds): the wall-clock time of the turn whose
    /// clock reading also armed its timers, so that the gap between two events is what
    /// the supervisor measured, however late the event reaches the bus.
    pub time: f64,
    /// The resident memory that crossed `max_memory`, and the limit (`max_memory`).
    pub rss_bytes: Option<u64>,
    pub max_memory: Option<u64>,
    /// Which hook (`hook_failed`).
    pub hook: Option<String>,
}

/// One reading of a process's resident memory, for the `max_memory` guard.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReading {
    pub watcher: String,
    pub wid: u32,
    pub pid: u32,
    pub rss_bytes: u64,
}

/// One live process, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSnapshot {
    pub wid: u32,
    pub pid: u32,
    /// Unix time it started.
    pub started_at: f64,
    pub restarts: u32,
    /// How it is doing by its checks.
    pub health: Option<protocol::reply::ProcessHealth>,
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
    /// Its `max_memory`: its processes' memory is read even when stats are off.
    pub max_memory: Option<u64>,
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
    /// Captures the pipes of a process adopted across the agent's exec.
    fn adopt(&mut self, out: AdoptedOutput) {
        drain_fds(out);
    }
    /// Stops reading every pipe for the agent's exec, once what was read is stored,
    /// and returns the pipes (close-on-exec cleared); `None` when that failed in time.
    fn hand_over(&mut self) -> futures::future::BoxFuture<'static, Option<Vec<adopt::HandedPipe>>> {
        Box::pin(async { Some(Vec::new()) })
    }
    /// Reads the pipes again after a hand-over whose exec failed.
    fn resume(&mut self) {}
}

/// The inherited pipes of an adopted process, for the output sink.
pub struct AdoptedOutput {
    pub watcher: String,
    pub wid: u32,
    pub stdout: Option<std::os::fd::OwnedFd>,
    pub stderr: Option<std::os::fd::OwnedFd>,
    pub max_bytes: u64,
    pub backups: u32,
}

/// Reads and drops what adopted pipes carry.
fn drain_fds(out: AdoptedOutput) {
    for fd in [out.stdout, out.stderr].into_iter().flatten() {
        if let Ok(mut p) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            tokio::spawn(async move { tokio::io::copy(&mut p, &mut tokio::io::sink()).await });
        }
    }
}

/// Reads and drops captured output, so that no child blocks on a full pipe (for an
/// agent that keeps no logs, and the benchmarks).
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

/// Saves the desired state after each change. It runs on a blocking thread of its own,
/// never on the actor's task.
pub type PersistFn = Box<dyn FnMut(&DesiredState) + Send>;

/// What the supervisor needs besides the watchers.
pub struct Settings {
    pub node: String,
    pub allow_remote_exec: bool,
    /// Called after every change of desired state, with every watcher's options and
    /// whether it should run; persists them. A command's reply leaves once the state it
    /// changed is saved.
    pub persist: Option<PersistFn>,
    /// Where every process group started is noted, for the next start after a crash.
    pub groups: Option<std::sync::Arc<crate::groups::Groups>>,
    /// A private directory for the notify sockets of watchers with
    /// `ready = { notify = true }`; without one such processes cannot start.
    pub notify_dir: Option<std::path::PathBuf>,
    /// The most processes all watchers together may ask for (`[agent] max_processes`).
    pub max_processes: u32,
    /// The sockets the agent bound, which the watchers' processes get by name.
    pub sockets: SocketSet,
}

/// What the handle asks of the actor.
enum Cmd {
    Exec(Command, oneshot::Sender<Outcome>),
    /// Restarts one slot; the reply comes once its new process is up.
    RestartSlot {
        name: String,
        wid: u32,
        reply: oneshot::Sender<Outcome>,
    },
    /// The actor binds the sockets (unless a dry run) before the model sees the reload.
    Reload(Box<Reload>, oneshot::Sender<Outcome>),
    /// Memory readings of processes, for `max_memory`.
    Memory(Vec<MemoryReading>),
    Shutdown(oneshot::Sender<()>),
    /// Freezes the actor for the agent's exec (see [`adopt::Frozen`]); refused while a
    /// hook runs.
    Freeze(oneshot::Sender<Result<adopt::Frozen, CmdError>>),
}

/// A reload of the config file: its watchers and sockets, the file's watchers as last
/// loaded, and whether only the plan is wanted.
#[derive(Debug)]
pub struct Reload {
    pub file: BTreeMap<String, WatcherConfig>,
    /// The file's `[socket.NAME]` tables.
    pub sockets: BTreeMap<String, SocketSpec>,
    pub base: BTreeMap<String, WatcherConfig>,
    pub dry_run: bool,
}

/// The handle other rooms use to talk to the supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    tx: mpsc::Sender<Cmd>,
    events: broadcast::Sender<std::sync::Arc<LifecycleEvent>>,
    services: watch::Receiver<BTreeSet<String>>,
    /// The actor's latest snapshot; none until it has started the watchers.
    snapshots: watch::Receiver<Option<Vec<WatcherSnapshot>>>,
}

fn gone() -> CmdError {
    CmdError::new(Errno::ShuttingDown, "the agent is shutting down")
}

/// The actor answered with data of another kind than its own command gives: a bug.
fn not_the_kind(wanted: ReplyKind, got: ReplyKind) -> CmdError {
    CmdError::new(
        Errno::CommandFailed,
        format!("internal error: the supervisor answered {got:?} data, where {wanted:?} was due"),
    )
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

    /// Restarts the processes of the watcher(s) a few at a time (see [`Self::roll`]).
    async fn rolling_restart(&self, r: &Restart) -> Outcome {
        let names: Vec<String> = match &r.name {
            Some(n) => vec![n.clone()],
            None => self.snapshot().await?.into_iter().map(|w| w.name).collect(),
        };
        let mut statuses = BTreeMap::new();
        for name in names {
            self.roll(&name).await?;
            statuses.insert(name, WatcherState::Active);
        }
        data(ActionData {
            statuses,
            pids: None,
        })
    }

    /// Restarts the processes of one watcher a few at a time (see
    /// [`WatcherConfig::rollout`]): with surge, each replacement starts next to its old
    /// process, which stops once the replacement is ready; otherwise each process
    /// stops, then starts again. Every new process must be ready (past `min_uptime`,
    /// and its `ready` check passed where one is set) before the next ones are
    /// restarted. `restart --rolling` and a reload's restart of changed watchers both
    /// restart this way.
    async fn roll(&self, name: &str) -> Result<(), CmdError> {
        let list = self
            .exec_plain(Command::List(protocol::command::MaybeName {
                name: Some(name.to_owned()),
            }))
            .await?;
        let kind = list.kind();
        let ReplyData::List(list) = list else {
            return Err(not_the_kind(ReplyKind::List, kind));
        };
        let mut wids: Vec<u32> = list
            .processes
            .unwrap_or_default()
            .iter()
            .map(|p| p.wid)
            .collect();
        // A slot shows twice while a replacement runs next to its process.
        wids.dedup();
        let at_once = self.rollout_batch(name).await?;
        for batch in wids.chunks(at_once) {
            let restarts = batch.iter().map(|wid| self.restart_slot(name, *wid));
            for outcome in futures::future::join_all(restarts).await {
                outcome?;
            }
        }
        Ok(())
    }

    /// How many processes of `name` a rolling restart replaces at once.
    async fn rollout_batch(&self, name: &str) -> Result<usize, CmdError> {
        let options = self
            .exec_plain(Command::Options(protocol::command::Name {
                name: name.to_owned(),
            }))
            .await?;
        let kind = options.kind();
        let ReplyData::Options(o) = options else {
            return Err(not_the_kind(ReplyKind::Options, kind));
        };
        let n = WatcherConfig::from_options(name, &o.options)
            .map(|c| match c.rollout() {
                crate::config::Rollout::Surge(n) | crate::config::Rollout::Unavailable(n) => n,
            })
            .unwrap_or(1);
        Ok(usize::try_from(n).unwrap_or(1).max(1))
    }

    /// Restarts one slot; answers once its new process is up.
    async fn restart_slot(&self, name: &str, wid: u32) -> Result<(), CmdError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::RestartSlot {
                name: name.to_owned(),
                wid,
                reply: tx,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map(|_| ())
    }

    /// Every watcher with its live processes, as of the actor's last change; once the
    /// actor has started the watchers, it never waits for the actor.
    pub async fn snapshot(&self) -> Result<Vec<WatcherSnapshot>, CmdError> {
        if self.tx.is_closed() {
            return Err(gone());
        }
        let mut snapshots = self.snapshots.clone();
        let ready = snapshots
            .wait_for(Option::is_some)
            .await
            .map_err(|_| gone())?;
        Ok(ready.clone().unwrap_or_default())
    }

    /// The actor's snapshots as they change (none until it has started the watchers).
    pub fn snapshots(&self) -> watch::Receiver<Option<Vec<WatcherSnapshot>>> {
        self.snapshots.clone()
    }

    /// The plan between the running watchers and sockets and a newly read config file
    /// (`reload.base` is the file's watchers as last loaded), and unless `dry_run`,
    /// applies it: the file's sockets are bound first (a socket that cannot be bound
    /// refuses the whole reload, and nothing changes); returns once added and removed
    /// watchers are on their way, scaled ones resized and changed ones given their new
    /// options; [`Self::restart_changed`] then restarts the processes that must restart
    /// to take them (or a socket bound anew). A dry run binds nothing.
    pub async fn reload(&self, reload: Reload) -> Result<PlanData, CmdError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Reload(Box::new(reload), tx))
            .await
            .map_err(|_| gone())?;
        let data = rx.await.map_err(|_| gone())??;
        let kind = data.kind();
        let ReplyData::Plan(plan) = data else {
            return Err(not_the_kind(ReplyKind::Plan, kind));
        };
        Ok(plan)
    }

    /// Restarts each watcher an applied plan says must restart to take its change, as
    /// `restart --rolling` does ([`Self::roll`]: the watcher's max_surge/max_unavailable).
    pub async fn restart_changed(&self, plan: &PlanData) -> Result<(), CmdError> {
        for w in plan.watchers.iter().filter(|w| w.restart) {
            self.roll(&w.name).await.map_err(|e| {
                CmdError::new(
                    e.errno,
                    format!(
                        "the config was applied, but the rolling restart of '{}' stopped: {}",
                        w.name, e.reason
                    ),
                )
            })?;
        }
        Ok(())
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

    /// Freezes the supervisor for the agent's exec: it hands over its processes and
    /// pipes, then acts on nothing until the returned `resume` is sent or dropped.
    /// Refused while a hook runs (its result, or the command it holds, would be lost).
    pub async fn freeze(&self) -> Result<adopt::Frozen, CmdError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Freeze(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Hands memory readings of processes to the `max_memory` guard.
    pub async fn memory(&self, readings: Vec<MemoryReading>) {
        if !readings.is_empty() {
            let _ = self.tx.send(Cmd::Memory(readings)).await;
        }
    }

    /// Lifecycle events as they happen.
    pub fn events(&self) -> broadcast::Receiver<std::sync::Arc<LifecycleEvent>> {
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
    start_adopting(watchers, stopped, settings, output, Vec::new())
}

/// As [`start`], taking first the processes the agent's previous image handed over
/// (see [`adopt`]); the watchers then start only what is missing.
pub fn start_adopting(
    watchers: BTreeMap<String, WatcherConfig>,
    stopped: BTreeSet<String>,
    settings: Settings,
    output: Box<dyn OutputSink>,
    adopted: Vec<adopt::Adopted>,
) -> (SupervisorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    // Shared, not copied: each of the 4096 slots holds a pointer, not a whole event.
    let (events, _) = broadcast::channel(4096);
    let mut sup = model::Supervisor::new(
        model::Limits {
            node: settings.node.clone(),
            allow_remote_exec: settings.allow_remote_exec,
            max_processes: settings.max_processes,
        },
        std::time::Instant::now(),
    );
    sup.sockets = settings.sockets.clone();
    // Spreads `max_age_variance` differently on each run of the agent.
    sup.seed = uuid::Uuid::new_v4().as_u64_pair().0;
    for (name, cfg) in watchers {
        let run = cfg.lifecycle.autostart && !stopped.contains(&name);
        sup.watchers.insert(name, model::Watcher::new(cfg, run));
    }
    let total = sup.watchers.values().fold(0u64, |n, w| {
        n.saturating_add(w.cfg.command.numprocesses.into())
    });
    // The config's graph was checked; watchers kept from saved runtime changes may
    // depend on one the file has dropped since. They wait, and the log says why.
    for e in crate::config::deps::graph_errors(&sup.graph()) {
        tracing::warn!("{e}; its processes wait until that is fixed (ctl set or the config file)");
    }
    if total > u64::from(settings.max_processes) {
        tracing::warn!(
            "the watchers ask for {total} processes together (saved state included), more \
             than max_processes = {}; they run, but none may grow until they are below it",
            settings.max_processes
        );
    }
    let (services_tx, services_rx) = watch::channel(BTreeSet::new());
    let services = sup.services();
    services_tx.send_if_modified(|old| {
        let changed = *old != services;
        *old = services;
        changed
    });
    let (snapshots_tx, snapshots_rx) = watch::channel(None);
    let handle = SupervisorHandle {
        tx,
        events: events.clone(),
        services: services_rx,
        snapshots: snapshots_rx,
    };
    let actor = actor::Actor::new(
        sup,
        actor::Outlets {
            events,
            services: services_tx,
            snapshots: snapshots_tx,
        },
        settings,
        output,
    );
    let task = tokio::spawn(actor.run(rx, adopted));
    (handle, task)
}
