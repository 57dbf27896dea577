//! The membership task: announces this agent (join, a heartbeat every `heartbeat`,
//! leaving, left), and, while this agent is one of the few keepers
//! ([`crate::keepers`]), keeps the member table ([`crate::membership`], pure) from
//! every agent's announcements, marks a member failed the moment the server says its
//! connection closed, and answers `members` queries. An agent that keeps no table reads
//! only the keepers' announcements, so what it receives does not grow with the cluster.
//! It reads the announcements and advisories the transport subscribed to and publishes
//! through the transport's [`Publisher`]; it never touches `async_nats` itself, and
//! learns the watchers it announces through [`Watchers`].

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use protocol::registry::{AnnounceKind, Announcement, MembersData, MembersRequest, WatcherBrief};
use protocol::Subjects;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::identity::Identity;
use crate::keepers::{Decision, Roster};
use crate::membership::{Change, Membership, MembershipConfig, MAX_ANNOUNCEMENT_BYTES};
use crate::sysevents::DisconnectedClient;
use crate::transport::{Incoming, Publisher, RegistryFeed, PUBLISH_TIMEOUT};

/// Where the membership task learns the watchers it announces.
pub trait Watchers: Send + Sync + 'static {
    /// The watchers running now, or `None` when they cannot be known.
    fn briefs(&self) -> impl Future<Output = Option<Vec<WatcherBrief>>> + Send;
}

/// The longest a query of the membership task waits.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait before newcomers are told about this agent.
const JOIN_ANSWER_WINDOW: Duration = Duration::from_millis(50);

/// Over how long the members spread their announcements to a new keeper, so that its
/// table fills at once without every member speaking in the same millisecond.
const KEEPER_ANSWER_SPREAD: Duration = Duration::from_millis(250);

/// How long a new keeper listens before it answers `members`: the members' answers to
/// it are spread over [`KEEPER_ANSWER_SPREAD`].
pub const KEEPER_FILL: Duration = Duration::from_millis(500);

/// The longest a heartbeat waits for the watchers; past it, the watchers last seen are
/// announced, so that a busy supervisor never delays a heartbeat.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);

enum MemberCmd {
    Query(MembersRequest, usize, oneshot::Sender<Option<MembersData>>),
    /// The agent is about to exec (`Some(grace)`), or that failed (`None`).
    Upgrading(Option<Duration>, oneshot::Sender<()>),
    Leaving,
    Left(oneshot::Sender<()>),
}

/// Talks to the membership task: the member view, and the leave announcements.
#[derive(Clone)]
pub struct MembershipHandle {
    tx: mpsc::Sender<MemberCmd>,
    serving: watch::Receiver<bool>,
    bus: Publisher,
    subjects: Subjects,
}

impl MembershipHandle {
    /// The members this agent knows, filtered, in a page of at most `max_bytes` of
    /// JSON. An agent that keeps no member table asks a keeper when `forward`, and
    /// says it keeps none otherwise.
    pub async fn members(
        &self,
        req: MembersRequest,
        max_bytes: usize,
        forward: bool,
    ) -> Result<MembersData, String> {
        let (tx, rx) = oneshot::channel();
        let asked = self.tx.send(MemberCmd::Query(req.clone(), max_bytes, tx));
        if tokio::time::timeout(QUERY_TIMEOUT, asked).await.is_err() {
            return Err("the membership task is busy; try again".into());
        }
        let page = tokio::time::timeout(QUERY_TIMEOUT, rx)
            .await
            .map_err(|_| "the membership task did not answer in time; try again".to_owned())?
            .map_err(|_| "the agent is stopping".to_owned())?;
        if let Some(page) = page {
            return Ok(page);
        }
        let ask = self.subjects.members();
        if !forward {
            return Err(format!(
                "this agent keeps no member table; the keepers answer on {ask}"
            ));
        }
        let body = protocol::Request::new(protocol::Command::Members(req));
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let reply = self
            .bus
            .request(ask.clone(), body.into(), QUERY_TIMEOUT)
            .await
            .ok_or_else(|| {
                format!(
                    "this agent keeps no member table and no keeper answered on {ask} within \
                     {QUERY_TIMEOUT:?}; keepers take over within seconds, try again"
                )
            })?;
        let reply = protocol::reply::ReplyKind::Members
            .decode(&reply)
            .map_err(|e| format!("unreadable keeper reply: {e}"))?;
        if !reply.is_ok() {
            return Err(reply.reason.unwrap_or_default());
        }
        match reply.data {
            Some(protocol::reply::ReplyData::Members(page)) => Ok(page),
            _ => Err("the keeper's members reply carries no members".to_owned()),
        }
    }

    /// True while this agent keeps a filled member table and answers `members` on the
    /// shared queue; the transport joins and leaves the queue group as it changes.
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
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
    /// How many agents keep the member table (`[agent] keepers`).
    pub keepers: usize,
}

