//! The actor: it owns the [`Supervisor`] model and carries out the effects its
//! transitions return: spawning through [`process`], signals, tokio timers, probes
//! (through [`crate::probe`], notify sockets included), persistence on a writer task of its own, events, replies, and publishing
//! snapshots and services after each turn that changed them. It must not decide
//! anything about watchers or slots: that is the model's job.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::reply::ExitStatus;
use protocol::Errno;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::time::DelayQueue;

use super::adopt::{Adopted, Frozen};
use super::live::LIVE;
use super::model::{Effect, Input, ReplyId, SpawnOrder, Stage, Supervisor, Timer};
use super::{
    CapturedOutput, Cmd, CmdError, DesiredState, LifecycleEvent, Outcome, OutputSink, PersistFn,
    Reload, Settings, WatcherSnapshot,
};
use crate::process;
use crate::sockets::SocketSet;

/// One transition at the current time; its events carry the wall-clock time read with
/// the clock the transition was given.
fn step(sup: &mut Supervisor, input: Input) -> Vec<Effect> {
    let (now, unix) = (Instant::now(), protocol::unix_time());
    let mut effects = sup.step(input, now);
    for e in &mut effects {
        if let Effect::Emit(ev) = e {
            ev.time = unix;
        }
    }
    effects
}

/// How late a change of health alone (a process ready, a probe's result) may be
/// published: such changes are published together, so that thousands of processes
/// becoming ready do not each copy the whole snapshot.
const HEALTH_LAG: Duration = Duration::from_millis(100);

/// The longest a timer is armed for (the timer wheel panics past about two years).
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the actor publishes.
pub(super) struct Outlets {
    pub events: broadcast::Sender<Arc<LifecycleEvent>>,
    pub services: watch::Sender<BTreeSet<String>>,
    pub snapshots: watch::Sender<Option<Vec<WatcherSnapshot>>>,
}

/// What the wait, timer and probe tasks tell the actor.
enum Report {
    Exited {
        name: String,
        wid: u32,
        gen: u64,
        pid: u32,
        status: std::io::Result<std::process::ExitStatus>,
    },
    Probe {
        name: String,
        wid: u32,
        gen: u64,
        stage: Stage,
        result: Result<(), String>,
    },
    Timer(Timer),
    Hook(Box<super::hooks::HookDone>),
}

/// What goes to the state writer, in order.
enum ToWriter {
    /// Save this state (number `seq`); a later one replaces it if not yet written.
    Save(u64, DesiredState),
    /// Send this reply once every state before it is saved.
    Release(oneshot::Sender<Outcome>, Outcome),
}

/// The task that saves the desired state off the actor's task.
struct Writer {
    tx: mpsc::UnboundedSender<ToWriter>,
    /// The last state number sent, and the last saved.
    sent: u64,
    saved: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(persist: PersistFn) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let saved = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(write_states(persist, rx, saved.clone()));
        Writer {
            tx,
            sent: 0,
            saved,
            task,
        }
    }

    fn save(&mut self, state: DesiredState) {
        self.sent += 1;
        let _ = self.tx.send(ToWriter::Save(self.sent, state));
    }

    /// Replies at once when every state is saved, otherwise once it is.
    fn release(&self, reply: oneshot::Sender<Outcome>, outcome: Outcome) {
        if self.saved.load(Ordering::Acquire) >= self.sent {
            let _ = reply.send(outcome);
        } else if let Err(mpsc::error::SendError(ToWriter::Release(reply, outcome))) =
            self.tx.send(ToWriter::Release(reply, outcome))
        {
            let _ = reply.send(outcome);
        }
    }

    /// Writes what is left and ends.
    async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Saves the latest state of each batch on a blocking thread, then sends the replies
