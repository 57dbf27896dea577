//! Where a watcher's processes write: `stdout` and `stderr` (captured into rotating
//! files, discarded, inherited, or a file under the log dir or an `[agent] output_dirs`
//! directory), and the rotation keys `log_max_bytes` and `log_backups`. Nothing here
//! opens a file.

use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;

use protocol::WatcherOptions;
use serde::Serialize;

use super::Problems;

/// Where a process's stdout or stderr goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Output {
    /// Into rotating files under the agent's log dir.
    Capture,
    Discard,
    /// The agent's own stream.
    Inherit,
    /// Appended to a file.
    File(PathBuf),
}

impl Output {
    /// Reads an output option; a file must be beneath one of `roots` (canonical dirs).
    fn parse(s: &str, roots: &[PathBuf]) -> Result<Output, String> {
        Ok(match s {
            "capture" => Output::Capture,
            "discard" | "null" | "/dev/null" => Output::Discard,
            "inherit" => Output::Inherit,
            path => Output::File(file_output(path, roots)?),
        })
    }

    pub(super) fn as_option(&self) -> String {
        match self {
            Output::Capture => "capture".into(),
            Output::Discard => "discard".into(),
            Output::Inherit => "inherit".into(),
            Output::File(p) => p.display().to_string(),
        }
    }
}

/// The directories file outputs may be in, for watcher options that do not come from
/// the config file (`set`, `add`, the state file). Empty until the agent sets them:
/// until then every file output is refused.
static OUTPUT_ROOTS: RwLock<Vec<PathBuf>> = RwLock::new(Vec::new());

/// Makes `roots` (see [`AgentConfig::output_roots`]) the directories that watcher
/// options set at runtime or restored from the state file may send output to. The
/// agent calls it at start, before it reads its state.
///
/// [`AgentConfig::output_roots`]: super::AgentConfig::output_roots
pub fn set_output_roots(roots: Vec<PathBuf>) {
    *OUTPUT_ROOTS.write().unwrap_or_else(|e| e.into_inner()) = roots;
}

pub(super) fn output_roots() -> Vec<PathBuf> {
    OUTPUT_ROOTS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// True when `value`, given for `stdout` or `stderr`, names a file (and so says where
/// the agent writes): such a change needs `allow_remote_exec`.
pub fn is_file_output(value: &serde_json::Value) -> bool {
    match value.as_str() {
        Some(s) => !matches!(s, "capture" | "discard" | "null" | "/dev/null" | "inherit"),
        None => false,
    }
}

/// `path` made absolute with every symbolic link of its existing part resolved; the part
/// that does not exist yet is appended as written. `None` when that part holds `..`.
pub(super) fn resolve_lenient(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    Component::Normal(p) => out.push(p),
                    Component::CurDir => {}
                    _ => return None,
                }
            }
            return Some(out);
        }
        rest.push(existing.components().next_back()?);
        existing = existing.parent()?;
    }
}

/// Checks a file output: an absolute path without `..`, in a directory beneath one of
/// `roots`. Returns it with its directory resolved (symbolic links followed), which is
/// what the process will open.
fn file_output(path: &str, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let hint = "write \"capture\", \"discard\", \"inherit\" or a file under the log dir or an [agent] output_dirs directory";
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path; {hint}"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{path:?} holds '..'; {hint}"));
    }
    let (Some(dir), Some(file)) = (p.parent(), p.file_name()) else {
        return Err(format!("{path:?} names no file; {hint}"));
    };
    let Some(full) = resolve_lenient(dir).map(|d| d.join(file)) else {
        return Err(format!("{path:?} cannot be resolved; {hint}"));
    };
    if roots.iter().any(|r| full.starts_with(r) && full != *r) {
        return Ok(full);
    }
    let allowed = if roots.is_empty() {
        "none".to_owned()
    } else {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{path:?} is outside the directories output files may go to ({allowed}); \
         put it under one of them or add its directory to [agent] output_dirs"
    ))
}

/// A watcher's output keys, validated.
pub(super) struct Outputs {
    pub stdout: Output,
    pub stderr: Output,
    pub log_max_bytes: u64,
    pub log_backups: u32,
}

/// Reads `stdout`, `stderr` (files allowed beneath `roots`), `log_max_bytes` and
/// `log_backups`, with their defaults.
pub(super) fn from_options(o: &WatcherOptions, roots: &[PathBuf], t: &mut Problems) -> Outputs {
    let log_backups = o.log_backups.unwrap_or(5);
    let log_max_bytes = o.log_max_bytes.unwrap_or(10 * 1024 * 1024);
    t.count("log_backups", i64::from(log_backups));
    t.count(
        "log_max_bytes",
        i64::try_from(log_max_bytes).unwrap_or(i64::MAX),
    );
    let mut output = |key: &str, v: &Option<String>| {
        Output::parse(v.as_deref().unwrap_or("capture"), roots).unwrap_or_else(|m| {
            t.at(key, m);
            Output::Capture
        })
    };
    Outputs {
        stdout: output("stdout", &o.stdout),
        stderr: output("stderr", &o.stderr),
        log_max_bytes,
        log_backups,
    }
}
