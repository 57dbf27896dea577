//! Running the workspace's real binaries (`ctl`, `nodeagent`) as separate processes,
//! each bounded in time, with their exit code and output.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::nats::NatsServer;
use crate::schema::validate_reply;
use crate::wait::wait_until;

/// How long one `ctl` run may take before the harness kills it and fails the test.
pub const CTL_DEADLINE: Duration = Duration::from_secs(90);

/// The directory of the built binaries: the test executable is
/// `target/debug/deps/e2e-HASH`, the binaries are in `target/debug/`.
pub fn bin_dir() -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the test executable: {e}"));
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()))
}

/// The path of a workspace binary, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A command with an environment that cannot leak into the test: no NATS settings or
/// prefix from the caller's shell. It carries the run's shared marker
/// ([`crate::mark`]), so that it is found and counted should it outlive the test.
pub fn hermetic(program: impl Into<PathBuf>) -> Command {
    let mut cmd = Command::new(program.into());
    crate::mark::apply(&mut cmd, &crate::mark::shared_marker());
    for var in [
        "NATS_URL",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "NATS_CREDS",
        "NATS_CA",
        "NATS_CERT",
        "NATS_KEY",
        "CLUSTER_PREFIX",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// How a finished binary ended.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The exit code; -1 when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CtlOutput {
    /// Panics with the whole output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "{what}: expected exit code {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// The human table on stdout, parsed; see [`parse_table`].
    pub fn table(&self) -> Vec<BTreeMap<String, String>> {
        parse_table(&self.stdout)
    }

    /// Each stdout line parsed as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "stdout line is not JSON ({e}): {l:?}\nstderr:\n{}",
                        self.stderr
                    )
                })
            })
            .collect()
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Parses an aligned table as ctl prints it: a header line of upper-case column names,
/// then one line per row, each cell starting where its column's name starts (the last
/// column may be empty and is then trimmed). Each row maps column name to cell; lines
/// before the header are skipped.
pub fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().skip_while(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.is_empty()
            || !words
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '%'))
    });
    let Some(header) = lines.next() else {
        return vec![];
    };
    // Column names are separated by two spaces or more ("LAST EXIT" is one name).
    let chars: Vec<char> = header.chars().collect();
    let mut cols: Vec<(usize, String)> = vec![];
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !(chars[i] == ' ' && chars.get(i + 1).is_none_or(|c| *c == ' ')) {
            i += 1;
        }
        cols.push((start, chars[start..i].iter().collect()));
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let row: Vec<char> = l.chars().collect();
            cols.iter()
                .enumerate()
                .map(|(k, (start, name))| {
                    let end = cols
                        .get(k + 1)
                        .map_or(row.len(), |(s, _)| *s)
                        .min(row.len());
                    let cell: String = row.get(*start..end).unwrap_or_default().iter().collect();
                    (name.clone(), cell.trim().to_owned())
                })
                .collect()
        })
        .collect()
}

/// A child process killed (and reaped) when dropped, also when the test panics: every
/// `ctl` a test spawns itself goes in one.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A long-running `ctl` (events, logs -f) whose stdout lines arrive on a channel;
/// killed on drop.
pub struct CtlLines {
    pub child: KillOnDrop,
    rx: std::sync::mpsc::Receiver<String>,
}

impl CtlLines {
    /// Spawns `ctl -s URL ARGS...` and reads its stdout line by line.
    pub fn spawn(url: &str, args: &[&str]) -> CtlLines {
        use std::io::BufRead;
        let mut child = spawn_ctl(url, args);
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CtlLines { child, rx }
    }

    /// The next line matching `f` within `timeout` (scaled by the slack); the lines read
    /// on the way are dropped.
    pub fn find_line(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        self.find(timeout, &mut Vec::new(), f)
    }

    /// The next line matching `f` within `timeout` (scaled by the slack); the lines read
    /// on the way are returned too, in `skipped`.
    pub fn find(
        &self,
        timeout: Duration,
        skipped: &mut Vec<String>,
        f: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + crate::wait::bound(timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if f(&l) => return Some(l),
                Ok(l) => skipped.push(l),
                Err(_) => return None,
            }
        }
    }
}

/// Spawns `ctl -s URL ARGS...` with piped stdout and stderr, guarded.
pub fn spawn_ctl(url: &str, args: &[&str]) -> KillOnDrop {
    let mut cmd = hermetic(bin("ctl"));
    cmd.arg("-s")
        .arg(url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    KillOnDrop(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot run ctl: {e}")),
    )
}

/// Runs `cmd` to the end, killing it after `deadline` (scaled by
/// [`crate::wait::slack`]).
pub fn run(mut cmd: Command, deadline: Duration) -> CtlOutput {
    let deadline = crate::wait::bound(deadline);
    let start = Instant::now();
    let mut child = KillOnDrop(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
    );
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > deadline => {
                drop(child);
                panic!("{cmd:?} did not finish within {deadline:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("cannot wait for {cmd:?}: {e}"),
        }
    };
    let took = start.elapsed();
    CtlOutput {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took,
    }
}

/// Runs the real `ctl -s URL ARGS...`.
pub fn ctl(nats: &NatsServer, args: &[&str]) -> CtlOutput {
    ctl_url(&nats.url(), args)
}

/// Runs the real `ctl -s URL ARGS...` against any server URL.
pub fn ctl_url(url: &str, args: &[&str]) -> CtlOutput {
    let mut cmd = hermetic(bin("ctl"));
    cmd.arg("-s").arg(url).args(args);
    run(cmd, CTL_DEADLINE)
}

/// The command a ctl argument list runs (the first argument that is neither an option
/// nor an option's value), in its protocol name.
pub fn command_of<'a>(args: &[&'a str]) -> Option<&'a str> {
    const TAKES_VALUE: &[&str] = &[
        "-s",
        "--server",
        "--prefix",
        "-n",
        "--node",
        "-t",
        "--tag",
        "--service",
        "--timeout",
        "--user",
        "--password",
        "--token",
        "--creds",
        "--tlsca",
        "--tlscert",
        "--tlskey",
    ];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if TAKES_VALUE.contains(a) {
            it.next();
        } else if !a.starts_with('-') {
            // Aliases travel as the command they stand for.
            return Some(match *a {
                "resize" => "numprocesses",
                "info" => "ping",
                other => other,
            });
        }
    }
    None
}

