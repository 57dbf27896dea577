//! The only code that spawns processes and sends signals: process groups, the parent
//! death signal, uid/gid, stdio. It keeps no state and knows nothing of watchers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

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
}

/// A started process. Its pid is also its process group id.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// A stdout or stderr file, opened by the child itself.
struct FileOutput {
    /// 1 or 2.
    fd: i32,
    path: CString,
}

fn stdio(out: &Output, fd: i32, files: &mut Vec<FileOutput>) -> io::Result<Stdio> {
    Ok(match out {
        Output::Capture => Stdio::piped(),
        Output::Discard => Stdio::null(),
        Output::Inherit => Stdio::inherit(),
        Output::File(path) => {
            check_output_file(path)?;
            files.push(FileOutput {
                fd,
                path: CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| io::Error::other("an output file path holds a NUL byte"))?,
            });
            // Replaced in the child once the file is open.
            Stdio::null()
        }
    })
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
pub fn spawn(spec: &SpawnSpec) -> io::Result<Spawned> {
    let mut cmd = Command::new(&spec.cmd);
    cmd.args(&spec.args);
    if spec.clear_env {
        cmd.env_clear();
        // A program needs a PATH to find its own helpers.
        cmd.env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        );
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    if let Some(gid) = spec.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = spec.uid {
        cmd.uid(uid);
    }
    let mut files = Vec::new();
    cmd.stdin(Stdio::null())
        .stdout(stdio(&spec.stdout, 1, &mut files)?)
        .stderr(stdio(&spec.stderr, 2, &mut files)?)
        .process_group(0)
        .kill_on_drop(false);
    let opened_as = spec
        .uid
        .map_or("the agent's user".to_owned(), |u| format!("uid {u}"));
    let shown: Vec<String> = files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, after std has set the
    // uid, gid and working dir. It calls only async-signal-safe system calls (prctl, open
    // or openat2, fstat, dup2, close) on memory prepared before the fork, and allocates
    // nothing (its errors are bare error numbers).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            for f in &files {
                open_output_in_child(f)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
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
    })?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the process exited before its pid was read"))?;
    Ok(Spawned {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        pid,
    })
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
}
