//! Reads a node's TOML config and validates it into a [`ValidatedConfig`], reporting
//! every problem at once with the file, table and key. Nothing else reads raw TOML;
//! nothing here starts processes or touches the network.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::options::{LiveCheck, ReadyCheck};
use protocol::subjects::{validate_node_name, validate_prefix, validate_token};
use protocol::{IdSpec, RestartPolicy, WatcherOptions};
use serde::{Deserialize, Serialize};

use crate::sockets::{SocketOptions, SocketSpec};

pub mod deps;
pub mod guards;

/// One thing wrong with a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `[agent] name`, `[watcher.web] graceful_timeout`, ...
    pub location: String,
    pub message: String,
}

impl Problem {
    /// A problem with `key` of the table at `location` (`[agent]`, `[watcher.web]`).
    fn at(location: &str, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            location: format!("{location} {key}"),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}:\n{}", list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: Option<RawAgent>,
    #[serde(default)]
    nats: RawNats,
    #[serde(default)]
    watcher: BTreeMap<String, WatcherOptions>,
    #[serde(default)]
    socket: BTreeMap<String, SocketOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    heartbeat: Option<String>,
    stats_interval: Option<String>,
    state_dir: Option<String>,
    log_dir: Option<String>,
    output_dirs: Option<Vec<String>>,
    #[serde(default)]
    allow_remote_exec: bool,
    suspect_after: Option<String>,
    failed_after: Option<String>,
    reap_after: Option<String>,
    max_processes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    servers: Option<Vec<String>>,
    prefix: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey_seed: Option<String>,
    creds_file: Option<String>,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    ping_interval: Option<String>,
    /// The account whose client-disconnect events the agents may read.
    system_events_account: Option<String>,
}

/// The `[agent]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub heartbeat: Duration,
    pub stats_interval: Duration,
    pub state_dir: Option<PathBuf>,
    pub log_dir: PathBuf,
    /// Directories, besides the log dir, that `stdout`/`stderr` files may be in
    /// (canonical).
    pub output_dirs: Vec<PathBuf>,
    pub allow_remote_exec: bool,
    pub suspect_after: Option<Duration>,
    pub failed_after: Duration,
    pub reap_after: Duration,
    /// The most processes all watchers of this node may ask for together.
    pub max_processes: u32,
}

/// The `[nats]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub ping_interval: Duration,
    pub system_events_account: Option<String>,
}

/// Where a process's stdout or stderr goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Output {
    /// Into rotating files under the agent's log dir.
    Capture,
    Discard,
    /// The agent's own stream.
    Inherit,
    /// Appended to a file.
    File(PathBuf),
}

impl Output {
    /// Reads an output option; a file must be beneath one of `roots` (canonical dirs).
    fn parse(s: &str, roots: &[PathBuf]) -> Result<Output, String> {
        Ok(match s {
            "capture" => Output::Capture,
            "discard" | "null" | "/dev/null" => Output::Discard,
            "inherit" => Output::Inherit,
            path => Output::File(file_output(path, roots)?),
        })
    }

    fn as_option(&self) -> String {
        match self {
            Output::Capture => "capture".into(),
            Output::Discard => "discard".into(),
            Output::Inherit => "inherit".into(),
            Output::File(p) => p.display().to_string(),
        }
    }
}

/// The directories file outputs may be in, for watcher options that do not come from
/// the config file (`set`, `add`, the state file). Empty until the agent sets them:
/// until then every file output is refused.
static OUTPUT_ROOTS: RwLock<Vec<PathBuf>> = RwLock::new(Vec::new());

/// Makes `roots` (see [`AgentConfig::output_roots`]) the directories that watcher
/// options set at runtime or restored from the state file may send output to. The
/// agent calls it at start, before it reads its state.
pub fn set_output_roots(roots: Vec<PathBuf>) {
    *OUTPUT_ROOTS.write().unwrap_or_else(|e| e.into_inner()) = roots;
}

fn output_roots() -> Vec<PathBuf> {
    OUTPUT_ROOTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// True when `value`, given for `stdout` or `stderr`, names a file (and so says where
/// the agent writes): such a change needs `allow_remote_exec`.
pub fn is_file_output(value: &serde_json::Value) -> bool {
    match value.as_str() {
        Some(s) => !matches!(s, "capture" | "discard" | "null" | "/dev/null" | "inherit"),
        None => false,
    }
}

/// `path` made absolute with every symbolic link of its existing part resolved; the part
/// that does not exist yet is appended as written. `None` when that part holds `..`.
fn resolve_lenient(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::Normal(p) => out.push(p),
                    Component::CurDir => {}
                    _ => return None,
                }
            }
            return Some(out);
        }
        rest.push(existing.components().next_back()?);
        existing = existing.parent()?;
    }
}

/// Checks a file output: an absolute path without `..`, in a directory beneath one of
/// `roots`. Returns it with its directory resolved (symbolic links followed), which is
/// what the process will open.
fn file_output(path: &str, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let hint = "write \"capture\", \"discard\", \"inherit\" or a file under the log dir or an [agent] output_dirs directory";
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path; {hint}"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path:?} holds '..'; {hint}"));
    }
    let (Some(dir), Some(file)) = (p.parent(), p.file_name()) else {
        return Err(format!("{path:?} names no file; {hint}"));
    };
    let Some(full) = resolve_lenient(dir).map(|d| d.join(file)) else {
        return Err(format!("{path:?} cannot be resolved; {hint}"));
    };
    if roots.iter().any(|r| full.starts_with(r) && full != *r) {
        return Ok(full);
    }
    let allowed = if roots.is_empty() {
        "none".to_owned()
    } else {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{path:?} is outside the directories output files may go to ({allowed}); \
         put it under one of them or add its directory to [agent] output_dirs"
    ))
}

/// Where an agent keeps its files when the config names no dir:
/// `/var/lib/nodeagent/<name>` as root, else `$XDG_STATE_HOME/nodeagent/<name>` or
/// `~/.local/state/nodeagent/<name>`. Never a shared, world-writable dir such as /tmp.
pub fn default_home(name: &str) -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(Path::new("/var/lib/nodeagent").join(name));
    }
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let base =
        env_dir("XDG_STATE_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".local/state")))?;
    Some(base.join("nodeagent").join(name))
}

impl AgentConfig {
    /// The directories `stdout`/`stderr` files may be in: the log dir and `output_dirs`,
    /// resolved.
    pub fn output_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = resolve_lenient(&self.log_dir).into_iter().collect();
        roots.extend(self.output_dirs.iter().cloned());
        roots
    }
}

/// A watcher, validated, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherConfig {
    pub name: String,
    pub cmd: String,
    pub args: Vec<String>,
    pub numprocesses: u32,
    pub env: BTreeMap<String, String>,
    pub copy_env: bool,
    pub working_dir: Option<PathBuf>,
    pub uid: Option<IdSpec>,
    pub gid: Option<IdSpec>,
    pub uid_num: Option<u32>,
    pub gid_num: Option<u32>,
    pub stop_signal: Signal,
    pub graceful_timeout: Duration,
    pub restart: RestartPolicy,
    pub exit_codes: Vec<i32>,
    pub max_retry: i32,
    pub min_uptime: Duration,
    pub restart_delay: Duration,
    pub max_restart_delay: Duration,
    pub warmup_delay: Duration,
    pub autostart: bool,
    pub priority: i32,
    /// Watchers that must be up before this one starts, and that stop after it.
    pub depends_on: Vec<String>,
    pub stdout: Output,
    pub stderr: Output,
    pub service: String,
    /// When a new process counts as up (`ready`, or `health_cmd`); none: once it has
    /// run `min_uptime`.
    pub ready: Option<ReadyConfig>,
    /// How a ready process shows it still works (`live`).
    pub live: Option<LiveConfig>,
    pub log_max_bytes: u64,
    pub log_backups: u32,
    /// The sockets its processes get, at fds 3, 4, ... in this order.
    pub sockets: Vec<String>,
    /// `max_surge` as set (see [`WatcherConfig::rollout`] for the value in force).
    pub max_surge: Option<u32>,
    /// `max_unavailable` as set (see [`WatcherConfig::rollout`]).
    pub max_unavailable: Option<u32>,
    /// The most resident memory a process may use, in bytes.
    pub max_memory: Option<u64>,
    /// Readings above `max_memory` in a row that restart a process.
    pub max_memory_samples: u32,
    /// Resource limits set in each process before it runs.
    pub rlimits: Vec<guards::RlimitSetting>,
    /// How long a process runs before it is recycled (plus up to `max_age_variance`).
    pub max_age: Option<Duration>,
    pub max_age_variance: Duration,
    /// Commands run around the watcher's life.
    pub hooks: guards::HooksConfig,
}

