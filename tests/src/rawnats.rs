//! A minimal NATS client written from the protocol's text (INFO, CONNECT, SUB, PUB,
//! MSG/HMSG, PING/PONG) over a plain `TcpStream`: a client that is not async-nats, to
//! check what another NATS tool sees. It asks and gathers every answer until a
//! deadline or enough answers, as `nats micro ls` and `nats req --replies` do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One connection to a server on loopback.
pub struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_sid: u64,
}

/// A message as it arrived: subject and payload.
#[derive(Debug, Clone)]
pub struct RawMsg {
    pub subject: String,
    pub payload: Vec<u8>,
}

impl RawNats {
    /// Connects to `127.0.0.1:port`, as `user`/`password` when given, and waits for the
    /// server to acknowledge (a PING answered by PONG); panics with the server's error.
    pub fn connect(port: u16, login: Option<(&str, &str)>) -> RawNats {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to nats on port {port}: {e}"));
        let writer = stream.try_clone().expect("clone the stream");
        let mut conn = RawNats {
            reader: BufReader::new(stream),
            writer,
            next_sid: 1,
        };
        let info = conn
            .line(Duration::from_secs(5))
            .expect("the server's INFO");
        assert!(info.starts_with("INFO "), "expected INFO, got {info:?}");
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
            "lang": "raw", "version": "0", "name": "raw-protocol-test-client", "protocol": 1,
        });
        if let Some((user, pass)) = login {
            connect["user"] = user.into();
            connect["pass"] = pass.into();
        }
        conn.send(&format!("CONNECT {connect}\r\nPING\r\n"));
        loop {
            let line = conn
                .line(Duration::from_secs(5))
                .expect("PONG after CONNECT");
            if line == "PONG" {
                return conn;
            }
            assert!(!line.starts_with("-ERR"), "the server refused: {line}");
        }
    }

    fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to nats: {e}"));
    }

    /// One protocol line without its CRLF; `None` when nothing came by `timeout`.
    fn line(&mut self, timeout: Duration) -> Option<String> {
        let stream = self.reader.get_ref();
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // A partial line stays in `line` only when the server stalls mid-line,
                // which it does not on loopback.
                None
            }
            Err(e) => panic!("read from nats: {e}"),
        }
    }

    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let mut buf = vec![0; len + 2];
        self.reader
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("read a payload of {len} bytes: {e}"));
        buf.truncate(len);
        buf
    }

    /// Publishes `payload` on `subject` with a reply inbox and gathers the answers until
    /// `want` came or `wait` passed. A `-ERR` from the server (a permission violation)
    /// panics.
    pub fn request_many(
        &mut self,
        subject: &str,
        payload: &[u8],
        want: usize,
        wait: Duration,
    ) -> Vec<RawMsg> {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.raw{}x{sid}", std::process::id());
        self.send(&format!("SUB {inbox} {sid}\r\n"));
        self.send(&format!("PUB {subject} {inbox} {}\r\n", payload.len()));
        self.writer.write_all(payload).expect("write a payload");
        self.send("\r\n");
        let deadline = Instant::now() + wait;
        let mut out = vec![];
        while out.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(line) = self.line(left) else {
                break;
            };
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.first().copied() {
                Some("PING") => self.send("PONG\r\n"),
                Some("MSG") => {
                    // MSG <subject> <sid> [reply-to] <#bytes>
                    let len: usize = parts.last().and_then(|n| n.parse().ok()).expect("size");
                    let body = self.payload(len);
                    out.push(RawMsg {
                        subject: parts[1].to_owned(),
                        payload: body,
                    });
                }
                Some("HMSG") => {
                    // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                    let n = parts.len();
                    let hdr: usize = parts[n - 2].parse().expect("header size");
                    let total: usize = parts[n - 1].parse().expect("total size");
                    let body = self.payload(total);
                    let headers = String::from_utf8_lossy(&body[..hdr.min(body.len())]);
                    // A "no responders" status: nobody is subscribed.
                    assert!(!headers.contains(" 503"), "no responders on {subject}");
                    out.push(RawMsg {
                        subject: parts[1].to_owned(),
                        payload: body[hdr.min(body.len())..].to_vec(),
                    });
                }
                Some("-ERR") => panic!("the server refused a request on {subject}: {line}"),
                _ => {}
            }
        }
        self.send(&format!("UNSUB {sid}\r\n"));
        out
    }

    /// [`request_many`](Self::request_many), each answer read as JSON.
    pub fn request_json(
        &mut self,
        subject: &str,
        payload: &[u8],
        want: usize,
        wait: Duration,
    ) -> Vec<serde_json::Value> {
        self.request_many(subject, payload, want, wait)
            .into_iter()
            .map(|m| {
                serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
                    panic!(
                        "an answer on {subject} is not JSON ({e}): {}",
                        String::from_utf8_lossy(&m.payload)
                    )
                })
            })
            .collect()
    }
}
