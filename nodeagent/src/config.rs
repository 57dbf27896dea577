//! Reads a node's TOML config and validates it into a [`ValidatedConfig`], reporting
//! every problem at once with the file, table and key. Nothing else reads raw TOML;
//! nothing here starts processes or touches the network.
//!
//! Each family of keys is read by a submodule into its typed part, with its problems:
//! `agent` (`[agent]`), `nats` (`[nats]`), `socket` (`[socket.NAME]` and a watcher's
//! `sockets`), and for a watcher `command` (what runs, as whom, with which
//! environment), `lifecycle` (start, restart, stop and rollout), `output` (stdout,
//! stderr and their rotation), `checks` (`ready`, `live`), `guards` (memory, rlimits,
//! age, hooks) and `deps` (`depends_on`); `ranges` holds the range of every duration
//! and count. This file puts the parts together.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::subjects::validate_token;
use protocol::{IdSpec, RestartPolicy, WatcherOptions};
use serde::Deserialize;

use crate::sockets::{SocketOptions, SocketSpec};

mod agent;
mod checks;
mod command;
pub mod deps;
pub mod guards;
mod lifecycle;
mod nats;
mod output;
mod ranges;
mod socket;

pub use agent::{default_home, AgentConfig, DEFAULT_KEEPERS, DEFAULT_MAX_PROCESSES};
pub use checks::{
    parse_http_url, split_host_port, HttpTarget, LiveConfig, Probe, ReadyConfig, LIVE_FAILURES,
    LIVE_INTERVAL, LIVE_TIMEOUT, READY_INTERVAL, READY_TIMEOUT,
};
pub use command::Command;
pub use lifecycle::{parse_signal, Lifecycle, Rollout};
pub use nats::NatsConfig;
pub use output::{is_file_output, set_output_roots, Output};
pub use ranges::{
    check_count, format_duration, parse_duration, parse_duration_in_range, Range, AGENT_DURATIONS,
    COUNTS, MAX_PROCESSES, WATCHER_DURATIONS,
};

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

/// The problems of one table (`[agent]`, `[watcher.web]`), each at its key, gathered
/// while its keys are read.
#[derive(Debug)]
struct Problems {
    table: String,
    list: Vec<Problem>,
}

impl Problems {
    fn new(table: impl Into<String>) -> Problems {
        Problems {
            table: table.into(),
            list: Vec::new(),
        }
    }

    /// A problem with `key`.
    fn at(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(Problem::at(&self.table, key, message));
    }

    /// Problems given as (key, message).
    fn each(&mut self, list: Vec<(String, String)>) {
        for (key, message) in list {
            self.at(&key, message);
        }
    }

    /// Checks a count or size against its range in [`COUNTS`].
    fn count(&mut self, key: &str, value: i64) {
        if let Err(m) = check_count(key, value) {
            self.at(key, m);
        }
    }

    /// A duration in its range, `default` when it is not given or is wrong.
    fn duration(&mut self, key: &str, value: Option<&String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => parse_duration_in_range(key, s).unwrap_or_else(|m| {
                self.at(key, m);
                default
            }),
        }
    }

    /// A duration in its range, when it is given and right.
    fn maybe_duration(&mut self, key: &str, value: Option<&String>) -> Option<Duration> {
        value.and_then(|s| {
            parse_duration_in_range(key, s)
                .map_err(|m| self.at(key, m))
                .ok()
        })
    }
}

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
    agent: Option<agent::RawAgent>,
    #[serde(default)]
    nats: nats::RawNats,
    #[serde(default)]
    watcher: BTreeMap<String, WatcherOptions>,
    #[serde(default)]
    socket: BTreeMap<String, SocketOptions>,
}

/// A watcher, validated, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherConfig {
    pub name: String,
    /// What runs, how many times, with which environment and as whom.
    pub command: Command,
    /// `uid` as written (a number or a name); its id is `command.uid_num`.
    pub uid: Option<IdSpec>,
    /// `gid` as written (a number or a name); its id is `command.gid_num`.
    pub gid: Option<IdSpec>,
    /// When processes start, restart and stop, and how a rolling restart goes.
    pub lifecycle: Lifecycle,
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
    let agent = agent::validate(raw_agent, &mut problems);
    let nats = nats::validate(raw.nats, &mut problems);
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
    let sockets = socket::validate(&raw.socket, &watchers, &mut problems);
    let total = watchers
        .values()
        .fold(0u64, |n, w| n.saturating_add(w.command.numprocesses.into()));
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