/// How a rolling restart replaces a watcher's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Start `n` replacements next to their old processes, each old one stopping once
    /// its replacement is up.
    Surge(u32),
    /// Stop `n` processes, then start their replacements (the classic way).
    Unavailable(u32),
}

/// What a readiness or liveness probe checks. The strings are as configured, with
/// `$(wid)` and `$(name)` unexpanded; a probe of one process has them expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection to "host:port" (an IPv6 host in brackets) succeeds.
    Tcp(String),
    /// An HTTP/1.1 GET of an `http://` URL answers 2xx.
    Http(String),
    /// A command exits 0 (`$(pid)` expands too).
    Exec(Vec<String>),
    /// The process sends `READY=1` to its `NOTIFY_SOCKET` (readiness only).
    Notify,
}

impl Probe {
    /// The probe of process `wid` of watcher `name` (pid `pid`): every value expanded.
    pub fn expanded(&self, name: &str, wid: u32, pid: u32) -> Probe {
        match self {
            Probe::Tcp(t) => Probe::Tcp(expand(t, name, wid)),
            Probe::Http(u) => Probe::Http(expand(u, name, wid)),
            Probe::Exec(argv) => Probe::Exec(
                argv.iter()
                    .map(|a| expand(a, name, wid).replace("$(pid)", &pid.to_string()))
                    .collect(),
            ),
            Probe::Notify => Probe::Notify,
        }
    }

    /// What it checks, in a few words, for reasons and logs.
    pub fn describe(&self) -> String {
        match self {
            Probe::Tcp(t) => format!("tcp {t}"),
            Probe::Http(u) => format!("http {u}"),
            Probe::Exec(argv) => format!("exec {}", argv.first().map_or("", |a| a.as_str())),
            Probe::Notify => "notify".into(),
        }
    }
}

/// `ready` (or `health_cmd`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyConfig {
    pub probe: Probe,
    /// How long a new process may take to be ready.
    pub timeout: Duration,
    /// The pause between two probes until it is.
    pub interval: Duration,
}

/// `live`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    pub probe: Probe,
    /// How long one probe may take.
    pub timeout: Duration,
    pub interval: Duration,
    /// Failed probes in a row that restart the process.
    pub failures: u32,
}

/// The defaults of `ready` and `live`.
pub const READY_TIMEOUT: Duration = secs(30);
pub const READY_INTERVAL: Duration = millis(200);
pub const LIVE_TIMEOUT: Duration = secs(5);
pub const LIVE_INTERVAL: Duration = secs(10);
pub const LIVE_FAILURES: u32 = 3;

/// The longest `tcp` target and `http` URL, the most `exec` arguments and the longest
/// one.
const MAX_TARGET_LEN: usize = 2048;
const MAX_EXEC_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;

/// Splits "host:port" (an IPv6 host in brackets) into its host and port.
pub fn split_host_port(target: &str) -> Result<(&str, u16), String> {
    let hint = "write it as \"host:port\", e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?} has no port; {hint}"))?;
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .ok_or_else(|| format!("{target:?} has an unclosed '['; {hint}"))?,
        None if host.contains(':') => {
            return Err(format!("{target:?}: an IPv6 host goes in brackets; {hint}"))
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("{target:?} has no host; {hint}"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{target:?}: {port:?} is not a port (1 to 65535); {hint}"))?;
    Ok((host, port))
}

/// An `http://` URL split into what a request needs: the "host:port" to connect to,
/// the Host header and the path (with its query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub connect: String,
    pub host_header: String,
    pub path: String,
}

