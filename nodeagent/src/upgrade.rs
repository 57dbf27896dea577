//! The hot upgrade (`ctl upgrade`, SIGUSR2): the agent executes its binary again, the
//! file now at the path it was started from, in the same pid, and its processes go on.
//! In order: the new binary is tried (`--check` of the config), the request is
//! answered, the peers are told (so that the old connection's end is not a failure),
//! the supervisor freezes and hands over its processes and pipes, the sockets and pipes
//! lose close-on-exec, the hand-over file is written ([`crate::handoff`]), systemd is
//! told `RELOADING=1` (the new image says `READY=1`), and the exec happens on the main
//! thread ([`crate::process::exec_self`]). When the exec fails,
//! everything is undone and the agent goes on as it was. It decides nothing about
//! processes and handles no request.

use std::path::Path;
use std::time::Duration;

use protocol::events::{Event, EventKind};
use protocol::reply::UpgradeData;
use protocol::{Errno, Subjects};
use tokio::sync::{mpsc, oneshot};

use crate::handoff::{self, HandedProcess, HandedSocket, Handoff};
use crate::identity::Identity;
use crate::memberloop::MembershipHandle;
use crate::process;
use crate::supervisor::{CmdError, SupervisorHandle};
use crate::transport::Publisher;

/// How long peers wait for the new boot before they judge the node by its silence.
pub const GRACE: Duration = Duration::from_secs(20);

/// How long the new binary may take to check the config.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the log pumps may take to stop and their lines to reach the files.
const HANDOVER_WITHIN: Duration = Duration::from_secs(2);

/// An upgrade asked for; `reply` (none for SIGUSR2) gets the answer sent before the
/// exec.
pub struct Ask {
    pub reply: Option<oneshot::Sender<Result<UpgradeData, CmdError>>>,
}

/// Asks the agent for an upgrade.
#[derive(Clone)]
pub struct UpgradeHandle {
    tx: mpsc::Sender<Ask>,
}

impl UpgradeHandle {
    pub fn new() -> (UpgradeHandle, mpsc::Receiver<Ask>) {
        let (tx, rx) = mpsc::channel(4);
        (UpgradeHandle { tx }, rx)
    }

    /// Asks for the upgrade; the answer comes once the new binary passed its check,
    /// right before the exec.
    pub async fn upgrade(&self) -> Result<UpgradeData, CmdError> {
        let (tx, rx) = oneshot::channel();
        let busy = || CmdError::new(Errno::ShuttingDown, "the agent is stopping or busy");
        self.tx
            .try_send(Ask { reply: Some(tx) })
            .map_err(|_| busy())?;
        rx.await.map_err(|_| busy())?
    }
}

/// What the upgrade works with.
pub struct Context<'a> {
    pub supervisor: &'a SupervisorHandle,
    pub membership: &'a MembershipHandle,
    pub bus: &'a Publisher,
    pub subjects: &'a Subjects,
    pub identity: &'a Identity,
    /// Where the hand-over file goes (the state dir).
    pub home: &'a Path,
    pub config_path: &'a Path,
}

fn failed(reason: String) -> CmdError {
    CmdError::new(Errno::CommandFailed, reason)
}

/// Carries out one upgrade. Returns only when it did not happen (the exec replaces
/// the process otherwise); the agent goes on as it was.
pub async fn perform(ctx: &Context<'_>, ask: Ask) {
    let reply = ask.reply;
    let answer = |r: Result<UpgradeData, CmdError>| {
        if let Err(e) = &r {
            tracing::error!("upgrade refused: {}", e.reason);
        }
        if let Some(tx) = reply {
            let _ = tx.send(r);
        }
    };
    let Some((exe, args)) = process::self_exe() else {
        return answer(Err(failed(
            "this agent does not know the binary it was started from; restart it instead".into(),
        )));
    };
    if let Err(why) = preflight(exe, ctx.config_path).await {
        return answer(Err(failed(format!(
            "the binary at {} does not start: {why}; nothing was changed (the running \
             version goes on); put a working build there and upgrade again",
            exe.display()
        ))));
    }
    let running = ctx
        .supervisor
        .snapshot()
        .await
        .map(|ws| ws.iter().map(|w| w.processes.len() as u32).sum())
        .unwrap_or(0);
    answer(Ok(UpgradeData {
        was_boot_id: ctx.identity.boot_id.clone(),
        was_version: ctx.identity.version.clone(),
        path: exe.display().to_string(),
        processes: running,
    }));
    let reason = format!(
        "executing {} again (was boot {}, version {})",
        exe.display(),
        ctx.identity.boot_id,
        ctx.identity.version
    );
    tracing::info!("upgrading: {reason}");
    publish_event(ctx, reason).await;
    if let Err(why) = exec(ctx, exe, args).await {
        tracing::error!(
            "upgrade failed: {why}; going on as the running version, every process still supervised"
        );
        publish_event(ctx, format!("failed: {why}")).await;
    }
}

