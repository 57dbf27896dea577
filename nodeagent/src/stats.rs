//! Samples /proc (procfs) for the stats stream: per-process CPU and memory, the agent's
//! own figures and the host's. It reads only what the caller hands it and never touches
//! or mutates supervisor state; the caller runs [`Sampler::sample`] on a blocking thread.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use procfs::{Current, LoadAverage, Meminfo};
use protocol::reply::WatcherState;
use protocol::stats::{HostStats, ProcessStats, WatcherStats};

/// What the sampler needs to know about one watcher, copied out of the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherInput {
    pub name: String,
    pub service: String,
    pub state: WatcherState,
    /// The wanted process count.
    pub numprocesses: u32,
    /// Restarts of all its slots, including slots with no process running now.
    pub restarts: u32,
    /// Its running processes.
    pub processes: Vec<ProcessInput>,
}

/// One running process of a watcher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessInput {
    pub wid: u32,
    pub pid: u32,
    /// Unix time it started, in seconds.
    pub started_at: f64,
    /// How many times its slot was started again after an exit.
    pub restarts: u32,
    /// How it is doing by its checks.
    pub health: Option<protocol::reply::ProcessHealth>,
}

/// The most stat files kept open between samples, whatever the open files limit.
const MAX_KEPT_FILES: usize = 16_384;

/// CPU time seen for one process at one sample.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    /// Start time in clock ticks since boot: tells a reused pid from the old process.
    starttime: u64,
    /// utime + stime, in clock ticks.
    ticks: u64,
    at: Instant,
}

/// What the sampler remembers of one pid between samples.
#[derive(Debug)]
struct Tracked {
    mark: CpuMark,
    /// `/proc/<pid>/stat`, kept open: reading it again at offset 0 costs about a third
    /// of opening it anew. Once the process is reaped, reading it fails.
    file: Option<File>,
}

/// The figures read from one `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy)]
struct ProcReading {
    starttime: u64,
    ticks: u64,
    rss_pages: u64,
}

/// Turns successive reads of /proc into CPU percentages. Keeps, per pid, only the CPU
/// time of the previous sample and its open stat file; pids that were not in the last
/// sample are forgotten and their files closed.
#[derive(Debug)]
pub struct Sampler {
    ticks_per_second: f64,
    page_size: u64,
    cpu_count: u32,
    agent_pid: u32,
    agent: Option<CpuMark>,
    /// pid -> what the previous sample saw.
    previous: HashMap<u32, Tracked>,
    /// Filled during a sample, then swapped with `previous` (keeps both allocations).
    current: HashMap<u32, Tracked>,
    /// How many stat files may stay open between samples.
    max_kept_files: usize,
    kept_files: usize,
    path: String,
    buf: Vec<u8>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    /// A sampler that keeps up to a quarter of the open files limit (as it is now) of
    /// stat files open between samples. Raise the soft `RLIMIT_NOFILE` before, if needed.
    pub fn new() -> Sampler {
        let limit = open_files_soft_limit().unwrap_or(1024);
        Sampler::with_max_kept_files((limit / 4).min(MAX_KEPT_FILES))
    }

    /// A sampler that keeps at most `max` stat files open between samples; pids past
    /// that are opened anew at each sample (slower, but no file descriptors held).
    pub fn with_max_kept_files(max: usize) -> Sampler {
        let cpu_count = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Sampler {
            ticks_per_second: procfs::ticks_per_second().max(1) as f64,
            page_size: procfs::page_size(),
            cpu_count,
            agent_pid: std::process::id(),
            agent: None,
            previous: HashMap::new(),
            current: HashMap::new(),
            max_kept_files: max,
            kept_files: 0,
            path: String::with_capacity(32),
            buf: vec![0; 4096],
        }
    }

    /// How many pids the sampler remembers from the previous sample.
    pub fn tracked_pids(&self) -> usize {
        self.previous.len()
    }

