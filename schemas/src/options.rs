//! The options of a watcher as they appear in a node's TOML config (`[watcher.NAME]`),
//! in `add`, `set`, `get` and `options`. Every field is optional here; the agent fills
//! in defaults and validates values.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user or group, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IdSpec {
    Id(u32),
    Name(String),
}

/// When a process that exited on its own is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Unless the exit code is one of `exit_codes`.
    OnFailure,
    /// Never; the process stays exited.
    Never,
}

/// The options of a watcher. Durations are strings such as "500ms", "1s", "2m".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatcherOptions {
    /// The program to run, found on PATH. `$(wid)` and `$(name)` expand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Its arguments. `$(wid)` and `$(name)` expand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// How many copies run (default 1; 0 to 100000, and all watchers of a node together
    /// at most its `max_processes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub numprocesses: Option<u32>,
    /// Extra environment variables. `$(wid)` and `$(name)` expand in values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Pass the agent's own environment to the processes (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_env: Option<bool>,
    /// The processes' working directory (default: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Run as this user (the agent must be root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<IdSpec>,
    /// Run as this group (the agent must be root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<IdSpec>,
    /// The signal that asks a process to stop (default "TERM").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a stopping process may take before it is killed (default "30s"; 0s to
    /// 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<String>,
    /// Circus's switch: false is the same as restart = "never" (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respawn: Option<bool>,
    /// "always" (default), "on-failure" or "never".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// Exit codes that count as expected under "on-failure" (default [0]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_codes: Option<Vec<i32>>,
    /// Failed starts in a row before the watcher turns fatal; -1 never (default 5; -1
    /// to 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1, max = 1000000))]
    pub max_retry: Option<i32>,
    /// How long a process must run for its start to count as successful (default "1s";
    /// 0s to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_uptime: Option<String>,
    /// The first delay before restarting after a failed start; it doubles each time
    /// (default "100ms"; 0s to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<String>,
    /// The cap on that delay (default "15s"; 0s to 1day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_delay: Option<String>,
    /// The pause between starting one process and the next (default "0s"; 0s to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_delay: Option<String>,
    /// Start when the agent starts (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Start order: higher first, as in Circus (default 0; -1000000 to 1000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub priority: Option<i32>,
    /// Watchers that must be up (every process running past `min_uptime`, and ready)
    /// before this one starts; it stops before they do. Starting this watcher starts
    /// them first. At most 64 names, each another watcher of the node; no cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub depends_on: Option<Vec<String>>,
    /// Where stdout goes: "capture" (default: rotating files under the agent's log dir,
    /// read with `ctl logs`), "discard", "inherit" (the agent's own), or a file path
    /// (appended to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Where stderr goes; same values as stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The service this watcher belongs to (default: the watcher's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Another spelling of `ready = { exec = [...] }`: a command that exits 0 once a new
    /// process is ready. `$(wid)`, `$(name)` and `$(pid)` expand. Not together with
    /// `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_cmd: Option<Vec<String>>,
    /// Another spelling of `ready.timeout`, with `health_cmd` (default "30s"; 0s to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// When a new process counts as up: one of `tcp`, `http`, `exec` or `notify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyCheck>,
    /// How a running, ready process shows it still works: one of `tcp`, `http` or
    /// `exec`; after `failures` failed probes in a row it is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveCheck>,
    /// Rotate a captured log file when it reaches this many bytes (default 10 MiB; 1024
    /// to 1 TiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 1_099_511_627_776_u64))]
    pub log_max_bytes: Option<u64>,
    /// How many rotated files to keep (default 5; 0 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub log_backups: Option<u32>,
    /// The node's sockets (`[socket.NAME]` in its config) its processes get, at fds 3,
    /// 4, ... in this order, with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`;
    /// `$(sockets.NAME)` in args and env values expands to the fd (at most 64 names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub sockets: Option<Vec<String>>,
    /// How many new processes a rolling restart starts next to the ones they replace
    /// before stopping them (default 1 when the watcher has `sockets`, else 0; 0 to
    /// 100000, at most numprocesses at a time). With 1 or more, the new process starts
    /// first and the old one stops once the new one is up (past `min_uptime`, and
    /// ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_surge: Option<u32>,
    /// How many processes a rolling restart may stop before their replacements start
    /// (default 0 when the watcher has `sockets`, else 1; 0 to 100000, at most
    /// numprocesses at a time). Used when max_surge is 0; not both may be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_unavailable: Option<u32>,
    /// The most memory (resident set size) a process may use: "512MiB", "2GB", or a
    /// number of bytes (1MiB to 1TiB). Above it for `max_memory_samples` readings in a
    /// row (taken on the stats interval, every second when stats are off), the process
    /// is restarted gracefully, with a `max_memory` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// How many readings in a row above `max_memory` restart a process (default 3; 1 to
    /// 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_memory_samples: Option<u32>,
    /// Resource limits set in each process before it runs, by setrlimit's names in
    /// lowercase without RLIMIT_ (as, core, cpu, data, fsize, locks, memlock, msgqueue,
    /// nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack): a number or
    /// "unlimited" for both the soft and hard limit, or `{ soft = ..., hard = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<BTreeMap<String, Rlimit>>,
    /// Recycle each process once it has run this long (10s to 1year), plus a random
    /// part of `max_age_variance`; one process of the watcher at a time, the next once
    /// the replacement is up. With surge (see `max_surge`) the replacement starts first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// The most added at random to `max_age`, so that processes started together are
    /// not recycled together (default "0s"; 0s to 1year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_variance: Option<String>,
    /// Commands run around the watcher's life (never through a shell unless the command
    /// is one): each a string (split as a shell would, without running one), a list
    /// (program and arguments), or `{ cmd = ..., timeout = "30s" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
}

