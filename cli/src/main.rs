//! `ctl`: parses the command line, sends the command to its targets over NATS, prints
//! the replies, and maps the outcome to an exit code.

mod args;
mod client;
mod cluster;
mod fmt;
mod output;
mod top;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use std::time::Duration;

use protocol::{Command, Request, Subjects};

use protocol::subjects::CmdTarget;

use crate::args::{Cli, Global, Sub};
use crate::client::{Conn, Denial, Outcome, Target};
use crate::cluster::MembersError;

/// Exit codes, for scripts.
const EXIT_ERROR_REPLY: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NO_ANSWER: u8 = 3;
const EXIT_NOT_PERMITTED: u8 = 4;

/// Says why no target could be reached; exit code 3.
fn no_answer(e: impl std::fmt::Display) -> ExitCode {
    // The reason may quote what a peer sent.
    eprintln!("ctl: {}", output::sanitize(&e.to_string()));
    ExitCode::from(EXIT_NO_ANSWER)
}

/// Says what the server did not let this user do; exit code 4.
fn not_permitted(d: &Denial) -> ExitCode {
    eprintln!("ctl: {}", output::sanitize(&d.explain()));
    ExitCode::from(EXIT_NOT_PERMITTED)
}

/// The member list could not be had: not permitted (4) or no answer (3).
fn members_failed(e: MembersError) -> ExitCode {
    match e {
        MembersError::Denied(d) => not_permitted(&d),
        MembersError::Other(e) => no_answer(e),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("ctl: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// What is logged on stderr for this many `-v`, unless RUST_LOG says otherwise.
/// Without -v only warnings, and nothing of async-nats: it logs each failed connect as
/// an error, and what matters of it is reported once, in words, by this program. -v
/// adds what ctl does: the server it connected to, each request's subject, how long
/// each reply took, the member queries; and async-nats's warnings and errors. -vv adds
/// debug output, async-nats's own included.
fn log_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn,async_nats=off",
        1 => "warn,ctl=info,async_nats=warn",
        _ => "debug",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(log_filter(cli.global.verbose))
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Sub::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "ctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctl: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR_REPLY);
        }
    };
    rt.block_on(run(cli))
}

fn target(g: &Global) -> Result<Target, String> {
    if let Some(s) = &g.service {
        protocol::subjects::validate_token(s)
            .map_err(|e| format!("bad service name '{s}': {e}"))?;
        return Ok(Target::Service(s.clone()));
    }
    if !g.nodes.is_empty() {
        for n in &g.nodes {
            protocol::subjects::validate_node_name(n)
                .map_err(|e| format!("bad node name '{n}': {e}"))?;
        }
        return Ok(Target::Nodes(g.nodes.clone()));
    }
    if g.all || !g.tags.is_empty() {
        return Ok(Target::Members(g.tags.clone()));
    }
    Err(
        "say which nodes: --node NAME (repeatable), --all, --tag KEY=VALUE or --service NAME"
            .into(),
    )
}

/// Who the command goes to, for the log.
fn describe(target: &Target) -> String {
    match target {
        Target::Nodes(n) if n.len() == 1 => format!("node {}", n[0]),
        Target::Nodes(n) => format!("nodes {}", n.join(", ")),
        Target::Members(tags) if tags.is_empty() => "every alive node".to_owned(),
        Target::Members(tags) => {
            let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("the alive nodes tagged {}", tags.join(","))
        }
        Target::Service(s) => format!("one member of service {s}"),
    }
}

