//! Membership messages: the announcements agents publish on `cluster.registry.<node>`,
//! the member states, and the `members` request and its reply. Types and pure filter
//! helpers only; the member table itself lives in the agent.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reply::WatcherState;

/// The most members a member table holds, and so the most a `members` view lists.
pub const MAX_MEMBERS: usize = 100_000;

/// What an announcement says about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceKind {
    /// The first announcement of a boot: the agent has just started.
    Join,
    /// A heartbeat, sent every `heartbeat_ms`.
    Alive,
    /// The agent is shutting down and stopping its processes; sent until it is done.
    Leaving,
    /// The agent has stopped its processes and is about to exit. The last
    /// announcement of a boot.
    Left,
}

impl fmt::Display for AnnounceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnnounceKind::Join => "join",
            AnnounceKind::Alive => "alive",
            AnnounceKind::Leaving => "leaving",
            AnnounceKind::Left => "left",
        })
    }
}

/// A watcher in one line, as carried in announcements and member rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherBrief {
    pub name: String,
    /// The service (queue group) it answers for.
    pub service: String,
    pub state: WatcherState,
    /// The wanted process count.
    pub numprocesses: u32,
    /// How many processes run now.
    pub running: u32,
}

/// Published by an agent on `cluster.registry.<node>`: when it starts (`join`), every
/// heartbeat (`alive`), while it shuts down (`leaving`) and last (`left`).
///
/// Announcements of one node are ordered by (`boot_id`, `seq`): within a boot, a higher
/// `seq` is newer; between boots, the one with the later `started_at` is newer. Read
/// tolerantly: unknown fields are ignored, so newer agents may add some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Announcement {
    /// The sender's node name; equal to the last token of the subject.
    pub node: String,
    pub kind: AnnounceKind,
    /// A new id (a UUID) at every agent start.
    pub boot_id: String,
    /// Starts at 1 and grows by one with every announcement of this boot.
    pub seq: u64,
    /// Unix time the agent started, in seconds.
    pub started_at: f64,
    /// Unix time the announcement was sent, in seconds (the sender's clock).
    pub time: f64,
    /// The sender's heartbeat interval in milliseconds, so that receivers judge
    /// silence per member.
    pub heartbeat_ms: u64,
    /// The node's tags from its config (`[agent] tags`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The agent's version.
    pub version: String,
    pub hostname: String,
    /// The agent's pid.
    pub pid: u32,
    /// An address of the host (its primary IP), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The node's watchers.
    #[serde(default)]
    pub watchers: Vec<WatcherBrief>,
    /// The services the node answers for (queue groups on `cluster.svc.<service>.cmd`).
    #[serde(default)]
    pub services: Vec<String>,
    /// The id of the NATS server the agent is connected to (its `server_id`), so that
    /// a disconnect advisory can be matched to this member's own connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The agent's client id on that server (`client_id` of the server's INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u64>,
    /// The agent keeps the full member table and answers `members`. A keeper's
    /// announcements are also published on `cluster.registry.keepers.<node>`, the feed
    /// every agent reads to know the keepers; one that says `false` there has stepped
    /// down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keeper: bool,
    /// Set while the agent re-executes its binary (`upgrade`): its connection is about
    /// to close on purpose, and a new boot of the same node announces itself within
    /// this many milliseconds. Receivers neither fail it on the disconnect nor suspect
    /// it for its silence within that time (capped by the receiver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrading_ms: Option<u64>,
}

/// A member's state as one agent sees it (Serf's states).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Its heartbeats arrive.
    Alive,
    /// Heartbeats missed for a few intervals; maybe slow, maybe gone.
    Suspect,
    /// Silent for too long, or its NATS connection closed without a goodbye.
    Failed,
    /// Shutting down on purpose.
    Leaving,
    /// Shut down on purpose.
    Left,
}

impl MemberState {
    /// Every state, in order.
    pub const ALL: [MemberState; 5] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Failed,
        MemberState::Leaving,
        MemberState::Left,
    ];

    /// Alive or suspect: a member that is expected to answer commands.
    pub fn is_reachable(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        })
    }
}

/// One member as one agent sees it: a row of `ctl members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberInfo {
    /// The node name.
    pub name: String,
    pub state: MemberState,
    /// Unix time the member entered `state`, by the answering agent's clock.
    pub since: f64,
    /// The boot the row describes.
    pub boot_id: String,
    /// The sequence number of the last announcement taken.
    pub seq: u64,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub version: String,
    /// The agent's pid.
    pub pid: u32,
    /// Unix time the agent started (its own clock).
    pub started_at: f64,
    /// Unix time its last announcement arrived, by the answering agent's clock.
    pub last_seen: f64,
    /// Its heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    #[serde(default)]
    pub watchers: Vec<WatcherBrief>,
    #[serde(default)]
    pub services: Vec<String>,
    /// The wanted process count over all its watchers.
    pub numprocesses: u32,
    /// The running process count over all its watchers.
    pub running: u32,
}