/// What the membership task reads.
pub struct Inputs {
    /// Every agent's announcements, opened while this agent keeps the table.
    pub registry: RegistryFeed,
    /// The keepers' announcements ([`crate::transport::subscribe_keepers`]).
    pub keepers: BoxStream<'static, Incoming>,
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
    // An agent starts serving `members` (see `Task::run`): true from the start, so the
    // transport joins the queue group with its first subscriptions.
    let (serving_tx, serving) = watch::channel(true);
    let task = Task {
        table: Membership::new(settings.config),
        connections: Connections::default(),
        roster: Roster::new(
            &settings.identity.node,
            settings.keepers,
            settings.heartbeat,
        ),
        keeping: false,
        stale: true,
        deadline: None,
        serve_at: None,
        serving: serving_tx,
        subject: settings.subjects.registry(&settings.identity.node),
        keeper_subject: settings.subjects.keepers(&settings.identity.node),
        seq: 0,
        kind: AnnounceKind::Join,
        upgrading: None,
        last: vec![],
        bus,
        settings,
        watchers,
    };
    let handle = MembershipHandle {
        tx,
        serving,
        bus: task.bus.clone(),
        subjects: task.settings.subjects.clone(),
    };
    (handle, tokio::spawn(task.run(inputs, rx)))
}

