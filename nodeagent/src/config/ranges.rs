//! The range of every duration, count and size a config, `add` or `set` may give, and
//! the parsing and formatting of durations. Pure: nothing here reads a file.

use std::time::Duration;

/// The largest process count one watcher may ask for, whatever the node's
/// `max_processes`.
pub const MAX_PROCESSES: u32 = 100_000;

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) const fn millis(n: u64) -> Duration {
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
        key: "keepers",
        min: 1,
        // The most keepers an agent's roster holds (`keepers::MAX_KEEPERS`).
        max: 64,
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
