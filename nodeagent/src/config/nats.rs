//! The `[nats]` table: the servers, the subject prefix, the credentials and TLS files,
//! validated into a [`NatsConfig`]. Server addresses are parsed with async-nats's own
//! type, so that a bad one is reported with every other config error; nothing here
//! connects.

use std::path::PathBuf;
use std::time::Duration;

use protocol::subjects::validate_prefix;
use serde::Deserialize;

use super::{Problem, Problems};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNats {
    servers: Option<Vec<String>>,
    prefix: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey_seed: Option<String>,
    creds_file: Option<String>,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    ping_interval: Option<String>,
    /// The account whose client-disconnect events the agents may read.
    system_events_account: Option<String>,
}

/// The `[nats]` table, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    pub servers: Vec<String>,
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub ping_interval: Duration,
    pub system_events_account: Option<String>,
}

/// Validates the `[nats]` table, filling in defaults; its problems go to `problems`.
pub(super) fn validate(raw: RawNats, problems: &mut Vec<Problem>) -> NatsConfig {
    let mut t = Problems::new("[nats]");
    let servers = raw
        .servers
        .unwrap_or_else(|| vec!["nats://127.0.0.1:4222".into()]);
    if servers.is_empty() {
        t.at(
            "servers",
            "is empty; list at least one server such as \"nats://127.0.0.1:4222\"",
        );
    }
    for s in &servers {
        if s.parse::<async_nats::ServerAddr>().is_err() {
            t.at(
                "servers",
                format!("{s:?} is not a server address like \"nats://host:4222\""),
            );
        }
    }
    let prefix = raw
        .prefix
        .unwrap_or_else(|| protocol::subjects::DEFAULT_PREFIX.into());
    if let Err(e) = validate_prefix(&prefix) {
        t.at(
            "prefix",
            format!("{prefix:?} is not a valid subject prefix: {e}"),
        );
    }
    if raw.password.is_some() && raw.user.is_none() {
        t.at("password", "given without user");
    }
    if raw.tls_cert_file.is_some() != raw.tls_key_file.is_some() {
        t.at(
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        );
    }
    let ping_interval = t.duration(
        "ping_interval",
        raw.ping_interval.as_ref(),
        Duration::from_secs(2),
    );
    problems.append(&mut t.list);
    NatsConfig {
        servers,
        prefix,
        user: raw.user,
        password: raw.password,
        token: raw.token,
        nkey_seed: raw.nkey_seed,
        creds_file: raw.creds_file.map(PathBuf::from),
        tls_ca_file: raw.tls_ca_file.map(PathBuf::from),
        tls_cert_file: raw.tls_cert_file.map(PathBuf::from),
        tls_key_file: raw.tls_key_file.map(PathBuf::from),
        ping_interval,
        system_events_account: raw.system_events_account,
    }
}
