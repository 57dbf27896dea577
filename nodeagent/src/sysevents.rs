//! Fast failure detection from the NATS server's own client-disconnect advisories
//! (`$SYS.ACCOUNT.<account>.DISCONNECT`): subscribes and parses them into
//! [`DisconnectedClient`]s. It must not touch the member table; the caller matches a
//! closed connection (server id and client id, never the name alone: any client may
//! call itself after a member) to a member and calls `Membership::mark_failed`.
//!
//! The server publishes these advisories only in its system account. An agent sees
//! them when the system account exports them to the agents' account and that account
//! imports them (see `examples/nats-sysevents.conf`), or when the agent connects as a
//! system-account user. Without either, the subscription succeeds and stays silent:
//! nothing breaks, failures are then found by missed heartbeats alone.

use futures::{future, Stream, StreamExt};
use serde::Deserialize;

/// The `type` of a client-disconnect advisory.
pub const DISCONNECT_ADVISORY: &str = "io.nats.server.advisory.v1.client_disconnect";

/// A client of the watched account whose connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectedClient {
    /// The client's connection name; agents use their node name. `None` when the
    /// client gave none.
    pub name: Option<String>,
    /// The connection id the server gave the client (unique per server, not cluster).
    pub cid: u64,
    /// Why the server closed the connection: "Client Closed", "Stale Connection",
    /// "Slow Consumer", "Server Shutdown", ...
    pub reason: Option<String>,
    /// The name of the server the client was connected to.
    pub server: Option<String>,
    /// The id of that server (`server_id` in its INFO).
    pub server_id: Option<String>,
}

impl DisconnectedClient {
    /// True when this is the connection a member announced as its own (`server_id`,
    /// `client_id` from its announcement). A member that announced no connection never
    /// matches.
    pub fn is_connection(&self, server_id: Option<&str>, client_id: Option<u64>) -> bool {
        match (server_id, client_id, self.server_id.as_deref()) {
            (Some(s), Some(c), Some(mine)) => s == mine && c == self.cid,
            _ => false,
        }
    }
}

/// Why the disconnect advisories cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum SysEventsError {
    #[error(
        "account name {0:?} cannot be part of a subject; use the account's name as in \
         the server config (one token, no spaces, '.', '*' or '>')"
    )]
    BadAccount(String),
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("cannot confirm the subscription to {subject} with the server: {source}")]
    Flush {
        subject: String,
        source: async_nats::client::FlushError,
    },
}

/// `$SYS.ACCOUNT.<account>.DISCONNECT`: where the server announces the disconnects of
/// `account`'s clients.
pub fn disconnect_subject(account: &str) -> String {
    format!("$SYS.ACCOUNT.{account}.DISCONNECT")
}

/// Subscribes to the disconnect advisories of `account` (the account the agents use,
/// as named in the server config, e.g. `CLUSTER`) and yields one
/// [`DisconnectedClient`] per closed connection. The subscription is active at the
/// server when this returns (it waits for the server's PONG, so while the client is
/// disconnected it waits for the reconnect: run it in a task or under a timeout).
/// Messages that are not disconnect advisories are skipped. The stream ends when the
/// client is closed; dropping it unsubscribes.
pub async fn watch_disconnects(
    client: async_nats::Client,
    account: &str,
) -> Result<impl Stream<Item = DisconnectedClient> + Send + Unpin + 'static, SysEventsError> {
    if account.is_empty()
        || account
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
    {
        return Err(SysEventsError::BadAccount(account.to_owned()));
    }
    let subject = disconnect_subject(account);
    let subscriber =
        client
            .subscribe(subject.clone())
            .await
            .map_err(|source| SysEventsError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
    client
        .flush()
        .await
        .map_err(|source| SysEventsError::Flush {
            subject: subject.clone(),
            source,
        })?;
    Ok(subscriber.filter_map(move |msg| {
        let parsed = parse_disconnect(&msg.payload);
        if parsed.is_none() {
            tracing::debug!(subject = %msg.subject, "ignored a message that is not a disconnect advisory");
        }
        future::ready(parsed)
    }))
}

