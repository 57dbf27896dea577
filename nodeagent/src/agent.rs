//! The agent's wiring: the start-up order (dirs and lock, name check, process group
//! ledger (ending a crashed run's leftovers), sockets, connection, saved state, logs,
//! supervisor, membership task, stats, relays, then serving requests) and the shutdown order (processes first, then leave, drain and
//! flush). It handles no request (see [`crate::dispatch`]), touches no process (the
//! supervisor does), reads nothing from /proc (stats does) and speaks to NATS only
//! through [`crate::transport`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::events::EventKind;
use protocol::{Subjects, WatcherOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ValidatedConfig, WatcherConfig};
use crate::dispatch::Node;
use crate::groups::Groups;
use crate::handoff;
use crate::identity::Identity;
use crate::logs::{Closing, LogManager};
use crate::memberloop::{self, MembershipHandle, MembershipSettings};
use crate::membership::{MembershipConfig, SuspectAfter};
use crate::relay;
use crate::sockets::{BindError, SocketSet};
use crate::state::{self, StateStore};
use crate::supervisor::{self, CapturedOutput, OutputSink, SupervisorHandle};
use crate::transport::{self, Publisher, TransportError};
use crate::upgrade::{self, UpgradeHandle};

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node name '{name}' is already taken by a running agent (pid {pid} on host {host}); pick another [agent] name or stop that agent")]
    NameTaken {
        name: String,
        host: String,
        pid: u32,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("cannot use the log dir: {0}")]
    Logs(crate::logs::LogError),
    #[error("stopped after an internal error: {0}")]
    Panicked(String),
    /// A `[socket.NAME]` could not be bound: a config error.
    #[error("invalid config {path}: {source}")]
    Sockets {
        path: std::path::PathBuf,
        source: BindError,
    },
}

/// Hands captured output to the rotating log files. When the supervisor drops it (it
/// stopped), every log writer is handed to the agent, which waits for their last lines.
struct LogCapture {
    logs: LogManager,
    closed: Option<oneshot::Sender<Closing>>,
}

impl OutputSink for LogCapture {
    fn capture(&mut self, out: CapturedOutput) {
        if let Err(e) = self.logs.capture(
            &out.watcher,
            out.wid,
            out.stdout,
            out.stderr,
            out.max_bytes,
            out.backups,
        ) {
            tracing::error!(watcher = %out.watcher, "cannot capture output: {e}");
        }
    }

    fn forget(&mut self, watcher: &str) {
        drop(self.logs.remove(watcher));
    }

    fn adopt(&mut self, out: supervisor::AdoptedOutput) {
        if let Err(e) = self.logs.capture_fds(
            &out.watcher,
            out.wid,
            out.stdout,
            out.stderr,
            out.max_bytes,
            out.backups,
        ) {
            tracing::error!(watcher = %out.watcher, "cannot capture output: {e}");
        }
    }

    fn hand_over(
        &mut self,
    ) -> futures::future::BoxFuture<'static, Option<Vec<supervisor::adopt::HandedPipe>>> {
        let pipes = self.logs.hand_over(HANDOVER_WITHIN);
        Box::pin(async move {
            let pipes = pipes.await?;
            Some(
                pipes
                    .into_iter()
                    .map(|p| supervisor::adopt::HandedPipe {
                        watcher: p.watcher,
                        wid: p.wid,
                        stdout: p.stream == protocol::logs::Stream::Stdout,
                        fd: p.fd,
                    })
                    .collect(),
            )
        })
    }

    fn resume(&mut self) {
        self.logs.resume();
    }
}

/// How long the log pumps may take to stop and write what they read, for an upgrade.
const HANDOVER_WITHIN: Duration = Duration::from_secs(2);

impl Drop for LogCapture {
    fn drop(&mut self) {
        if let Some(tx) = self.closed.take() {
            let _ = tx.send(self.logs.close_all());
        }
    }
}

/// How long a stopping agent waits for its last messages to reach NATS.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// How long a stopping agent waits for the requests in flight and the membership task,
/// on top of stopping its processes.
const DRAIN: Duration = Duration::from_secs(3);

/// How long a stopping agent waits for the log writers to write the last lines of its
/// processes.
const LOG_DRAIN: Duration = Duration::from_secs(1);

