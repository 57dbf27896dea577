//! The stats stream: what an agent publishes every `stats_interval` on
//! `cluster.<node>.stats`, and the data of the `stats` command's reply. Shapes only; the
//! sampling lives in the agent.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::reply::{ProcessHealth, WatcherState};

/// One sample of a node, published on `cluster.<node>.stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsMessage {
    /// The node that sampled.
    pub node: String,
    /// Unix time of the sample, in seconds.
    pub time: f64,
    /// The agent's boot id (a new one at every agent start).
    pub boot_id: String,
    /// Seconds between two samples; a reader may call a node stale after a few of them.
    pub interval_secs: f64,
    /// The machine and the agent's own process.
    pub host: HostStats,
    /// Every watcher of the node, with its running processes.
    #[serde(default)]
    pub watchers: Vec<WatcherStats>,
}

impl StatsMessage {
    /// A message carrying `data`, stamped with the current time.
    pub fn new(node: &str, boot_id: &str, interval_secs: f64, data: StatsData) -> StatsMessage {
        StatsMessage {
            node: node.to_owned(),
            time: crate::unix_time(),
            boot_id: boot_id.to_owned(),
            interval_secs,
            host: data.host,
            watchers: data.watchers,
        }
    }

    /// The processes of every watcher.
    pub fn process_count(&self) -> usize {
        self.watchers.iter().map(|w| w.processes.len()).sum()
    }
}

/// `stats`: one snapshot of the node (the reply's fields besides the envelope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsData {
    /// The machine and the agent's own process.
    pub host: HostStats,
    /// Every watcher asked for (one with `name`, else all).
    #[serde(default)]
    pub watchers: Vec<WatcherStats>,
}

/// The machine and the agent's own process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HostStats {
    /// CPUs the agent may run on.
    pub cpu_count: u32,
    /// Load average over 1 minute.
    pub load1: f64,
    /// Load average over 5 minutes.
    pub load5: f64,
    /// Load average over 15 minutes.
    pub load15: f64,
    /// Total memory, in bytes.
    pub mem_total_bytes: u64,
    /// Memory available to new programs without swapping, in bytes.
    pub mem_available_bytes: u64,
    /// The agent's pid.
    pub agent_pid: u32,
    /// The agent's CPU use since the previous sample, percent of one core.
    pub agent_cpu_percent: f64,
    /// The agent's resident memory, in bytes.
    pub agent_rss_bytes: u64,
}

/// One watcher and its running processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherStats {
    pub name: String,
    /// The service it answers for.
    pub service: String,
    pub state: WatcherState,
    /// The wanted process count.
    pub numprocesses: u32,
    /// How many processes were sampled running.
    pub running: u32,
    /// CPU use of all its processes, percent of one core (can exceed 100).
    pub cpu_percent: f64,
    /// Resident memory of all its processes, in bytes.
    pub rss_bytes: u64,
    /// Restarts of all its slots.
    pub restarts: u32,
    /// Its running processes, by wid.
    #[serde(default)]
    pub processes: Vec<ProcessStats>,
}

/// One running process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessStats {
    /// The instance number, 1..=numprocesses.
    pub wid: u32,
    pub pid: u32,
    /// CPU use since the previous sample, percent of one core (a busy loop is about
    /// 100; 0 at a pid's first sample).
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// CPU time it has used since it started (user + system), in seconds: a counter
    /// that only grows while the pid lives. 0 from agents that do not send it.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Seconds since it started.
    pub age_secs: f64,
    /// How many times its slot was started again after an exit.
    pub restarts: u32,
    /// How it is doing by its checks: starting, ready or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ProcessHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;
    use serde_json::{Map, Value};

    /// A reply's fields read as a `T`, as a client that reads any reply as a map would.
    impl Reply<Map<String, Value>> {
        fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
            serde_json::from_value(Value::Object(self.data.clone()))
        }
    }

    fn sample() -> StatsData {
        StatsData {
            host: HostStats {
                cpu_count: 2,
                load1: 0.5,
                mem_total_bytes: 1 << 30,
                mem_available_bytes: 1 << 29,
                agent_pid: 42,
                ..HostStats::default()
            },
            watchers: vec![WatcherStats {
                name: "web".into(),
                service: "web".into(),
                state: WatcherState::Active,
                numprocesses: 1,
                running: 1,
                cpu_percent: 12.5,
                rss_bytes: 4096,
                restarts: 0,
                processes: vec![ProcessStats {
                    wid: 1,
                    pid: 100,
                    cpu_percent: 12.5,
                    rss_bytes: 4096,
                    cpu_seconds: 0.25,
                    age_secs: 3.0,
                    restarts: 0,
                    health: Some(ProcessHealth::Ready),
                }],
            }],
        }
    }

    #[test]
    fn message_round_trips() {
        let msg = StatsMessage {
            time: 1.25,
            ..StatsMessage::new("first", "boot-1", 1.0, sample())
        };
        let text = serde_json::to_string(&msg).unwrap();
        let back: StatsMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.process_count(), 1);
    }

    #[test]
    fn data_fits_a_reply() {
        let data = sample();
        let sent = Reply::<Option<StatsData>>::ok(Some("x".into()), "first", 1.0, data.clone());
        let bytes = serde_json::to_vec(&sent).unwrap();
        let reply: Reply<Map<String, Value>> = serde_json::from_slice(&bytes).unwrap();
        assert!(reply.data.contains_key("host"));
        assert!(reply.data.contains_key("watchers"));
        assert_eq!(reply.data::<StatsData>().unwrap(), data);
    }

    #[test]
    fn reads_messages_with_fields_it_does_not_know() {
        let text = r#"{"node":"n","time":1.0,"boot_id":"b","interval_secs":1.0,
            "host":{"cpu_count":1,"load1":0,"load5":0,"load15":0,"mem_total_bytes":0,
            "mem_available_bytes":0,"agent_pid":1,"agent_cpu_percent":0,
            "agent_rss_bytes":0,"future":1},"future":true}"#;
        let msg: StatsMessage = serde_json::from_str(text).unwrap();
        assert!(msg.watchers.is_empty());
    }
}