/// Reads an `http://host[:port][/path]` URL. Only plain HTTP: no https, no user info;
/// no spaces or control characters (they would end up in the request line).
pub fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{url:?} holds {c:?}; a URL has no spaces or control characters"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        let why = if url.starts_with("https://") {
            "https is not supported (use http, or a tcp or exec check)"
        } else {
            "it does not start with http://"
        };
        return Err(format!("{url:?}: {why}"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{url:?}: user info is not supported"));
    }
    let path = tail.split('#').next().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let has_port = match authority.rsplit_once(':') {
        Some((h, _)) => !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')),
        None => false,
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    split_host_port(&connect).map_err(|e| format!("{url:?}: {e}"))?;
    Ok(HttpTarget {
        connect,
        host_header: authority.to_owned(),
        path,
    })
}

/// Checks a probe's target as watcher `name`'s first process would probe it.
fn check_probe(probe: &Probe, name: &str) -> Result<(), String> {
    let sample = probe.expanded(name, 1, 1);
    match (probe, &sample) {
        (Probe::Tcp(raw), Probe::Tcp(t)) => {
            if raw.len() > MAX_TARGET_LEN {
                return Err(format!("tcp: longer than {MAX_TARGET_LEN} bytes"));
            }
            split_host_port(t)
                .map(|_| ())
                .map_err(|e| format!("tcp: {e}"))
        }
        (Probe::Http(raw), Probe::Http(u)) => {
            if raw.len() > MAX_TARGET_LEN {
                return Err(format!("http: longer than {MAX_TARGET_LEN} bytes"));
            }
            parse_http_url(u)
                .map(|_| ())
                .map_err(|e| format!("http: {e}"))
        }
        (Probe::Exec(argv), _) => {
            if argv.first().is_none_or(|a| a.trim().is_empty()) {
                Err("exec: is empty; give a program and its arguments, e.g. [\"curl\", \"-f\", \"http://127.0.0.1:8080/\"]".into())
            } else if argv.len() > MAX_EXEC_ARGS {
                Err(format!("exec: more than {MAX_EXEC_ARGS} arguments"))
            } else if argv
                .iter()
                .any(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
            {
                Err(format!(
                    "exec: an argument is longer than {MAX_ARG_LEN} bytes or holds a NUL byte"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// The one probe a check names: exactly one of its forms.
fn one_probe(
    tcp: &Option<String>,
    http: &Option<String>,
    exec: &Option<Vec<String>>,
    notify: Option<bool>,
    forms: &str,
) -> Result<Probe, String> {
    let mut found = Vec::new();
    if let Some(t) = tcp {
        found.push(Probe::Tcp(t.clone()));
    }
    if let Some(u) = http {
        found.push(Probe::Http(u.clone()));
    }
    if let Some(a) = exec {
        found.push(Probe::Exec(a.clone()));
    }
    if notify == Some(true) {
        found.push(Probe::Notify);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("checks nothing; give one of {forms}")),
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|p| p.describe().split(' ').next().unwrap_or("").to_owned())
                .collect();
            Err(format!(
                "has {}; give exactly one of {forms}",
                names.join(" and ")
            ))
        }
    }
}

/// The whole config, ready to use.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedConfig {
    pub path: PathBuf,
    pub agent: AgentConfig,
    pub nats: NatsConfig,
    pub watchers: BTreeMap<String, WatcherConfig>,
    /// The `[socket.NAME]` tables.
    pub sockets: BTreeMap<String, SocketSpec>,
}

/// The largest process count one watcher may ask for, whatever the node's
/// `max_processes`.
pub const MAX_PROCESSES: u32 = 100_000;

/// The default of `[agent] max_processes`: processes of all watchers together.
pub const DEFAULT_MAX_PROCESSES: u32 = 10_000;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An inclusive range of values a key may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range<T> {
    pub key: &'static str,
    pub min: T,
    pub max: T,
}

/// The range of every watcher duration, in config, `add` and `set` alike.
pub const WATCHER_DURATIONS: &[Range<Duration>] = &[
    Range {
        key: "graceful_timeout",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "min_uptime",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "restart_delay",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "max_restart_delay",
        min: Duration::ZERO,
        max: secs(24 * 3600),
    },
    Range {
        key: "warmup_delay",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "health_timeout",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "ready.timeout",
        min: Duration::ZERO,
        max: secs(3600),
    },
    Range {
        key: "ready.interval",
        min: millis(50),
        max: secs(3600),
    },
    Range {
        key: "live.timeout",
        min: millis(100),
        max: secs(600),
    },
    Range {
        key: "live.interval",
        min: millis(100),
        max: secs(3600),
    },
    Range {
        key: "max_age",
        min: secs(1),
        max: secs(365 * 24 * 3600),
    },
    Range {
        key: "max_age_variance",
        min: Duration::ZERO,
        max: secs(365 * 24 * 3600),
    },
    Range {
        key: "hooks.timeout",
        min: millis(100),
        max: secs(3600),
    },
];

/// The range of every `[agent]` and `[nats]` duration. `stats_interval` may also be
/// 0s (no stats stream).
pub const AGENT_DURATIONS: &[Range<Duration>] = &[
    Range {
        key: "heartbeat",
        min: millis(50),
        max: secs(3600),
    },
    Range {
        key: "stats_interval",
        min: millis(50),
        max: secs(3600),
    },
    Range {
        key: "suspect_after",
        min: millis(50),
        max: secs(24 * 3600),
    },
    Range {
        key: "failed_after",
        min: millis(50),
        max: secs(24 * 3600),
    },
    Range {
        key: "reap_after",
        min: millis(100),
        max: secs(30 * 24 * 3600),
    },
    Range {
        key: "ping_interval",
        min: millis(100),
        max: secs(600),
    },
];

/// The range of every count and size, in config, `add` and `set` alike.
pub const COUNTS: &[Range<i64>] = &[
    Range {
        key: "numprocesses",
        min: 0,
        max: MAX_PROCESSES as i64,
    },
    Range {
        key: "max_processes",
        min: 1,
        max: MAX_PROCESSES as i64,
    },
    Range {
        key: "log_max_bytes",
        min: 1024,
        max: 1 << 40,
    },
    Range {
        key: "log_backups",
        min: 0,
        max: 1000,
    },
    Range {
        key: "max_retry",
        min: -1,
        max: 1_000_000,
    },
    Range {
        key: "priority",
        min: -1_000_000,
        max: 1_000_000,
    },
    Range {
        key: "live.failures",
        min: 1,
        max: 1000,
    },
    Range {
        key: "max_surge",
        min: 0,
        max: MAX_PROCESSES as i64,
    },
    Range {
        key: "max_unavailable",
        min: 0,
        max: MAX_PROCESSES as i64,
    },
    Range {
        key: "max_memory_samples",
        min: 1,
        max: 1000,
    },
    Range {
        key: "backlog",
        min: crate::sockets::MIN_BACKLOG,
        max: crate::sockets::MAX_BACKLOG,
    },
];

fn duration_range(key: &str) -> Option<&'static Range<Duration>> {
    WATCHER_DURATIONS
        .iter()
        .chain(AGENT_DURATIONS)
        .find(|r| r.key == key)
}

/// Checks a count or size against its range in [`COUNTS`].
pub fn check_count(key: &str, value: i64) -> Result<(), String> {
    match COUNTS.iter().find(|r| r.key == key) {
        Some(r) if value < r.min || value > r.max => Err(format!(
            "{value} is out of range; use {} to {}",
            r.min, r.max
        )),
        _ => Ok(()),
    }
}

/// Parses a duration and checks it against its range (see [`WATCHER_DURATIONS`] and
/// [`AGENT_DURATIONS`]); the error names the range.
pub fn parse_duration_in_range(key: &str, s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    match duration_range(key) {
        Some(r) if d < r.min || d > r.max => Err(format!(
            "{} is out of range; use {} to {}",
            s.trim(),
            format_duration(r.min),
            format_duration(r.max)
        )),
        _ => Ok(d),
    }
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<ValidatedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Validates config text; `path` names the file in messages and anchors relative dirs.
pub fn parse(path: &Path, text: &str) -> Result<ValidatedConfig, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        invalid(vec![Problem {
            location: String::new(),
            message: e.to_string().trim().replace('\n', "\n    "),
        }])
    })?;
    let mut problems = Vec::new();
    let Some(raw_agent) = raw.agent else {
        return Err(invalid(vec![Problem {
            location: "[agent]".into(),
            message: "missing; add an [agent] table with at least name = \"...\"".into(),
        }]));
    };
    let agent = validate_agent(raw_agent, &mut problems);
    let nats = validate_nats(raw.nats, &mut problems);
    let mut watchers = BTreeMap::new();
    let roots = agent.output_roots();
    for (name, opts) in &raw.watcher {
        match WatcherConfig::from_options_in(name, opts, &roots) {
            Ok(w) => {
                watchers.insert(name.clone(), w);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    problems.extend(deps::problems(&watchers));
    let sockets = validate_sockets(&raw.socket, &watchers, &mut problems);
    let total = watchers
        .values()
        .fold(0u64, |n, w| n.saturating_add(w.numprocesses.into()));
    if total > u64::from(agent.max_processes) {
        problems.push(Problem::at(
            "[agent]",
            "max_processes",
            format!(
                "the watchers ask for {total} processes together, more than max_processes = {}; \
                 raise max_processes or lower their numprocesses",
                agent.max_processes
            ),
        ));
    }
    if problems.is_empty() {
        Ok(ValidatedConfig {
            path: path.to_owned(),
            agent,
            nats,
            watchers,
            sockets,
        })
    } else {
        Err(invalid(problems))
    }
}

/// Validates the `[socket.NAME]` tables, and that every socket a watcher lists is one
/// of them.
fn validate_sockets(
    raw: &BTreeMap<String, SocketOptions>,
    watchers: &BTreeMap<String, WatcherConfig>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, SocketSpec> {
    let mut sockets = BTreeMap::new();
    if raw.len() > crate::sockets::MAX_SOCKETS {
        problems.push(Problem::at(
            "[socket]",
            "NAME",
            format!(
                "{} sockets, more than {}; define fewer",
                raw.len(),
                crate::sockets::MAX_SOCKETS
            ),
        ));
        return sockets;
    }
    for (name, o) in raw {
        match SocketSpec::from_options(name, o) {
            Ok(s) => {
                sockets.insert(name.clone(), s);
            }
            Err(list) => problems.extend(list.into_iter().map(|(key, message)| Problem {
                location: match key {
                    "" => format!("[socket.{name}]"),
                    key => format!("[socket.{name}] {key}"),
                },
                message,
            })),
        }
    }
    for w in watchers.values() {
        for s in w.sockets.iter().filter(|s| !raw.contains_key(*s)) {
            problems.push(Problem::at(
                &format!("[watcher.{}]", w.name),
                "sockets",
                format!("no socket '{s}'; define it in a [socket.{s}] table or remove it"),
            ));
        }
    }
    sockets
}

/// Parses a duration such as "500ms", "1s", "2m 30s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("{s:?} is not a duration; write it like \"500ms\", \"30s\" or \"2m\""))
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

fn duration(
    location: &str,
    key: &str,
    value: Option<&String>,
    default: Duration,
    problems: &mut Vec<Problem>,
) -> Duration {
    match value {
        None => default,
        Some(s) => parse_duration_in_range(key, s).unwrap_or_else(|message| {
            problems.push(Problem {
                location: format!("{location} {key}"),
                message,
            });
            default
        }),
    }
}

fn validate_agent(raw: RawAgent, problems: &mut Vec<Problem>) -> AgentConfig {
    let loc = "[agent]";
    let name = match raw.name {
        None => {
            problems.push(Problem::at(
                loc,
                "name",
                "missing; every node needs a unique name",
            ));
            String::new()
        }
        Some(n) => {
            if let Err(e) = validate_node_name(&n) {
                problems.push(Problem::at(
                    loc,
                    "name",
                    format!("{n:?} cannot be a node name: {e}"),
                ));
            }
            n
        }
    };
    let heartbeat = duration(
        loc,
        "heartbeat",
        raw.heartbeat.as_ref(),
        Duration::from_secs(1),
        problems,
    );
    // 0s turns the stats stream off; any other value has a range.
    let stats_interval = match raw.stats_interval.as_deref().map(parse_duration) {
        Some(Ok(d)) if d.is_zero() => Duration::ZERO,
        _ => duration(
            loc,
            "stats_interval",
            raw.stats_interval.as_ref(),
            Duration::from_secs(1),
            problems,
        ),
    };
    let suspect_after = raw
        .suspect_after
        .as_ref()
        .map(|s| duration(loc, "suspect_after", Some(s), Duration::ZERO, problems));
    let failed_after = duration(
        loc,
        "failed_after",
        raw.failed_after.as_ref(),
        Duration::from_secs(10),
        problems,
    );
    let reap_after = duration(
        loc,
        "reap_after",
        raw.reap_after.as_ref(),
        Duration::from_secs(24 * 3600),
        problems,
    );
    let max_processes = raw.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES);
    if let Err(m) = check_count("max_processes", max_processes.into()) {
        problems.push(Problem::at(loc, "max_processes", m));
    }
    for k in raw.tags.keys() {
        if k.is_empty() || k.contains('=') || k.contains(char::is_whitespace) {
            problems.push(Problem::at(
                loc,
                "tags",
                format!("tag key {k:?} must be non-empty, without '=' or spaces"),
            ));
        }
    }
    let log_dir = match (raw.log_dir, &raw.state_dir) {
        (Some(l), _) => PathBuf::from(l),
        (None, Some(s)) => Path::new(s).join("logs"),
        (None, None) => match default_home(&name) {
            Some(home) => home.join("logs"),
            None => {
                problems.push(Problem::at(
                    loc,
                    "log_dir",
                    "missing, and neither HOME nor XDG_STATE_HOME is set to place it; \
                     set log_dir (or state_dir) to a directory only this user can write",
                ));
                PathBuf::new()
            }
        },
    };
    let mut output_dirs = Vec::new();
    for d in raw.output_dirs.unwrap_or_default() {
        let p = Path::new(&d);
        if !p.is_absolute() {
            problems.push(Problem::at(
                loc,
                "output_dirs",
                format!("{d:?} is not an absolute path"),
            ));
            continue;
        }
        match p.canonicalize() {
            Ok(c) if c.is_dir() => output_dirs.push(c),
            Ok(_) => problems.push(Problem::at(
                loc,
                "output_dirs",
                format!("{d:?} is not a directory"),
            )),
            Err(e) => problems.push(Problem::at(
                loc,
                "output_dirs",
                format!("{d:?} cannot be used ({e}); create the directory first"),
            )),
        }
    }
    AgentConfig {
        name,
        tags: raw.tags,
        heartbeat,
        stats_interval,
        state_dir: raw.state_dir.map(PathBuf::from),
        log_dir,
        output_dirs,
        allow_remote_exec: raw.allow_remote_exec,
        suspect_after,
        failed_after,
        reap_after,
        max_processes,
    }
}

fn validate_nats(raw: RawNats, problems: &mut Vec<Problem>) -> NatsConfig {
    let loc = "[nats]";
    let servers = raw
        .servers
        .unwrap_or_else(|| vec!["nats://127.0.0.1:4222".into()]);
    if servers.is_empty() {
        problems.push(Problem::at(
            loc,
            "servers",
            "is empty; list at least one server such as \"nats://127.0.0.1:4222\"",
        ));
    }
    for s in &servers {
        if s.parse::<async_nats::ServerAddr>().is_err() {
            problems.push(Problem::at(
                loc,
                "servers",
                format!("{s:?} is not a server address like \"nats://host:4222\""),
            ));
        }
    }
    let prefix = raw
        .prefix
        .unwrap_or_else(|| protocol::subjects::DEFAULT_PREFIX.into());
    if let Err(e) = validate_prefix(&prefix) {
        problems.push(Problem::at(
            loc,
            "prefix",
            format!("{prefix:?} is not a valid subject prefix: {e}"),
        ));
    }
    if raw.password.is_some() && raw.user.is_none() {
        problems.push(Problem::at(loc, "password", "given without user"));
    }
    if raw.tls_cert_file.is_some() != raw.tls_key_file.is_some() {
        problems.push(Problem::at(
            loc,
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        ));
    }
    let ping_interval = duration(
        loc,
        "ping_interval",
        raw.ping_interval.as_ref(),
        Duration::from_secs(2),
        problems,
    );
    NatsConfig {
        servers,
        prefix,
        user: raw.user,
        password: raw.password,
        token: raw.token,
        nkey_seed: raw.nkey_seed,
        creds_file: raw.creds_file.map(PathBuf::from),
        tls_ca_file: raw.tls_ca_file.map(PathBuf::from),
        tls_cert_file: raw.tls_cert_file.map(PathBuf::from),
        tls_key_file: raw.tls_key_file.map(PathBuf::from),
        ping_interval,
        system_events_account: raw.system_events_account,
    }
}

/// Parses a signal name ("TERM", "SIGTERM", "term") or number ("15").
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| {
        format!("{s:?} is not a signal; use a name like \"TERM\", \"INT\", \"HUP\" or a number")
    })
}

fn resolve_user(id: &IdSpec) -> Result<u32, String> {
    match id {
        IdSpec::Id(n) => Ok(*n),
        IdSpec::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(format!("no user named {name:?} on this machine")),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        },
    }
}

fn resolve_group(id: &IdSpec) -> Result<u32, String> {
    match id {
        IdSpec::Id(n) => Ok(*n),
        IdSpec::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("no group named {name:?} on this machine")),
            Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
        },
    }
}

