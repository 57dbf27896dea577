//! Request dispatch: reads each request, checks that the subject it came on accepts it,
//! and answers it, either itself (ping, dstats, stats, members, logs, reloadconfig,
//! quit, upgrade) or through the supervisor's handle. One exhaustive `match` over
//! [`protocol::Command`] says where every command goes. It never touches NATS (the
//! transport calls it) or processes (the supervisor owns them).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::command::{accepted, check_token, Acceptance, Command};
use protocol::logs::LogsData;
use protocol::registry::WatcherBrief;
use protocol::reply::{DstatsData, NoData, PingData, PlanData, ReplyData, ReplyKind};
use protocol::stats::StatsData;
use protocol::subjects::CmdTarget;
use protocol::{parse_request, unix_time, Errno, Reply, Subjects};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::identity::Identity;
use crate::memberloop::{MembershipHandle, Watchers};
use crate::state::StateStore;
use crate::statsloop::StatsHandle;
use crate::supervisor::{CmdError, Outcome, Reload, SupervisorHandle};

/// Answers requests for one node.
pub struct Node {
    pub identity: Identity,
    pub stats: StatsHandle,
    pub membership: MembershipHandle,
    pub subjects: Subjects,
    pub supervisor: SupervisorHandle,
    pub(crate) config_path: std::path::PathBuf,
    pub(crate) store: Option<Arc<Mutex<StateStore>>>,
    /// The config file's watchers as last loaded (at start, then at each reload): a
    /// reload applies the entries the file changed since, and keeps runtime changes to
    /// the others.
    pub(crate) base: Mutex<std::collections::BTreeMap<String, config::WatcherConfig>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) cpu_prev: Mutex<Option<(f64, Instant)>>,
    pub(crate) log_dir: std::path::PathBuf,
    pub(crate) max_payload: usize,
    /// Whose captured lines are published live.
    pub follow: Arc<crate::logs::FollowLeases>,
    /// Where `upgrade` is asked for.
    pub(crate) upgrade: crate::upgrade::UpgradeHandle,
}

/// The one place a command's reply is built: its typed data, or its error. Data of
/// another type than the command declares ([`Command::reply_kind`]) is a bug of the
/// agent; it is answered as a failure rather than sent for the client to misread.
fn cmd_reply(id: Option<String>, node: &str, declared: ReplyKind, outcome: Outcome) -> Reply {
    match outcome {
        Ok(data) if data.kind() == declared => Reply::ok(id, node, unix_time(), data),
        Ok(data) => {
            let reason = format!(
                "internal error: the reply is {:?} data, where {declared:?} data was declared",
                data.kind()
            );
            tracing::error!("{reason}");
            Reply::error(id, node, unix_time(), Errno::CommandFailed, reason)
        }
        Err(e) => Reply::error(id, node, unix_time(), e.errno, e.reason),
    }
}

/// A handler's typed data (or error) as an [`Outcome`].
fn typed<T: Into<ReplyData>>(r: Result<T, CmdError>) -> Outcome {
    r.map(Into::into)
}