/// A watcher's process counts, as a [`MemberRow`] carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherCount {
    pub name: String,
    /// The wanted process count.
    pub numprocesses: u32,
    /// How many processes run now.
    pub running: u32,
}

impl WatcherCount {
    /// The counts of a watcher.
    pub fn of(w: &WatcherBrief) -> WatcherCount {
        WatcherCount {
            name: w.name.clone(),
            numprocesses: w.numprocesses,
            running: w.running,
        }
    }
}

/// One member in a few fields: what the `ctl members` table shows (view `table`), or
/// only its name and state (view `names`, where every other field is absent). Read
/// tolerantly: an absent field is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberRow {
    /// The node name.
    pub name: String,
    pub state: MemberState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Unix time the agent started (its own clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// Its watchers' process counts; the member's are their sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watchers: Vec<WatcherCount>,
}

impl MemberRow {
    /// The row of `view` for a member: its name and state only for
    /// [`MembersView::Names`], the table's fields otherwise.
    pub fn of(m: &MemberInfo, view: MembersView) -> MemberRow {
        let mut row = MemberRow::named(&m.name, m.state);
        if view != MembersView::Names {
            row.hostname.clone_from(&m.hostname);
            row.address.clone_from(&m.address);
            row.tags.clone_from(&m.tags);
            row.version.clone_from(&m.version);
            row.started_at = Some(m.started_at);
            row.watchers = m.watchers.iter().map(WatcherCount::of).collect();
        }
        row
    }

    /// A row with only a name and a state (the `names` view).
    pub fn named(name: &str, state: MemberState) -> MemberRow {
        MemberRow {
            name: name.to_owned(),
            state,
            hostname: String::new(),
            address: None,
            tags: BTreeMap::new(),
            version: String::new(),
            started_at: None,
            watchers: vec![],
        }
    }

    /// The running and the wanted process counts over all its watchers (hostile
    /// counts saturate).
    pub fn processes(&self) -> (u32, u32) {
        self.watchers.iter().fold((0u32, 0u32), |(r, n), w| {
            (
                r.saturating_add(w.running),
                n.saturating_add(w.numprocesses),
            )
        })
    }
}

/// How much of each member a `members` reply carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MembersView {
    /// Every field: the reply's `members` holds [`MemberInfo`] rows.
    #[default]
    Full,
    /// The reply's `rows` holds [`MemberRow`]s with what the `ctl members` table shows.
    Table,
    /// The reply's `rows` holds [`MemberRow`]s with the name and state only: what a
    /// command sent to every member needs.
    Names,
}

impl MembersView {
    /// True for [`MembersView::Full`], the default, which a request leaves out so that
    /// agents that know no view read it.
    pub fn is_full(&self) -> bool {
        *self == MembersView::Full
    }
}

/// `members`: the answering agent's view of the cluster, sorted by name. A view too
/// large for one message comes in pages: `next` is then set, and the same request with
/// `after` set to it gives the following page. With the `full` view (the default) the
/// members are in `members`; with another view they are in `rows`, and `members` is
/// empty. An agent that knows no view refuses a request that names one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MembersData {
    pub members: Vec<MemberInfo>,
    /// The members in the requested view's fields, when the view is not `full`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<MemberRow>,
    /// More members follow: ask again with `after` set to this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One state or a list of states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusFilter {
    One(MemberState),
    Many(Vec<MemberState>),
}

impl StatusFilter {
    /// The states it lets through.
    pub fn states(&self) -> &[MemberState] {
        match self {
            StatusFilter::One(s) => std::slice::from_ref(s),
            StatusFilter::Many(v) => v,
        }
    }
}

/// The properties of `members`. Every filter is optional; the ones given must all
/// match (AND). Without any, every member the agent knows is listed, `failed` and
/// `left` ones included (until they are reaped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersRequest {
    /// Only members in this state, or in one of these states (`"alive"` or
    /// `["alive", "suspect"]`). An empty list matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusFilter>,
    /// Only members that have every one of these tags with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Only members whose name matches: an exact name, or a pattern where `*` matches
    /// any run of characters (`web-*`, `*-a`, `*`). No other character is special,
    /// and node names cannot contain `*`, so a name without `*` matches only itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only members whose name sorts after this one: the next page of a view that did
    /// not fit in one reply (the `next` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Which fields of each member the reply carries: `full` (the default), `table`
    /// or `names` (see [`MembersView`]).
    #[serde(default, skip_serializing_if = "MembersView::is_full")]
    pub view: MembersView,
}