/// A size in bytes: a number, or a string with a unit ("512MiB", "2GB", "64k").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ByteSize {
    Bytes(u64),
    Text(String),
}

/// One resource limit's value: a number, or "unlimited".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LimitValue {
    Number(u64),
    /// Refused by the agent, which says so by name.
    Negative(i64),
    Word(String),
}

/// A resource limit: one value for both the soft and the hard limit, or each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Rlimit {
    Both(LimitValue),
    Each(RlimitPair),
}

/// Soft and hard limits; the soft limit may not exceed the hard one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RlimitPair {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

/// A command line: a string split as a shell would split it (quotes, backslashes; no
/// shell runs), or the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandLine {
    Line(String),
    Argv(Vec<String>),
}

/// A hook: a command line, or a command line with its timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Hook {
    Cmd(CommandLine),
    Full(HookCommand),
}

/// A hook's command and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookCommand {
    pub cmd: CommandLine,
    /// How long it may run before it is killed and counts as failed (default "30s";
    /// 100ms to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// The hooks of a watcher. Each runs as the watcher's processes do (uid, gid,
/// working_dir, env) with `NODEAGENT_WATCHER`, and per process `NODEAGENT_WID`,
/// `NODEAGENT_PID` and (after_exit) `NODEAGENT_EXIT_CODE` or `NODEAGENT_EXIT_SIGNAL`.
/// A `before_*` hook that fails (exits non-zero, or times out) stops what it comes
/// before, with a `hook_failed` event; an `after_*` hook that fails only says so in
/// one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before a `start` (or the agent's start) starts the watcher; failing, it is not
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_start: Option<Hook>,
    /// Once every process of a started watcher is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_start: Option<Hook>,
    /// Before a `stop` stops the watcher; failing, it keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_stop: Option<Hook>,
    /// Once every process of a stopped watcher is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_stop: Option<Hook>,
    /// Before each process starts; failing, the start fails (and the restart policy
    /// decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_spawn: Option<Hook>,
    /// After each process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_spawn: Option<Hook>,
    /// After each process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_exit: Option<Hook>,
}

