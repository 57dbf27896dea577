//! What one command line asks for, decided before anything is sent: the targets, the
//! request, and the flow that carries it out. Every usage error is found here, before
//! connecting.

use std::time::Duration;

use protocol::registry::{MembersRequest, MembersView, StatusFilter};
use protocol::{Command, Request, Subjects};

use crate::args::{Cli, Global, Sub};
use crate::client::Target;
use crate::cluster;

/// One command line, planned.
#[derive(Debug)]
pub struct Plan {
    pub subjects: Subjects,
    /// How long to wait for replies.
    pub timeout: Duration,
    /// One JSON line per reply or message instead of text.
    pub json: bool,
    pub flow: Flow,
}

/// How the command is carried out.
#[derive(Debug)]
pub enum Flow {
    /// Print the shell completion script.
    Completions(clap_complete::Shell),
    /// Print the man page.
    Manpage,
    /// Nothing to send (a subcommand that only prints its help).
    Nothing,
    /// `members`: one query, the table.
    Members(MembersRequest),
    /// `events`: the live events of these nodes (all when empty).
    Events {
        nodes: Vec<String>,
        watcher: Option<String>,
    },
    /// `top`: the live view of these nodes (all when empty).
    Top { nodes: Vec<String> },
    /// `web`: the dashboard and the metrics.
    Web(crate::web::Options),
    /// A request to the targets, in one of the ways of [`Send`].
    Send {
        target: Target,
        request: Request,
        how: Send,
    },
}

/// How a request goes to its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// Once to every target; the replies printed.
    Plain,
    /// A rolling restart over several nodes: node by node, `batch` at a time.
    Rolling { batch: usize },
    /// A rolling upgrade: node by node, each back with a new boot before the next.
    RollingUpgrade,
    /// A service's new total process count, spread over its members.
    Spread {
        service: String,
        watcher: String,
        total: u32,
    },
    /// `logs -f`: the tail, then the live lines of `watcher`.
    Follow { watcher: String },
}

impl Plan {
    /// Plans a parsed command line; the error is a usage error.
    pub fn new(cli: &Cli) -> Result<Plan, String> {
        let g = &cli.global;
        protocol::subjects::validate_prefix(&g.prefix)
            .map_err(|e| format!("bad --prefix '{}': {e}", g.prefix))?;
        let plan = |flow| Plan {
            subjects: Subjects::new(g.prefix.clone()),
            timeout: g.timeout.unwrap_or_else(|| cli.command.default_timeout()),
            json: g.json,
            flow,
        };
        let flow = match &cli.command {
            Sub::Completions { shell } => Flow::Completions(*shell),
            Sub::Manpage => Flow::Manpage,
            Sub::Members { status, name } => Flow::Members(members_filter(g, status, name)?),
            Sub::Events { watcher } => Flow::Events {
                nodes: watched_nodes(g)?,
                watcher: watcher.clone(),
            },
            Sub::Top => Flow::Top {
                nodes: watched_nodes(g)?,
            },
            Sub::Web(w) => {
                if !g.nodes.is_empty() || g.all || !g.tags.is_empty() || g.service.is_some() {
                    return Err(
                        "web shows every node: drop --node, --all, --tag and --service".into(),
                    );
                }
                Flow::Web(crate::web::Options::new(w)?)
            }
            sub => match sub.command()? {
                None => Flow::Nothing,
                Some(command) => {
                    let target = target(g)?;
                    let how = how(sub, &command, &target)?;
                    Flow::Send {
                        target,
                        request: Request::new(command),
                        how,
                    }
                }
            },
        };
        Ok(plan(flow))
    }
}

