//! `ctl web` as a real process on a free port, a plain HTTP/1.1 client to ask it
//! things (status, headers, body) without a browser, and `chromedriver` for the tests
//! that drive headless Chromium: every process here is killed on drop, chromedriver's
//! browsers included (they carry a marker of their own, [`crate::mark`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::bins::{bin, hermetic, KillOnDrop};
use crate::mark::MarkGuard;
use crate::nats::free_port;
use crate::wait::{bound, POLL};

/// How long `ctl web` or chromedriver may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `ctl web`.
pub struct Web {
    child: KillOnDrop,
    port: u16,
    dir: tempfile::TempDir,
}

impl Web {
    /// Starts `ctl -s URL web --listen HOST:PORT ARGS...` on a free port of `host`
    /// (`127.0.0.1` or `0.0.0.0`), trying another port if that one was taken meanwhile,
    /// and waits until it says it serves.
    pub fn start(nats_url: &str, host: &str, args: &[&str]) -> Web {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("a temporary dir");
            let stderr = dir.path().join("web.stderr");
            let file = std::fs::File::create(&stderr).expect("a stderr file");
            let listen = format!("{host}:{port}");
            let mut cmd = hermetic(bin("ctl"));
            cmd.args(["-s", nats_url, "web", "--listen", &listen])
                .args(args)
                .stdout(Stdio::null())
                .stderr(file);
            let mut child = KillOnDrop(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("cannot run ctl web: {e}")),
            );
            let deadline = Instant::now() + bound(START_TIMEOUT);
            loop {
                let text = std::fs::read_to_string(&stderr).unwrap_or_default();
                if text.contains("serving the dashboard") {
                    return Web { child, port, dir };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    if text.contains("cannot listen") {
                        break;
                    }
                    panic!("ctl web exited ({status}) before serving:\n{text}");
                }
                if Instant::now() > deadline {
                    panic!("ctl web did not serve within {START_TIMEOUT:?}:\n{text}");
                }
                std::thread::sleep(POLL);
            }
        }
        panic!("ctl web found no free port in 5 tries");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("web.stderr")).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to 127.0.0.1:`port` and reads the whole response (the connection
/// is closed after it; a chunked body is put together). Bounded to 10 s.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"));
    let _ = s.set_read_timeout(Some(bound(Duration::from_secs(10))));
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send to 127.0.0.1:{port}: {e}"));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response from 127.0.0.1:{port}: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..n.min(after.len())]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running chromedriver; the browsers it starts are killed with it.
pub struct Driver {
    child: KillOnDrop,
    /// In the environment of chromedriver and of every browser it starts.
    mark: MarkGuard,
    port: u16,
    /// The browser's profile (a fresh one per driver).
    profile: tempfile::TempDir,
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        path.split(':')
            .chain(["/usr/bin", "/usr/lib/chromium"])
            .map(|d| Path::new(d).join(n))
            .find(|p| p.is_file())
    })
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it accepts connections.
    pub fn start() -> Driver {
        let program = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver not found; install it: apt-get install -y chromium chromium-driver"
            )
        });
        let mark = MarkGuard::new();
        let port = free_port();
        let profile = tempfile::tempdir().expect("a temporary dir");
        let mut cmd = std::process::Command::new(program);
        crate::mark::apply(&mut cmd, mark.marker());
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run chromedriver: {e}")),
        );
        let deadline = Instant::now() + bound(START_TIMEOUT);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromedriver exited ({status}) before listening on port {port}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(POLL);
        }
        Driver {
            child,
            mark,
            port,
            profile,
        }
    }

    /// `http://127.0.0.1:PORT`, for the WebDriver client.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `goog:chromeOptions` for headless Chromium as root on a machine without a
    /// network: without these flags it waits on connections that are refused.
    pub fn chrome_options(&self) -> serde_json::Value {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| {
                panic!("chromium not found; install it: apt-get install -y chromium")
            });
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,800",
                format!("--user-data-dir={}", self.profile.path().display()),
            ],
        })
    }

    /// The marker its browsers carry.
    pub fn marker(&self) -> &str {
        self.mark.marker()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver first, then whatever browser it left (the marker's guard).
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}