    /// How many stat files the sampler holds open now.
    pub fn open_files(&self) -> usize {
        self.kept_files
    }

    /// Reads the host, the agent and every process in `input`. A process whose pid is
    /// gone (or no longer the same process) is left out of the result. CPU percentages
    /// are of one core, over the time since the previous sample; 0 at a pid's first one.
    pub fn sample(&mut self, input: &[WatcherInput]) -> (HostStats, Vec<WatcherStats>) {
        let now = Instant::now();
        let unix_now = protocol::unix_time();
        self.current.clear();
        let mut watchers = Vec::with_capacity(input.len());
        for w in input {
            let mut processes = Vec::with_capacity(w.processes.len());
            for p in &w.processes {
                let Some((reading, cpu_percent)) = self.sample_pid(p.pid, now) else {
                    continue;
                };
                processes.push(ProcessStats {
                    wid: p.wid,
                    pid: p.pid,
                    cpu_percent,
                    rss_bytes: reading.rss_pages.saturating_mul(self.page_size),
                    cpu_seconds: reading.ticks as f64 / self.ticks_per_second,
                    age_secs: (unix_now - p.started_at).max(0.0),
                    restarts: p.restarts,
                    health: p.health,
                });
            }
            processes.sort_by_key(|p| p.wid);
            watchers.push(WatcherStats {
                name: w.name.clone(),
                service: w.service.clone(),
                state: w.state,
                numprocesses: w.numprocesses,
                running: u32::try_from(processes.len()).unwrap_or(u32::MAX),
                cpu_percent: processes.iter().map(|p| p.cpu_percent).sum(),
                rss_bytes: processes.iter().map(|p| p.rss_bytes).sum(),
                restarts: w.restarts,
                processes,
            });
        }
        // What is left in `previous` was not asked for this time: forget it.
        self.kept_files -= self.previous.values().filter(|t| t.file.is_some()).count();
        self.previous.clear();
        std::mem::swap(&mut self.previous, &mut self.current);
        let host = self.host(now);
        (host, watchers)
    }

    /// Reads one pid and records its mark; `None` when it is gone.
    fn sample_pid(&mut self, pid: u32, now: Instant) -> Option<(ProcReading, f64)> {
        let previous = self.previous.remove(&pid);
        let (prev_mark, mut file) = match previous {
            Some(t) => (Some(t.mark), t.file),
            None => (None, None),
        };
        let had_file = file.is_some();
        let mut reading = file.as_ref().and_then(|f| self.read_stat(f));
        if reading.is_none() {
            // No file yet, or the kept one failed (the process was reaped): open anew.
            // A reused pid is told apart by its start time below.
            file = self.open_pid(pid);
            reading = file.as_ref().and_then(|f| self.read_stat(f));
        }
        let keep = reading.is_some() && (had_file || self.kept_files < self.max_kept_files);
        match (had_file, keep) {
            (true, false) => self.kept_files -= 1,
            (false, true) => self.kept_files += 1,
            _ => {}
        }
        let reading = reading?;
        let mark = CpuMark {
            starttime: reading.starttime,
            ticks: reading.ticks,
            at: now,
        };
        let percent = prev_mark.map_or(0.0, |prev| self.percent_between(&prev, &mark));
        let file = if keep { file } else { None };
        self.current.insert(pid, Tracked { mark, file });
        Some((reading, percent))
    }

