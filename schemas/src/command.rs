//! Requests sent on `cluster.<node>.cmd(.<token>)`, `cluster.all.cmd(.<token>)` and
//! `cluster.svc.<s>.cmd(.<token>)`, each command's class (read or write) and subject
//! token, which commands each kind of subject accepts, and the strict parser that
//! turns bytes into a typed [`Request`] or an error reply.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::options::WatcherOptions;
use crate::reply::{Errno, ReplyKind};
use crate::subjects::CmdTarget;

/// The largest request the agent reads; larger ones get an error reply.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// One request: `{"id": "...", "command": "incr", "properties": {"name": "dummy"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// Echoed in the reply when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request { id: None, command }
    }
}

/// Every command with its properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", content = "properties", rename_all = "lowercase")]
pub enum Command {
    /// The state of one watcher or of all.
    Status(MaybeName),
    /// The watchers' names, or one watcher's processes.
    List(MaybeName),
    /// Start one watcher or all.
    Start(StartStop),
    /// Stop one watcher or all; waits until the processes are gone unless `waiting` is false.
    Stop(StartStop),
    /// Restart one watcher or all (all at once, or a few processes at a time with
    /// `rolling`).
    Restart(Restart),
    /// Same as restart, Circus's name for it.
    Reload(Restart),
    /// Add processes to a watcher.
    Incr(Resize),
    /// Remove processes from a watcher.
    Decr(Resize),
    /// Read a watcher's process count, or set it with `nb`.
    Numprocesses(Numprocesses),
    /// How many watchers the agent runs.
    Numwatchers(Empty),
    /// Send a signal to a watcher's processes (process groups), or to one pid.
    Signal(SignalProps),
    /// All options of a watcher.
    Options(Name),
    /// Some options of a watcher.
    Get(GetProps),
    /// Change options of a watcher.
    Set(SetProps),
    /// Add a watcher (needs `allow_remote_exec`).
    Add(Box<AddProps>),
    /// Stop and remove a watcher.
    Rm(RmProps),
    /// Read the config file again and apply what changed; with `dry_run`, only say what
    /// would change.
    Reloadconfig(ReloadconfigProps),
    /// The agent's own pid, CPU, memory and uptime.
    Dstats(Empty),
    /// Stop every process and end the agent.
    Quit(Empty),
    /// Who is there: name, version, boot id, tags.
    Ping(Empty),
    /// One snapshot of per-process statistics.
    Stats(MaybeName),
    /// The cluster's members as this agent sees them (also on `cluster.members`).
    Members(crate::registry::MembersRequest),
    /// The last lines a watcher's processes printed.
    Logs(crate::logs::LogsProps),
    /// The sockets the agent has bound, and which watchers get them.
    Listsockets(Empty),
    /// Re-execute the agent's binary (the file now at the path it was started from) in
    /// the same pid, keeping every process running: a hot upgrade.
    Upgrade(Empty),
}

impl Command {
    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status(_) => "status",
            Command::List(_) => "list",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Restart(_) => "restart",
            Command::Reload(_) => "reload",
            Command::Incr(_) => "incr",
            Command::Decr(_) => "decr",
            Command::Numprocesses(_) => "numprocesses",
            Command::Numwatchers(_) => "numwatchers",
            Command::Signal(_) => "signal",
            Command::Options(_) => "options",
            Command::Get(_) => "get",
            Command::Set(_) => "set",
            Command::Add(_) => "add",
            Command::Rm(_) => "rm",
            Command::Reloadconfig(_) => "reloadconfig",
            Command::Dstats(_) => "dstats",
            Command::Quit(_) => "quit",
            Command::Ping(_) => "ping",
            Command::Stats(_) => "stats",
            Command::Members(_) => "members",
            Command::Logs(_) => "logs",
            Command::Listsockets(_) => "listsockets",
            Command::Upgrade(_) => "upgrade",
        }
    }
}

