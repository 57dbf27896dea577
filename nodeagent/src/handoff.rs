//! The hand-over file of a hot upgrade: what the agent writes in its state dir right
//! before it executes its binary again (every process with its pipes, the listening
//! sockets, its own boot), and what the next image reads back at start, checks, adopts
//! and deletes. The file is on disk, so every value in it is checked before use: that
//! it is this process's own (same pid, written moments ago), that each pid is a child
//! of this process leading its own group, that each fd is an open pipe or socket,
//! taken once, and that each name is valid. It neither starts nor stops processes.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::process::{self, FdKind};
use crate::supervisor::adopt::Adopted;

/// The file's name in the state dir.
pub const FILE: &str = "handoff.json";

/// The format of the file; a file of another version is not adopted.
pub const VERSION: u32 = 1;

/// A file older than this is stale: it belongs to an exec that never came back.
pub const MAX_AGE_SECS: f64 = 60.0;

/// The largest file read.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The most processes or sockets a file may list.
const MAX_ENTRIES: usize = 100_000;

/// What the agent hands over to its next image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub version: u32,
    /// The agent's pid: the next image runs in the same one.
    pub pid: u32,
    /// The agent's start time (clock ticks since boot, /proc/PID/stat), which an exec
    /// keeps: with the pid, it tells this very process from a later one with its pid.
    pub agent_start: u64,
    /// Unix time the file was written.
    pub written_at: f64,
    pub node: String,
    /// The boot and version that wrote it.
    pub boot_id: String,
    pub agent_version: String,
    pub processes: Vec<HandedProcess>,
    pub sockets: Vec<HandedSocket>,
}

/// One process, with the fds of its captured pipes in the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedProcess {
    pub watcher: String,
    pub wid: u32,
    pub pid: u32,
    /// Its process group; it leads it (equal to `pid`).
    pub pgid: u32,
    pub restarts: u32,
    /// Unix time it started.
    pub started_at: f64,
    pub ready: bool,
    #[serde(default)]
    pub stdout_fd: Option<i32>,
    #[serde(default)]
    pub stderr_fd: Option<i32>,
}

/// One listening socket of `[socket.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedSocket {
    pub name: String,
    pub fd: i32,
    /// Where it listens, as `listsockets` says.
    pub address: String,
}

/// Why a hand-over file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot write the hand-over file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the hand-over file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the hand-over file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// What a start found in the state dir.
#[derive(Debug)]
pub enum Found {
    /// No hand-over: a plain start.
    Nothing,
    /// A hand-over this start cannot adopt (another pid: the exec failed and the agent
    /// was started again; too old; another version); `why` says which. Its processes
    /// are left to the group ledger, which ends them.
    Stale { why: String, processes: usize },
    /// This process's own hand-over, checked.
    Adopt(Box<Adoption>),
}

/// A checked hand-over: what the new image takes.
#[derive(Debug)]
pub struct Adoption {
    pub from_boot: String,
    pub from_version: String,
    pub processes: Vec<Adopted>,
    /// The listening sockets, by name, with their address.
    pub sockets: Vec<(String, OwnedFd, String)>,
    /// Entries refused, each with why.
    pub refused: Vec<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes `h` to the state dir atomically (a whole file or none).
pub fn write(dir: &Path, h: &Handoff) -> Result<(), HandoffError> {
    let p = path(dir);
    let bytes = serde_json::to_vec(h).map_err(|e| HandoffError::Write {
        path: p.clone(),
        source: io::Error::other(e),
    })?;
    crate::state::write_durably(&p, &bytes, None).map_err(|source| HandoffError::Write {
        path: p.clone(),
        source,
    })
}

/// Removes the file, if there.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(path(dir));
}