/// The tasks of a running agent, in the order they are stopped.
struct Running {
    supervisor: SupervisorHandle,
    sup_task: JoinHandle<()>,
    logs_closed: oneshot::Receiver<Closing>,
    membership: MembershipHandle,
    member_task: JoinHandle<()>,
    serve: JoinHandle<Result<(), TransportError>>,
    bus: Publisher,
    node: Arc<Node>,
}

/// Runs the agent until `shutdown` is cancelled (or a `quit` command arrives), then stops
/// every process gracefully. `reload` asks for a config reload (SIGHUP).
///
/// When any task panics ([`crate::fatal`]), it stops every process the same way and
/// returns [`AgentError::Panicked`]. Stopping never waits on NATS: the processes are
/// asked to stop first, and every publish and flush after that has a deadline, so the
/// agent exits within the longest `graceful_timeout` plus a few seconds even when NATS
/// has been gone for hours.
pub async fn run(
    config: ValidatedConfig,
    shutdown: CancellationToken,
    reload: mpsc::Receiver<()>,
    usr2: mpsc::Receiver<()>,
) -> Result<(), AgentError> {
    let identity = Identity::new(&config.agent.name, config.agent.tags.clone());
    let subjects = Subjects::new(config.nats.prefix.clone());
    // Held until this function returns: one agent per state dir.
    let _lock = own_dirs(&config)?;
    // After an upgrade, this process already is the node: no name check.
    let mut adoption = take_handoff(&config, &identity);
    if adoption.is_none() {
        check_name(&config, &subjects, &identity).await?;
    }
    // What a crashed run left behind goes first: it may still hold a socket's address.
    let groups = open_groups(home(&config));
    let inherited = match adoption.as_mut() {
        Some(a) => SocketSet::inherited(&config.sockets, std::mem::take(&mut a.sockets)),
        None => SocketSet::default(),
    };
    let sockets = bind_sockets(&config, &inherited)?;
    drop(inherited);
    let client = transport::connect(&config.nats, &identity.node).await?;
    let bus = Publisher::new(client.clone());
    crate::fatal::arm_faults(home(&config));

    let (mut watchers, stopped, store) = saved_state(&config)?;
    keep_known_sockets(&mut watchers, &config, &sockets);
    let logs = LogManager::new(&config.agent.log_dir, &identity.node).map_err(AgentError::Logs)?;
    let log_feed = logs.feed();
    let (closed_tx, logs_closed) = oneshot::channel();
    let (supervisor, sup_task) = supervisor::start_adopting(
        watchers,
        stopped,
        supervisor_settings(&config, &identity, store.clone(), sockets, groups),
        Box::new(LogCapture {
            logs,
            closed: Some(closed_tx),
        }),
        adoption.map(|a| a.processes).unwrap_or_default(),
    );
    let inputs = memberloop::Inputs {
        registry: transport::RegistryFeed::new(&client, &subjects),
        keepers: transport::subscribe_keepers(&client, &subjects).await?,
        disconnects: transport::disconnects(&client, config.nats.system_events_account.clone()),
    };
    let (membership, member_task) = memberloop::start(
        bus.clone(),
        membership_settings(&config, &identity, &subjects),
        inputs,
        supervisor.clone(),
    );
    let stats = crate::statsloop::start(
        bus.clone(),
        subjects.clone(),
        identity.clone(),
        config.agent.stats_interval,
        supervisor.clone(),
        shutdown.clone(),
    );
    tokio::spawn(relay::publish_events(
        bus.clone(),
        subjects.clone(),
        identity.clone(),
        supervisor.clone(),
    ));
    relay::publish_agent_event(&bus, &subjects, &identity, EventKind::Join).await;
    let (upgrades, asks) = UpgradeHandle::new();
    let node = Arc::new(Node {
        stats,
        membership: membership.clone(),
        identity: identity.clone(),
        subjects: subjects.clone(),
        supervisor: supervisor.clone(),
        config_path: config.path.clone(),
        store,
        base: Mutex::new(config.watchers.clone()),
        shutdown: shutdown.clone(),
        cpu_prev: Mutex::new(None),
        log_dir: config.agent.log_dir.clone(),
        max_payload: bus.max_payload(),
        follow: Default::default(),
        upgrade: upgrades,
    });
    tracing::info!(node = %identity.node, boot_id = %identity.boot_id, "agent started");

    let bound = transport::bind(client, subjects.clone(), identity.clone()).await?;
    let serve = tokio::spawn(transport::serve(bound, node.clone(), shutdown.clone()));
    crate::systemd::ready(&format!(
        "node {} serving commands on {}",
        identity.node,
        subjects.node_cmd(&identity.node)
    ));
    // Start-up is done: the code pages it alone used go back to the kernel, and every
    // minute those run once since.
    tokio::spawn(crate::memory::give_back_code());
    tokio::spawn(relay::publish_logs(
        bus.clone(),
        subjects,
        log_feed,
        node.follow.clone(),
    ));
    let upgrade = Upgrades {
        asks,
        usr2,
        bus: bus.clone(),
        home: home(&config).to_owned(),
    };
    wait_for_stop(&shutdown, reload, upgrade, &node).await;
    stop(Running {
        supervisor,
        sup_task,
        logs_closed,
        membership,
        member_task,
        serve,
        bus,
        node,
    })
    .await
}

