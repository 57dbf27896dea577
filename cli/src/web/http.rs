//! The HTTP side of `ctl web` (axum): the page and its assets (embedded in the
//! binary), the live updates as server-sent events, a watcher's live log, the actions
//! and `/metrics`, all behind one guard.
//!
//! The guard: with a token, every request carries it, as `Authorization: Bearer TOKEN`
//! or as the `ctl_web_token` cookie that opening `/?token=TOKEN` once sets (HttpOnly,
//! SameSite=Strict; the page is then reloaded without the token in its address);
//! anything else gets 401. Without a token (loopback only) the Host header must name a
//! loopback address, so that a web site cannot reach the dashboard through a DNS name
//! of its own. A POST whose Origin is another site is refused, and actions take JSON
//! only, which a cross-site form cannot send.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use protocol::logs::{LogsData, LogsProps};
use protocol::reply::KindData;
use protocol::subjects::{validate_node_name, validate_token, CmdTarget};
use protocol::{Command, Request as CmdRequest};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::control::{self, Action};
use super::{lock, metrics, Push, Shared};
use crate::client::{self, Target};
use crate::follow;

const COOKIE: &str = "ctl_web_token";
/// Lines of a watcher's log shown before the live ones.
const TAIL_LINES: u32 = 200;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Serves until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/state", get(state))
        .route("/api/stream", get(stream))
        .route("/api/logs", get(logs))
        .route("/api/control", post(act))
        .route("/metrics", get(scrape))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    axum::serve(listener, app).await
}

/// Equal without telling how much matched by how long it took.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn cookie(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The host part of a Host header (`127.0.0.1:8080`, `[::1]:8080`, `localhost`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn is_loopback_host(host: &str) -> bool {
    let h = host_name(host);
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn refuse(status: StatusCode, text: &str) -> Response {
    let mut r = (status, format!("{text}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    match &s.opts.token {
        Some(token) => {
            let given = bearer(h).or_else(|| cookie(h));
            if !given.is_some_and(|t| same(t.as_bytes(), token.as_bytes())) {
                // The first visit: /?token=TOKEN sets the cookie and drops the token from
                // the address.
                let asked = Query::<HashMap<String, String>>::try_from_uri(req.uri())
                    .ok()
                    .and_then(|q| q.0.get("token").cloned());
                if req.method() == Method::GET && req.uri().path() == "/" {
                    if let Some(t) = asked.filter(|t| same(t.as_bytes(), token.as_bytes())) {
                        let set = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
                        return (
                            StatusCode::SEE_OTHER,
                            [
                                (header::LOCATION, "/".to_owned()),
                                (header::SET_COOKIE, set),
                            ],
                        )
                            .into_response();
                    }
                }
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "401: this dashboard needs its token: open /?token=TOKEN once in the \
                     browser, or send the header `Authorization: Bearer TOKEN`",
                );
            }
        }
        None => {
            let host = h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !is_loopback_host(host) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "403: this dashboard serves loopback names only (127.0.0.1, localhost); \
                     to serve others, run ctl web with --web-token",
                );
            }
        }
    }
    if req.method() == Method::POST {
        let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(origin) = origin {
            let from = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if Some(from) != host {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "403: actions come only from the dashboard's own page",
                );
            }
        }
    }
    next.run(req).await
}

/// Headers every page and asset carries: nothing from elsewhere may load, nothing is
/// cached, and no site may frame it.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn snapshot_json(s: &Shared) -> String {
    let view = lock(&s.view);
    serde_json::to_string(&view.snapshot(protocol::unix_time(), s.opts.allow_control))
        .unwrap_or_else(|_| "{}".to_owned())
}

async fn state(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        snapshot_json(&s),
    )
        .into_response()
}