/// The membership task's state.
struct Task<W> {
    bus: Publisher,
    settings: MembershipSettings,
    watchers: W,
    table: Membership,
    connections: Connections,
    /// The keepers heard, and whether this agent should be one.
    roster: Roster,
    /// This agent keeps the table: it reads every announcement.
    keeping: bool,
    /// The table's next deadline must be found again.
    stale: bool,
    /// The table's next deadline as last found (early rather than late).
    deadline: Option<Instant>,
    /// When a new keeper's table is full enough to answer `members`.
    serve_at: Option<Instant>,
    serving: watch::Sender<bool>,
    /// Where this agent announces itself.
    subject: String,
    /// Where it also announces itself while it keeps the table.
    keeper_subject: String,
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
        // An agent starts as a keeper, as if alone, answering `members` at once (as
        // every agent did before keepers), and steps down as soon as it hears enough
        // better-ranked keepers (they answer its join within JOIN_ANSWER_WINDOW).
        let mut registry = self.start_keeping(&inputs.registry, Duration::ZERO).await;
        loop {
            // The table's deadline costs a pass over every member: it is found again
            // only when something else than an announcement happened. An announcement
            // moves only its member's deadline, which is folded in
            // (`on_announcement`); one moved later leaves the deadline kept early,
            // never late, and waking early ticks for nothing.
            if std::mem::replace(&mut self.stale, true) {
                self.deadline = self.table.next_deadline();
            }
            let deadline = self.deadline;
            let roster_deadline = self.roster.next_deadline();
            tokio::select! {
                _ = heartbeat.tick() => {
                    crate::fatal::inject("membership");
                    answer_at = None;
                    self.heartbeat().await;
                    self.decide(&inputs.registry, &mut registry).await;
                }
                Some(msg) = registry.next() => {
                    // A newcomer knows nobody yet: tell it about us soon, not at our
                    // next heartbeat: it learns the keepers from us, and if it keeps the
                    // table, a `ctl --all` it answers `members` for would skip us.
                    self.stale = false;
                    if self.on_announcement(msg) {
                        answer_at.get_or_insert_with(|| Instant::now() + answer_window);
                    }
                }
                Some(msg) = inputs.keepers.next() => {
                    // A new keeper that stays fills its table from every member at once.
                    if self.on_keeper(msg) {
                        let spread = self.spread(KEEPER_ANSWER_SPREAD);
                        answer_at.get_or_insert_with(|| Instant::now() + spread);
                    }
                    self.decide(&inputs.registry, &mut registry).await;
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
                _ = crate::clock::sleep_until(roster_deadline) => {
                    self.decide(&inputs.registry, &mut registry).await;
                }
                _ = crate::clock::sleep_until(self.serve_at) => {
                    self.serve_at = None;
                    tracing::info!("keeping the member table: answering members");
                    self.serving.send_replace(true);
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

    /// Starts keeping the table: reads every announcement, announces itself as a
    /// keeper (the members then announce themselves to it), and answers `members` after
    /// `fill`, once its table has filled. The returned stream is the registry feed while
    /// it keeps.
    async fn start_keeping(
        &mut self,
        feed: &RegistryFeed,
        fill: Duration,
    ) -> BoxStream<'static, Incoming> {
        let stream = match feed.open().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot keep the member table: {e}");
                self.serving.send_replace(false);
                return futures::stream::pending().boxed();
            }
        };
        self.keeping = true;
        if fill.is_zero() {
            self.serving.send_replace(true);
        } else {
            self.serve_at = Some(Instant::now() + fill);
        }
        stream
    }

    /// Stops keeping the table: leaves the `members` queue, forgets the others, and
    /// says so on the keepers feed.
    async fn stop_keeping(&mut self) {
        self.keeping = false;
        self.serve_at = None;
        self.serving.send_replace(false);
        self.table = Membership::new(self.settings.config);
        self.connections = Connections::default();
        let ann = self.announcement(self.kind).await;
        self.table.observe(&ann, Instant::now());
        self.publish_to(&self.keeper_subject, &ann).await;
        self.publish(ann).await;
    }

    /// Volunteers or steps down as the keepers heard tell.
    async fn decide(&mut self, feed: &RegistryFeed, registry: &mut BoxStream<'static, Incoming>) {
        let connected = self.bus.connection_ids().is_some() && self.bus.is_connected();
        match self.roster.decide(self.keeping, connected, Instant::now()) {
            Decision::Stay => {}
            Decision::Volunteer => {
                tracing::info!(
                    keepers = %self.roster.keepers().join(","),
                    "too few agents keep the member table: keeping it too"
                );
                *registry = self.start_keeping(feed, KEEPER_FILL).await;
                if self.keeping {
                    let ann = self.announcement(self.kind).await;
                    self.table.observe(&ann, Instant::now());
                    self.publish(ann).await;
                }
            }
            Decision::StepDown => {
                tracing::info!(
                    keepers = %self.roster.keepers().join(","),
                    "enough better-ranked agents keep the member table: no longer keeping it"
                );
                *registry = futures::stream::pending().boxed();
                self.stop_keeping().await;
            }
        }
    }

    /// A delay in `0..window`, set by this agent's name, so that many agents answering
    /// the same event spread their answers.
    fn spread(&self, window: Duration) -> Duration {
        let share = crate::keepers::rank(&self.settings.identity.boot_id) as f64 / u64::MAX as f64;
        window.mul_f64(share)
    }

    /// Takes a keeper's announcement; true when it is a keeper not heard before that
    /// ranks among the ones that stay, so that the members announce themselves to it.
    fn on_keeper(&mut self, msg: Incoming) -> bool {
        let Some(ann) = self.read(&msg, self.settings.subjects.node_of_keepers(&msg.subject))
        else {
            return false;
        };
        let now = Instant::now();
        let new = self.roster.observe(&ann, now);
        if self.keeping {
            if let Some(c) = self.table.observe(&ann, now) {
                log(&c);
            }
            let table = &self.table;
            self.connections.note(&ann, |n| table.state(n).is_some());
        }
        new && self.roster.stays(&ann.node, self.keeping)
    }

    /// Reads an announcement that came on `msg.subject`, whose node is `node`; `None`
    /// when it is too large, unreadable, or names another node than its subject.
    fn read(&self, msg: &Incoming, node: Option<&str>) -> Option<Announcement> {
        if msg.payload.len() > MAX_ANNOUNCEMENT_BYTES {
            tracing::debug!(subject = %msg.subject, bytes = msg.payload.len(), "announcement too large, ignored");
            return None;
        }
        let Ok(ann) = serde_json::from_slice::<Announcement>(&msg.payload) else {
            tracing::debug!(subject = %msg.subject, "unreadable announcement");
            return None;
        };
        (node == Some(ann.node.as_str())).then_some(ann)
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
        if !self.keeping {
            return false;
        }
        let Some(ann) = self.read(&msg, self.settings.subjects.node_of_registry(&msg.subject))
        else {
            return false;
        };
        if let Some(c) = self.table.observe(&ann, Instant::now()) {
            log(&c);
        }
        if let Some(d) = self.table.deadline_of(&ann.node) {
            self.deadline = Some(self.deadline.map_or(d, |k| k.min(d)));
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
                self.roster.forget(&name);
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
            Some(MemberCmd::Query(req, max_bytes, reply)) => {
                let page = self.keeping.then(|| self.table.page(&req, max_bytes));
                let _ = reply.send(page);
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
    /// matched to it; after a reconnect the next announcement carries the new ids. A
    /// keeper's announcements (its leaving and left too) also go to the keepers feed.
    async fn publish(&self, ann: Announcement) {
        if ann.keeper || self.keeping {
            self.publish_to(&self.keeper_subject, &ann).await;
        }
        self.publish_to(&self.subject, &ann).await;
    }

    async fn publish_to(&self, subject: &str, ann: &Announcement) {
        let mut ann = ann.clone();
        if let Some((server_id, client_id)) = self.bus.connection_ids() {
            ann.server_id = Some(server_id);
            ann.client_id = Some(client_id);
        }
        self.bus.publish_json(subject.to_owned(), &ann).await;
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
            keeper: self.keeping && matches!(kind, AnnounceKind::Join | AnnounceKind::Alive),
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
