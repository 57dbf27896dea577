//! Replies: the envelope every reply shares, the error numbers, and the data each
//! command returns.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::options::WatcherOptions;

/// Error numbers carried in `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Not JSON, not an object, missing or unknown top-level fields, too large.
    BadMessage = 1,
    /// The command's properties have the wrong names, types or values.
    BadOption = 2,
    /// No such command.
    UnknownCommand = 3,
    /// No such watcher.
    UnknownWatcher = 4,
    /// Not allowed: by the agent's config (remote exec), or on the subject it came on
    /// (a command that disagrees with its per-command subject, anything but `members`
    /// on `cluster.members`, a watcher of another service on `cluster.svc.<S>.cmd`).
    Forbidden = 5,
    /// A watcher with that name already exists.
    AlreadyExists = 6,
    /// The command was valid but could not be carried out.
    CommandFailed = 7,
    /// The agent is shutting down.
    ShuttingDown = 8,
    /// The agent has too many requests in flight; try again shortly.
    Busy = 9,
    /// A watcher's `before_start` or `before_stop` hook failed (exited non-zero, could
    /// not start, or timed out), so the command was not carried out.
    HookFailed = 10,
}

impl Errno {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// `ok` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplyStatus {
    Ok,
    Error,
}

/// A reply: the envelope every reply shares, and beside its fields (flattened) the
/// command's own fields `D`.
///
/// What the agent sends and ctl reads is a [`Reply`]: its data is the [`ReplyData`] of
/// the command's [`ReplyKind`] when it succeeded, none when it failed. The agent
/// serializes it straight to bytes; ctl reads the bytes back with [`ReplyKind::decode`].
/// `Reply<Map<String, Value>>` is any reply, as a client that knows no types reads it
/// (and as `reply.schema.json` describes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "Any reply, as read by a client: the envelope plus the command's fields.")]
pub struct Reply<D = Option<ReplyData>> {
    /// The request's id, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The node that answered.
    pub node: String,
    pub status: ReplyStatus,
    /// Unix time of the reply, in seconds.
    pub time: f64,
    /// What went wrong (error replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The error number (error replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<u32>,
    /// The command's own fields.
    #[serde(flatten)]
    pub data: D,
}

impl<D> Reply<Option<D>> {
    /// A successful reply carrying `data`.
    pub fn ok(id: Option<String>, node: &str, time: f64, data: impl Into<D>) -> Self {
        Reply {
            id,
            node: node.to_owned(),
            status: ReplyStatus::Ok,
            time,
            reason: None,
            errno: None,
            data: Some(data.into()),
        }
    }

    /// An error reply: no data, the error number and what went wrong.
    pub fn error(
        id: Option<String>,
        node: &str,
        time: f64,
        errno: Errno,
        reason: impl Into<String>,
    ) -> Self {
        Reply {
            id,
            node: node.to_owned(),
            status: ReplyStatus::Error,
            time,
            reason: Some(reason.into()),
            errno: Some(errno.code()),
            data: None,
        }
    }
}

impl<D> Reply<D> {
    pub fn is_ok(&self) -> bool {
        self.status == ReplyStatus::Ok
    }
}

/// The shape of a successful reply carrying `T`; used for the schemas.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OkReply<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub node: String,
    /// Always "ok".
    pub status: OkStatus,
    pub time: f64,
    #[serde(flatten)]
    pub data: T,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum OkStatus {
    #[serde(rename = "ok")]
    Ok,
}

/// The shape of an error reply.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub node: String,
    /// Always "error".
    pub status: ErrorStatus,
    pub time: f64,
    /// What went wrong, and what to do about it.
    pub reason: String,
    /// 1 bad message, 2 bad option, 3 unknown command, 4 unknown watcher, 5 forbidden,
    /// 6 already exists, 7 command failed, 8 shutting down, 9 busy.
    pub errno: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum ErrorStatus {
    #[serde(rename = "error")]
    Error,
}

