//! The NATS edge (with `sysevents`, the only code that touches `async_nats`): the
//! connection, the command subscriptions (per node, broadcast, per service in its queue
//! group; each plain and per command) and replies, the membership task's announcements,
//! and the bounded [`Publisher`] every other task publishes through.
//!
//! It serves a [`Handler`] it is given and knows nothing of what the agent does with a
//! request: it never imports the agent, the dispatch or the supervisor. Requests are
//! handled concurrently, each in its own task, so a slow stop never holds up a status;
//! at most [`MAX_IN_FLIGHT`] at once, past which a request gets a `busy` error at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap, Message};
use futures::StreamExt;
use protocol::registry::{AnnounceKind, Announcement, MemberInfo, MembersRequest, WatcherBrief};
use protocol::reply::PingData;
use protocol::subjects::{HEADER_NODES, HEADER_TAGS};
use protocol::{Reply, Request, Subjects};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NatsConfig;
use crate::identity::Identity;
use crate::membership::{Change, Membership, MembershipConfig};

/// What [`serve`] serves: the agent's answer to each request.
pub trait Handler: Send + Sync + 'static {
    /// Answers the request `payload` that came on `subject`. Never panics on input.
    fn handle(&self, subject: &str, payload: &[u8]) -> impl Future<Output = Reply> + Send;

    /// The services whose queue groups to serve; it changes as watchers come and go.
    fn services(&self) -> watch::Receiver<BTreeSet<String>>;
}

/// Where the membership task learns the watchers it announces.
pub trait Watchers: Send + Sync + 'static {
    /// The watchers running now, or `None` when they cannot be known.
    fn briefs(&self) -> impl Future<Output = Option<Vec<WatcherBrief>>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error(
        "the NATS server at {servers} refused this agent: {reason}; check [nats] user/password, \
         token, nkey_seed or creds_file against the server's authorization config"
    )]
    Refused { servers: String, reason: String },
}

/// True for the errors that retrying cannot cure: the server refuses the credentials.
fn is_refusal(event: &async_nats::Event) -> bool {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => true,
        async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => {
            let e = e.to_ascii_lowercase();
            e.contains("authorization violation") || e.contains("authentication")
        }
        _ => false,
    }
}

