//! The NATS server's client-disconnect advisories (`$SYS.ACCOUNT.<account>.DISCONNECT`),
//! as the dashboard reads them: which connection closed, named by the server's id and
//! the client id the server gave it. The server publishes them in its system account;
//! the dashboard hears them when the account it uses imports them (see nats.conf).
//! Parsing only: the view decides what a closed connection means.

use serde::Deserialize;

/// The subjects of the server's own events start with this.
pub const SYSTEM_PREFIX: &str = "$SYS.";

/// The `type` of a client-disconnect advisory.
const DISCONNECT_ADVISORY: &str = "io.nats.server.advisory.v1.client_disconnect";

/// Where the server announces the disconnects of `account`'s clients.
pub fn disconnect_subject(account: &str) -> String {
    format!("{SYSTEM_PREFIX}ACCOUNT.{account}.DISCONNECT")
}

/// A closed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// The id of the server the client was connected to.
    pub server_id: String,
    /// The id that server gave the connection.
    pub cid: u64,
}

/// Reads one advisory; `None` when `payload` is not a client-disconnect advisory that
/// names its server and client.
pub fn parse_disconnect(payload: &[u8]) -> Option<Disconnect> {
    #[derive(Deserialize)]
    struct Advisory {
        #[serde(rename = "type")]
        kind: String,
        client: Client,
        server: Server,
    }
    #[derive(Deserialize)]
    struct Client {
        id: u64,
    }
    #[derive(Deserialize)]
    struct Server {
        id: String,
    }
    let a: Advisory = serde_json::from_slice(payload).ok()?;
    (a.kind == DISCONNECT_ADVISORY && !a.server.id.is_empty()).then_some(Disconnect {
        server_id: a.server.id,
        cid: a.client.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An advisory of nats-server 2.9.10, as recorded.
    const SAMPLE: &str = r#"{"type":"io.nats.server.advisory.v1.client_disconnect","id":"Qox2pfERyavbuAgshvCvAF","timestamp":"2026-11-23T15:41:29.086585415Z","server":{"name":"NDPDRUQ","host":"127.0.0.1","id":"NDPDRUQ","ver":"2.9.10","seq":22,"jetstream":false,"time":"2026-11-23T15:41:29.086617735Z"},"client":{"start":"2026-11-23T15:41:29.086165077Z","host":"127.0.0.1","id":6,"acc":"APP","user":"app","name":"n1","rtt":196000,"stop":"2026-11-23T15:41:29.086585415Z","kind":"Client","client_type":"nats"},"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},"reason":"Client Closed"}"#;

    #[test]
    fn reads_the_closed_connection_and_nothing_else() {
        assert_eq!(
            disconnect_subject("CLUSTER"),
            "$SYS.ACCOUNT.CLUSTER.DISCONNECT"
        );
        assert_eq!(
            parse_disconnect(SAMPLE.as_bytes()),
            Some(Disconnect {
                server_id: "NDPDRUQ".into(),
                cid: 6,
            })
        );
        let connect = SAMPLE.replace("client_disconnect", "client_connect");
        let no_server = SAMPLE.replace(r#""id":"NDPDRUQ""#, r#""id":"""#);
        let bad_cid = SAMPLE.replace(r#""id":6"#, r#""id":-6"#);
        for bad in [&connect, &no_server, &bad_cid, "{}", "not json", "null"] {
            assert_eq!(parse_disconnect(bad.as_bytes()), None, "{bad}");
        }
    }
}