/// A reply with no fields of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NoData {}

/// The state of a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatcherState {
    /// Meant to run; its processes are up or being started again.
    Active,
    /// Its processes are being stopped.
    Stopping,
    /// Not running.
    Stopped,
    /// Gave up after `max_retry` failed starts in a row; `start` tries again.
    Fatal,
}

impl std::fmt::Display for WatcherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WatcherState::Active => "active",
            WatcherState::Stopping => "stopping",
            WatcherState::Stopped => "stopped",
            WatcherState::Fatal => "fatal",
        })
    }
}

/// The state of one process slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Running, but not yet up: not yet for `min_uptime`, or its `ready` check has not
    /// passed yet.
    Starting,
    /// Up: running past `min_uptime`, and ready where it has a `ready` check.
    Running,
    /// Asked to stop; waiting for it to exit.
    Stopping,
    /// Exited after a failed start; waiting out the restart delay.
    Backoff,
    /// Exited and not restarted (restart policy).
    Exited,
    /// Failed `max_retry` starts in a row.
    Fatal,
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Stopping => "stopping",
            ProcessState::Backoff => "backoff",
            ProcessState::Exited => "exited",
            ProcessState::Fatal => "fatal",
        })
    }
}

/// How a running process is doing by its checks: `starting` until it is ready (its
/// `ready` check passed, or no check, and it has run `min_uptime`), then `ready`;
/// `unhealthy` while its `live` probes fail, or once a check failed and it is being
/// restarted for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProcessHealth {
    Starting,
    Ready,
    Unhealthy,
}

impl std::fmt::Display for ProcessHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProcessHealth::Starting => "starting",
            ProcessHealth::Ready => "ready",
            ProcessHealth::Unhealthy => "unhealthy",
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExitStatus {
    /// The exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal's name, when a signal killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by {s}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// One process slot of a watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessInfo {
    /// The instance number, 1..=numprocesses (`$(wid)`).
    pub wid: u32,
    /// The pid, while a process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub state: ProcessState,
    /// Unix time the current process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// How many times this slot was started again after an exit.
    pub restarts: u32,
    /// How the previous process of this slot ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitStatus>,
    /// How the current process is doing by its checks, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProcessHealth>,
    /// Why its last check failed, while it is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A watcher at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherSummary {
    pub name: String,
    pub state: WatcherState,
    /// The wanted process count.
    pub numprocesses: u32,
    /// How many processes run now.
    pub running: u32,
    /// How many of them are ready (see `ProcessHealth`).
    #[serde(default)]
    pub ready: u32,
    /// Restarts of all its slots.
    pub restarts: u32,
    /// The service it answers for.
    pub service: String,
    /// Why it is fatal, or what it waits for (a dependency to be up, its dependents to
    /// stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `status`: the state of each watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusData {
    /// Watcher name to state, as in Circus.
    pub statuses: BTreeMap<String, WatcherState>,
    /// More about each watcher.
    pub watchers: Vec<WatcherSummary>,
}

/// `list`: the watchers' names, or one watcher's processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListData {
    /// Every watcher's name (without `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchers: Option<Vec<String>>,
    /// The running pids (with `name`), as in Circus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// Every slot of the watcher (with `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessInfo>>,
}

/// `incr`, `decr`, `numprocesses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NumprocessesData {
    pub numprocesses: u32,
}

/// `numwatchers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NumwatchersData {
    pub numwatchers: u32,
}

/// `start`, `stop`, `restart`, `reload`, `rm`, `add`, `set`, `signal`: what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionData {
    /// The watchers acted on, with their state afterwards.
    pub statuses: BTreeMap<String, WatcherState>,
    /// The pids signalled (`signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
}

/// `options` and `get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OptionsData {
    pub options: WatcherOptions,
}

