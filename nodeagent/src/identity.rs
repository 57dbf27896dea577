//! Who this agent is: its node name, tags and the facts of this boot, told in replies,
//! announcements and events. Plain data, built once at start; it depends on nothing
//! else in the agent.

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::unix_time;

/// Who this agent is, for replies and announcements.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    /// A new id at every start.
    pub boot_id: String,
    pub started_at: f64,
    pub started: Instant,
    pub pid: u32,
    pub hostname: String,
    pub tags: BTreeMap<String, String>,
    pub version: String,
}

impl Identity {
    pub fn new(node: &str, tags: BTreeMap<String, String>) -> Identity {
        Identity {
            node: node.to_owned(),
            boot_id: uuid::Uuid::new_v4().to_string(),
            started_at: unix_time(),
            started: Instant::now(),
            pid: std::process::id(),
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            tags,
            version: protocol::VERSION.to_owned(),
        }
    }
}
