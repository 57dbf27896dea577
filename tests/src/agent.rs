//! A real `nodeagent` process per test: its config, state and logs in a temporary dir,
//! its stderr captured to a file (printed when the test fails), stopped on drop with
//! SIGTERM, then SIGKILL after 10 s, so that it never outlives the test.
//!
//! Nothing it started outlives it either: each agent runs with a marker of its own in
//! its environment ([`crate::mark`]), which its processes inherit through `PATH`; it
//! remembers every process group it has seen (in `list` replies, as its children, in
//! its `groups.log`); on drop, also after [`Agent::terminate`], [`Agent::kill`] or
//! [`Agent::wait_exit`], it kills those groups and then every process still marked.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::bins::{bin, ctl_json_output_url, ctl_ok_url, ctl_url, hermetic, CtlOutput};
use crate::nats::NatsServer;
use crate::procs;
use crate::wait::POLL;

/// How long an agent may take to answer its first ping.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM may take before the harness uses SIGKILL.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped, restartable) `nodeagent`.
pub struct Agent {
    name: String,
    nats_url: String,
    /// The URL the harness's ctl calls use (with credentials where the server wants
    /// them).
    ctl_url: String,
    /// Flags the harness's ctl calls put first (TLS files).
    ctl_flags: Vec<String>,
    /// The network namespace it runs in, if not the test's.
    netns: Option<String>,
    dir: tempfile::TempDir,
    config: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    /// In the environment of the agent and of everything it starts.
    marker: crate::mark::MarkGuard,
    /// Every process group seen: group id to the leader's start time, when known.
    groups: Mutex<BTreeMap<u32, Option<u64>>>,
    /// The binary run, when not the built one: a copy a test may replace.
    exe: Option<PathBuf>,
    /// Environment variables the agent gets besides the harness's.
    env: Vec<(String, String)>,
}

/// Copies `from` to `to` in a `cp` process: a file this process writes may be held open
/// for writing by a child another test thread forks meanwhile, and a binary open for
/// writing cannot be executed (ETXTBSY); `cp`'s own fds are nobody else's.
fn copy_by_cp(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cp: {e}"));
    assert!(
        status.success(),
        "cp {} {}: {status}",
        from.display(),
        to.display()
    );
}

/// The `[agent]` and `[nats]` tables the harness writes for `name`, with state and logs
/// under `dir`.
pub fn base_config(name: &str, nats_url: &str, dir: &Path) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{state}\"\nlog_dir = \"{logs}\"\n\n[nats]\nservers = [\"{nats_url}\"]\n\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    )
}

impl Agent {
    /// Starts agent `name` with the harness's `[agent]` and `[nats]` tables followed by
    /// `watchers_toml` (`[watcher.NAME]` tables). `{dir}` in the text stands for the
    /// agent's temporary dir.
    pub fn start(nats: &NatsServer, name: &str, watchers_toml: &str) -> Agent {
        Self::start_with(nats, name, &nats.url(), vec![], |dir| {
            format!(
                "{}{}",
                base_config(name, &nats.url(), dir),
                expand(watchers_toml, dir, &nats.url())
            )
        })
    }

    /// Starts an agent from a whole config. `{dir}` stands for the agent's temporary dir
    /// and `{nats_url}` for the server's URL; `[agent] name` must be set in the text.
    pub fn start_config(nats: &NatsServer, full_toml: &str) -> Agent {
        let name = config_name(full_toml);
        Self::start_with(nats, &name, &nats.url(), vec![], |dir| {
            expand(full_toml, dir, &nats.url())
        })
    }

    /// Like [`start_config`](Self::start_config) on a server that wants credentials or
    /// TLS: the harness's own `ctl` calls (the readiness ping, [`ctl`](Self::ctl)) use
    /// `ctl_url` (which may carry them: `nats://user:pass@host:port`) and put
    /// `ctl_flags` (such as `--tlsca FILE`) first.
    pub fn start_config_as(
        nats: &NatsServer,
        full_toml: &str,
        ctl_url: &str,
        ctl_flags: &[&str],
    ) -> Agent {
        let name = config_name(full_toml);
        let flags = ctl_flags.iter().map(|f| f.to_string()).collect();
        Self::start_with(nats, &name, ctl_url, flags, |dir| {
            expand(full_toml, dir, &nats.url())
        })
    }

    /// Like [`start_config`](Self::start_config), with `env` in the agent's
    /// environment (`NOTIFY_SOCKET`, say).
    pub fn start_config_env(nats: &NatsServer, full_toml: &str, env: &[(&str, &str)]) -> Agent {
        let name = config_name(full_toml);
        let mut agent = Self::prepare(nats, &name, &nats.url(), vec![], |dir| {
            expand(full_toml, dir, &nats.url())
        });
        agent.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        agent.spawn();
        agent
    }