impl Node {
    /// Reads a request that came on `subject` and answers it, refusing a command the
    /// subject does not accept. Never panics on input.
    pub async fn handle(&self, subject: &str, payload: &[u8]) -> Reply {
        let node = &self.identity.node;
        let req = match parse_request(payload) {
            Ok(r) => r,
            Err(e) => return Reply::error(e.id, node, unix_time(), e.errno, e.reason),
        };
        let id = req.id;
        if let Err((errno, reason)) = self.check_subject(subject, &req.command).await {
            tracing::debug!(%subject, command = req.command.name(), "refused: {reason}");
            return Reply::error(id, node, unix_time(), errno, reason);
        }
        let declared = req.command.reply_kind();
        let outcome: Outcome = match req.command {
            Command::Ping(_) => Ok(self.ping().into()),
            Command::Dstats(_) => typed(self.dstats().await),
            Command::Quit(_) => {
                tracing::info!("quit requested");
                self.shutdown.cancel();
                Ok(NoData {}.into())
            }
            Command::Members(filter) => {
                let members = self.membership.members(filter).await;
                Ok(protocol::registry::MembersData { members }.into())
            }
            Command::Stats(p) => typed(self.stats(p.name).await),
            Command::Logs(props) => typed(self.logs(props).await),
            Command::Reloadconfig(p) => typed(self.reload_config(p.dry_run).await),
            Command::Upgrade(_) => {
                tracing::info!("upgrade requested");
                typed(self.upgrade.upgrade().await)
            }
            // The supervisor's own commands, each named so that a new command must be
            // placed here on purpose.
            c @ (Command::Status(_)
            | Command::List(_)
            | Command::Start(_)
            | Command::Stop(_)
            | Command::Restart(_)
            | Command::Reload(_)
            | Command::Incr(_)
            | Command::Decr(_)
            | Command::Numprocesses(_)
            | Command::Numwatchers(_)
            | Command::Signal(_)
            | Command::Options(_)
            | Command::Get(_)
            | Command::Set(_)
            | Command::Add(_)
            | Command::Rm(_)
            | Command::Listsockets(_)) => self.supervisor.exec(c).await,
        };
        cmd_reply(id, node, declared, outcome)
    }

    /// Checks that `subject` accepts `command` (see [`protocol::command::accepted`]).
    async fn check_subject(&self, subject: &str, command: &Command) -> Result<(), (Errno, String)> {
        let forbidden = |reason: String| (Errno::Forbidden, reason);
        let Some(on) = self.subjects.parse_cmd(subject) else {
            return Err(forbidden(format!("'{subject}' is not a command subject")));
        };
        if let CmdTarget::Node(n) = &on.target {
            if *n != self.identity.node {
                return Err(forbidden(format!(
                    "'{subject}' addresses node '{n}', not '{}'",
                    self.identity.node
                )));
            }
        }
        check_token(on.token.as_deref(), command).map_err(forbidden)?;
        match accepted(&on.target, command) {
            Acceptance::Accepted => Ok(()),
            Acceptance::Refused(reason) => Err(forbidden(reason)),
            Acceptance::IfWatcherOf { watcher, service } => {
                let watchers = self.supervisor.snapshot().await.unwrap_or_default();
                match watchers.iter().find(|w| w.name == watcher) {
                    Some(w) if w.service == service => Ok(()),
                    Some(w) => Err(forbidden(format!(
                        "watcher '{watcher}' belongs to service '{}', not '{service}'; \
                         send it with --service {} or --node {}",
                        w.service, w.service, self.identity.node
                    ))),
                    None => Err((
                        Errno::UnknownWatcher,
                        format!(
                            "no watcher '{watcher}' of service '{service}' on node '{}'; \
                             `ctl members` shows which watchers each node runs",
                            self.identity.node
                        ),
                    )),
                }
            }
        }
    }

    async fn logs(&self, props: protocol::logs::LogsProps) -> Result<LogsData, CmdError> {
        // An unknown watcher is an error, not an empty log.
        self.supervisor
            .exec(Command::Numprocesses(protocol::command::Numprocesses {
                name: props.name.clone(),
                nb: None,
            }))
            .await?;
        // Live lines first, then the tail: a line in between shows twice, none is lost.
        self.follow
            .grant(&props.name, props.follow(), std::time::Instant::now());
        let (dir, node) = (self.log_dir.clone(), self.identity.node.clone());
        let n = props.lines() as usize;
        let lines = tokio::task::spawn_blocking(move || {
            crate::logs::tail(&dir, &node, &props.name, props.stream, n)
        })
        .await
        .map_err(|e| CmdError::new(Errno::CommandFailed, e.to_string()))?
        .map_err(|e| CmdError::new(Errno::CommandFailed, e.to_string()))?;
        Ok(crate::logs::fit_lines(
            lines,
            self.max_payload.saturating_sub(4096),
        ))
    }

