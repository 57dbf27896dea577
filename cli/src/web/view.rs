//! The dashboard's picture of the cluster, built from what the agents publish: the
//! members (from their announcements, judged by silence as the agents judge them), the
//! last stats of each node with a few minutes of CPU and memory per process, and the
//! last events. Pure: the clock is passed in; it never touches NATS or HTTP. Every
//! value comes from the bus and is checked and bounded here before it is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol::events::{Event, AGENT_EVENTS_TOKEN};
use protocol::registry::{AnnounceKind, Announcement, MemberInfo, MemberState, WatcherBrief};
use protocol::reply::{ProcessHealth, WatcherState};
use protocol::stats::StatsMessage;
use protocol::subjects::{validate_node_name, validate_token};
use serde::Serialize;

/// How far back the CPU and memory charts go.
pub const HISTORY_SECS: f64 = 300.0;
/// The most points kept per process (one a second over [`HISTORY_SECS`]).
pub const MAX_POINTS: usize = 300;
/// A new page gets one chart point in this many (and always the last).
pub const SNAPSHOT_EVERY: usize = 3;
/// The most events kept for the feed.
pub const MAX_EVENTS: usize = 200;
/// The most members kept; announcements of more are dropped.
pub const MAX_NODES: usize = 10_000;
/// The most watchers kept per node, and the most processes per watcher.
pub const MAX_WATCHERS: usize = 1_000;
pub const MAX_PROCESSES: usize = 1_000;
/// The longest text kept from a message (reasons, tags, versions).
const MAX_TEXT: usize = 256;
/// The most tags kept per member.
const MAX_TAGS: usize = 64;
/// Failed and left members are forgotten this long after they entered that state.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// A member is failed after this much silence (and never before it is suspect).
const FAILED_AFTER: Duration = Duration::from_secs(10);
/// A member is suspect after this many of its heartbeat intervals of silence.
const SUSPECT_HEARTBEATS: u32 = 3;

/// One member, as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberRow {
    pub name: String,
    pub state: MemberState,
    pub tags: BTreeMap<String, String>,
    pub version: String,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Unix time the agent started (its clock).
    pub started_at: f64,
    pub pid: u32,
    pub heartbeat_ms: u64,
    pub watchers: Vec<WatcherBrief>,
    #[serde(skip)]
    boot_id: String,
    #[serde(skip)]
    seq: u64,
    #[serde(skip)]
    last_seen: Instant,
    #[serde(skip)]
    since: Instant,
    /// The NATS connection its last announcement named: (server id, client id).
    #[serde(skip)]
    connection: Option<(String, u64)>,
    /// Its last announcement said it is upgrading (its connection closes on purpose).
    #[serde(skip)]
    upgrading: bool,
}

/// The last stats of one node.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeRow {
    pub node: String,
    /// Unix time of the sample (the node's clock).
    pub time: f64,
    pub interval_secs: f64,
    pub cpu_count: u32,
    pub load1: f64,
    pub mem_total: u64,
    pub mem_available: u64,
    pub watchers: Vec<WatcherRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WatcherRow {
    pub name: String,
    pub state: WatcherState,
    pub numprocesses: u32,
    pub running: u32,
    pub restarts: u32,
    pub processes: Vec<ProcRow>,
}

/// One process. Sent to the page as an array, `[wid, pid, cpu, rss, age, restarts,
/// health]` (health null without checks): with a thousand processes in an update every
/// second, the field names would be a third of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub wid: u32,
    pub pid: u32,
    /// Percent of one core, to a tenth.
    pub cpu: f64,
    pub rss: u64,
    /// CPU time used since it started, in seconds (for /metrics only).
    pub cpu_seconds: f64,
    pub age: f64,
    pub restarts: u32,
    pub health: Option<ProcessHealth>,
}

impl Serialize for ProcRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let row = (
            self.wid,
            self.pid,
            self.cpu,
            self.rss,
            self.age,
            self.restarts,
            self.health,
        );
        row.serialize(s)
    }
}

/// One point of a process's chart: unix time, CPU percent, RSS in KiB.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    t: f64,
    cpu: f32,
    rss_kib: u32,
}