/// Where the agent keeps its own files: the state dir, or else the log dir.
fn home(config: &ValidatedConfig) -> &Path {
    config
        .agent
        .state_dir
        .as_ref()
        .unwrap_or(&config.agent.log_dir)
}

/// Makes the agent's own dirs private to its user and locks [`home`]: one agent per
/// state dir, for as long as the returned lock lives. Output files may go only beneath
/// these dirs.
fn own_dirs(config: &ValidatedConfig) -> Result<state::DirLock, AgentError> {
    for dir in [config.agent.state_dir.as_ref(), Some(&config.agent.log_dir)]
        .into_iter()
        .flatten()
    {
        state::private_dir(dir)?;
    }
    let lock = state::lock_dir(home(config))?;
    config::set_output_roots(config.agent.output_roots());
    Ok(lock)
}

/// Refuses to start when an agent already answers for this node's name.
///
/// The check runs on a connection of its own, named so that it can never be taken for
/// a member: a refused duplicate's disconnect must not mark the real node failed.
async fn check_name(
    config: &ValidatedConfig,
    subjects: &Subjects,
    identity: &Identity,
) -> Result<(), AgentError> {
    let check =
        transport::connect(&config.nats, &format!("startup-check:{}", identity.node)).await?;
    let taken = transport::name_taken(&check, subjects, &identity.node).await;
    drop(check);
    match taken {
        Some(owner) => Err(AgentError::NameTaken {
            name: identity.node.clone(),
            host: owner.hostname,
            pid: owner.pid,
        }),
        None => Ok(()),
    }
}

type Desired = (
    BTreeMap<String, WatcherConfig>,
    std::collections::BTreeSet<String>,
    Option<Arc<Mutex<StateStore>>>,
);

/// The watchers to run (the config merged with the state saved by an earlier run), the
/// ones left stopped, and the store that keeps them, when there is a state dir.
fn saved_state(config: &ValidatedConfig) -> Result<Desired, AgentError> {
    match &config.agent.state_dir {
        Some(dir) => {
            let mut store = StateStore::new(dir);
            let saved = store.load()?;
            let (watchers, stopped) = state::merge(&config.watchers, saved);
            store.set_base(&config.watchers);
            Ok((watchers, stopped, Some(Arc::new(Mutex::new(store)))))
        }
        None => Ok((config.watchers.clone(), Default::default(), None)),
    }
}

/// Reads the hand-over of an upgrade in the state dir, if any: this process's own is
/// adopted; another's (an upgrade whose new binary never started) is reported, its
/// processes left to the group ledger, which ends them, and the watchers start afresh.
fn take_handoff(config: &ValidatedConfig, identity: &Identity) -> Option<handoff::Adoption> {
    match handoff::take(home(config), &identity.node) {
        Ok(handoff::Found::Nothing) => None,
        Ok(handoff::Found::Stale { why, processes }) => {
            tracing::warn!(
                "found the hand-over of an upgrade that did not complete: {why}; its \
                 {processes} process(es) are not adopted: the group ledger ends what is \
                 left of them, and the watchers start afresh"
            );
            None
        }
        Ok(handoff::Found::Adopt(a)) => {
            for why in &a.refused {
                tracing::warn!("not adopted: {why}");
            }
            tracing::info!(
                "upgraded from boot {} (version {}): adopting {} process(es) and {} socket(s)",
                a.from_boot,
                a.from_version,
                a.processes.len(),
                a.sockets.len()
            );
            Some(*a)
        }
        Err(e) => {
            tracing::warn!("{e}; starting afresh");
            None
        }
    }
}

