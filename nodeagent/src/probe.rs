//! Readiness and liveness probes, one at a time: a TCP connection, a plain HTTP/1.1
//! GET (2xx passes), a command (exit 0 passes, run through [`process`]), and the
//! systemd notify socket a process reports `READY=1` on; and hooks, commands run with a
//! timeout whose failure is told with the end of their stderr. It knows nothing of
//! watchers or slots and decides nothing: the supervisor asks, and reads the result.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use crate::config::{parse_http_url, split_host_port};
use crate::process::{self, SpawnSpec};

/// One probe, its values expanded.
#[derive(Debug, Clone)]
pub enum Check {
    /// Connect to "host:port".
    Tcp(String),
    /// GET an `http://` URL.
    Http(String),
    /// Run a command (stdio discarded, in a process group of its own).
    Exec(SpawnSpec),
}

/// The most of an HTTP answer read: its status line must fit.
const MAX_STATUS_LINE: usize = 4096;

/// Runs `check` once; `Err` says why it did not pass, in words. It never takes longer
/// than `timeout` (a command still running then is killed with its group).
pub async fn run(check: &Check, timeout: Duration) -> Result<(), String> {
    let what = match check {
        Check::Tcp(t) => format!("tcp {t}"),
        Check::Http(u) => format!("http {u}"),
        Check::Exec(spec) => format!("exec {}", spec.cmd),
    };
    let attempt = async {
        match check {
            Check::Tcp(target) => tcp(target).await,
            Check::Http(url) => http(url).await,
            Check::Exec(spec) => exec(spec, timeout).await,
        }
    };
    match tokio::time::timeout(timeout.max(Duration::from_millis(1)), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            crate::config::format_duration(timeout)
        )),
    }
}

async fn connect(target: &str) -> Result<TcpStream, String> {
    let (host, port) = split_host_port(target)?;
    TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())
}

async fn tcp(target: &str) -> Result<(), String> {
    connect(target).await.map(drop)
}

/// A GET with `Connection: close`; only the status line is read.
async fn http(url: &str) -> Result<(), String> {
    let target = parse_http_url(url)?;
    let mut stream = connect(&target.connect).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: nodeagent\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let line = loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err("the answer's status line is too long".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before an HTTP status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let code = status_code(&line)?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("answered {code}"))
    }
}

/// The code of an HTTP/1.x status line ("HTTP/1.1 200 OK").
fn status_code(line: &str) -> Result<u16, String> {
    let mut parts = line.split(' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("not an HTTP answer".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1 answer".into());
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| "not an HTTP status code".into())
}

async fn exec(spec: &SpawnSpec, timeout: Duration) -> Result<(), String> {
    match run_to_exit(spec, timeout).await? {
        Some((Ok(status), _)) if status.success() => Ok(()),
        Some((Ok(status), _)) => Err(process::exit_status(status).to_string()),
        Some((Err(e), _)) => Err(e.to_string()),
        None => Err("still running at the timeout; killed".into()),
    }
}

/// The most of a hook's stderr kept, from its end.
const HOOK_STDERR: usize = 4096;

/// Runs a hook (`spec` with its stderr captured) until it exits or `timeout` passes
/// (then its whole group is killed). `Err` says why it failed, with the last line of
/// its stderr: its exit status or the timeout, or why it could not start.
pub async fn run_hook(spec: &SpawnSpec, timeout: Duration) -> Result<(), String> {
    let Some((status, kept)) = run_to_exit(spec, timeout).await? else {
        return Err(format!(
            "still running after its timeout ({}); killed",
            crate::config::format_duration(timeout)
        ));
    };
    let last = String::from_utf8_lossy(&kept)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.chars().take(300).collect::<String>());
    let said = last.map(|l| format!(": {l}")).unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{}{said}", process::exit_status(s))),
        Err(e) => Err(format!("{e}{said}")),
    }
}

/// Runs `spec` until it exits: its exit and the last [`HOOK_STDERR`] bytes of its
/// stderr (where `spec` captures it), or `None` when `timeout` passed first (then its
/// whole group is killed, and it is reaped). `Err`: it could not start.
async fn run_to_exit(
    spec: &SpawnSpec,
    timeout: Duration,
) -> Result<Option<(io::Result<std::process::ExitStatus>, Vec<u8>)>, String> {
    let mut spawned = process::spawn(spec).map_err(|e| format!("cannot start: {e}"))?;
    let pid = spawned.pid;
    let mut stderr = spawned.stderr.take();
    let tail = async {
        let mut kept: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 1024];
        if let Some(s) = stderr.as_mut() {
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > HOOK_STDERR {
                    kept.drain(..kept.len() - HOOK_STDERR);
                }
            }
        }
        kept
    };
    let run = async { tokio::join!(spawned.child.wait(), tail) };
    match tokio::time::timeout(timeout, run).await {
        Ok(done) => Ok(Some(done)),
        Err(_) => {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            let _ = spawned.child.wait().await;
            Ok(None)
        }
    }
}

/// The unix datagram socket one process reports readiness on (`NOTIFY_SOCKET`).
/// Its file is removed when it is dropped.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// The longest path a unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