/// What changed since the last update: sent to every page once a second.
#[derive(Debug, Default, Serialize)]
pub struct Update {
    /// The server's unix time, for uptimes and chart windows.
    pub now: f64,
    pub members: Vec<MemberRow>,
    /// Members forgotten.
    pub gone: Vec<String>,
    pub nodes: Vec<NodeRow>,
    pub events: Vec<Event>,
}

/// Everything, for a page that just connected.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    pub now: f64,
    pub control: bool,
    pub members: Vec<&'a MemberRow>,
    pub nodes: Vec<&'a NodeRow>,
    /// "node/watcher/wid" to [[seconds before `now`, cpu, rss], ...], oldest first:
    /// one point in [`SNAPSHOT_EVERY`] (a chart 120 pixels wide shows no more) and the
    /// last one.
    pub history: BTreeMap<String, Vec<(f64, f32, u64)>>,
    pub events: &'a VecDeque<Event>,
}

/// The picture of the cluster.
#[derive(Debug, Default)]
pub struct View {
    members: BTreeMap<String, MemberRow>,
    nodes: BTreeMap<String, NodeRow>,
    history: HashMap<String, HashMap<(String, u32), VecDeque<Point>>>,
    events: VecDeque<Event>,
    dirty_members: BTreeSet<String>,
    dirty_nodes: BTreeSet<String>,
    gone: Vec<String>,
    new_events: Vec<Event>,
    /// Messages dropped because they were malformed or did not match their subject.
    pub rejected: u64,
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A finite, non-negative figure, or 0.
fn figure(v: f64) -> f64 {
    if v.is_finite() && v >= 0.0 {
        v
    } else {
        0.0
    }
}

impl View {
    pub fn new() -> View {
        View::default()
    }

