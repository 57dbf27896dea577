//! The membership task: announces this agent (join, a heartbeat every `heartbeat`,
//! leaving, left), keeps the member table ([`crate::membership`], pure) from every
//! agent's announcements, marks a member failed the moment the server says its
//! connection closed, and answers `members` queries. It reads the announcements and
//! advisories the transport subscribed to and publishes through the transport's
//! [`Publisher`]; it never touches `async_nats` itself, and learns the watchers it
//! announces through [`Watchers`].

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use protocol::registry::{AnnounceKind, Announcement, MemberInfo, MembersRequest, WatcherBrief};
use protocol::Subjects;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::identity::Identity;
use crate::membership::{Change, Membership, MembershipConfig, MAX_ANNOUNCEMENT_BYTES};
use crate::sysevents::DisconnectedClient;
use crate::transport::{Incoming, Publisher, PUBLISH_TIMEOUT};

/// Where the membership task learns the watchers it announces.
pub trait Watchers: Send + Sync + 'static {
    /// The watchers running now, or `None` when they cannot be known.
    fn briefs(&self) -> impl Future<Output = Option<Vec<WatcherBrief>>> + Send;
}

/// The longest a query of the membership task waits.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait before newcomers are told about this agent.
const JOIN_ANSWER_WINDOW: Duration = Duration::from_millis(50);

/// The longest a heartbeat waits for the watchers; past it, the watchers last seen are
/// announced, so that a busy supervisor never delays a heartbeat.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);

enum MemberCmd {
    Query(MembersRequest, oneshot::Sender<Vec<MemberInfo>>),
    /// The agent is about to exec (`Some(grace)`), or that failed (`None`).
    Upgrading(Option<Duration>, oneshot::Sender<()>),
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

    /// Announces that this agent re-executes its binary: peers neither fail it when its
    /// connection closes nor suspect it for up to `grace` (until its new boot joins);
    /// `None` says the exec failed and heartbeats go on as before. Returns once the
    /// announcement is flushed (bounded).
    pub async fn upgrading(&self, grace: Option<Duration>) {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .tx
            .send_timeout(MemberCmd::Upgrading(grace, tx), PUBLISH_TIMEOUT);
        if sent.await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
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
}

/// What the membership task reads.
pub struct Inputs {
    /// Every agent's announcements ([`crate::transport::subscribe_registry`]).
    pub registry: BoxStream<'static, Incoming>,
    /// Closed connections ([`crate::transport::disconnects`]).
    pub disconnects: mpsc::Receiver<DisconnectedClient>,
}

/// Starts the membership task.
pub fn start<W: Watchers>(
    bus: Publisher,
    settings: MembershipSettings,
    inputs: Inputs,
    watchers: W,
) -> (MembershipHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = Task {
        table: Membership::new(settings.config),
        connections: Connections::default(),
        subject: settings.subjects.registry(&settings.identity.node),
        seq: 0,
        kind: AnnounceKind::Join,
        upgrading: None,
        last: vec![],
        bus,
        settings,
        watchers,
    };
    (MembershipHandle { tx }, tokio::spawn(task.run(inputs, rx)))
}

/// The membership task's state.
struct Task<W> {
    bus: Publisher,
    settings: MembershipSettings,
    watchers: W,
    table: Membership,
    connections: Connections,
    /// Where this agent announces itself.
    subject: String,
    seq: u64,
    /// What the next heartbeat says: join, then alive (or leaving).
    kind: AnnounceKind,
    /// While the agent is about to exec: the grace its announcements ask for.
    upgrading: Option<Duration>,
    /// The watchers last announced.
    last: Vec<WatcherBrief>,
}

fn log(c: &Change) {
    tracing::info!(member = c.node(), "member {}", c.kind());
}

impl<W: Watchers> Task<W> {
    async fn run(mut self, mut inputs: Inputs, mut cmds: mpsc::Receiver<MemberCmd>) {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When to tell newcomers about us: joins seen within this window get one
        // announcement, so that many agents starting at once cost each agent one extra
        // message, not one per newcomer.
        let answer_window = (self.settings.heartbeat / 4).min(JOIN_ANSWER_WINDOW);
        let mut answer_at: Option<Instant> = None;
        loop {
            let deadline = self.table.next_deadline();
            tokio::select! {
                _ = heartbeat.tick() => {
                    crate::fatal::inject("membership");
                    answer_at = None;
                    self.heartbeat().await;
                }
                Some(msg) = inputs.registry.next() => {
                    // A newcomer knows nobody yet: tell it about us soon, not at our
                    // next heartbeat, or a `ctl --all` it answers `members` for would
                    // skip us.
                    if self.on_announcement(msg) {
                        answer_at.get_or_insert_with(|| Instant::now() + answer_window);
                    }
                }
                _ = crate::clock::sleep_until(answer_at) => {
                    answer_at = None;
                    let me = self.announcement(self.kind).await;
                    self.table.observe(&me, Instant::now());
                    self.publish(me).await;
                }
                Some(d) = inputs.disconnects.recv() => self.on_disconnect(&d),
                _ = crate::clock::sleep_until(deadline) => {
                    self.table.tick(Instant::now()).iter().for_each(log);
                }
                cmd = cmds.recv() => {
                    if let Some(done) = self.on_cmd(cmd).await {
                        self.leave(done).await;
                        return;
                    }
                }
            }
        }
    }