/// A readiness check: exactly one of `tcp`, `http`, `exec` or `notify`. `$(wid)`,
/// `$(name)` (and in `exec`, `$(pid)`) expand in the values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyCheck {
    /// Ready once a TCP connection to "host:port" succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Ready once a GET of this "http://" URL answers 2xx (plain HTTP/1.1; no https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Ready once this command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Ready once the process sends "READY=1" to the socket in `NOTIFY_SOCKET` (the
    /// systemd notify protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    /// How long a new process may take to be ready; then it is stopped and its start
    /// counts as failed (default "30s"; 100ms to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How often it is probed until ready (default "500ms"; 50ms to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// A liveness check: exactly one of `tcp`, `http` or `exec`, probed every `interval`
/// while the process is ready.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveCheck {
    /// Alive while a TCP connection to "host:port" succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// Alive while a GET of this "http://" URL answers 2xx (plain HTTP/1.1; no https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Alive while this command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// How long one probe may take before it counts as failed (default "5s"; 100ms to
    /// 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The time between two probes (default "10s"; 100ms to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Failed probes in a row after which the process is restarted (default 3; 1 to
    /// 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failures: Option<u32>,
}

/// The options whose values are durations.
pub const DURATION_OPTIONS: &[&str] = &[
    "graceful_timeout",
    "min_uptime",
    "restart_delay",
    "max_restart_delay",
    "warmup_delay",
    "health_timeout",
    "max_age",
    "max_age_variance",
];

/// Checks one option's value on its own, so that an error names the option and, for a
/// duration, shows how one is written. This checks the type only; the agent checks each
/// value against its range (see the field docs) before it applies any.
pub fn check_option(key: &str, value: &serde_json::Value) -> Result<(), String> {
    parse_option(key, value).map(|_| ())
}

/// One option's value read on its own: options with only `key` set, or the error of
/// [`check_option`].
pub fn parse_option(key: &str, value: &serde_json::Value) -> Result<WatcherOptions, String> {
    let one = serde_json::Map::from_iter([(key.to_owned(), value.clone())]);
    serde_json::from_value::<WatcherOptions>(serde_json::Value::Object(one)).map_err(|e| {
        let hint = if DURATION_OPTIONS.contains(&key) {
            "; a duration is a string such as \"5s\", \"500ms\" or \"2m\""
        } else {
            ""
        };
        format!("option '{key}': {e}{hint}")
    })
}

/// Lists every field of [`WatcherOptions`] once: the option names, and the typed
/// picking, merging and unsetting of options by name (`get`, `set`). `overlay`
/// destructures the struct without `..`, so a new field that is not listed here does not
/// compile.
macro_rules! option_fields {
    ($($f:ident),* $(,)?) => {
        /// The option names, as accepted by `get` and `set`.
        pub const OPTION_NAMES: &[&str] = &[$(stringify!($f)),*];

        impl WatcherOptions {
            /// Takes every option that `other` sets.
            pub fn overlay(&mut self, other: WatcherOptions) {
                let WatcherOptions { $($f),* } = other;
                $(if $f.is_some() {
                    self.$f = $f;
                })*
            }

            /// Unsets the option `key`; false when there is no such option.
            pub fn unset(&mut self, key: &str) -> bool {
                match key {
                    $(stringify!($f) => self.$f = None,)*
                    _ => return false,
                }
                true
            }

            /// Only the options named in `keys` (unknown names are left out).
            pub fn only(&self, keys: &[String]) -> WatcherOptions {
                let mut out = WatcherOptions::default();
                for k in keys {
                    match k.as_str() {
                        $(stringify!($f) => out.$f = self.$f.clone(),)*
                        _ => {}
                    }
                }
                out
            }
        }
    };
}

