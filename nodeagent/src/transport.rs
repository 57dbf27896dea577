//! The NATS edge (with `sysevents`, the only code that touches `async_nats`): the
//! connection, the command subscriptions (per node, broadcast, per service in its queue
//! group; each plain and per command) and replies, the announcements and disconnect
//! advisories the membership task reads, and the bounded [`Publisher`] every other task
//! publishes through.
//!
//! It serves a [`Handler`] it is given and knows nothing of what the agent does with a
//! request: it never imports the agent, the dispatch, the supervisor or the membership
//! task. Requests are handled concurrently, each in its own task, so a slow stop never
//! holds up a status; at most [`MAX_IN_FLIGHT`] at once, past which a request gets a
//! `busy` error at once.
//!
//! The command subscriptions are the endpoints of the agent's NATS micro service
//! ([`micro`]), so that NATS's own tools list the agents and count their requests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap};
use futures::stream::BoxStream;
use futures::StreamExt;
use protocol::reply::PingData;
use protocol::subjects::{HEADER_NODES, HEADER_TAGS};
use protocol::{Reply, Request, Subjects};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NatsConfig;
use crate::identity::Identity;
use crate::sysevents::DisconnectedClient;

pub mod micro;

/// What [`serve`] serves: the agent's answer to each request.
pub trait Handler: Send + Sync + 'static {
    /// Answers the request `payload` that came on `subject`. Never panics on input.
    fn handle(&self, subject: &str, payload: &[u8]) -> impl Future<Output = Reply> + Send;

    /// The services whose queue groups to serve; it changes as watchers come and go.
    fn services(&self) -> watch::Receiver<BTreeSet<String>>;

    /// Whether to answer `members` on the shared queue and on broadcasts: true while
    /// this agent keeps the member table. Always, unless told otherwise.
    fn members_served(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }
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
    #[error("cannot register the NATS micro service: {0}")]
    Service(String),
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
            let reply: Reply<Option<PingData>> = serde_json::from_slice(&msg.payload).ok()?;
            Some(reply.data.unwrap_or(PingData {
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
    handler: Arc<H>,
    node: String,
    tracker: TaskTracker,
    slots: Arc<tokio::sync::Semaphore>,
}

async fn spawn_handler<H: Handler>(serving: &Serving<H>, request: ServiceRequest) {
    let handler = serving.handler.clone();
    let slots = &serving.slots;
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        tracing::debug!(subject = %request.message.subject, "busy: {MAX_IN_FLIGHT} requests in flight");
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
        send_reply(&request, reply).await;
        return;
    };
    serving.tracker.spawn(async move {
        let msg = &request.message;
        let reply = handler.handle(&msg.subject, &msg.payload).await;
        drop(permit);
        send_reply(&request, reply).await;
    });
}

async fn send_reply(request: &ServiceRequest, reply: protocol::Reply) {
    // Bounded like every other publish: a full send buffer never holds a handler (or,
    // for a busy answer, the loop that reads requests).
    match serde_json::to_vec(&reply) {
        Ok(bytes) => micro::respond(request, bytes.into()).await,
        Err(e) => tracing::error!("cannot encode a reply: {e}"),
    }
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

type ServiceRequest = async_nats::service::Request;
type Endpoint = async_nats::service::endpoint::Endpoint;
type Endpoints = futures::stream::SelectAll<Endpoint>;

/// The command endpoints of one agent, subscribed: what [`serve`] serves.
pub struct Bound {
    subjects: Subjects,
    identity: Identity,
    service: async_nats::service::Service,
    own: Endpoints,
    all: Endpoints,
    /// `None` while this agent does not keep the member table.
    members: Option<Endpoint>,
}

/// Registers the agent's micro service and subscribes its per-node, broadcast and
/// members endpoints; when it returns, the server has them (or NATS is unreachable,
/// and they are made at the reconnect).
pub async fn bind(
    client: Client,
    subjects: Subjects,
    identity: Identity,
) -> Result<Bound, TransportError> {
    let service = micro::register(&client, &subjects, &identity).await?;
    let own = micro::endpoints(&service, "node", subjects.node_cmd(&identity.node), None).await?;
    let all = micro::endpoints(&service, "all", subjects.all_cmd(), None).await?;
    // Every agent keeps the member table as it starts ([`Handler::members_served`]);
    // [`serve`] stops this endpoint if it does not.
    let members = Some(members_endpoint(&service, &subjects).await?);
    flush(&client, Duration::from_secs(2)).await;
    Ok(Bound {
        subjects,
        identity,
        service,
        own,
        all,
        members,
    })
}

/// The `members` endpoint, in the queue group of the agents keeping the member table.
async fn members_endpoint(
    service: &async_nats::service::Service,
    subjects: &Subjects,
) -> Result<Endpoint, TransportError> {
    let queue = subjects.members_queue();
    micro::endpoint(service, "members".into(), subjects.members(), Some(&queue)).await
}

/// Serves the `members` endpoint when `on` (adding it again after a step down), and
/// stops it when not. A failure to add it is logged: the next change tries again.
async fn serve_members(
    service: &async_nats::service::Service,
    subjects: &Subjects,
    members: &mut Option<Endpoint>,
    on: bool,
) {
    match (on, members.take()) {
        (true, Some(endpoint)) => *members = Some(endpoint),
        (true, None) => match members_endpoint(service, subjects).await {
            Ok(endpoint) => *members = Some(endpoint),
            Err(e) => tracing::error!("{e}"),
        },
        (false, Some(mut endpoint)) => {
            let _ = endpoint.stop().await;
        }
        (false, None) => {}
    }
}

/// Serves the commands of `bound` with `handler` until `shutdown` is cancelled; then
/// the requests in flight finish (at most 5 s).
pub async fn serve<H: Handler>(
    bound: Bound,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), TransportError> {
    let Bound {
        subjects,
        identity,
        service,
        mut own,
        mut all,
        mut members,
    } = bound;
    let serving = Serving {
        handler: handler.clone(),
        node: identity.node.clone(),
        tracker: TaskTracker::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    };
    // Only the agents that keep the member table answer `members`: the endpoint is
    // served while the agent keeps it, stopped when it steps down.
    let mut serving_members = handler.members_served();
    let on = *serving_members.borrow_and_update();
    serve_members(&service, &subjects, &mut members, on).await;
    let (svc_tx, mut svc_rx) = tokio::sync::mpsc::channel::<ServiceRequest>(256);
    let mut services: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut wanted = handler.services();
    // Serves the services in `set` (each in its queue group) and no others.
    let reconcile = async |set: &BTreeSet<String>,
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
            let subject = subjects.service_cmd(name);
            let endpoint = format!("svc-{name}");
            let mut sub =
                match micro::endpoints(&service, &endpoint, subject, Some(name.clone())).await {
                    Ok(sub) => sub,
                    Err(e) => {
                        tracing::error!("{e}");
                        continue;
                    }
                };
            let tx = svc_tx.clone();
            services.insert(
                name.clone(),
                tokio::spawn(async move {
                    while let Some(request) = sub.next().await {
                        if tx.send(request).await.is_err() {
                            break;
                        }
                    }
                }),
            );
        }
    };
    let initial = wanted.borrow_and_update().clone();
    reconcile(&initial, &mut services).await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(request) = own.next() => spawn_handler(&serving, request).await,
            Some(request) = all.next() => {
                // A broadcast `members` is for the agents that keep the table.
                let members_asked = subjects
                    .parse_cmd(&request.message.subject)
                    .and_then(|c| c.token)
                    .is_some_and(|t| t == "members");
                if members_asked && !*serving_members.borrow() {
                    continue;
                }
                if selected(request.message.headers.as_ref(), &identity.node, &identity.tags) {
                    spawn_handler(&serving, request).await;
                }
            }
            Some(request) = svc_rx.recv() => spawn_handler(&serving, request).await,
            Some(request) = next_of(&mut members) => spawn_handler(&serving, request).await,
            Ok(()) = serving_members.changed() => {
                let on = *serving_members.borrow_and_update();
                serve_members(&service, &subjects, &mut members, on).await;
            }
            Ok(()) = wanted.changed() => {
                let set = wanted.borrow_and_update().clone();
                reconcile(&set, &mut services).await;
            }
        }
    }
    for (_, task) in services.drain() {
        task.abort();
    }
    for endpoint in own.iter_mut().chain(all.iter_mut()) {
        let _ = endpoint.stop().await;
    }
    if let Some(mut endpoint) = members.take() {
        let _ = endpoint.stop().await;
    }
    // No more `$SRV` answers: the agent is leaving.
    let _ = service.stop().await;
    serving.tracker.close();
    // Requests in flight finish (a quit's own reply among them).
    let _ = tokio::time::timeout(Duration::from_secs(5), serving.tracker.wait()).await;
    Ok(())
}

