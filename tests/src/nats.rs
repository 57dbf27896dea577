//! A real `nats-server` per test, on a free loopback port, killed when dropped (also
//! when the test panics).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wait::POLL;

/// Where `nats-server` is: on PATH, or in /usr/sbin (the Debian package).
pub fn nats_server_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server not found on PATH or in /usr/sbin; install nats-server: apt-get install -y nats-server")
        })
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller retries if it was taken).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// True once this server said it is ready and its port accepts connections; false if
/// it exited (port taken) or `timeout` passed. Reading its own log, not just probing the
/// port, makes sure the port is not answered by another test's server.
fn wait_ready(child: &mut Child, log: &Path, addr: &str, port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let said_ready = std::fs::read_to_string(log).is_ok_and(|t| t.contains("Server is ready"));
        if said_ready && TcpStream::connect((addr, port)).is_ok() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// A running `nats-server`.
pub struct NatsServer {
    child: Child,
    /// The address it listens on: 127.0.0.1, or a test network's host side.
    addr: String,
    port: u16,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    /// The monitoring port, for servers started by [`NatsServer::start_routed`].
    http: Option<u16>,
}

/// Runs `nats-server` on `port`, logging into `dir`; `None` when it did not become
/// ready (the port was taken, most likely).
fn spawn_server(config: Option<&Path>, dir: &Path, addr: &str, port: u16) -> Option<Child> {
    let bin = nats_server_path();
    let log = dir.join("nats-server.log");
    let _ = std::fs::remove_file(&log);
    let stderr = std::fs::File::create(dir.join("nats-server.stderr"))
        .unwrap_or_else(|e| panic!("cannot create a file in {}: {e}", dir.display()));
    let mut cmd = Command::new(&bin);
    crate::mark::apply(&mut cmd, &crate::mark::shared_marker());
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    let mut child = cmd
        .args(["-a", addr, "-p", &port.to_string()])
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if wait_ready(&mut child, &log, addr, port, Duration::from_secs(10)) {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn new_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("e2e-nats-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary dir: {e}"))
}

fn output(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("nats-server.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join("nats-server.stderr")).unwrap_or_default();
    format!("{log}{stderr}")
}

impl NatsServer {
    /// Starts a server with no config file.
    pub fn start() -> NatsServer {
        Self::launch(None, "127.0.0.1")
    }

    /// Starts a server with `nats-server -c PATH` (address and port still come from
    /// the harness).
    pub fn start_with_config(path: impl AsRef<Path>) -> NatsServer {
        Self::launch(Some(path.as_ref()), "127.0.0.1")
    }

    /// Starts a server listening on `addr` only (a test network's host side), with
    /// `config` if given.
    pub fn start_on(addr: &str, config: Option<&Path>) -> NatsServer {
        Self::launch(config, addr)
    }

    fn launch(config: Option<&Path>, addr: &str) -> NatsServer {
        let mut dir = new_dir();
        // The port may be taken between picking and binding it; try a few.
        for _ in 0..5 {
            match Self::try_launch(config, addr, dir, None) {
                Ok(s) => return s,
                Err(d) => dir = d,
            }
        }
        panic!(
            "nats-server did not start on a free port after 5 tries; its output:\n{}",
            output(dir.path())
        );
    }

    /// One try on a free port; on failure the dir is given back for the next try.
    fn try_launch(
        config: Option<&Path>,
        addr: &str,
        dir: tempfile::TempDir,
        http: Option<u16>,
    ) -> Result<Self, tempfile::TempDir> {
        let port = free_port();
        match spawn_server(config, dir.path(), addr, port) {
            Some(child) => Ok(NatsServer {
                child,
                addr: addr.to_owned(),
                port,
                dir,
                config: config.map(Path::to_owned),
                http,
            }),
            None => Err(dir),
        }
    }

    /// Starts `n` servers on 127.0.0.1 routed into one NATS cluster, each with a
    /// monitoring port ([`http_port`](Self::http_port)) and `extra` config text. The
    /// client, route and monitoring ports are picked free and picked again, for the
    /// whole cluster, when any server cannot bind one.
    pub fn start_routed(n: usize, extra: &str) -> Vec<NatsServer> {
        let mut last = String::new();
        for _ in 0..5 {
            let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let https: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut up = vec![];
            for i in 0..n {
                let dir = new_dir();
                let others: Vec<String> = (0..n)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                let path = dir.path().join("server.conf");
                let text = format!(
                    "server_name: s{i}\nhttp: 127.0.0.1:{}\ncluster {{\n  name: c\n  \
                     listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n{extra}\n",
                    https[i],
                    routes[i],
                    others.join(", ")
                );
                std::fs::write(&path, text).expect("write a server config");
                match Self::try_launch(Some(&path), "127.0.0.1", dir, Some(https[i])) {
                    Ok(s) => up.push(s),
                    Err(dir) => {
                        last = output(dir.path());
                        break;
                    }
                }
            }
            if up.len() == n {
                return up;
            }
        }
        panic!("a routed nats-server did not start after 5 tries; its output:\n{last}");
    }

    /// The monitoring port, for servers started by [`start_routed`](Self::start_routed).
    pub fn http_port(&self) -> Option<u16> {
        self.http
    }

    /// `GET path` on the monitoring port (e.g. `/connz`, `/routez`); the body, empty
    /// when it cannot be read.
    pub fn monitor(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Some(port) = self.http else {
            return String::new();
        };
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Kills the server (as if it crashed), keeping its port for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port, after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn_server(
            self.config.as_deref(),
            self.dir.path(),
            &self.addr,
            self.port,
        )
        .unwrap_or_else(|| {
            panic!(
                "nats-server did not start again on port {}; its output:\n{}",
                self.port,
                output(self.dir.path())
            )
        });
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `nats://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.addr, self.port)
    }

    /// The URL with a user and password in it, for a server that wants them.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@{}:{}", self.addr, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        output(self.dir.path())
    }

    /// A client connected to this server (for raw requests).
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
