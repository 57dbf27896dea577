//! `ctl web`: a dashboard and a Prometheus scrape target served by ctl. Stateless like
//! every ctl command: it connects to NATS, listens to the registry, stats and events
//! subjects into a bounded [`view::View`], and serves one page (embedded in the
//! binary), its live updates over server-sent events, a watcher's live log (with the
//! follow lease of `ctl logs -f`), the actions of `--allow-control`, and `/metrics`.
//! With `--system-events-account` it also reads the NATS server's disconnect
//! advisories ([`advisory`]), and shows a member failed as soon as its connection
//! closes.
//!
//! Access: on loopback anyone on the host may look; any other address needs a token,
//! checked on every request ([`http`]).

mod advisory;
mod control;
#[cfg(test)]
mod fixtures;
mod http;
mod metrics;
mod view;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::registry::Announcement;
use protocol::stats::StatsMessage;
use protocol::Subjects;
use tokio::sync::broadcast;

use crate::args::WebArgs;
use crate::client::Conn;

/// What `ctl web` was asked to do, checked before connecting.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// The secret every request must carry; required beyond loopback.
    pub token: Option<String>,
    pub allow_control: bool,
    /// The account whose client-disconnect advisories mark members failed at once.
    pub system_events_account: Option<String>,
}

impl Options {
    /// Checks the flags: a non-loopback address needs a token, and a token is one line
    /// of visible characters. The error is a usage error.
    pub fn new(a: &WebArgs) -> Result<Options, String> {
        let token = match (&a.web_token, &a.web_token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the web token file {}: {e}", path.display())
                })?;
                Some(text.lines().next().unwrap_or_default().trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(t) = &token {
            check_token(t)?;
        }
        if token.is_none() && !a.listen.ip().is_loopback() {
            return Err(format!(
                "listening on {} (beyond loopback) needs a token: give --web-token TOKEN or \
                 --web-token-file FILE, or listen on 127.0.0.1",
                a.listen
            ));
        }
        if let Some(account) = &a.system_events_account {
            protocol::subjects::validate_token(account).map_err(|e| {
                format!(
                    "--system-events-account {account:?} cannot name an account in a subject \
                     ({e}); give the account's name as in the server config, e.g. CLUSTER"
                )
            })?;
        }
        Ok(Options {
            listen: a.listen,
            token,
            allow_control: a.allow_control,
            system_events_account: a.system_events_account.clone(),
        })
    }
}

/// A token is 8 to 512 visible ASCII characters.
fn check_token(t: &str) -> Result<(), String> {
    if t.len() < 8 || t.len() > 512 {
        return Err(format!(
            "the web token is {} characters long; use 8 to 512 (e.g. `openssl rand -hex 16`)",
            t.len()
        ));
    }
    if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the web token contains {c:?}; use letters, digits and punctuation only"
        ));
    }
    Ok(())
}

/// What the page hears live: a named server-sent event and its JSON.
#[derive(Debug, Clone)]
pub struct Push {
    pub event: &'static str,
    pub data: Arc<str>,
}

/// Shared by the request handlers.
pub struct Shared {
    pub conn: Conn,
    pub subjects: Subjects,
    pub opts: Options,
    pub view: Mutex<View>,
    pub pushes: broadcast::Sender<Push>,
}

pub use view::View;

/// How often the pages get what changed.
const TICK: Duration = Duration::from_secs(1);
/// The largest message read from the bus; larger ones are dropped.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Serves until Ctrl-C or until the connection's subscriptions end.
pub async fn run(conn: Conn, subjects: Subjects, opts: Options) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ctl: cannot listen on {}: {e} (is another program on that port? pick \
                 another with --listen)",
                opts.listen
            );
            return ExitCode::from(crate::EXIT_ERROR_REPLY);
        }
    };
    let disconnects = opts
        .system_events_account
        .as_deref()
        .map(advisory::disconnect_subject);
    let subs: Vec<String> = [
        subjects.registry_all(),
        subjects.stats_all(),
        subjects.events_filter("*", "*"),
    ]
    .into_iter()
    .chain(disconnects)
    .collect();
    let mut streams = vec![];
    for s in &subs {
        match conn.client.subscribe(s.clone()).await {
            Ok(sub) => streams.push(sub),
            Err(e) => {
                eprintln!("ctl: cannot subscribe to {s}: {e}");
                return ExitCode::from(crate::EXIT_NO_ANSWER);
            }
        }
    }
    let _ = conn.client.flush().await;
    let (pushes, _) = broadcast::channel(64);
    let shared = Arc::new(Shared {
        conn: conn.clone(),
        subjects: subjects.clone(),
        opts: opts.clone(),
        view: Mutex::new(View::new()),
        pushes,
    });
    seed_members(&shared).await;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    eprintln!(
        "ctl: serving the dashboard on http://{addr}/ and metrics on http://{addr}/metrics ({}{})",
        if opts.allow_control {
            "control allowed"
        } else {
            "read-only"
        },
        if opts.token.is_some() {
            ", token required"
        } else {
            ""
        }
    );
    let watched: Vec<String> = subs.clone();
    let ingest = ingest(shared.clone(), streams);
    let server = http::serve(listener, shared.clone());
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        d = conn.denied(&watched) => crate::not_permitted(&d),
        _ = ingest => {
            eprintln!("ctl: the NATS subscriptions ended");
            ExitCode::from(crate::EXIT_NO_ANSWER)
        }
        r = server => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ctl: the web server stopped: {e}");
                ExitCode::from(crate::EXIT_ERROR_REPLY)
            }
        },
    }
}

