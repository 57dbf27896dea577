//! The only code that spawns processes and sends signals: process groups, the parent
//! death signal, uid/gid, stdio, listening sockets passed at fds 3, 4, ... It keeps no
//! state and knows nothing of watchers.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{ChildStderr, ChildStdout};

use crate::config::guards::RlimitSetting;
use crate::config::Output;

/// What to run for one process.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub cmd: String,
    pub args: Vec<String>,
    /// Set on top of the inherited environment, or alone when `clear_env`.
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
    pub working_dir: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub stdout: Output,
    pub stderr: Output,
    /// Listening sockets, with their names, that the process gets at fds 3, 4, ... in
    /// this order, with systemd's `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`.
    /// Empty: nothing of the kind is passed.
    pub listen: Vec<(String, Arc<OwnedFd>)>,
    /// Resource limits set in the child before it runs the program.
    pub rlimits: Vec<RlimitSetting>,
}

/// A started process. Its pid is also its process group id.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// A child of the agent, forked by [`spawn`] or [`spawn_all`]; [`Child::wait`] reaps it.
/// Dropped before that, it is reaped in the background (when there is a runtime).
#[derive(Debug)]
pub struct Child {
    pid: u32,
    /// Readable once the process has exited (`None` on a kernel without pidfds: then
    /// each SIGCHLD is a reason to look).
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    status: Option<std::process::ExitStatus>,
    /// Waited on in the background after its owner dropped it: dropped again (the
    /// runtime stopping), it is left as it is.
    background: bool,
}

impl Child {
    fn new(pid: u32) -> Child {
        Child {
            pid,
            pidfd: pidfd_open(pid)
                .filter(|_| tokio::runtime::Handle::try_current().is_ok())
                .and_then(|fd| {
                    #[allow(unsafe_code)]
                    // SAFETY: the AsyncFd owns `fd`, an OwnedFd, which stays open and
                    // the same fd until the AsyncFd is dropped.
                    unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            fd,
                            tokio::io::Interest::READABLE,
                        )
                    }
                    .ok()
                }),
            status: None,
            background: false,
        }
    }

    /// Its pid, until it is reaped.
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// Waits until it exits and reaps it; once reaped, returns the same status again.
    /// Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let mut sigchld = None;
        loop {
            if let Some(done) = try_reap(self.pid) {
                let status = done?;
                self.status = Some(status);
                self.pidfd = None;
                return Ok(status);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut ready = fd.readable().await?;
                    if try_reap_pending(self.pid) {
                        ready.clear_ready();
                    }
                }
                None => match sigchld.as_mut() {
                    // Listening first, then looking again: no exit falls in between.
                    None => {
                        use tokio::signal::unix::{signal, SignalKind};
                        match signal(SignalKind::child()) {
                            Ok(s) => sigchld = Some(s),
                            Err(_) => {
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await
                            }
                        }
                    }
                    Some(s) => {
                        s.recv().await;
                    }
                },
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.background || self.status.is_some() || try_reap(self.pid).is_some() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut rest = Child {
                pid: self.pid,
                pidfd: self.pidfd.take(),
                status: None,
                background: true,
            };
            rt.spawn(async move {
                let _ = rest.wait().await;
            });
        }
    }
}

/// True while `pid` (the agent's child) has not exited yet, without reaping it.
fn try_reap_pending(pid: u32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let Ok(p) = as_pid(pid) else { return false };
    matches!(
        waitid(
            Id::Pid(p),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Ok(WaitStatus::StillAlive)
    )
}

/// A pidfd of `pid`, a child of the agent not reaped yet (so its pid is not reused).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = nix::libc::pid_t::try_from(pid).ok()?;
    #[allow(unsafe_code)]
    // SAFETY: the pidfd_open system call takes a pid and flags, and returns a new fd
    // (close-on-exec) or -1; the new fd is owned by nothing else.
    unsafe {
        let fd = nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0);
        let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// A stdout or stderr file, opened by the child itself.
struct FileOutput {
    /// 1 or 2.
    fd: i32,
    path: CString,
}

/// What can be told before the child opens `path`, told in words: the child itself
/// refuses the same things (and a link planted in between) with a bare error number.
fn check_output_file(path: &Path) -> io::Result<()> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the output file's directory {} does not exist; create it (the agent does not)",
                dir.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::other(format!(
            "output file {shown} is a symbolic link, which is not followed; remove it or pick another path"
        ))),
        Ok(m) if !m.file_type().is_file() => Err(io::Error::other(format!(
            "output file {shown} is not a regular file"
        ))),
        Ok(m) if m.nlink() > 1 => Err(io::Error::other(format!(
            "output file {shown} has other hard links, which are not written through; remove it"
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check output file {shown}: {e}"),
        )),
    }
}

