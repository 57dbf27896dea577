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

/// `key` may take `min` to `max`, both included.
const fn range<T>(key: &'static str, min: T, max: T) -> Range<T> {
    Range { key, min, max }
}

/// The range of every watcher duration, in config, `add` and `set` alike.
pub const WATCHER_DURATIONS: &[Range<Duration>] = &[
    range("graceful_timeout", Duration::ZERO, secs(3600)),
    range("min_uptime", Duration::ZERO, secs(3600)),
    range("restart_delay", Duration::ZERO, secs(3600)),
    range("max_restart_delay", Duration::ZERO, secs(24 * 3600)),
    range("warmup_delay", Duration::ZERO, secs(3600)),
    range("health_timeout", Duration::ZERO, secs(3600)),
    range("ready.timeout", Duration::ZERO, secs(3600)),
    range("ready.interval", millis(50), secs(3600)),
    range("live.timeout", millis(100), secs(600)),
    range("live.interval", millis(100), secs(3600)),
    range("max_age", secs(1), secs(365 * 24 * 3600)),
    range("max_age_variance", Duration::ZERO, secs(365 * 24 * 3600)),
    range("hooks.timeout", millis(100), secs(3600)),
];

/// The range of every `[agent]` and `[nats]` duration. `stats_interval` may also be
/// 0s (no stats stream).
pub const AGENT_DURATIONS: &[Range<Duration>] = &[
    range("heartbeat", millis(50), secs(3600)),
    range("stats_interval", millis(50), secs(3600)),
    range("suspect_after", millis(50), secs(24 * 3600)),
    range("failed_after", millis(50), secs(24 * 3600)),
    range("reap_after", millis(100), secs(30 * 24 * 3600)),
    range("ping_interval", millis(100), secs(600)),
];

/// The range of every count and size, in config, `add` and `set` alike.
pub const COUNTS: &[Range<i64>] = &[
    range("numprocesses", 0, MAX_PROCESSES as i64),
    range("max_processes", 1, MAX_PROCESSES as i64),
    // The most keepers an agent's roster holds (`keepers::MAX_KEEPERS`).
    range("keepers", 1, 64),
    range("log_max_bytes", 1024, 1 << 40),
    range("log_backups", 0, 1000),
    range("max_retry", -1, 1_000_000),
    range("priority", -1_000_000, 1_000_000),
    range("live.failures", 1, 1000),
    range("max_surge", 0, MAX_PROCESSES as i64),
    range("max_unavailable", 0, MAX_PROCESSES as i64),
    range("max_memory_samples", 1, 1000),
    range(
        "backlog",
        crate::sockets::MIN_BACKLOG,
        crate::sockets::MAX_BACKLOG,
    ),
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
