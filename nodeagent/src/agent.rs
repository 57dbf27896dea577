//! The agent: wires config, state, supervisor and transport together, and turns each
//! request into a reply. It owns the node's identity; it never touches processes (the
//! supervisor does) or NATS (the transport does).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use protocol::events::EventKind;
use protocol::Subjects;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ValidatedConfig};
use crate::dispatch::Node;
use crate::identity::Identity;
use crate::logs::LogManager;
use crate::membership::{MembershipConfig, SuspectAfter};
use crate::state::{self, StateStore};
use crate::supervisor::{self, CapturedOutput, OutputSink};
use crate::transport;

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
}

/// Hands captured output to the rotating log files.
struct LogCapture(LogManager);

impl OutputSink for LogCapture {
    fn capture(&mut self, out: CapturedOutput) {
        if let Err(e) = self.0.capture(
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
        drop(self.0.remove(watcher));
    }
}

/// How long a stopping agent waits for its last messages to reach NATS.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a stopping agent waits for the requests in flight and the membership task,
/// on top of stopping its processes.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

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
    mut reload: mpsc::Receiver<()>,
) -> Result<(), AgentError> {
    let identity = Identity::new(&config.agent.name, config.agent.tags.clone());
    let subjects = Subjects::new(config.nats.prefix.clone());

    // The agent's own dirs: private to its user, and one agent per state dir (the lock
    // is held until this function returns). Output files may go only beneath them.
    let home = config
        .agent
        .state_dir
        .as_ref()
        .unwrap_or(&config.agent.log_dir);
    for dir in [config.agent.state_dir.as_ref(), Some(&config.agent.log_dir)]
        .into_iter()
        .flatten()
    {
        state::private_dir(dir)?;
    }
    let _lock = state::lock_dir(home)?;
    config::set_output_roots(config.agent.output_roots());

    // The name check runs on a connection of its own, named so that it can never be
    // taken for a member: a refused duplicate's disconnect must not mark the real
    // node failed.
    let check =
        transport::connect(&config.nats, &format!("startup-check:{}", identity.node)).await?;
    let taken = transport::name_taken(&check, &subjects, &identity.node).await;
    drop(check);
    if let Some(owner) = taken {
        return Err(AgentError::NameTaken {
            name: identity.node.clone(),
            host: owner.hostname,
            pid: owner.pid,
        });
    }
    let client = transport::connect(&config.nats, &identity.node).await?;
    crate::fatal::arm_faults(
        config
            .agent
            .state_dir
            .as_ref()
            .unwrap_or(&config.agent.log_dir),
    );

    let (watchers, stopped, store) = match &config.agent.state_dir {
        Some(dir) => {
            let mut store = StateStore::new(dir);
            let saved = store.load()?;
            let merged = state::merge(&config.watchers, saved);
            store.set_base(&config.watchers);
            (merged.0, merged.1, Some(Arc::new(Mutex::new(store))))
        }
        None => (config.watchers.clone(), Default::default(), None),
    };
    let persist = store.clone().map(|store| {
        Box::new(
            move |w: &BTreeMap<String, (protocol::WatcherOptions, bool)>| {
                let save = || {
                    let store = store.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = store.save(w) {
                        tracing::error!("{e}");
                    }
                };
                // A durable save waits for the disk (two fsyncs): let the runtime move
                // its other tasks off this thread meanwhile.
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(save)
                    }
                    _ => save(),
                }
            },
        ) as Box<dyn FnMut(&_) + Send>
    });
    let groups_dir = home;
    let groups = match crate::groups::Groups::open(groups_dir) {
        Ok((groups, 0)) => Some(Arc::new(groups)),
        Ok((groups, killed)) => {
            tracing::warn!("killed {killed} process(es) a crashed earlier run left behind");
            Some(Arc::new(groups))
        }
        Err(e) => {
            tracing::warn!(
                "cannot keep the process group ledger in {}: {e}; after a crash, \
                 the children of its processes may be left running",
                groups_dir.display()
            );
            None
        }
    };
    let logs = LogManager::new(&config.agent.log_dir, &identity.node).map_err(AgentError::Logs)?;
    let log_feed = logs.feed();
    let output: Box<dyn OutputSink> = Box::new(LogCapture(logs));
    let (supervisor, sup_task) = supervisor::start(
        watchers,
        stopped,
        supervisor::Settings {
            node: identity.node.clone(),
            allow_remote_exec: config.agent.allow_remote_exec,
            persist,
            groups,
            max_processes: config.agent.max_processes,
        },
        output,
    );
    let (membership, member_task) = transport::start_membership(
        client.clone(),
        transport::MembershipSettings {
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
            system_events_account: config.nats.system_events_account.clone(),
        },
        supervisor.clone(),
    )
    .await?;
    let stats = crate::statsloop::start(
        client.clone(),
        subjects.clone(),
        identity.clone(),
        config.agent.stats_interval,
        supervisor.clone(),
        shutdown.clone(),
    );
    tokio::spawn(transport::publish_events(
        client.clone(),
        subjects.clone(),
        identity.node.clone(),
        identity.boot_id.clone(),
        supervisor.clone(),
    ));
    transport::publish_agent_event(&client, &subjects, &identity, EventKind::Join).await;
    let node = Arc::new(Node {
        stats,
        membership: membership.clone(),
        identity,
        subjects,
        supervisor: supervisor.clone(),
        config_path: config.path.clone(),
        store,
        shutdown: shutdown.clone(),
        cpu_prev: Mutex::new(None),
        log_dir: config.agent.log_dir.clone(),
        max_payload: client.server_info().max_payload.max(64 * 1024),
        follow: Default::default(),
    });
    tracing::info!(node = %node.identity.node, boot_id = %node.identity.boot_id, "agent started");

    let serve = tokio::spawn(transport::serve(
        client.clone(),
        node.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(transport::publish_logs(
        client.clone(),
        node.subjects.clone(),
        log_feed,
        node.follow.clone(),
    ));
    let panicked = crate::fatal::panicked();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = panicked.cancelled() => {
                tracing::error!(
                    "a task panicked ({}); stopping every process, then exiting with code {}",
                    crate::fatal::reason().unwrap_or_default(),
                    crate::fatal::EXIT_PANIC
                );
                shutdown.cancel();
                break;
            }
            Some(()) = reload.recv() => {
                let reply = node.reload_config().await;
                match reply {
                    Ok(d) => tracing::info!("config reloaded: {}", serde_json::Value::Object(d)),
                    Err(e) => tracing::error!("config not reloaded: {}", e.reason),
                }
            }
        }
    }
    tracing::info!("leaving the cluster: stopping every process");
    // The processes are asked to stop before anything is published: with NATS gone,
    // a publish may wait (each below has a deadline), and they must not wait for it.
    let stopped = supervisor.begin_shutdown().await;
    let drain_until = tokio::time::Instant::now() + DRAIN;
    membership.leaving().await;
    transport::publish_agent_event(&client, &node.subjects, &node.identity, EventKind::Leave).await;
    let budget = crate::supervisor::live::LIVE
        .longest_graceful()
        .saturating_add(crate::supervisor::live::KILL_GRACE)
        .saturating_add(std::time::Duration::from_secs(1));
    if tokio::time::timeout(budget, stopped).await.is_err() {
        tracing::error!("the supervisor did not stop its processes in {budget:?}");
    }
    // What the supervisor could not stop (it panicked, or gave up) is stopped from the
    // record of live process groups, just as gracefully.
    if !crate::supervisor::live::LIVE.is_empty() {
        let n = crate::supervisor::live::LIVE.stop_all().await;
        tracing::warn!("stopped {n} process group(s) from the record of live groups");
    }
    if sup_task.is_finished() {
        let _ = sup_task.await;
    } else {
        sup_task.abort();
    }
    membership.left().await;
    let mut member_task = member_task;
    let member_until = drain_until.max(tokio::time::Instant::now() + FINAL_FLUSH);
    if tokio::time::timeout_at(member_until, &mut member_task)
        .await
        .is_err()
    {
        member_task.abort();
    }
    // The transport stops serving; requests in flight finish (a quit's own reply among
    // them), unless NATS is gone.
    let mut serve = serve;
    if tokio::time::timeout_at(drain_until, &mut serve)
        .await
        .is_err()
    {
        serve.abort();
        tracing::warn!("requests still in flight were dropped");
    }
    if !transport::flush(&client, FINAL_FLUSH).await {
        tracing::warn!("NATS unreachable: the last messages may not have been sent");
    }
    if let Some(reason) = crate::fatal::reason() {
        return Err(AgentError::Panicked(reason));
    }
    tracing::info!("agent stopped");
    Ok(())
}