/// Opens a file output in the child, after the switch to the watcher's uid and gid:
/// appending, created 0640, never through a symbolic link (none in the whole path when
/// the kernel has openat2, else not the file itself), and only a regular file with no
/// other hard link. Then makes it the child's `fd`.
/// Runs between fork and exec: no allocation, only system calls.
fn open_output_in_child(out: &FileOutput) -> io::Result<()> {
    use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
    use nix::sys::stat::{fstat, Mode, SFlag};
    let flags =
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o640);
    let how = OpenHow::new()
        .flags(flags)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match openat2(AT_FDCWD, out.path.as_c_str(), how) {
        Err(Errno::ENOSYS) => open(out.path.as_c_str(), flags, mode)?,
        other => other?,
    };
    let st = fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(Errno::EINVAL.into());
    }
    if st.st_nlink > 1 {
        return Err(Errno::EMLINK.into());
    }
    if out.fd == 1 {
        nix::unistd::dup2_stdout(&fd)?;
    } else {
        nix::unistd::dup2_stderr(&fd)?;
    }
    Ok(())
}

/// Starts a process in a process group of its own, so that signals reach its children
/// too. It gets SIGKILL if the agent dies without stopping it.
///
/// When the agent runs [`run_forker`], the fork happens on its main thread (see there);
/// otherwise (tests, benchmarks) on the calling thread. Needs a tokio runtime (for the
/// pipes and the wait).
pub fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let prepared = vec![Prepared::new(spec)];
    let forked = match FORKER.get() {
        Some(tx) => {
            let (done, result) = std::sync::mpsc::sync_channel(1);
            let job: Job = Box::new(move || {
                let _ = done.send(fork_all(prepared));
            });
            tx.send(ToMain::Job(job))
                .map_err(|_| io::Error::other("the agent is stopping: no process starts now"))?;
            result
                .recv()
                .map_err(|_| io::Error::other("the agent is stopping: no process starts now"))?
        }
        None => fork_all(prepared),
    };
    forked
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(io::Error::other("no process was started")))
        .and_then(Forked::spawned)
}

/// Starts the processes of `specs`, in this order, as [`spawn`] does one, and returns
/// each one's result in the same order. Everything a child needs is prepared here,
/// before the fork; with [`run_forker`], the main thread then forks them all in one job,
/// one after another without waiting for each to exec, and collects how each exec went,
/// while the caller's task waits without holding its thread: the runtime's worker goes
/// on with other tasks (heartbeats, replies) meanwhile.
pub async fn spawn_all(specs: Vec<SpawnSpec>) -> Vec<io::Result<Spawned>> {
    let stopping = || io::Error::other("the agent is stopping: no process starts now");
    let prepared: Vec<_> = specs.iter().map(Prepared::new).collect();
    drop(specs);
    let n = prepared.len();
    let forked = match FORKER.get() {
        None => fork_all(prepared),
        Some(tx) => {
            let (done, result) = tokio::sync::oneshot::channel();
            let job: Job = Box::new(move || {
                let _ = done.send(fork_all(prepared));
            });
            if tx.send(ToMain::Job(job)).is_err() {
                return (0..n).map(|_| Err(stopping())).collect();
            }
            match result.await {
                Ok(all) => all,
                Err(_) => return (0..n).map(|_| Err(stopping())).collect(),
            }
        }
    };
    forked
        .into_iter()
        .map(|f| f.and_then(Forked::spawned))
        .collect()
}

/// Forks every prepared child first, then reads how each one's exec went (its report
/// pipe closes when it exec'd; a child that could not set up or exec writes its error
/// number there and exits). So the children exec while the next ones are forked.
fn fork_all(prepared: Vec<io::Result<Prepared>>) -> Vec<io::Result<Forked>> {
    let forked: Vec<_> = prepared
        .into_iter()
        .map(|p| p.and_then(Prepared::fork))
        .collect();
    forked
        .into_iter()
        .map(|f| {
            let f = f?;
            match read_report(&f.report) {
                None => Ok(f),
                Some(errno) => {
                    // It exits right after the report: reaped here, it leaves no zombie.
                    if let Ok(p) = as_pid(f.pid) {
                        let _ = nix::sys::wait::waitpid(p, None);
                    }
                    Err(f.why.explain(io::Error::from_raw_os_error(errno)))
                }
            }
        })
        .collect()
}

/// What a failed start is told with: the files the child opens, the limits it sets.
struct Why {
    opened_as: String,
    shown: Vec<String>,
    limits: String,
}

impl Why {
    fn explain(&self, e: io::Error) -> io::Error {
        let Why {
            opened_as,
            shown,
            limits,
        } = self;
        if !limits.is_empty() && e.raw_os_error() == Some(Errno::EPERM as i32) && shown.is_empty() {
            return io::Error::new(
                e.kind(),
                format!(
                    "{e} (setting rlimits {limits} as {opened_as}: a hard limit above the \
                     agent's own needs the agent to run as root, and the process's uid)"
                ),
            );
        }
        if shown.is_empty() || e.raw_os_error().is_none() {
            return e;
        }
        let why = match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            Errno::ELOOP => "a symbolic link, which is not followed".to_owned(),
            Errno::EMLINK => "a file with other hard links".to_owned(),
            Errno::EINVAL => "not a regular file".to_owned(),
            _ => e.to_string(),
        };
        io::Error::new(
            e.kind(),
            format!(
                "{why} (running the program or opening its output file {} as {opened_as})",
                shown.join(", ")
            ),
        )
    }
}