/// Runs `exe --config FILE --check`: the new binary starts and reads the config.
async fn preflight(exe: &Path, config: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .arg("--check")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PREFLIGHT_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(format!("`--check` did not finish in {PREFLIGHT_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said: String = said.trim().chars().take(300).collect();
    Err(format!(
        "`--check` {}{}",
        match out.status.code() {
            Some(c) => format!("exited {c}"),
            None => "was killed".into(),
        },
        if said.is_empty() {
            String::new()
        } else {
            format!(" ({said})")
        }
    ))
}

async fn publish_event(ctx: &Context<'_>, reason: String) {
    let mut event = Event::agent(&ctx.identity.node, EventKind::Upgrade)
        .with_boot_id(ctx.identity.boot_id.clone());
    event.reason = Some(reason);
    ctx.bus
        .publish_json(event.subject(ctx.subjects), &event)
        .await;
}

/// Hands everything over and executes `exe`; returns why not when it could not.
async fn exec(ctx: &Context<'_>, exe: &Path, args: &[std::ffi::OsString]) -> Result<(), String> {
    ctx.membership.upgrading(Some(GRACE)).await;
    let undo_membership = || async { ctx.membership.upgrading(None).await };
    let frozen = match ctx.supervisor.freeze().await {
        Ok(f) => f,
        Err(e) => {
            undo_membership().await;
            return Err(e.reason);
        }
    };
    // From here on, dropping `frozen.resume` lets the supervisor go on.
    let Some(pipes) = frozen.pipes else {
        undo_membership().await;
        return Err(format!(
            "the output pipes could not be handed over within {HANDOVER_WITHIN:?}"
        ));
    };
    let handoff = match build(ctx, &frozen.processes, &pipes, &frozen.sockets) {
        Ok(h) => h,
        Err(why) => {
            undo_membership().await;
            return Err(why);
        }
    };
    let sockets: Vec<_> = frozen.sockets.iter().map(|b| b.fd.clone()).collect();
    let mut result = sockets
        .iter()
        .try_for_each(|fd| process::set_cloexec(fd.as_ref(), false))
        .map_err(|e| format!("cannot hand the sockets over: {e}"));
    if result.is_ok() {
        result = handoff::write(ctx.home, &handoff).map_err(|e| e.to_string());
    }
    if result.is_ok() {
        // The reply and the announcement leave before the connection closes.
        ctx.bus.flush(Duration::from_secs(2)).await;
        crate::systemd::reloading(&format!("upgrading: executing {} again", exe.display()));
        let (exe, args) = (exe.to_path_buf(), args.to_vec());
        let error = tokio::task::spawn_blocking(move || process::exec_self(&exe, &args))
            .await
            .unwrap_or_else(|e| std::io::Error::other(e.to_string()));
        result = Err(format!("cannot execute the binary: {error}"));
        handoff::remove(ctx.home);
        crate::systemd::ready("the upgrade failed: serving commands as the running version");
    }
    for fd in &sockets {
        let _ = process::set_cloexec(fd.as_ref(), true);
    }
    drop(frozen.resume);
    undo_membership().await;
    result
}

/// The hand-over file's contents.
fn build(
    ctx: &Context<'_>,
    processes: &[crate::supervisor::adopt::HandedProcess],
    pipes: &[crate::supervisor::adopt::HandedPipe],
    sockets: &crate::sockets::SocketSet,
) -> Result<Handoff, String> {
    let mut seen = std::collections::BTreeSet::new();
    for p in processes {
        if !seen.insert((p.watcher.as_str(), p.wid)) {
            return Err(format!(
                "watcher '{}' is being restarted (two processes in slot {}); upgrade once \
                 the restart is done",
                p.watcher, p.wid
            ));
        }
    }
    let fd = |watcher: &str, wid: u32, stdout: bool| {
        pipes
            .iter()
            .find(|p| p.watcher == watcher && p.wid == wid && p.stdout == stdout)
            .map(|p| p.fd)
    };
    Ok(Handoff {
        version: handoff::VERSION,
        pid: std::process::id(),
        agent_start: handoff::own_start(),
        written_at: protocol::unix_time(),
        node: ctx.identity.node.clone(),
        boot_id: ctx.identity.boot_id.clone(),
        agent_version: ctx.identity.version.clone(),
        processes: processes
            .iter()
            .map(|p| HandedProcess {
                watcher: p.watcher.clone(),
                wid: p.wid,
                pid: p.pid,
                pgid: p.pid,
                restarts: p.restarts,
                started_at: p.started_at,
                ready: p.ready,
                stdout_fd: fd(&p.watcher, p.wid, true),
                stderr_fd: fd(&p.watcher, p.wid, false),
            })
            .collect(),
        sockets: sockets
            .iter()
            .map(|b| HandedSocket {
                name: b.spec.name.clone(),
                fd: b.raw_fd(),
                address: b.address.clone(),
            })
            .collect(),
    })
}