impl Command {
    /// The type of data its successful reply carries.
    pub fn reply_kind(&self) -> ReplyKind {
        match self {
            Command::Status(_) => ReplyKind::Status,
            Command::List(_) => ReplyKind::List,
            Command::Start(_)
            | Command::Stop(_)
            | Command::Restart(_)
            | Command::Reload(_)
            | Command::Signal(_)
            | Command::Set(_)
            | Command::Add(_)
            | Command::Rm(_) => ReplyKind::Action,
            Command::Incr(_) | Command::Decr(_) | Command::Numprocesses(_) => {
                ReplyKind::Numprocesses
            }
            Command::Numwatchers(_) => ReplyKind::Numwatchers,
            Command::Options(_) | Command::Get(_) => ReplyKind::Options,
            Command::Reloadconfig(_) => ReplyKind::Plan,
            Command::Dstats(_) => ReplyKind::Dstats,
            Command::Quit(_) => ReplyKind::Empty,
            Command::Ping(_) => ReplyKind::Ping,
            Command::Stats(_) => ReplyKind::Stats,
            Command::Members(_) => ReplyKind::Members,
            Command::Logs(_) => ReplyKind::Logs,
            Command::Listsockets(_) => ReplyKind::Sockets,
            Command::Upgrade(_) => ReplyKind::Upgrade,
        }
    }

    /// One command of each kind, in the order of [`Command`], with the least
    /// properties each takes: what the schema files are generated from.
    pub fn examples() -> Vec<Command> {
        let name = || "w".to_owned();
        vec![
            Command::Status(MaybeName::default()),
            Command::List(MaybeName::default()),
            Command::Start(StartStop::default()),
            Command::Stop(StartStop::default()),
            Command::Restart(Restart::default()),
            Command::Reload(Restart::default()),
            Command::Incr(Resize {
                name: name(),
                nb: 1,
            }),
            Command::Decr(Resize {
                name: name(),
                nb: 1,
            }),
            Command::Numprocesses(Numprocesses {
                name: name(),
                nb: None,
            }),
            Command::Numwatchers(Empty {}),
            Command::Signal(SignalProps {
                name: name(),
                signum: SignalSpec::Number(1),
                pid: None,
                leader_only: false,
            }),
            Command::Options(Name { name: name() }),
            Command::Get(GetProps {
                name: name(),
                keys: Vec::new(),
            }),
            Command::Set(SetProps {
                name: name(),
                options: BTreeMap::new(),
            }),
            Command::Add(Box::new(AddProps {
                name: name(),
                cmd: "true".to_owned(),
                args: Vec::new(),
                options: None,
                start: false,
            })),
            Command::Rm(RmProps {
                name: name(),
                waiting: true,
            }),
            Command::Reloadconfig(ReloadconfigProps::default()),
            Command::Dstats(Empty {}),
            Command::Quit(Empty {}),
            Command::Ping(Empty {}),
            Command::Stats(MaybeName::default()),
            Command::Members(crate::registry::MembersRequest::default()),
            Command::Logs(crate::logs::LogsProps {
                name: name(),
                lines: None,
                stream: None,
                follow_secs: None,
            }),
            Command::Listsockets(Empty {}),
            Command::Upgrade(Empty {}),
        ]
    }
}

/// Whether a command changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Changes nothing: safe to allow a user who may only look.
    Read,
    /// Changes processes, watchers or the agent itself.
    Write,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Class::Read => "read",
            Class::Write => "write",
        })
    }
}

/// The subject token of `numprocesses` with a count (a write), so that a permission
/// can tell it from `numprocesses` without one (a read).
pub const RESIZE_TOKEN: &str = "resize";

/// The subject token of `reloadconfig` with `dry_run` (a read: it only shows the plan),
/// so that a permission can allow it without allowing `reloadconfig` (a write).
pub const PLAN_TOKEN: &str = "plan";