/// One child, everything it needs made before the fork.
struct Prepared {
    plan: ExecPlan,
    /// What the child gets at fds 0, 1, 2 (kept open until the fork is over).
    _stdio: Vec<OwnedFd>,
    /// The agent's ends of the stdout and stderr pipes.
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    report: OwnedFd,
    why: Why,
}

/// A forked child whose exec is not checked yet.
struct Forked {
    pid: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    report: OwnedFd,
    why: Why,
}

impl Forked {
    /// The started process, its pipes handed to the runtime (which must be there).
    fn spawned(self) -> io::Result<Spawned> {
        let child = Child::new(self.pid);
        let stdout = self
            .stdout
            .map(|fd| ChildStdout::from_std(std::process::ChildStdout::from(fd)))
            .transpose()?;
        let stderr = self
            .stderr
            .map(|fd| ChildStderr::from_std(std::process::ChildStderr::from(fd)))
            .transpose()?;
        Ok(Spawned {
            child,
            pid: self.pid,
            stdout,
            stderr,
        })
    }
}

/// An fd above 2, so that moving the stdio into place clobbers none of the sources.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    use nix::fcntl::{fcntl, FcntlArg};
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    #[allow(unsafe_code)]
    // SAFETY: `raw` is the new fd F_DUPFD_CLOEXEC just returned; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

fn dev_null() -> io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    above_stdio(open(
        c"/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

impl Prepared {
    fn new(spec: &SpawnSpec) -> io::Result<Prepared> {
        let mut files = Vec::new();
        let mut keep = Vec::new();
        let mut stdio = [-1; 3];
        let null = dev_null()?;
        stdio[0] = null.as_raw_fd();
        let mut ours = [None, None];
        for (i, out) in [&spec.stdout, &spec.stderr].into_iter().enumerate() {
            let fd = i as i32 + 1;
            match out {
                Output::Capture => {
                    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                    let write = above_stdio(write)?;
                    stdio[i + 1] = write.as_raw_fd();
                    keep.push(write);
                    ours[i] = Some(read);
                }
                Output::Discard => stdio[i + 1] = null.as_raw_fd(),
                Output::Inherit => {}
                Output::File(path) => {
                    check_output_file(path)?;
                    files.push(FileOutput {
                        fd,
                        path: CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                            io::Error::other("an output file path holds a NUL byte")
                        })?,
                    });
                    // Replaced in the child once the file is open.
                    stdio[i + 1] = null.as_raw_fd();
                }
            }
        }
        keep.push(null);
        let [stdout, stderr] = ours;
        let why = Why {
            opened_as: spec
                .uid
                .map_or("the agent's user".to_owned(), |u| format!("uid {u}")),
            shown: files
                .iter()
                .map(|f| f.path.to_string_lossy().into_owned())
                .collect(),
            limits: spec
                .rlimits
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let (plan, report) = ExecPlan::new(spec, stdio, files)?;
        Ok(Prepared {
            plan,
            _stdio: keep,
            stdout,
            stderr,
            report,
            why,
        })
    }

    /// Forks the child, which sets itself up and execs (see [`ExecPlan::exec`]).
    fn fork(mut self) -> io::Result<Forked> {
        #[allow(unsafe_code)]
        // SAFETY: in the child, `ExecPlan::exec` makes only async-signal-safe system
        // calls on memory prepared before the fork, allocates nothing, takes no lock and
        // never returns (it execs, or exits with `_exit` after reporting the error).
        let pid = match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => self.plan.exec(),
            nix::unistd::ForkResult::Parent { child } => child,
        };
        // The child has its own copies now; the report pipe's write end must be the
        // child's only one, so that it closes when the child execs.
        drop(self.plan);
        drop(self._stdio);
        Ok(Forked {
            pid: u32::try_from(pid.as_raw()).unwrap_or(0),
            stdout: self.stdout,
            stderr: self.stderr,
            report: self.report,
            why: self.why,
        })
    }
}

/// Everything a child needs between fork and exec, built before the fork: every string
/// and pointer array, with room for the digits of `LISTEN_PID` (its own pid, known only
/// after the fork) when it gets sockets, and the fds to move into place.
struct ExecPlan {
    /// Where the program may be, in the order execvp would try (the child's PATH).
    candidates: Vec<CString>,
    /// Owns what `argv` and `envp` point to.
    _strings: Vec<CString>,
    /// `LISTEN_PID=` and room for the digits and a NUL; `envp` points to it when the
    /// child gets sockets.
    _pid_var: Box<[u8; PID_VAR_LEN]>,
    pid_var_at: *mut u8,
    argv: Vec<*const nix::libc::c_char>,
    /// `/bin/sh FILE ARGS...`, for a file without `#!` (ENOEXEC), as execvp does; the
    /// child puts the file in place of the null at 1.
    sh_argv: Vec<*const nix::libc::c_char>,
    envp: Vec<*const nix::libc::c_char>,
    /// The fds the child gets as 0, 1 and 2; -1: the agent's own.
    stdio: [RawFd; 3],
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: Option<CString>,
    rlimits: Vec<RlimitSetting>,
    /// The stdout or stderr files the child opens.
    files: Vec<FileOutput>,
    /// The sockets, kept open until the spawn is over, and their fds.
    _sockets: Vec<Arc<OwnedFd>>,
    sources: Vec<RawFd>,
    /// Scratch room for the sockets' temporary copies in the child.
    temp: Vec<RawFd>,
    /// The write end of the pipe the child reports a failed setup or exec on.
    report: OwnedFd,
}

