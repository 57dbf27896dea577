//! The protocol shared by `nodeagent` and `ctl`: the subjects, every message shape as a
//! Rust type, and the JSON Schema files generated from those types (committed under
//! `schemas/`, checked by a test to stay equal to what the types generate).

pub mod command;
pub mod logs;
pub mod options;
pub mod registry;
pub mod reply;
pub mod schema;
pub mod subjects;

pub use command::{parse_request, Command, Request, RequestError};
pub use options::{IdSpec, RestartPolicy, WatcherOptions};
pub use reply::{Errno, Reply, ReplyStatus};
pub use subjects::Subjects;

/// The version every agent and ctl reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the Unix epoch, as sent in every message's `time`.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