/// The live updates: a `snapshot` first (and again after falling behind), then an
/// `update` a second with what changed, and `progress` of rolling restarts.
async fn stream(
    State(s): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the snapshot is taken, so that nothing falls between.
    let rx = s.pushes.subscribe();
    let first = snapshot_json(&s);
    let events = futures::stream::unfold((Some(first), rx, s), |(first, mut rx, s)| async move {
        if let Some(f) = first {
            let e = Event::default().event("snapshot").data(f);
            return Some((Ok(e), (None, rx, s)));
        }
        let e = match rx.recv().await {
            Ok(Push { event, data }) => Event::default().event(event).data(&*data),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("snapshot").data(snapshot_json(&s))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(e), (None, rx, s)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct LogsQuery {
    node: String,
    watcher: String,
}

fn sse_json(event: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(event)
        .data(serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
}

/// A watcher's log on one node: the last lines, then the live ones, while the page
/// listens; the agents' follow lease is renewed as `ctl logs -f` renews it, and lapses
/// once the page goes.
async fn logs(
    State(s): State<Arc<Shared>>,
    Query(q): Query<LogsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    if let Err(e) = validate_node_name(&q.node) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("bad node name: {e}"),
        ));
    }
    if let Err(e) = validate_token(&q.watcher) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("bad watcher name: {e}"),
        ));
    }
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(follow_log(s, q, tx));
    let events =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn follow_log(s: Arc<Shared>, q: LogsQuery, tx: mpsc::Sender<Event>) {
    let req = CmdRequest::new(Command::Logs(LogsProps {
        name: q.watcher.clone(),
        lines: Some(TAIL_LINES),
        stream: None,
        follow_secs: Some(crate::args::FOLLOW_LEASE_SECS),
    }));
    let target = Target::Nodes(vec![q.node.clone()]);
    let conn = &s.conn;
    let mut f = match follow::start(conn, &s.subjects, &target, &req.command, &q.watcher).await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(sse_json("failure", &e)).await;
            return;
        }
    };
    let subject = s
        .subjects
        .command(&CmdTarget::Node(q.node.clone()), &req.command);
    let wait = std::time::Duration::from_secs(5);
    let tail = client::request_one(conn, subject, &q.node, &req, wait);
    // Bounded here too: while NATS is unreachable the request waits for it.
    let Ok(out) = tokio::time::timeout(wait * 2, tail).await else {
        let _ = tx
            .send(sse_json("failure", &"no answer: is NATS reachable?"))
            .await;
        return;
    };
    let failure = match out.replies.first() {
        Some(r) if r.is_ok() => match r.data.as_ref().and_then(LogsData::of) {
            Some(d) => {
                let _ = tx.send(sse_json("lines", &d.lines)).await;
                None
            }
            None => Some("the logs reply carried no lines".to_owned()),
        },
        Some(r) => Some(r.reason.clone().unwrap_or_default()),
        None => Some(
            out.missing
                .first()
                .map(|(n, why)| format!("node {n} did not answer: {why}"))
                .or_else(|| out.denied.first().map(|d| d.explain()))
                .unwrap_or_else(|| "no answer".to_owned()),
        ),
    };
    if let Some(why) = failure {
        let _ = tx.send(sse_json("failure", &why)).await;
        return;
    }
    let renewal = follow::renewal(&req);
    let every = follow::renew_every();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => f.renew(&conn.client, renewal.clone()).await,
            line = f.next_line() => {
                let Some(line) = line else { return };
                if tx.send(sse_json("lines", &[line])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn act(State(s): State<Arc<Shared>>, Json(a): Json<Action>) -> Response {
    if !s.opts.allow_control {
        return (
            StatusCode::FORBIDDEN,
            Json(control::ActionResult {
                ok: false,
                message: "refused: this dashboard is read-only; start it with \
                          `ctl web --allow-control` to start, stop, restart, resize or \
                          signal watchers"
                    .to_owned(),
                nodes: vec![],
            }),
        )
            .into_response();
    }
    let pushes = s.pushes.clone();
    let result = control::run(&s.conn, &s.subjects, &a, move |p| {
        if let Ok(json) = serde_json::to_string(&p) {
            let _ = pushes.send(Push {
                event: "progress",
                data: json.into(),
            });
        }
    })
    .await;
    Json(result).into_response()
}

async fn scrape(State(s): State<Arc<Shared>>) -> Response {
    let text = metrics::render(&lock(&s.view));
    match text {
        Ok(t) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], t).into_response(),
        Err(_) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500: cannot write the metrics",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tokens_and_hosts() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.insert(header::COOKIE, "a=1; ctl_web_token=xyz".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        assert_eq!(cookie(&h), Some("xyz"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
        for (host, ok) in [
            ("127.0.0.1:8080", true),
            ("localhost:1", true),
            ("[::1]:80", true),
            ("127.1.2.3", true),
            ("evil.example:8080", false),
            ("10.0.0.1:8080", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_host(host), ok, "{host}");
        }
    }
}
