//! When a watcher's processes start, restart and stop: `restart` (or `respawn`),
//! `exit_codes`, `max_retry`, the delays, `autostart`, `priority`, `depends_on`,
//! `stop_signal` and `graceful_timeout`, and how a rolling restart goes (`max_surge`,
//! `max_unavailable`). Decides nothing: the supervisor's policy reads these.

use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::{RestartPolicy, WatcherOptions};

use super::{deps, Problems, WatcherConfig};

/// How a rolling restart replaces a watcher's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Start `n` replacements next to their old processes, each old one stopping once
    /// its replacement is up.
    Surge(u32),
    /// Stop `n` processes, then start their replacements (the classic way).
    Unavailable(u32),
}

impl WatcherConfig {
    /// How a rolling restart goes: with surge when `max_surge` is 1 or more (by default
    /// when the watcher has sockets), otherwise stopping first; at most `numprocesses`
    /// (and at least 1) processes at a time.
    pub fn rollout(&self) -> Rollout {
        let (l, shared) = (&self.lifecycle, !self.sockets.is_empty());
        let surge = l.max_surge.unwrap_or(match l.max_unavailable {
            Some(0) => 1,
            Some(_) => 0,
            None => u32::from(shared),
        });
        let at_most = |n: u32| n.clamp(1, self.command.numprocesses.max(1));
        if surge > 0 {
            Rollout::Surge(at_most(surge))
        } else {
            Rollout::Unavailable(at_most(l.max_unavailable.unwrap_or(1)))
        }
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

/// A watcher's start, restart and stop keys, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    /// Which exits start a process again (`restart`, or `respawn = false` for never).
    pub restart: RestartPolicy,
    /// The expected exits: under `restart = "on-failure"`, not started again.
    pub exit_codes: Vec<i32>,
    /// Failed starts in a row allowed before giving up; -1 never gives up.
    pub max_retry: i32,
    /// How long a process must run for its start to count as successful.
    pub min_uptime: Duration,
    /// The delay before the first restart after a failed start, doubled for each
    /// further one.
    pub restart_delay: Duration,
    /// The longest delay between restarts (at least `restart_delay`).
    pub max_restart_delay: Duration,
    /// The pause between starting one process and the next.
    pub warmup_delay: Duration,
    /// Whether the watcher starts with the agent.
    pub autostart: bool,
    /// The order among watchers with no dependency between them: higher first, at
    /// start and at stop.
    pub priority: i32,
    /// Watchers that must be up before this one starts, and that stop after it.
    pub depends_on: Vec<String>,
    /// The signal that asks a process to stop.
    pub stop_signal: Signal,
    /// How long a process may take to stop before it is killed.
    pub graceful_timeout: Duration,
    /// `max_surge` as set (see [`WatcherConfig::rollout`] for the value in force).
    pub max_surge: Option<u32>,
    /// `max_unavailable` as set (see [`WatcherConfig::rollout`]).
    pub max_unavailable: Option<u32>,
}

/// Reads the start, restart and stop keys of watcher `name`, with their defaults.
pub(super) fn from_options(name: &str, o: &WatcherOptions, t: &mut Problems) -> Lifecycle {
    let max_retry = o.max_retry.unwrap_or(5);
    let priority = o.priority.unwrap_or(0);
    t.count("max_retry", i64::from(max_retry));
    t.count("priority", i64::from(priority));
    check_rollout(o, t);
    let stop_signal = match &o.stop_signal {
        None => Signal::SIGTERM,
        Some(s) => parse_signal(s).unwrap_or_else(|m| {
            t.at("stop_signal", m);
            Signal::SIGTERM
        }),
    };
    let depends_on = o.depends_on.clone().unwrap_or_default();
    if let Err(m) = deps::check_list(name, &depends_on) {
        t.at("depends_on", m);
    }
    let graceful_timeout = t.duration(
        "graceful_timeout",
        o.graceful_timeout.as_ref(),
        Duration::from_secs(30),
    );
    let min_uptime = t.duration("min_uptime", o.min_uptime.as_ref(), Duration::from_secs(1));
    let restart_delay = t.duration(
        "restart_delay",
        o.restart_delay.as_ref(),
        Duration::from_millis(100),
    );
    let max_restart_delay = t.duration(
        "max_restart_delay",
        o.max_restart_delay.as_ref(),
        Duration::from_secs(15),
    );
    let warmup_delay = t.duration("warmup_delay", o.warmup_delay.as_ref(), Duration::ZERO);
    Lifecycle {
        restart: match (o.restart, o.respawn) {
            (Some(r), _) => r,
            (None, Some(false)) => RestartPolicy::Never,
            (None, _) => RestartPolicy::Always,
        },
        exit_codes: o.exit_codes.clone().unwrap_or_else(|| vec![0]),
        max_retry,
        min_uptime,
        restart_delay,
        max_restart_delay: max_restart_delay.max(restart_delay),
        warmup_delay,
        autostart: o.autostart.unwrap_or(true),
        priority,
        depends_on,
        stop_signal,
        graceful_timeout,
        max_surge: o.max_surge,
        max_unavailable: o.max_unavailable,
    }
}

/// `max_surge` and `max_unavailable`: each in range, and not both 0.
fn check_rollout(o: &WatcherOptions, t: &mut Problems) {
    for (key, value) in [
        ("max_surge", o.max_surge),
        ("max_unavailable", o.max_unavailable),
    ] {
        if let Some(v) = value {
            t.count(key, i64::from(v));
        }
    }
    if o.max_surge == Some(0) && o.max_unavailable == Some(0) {
        t.at(
            "max_surge",
            "is 0 and so is max_unavailable, so a rolling restart could replace \
             nothing; set max_surge = 1 (start the new process first) or \
             max_unavailable = 1 (stop the old one first)",
        );
    }
}
