//! The command line: global options, targets and subcommands, and the protocol command
//! each subcommand sends.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::command::*;
use protocol::Command;

/// Controls nodeagent processes across a cluster, through NATS alone.
///
/// Pick the targets with --node (repeatable), --all, --tag k=v (repeatable; all must
/// match) or --service S (one member of the service acts), then a command, as with
/// circusctl: `ctl --node second incr dummy`.
///
/// Each command travels on its own subject (cluster.NODE.cmd.COMMAND), so a NATS user
/// may be allowed the reads (status, list, stats, ...) and not the writes.
///
/// Exit codes: 0 success; 1 an agent replied with an error; 2 bad usage; 3 a target
/// did not answer (down, misnamed, or NATS unreachable); 4 not permitted: the NATS
/// server refused this user the command's subject.
#[derive(Parser, Debug)]
#[command(name = "ctl", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// NATS server URL(s), comma separated.
    #[arg(
        short,
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub server: String,
    /// Subject prefix the agents use.
    #[arg(long, env = "CLUSTER_PREFIX", default_value = "cluster", global = true)]
    pub prefix: String,
    /// A target node (repeat for several).
    #[arg(short, long = "node", value_name = "NAME", global = true)]
    pub nodes: Vec<String>,
    /// Every alive node.
    #[arg(short, long, global = true, conflicts_with_all = ["nodes", "service"])]
    pub all: bool,
    /// Nodes whose tag KEY has VALUE (repeat: all must match).
    #[arg(short, long = "tag", value_name = "KEY=VALUE", global = true, conflicts_with_all = ["nodes", "service"], value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// One member of this service acts (NATS queue group); only on a watcher of that
    /// service, named in the command.
    #[arg(long, value_name = "SERVICE", global = true, conflicts_with = "nodes")]
    pub service: Option<String>,
    /// How long to wait for replies, e.g. 500ms, 5s, 2m [default: 5s for queries,
    /// 60s for commands that start or stop processes].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub timeout: Option<Duration>,
    /// Print each reply as one JSON line.
    #[arg(long, global = true)]
    pub json: bool,
    /// NATS user (with --password).
    #[arg(
        long,
        env = "NATS_USER",
        global = true,
        hide_env_values = true,
        requires = "password"
    )]
    pub user: Option<String>,
    /// NATS password (with --user).
    #[arg(
        long,
        env = "NATS_PASSWORD",
        global = true,
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed the server's TLS certificate; turns TLS on.
    #[arg(long, value_name = "FILE", env = "NATS_CA", global = true)]
    pub tlsca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that verify clients (with --tlskey).
    #[arg(
        long,
        value_name = "FILE",
        env = "NATS_CERT",
        global = true,
        requires = "tlskey"
    )]
    pub tlscert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "NATS_KEY",
        global = true,
        requires = "tlscert"
    )]
    pub tlskey: Option<std::path::PathBuf>,
    /// More log output on stderr.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s or 2m"))
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// The state of each watcher (or of one).
    Status { watcher: Option<String> },
    /// The watchers, or one watcher's processes (wid, pid, state, health, restarts).
    List { watcher: Option<String> },
    /// Start a watcher, or all.
    Start {
        watcher: Option<String>,
        /// Reply at once instead of when the processes run (and, for a watcher with a
        /// ready check, are ready).
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop a watcher, or all (stop signal, then SIGKILL after graceful_timeout).
    Stop {
        watcher: Option<String>,
        /// Reply at once instead of when the processes are gone.
        #[arg(long)]
        no_wait: bool,
    },
    /// Restart a watcher, or all.
    Restart(RestartArgs),
    /// Same as restart.
    Reload(RestartArgs),
    /// Add processes to a watcher.
    Incr {
        watcher: String,
        #[arg(default_value_t = 1)]
        nb: u32,
    },
    /// Remove processes from a watcher (the highest wids go first).
    Decr {
        watcher: String,
        #[arg(default_value_t = 1)]
        nb: u32,
    },
    /// Show a watcher's process count, or set it to COUNT.
    #[command(visible_alias = "resize")]
    Numprocesses { watcher: String, count: Option<u32> },
    /// How many watchers a node runs.
    Numwatchers,
    /// Send a signal (name or number) to a watcher's processes and their groups.
    Signal {
        watcher: String,
        signal: String,
        /// Only this process of the watcher.
        #[arg(long)]
        pid: Option<u32>,
        /// Only the main process, not its children.
        #[arg(long)]
        leader_only: bool,
    },
    /// Every option of a watcher.
    Options { watcher: String },
    /// Some options of a watcher.
    Get {
        watcher: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Change options: KEY VALUE pairs; a VALUE is read as JSON when it parses
    /// (3, true, ["a","b"]) and as a string otherwise.
    Set {
        watcher: String,
        #[arg(
            required = true,
            num_args = 2..,
            value_names = ["KEY", "VALUE"],
            allow_hyphen_values = true
        )]
        pairs: Vec<String>,
    },
    /// Add a watcher running CMD ARGS... (the node must allow remote exec).
    Add {
        watcher: String,
        /// Options as KEY=VALUE (repeatable), e.g. -o numprocesses=3.
        #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Add it without starting it.
        #[arg(long)]
        no_start: bool,
        /// The program and its arguments (after --).
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// Stop a watcher's processes and remove it.
    Rm {
        watcher: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Read the node's config file again and apply what changed: its sockets are bound
    /// first (one that cannot be bound refuses the whole reload), watchers added start,
    /// removed ones stop, scaled ones resize, changed ones restart as `restart --rolling`
    /// does (max_surge/max_unavailable) when what runs changed or a socket they list was
    /// bound anew; the others are left alone.
    Reloadconfig {
        /// Only show the plan (watchers and sockets added, removed, changed with the keys
        /// old -> new, scaled); change nothing. Sent on the read-only `plan` subject.
        #[arg(long)]
        dry_run: bool,
    },
    /// The agent's own pid, CPU, memory and uptime.
    Dstats,
    /// The sockets the agent has bound ([socket.NAME] in its config): kind, address
    /// (with the port actually bound), the agent's fd, and the watchers that get them.
    Listsockets,
    /// Stop every process and end the agent.
    Quit,
    /// Upgrade the agent in place: after the new binary passed `--check` of the config,
    /// the agent executes it (the file now at the path it was started from) in the same
    /// pid. Its processes keep running with the same pids, wids and restart counts,
    /// their output is not lost, and the node stays a member; `ping` then shows a new
    /// boot. The reply comes before the exec. If the binary fails the check, nothing
    /// changes; if the exec fails, the agent goes on as it was. SIGUSR2 does the same.
    Upgrade {
        /// One node at a time: each is upgraded, then pinged until it answers with its
        /// new boot, before the next (with one node: ctl returns once it is back);
        /// stops at the first node that fails or is not back within --timeout.
        #[arg(long)]
        rolling: bool,
    },
    /// Who answers: version, pid, host, tags, uptime.
    #[command(visible_alias = "info")]
    Ping,
    /// The cluster's members as an agent sees them (any one agent answers), like
    /// `serf members`; --tag filters by tags.
    Members {
        /// Only members in this state: alive, suspect, failed, leaving, left (repeatable).
        #[arg(long)]
        status: Vec<String>,
        /// Only members whose name matches; `*` matches any run of characters.
        #[arg(long)]
        name: Option<String>,
    },
    /// What a watcher's processes printed (stdout and stderr, captured to rotating
    /// files by the agent), like `pm2 logs`; -f follows live until Ctrl-C.
    Logs {
        watcher: String,
        /// How many of the last lines to show first (at most 10000).
        #[arg(short = 'l', long, default_value_t = 50)]
        lines: u32,
        /// Keep printing new lines as they come, until Ctrl-C (the agents publish a watcher's
        /// lines only while someone follows it; ctl renews its 30 s follow lease every 10 s).
        #[arg(short, long)]
        follow: bool,
        /// Only this stream: stdout or stderr.
        #[arg(long)]
        stream: Option<protocol::logs::Stream>,
    },
    /// One snapshot of per-process statistics: node, watcher, pid, CPU, memory, age,
    /// restarts.
    Stats { watcher: Option<String> },
    /// Follow lifecycle events (spawn, exit, respawn, flapping, unhealthy, start, stop,
    /// add, rm, reload, join, leave, max_memory, max_age, hook_failed, upgrade) live,
    /// one per line, until Ctrl-C. Every node when no target is given.
    Events {
        /// Only this watcher's events.
        #[arg(long)]
        watcher: Option<String>,
    },
    /// A live full-screen view of the whole cluster (or of the --node targets): nodes,
    /// watchers, processes, CPU and memory. Keys: q quit, c/m/n/a sort by CPU, memory,
    /// name, age; arrows and PgUp/PgDn scroll.
    Top,
    /// Serve a dashboard of the cluster (members, processes with live CPU and memory,
    /// events, logs) and Prometheus metrics of every node on /metrics, from the
    /// registry, stats, events and logs subjects. Read-only unless --allow-control.
    Web(WebArgs),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); the package installs it.
    #[command(hide = true)]
    Manpage,
}

