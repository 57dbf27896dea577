//! The `[agent]` table: who the node is (name, tags), its timings, its dirs and its
//! limits, validated into an [`AgentConfig`]; and where an agent keeps its files when
//! the config names no dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::subjects::validate_node_name;
use serde::Deserialize;

use super::output::resolve_lenient;
use super::ranges::parse_duration;
use super::{Problem, Problems};

/// The default of `[agent] keepers`: how many agents keep the member table.
pub const DEFAULT_KEEPERS: u32 = 3;

/// The default of `[agent] max_processes`: processes of all watchers together.
pub const DEFAULT_MAX_PROCESSES: u32 = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
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
    keepers: Option<u32>,
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
    /// How many agents of the cluster keep the full member table and answer
    /// `members` (chosen among themselves, see `crate::keepers`).
    pub keepers: u32,
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

/// Validates the `[agent]` table, filling in defaults; its problems go to `problems`.
pub(super) fn validate(raw: RawAgent, problems: &mut Vec<Problem>) -> AgentConfig {
    let mut t = Problems::new("[agent]");
    let name = name(raw.name, &mut t);
    let heartbeat = t.duration("heartbeat", raw.heartbeat.as_ref(), Duration::from_secs(1));
    // 0s turns the stats stream off; any other value has a range.
    let stats_interval = match raw.stats_interval.as_deref().map(parse_duration) {
        Some(Ok(d)) if d.is_zero() => Duration::ZERO,
        _ => t.duration(
            "stats_interval",
            raw.stats_interval.as_ref(),
            Duration::from_secs(1),
        ),
    };
    let suspect_after = raw
        .suspect_after
        .as_ref()
        .map(|s| t.duration("suspect_after", Some(s), Duration::ZERO));
    let failed_after = t.duration(
        "failed_after",
        raw.failed_after.as_ref(),
        Duration::from_secs(10),
    );
    let reap_after = t.duration(
        "reap_after",
        raw.reap_after.as_ref(),
        Duration::from_secs(24 * 3600),
    );
    let max_processes = raw.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES);
    t.count("max_processes", max_processes.into());
    let keepers = raw.keepers.unwrap_or(DEFAULT_KEEPERS);
    t.count("keepers", keepers.into());
    check_tags(&raw.tags, &mut t);
    let log_dir = log_dir(raw.log_dir, raw.state_dir.as_deref(), &name, &mut t);
    let output_dirs = output_dirs(raw.output_dirs.unwrap_or_default(), &mut t);
    problems.append(&mut t.list);
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
        keepers,
    }
}

/// `name`: required, and a valid node name.
fn name(raw: Option<String>, t: &mut Problems) -> String {
    match raw {
        None => {
            t.at("name", "missing; every node needs a unique name");
            String::new()
        }
        Some(n) => {
            if let Err(e) = validate_node_name(&n) {
                t.at("name", format!("{n:?} cannot be a node name: {e}"));
            }
            n
        }
    }
}

/// `tags`: each key non-empty, without '=' or spaces.
fn check_tags(tags: &BTreeMap<String, String>, t: &mut Problems) {
    for k in tags.keys() {
        if k.is_empty() || k.contains('=') || k.contains(char::is_whitespace) {
            t.at(
                "tags",
                format!("tag key {k:?} must be non-empty, without '=' or spaces"),
            );
        }
    }
}

/// `log_dir`: as given, else `logs` under `state_dir`, else under [`default_home`].
fn log_dir(
    log_dir: Option<String>,
    state_dir: Option<&str>,
    name: &str,
    t: &mut Problems,
) -> PathBuf {
    match (log_dir, state_dir) {
        (Some(l), _) => PathBuf::from(l),
        (None, Some(s)) => Path::new(s).join("logs"),
        (None, None) => match default_home(name) {
            Some(home) => home.join("logs"),
            None => {
                t.at(
                    "log_dir",
                    "missing, and neither HOME nor XDG_STATE_HOME is set to place it; \
                     set log_dir (or state_dir) to a directory only this user can write",
                );
                PathBuf::new()
            }
        },
    }
}

/// `output_dirs`: absolute paths of existing directories, resolved.
fn output_dirs(dirs: Vec<String>, t: &mut Problems) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let p = Path::new(&d);
        if !p.is_absolute() {
            t.at("output_dirs", format!("{d:?} is not an absolute path"));
            continue;
        }
        match p.canonicalize() {
            Ok(c) if c.is_dir() => out.push(c),
            Ok(_) => t.at("output_dirs", format!("{d:?} is not a directory")),
            Err(e) => t.at(
                "output_dirs",
                format!("{d:?} cannot be used ({e}); create the directory first"),
            ),
        }
    }
    out
}