async fn connect(g: &Global) -> Result<Conn, String> {
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

async fn run(cli: Cli) -> ExitCode {
    let g = &cli.global;
    if let Err(e) = protocol::subjects::validate_prefix(&g.prefix) {
        return usage(&format!("bad --prefix '{}': {e}", g.prefix));
    }
    let subjects = Subjects::new(g.prefix.clone());
    let timeout = g.timeout.unwrap_or_else(|| cli.command.default_timeout());
    if let Sub::Members { status, name } = &cli.command {
        return members(g, &subjects, status, name.clone(), timeout).await;
    }
    if matches!(cli.command, Sub::Events { .. } | Sub::Top) {
        return watch(&cli, &subjects).await;
    }
    let command = match cli.command.command() {
        Ok(Some(c)) => c,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return usage(&e),
    };
    let target = match target(g) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let client = match connect(g).await {
        Ok(c) => c,
        Err(e) => return no_answer(e),
    };
    let name = command.name();
    tracing::info!(
        "command '{name}' to {}, waiting at most {}",
        describe(&target),
        humantime::format_duration(timeout)
    );
    // A rolling restart of several nodes goes node by node.
    if let (Command::Restart(r) | Command::Reload(r), Sub::Restart(a) | Sub::Reload(a)) =
        (&command, &cli.command)
    {
        let nodes = match &target {
            Target::Nodes(n) if n.len() > 1 => Some(n.clone()),
            Target::Members(tags) => match cluster::alive_members(
                &client,
                &subjects,
                tags,
                timeout.min(Duration::from_secs(5)),
            )
            .await
            {
                Ok(ms) if ms.is_empty() => {
                    eprintln!("ctl: no alive node matches the target");
                    return ExitCode::from(EXIT_NO_ANSWER);
                }
                Ok(ms) => Some(ms.into_iter().map(|m| m.name).collect()),
                Err(e) => return members_failed(e),
            },
            _ => None,
        };
        if let (true, Some(nodes)) = (r.rolling, nodes) {
            let out =
                cluster::rolling_restart(&client, &subjects, &nodes, r, a.batch, timeout, g.json)
                    .await;
            return report(&command, out, g.json, true);
        }
    }
    // Resizing a service spreads the total over its members.
    if let (Command::Numprocesses(n), Target::Service(s)) = (&command, &target) {
        if let Some(total) = n.nb {
            return match cluster::resize_service(&client, &subjects, s, &n.name, total, timeout)
                .await
            {
                Ok(out) => report(&command, out, g.json, true),
                Err(e) => members_failed(e),
            };
        }
    }
    // Following logs: subscribe before reading the tail, so that no line is lost. The
    // request asks for live lines for a while; the same targets get it again before
    // that runs out.
    let follow = match &cli.command {
        Sub::Logs {
            follow: true,
            watcher,
            ..
        } => {
            let (renew_subject, headers, nodes, listen) = match &target {
                Target::Nodes(n) if n.len() == 1 => (
                    subjects.command(&CmdTarget::Node(n[0].clone()), &command),
                    async_nats::HeaderMap::new(),
                    n.clone(),
                    subjects.logs(&n[0], watcher),
                ),
                Target::Nodes(n) => (
                    subjects.command(&CmdTarget::All, &command),
                    client::nodes_header(n),
                    n.clone(),
                    subjects.logs("*", watcher),
                ),
                Target::Members(tags) => (
                    subjects.command(&CmdTarget::All, &command),
                    client::tags_header(tags),
                    vec![],
                    subjects.logs("*", watcher),
                ),
                Target::Service(_) => {
                    return usage("logs -f follows nodes: use --node, --all or --tag");
                }
            };
            match client.client.subscribe(listen.clone()).await {
                Ok(sub) => Some(Follow {
                    listen,
                    sub,
                    nodes,
                    renew_subject,
                    headers,
                }),
                Err(e) => {
                    eprintln!("ctl: cannot follow logs: {e}");
                    return ExitCode::from(EXIT_NO_ANSWER);
                }
            }
        }
        _ => None,
    };
    let req = Request::new(command);
    let outcome = match &target {
        Target::Nodes(nodes) if nodes.len() == 1 => {
            client::request_one(
                &client,
                subjects.command(&CmdTarget::Node(nodes[0].clone()), &req.command),
                &nodes[0],
                &req,
                timeout,
            )
            .await
        }
        Target::Nodes(nodes) => {
            let expected = nodes.iter().cloned().collect();
            let headers = client::nodes_header(nodes);
            match client::broadcast(&client, &subjects, headers, expected, &req, timeout).await {
                Ok(o) => o,
                Err(e) => return no_answer(e),
            }
        }
        Target::Service(s) => {
            client::request_one(
                &client,
                subjects.command(&CmdTarget::Service(s.clone()), &req.command),
                &format!("service {s}"),
                &req,
                timeout,
            )
            .await
        }
        Target::Members(tags) => {
            // Learn who is alive first, then one broadcast; return when all answered.
            let members = match cluster::alive_members(
                &client,
                &subjects,
                tags,
                timeout.min(Duration::from_secs(5)),
            )
            .await
            {
                Ok(m) => m,
                Err(e) => return members_failed(e),
            };
            if members.is_empty() {
                eprintln!("ctl: no alive node matches the target (`ctl members` lists the nodes)");
                return ExitCode::from(EXIT_NO_ANSWER);
            }
            let expected = members.into_iter().map(|m| m.name).collect();
            let headers = client::tags_header(tags);
            match client::broadcast(&client, &subjects, headers, expected, &req, timeout).await {
                Ok(o) => o,
                Err(e) => return no_answer(e),
            }
        }
    };
    let multi = !matches!(&target, Target::Nodes(n) if n.len() == 1)
        && !matches!(target, Target::Service(_));
    let code = report(&req.command, outcome, g.json, multi);
    if let Some(f) = follow {
        if code != ExitCode::SUCCESS {
            return code;
        }
        return follow_logs(&client, f, &req, g.json, multi).await;
    }
    code
}

async fn members(
    g: &Global,
    subjects: &Subjects,
    status: &[String],
    name: Option<String>,
    timeout: Duration,
) -> ExitCode {
    let mut states = vec![];
    for s in status {
        match cluster::parse_state(s) {
            Ok(st) => states.push(st),
            Err(e) => return usage(&e),
        }
    }
    let tags = g.tags.iter().cloned().collect();
    let filter = protocol::registry::MembersRequest {
        status: (!states.is_empty()).then_some(protocol::registry::StatusFilter::Many(states)),
        tags,
        name,
    };
    let client = match connect(g).await {
        Ok(c) => c,
        Err(e) => return no_answer(e),
    };
    match cluster::members(&client, subjects, filter, timeout).await {
        Ok((reply, ms)) => {
            let text = if g.json {
                format!("{}\n", serde_json::to_string(&reply).unwrap_or_default())
            } else {
                cluster::render_members(&ms)
            };
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
            ExitCode::SUCCESS
        }
        Err(e) => members_failed(e),
    }
}

/// `events` and `top`: live views of every node, or of the --node targets.
async fn watch(cli: &Cli, subjects: &Subjects) -> ExitCode {
    use futures::StreamExt;
    let g = &cli.global;
    if g.service.is_some() || !g.tags.is_empty() {
        return usage("events and top watch nodes: use --node (repeatable) or no target for all");
    }
    for n in &g.nodes {
        if let Err(e) = protocol::subjects::validate_node_name(n) {
            return usage(&format!("bad node name '{n}': {e}"));
        }
    }
    let client = match connect(g).await {
        Ok(c) => c,
        Err(e) => return no_answer(e),
    };
    let nodes = (!g.nodes.is_empty()).then(|| g.nodes.clone());
    if let Sub::Top = cli.command {
        return match top::run(client.client.clone(), subjects.clone(), nodes).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ctl: {e:#}");
                ExitCode::from(EXIT_ERROR_REPLY)
            }
        };
    }
    let Sub::Events { watcher } = &cli.command else {
        return ExitCode::SUCCESS;
    };
    let w = watcher.as_deref().unwrap_or("*");
    let targets = nodes.unwrap_or_else(|| vec!["*".into()]);
    let mut subs = vec![];
    let mut listening = vec![];
    for n in &targets {
        let subject = subjects.events_filter(n, w);
        match client.client.subscribe(subject.clone()).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                eprintln!("ctl: cannot subscribe to events: {e}");
                return ExitCode::from(EXIT_NO_ANSWER);
            }
        }
        listening.push(subject);
    }
    // The subscriptions are in place once the server has seen them.
    let _ = client.client.flush().await;
    tracing::info!("listening for events on {}", listening.join(", "));
    let listening: Vec<&str> = listening.iter().map(String::as_str).collect();
    let mut all = futures::stream::select_all(subs);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            d = client.denied(&listening) => return not_permitted(&d),
            msg = all.next() => {
                let Some(msg) = msg else { return ExitCode::from(EXIT_NO_ANSWER) };
                let text = if g.json {
                    // One JSON object a line: what is not JSON is not passed on raw.
                    match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
                        Ok(v) => format!("{v}\n"),
                        Err(_) => continue,
                    }
                } else {
                    match serde_json::from_slice::<protocol::events::Event>(&msg.payload) {
                        Ok(e) => output::event_line(&e),
                        Err(_) => continue,
                    }
                };
                let mut out = std::io::stdout().lock();
                if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}

