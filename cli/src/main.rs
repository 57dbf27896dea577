//! `ctl`: parses the command line into a [`Plan`], runs it (sending the command to its
//! targets over NATS and printing the replies), and maps the outcome to an exit code.

mod args;
mod client;
mod cluster;
mod connect;
mod events;
mod fmt;
mod follow;
mod output;
mod plan;
mod run;
mod top;
mod upgrade;
mod web;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use protocol::Command;

use crate::args::Cli;
use crate::client::{Denial, Outcome};
use crate::cluster::MembersError;
use crate::plan::Plan;

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
    let plan = match Plan::new(&cli) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
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
    rt.block_on(run::run(plan, &cli.global))
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