/// `ctl web`: where it listens and who may use it.
#[derive(Args, Debug, Clone)]
pub struct WebArgs {
    /// The address to serve on. An address other than loopback needs --web-token or
    /// --web-token-file.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// A secret every request must carry: `Authorization: Bearer TOKEN` (for scrapers
    /// and scripts), or the cookie the page sets when first opened as /?token=TOKEN.
    /// (`--token` is the NATS token.)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CTL_WEB_TOKEN",
        hide_env_values = true,
        conflicts_with = "web_token_file"
    )]
    pub web_token: Option<String>,
    /// Read the --web-token secret from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub web_token_file: Option<std::path::PathBuf>,
    /// Let the page start, stop, restart (also rolling, node by node), resize and
    /// signal watchers; without it those requests get 403.
    #[arg(long)]
    pub allow_control: bool,
    /// Show a member failed as soon as the NATS server reports that its connection
    /// closed, as agents with `system_events_account` do: read the disconnect
    /// advisories of this account ($SYS.ACCOUNT.<ACCOUNT>.DISCONNECT, which the account
    /// must import, as in nats.conf). Without it a member is failed after 10 s of
    /// silence.
    #[arg(long, value_name = "ACCOUNT")]
    pub system_events_account: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RestartArgs {
    pub watcher: Option<String>,
    /// Replace the processes a few at a time (the watcher's max_surge/max_unavailable):
    /// with surge the new process starts first and the old one stops once it is up;
    /// otherwise each stops, then starts; each new one up (past min_uptime, and ready)
    /// before the next.
    #[arg(long)]
    pub rolling: bool,
    /// With --rolling and several nodes: how many nodes restart at once.
    #[arg(long, default_value_t = 1, requires = "rolling")]
    pub batch: usize,
    /// Reply at once instead of when the restart is done (the new processes ready).
    #[arg(long)]
    pub no_wait: bool,
}

