//! Markers that let the harness find every process a test started, however it was
//! started and whoever its parent is now: a unique string in the process's
//! environment, as `E2E_MARK=<marker>` and as a last, nonexistent `PATH` entry. The
//! `PATH` entry matters: an agent passes its `PATH` to every process it starts, also
//! with `copy_env = false`, and their children inherit it.
//!
//! Every marker starts with [`run_marker`] (`e2e-mark-<pid of the test binary>-`), so
//! what a whole run left behind is counted with `grep -l e2e-mark- /proc/*/environ`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procs;

/// The part every marker of this run starts with.
pub fn run_marker() -> String {
    format!("e2e-mark-{}-", std::process::id())
}

/// A new marker, unique in this run. It ends with `.`, so that no marker is a prefix of
/// another (`...-1.` is not in `...-10.`).
pub fn new_marker() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("{}{}.", run_marker(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The marker of processes that belong to no agent (ctl runs, nats-server).
pub fn shared_marker() -> String {
    format!("{}0.", run_marker())
}

/// Puts `marker` into the environment `cmd` will run with.
pub fn apply(cmd: &mut Command, marker: &str) {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    cmd.env("E2E_MARK", marker)
        .env("PATH", format!("{path}:/nonexistent/{marker}"));
}

/// SIGKILLs every process (but this one) whose environment holds `marker`, until none
/// is left or 5 s passed (a process may fork while it is being killed); returns how
/// many it killed.
pub fn kill_marked(marker: &str) -> usize {
    let start = Instant::now();
    let mut killed = 0;
    loop {
        let left = procs::pids_with_environ(marker);
        if left.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return killed;
        }
        for pid in left {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills whatever still carries its marker when dropped, also when the test panics.
#[derive(Debug)]
pub struct MarkGuard(pub String);

impl MarkGuard {
    /// A guard over a new marker.
    pub fn new() -> MarkGuard {
        MarkGuard(new_marker())
    }

    pub fn marker(&self) -> &str {
        &self.0
    }
}

impl Default for MarkGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MarkGuard {
    fn drop(&mut self) {
        let n = kill_marked(&self.0);
        if n > 0 {
            eprintln!("harness: killed {n} leftover process(es) marked {}", self.0);
        }
    }
}