/// Reads, deletes and checks the hand-over in `dir`, for `node` (this process). Fds are
/// taken (made close-on-exec) only for a file that is this process's own.
pub fn take(dir: &Path, node: &str) -> Result<Found, HandoffError> {
    let p = path(dir);
    let text = match read_capped(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(source) => return Err(HandoffError::Read { path: p, source }),
    };
    remove(dir);
    let invalid = |reason: String| HandoffError::Invalid {
        path: p.clone(),
        reason,
    };
    let h: Handoff = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    let me = (std::process::id(), own_start());
    if let Some(why) = stale(&h, node, me, protocol::unix_time()) {
        return Ok(Found::Stale {
            why,
            processes: h.processes.len(),
        });
    }
    if h.processes.len() > MAX_ENTRIES || h.sockets.len() > MAX_ENTRIES {
        return Err(invalid("it lists too many entries".into()));
    }
    Ok(Found::Adopt(Box::new(adopt(h))))
}

fn read_capped(p: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(p)?;
    let mut out = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_BYTES {
        return Err(io::Error::other("larger than 16 MiB"));
    }
    Ok(out)
}

/// This process's start time in clock ticks since boot (0 when unknown).
pub fn own_start() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| s.starttime)
        .unwrap_or(0)
}

/// Why `h` is not this process's hand-over, if it is not; `me` is this process's pid
/// and start time.
fn stale(h: &Handoff, node: &str, me: (u32, u64), now: f64) -> Option<String> {
    let (me, start) = me;
    if h.version != VERSION {
        return Some(format!(
            "it has format version {}, this agent reads {VERSION}",
            h.version
        ));
    }
    if h.pid != me {
        return Some(format!(
            "it was written by pid {}, and this agent is pid {me}: that upgrade never \
             completed (the new binary did not start)",
            h.pid
        ));
    }
    if h.agent_start != start {
        return Some(format!(
            "it was written by an earlier process with this pid {me} (started at tick {}, \
             this one at {start})",
            h.agent_start
        ));
    }
    if h.node != node {
        return Some(format!("it was written for node '{}'", h.node));
    }
    let age = now - h.written_at;
    if !age.is_finite() || !(-5.0..=MAX_AGE_SECS).contains(&age) {
        return Some(format!("it was written {age:.0}s ago"));
    }
    None
}

/// Checks each entry and takes its fds; an entry that fails a check is refused (and
/// its fds, if any, left alone).
fn adopt(h: Handoff) -> Adoption {
    let me = std::process::id();
    let mut taken: BTreeSet<i32> = BTreeSet::new();
    let mut seen_pids: BTreeSet<u32> = BTreeSet::new();
    let mut refused = Vec::new();
    let mut processes = Vec::new();
    for p in h.processes {
        match check_process(&p, me, &mut seen_pids, &mut taken) {
            Ok(a) => processes.push(a),
            Err(why) => refused.push(format!(
                "process {} of watcher '{}': {why}",
                p.pid,
                p.watcher.escape_debug()
            )),
        }
    }
    let mut sockets = Vec::new();
    for s in h.sockets {
        let checked = crate::sockets::check_name(&s.name)
            .and_then(|()| claim(s.fd, FdKind::Socket, &mut taken));
        match checked {
            Ok(fd) => sockets.push((s.name, fd, s.address)),
            Err(why) => refused.push(format!("socket '{}': {why}", s.name.escape_debug())),
        }
    }
    Adoption {
        from_boot: h.boot_id,
        from_version: h.agent_version,
        processes,
        sockets,
        refused,
    }
}

fn check_process(
    p: &HandedProcess,
    me: u32,
    seen: &mut BTreeSet<u32>,
    taken: &mut BTreeSet<i32>,
) -> Result<Adopted, String> {
    protocol::subjects::validate_token(&p.watcher).map_err(|e| e.to_string())?;
    if p.pid <= 1 || i32::try_from(p.pid).is_err() {
        return Err("not a valid pid".into());
    }
    if p.pgid != p.pid {
        return Err(format!("it does not lead its group ({})", p.pgid));
    }
    if p.wid == 0 {
        return Err("wid 0".into());
    }
    if !p.started_at.is_finite() {
        return Err("no valid start time".into());
    }
    if !seen.insert(p.pid) {
        return Err("listed twice".into());
    }
    if process::parent_of(p.pid) != Some(me) {
        return Err("it is not a child of this agent (gone, or another's)".into());
    }
    let mut fd = |raw: Option<i32>| raw.map(|r| claim(r, FdKind::Pipe, taken)).transpose();
    Ok(Adopted {
        process: crate::supervisor::adopt::HandedProcess {
            watcher: p.watcher.clone(),
            wid: p.wid,
            pid: p.pid,
            restarts: p.restarts,
            started_at: p.started_at,
            ready: p.ready,
        },
        stdout: fd(p.stdout_fd)?,
        stderr: fd(p.stderr_fd)?,
    })
}