/// Reads one disconnect advisory; `None` when `payload` is not one.
pub fn parse_disconnect(payload: &[u8]) -> Option<DisconnectedClient> {
    #[derive(Deserialize)]
    struct Advisory {
        #[serde(rename = "type")]
        kind: String,
        client: ClientInfo,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        server: Option<ServerInfo>,
    }
    #[derive(Deserialize)]
    struct ClientInfo {
        #[serde(default)]
        id: u64,
        #[serde(default)]
        name: Option<String>,
    }
    #[derive(Deserialize)]
    struct ServerInfo {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        id: Option<String>,
    }
    let a: Advisory = serde_json::from_slice(payload).ok()?;
    if a.kind != DISCONNECT_ADVISORY {
        return None;
    }
    Some(DisconnectedClient {
        name: a.client.name.filter(|n| !n.is_empty()),
        cid: a.client.id,
        reason: a.reason.filter(|r| !r.is_empty()),
        server_id: a
            .server
            .as_ref()
            .and_then(|s| s.id.clone())
            .filter(|i| !i.is_empty()),
        server: a.server.and_then(|s| s.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    /// A recorded advisory of nats-server 2.9.10.
    const SAMPLE: &str = r#"{"type":"io.nats.server.advisory.v1.client_disconnect","id":"Qox2pfERyavbuAgshvCvAF","timestamp":"2026-11-23T15:41:29.086585415Z","server":{"name":"NDPDRUQ","host":"127.0.0.1","id":"NDPDRUQ","ver":"2.9.10","seq":22,"jetstream":false,"time":"2026-11-23T15:41:29.086617735Z"},"client":{"start":"2026-11-23T15:41:29.086165077Z","host":"127.0.0.1","id":6,"acc":"APP","user":"app","name":"n1","rtt":196000,"stop":"2026-11-23T15:41:29.086585415Z","kind":"Client","client_type":"nats"},"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},"reason":"Client Closed"}"#;

    #[test]
    fn parses_advisories() {
        assert_eq!(
            parse_disconnect(SAMPLE.as_bytes()),
            Some(DisconnectedClient {
                name: Some("n1".into()),
                cid: 6,
                reason: Some("Client Closed".into()),
                server: Some("NDPDRUQ".into()),
                server_id: Some("NDPDRUQ".into()),
            })
        );
        let d = parse_disconnect(SAMPLE.as_bytes()).unwrap();
        // Matched by connection, never by name.
        let cases: &[(Option<&str>, Option<u64>, bool)] = &[
            (Some("NDPDRUQ"), Some(6), true),
            (Some("NDPDRUQ"), Some(7), false),
            (Some("OTHER"), Some(6), false),
            (None, Some(6), false),
            (Some("NDPDRUQ"), None, false),
            (None, None, false),
        ];
        for (server, client, want) in cases {
            assert_eq!(
                d.is_connection(*server, *client),
                *want,
                "{server:?} {client:?}"
            );
        }
        let unnamed = SAMPLE.replace(r#""name":"n1","#, r#""name":"","#);
        assert_eq!(parse_disconnect(unnamed.as_bytes()).unwrap().name, None);
        let connect = SAMPLE.replace("client_disconnect", "client_connect");
        assert_eq!(parse_disconnect(connect.as_bytes()), None);
        assert_eq!(parse_disconnect(b"not json"), None);
        assert_eq!(parse_disconnect(br#"{"type":"x"}"#), None);
    }

    /// A nats-server on a free port, killed on drop.
    struct Server {
        child: Child,
        port: u16,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn nats_server_bin() -> PathBuf {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
            .expect("nats-server not found on PATH or in /usr/sbin; install it (apt-get install nats-server)")
    }

    async fn start_server(config: &Path) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(config)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen in 10s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    /// Waits (bounded) for the disconnect of the client named `name`.
    async fn wait_for(
        events: &mut (impl Stream<Item = DisconnectedClient> + Unpin),
        name: &str,
    ) -> DisconnectedClient {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.next().await {
                    Some(d) if d.name.as_deref() == Some(name) => return d,
                    Some(_) => continue,
                    None => panic!("the advisory stream ended"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no disconnect advisory for {name} within 5s"))
    }

    #[tokio::test]
    async fn sees_disconnects_through_the_example_config() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/nats-sysevents.conf");
        let server = start_server(&config).await;
        let url = format!("nats://127.0.0.1:{}", server.port);

        // The watcher connects without credentials (no_auth_user: agent of CLUSTER).
        let watcher = async_nats::connect(&url).await.expect("watcher connects");
        let mut events = watch_disconnects(watcher, "CLUSTER")
            .await
            .expect("subscribes");

        // An agent named n1, with the agents' credentials, closes its connection.
        let n1 = async_nats::ConnectOptions::new()
            .name("n1")
            .user_and_password("agent".into(), "change-me-agent".into())
            .connect(&url)
            .await
            .expect("n1 connects");
        n1.flush().await.expect("n1 is registered");
        let t0 = Instant::now();
        drop(n1);
        let d = wait_for(&mut events, "n1").await;
        let latency = t0.elapsed();
        assert_eq!(d.reason.as_deref(), Some("Client Closed"));
        assert!(d.cid > 0);
        println!("disconnect of n1 (client dropped) seen after {latency:?}");

        // A process killed outright: the kernel closes its socket, nothing is said.
        let sock = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .expect("tcp connect");
        let mut sock = BufReader::new(sock);
        let mut line = String::new();
        sock.read_line(&mut line).await.expect("INFO line");
        assert!(line.starts_with("INFO "), "{line}");
        sock.write_all(b"CONNECT {\"name\":\"n2\",\"verbose\":false}\r\nPING\r\n")
            .await
            .expect("CONNECT");
        line.clear();
        sock.read_line(&mut line).await.expect("PONG line");
        assert_eq!(line.trim(), "PONG");
        let t0 = Instant::now();
        drop(sock);
        let d = wait_for(&mut events, "n2").await;
        println!(
            "disconnect of n2 (socket closed) seen after {:?}",
            t0.elapsed()
        );
        assert_eq!(d.name.as_deref(), Some("n2"));

        // Another account's clients are not visible here: the SYS admin's disconnect
        // does not reach the CLUSTER watcher.
        let admin = async_nats::ConnectOptions::new()
            .name("admin-probe")
            .user_and_password("admin".into(), "change-me-admin".into())
            .connect(&url)
            .await
            .expect("admin connects");
        admin.flush().await.expect("admin registered");
        drop(admin);
        let n3 = async_nats::ConnectOptions::new()
            .name("n3")
            .connect(&url)
            .await
            .expect("n3 connects");
        n3.flush().await.expect("n3 registered");
        drop(n3);
        let d = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an advisory within 5s")
            .expect("stream open");
        assert_eq!(
            d.name.as_deref(),
            Some("n3"),
            "only CLUSTER clients are seen"
        );
        drop(server);
    }

    #[tokio::test]
    async fn rejects_account_names_that_are_not_one_token() {
        // No server is needed: the name is checked before anything is sent.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a lazy client");
        for bad in ["", "A.B", "*", ">", "A B"] {
            assert!(
                matches!(
                    watch_disconnects(client.clone(), bad).await,
                    Err(SysEventsError::BadAccount(_))
                ),
                "{bad:?}"
            );
        }
    }
}