    /// Like [`start_config`](Self::start_config), but the agent runs inside `net` (as
    /// on another host); `{nats_url}` should then be the server on `net`'s host side.
    pub fn start_config_in(nats: &NatsServer, full_toml: &str, net: &crate::NetNs) -> Agent {
        let name = config_name(full_toml);
        let mut agent = Self::prepare(nats, &name, &nats.url(), vec![], |dir| {
            expand(full_toml, dir, &nats.url())
        });
        agent.netns = Some(net.name().to_owned());
        agent.spawn();
        agent
    }

    fn start_with(
        nats: &NatsServer,
        name: &str,
        ctl_url: &str,
        ctl_flags: Vec<String>,
        text: impl FnOnce(&Path) -> String,
    ) -> Agent {
        let mut agent = Self::prepare(nats, name, ctl_url, ctl_flags, text);
        agent.spawn();
        agent
    }

    /// Writes the config into a new temporary dir; the agent is not started yet.
    fn prepare(
        nats: &NatsServer,
        name: &str,
        ctl_url: &str,
        ctl_flags: Vec<String>,
        text: impl FnOnce(&Path) -> String,
    ) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-agent-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir: {e}"));
        let config = dir.path().join("node.toml");
        std::fs::write(&config, text(dir.path()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        Agent {
            name: name.to_owned(),
            nats_url: nats.url(),
            ctl_url: ctl_url.to_owned(),
            ctl_flags,
            netns: None,
            stderr: dir.path().join("agent.stderr"),
            dir,
            config,
            child: None,
            marker: crate::mark::MarkGuard::new(),
            groups: Mutex::new(BTreeMap::new()),
            exe: None,
            env: vec![],
        }
    }

    /// Like [`start_config`](Self::start_config), but the agent runs from a copy of the
    /// built binary in its temporary dir ([`exe`](Self::exe)), which the test may
    /// replace, as an upgrade does.
    pub fn start_config_copied(nats: &NatsServer, full_toml: &str) -> Agent {
        let name = config_name(full_toml);
        let mut agent = Self::prepare(nats, &name, &nats.url(), vec![], |dir| {
            expand(full_toml, dir, &nats.url())
        });
        let exe = agent.dir.path().join("bin").join("nodeagent");
        std::fs::create_dir_all(exe.parent().unwrap_or(agent.dir.path()))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", exe.display()));
        copy_by_cp(&bin("nodeagent"), &exe);
        agent.exe = Some(exe);
        agent.spawn();
        agent
    }

    /// The binary this agent runs from (a copy, with [`start_config_copied`]).
    ///
    /// [`start_config_copied`]: Self::start_config_copied
    pub fn exe(&self) -> PathBuf {
        self.exe.clone().unwrap_or_else(|| bin("nodeagent"))
    }

    /// Replaces the file at [`exe`](Self::exe) (a new inode, as a package upgrade does)
    /// with `contents` and `mode`.
    pub fn replace_exe(&self, contents: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let exe = self.exe();
        let src = exe.with_extension("src");
        let tmp = exe.with_extension("new");
        std::fs::write(&src, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", src.display()));
        let _ = std::fs::remove_file(&tmp);
        copy_by_cp(&src, &tmp);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &exe)
            .unwrap_or_else(|e| panic!("cannot replace {}: {e}", exe.display()));
    }

    /// Starts the agent again, with the same config file and state dir, after it was
    /// stopped with [`terminate`](Self::terminate) or [`kill`](Self::kill).
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "agent {} is still running; terminate it first",
            self.name
        );
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.stderr.display()));
        let out = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone a file handle: {e}"));
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = hermetic("ip");
                c.args(["netns", "exec", ns]).arg(bin("nodeagent"));
                c
            }
            None => hermetic(self.exe()),
        };
        crate::mark::apply(&mut cmd, self.marker.marker());
        cmd.arg("-c")
            .arg(&self.config)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .current_dir(self.dir.path());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nodeagent: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "agent {} exited before answering ({status}); its stderr:\n{}",
                        self.name,
                        self.stderr_log()
                    );
                }
            }
            if self.ctl(&["--timeout", "2s", "ping"]).code == 0 {
                return;
            }
            if start.elapsed() > crate::wait::bound(READY_TIMEOUT) {
                panic!(
                    "agent {} did not answer a ping within {READY_TIMEOUT:?}; its stderr:\n{}",
                    self.name,
                    self.stderr_log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's pid; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("agent {} is not running", self.name))
    }

    /// The temporary dir holding the config, `state/`, `logs/` and `agent.stderr`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The state dir in the config the harness writes.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The agent's own log lines that contain every one of `needles`, each with its
    /// timestamp as Unix time (the agent logs in RFC 3339, UTC). For state changes,
    /// read them here rather than catch them with ctl polls in a narrow window.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<(f64, String)> {
        self.stderr_log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .filter_map(|l| Some((rfc3339_unix(l.split_whitespace().next()?)?, l.to_owned())))
            .collect()
    }

    /// Waits (bounded) for a log line containing every one of `needles`; its time.
    pub fn wait_log(&self, timeout: Duration, needles: &[&str]) -> f64 {
        crate::wait::wait_for(
            timeout,
            &format!("agent {} to log {needles:?}", self.name),
            || self.log_lines(needles).first().map(|(t, _)| *t),
        )
    }

    /// Replaces the config file with the harness's `[agent]` and `[nats]` tables and
    /// `watchers_toml` (`{dir}` expanded), e.g. before `reloadconfig`.
    pub fn write_watchers(&self, watchers_toml: &str) {
        let text = format!(
            "{}{}",
            base_config(&self.name, &self.nats_url, self.dir()),
            expand(watchers_toml, self.dir(), &self.nats_url)
        );
        self.write_config(&text);
    }

    /// Replaces the config file with `full_toml` (`{dir}` and `{nats_url}` expanded).
    pub fn write_config(&self, full_toml: &str) {
        std::fs::write(&self.config, expand(full_toml, self.dir(), &self.nats_url))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config.display()));
    }

    /// The live processes the agent supervises (its direct children).
    pub fn children(&self) -> Vec<u32> {
        let kids = procs::children_pids(self.pid());
        self.remember(&kids);
        kids
    }

    /// The agent's children that still run: a zombie the agent has not reaped yet (its
    /// stop already finished, the agent's wait task not yet scheduled) is left out.
    pub fn running_children(&self) -> Vec<u32> {
        self.children()
            .into_iter()
            .filter(|p| procs::stat(*p).is_some_and(|s| !s.is_dead()))
            .collect()
    }

    /// The marker in the environment of the agent and of what it starts.
    pub fn marker(&self) -> &str {
        self.marker.marker()
    }

    /// Notes the process groups of `pids` (alive ones) to kill on drop.
    pub fn remember(&self, pids: &[u32]) {
        let own = procs::pgrp_of(std::process::id());
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for pid in pids {
            let Some(st) = procs::stat(*pid).filter(|s| !s.is_dead()) else {
                continue;
            };
            if st.pgrp > 1 && Some(st.pgrp) != own {
                let leader = procs::stat(st.pgrp).map(|l| l.start_ticks);
                groups.entry(st.pgrp).or_insert(leader);
            }
        }
    }

    /// Notes the processes a reply names (`processes[].pid`, `pids`).
    fn remember_reply(&self, r: &Value) {
        let mut pids: Vec<u32> = vec![];
        if let Some(ps) = r["processes"].as_array() {
            pids.extend(
                ps.iter()
                    .filter_map(|p| p["pid"].as_u64())
                    .map(|p| p as u32),
            );
        }
        if let Some(ps) = r["pids"].as_array() {
            pids.extend(ps.iter().filter_map(Value::as_u64).map(|p| p as u32));
        }
        self.remember(&pids);
    }

    /// Kills every remembered group that is still ours (a member carries the marker, or
    /// its leader is the very process seen), the groups in the agent's `groups.log`,
    /// then every process still marked.
    fn kill_leftovers(&self) {
        let own = procs::pgrp_of(std::process::id());
        let mut groups =
            std::mem::take(&mut *self.groups.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in [self.state_dir(), self.dir.path().join("logs")] {
            let text = std::fs::read_to_string(dir.join("groups.log")).unwrap_or_default();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                if f.next() == Some("+") {
                    if let (Some(Ok(g)), Some(Ok(t))) = (
                        f.next().map(str::parse::<u32>),
                        f.next().map(str::parse::<u64>),
                    ) {
                        groups.entry(g).or_insert(Some(t));
                    }
                }
            }
        }
        for (g, leader) in groups {
            if g <= 1 || Some(g) == own {
                continue;
            }
            let members = procs::group_members(g);
            let same_leader = leader.is_some()
                && procs::stat(g)
                    .filter(|s| !s.is_dead())
                    .map(|s| s.start_ticks)
                    == leader;
            let ours = same_leader
                || members
                    .iter()
                    .any(|p| procs::environ_contains(*p, self.marker.marker()));
            if ours && !members.is_empty() {
                let _ = killpg(Pid::from_raw(g as i32), Signal::SIGKILL);
            }
        }
        crate::mark::kill_marked(self.marker.marker());
    }

    /// Runs `ctl --node NAME ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut all: Vec<&str> = self.ctl_flags.iter().map(String::as_str).collect();
        all.extend(["--node", &self.name]);
        all.extend_from_slice(args);
        ctl_url(&self.ctl_url, &all)
    }

    /// Runs `ctl --node NAME --json ARGS...`; see [`crate::ctl_json`].
    pub fn ctl_json(&self, args: &[&str]) -> (CtlOutput, Vec<Value>) {
        let mut all: Vec<&str> = self.ctl_flags.iter().map(String::as_str).collect();
        all.extend(["--node", &self.name]);
        all.extend_from_slice(args);
        let (out, replies) = ctl_json_output_url(&self.ctl_url, &all);
        replies.iter().for_each(|r| self.remember_reply(r));
        (out, replies)
    }

    /// Runs `ctl --node NAME --json ARGS...` and returns its one `ok` reply; see
    /// [`crate::ctl_ok`].
    pub fn ctl_ok(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = self.ctl_flags.iter().map(String::as_str).collect();
        all.extend(["--node", &self.name]);
        all.extend_from_slice(args);
        let r = ctl_ok_url(&self.ctl_url, &all);
        self.remember_reply(&r);
        r
    }

    /// The live pids of a watcher as (wid, pid), from `ctl list WATCHER`.
    pub fn pids(&self, watcher: &str) -> Vec<(u32, u32)> {
        let r = self.ctl_ok(&["list", watcher]);
        r["processes"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| Some((p["wid"].as_u64()? as u32, p["pid"].as_u64()? as u32)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the agent to exit (SIGKILL after
    /// [`TERM_TIMEOUT`]); returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop(Signal::SIGTERM)
    }

    /// Sends SIGKILL and reaps the agent; returns how it exited.
    pub fn kill(&mut self) -> ExitStatus {
        self.stop(Signal::SIGKILL)
    }

    /// Waits (bounded) for an agent that was told to quit some other way, e.g. `ctl quit`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let timeout = crate::wait::bound(timeout);
        if let Some(c) = &self.child {
            self.remember(&procs::children_pids(c.id()));
        }
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("agent {} is not running", self.name));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent {} did not exit within {timeout:?}; its stderr:\n{}",
                    self.name,
                    self.stderr_log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn stop(&mut self, sig: Signal) -> ExitStatus {
        if let Some(c) = &self.child {
            self.remember(&procs::children_pids(c.id()));
        }
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("agent {} is not running", self.name));
        let status = stop_child(&mut child, sig, false);
        status.unwrap_or_else(|| {
            panic!(
                "agent {} ignored SIGTERM for {TERM_TIMEOUT:?} and was killed; its stderr:\n{}",
                self.name,
                self.stderr_log()
            )
        })
    }
}