/// that waited for it.
async fn write_states(
    persist: PersistFn,
    mut rx: mpsc::UnboundedReceiver<ToWriter>,
    saved: Arc<AtomicU64>,
) {
    let mut persist = Some(persist);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut latest = None;
        let mut replies = Vec::new();
        for m in batch {
            match m {
                ToWriter::Save(seq, state) => latest = Some((seq, state)),
                ToWriter::Release(reply, outcome) => replies.push((reply, outcome)),
            }
        }
        if let Some((seq, state)) = latest {
            if let Some(mut f) = persist.take() {
                match tokio::task::spawn_blocking(move || {
                    f(&state);
                    f
                })
                .await
                {
                    Ok(f) => persist = Some(f),
                    Err(e) => tracing::error!("saving the state failed: {e}; no more saves"),
                }
            }
            saved.store(seq, Ordering::Release);
        }
        for (reply, outcome) in replies {
            let _ = reply.send(outcome);
        }
    }
}

pub(super) struct Actor {
    sup: Supervisor,
    out: Outlets,
    output: Box<dyn OutputSink>,
    groups: Option<Arc<crate::groups::Groups>>,
    writer: Option<Writer>,
    replies: BTreeMap<ReplyId, oneshot::Sender<Outcome>>,
    next_reply: ReplyId,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// A batch of spawns ran and more wait for the next turn.
    batched: bool,
    /// Armed timers, in one wheel: a timer costs an entry, not a task, so the many
    /// graceful-stop timers of a busy resize (each lives `graceful_timeout`, even when
    /// its group is gone at once) hold no memory to speak of.
    timers: DelayQueue<Timer>,
    /// Replies and events of this turn, sent once the snapshot is published.
    outbox: Vec<Effect>,
    /// When health changes not yet published are due to be.
    health_due: Option<Instant>,
    /// Where notify sockets go, if anywhere.
    notify_dir: Option<std::path::PathBuf>,
    /// The task listening on each live process's notify socket, by generation; it
    /// ends (and its socket goes) when the process exits.
    notify: BTreeMap<u64, tokio::task::JoinHandle<()>>,
    /// The sockets a reload replaces, closed here after the turn rather than in the
    /// model (closing a unix socket removes its file).
    retired: Option<SocketSet>,
    /// The pipes of adopted processes, until their `Watch` effect captures them.
    adopted_pipes: BTreeMap<(String, u32), AdoptedPipes>,
    /// Where adopted pids go to be waited on (see [`wait_adopted`]).
    adopted_waits: Option<mpsc::UnboundedSender<AdoptedWait>>,
    /// Hooks started and not answered yet: no freeze for an upgrade meanwhile.
    hooks_running: usize,
}

type AdoptedPipes = (Option<std::os::fd::OwnedFd>, Option<std::os::fd::OwnedFd>);

/// An adopted process to wait on; `None` for one the actor stops as nobody's.
struct AdoptedWait {
    pid: u32,
    slot: Option<(String, u32, u64)>,
}

/// A spawn made ready to fork, and what the actor does once it has.
struct Launch {
    name: String,
    wid: u32,
    gen: u64,
    stop: (nix::sys::signal::Signal, Duration),
    cmd: String,
    capture: Option<(u64, u32)>,
    respawn: bool,
    socket: Option<crate::probe::NotifySocket>,
}

/// Takes the spawns at the front of `todo`, those in a row.
fn spawns_at_front(todo: &mut VecDeque<Effect>) -> Vec<SpawnOrder> {
    let mut orders = Vec::new();
    while matches!(todo.front(), Some(Effect::Spawn(_))) {
        if let Some(Effect::Spawn(order)) = todo.pop_front() {
            orders.push(*order);
        }
    }
    orders
}

impl Actor {
    pub fn new(
        sup: Supervisor,
        out: Outlets,
        settings: Settings,
        output: Box<dyn OutputSink>,
    ) -> Actor {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        Actor {
            sup,
            out,
            output,
            groups: settings.groups,
            writer: settings.persist.map(Writer::start),
            replies: BTreeMap::new(),
            next_reply: 1,
            reports_tx,
            reports,
            batched: false,
            timers: DelayQueue::new(),
            outbox: Vec::new(),
            // Without the sockets a crashed earlier run left behind.
            notify_dir: settings.notify_dir.inspect(|d| {
                let _ = std::fs::remove_dir_all(d);
            }),
            notify: BTreeMap::new(),
            health_due: None,
            retired: None,
            adopted_pipes: BTreeMap::new(),
            adopted_waits: None,
            hooks_running: 0,
        }
    }

