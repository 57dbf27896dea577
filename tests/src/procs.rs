//! Facts about real processes, read from /proc: children, process groups, liveness and
//! command lines. Read-only; a zombie counts as dead everywhere here.

use std::path::Path;

/// The fields of `/proc/PID/stat` the tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// R, S, D, Z, T, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// When it started, in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl Stat {
    /// Dead or a zombie waiting to be reaped.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // Fields 6..=21 lie between the group and the start time (field 22).
    let start_ticks = fields.nth(16)?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
        start_ticks,
    })
}

/// Every live (not zombie) process on the machine.
pub fn all_processes() -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|s| !s.is_dead())
        .collect()
}

/// The live direct children of `ppid`, sorted.
pub fn children_pids(ppid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_processes()
        .into_iter()
        .filter(|s| s.ppid == ppid)
        .map(|s| s.pid)
        .collect();
    v.sort_unstable();
    v
}

/// The live members of process group `pgid`, sorted.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_processes()
        .into_iter()
        .filter(|s| s.pgrp == pgid)
        .map(|s| s.pid)
        .collect();
    v.sort_unstable();
    v
}

/// The process group of `pid`, while it is alive.
pub fn pgrp_of(pid: u32) -> Option<u32> {
    stat(pid).filter(|s| !s.is_dead()).map(|s| s.pgrp)
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !s.is_dead())
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// The live processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut v: Vec<u32> = all_processes()
        .into_iter()
        .filter(|s| s.pid != me)
        .filter(|s| cmdline(s.pid).is_some_and(|c| c.contains(needle)))
        .map(|s| s.pid)
        .collect();
    v.sort_unstable();
    v
}

/// How many live processes have `needle` in their command line.
pub fn count_processes_with_cmdline(needle: &str) -> usize {
    pids_with_cmdline(needle).len()
}

/// A number of seconds no other test (or anything else on the machine) uses, to give a
/// `sleep` a command line that can be counted without counting anyone else's.
pub fn unique_secs() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("9{:07}{n:03}", std::process::id() % 10_000_000)
}

/// The raw environment of `pid` (`KEY=VALUE` entries), empty when it is gone.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `key` in the environment of `pid`.
pub fn env_var(pid: u32, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    environ(pid)
        .into_iter()
        .find_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
}

/// True when the raw environment of `pid` contains `needle`.
pub fn environ_contains(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|raw| raw.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// The live processes (not this one) whose environment contains `needle`, sorted.
pub fn pids_with_environ(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut v: Vec<u32> = all_processes()
        .into_iter()
        .filter(|s| s.pid != me && environ_contains(s.pid, needle))
        .map(|s| s.pid)
        .collect();
    v.sort_unstable();
    v
}

/// A field of `/proc/PID/status` (`Uid`, `Gid`, `State`, ...), its value trimmed.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// The real, effective, saved and filesystem ids of a `Uid:` or `Gid:` status line.
pub fn ids(pid: u32, key: &str) -> Option<Vec<u32>> {
    status_field(pid, key)?
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect()
}

/// The working directory of `pid`.
pub fn cwd(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// When `pid` started, in seconds since boot (from its start time in clock ticks).
pub fn start_secs(pid: u32) -> Option<f64> {
    let ticks = stat(pid)?.start_ticks;
    Some(ticks as f64 / procfs::ticks_per_second() as f64)
}

/// Kills a process group when dropped: for tests that may leave a group behind on
/// purpose (or by a bug) and must not leak it.
#[derive(Debug)]
pub struct KillGroupOnDrop(pub u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(is_alive(me));
        assert_eq!(pgrp_of(me), Some(s.pgrp));
        assert!(cmdline(me).is_some());
        // Started after boot, before now.
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let started = start_secs(me).unwrap();
        assert!(started > 0.0 && started <= up, "{started} vs uptime {up}");
        assert_ne!(unique_secs(), unique_secs());
    }
}
