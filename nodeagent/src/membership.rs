//! The Serf-like member table: announcements and the passing of time in, state changes
//! out. Pure logic: it never touches NATS, never reads a clock except in
//! [`Membership::new`], and never sleeps; the caller passes `now` to every call.
//!
//! States: alive, suspect, failed, leaving, left, then forgotten (reaped).
//!
//! Ordering. Announcements of one node are ordered by (boot, `seq`):
//! - same `boot_id`: an announcement whose `seq` is not higher than the last one taken
//!   is ignored, so a late, buffered heartbeat never revives a member that left or
//!   undoes a newer state;
//! - another `boot_id`: the boot with the later `started_at` is newer; when both
//!   started at the same instant, the greater `boot_id` (compared as strings) wins, so
//!   every observer picks the same one. A newer boot is a rejoin and replaces the old
//!   record; an older boot is ignored, except when the record is `failed` or `left`: a
//!   boot that is gone cannot speak again, so a boot that speaks then is a restart
//!   whose clock went backwards, and is taken as a rejoin rather than ignored until the
//!   old record is reaped.
//! - `left` is final for a boot: nothing more of that boot changes it.
//!
//! Timing (per member, measured from the arrival of its last announcement taken):
//! - alive becomes suspect after `suspect_after` (by default 3 of the member's own
//!   heartbeat intervals, from `heartbeat_ms` in its announcements);
//! - suspect becomes failed after `failed_after`, but never before `suspect_after`; a
//!   member silent past both deadlines when a tick comes goes through suspect to failed
//!   in that one tick;
//! - leaving becomes left after the same delay as failed: a member that said it was
//!   leaving and then went quiet is taken as gone on purpose (Serf does the same);
//! - failed and left members are forgotten `reap_after` after they entered that state.
//!
//! Fan-out targets ([`Membership::alive`]) are the alive and suspect members: a
//! suspect may only be late, and a fan-out that skipped it would silently miss a node;
//! if it does not answer, the caller names it as not answering.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::time::{Duration, Instant};

use protocol::registry::{
    AnnounceKind, Announcement, MemberInfo, MemberRow, MemberState, MembersData, MembersRequest,
    MembersView, WatcherCount,
};
use protocol::subjects::validate_node_name;

/// The shortest heartbeat interval taken from an announcement; smaller values (0
/// included) count as this, so a bad announcement cannot make a member suspect at once.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// The longest heartbeat interval taken from an announcement.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// The most members a table holds; announcements of further new names are ignored
/// (with one warning) until members are reaped.
pub const MAX_MEMBERS: usize = protocol::registry::MAX_MEMBERS;

/// The longest grace an upgrading member gets ([`Announcement::upgrading_ms`]).
pub const MAX_UPGRADE_GRACE: Duration = Duration::from_secs(60);

/// The largest announcement payload taken, in bytes; larger ones are ignored.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 64 * 1024;

/// When an alive member that went silent becomes suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspectAfter {
    /// After this many of the member's own heartbeat intervals.
    Heartbeats(u32),
    /// After this long, whatever the member's heartbeat.
    Fixed(Duration),
}

/// How long silence and departure are tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Alive to suspect (default: 3 heartbeats of the member).
    pub suspect_after: SuspectAfter,
    /// Suspect to failed, counted from the last announcement (default 10s).
    pub failed_after: Duration,
    /// Failed or left to forgotten, counted from entering that state (default 24h).
    pub reap_after: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            suspect_after: SuspectAfter::Heartbeats(3),
            failed_after: Duration::from_secs(10),
            reap_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// A state change of one member, for the agent to log or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member not known before announced itself (and is alive).
    Joined(String),
    /// A suspect or failed member announced itself again: alive again.
    Alive(String),
    /// An alive member went silent for `suspect_after`.
    Suspect(String),
    /// A member went silent for `failed_after`, or its connection closed.
    Failed(String),
    /// A member said it is shutting down.
    Leaving(String),
    /// A member said it has shut down, or went silent while leaving.
    Left(String),
    /// A new boot of a known member announced itself (the agent restarted).
    Rejoined(String),
    /// A failed or left member was forgotten.
    Reaped(String),
}

impl Change {
    /// The member's name.
    pub fn node(&self) -> &str {
        match self {
            Change::Joined(n)
            | Change::Alive(n)
            | Change::Suspect(n)
            | Change::Failed(n)
            | Change::Leaving(n)
            | Change::Left(n)
            | Change::Rejoined(n)
            | Change::Reaped(n) => n,
        }
    }