/// The next message of a subscription that may be off (then never).
async fn next_of(endpoint: &mut Option<Endpoint>) -> Option<ServiceRequest> {
    match endpoint {
        Some(e) => e.next().await,
        None => futures::future::pending().await,
    }
}

/// The longest one publish waits. While NATS is unreachable, async-nats buffers a
/// limited number of messages and then makes `publish` wait for room; past this
/// deadline the message is dropped, so that no task stalls on a dead connection.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

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

/// A message that arrived on a subscription.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// Subscribes to `subject`, its messages as [`Incoming`].
async fn incoming(
    client: &Client,
    subject: String,
) -> Result<BoxStream<'static, Incoming>, TransportError> {
    let sub = subscribe(client, subject, None).await?;
    Ok(sub
        .map(|m| Incoming {
            subject: m.subject.to_string(),
            payload: m.payload,
        })
        .boxed())
}

/// Every agent's announcements (`cluster.registry.*`), subscribed to while this agent
/// keeps the member table: [`RegistryFeed::open`] subscribes, dropping the stream
/// unsubscribes.
pub struct RegistryFeed {
    client: Client,
    subject: String,
}

impl RegistryFeed {
    pub fn new(client: &Client, subjects: &Subjects) -> RegistryFeed {
        RegistryFeed {
            client: client.clone(),
            subject: subjects.registry_all(),
        }
    }