fn json_value(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
}

impl Sub {
    /// The protocol command this subcommand sends; `Err` for a usage error.
    pub fn command(&self) -> Result<Option<Command>, String> {
        let restart = |r: &RestartArgs| Restart {
            name: r.watcher.clone(),
            waiting: !r.no_wait,
            rolling: r.rolling,
        };
        Ok(Some(match self {
            Sub::Status { watcher } => Command::Status(MaybeName {
                name: watcher.clone(),
            }),
            Sub::List { watcher } => Command::List(MaybeName {
                name: watcher.clone(),
            }),
            Sub::Start { watcher, no_wait } => Command::Start(StartStop {
                name: watcher.clone(),
                waiting: !no_wait,
            }),
            Sub::Stop { watcher, no_wait } => Command::Stop(StartStop {
                name: watcher.clone(),
                waiting: !no_wait,
            }),
            Sub::Restart(r) => Command::Restart(restart(r)),
            Sub::Reload(r) => Command::Reload(restart(r)),
            Sub::Incr { watcher, nb } => Command::Incr(Resize {
                name: watcher.clone(),
                nb: *nb,
            }),
            Sub::Decr { watcher, nb } => Command::Decr(Resize {
                name: watcher.clone(),
                nb: *nb,
            }),
            Sub::Numprocesses { watcher, count } => Command::Numprocesses(Numprocesses {
                name: watcher.clone(),
                nb: *count,
            }),
            Sub::Numwatchers => Command::Numwatchers(Empty {}),
            Sub::Signal {
                watcher,
                signal,
                pid,
                leader_only,
            } => Command::Signal(SignalProps {
                name: watcher.clone(),
                signum: match signal.parse::<i32>() {
                    Ok(n) => SignalSpec::Number(n),
                    Err(_) => SignalSpec::Name(signal.clone()),
                },
                pid: *pid,
                leader_only: *leader_only,
            }),
            Sub::Options { watcher } => Command::Options(Name {
                name: watcher.clone(),
            }),
            Sub::Get { watcher, keys } => Command::Get(GetProps {
                name: watcher.clone(),
                keys: keys.clone(),
            }),
            Sub::Set { watcher, pairs } => {
                if pairs.len() % 2 != 0 {
                    return Err(format!(
                        "set takes KEY VALUE pairs; '{}' has no value",
                        pairs.last().map(String::as_str).unwrap_or_default()
                    ));
                }
                let options: BTreeMap<String, serde_json::Value> = pairs
                    .chunks(2)
                    .map(|kv| (kv[0].clone(), json_value(&kv[1])))
                    .collect();
                Command::Set(SetProps {
                    name: watcher.clone(),
                    options,
                })
            }
            Sub::Add {
                watcher,
                options,
                no_start,
                cmd,
            } => {
                let mut map = serde_json::Map::new();
                for o in options {
                    let Some((k, v)) = o.split_once('=') else {
                        return Err(format!("option '{o}' must look like KEY=VALUE"));
                    };
                    let v = json_value(v);
                    protocol::options::check_option(k, &v)?;
                    map.insert(k.to_owned(), v);
                }
                let opts = if map.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::from_value(serde_json::Value::Object(map))
                            .map_err(|e| format!("bad option: {e}"))?,
                    )
                };
                Command::Add(Box::new(AddProps {
                    name: watcher.clone(),
                    cmd: cmd[0].clone(),
                    args: cmd[1..].to_vec(),
                    options: opts,
                    start: !no_start,
                }))
            }
            Sub::Rm { watcher, no_wait } => Command::Rm(RmProps {
                name: watcher.clone(),
                waiting: !no_wait,
            }),
            Sub::Reloadconfig { dry_run } => {
                Command::Reloadconfig(ReloadconfigProps { dry_run: *dry_run })
            }
            Sub::Dstats => Command::Dstats(Empty {}),
            Sub::Listsockets => Command::Listsockets(Empty {}),
            Sub::Quit => Command::Quit(Empty {}),
            Sub::Upgrade { .. } => Command::Upgrade(Empty {}),
            Sub::Ping => Command::Ping(Empty {}),
            Sub::Logs {
                watcher,
                lines,
                stream,
                follow,
            } => Command::Logs(protocol::logs::LogsProps {
                name: watcher.clone(),
                lines: Some(*lines),
                stream: *stream,
                follow_secs: follow.then_some(FOLLOW_LEASE_SECS),
            }),
            Sub::Stats { watcher } => Command::Stats(MaybeName {
                name: watcher.clone(),
            }),
            Sub::Completions { .. }
            | Sub::Manpage
            | Sub::Members { .. }
            | Sub::Events { .. }
            | Sub::Top
            | Sub::Web(_) => return Ok(None),
        }))
    }

    /// Commands that start or stop processes get a longer default timeout.
    pub fn default_timeout(&self) -> Duration {
        match self {
            Sub::Start { .. }
            | Sub::Stop { .. }
            | Sub::Restart(_)
            | Sub::Reload(_)
            | Sub::Rm { .. }
            | Sub::Set { .. }
            | Sub::Add { .. }
            | Sub::Reloadconfig { .. }
            | Sub::Upgrade { .. }
            | Sub::Quit => Duration::from_secs(60),
            _ => Duration::from_secs(5),
        }
    }
}

/// How long `logs -f` asks an agent to publish live lines; renewed at a third of it.
pub const FOLLOW_LEASE_SECS: u32 = 30;

/// `--tag KEY=VALUE`.
fn parse_tag(t: &str) -> Result<(String, String), String> {
    match t.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{t}' must look like KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_command() {
        let cli =
            Cli::try_parse_from(["ctl", "incr", "dummy", "--node", "second", "--json"]).unwrap();
        assert_eq!(cli.global.nodes, vec!["second".to_string()]);
        assert!(cli.global.json);
        let cli =
            Cli::try_parse_from(["ctl", "-n", "a", "-n", "b", "logs", "web", "-l", "5", "-f"])
                .unwrap();
        assert_eq!(cli.global.nodes.len(), 2);
        assert!(matches!(
            cli.command,
            Sub::Logs {
                lines: 5,
                follow: true,
                ..
            }
        ));
    }
}