/// (name, state) of every member, as whichever agent answers `ctl members` sees them;
/// empty when none answered.
pub fn member_states(url: &str) -> Vec<(String, String)> {
    let (out, replies) = ctl_json_output_url(url, &["--timeout", "2s", "members"]);
    if out.code != 0 || replies.is_empty() {
        return vec![];
    }
    replies[0]["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to `within`) until 3 answers of `ctl members` in a row show every one of
/// `names` alive: every agent then knows the others, and a command to `--all` reaches
/// them all.
pub fn wait_all_alive(url: &str, names: &[&str], within: Duration) {
    let mut in_a_row = 0;
    wait_until(within, &format!("{names:?} all alive"), || {
        let s = member_states(url);
        let ok = names
            .iter()
            .all(|n| s.iter().any(|(m, st)| m == n && st == "alive"));
        in_a_row = if ok { in_a_row + 1 } else { 0 };
        in_a_row >= 3
    });
}

/// Waits (up to `within`) until every agent has logged every other one as a member
/// (joined, alive or rejoined): then any of them answers `members` with all of them,
/// whichever the queue group picks, and a command to `--all` reaches them all.
pub fn wait_all_know_each_other(agents: &[&crate::Agent], within: Duration) {
    for a in agents {
        for b in agents {
            if a.name() == b.name() {
                continue;
            }
            let who = format!("member=\"{}\"", b.name());
            wait_until(
                within,
                &format!("{} to know {}", a.name(), b.name()),
                || {
                    a.log_lines(&[&who]).iter().any(|(_, l)| {
                        ["member joined", "member alive", "member rejoined"]
                            .iter()
                            .any(|k| l.contains(k))
                    })
                },
            );
        }
    }
}

/// Runs `ctl --json ARGS...` and returns one JSON value per stdout line, each checked
/// against its command's reply schema. The exit code is not checked (error replies are
/// printed too); see [`ctl_ok`].
pub fn ctl_json(nats: &NatsServer, args: &[&str]) -> Vec<Value> {
    ctl_json_output(nats, args).1
}

/// [`ctl_json`], also returning the run itself.
pub fn ctl_json_output(nats: &NatsServer, args: &[&str]) -> (CtlOutput, Vec<Value>) {
    ctl_json_output_url(&nats.url(), args)
}

/// [`ctl_json_output`] against any server URL.
pub fn ctl_json_output_url(url: &str, args: &[&str]) -> (CtlOutput, Vec<Value>) {
    let command = command_of(args).unwrap_or_else(|| panic!("no command in ctl args {args:?}"));
    // Before the arguments: anything after `--` (add's command line) is not an option.
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl_url(url, &all);
    let replies = out.json_lines();
    for r in &replies {
        assert!(r.is_object(), "a reply line is not a JSON object: {r}");
        validate_reply(command, r);
    }
    (out, replies)
}

/// Runs `ctl --json ARGS...` for one target and returns its reply, failing the test
/// unless ctl exited 0 with exactly one `ok` reply.
pub fn ctl_ok(nats: &NatsServer, args: &[&str]) -> Value {
    ctl_ok_url(&nats.url(), args)
}

/// [`ctl_ok`] against any server URL.
pub fn ctl_ok_url(url: &str, args: &[&str]) -> Value {
    let (out, mut replies) = ctl_json_output_url(url, args);
    out.expect_code(0, &format!("ctl {}", args.join(" ")));
    assert_eq!(replies.len(), 1, "expected one reply: {}", out.stdout);
    let r = replies.remove(0);
    assert_eq!(r["status"], "ok", "{r}");
    r
}

/// Runs the real `nodeagent ARGS...` to its end (for `--check` and bad configs).
pub fn nodeagent(args: &[&str], deadline: Duration) -> CtlOutput {
    let mut cmd = hermetic(bin("nodeagent"));
    cmd.args(args);
    run(cmd, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_table_by_column() {
        let text = "WID  PID   STATE    AGE  RESTARTS  LAST EXIT\n\
                    1    4242  running  3s   0\n\
                    2    -     stopped  -    12        code 1\n";
        let t = parse_table(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["PID"], "4242");
        assert_eq!(t[0]["LAST EXIT"], "");
        assert_eq!(t[1]["STATE"], "stopped");
        assert_eq!(t[1]["RESTARTS"], "12");
        assert_eq!(t[1]["LAST EXIT"], "code 1");
        assert!(parse_table("no processes\n").is_empty());
    }

    #[test]
    fn finds_the_command_among_options() {
        assert_eq!(command_of(&["--node", "a", "status"]), Some("status"));
        assert_eq!(
            command_of(&["-n", "a", "-n", "b", "incr", "w"]),
            Some("incr")
        );
        assert_eq!(
            command_of(&["--timeout", "1s", "--json", "resize", "w", "3"]),
            Some("numprocesses")
        );
        assert_eq!(command_of(&["--node", "a"]), None);
    }
}
