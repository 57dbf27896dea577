//! A watcher's checks: `ready` (and its older spellings `health_cmd` and
//! `health_timeout`) and `live`, each exactly one probe (TCP connect, HTTP GET,
//! command, or `READY=1` on a notify socket) with its timings, validated into a
//! [`ReadyConfig`] and a [`LiveConfig`]; and the parsing of their targets. Nothing here
//! probes anything (`crate::probe` does).

use std::time::Duration;

use protocol::options::{LiveCheck, ReadyCheck};
use protocol::WatcherOptions;

use super::ranges::{millis, secs};
use super::{expand, format_duration, Problems};

/// What a readiness or liveness probe checks. The strings are as configured, with
/// `$(wid)` and `$(name)` unexpanded; a probe of one process has them expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection to "host:port" (an IPv6 host in brackets) succeeds.
    Tcp(String),
    /// An HTTP/1.1 GET of an `http://` URL answers 2xx.
    Http(String),
    /// A command exits 0 (`$(pid)` expands too).
    Exec(Vec<String>),
    /// The process sends `READY=1` to its `NOTIFY_SOCKET` (readiness only).
    Notify,
}

impl Probe {
    /// The probe of process `wid` of watcher `name` (pid `pid`): every value expanded.
    pub fn expanded(&self, name: &str, wid: u32, pid: u32) -> Probe {
        match self {
            Probe::Tcp(t) => Probe::Tcp(expand(t, name, wid)),
            Probe::Http(u) => Probe::Http(expand(u, name, wid)),
            Probe::Exec(argv) => Probe::Exec(
                argv.iter()
                    .map(|a| expand(a, name, wid).replace("$(pid)", &pid.to_string()))
                    .collect(),
            ),
            Probe::Notify => Probe::Notify,
        }
    }

    /// What it checks, in a few words, for reasons and logs.
    pub fn describe(&self) -> String {
        match self {
            Probe::Tcp(t) => format!("tcp {t}"),
            Probe::Http(u) => format!("http {u}"),
            Probe::Exec(argv) => format!("exec {}", argv.first().map_or("", |a| a.as_str())),
            Probe::Notify => "notify".into(),
        }
    }
}

/// `ready` (or `health_cmd`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyConfig {
    pub probe: Probe,
    /// How long a new process may take to be ready.
    pub timeout: Duration,
    /// The pause between two probes until it is.
    pub interval: Duration,
}

/// `live`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    pub probe: Probe,
    /// How long one probe may take.
    pub timeout: Duration,
    pub interval: Duration,
    /// Failed probes in a row that restart the process.
    pub failures: u32,
}

/// The defaults of `ready` and `live`.
pub const READY_TIMEOUT: Duration = secs(30);
pub const READY_INTERVAL: Duration = millis(200);
pub const LIVE_TIMEOUT: Duration = secs(5);
pub const LIVE_INTERVAL: Duration = secs(10);
pub const LIVE_FAILURES: u32 = 3;

/// The longest `tcp` target and `http` URL, the most `exec` arguments and the longest
/// one.
const MAX_TARGET_LEN: usize = 2048;
const MAX_EXEC_ARGS: usize = 256;
const MAX_ARG_LEN: usize = 4096;

/// Splits "host:port" (an IPv6 host in brackets) into its host and port.
pub fn split_host_port(target: &str) -> Result<(&str, u16), String> {
    let hint = "write it as \"host:port\", e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"";
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?} has no port; {hint}"))?;
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .ok_or_else(|| format!("{target:?} has an unclosed '['; {hint}"))?,
        None if host.contains(':') => {
            return Err(format!("{target:?}: an IPv6 host goes in brackets; {hint}"))
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("{target:?} has no host; {hint}"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{target:?}: {port:?} is not a port (1 to 65535); {hint}"))?;
    Ok((host, port))
}

/// An `http://` URL split into what a request needs: the "host:port" to connect to,
/// the Host header and the path (with its query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub connect: String,
    pub host_header: String,
    pub path: String,
}