/// Connects with a short ping interval and endless reconnects. If no server answers at
/// first, the agent goes on supervising and keeps trying in the background; a server
/// that refuses the credentials at start is an error.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<Client, TransportError> {
    let refused: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let seen = refused.clone();
    let mut opts = ConnectOptions::new()
        .name(name)
        .ping_interval(cfg.ping_interval)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!(
                        "disconnected from NATS; processes keep running, reconnecting"
                    ),
                    other if is_refusal(&other) => {
                        tracing::warn!("NATS refused the credentials: {other}");
                        *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(other.to_string());
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            }
        });
    if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(seed) = &cfg.nkey_seed {
        opts = opts.nkey(seed.clone());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| TransportError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> =
        cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    warn_if_open(cfg, &servers);
    let client = opts
        .connect(servers)
        .await
        .map_err(|source| TransportError::Connect {
            servers: cfg.servers.join(", "),
            source,
        })?;
    // Give the first connection a moment, so the name check below can run.
    for _ in 0..100 {
        if client.connection_state() == async_nats::connection::State::Connected {
            break;
        }
        if let Some(reason) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(TransportError::Refused {
                servers: cfg.servers.join(", "),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if client.connection_state() != async_nats::connection::State::Connected {
        tracing::warn!(
            servers = %cfg.servers.join(", "),
            "NATS is not reachable yet; supervising anyway and retrying in the background"
        );
    }
    Ok(client)
}

/// True when the config gives the agent any NATS credentials.
fn has_credentials(cfg: &NatsConfig) -> bool {
    cfg.user.is_some()
        || cfg.token.is_some()
        || cfg.nkey_seed.is_some()
        || cfg.creds_file.is_some()
        || cfg.tls_cert_file.is_some()
}

/// True for a host name or address that stays on this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Warns, once per process, when the agent connects without credentials to a server
/// that is not on this machine: anyone who reaches that server can command the agent.
fn warn_if_open(cfg: &NatsConfig, servers: &[async_nats::ServerAddr]) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if has_credentials(cfg) || servers.iter().any(|s| s.has_user_pass()) {
        return;
    }
    let remote: Vec<String> = servers
        .iter()
        .filter(|s| !is_loopback(s.host()))
        .map(|s| format!("{}:{}", s.host(), s.port()))
        .collect();
    if remote.is_empty() {
        return;
    }
    WARNED.call_once(|| {
        tracing::warn!(
            servers = %remote.join(", "),
            "connecting to NATS without credentials on a non-loopback address: any client of \
             that server may command this agent; give [nats] user/password (or token, \
             nkey_seed, creds_file) for a user limited as in examples/nats-secure.conf"
        );
    });
}

/// Asks whether an agent already answers for `name`; returns who it is if so.
pub async fn name_taken(client: &Client, subjects: &Subjects, name: &str) -> Option<PingData> {
    if client.connection_state() != async_nats::connection::State::Connected {
        tracing::warn!("cannot check that node name '{name}' is unique while NATS is unreachable");
        return None;
    }
    let ping = Request::new(protocol::Command::Ping(Default::default()));
    let subject = subjects.node_cmd_for(name, ping.command.subject_token());
    let req = client.request(subject, serde_json::to_vec(&ping).ok()?.into());
    match tokio::time::timeout(Duration::from_millis(1500), req).await {
        Ok(Ok(msg)) => {
            let reply: protocol::Reply = serde_json::from_slice(&msg.payload).ok()?;
            Some(reply.data().unwrap_or(PingData {
                version: String::new(),
                boot_id: String::new(),
                pid: 0,
                hostname: "unknown".into(),
                tags: Default::default(),
                uptime_secs: 0.0,
            }))
        }
        _ => None,
    }
}

/// True when a broadcast's target headers select this node.
fn selected(headers: Option<&HeaderMap>, node: &str, node_tags: &BTreeMap<String, String>) -> bool {
    let Some(h) = headers else {
        return true;
    };
    if let Some(nodes) = h.get(HEADER_NODES) {
        if !nodes.as_str().split(',').any(|n| n.trim() == node) {
            return false;
        }
    }
    if let Some(tags) = h.get(HEADER_TAGS) {
        for pair in tags.as_str().split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if node_tags.get(k.trim()).map(String::as_str) != Some(v.trim()) {
                return false;
            }
        }
    }
    true
}

/// The most requests handled at once; past it, a request gets a `busy` error reply
/// without being read, so a flood cannot exhaust the agent's memory or tasks.
pub const MAX_IN_FLIGHT: usize = 256;

/// What every request task shares.
struct Serving<H> {
    client: Client,
    handler: Arc<H>,
    node: String,
    tracker: TaskTracker,
    slots: Arc<tokio::sync::Semaphore>,
}

async fn spawn_handler<H: Handler>(serving: &Serving<H>, msg: Message) {
    let (client, handler) = (serving.client.clone(), serving.handler.clone());
    let slots = &serving.slots;
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        tracing::debug!(subject = %msg.subject, "busy: {MAX_IN_FLIGHT} requests in flight");
        let reply = protocol::Reply::error(
            None,
            &serving.node,
            protocol::unix_time(),
            protocol::Errno::Busy,
            format!(
                "the agent has {MAX_IN_FLIGHT} requests in flight, its limit; try again shortly"
            ),
        );
        // Answered inline: while the agent is this busy, reading more requests waits.
        send_reply(client, msg.reply, reply).await;
        return;
    };
    serving.tracker.spawn(async move {
        let reply = handler.handle(&msg.subject, &msg.payload).await;
        drop(permit);
        send_reply(client, msg.reply, reply).await;
    });
}