/// Takes fd `raw` once.
fn claim(raw: i32, kind: FdKind, taken: &mut BTreeSet<i32>) -> Result<OwnedFd, String> {
    if !taken.insert(raw) {
        return Err(format!("fd {raw} is listed twice"));
    }
    process::adopt_fd(raw, kind).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff() -> Handoff {
        Handoff {
            version: VERSION,
            pid: 42,
            agent_start: 7,
            written_at: 1000.0,
            node: "n1".into(),
            boot_id: "b".into(),
            agent_version: "0.1.0".into(),
            processes: vec![],
            sockets: vec![],
        }
    }

    #[test]
    fn only_a_fresh_file_of_this_pid_and_node_is_taken() {
        let h = handoff();
        assert_eq!(stale(&h, "n1", (42, 7), 1001.0), None);
        /// The file, the node, this process (pid, start), the time, and what is said.
        type Case<'a> = (Handoff, &'a str, (u32, u64), f64, &'a str);
        let cases: &[Case] = &[
            (h.clone(), "n1", (43, 7), 1001.0, "written by pid 42"),
            (
                h.clone(),
                "n1",
                (42, 8),
                1001.0,
                "an earlier process with this pid",
            ),
            (h.clone(), "n2", (42, 7), 1001.0, "for node 'n1'"),
            (h.clone(), "n1", (42, 7), 1100.0, "100s ago"),
            (h.clone(), "n1", (42, 7), 900.0, "-100s ago"),
            (h.clone(), "n1", (42, 7), f64::NAN, "NaNs ago"),
            (
                Handoff {
                    version: 9,
                    ..h.clone()
                },
                "n1",
                (42, 7),
                1001.0,
                "version 9",
            ),
        ];
        for (h, node, me, now, want) in cases {
            let why = stale(h, node, *me, *now).unwrap_or_default();
            assert!(why.contains(want), "{why:?} lacks {want:?}");
        }
    }

    #[test]
    fn entries_that_fail_a_check_are_refused_each_saying_why() {
        let me = std::process::id();
        let p = |watcher: &str, pid: u32, pgid: u32, fd: Option<i32>| HandedProcess {
            watcher: watcher.into(),
            wid: 1,
            pid,
            pgid,
            restarts: 0,
            started_at: 1.0,
            ready: true,
            stdout_fd: fd,
            stderr_fd: None,
        };
        let h = Handoff {
            pid: me,
            processes: vec![
                p("bad name", 5000, 5000, None),
                p("w", 1, 1, None),
                p("w", 5001, 7, None),
                // Not a child of the test.
                p("w", me, me, None),
            ],
            sockets: vec![HandedSocket {
                name: "s".into(),
                // stdin is never handed over.
                fd: 0,
                address: "x".into(),
            }],
            ..handoff()
        };
        let a = adopt(h);
        assert!(a.processes.is_empty());
        let all = a.refused.join("\n");
        for want in [
            "watcher 'bad name'",
            "not a valid pid",
            "does not lead its group",
            "not a child of this agent",
            "fd 0 is stdio",
        ] {
            assert!(all.contains(want), "{all}\nlacks {want}");
        }
    }

    #[test]
    fn a_file_round_trips_and_is_deleted_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let h = Handoff {
            pid: std::process::id(),
            agent_start: own_start(),
            written_at: protocol::unix_time(),
            ..handoff()
        };
        write(dir.path(), &h).unwrap();
        let found = take(dir.path(), "n1").unwrap();
        assert!(matches!(found, Found::Adopt(a) if a.from_boot == "b"));
        assert!(!path(dir.path()).exists());
        assert!(matches!(take(dir.path(), "n1").unwrap(), Found::Nothing));
        std::fs::write(path(dir.path()), b"{\"version\": 1, \"evil\": true}").unwrap();
        assert!(take(dir.path(), "n1").is_err());
    }
}
