//! Lifecycle events an agent publishes on `cluster.<node>.events.<watcher>.<kind>`.
//! Shapes and subjects only; deciding when an event happens is the agent's job.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reply::ExitStatus;
use crate::subjects::Subjects;

/// The watcher token of events about the agent itself (`join`, `leave`):
/// `cluster.<node>.events._agent.join`. No watcher may take this name.
pub const AGENT_EVENTS_TOKEN: &str = "_agent";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A process was started (`pid`, `wid`).
    Spawn,
    /// A process exited (`pid`, `wid`, `exit`).
    Exit,
    /// A process slot is being started again after an exit (`wid`).
    Respawn,
    /// A slot failed `max_retry` starts in a row and turned fatal (`wid`, `reason`).
    Flapping,
    /// A process failed its checks and is restarted: its `ready` check did not pass
    /// within `ready.timeout`, or its `live` check failed `live.failures` times in a
    /// row (`pid`, `wid`, `reason`).
    Unhealthy,
    /// A watcher was started.
    Start,
    /// A watcher was stopped.
    Stop,
    /// A watcher was added.
    Add,
    /// A watcher was removed.
    Rm,
    /// A watcher was reloaded or restarted.
    Reload,
    /// The agent joined the cluster (watcher token `_agent`).
    Join,
    /// The agent is leaving the cluster (watcher token `_agent`).
    Leave,
    /// A process used more than `max_memory` for `max_memory_samples` readings in a
    /// row and is restarted (`pid`, `wid`, `rss_bytes`, `max_memory`, `reason`).
    #[serde(rename = "max_memory")]
    MaxMemory,
    /// A process reached its `max_age` and is recycled (`pid`, `wid`, `reason`).
    #[serde(rename = "max_age")]
    MaxAge,
    /// A hook failed: exited non-zero, could not start, or timed out (`hook`,
    /// `reason`, and `pid`/`wid` for a process's hook). A failed `before_*` hook
    /// stopped what it came before.
    #[serde(rename = "hook_failed")]
    HookFailed,
    /// The agent executes its binary again, its processes kept (watcher token
    /// `_agent`); `reason` says from which boot, or why the upgrade failed.
    Upgrade,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 16] = [
        EventKind::Spawn,
        EventKind::Exit,
        EventKind::Respawn,
        EventKind::Flapping,
        EventKind::Unhealthy,
        EventKind::Start,
        EventKind::Stop,
        EventKind::Add,
        EventKind::Rm,
        EventKind::Reload,
        EventKind::Join,
        EventKind::Leave,
        EventKind::MaxMemory,
        EventKind::MaxAge,
        EventKind::HookFailed,
        EventKind::Upgrade,
    ];

    /// The wire name, also the last subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Spawn => "spawn",
            EventKind::Exit => "exit",
            EventKind::Respawn => "respawn",
            EventKind::Flapping => "flapping",
            EventKind::Unhealthy => "unhealthy",
            EventKind::Start => "start",
            EventKind::Stop => "stop",
            EventKind::Add => "add",
            EventKind::Rm => "rm",
            EventKind::Reload => "reload",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::MaxMemory => "max_memory",
            EventKind::MaxAge => "max_age",
            EventKind::HookFailed => "hook_failed",
            EventKind::Upgrade => "upgrade",
        }
    }

    /// Whether this is an event about the agent rather than one watcher.
    pub fn is_agent_event(self) -> bool {
        matches!(
            self,
            EventKind::Join | EventKind::Leave | EventKind::Upgrade
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event kind '{s}' (known: {})", names.join(", "))
            })
    }
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The node it happened on.
    pub node: String,
    /// The watcher it is about, or `_agent` for `join` and `leave`.
    pub watcher: String,
    pub kind: EventKind,
    /// Unix time of the event, in seconds.
    pub time: f64,
    /// The process concerned (`spawn`, `exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The process slot concerned (`spawn`, `exit`, `respawn`, `flapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wid: Option<u32>,
    /// How the process ended (`exit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// Why, in words (`flapping`, `stop`, `leave`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent's boot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The process's resident set size that crossed the limit, in bytes (`max_memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// The watcher's `max_memory`, in bytes (`max_memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Which hook (`hook_failed`): before_start, after_start, before_stop, after_stop,
    /// before_spawn, after_spawn or after_exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
}

impl Event {
    /// An event about `watcher`, stamped with the current time.
    pub fn new(node: &str, watcher: &str, kind: EventKind) -> Event {
        Event {
            node: node.to_owned(),
            watcher: watcher.to_owned(),
            kind,
            time: crate::unix_time(),
            pid: None,
            wid: None,
            exit: None,
            reason: None,
            boot_id: None,
            rss_bytes: None,
            max_memory: None,
            hook: None,
        }
    }

    /// An event about the agent itself (`join`, `leave`).
    pub fn agent(node: &str, kind: EventKind) -> Event {
        Event::new(node, AGENT_EVENTS_TOKEN, kind)
    }

    pub fn with_pid(mut self, pid: u32) -> Event {
        self.pid = Some(pid);
        self
    }

    pub fn with_wid(mut self, wid: u32) -> Event {
        self.wid = Some(wid);
        self
    }

    pub fn with_exit(mut self, exit: ExitStatus) -> Event {
        self.exit = Some(exit);
        self
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Event {
        self.reason = Some(reason.into());
        self
    }

    pub fn with_boot_id(mut self, boot_id: impl Into<String>) -> Event {
        self.boot_id = Some(boot_id.into());
        self
    }

    /// Where it is published: `<prefix>.<node>.events.<watcher>.<kind>`.
    pub fn subject(&self, subjects: &Subjects) -> String {
        subjects.event(&self.node, &self.watcher, self.kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in EventKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert!(crate::subjects::validate_token(kind.as_str()).is_ok());
        }
        assert!("nope".parse::<EventKind>().is_err());
    }

    #[test]
    fn subjects_name_node_watcher_and_kind() {
        let s = Subjects::default();
        let cases = [
            (
                Event::new("first", "web", EventKind::Spawn).with_pid(7),
                "cluster.first.events.web.spawn",
            ),
            (
                Event::agent("first", EventKind::Join),
                "cluster.first.events._agent.join",
            ),
            (
                Event::new("n2", "db", EventKind::Flapping),
                "cluster.n2.events.db.flapping",
            ),
        ];
        for (event, want) in cases {
            assert_eq!(event.subject(&s), want);
        }
        assert!(crate::subjects::validate_token(AGENT_EVENTS_TOKEN).is_ok());
        assert!(EventKind::Leave.is_agent_event());
        assert!(!EventKind::Exit.is_agent_event());
    }

    #[test]
    fn exit_event_serializes_only_what_it_has() {
        let event = Event {
            time: 1.5,
            ..Event::new("first", "web", EventKind::Exit)
                .with_pid(10)
                .with_wid(2)
                .with_exit(ExitStatus {
                    code: None,
                    signal: Some("SIGKILL".into()),
                })
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "node": "first", "watcher": "web", "kind": "exit", "time": 1.5,
                "pid": 10, "wid": 2, "exit": {"signal": "SIGKILL"}
            })
        );
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