    /// A short lowercase word for the change: `joined`, `alive`, `suspect`, `failed`,
    /// `leaving`, `left`, `rejoined`, `reaped`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Joined(_) => "joined",
            Change::Alive(_) => "alive",
            Change::Suspect(_) => "suspect",
            Change::Failed(_) => "failed",
            Change::Leaving(_) => "leaving",
            Change::Left(_) => "left",
            Change::Rejoined(_) => "rejoined",
            Change::Reaped(_) => "reaped",
        }
    }

    /// The member's state after the change; `None` once it is forgotten.
    pub fn state(&self) -> Option<MemberState> {
        match self {
            Change::Joined(_) | Change::Alive(_) | Change::Rejoined(_) => Some(MemberState::Alive),
            Change::Suspect(_) => Some(MemberState::Suspect),
            Change::Failed(_) => Some(MemberState::Failed),
            Change::Leaving(_) => Some(MemberState::Leaving),
            Change::Left(_) => Some(MemberState::Left),
            Change::Reaped(_) => None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.node();
        match self {
            Change::Joined(_) => write!(f, "member {node} joined"),
            Change::Alive(_) => write!(f, "member {node} is alive again"),
            Change::Suspect(_) => write!(f, "member {node} is suspect: heartbeats missed"),
            Change::Failed(_) => write!(f, "member {node} failed"),
            Change::Leaving(_) => write!(f, "member {node} is leaving"),
            Change::Left(_) => write!(f, "member {node} left"),
            Change::Rejoined(_) => write!(f, "member {node} rejoined with a new boot"),
            Change::Reaped(_) => write!(f, "member {node} was forgotten"),
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    /// The last announcement taken.
    ann: Announcement,
    state: MemberState,
    /// When the last announcement taken arrived.
    last_seen: Instant,
    /// When the member entered `state`.
    since: Instant,
}

/// The member table of one agent.
#[derive(Debug, Clone)]
pub struct Membership {
    config: MembershipConfig,
    members: BTreeMap<String, Member>,
    /// An instant and the Unix time it stands for, to print instants as Unix times.
    anchor: (Instant, f64),
    /// The most members held ([`MAX_MEMBERS`]).
    max_members: usize,
    /// A new name was refused since the table was last below its cap.
    full: bool,
}

impl Membership {
    /// An empty table; reads the clocks once to print instants as Unix times.
    pub fn new(config: MembershipConfig) -> Self {
        Membership::with_anchor(config, Instant::now(), protocol::unix_time())
    }

    /// An empty table where `instant` stands for the Unix time `unix` (for tests).
    pub fn with_anchor(config: MembershipConfig, instant: Instant, unix: f64) -> Self {
        Membership {
            config,
            members: BTreeMap::new(),
            anchor: (instant, unix),
            max_members: MAX_MEMBERS,
            full: false,
        }
    }

    /// Caps the table at `n` members instead of [`MAX_MEMBERS`].
    pub fn with_max_members(mut self, n: usize) -> Self {
        self.max_members = n;
        self
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Takes one announcement that arrived at `now`. Returns the change of state it
    /// caused, if any; an ignored (stale, out-of-order or invalid) announcement returns
    /// `None` and changes nothing.
    pub fn observe(&mut self, ann: &Announcement, now: Instant) -> Option<Change> {
        if validate_node_name(&ann.node).is_err() {
            return None;
        }
        let node = ann.node.clone();
        if self.members.len() < self.max_members {
            self.full = false;
        }
        let Some(m) = self.members.get_mut(&ann.node) else {
            if self.members.len() >= self.max_members {
                if !std::mem::replace(&mut self.full, true) {
                    tracing::warn!(
                        "the member table is full ({} members); new members are ignored \
                         until failed or left ones are forgotten (reap_after)",
                        self.max_members
                    );
                }
                return None;
            }
            let state = state_of_new_boot(ann.kind);
            self.members.insert(node.clone(), member(ann, state, now));
            return Some(match state {
                MemberState::Leaving => Change::Leaving(node),
                MemberState::Left => Change::Left(node),
                _ => Change::Joined(node),
            });
        };
        if m.ann.boot_id != ann.boot_id {
            let newer = boot_is_newer(ann, &m.ann);
            let old_gone = matches!(m.state, MemberState::Failed | MemberState::Left);
            if !newer && !old_gone {
                return None;
            }
            let state = state_of_new_boot(ann.kind);
            *m = member(ann, state, now);
            return Some(match state {
                MemberState::Leaving => Change::Leaving(node),
                MemberState::Left => Change::Left(node),
                _ => Change::Rejoined(node),
            });
        }
        if ann.seq <= m.ann.seq || m.state == MemberState::Left {
            return None;
        }
        m.ann = ann.clone();
        m.last_seen = now;
        let (next, change) = match ann.kind {
            AnnounceKind::Join | AnnounceKind::Alive => (MemberState::Alive, Change::Alive(node)),
            AnnounceKind::Leaving => (MemberState::Leaving, Change::Leaving(node)),
            AnnounceKind::Left => (MemberState::Left, Change::Left(node)),
        };
        if next == m.state {
            return None;
        }
        m.state = next;
        m.since = now;
        Some(change)
    }

    /// Moves silent members along (alive to suspect to failed, leaving to left) and
    /// forgets failed and left members after `reap_after`. Call it about once per
    /// heartbeat, or at [`Membership::next_deadline`].
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let config = self.config;
        let mut changes = vec![];
        let mut reaped = vec![];
        for (name, m) in &mut self.members {
            let silent = now.saturating_duration_since(m.last_seen);
            let suspect_after = suspect_after(&config, &m.ann);
            let failed_after = config.failed_after.max(suspect_after);
            match m.state {
                MemberState::Alive | MemberState::Suspect => {
                    if m.state == MemberState::Alive && silent >= suspect_after {
                        m.state = MemberState::Suspect;
                        m.since = now;
                        changes.push(Change::Suspect(name.clone()));
                    }
                    if silent >= failed_after {
                        m.state = MemberState::Failed;
                        m.since = now;
                        changes.push(Change::Failed(name.clone()));
                    }
                }
                MemberState::Leaving => {
                    if silent >= failed_after {
                        m.state = MemberState::Left;
                        m.since = now;
                        changes.push(Change::Left(name.clone()));
                    }
                }
                MemberState::Failed | MemberState::Left => {
                    if now.saturating_duration_since(m.since) >= config.reap_after {
                        reaped.push(name.clone());
                    }
                }
            }
        }
        for name in reaped {
            self.members.remove(&name);
            changes.push(Change::Reaped(name));
        }
        changes
    }

    /// Marks a member failed at once, for when its NATS connection is known to have
    /// closed (a disconnect event of the server). An alive or suspect member becomes
    /// failed; a leaving member becomes left (closing the connection is how a leave
    /// ends). Unknown, failed and left members are left as they are. A later
    /// announcement of the same boot with a higher `seq` makes it alive again, so a
    /// member whose connection merely dropped and came back recovers at its next
    /// heartbeat.
    /// A member whose last announcement says it is upgrading (it re-executes its
    /// binary, so its connection closes on purpose) is left alive: its new boot follows.
    pub fn mark_failed(&mut self, node: &str, now: Instant) -> Option<Change> {
        let m = self.members.get_mut(node)?;
        if m.ann.upgrading_ms.is_some() && m.state == MemberState::Alive {
            return None;
        }
        let (state, change) = match m.state {
            MemberState::Alive | MemberState::Suspect => {
                (MemberState::Failed, Change::Failed(node.to_owned()))
            }
            MemberState::Leaving => (MemberState::Left, Change::Left(node.to_owned())),
            MemberState::Failed | MemberState::Left => return None,
        };
        m.state = state;
        m.since = now;
        Some(change)
    }

    /// The members that pass `filter`, sorted by name.
    pub fn members(&self, filter: &MembersRequest) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter(|(name, m)| filter.matches(name, m.state, &m.ann.tags))
            .map(|(_, m)| self.info(m))
            .collect()
    }

    /// The members that pass `filter`, sorted by name, as many as fit in `max_bytes`
    /// of JSON (at least one); `next` names the last one when more follow. The rows are
    /// in the fields of the filter's view: [`MemberInfo`]s in `members` for the full
    /// view, [`MemberRow`]s in `rows` otherwise.
    pub fn page(&self, filter: &MembersRequest, max_bytes: usize) -> MembersData {
        let mut page = MembersData::default();
        let mut used = 0usize;
        let from = match &filter.after {
            Some(after) => Bound::Excluded(after.clone()),
            None => Bound::Unbounded,
        };
        for (name, m) in self.members.range((from, Bound::Unbounded)) {
            if !filter.matches(name, m.state, &m.ann.tags) {
                continue;
            }
            let (info, row) = match filter.view {
                MembersView::Full => (Some(self.info(m)), None),
                MembersView::Table => (None, Some(table_row(m))),
                MembersView::Names => (None, Some(MemberRow::named(name, m.state))),
            };
            let size = match (&info, &row) {
                (Some(info), _) => json_size(info),
                (None, Some(row)) => json_size(row),
                (None, None) => 0,
            };
            let taken = page.members.len() + page.rows.len();
            if taken > 0 && used.saturating_add(size) > max_bytes {
                page.next = Some(last_name(&page));
                break;
            }
            used = used.saturating_add(size);
            page.members.extend(info);
            page.rows.extend(row);
        }
        page
    }

    /// One member, if known.
    pub fn get(&self, node: &str) -> Option<MemberInfo> {
        self.members.get(node).map(|m| self.info(m))
    }

    /// The state of one member, if known.
    pub fn state(&self, node: &str) -> Option<MemberState> {
        self.members.get(node).map(|m| m.state)
    }

    /// The fan-out targets: alive and suspect members, sorted by name.
    pub fn alive(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, m)| m.state.is_reachable())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether `node` is a fan-out target: alive or suspect.
    pub fn is_alive(&self, node: &str) -> bool {
        self.members
            .get(node)
            .is_some_and(|m| m.state.is_reachable())
    }

    /// How many members are known, forgotten ones excluded.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The earliest instant at which [`Membership::tick`] would change something,
    /// if any member is known.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.members.values().map(|m| self.deadline(m)).min()
    }

    /// The instant at which [`Membership::tick`] would change `node`, if known: one
    /// member's share of [`Membership::next_deadline`], without a pass over all.
    pub fn deadline_of(&self, node: &str) -> Option<Instant> {
        self.members.get(node).map(|m| self.deadline(m))
    }

    fn deadline(&self, m: &Member) -> Instant {
        let suspect_after = suspect_after(&self.config, &m.ann);
        let failed_after = self.config.failed_after.max(suspect_after);
        let (from, after) = match m.state {
            MemberState::Alive => (m.last_seen, suspect_after),
            MemberState::Suspect | MemberState::Leaving => (m.last_seen, failed_after),
            MemberState::Failed | MemberState::Left => (m.since, self.config.reap_after),
        };
        from.checked_add(after).unwrap_or(from + MAX_HEARTBEAT)
    }

    fn unix(&self, t: Instant) -> f64 {
        let (anchor, unix) = self.anchor;
        match t.checked_duration_since(anchor) {
            Some(d) => unix + d.as_secs_f64(),
            None => unix - anchor.duration_since(t).as_secs_f64(),
        }
    }

    fn info(&self, m: &Member) -> MemberInfo {
        let a = &m.ann;
        MemberInfo {
            name: a.node.clone(),
            state: m.state,
            since: self.unix(m.since),
            boot_id: a.boot_id.clone(),
            seq: a.seq,
            hostname: a.hostname.clone(),
            address: a.address.clone(),
            tags: a.tags.clone(),
            version: a.version.clone(),
            pid: a.pid,
            started_at: a.started_at,
            last_seen: self.unix(m.last_seen),
            heartbeat_ms: a.heartbeat_ms,
            watchers: a.watchers.clone(),
            services: a.services.clone(),
            // Hostile counts must not overflow.
            numprocesses: a
                .watchers
                .iter()
                .fold(0u32, |n, w| n.saturating_add(w.numprocesses)),
            running: a
                .watchers
                .iter()
                .fold(0u32, |n, w| n.saturating_add(w.running)),
        }
    }
}

