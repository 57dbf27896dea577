//! Carries out a [`Plan`]: connects, sends, prints, and says how it went as an exit
//! code.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;
use protocol::registry::{MembersRequest, MembersView};
use protocol::subjects::CmdTarget;
use protocol::{Command, Request, Subjects};

use crate::args::{Cli, Global};
use crate::client::{self, Conn, Target};
use crate::plan::{self, Flow, Plan, Send};
use crate::{cluster, connect, events, follow, top};
use crate::{members_failed, no_answer, report, EXIT_ERROR_REPLY, EXIT_NO_ANSWER};

/// Runs the plan with the connection flags of `g`.
pub async fn run(plan: Plan, g: &Global) -> ExitCode {
    let Plan {
        subjects,
        timeout,
        json,
        flow,
    } = plan;
    match flow {
        Flow::Completions(shell) => {
            clap_complete::generate(shell, &mut Cli::command(), "ctl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Flow::Manpage => {
            let mut out = std::io::stdout().lock();
            return match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ctl: cannot write the man page: {e}");
                    ExitCode::from(EXIT_ERROR_REPLY)
                }
            };
        }
        Flow::Nothing => return ExitCode::SUCCESS,
        _ => {}
    }
    let conn = match connect::connect(g).await {
        Ok(c) => c,
        Err(e) => return no_answer(e),
    };
    match flow {
        Flow::Completions(_) | Flow::Manpage | Flow::Nothing => ExitCode::SUCCESS,
        Flow::Members(filter) => members(&conn, &subjects, filter, timeout, json).await,
        Flow::Events { nodes, watcher } => {
            events::run(&conn, &subjects, &nodes, watcher.as_deref(), json).await
        }
        Flow::Top { nodes } => {
            let nodes = (!nodes.is_empty()).then_some(nodes);
            match top::run(conn.client.clone(), subjects.clone(), nodes).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ctl: {e:#}");
                    ExitCode::from(EXIT_ERROR_REPLY)
                }
            }
        }
        Flow::Web(opts) => crate::web::run(conn, subjects, opts).await,
        Flow::Send {
            target,
            request,
            how,
        } => send(&conn, &subjects, &target, &request, how, timeout, json).await,
    }
}

/// `members`: the table of the cluster's members, as one agent sees them: only the
/// fields the table shows, or every field with `--json`.
async fn members(
    conn: &Conn,
    subjects: &Subjects,
    filter: MembersRequest,
    timeout: Duration,
    json: bool,
) -> ExitCode {
    let text = if json {
        match cluster::members(conn, subjects, filter, timeout).await {
            Ok((reply, _)) => format!("{}\n", serde_json::to_string(&reply).unwrap_or_default()),
            Err(e) => return members_failed(e),
        }
    } else {
        let filter = MembersRequest {
            view: MembersView::Table,
            ..filter
        };
        match cluster::member_rows(conn, subjects, filter, timeout).await {
            Ok(rows) => cluster::render_members(&rows),
            Err(e) => return members_failed(e),
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    ExitCode::SUCCESS
}

/// Sends the request to its targets the planned way.
async fn send(
    conn: &Conn,
    subjects: &Subjects,
    target: &Target,
    req: &Request,
    how: Send,
    timeout: Duration,
    json: bool,
) -> ExitCode {
    tracing::info!(
        "command '{}' to {}, waiting at most {}",
        req.command.name(),
        plan::describe(target),
        humantime::format_duration(timeout)
    );
    match how {
        Send::RollingUpgrade => {
            let nodes = match rolling_nodes(conn, subjects, target, timeout).await {
                Ok(n) => n,
                Err(code) => return code,
            };
            let out = crate::upgrade::rolling_upgrade(conn, subjects, &nodes, timeout, json).await;
            report(&req.command, out, json, true)
        }
        Send::Rolling { batch } => {
            // The plan sends only a restart or a reload the rolling way.
            let (Command::Restart(r) | Command::Reload(r)) = &req.command else {
                return request(conn, subjects, target, req, timeout, json).await;
            };
            let nodes = match target {
                Target::Members(tags) => match cluster::alive_members(
                    conn,
                    subjects,
                    tags,
                    timeout.min(Duration::from_secs(5)),
                )
                .await
                {
                    Ok(ms) if ms.is_empty() => {
                        eprintln!("ctl: no alive node matches the target");
                        return ExitCode::from(EXIT_NO_ANSWER);
                    }
                    Ok(ms) => ms.into_iter().map(|m| m.name).collect(),
                    Err(e) => return members_failed(e),
                },
                Target::Nodes(n) => n.clone(),
                Target::Service(_) => vec![],
            };
            let out =
                cluster::rolling_restart(conn, subjects, &nodes, r, batch, timeout, json).await;
            report(&req.command, out, json, true)
        }
        Send::Spread {
            service,
            watcher,
            total,
        } => {
            match cluster::resize_service(conn, subjects, &service, &watcher, total, timeout).await
            {
                Ok(out) => report(&req.command, out, json, true),
                Err(e) => members_failed(e),
            }
        }
        Send::Follow { watcher } => {
            // Subscribed before the tail is asked for, so that no line is lost.
            let f = match follow::start(conn, subjects, target, &req.command, &watcher).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ctl: {e}");
                    return ExitCode::from(EXIT_NO_ANSWER);
                }
            };
            let code = request(conn, subjects, target, req, timeout, json).await;
            if code != ExitCode::SUCCESS {
                return code;
            }
            follow::run(conn, f, req, json, multi(target)).await
        }
        Send::Plain => request(conn, subjects, target, req, timeout, json).await,
    }
}