/// Sends `sig`, waits up to [`TERM_TIMEOUT`], then SIGKILLs. `None` when it had to kill.
/// With `cleanup`, the process groups the agent ran are killed too once it is gone, so
/// that nothing of a test survives it even when the agent did not stop them (tests that
/// check for orphans stop the agent without it).
fn stop_child(child: &mut Child, sig: Signal, cleanup: bool) -> Option<ExitStatus> {
    let groups: Vec<u32> = if cleanup {
        procs::children_pids(child.id())
            .into_iter()
            .filter_map(procs::pgrp_of)
            .collect()
    } else {
        vec![]
    };
    let pid = Pid::from_raw(child.id() as i32);
    if let Ok(Some(status)) = child.try_wait() {
        kill_groups(&groups);
        return Some(status);
    }
    let _ = kill(pid, sig);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < crate::wait::bound(TERM_TIMEOUT) => {
                std::thread::sleep(POLL)
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    kill_groups(&groups);
    status
}

fn kill_groups(groups: &[u32]) {
    for g in groups {
        if *g > 1 {
            let _ = killpg(Pid::from_raw(*g as i32), Signal::SIGKILL);
        }
    }
}

fn expand(text: &str, dir: &Path, nats_url: &str) -> String {
    text.replace("{dir}", &dir.display().to_string())
        .replace("{nats_url}", nats_url)
}

impl Drop for Agent {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if let Some(mut child) = self.child.take() {
            self.remember(&procs::children_pids(child.id()));
            let _ = stop_child(&mut child, Signal::SIGTERM, true);
        }
        self.kill_leftovers();
        if failed {
            eprintln!(
                "----- agent {} ({}) stderr -----\n{}----- end of agent {} stderr -----",
                self.name,
                self.dir.path().display(),
                self.stderr_log(),
                self.name
            );
        }
    }
}

/// `2026-11-30T12:56:24.019768Z` as Unix time.
pub fn rfc3339_unix(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut h = time.split(':');
    let (hh, mm) = (
        h.next()?.parse::<i64>().ok()?,
        h.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = h.next()?.parse().ok()?;
    // Days from the civil date (proleptic Gregorian), after H. Hinnant.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// The `name = "..."` of a whole config.
fn config_name(full_toml: &str) -> String {
    full_toml
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("the config has no name = \"...\":\n{full_toml}"))
}