/// A member's row in the `table` view, made from its record (not from a whole
/// [`MemberInfo`], which copies every field first).
fn table_row(m: &Member) -> MemberRow {
    let a = &m.ann;
    MemberRow {
        hostname: a.hostname.clone(),
        address: a.address.clone(),
        tags: a.tags.clone(),
        version: a.version.clone(),
        started_at: Some(a.started_at),
        watchers: a.watchers.iter().map(WatcherCount::of).collect(),
        ..MemberRow::named(&a.node, m.state)
    }
}

/// The name of the last member of a page.
fn last_name(page: &MembersData) -> String {
    let last = page.rows.last().map(|r| &r.name);
    last.or(page.members.last().map(|m| &m.name))
        .cloned()
        .unwrap_or_default()
}

/// The length of `v`'s JSON, plus one for the comma after it in a list, counted as it
/// is written (nothing is kept).
fn json_size<T: serde::Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(1);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

/// Shortens an announcement of this agent until it fits in `max` bytes of JSON, so that
/// other agents never ignore it for its size: the list of watchers first, then the
/// services, are cut in halves (a node with hundreds of watchers still shows as alive,
/// with part of its detail). Returns whether anything was cut.
pub fn fit_announcement(ann: &mut Announcement, max: usize) -> bool {
    let size = |a: &Announcement| serde_json::to_vec(a).map(|b| b.len()).unwrap_or(usize::MAX);
    let mut cut = false;
    while size(ann) > max && !(ann.watchers.is_empty() && ann.services.is_empty()) {
        if ann.watchers.is_empty() {
            ann.services.truncate(ann.services.len() / 2);
        } else {
            ann.watchers.truncate(ann.watchers.len() / 2);
        }
        cut = true;
    }
    cut
}