    /// Subscribes to every agent's announcements.
    pub async fn open(&self) -> Result<BoxStream<'static, Incoming>, TransportError> {
        incoming(&self.client, self.subject.clone()).await
    }
}

/// Subscribes to the keepers' announcements (`cluster.registry.keepers.*`), which every
/// agent reads to know who keeps the member table.
pub async fn subscribe_keepers(
    client: &Client,
    subjects: &Subjects,
) -> Result<BoxStream<'static, Incoming>, TransportError> {
    incoming(client, subjects.keepers_all()).await
}

/// The clients whose connection the server closed, as the server's advisories in
/// `account` tell (see [`crate::sysevents`]); nothing when `account` is `None` or the
/// advisories cannot be read (said once, as a warning).
pub fn disconnects(client: &Client, account: Option<String>) -> mpsc::Receiver<DisconnectedClient> {
    let (tx, rx) = mpsc::channel(64);
    if let Some(account) = account {
        let client = client.clone();
        tokio::spawn(async move {
            match crate::sysevents::watch_disconnects(client, &account).await {
                Ok(mut stream) => {
                    while let Some(d) = stream.next().await {
                        if tx.send(d).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => tracing::warn!("no instant failure detection: {e}"),
            }
        });
    }
    rx
}

/// Publishes on the agent's connection, each message bounded by [`PUBLISH_TIMEOUT`]:
/// what the stats, membership, event and log tasks get instead of the client itself.
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

    /// True while connected to a server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Sends a request and waits at most `timeout` for its reply; `None` when none
    /// came (no responders, a timeout, NATS unreachable).
    pub async fn request(
        &self,
        subject: String,
        bytes: bytes::Bytes,
        timeout: Duration,
    ) -> Option<bytes::Bytes> {
        let msg = tokio::time::timeout(timeout, self.client.request(subject, bytes))
            .await
            .ok()?
            .ok()?;
        (msg.status.is_none()).then_some(msg.payload)
    }

    /// Waits until the server has every message sent so far (see [`flush`]).
    pub async fn flush(&self, timeout: Duration) -> bool {
        flush(&self.client, timeout).await
    }

    /// This connection's ids (server id, client id) as the server gave them, so that a
    /// disconnect advisory can be matched to it; `None` before the first connection.
    /// They change at a reconnect.
    pub fn connection_ids(&self) -> Option<(String, u64)> {
        let info = self.client.server_info();
        (!info.server_id.is_empty()).then_some((info.server_id, info.client_id))
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
}
