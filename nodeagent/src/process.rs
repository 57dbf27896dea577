//! The only code that spawns processes and sends signals: process groups, the parent
//! death signal, uid/gid, stdio. It keeps no state and knows nothing of watchers.

use std::io;
use std::path::PathBuf;
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

fn stdio(out: &Output) -> io::Result<Stdio> {
    Ok(match out {
        Output::Capture => Stdio::piped(),
        Output::Discard => Stdio::null(),
        Output::Inherit => Stdio::inherit(),
        Output::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        }
    })
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
    cmd.stdin(Stdio::null())
        .stdout(stdio(&spec.stdout)?)
        .stderr(stdio(&spec.stderr)?)
        .process_group(0)
        .kill_on_drop(false);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(PR_SET_PDEATHSIG), which is async-signal-safe and touches no memory of the
    // parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
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

/// True while any process of the group `pgid` is alive (zombies included).
pub fn group_alive(pgid: u32) -> bool {
    match as_pid(pgid) {
        Ok(p) => !matches!(killpg(p, None), Err(Errno::ESRCH)),
        Err(_) => false,
    }
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
