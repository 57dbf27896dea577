//! The process groups this agent runs, kept in `groups.log` in its state dir (its log
//! dir when no state dir is set), so that the next start can end what a crashed agent
//! (SIGKILL, OOM killer) left behind. The parent-death signal ends each group's leader
//! with the agent, but not the leader's own children: they stay in the group, which is
//! how they are found again.
//!
//! The file is a header line then one line per change, appended (cheap at any spawn
//! rate) and rewritten compactly when it grows:
//! ```text
//! boot <kernel boot id> agent <pid> <start time> sid <session id>
//! + <pgid> <leader start time>
//! - <pgid>
//! ```
//! Start times are in clock ticks since boot (/proc/<pid>/stat). A group is ended only
//! when the machine has not rebooted since, the old agent is gone, and the group's
//! leader (if still alive) is the same process (same start time); its members must have
//! started no earlier than the leader and be in the old agent's session (a process
//! group never leaves the session it was made in). A pid, and so a group id, is not
//! reused while any member of the group lives; once the whole group is gone, its id may
//! lead a stranger's group, which the start time and the session tell apart.
//!
//! The file is private (0600) and rewritten atomically and durably. Appends are not
//! fsynced: the ledger only matters after a crash of the agent on the same boot, and
//! the kernel keeps what was written then.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::Signal;

use crate::process;

const FILE: &str = "groups.log";
/// Rewrite the file when it holds this many more lines than live groups.
const COMPACT_AFTER: usize = 4096;

/// This boot of the machine.
fn kernel_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A process's start time in clock ticks since boot, if it is alive.
fn start_time(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    p.stat().ok().map(|s| s.starttime)
}

/// The session of this agent, which its groups belong to. It can be 0: a process whose
/// session was made outside its pid namespace (a container's) sees its session as 0,
/// and so does every other process that session holds.
fn session_id() -> Option<u32> {
    nix::unistd::getsid(None)
        .ok()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
}

/// What a previous run wrote.
#[derive(Debug, Default, PartialEq)]
struct Record {
    boot_id: String,
    agent_pid: u32,
    agent_start: u64,
    /// The old agent's session; `None` when unknown (a ledger of an older version).
    session: Option<u32>,
    /// pgid -> the leader's start time.
    groups: BTreeMap<u32, u64>,
}

fn parse(text: &str) -> Record {
    let mut r = Record::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["boot", boot, "agent", pid, start, rest @ ..] => {
                r.boot_id = (*boot).to_owned();
                r.agent_pid = pid.parse().unwrap_or(0);
                r.agent_start = start.parse().unwrap_or(0);
                r.session = match rest {
                    ["sid", sid] => sid.parse().ok(),
                    _ => None,
                };
            }
            ["+", pgid, start] => {
                if let (Ok(g), Ok(s)) = (pgid.parse(), start.parse()) {
                    r.groups.insert(g, s);
                }
            }
            ["-", pgid] => {
                if let Ok(g) = pgid.parse::<u32>() {
                    r.groups.remove(&g);
                }
            }
            // A line cut short by the crash: what it said is lost, nothing else.
            _ => {}
        }
    }
    r
}

/// The live processes of group `pgid` that started no earlier than `leader_start`, in
/// session `session` (any session when `None`), or nothing when the group's id now belongs
/// to another leader.
fn members_of(pgid: u32, leader_start: u64, session: Option<u32>) -> Vec<u32> {
    if let Some(now) = start_time(pgid) {
        if now != leader_start {
            return vec![];
        }
    }
    let Ok(all) = procfs::process::all_processes() else {
        return vec![];
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| {
            s.pgrp == pgid as i32
                && s.starttime >= leader_start
                && session.is_none_or(|sid| i64::from(s.session) == i64::from(sid))
                && s.state != 'Z'
        })
        .map(|s| s.pid as u32)
        .collect()
}

/// The ledger of this run's groups.
#[derive(Debug)]
pub struct Groups {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    header: String,
    live: BTreeMap<u32, u64>,
    lines: usize,
}