impl WatcherConfig {
    /// Validates options for watcher `name`, filling in defaults. File outputs must be in
    /// the directories given to [`set_output_roots`].
    pub fn from_options(name: &str, o: &WatcherOptions) -> Result<WatcherConfig, Vec<Problem>> {
        Self::from_options_in(name, o, &output::output_roots())
    }

    /// Like [`from_options`](Self::from_options), with file outputs allowed beneath
    /// `roots`.
    fn from_options_in(
        name: &str,
        o: &WatcherOptions,
        roots: &[PathBuf],
    ) -> Result<WatcherConfig, Vec<Problem>> {
        let mut t = Problems::new(format!("[watcher.{name}]"));
        check_name(name, &mut t);
        let command = command::from_options(o, &mut t);
        let lifecycle = lifecycle::from_options(name, o, &mut t);
        let service = o.service.clone().unwrap_or_else(|| name.to_owned());
        if let Err(e) = validate_token(&service) {
            t.at(
                "service",
                format!("{service:?} cannot be a service name: {e}"),
            );
        }
        let out = output::from_options(o, roots, &mut t);
        let checks = checks::from_options(name, o, &mut t);
        let sockets = socket::from_options(o, &mut t);
        let g = guards::from_options(o, &mut t);
        if !t.list.is_empty() {
            return Err(t.list);
        }
        Ok(WatcherConfig {
            name: name.to_owned(),
            command,
            uid: o.uid.clone(),
            gid: o.gid.clone(),
            lifecycle,
            stdout: out.stdout,
            stderr: out.stderr,
            service,
            ready: checks.ready,
            live: checks.live,
            log_max_bytes: out.log_max_bytes,
            log_backups: out.log_backups,
            sockets,
            max_memory: g.max_memory,
            max_memory_samples: g.max_memory_samples,
            rlimits: g.rlimits,
            max_age: g.max_age,
            max_age_variance: g.max_age_variance,
            hooks: g.hooks,
        })
    }

    /// Every option with its value in force, as `options` shows them.
    pub fn to_options(&self) -> WatcherOptions {
        let (c, l) = (&self.command, &self.lifecycle);
        WatcherOptions {
            cmd: Some(c.cmd.clone()),
            args: Some(c.args.clone()),
            numprocesses: Some(c.numprocesses),
            env: Some(c.env.clone()),
            copy_env: Some(c.copy_env),
            working_dir: c.working_dir.as_ref().map(|p| p.display().to_string()),
            uid: self.uid.clone(),
            gid: self.gid.clone(),
            stop_signal: Some(l.stop_signal.as_str().trim_start_matches("SIG").to_owned()),
            graceful_timeout: Some(format_duration(l.graceful_timeout)),
            respawn: Some(l.restart != RestartPolicy::Never),
            restart: Some(l.restart),
            exit_codes: Some(l.exit_codes.clone()),
            max_retry: Some(l.max_retry),
            min_uptime: Some(format_duration(l.min_uptime)),
            restart_delay: Some(format_duration(l.restart_delay)),
            max_restart_delay: Some(format_duration(l.max_restart_delay)),
            warmup_delay: Some(format_duration(l.warmup_delay)),
            autostart: Some(l.autostart),
            priority: Some(l.priority),
            depends_on: (!l.depends_on.is_empty()).then(|| l.depends_on.clone()),
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
            max_surge: l.max_surge,
            max_unavailable: l.max_unavailable,
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
        // Every command key but numprocesses, which no running process sees.
        let (c, o) = (&self.command, &other.command);
        c.cmd != o.cmd
            || c.args != o.args
            || c.env != o.env
            || c.copy_env != o.copy_env
            || c.working_dir != o.working_dir
            || c.uid_num != o.uid_num
            || c.gid_num != o.gid_num
            || self.stdout != other.stdout
            || self.stderr != other.stderr
            || self.sockets != other.sockets
            || self.rlimits != other.rlimits
    }
}

/// A watcher's name: a valid subject token, not starting with '_' (reserved).
fn check_name(name: &str, t: &mut Problems) {
    if let Err(e) = validate_token(name) {
        t.at("", format!("{name:?} cannot be a watcher name: {e}"));
    } else if name.starts_with('_') {
        t.at(
            "",
            format!("{name:?} cannot be a watcher name: names starting with '_' are reserved"),
        );
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
    use nix::sys::signal::Signal;

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
        assert_eq!(w.command.numprocesses, 1);
        assert_eq!(w.lifecycle.stop_signal, Signal::SIGTERM);
        assert_eq!(w.lifecycle.graceful_timeout, Duration::from_secs(30));
        assert_eq!(w.lifecycle.restart, RestartPolicy::Always);
        assert_eq!(w.lifecycle.max_retry, 5);
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