const PID_VAR: &[u8] = b"LISTEN_PID=";
const SH: &std::ffi::CStr = c"/bin/sh";
const PID_VAR_LEN: usize = PID_VAR.len() + 21;

#[allow(unsafe_code)]
// SAFETY: the raw pointers point into buffers the plan owns (`_strings`, `_pid_var`:
// heap memory that does not move with the plan), and are only read, or written (the
// pid's digits), in the forked child, which has a copy of its own.
unsafe impl Send for ExecPlan {}
#[allow(unsafe_code)]
// SAFETY: as for Send; nothing is written through a shared reference.
unsafe impl Sync for ExecPlan {}

/// The environment a process gets: the agent's own (or only a PATH, with `clear_env`)
/// without systemd's notify socket, which is the agent's (a process that reports
/// readiness gets a socket of the agent's, set in `spec.env`), then `spec.env`.
fn child_env(spec: &SpawnSpec) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = if spec.clear_env {
        // A program needs a PATH to find its own helpers.
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        BTreeMap::from([("PATH".into(), path)])
    } else {
        std::env::vars_os().collect()
    };
    env.remove(OsStr::new("NOTIFY_SOCKET"));
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Where execvp would look for `cmd`, in order, under the child's `PATH`.
fn candidates(cmd: &str, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "the command holds a NUL byte");
    if cmd.is_empty() {
        return Err(io::Error::from_raw_os_error(nix::libc::ENOENT));
    }
    if cmd.contains('/') {
        return Ok(vec![CString::new(cmd).map_err(nul)?]);
    }
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(cmd.as_bytes());
            CString::new(full).map_err(nul)
        })
        .collect()
}