/// Fills the member table from one agent's view, so that a page opened at once shows
/// every member; the announcements keep it current after that.
async fn seed_members(shared: &Shared) {
    let filter = protocol::registry::MembersRequest::default();
    let Ok((_, members)) = crate::cluster::members(
        &shared.conn,
        &shared.subjects,
        filter,
        Duration::from_secs(2),
    )
    .await
    else {
        tracing::info!("no agent answered the member query; waiting for announcements");
        return;
    };
    let now = Instant::now();
    let mut view = lock(&shared.view);
    for m in members {
        view.seed(m, now);
    }
}

fn lock(view: &Mutex<View>) -> std::sync::MutexGuard<'_, View> {
    // A panic while holding it left a view that is still readable.
    view.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the bus into the view, and once a [`TICK`] sends what changed to the pages.
async fn ingest(shared: Arc<Shared>, streams: Vec<async_nats::Subscriber>) {
    let mut all = futures::stream::select_all(streams);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let subjects = &shared.subjects;
    loop {
        tokio::select! {
            msg = all.next() => {
                let Some(msg) = msg else { return };
                if msg.payload.len() > MAX_MESSAGE {
                    continue;
                }
                take(&shared, subjects, &msg.subject, &msg.payload);
            }
            _ = tick.tick() => {
                let update = {
                    let mut view = lock(&shared.view);
                    view.judge(Instant::now());
                    view.take_update(protocol::unix_time())
                };
                // Serialized once for every page; nobody listening costs nothing more.
                if let Some(u) = update {
                    if shared.pushes.receiver_count() > 0 {
                        if let Ok(json) = serde_json::to_string(&u) {
                            let _ = shared.pushes.send(Push { event: "update", data: json.into() });
                        }
                    }
                }
            }
        }
    }
}

/// Puts one message into the view, by its subject.
fn take(shared: &Shared, subjects: &Subjects, subject: &str, payload: &[u8]) {
    if subject.starts_with(advisory::SYSTEM_PREFIX) {
        let mut view = lock(&shared.view);
        match advisory::parse_disconnect(payload) {
            Some(d) => view.disconnect(&d.server_id, d.cid, Instant::now()),
            None => view.rejected += 1,
        }
        return;
    }
    let rest = subject
        .strip_prefix(subjects.prefix())
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or_default();
    let parts: Vec<&str> = rest.split('.').collect();
    let now = Instant::now();
    let mut view = lock(&shared.view);
    match parts.as_slice() {
        ["registry", node] => match serde_json::from_slice::<Announcement>(payload) {
            Ok(a) => view.announce(node, a, now),
            Err(_) => view.rejected += 1,
        },
        [node, "stats"] => match serde_json::from_slice::<StatsMessage>(payload) {
            Ok(m) => view.stats(node, m),
            Err(_) => view.rejected += 1,
        },
        [node, "events", _, _] => {
            match serde_json::from_slice::<protocol::events::Event>(payload) {
                Ok(e) => view.event(node, e),
                Err(_) => view.rejected += 1,
            }
        }
        _ => view.rejected += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(args: &[&str]) -> Result<Options, String> {
        let cli =
            crate::args::Cli::try_parse_from(["ctl", "web"].iter().chain(args.iter()).copied())
                .map_err(|e| e.to_string())?;
        match cli.command {
            crate::args::Sub::Web(w) => Options::new(&w),
            _ => unreachable!(),
        }
    }

    #[test]
    fn beyond_loopback_needs_a_token() {
        let o = opts(&[]).unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:8080");
        assert!(o.token.is_none() && !o.allow_control);
        let e = opts(&["--listen", "0.0.0.0:9000"]).unwrap_err();
        assert!(
            e.contains("needs a token") && e.contains("--web-token"),
            "{e}"
        );
        let o = opts(&["--listen", "0.0.0.0:9000", "--web-token", "s3cret-token"]).unwrap();
        assert_eq!(o.token.as_deref(), Some("s3cret-token"));
        assert!(opts(&["--listen", "[::1]:9000"]).is_ok());
        let e = opts(&["--web-token", "short"]).unwrap_err();
        assert!(e.contains("8 to 512"), "{e}");
        let e = opts(&["--web-token", "has a space"]).unwrap_err();
        assert!(e.contains("contains ' '"), "{e}");
        let dir = std::env::temp_dir().join(format!("ctl-web-token-{}", std::process::id()));
        std::fs::write(&dir, "from-a-file-123\n").unwrap();
        let o = opts(&[
            "--listen",
            "0.0.0.0:1",
            "--web-token-file",
            dir.to_str().unwrap(),
        ])
        .unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(o.token.as_deref(), Some("from-a-file-123"));
    }

    #[test]
    fn the_system_events_account_is_one_subject_token() {
        assert_eq!(opts(&[]).unwrap().system_events_account, None);
        let o = opts(&["--system-events-account", "CLUSTER"]).unwrap();
        assert_eq!(o.system_events_account.as_deref(), Some("CLUSTER"));
        for bad in ["A.B", "*", ">", "has space", ""] {
            let e = opts(&["--system-events-account", bad]).unwrap_err();
            assert!(
                e.contains("--system-events-account") && e.contains("e.g. CLUSTER"),
                "{bad}: {e}"
            );
        }
    }
}