/// `reloadconfig`: the plan between the watchers that run and the config file, as
/// applied, or (`dry_run`) as it would be applied, with nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanData {
    /// True when the plan was only computed (`reloadconfig --dry-run`): nothing changed.
    #[serde(default)]
    pub dry_run: bool,
    /// Watchers the file adds (they start if `autostart`).
    pub added: Vec<String>,
    /// Watchers the file no longer has (stopped, then removed).
    pub removed: Vec<String>,
    /// Watchers whose options changed, other than `numprocesses` alone.
    pub changed: Vec<String>,
    /// Watchers whose `numprocesses` alone changed (resized, nothing restarted).
    #[serde(default)]
    pub scaled: Vec<String>,
    /// Each watcher of the plan, with the keys that change.
    #[serde(default)]
    pub watchers: Vec<WatcherPlan>,
    /// `[socket.NAME]` sections added, removed or changed.
    #[serde(default)]
    pub sockets: Vec<SocketPlan>,
    /// Watchers that differ from the file because of runtime changes (`set`, `incr`,
    /// `add`, `rm`...) while their entry in the file has not changed since it was last
    /// loaded: they keep their runtime state.
    #[serde(default)]
    pub kept: Vec<String>,
}

/// What a plan does to a watcher or a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlanAction {
    Added,
    Removed,
    Changed,
    Scaled,
}

impl std::fmt::Display for PlanAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlanAction::Added => "added",
            PlanAction::Removed => "removed",
            PlanAction::Changed => "changed",
            PlanAction::Scaled => "scaled",
        })
    }
}

/// One key whose value changes; an absent value is the key unset (its default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyChange {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// One watcher of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherPlan {
    pub name: String,
    pub action: PlanAction,
    /// The keys that change (changed and scaled watchers).
    #[serde(default)]
    pub changes: Vec<KeyChange>,
    /// Its processes are restarted as `restart --rolling` does (its max_surge and
    /// max_unavailable) to take the change (what runs, its environment or its output
    /// changed).
    #[serde(default)]
    pub restart: bool,
}

/// One `[socket.NAME]` section of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SocketPlan {
    pub name: String,
    pub action: PlanAction,
    /// The keys that change (changed sockets).
    #[serde(default)]
    pub changes: Vec<KeyChange>,
}

/// `dstats`: the agent's own process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DstatsData {
    pub pid: u32,
    /// CPU use since the last `dstats` (or since start), percent of one core.
    pub cpu_percent: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Seconds since the agent started.
    pub uptime_secs: f64,
    pub threads: u64,
    /// Processes the agent supervises now.
    pub children: u32,
    pub version: String,
}

/// `ping`: who answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PingData {
    pub version: String,
    /// A new id at every agent start.
    pub boot_id: String,
    pub pid: u32,
    pub hostname: String,
    pub tags: BTreeMap<String, String>,
    pub uptime_secs: f64,
}

/// `upgrade`: the agent is about to execute its binary again, in the same pid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpgradeData {
    /// The boot that answers; the upgraded agent announces a new one.
    pub was_boot_id: String,
    /// The version that answers.
    pub was_version: String,
    /// The binary executed: the path the agent was started from.
    pub path: String,
    /// The processes handed over to the new binary.
    pub processes: u32,
}

/// One listening socket of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SocketInfo {
    /// Its name, `[socket.NAME]` in the node's config.
    pub name: String,
    /// "tcp" or "unix".
    pub kind: String,
    /// Where it listens: `127.0.0.1:8080` (the port actually bound, also when the
    /// config says 0), `[::1]:8080`, or the unix socket's path.
    pub address: String,
    /// Its fd in the agent (processes get it at 3, 4, ... in the order of their
    /// watcher's `sockets`).
    pub fd: i32,
    /// The watchers that list it in `sockets`.
    pub watchers: Vec<String>,
}

/// `listsockets`: the sockets the agent has bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SocketsData {
    pub sockets: Vec<SocketInfo>,
}