    fn percent_between(&self, prev: &CpuMark, now: &CpuMark) -> f64 {
        if prev.starttime != now.starttime {
            return 0.0;
        }
        let wall = now.at.saturating_duration_since(prev.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let cpu = now.ticks.saturating_sub(prev.ticks) as f64 / self.ticks_per_second;
        cpu / wall * 100.0
    }

    fn host(&mut self, now: Instant) -> HostStats {
        let mut host = HostStats {
            cpu_count: self.cpu_count,
            agent_pid: self.agent_pid,
            ..HostStats::default()
        };
        match LoadAverage::current() {
            Ok(load) => {
                host.load1 = f64::from(load.one);
                host.load5 = f64::from(load.five);
                host.load15 = f64::from(load.fifteen);
            }
            Err(e) => tracing::debug!("cannot read /proc/loadavg: {e}"),
        }
        match Meminfo::current() {
            Ok(mem) => {
                host.mem_total_bytes = mem.mem_total;
                host.mem_available_bytes = mem.mem_available.unwrap_or(mem.mem_free);
            }
            Err(e) => tracing::debug!("cannot read /proc/meminfo: {e}"),
        }
        let me = File::open("/proc/self/stat").ok();
        if let Some(reading) = me.as_ref().and_then(|f| self.read_stat(f)) {
            let mark = CpuMark {
                starttime: reading.starttime,
                ticks: reading.ticks,
                at: now,
            };
            host.agent_cpu_percent = self
                .agent
                .map_or(0.0, |prev| self.percent_between(&prev, &mark));
            host.agent_rss_bytes = reading.rss_pages.saturating_mul(self.page_size);
            self.agent = Some(mark);
        }
        host
    }

    fn open_pid(&mut self, pid: u32) -> Option<File> {
        use std::fmt::Write;
        self.path.clear();
        // Writing to a String cannot fail.
        let _ = write!(self.path, "/proc/{pid}/stat");
        File::open(&self.path).ok()
    }

    /// Reads a stat file from its start; `None` when the process is gone, is a zombie,
    /// or the file does not parse.
    fn read_stat(&mut self, file: &File) -> Option<ProcReading> {
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(len * 2, 0);
            }
            match file.read_at(&mut self.buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    // One read returns the whole line unless the buffer was too small.
                    if len < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        parse_stat(&self.buf[..len])
    }
}

/// Picks state, utime, stime, starttime and rss out of one `/proc/<pid>/stat` line
/// (fields 3, 14, 15, 22 and 24 of proc(5)); `None` for a zombie or a line that does
/// not parse. Reads only what it needs: parsing every field costs a quarter of a sample.
fn parse_stat(line: &[u8]) -> Option<ProcReading> {
    // The command name (field 2) may hold spaces and parentheses: skip to its last ')'.
    let close = line.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(line.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // A zombie has given back its memory and is about to be reaped: not running.
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3, so field n is at index n - 3.
    let mut nth = |skip: usize| -> Option<u64> { fields.nth(skip)?.parse().ok() };
    let utime = nth(14 - 3 - 1)?;
    let stime = nth(0)?;
    let starttime = nth(22 - 15 - 1)?;
    let rss = nth(24 - 22 - 1)?;
    Some(ProcReading {
        starttime,
        ticks: utime.saturating_add(stime),
        rss_pages: rss,
    })
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_soft_limit() -> Option<usize> {
    let limits = procfs::process::Process::myself().ok()?.limits().ok()?;
    match limits.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(n) => usize::try_from(n).ok(),
        procfs::process::LimitValue::Unlimited => Some(usize::MAX),
    }
}

/// The agent process's own figures, for `dstats`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwnUsage {
    /// User plus system CPU time since the agent started, in seconds.
    pub cpu_secs: f64,
    pub rss_bytes: u64,
    pub threads: u64,
}

/// Reads the agent's own CPU time, resident memory and threads from /proc/self.
pub fn own_usage() -> procfs::ProcResult<OwnUsage> {
    let me = procfs::process::Process::myself()?.stat()?;
    let tps = procfs::ticks_per_second() as f64;
    Ok(OwnUsage {
        cpu_secs: (me.utime + me.stime) as f64 / tps,
        rss_bytes: me.rss.saturating_mul(procfs::page_size()),
        threads: u64::try_from(me.num_threads).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::Duration;

    /// Kills and reaps the child on drop, even when the test fails.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn(program: &str, args: &[&str]) -> ChildGuard {
        ChildGuard(
            Command::new(program)
                .args(args)
                .spawn()
                .expect("spawn child"),
        )
    }

    fn input(pid: u32) -> Vec<WatcherInput> {
        vec![WatcherInput {
            name: "w".into(),
            service: "w".into(),
            state: WatcherState::Active,
            numprocesses: 1,
            restarts: 3,
            processes: vec![ProcessInput {
                wid: 1,
                pid,
                started_at: protocol::unix_time() - 5.0,
                restarts: 3,
                health: Some(protocol::reply::ProcessHealth::Ready),
            }],
        }]
    }

    #[test]
    fn a_busy_loop_reads_what_the_kernel_counts() {
        // On a loaded machine a busy loop gets what the scheduler gives it, not a whole
        // core: each reading is compared with the CPU time the kernel counted over the
        // same interval, read right after each sample.
        let child = spawn("sh", &["-c", "while :; do :; done"]);
        let pid = child.0.id();
        let input = input(pid);
        let ticks = || {
            let st = procfs::process::Process::new(pid as i32)
                .unwrap()
                .stat()
                .unwrap();
            (st.utime + st.stime) as f64 / procfs::ticks_per_second() as f64
        };
        let mut sampler = Sampler::new();
        let (_, first) = sampler.sample(&input);
        let (mut cpu_before, mut at) = (ticks(), Instant::now());
        assert_eq!(first[0].processes[0].cpu_percent, 0.0, "first sample is 0");

        let deadline = Instant::now() + Duration::from_secs(20);
        let mut busy_seen = 0;
        while Instant::now() < deadline && busy_seen < 3 {
            std::thread::sleep(Duration::from_millis(300));
            let (host, watchers) = sampler.sample(&input);
            let (cpu_now, now) = (ticks(), Instant::now());
            let counted = (cpu_now - cpu_before) / now.duration_since(at).as_secs_f64() * 100.0;
            (cpu_before, at) = (cpu_now, now);
            let w = &watchers[0];
            assert_eq!(w.running, 1);
            assert_eq!(w.restarts, 3);
            let p = &w.processes[0];
            assert!(p.rss_bytes > 0, "rss of a running shell is > 0");
            assert!(p.age_secs >= 4.0, "age from started_at: {}", p.age_secs);
            assert_eq!(w.cpu_percent, p.cpu_percent);
            // The total is read with the sample, before `cpu_now`: never more.
            assert!(
                p.cpu_seconds > 0.0 && p.cpu_seconds <= cpu_now,
                "cpu_seconds {} against the kernel's {cpu_now}",
                p.cpu_seconds
            );
            assert!(p.cpu_percent <= 150.0, "one thread: {}", p.cpu_percent);
            assert!(host.agent_rss_bytes > 0);
            assert_eq!(host.agent_pid, std::process::id());
            // Ticks are 10 ms: over 300 ms, a few ticks either way.
            assert!(
                (p.cpu_percent - counted).abs() <= 20.0,
                "read {}% where the kernel counted {counted}%",
                p.cpu_percent
            );
            if counted >= 10.0 {
                busy_seen += 1;
            }
        }
        assert!(busy_seen >= 3, "the busy loop never ran");
    }

    #[test]
    fn a_sleeping_process_reads_near_zero() {
        let child = spawn("sleep", &["30"]);
        let input = input(child.0.id());
        let mut sampler = Sampler::new();
        sampler.sample(&input);
        std::thread::sleep(Duration::from_millis(200));
        let (_, watchers) = sampler.sample(&input);
        assert!(watchers[0].processes[0].cpu_percent < 20.0);
    }

    #[test]
    fn a_vanished_pid_is_dropped() {
        let mut child = spawn("sleep", &["30"]);
        let input = input(child.0.id());
        let mut sampler = Sampler::new();
        let (_, watchers) = sampler.sample(&input);
        assert_eq!(watchers[0].processes.len(), 1);
        assert_eq!(sampler.tracked_pids(), 1);
        assert_eq!(sampler.open_files(), 1);

        child.0.kill().expect("kill child");
        child.0.wait().expect("reap child");
        let (_, watchers) = sampler.sample(&input);
        assert!(watchers[0].processes.is_empty());
        assert_eq!(watchers[0].running, 0);
        assert_eq!(watchers[0].cpu_percent, 0.0);
        assert_eq!(sampler.tracked_pids(), 0);
        assert_eq!(sampler.open_files(), 0);
    }

    #[test]
    fn keeps_no_more_files_open_than_allowed() {
        let a = spawn("sleep", &["30"]);
        let b = spawn("sleep", &["30"]);
        let mut both = input(a.0.id());
        let second = ProcessInput {
            wid: 2,
            pid: b.0.id(),
            ..both[0].processes[0]
        };
        both[0].processes.push(second);
        for (max, want_open) in [(0, 0), (1, 1), (10, 2)] {
            let mut sampler = Sampler::with_max_kept_files(max);
            for _ in 0..3 {
                let (_, watchers) = sampler.sample(&both);
                assert_eq!(watchers[0].running, 2, "max {max}");
                assert_eq!(sampler.open_files(), want_open, "max {max}");
                assert_eq!(sampler.tracked_pids(), 2);
            }
            // A watcher that is gone from the input takes its files with it.
            sampler.sample(&[]);
            assert_eq!(sampler.open_files(), 0);
            assert_eq!(sampler.tracked_pids(), 0);
        }
    }

    #[test]
    fn reads_the_host() {
        let mut sampler = Sampler::new();
        let (host, watchers) = sampler.sample(&[]);
        assert!(watchers.is_empty());
        assert!(host.cpu_count >= 1);
        assert!(host.mem_total_bytes > 0);
        assert!(host.mem_available_bytes <= host.mem_total_bytes);
        assert!(host.load1 >= 0.0);
    }

    #[test]
    fn parses_stat_lines_as_procfs_does() {
        use procfs::process::Stat;
        use procfs::FromRead;
        let mine = std::fs::read("/proc/self/stat").expect("read /proc/self/stat");
        // The same line with a command name full of spaces and parentheses.
        let close = mine
            .iter()
            .rposition(|&b| b == b')')
            .expect("a ')' in stat");
        let mut odd_name = b"42 (a b) (c) ".to_vec();
        odd_name.extend_from_slice(&mine[close..]);
        for line in [mine, odd_name] {
            let want = Stat::from_read(line.as_slice()).expect("procfs parses it");
            let got = parse_stat(&line).expect("parses");
            assert_eq!(got.ticks, want.utime + want.stime);
            assert_eq!(got.starttime, want.starttime);
            assert_eq!(got.rss_pages, want.rss);
        }
        let zombie = b"42 (x) Z 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 555 1000 66 0";
        assert!(parse_stat(zombie).is_none());
        for bad in [
            &b""[..],
            b"42 (x",
            b"42 (x) R 1 2",
            b"42 (x) R 1 1 1 0 -1 0 0 0 0 0 q 3",
        ] {
            assert!(
                parse_stat(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_reused_pid_starts_from_zero() {
        let sampler = Sampler::new();
        let at = Instant::now();
        let prev = CpuMark {
            starttime: 10,
            ticks: 0,
            at,
        };
        let later = at + Duration::from_secs(1);
        let same = CpuMark {
            starttime: 10,
            ticks: 50,
            at: later,
        };
        let reused = CpuMark {
            starttime: 11,
            ticks: 500,
            at: later,
        };
        let tps = sampler.ticks_per_second;
        let want = 50.0 / tps * 100.0;
        assert!((sampler.percent_between(&prev, &same) - want).abs() < 1e-9);
        assert_eq!(sampler.percent_between(&prev, &reused), 0.0);
        assert_eq!(sampler.percent_between(&same, &prev), 0.0, "time went back");
    }
}