fn member(ann: &Announcement, state: MemberState, now: Instant) -> Member {
    Member {
        ann: ann.clone(),
        state,
        last_seen: now,
        since: now,
    }
}

fn state_of_new_boot(kind: AnnounceKind) -> MemberState {
    match kind {
        AnnounceKind::Join | AnnounceKind::Alive => MemberState::Alive,
        AnnounceKind::Leaving => MemberState::Leaving,
        AnnounceKind::Left => MemberState::Left,
    }
}

/// Whether `new` comes from a later boot than `old`: a later `started_at`, or the same
/// `started_at` and a greater `boot_id`.
fn boot_is_newer(new: &Announcement, old: &Announcement) -> bool {
    new.started_at
        .total_cmp(&old.started_at)
        .then_with(|| new.boot_id.cmp(&old.boot_id))
        .is_gt()
}

/// The member's heartbeat interval, clamped to a sane range.
fn heartbeat(ann: &Announcement) -> Duration {
    Duration::from_millis(ann.heartbeat_ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT)
}

fn suspect_after(config: &MembershipConfig, ann: &Announcement) -> Duration {
    let base = match config.suspect_after {
        SuspectAfter::Heartbeats(n) => heartbeat(ann).saturating_mul(n.max(1)),
        SuspectAfter::Fixed(d) => d,
    };
    // An upgrading member is silent while its new binary starts.
    let grace = ann.upgrading_ms.map_or(Duration::ZERO, |ms| {
        Duration::from_millis(ms).min(MAX_UPGRADE_GRACE)
    });
    base.saturating_add(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_announcement_is_cut_to_fit() {
        let mut a = ann("a", AnnounceKind::Alive, "b1", 1);
        let brief = |i: usize| WatcherBrief {
            name: format!("watcher-{i}"),
            service: format!("service-{i}"),
            state: WatcherState::Active,
            numprocesses: 1,
            running: 1,
        };
        a.watchers = (0..5000).map(brief).collect();
        a.services = (0..5000).map(|i| format!("service-{i}")).collect();
        assert!(fit_announcement(&mut a, MAX_ANNOUNCEMENT_BYTES));
        let len = serde_json::to_vec(&a).unwrap().len();
        assert!(len <= MAX_ANNOUNCEMENT_BYTES, "{len}");
        let mut small = ann("a", AnnounceKind::Alive, "b1", 1);
        small.watchers = vec![brief(1)];
        assert!(!fit_announcement(&mut small, MAX_ANNOUNCEMENT_BYTES));
        assert_eq!(small.watchers.len(), 1);
    }

    #[test]
    fn the_table_has_a_cap_and_hostile_counts_saturate() {
        let t0 = Instant::now();
        let mut t =
            Membership::with_anchor(MembershipConfig::default(), t0, 0.0).with_max_members(2);
        assert!(t
            .observe(&ann("a", AnnounceKind::Join, "b1", 1), t0)
            .is_some());
        assert!(t
            .observe(&ann("b", AnnounceKind::Join, "b1", 1), t0)
            .is_some());
        assert_eq!(t.observe(&ann("c", AnnounceKind::Join, "b1", 1), t0), None);
        assert_eq!(t.len(), 2);
        // Known members still move.
        assert!(t
            .observe(&ann("a", AnnounceKind::Leaving, "b1", 2), t0)
            .is_some());
        let mut big = ann("a", AnnounceKind::Alive, "b1", 3);
        big.watchers = vec![
            WatcherBrief {
                name: "w".into(),
                service: "w".into(),
                state: WatcherState::Active,
                numprocesses: u32::MAX,
                running: u32::MAX,
            };
            2
        ];
        big.heartbeat_ms = u64::MAX;
        t.observe(&big, t0);
        let info = t.get("a").unwrap();
        assert_eq!((info.numprocesses, info.running), (u32::MAX, u32::MAX));
        assert!(t.next_deadline().is_some());
        t.tick(t0 + Duration::from_secs(3600 * 24 * 400));
    }
    use protocol::registry::{StatusFilter, WatcherBrief};
    use protocol::reply::WatcherState;

    const HB: u64 = 1000;

    fn ann(node: &str, kind: AnnounceKind, boot: &str, seq: u64) -> Announcement {
        Announcement {
            node: node.into(),
            kind,
            boot_id: boot.into(),
            seq,
            // Boots named later sort later in time: "b2" started after "b1".
            started_at: match boot {
                "b1" => 100.0,
                "b2" => 200.0,
                "b0" => 50.0,
                _ => 100.0,
            },
            time: 0.0,
            heartbeat_ms: HB,
            tags: BTreeMap::new(),
            version: "0.1.0".into(),
            hostname: "host".into(),
            pid: 42,
            address: None,
            watchers: vec![],
            services: vec![],
            server_id: None,
            client_id: None,
            keeper: false,
            upgrading_ms: None,
        }
    }

    /// One step of a scenario: at `t` seconds, an announcement, a tick or a disconnect,
    /// with the changes and the state expected afterwards.
    enum Step {
        Ann(f64, AnnounceKind, &'static str, u64),
        Tick(f64),
        Disconnect(f64),
    }

    use AnnounceKind::{Alive as A, Join as J, Leaving as Lv, Left as Lf};
    use Step::*;

    fn run(
        name: &str,
        config: MembershipConfig,
        steps: &[(Step, &[&str], Option<MemberState>)],
    ) -> Membership {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut table = Membership::with_anchor(config, t0, 1000.0);
        for (i, (step, want_changes, want_state)) in steps.iter().enumerate() {
            let changes: Vec<Change> = match step {
                Ann(t, kind, boot, seq) => table
                    .observe(&ann("n1", *kind, boot, *seq), at(*t))
                    .into_iter()
                    .collect(),
                Tick(t) => table.tick(at(*t)),
                Disconnect(t) => table.mark_failed("n1", at(*t)).into_iter().collect(),
            };
            let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
            assert_eq!(&kinds, want_changes, "{name}: step {i} changes");
            assert!(changes.iter().all(|c| c.node() == "n1"));
            assert_eq!(table.state("n1"), *want_state, "{name}: step {i} state");
        }
        table
    }

    /// An upgrading member (its announcement carries `upgrading_ms`) is neither failed
    /// by its connection closing nor suspected for its silence within the grace; its
    /// new boot rejoins it. Without the flag, both fail it as before.
    #[test]
    fn an_upgrading_member_is_not_failed_nor_suspected_within_its_grace() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut t = Membership::with_anchor(MembershipConfig::default(), t0, 1000.0);
        t.observe(&ann("n1", J, "b1", 1), at(0.0));
        let mut upgrading = ann("n1", A, "b1", 2);
        upgrading.upgrading_ms = Some(5000);
        t.observe(&upgrading, at(0.5));
        assert_eq!(t.mark_failed("n1", at(0.6)), None);
        // 3 heartbeats and 5 s of grace.
        assert!(t.tick(at(8.4)).is_empty());
        assert_eq!(t.state("n1"), ALIVE);
        let back = t.observe(&ann("n1", J, "b2", 1), at(8.5));
        assert_eq!(back.as_ref().map(Change::kind), Some("rejoined"));
        assert_eq!(t.state("n1"), ALIVE);
        // The new boot's announcements carry no flag: a disconnect fails it again.
        assert!(t.mark_failed("n1", at(9.0)).is_some());
        // A hostile grace is capped.
        let mut t = Membership::with_anchor(MembershipConfig::default(), t0, 1000.0);
        upgrading.upgrading_ms = Some(u64::MAX);
        t.observe(&upgrading, at(0.0));
        let late = 3.0 + MAX_UPGRADE_GRACE.as_secs_f64() + 1.0;
        assert!(t.tick(at(late)).iter().any(|c| c.kind() == "suspect"));
    }

    const ALIVE: Option<MemberState> = Some(MemberState::Alive);
    const SUSPECT: Option<MemberState> = Some(MemberState::Suspect);
    const FAILED: Option<MemberState> = Some(MemberState::Failed);
    const LEAVING: Option<MemberState> = Some(MemberState::Leaving);
    const LEFT: Option<MemberState> = Some(MemberState::Left);
    const GONE: Option<MemberState> = None;

    #[test]
    fn transitions() {
        type Case = (
            &'static str,
            Vec<(Step, &'static [&'static str], Option<MemberState>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "join then heartbeats stay alive",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, A, "b1", 2), &[], ALIVE),
                    (Tick(3.9), &[], ALIVE),
                    (Ann(2.0, A, "b1", 3), &[], ALIVE),
                    (Tick(4.9), &[], ALIVE),
                ],
            ),
            (
                "first sight by heartbeat is a join",
                vec![(Ann(0.0, A, "b1", 7), &["joined"], ALIVE)],
            ),
            (
                "duplicate and older seq are ignored",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, A, "b1", 3), &[], ALIVE),
                    (Ann(1.1, Lv, "b1", 3), &[], ALIVE),
                    (Ann(1.2, Lf, "b1", 2), &[], ALIVE),
                ],
            ),
            (
                "SIGKILL-like silence: suspect after 3 heartbeats, failed after 10s",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(2.999), &[], ALIVE),
                    (Tick(3.0), &["suspect"], SUSPECT),
                    (Tick(9.999), &[], SUSPECT),
                    (Tick(10.0), &["failed"], FAILED),
                    (Tick(11.0), &[], FAILED),
                ],
            ),
            (
                "a long pause goes through suspect to failed in one tick",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(60.0), &["suspect", "failed"], FAILED),
                ],
            ),
            (
                "suspect revives with a higher seq",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(3.5), &["suspect"], SUSPECT),
                    (Ann(3.6, A, "b1", 2), &["alive"], ALIVE),
                    (Tick(6.5), &[], ALIVE),
                    (Tick(6.6), &["suspect"], SUSPECT),
                ],
            ),
            (
                "failed revives with a higher seq",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(10.0), &["suspect", "failed"], FAILED),
                    (Ann(10.5, A, "b1", 1), &[], FAILED),
                    (Ann(11.0, A, "b1", 2), &["alive"], ALIVE),
                ],
            ),
            (
                "graceful leave",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lv, "b1", 2), &["leaving"], LEAVING),
                    (Ann(2.0, Lv, "b1", 3), &[], LEAVING),
                    (Tick(11.9), &[], LEAVING),
                    (Ann(12.0, Lf, "b1", 4), &["left"], LEFT),
                    (Tick(100.0), &[], LEFT),
                ],
            ),
            (
                "late heartbeat after left is ignored",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lf, "b1", 3), &["left"], LEFT),
                    (Ann(1.1, A, "b1", 2), &[], LEFT),
                    (Ann(1.2, Lv, "b1", 2), &[], LEFT),
                    (Tick(5.0), &[], LEFT),
                ],
            ),
            (
                "left is final for a boot, even with a higher seq",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lf, "b1", 2), &["left"], LEFT),
                    (Ann(2.0, A, "b1", 3), &[], LEFT),
                ],
            ),
            (
                "left seen first keeps a late heartbeat out",
                vec![
                    (Ann(0.0, Lf, "b1", 5), &["left"], LEFT),
                    (Ann(0.1, A, "b1", 4), &[], LEFT),
                ],
            ),
            (
                "leaving then silence is left",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lv, "b1", 2), &["leaving"], LEAVING),
                    (Tick(10.9), &[], LEAVING),
                    (Tick(11.0), &["left"], LEFT),
                ],
            ),
            (
                "rejoin with a new boot id replaces the record",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, A, "b1", 9), &[], ALIVE),
                    (Ann(1.5, J, "b2", 1), &["rejoined"], ALIVE),
                    (Ann(1.6, A, "b1", 10), &[], ALIVE),
                    (Ann(2.0, A, "b2", 2), &[], ALIVE),
                ],
            ),
            (
                "rejoin after left and after failed",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lf, "b1", 2), &["left"], LEFT),
                    (Ann(2.0, J, "b2", 1), &["rejoined"], ALIVE),
                    (Tick(20.0), &["suspect", "failed"], FAILED),
                    // "b3" started before "b2", but "b2" is gone.
                    (Ann(21.0, J, "b3", 1), &["rejoined"], ALIVE),
                ],
            ),
            (
                "an older boot is ignored while the newer one lives",
                vec![
                    (Ann(0.0, J, "b2", 1), &["joined"], ALIVE),
                    (Ann(0.5, A, "b1", 50), &[], ALIVE),
                    (Ann(0.6, Lf, "b1", 51), &[], ALIVE),
                    (Tick(3.5), &["suspect"], SUSPECT),
                    (Ann(3.6, A, "b1", 52), &[], SUSPECT),
                    (Ann(3.7, Lv, "b2", 2), &["leaving"], LEAVING),
                    (Ann(3.8, A, "b1", 53), &[], LEAVING),
                ],
            ),
            (
                "an older boot is taken once the newer one is gone (clock went back)",
                vec![
                    (Ann(0.0, J, "b2", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lf, "b2", 2), &["left"], LEFT),
                    (Ann(2.0, J, "b1", 1), &["rejoined"], ALIVE),
                ],
            ),
            (
                "a new boot seen first while leaving or left",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lv, "b2", 4), &["leaving"], LEAVING),
                    (Ann(2.0, Lf, "b2", 5), &["left"], LEFT),
                ],
            ),
            (
                "disconnect fails an alive member; a heartbeat revives it",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Disconnect(0.5), &["failed"], FAILED),
                    (Disconnect(0.6), &[], FAILED),
                    (Ann(0.7, A, "b1", 1), &[], FAILED),
                    (Ann(1.0, A, "b1", 2), &["alive"], ALIVE),
                ],
            ),
            (
                "disconnect of a suspect member fails it",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(3.0), &["suspect"], SUSPECT),
                    (Disconnect(3.5), &["failed"], FAILED),
                ],
            ),
            (
                "disconnect while leaving is left; after left it changes nothing",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(1.0, Lv, "b1", 2), &["leaving"], LEAVING),
                    (Disconnect(1.5), &["left"], LEFT),
                    (Ann(1.6, Lf, "b1", 3), &[], LEFT),
                    (Disconnect(1.7), &[], LEFT),
                ],
            ),
            (
                "disconnect of an unknown member changes nothing",
                vec![(Disconnect(0.0), &[], GONE)],
            ),
            (
                "failed is reaped after reap_after",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Tick(10.0), &["suspect", "failed"], FAILED),
                    (Tick(10.0 + 86399.0), &[], FAILED),
                    (Tick(10.0 + 86400.0), &["reaped"], GONE),
                    (Tick(10.0 + 86401.0), &[], GONE),
                ],
            ),
            (
                "left is reaped after reap_after; the name may join again",
                vec![
                    (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                    (Ann(5.0, Lf, "b1", 2), &["left"], LEFT),
                    (Tick(5.0 + 86400.0), &["reaped"], GONE),
                    (Ann(5.0 + 86401.0, A, "b1", 1), &["joined"], ALIVE),
                ],
            ),
        ];
        for (name, steps) in &cases {
            run(name, MembershipConfig::default(), steps);
        }
    }

    #[test]
    fn configured_timings() {
        let fixed = MembershipConfig {
            suspect_after: SuspectAfter::Fixed(Duration::from_millis(500)),
            failed_after: Duration::from_secs(2),
            reap_after: Duration::from_secs(5),
        };
        run(
            "fixed suspect_after",
            fixed,
            &[
                (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                (Tick(0.499), &[], ALIVE),
                (Tick(0.5), &["suspect"], SUSPECT),
                (Tick(2.0), &["failed"], FAILED),
                (Tick(6.999), &[], FAILED),
                (Tick(7.0), &["reaped"], GONE),
            ],
        );
        let slow = MembershipConfig {
            suspect_after: SuspectAfter::Heartbeats(5),
            ..MembershipConfig::default()
        };
        // 5 heartbeats of 1s; failed never comes before suspect_after.
        run(
            "5 heartbeats",
            slow,
            &[
                (Ann(0.0, J, "b1", 1), &["joined"], ALIVE),
                (Tick(4.9), &[], ALIVE),
                (Tick(5.0), &["suspect"], SUSPECT),
                (Tick(10.0), &["failed"], FAILED),
            ],
        );
    }

    #[test]
    fn suspicion_follows_each_members_heartbeat() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut table = Membership::with_anchor(MembershipConfig::default(), t0, 0.0);
        let mut fast = ann("fast", J, "b1", 1);
        fast.heartbeat_ms = 200;
        let mut slow = ann("slow", J, "b1", 1);
        slow.heartbeat_ms = 5000;
        let mut zero = ann("zero", J, "b1", 1);
        zero.heartbeat_ms = 0;
        for a in [&fast, &slow, &zero] {
            table.observe(a, at(0.0));
        }
        assert_eq!(table.next_deadline(), Some(at(0.3)));
        assert_eq!(table.tick(at(0.3)), vec![Change::Suspect("zero".into())]);
        assert_eq!(table.tick(at(0.6)), vec![Change::Suspect("fast".into())]);
        // The slow member is suspect after 15s, and failed no sooner than that.
        assert_eq!(
            table.tick(at(10.0)),
            vec![Change::Failed("fast".into()), Change::Failed("zero".into())]
        );
        assert_eq!(table.tick(at(14.9)), vec![]);
        assert_eq!(
            table.tick(at(15.0)),
            vec![
                Change::Suspect("slow".into()),
                Change::Failed("slow".into())
            ]
        );
    }

    #[test]
    fn same_start_time_is_decided_by_boot_id() {
        let t0 = Instant::now();
        let mut table = Membership::with_anchor(MembershipConfig::default(), t0, 0.0);
        let a = ann("n1", J, "aaa", 1);
        let b = ann("n1", J, "bbb", 1);
        assert_eq!(a.started_at, b.started_at);
        table.observe(&a, t0);
        assert_eq!(table.observe(&b, t0), Some(Change::Rejoined("n1".into())));
        assert_eq!(table.observe(&a, t0), None);
        // Observed the other way round, the same boot wins.
        let mut other = Membership::with_anchor(MembershipConfig::default(), t0, 0.0);
        other.observe(&b, t0);
        assert_eq!(other.observe(&a, t0), None);
        assert_eq!(other.get("n1").unwrap().boot_id, "bbb");
    }

    #[test]
    fn invalid_node_names_are_ignored() {
        let t0 = Instant::now();
        let mut table = Membership::with_anchor(MembershipConfig::default(), t0, 0.0);
        for bad in ["", "a.b", "all", "a*"] {
            assert_eq!(table.observe(&ann(bad, J, "b1", 1), t0), None, "{bad:?}");
        }
        assert!(table.is_empty());
    }

    #[test]
    fn members_are_sorted_filtered_and_reported() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut table = Membership::with_anchor(MembershipConfig::default(), t0, 1000.0);
        let mut web = ann("web-2", J, "b1", 1);
        web.tags.insert("role".into(), "web".into());
        web.address = Some("10.0.0.2".into());
        web.watchers = vec![
            WatcherBrief {
                name: "api".into(),
                service: "api".into(),
                state: WatcherState::Active,
                numprocesses: 3,
                running: 2,
            },
            WatcherBrief {
                name: "cron".into(),
                service: "cron".into(),
                state: WatcherState::Stopped,
                numprocesses: 1,
                running: 0,
            },
        ];
        let mut web1 = web.clone();
        web1.node = "web-1".into();
        table.observe(&web, at(0.0));
        table.observe(&web1, at(0.0));
        table.observe(&ann("db-1", J, "b1", 1), at(0.0));
        table.observe(&ann("db-2", J, "b1", 1), at(0.0));
        table.observe(&ann("db-2", Lf, "b1", 2), at(1.0));
        let mut web1_beat = web1.clone();
        (web1_beat.kind, web1_beat.seq) = (A, 2);
        table.observe(&web1_beat, at(2.5));
        table.tick(at(3.2));

        let names = |filter: &MembersRequest| -> Vec<String> {
            table.members(filter).into_iter().map(|m| m.name).collect()
        };
        assert_eq!(
            names(&MembersRequest::default()),
            ["db-1", "db-2", "web-1", "web-2"]
        );
        let mut by_tag = MembersRequest::default();
        by_tag.tags.insert("role".into(), "web".into());
        assert_eq!(names(&by_tag), ["web-1", "web-2"]);
        let by_state = MembersRequest {
            status: Some(StatusFilter::Many(vec![
                MemberState::Left,
                MemberState::Suspect,
            ])),
            ..Default::default()
        };
        assert_eq!(names(&by_state), ["db-1", "db-2", "web-2"]);
        let by_name = MembersRequest {
            name: Some("web-*".into()),
            status: Some(StatusFilter::One(MemberState::Alive)),
            ..Default::default()
        };
        assert_eq!(names(&by_name), ["web-1"]);

        // Pages: as many rows as fit, then `next`; `after` gives the following page.
        let row = serde_json::to_vec(&table.get("db-1").unwrap())
            .unwrap()
            .len();
        let mut filter = MembersRequest::default();
        let mut pages = vec![];
        loop {
            let page = table.page(&filter, row + 1);
            pages.push(
                page.members
                    .iter()
                    .map(|m| m.name.clone())
                    .collect::<Vec<_>>(),
            );
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, [["db-1"], ["db-2"], ["web-1"], ["web-2"]]);
        // A row larger than the page still comes, alone.
        let page = table.page(&MembersRequest::default(), 1);
        assert_eq!(
            (page.members.len(), page.next.as_deref()),
            (1, Some("db-1"))
        );
        let all = table.page(&MembersRequest::default(), usize::MAX);
        assert_eq!((all.members.len(), all.next), (4, None));
        // Another view: rows of its fields instead of members, paged by their own size.
        for view in [MembersView::Table, MembersView::Names] {
            let full = table.get("db-1").unwrap();
            let want = MemberRow::of(&full, view);
            let row = serde_json::to_vec(&want).unwrap().len();
            let mut filter = MembersRequest {
                view,
                ..Default::default()
            };
            let mut pages = vec![];
            loop {
                let page = table.page(&filter, row + 1);
                assert!(page.members.is_empty(), "{view:?}");
                pages.push(page.rows.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
                if pages.len() == 1 {
                    assert_eq!(page.rows[0], want, "{view:?}");
                }
                match page.next {
                    Some(next) => filter.after = Some(next),
                    None => break,
                }
            }
            assert_eq!(
                pages,
                [["db-1"], ["db-2"], ["web-1"], ["web-2"]],
                "{view:?}"
            );
            filter.after = None;
            let all = table.page(&filter, usize::MAX);
            assert_eq!((all.rows.len(), all.next), (4, None), "{view:?}");
        }
        let w2 = table.page(
            &MembersRequest {
                name: Some("web-2".into()),
                view: MembersView::Table,
                ..Default::default()
            },
            usize::MAX,
        );
        let w2 = &w2.rows[0];
        assert_eq!(
            w2,
            &MemberRow::of(&table.get("web-2").unwrap(), MembersView::Table)
        );
        assert_eq!(w2.processes(), (2, 4));
        assert_eq!(w2.address.as_deref(), Some("10.0.0.2"));
        let names = table.page(
            &MembersRequest {
                view: MembersView::Names,
                ..Default::default()
            },
            usize::MAX,
        );
        let json = serde_json::to_value(&names.rows[3]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "web-2", "state": "suspect"})
        );

        assert_eq!(table.alive(), ["db-1", "web-1", "web-2"]);
        assert!(table.is_alive("db-1") && table.is_alive("web-1"));
        assert!(!table.is_alive("db-2") && !table.is_alive("nope"));

        let w2 = table.get("web-2").unwrap();
        assert_eq!(w2.state, MemberState::Suspect);
        assert_eq!(w2.numprocesses, 4);
        assert_eq!(w2.running, 2);
        assert_eq!(w2.address.as_deref(), Some("10.0.0.2"));
        assert_eq!(w2.last_seen, 1000.0);
        assert!((w2.since - 1003.2).abs() < 1e-6);
        let w1 = table.get("web-1").unwrap();
        assert_eq!((w1.seq, w1.last_seen), (2, 1002.5));
        // The row round-trips through JSON.
        let json = serde_json::to_string(&w1).unwrap();
        assert_eq!(serde_json::from_str::<MemberInfo>(&json).unwrap(), w1);
    }
}