    async fn stats(&self, name: Option<String>) -> Result<StatsData, CmdError> {
        let Some(mut data) = self.stats.snapshot().await else {
            return Err(CmdError::new(
                Errno::CommandFailed,
                "cannot read process statistics from /proc",
            ));
        };
        if let Some(name) = name {
            data.watchers.retain(|w| w.name == name);
            if data.watchers.is_empty() {
                return Err(CmdError::new(
                    Errno::UnknownWatcher,
                    format!("unknown watcher '{name}'; `ctl list` shows the watchers of a node"),
                ));
            }
        }
        Ok(data)
    }

    fn ping(&self) -> PingData {
        let id = &self.identity;
        PingData {
            version: id.version.clone(),
            boot_id: id.boot_id.clone(),
            pid: id.pid,
            hostname: id.hostname.clone(),
            tags: id.tags.clone(),
            uptime_secs: id.started.elapsed().as_secs_f64(),
        }
    }

    async fn dstats(&self) -> Result<DstatsData, CmdError> {
        let children: u32 = self
            .supervisor
            .snapshot()
            .await?
            .iter()
            .map(|w| w.running)
            .sum();
        let me = crate::stats::own_usage()
            .map_err(|e| CmdError::new(Errno::CommandFailed, format!("cannot read /proc: {e}")))?;
        let cpu_secs = me.cpu_secs;
        let now = Instant::now();
        let (prev_cpu, prev_t) = {
            let mut prev = self.cpu_prev.lock().unwrap_or_else(|e| e.into_inner());
            let p = prev.unwrap_or((0.0, self.identity.started));
            *prev = Some((cpu_secs, now));
            p
        };
        let wall = now.duration_since(prev_t).as_secs_f64().max(1e-3);
        let data = DstatsData {
            pid: self.identity.pid,
            cpu_percent: ((cpu_secs - prev_cpu) / wall * 100.0).max(0.0),
            rss_bytes: me.rss_bytes,
            uptime_secs: self.identity.started.elapsed().as_secs_f64(),
            threads: me.threads,
            children,
            version: self.identity.version.clone(),
        };
        Ok(data)
    }

    /// Reloads the config file (the `reloadconfig` command, and SIGHUP): applies the
    /// plan between what runs and the file, or with `dry_run` only returns it.
    pub async fn reload_config(&self, dry_run: bool) -> Result<PlanData, CmdError> {
        let path = self.config_path.clone();
        let cfg = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| CmdError::new(Errno::CommandFailed, e.to_string()))?
            .map_err(|e| {
                CmdError::new(
                    Errno::CommandFailed,
                    format!("{e}\nnothing was changed; fix the file and reload again"),
                )
            })?;
        if cfg.agent.name != self.identity.node {
            return Err(CmdError::new(
                Errno::CommandFailed,
                format!(
                    "the config now names the node '{}'; a node cannot be renamed while it runs, restart the agent instead",
                    cfg.agent.name
                ),
            ));
        }
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let plan = self
            .supervisor
            .reload(Reload {
                file: cfg.watchers.clone(),
                sockets: cfg.sockets,
                base,
                dry_run,
            })
            .await?;
        if dry_run {
            return Ok(plan);
        }
        // Applied: the file is now the base, even if a restart below fails. A reload
        // refused (a socket that cannot be bound, a cycle) returned above and left the
        // base of what runs.
        if let Some(store) = &self.store {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_base(&cfg.watchers);
        }
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = cfg.watchers;
        self.supervisor.restart_changed(&plan).await?;
        Ok(plan)
    }
}

impl crate::transport::Handler for Node {
    fn handle(&self, subject: &str, payload: &[u8]) -> impl Future<Output = Reply> + Send {
        Node::handle(self, subject, payload)
    }

    fn services(&self) -> watch::Receiver<BTreeSet<String>> {
        self.supervisor.services()
    }
}

/// The membership task announces the supervisor's watchers.
impl Watchers for SupervisorHandle {
    async fn briefs(&self) -> Option<Vec<WatcherBrief>> {
        let watchers = self.snapshot().await.ok()?;
        Some(
            watchers
                .into_iter()
                .map(|w| WatcherBrief {
                    name: w.name,
                    service: w.service,
                    state: w.state,
                    numprocesses: w.numprocesses,
                    running: w.running,
                })
                .collect(),
        )
    }
}