option_fields!(
    cmd,
    args,
    numprocesses,
    env,
    copy_env,
    working_dir,
    uid,
    gid,
    stop_signal,
    graceful_timeout,
    respawn,
    restart,
    exit_codes,
    max_retry,
    min_uptime,
    restart_delay,
    max_restart_delay,
    warmup_delay,
    autostart,
    priority,
    depends_on,
    stdout,
    stderr,
    service,
    health_cmd,
    health_timeout,
    ready,
    live,
    log_max_bytes,
    log_backups,
    sockets,
    max_surge,
    max_unavailable,
    max_memory,
    max_memory_samples,
    rlimits,
    max_age,
    max_age_variance,
    hooks,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_names_are_the_fields() {
        let all = serde_json::to_value(WatcherOptions {
            cmd: Some(String::new()),
            args: Some(vec![]),
            numprocesses: Some(1),
            env: Some(BTreeMap::new()),
            copy_env: Some(true),
            working_dir: Some(String::new()),
            uid: Some(IdSpec::Id(0)),
            gid: Some(IdSpec::Id(0)),
            stop_signal: Some(String::new()),
            graceful_timeout: Some(String::new()),
            respawn: Some(true),
            restart: Some(RestartPolicy::Always),
            exit_codes: Some(vec![]),
            max_retry: Some(1),
            min_uptime: Some(String::new()),
            restart_delay: Some(String::new()),
            max_restart_delay: Some(String::new()),
            warmup_delay: Some(String::new()),
            autostart: Some(true),
            priority: Some(1),
            depends_on: Some(vec![]),
            stdout: Some(String::new()),
            stderr: Some(String::new()),
            service: Some(String::new()),
            health_cmd: Some(vec![]),
            health_timeout: Some(String::new()),
            ready: Some(ReadyCheck::default()),
            live: Some(LiveCheck::default()),
            log_max_bytes: Some(1),
            log_backups: Some(1),
            sockets: Some(vec![]),
            max_surge: Some(1),
            max_unavailable: Some(0),
            max_memory: Some(ByteSize::Bytes(1)),
            max_memory_samples: Some(1),
            rlimits: Some(BTreeMap::new()),
            max_age: Some(String::new()),
            max_age_variance: Some(String::new()),
            hooks: Some(Hooks::default()),
        })
        .unwrap();
        let keys: Vec<&str> = all
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut names = OPTION_NAMES.to_vec();
        names.sort();
        assert_eq!(keys, names);
    }

    #[test]
    fn a_bad_value_is_named_with_its_option() {
        use serde_json::json;
        assert_eq!(check_option("numprocesses", &json!(3)), Ok(()));
        let e = check_option("numprocesses", &json!("abc")).unwrap_err();
        assert!(e.starts_with("option 'numprocesses': invalid type"), "{e}");
        let e = check_option("graceful_timeout", &json!(5)).unwrap_err();
        assert!(
            e.contains("option 'graceful_timeout'") && e.contains("\"5s\""),
            "{e}"
        );
        for d in DURATION_OPTIONS {
            assert!(OPTION_NAMES.contains(d), "{d}");
            assert_eq!(check_option(d, &json!("1s")), Ok(()));
        }
    }

    #[test]
    fn options_are_picked_merged_and_unset_by_name() {
        let all = WatcherOptions {
            cmd: Some("sleep".into()),
            numprocesses: Some(2),
            log_backups: Some(3),
            ..Default::default()
        };
        let picked = all.only(&["numprocesses".into(), "args".into(), "nope".into()]);
        assert_eq!(
            picked,
            WatcherOptions {
                numprocesses: Some(2),
                ..Default::default()
            }
        );
        let mut merged = all.clone();
        merged.overlay(parse_option("numprocesses", &serde_json::json!(5)).unwrap());
        assert_eq!(merged.numprocesses, Some(5));
        assert_eq!(merged.cmd, Some("sleep".into()));
        assert!(merged.unset("log_backups"));
        assert!(!merged.unset("nope"));
        assert_eq!(merged.log_backups, None);
        for name in OPTION_NAMES {
            let mut o = all.clone();
            assert!(o.unset(name), "{name}");
        }
    }
}