/// A `logs -f` in progress: the live lines, whose they are, and where the follow
/// lease is renewed.
struct Follow {
    sub: async_nats::Subscriber,
    /// The subject of `sub`.
    listen: String,
    /// The nodes asked for (empty: all that match).
    nodes: Vec<String>,
    renew_subject: String,
    headers: async_nats::HeaderMap,
}

/// Prints live log lines until Ctrl-C, renewing the agents' follow lease with `req`.
async fn follow_logs(
    conn: &Conn,
    mut f: Follow,
    req: &Request,
    json: bool,
    multi: bool,
) -> ExitCode {
    use futures::StreamExt;
    let renew: bytes::Bytes = {
        let mut req = req.clone();
        if let Command::Logs(p) = &mut req.command {
            // Only the lease: no tail again.
            p.lines = Some(0);
        }
        serde_json::to_vec(&req)
            .expect("a request serializes")
            .into()
    };
    let client = &conn.client;
    let every = Duration::from_secs(u64::from(args::FOLLOW_LEASE_SECS) / 3);
    let watched = [f.listen.clone(), f.renew_subject.clone()];
    let watched: Vec<&str> = watched.iter().map(String::as_str).collect();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tracing::info!(
        "following log lines on {}; renewing the lease on {} every {}",
        f.listen,
        f.renew_subject,
        humantime::format_duration(every)
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            d = conn.denied(&watched) => return not_permitted(&d),
            _ = tick.tick() => {
                // The replies go to an inbox nobody reads; a node that missed one renewal
                // gets the next.
                tracing::debug!("renewing the follow lease on {}", f.renew_subject);
                let _ = client
                    .publish_with_reply_and_headers(
                        f.renew_subject.clone(),
                        client.new_inbox(),
                        f.headers.clone(),
                        renew.clone(),
                    )
                    .await;
            }
            msg = f.sub.next() => {
                let Some(msg) = msg else { return ExitCode::from(EXIT_NO_ANSWER) };
                let Ok(line) = serde_json::from_slice::<protocol::logs::LogLine>(&msg.payload) else { continue };
                if f.nodes.len() > 1 && !f.nodes.contains(&line.node) {
                    continue;
                }
                let text = if json {
                    // Re-encoded: one line, control characters escaped.
                    format!("{}\n", serde_json::to_string(&line).unwrap_or_default())
                } else {
                    output::log_line(&line, multi)
                };
                let mut out = std::io::stdout().lock();
                if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}

/// Prints replies and missing targets; returns the exit code.
fn report(command: &Command, outcome: Outcome, json: bool, multi: bool) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let mut code = 0u8;
    let ok: Vec<&protocol::Reply> = outcome.replies.iter().filter(|r| r.is_ok()).collect();
    for r in outcome.replies.iter().filter(|r| !r.is_ok()) {
        code = code.max(EXIT_ERROR_REPLY);
        eprintln!(
            "ctl: error from node {}: {}",
            output::sanitize(&r.node),
            output::sanitize(r.reason.as_deref().unwrap_or("no reason given"))
        );
    }
    let written = if json {
        outcome
            .replies
            .iter()
            .try_for_each(|r| writeln!(stdout, "{}", serde_json::to_string(r).unwrap_or_default()))
    } else if ok.is_empty() {
        Ok(())
    } else {
        stdout.write_all(output::render(command, &ok, multi).as_bytes())
    };
    // A closed pipe (`ctl ... | head`) is not an error.
    if let Err(e) = written.and_then(|_| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("ctl: cannot write output: {e}");
        }
    }
    for (node, why) in &outcome.missing {
        code = code.max(EXIT_NO_ANSWER);
        eprintln!(
            "ctl: node {} did not answer: {}",
            output::sanitize(node),
            output::sanitize(why)
        );
    }
    for d in &outcome.denied {
        code = code.max(EXIT_NOT_PERMITTED);
        eprintln!("ctl: {}", output::sanitize(&d.explain()));
    }
    for line in &outcome.epilogue {
        eprintln!("ctl: {}", output::sanitize(line));
    }
    ExitCode::from(code)
}