/// The special ways a command goes out, or [`Send::Plain`]. Every command is named, so
/// that a new one is placed here on purpose.
fn how(sub: &Sub, command: &Command, target: &Target) -> Result<Send, String> {
    let several = match target {
        Target::Nodes(n) => n.len() > 1,
        Target::Members(_) => true,
        Target::Service(_) => false,
    };
    Ok(match command {
        Command::Restart(r) | Command::Reload(r) => match sub {
            Sub::Restart(a) | Sub::Reload(a) if r.rolling && several => {
                Send::Rolling { batch: a.batch }
            }
            _ => Send::Plain,
        },
        Command::Upgrade(_) => match sub {
            Sub::Upgrade { rolling: true } => Send::RollingUpgrade,
            _ => Send::Plain,
        },
        Command::Numprocesses(n) => match (target, n.nb) {
            (Target::Service(s), Some(total)) => Send::Spread {
                service: s.clone(),
                watcher: n.name.clone(),
                total,
            },
            _ => Send::Plain,
        },
        Command::Logs(_) => match sub {
            Sub::Logs {
                follow: true,
                watcher,
                ..
            } => {
                if let Target::Service(_) = target {
                    return Err(crate::follow::NO_SERVICE.to_owned());
                }
                Send::Follow {
                    watcher: watcher.clone(),
                }
            }
            _ => Send::Plain,
        },
        Command::Status(_)
        | Command::List(_)
        | Command::Start(_)
        | Command::Stop(_)
        | Command::Incr(_)
        | Command::Decr(_)
        | Command::Numwatchers(_)
        | Command::Signal(_)
        | Command::Options(_)
        | Command::Get(_)
        | Command::Set(_)
        | Command::Add(_)
        | Command::Rm(_)
        | Command::Reloadconfig(_)
        | Command::Dstats(_)
        | Command::Quit(_)
        | Command::Ping(_)
        | Command::Stats(_)
        | Command::Members(_)
        | Command::Listsockets(_) => Send::Plain,
    })
}

/// The filter of `members`.
fn members_filter(
    g: &Global,
    status: &[String],
    name: &Option<String>,
) -> Result<MembersRequest, String> {
    let states = status
        .iter()
        .map(|s| cluster::parse_state(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MembersRequest {
        status: (!states.is_empty()).then_some(StatusFilter::Many(states)),
        tags: g.tags.iter().cloned().collect(),
        name: name.clone(),
        after: None,
        view: MembersView::Full,
    })
}

/// The nodes `events` and `top` watch: the --node ones, or all (empty).
fn watched_nodes(g: &Global) -> Result<Vec<String>, String> {
    if g.service.is_some() || !g.tags.is_empty() {
        return Err(
            "events and top watch nodes: use --node (repeatable) or no target for all".into(),
        );
    }
    for n in &g.nodes {
        protocol::subjects::validate_node_name(n)
            .map_err(|e| format!("bad node name '{n}': {e}"))?;
    }
    Ok(g.nodes.clone())
}

/// Who the command goes to.
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
pub fn describe(target: &Target) -> String {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::new(&cli)
    }

    fn how(args: &[&str]) -> Send {
        match plan(args).unwrap().flow {
            Flow::Send { how, .. } => how,
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn a_rolling_restart_of_several_nodes_goes_node_by_node() {
        assert_eq!(
            how(&["--all", "restart", "web", "--rolling", "--batch", "2"]),
            Send::Rolling { batch: 2 }
        );
        assert_eq!(
            how(&["-n", "a", "-n", "b", "restart", "web", "--rolling"]),
            Send::Rolling { batch: 1 }
        );
        // One node restarts its processes one by one itself.
        assert_eq!(
            how(&["-n", "a", "restart", "web", "--rolling"]),
            Send::Plain
        );
        assert_eq!(how(&["--all", "restart", "web"]), Send::Plain);
    }

    #[test]
    fn following_logs_needs_nodes() {
        assert_eq!(
            how(&["-n", "a", "logs", "web", "-f"]),
            Send::Follow {
                watcher: "web".into()
            }
        );
        let e = plan(&["--service", "s", "logs", "web", "-f"]).unwrap_err();
        assert!(e.contains("logs -f follows nodes"), "{e}");
    }

    #[test]
    fn live_views_and_members_are_their_own_flows() {
        assert!(matches!(plan(&["top"]).unwrap().flow, Flow::Top { .. }));
        assert!(matches!(
            plan(&["-n", "a", "events"]).unwrap().flow,
            Flow::Events { .. }
        ));
        assert!(plan(&["--service", "s", "events"]).is_err());
        assert!(matches!(plan(&["members"]).unwrap().flow, Flow::Members(_)));
        assert!(plan(&["status"]).unwrap_err().contains("say which nodes"));
    }
}