    pub async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, adopted: Vec<Adopted>) {
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        let mut open = true;
        if !adopted.is_empty() {
            self.adopt(adopted).await;
        }
        self.turn(Input::Boot).await;
        loop {
            let deadline = match (self.sup.next_deadline(), self.health_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if std::mem::take(&mut self.batched) {
                // Let heartbeats, stats and replies run between batches of spawns.
                tokio::task::yield_now().await;
            }
            let input = tokio::select! {
                cmd = cmds.recv(), if open => match cmd {
                    Some(Cmd::Freeze(reply)) => {
                        self.freeze(reply).await;
                        Input::Tick
                    }
                    Some(cmd) => self.input(cmd, &mut shutdown),
                    None => {
                        open = false;
                        Input::Shutdown
                    }
                },
                Some(report) = self.reports.recv() => self.observe(report),
                Some(due) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if !self.timers.is_empty() =>
                {
                    self.observe(Report::Timer(due.into_inner()))
                }
                // A wait has a deadline even when nothing else happens.
                _ = crate::clock::sleep_until(deadline) => Input::Tick,
            };
            self.turn(input).await;
            self.retired = None;
            crate::fatal::inject("supervisor");
            if self.sup.finished() {
                break;
            }
        }
        for (_, task) in std::mem::take(&mut self.notify) {
            task.abort();
        }
        if let Some(writer) = self.writer.take() {
            writer.finish().await;
        }
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
    }

    /// A command as the model's input; its reply channel stays here.
    fn input(&mut self, cmd: Cmd, shutdown: &mut Option<oneshot::Sender<()>>) -> Input {
        match cmd {
            Cmd::Exec(command, reply) => Input::Command(command, self.keep(reply)),
            Cmd::RestartSlot { name, wid, reply } => Input::RestartSlot {
                name,
                wid,
                reply: self.keep(reply),
            },
            Cmd::Reload(reload, reply) => self.reload(reload, reply),
            Cmd::Memory(readings) => Input::Memory(readings),
            Cmd::Shutdown(reply) => {
                *shutdown = Some(reply);
                Input::Shutdown
            }
            // Taken in `run`, which awaits it.
            Cmd::Freeze(_) => Input::Tick,
        }
    }

    /// Takes the processes of the agent's previous image: into their slots, or stopped
    /// when no slot takes them (their watcher is gone from the config).
    async fn adopt(&mut self, adopted: Vec<Adopted>) {
        let mut slots = Vec::with_capacity(adopted.len());
        for a in adopted {
            let key = (a.process.watcher.clone(), a.process.pid);
            self.adopted_pipes.insert(key, (a.stdout, a.stderr));
            slots.push(a.process);
        }
        self.sup.now = Instant::now();
        let refused = self.sup.adopt(slots, protocol::unix_time());
        for a in refused {
            tracing::warn!(
                watcher = %a.watcher,
                wid = a.wid,
                pid = a.pid,
                "no watcher takes this process of the previous image any more; stopping it"
            );
            // Its pipes are read until it exits, so that it never blocks on them.
            if let Some((out, err)) = self.adopted_pipes.remove(&(a.watcher.clone(), a.pid)) {
                super::drain_fds(super::AdoptedOutput {
                    watcher: a.watcher.clone(),
                    wid: a.wid,
                    stdout: out,
                    stderr: err,
                    max_bytes: 0,
                    backups: 0,
                });
            }
            if let Some(g) = &self.groups {
                g.started(a.pid);
            }
            self.wait_adopted(a.pid, None);
            let pid = a.pid;
            let _ = process::signal_group(pid, nix::sys::signal::Signal::SIGTERM);
            tokio::spawn(async move {
                tokio::time::sleep(super::live::KILL_GRACE.max(Duration::from_secs(10))).await;
                if process::group_alive(pid) {
                    let _ = process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
            });
        }
        let effects = std::mem::take(&mut self.sup.out);
        let mut todo: VecDeque<Effect> = effects.into();
        while !todo.is_empty() {
            let orders = spawns_at_front(&mut todo);
            if !orders.is_empty() {
                for result in self.spawn_all(orders).await {
                    todo.extend(step(&mut self.sup, result));
                }
                continue;
            }
            if let Some(effect) = todo.pop_front() {
                if let Some(result) = self.perform(effect).await {
                    todo.extend(step(&mut self.sup, result));
                }
            }
        }
        self.outbox.clear();
    }

    /// Waits on adopted process `pid` (not a tokio child: the previous image spawned
    /// it), reporting its exit as for any process of `slot`.
    fn wait_adopted(&mut self, pid: u32, slot: Option<(String, u32, u64)>) {
        let tx = self.adopted_waits.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(wait_adopted(
                rx,
                self.reports_tx.clone(),
                self.groups.clone(),
            ));
            tx
        });
        let _ = tx.send(AdoptedWait { pid, slot });
    }

    /// Hands the processes and pipes over for the agent's exec, then does nothing until
    /// resumed (the exec failed) or ended by the exec.
    async fn freeze(&mut self, reply: oneshot::Sender<Result<Frozen, CmdError>>) {
        let held = self.sup.gates.len() + self.sup.held_spawns.len();
        if self.hooks_running > 0 || held > 0 {
            let _ = reply.send(Err(CmdError::new(
                Errno::CommandFailed,
                format!(
                    "{} hook(s) running, {held} command(s) or spawn(s) waiting for one: \
                     nothing was changed; upgrade again once they finished",
                    self.hooks_running
                ),
            )));
            return;
        }
        let processes = self.sup.handed_processes();
        let pipes = self.output.hand_over().await;
        let (resume, resumed) = oneshot::channel();
        let frozen = Frozen {
            processes,
            pipes,
            sockets: self.sup.sockets.clone(),
            resume,
        };
        if reply.send(Ok(frozen)).is_ok() {
            let _ = resumed.await;
        }
        self.output.resume();
        tracing::info!("the supervisor goes on");
    }

    /// A reload as the model's input. Unless it is a dry run, the file's sockets are
    /// bound first, once the model's checks pass: a reload refused for either changes
    /// nothing (not even a socket's backlog or mode), and the model never sees it. The
    /// sockets the reload replaces are closed after the turn.
    fn reload(&mut self, reload: Box<Reload>, reply: oneshot::Sender<Outcome>) -> Input {
        if reload.dry_run {
            return Input::Reload(reload, None, self.keep(reply));
        }
        if let Err(e) = self.sup.check_reload(&reload) {
            let _ = reply.send(Err(e));
            return Input::Tick;
        }
        let changes = self.sup.sockets.plan(&reload.sockets);
        match SocketSet::bind(&reload.sockets, &self.sup.sockets) {
            Ok(sockets) => {
                if changes != Default::default() {
                    tracing::info!(
                        "sockets: added {:?}, removed {:?}, changed {:?}",
                        changes.added,
                        changes.removed,
                        changes.changed
                    );
                }
                self.retired = Some(self.sup.sockets.clone());
                Input::Reload(reload, Some(Box::new(sockets)), self.keep(reply))
            }
            Err(e) => {
                let _ = reply.send(Err(CmdError::new(
                    Errno::CommandFailed,
                    format!("{e}\nnothing was changed; fix the config and reload again"),
                )));
                Input::Tick
            }
        }
    }

    fn keep(&mut self, reply: oneshot::Sender<Outcome>) -> ReplyId {
        let id = self.next_reply;
        self.next_reply += 1;
        self.replies.insert(id, reply);
        id
    }

    /// A task's report as the model's input, with what the actor observed.
    fn observe(&mut self, report: Report) -> Input {
        match report {
            Report::Exited {
                name,
                wid,
                gen,
                pid,
                status,
            } => {
                if let Some(task) = self.notify.remove(&gen) {
                    task.abort();
                }
                Input::Exited {
                    name,
                    wid,
                    gen,
                    exit: match status {
                        Ok(s) => process::exit_status(s),
                        Err(_) => ExitStatus {
                            code: None,
                            signal: None,
                        },
                    },
                    group_alive: process::group_alive(pid),
                }
            }
            Report::Probe {
                name,
                wid,
                gen,
                stage,
                result,
            } => Input::Probe {
                name,
                wid,
                gen,
                stage,
                result,
            },
            Report::Timer(Timer::StopCheck {
                name,
                wid,
                gen,
                pid,
            }) => Input::StopCheck {
                name,
                wid,
                gen,
                group_alive: process::group_alive(pid),
            },
            Report::Timer(timer) => Input::Timer(timer),
            Report::Hook(done) => {
                self.hooks_running = self.hooks_running.saturating_sub(1);
                Input::HookDone(done)
            }
        }
    }

    /// One turn: the transition, its effects (spawns in a row are forked together, and
    /// each one's result goes back to the model, in order, before the next effect), then
    /// the published state, then replies and events.
    async fn turn(&mut self, input: Input) {
        // A timer or a report that returns no effect changes nothing that is published
        // but, at most, a process's health (once it has run min_uptime, or a probe
        // answered): that is published within HEALTH_LAG, once for many such turns.
        let health = matches!(
            input,
            Input::Timer(Timer::UptimeReached { .. }) | Input::Probe { .. }
        );
        let mut dirty = match &input {
            Input::Timer(_)
            | Input::Probe { .. }
            | Input::StopCheck { .. }
            | Input::Tick
            | Input::Memory(_) => false,
            Input::Boot
            | Input::Command(..)
            | Input::RestartSlot { .. }
            | Input::Reload(..)
            | Input::Shutdown
            | Input::Spawned { .. }
            | Input::SpawnFailed { .. }
            | Input::Exited { .. }
            | Input::HookDone(_) => true,
        };
        let mut todo: VecDeque<Effect> = step(&mut self.sup, input).into();
        // Arming a timer or starting a probe changes nothing published either.
        dirty |= todo
            .iter()
            .any(|e| !matches!(e, Effect::ArmTimer { .. } | Effect::Probe { .. }));
        let mut persist = None;
        while !todo.is_empty() {
            // The spawns in a row, forked together; each one's result goes back to the
            // model, in order, before the next effect.
            let orders = spawns_at_front(&mut todo);
            if !orders.is_empty() {
                let mut more = Vec::new();
                for result in self.spawn_all(orders).await {
                    more.extend(step(&mut self.sup, result));
                }
                for e in more.into_iter().rev() {
                    todo.push_front(e);
                }
                continue;
            }
            match todo.pop_front() {
                Some(Effect::Persist(state)) => persist = Some(state),
                Some(effect) => {
                    if let Some(result) = self.perform(effect).await {
                        let more = step(&mut self.sup, result);
                        for e in more.into_iter().rev() {
                            todo.push_front(e);
                        }
                    }
                }
                None => {}
            }
        }
        if let (Some(state), Some(writer)) = (persist, self.writer.as_mut()) {
            writer.save(state);
        }
        let now = Instant::now();
        if dirty || self.health_due.is_some_and(|due| now >= due) {
            self.publish();
            self.health_due = None;
        } else if health && self.health_due.is_none() {
            self.health_due = Some(now + HEALTH_LAG);
        }
        for effect in std::mem::take(&mut self.outbox) {
            match effect {
                Effect::Emit(ev) => {
                    let _ = self.out.events.send(Arc::new(ev));
                }
                Effect::Reply { to, outcome } => self.send_reply(to, outcome),
                _ => {}
            }
        }
    }

    fn publish(&self) {
        let services = self.sup.services();
        self.out.services.send_if_modified(|old| {
            let changed = *old != services;
            *old = services;
            changed
        });
        let snapshot = Some(self.sup.snapshot());
        self.out.snapshots.send_if_modified(|old| {
            let changed = *old != snapshot;
            *old = snapshot;
            changed
        });
    }

    fn send_reply(&mut self, to: ReplyId, outcome: Outcome) {
        let Some(reply) = self.replies.remove(&to) else {
            return;
        };
        match &self.writer {
            Some(writer) => writer.release(reply, outcome),
            None => {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Carries out one effect; a spawn returns its result for the model (the turn takes
    /// spawns in a row together, through [`Self::spawn_all`]).
    async fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn(order) => return self.spawn_all(vec![*order]).await.pop(),
            Effect::Signal {
                watcher,
                wid,
                pid,
                signal,
            } => {
                if let Err(e) = process::signal_group(pid, signal) {
                    tracing::warn!(watcher, wid, pid, "cannot send {signal}: {e}");
                }
            }
            Effect::Probe {
                watcher,
                wid,
                gen,
                stage,
                check,
                timeout,
            } => {
                let tx = self.reports_tx.clone();
                tokio::spawn(async move {
                    let result = crate::probe::run(&check, timeout).await;
                    let _ = tx.send(Report::Probe {
                        name: watcher,
                        wid,
                        gen,
                        stage,
                        result,
                    });
                });
            }
            Effect::ArmTimer { after, timer } => {
                // Every duration is bounded well below the wheel's limit (about two
                // years) by the option ranges; the cap only keeps `insert` from panicking.
                self.timers.insert(timer, after.min(MAX_TIMER));
            }
            Effect::NextTurn(timer) => {
                // Behind what already waits: commands and exits come first.
                self.batched = true;
                let _ = self.reports_tx.send(Report::Timer(timer));
            }
            Effect::SignalProcesses {
                pids,
                signal,
                leader_only,
                to,
                outcome,
            } => {
                let failed = pids.iter().find_map(|pid| {
                    let r = if leader_only {
                        process::signal_pid(*pid, signal)
                    } else {
                        process::signal_group(*pid, signal)
                    };
                    r.err().map(|e| {
                        CmdError::new(
                            Errno::CommandFailed,
                            format!("cannot send {signal} to {pid}: {e}"),
                        )
                    })
                });
                let outcome = failed.map_or(outcome, Err);
                self.outbox.push(Effect::Reply { to, outcome });
            }
            Effect::Configure { watcher, stop } => LIVE.configure(&watcher, stop.0, stop.1),
            Effect::Ended { pid } => LIVE.ended(pid),
            Effect::ForgetOutput(watcher) => self.output.forget(&watcher),
            Effect::Watch {
                watcher,
                wid,
                gen,
                pid,
                stop,
            } => {
                if let Some(g) = &self.groups {
                    g.started(pid);
                }
                LIVE.configure(&watcher, stop.0, stop.1);
                LIVE.started(pid, &watcher);
                let pipes = self.adopted_pipes.remove(&(watcher.clone(), pid));
                let capture = self
                    .sup
                    .watchers
                    .get(&watcher)
                    .map(|w| (w.cfg.log_max_bytes, w.cfg.log_backups));
                if let (Some((stdout, stderr)), Some((max_bytes, backups))) = (pipes, capture) {
                    self.output.adopt(super::AdoptedOutput {
                        watcher: watcher.clone(),
                        wid,
                        stdout,
                        stderr,
                        max_bytes,
                        backups,
                    });
                }
                self.wait_adopted(pid, Some((watcher, wid, gen)));
            }
            Effect::Hook(order) => {
                self.hooks_running += 1;
                let tx = self.reports_tx.clone();
                tokio::spawn(async move {
                    let order = *order;
                    let result = crate::probe::run_hook(&order.spec, order.timeout).await;
                    let _ = tx.send(Report::Hook(Box::new(super::hooks::HookDone {
                        watcher: order.watcher,
                        kind: order.kind,
                        wid: order.wid,
                        gen: order.gen,
                        pid: order.pid,
                        result,
                    })));
                });
            }
            e @ (Effect::Emit(_) | Effect::Reply { .. }) => self.outbox.push(e),
            Effect::Persist(_) => {}
        }
        None
    }

    /// Starts the processes of `orders`, forked together, and returns each one's
    /// result for the model, in the same order.
    async fn spawn_all(&mut self, orders: Vec<SpawnOrder>) -> Vec<Input> {
        let mut prepared = Vec::with_capacity(orders.len());
        let mut specs = Vec::with_capacity(orders.len());
        for order in orders {
            prepared.push(self.prepare(order).map(|(launch, spec)| {
                specs.push(spec);
                launch
            }));
        }
        let mut results = process::spawn_all(specs).await.into_iter();
        let mut inputs = Vec::with_capacity(prepared.len());
        for p in prepared {
            inputs.push(match p {
                Ok(launch) => {
                    let result = results.next().unwrap_or_else(|| {
                        Err(std::io::Error::other(
                            "the agent is stopping: no process starts now",
                        ))
                    });
                    self.started(launch, result)
                }
                Err(failed) => failed,
            });
        }
        inputs
    }

    /// What a spawn needs before the fork (its notify socket), or its failure.
    fn prepare(&mut self, order: SpawnOrder) -> Result<(Launch, process::SpawnSpec), Input> {
        let SpawnOrder {
            watcher: name,
            wid,
            gen,
            stop,
            mut spec,
            capture,
            respawn,
            notify,
        } = order;
        let socket = if notify {
            match self.notify_socket(gen, spec.uid) {
                Ok(socket) => {
                    let path = socket.path().display().to_string();
                    spec.env.push(("NOTIFY_SOCKET".into(), path));
                    Some(socket)
                }
                Err(e) => {
                    return Err(Input::SpawnFailed {
                        reason: format!("cannot make the notify socket of {:?}: {e}", spec.cmd),
                        name,
                        wid,
                        gen,
                        respawn,
                    })
                }
            }
        } else {
            None
        };
        let launch = Launch {
            name,
            wid,
            gen,
            stop,
            cmd: spec.cmd.clone(),
            capture,
            respawn,
            socket,
        };
        Ok((launch, spec))
    }

    /// What follows a fork: the process watched, its exit awaited, its output read.
    fn started(&mut self, launch: Launch, result: std::io::Result<process::Spawned>) -> Input {
        let Launch {
            name,
            wid,
            gen,
            stop,
            cmd,
            capture,
            respawn,
            socket,
        } = launch;
        let mut spawned = match result {
            Ok(s) => s,
            Err(e) => {
                return Input::SpawnFailed {
                    reason: format!("cannot start {cmd:?}: {e}"),
                    name,
                    wid,
                    gen,
                    respawn,
                }
            }
        };
        let pid = spawned.pid;
        let groups = self.groups.clone();
        if let Some(g) = &groups {
            g.started(pid);
        }
        LIVE.configure(&name, stop.0, stop.1);
        LIVE.started(pid, &name);
        if let Some(socket) = socket {
            let tx = self.reports_tx.clone();
            let owned = name.clone();
            let task = tokio::spawn(async move {
                if socket.ready().await.is_ok() {
                    let _ = tx.send(Report::Probe {
                        name: owned,
                        wid,
                        gen,
                        stage: Stage::Ready,
                        result: Ok(()),
                    });
                }
                // Later datagrams (STATUS=...) are not read; the socket stays until
                // the process exits, so that they do not fail.
                std::future::pending::<()>().await;
                drop(socket);
            });
            self.notify.insert(gen, task);
        }
        let tx = self.reports_tx.clone();
        let owned = name.clone();
        tokio::spawn(async move {
            let status = spawned.child.wait().await;
            if let Some(g) = &groups {
                g.ended(pid);
            }
            let _ = tx.send(Report::Exited {
                name: owned,
                wid,
                gen,
                pid,
                status,
            });
        });
        if let Some((max_bytes, backups)) = capture {
            self.output.capture(CapturedOutput {
                watcher: name.clone(),
                wid,
                stdout: spawned.stdout.take(),
                stderr: spawned.stderr.take(),
                max_bytes,
                backups,
            });
        }
        Input::Spawned {
            name,
            wid,
            gen,
            pid,
            unix: protocol::unix_time(),
            respawn,
        }
    }

    /// A notify socket for the process of generation `gen`, in the notify dir.
    fn notify_socket(
        &self,
        gen: u64,
        uid: Option<u32>,
    ) -> std::io::Result<crate::probe::NotifySocket> {
        let Some(dir) = &self.notify_dir else {
            return Err(std::io::Error::other(
                "this agent has no directory for notify sockets",
            ));
        };
        crate::probe::NotifySocket::bind(
            dir,
            &format!("{gen}-{:x}.sock", uuid::Uuid::new_v4().as_u64_pair().0),
            uid,
        )
    }
}

/// Waits on the adopted processes: at each SIGCHLD (and as each arrives), reaps those
/// that exited, without waiting, and reports them as the wait of a spawned process
/// does. Ends when the actor is gone.
async fn wait_adopted(
    mut rx: mpsc::UnboundedReceiver<AdoptedWait>,
    reports: mpsc::UnboundedSender<Report>,
    groups: Option<Arc<crate::groups::Groups>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(
                "cannot watch SIGCHLD: {e}; adopted processes are checked every second"
            );
            None
        }
    };
    let mut waiting: Vec<AdoptedWait> = Vec::new();
    loop {
        tokio::select! {
            w = rx.recv() => match w {
                Some(w) => waiting.push(w),
                None => return,
            },
            _ = async {
                match sigchld.as_mut() {
                    Some(s) => { s.recv().await; }
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            } => {}
        }
        waiting.retain(|w| {
            let Some(status) = process::try_reap(w.pid) else {
                return true;
            };
            if let Some(g) = &groups {
                g.ended(w.pid);
            }
            match &w.slot {
                Some((name, wid, gen)) => {
                    let _ = reports.send(Report::Exited {
                        name: name.clone(),
                        wid: *wid,
                        gen: *gen,
                        pid: w.pid,
                        status,
                    });
                }
                None => {
                    LIVE.ended(w.pid);
                    tracing::info!(pid = w.pid, "a process nobody takes any more has exited");
                }
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use protocol::command::{AddProps, Command, StartStop};

    use super::super::{start, DrainOutput, Settings};
    use super::*;

    /// A supervisor with no watcher whose saves are slow and noted.
    fn slow_saves() -> (
        super::super::SupervisorHandle,
        Arc<Mutex<Vec<DesiredState>>>,
    ) {
        let saved = Arc::new(Mutex::new(Vec::new()));
        let noted = saved.clone();
        let persist: PersistFn = Box::new(move |state: &DesiredState| {
            std::thread::sleep(Duration::from_millis(100));
            noted.lock().unwrap().push(state.clone());
        });
        let (handle, _task) = start(
            BTreeMap::new(),
            BTreeSet::new(),
            Settings {
                node: "n".into(),
                allow_remote_exec: true,
                persist: Some(persist),
                groups: None,
                notify_dir: None,
                max_processes: 10,
                sockets: SocketSet::default(),
            },
            Box::new(DrainOutput),
        );
        (handle, saved)
    }

    fn add(name: &str) -> Command {
        Command::Add(Box::new(AddProps {
            name: name.into(),
            cmd: "sleep".into(),
            args: vec!["1000".into()],
            options: None,
            start: false,
        }))
    }

    #[tokio::test]
    async fn a_reply_leaves_once_its_change_is_saved_and_in_the_snapshot() {
        let (handle, saved) = slow_saves();
        handle.exec(add("a")).await.unwrap();
        let last = saved.lock().unwrap().last().cloned().unwrap_or_default();
        assert!(last.contains_key("a"), "{last:?}");
        let names: Vec<String> = handle
            .snapshot()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["a"]);
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn saves_coalesce_and_each_reply_waits_for_its_save() {
        let (handle, saved) = slow_saves();
        let names: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
        let all = names.iter().map(|n| {
            let handle = handle.clone();
            let n = n.clone();
            async move { handle.exec(add(&n)).await }
        });
        let started = Instant::now();
        for r in futures::future::join_all(all).await {
            r.unwrap();
        }
        // Eight saves of 100ms each one after the other would take 800ms.
        let took = started.elapsed();
        let writes = saved.lock().unwrap().len();
        assert!(writes < 8, "{writes} writes in {took:?}");
        let last = saved.lock().unwrap().last().cloned().unwrap_or_default();
        assert_eq!(last.keys().cloned().collect::<Vec<_>>(), names);
        // A stop of a watcher that runs nothing is saved too, and its reply waits.
        let stop = Command::Stop(StartStop {
            name: Some("w0".into()),
            waiting: false,
        });
        handle.exec(stop).await.unwrap();
        let last = saved.lock().unwrap().last().cloned().unwrap_or_default();
        assert!(last.get("w0").is_some_and(|(_, run)| !run), "{last:?}");
        handle.shutdown().await;
    }
}
