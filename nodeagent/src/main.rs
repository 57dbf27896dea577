//! The `nodeagent` binary: arguments, logging, signal handlers, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nodeagent::agent::AgentError;
use nodeagent::supervisor::live::LIVE;
use nodeagent::{agent, config, fatal};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Supervises the processes of this machine and answers `ctl` over NATS.
///
/// SIGHUP reloads the config; SIGUSR2 upgrades in place: the agent executes its binary
/// again (the file now at the path it was started from), in the same pid, and its
/// processes keep running.
///
/// Exit codes: 0 after a graceful stop (SIGTERM, SIGINT or `ctl quit`), 1 when the agent
/// cannot run (NATS credentials, an unsafe or locked state or log dir, name already
/// taken), 2 for an invalid config or bad arguments, 70 after an internal error (a
/// panic), once every process was stopped gracefully.
#[derive(Parser, Debug)]
#[command(name = "nodeagent", version)]
struct Args {
    /// The node's TOML config ([agent], [nats], [watcher.NAME] tables).
    #[arg(short, long, value_name = "FILE", required_unless_present = "manpage")]
    config: Option<PathBuf>,
    /// Check the config and exit: 0 when valid, 2 with every problem listed when not.
    #[arg(long)]
    check: bool,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print this program's man page (roff) and exit; the package installs it.
    #[arg(long, hide = true)]
    manpage: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(config_path) = args.config.clone().filter(|_| !args.manpage) else {
        return print_manpage();
    };
    init_logging(args.verbose);

    let cfg = match config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodeagent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "{}: valid (node '{}', {} watchers)",
            config_path.display(),
            cfg.agent.name,
            cfg.watchers.len()
        );
        return ExitCode::SUCCESS;
    }
    raise_open_files_limit();
    fatal::install_hook();
    nodeagent::process::remember_self();
    // Two workers, not one: the main thread is the forker (below), and the supervisor
    // awaits its forks without holding a worker, but a long turn of the supervisor (the
    // stop of thousands of processes at once) holds its worker, and with a single one
    // the heartbeats starve (a 5000-process scale made the node suspect). Blocking work
    // (/proc samples, state saves, log writes) goes to the blocking pool.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodeagent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The main thread forks every child and is the one that executes the binary again
    // on an upgrade (see `process::run_forker`); the agent runs on the runtime's threads.
    let code = nodeagent::process::run_forker(&rt, async move {
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let (usr2_tx, usr2_rx) = tokio::sync::mpsc::channel(1);
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
        ) else {
            eprintln!("nodeagent: cannot install signal handlers");
            return ExitCode::from(1);
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM: stopping"); token.cancel(); }
                    _ = int.recv() => { tracing::info!("SIGINT: stopping"); token.cancel(); }
                    _ = hup.recv() => { tracing::info!("SIGHUP: reloading the config"); let _ = reload_tx.try_send(()); }
                    _ = usr2.recv() => { let _ = usr2_tx.try_send(()); }
                }
            }
        });
        // In a task of its own, so that a panic of `run` itself is caught too.
        match tokio::spawn(agent::run(cfg, shutdown, reload_rx, usr2_rx)).await {
            Ok(Ok(())) if fatal::reason().is_none() => ExitCode::SUCCESS,
            Ok(Ok(())) => ExitCode::from(fatal::EXIT_PANIC),
            Ok(Err(e @ AgentError::Panicked(_))) => {
                eprintln!("nodeagent: {e}");
                ExitCode::from(fatal::EXIT_PANIC)
            }
            Ok(Err(e @ AgentError::Sockets { .. })) => {
                // A socket that cannot be bound is a config error; nothing was started.
                eprintln!("nodeagent: {e}");
                ExitCode::from(2)
            }
            Ok(Err(e)) => {
                // Processes started before the failure are stopped, not orphaned.
                LIVE.stop_all().await;
                eprintln!("nodeagent: {e}");
                ExitCode::from(1)
            }
            Err(e) => {
                // Nothing else will stop the processes now: the record of live groups
                // does, gracefully.
                let n = LIVE.stop_all().await;
                eprintln!(
                    "nodeagent: stopped after an internal error ({e}); {n} process group(s) \
                     stopped"
                );
                ExitCode::from(fatal::EXIT_PANIC)
            }
        }
    });
    // Blocking work still running (a /proc sample) must not hold the exit up.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Logs to stderr at the level of `-v`, or as RUST_LOG says: a default level and
/// `target=level` directives, comma-separated (`info,nodeagent::supervisor=debug`).
/// A plain target filter, not tracing-subscriber's EnvFilter, whose span and field
/// directives the agent never needed and whose regex engine doubled the logging code.
fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match verbose {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| match s.parse::<Targets>() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "nodeagent: RUST_LOG ignored ({e}); use LEVEL or TARGET=LEVEL, comma-separated"
                );
                None
            }
        });
    // async-nats logs each failed connect as an error; what matters of it is reported
    // once, in words, by this program.
    let filter = from_env.unwrap_or_else(|| {
        Targets::new()
            .with_default(level)
            .with_target("async_nats", LevelFilter::OFF)
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(filter)
        .init();
}

/// C's `pow`, for the one caller the agent has: tokio's multi-thread scheduler (a moving
/// average of its task times). Defined here, from the `libm` crate, it keeps the dynamic
/// linker from loading libm.so for that one function: about 0.5 MiB of libm's pages were
/// resident in the agent (its relocations, IFUNC resolvers and hash tables are touched at
/// start, and the kernel maps 64 KiB around each fault).
#[allow(unsafe_code)]
// SAFETY: `no_mangle` exports this as `pow`: it has the C signature and the meaning of
// libm's `pow` (an IEEE 754 double power, musl's algorithm), and nothing else in the
// program defines the symbol.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// Writes the man page, rendered from the same definition as `--help`.
fn print_manpage() -> ExitCode {
    use clap::CommandFactory;
    let mut out = std::io::stdout().lock();
    match clap_mangen::Man::new(Args::command()).render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeagent: cannot write the man page: {e}");
            ExitCode::from(1)
        }
    }
}

/// Stats keep one /proc file open per process; let the agent use its hard limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!("cannot raise the open files limit: {e}");
            }
        }
    }
}