/// Binds the config's sockets, before any process starts, keeping those of `inherited`
/// (handed over by an upgrade); a failure names each socket and its address.
fn bind_sockets(config: &ValidatedConfig, inherited: &SocketSet) -> Result<SocketSet, AgentError> {
    let sockets =
        SocketSet::bind(&config.sockets, inherited).map_err(|source| AgentError::Sockets {
            path: config.path.clone(),
            source,
        })?;
    for b in sockets.iter() {
        tracing::info!(socket = %b.spec.name, "listening on {} ({})", b.address, b.kind());
    }
    Ok(sockets)
}

/// A watcher restored from the saved state may list a socket the config no longer
/// defines: it takes the config's version of itself, or is left out, with a warning.
fn keep_known_sockets(
    watchers: &mut BTreeMap<String, WatcherConfig>,
    config: &ValidatedConfig,
    sockets: &SocketSet,
) {
    watchers.retain(|name, w| {
        let Some(missing) = w.sockets.iter().find(|s| !sockets.contains(s)) else {
            return true;
        };
        match config.watchers.get(name) {
            Some(from_config) => {
                tracing::warn!(watcher = %name, "saved state lists socket '{missing}', which the config no longer defines; using the config's watcher");
                *w = from_config.clone();
                true
            }
            None => {
                tracing::warn!(watcher = %name, "saved watcher lists socket '{missing}', which the config no longer defines; it is dropped");
                false
            }
        }
    });
}

/// What the supervisor calls to save the desired state in `store`.
fn persister(store: Arc<Mutex<StateStore>>) -> supervisor::PersistFn {
    Box::new(move |w: &BTreeMap<String, (WatcherOptions, bool)>| {
        let save = || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = store.save(w) {
                tracing::error!("{e}");
            }
        };
        // A durable save waits for the disk (two fsyncs): let the runtime move its other
        // tasks off this thread meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(save),
            _ => save(),
        }
    })
}

/// Opens the ledger of process groups in `dir`, killing what a crashed earlier run left
/// behind; `None` (with a warning) when it cannot be kept.
fn open_groups(dir: &Path) -> Option<Arc<Groups>> {
    match Groups::open(dir) {
        Ok((groups, 0)) => Some(Arc::new(groups)),
        Ok((groups, killed)) => {
            tracing::warn!("killed {killed} process(es) a crashed earlier run left behind");
            Some(Arc::new(groups))
        }
        Err(e) => {
            tracing::warn!(
                "cannot keep the process group ledger in {}: {e}; after a crash, \
                 the children of its processes may be left running",
                dir.display()
            );
            None
        }
    }
}

fn supervisor_settings(
    config: &ValidatedConfig,
    identity: &Identity,
    store: Option<Arc<Mutex<StateStore>>>,
    sockets: SocketSet,
    groups: Option<Arc<Groups>>,
) -> supervisor::Settings {
    supervisor::Settings {
        node: identity.node.clone(),
        allow_remote_exec: config.agent.allow_remote_exec,
        persist: store.map(persister),
        groups,
        notify_dir: Some(home(config).join("notify")),
        max_processes: config.agent.max_processes,
        sockets,
    }
}

fn membership_settings(
    config: &ValidatedConfig,
    identity: &Identity,
    subjects: &Subjects,
) -> MembershipSettings {
    MembershipSettings {
        identity: identity.clone(),
        subjects: subjects.clone(),
        heartbeat: config.agent.heartbeat,
        config: MembershipConfig {
            suspect_after: match config.agent.suspect_after {
                Some(d) => SuspectAfter::Fixed(d),
                None => SuspectAfter::Heartbeats(3),
            },
            failed_after: config.agent.failed_after,
            reap_after: config.agent.reap_after,
        },
        keepers: config.agent.keepers as usize,
    }
}

/// Where upgrades are asked for: `ctl upgrade` and SIGUSR2.
struct Upgrades {
    asks: mpsc::Receiver<upgrade::Ask>,
    usr2: mpsc::Receiver<()>,
    bus: Publisher,
    home: std::path::PathBuf,
}

impl Upgrades {
    /// Carries out an upgrade; returns only when it did not happen.
    async fn perform(&self, node: &Node, ask: upgrade::Ask) {
        let ctx = upgrade::Context {
            supervisor: &node.supervisor,
            membership: &node.membership,
            bus: &self.bus,
            subjects: &node.subjects,
            identity: &node.identity,
            home: &self.home,
            config_path: &node.config_path,
        };
        upgrade::perform(&ctx, ask).await;
    }
}