impl ExecPlan {
    /// The plan, and the read end of its report pipe.
    fn new(
        spec: &SpawnSpec,
        stdio: [RawFd; 3],
        files: Vec<FileOutput>,
    ) -> io::Result<(ExecPlan, OwnedFd)> {
        let nul = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "nul byte found in provided data",
            )
        };
        let mut env = child_env(spec);
        if !spec.listen.is_empty() {
            let names: Vec<&str> = spec.listen.iter().map(|(n, _)| n.as_str()).collect();
            env.insert("LISTEN_FDS".into(), names.len().to_string().into());
            env.insert("LISTEN_FDNAMES".into(), names.join(":").into());
            env.remove(OsStr::new("LISTEN_PID"));
        }
        let mut strings = Vec::new();
        for a in std::iter::once(&spec.cmd).chain(&spec.args) {
            strings.push(CString::new(a.as_bytes()).map_err(|_| nul())?);
        }
        let argc = strings.len();
        for (k, v) in &env {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            strings.push(CString::new(kv).map_err(|_| nul())?);
        }
        let cwd = match &spec.working_dir {
            Some(dir) => Some(CString::new(dir.as_os_str().as_bytes()).map_err(|_| nul())?),
            None => None,
        };
        let candidates = candidates(
            &spec.cmd,
            env.get(OsStr::new("PATH")).map(|p| p.as_os_str()),
        )?;
        let mut pid_var = Box::new([0u8; PID_VAR_LEN]);
        pid_var[..PID_VAR.len()].copy_from_slice(PID_VAR);
        let pid_var_at = pid_var.as_mut_ptr();
        let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut sh_argv = vec![SH.as_ptr(), std::ptr::null()];
        sh_argv.extend_from_slice(&argv[1..]);
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        if !spec.listen.is_empty() {
            envp.push(pid_var_at.cast_const().cast());
        }
        envp.push(std::ptr::null());
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let plan = ExecPlan {
            candidates,
            _strings: strings,
            _pid_var: pid_var,
            pid_var_at,
            argv,
            sh_argv,
            envp,
            stdio,
            uid: spec.uid,
            gid: spec.gid,
            cwd,
            rlimits: spec.rlimits.clone(),
            files,
            sources: spec.listen.iter().map(|(_, fd)| fd.as_raw_fd()).collect(),
            temp: vec![-1; spec.listen.len()],
            _sockets: spec.listen.iter().map(|(_, fd)| fd.clone()).collect(),
            report: write,
        };
        Ok((plan, read))
    }

    /// In the child, right after the fork: moves the stdio into place; sets the gid, the
    /// uid (dropping supplementary groups when the agent is root), the working dir, a
    /// process group of its own, SIGPIPE back to its default and an empty signal mask,
    /// the parent death signal, the rlimits; opens the output files (as the new uid);
    /// moves the sockets to fds 3, 4, ... (close-on-exec cleared) with `LISTEN_PID` its
    /// own pid; and execs the program as execvp would. Never returns: a failure writes
    /// its error number to the report pipe and exits 127.
    ///
    /// Only async-signal-safe system calls (fcntl, dup2, setgroups, setgid, setuid,
    /// chdir, setpgid, sigaction, sigprocmask, prctl, setrlimit, open, fstat, close,
    /// getpid, execve, write, _exit) on memory prepared before the fork; no allocation.
    fn exec(&mut self) -> ! {
        use nix::libc;
        let n = self.sources.len();
        let floor = 3 + n as i32;
        #[allow(unsafe_code)]
        // SAFETY: plain system calls on fds and on buffers this plan owns; `pid_var_at`
        // points to `PID_VAR_LEN` bytes; `argv`, `sh_argv` and `envp` are
        // NULL-terminated arrays of NUL-terminated strings that live as long as the
        // plan; `set` is a local sigset_t that sigemptyset initialises.
        unsafe {
            let fail_on = |report: RawFd, errno: i32| -> ! {
                let bytes = errno.to_ne_bytes();
                libc::write(report, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            };
            // Above every target first, so that moving one in place clobbers no other.
            let report = libc::fcntl(self.report.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor);
            if report < 0 {
                fail_on(self.report.as_raw_fd(), nix::errno::Errno::last_raw());
            }
            let fail = |errno: i32| -> ! { fail_on(report, errno) };
            let check = |r: libc::c_int| {
                if r < 0 {
                    fail(nix::errno::Errno::last_raw())
                }
            };
            for i in 0..n {
                let fd = libc::fcntl(self.sources[i], libc::F_DUPFD_CLOEXEC, floor);
                check(fd);
                self.temp[i] = fd;
            }
            for (target, &fd) in self.stdio.iter().enumerate() {
                if fd >= 0 {
                    // dup2 leaves close-on-exec cleared on the target.
                    check(libc::dup2(fd, target as i32));
                }
            }
            if let Some(gid) = self.gid {
                check(libc::setgid(gid));
            }
            if let Some(uid) = self.uid {
                if libc::getuid() == 0 {
                    check(libc::setgroups(0, std::ptr::null()));
                }
                check(libc::setuid(uid));
            }
            if let Some(dir) = &self.cwd {
                check(libc::chdir(dir.as_ptr()));
            }
            check(libc::setpgid(0, 0));
            if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
                fail(nix::errno::Errno::last_raw());
            }
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            check(libc::sigemptyset(set.as_mut_ptr()));
            check(libc::pthread_sigmask(
                libc::SIG_SETMASK,
                set.as_ptr(),
                std::ptr::null_mut(),
            ));
            if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
                fail(e as i32);
            }
            for r in &self.rlimits {
                if let Err(e) = nix::sys::resource::setrlimit(r.resource, r.soft, r.hard) {
                    fail(e as i32);
                }
            }
            for f in &self.files {
                if let Err(e) = open_output_in_child(f) {
                    fail(e.raw_os_error().unwrap_or(libc::EIO));
                }
            }
            for i in 0..n {
                // dup2 leaves close-on-exec cleared on the target.
                check(libc::dup2(self.temp[i], 3 + i as i32));
            }
            if n > 0 {
                let mut pid = libc::getpid() as u32;
                let mut digits = [0u8; 10];
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (pid % 10) as u8;
                    len += 1;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let at = self.pid_var_at.add(PID_VAR.len());
                for i in 0..len {
                    *at.add(i) = digits[len - 1 - i];
                }
                *at.add(len) = 0;
            }
            let mut denied = false;
            let mut last = libc::ENOENT;
            for c in &self.candidates {
                libc::execve(c.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
                last = nix::errno::Errno::last_raw();
                if last == libc::ENOEXEC {
                    self.sh_argv[1] = c.as_ptr();
                    libc::execve(SH.as_ptr(), self.sh_argv.as_ptr(), self.envp.as_ptr());
                    last = nix::errno::Errno::last_raw();
                }
                match last {
                    libc::EACCES => denied = true,
                    libc::ENOENT
                    | libc::ENOTDIR
                    | libc::ESTALE
                    | libc::ENODEV
                    | libc::ETIMEDOUT => {}
                    _ => break,
                }
            }
            let searched = matches!(
                last,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT
            );
            fail(if denied && searched {
                libc::EACCES
            } else {
                last
            })
        }
    }
}

/// Reads the error number a child wrote before it exited, or `None` once it exec'd.
fn read_report(read: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(read, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}

fn as_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))
}

/// Sends `sig` to the process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    match killpg(as_pid(pgid)?, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to one process. A process that is already gone is not an error.
pub fn signal_pid(pid: u32, sig: Signal) -> io::Result<()> {
    match kill(as_pid(pid)?, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// True while any process of the group `pgid` is alive. A zombie that its new parent
/// has not reaped yet (an init that reaps orphans slowly) no longer runs and does not
/// count.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(p) = as_pid(pgid) else {
        return false;
    };
    if matches!(killpg(p, None), Err(Errno::ESRCH)) {
        return false;
    }
    // Something of the group is there: look for a member that is not a zombie.
    let Ok(all) = procfs::process::all_processes() else {
        return true;
    };
    let pgid = i32::try_from(pgid).unwrap_or(i32::MAX);
    all.filter_map(|p| p.ok()?.stat().ok())
        .any(|s| s.pgrp == pgid && s.state != 'Z')
}