impl Groups {
    /// Ends what a crashed previous run left in `dir`, then starts this run's ledger
    /// there. Returns the ledger and how many leftover processes were killed.
    pub fn open(dir: &Path) -> io::Result<(Groups, usize)> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(FILE);
        let killed = match std::fs::read_to_string(&path) {
            Ok(text) => end_leftovers(&parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let me = std::process::id();
        let mut header = format!(
            "boot {} agent {me} {}",
            kernel_boot_id(),
            start_time(me).unwrap_or(0),
        );
        if let Some(sid) = session_id() {
            header.push_str(&format!(" sid {sid}"));
        }
        header.push('\n');
        let groups = Groups {
            path,
            inner: Mutex::new(Inner {
                file: None,
                header,
                live: BTreeMap::new(),
                lines: 0,
            }),
        };
        groups.rewrite(&mut groups.lock())?;
        Ok((groups, killed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the header and the live groups to a new file and appends from there on.
    fn rewrite(&self, inner: &mut Inner) -> io::Result<()> {
        let mut text = inner.header.clone();
        for (g, s) in &inner.live {
            text.push_str(&format!("+ {g} {s}\n"));
        }
        crate::state::write_durably(&self.path, text.as_bytes(), None)?;
        inner.file = Some(
            OpenOptions::new()
                .append(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&self.path)?,
        );
        inner.lines = inner.live.len();
        Ok(())
    }

    fn append(&self, inner: &mut Inner, line: &str) {
        // The rewrite writes the live groups, this change included, and counts them.
        let result = if inner.lines > inner.live.len() + COMPACT_AFTER {
            self.rewrite(inner)
        } else {
            inner.lines += 1;
            match inner.file.as_mut() {
                Some(f) => f.write_all(line.as_bytes()),
                None => Ok(()),
            }
        };
        if let Err(e) = result {
            tracing::warn!(
                "cannot write {}: {e}; leftovers of a crash may not be found",
                self.path.display()
            );
        }
    }

    /// Notes a new group, led by the process `pgid` just started.
    pub fn started(&self, pgid: u32) {
        let Some(start) = start_time(pgid) else {
            return; // Already gone: nothing to find after a crash.
        };
        let mut inner = self.lock();
        inner.live.insert(pgid, start);
        self.append(&mut inner, &format!("+ {pgid} {start}\n"));
    }

    /// Notes that the leader of group `pgid` was reaped.
    pub fn ended(&self, pgid: u32) {
        let mut inner = self.lock();
        if inner.live.remove(&pgid).is_some() {
            self.append(&mut inner, &format!("- {pgid}\n"));
        }
    }
}

/// Kills the processes left in the groups of `old`, when that run crashed on this boot.
fn end_leftovers(old: &Record) -> usize {
    if old.groups.is_empty() || old.boot_id != kernel_boot_id() {
        return 0;
    }
    let me = std::process::id();
    if old.agent_pid == me && start_time(me) == Some(old.agent_start) {
        // This process's own previous image, before an upgrade's exec: the hand-over
        // adopts its groups.
        return 0;
    }
    if old.agent_pid != 0 && start_time(old.agent_pid) == Some(old.agent_start) {
        tracing::warn!(
            "the agent that wrote this state dir (pid {}) is still running; \
             leaving its processes alone",
            old.agent_pid
        );
        return 0;
    }
    let mut killed = 0;
    let mut ended = Vec::new();
    for (&pgid, &start) in &old.groups {
        let members = members_of(pgid, start, old.session);
        if members.is_empty() {
            continue;
        }
        tracing::warn!(
            "killing {} process(es) {members:?} left in group {pgid} by a previous run \
             of this agent (pid {}) that did not stop them",
            members.len(),
            old.agent_pid
        );
        for pid in &members {
            let _ = process::signal_pid(*pid, Signal::SIGKILL);
        }
        killed += members.len();
        ended.extend(members.iter().map(|p| (*p, start_time(*p))));
    }
    wait_gone(&ended);
    killed
}

/// How long the start waits for the leftovers it killed to be gone.
const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits, at most [`LEFTOVER_WAIT`], until each process killed has exited (a zombie
/// has: its files, a listening socket among them, are closed), so that what they held
/// is free for this run.
fn wait_gone(killed: &[(u32, Option<u64>)]) {
    let alive = |(pid, start): &(u32, Option<u64>)| {
        let Ok(p) = procfs::process::Process::new(i32::try_from(*pid).unwrap_or(i32::MAX)) else {
            return false;
        };
        p.stat()
            .is_ok_and(|s| Some(s.starttime) == *start && s.state != 'Z')
    };
    let until = std::time::Instant::now() + LEFTOVER_WAIT;
    while killed.iter().any(alive) {
        if std::time::Instant::now() > until {
            tracing::warn!("some processes of a previous run survive SIGKILL; going on");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_additions_and_removals_and_skips_a_torn_line() {
        let r = parse("boot abc agent 10 99 sid 9\n+ 5 100\n+ 6 101\n- 5\n+ 7 1");
        assert_eq!(r.boot_id, "abc");
        assert_eq!((r.agent_pid, r.agent_start, r.session), (10, 99, Some(9)));
        assert_eq!(r.groups, BTreeMap::from([(6, 101), (7, 1)]));
        let torn = parse("boot abc agent 10 99\n+ 5 100\n+ 6");
        assert_eq!(torn.groups, BTreeMap::from([(5, 100)]));
        assert_eq!(torn.session, None, "a ledger without a session");
        let zero = parse("boot abc agent 10 99 sid 0\n");
        assert_eq!(zero.session, Some(0), "a container's session is a session");
    }

    #[test]
    fn ledger_holds_the_live_groups_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let (g, killed) = Groups::open(dir.path()).unwrap();
        assert_eq!(killed, 0);
        let me = std::process::id();
        for _ in 0..(COMPACT_AFTER + 10) {
            g.started(me);
            g.ended(me);
        }
        g.started(me);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.lines().count() < COMPACT_AFTER + 10, "not compacted");
        let r = parse(&text);
        assert_eq!(r.boot_id, kernel_boot_id());
        assert_eq!(r.agent_pid, me);
        assert_eq!(r.session, session_id());
        assert_eq!(r.groups.keys().copied().collect::<Vec<_>>(), vec![me]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn leaves_groups_of_a_live_agent_or_another_boot_alone() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let mut old = Record {
            boot_id: kernel_boot_id(),
            agent_pid: me,
            agent_start: start,
            session: session_id(),
            groups: BTreeMap::from([(me, start)]),
        };
        assert_eq!(end_leftovers(&old), 0, "the writer is alive");
        old.agent_pid = 0;
        old.boot_id = "another-boot".into();
        assert_eq!(end_leftovers(&old), 0, "another boot");
        // A group id whose leader is another process now.
        assert!(members_of(me, start + 1, None).is_empty());
    }

    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// Alive and not a zombie.
    fn alive(pid: u32) -> bool {
        procfs::process::Process::new(pid as i32)
            .and_then(|p| p.stat())
            .is_ok_and(|s| s.state != 'Z')
    }

    /// A crashed run's record of `groups`, on this boot, in this session.
    fn crashed(groups: &[(u32, u64)]) -> Record {
        Record {
            boot_id: kernel_boot_id(),
            agent_pid: 0,
            agent_start: 0,
            session: session_id(),
            groups: groups.iter().copied().collect(),
        }
    }

    /// Runs `script` with sh and returns it and the pid it prints first.
    fn sh_printing_a_pid(
        script: &str,
        setup: impl FnOnce(&mut Command),
    ) -> (std::process::Child, u32) {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stdout(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line.trim().parse().unwrap())
    }

    struct KillOnDrop(Vec<u32>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &p in &self.0 {
                let _ = process::signal_pid(p, Signal::SIGKILL);
            }
        }
    }

    #[test]
    fn a_recycled_leader_pid_is_never_killed() {
        // A process older than the recorded leader holds the group's id: it is not the
        // leader the old agent started.
        let mut older = Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let _k = KillOnDrop(vec![older.id()]);
        let start = start_time(older.id()).unwrap();
        assert_eq!(end_leftovers(&crashed(&[(older.id(), start + 100)])), 0);
        assert!(alive(older.id()));
        // A process started after the recorded leader, in no group of that id.
        let mut later = Command::new("sleep").arg("1000").spawn().unwrap();
        let _k2 = KillOnDrop(vec![later.id()]);
        let start = start_time(later.id()).unwrap();
        assert_eq!(end_leftovers(&crashed(&[(later.id(), start - 1)])), 0);
        // Even with the very start time noted, it leads no group: nothing to end.
        assert_eq!(end_leftovers(&crashed(&[(later.id(), start)])), 0);
        assert!(alive(later.id()) && alive(older.id()));
        let _ = (older.kill(), older.wait(), later.kill(), later.wait());
    }

    #[test]
    fn a_stranger_group_with_a_recycled_id_and_no_leader_survives() {
        // A group the old agent's id was recycled for, in another session, whose
        // leader is gone: its member is younger than the noted leader, as a real
        // leftover would be, and only the session tells it apart.
        let (mut leader, member) = sh_printing_a_pid("sleep 1000 >/dev/null & echo $!", |c| {
            c.process_group(0);
        });
        let _k = KillOnDrop(vec![member]);
        let pgid = leader.id();
        assert!(leader.wait().unwrap().success());
        // The stranger: a session (and group) of its own, its leader gone.
        let (mut sleader, smember) =
            sh_printing_a_pid("setsid sh -c 'sleep 1000 >/dev/null & echo $!'", |_| {});
        let _k2 = KillOnDrop(vec![smember]);
        let _ = sleader.wait();
        let spgid = procfs::process::Process::new(smember as i32)
            .unwrap()
            .stat()
            .unwrap()
            .pgrp as u32;
        let noted = start_time(smember).unwrap().saturating_sub(1);
        assert_eq!(
            members_of(spgid, noted, None),
            vec![smember],
            "the id alone would kill it"
        );
        assert_eq!(end_leftovers(&crashed(&[(spgid, noted)])), 0);
        // An agent in a container sees its own session as 0; 0 is still a session.
        assert!(members_of(spgid, noted, Some(0)).is_empty());
        assert!(alive(smember));
        // The same shape in the old agent's session is a leftover, and is ended.
        let noted = start_time(member).unwrap().saturating_sub(1);
        assert_eq!(end_leftovers(&crashed(&[(pgid, noted)])), 1);
        let t = std::time::Instant::now();
        while alive(member) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "{member} lives on"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(alive(smember));
    }
}