impl Command {
    /// Whether the command only reads.
    pub fn class(&self) -> Class {
        match self {
            Command::Status(_)
            | Command::List(_)
            | Command::Numwatchers(_)
            | Command::Options(_)
            | Command::Get(_)
            | Command::Dstats(_)
            | Command::Ping(_)
            | Command::Members(_)
            | Command::Stats(_)
            | Command::Logs(_)
            | Command::Listsockets(_) => Class::Read,
            Command::Numprocesses(p) => match p.nb {
                None => Class::Read,
                Some(_) => Class::Write,
            },
            Command::Reloadconfig(p) => match p.dry_run {
                true => Class::Read,
                false => Class::Write,
            },
            Command::Start(_)
            | Command::Stop(_)
            | Command::Restart(_)
            | Command::Reload(_)
            | Command::Incr(_)
            | Command::Decr(_)
            | Command::Signal(_)
            | Command::Set(_)
            | Command::Add(_)
            | Command::Rm(_)
            | Command::Quit(_)
            | Command::Upgrade(_) => Class::Write,
        }
    }

    /// The last token of the command's own subject (`cluster.<node>.cmd.<token>`): its
    /// wire name, except [`RESIZE_TOKEN`] for `numprocesses` with a count and
    /// [`PLAN_TOKEN`] for `reloadconfig` with `dry_run`.
    pub fn subject_token(&self) -> &'static str {
        match self {
            Command::Numprocesses(Numprocesses { nb: Some(_), .. }) => RESIZE_TOKEN,
            Command::Reloadconfig(ReloadconfigProps { dry_run: true }) => PLAN_TOKEN,
            _ => self.name(),
        }
    }

    /// The watcher the command acts on or reads, when it names one.
    pub fn watcher(&self) -> Option<&str> {
        match self {
            Command::Status(p) | Command::List(p) | Command::Stats(p) => p.name.as_deref(),
            Command::Start(p) | Command::Stop(p) => p.name.as_deref(),
            Command::Restart(p) | Command::Reload(p) => p.name.as_deref(),
            Command::Incr(p) | Command::Decr(p) => Some(&p.name),
            Command::Numprocesses(p) => Some(&p.name),
            Command::Signal(p) => Some(&p.name),
            Command::Options(p) => Some(&p.name),
            Command::Get(p) => Some(&p.name),
            Command::Set(p) => Some(&p.name),
            Command::Add(p) => Some(&p.name),
            Command::Rm(p) => Some(&p.name),
            Command::Logs(p) => Some(&p.name),
            Command::Numwatchers(_)
            | Command::Reloadconfig(_)
            | Command::Dstats(_)
            | Command::Quit(_)
            | Command::Ping(_)
            | Command::Members(_)
            | Command::Listsockets(_)
            | Command::Upgrade(_) => None,
        }
    }
}

/// What a kind of subject accepts of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance<'a> {
    /// Accepted as it is.
    Accepted,
    /// Accepted only if this watcher belongs to the subject's service (the agent
    /// knows which watchers do).
    IfWatcherOf { watcher: &'a str, service: &'a str },
    /// Refused, with the reason.
    Refused(String),
}

/// The one place that says which commands each kind of subject takes:
/// - `cluster.<node>.cmd` and `cluster.all.cmd`: every command;
/// - `cluster.members`: `members` only;
/// - `cluster.svc.<S>.cmd`: only commands that name a watcher, and only a watcher of
///   service S (checked by the agent).
///
/// The per-command forms (`... .cmd.<token>`) take the same, and only the command
/// whose [`Command::subject_token`] is the token (see [`check_token`]).
pub fn accepted<'a>(target: &'a CmdTarget, command: &'a Command) -> Acceptance<'a> {
    match target {
        CmdTarget::Node(_) | CmdTarget::All => Acceptance::Accepted,
        CmdTarget::Members if matches!(command, Command::Members(_)) => Acceptance::Accepted,
        CmdTarget::Members => Acceptance::Refused(format!(
            "'{}' is not accepted on the members subject, which takes 'members' only; \
             send it to a node (ctl --node NAME {})",
            command.name(),
            command.name()
        )),
        CmdTarget::Service(service) => match command.watcher() {
            Some(watcher) => Acceptance::IfWatcherOf { watcher, service },
            None => Acceptance::Refused(format!(
                "'{}' names no watcher, and a service subject takes only commands on a \
                 watcher of service '{service}'; send it to a node (ctl --node NAME {})",
                command.name(),
                command.name()
            )),
        },
    }
}