impl NotifySocket {
    /// Binds a socket named `file` in `dir` (created 0700 if missing, 0711 when `uid`
    /// is given so that user may reach the socket it cannot list), readable and
    /// writable by the agent's user only, or by `uid` when given (the agent is root
    /// then). An old file of the same name is replaced.
    pub fn bind(dir: &Path, file: &str, uid: Option<u32>) -> io::Result<NotifySocket> {
        use std::os::unix::fs::PermissionsExt;
        let mode = if uid.is_some() { 0o711 } else { 0o700 };
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        let path = dir.join(file);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(io::Error::other(format!(
                "the notify socket path {} is {len} bytes, more than a unix socket takes \
                 ({MAX_SOCKET_PATH}); give the agent a shorter state_dir",
                path.display()
            )));
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = UnixDatagram::bind(&path)?;
        let me = NotifySocket { socket, path };
        std::fs::set_permissions(&me.path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(uid) = uid {
            nix::unistd::chown(&me.path, Some(nix::unistd::Uid::from_raw(uid)), None)
                .map_err(io::Error::from)?;
        }
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a datagram holding the line `READY=1`. Other lines (`STATUS=...`,
    /// ...) are accepted and ignored; a datagram is read up to 4 KiB.
    pub async fn ready(&self) -> io::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buf).await?;
            if says_ready(&buf[..n]) {
                return Ok(());
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a notify datagram holds the line `READY=1`.
fn says_ready(datagram: &[u8]) -> bool {
    datagram
        .split(|b| *b == b'\n')
        .any(|line| line == b"READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Output;

    fn spec(cmd: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec {
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            clear_env: true,
            working_dir: None,
            uid: None,
            gid: None,
            stdout: Output::Discard,
            stderr: Output::Discard,
            listen: Vec::new(),
            rlimits: Vec::new(),
        }
    }

    #[test]
    fn status_lines_and_notify_lines_are_read() {
        assert_eq!(status_code("HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(status_code("HTTP/1.0 503"), Ok(503));
        assert!(status_code("SSH-2.0-OpenSSH").is_err());
        assert!(status_code("HTTP/1.1 2000 x").is_err());
        assert!(status_code("").is_err());
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=warming up\nREADY=1\n"));
        assert!(!says_ready(b"STATUS=READY=1"));
        assert!(!says_ready(b"READY=0\nSTATUS=x"));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_pass_on_a_listener_and_2xx_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Answers 200 to the first request, 503 to the second, then stops reading.
        let server = tokio::spawn(async move {
            for answer in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
                assert!(
                    req.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
                    "{req}"
                );
                let reply = format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
            listener
        });
        let t = Duration::from_secs(5);
        let url = format!("http://127.0.0.1:{port}/health?x=1");
        assert_eq!(run(&Check::Http(url.clone()), t).await, Ok(()));
        let e = run(&Check::Http(url), t).await.unwrap_err();
        assert!(e.ends_with("answered 503"), "{e}");
        let listener = server.await.unwrap();
        assert_eq!(
            run(&Check::Tcp(format!("127.0.0.1:{port}")), t).await,
            Ok(())
        );
        drop(listener);
        let e = run(&Check::Tcp(format!("127.0.0.1:{port}")), t)
            .await
            .unwrap_err();
        assert!(e.contains("refused"), "{e}");
        let e = run(&Check::Http("https://127.0.0.1/".into()), t)
            .await
            .unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
    }

    #[tokio::test]
    async fn an_http_server_that_never_answers_fails_at_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = std::time::Instant::now();
        let e = run(
            &Check::Http(format!("http://127.0.0.1:{port}/")),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(e.contains("no answer within 300ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[tokio::test]
    async fn exec_probes_pass_on_exit_0_and_a_hung_one_is_killed() {
        let t = Duration::from_secs(5);
        assert_eq!(run(&Check::Exec(spec("true", &[])), t).await, Ok(()));
        let e = run(&Check::Exec(spec("sh", &["-c", "exit 3"])), t)
            .await
            .unwrap_err();
        assert!(e.ends_with("exit code 3"), "{e}");
        let e = run(&Check::Exec(spec("/nonexistent/x", &[])), t)
            .await
            .unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
        let started = std::time::Instant::now();
        let e = run(
            &Check::Exec(spec("sleep", &["30"])),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(e.contains("killed") || e.contains("no answer"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_notify_socket_is_private_and_hears_ready() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify");
        let sock = NotifySocket::bind(&notify, "1.sock", None).unwrap();
        let mode = std::fs::metadata(sock.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&notify).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"STATUS=starting", sock.path()).unwrap();
        client
            .send_to(b"STATUS=almost\nREADY=1\n", sock.path())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sock.ready())
            .await
            .unwrap()
            .unwrap();
        let path = sock.path().to_owned();
        drop(sock);
        assert!(!path.exists());
        // A watcher with a uid: that user owns its socket and may reach it through a
        // directory it cannot list.
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            let theirs = NotifySocket::bind(&notify, "2.sock", Some(65534)).unwrap();
            let meta = std::fs::metadata(theirs.path()).unwrap();
            assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
            let dmode = std::fs::metadata(&notify).unwrap().permissions().mode();
            assert_eq!(dmode & 0o777, 0o711);
        }
        let long = "x".repeat(120);
        let e = NotifySocket::bind(&notify, &long, None).unwrap_err();
        assert!(e.to_string().contains("shorter state_dir"), "{e}");
    }
}
