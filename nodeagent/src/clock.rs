//! Small helpers over tokio's clock for the agent's loops. No state, no I/O.

use std::time::Instant;

/// Sleeps until `deadline`, or forever when there is none: a `select!` branch that
/// fires only when something is due.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