/// How a process ended, in the protocol's words.
pub fn exit_status(status: std::process::ExitStatus) -> protocol::reply::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    protocol::reply::ExitStatus {
        code: status.code(),
        signal: status.signal().map(signal_name),
    }
}

/// "SIGTERM" for 15, or the number when it is not a known signal.
pub fn signal_name(n: i32) -> String {
    Signal::try_from(n)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| n.to_string())
}

// ---- The agent's own exec (hot upgrade) ----
//
// The parent-death signal a child arms is tied to the *thread* that forked it: when
// that thread ends, the child gets SIGKILL. An exec ends every thread but the one that
// calls it. So every child is forked on one thread, the main thread, which is also the
// one that executes the agent's binary again: its children survive the exec, and the
// new image's main thread is the same thread, their parent still.

type Job = Box<dyn FnOnce() + Send>;

enum ToMain {
    Job(Job),
    Done,
}

static FORKER: std::sync::OnceLock<std::sync::mpsc::Sender<ToMain>> = std::sync::OnceLock::new();

/// Runs `agent` on `rt` while the calling thread (the main thread) forks every child
/// and carries out [`exec_self`]; returns what `agent` returns. Call it once.
pub fn run_forker<T, F>(rt: &tokio::runtime::Runtime, agent: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let installed = FORKER.set(tx.clone()).is_ok();
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel(1);
    let done = tx;
    rt.spawn(async move {
        let _ = out_tx.send(agent.await);
        let _ = done.send(ToMain::Done);
    });
    if installed {
        let _guard = rt.enter();
        while let Ok(ToMain::Job(job)) = rx.recv() {
            job();
        }
    }
    match out_rx.recv() {
        Ok(t) => t,
        // The task was dropped without an answer: only a runtime shutting down does that.
        Err(_) => std::process::exit(70),
    }
}

/// Executes `exe` with `args` (argv[0] first) in this process, environment kept, on the
/// forking thread when there is one. Returns only when the exec failed, with why.
pub fn exec_self(exe: &Path, args: &[OsString]) -> io::Error {
    let path = match CString::new(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return io::Error::other("the agent's path holds a NUL byte"),
    };
    let mut argv = Vec::with_capacity(args.len());
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(a) => argv.push(a),
            Err(_) => return io::Error::other("an argument of the agent holds a NUL byte"),
        }
    }
    let exec = move || match nix::unistd::execv(&path, &argv) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    };
    match FORKER.get() {
        Some(tx) => {
            let (done, result) = std::sync::mpsc::sync_channel(1);
            let job: Job = Box::new(move || {
                let _ = done.send(exec());
            });
            if tx.send(ToMain::Job(job)).is_err() {
                return io::Error::other("the agent is stopping");
            }
            result
                .recv()
                .unwrap_or_else(|_| io::Error::other("the agent is stopping"))
        }
        None => exec(),
    }
}

static SELF_EXE: std::sync::OnceLock<(PathBuf, Vec<OsString>)> = std::sync::OnceLock::new();

/// Notes the agent's binary (resolved now: once the file is replaced,
/// `/proc/self/exe` names the old one) and its arguments, for [`exec_self`]. Call it at
/// start, in `main`.
pub fn remember_self() {
    if let Ok(exe) = std::env::current_exe() {
        let _ = SELF_EXE.set((exe, std::env::args_os().collect()));
    }
}

/// The binary and arguments noted by [`remember_self`].
pub fn self_exe() -> Option<&'static (PathBuf, Vec<OsString>)> {
    SELF_EXE.get()
}

/// Sets or clears close-on-exec on `fd`: cleared, the fd survives the agent's exec.
pub fn set_cloexec(fd: impl std::os::fd::AsFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// What an fd handed over across the exec must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A pipe's read end (a process's stdout or stderr).
    Pipe,
    /// A socket (a listening socket of `[socket.NAME]`).
    Socket,
}

/// Takes ownership of fd `raw`, which the agent's previous image left open across its
/// exec, once it is checked to be open and of `kind`; it is made close-on-exec again.
/// The caller takes each number once ([`crate::process`] cannot know who else does).
pub fn adopt_fd(raw: RawFd, kind: FdKind) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileTypeExt;
    if raw <= 2 {
        return Err(io::Error::other(format!(
            "fd {raw} is stdio, not a handed-over fd"
        )));
    }
    let meta = std::fs::metadata(format!("/proc/self/fd/{raw}"))
        .map_err(|e| io::Error::new(e.kind(), format!("fd {raw} is not open: {e}")))?;
    let ok = match kind {
        FdKind::Pipe => meta.file_type().is_fifo(),
        FdKind::Socket => meta.file_type().is_socket(),
    };
    if !ok {
        return Err(io::Error::other(
            format!("fd {raw} is not a {kind:?}").to_lowercase(),
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: `raw` is open (its /proc entry was just read) and nothing in this image
    // owns it: it was inherited across the exec (the new image opens its own files with
    // numbers that are free, and so never this one), and the caller takes each number
    // once, before anything could close it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(&fd, true)?;
    Ok(fd)
}

/// How a process the agent adopted across its exec has ended: `None` while it runs
/// (or is stopped), `Some(Err)` when it is not (or no longer) this process's child.
/// Never waits.
pub fn try_reap(pid: u32) -> Option<io::Result<std::process::ExitStatus>> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use std::os::unix::process::ExitStatusExt;
    let p = match as_pid(pid) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => {
            Some(Ok(std::process::ExitStatus::from_raw((code & 0xff) << 8)))
        }
        Ok(WaitStatus::Signaled(_, sig, core)) => Some(Ok(std::process::ExitStatus::from_raw(
            sig as i32 | if core { 0x80 } else { 0 },
        ))),
        Ok(_) => None,
        Err(Errno::EINTR) => None,
        Err(e) => Some(Err(e.into())),
    }
}

