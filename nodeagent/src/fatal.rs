//! What happens when the agent has a bug: a panic in any task is recorded here (by the
//! hook `main` installs), the agent's run loop sees it, stops every process gracefully
//! and exits with [`EXIT_PANIC`], so that systemd starts it afresh rather than letting it
//! live on half-dead. Debug builds also have a fault-injection seam for tests, which no
//! message can reach.

use std::sync::{LazyLock, Mutex};

use tokio_util::sync::CancellationToken;

/// The exit code after a panic (EX_SOFTWARE: an internal software error).
pub const EXIT_PANIC: u8 = 70;

static PANICKED: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);
static REASON: Mutex<Option<String>> = Mutex::new(None);

/// Records a panic (the first one's message is kept) and wakes [`panicked`].
pub fn record(message: String) {
    let mut reason = REASON.lock().unwrap_or_else(|e| e.into_inner());
    reason.get_or_insert(message);
    PANICKED.cancel();
}

/// Cancelled once any task has panicked.
pub fn panicked() -> CancellationToken {
    PANICKED.clone()
}

/// The first panic's message, if a task panicked.
pub fn reason() -> Option<String> {
    REASON.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Installs the panic hook: the default report on stderr, one line saying what the
/// agent does about it, and the record that starts the emergency stop.
pub fn install_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let message = match info.location() {
            Some(l) => format!("{} at {l}", payload(info.payload())),
            None => payload(info.payload()),
        };
        eprintln!(
            "nodeagent: internal error, a task panicked ({message}); stopping every process \
             gracefully, then exiting with code {EXIT_PANIC}"
        );
        record(message);
    }));
}

fn payload(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".into()
    }
}

/// The file that arms a fault (debug builds only).
#[cfg(debug_assertions)]
static FAULT_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The name of the fault file in the agent's state dir (its log dir when it has none).
pub const FAULT_FILE_NAME: &str = "inject-fault";

/// Debug builds: from now on, a task named in `dir/inject-fault` panics at its next
/// turn ([`inject`]). Release builds: nothing.
pub fn arm_faults(dir: &std::path::Path) {
    #[cfg(debug_assertions)]
    {
        let _ = FAULT_FILE.set(dir.join(FAULT_FILE_NAME));
    }
    #[cfg(not(debug_assertions))]
    let _ = dir;
}

/// Debug builds: panics when the armed fault file names `task` (supervisor,
/// membership, stats, events). Release builds: nothing, compiled away.
#[inline]
pub fn inject(task: &str) {
    #[cfg(debug_assertions)]
    if let Some(path) = FAULT_FILE.get() {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.split_whitespace().any(|t| t == task) {
                panic!("fault injected into the {task} task by {}", path.display());
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = task;
}