/// The type of data a command's successful reply carries; [`Command::reply_kind`]
/// says which one each command gets.
///
/// [`Command::reply_kind`]: crate::command::Command::reply_kind
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// [`StatusData`].
    Status,
    /// [`ListData`].
    List,
    /// [`ActionData`].
    Action,
    /// [`NumprocessesData`].
    Numprocesses,
    /// [`NumwatchersData`].
    Numwatchers,
    /// [`OptionsData`].
    Options,
    /// [`PlanData`].
    Plan,
    /// [`DstatsData`].
    Dstats,
    /// [`PingData`].
    Ping,
    /// [`crate::stats::StatsData`].
    Stats,
    /// [`crate::registry::MembersData`].
    Members,
    /// [`crate::logs::LogsData`].
    Logs,
    /// [`SocketsData`].
    Sockets,
    /// [`UpgradeData`].
    Upgrade,
    /// [`NoData`].
    Empty,
}

/// The data of a successful reply, typed: one variant per [`ReplyKind`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ReplyData {
    Status(StatusData),
    List(ListData),
    Action(ActionData),
    Numprocesses(NumprocessesData),
    Numwatchers(NumwatchersData),
    Options(Box<OptionsData>),
    Plan(PlanData),
    Dstats(DstatsData),
    Ping(PingData),
    Stats(crate::stats::StatsData),
    Members(crate::registry::MembersData),
    Logs(crate::logs::LogsData),
    Sockets(SocketsData),
    Upgrade(UpgradeData),
    Empty(NoData),
}

impl ReplyData {
    /// Which kind of data this is.
    pub fn kind(&self) -> ReplyKind {
        match self {
            ReplyData::Status(_) => ReplyKind::Status,
            ReplyData::List(_) => ReplyKind::List,
            ReplyData::Action(_) => ReplyKind::Action,
            ReplyData::Numprocesses(_) => ReplyKind::Numprocesses,
            ReplyData::Numwatchers(_) => ReplyKind::Numwatchers,
            ReplyData::Options(_) => ReplyKind::Options,
            ReplyData::Plan(_) => ReplyKind::Plan,
            ReplyData::Dstats(_) => ReplyKind::Dstats,
            ReplyData::Ping(_) => ReplyKind::Ping,
            ReplyData::Stats(_) => ReplyKind::Stats,
            ReplyData::Members(_) => ReplyKind::Members,
            ReplyData::Logs(_) => ReplyKind::Logs,
            ReplyData::Sockets(_) => ReplyKind::Sockets,
            ReplyData::Upgrade(_) => ReplyKind::Upgrade,
            ReplyData::Empty(_) => ReplyKind::Empty,
        }
    }
}

impl ReplyKind {
    /// Reads a reply to a command of this kind from the bytes it came as: the envelope
    /// and, when it succeeded, its fields as this kind's data (an error reply carries
    /// none). A successful reply whose fields are not this kind's data is an error.
    pub fn decode(self, bytes: &[u8]) -> Result<Reply, serde_json::Error> {
        match self {
            ReplyKind::Status => decode_as::<StatusData>(bytes),
            ReplyKind::List => decode_as::<ListData>(bytes),
            ReplyKind::Action => decode_as::<ActionData>(bytes),
            ReplyKind::Numprocesses => decode_as::<NumprocessesData>(bytes),
            ReplyKind::Numwatchers => decode_as::<NumwatchersData>(bytes),
            ReplyKind::Options => decode_as::<OptionsData>(bytes),
            ReplyKind::Plan => decode_as::<PlanData>(bytes),
            ReplyKind::Dstats => decode_as::<DstatsData>(bytes),
            ReplyKind::Ping => decode_direct::<PingData>(bytes),
            ReplyKind::Stats => decode_as::<crate::stats::StatsData>(bytes),
            ReplyKind::Members => decode_direct::<crate::registry::MembersData>(bytes),
            ReplyKind::Logs => decode_as::<crate::logs::LogsData>(bytes),
            ReplyKind::Sockets => decode_as::<SocketsData>(bytes),
            ReplyKind::Upgrade => decode_as::<UpgradeData>(bytes),
            ReplyKind::Empty => decode_as::<NoData>(bytes),
        }
    }
}