impl MembersRequest {
    /// Whether a member with these properties passes every filter.
    pub fn matches(&self, name: &str, state: MemberState, tags: &BTreeMap<String, String>) -> bool {
        if let Some(status) = &self.status {
            if !status.states().contains(&state) {
                return false;
            }
        }
        if !self.tags.iter().all(|(k, v)| tags.get(k) == Some(v)) {
            return false;
        }
        if self.after.as_deref().is_some_and(|after| name <= after) {
            return false;
        }
        match &self.name {
            Some(pattern) => glob_match(pattern, name),
            None => true,
        }
    }
}

/// Matches `text` against `pattern`, where `*` matches any run of characters
/// (possibly empty) and every other character matches only itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one part.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No `*` at all: an exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_only() {
        let cases = [
            ("web-1", "web-1", true),
            ("web-1", "web-10", false),
            ("web-*", "web-10", true),
            ("web-*", "web-", true),
            ("web-*", "db-1", false),
            ("*-a", "web-a", true),
            ("*-a", "web-b", false),
            ("*", "anything", true),
            ("*", "", true),
            ("w*b*1", "web-1", true),
            ("w*b*1", "wb1", true),
            ("w*b*1", "web-2", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("**", "x", true),
            ("web?", "web1", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn members_request_parses_one_or_many_states_and_rejects_unknown_fields() {
        let r: MembersRequest = serde_json::from_str(r#"{"status":"alive"}"#).unwrap();
        assert_eq!(r.status.unwrap().states(), &[MemberState::Alive]);
        let r: MembersRequest =
            serde_json::from_str(r#"{"status":["alive","suspect"],"tags":{"role":"web"}}"#)
                .unwrap();
        assert_eq!(
            r.status.as_ref().unwrap().states(),
            &[MemberState::Alive, MemberState::Suspect]
        );
        assert_eq!(r.tags.get("role").map(String::as_str), Some("web"));
        assert!(serde_json::from_str::<MembersRequest>(r#"{"state":"alive"}"#).is_err());
        assert!(serde_json::from_str::<MembersRequest>(r#"{"status":"dead"}"#).is_err());
        let r: MembersRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, MembersRequest::default());
    }

    #[test]
    fn members_request_filters_combine() {
        let tags: BTreeMap<String, String> = [("role".into(), "web".into())].into();
        let none = BTreeMap::new();
        let req = |s: &str| serde_json::from_str::<MembersRequest>(s).unwrap();
        let cases = [
            ("{}", "n1", MemberState::Left, &none, true),
            (
                r#"{"status":"alive"}"#,
                "n1",
                MemberState::Alive,
                &none,
                true,
            ),
            (
                r#"{"status":"alive"}"#,
                "n1",
                MemberState::Suspect,
                &none,
                false,
            ),
            (r#"{"status":[]}"#, "n1", MemberState::Alive, &none, false),
            (
                r#"{"tags":{"role":"web"}}"#,
                "n1",
                MemberState::Alive,
                &tags,
                true,
            ),
            (
                r#"{"tags":{"role":"db"}}"#,
                "n1",
                MemberState::Alive,
                &tags,
                false,
            ),
            (
                r#"{"tags":{"role":"web"}}"#,
                "n1",
                MemberState::Alive,
                &none,
                false,
            ),
            (
                r#"{"name":"n*","status":"alive"}"#,
                "n1",
                MemberState::Alive,
                &none,
                true,
            ),
            (
                r#"{"name":"m*","status":"alive"}"#,
                "n1",
                MemberState::Alive,
                &none,
                false,
            ),
        ];
        for (json, name, state, tags, want) in cases {
            assert_eq!(
                req(json).matches(name, state, tags),
                want,
                "{json} {name} {state}"
            );
        }
    }

    #[test]
    fn announcement_reads_tolerantly() {
        let a: Announcement = serde_json::from_str(
            r#"{"node":"n1","kind":"join","boot_id":"b","seq":1,"started_at":1.0,"time":1.5,
                "heartbeat_ms":1000,"version":"0.1.0","hostname":"h","pid":7,
                "some_future_field":true}"#,
        )
        .unwrap();
        assert_eq!(a.kind, AnnounceKind::Join);
        assert!(a.watchers.is_empty() && a.tags.is_empty() && a.address.is_none());
    }
}