async fn send_reply(client: Client, to: Option<async_nats::Subject>, reply: protocol::Reply) {
    let Some(to) = to else {
        return;
    };
    // Bounded like every other publish: a full send buffer never holds a handler (or,
    // for a busy answer, the loop that reads requests).
    publish_json(&client, to.to_string(), &reply).await;
}

async fn subscribe(
    client: &Client,
    subject: String,
    queue: Option<String>,
) -> Result<async_nats::Subscriber, TransportError> {
    let r = match queue {
        Some(q) => client.queue_subscribe(subject.clone(), q).await,
        None => client.subscribe(subject.clone()).await,
    };
    r.map_err(|source| TransportError::Subscribe { subject, source })
}

/// Subscribes to `subject` and to its per-command form `subject.*`, merged.
async fn subscribe_both(
    client: &Client,
    subject: String,
    queue: Option<String>,
) -> Result<futures::stream::SelectAll<async_nats::Subscriber>, TransportError> {
    let plain = subscribe(client, subject.clone(), queue.clone()).await?;
    let each = subscribe(client, format!("{subject}.*"), queue).await?;
    Ok(futures::stream::select_all([plain, each]))
}

/// Serves the commands for `identity`'s node with `handler` until `shutdown` is
/// cancelled; then the requests in flight finish (at most 5 s).
pub async fn serve<H: Handler>(
    client: Client,
    subjects: Subjects,
    identity: Identity,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), TransportError> {
    let serving = Serving {
        client: client.clone(),
        handler: handler.clone(),
        node: identity.node.clone(),
        tracker: TaskTracker::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    };
    let mut own = subscribe_both(&client, subjects.node_cmd(&identity.node), None).await?;
    let mut all = subscribe_both(&client, subjects.all_cmd(), None).await?;
    let mut members =
        subscribe(&client, subjects.members(), Some(subjects.members_queue())).await?;
    let (svc_tx, mut svc_rx) = tokio::sync::mpsc::channel::<Message>(256);
    let mut services: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut wanted = handler.services();
    let reconcile = |set: &std::collections::BTreeSet<String>,
                     services: &mut HashMap<String, JoinHandle<()>>| {
        services.retain(|name, task| {
            let keep = set.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        for name in set {
            if services.contains_key(name) {
                continue;
            }
            let (client, tx, subject, queue) = (
                client.clone(),
                svc_tx.clone(),
                subjects.service_cmd(name),
                name.clone(),
            );
            services.insert(
                name.clone(),
                tokio::spawn(async move {
                    match subscribe_both(&client, subject, Some(queue)).await {
                        Ok(mut sub) => {
                            while let Some(msg) = sub.next().await {
                                if tx.send(msg).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(e) => tracing::error!("{e}"),
                    }
                }),
            );
        }
    };
    let initial = wanted.borrow_and_update().clone();
    reconcile(&initial, &mut services);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = own.next() => spawn_handler(&serving, msg).await,
            Some(msg) = all.next() => {
                if selected(msg.headers.as_ref(), &identity.node, &identity.tags) {
                    spawn_handler(&serving, msg).await;
                }
            }
            Some(msg) = svc_rx.recv() => spawn_handler(&serving, msg).await,
            Some(msg) = members.next() => spawn_handler(&serving, msg).await,
            Ok(()) = wanted.changed() => {
                let set = wanted.borrow_and_update().clone();
                reconcile(&set, &mut services);
            }
        }
    }
    for (_, task) in services.drain() {
        task.abort();
    }
    for sub in own.iter_mut().chain(all.iter_mut()) {
        let _ = sub.unsubscribe().await;
    }
    let _ = members.unsubscribe().await;
    serving.tracker.close();
    // Requests in flight finish (a quit's own reply among them).
    let _ = tokio::time::timeout(Duration::from_secs(5), serving.tracker.wait()).await;
    Ok(())
}

// ----- membership -----

enum MemberCmd {
    Query(MembersRequest, oneshot::Sender<Vec<MemberInfo>>),
    Leaving,
    Left(oneshot::Sender<()>),
}

/// Talks to the membership task: the member view, and the leave announcements.
#[derive(Clone)]
pub struct MembershipHandle {
    tx: mpsc::Sender<MemberCmd>,
}

impl MembershipHandle {
    /// The members this agent knows, filtered.
    pub async fn members(&self, req: MembersRequest) -> Vec<MemberInfo> {
        let (tx, rx) = oneshot::channel();
        let asked = self.tx.send(MemberCmd::Query(req, tx));
        if tokio::time::timeout(QUERY_TIMEOUT, asked).await.is_err() {
            return vec![];
        }
        tokio::time::timeout(QUERY_TIMEOUT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// Announces that this agent is leaving (it is stopping its processes). Waits at
    /// most [`PUBLISH_TIMEOUT`] for the membership task to take it.
    pub async fn leaving(&self) {
        let _ = self
            .tx
            .send_timeout(MemberCmd::Leaving, PUBLISH_TIMEOUT)
            .await;
    }

    /// Announces that this agent left, and ends the membership task. Bounded: with
    /// NATS gone the announcement may be lost.
    pub async fn left(&self) {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send_timeout(MemberCmd::Left(tx), PUBLISH_TIMEOUT);
        if sent.await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

/// What the membership task needs to know.
pub struct MembershipSettings {
    pub identity: Identity,
    pub subjects: Subjects,
    pub heartbeat: Duration,
    pub config: MembershipConfig,
    pub system_events_account: Option<String>,
}

/// Starts the membership task: announces join, a heartbeat every `heartbeat`, keeps
/// the member view from every agent's announcements (and, where the server's
/// disconnect events are visible, marks a member failed the moment its connection
/// closes), and answers queries.
pub async fn start_membership<W: Watchers>(
    client: Client,
    settings: MembershipSettings,
    watchers: W,
) -> Result<(MembershipHandle, JoinHandle<()>), TransportError> {
    let registry = subscribe(&client, settings.subjects.registry_all(), None).await?;
    let (dtx, drx) = mpsc::channel::<crate::sysevents::DisconnectedClient>(64);
    if let Some(account) = settings.system_events_account.clone() {
        let c = client.clone();
        tokio::spawn(async move {
            match crate::sysevents::watch_disconnects(c, &account).await {
                Ok(mut stream) => {
                    while let Some(d) = stream.next().await {
                        if dtx.send(d).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => tracing::warn!("no instant failure detection: {e}"),
            }
        });
    }
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(membership_loop(
        client, settings, watchers, registry, drx, rx,
    ));
    Ok((MembershipHandle { tx }, task))
}

/// The longest a heartbeat waits for the supervisor's snapshot; past it, the watchers
/// last seen are announced, so that a busy supervisor never delays a heartbeat.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);

async fn announcement(
    settings: &MembershipSettings,
    source: &impl Watchers,
    last: &mut Vec<WatcherBrief>,
    kind: AnnounceKind,
    seq: u64,
) -> Announcement {
    let id = &settings.identity;
    match tokio::time::timeout(SNAPSHOT_TIMEOUT, source.briefs()).await {
        Ok(briefs) => *last = briefs.unwrap_or_default(),
        Err(_) => tracing::debug!("the supervisor is busy: announcing its watchers as last seen"),
    }
    let watchers = last.clone();
    let mut services: Vec<String> = watchers.iter().map(|w| w.service.clone()).collect();
    services.sort();
    services.dedup();
    let mut ann = Announcement {
        node: id.node.clone(),
        boot_id: id.boot_id.clone(),
        kind,
        seq,
        started_at: id.started_at,
        time: protocol::unix_time(),
        heartbeat_ms: u64::try_from(settings.heartbeat.as_millis()).unwrap_or(u64::MAX),
        tags: id.tags.clone(),
        version: id.version.clone(),
        hostname: id.hostname.clone(),
        pid: id.pid,
        address: None,
        watchers,
        services,
        server_id: None,
        client_id: None,
    };
    if crate::membership::fit_announcement(&mut ann, crate::membership::MAX_ANNOUNCEMENT_BYTES) {
        tracing::debug!("announcement cut to fit in 64 KiB: not every watcher is listed");
    }
    ann
}

async fn membership_loop<W: Watchers>(
    client: Client,
    settings: MembershipSettings,
    source: W,
    mut registry: async_nats::Subscriber,
    mut disconnects: mpsc::Receiver<crate::sysevents::DisconnectedClient>,
    mut cmds: mpsc::Receiver<MemberCmd>,
) {
    let mut table = Membership::new(settings.config);
    let mut connections = Connections::default();
    let subject = settings.subjects.registry(&settings.identity.node);
    let mut seq = 0u64;
    let mut kind = AnnounceKind::Join;
    let mut last: Vec<WatcherBrief> = vec![];
    let publish = |mut ann: Announcement| {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            stamp_connection(&client, &mut ann);
            publish_json(&client, subject, &ann).await
        }
    };
    let log = |c: &Change| tracing::info!(member = c.node(), "member {}", c.kind());
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When to tell newcomers about us: joins seen within this window get one
    // announcement, so that many agents starting at once cost each agent one extra
    // message, not one per newcomer.
    let answer_window = (settings.heartbeat / 4).min(JOIN_ANSWER_WINDOW);
    let mut answer_at: Option<Instant> = None;
    loop {
        let deadline = table.next_deadline();
        tokio::select! {
            _ = heartbeat.tick() => {
                crate::fatal::inject("membership");
                answer_at = None;
                seq += 1;
                let ann = announcement(&settings, &source, &mut last, kind, seq).await;
                // Our own view of ourselves needs no round trip.
                if let Some(c) = table.observe(&ann, Instant::now()) {
                    log(&c);
                }
                publish(ann).await;
                if kind == AnnounceKind::Join {
                    kind = AnnounceKind::Alive;
                }
                table.tick(Instant::now()).iter().for_each(log);
            }
            Some(msg) = registry.next() => {
                if msg.payload.len() > crate::membership::MAX_ANNOUNCEMENT_BYTES {
                    tracing::debug!(subject = %msg.subject, bytes = msg.payload.len(), "announcement too large, ignored");
                    continue;
                }
                let Ok(ann) = serde_json::from_slice::<Announcement>(&msg.payload) else {
                    tracing::debug!(subject = %msg.subject, "unreadable announcement");
                    continue;
                };
                if settings.subjects.node_of_registry(&msg.subject) != Some(ann.node.as_str()) {
                    continue;
                }
                if let Some(c) = table.observe(&ann, Instant::now()) {
                    log(&c);
                }
                // A newcomer knows nobody yet: tell it about us soon, not at our next
                // heartbeat, or a `ctl --all` it answers `members` for would skip us.
                if ann.kind == AnnounceKind::Join && ann.node != settings.identity.node {
                    answer_at.get_or_insert_with(|| Instant::now() + answer_window);
                }
                connections.note(&ann, |n| table.state(n).is_some());
            }
            _ = crate::clock::sleep_until(answer_at) => {
                answer_at = None;
                seq += 1;
                let me = announcement(&settings, &source, &mut last, kind, seq).await;
                table.observe(&me, Instant::now());
                publish(me).await;
            }
            Some(d) = disconnects.recv() => {
                // Only the member's own connection counts: any client may take a
                // member's name as its connection name.
                let owner = connections
                    .iter()
                    .find(|(_, c)| d.is_connection(c.server_id.as_deref(), c.client_id))
                    .map(|(name, _)| name.clone());
                match owner {
                    Some(name) if name != settings.identity.node => {
                        if let Some(c) = table.mark_failed(&name, Instant::now()) {
                            log(&c);
                        }
                    }
                    Some(_) => {}
                    None => tracing::debug!(
                        name = d.name.as_deref().unwrap_or("-"),
                        cid = d.cid,
                        "a connection closed that no member announced as its own"
                    ),
                }
                connections.retain(|n| table.state(n).is_some());
            }
            _ = crate::clock::sleep_until(deadline) => {
                table.tick(Instant::now()).iter().for_each(log);
            }
            cmd = cmds.recv() => {
                let done = match cmd {
                    Some(MemberCmd::Query(req, reply)) => {
                        let _ = reply.send(table.members(&req));
                        continue;
                    }
                    Some(MemberCmd::Leaving) => {
                        kind = AnnounceKind::Leaving;
                        seq += 1;
                        let ann = announcement(&settings, &source, &mut last, kind, seq).await;
                        table.observe(&ann, Instant::now());
                        publish(ann).await;
                        continue;
                    }
                    Some(MemberCmd::Left(done)) => Some(done),
                    None => None,
                };
                seq += 1;
                let ann = announcement(&settings, &source, &mut last, AnnounceKind::Left, seq).await;
                publish(ann).await;
                // With NATS down a flush never completes; the agent must still exit.
                flush(&client, Duration::from_secs(2)).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

/// Puts this agent's connection identity (server id, client id) into an
/// announcement, so that a disconnect advisory can be matched to it. After a reconnect
/// the next announcement carries the new ids.
fn stamp_connection(client: &Client, ann: &mut Announcement) {
    let info = client.server_info();
    if !info.server_id.is_empty() {
        ann.server_id = Some(info.server_id);
        ann.client_id = Some(info.client_id);
    }
}

/// Each member's NATS connection as its newest announcement gives it.
#[derive(Default)]
struct Connections(HashMap<String, Connection>, usize);

struct Connection {
    boot_id: String,
    started_at: f64,
    seq: u64,
    server_id: Option<String>,
    client_id: Option<u64>,
}

impl Connections {
    /// Keeps the ids of `ann` unless an announcement of the same boot with a higher
    /// sequence was seen (a late, buffered heartbeat carries stale ids). Whenever the
    /// map has doubled, members for which `known` is false are forgotten.
    fn note(&mut self, ann: &Announcement, known: impl Fn(&str) -> bool) {
        if self.0.len() >= self.1 {
            self.retain(known);
            self.1 = self.0.len().saturating_mul(2).max(64);
        }
        let newer = match self.0.get(&ann.node) {
            Some(c) if c.boot_id == ann.boot_id => c.seq < ann.seq,
            Some(c) => c.started_at <= ann.started_at,
            None => true,
        };
        if newer {
            self.0.insert(
                ann.node.clone(),
                Connection {
                    boot_id: ann.boot_id.clone(),
                    started_at: ann.started_at,
                    seq: ann.seq,
                    server_id: ann.server_id.clone(),
                    client_id: ann.client_id,
                },
            );
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Connection)> {
        self.0.iter()
    }

    /// Forgets the members the table no longer knows.
    fn retain(&mut self, known: impl Fn(&str) -> bool) {
        self.0.retain(|name, _| known(name));
    }
}

/// The longest wait before newcomers are told about this agent.
const JOIN_ANSWER_WINDOW: Duration = Duration::from_millis(50);

/// The longest one publish waits. While NATS is unreachable, async-nats buffers a
/// limited number of messages and then makes `publish` wait for room; past this
/// deadline the message is dropped, so that no task stalls on a dead connection.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest a query of the membership task waits.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes `bytes`, waiting at most [`PUBLISH_TIMEOUT`]; false when it was not
/// handed to the client (an error, or the client's buffer stayed full).
pub async fn publish_bytes(client: &Client, subject: String, bytes: bytes::Bytes) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Set while messages are being dropped, so that this is said once per outage.
    static DROPPING: AtomicBool = AtomicBool::new(false);
    match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject.clone(), bytes)).await {
        Ok(Ok(())) => {
            if DROPPING.swap(false, Ordering::Relaxed) {
                tracing::info!("NATS takes messages again");
            }
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(%subject, "cannot publish: {e}");
            false
        }
        Err(_) => {
            if !DROPPING.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "NATS is unreachable and the client's send buffer is full: stats, events \
                     and announcements are dropped until it is back"
                );
            }
            tracing::debug!(%subject, "not published: the send buffer is full");
            false
        }
    }
}

/// Publishes one message as JSON, waiting at most [`PUBLISH_TIMEOUT`]; a failure is
/// logged, never fatal.
pub async fn publish_json(client: &Client, subject: String, msg: &impl serde::Serialize) {
    match serde_json::to_vec(msg) {
        Ok(bytes) => {
            publish_bytes(client, subject, bytes.into()).await;
        }
        Err(e) => tracing::error!("cannot encode a message: {e}"),
    }
}

/// Waits until the server has every message sent so far, at most `timeout`; false
/// when it could not (at once when NATS is unreachable).
pub async fn flush(client: &Client, timeout: Duration) -> bool {
    if client.connection_state() != async_nats::connection::State::Connected {
        return false;
    }
    matches!(
        tokio::time::timeout(timeout, client.flush()).await,
        Ok(Ok(()))
    )
}

/// Publishes on the agent's connection, each message bounded by [`PUBLISH_TIMEOUT`]:
/// what the stats, event and log tasks get instead of the client itself.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
}

impl Publisher {
    pub fn new(client: Client) -> Publisher {
        Publisher { client }
    }

    /// Publishes `bytes` (see [`publish_bytes`]); false when it was not sent.
    pub async fn publish_bytes(&self, subject: String, bytes: bytes::Bytes) -> bool {
        publish_bytes(&self.client, subject, bytes).await
    }

    /// Publishes one message as JSON (see [`publish_json`]).
    pub async fn publish_json(&self, subject: String, msg: &impl serde::Serialize) {
        publish_json(&self.client, subject, msg).await
    }

    /// Waits until the server has every message sent so far (see [`flush`]).
    pub async fn flush(&self, timeout: Duration) -> bool {
        flush(&self.client, timeout).await
    }

    /// The largest message the server takes (at least 64 KiB, the NATS default).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload.max(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_loopback_from_the_network() {
        for (host, want) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("localhost", true),
            ("::1", true),
            ("[::1]", true),
            ("10.0.0.5", false),
            ("nats.example.org", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }

    fn ann(node: &str, boot: &str, started_at: f64, seq: u64, client_id: u64) -> Announcement {
        serde_json::from_value(serde_json::json!({
            "node": node, "kind": "alive", "boot_id": boot, "seq": seq,
            "started_at": started_at, "time": 0.0, "heartbeat_ms": 1000, "version": "v",
            "hostname": "h", "pid": 1, "server_id": "S", "client_id": client_id
        }))
        .expect("an announcement")
    }

    #[test]
    fn keeps_each_members_newest_connection() {
        let mut c = Connections::default();
        let id = |c: &Connections| c.0.get("b").and_then(|c| c.client_id);
        // (announcement, client id kept afterwards)
        let steps = [
            (ann("b", "b1", 100.0, 1, 10), Some(10)),
            (ann("b", "b1", 100.0, 3, 11), Some(11)),
            // a late heartbeat of the same boot carries stale ids
            (ann("b", "b1", 100.0, 2, 10), Some(11)),
            // a new boot, started later
            (ann("b", "b2", 200.0, 1, 20), Some(20)),
            // a late heartbeat of the old boot
            (ann("b", "b1", 100.0, 9, 11), Some(20)),
        ];
        for (i, (a, want)) in steps.iter().enumerate() {
            c.note(a, |_| true);
            assert_eq!(id(&c), *want, "step {i}");
        }
        c.retain(|n| n != "b");
        assert_eq!(id(&c), None);
    }
}
