//! Runs a full-screen program (`ctl top`) in a detached tmux session of a given size and
//! reads its screen and types keys, as a person at that terminal would. Owns a private
//! tmux server (its own socket) and kills it on drop; never touches the user's tmux.
//!
//! ```text
//! let tmux = Tmux::start(&[ctl, "-s", &url, "top"], 80, 24, &[])?;
//! let screen = tmux.wait_for("q quit", Duration::from_secs(10)).await?;
//! tmux.wait_for("first", Duration::from_secs(10)).await?;   // a node's stats arrived
//! tmux.send_keys(&["m"])?;                                  // sort by memory
//! tmux.send_keys(&["q"])?;
//! assert_eq!(tmux.wait_exit(Duration::from_secs(5)).await?, 0);
//! ```
//! Needs `tmux` (3.0 or later) on PATH: `apt-get install tmux`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const POLL: Duration = Duration::from_millis(50);

/// One program in its own tmux server and session; both end on drop.
pub struct Tmux {
    socket: String,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Tmux {
    /// Starts `argv` in a `width` x `height` terminal, with `env` added to its
    /// environment. The pane stays after the program exits, so its last screen and exit
    /// status can still be read.
    pub fn start(
        argv: &[&str],
        width: u16,
        height: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Tmux> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().context("cannot make a temporary dir for tmux")?;
        let config = dir.path().join("tmux.conf");
        // Read when the server starts, so no exit can come before it applies.
        std::fs::write(&config, "set -g remain-on-exit on\nset -g status off\n")
            .context("cannot write the tmux config")?;
        let tmux = Tmux {
            socket,
            _dir: dir,
            config,
        };
        let (w, h) = (width.to_string(), height.to_string());
        let mut args = vec!["new-session", "-d", "-s", "main", "-x", &w, "-y", &h];
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        // The program runs under a shell that prints its exit status when it ends:
        // tmux's own `pane_dead_status` can lag behind the pane's end, and reads
        // nothing at all for a program killed by a signal on tmux before 3.4.
        let script = format!("\"$@\"; echo \"{EXIT_MARK}$?>\"");
        args.extend(["--", "sh", "-c", &script, "sh"]);
        args.extend(argv);
        tmux.run(&args)?;
        Ok(tmux)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        // The server it starts (and the program in its pane) can be found and counted.
        crate::mark::apply(&mut cmd, &crate::mark::shared_marker());
        cmd.arg("-L").arg(&self.socket).arg("-f").arg(&self.config);
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("cannot run tmux; install it (apt-get install tmux)")?;
        if !out.status.success() {
            bail!(
                "tmux {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// The screen as text, one line per row.
    pub fn capture(&self) -> anyhow::Result<String> {
        let out = self.run(&["capture-pane", "-p", "-t", "main"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Types keys: plain text (`"m"`) or tmux key names (`"Enter"`, `"PgDn"`, `"C-c"`).
    pub fn send_keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend(keys);
        self.run(&args).map(|_| ())
    }

    /// The program's exit status (128 + N when signal N killed it), once it has exited.
    /// Read from the history too: tmux's "Pane is dead" line may scroll it off.
    pub fn exit_status(&self) -> anyhow::Result<Option<i32>> {
        let out = self.run(&["capture-pane", "-p", "-S", "-", "-t", "main"])?;
        Ok(parse_exit(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Polls the screen until it contains `text`; the screen then, or an error showing
    /// the last screen.
    pub async fn wait_for(&self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture()?;
            if screen.contains(text) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                bail!("{text:?} did not show within {timeout:?}; the screen:\n{screen}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the program to exit and returns its exit status.
    pub async fn wait_exit(&self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_status()? {
                return Ok(code);
            }
            if Instant::now() >= deadline {
                let screen = self.capture().unwrap_or_default();
                bail!("the program did not exit within {timeout:?}; the screen:\n{screen}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What the wrapping shell prints before the exit status, then `>`.
const EXIT_MARK: &str = "<program exited ";

/// The exit status the wrapping shell printed on the screen, if it did.
fn parse_exit(screen: &str) -> Option<i32> {
    let (_, rest) = screen.rsplit_once(EXIT_MARK)?;
    rest.split_once('>')?.0.trim().parse().ok()
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exit_status_the_shell_printed() {
        assert_eq!(parse_exit("running\n"), None);
        assert_eq!(parse_exit("bye\n<program exited 3>\n"), Some(3));
        assert_eq!(parse_exit("<program exited 137>"), Some(137));
    }

    #[tokio::test]
    async fn reads_the_screen_types_keys_and_sees_the_exit() {
        let tmux = Tmux::start(
            &[
                "sh",
                "-c",
                "echo \"ready $GREETING\"; read line; echo \"got $line\"; exit 3",
            ],
            80,
            24,
            &[("GREETING", "hi")],
        )
        .expect("start tmux (is it installed?)");
        tmux.wait_for("ready hi", Duration::from_secs(10))
            .await
            .unwrap();
        // Still running: no exit status yet.
        assert_eq!(tmux.exit_status().unwrap(), None);
        tmux.send_keys(&["abc", "Enter"]).unwrap();
        tmux.wait_for("got abc", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(tmux.wait_exit(Duration::from_secs(10)).await.unwrap(), 3);
        // The last screen stays readable after the exit.
        assert!(tmux.capture().unwrap().contains("got abc"));
    }

    #[test]
    fn has_the_size_asked_for() {
        let tmux = Tmux::start(&["sh", "-c", "stty size; sleep 30"], 80, 24, &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut screen = String::new();
        while Instant::now() < deadline && !screen.contains("24 80") {
            std::thread::sleep(POLL);
            screen = tmux.capture().unwrap();
        }
        assert!(screen.contains("24 80"), "{screen}");
    }
}
