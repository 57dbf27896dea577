//! The connection to NATS: servers and credentials from the flags (or the URL), TLS,
//! and the hook that hands the server's permission denials to whoever waits on them.

use crate::args::Global;
use crate::client::{self, Conn};

/// Connects as the flags say; the error says what is wrong and what to give.
pub async fn connect(g: &Global) -> Result<Conn, String> {
    // The server answers a publish or subscription this user may not make with an
    // error on the side; the event callback hands it to whoever waits.
    let (denied_tx, denied_rx) = Conn::channel();
    let mut opts = async_nats::ConnectOptions::new()
        .name("ctl")
        .connection_timeout(std::time::Duration::from_secs(3))
        .event_callback(move |event| {
            client::note_server_error(&denied_tx, &event);
            async {}
        });
    if let (Some(u), Some(p)) = (&g.user, &g.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &g.token {
        opts = opts.token(t.clone());
    }
    if let Some(c) = &g.creds {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| format!("cannot read credentials {}: {e}", c.display()))?;
    }
    if let Some(ca) = &g.tlsca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&g.tlscert, &g.tlskey) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = g
        .server
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e| format!("bad server URL '{s}': {e}"))
        })
        .collect::<Result<_, _>>()?;
    // Credentials in the URL, as the nats CLI takes them: user:password@ or token@.
    let explicit = g.user.is_some() || g.token.is_some() || g.creds.is_some();
    if let Some(addr) = servers
        .iter()
        .find(|a| a.has_user_pass())
        .filter(|_| !explicit)
    {
        let user = addr.username().unwrap_or_default().to_owned();
        opts = match addr.password() {
            Some(pass) => opts.user_and_password(user, pass.to_owned()),
            None => opts.token(user),
        };
    }
    // The URL without its credentials, for messages.
    let shown: Vec<String> = servers
        .iter()
        .map(|a| format!("{}://{}:{}", a.scheme(), a.host(), a.port()))
        .collect();
    // How it authenticates, never with what.
    let auth = match (&g.creds, &g.user, &g.password, &g.token) {
        (Some(c), ..) => format!("credentials from {}", c.display()),
        (None, Some(u), Some(_), _) => format!("user '{u}' with a password"),
        (None, _, _, Some(_)) => "a token".to_owned(),
        _ if servers.iter().any(|a| a.has_user_pass()) => "credentials in the URL".to_owned(),
        _ => "no credentials".to_owned(),
    };
    tracing::info!(
        "connecting to NATS at {} ({auth}{})",
        shown.join(","),
        if g.tlsca.is_some() { ", TLS" } else { "" }
    );
    let started = std::time::Instant::now();
    let client = opts.connect(servers).await.map_err(|e| {
        let hint = match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => {
                "give credentials: --user/--password, --token or --creds \
                 (or NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS)"
            }
            // A refused certificate shows as an I/O error from the TLS handshake.
            kind if kind == async_nats::ConnectErrorKind::Tls
                || e.to_string().contains("certificate") =>
            {
                "for TLS give --tlsca (and --tlscert/--tlskey if the server verifies clients)"
            }
            _ => "set -s URL or NATS_URL",
        };
        format!(
            "cannot connect to NATS at {}: {e} ({hint})",
            shown.join(",")
        )
    })?;
    let info = client.server_info();
    let named = if info.server_name == info.server_id {
        String::new()
    } else {
        format!("'{}', ", info.server_name)
    };
    tracing::info!(
        "connected in {:.1?} to NATS server {named}id {}, version {}, listening on {}:{}",
        started.elapsed(),
        info.server_id,
        info.version,
        info.host,
        info.port
    );
    Ok(Conn::new(client, denied_rx))
}
