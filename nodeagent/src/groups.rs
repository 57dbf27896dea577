//! The process groups this agent runs, kept in `groups.log` in its state dir (its log
//! dir when no state dir is set), so that the next start can end what a crashed agent
//! (SIGKILL, OOM killer) left behind. The parent-death signal ends each group's leader
//! with the agent, but not the leader's own children: they stay in the group, which is
//! how they are found again.
//!
//! The file is a header line then one line per change, appended (cheap at any spawn
//! rate) and rewritten compactly when it grows:
//! ```text
//! boot <kernel boot id> agent <pid> <start time>
//! + <pgid> <leader start time>
//! - <pgid>
//! ```
//! Start times are in clock ticks since boot (/proc/<pid>/stat). A group is ended only
//! when the machine has not rebooted since, the old agent is gone, and the group's
//! leader (if still alive) is the same process; its members must have started no
//! earlier than the leader. A group id cannot be reused while any member lives, so
//! what is found is what the old agent started.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

/// What a previous run wrote.
#[derive(Debug, Default, PartialEq)]
struct Record {
    boot_id: String,
    agent_pid: u32,
    agent_start: u64,
    /// pgid -> the leader's start time.
    groups: BTreeMap<u32, u64>,
}

fn parse(text: &str) -> Record {
    let mut r = Record::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["boot", boot, "agent", pid, start] => {
                r.boot_id = (*boot).to_owned();
                r.agent_pid = pid.parse().unwrap_or(0);
                r.agent_start = start.parse().unwrap_or(0);
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

/// The live processes of group `pgid` that started no earlier than `leader_start`, or
/// nothing when the group's id now belongs to another leader.
fn members_of(pgid: u32, leader_start: u64) -> Vec<u32> {
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
        .filter(|s| s.pgrp == pgid as i32 && s.starttime >= leader_start && s.state != 'Z')
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
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let killed = match std::fs::read_to_string(&path) {
            Ok(text) => end_leftovers(&parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let me = std::process::id();
        let header = format!(
            "boot {} agent {me} {}\n",
            kernel_boot_id(),
            start_time(me).unwrap_or(0)
        );
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
        let tmp = self.path.with_extension("log.tmp");
        let mut text = inner.header.clone();
        for (g, s) in &inner.live {
            text.push_str(&format!("+ {g} {s}\n"));
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)?;
        inner.file = Some(OpenOptions::new().append(true).open(&self.path)?);
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
    if old.agent_pid != 0 && start_time(old.agent_pid) == Some(old.agent_start) {
        tracing::warn!(
            "the agent that wrote this state dir (pid {}) is still running; \
             leaving its processes alone",
            old.agent_pid
        );
        return 0;
    }
    let mut killed = 0;
    for (&pgid, &start) in &old.groups {
        let members = members_of(pgid, start);
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
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_additions_and_removals_and_skips_a_torn_line() {
        let r = parse("boot abc agent 10 99\n+ 5 100\n+ 6 101\n- 5\n+ 7 1");
        assert_eq!(r.boot_id, "abc");
        assert_eq!((r.agent_pid, r.agent_start), (10, 99));
        assert_eq!(r.groups, BTreeMap::from([(6, 101), (7, 1)]));
        let torn = parse("boot abc agent 10 99\n+ 5 100\n+ 6");
        assert_eq!(torn.groups, BTreeMap::from([(5, 100)]));
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
        assert_eq!(r.groups.keys().copied().collect::<Vec<_>>(), vec![me]);
    }

    #[test]
    fn leaves_groups_of_a_live_agent_or_another_boot_alone() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        let mut old = Record {
            boot_id: kernel_boot_id(),
            agent_pid: me,
            agent_start: start,
            groups: BTreeMap::from([(me, start)]),
        };
        assert_eq!(end_leftovers(&old), 0, "the writer is alive");
        old.agent_pid = 0;
        old.boot_id = "another-boot".into();
        assert_eq!(end_leftovers(&old), 0, "another boot");
        // A group id whose leader is another process now.
        assert!(members_of(me, start + 1).is_empty());
    }
}
