//! Bounded polling: wait for a condition, or panic saying what never happened. The only
//! place tests wait; no test sleeps for a fixed time.
//!
//! Every wall-clock bound in the suite goes through one slack factor, read from
//! `E2E_SLACK` (default 1): wait timeouts here are multiplied by it, and a test that
//! asserts an upper bound on how long something took writes it as [`bound`]`(d)`. CI
//! keeps it at 1; a loaded workstation may run with `E2E_SLACK=3`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// The slack factor from `E2E_SLACK` (a number ≥ 1; anything else counts as 1).
pub fn slack() -> f64 {
    static SLACK: OnceLock<f64> = OnceLock::new();
    *SLACK.get_or_init(|| {
        std::env::var("E2E_SLACK")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 1.0)
            .unwrap_or(1.0)
    })
}

/// A wall-clock bound scaled by [`slack`]: write every "took less than" as `bound(d)`.
pub fn bound(d: Duration) -> Duration {
    d.mul_f64(slack())
}

/// Polls `cond` every [`POLL`] until it holds; panics naming `what` after `timeout`
/// (scaled by [`slack`]).
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()))
}

/// Polls `f` every [`POLL`] until it returns `Some`, and returns that value; panics
/// naming `what` after `timeout` (scaled by [`slack`]).
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = bound(timeout);
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async code: polls `cond` every [`POLL`] without blocking the
/// runtime.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let timeout = bound(timeout);
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed())
}