/// Reads an `http://host[:port][/path]` URL. Only plain HTTP: no https, no user info;
/// no spaces or control characters (they would end up in the request line).
pub fn parse_http_url(url: &str) -> Result<HttpTarget, String> {
    if let Some(c) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{url:?} holds {c:?}; a URL has no spaces or control characters"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        let why = if url.starts_with("https://") {
            "https is not supported (use http, or a tcp or exec check)"
        } else {
            "it does not start with http://"
        };
        return Err(format!("{url:?}: {why}"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{url:?}: user info is not supported"));
    }
    let path = tail.split('#').next().unwrap_or("");
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let has_port = match authority.rsplit_once(':') {
        Some((h, _)) => !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')),
        None => false,
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    split_host_port(&connect).map_err(|e| format!("{url:?}: {e}"))?;
    Ok(HttpTarget {
        connect,
        host_header: authority.to_owned(),
        path,
    })
}

/// Checks a probe's target as watcher `name`'s first process would probe it.
fn check_probe(probe: &Probe, name: &str) -> Result<(), String> {
    let sample = probe.expanded(name, 1, 1);
    match (probe, &sample) {
        (Probe::Tcp(raw), Probe::Tcp(t)) => {
            check_target("tcp", raw, || split_host_port(t).map(|_| ()))
        }
        (Probe::Http(raw), Probe::Http(u)) => {
            check_target("http", raw, || parse_http_url(u).map(|_| ()))
        }
        (Probe::Exec(argv), _) => {
            if argv.first().is_none_or(|a| a.trim().is_empty()) {
                Err("exec: is empty; give a program and its arguments, e.g. [\"curl\", \"-f\", \"http://127.0.0.1:8080/\"]".into())
            } else if argv.len() > MAX_EXEC_ARGS {
                Err(format!("exec: more than {MAX_EXEC_ARGS} arguments"))
            } else if argv
                .iter()
                .any(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
            {
                Err(format!(
                    "exec: an argument is longer than {MAX_ARG_LEN} bytes or holds a NUL byte"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// A tcp or http target: at most `MAX_TARGET_LEN` bytes as written, and accepted by
/// `parse` once expanded; the error starts with `kind`.
fn check_target(
    kind: &str,
    raw: &str,
    parse: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(format!("{kind}: longer than {MAX_TARGET_LEN} bytes"));
    }
    parse().map_err(|e| format!("{kind}: {e}"))
}

/// The one probe a check names: exactly one of its forms.
fn one_probe(
    tcp: &Option<String>,
    http: &Option<String>,
    exec: &Option<Vec<String>>,
    notify: Option<bool>,
    forms: &str,
) -> Result<Probe, String> {
    let mut found = Vec::new();
    if let Some(t) = tcp {
        found.push(Probe::Tcp(t.clone()));
    }
    if let Some(u) = http {
        found.push(Probe::Http(u.clone()));
    }
    if let Some(a) = exec {
        found.push(Probe::Exec(a.clone()));
    }
    if notify == Some(true) {
        found.push(Probe::Notify);
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("checks nothing; give one of {forms}")),
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|p| p.describe().split(' ').next().unwrap_or("").to_owned())
                .collect();
            Err(format!(
                "has {}; give exactly one of {forms}",
                names.join(" and ")
            ))
        }
    }
}

impl ReadyConfig {
    pub(super) fn to_options(&self) -> ReadyCheck {
        let mut r = ReadyCheck {
            timeout: Some(format_duration(self.timeout)),
            interval: Some(format_duration(self.interval)),
            ..Default::default()
        };
        match &self.probe {
            Probe::Tcp(t) => r.tcp = Some(t.clone()),
            Probe::Http(u) => r.http = Some(u.clone()),
            Probe::Exec(a) => r.exec = Some(a.clone()),
            Probe::Notify => r.notify = Some(true),
        }
        r
    }
}

impl LiveConfig {
    pub(super) fn to_options(&self) -> LiveCheck {
        let mut l = LiveCheck {
            timeout: Some(format_duration(self.timeout)),
            interval: Some(format_duration(self.interval)),
            failures: Some(self.failures),
            ..Default::default()
        };
        match &self.probe {
            Probe::Tcp(t) => l.tcp = Some(t.clone()),
            Probe::Http(u) => l.http = Some(u.clone()),
            Probe::Exec(a) => l.exec = Some(a.clone()),
            // Refused when the config is read.
            Probe::Notify => {}
        }
        l
    }
}

/// A watcher's checks, validated.
pub(super) struct Checks {
    pub ready: Option<ReadyConfig>,
    pub live: Option<LiveConfig>,
}

/// Reads `ready` (or `health_cmd` and `health_timeout`) and `live` of watcher `name`.
pub(super) fn from_options(name: &str, o: &WatcherOptions, t: &mut Problems) -> Checks {
    if let Some(h) = &o.health_cmd {
        if let Err(m) = check_probe(&Probe::Exec(h.clone()), name) {
            t.at("health_cmd", m.trim_start_matches("exec: ").to_owned());
        }
    }
    if o.ready.is_some() {
        for (key, set, spelling) in [
            ("health_cmd", o.health_cmd.is_some(), "exec"),
            ("health_timeout", o.health_timeout.is_some(), "timeout"),
        ] {
            if set {
                t.at(
                    key,
                    format!(
                        "set together with ready; {key} is another spelling of ready.{spelling}, \
                         keep one"
                    ),
                );
            }
        }
    }
    let health_timeout = t.duration("health_timeout", o.health_timeout.as_ref(), READY_TIMEOUT);
    let ready = match (&o.ready, &o.health_cmd) {
        (Some(r), _) => ready(r, name, t),
        (None, Some(cmd)) => Some(ReadyConfig {
            probe: Probe::Exec(cmd.clone()),
            timeout: health_timeout,
            interval: READY_INTERVAL,
        }),
        (None, None) => None,
    };
    let live = o.live.as_ref().and_then(|l| live(l, name, t));
    Checks { ready, live }
}

/// `ready`: one probe of tcp, http, exec or notify, and its timings.
fn ready(r: &ReadyCheck, name: &str, t: &mut Problems) -> Option<ReadyConfig> {
    let probe = one_probe(
        &r.tcp,
        &r.http,
        &r.exec,
        r.notify,
        "tcp, http, exec or notify",
    )
    .and_then(|p| check_probe(&p, name).map(|()| p));
    let timeout = t.duration("ready.timeout", r.timeout.as_ref(), READY_TIMEOUT);
    let interval = t.duration("ready.interval", r.interval.as_ref(), READY_INTERVAL);
    probe
        .map(|probe| ReadyConfig {
            probe,
            timeout,
            interval,
        })
        .map_err(|m| t.at("ready", m))
        .ok()
}

/// `live`: one probe of tcp, http or exec, its timings and the failures in a row that
/// restart a process.
fn live(l: &LiveCheck, name: &str, t: &mut Problems) -> Option<LiveConfig> {
    let probe = one_probe(&l.tcp, &l.http, &l.exec, None, "tcp, http or exec")
        .and_then(|p| check_probe(&p, name).map(|()| p));
    let timeout = t.duration("live.timeout", l.timeout.as_ref(), LIVE_TIMEOUT);
    let interval = t.duration("live.interval", l.interval.as_ref(), LIVE_INTERVAL);
    let failures = l.failures.unwrap_or(LIVE_FAILURES);
    t.count("live.failures", failures.into());
    probe
        .map(|probe| LiveConfig {
            probe,
            timeout,
            interval,
            failures,
        })
        .map_err(|m| t.at("live", m))
        .ok()
}