/// The nodes a rolling command goes through, in order: the --node ones, or the alive
/// members matching the target.
async fn rolling_nodes(
    conn: &Conn,
    subjects: &Subjects,
    target: &Target,
    timeout: Duration,
) -> Result<Vec<String>, ExitCode> {
    match target {
        Target::Members(tags) => {
            match cluster::alive_members(conn, subjects, tags, timeout.min(Duration::from_secs(5)))
                .await
            {
                Ok(ms) if ms.is_empty() => {
                    eprintln!("ctl: no alive node matches the target");
                    Err(ExitCode::from(EXIT_NO_ANSWER))
                }
                Ok(ms) => Ok(ms.into_iter().map(|m| m.name).collect()),
                Err(e) => Err(members_failed(e)),
            }
        }
        Target::Nodes(n) => Ok(n.clone()),
        Target::Service(_) => Ok(vec![]),
    }
}

/// Whether replies may come from several nodes, and so name theirs.
fn multi(target: &Target) -> bool {
    !matches!(target, Target::Nodes(n) if n.len() == 1) && !matches!(target, Target::Service(_))
}

/// Sends the request once to every target and prints the replies.
async fn request(
    conn: &Conn,
    subjects: &Subjects,
    target: &Target,
    req: &Request,
    timeout: Duration,
    json: bool,
) -> ExitCode {
    let outcome = match target {
        Target::Nodes(nodes) if nodes.len() == 1 => {
            client::request_one(
                conn,
                subjects.command(&CmdTarget::Node(nodes[0].clone()), &req.command),
                &nodes[0],
                req,
                timeout,
            )
            .await
        }
        Target::Nodes(nodes) => {
            let expected = nodes.iter().cloned().collect();
            let headers = client::nodes_header(nodes);
            match client::broadcast(conn, subjects, headers, expected, req, timeout).await {
                Ok(o) => o,
                Err(e) => return crate::no_answer(e),
            }
        }
        Target::Service(s) => {
            client::request_one(
                conn,
                subjects.command(&CmdTarget::Service(s.clone()), &req.command),
                &format!("service {s}"),
                req,
                timeout,
            )
            .await
        }
        Target::Members(tags) => {
            // Learn who is alive first, then one broadcast; return when all answered.
            let members = match cluster::alive_members(
                conn,
                subjects,
                tags,
                timeout.min(Duration::from_secs(5)),
            )
            .await
            {
                Ok(m) => m,
                Err(e) => return crate::members_failed(e),
            };
            if members.is_empty() {
                eprintln!("ctl: no alive node matches the target (`ctl members` lists the nodes)");
                return ExitCode::from(crate::EXIT_NO_ANSWER);
            }
            let expected = members.into_iter().map(|m| m.name).collect();
            let headers = client::tags_header(tags);
            match client::broadcast(conn, subjects, headers, expected, req, timeout).await {
                Ok(o) => o,
                Err(e) => return crate::no_answer(e),
            }
        }
    };
    report(&req.command, outcome, json, multi(target))
}