/// Reads a reply whose data, when it succeeded, is a `T`.
fn decode_as<T: KindData>(bytes: &[u8]) -> Result<Reply, serde_json::Error> {
    let r: Reply<Option<T>> = serde_json::from_slice(bytes)?;
    let data = match (r.status, r.data) {
        (ReplyStatus::Ok, Some(d)) => Some(d.into()),
        // Flattened data that does not read is `None`: read it alone, for the error.
        (ReplyStatus::Ok, None) => Some(serde_json::from_slice::<T>(bytes)?.into()),
        (ReplyStatus::Error, _) => None,
    };
    Ok(Reply {
        id: r.id,
        node: r.node,
        status: r.status,
        time: r.time,
        reason: r.reason,
        errno: r.errno,
        data,
    })
}

/// The envelope of a reply alone; the other fields are skipped unread.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<String>,
    node: String,
    status: ReplyStatus,
    time: f64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    errno: Option<u32>,
}

/// Reads a reply like [`decode_as`], for data `T` none of whose fields is named like a
/// field of the envelope: the envelope, then the data, each straight from the bytes.
/// `flatten` would first copy every field beside the envelope into a map of its own,
/// which costs more than the reading itself for the largest replies (`members` pages)
/// and the most numerous (`ping` from every member).
fn decode_direct<T: KindData>(bytes: &[u8]) -> Result<Reply, serde_json::Error> {
    let e: Envelope = serde_json::from_slice(bytes)?;
    let data = match e.status {
        ReplyStatus::Ok => Some(serde_json::from_slice::<T>(bytes)?.into()),
        ReplyStatus::Error => None,
    };
    Ok(Reply {
        id: e.id,
        node: e.node,
        status: e.status,
        time: e.time,
        reason: e.reason,
        errno: e.errno,
        data,
    })
}

/// A type of reply data: what a [`ReplyData`] of its kind holds.
pub trait KindData: Into<ReplyData> + serde::de::DeserializeOwned {
    /// The data, when `data` is of this kind.
    fn of(data: &ReplyData) -> Option<&Self>;
}

/// Each data type is its kind of [`ReplyData`].
macro_rules! kind_data {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for ReplyData {
            fn from(d: $t) -> ReplyData {
                ReplyData::$v(d.into())
            }
        }

        impl KindData for $t {
            fn of(data: &ReplyData) -> Option<&Self> {
                if let ReplyData::$v(d) = data {
                    let d: &Self = d;
                    Some(d)
                } else {
                    None
                }
            }
        })*
    };
}