    pub fn members(&self) -> impl Iterator<Item = &MemberRow> {
        self.members.values()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRow> {
        self.nodes.values()
    }

    pub fn member_state(&self, node: &str) -> Option<MemberState> {
        self.members.get(node).map(|m| m.state)
    }

    /// Takes a member from an agent's `members` reply, when the view has none of that
    /// name yet.
    pub fn seed(&mut self, m: MemberInfo, now: Instant) {
        if validate_node_name(&m.name).is_err()
            || self.members.contains_key(&m.name)
            || self.members.len() >= MAX_NODES
        {
            return;
        }
        let row = MemberRow {
            name: m.name.clone(),
            state: m.state,
            tags: m
                .tags
                .iter()
                .take(MAX_TAGS)
                .map(|(k, v)| (clip(k), clip(v)))
                .collect(),
            version: clip(&m.version),
            hostname: clip(&m.hostname),
            address: m.address.as_deref().map(clip),
            started_at: figure(m.started_at),
            pid: m.pid,
            heartbeat_ms: m.heartbeat_ms,
            watchers: m
                .watchers
                .into_iter()
                .filter(|w| validate_token(&w.name).is_ok())
                .take(MAX_WATCHERS)
                .collect(),
            boot_id: clip(&m.boot_id),
            seq: m.seq,
            last_seen: now,
            since: now,
            connection: None,
            upgrading: false,
        };
        self.dirty_members.insert(m.name.clone());
        self.members.insert(m.name, row);
    }

    /// Takes an announcement from `cluster.registry.<subject_node>`.
    pub fn announce(&mut self, subject_node: &str, a: Announcement, now: Instant) {
        if a.node != subject_node || validate_node_name(&a.node).is_err() {
            self.rejected += 1;
            return;
        }
        if let Some(m) = self.members.get(&a.node) {
            let older = if m.boot_id == a.boot_id {
                a.seq <= m.seq
            } else {
                // Another boot: only a later one replaces this one.
                !(a.started_at.is_finite() && a.started_at > m.started_at)
            };
            if older {
                return;
            }
        } else if self.members.len() >= MAX_NODES {
            self.rejected += 1;
            return;
        }
        let state = match a.kind {
            AnnounceKind::Join | AnnounceKind::Alive => MemberState::Alive,
            AnnounceKind::Leaving => MemberState::Leaving,
            AnnounceKind::Left => MemberState::Left,
        };
        let since = match self.members.get(&a.node) {
            Some(m) if m.state == state => m.since,
            _ => now,
        };
        let row = MemberRow {
            name: a.node.clone(),
            state,
            tags: a
                .tags
                .iter()
                .take(MAX_TAGS)
                .map(|(k, v)| (clip(k), clip(v)))
                .collect(),
            version: clip(&a.version),
            hostname: clip(&a.hostname),
            address: a.address.as_deref().map(clip),
            started_at: figure(a.started_at),
            pid: a.pid,
            heartbeat_ms: a.heartbeat_ms,
            watchers: a
                .watchers
                .into_iter()
                .filter(|w| validate_token(&w.name).is_ok())
                .take(MAX_WATCHERS)
                .map(|w| WatcherBrief {
                    service: clip(&w.service),
                    ..w
                })
                .collect(),
            boot_id: clip(&a.boot_id),
            seq: a.seq,
            last_seen: now,
            since,
            connection: a.server_id.as_deref().map(clip).zip(a.client_id),
            upgrading: a.upgrading_ms.is_some(),
        };
        let changed = self.members.get(&a.node).is_none_or(|m| {
            // Heartbeats that change nothing the page shows are not sent again.
            (
                m.state,
                &m.tags,
                &m.version,
                m.started_at,
                &m.watchers,
                m.pid,
            ) != (
                row.state,
                &row.tags,
                &row.version,
                row.started_at,
                &row.watchers,
                row.pid,
            )
        });
        if changed {
            self.dirty_members.insert(a.node.clone());
        }
        self.members.insert(a.node, row);
    }

    /// Takes a stats message from `cluster.<subject_node>.stats`.
    pub fn stats(&mut self, subject_node: &str, msg: StatsMessage) {
        if msg.node != subject_node
            || validate_node_name(&msg.node).is_err()
            || !msg.time.is_finite()
        {
            self.rejected += 1;
            return;
        }
        if !self.nodes.contains_key(&msg.node) && self.nodes.len() >= MAX_NODES {
            self.rejected += 1;
            return;
        }
        let node = msg.node;
        let series = self.history.entry(node.clone()).or_default();
        let mut watchers = Vec::with_capacity(msg.watchers.len().min(MAX_WATCHERS));
        for w in msg.watchers.into_iter().take(MAX_WATCHERS) {
            if validate_token(&w.name).is_err() {
                continue;
            }
            let mut processes = Vec::with_capacity(w.processes.len().min(MAX_PROCESSES));
            for p in w.processes.into_iter().take(MAX_PROCESSES) {
                let cpu = (figure(p.cpu_percent) * 10.0).round() / 10.0;
                let s = series.entry((w.name.clone(), p.wid)).or_default();
                if s.back().is_none_or(|last| last.t < msg.time) {
                    if s.len() >= MAX_POINTS {
                        s.pop_front();
                    }
                    s.push_back(Point {
                        t: msg.time,
                        cpu: cpu as f32,
                        rss_kib: u32::try_from(p.rss_bytes / 1024).unwrap_or(u32::MAX),
                    });
                }
                processes.push(ProcRow {
                    wid: p.wid,
                    pid: p.pid,
                    cpu,
                    rss: p.rss_bytes,
                    cpu_seconds: figure(p.cpu_seconds),
                    age: figure(p.age_secs).round(),
                    restarts: p.restarts,
                    health: p.health,
                });
            }
            watchers.push(WatcherRow {
                name: w.name,
                state: w.state,
                numprocesses: w.numprocesses,
                running: w.running,
                restarts: w.restarts,
                processes,
            });
        }
        // Charts of processes gone for longer than the window go.
        let oldest = msg.time - HISTORY_SECS;
        series.retain(|_, s| {
            while s.front().is_some_and(|p| p.t < oldest) {
                s.pop_front();
            }
            !s.is_empty()
        });
        let row = NodeRow {
            node: node.clone(),
            time: msg.time,
            interval_secs: figure(msg.interval_secs),
            cpu_count: msg.host.cpu_count,
            load1: figure(msg.host.load1),
            mem_total: msg.host.mem_total_bytes,
            mem_available: msg.host.mem_available_bytes,
            watchers,
        };
        self.dirty_nodes.insert(node.clone());
        self.nodes.insert(node, row);
    }

    /// Takes an event from `cluster.<subject_node>.events.<watcher>.<kind>`.
    pub fn event(&mut self, subject_node: &str, mut e: Event) {
        let watcher_ok = e.watcher == AGENT_EVENTS_TOKEN || validate_token(&e.watcher).is_ok();
        if e.node != subject_node || validate_node_name(&e.node).is_err() || !watcher_ok {
            self.rejected += 1;
            return;
        }
        e.time = figure(e.time);
        e.reason = e.reason.as_deref().map(clip);
        e.boot_id = None;
        if let Some(x) = &mut e.exit {
            x.signal = x.signal.as_deref().map(clip);
        }
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        if self.new_events.len() < MAX_EVENTS {
            self.new_events.push(e);
        }
    }

    /// Judges silent members as the agents do (suspect after three heartbeats, failed
    /// after ten seconds), forgets failed and left ones after [`FORGET_AFTER`].
    pub fn judge(&mut self, now: Instant) {
        let mut forget = vec![];
        for (name, m) in &mut self.members {
            let silent = now.saturating_duration_since(m.last_seen);
            let hb = Duration::from_millis(m.heartbeat_ms.clamp(100, 3_600_000));
            let suspect_after = hb * SUSPECT_HEARTBEATS;
            let next = match m.state {
                MemberState::Alive | MemberState::Suspect | MemberState::Leaving
                    if silent >= FAILED_AFTER.max(suspect_after) =>
                {
                    MemberState::Failed
                }
                MemberState::Alive if silent >= suspect_after => MemberState::Suspect,
                MemberState::Failed | MemberState::Left
                    if now.saturating_duration_since(m.since) >= FORGET_AFTER =>
                {
                    forget.push(name.clone());
                    continue;
                }
                s => s,
            };
            if next != m.state {
                m.state = next;
                m.since = now;
                self.dirty_members.insert(name.clone());
            }
        }
        for name in forget {
            self.members.remove(&name);
            self.nodes.remove(&name);
            self.history.remove(&name);
            self.dirty_members.remove(&name);
            self.dirty_nodes.remove(&name);
            self.gone.push(name);
        }
    }

    /// Takes a closed connection from the server's disconnect advisories: the member
    /// whose last announcement named it (server id and client id; never the name, which
    /// any client may take) is failed at once, or left if it was leaving, as the agents
    /// judge it. One upgrading stays alive (its next boot follows); failed and left
    /// ones stay as they are. A later announcement of the same boot brings it back.
    pub fn disconnect(&mut self, server_id: &str, cid: u64, now: Instant) {
        let owners = self.members.iter_mut().filter(|(_, m)| {
            m.connection
                .as_ref()
                .is_some_and(|(s, c)| s == server_id && *c == cid)
        });
        for (name, m) in owners {
            let next = match m.state {
                MemberState::Alive if m.upgrading => continue,
                MemberState::Alive | MemberState::Suspect => MemberState::Failed,
                MemberState::Leaving => MemberState::Left,
                MemberState::Failed | MemberState::Left => continue,
            };
            m.state = next;
            m.since = now;
            self.dirty_members.insert(name.clone());
        }
    }

    /// What changed since the last call, or `None` when nothing did.
    pub fn take_update(&mut self, unix_now: f64) -> Option<Update> {
        if self.dirty_members.is_empty()
            && self.dirty_nodes.is_empty()
            && self.gone.is_empty()
            && self.new_events.is_empty()
        {
            return None;
        }
        let members = std::mem::take(&mut self.dirty_members)
            .into_iter()
            .filter_map(|n| self.members.get(&n).cloned())
            .collect();
        let nodes = std::mem::take(&mut self.dirty_nodes)
            .into_iter()
            .filter_map(|n| self.nodes.get(&n).cloned())
            .collect();
        Some(Update {
            now: unix_now,
            members,
            gone: std::mem::take(&mut self.gone),
            nodes,
            events: std::mem::take(&mut self.new_events),
        })
    }

    /// Everything the page needs to start.
    pub fn snapshot(&self, unix_now: f64, control: bool) -> Snapshot<'_> {
        let mut history = BTreeMap::new();
        for (node, series) in &self.history {
            for ((watcher, wid), points) in series {
                let n = points.len();
                history.insert(
                    format!("{node}/{watcher}/{wid}"),
                    points
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| (n - 1 - i) % SNAPSHOT_EVERY == 0)
                        .map(|(_, p)| {
                            let ago = ((p.t - unix_now) * 10.0).round() / 10.0;
                            (ago, p.cpu, u64::from(p.rss_kib) * 1024)
                        })
                        .collect(),
                );
            }
        }
        Snapshot {
            now: unix_now,
            control,
            members: self.members.values().collect(),
            nodes: self.nodes.values().collect(),
            history,
            events: &self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::events::EventKind;

    use crate::web::fixtures::stats;

    fn ann(node: &str, kind: AnnounceKind, boot: &str, seq: u64, started: f64) -> Announcement {
        serde_json::from_value(serde_json::json!({
            "node": node, "kind": kind, "boot_id": boot, "seq": seq, "started_at": started,
            "time": started, "heartbeat_ms": 1000, "version": "v", "hostname": "h", "pid": 1,
            "tags": {"role": "web"}
        }))
        .unwrap()
    }

    #[test]
    fn members_follow_announcements_and_silence() {
        let t0 = Instant::now();
        let s = |d: u64| t0 + Duration::from_secs(d);
        let mut v = View::new();
        v.announce("a", ann("a", AnnounceKind::Join, "b1", 1, 10.0), t0);
        assert_eq!(v.member_state("a"), Some(MemberState::Alive));
        let u = v.take_update(0.0).unwrap();
        assert_eq!(u.members.len(), 1);
        // A heartbeat that changes nothing shown is not sent again.
        v.announce("a", ann("a", AnnounceKind::Alive, "b1", 2, 10.0), s(1));
        assert!(v.take_update(0.0).is_none());
        // Older within the boot, or an older boot: ignored.
        v.announce("a", ann("a", AnnounceKind::Left, "b1", 1, 10.0), s(1));
        v.announce("a", ann("a", AnnounceKind::Left, "b0", 9, 5.0), s(1));
        assert_eq!(v.member_state("a"), Some(MemberState::Alive));
        // Silence: suspect after 3 heartbeats, failed after 10 s, forgotten later.
        let cases = [
            (3, MemberState::Alive),
            (4, MemberState::Suspect),
            (11, MemberState::Failed),
        ];
        for (at, want) in cases {
            v.judge(s(at));
            assert_eq!(v.member_state("a"), Some(want), "at {at}s");
        }
        v.judge(s(11) + FORGET_AFTER);
        assert_eq!(v.member_state("a"), None);
        assert_eq!(v.take_update(0.0).unwrap().gone, vec!["a".to_string()]);
        // A new boot comes back.
        v.announce("a", ann("a", AnnounceKind::Join, "b2", 1, 20.0), s(700));
        assert_eq!(v.member_state("a"), Some(MemberState::Alive));
        v.announce("a", ann("a", AnnounceKind::Left, "b2", 2, 20.0), s(701));
        assert_eq!(v.member_state("a"), Some(MemberState::Left));
    }

    #[test]
    fn a_closed_connection_fails_its_member_at_once() {
        let now = Instant::now();
        let on = |node: &str, kind, seq, cid: u64| {
            let mut a = ann(node, kind, "b1", seq, 10.0);
            a.server_id = Some("S1".into());
            a.client_id = Some(cid);
            a
        };
        let mut v = View::new();
        v.announce("a", on("a", AnnounceKind::Join, 1, 7), now);
        v.announce("b", on("b", AnnounceKind::Join, 1, 8), now);
        v.announce("c", on("c", AnnounceKind::Leaving, 1, 9), now);
        let mut up = on("d", AnnounceKind::Alive, 1, 10);
        up.upgrading_ms = Some(5000);
        v.announce("d", up, now);
        // An announcement that names no connection (an older agent).
        v.announce("e", ann("e", AnnounceKind::Join, "b1", 1, 10.0), now);
        v.take_update(0.0);
        // Another server's connection 7, or an unknown one: nothing.
        v.disconnect("S2", 7, now);
        v.disconnect("S1", 99, now);
        assert!(v.take_update(0.0).is_none());
        assert_eq!(v.member_state("a"), Some(MemberState::Alive));
        for (cid, node, want) in [
            (7, "a", MemberState::Failed),
            (9, "c", MemberState::Left),
            (10, "d", MemberState::Alive),
        ] {
            v.disconnect("S1", cid, now);
            assert_eq!(v.member_state(node), Some(want), "{node}");
        }
        assert_eq!(v.member_state("b"), Some(MemberState::Alive));
        assert_eq!(v.member_state("e"), Some(MemberState::Alive));
        let u = v.take_update(0.0).unwrap();
        let names: Vec<&str> = u.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        // Failed stays failed; the same boot announcing again is alive again.
        v.disconnect("S1", 7, now);
        assert!(v.take_update(0.0).is_none());
        v.announce("a", on("a", AnnounceKind::Alive, 2, 11), now);
        assert_eq!(v.member_state("a"), Some(MemberState::Alive));
    }

    #[test]
    fn messages_that_lie_about_their_subject_are_dropped() {
        let mut v = View::new();
        let now = Instant::now();
        v.announce("b", ann("a", AnnounceKind::Join, "b1", 1, 1.0), now);
        v.announce("a.b", ann("a.b", AnnounceKind::Join, "b1", 1, 1.0), now);
        v.stats("x", stats("a", 1.0, 5, 1.0));
        let mut nan = stats("a", f64::NAN, 5, 1.0);
        nan.time = f64::NAN;
        v.stats("a", nan);
        v.event("b", Event::new("a", "web", EventKind::Exit));
        v.event("a", Event::new("a", "we.b", EventKind::Exit));
        assert_eq!(v.rejected, 6);
        assert!(v.take_update(0.0).is_none());
        let long = Event::new("a", "web", EventKind::Stop).with_reason("x".repeat(10_000));
        v.event("a", long);
        assert!(v.events.back().unwrap().reason.as_ref().unwrap().len() < 300);
    }

    #[test]
    fn charts_keep_a_bounded_window() {
        let mut v = View::new();
        for i in 0..400 {
            v.stats("a", stats("a", f64::from(i), 5, f64::from(i % 7)));
        }
        // A replayed sample adds no point.
        v.stats("a", stats("a", 399.0, 5, 1.0));
        let snap = v.snapshot(400.0, false);
        let points = &snap.history["a/web/1"];
        assert!(
            points.len() <= MAX_POINTS / SNAPSHOT_EVERY,
            "{}",
            points.len()
        );
        // Times are seconds before the snapshot; the last sample is always there.
        assert_eq!(points.last().unwrap().0, -1.0);
        assert_eq!(points[1].0 - points[0].0, SNAPSHOT_EVERY as f64);
        assert!(points[0].0 >= -1.0 - HISTORY_SECS);
        let json = serde_json::to_value(v.nodes().next().unwrap()).unwrap();
        assert_eq!(
            json["watchers"][0]["processes"][0],
            serde_json::json!([1, 5, 1.0, 4096, 2.0, 0, null])
        );
        // Negative or non-finite figures read as 0.
        v.stats("a", stats("a", 500.0, 5, -3.0));
        assert_eq!(v.nodes().next().unwrap().watchers[0].processes[0].cpu, 0.0);
        // A process gone for longer than the window loses its chart.
        v.stats("a", stats("a", 1000.0, 5, 1.0));
        let mut s = stats("a", 1001.0, 6, 1.0);
        s.watchers[0].processes[0].wid = 2;
        v.stats("a", s);
        let later = stats("a", 1000.0 + HISTORY_SECS + 10.0, 6, 1.0);
        let mut later = later;
        later.watchers[0].processes[0].wid = 2;
        v.stats("a", later);
        let snap = v.snapshot(0.0, false);
        assert!(!snap.history.contains_key("a/web/1"));
        assert!(snap.history.contains_key("a/web/2"));
    }
}
