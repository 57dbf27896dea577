//! The captured output of supervised processes on the wire: one [`LogLine`] as published
//! live on `cluster.<node>.logs.<watcher>`, and the `logs` command that reads the last
//! lines back. Owns only types; never reads files or talks to NATS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many lines `logs` returns when `lines` is absent.
pub const DEFAULT_LOG_LINES: u32 = 50;

/// The most lines one `logs` request returns; larger requests are clamped to it.
pub const MAX_LOG_LINES: u32 = 10_000;

/// The longest follow lease one `logs` request grants, in seconds.
pub const MAX_FOLLOW_SECS: u32 = 300;

/// Which output of a process a line came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// Both streams, stdout first.
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// The wire name, also used in log file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(format!(
                "unknown stream '{other}'; expected stdout or stderr"
            )),
        }
    }
}

/// One line a process wrote, published on `cluster.<node>.logs.<watcher>` and returned
/// by `logs`. Shown by `ctl logs` as `[watcher.wid] line`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// The node that runs the process.
    pub node: String,
    /// The watcher the process belongs to.
    pub watcher: String,
    /// The process's instance number (`$(wid)`); 0 for a note written by the agent
    /// itself.
    pub wid: u32,
    pub stream: Stream,
    /// Unix time the agent read the line, in seconds (millisecond precision once the
    /// line is read back from a file).
    pub time: f64,
    /// The text without its newline. Invalid UTF-8 is replaced by U+FFFD; a line
    /// longer than the agent's limit (64 KiB) arrives as several lines.
    pub line: String,
}

/// `logs`: the last lines a watcher's processes wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsProps {
    /// A watcher's name.
    pub name: String,
    /// How many lines, newest last (default 50; 0 to 10000, larger values are taken as
    /// 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// Only this stream; both, merged by time, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// Publish the watcher's new lines live on `cluster.<node>.logs.<watcher>` for this
    /// many seconds from now (0 to 300, larger values are taken as 300); a follower
    /// sends it again before it runs out. Lines nobody follows are not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_secs: Option<u32>,
}

impl LogsProps {
    /// How long the live lines are asked for, clamped.
    pub fn follow(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.follow_secs.unwrap_or(0).min(MAX_FOLLOW_SECS).into())
    }

    /// The number of lines asked for, defaulted and clamped.
    pub fn lines(&self) -> u32 {
        self.lines.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES)
    }
}

/// The reply to `logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogsData {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// True when older lines were left out so that the reply fits in one message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_default_and_clamp_lines() {
        let p: LogsProps = serde_json::from_str(r#"{"name":"web"}"#).unwrap();
        assert_eq!(p.lines(), DEFAULT_LOG_LINES);
        assert_eq!(p.stream, None);
        let p: LogsProps =
            serde_json::from_str(r#"{"name":"web","lines":99999999,"stream":"stderr"}"#).unwrap();
        assert_eq!(p.lines(), MAX_LOG_LINES);
        assert_eq!(p.stream, Some(Stream::Stderr));
        assert!(serde_json::from_str::<LogsProps>(r#"{"name":"w","stream":"x"}"#).is_err());
        assert!(serde_json::from_str::<LogsProps>(r#"{"name":"w","nb":1}"#).is_err());
    }

    #[test]
    fn stream_names_round_trip() {
        for s in Stream::ALL {
            assert_eq!(s.as_str().parse::<Stream>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert!("both".parse::<Stream>().is_err());
    }

    #[test]
    fn log_line_is_tolerant() {
        let l: LogLine = serde_json::from_str(
            r#"{"node":"n","watcher":"w","wid":2,"stream":"stdout","time":1.5,"line":"x","new":1}"#,
        )
        .unwrap();
        assert_eq!(l.wid, 2);
    }
}