/// The pid of `pid`'s parent, if `pid` lives.
pub fn parent_of(pid: u32) -> Option<u32> {
    let p = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    p.stat().ok().and_then(|s| u32::try_from(s.ppid).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cmd: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("X_WID".into(), "7".into())],
            clear_env: true,
            working_dir: None,
            uid: None,
            gid: None,
            stdout: Output::Capture,
            stderr: Output::Discard,
            listen: Vec::new(),
            rlimits: Vec::new(),
        }
    }

    #[tokio::test]
    async fn runs_in_its_own_group_with_env() {
        let mut s = spawn(&spec("sh", &["-c", "echo $X_WID; ps -o pgid= -p $$"])).unwrap();
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        s.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let status = s.child.wait().await.unwrap();
        assert!(status.success());
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("7"));
        assert_eq!(
            lines.next().map(str::trim),
            Some(s.pid.to_string().as_str())
        );
    }

    #[tokio::test]
    async fn group_signal_reaches_children() {
        let mut s = spawn(&spec("sh", &["-c", "sleep 1000 & sleep 1000 & wait"])).unwrap();
        assert!(group_alive(s.pid));
        signal_group(s.pid, Signal::SIGKILL).unwrap();
        let st = s.child.wait().await.unwrap();
        assert_eq!(exit_status(st).signal.as_deref(), Some("SIGKILL"));
        // The sleeps were in the group too; the kernel reaps them via init.
        for _ in 0..200 {
            if !group_alive(s.pid) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("group {} still alive", s.pid);
    }

    #[tokio::test]
    async fn a_file_output_is_appended_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        std::fs::write(&out, "before\n").unwrap();
        let mut sp = spec("sh", &["-c", "echo hello; echo oops >&2"]);
        sp.stdout = Output::File(out.clone());
        let mut s = spawn(&sp).unwrap();
        assert!(s.child.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "before\nhello\n");

        // A link planted at the path: refused, the target untouched.
        let target = dir.path().join("target");
        std::fs::write(&target, "secret\n").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        sp.stdout = Output::File(link.clone());
        let e = spawn(&sp).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // Also when the link appears after the check: the child refuses it itself.
        let f = FileOutput {
            fd: 1,
            path: CString::new(link.as_os_str().as_bytes()).unwrap(),
        };
        assert_eq!(
            open_output_in_child(&f).unwrap_err().raw_os_error(),
            Some(Errno::ELOOP as i32)
        );
        // A link as a directory of the path, with openat2.
        let linked_dir = dir.path().join("d");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).unwrap();
        let f = FileOutput {
            fd: 1,
            path: CString::new(linked_dir.join("new.txt").as_os_str().as_bytes()).unwrap(),
        };
        assert!(open_output_in_child(&f).is_err());
        assert!(!dir.path().join("new.txt").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
        // A missing directory is not created.
        sp.stdout = Output::File(dir.path().join("nodir/out.txt"));
        let e = spawn(&sp).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[tokio::test]
    async fn a_file_output_is_opened_as_the_watcher_s_user() {
        if !nix::unistd::geteuid().is_root() {
            return; // Only root can switch users.
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mine = dir.path().join("nobody");
        std::fs::create_dir(&mine).unwrap();
        let nobody = nix::unistd::Uid::from_raw(65534);
        nix::unistd::chown(&mine, Some(nobody), None).unwrap();
        let mut sp = spec("sh", &["-c", "echo hi"]);
        sp.uid = Some(65534);
        sp.gid = Some(65534);
        sp.stdout = Output::File(mine.join("out.txt"));
        let mut s = spawn(&sp).unwrap();
        assert!(s.child.wait().await.unwrap().success());
        let m = std::fs::metadata(mine.join("out.txt")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(m.mode() & 0o777, 0o640);
        // A file in a dir that user cannot write: refused, not created by root.
        sp.stdout = Output::File(dir.path().join("root.txt"));
        let e = spawn(&sp).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(!dir.path().join("root.txt").exists());
    }

    #[tokio::test]
    async fn sockets_arrive_at_3_and_up_with_listen_pid_its_own() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sp = spec(
            "sh",
            &[
                "-c",
                "echo $LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES; \
                 readlink /proc/$$/fd/3 /proc/$$/fd/4; \
                 ls -l /proc/$$/fd | grep -c socket:; true",
            ],
        );
        sp.listen = vec![
            ("web".into(), Arc::new(OwnedFd::from(a))),
            ("admin".into(), Arc::new(OwnedFd::from(b))),
        ];
        async fn run(sp: &SpawnSpec) -> (u32, String) {
            let mut s = spawn(sp).unwrap();
            let mut out = String::new();
            use tokio::io::AsyncReadExt;
            s.stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .await
                .unwrap();
            assert!(s.child.wait().await.unwrap().success(), "{out}");
            (s.pid, out)
        }
        let (pid, out) = run(&sp).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("{pid} {pid} 2 web:admin"), "{out}");
        assert!(lines[1].starts_with("socket:") && lines[2].starts_with("socket:"));
        // The two sockets and no other copy of them; nothing without sockets.
        assert_eq!(lines[3], "2", "{out}");
        let mut plain = sp.clone();
        plain.listen.clear();
        let (plain_pid, out) = run(&plain).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], plain_pid.to_string(), "{out}");
        assert_eq!(lines.last(), Some(&"0"), "{out}");
        // A script without "#!" runs with /bin/sh, as execvp runs it.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("bare");
        std::fs::write(&script, "echo bare $LISTEN_FDS $1\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut bare = sp.clone();
        bare.cmd = script.display().to_string();
        bare.args = vec!["arg".into()];
        // (A file just written may be busy for a moment if another test forks meanwhile.)
        let mut s = (0..100)
            .find_map(|_| match spawn(&bare) {
                Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
                r => Some(r.unwrap()),
            })
            .unwrap();
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        s.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert!(s.child.wait().await.unwrap().success());
        assert_eq!(out, "bare 2 arg\n");
        // The PATH search found sh; a missing program is an error, as without sockets.
        sp.cmd = "/nonexistent/prog".into();
        let e = spawn(&sp).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        sp.cmd = "no-such-program-anywhere".into();
        let e = spawn(&sp).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn the_program_is_looked_up_as_execvp_does() {
        let c = |cmd: &str, path: &str| {
            candidates(cmd, Some(OsStr::new(path)))
                .unwrap()
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(c("sh", "/a:/b/c"), ["/a/sh", "/b/c/sh"]);
        assert_eq!(c("sh", "/a::/b"), ["/a/sh", "sh", "/b/sh"]);
        assert_eq!(c("./run", "/a"), ["./run"]);
        assert!(candidates("", None).is_err());
    }

    #[test]
    fn missing_program_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let e = spawn(&spec("/nonexistent/prog", &[])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
    /// Reads a spawned process's stdout to the end and waits for it.
    async fn output(mut s: Spawned) -> (String, std::process::ExitStatus) {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        if let Some(mut o) = s.stdout.take() {
            o.read_to_string(&mut out).await.unwrap();
        }
        (out, s.child.wait().await.unwrap())
    }

    #[tokio::test]
    async fn a_batch_reports_each_failure_in_its_place_and_starts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut in_dir = spec("sh", &["-c", "pwd"]);
        in_dir.working_dir = Some(dir.path().to_owned());
        let mut no_dir = spec("sh", &["-c", "pwd"]);
        no_dir.working_dir = Some(dir.path().join("gone"));
        let mut nul = spec("sh", &["-c", "echo a\0b"]);
        nul.args[1].push('\0');
        let all = spawn_all(vec![
            spec("sh", &["-c", "echo first"]),
            spec("/nonexistent/prog", &[]),
            spec("no-such-program-anywhere", &[]),
            no_dir,
            nul,
            in_dir,
        ])
        .await;
        let mut all = all.into_iter();
        let (out, status) = output(all.next().unwrap().unwrap()).await;
        assert_eq!((out.as_str(), status.success()), ("first\n", true));
        for _ in 0..3 {
            let e = all.next().unwrap().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
            assert_eq!(e.to_string(), "No such file or directory (os error 2)");
        }
        let e = all.next().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let (out, status) = output(all.next().unwrap().unwrap()).await;
        assert!(status.success());
        assert_eq!(out.trim_end(), dir.path().to_str().unwrap());
    }

    #[tokio::test]
    async fn a_child_starts_with_no_blocked_or_ignored_signal() {
        use nix::sys::signal::{SigSet, SigmaskHow};
        // The forking thread blocks SIGUSR1 for the spawn (and the test runtime ignores
        // SIGPIPE): the child has neither.
        let mut usr1 = SigSet::empty();
        usr1.add(Signal::SIGUSR1);
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr1), Some(&mut old))
            .unwrap();
        // The program itself reads its status: no shell in between to change it.
        let sp = spec("cat", &["/proc/self/status"]);
        let spawned = spawn(&sp);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
        let (out, status) = output(spawned.unwrap()).await;
        assert!(status.success(), "{out}");
        let field = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(field("SigBlk:"), 0, "{out}");
        let sigpipe = 1u64 << (Signal::SIGPIPE as u64 - 1);
        assert_eq!(field("SigIgn:") & sigpipe, 0, "{out}");
    }
}
