//! Tells systemd how the agent is doing, for a `Type=notify` unit
//! (examples/systemd/nodeagent.service): `READY=1` once it serves commands,
//! `RELOADING=1` before it executes its binary again for an upgrade (the same pid, so
//! the same main pid for systemd; the new image says `READY=1` once it serves again),
//! `STOPPING=1` when it begins to stop, and a `STATUS=` line at each step. Without
//! `NOTIFY_SOCKET` (not started by systemd) it does nothing. It knows nothing else of
//! the agent; a failure to notify is logged, never fatal.

use sd_notify::NotifyState;

/// `READY=1` with a status line: start-up is over, commands are served.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253 and later require) and a
/// status line: the agent is about to execute its binary again; `READY=1` follows
/// from the new image, or from this one when the exec failed.
pub fn reloading(status: &str) {
    let status = one_line(status);
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(&status)];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// `STOPPING=1` with a status line: the agent is stopping its processes.
pub fn stopping(status: &str) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
    ]);
}

/// A `STATUS=` line alone: what `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// A status is one line: systemd reads one `KEY=value` per line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd on NOTIFY_SOCKET: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_status_is_one_line() {
        assert_eq!(super::one_line("a\nb\r\nc"), "a b  c");
    }
}