impl WatcherConfig {
    /// Validates options for watcher `name`, filling in defaults. File outputs must be in
    /// the directories given to [`set_output_roots`].
    pub fn from_options(name: &str, o: &WatcherOptions) -> Result<WatcherConfig, Vec<Problem>> {
        Self::from_options_in(name, o, &output_roots())
    }

    /// Like [`from_options`](Self::from_options), with file outputs allowed beneath
    /// `roots`.
    fn from_options_in(
        name: &str,
        o: &WatcherOptions,
        roots: &[PathBuf],
    ) -> Result<WatcherConfig, Vec<Problem>> {
        let loc = format!("[watcher.{name}]");
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem {
                location: format!("{loc} {key}"),
                message,
            })
        };
        if let Err(e) = validate_token(name) {
            bad("", format!("{name:?} cannot be a watcher name: {e}"));
        } else if name.starts_with('_') {
            bad(
                "",
                format!("{name:?} cannot be a watcher name: names starting with '_' are reserved"),
            );
        }
        let cmd = o.cmd.clone().unwrap_or_default();
        if cmd.trim().is_empty() {
            bad(
                "cmd",
                "missing; say which program to run, e.g. cmd = \"sleep\"".into(),
            );
        }
        let numprocesses = o.numprocesses.unwrap_or(1);
        let max_retry = o.max_retry.unwrap_or(5);
        let priority = o.priority.unwrap_or(0);
        let log_backups = o.log_backups.unwrap_or(5);
        let log_max_bytes = o.log_max_bytes.unwrap_or(10 * 1024 * 1024);
        for (key, value) in [
            ("numprocesses", i64::from(numprocesses)),
            ("max_retry", i64::from(max_retry)),
            ("priority", i64::from(priority)),
            ("log_backups", i64::from(log_backups)),
            (
                "log_max_bytes",
                i64::try_from(log_max_bytes).unwrap_or(i64::MAX),
            ),
        ] {
            if let Err(m) = check_count(key, value) {
                bad(key, m);
            }
        }
        for (key, value) in [
            ("max_surge", o.max_surge),
            ("max_unavailable", o.max_unavailable),
        ] {
            if let Some(Err(m)) = value.map(|v| check_count(key, i64::from(v))) {
                bad(key, m);
            }
        }
        if o.max_surge == Some(0) && o.max_unavailable == Some(0) {
            bad(
                "max_surge",
                "is 0 and so is max_unavailable, so a rolling restart could replace \
                 nothing; set max_surge = 1 (start the new process first) or \
                 max_unavailable = 1 (stop the old one first)"
                    .into(),
            );
        }
        let stop_signal = match &o.stop_signal {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s).unwrap_or_else(|m| {
                bad("stop_signal", m);
                Signal::SIGTERM
            }),
        };
        let uid_num = o
            .uid
            .as_ref()
            .and_then(|u| resolve_user(u).map_err(|m| bad("uid", m)).ok());
        let gid_num = o
            .gid
            .as_ref()
            .and_then(|g| resolve_group(g).map_err(|m| bad("gid", m)).ok());
        let restart = match (o.restart, o.respawn) {
            (Some(r), _) => r,
            (None, Some(false)) => RestartPolicy::Never,
            (None, _) => RestartPolicy::Always,
        };
        let depends_on = o.depends_on.clone().unwrap_or_default();
        if let Err(m) = deps::check_list(name, &depends_on) {
            bad("depends_on", m);
        }
        let service = o.service.clone().unwrap_or_else(|| name.to_owned());
        if let Err(e) = validate_token(&service) {
            bad(
                "service",
                format!("{service:?} cannot be a service name: {e}"),
            );
        }
        if let Some(h) = &o.health_cmd {
            if let Err(m) = check_probe(&Probe::Exec(h.clone()), name) {
                bad("health_cmd", m.trim_start_matches("exec: ").to_owned());
            }
        }
        if o.ready.is_some() {
            for key in ["health_cmd", "health_timeout"] {
                if o.health_cmd.is_some() && key == "health_cmd"
                    || o.health_timeout.is_some() && key == "health_timeout"
                {
                    bad(
                        key,
                        format!(
                            "set together with ready; {key} is another spelling of ready.{}, \
                             keep one",
                            if key == "health_cmd" {
                                "exec"
                            } else {
                                "timeout"
                            }
                        ),
                    );
                }
            }
        }
        if let Some(dir) = &o.working_dir {
            if !Path::new(dir).is_dir() {
                bad("working_dir", format!("{dir:?} is not a directory"));
            }
        }
        let mut output = |key: &str, v: &Option<String>| {
            Output::parse(v.as_deref().unwrap_or("capture"), roots).unwrap_or_else(|m| {
                bad(key, m);
                Output::Capture
            })
        };
        let stdout = output("stdout", &o.stdout);
        let stderr = output("stderr", &o.stderr);
        let mut dur = |key: &str, v: &Option<String>, default: Duration| match v {
            None => default,
            Some(s) => parse_duration_in_range(key, s).unwrap_or_else(|m| {
                problems.push(Problem {
                    location: format!("{loc} {key}"),
                    message: m,
                });
                default
            }),
        };
        let graceful_timeout = dur(
            "graceful_timeout",
            &o.graceful_timeout,
            Duration::from_secs(30),
        );
        let min_uptime = dur("min_uptime", &o.min_uptime, Duration::from_secs(1));
        let restart_delay = dur(
            "restart_delay",
            &o.restart_delay,
            Duration::from_millis(100),
        );
        let max_restart_delay = dur(
            "max_restart_delay",
            &o.max_restart_delay,
            Duration::from_secs(15),
        );
        let warmup_delay = dur("warmup_delay", &o.warmup_delay, Duration::ZERO);
        let health_timeout = dur("health_timeout", &o.health_timeout, READY_TIMEOUT);
        let mut checks = Vec::new();
        let ready = match (&o.ready, &o.health_cmd) {
            (Some(r), _) => {
                let probe = one_probe(
                    &r.tcp,
                    &r.http,
                    &r.exec,
                    r.notify,
                    "tcp, http, exec or notify",
                )
                .and_then(|p| check_probe(&p, name).map(|()| p));
                let timeout = dur("ready.timeout", &r.timeout, READY_TIMEOUT);
                let interval = dur("ready.interval", &r.interval, READY_INTERVAL);
                match probe {
                    Ok(probe) => Some(ReadyConfig {
                        probe,
                        timeout,
                        interval,
                    }),
                    Err(m) => {
                        checks.push(Problem {
                            location: format!("{loc} ready"),
                            message: m,
                        });
                        None
                    }
                }
            }
            (None, Some(cmd)) => Some(ReadyConfig {
                probe: Probe::Exec(cmd.clone()),
                timeout: health_timeout,
                interval: READY_INTERVAL,
            }),
            (None, None) => None,
        };
        let live = match &o.live {
            None => None,
            Some(l) => {
                let probe = one_probe(&l.tcp, &l.http, &l.exec, None, "tcp, http or exec")
                    .and_then(|p| check_probe(&p, name).map(|()| p));
                let timeout = dur("live.timeout", &l.timeout, LIVE_TIMEOUT);
                let interval = dur("live.interval", &l.interval, LIVE_INTERVAL);
                let failures = l.failures.unwrap_or(LIVE_FAILURES);
                if let Err(m) = check_count("live.failures", failures.into()) {
                    checks.push(Problem {
                        location: format!("{loc} live.failures"),
                        message: m,
                    });
                }
                match probe {
                    Ok(probe) => Some(LiveConfig {
                        probe,
                        timeout,
                        interval,
                        failures,
                    }),
                    Err(m) => {
                        checks.push(Problem {
                            location: format!("{loc} live"),
                            message: m,
                        });
                        None
                    }
                }
            }
        };
        problems.append(&mut checks);
        let sockets = o.sockets.clone().unwrap_or_default();
        let texts = o
            .args
            .iter()
            .flatten()
            .chain(o.env.iter().flat_map(|e| e.values()));
        for m in crate::sockets::check_watcher_list(&sockets, texts.map(String::as_str)) {
            problems.push(Problem::at(&loc, "sockets", m));
        }
        let max_memory = o.max_memory.as_ref().and_then(|v| {
            guards::max_memory(v)
                .map_err(|m| problems.push(Problem::at(&loc, "max_memory", m)))
                .ok()
        });
        let max_memory_samples = o.max_memory_samples.unwrap_or(guards::MAX_MEMORY_SAMPLES);
        if let Err(m) = check_count("max_memory_samples", max_memory_samples.into()) {
            problems.push(Problem::at(&loc, "max_memory_samples", m));
        }
        let rlimits = match o.rlimits.as_ref().map(guards::rlimits) {
            None => Vec::new(),
            Some(Ok(list)) => list,
            Some(Err(list)) => {
                for (key, m) in list {
                    problems.push(Problem::at(&loc, &key, m));
                }
                Vec::new()
            }
        };
        let mut age = |key: &str, v: &Option<String>| {
            v.as_ref().and_then(|s| {
                parse_duration_in_range(key, s)
                    .map_err(|m| problems.push(Problem::at(&loc, key, m)))
                    .ok()
            })
        };
        let max_age = age("max_age", &o.max_age);
        let max_age_variance = age("max_age_variance", &o.max_age_variance).unwrap_or_default();
        if o.max_age_variance.is_some() && o.max_age.is_none() {
            problems.push(Problem::at(
                &loc,
                "max_age_variance",
                "set without max_age; set max_age too, or remove it",
            ));
        }
        let hooks = match o
            .hooks
            .as_ref()
            .map(|h| guards::hooks(h, |t| parse_duration_in_range("hooks.timeout", t)))
        {
            None => BTreeMap::new(),
            Some(Ok(h)) => h,
            Some(Err(list)) => {
                for (key, m) in list {
                    problems.push(Problem::at(&loc, &key, m));
                }
                BTreeMap::new()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(WatcherConfig {
            name: name.to_owned(),
            cmd,
            args: o.args.clone().unwrap_or_default(),
            numprocesses,
            env: o.env.clone().unwrap_or_default(),
            copy_env: o.copy_env.unwrap_or(false),
            working_dir: o.working_dir.as_ref().map(PathBuf::from),
            uid: o.uid.clone(),
            gid: o.gid.clone(),
            uid_num,
            gid_num,
            stop_signal,
            graceful_timeout,
            restart,
            exit_codes: o.exit_codes.clone().unwrap_or_else(|| vec![0]),
            max_retry,
            min_uptime,
            restart_delay,
            max_restart_delay: max_restart_delay.max(restart_delay),
            warmup_delay,
            autostart: o.autostart.unwrap_or(true),
            priority,
            depends_on,
            stdout,
            stderr,
            service,
            ready,
            live,
            log_max_bytes,
            log_backups,
            sockets,
            max_surge: o.max_surge,
            max_unavailable: o.max_unavailable,
            max_memory,
            max_memory_samples,
            rlimits,
            max_age,
            max_age_variance,
            hooks,
        })
    }

    /// How a rolling restart goes: with surge when `max_surge` is 1 or more (by default
    /// when the watcher has sockets), otherwise stopping first; at most `numprocesses`
    /// (and at least 1) processes at a time.
    pub fn rollout(&self) -> Rollout {
        let shared = !self.sockets.is_empty();
        let surge = self.max_surge.unwrap_or(match self.max_unavailable {
            Some(0) => 1,
            Some(_) => 0,
            None => u32::from(shared),
        });
        let at_most = |n: u32| n.clamp(1, self.numprocesses.max(1));
        if surge > 0 {
            Rollout::Surge(at_most(surge))
        } else {
            Rollout::Unavailable(at_most(self.max_unavailable.unwrap_or(1)))
        }
    }

    /// Every option with its value in force, as `options` shows them.
    pub fn to_options(&self) -> WatcherOptions {
        WatcherOptions {
            cmd: Some(self.cmd.clone()),
            args: Some(self.args.clone()),
            numprocesses: Some(self.numprocesses),
            env: Some(self.env.clone()),
            copy_env: Some(self.copy_env),
            working_dir: self.working_dir.as_ref().map(|p| p.display().to_string()),
            uid: self.uid.clone(),
            gid: self.gid.clone(),
            stop_signal: Some(
                self.stop_signal
                    .as_str()
                    .trim_start_matches("SIG")
                    .to_owned(),
            ),
            graceful_timeout: Some(format_duration(self.graceful_timeout)),
            respawn: Some(self.restart != RestartPolicy::Never),
            restart: Some(self.restart),
            exit_codes: Some(self.exit_codes.clone()),
            max_retry: Some(self.max_retry),
            min_uptime: Some(format_duration(self.min_uptime)),
            restart_delay: Some(format_duration(self.restart_delay)),
            max_restart_delay: Some(format_duration(self.max_restart_delay)),
            warmup_delay: Some(format_duration(self.warmup_delay)),
            autostart: Some(self.autostart),
            priority: Some(self.priority),
            depends_on: (!self.depends_on.is_empty()).then(|| self.depends_on.clone()),
            stdout: Some(self.stdout.as_option()),
            stderr: Some(self.stderr.as_option()),
            service: Some(self.service.clone()),
            health_cmd: None,
            health_timeout: None,
            ready: self.ready.as_ref().map(ReadyConfig::to_options),
            live: self.live.as_ref().map(LiveConfig::to_options),
            log_max_bytes: Some(self.log_max_bytes),
            log_backups: Some(self.log_backups),
            sockets: (!self.sockets.is_empty()).then(|| self.sockets.clone()),
            max_surge: self.max_surge,
            max_unavailable: self.max_unavailable,
            max_memory: self
                .max_memory
                .map(|n| protocol::options::ByteSize::Text(guards::format_size(n))),
            max_memory_samples: Some(self.max_memory_samples),
            rlimits: (!self.rlimits.is_empty()).then(|| guards::rlimits_options(&self.rlimits)),
            max_age: self.max_age.map(format_duration),
            max_age_variance: self.max_age.map(|_| format_duration(self.max_age_variance)),
            hooks: guards::hooks_options(&self.hooks),
        }
    }

    /// True when `other` runs a different program or environment, so that running
    /// processes must be restarted to take it.
    pub fn spawn_differs(&self, other: &WatcherConfig) -> bool {
        self.cmd != other.cmd
            || self.args != other.args
            || self.env != other.env
            || self.copy_env != other.copy_env
            || self.working_dir != other.working_dir
            || self.uid_num != other.uid_num
            || self.gid_num != other.gid_num
            || self.stdout != other.stdout
            || self.stderr != other.stderr
            || self.sockets != other.sockets
            || self.rlimits != other.rlimits
    }
}