kind_data!(
    StatusData => Status,
    ListData => List,
    ActionData => Action,
    NumprocessesData => Numprocesses,
    NumwatchersData => Numwatchers,
    OptionsData => Options,
    PlanData => Plan,
    DstatsData => Dstats,
    PingData => Ping,
    crate::stats::StatsData => Stats,
    crate::registry::MembersData => Members,
    crate::logs::LogsData => Logs,
    SocketsData => Sockets,
    UpgradeData => Upgrade,
    NoData => Empty,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> StatusData {
        StatusData {
            statuses: [("web".to_owned(), WatcherState::Active)].into(),
            watchers: vec![],
        }
    }

    /// A typed reply goes to bytes and back as the same value, its data flattened
    /// beside the envelope on the wire.
    #[test]
    fn a_typed_reply_reads_back_by_its_kind() {
        let sent: Reply = Reply::ok(Some("7".into()), "n1", 2.5, status());
        let bytes = serde_json::to_vec(&sent).unwrap();
        let wire: Value = serde_json::from_slice(&bytes).unwrap();
        let mut keys: Vec<&str> = wire
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["id", "node", "status", "statuses", "time", "watchers"]
        );
        assert_eq!(ReplyKind::Status.decode(&bytes).unwrap(), sent);

        let empty: Reply = Reply::ok(None, "n1", 1.0, NoData {});
        let bytes = serde_json::to_vec(&empty).unwrap();
        assert_eq!(bytes, br#"{"node":"n1","status":"ok","time":1.0}"#);
        assert_eq!(ReplyKind::Empty.decode(&bytes).unwrap(), empty);
    }

    /// An error reply carries no data, whatever its command's kind; a successful reply
    /// whose fields are not its kind's data does not read, and says what is missing.
    #[test]
    fn errors_carry_no_data_and_wrong_data_does_not_read() {
        let err: Reply = Reply::error(None, "n1", 1.0, Errno::UnknownWatcher, "no such");
        let bytes = serde_json::to_vec(&err).unwrap();
        for kind in [ReplyKind::Status, ReplyKind::List, ReplyKind::Empty] {
            assert_eq!(kind.decode(&bytes).unwrap(), err, "{kind:?}");
        }
        let action: Reply = Reply::ok(None, "n1", 1.0, NumwatchersData { numwatchers: 2 });
        let bytes = serde_json::to_vec(&action).unwrap();
        let e = ReplyKind::Status.decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("missing field `statuses`"), "{e}");
        assert!(ReplyKind::Numwatchers.decode(b"not json").is_err());
    }

    /// The kinds read without `flatten` read what `flatten` reads: the same replies,
    /// the same errors, and fields of newer agents skipped.
    #[test]
    fn direct_reading_reads_as_flatten_does() {
        use crate::registry::{MemberRow, MemberState, MembersData};
        let ping = PingData {
            version: "1".into(),
            boot_id: "b".into(),
            pid: 7,
            hostname: "h".into(),
            tags: [("k".to_owned(), "v".to_owned())].into(),
            uptime_secs: 1.5,
        };
        let members = MembersData {
            members: vec![],
            rows: vec![MemberRow::named("n2", MemberState::Alive)],
            next: Some("n2".into()),
        };
        let err: Reply = Reply::error(Some("1".into()), "n1", 1.0, Errno::BadOption, "no");
        let cases: Vec<(ReplyKind, Reply)> = vec![
            (
                ReplyKind::Ping,
                Reply::ok(Some("1".into()), "n1", 2.0, ping),
            ),
            (ReplyKind::Members, Reply::ok(None, "n1", 2.0, members)),
            (ReplyKind::Ping, err.clone()),
            (ReplyKind::Members, err),
        ];
        for (kind, sent) in cases {
            let bytes = serde_json::to_vec(&sent).unwrap();
            assert_eq!(kind.decode(&bytes).unwrap(), sent, "{kind:?}");
            assert_eq!(decode_as_kind(kind, &bytes), sent, "{kind:?}");
            let mut newer: Value = serde_json::from_slice(&bytes).unwrap();
            newer["some_future_field"] = Value::from(1);
            let newer = serde_json::to_vec(&newer).unwrap();
            assert_eq!(kind.decode(&newer).unwrap(), sent, "{kind:?}");
        }
        let wrong = br#"{"node":"n1","status":"ok","time":1.0,"members":3}"#;
        assert!(ReplyKind::Members.decode(wrong).is_err());
        let short = br#"{"node":"n1","status":"ok","time":1.0,"version":"1"}"#;
        let e = ReplyKind::Ping.decode(short).unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
        assert!(ReplyKind::Ping.decode(br#"{"status":"ok"}"#).is_err());
    }

    fn decode_as_kind(kind: ReplyKind, bytes: &[u8]) -> Reply {
        match kind {
            ReplyKind::Ping => decode_as::<PingData>(bytes).unwrap(),
            _ => decode_as::<crate::registry::MembersData>(bytes).unwrap(),
        }
    }
}