/// Checks that a command came on its own per-command subject: `token` is the last
/// token of a `... .cmd.<token>` subject, `None` for the plain `... .cmd`.
pub fn check_token(token: Option<&str>, command: &Command) -> Result<(), String> {
    match token {
        None => Ok(()),
        Some(t) if t == command.subject_token() => Ok(()),
        Some(t) => Err(format!(
            "the request says '{}' but came on the subject for '{t}'; send each command on \
             its own subject (... .cmd.{})",
            command.name(),
            command.subject_token()
        )),
    }
}

/// Every command name, in the order of [`Command`].
pub const COMMAND_NAMES: &[&str] = &[
    "status",
    "list",
    "start",
    "stop",
    "restart",
    "reload",
    "incr",
    "decr",
    "numprocesses",
    "numwatchers",
    "signal",
    "options",
    "get",
    "set",
    "add",
    "rm",
    "reloadconfig",
    "dstats",
    "quit",
    "ping",
    "stats",
    "members",
    "logs",
    "listsockets",
    "upgrade",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `reloadconfig`'s properties.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadconfigProps {
    /// Only compute and return the plan; change nothing (default false). Sent on the
    /// `plan` subject token, a read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaybeName {
    /// A watcher's name; all watchers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Name {
    /// A watcher's name.
    pub name: String,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartStop {
    /// A watcher's name; all watchers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Reply only once the processes have started or stopped (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub waiting: bool,
}

impl Default for StartStop {
    fn default() -> Self {
        StartStop {
            name: None,
            waiting: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// A watcher's name; all watchers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Reply only once the restart is done (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub waiting: bool,
    /// Replace the processes a few at a time, as the watcher's `max_surge` and
    /// `max_unavailable` say: with surge, each new process starts next to the old one,
    /// which stops once the new one is up (past `min_uptime`, and its `ready` check passed
    /// where set); otherwise each stops, then starts. Each new one is up before the next.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling: bool,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            name: None,
            waiting: true,
            rolling: false,
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// A watcher's name.
    pub name: String,
    /// How many processes to add or remove (default 1).
    #[serde(default = "one")]
    pub nb: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Numprocesses {
    /// A watcher's name.
    pub name: String,
    /// When given, the new process count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nb: Option<u32>,
}

/// A signal by name (`HUP`, `SIGHUP`) or number (`1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SignalSpec {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for SignalSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalSpec::Number(n) => write!(f, "{n}"),
            SignalSpec::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalProps {
    /// A watcher's name.
    pub name: String,
    /// The signal.
    pub signum: SignalSpec,
    /// Only this process of the watcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Signal only the main process, not its process group.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leader_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetProps {
    /// A watcher's name.
    pub name: String,
    /// The option names to read.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProps {
    /// A watcher's name.
    pub name: String,
    /// The options to change, with their new values.
    pub options: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProps {
    /// The new watcher's name.
    pub name: String,
    /// The program to run.
    pub cmd: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Any other watcher option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<WatcherOptions>,
    /// Start the watcher at once (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub start: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RmProps {
    /// A watcher's name.
    pub name: String,
    /// Reply only once its processes are gone (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub waiting: bool,
}

/// Why a request could not be read; becomes an error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<String>,
    pub errno: Errno,
    pub reason: String,
}

/// Reads a request strictly: a JSON object with `command`, optional `id` and
/// `properties`, nothing else; properties of the right types, nothing unknown.
pub fn parse_request(bytes: &[u8]) -> Result<Request, RequestError> {
    let err = |id: Option<String>, errno, reason: String| RequestError { id, errno, reason };
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(err(
            None,
            Errno::BadMessage,
            format!(
                "request is {} bytes, larger than the limit of {MAX_REQUEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        err(
            None,
            Errno::BadMessage,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(err(
            None,
            Errno::BadMessage,
            "request must be a JSON object like {\"command\": \"status\"}".into(),
        ));
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(err(
                None,
                Errno::BadMessage,
                format!("'id' must be a string, not {}", json_kind(&other)),
            ))
        }
    };
    let command = match map.remove("command") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(err(
                id,
                Errno::BadMessage,
                format!("'command' must be a string, not {}", json_kind(&other)),
            ))
        }
        None => {
            return Err(err(
                id,
                Errno::BadMessage,
                "request has no 'command'".into(),
            ))
        }
    };
    let properties = match map.remove("properties") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(err(
                id,
                Errno::BadMessage,
                format!("'properties' must be an object, not {}", json_kind(&other)),
            ))
        }
    };
    if let Some(key) = map.keys().next() {
        return Err(err(
            id,
            Errno::BadMessage,
            format!("unknown field '{key}' in request; expected id, command, properties"),
        ));
    }
    if !COMMAND_NAMES.contains(&command.as_str()) {
        return Err(err(
            id,
            Errno::UnknownCommand,
            format!(
                "unknown command '{command}'; known commands: {}",
                COMMAND_NAMES.join(", ")
            ),
        ));
    }
    let tagged = serde_json::json!({ "command": command, "properties": properties });
    match serde_json::from_value::<Command>(tagged) {
        Ok(command) => Ok(Request { id, command }),
        Err(e) => Err(err(
            id,
            Errno::BadOption,
            format!("bad properties for '{command}': {e}"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_every_command_once_and_parse_back() {
        let examples = Command::examples();
        let names: Vec<&str> = examples.iter().map(Command::name).collect();
        assert_eq!(names, COMMAND_NAMES);
        for c in examples {
            let bytes = serde_json::to_vec(&Request::new(c.clone())).unwrap();
            assert_eq!(parse_request(&bytes).unwrap().command, c);
        }
    }

    #[test]
    fn parses_a_full_request() {
        let r = parse_request(br#"{"id":"7","command":"incr","properties":{"name":"d","nb":2}}"#)
            .unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(
            r.command,
            Command::Incr(Resize {
                name: "d".into(),
                nb: 2
            })
        );
    }

    #[test]
    fn properties_are_optional_and_defaults_apply() {
        let r = parse_request(br#"{"command":"status"}"#).unwrap();
        assert_eq!(r.command, Command::Status(MaybeName::default()));
        let r = parse_request(br#"{"command":"stop"}"#).unwrap();
        assert_eq!(r.command, Command::Stop(StartStop::default()));
        let r = parse_request(br#"{"command":"incr","properties":{"name":"x"}}"#).unwrap();
        assert_eq!(
            r.command,
            Command::Incr(Resize {
                name: "x".into(),
                nb: 1
            })
        );
    }

    #[test]
    fn round_trips_through_serde() {
        let req = Request {
            id: Some("a".into()),
            command: Command::Signal(SignalProps {
                name: "w".into(),
                signum: SignalSpec::Name("HUP".into()),
                pid: None,
                leader_only: false,
            }),
        };
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(parse_request(&bytes).unwrap(), req);
        let req = Request::new(Command::Quit(Empty {}));
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(parse_request(&bytes).unwrap(), req);
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        let cases: &[(&[u8], Errno, &str)] = &[
            (b"{not json", Errno::BadMessage, "not valid JSON"),
            (b"[1,2]", Errno::BadMessage, "must be a JSON object"),
            (br#"{"id":"1"}"#, Errno::BadMessage, "no 'command'"),
            (
                br#"{"command":5}"#,
                Errno::BadMessage,
                "'command' must be a string",
            ),
            (
                br#"{"command":"nope"}"#,
                Errno::UnknownCommand,
                "unknown command 'nope'",
            ),
            (
                br#"{"command":"status","x":1}"#,
                Errno::BadMessage,
                "unknown field 'x'",
            ),
            (
                br#"{"command":"incr","properties":{"name":1}}"#,
                Errno::BadOption,
                "bad properties for 'incr'",
            ),
            (
                br#"{"command":"incr","properties":{}}"#,
                Errno::BadOption,
                "missing field `name`",
            ),
            (
                br#"{"command":"incr","properties":{"name":"a","nb":-1}}"#,
                Errno::BadOption,
                "bad properties",
            ),
            (
                br#"{"command":"status","properties":{"nme":"a"}}"#,
                Errno::BadOption,
                "unknown field `nme`",
            ),
            (
                br#"{"command":"status","properties":[]}"#,
                Errno::BadMessage,
                "'properties' must be an object",
            ),
        ];
        for (input, errno, needle) in cases {
            let e = parse_request(input).unwrap_err();
            assert_eq!(e.errno, *errno, "{}", String::from_utf8_lossy(input));
            assert!(
                e.reason.contains(needle),
                "{:?} does not contain {needle:?}",
                e.reason
            );
        }
        let e = parse_request(br#"{"id":"9","command":"nope"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("9"));
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_request(&big)
            .unwrap_err()
            .reason
            .contains("larger than"));
    }

    #[test]
    fn command_names_match_the_enum() {
        for name in COMMAND_NAMES {
            let req = format!(r#"{{"command":"{name}"}}"#);
            match parse_request(req.as_bytes()) {
                Ok(r) => assert_eq!(r.command.name(), *name),
                Err(e) => assert_eq!(e.errno, Errno::BadOption, "{name}: {}", e.reason),
            }
        }
    }

    fn cmd(json: &str) -> Command {
        parse_request(json.as_bytes())
            .unwrap_or_else(|e| panic!("{json}: {}", e.reason))
            .command
    }

    #[test]
    fn every_command_has_a_class_and_a_token() {
        use Class::*;
        let cases: &[(&str, Class, &str)] = &[
            (r#"{"command":"status"}"#, Read, "status"),
            (r#"{"command":"list"}"#, Read, "list"),
            (r#"{"command":"start"}"#, Write, "start"),
            (r#"{"command":"stop"}"#, Write, "stop"),
            (r#"{"command":"restart"}"#, Write, "restart"),
            (r#"{"command":"reload"}"#, Write, "reload"),
            (
                r#"{"command":"incr","properties":{"name":"w"}}"#,
                Write,
                "incr",
            ),
            (
                r#"{"command":"decr","properties":{"name":"w"}}"#,
                Write,
                "decr",
            ),
            (
                r#"{"command":"numprocesses","properties":{"name":"w"}}"#,
                Read,
                "numprocesses",
            ),
            (
                r#"{"command":"numprocesses","properties":{"name":"w","nb":3}}"#,
                Write,
                "resize",
            ),
            (r#"{"command":"numwatchers"}"#, Read, "numwatchers"),
            (
                r#"{"command":"signal","properties":{"name":"w","signum":"HUP"}}"#,
                Write,
                "signal",
            ),
            (
                r#"{"command":"options","properties":{"name":"w"}}"#,
                Read,
                "options",
            ),
            (
                r#"{"command":"get","properties":{"name":"w","keys":[]}}"#,
                Read,
                "get",
            ),
            (
                r#"{"command":"set","properties":{"name":"w","options":{}}}"#,
                Write,
                "set",
            ),
            (
                r#"{"command":"add","properties":{"name":"w","cmd":"true"}}"#,
                Write,
                "add",
            ),
            (r#"{"command":"rm","properties":{"name":"w"}}"#, Write, "rm"),
            (r#"{"command":"reloadconfig"}"#, Write, "reloadconfig"),
            (
                r#"{"command":"reloadconfig","properties":{"dry_run":true}}"#,
                Read,
                "plan",
            ),
            (r#"{"command":"dstats"}"#, Read, "dstats"),
            (r#"{"command":"quit"}"#, Write, "quit"),
            (r#"{"command":"upgrade"}"#, Write, "upgrade"),
            (r#"{"command":"ping"}"#, Read, "ping"),
            (r#"{"command":"stats"}"#, Read, "stats"),
            (r#"{"command":"members"}"#, Read, "members"),
            (
                r#"{"command":"logs","properties":{"name":"w"}}"#,
                Read,
                "logs",
            ),
            (r#"{"command":"listsockets"}"#, Read, "listsockets"),
        ];
        let mut seen: Vec<&str> = vec![];
        for (json, class, token) in cases {
            let c = cmd(json);
            assert_eq!(c.class(), *class, "{json}");
            assert_eq!(c.subject_token(), *token, "{json}");
            seen.push(c.name());
        }
        for name in COMMAND_NAMES {
            assert!(seen.contains(name), "{name} has no case");
        }
        // A token is never a command's name unless it is that command.
        assert!(!COMMAND_NAMES.contains(&RESIZE_TOKEN));
        assert!(!COMMAND_NAMES.contains(&PLAN_TOKEN));
    }

    #[test]
    fn each_kind_of_subject_accepts_its_declared_commands() {
        use crate::subjects::CmdTarget;
        let node = CmdTarget::Node("n".into());
        let svc = CmdTarget::Service("web".into());
        // (target, request, Some(watcher to check) / None accepted as is / Err(needle))
        type Want = Result<Option<&'static str>, &'static str>;
        let cases: &[(&CmdTarget, &str, Want)] = &[
            (&node, r#"{"command":"quit"}"#, Ok(None)),
            (
                &CmdTarget::All,
                r#"{"command":"rm","properties":{"name":"w"}}"#,
                Ok(None),
            ),
            (&CmdTarget::Members, r#"{"command":"members"}"#, Ok(None)),
            (
                &CmdTarget::Members,
                r#"{"command":"quit"}"#,
                Err("takes 'members' only"),
            ),
            (
                &CmdTarget::Members,
                r#"{"command":"rm","properties":{"name":"w"}}"#,
                Err("takes 'members' only"),
            ),
            (
                &CmdTarget::Members,
                r#"{"command":"status"}"#,
                Err("takes 'members' only"),
            ),
            (
                &svc,
                r#"{"command":"incr","properties":{"name":"w"}}"#,
                Ok(Some("w")),
            ),
            (
                &svc,
                r#"{"command":"status","properties":{"name":"w"}}"#,
                Ok(Some("w")),
            ),
            (&svc, r#"{"command":"status"}"#, Err("names no watcher")),
            (&svc, r#"{"command":"stop"}"#, Err("names no watcher")),
            (&svc, r#"{"command":"quit"}"#, Err("names no watcher")),
            (
                &svc,
                r#"{"command":"reloadconfig"}"#,
                Err("names no watcher"),
            ),
            (&svc, r#"{"command":"members"}"#, Err("names no watcher")),
        ];
        for (target, json, want) in cases {
            let c = cmd(json);
            let got = accepted(target, &c);
            match (want, &got) {
                (Ok(None), Acceptance::Accepted) => {}
                (Ok(Some(w)), Acceptance::IfWatcherOf { watcher, service }) => {
                    assert_eq!((watcher, service), (w, &"web"), "{json}");
                }
                (Err(needle), Acceptance::Refused(reason)) => {
                    assert!(reason.contains(needle), "{json}: {reason}");
                }
                _ => panic!("{target:?} {json}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_command_must_match_its_subject_token() {
        let stop = cmd(r#"{"command":"stop"}"#);
        assert!(check_token(None, &stop).is_ok());
        assert!(check_token(Some("stop"), &stop).is_ok());
        let e = check_token(Some("status"), &stop).unwrap_err();
        assert!(e.contains("says 'stop'") && e.contains("'status'"), "{e}");
        let resize = cmd(r#"{"command":"numprocesses","properties":{"name":"w","nb":1}}"#);
        assert!(check_token(Some("resize"), &resize).is_ok());
        assert!(check_token(Some("numprocesses"), &resize).is_err());
        let read = cmd(r#"{"command":"numprocesses","properties":{"name":"w"}}"#);
        assert!(check_token(Some("numprocesses"), &read).is_ok());
        assert!(check_token(Some("resize"), &read).is_err());
        // The dry run is a read on its own token; the reload itself cannot use it.
        let plan = cmd(r#"{"command":"reloadconfig","properties":{"dry_run":true}}"#);
        assert!(check_token(Some("plan"), &plan).is_ok());
        assert!(check_token(Some("reloadconfig"), &plan).is_err());
        let apply = cmd(r#"{"command":"reloadconfig"}"#);
        assert!(check_token(Some("plan"), &apply).is_err());
    }
}