impl ReadyConfig {
    fn to_options(&self) -> ReadyCheck {
        let mut r = ReadyCheck {
            timeout: Some(format_duration(self.timeout)),
            interval: Some(format_duration(self.interval)),
            ..Default::default()
        };
        match &self.probe {
            Probe::Tcp(t) => r.tcp = Some(t.clone()),
            Probe::Http(u) => r.http = Some(u.clone()),
            Probe::Exec(a) => r.exec = Some(a.clone()),
            Probe::Notify => r.notify = Some(true),
        }
        r
    }
}

impl LiveConfig {
    fn to_options(&self) -> LiveCheck {
        let mut l = LiveCheck {
            timeout: Some(format_duration(self.timeout)),
            interval: Some(format_duration(self.interval)),
            failures: Some(self.failures),
            ..Default::default()
        };
        match &self.probe {
            Probe::Tcp(t) => l.tcp = Some(t.clone()),
            Probe::Http(u) => l.http = Some(u.clone()),
            Probe::Exec(a) => l.exec = Some(a.clone()),
            // Refused when the config is read.
            Probe::Notify => {}
        }
        l
    }
}

/// Expands `$(wid)`, `$(name)` (and Circus's `$(circus.wid)`) in `s`.
pub fn expand(s: &str, name: &str, wid: u32) -> String {
    if !s.contains("$(") {
        return s.to_owned();
    }
    let wid = wid.to_string();
    s.replace("$(circus.wid)", &wid)
        .replace("$(wid)", &wid)
        .replace("$(name)", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ValidatedConfig, ConfigError> {
        parse(Path::new("node.toml"), s)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str(
            r#"
            [agent]
            name = "first"
            [watcher.dummy]
            cmd = "sleep"
            args = ["1000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.agent.name, "first");
        assert_eq!(c.agent.heartbeat, Duration::from_secs(1));
        assert_eq!(c.nats.prefix, "cluster");
        let w = &c.watchers["dummy"];
        assert_eq!(w.numprocesses, 1);
        assert_eq!(w.stop_signal, Signal::SIGTERM);
        assert_eq!(w.graceful_timeout, Duration::from_secs(30));
        assert_eq!(w.restart, RestartPolicy::Always);
        assert_eq!(w.max_retry, 5);
        assert_eq!(w.service, "dummy");
        assert_eq!(w.stdout, Output::Capture);
    }

    #[test]
    fn reports_every_problem_with_its_key() {
        let err = parse_str(
            r#"
            [agent]
            name = "all"
            heartbeat = "soon"
            [nats]
            servers = []
            [watcher.web]
            graceful_timeout = "abc"
            stop_signal = "NOPE"
            max_retry = -4
            "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "invalid config node.toml",
            "[agent] name: \"all\" cannot be a node name: it is reserved",
            "[agent] heartbeat: \"soon\" is not a duration",
            "[nats] servers: is empty",
            "[watcher.web] cmd: missing",
            "[watcher.web] graceful_timeout: \"abc\" is not a duration",
            "[watcher.web] stop_signal: \"NOPE\" is not a signal",
            "[watcher.web] max_retry: -4 is out of range; use -1 to 1000000",
        ] {
            assert!(err.contains(needle), "{err}\n--- lacks: {needle}");
        }
    }

    #[test]
    fn max_surge_and_max_unavailable_pick_the_rollout() {
        let opts =
            |surge: Option<u32>, unavailable: Option<u32>, n: u32, sockets: bool| WatcherOptions {
                cmd: Some("x".into()),
                numprocesses: Some(n),
                max_surge: surge,
                max_unavailable: unavailable,
                sockets: sockets.then(|| vec!["web".into()]),
                ..Default::default()
            };
        let cases = [
            // (max_surge, max_unavailable, numprocesses, has sockets, rollout)
            (None, None, 2, true, Rollout::Surge(1)),
            (None, None, 2, false, Rollout::Unavailable(1)),
            (Some(1), None, 2, false, Rollout::Surge(1)),
            (None, Some(0), 2, false, Rollout::Surge(1)),
            (None, Some(2), 3, true, Rollout::Unavailable(2)),
            (Some(0), None, 2, true, Rollout::Unavailable(1)),
            (Some(5), Some(0), 2, true, Rollout::Surge(2)),
            (Some(1), Some(1), 2, false, Rollout::Surge(1)),
            (Some(0), Some(9), 0, false, Rollout::Unavailable(1)),
        ];
        for (surge, unavailable, n, sockets, want) in cases {
            let cfg =
                WatcherConfig::from_options("w", &opts(surge, unavailable, n, sockets)).unwrap();
            assert_eq!(
                cfg.rollout(),
                want,
                "{surge:?} {unavailable:?} {n} {sockets}"
            );
            assert_eq!(cfg.to_options().max_surge, surge);
        }
        let err = WatcherConfig::from_options("w", &opts(Some(0), Some(0), 2, false)).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .contains("max_surge: is 0 and so is max_unavailable"),
            "{}",
            err[0]
        );
        let err =
            WatcherConfig::from_options("w", &opts(Some(200_000), None, 2, false)).unwrap_err();
        assert!(
            err[0]
                .to_string()
                .contains("max_surge: 200000 is out of range; use 0 to 100000"),
            "{}",
            err[0]
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_key() {
        let err = parse_str("[agent]\nname = \"a\"\n[watcher.w]\ncmd = \"x\"\nnumproceses = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("numproceses"), "{err}");
        let err =
            parse_str("[agent]\nname = \"a\"\n[watcher.w]\ncmd = \"x\"\nnumprocesses = \"2\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("numprocesses"), "{err}");
        let err = parse_str("[watcher.w]\ncmd = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[agent]: missing"), "{err}");
    }

    #[test]
    fn every_duration_count_and_size_has_a_range() {
        let w = |extra: &str| {
            parse_str(&format!(
                "[agent]\nname = \"a\"\n[watcher.w]\ncmd = \"x\"\n{extra}\n"
            ))
        };
        let cases = [
            (
                "graceful_timeout = \"300000000000y\"",
                "[watcher.w] graceful_timeout: 300000000000y is out of range; use 0s to 1h",
            ),
            (
                "min_uptime = \"2h\"",
                "min_uptime: 2h is out of range; use 0s to 1h",
            ),
            (
                "restart_delay = \"2h\"",
                "restart_delay: 2h is out of range",
            ),
            (
                "max_restart_delay = \"2d\"",
                "max_restart_delay: 2d is out of range; use 0s to 1day",
            ),
            ("warmup_delay = \"2h\"", "warmup_delay: 2h is out of range"),
            (
                "health_timeout = \"2h\"",
                "health_timeout: 2h is out of range",
            ),
            (
                "numprocesses = 100001",
                "numprocesses: 100001 is out of range; use 0 to 100000",
            ),
            (
                "log_max_bytes = 10",
                "log_max_bytes: 10 is out of range; use 1024 to",
            ),
            (
                "log_backups = 1001",
                "log_backups: 1001 is out of range; use 0 to 1000",
            ),
            (
                "max_retry = -2",
                "max_retry: -2 is out of range; use -1 to 1000000",
            ),
            (
                "priority = -2147483648",
                "priority: -2147483648 is out of range",
            ),
        ];
        for (line, needle) in cases {
            let err = w(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
        assert!(w("graceful_timeout = \"1h\"\nnumprocesses = 0\nmax_retry = -1").is_ok());
        let agent = |extra: &str| parse_str(&format!("[agent]\nname = \"a\"\n{extra}\n"));
        for (line, needle) in [
            (
                "heartbeat = \"10ms\"",
                "[agent] heartbeat: 10ms is out of range; use 50ms to 1h",
            ),
            (
                "stats_interval = \"2h\"",
                "stats_interval: 2h is out of range",
            ),
            (
                "suspect_after = \"2d\"",
                "suspect_after: 2d is out of range",
            ),
            (
                "failed_after = \"1ms\"",
                "failed_after: 1ms is out of range",
            ),
            (
                "reap_after = \"31d\"",
                "reap_after: 31d is out of range; use 100ms to 30days",
            ),
            (
                "max_processes = 0",
                "max_processes: 0 is out of range; use 1 to 100000",
            ),
        ] {
            let err = agent(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
        let err = parse_str("[agent]\nname = \"a\"\n[nats]\nping_interval = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[nats] ping_interval: 1h is out of range"),
            "{err}"
        );
        assert_eq!(
            agent("stats_interval = \"0s\"")
                .unwrap()
                .agent
                .stats_interval,
            Duration::ZERO
        );
        assert_eq!(
            agent("").unwrap().agent.max_processes,
            DEFAULT_MAX_PROCESSES
        );
    }

    #[test]
    fn the_watchers_together_stay_within_max_processes() {
        let err = parse_str(
            "[agent]\nname = \"a\"\nmax_processes = 5\n[watcher.w]\ncmd = \"x\"\nnumprocesses = 3\n[watcher.v]\ncmd = \"x\"\nnumprocesses = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[agent] max_processes: the watchers ask for 6 processes together, more than max_processes = 5"), "{err}");
    }

    #[test]
    fn ready_and_live_checks_parse_with_defaults_and_ranges() {
        let w = |extra: &str| {
            parse_str(&format!(
                "[agent]\nname = \"a\"\n[watcher.w]\ncmd = \"x\"\n{extra}\n"
            ))
            .map(|c| c.watchers["w"].clone())
        };
        let c = w(
            "ready = { tcp = \"127.0.0.1:80$(wid)\" }\nlive = { http = \"http://[::1]:8080/h\" }",
        )
        .unwrap();
        assert_eq!(
            c.ready,
            Some(ReadyConfig {
                probe: Probe::Tcp("127.0.0.1:80$(wid)".into()),
                timeout: READY_TIMEOUT,
                interval: READY_INTERVAL,
            })
        );
        assert_eq!(
            c.live,
            Some(LiveConfig {
                probe: Probe::Http("http://[::1]:8080/h".into()),
                timeout: LIVE_TIMEOUT,
                interval: LIVE_INTERVAL,
                failures: LIVE_FAILURES,
            })
        );
        let again = WatcherConfig::from_options("w", &c.to_options()).unwrap();
        assert_eq!(again, c);
        let c = w("ready = { notify = true, timeout = \"5s\", interval = \"50ms\" }").unwrap();
        assert_eq!(c.ready.unwrap().probe, Probe::Notify);
        // health_cmd is ready.exec, health_timeout its timeout; options spell it `ready`.
        let c = w("health_cmd = [\"true\"]\nhealth_timeout = \"2s\"").unwrap();
        let r = c.ready.clone().unwrap();
        assert_eq!(r.probe, Probe::Exec(vec!["true".into()]));
        assert_eq!(r.timeout, Duration::from_secs(2));
        let o = c.to_options();
        assert_eq!(o.health_cmd, None);
        assert_eq!(o.ready.unwrap().exec, Some(vec!["true".into()]));
        // health_timeout alone is accepted, as older configs and state files have it.
        assert_eq!(w("health_timeout = \"30s\"").unwrap().ready, None);
        for (line, needle) in [
            (
                "ready = { tcp = \"h:1\" }\nhealth_cmd = [\"true\"]",
                "[watcher.w] health_cmd: set together with ready; health_cmd is another spelling of ready.exec",
            ),
            (
                "ready = { tcp = \"h:1\" }\nhealth_timeout = \"1s\"",
                "[watcher.w] health_timeout: set together with ready",
            ),
            ("ready = {}", "[watcher.w] ready: checks nothing; give one of tcp, http, exec or notify"),
            ("ready = { notify = false }", "[watcher.w] ready: checks nothing"),
            (
                "ready = { tcp = \"h:1\", http = \"http://h/\" }",
                "[watcher.w] ready: has tcp and http; give exactly one",
            ),
            ("live = { notify = true }", "unknown field `notify`"),
            ("ready = { tcp = \"h:1\", failures = 2 }", "unknown field `failures`"),
            ("ready = { tcp = \"nohost\" }", "[watcher.w] ready: tcp: \"nohost\" has no port"),
            ("ready = { tcp = \"h:70000\" }", "is not a port (1 to 65535)"),
            ("ready = { tcp = \"::1:80\" }", "an IPv6 host goes in brackets"),
            ("ready = { http = \"https://h/\" }", "https is not supported"),
            ("ready = { http = \"ftp://h/\" }", "does not start with http://"),
            ("ready = { http = \"http://u@h/\" }", "user info is not supported"),
            ("ready = { http = \"http://h/a b\" }", "no spaces or control characters"),
            ("ready = { http = \"http://h/\\r\\nX: y\" }", "no spaces or control characters"),
            ("ready = { exec = [] }", "[watcher.w] ready: exec: is empty"),
            ("health_cmd = []", "[watcher.w] health_cmd: is empty"),
            ("ready = { tcp = \"h:1\", timeout = \"2h\" }", "[watcher.w] ready.timeout: 2h is out of range; use 0s to 1h"),
            ("ready = { tcp = \"h:1\", interval = \"10ms\" }", "[watcher.w] ready.interval: 10ms is out of range; use 50ms to 1h"),
            ("live = { tcp = \"h:1\", timeout = \"11m\" }", "[watcher.w] live.timeout: 11m is out of range; use 100ms to 10m"),
            ("live = { tcp = \"h:1\", interval = \"0s\" }", "[watcher.w] live.interval: 0s is out of range; use 100ms to 1h"),
            ("live = { tcp = \"h:1\", failures = 0 }", "[watcher.w] live.failures: 0 is out of range; use 1 to 1000"),
            ("live = { tcp = \"h:1\", failures = 1001 }", "live.failures: 1001 is out of range"),
        ] {
            let err = w(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
        let long = format!("ready = {{ tcp = \"{}:1\" }}", "h".repeat(3000));
        assert!(w(&long)
            .unwrap_err()
            .to_string()
            .contains("longer than 2048 bytes"));
    }

    #[test]
    fn http_urls_and_tcp_targets_split() {
        let t = parse_http_url("http://127.0.0.1:8080/health?x=1#frag").unwrap();
        assert_eq!(t.connect, "127.0.0.1:8080");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path, "/health?x=1");
        let t = parse_http_url("http://example.com").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.as_str()),
            ("example.com:80", "/")
        );
        let t = parse_http_url("http://[::1]/x").unwrap();
        assert_eq!(t.connect, "[::1]:80");
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", 80)));
        assert_eq!(split_host_port("localhost:5"), Ok(("localhost", 5)));
        assert!(split_host_port(":5").is_err());
        assert!(split_host_port("h:0").is_err());
    }

    #[test]
    fn sockets_are_validated_and_watchers_may_list_only_theirs() {
        let cfg = parse_str(
            r#"
[agent]
name = "n"
[socket.web]
host = "::"
port = 8080
backlog = 1024
reuseport = true
[socket.local]
path = "/run/x.sock"
mode = "0660"
[watcher.w]
cmd = "srv"
args = ["--fd", "$(sockets.web)"]
env = { LOCAL_FD = "$(circus.sockets.local)" }
sockets = ["web", "local"]
"#,
        )
        .unwrap();
        assert_eq!(cfg.sockets.len(), 2);
        assert_eq!(cfg.sockets["web"].backlog, 1024);
        let w = &cfg.watchers["w"];
        assert_eq!(w.sockets, ["web", "local"]);
        assert_eq!(
            &WatcherConfig::from_options("w", &w.to_options()).unwrap(),
            w
        );
        let mut other = w.clone();
        other.sockets.reverse();
        assert!(w.spawn_differs(&other), "another order is another fd each");
        // Without sockets, options show none (older saved states stay equal).
        let plain = parse_str("[agent]\nname = \"n\"\n[watcher.p]\ncmd = \"x\"\n").unwrap();
        assert_eq!(plain.watchers["p"].to_options().sockets, None);

        let err = parse_str(
            r#"
[agent]
name = "n"
[socket.web]
port = 80
[socket.bad]
host = "example.com"
port = 70000
[socket.both]
path = "/a.sock"
port = 1
[socket.small]
port = 1
backlog = 0
[socket.rel]
path = "x.sock"
[socket."has space"]
port = 1
[watcher.w1]
cmd = "x"
sockets = ["nope"]
[watcher.w2]
cmd = "x"
args = ["$(sockets.other)"]
sockets = ["web", "web"]
"#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "[socket.bad] host: \"example.com\" is not an IP address",
            "[socket.bad] port: 70000 is out of range; use 0 to 65535",
            "[socket.both]: has both path and host/port",
            "[socket.small] backlog: 0 is out of range; use 1 to 65535",
            "[socket.rel] path: \"x.sock\" is not an absolute path",
            "cannot be a socket name",
            "[watcher.w1] sockets: no socket 'nope'; define it in a [socket.nope] table",
            "[watcher.w2] sockets: lists socket 'web' twice",
            "[watcher.w2] sockets: $(sockets.other) is used but socket 'other' is not in",
        ] {
            assert!(err.contains(needle), "{needle:?} not in:\n{err}");
        }
    }

    #[test]
    fn expands_wid_and_name() {
        assert_eq!(expand("--port=80$(wid)", "web", 3), "--port=803");
        assert_eq!(expand("$(name)-$(circus.wid)", "web", 2), "web-2");
        assert_eq!(expand("plain", "web", 1), "plain");
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn file_outputs_stay_under_the_log_dir_or_output_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let logs = base.join("logs");
        let extra = base.join("extra");
        std::fs::create_dir_all(&extra).unwrap();
        let config = |out: &str| {
            parse_str(&format!(
                "[agent]\nname = \"a\"\nlog_dir = \"{}\"\noutput_dirs = [\"{}\"]\n\
                 [watcher.w]\ncmd = \"x\"\nstderr = \"{out}\"\n",
                logs.display(),
                extra.display()
            ))
        };
        // The log dir need not exist yet; a file in it or in an output dir is fine.
        let c = config(&format!("{}/w.err", logs.display())).unwrap();
        assert_eq!(c.watchers["w"].stderr, Output::File(logs.join("w.err")));
        assert_eq!(c.agent.output_dirs, vec![extra.clone()]);
        let c = config(&format!("{}/./w.err", extra.display())).unwrap();
        assert_eq!(c.watchers["w"].stderr, Output::File(extra.join("w.err")));
        // A symbolic link to a dir elsewhere is resolved, then refused.
        std::os::unix::fs::symlink("/etc", extra.join("etc")).unwrap();
        for (out, want) in [
            ("/etc/ld.so.preload", "is outside the directories"),
            (&format!("{}/etc/cron.d/x", extra.display()), "is outside"),
            (&format!("{}/../x", extra.display()), "holds '..'"),
            ("relative.log", "is not an absolute path"),
            (&extra.display().to_string(), "is outside"),
        ] {
            let e = config(out).unwrap_err().to_string();
            assert!(
                e.contains("[watcher.w] stderr: ") && e.contains(want),
                "{out}: {e}"
            );
        }
        let e = parse_str("[agent]\nname = \"a\"\noutput_dirs = [\"rel\", \"/nonexistent/dir\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[agent] output_dirs: \"rel\" is not an absolute path"),
            "{e}"
        );
        assert!(e.contains("\"/nonexistent/dir\" cannot be used"), "{e}");
    }

    #[test]
    fn runtime_file_outputs_need_known_roots() {
        let o = |out: &str| WatcherOptions {
            cmd: Some("x".into()),
            stdout: Some(out.into()),
            ..Default::default()
        };
        let e = WatcherConfig::from_options_in("w", &o("/var/log/x.log"), &[]).unwrap_err();
        assert!(e[0].message.contains("(none)"), "{}", e[0]);
        let ok = WatcherConfig::from_options_in("w", &o("discard"), &[]).unwrap();
        assert_eq!(ok.stdout, Output::Discard);
        assert!(is_file_output(&serde_json::json!("/tmp/x")));
        assert!(!is_file_output(&serde_json::json!("capture")));
        assert!(!is_file_output(&serde_json::json!("/dev/null")));
        assert!(!is_file_output(&serde_json::json!(3)));
    }

    #[test]
    fn default_dirs_are_private() {
        let c = parse_str("[agent]\nname = \"n1\"\n").unwrap();
        assert!(!c.agent.log_dir.starts_with(std::env::temp_dir()));
        assert!(
            c.agent.log_dir.ends_with("nodeagent/n1/logs"),
            "{:?}",
            c.agent.log_dir
        );
        if nix::unistd::geteuid().is_root() {
            assert_eq!(c.agent.log_dir, Path::new("/var/lib/nodeagent/n1/logs"));
        }
    }

    #[test]
    fn options_round_trip() {
        let c = parse_str(
            "[agent]\nname = \"a\"\n[watcher.w]\ncmd = \"x\"\nrestart = \"on-failure\"\nexit_codes = [0, 3]\nmin_uptime = \"500ms\"\n",
        )
        .unwrap();
        let w = &c.watchers["w"];
        let again = WatcherConfig::from_options("w", &w.to_options()).unwrap();
        assert_eq!(&again, w);
    }

    /// Every shipped example config parses, the secure ones (which name credentials)
    /// among them, so that they never rot.
    #[test]
    fn every_example_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut names = vec![];
        for entry in std::fs::read_dir(&dir).expect("the examples dir") {
            let path = entry.expect("an examples entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("an example config");
            let cfg = parse(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!cfg.watchers.is_empty(), "{}: no watcher", path.display());
            names.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        for want in ["first.toml", "first-secure.toml"] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} not found: {names:?}"
            );
        }
    }
}