    /// Announces this agent, and ages the table.
    async fn heartbeat(&mut self) {
        let ann = self.announcement(self.kind).await;
        // Our own view of ourselves needs no round trip.
        if let Some(c) = self.table.observe(&ann, Instant::now()) {
            log(&c);
        }
        self.publish(ann).await;
        if self.kind == AnnounceKind::Join {
            self.kind = AnnounceKind::Alive;
        }
        self.table.tick(Instant::now()).iter().for_each(log);
    }

    /// Takes another agent's announcement; true when it is a newcomer's join.
    fn on_announcement(&mut self, msg: Incoming) -> bool {
        if msg.payload.len() > MAX_ANNOUNCEMENT_BYTES {
            tracing::debug!(subject = %msg.subject, bytes = msg.payload.len(), "announcement too large, ignored");
            return false;
        }
        let Ok(ann) = serde_json::from_slice::<Announcement>(&msg.payload) else {
            tracing::debug!(subject = %msg.subject, "unreadable announcement");
            return false;
        };
        if self.settings.subjects.node_of_registry(&msg.subject) != Some(ann.node.as_str()) {
            return false;
        }
        if let Some(c) = self.table.observe(&ann, Instant::now()) {
            log(&c);
        }
        let table = &self.table;
        self.connections.note(&ann, |n| table.state(n).is_some());
        ann.kind == AnnounceKind::Join && ann.node != self.settings.identity.node
    }

    /// Marks failed the member whose connection closed. Only the member's own
    /// connection counts: any client may take a member's name as its connection name.
    fn on_disconnect(&mut self, d: &DisconnectedClient) {
        let owner = self
            .connections
            .iter()
            .find(|(_, c)| d.is_connection(c.server_id.as_deref(), c.client_id))
            .map(|(name, _)| name.clone());
        match owner {
            Some(name) if name != self.settings.identity.node => {
                if let Some(c) = self.table.mark_failed(&name, Instant::now()) {
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
        let table = &self.table;
        self.connections.retain(|n| table.state(n).is_some());
    }

    /// Carries out a command; `Some` when the task is to announce that it left and end
    /// (with whom to tell, if anyone).
    async fn on_cmd(&mut self, cmd: Option<MemberCmd>) -> Option<Option<oneshot::Sender<()>>> {
        match cmd {
            Some(MemberCmd::Query(req, reply)) => {
                let _ = reply.send(self.table.members(&req));
                None
            }
            Some(MemberCmd::Upgrading(grace, done)) => {
                self.upgrading = grace;
                let ann = self.announcement(self.kind).await;
                self.table.observe(&ann, Instant::now());
                self.publish(ann).await;
                self.bus.flush(Duration::from_secs(2)).await;
                let _ = done.send(());
                None
            }
            Some(MemberCmd::Leaving) => {
                self.kind = AnnounceKind::Leaving;
                let ann = self.announcement(self.kind).await;
                self.table.observe(&ann, Instant::now());
                self.publish(ann).await;
                None
            }
            Some(MemberCmd::Left(done)) => Some(Some(done)),
            None => Some(None),
        }
    }

    /// Announces that this agent left, then tells `done`.
    async fn leave(&mut self, done: Option<oneshot::Sender<()>>) {
        let ann = self.announcement(AnnounceKind::Left).await;
        self.publish(ann).await;
        // With NATS down a flush never completes; the agent must still exit.
        self.bus.flush(Duration::from_secs(2)).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Publishes `ann` with this connection's ids, so that a disconnect advisory can be
    /// matched to it; after a reconnect the next announcement carries the new ids.
    async fn publish(&self, mut ann: Announcement) {
        if let Some((server_id, client_id)) = self.bus.connection_ids() {
            ann.server_id = Some(server_id);
            ann.client_id = Some(client_id);
        }
        self.bus.publish_json(self.subject.clone(), &ann).await;
    }

    /// The next announcement of this agent, of `kind`.
    async fn announcement(&mut self, kind: AnnounceKind) -> Announcement {
        self.seq += 1;
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, self.watchers.briefs()).await {
            Ok(briefs) => self.last = briefs.unwrap_or_default(),
            Err(_) => {
                tracing::debug!("the supervisor is busy: announcing its watchers as last seen")
            }
        }
        let id = &self.settings.identity;
        let watchers = self.last.clone();
        let mut services: Vec<String> = watchers.iter().map(|w| w.service.clone()).collect();
        services.sort();
        services.dedup();
        let mut ann = Announcement {
            node: id.node.clone(),
            boot_id: id.boot_id.clone(),
            kind,
            seq: self.seq,
            started_at: id.started_at,
            time: protocol::unix_time(),
            heartbeat_ms: u64::try_from(self.settings.heartbeat.as_millis()).unwrap_or(u64::MAX),
            tags: id.tags.clone(),
            version: id.version.clone(),
            hostname: id.hostname.clone(),
            pid: id.pid,
            address: None,
            watchers,
            services,
            server_id: None,
            client_id: None,
            upgrading_ms: self
                .upgrading
                .map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX)),
        };
        if crate::membership::fit_announcement(&mut ann, MAX_ANNOUNCEMENT_BYTES) {
            tracing::debug!("announcement cut to fit in 64 KiB: not every watcher is listed");
        }
        ann
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

#[cfg(test)]
mod tests {
    use super::*;

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