/// Waits until `shutdown` is cancelled or a task panicked, reloading the config at
/// each `reload` and upgrading at each ask (an upgrade that succeeds never returns).
async fn wait_for_stop(
    shutdown: &CancellationToken,
    mut reload: mpsc::Receiver<()>,
    mut upgrades: Upgrades,
    node: &Node,
) {
    let panicked = crate::fatal::panicked();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(ask) = upgrades.asks.recv() => upgrades.perform(node, ask).await,
            Some(()) = upgrades.usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading");
                upgrades.perform(node, upgrade::Ask { reply: None }).await;
            }
            _ = panicked.cancelled() => {
                tracing::error!(
                    "a task panicked ({}); stopping every process, then exiting with code {}",
                    crate::fatal::reason().unwrap_or_default(),
                    crate::fatal::EXIT_PANIC
                );
                shutdown.cancel();
                return;
            }
            Some(()) = reload.recv() => {
                // A reload restarts changed watchers as a rolling restart; a stop
                // does not wait for it.
                let outcome = tokio::select! {
                    r = node.reload_config(false) => r,
                    _ = shutdown.cancelled() => return,
                    _ = panicked.cancelled() => continue,
                };
                match outcome {
                    Ok(d) => tracing::info!(
                        "config reloaded: added {:?}, removed {:?}, changed {:?}, scaled {:?}",
                        d.added,
                        d.removed,
                        d.changed,
                        d.scaled
                    ),
                    Err(e) => tracing::error!("config not reloaded: {}", e.reason),
                }
            }
        }
    }
}

/// Stops a running agent: its processes first, then it leaves the cluster, lets the
/// requests in flight finish and flushes what it published, each step bounded.
async fn stop(running: Running) -> Result<(), AgentError> {
    let Running {
        supervisor,
        sup_task,
        logs_closed,
        membership,
        mut member_task,
        mut serve,
        bus,
        node,
    } = running;
    tracing::info!("leaving the cluster: stopping every process");
    crate::systemd::stopping("stopping every process");
    // The processes are asked to stop before anything is published: with NATS gone,
    // a publish may wait (each below has a deadline), and they must not wait for it.
    let stopped = supervisor.begin_shutdown().await;
    let drain_until = tokio::time::Instant::now() + DRAIN;
    membership.leaving().await;
    relay::publish_agent_event(&bus, &node.subjects, &node.identity, EventKind::Leave).await;
    let live = &crate::supervisor::live::LIVE;
    let budget = live
        .longest_graceful()
        .saturating_add(crate::supervisor::live::KILL_GRACE)
        .saturating_add(Duration::from_secs(1));
    if tokio::time::timeout(budget, stopped).await.is_err() {
        tracing::error!("the supervisor did not stop its processes in {budget:?}");
    }
    // What the supervisor could not stop (it panicked, or gave up) is stopped from the
    // record of live process groups, just as gracefully.
    if !live.is_empty() {
        let n = live.stop_all().await;
        tracing::warn!("stopped {n} process group(s) from the record of live groups");
    }
    if sup_task.is_finished() {
        let _ = sup_task.await;
    } else {
        sup_task.abort();
    }
    // The supervisor dropped its log files: their last lines reach the disk.
    if let Ok(Ok(closing)) = tokio::time::timeout(LOG_DRAIN, logs_closed).await {
        if tokio::time::timeout(LOG_DRAIN, closing.wait())
            .await
            .is_err()
        {
            tracing::warn!("the last lines of some processes may not have been logged");
        }
    }
    crate::systemd::status("processes stopped; leaving the cluster");
    membership.left().await;
    let member_until = drain_until.max(tokio::time::Instant::now() + FINAL_FLUSH);
    if tokio::time::timeout_at(member_until, &mut member_task)
        .await
        .is_err()
    {
        member_task.abort();
    }
    // The transport stops serving; requests in flight finish (a quit's own reply among
    // them), unless NATS is gone.
    if tokio::time::timeout_at(drain_until, &mut serve)
        .await
        .is_err()
    {
        serve.abort();
        tracing::warn!("requests still in flight were dropped");
    }
    if !bus.flush(FINAL_FLUSH).await {
        tracing::warn!("NATS unreachable: the last messages may not have been sent");
    }
    if let Some(reason) = crate::fatal::reason() {
        return Err(AgentError::Panicked(reason));
    }
    tracing::info!("agent stopped");
    Ok(())
}
