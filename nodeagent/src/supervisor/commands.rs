//! The command handlers: each checks a command against the watchers and the node's
//! limits, changes the model through the lifecycle, and answers with a
//! [`Effect::Reply`] (at once, or through a wait). It must not perform effects: no
//! signals, processes or persistence of its own, only effects for the actor.

use std::collections::BTreeMap;

use nix::sys::signal::Signal;
use protocol::command::{
    AddProps, Command, GetProps, Numprocesses, Resize, SetProps, SignalProps, StartStop,
};
use protocol::options::OPTION_NAMES;
use protocol::reply::{
    ActionData, ListData, NumprocessesData, NumwatchersData, OptionsData, ReloadData, ReplyData,
    SocketInfo, SocketsData, StatusData, WatcherState,
};
use protocol::{Errno, WatcherOptions};
use serde_json::Value;

use super::model::{Effect, ReplyId, Slot, Supervisor, Watcher};
use super::{data, gone, CmdError, Outcome};
use crate::config::{parse_signal, WatcherConfig};
use crate::sockets::SocketSet;

/// What runs, as whom, with what environment, and where it writes: options only a node
/// that allows remote exec lets a client set.
const EXEC_KEYS: &[&str] = &[
    "cmd",
    "args",
    "env",
    "copy_env",
    "uid",
    "gid",
    "health_cmd",
    "working_dir",
    "sockets",
];

fn unknown_watcher(name: &str) -> CmdError {
    CmdError::new(
        Errno::UnknownWatcher,
        format!("unknown watcher '{name}'; `ctl list` shows the watchers of a node"),
    )
}

fn unknown_option(bad: &str) -> CmdError {
    CmdError::new(
        Errno::BadOption,
        format!(
            "unknown option '{bad}'; options are: {}",
            OPTION_NAMES.join(", ")
        ),
    )
}

/// A watcher's config from options sent over NATS; every problem in one error.
fn watcher_config(name: &str, options: &WatcherOptions) -> Result<WatcherConfig, CmdError> {
    WatcherConfig::from_options(name, options).map_err(|problems| {
        let all: Vec<String> = problems
            .iter()
            .map(|p| match p.location.rsplit_once(' ') {
                Some((_, key)) if !key.is_empty() => format!("option '{key}': {}", p.message),
                _ => p.to_string(),
            })
            .collect();
        CmdError::new(Errno::BadOption, all.join("; "))
    })
}

/// What a handler does with the command's reply.
enum Answer {
    /// Reply now.
    Now(Outcome),
    /// Reply once these watchers have settled.
    Settled(Vec<String>),
    /// The handler has replied (or will).
    Done,
}

/// A handler's typed data (or error), answered now.
impl<T: Into<ReplyData>> From<Result<T, CmdError>> for Answer {
    fn from(r: Result<T, CmdError>) -> Answer {
        Answer::Now(r.map(Into::into))
    }
}

impl Supervisor {
    /// Runs one watcher command and answers `reply`.
    pub(super) fn command(&mut self, command: Command, reply: ReplyId) {
        let answer = if self.shutting_down {
            Answer::Now(Err(gone()))
        } else {
            self.handle(command, reply)
        };
        match answer {
            Answer::Now(outcome) => self.reply(reply, outcome),
            Answer::Settled(names) => self.wait_settled(names, reply),
            Answer::Done => {}
        }
    }

    fn handle(&mut self, command: Command, reply: ReplyId) -> Answer {
        match command {
            Command::Status(p) => self.status(&p.name).into(),
            Command::List(p) => self.list(p.name.as_deref()).into(),
            Command::Start(StartStop { name, waiting }) => {
                self.act(&name, waiting, Supervisor::start_watcher)
            }
            Command::Stop(StartStop { name, waiting }) => {
                self.act(&name, waiting, Supervisor::stop_watcher)
            }
            Command::Restart(r) | Command::Reload(r) => {
                self.act(&r.name, r.waiting, Supervisor::restart_watcher)
            }
            Command::Incr(Resize { name, nb }) => {
                self.resize(&name, |n| n.saturating_add(nb)).into()
            }
            Command::Decr(Resize { name, nb }) => {
                self.resize(&name, |n| n.saturating_sub(nb)).into()
            }
            Command::Numprocesses(Numprocesses { name, nb: Some(nb) }) => {
                self.resize(&name, |_| nb).into()
            }
            Command::Numprocesses(Numprocesses { name, nb: None }) => self
                .watcher(&name)
                .map(|w| NumprocessesData {
                    numprocesses: w.cfg.numprocesses,
                })
                .into(),
            Command::Numwatchers(_) => Answer::Now(data(NumwatchersData {
                numwatchers: self.watchers.values().filter(|w| !w.removing).count() as u32,
            })),
            Command::Signal(p) => match self.signal(p, reply) {
                Ok(()) => Answer::Done,
                Err(e) => Answer::Now(Err(e)),
            },
            Command::Options(p) => self
                .watcher(&p.name)
                .map(|w| OptionsData {
                    options: w.cfg.to_options(),
                })
                .into(),
            Command::Get(p) => self.get(p).into(),
            Command::Listsockets(_) => Answer::Now(data(self.list_sockets())),
            Command::Set(p) => self
                .set(p)
                .map_or_else(|e| Answer::Now(Err(e)), Answer::Settled),
            Command::Add(p) => self
                .add(*p)
                .map_or_else(|e| Answer::Now(Err(e)), Answer::Settled),
            Command::Rm(p) => match self.watcher(&p.name) {
                Err(e) => Answer::Now(Err(e)),
                Ok(_) => {
                    self.remove_watcher(&p.name);
                    self.persist();
                    if p.waiting {
                        Answer::Settled(vec![p.name])
                    } else {
                        Answer::Now(data(ActionData {
                            statuses: BTreeMap::new(),
                            pids: None,
                        }))
                    }
                }
            },
            // The agent's own commands: the transport answers them.
            agent @ (Command::Reloadconfig(_)
            | Command::Dstats(_)
            | Command::Quit(_)
            | Command::Ping(_)
            | Command::Stats(_)
            | Command::Members(_)
            | Command::Logs(_)) => Answer::Now(Err(CmdError::new(
                Errno::CommandFailed,
                format!("'{}' is not a watcher command", agent.name()),
            ))),
        }
    }

    /// The named watcher, or all by priority (without those being removed).
    fn targets(&self, name: &Option<String>) -> Result<Vec<String>, CmdError> {
        match name {
            Some(n) if self.watchers.contains_key(n) => Ok(vec![n.clone()]),
            Some(n) => Err(unknown_watcher(n)),
            None => {
                let mut v: Vec<(std::cmp::Reverse<i32>, String)> = self
                    .watchers
                    .iter()
                    .filter(|(_, w)| !w.removing)
                    .map(|(n, w)| (std::cmp::Reverse(w.cfg.priority), n.clone()))
                    .collect();
                v.sort();
                Ok(v.into_iter().map(|(_, n)| n).collect())
            }
        }
    }

    pub(super) fn watcher(&self, name: &str) -> Result<&Watcher, CmdError> {
        self.watchers
            .get(name)
            .filter(|w| !w.removing)
            .ok_or_else(|| unknown_watcher(name))
    }

    pub(super) fn statuses(&self, names: &[String]) -> BTreeMap<String, WatcherState> {
        names
            .iter()
            .filter_map(|n| self.watchers.get(n).map(|w| (n.clone(), w.state())))
            .collect()
    }

    fn status(&self, name: &Option<String>) -> Result<StatusData, CmdError> {
        let names = self.targets(name)?;
        let ws: Vec<&Watcher> = names.iter().filter_map(|n| self.watchers.get(n)).collect();
        Ok(StatusData {
            statuses: ws.iter().map(|w| (w.cfg.name.clone(), w.state())).collect(),
            watchers: ws.iter().map(|w| w.summary()).collect(),
        })
    }

    fn list(&self, name: Option<&str>) -> Result<ListData, CmdError> {
        let Some(n) = name else {
            return Ok(ListData {
                watchers: Some(self.targets(&None).unwrap_or_default()),
                pids: None,
                processes: None,
            });
        };
        let w = self.watcher(n)?;
        Ok(ListData {
            watchers: None,
            pids: Some(
                w.slots
                    .values()
                    .flat_map(Slot::processes)
                    .filter_map(|s| s.pid.filter(|_| s.alive()))
                    .collect(),
            ),
            processes: Some(
                w.slots
                    .values()
                    .flat_map(Slot::processes)
                    .map(Slot::info)
                    .collect(),
            ),
        })
    }

    /// Applies `op` to the named watcher (or all, by priority), persists, and replies
    /// at once or, with `wait`, once the watchers have settled.
    fn act(&mut self, name: &Option<String>, wait: bool, op: fn(&mut Supervisor, &str)) -> Answer {
        let names = match self.targets(name) {
            Ok(names) => names,
            Err(e) => return Answer::Now(Err(e)),
        };
        for n in &names {
            op(self, n);
        }
        self.persist();
        if wait {
            Answer::Settled(names)
        } else {
            Answer::Now(data(ActionData {
                statuses: self.statuses(&names),
                pids: None,
            }))
        }
    }

    fn resize(
        &mut self,
        name: &str,
        f: impl FnOnce(u32) -> u32,
    ) -> Result<NumprocessesData, CmdError> {
        let old = self.watcher(name)?.cfg.numprocesses;
        let n = f(old);
        if let Err(m) = crate::config::check_count("numprocesses", n.into()) {
            return Err(CmdError::new(
                Errno::BadOption,
                format!("option 'numprocesses': {m}"),
            ));
        }
        if n > old {
            self.check_node_limit(name, n)?;
        }
        if let Some(w) = self.watchers.get_mut(name) {
            w.cfg.numprocesses = n;
        }
        self.ensure(name);
        self.persist();
        Ok(NumprocessesData { numprocesses: n })
    }

    /// Refuses a watcher `name` asking for `n` processes when all watchers together
    /// would ask for more than the node's `max_processes`.
    fn check_node_limit(&self, name: &str, n: u32) -> Result<(), CmdError> {
        let others = self
            .watchers
            .iter()
            .filter(|(other, w)| other.as_str() != name && !w.removing)
            .fold(0u64, |sum, (_, w)| {
                sum.saturating_add(w.cfg.numprocesses.into())
            });
        let total = others.saturating_add(n.into());
        let max = self.limits.max_processes;
        if total > u64::from(max) {
            return Err(CmdError::new(
                Errno::BadOption,
                format!(
                    "node '{}' allows at most {max} processes (max_processes), and its watchers \
                     would ask for {total}; lower numprocesses somewhere or raise [agent] \
                     max_processes in the node's config",
                    self.limits.node
                ),
            ));
        }
        Ok(())
    }

    /// Checks a `signal` command; the actor sends the signals and replies.
    fn signal(&mut self, p: SignalProps, reply: ReplyId) -> Result<(), CmdError> {
        let w = self.watcher(&p.name)?;
        let signal = match &p.signum {
            protocol::command::SignalSpec::Number(n) => {
                Signal::try_from(*n).map_err(|_| format!("{n} is not a signal number"))
            }
            protocol::command::SignalSpec::Name(s) => parse_signal(s),
        }
        .map_err(|m| CmdError::new(Errno::BadOption, m))?;
        let pids: Vec<u32> = w
            .slots
            .values()
            .flat_map(Slot::processes)
            .filter(|s| s.alive())
            .filter_map(|s| s.pid)
            .collect();
        let pids = match p.pid {
            Some(pid) if pids.contains(&pid) => vec![pid],
            Some(pid) => {
                return Err(CmdError::new(
                    Errno::BadOption,
                    format!(
                        "pid {pid} is not a process of watcher '{}'; `ctl list {}` shows its pids",
                        p.name, p.name
                    ),
                ))
            }
            None => pids,
        };
        let outcome = data(ActionData {
            statuses: self.statuses(std::slice::from_ref(&p.name)),
            pids: Some(pids.clone()),
        });
        self.out.push(Effect::SignalProcesses {
            pids,
            signal,
            leader_only: p.leader_only,
            to: reply,
            outcome,
        });
        Ok(())
    }

    fn get(&self, p: GetProps) -> Result<OptionsData, CmdError> {
        let w = self.watcher(&p.name)?;
        if let Some(bad) = p.keys.iter().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
            return Err(unknown_option(bad));
        }
        let options = w.cfg.to_options().only(&p.keys);
        Ok(OptionsData { options })
    }

    fn remote_exec_refused(&self, what: &str) -> Option<CmdError> {
        (!self.limits.allow_remote_exec).then(|| {
            CmdError::new(
                Errno::Forbidden,
                format!(
                    "{what} would start a program remotely, and node '{}' does not allow it; \
                     set allow_remote_exec = true in its [agent] config to permit it",
                    self.limits.node
                ),
            )
        })
    }

    /// Refuses options a client may not set on this node, or values out of range.
    fn check_set(&self, options: &BTreeMap<String, Value>) -> Result<(), CmdError> {
        if let Some(bad) = options.keys().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
            return Err(unknown_option(bad));
        }
        let file_key = |(k, v): &(&String, &Value)| {
            matches!(k.as_str(), "stdout" | "stderr") && crate::config::is_file_output(v)
        };
        if let Some((k, _)) = options.iter().find(file_key) {
            if !self.limits.allow_remote_exec {
                return Err(CmdError::new(
                    Errno::Forbidden,
                    format!(
                        "setting '{k}' to a file would let a remote client choose where \
                         node '{}' writes, and it does not allow remote exec; use capture, \
                         discard or inherit, or set allow_remote_exec = true in its [agent] \
                         config to permit it",
                        self.limits.node
                    ),
                ));
            }
        }
        if let Some(k) = options.keys().find(|k| EXEC_KEYS.contains(&k.as_str())) {
            if let Some(e) = self.remote_exec_refused(&format!("setting '{k}'")) {
                return Err(e);
            }
        }
        for (k, v) in options.iter().filter(|(_, v)| !v.is_null()) {
            protocol::options::check_option(k, v)
                .map_err(|e| CmdError::new(Errno::BadOption, e))?;
        }
        Ok(())
    }

    /// Changes options; returns the watchers to wait for.
    fn set(&mut self, p: SetProps) -> Result<Vec<String>, CmdError> {
        let w = self.watcher(&p.name)?;
        self.check_set(&p.options)?;
        let mut options = w.cfg.to_options();
        for (k, v) in &p.options {
            if v.is_null() {
                options.unset(k);
            } else {
                let one = protocol::options::parse_option(k, v)
                    .map_err(|e| CmdError::new(Errno::BadOption, e))?;
                options.overlay(one);
            }
        }
        if p.options.contains_key("respawn") && !p.options.contains_key("restart") {
            options.restart = None;
        }
        let new = watcher_config(&p.name, &options)?;
        self.check_sockets(&new)?;
        if new.numprocesses > w.cfg.numprocesses {
            self.check_node_limit(&p.name, new.numprocesses)?;
        }
        self.replace_config(&p.name, new);
        self.persist();
        Ok(vec![p.name])
    }

    /// Gives a watcher a new config: restarts it when what it runs changed, otherwise
    /// brings its slots in line.
    fn replace_config(&mut self, name: &str, new: WatcherConfig) {
        let Some(w) = self.watchers.get_mut(name) else {
            return;
        };
        let restart = w.cfg.spawn_differs(&new) && w.run;
        self.out.push(Effect::Configure {
            watcher: name.to_owned(),
            stop: (new.stop_signal, new.graceful_timeout),
        });
        w.cfg = new;
        if restart {
            self.restart_watcher(name);
        } else {
            self.ensure(name);
        }
    }

    /// Adds a watcher; returns the watchers to wait for.
    fn add(&mut self, p: AddProps) -> Result<Vec<String>, CmdError> {
        if let Some(e) = self.remote_exec_refused("add") {
            return Err(e);
        }
        if self.watchers.contains_key(&p.name) {
            return Err(CmdError::new(
                Errno::AlreadyExists,
                format!(
                    "watcher '{}' already exists; remove it first with `ctl rm {}` or change it with `ctl set`",
                    p.name, p.name
                ),
            ));
        }
        let mut options = p.options.unwrap_or_default();
        options.cmd = Some(p.cmd);
        options.args = Some(p.args);
        let cfg = watcher_config(&p.name, &options)?;
        self.check_sockets(&cfg)?;
        self.check_node_limit(&p.name, cfg.numprocesses)?;
        self.add_watcher(&p.name, cfg, p.start);
        self.persist();
        Ok(vec![p.name])
    }

    fn add_watcher(&mut self, name: &str, cfg: WatcherConfig, run: bool) {
        self.watchers
            .insert(name.to_owned(), Watcher::new(cfg, run));
        self.emit(name, "add", None);
        self.ensure(name);
    }

    /// Refuses a watcher that lists a socket the node has not bound.
    fn check_sockets(&self, cfg: &WatcherConfig) -> Result<(), CmdError> {
        match cfg.sockets.iter().find(|s| !self.sockets.contains(s)) {
            None => Ok(()),
            Some(s) => Err(CmdError::new(
                Errno::BadOption,
                format!(
                    "option 'sockets': node '{}' has no socket '{s}'; sockets are defined in \
                     the node's config ([socket.{s}]), and `ctl listsockets` shows them",
                    self.limits.node
                ),
            )),
        }
    }

    /// `listsockets`: every bound socket and the watchers that list it.
    fn list_sockets(&self) -> SocketsData {
        let sockets = self
            .sockets
            .iter()
            .map(|b| SocketInfo {
                name: b.spec.name.clone(),
                kind: b.kind().to_owned(),
                address: b.address.clone(),
                fd: b.raw_fd(),
                watchers: self
                    .watchers
                    .values()
                    .filter(|w| !w.removing && w.cfg.sockets.contains(&b.spec.name))
                    .map(|w| w.cfg.name.clone())
                    .collect(),
            })
            .collect();
        SocketsData { sockets }
    }

    /// Applies a newly read config's watchers and bound sockets: adds, removes and
    /// changes watchers; a watcher whose socket was bound anew restarts to get it.
    pub(super) fn reload(
        &mut self,
        new: BTreeMap<String, WatcherConfig>,
        sockets: SocketSet,
        reply: ReplyId,
    ) {
        let mut result = ReloadData {
            added: vec![],
            removed: vec![],
            changed: vec![],
        };
        if self.shutting_down {
            return self.reply(reply, Err(gone()));
        }
        let rebound = sockets.changed_since(&self.sockets);
        self.sockets = sockets;
        let old: Vec<String> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.removing)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &old {
            if !new.contains_key(name) {
                self.remove_watcher(name);
                result.removed.push(name.clone());
            }
        }
        for (name, cfg) in new {
            match self.watchers.get(&name) {
                Some(w) if w.removing => {}
                Some(w) if w.cfg == cfg && !w.cfg.sockets.iter().any(|s| rebound.contains(s)) => {}
                Some(w) if w.cfg == cfg => {
                    let run = w.run;
                    result.changed.push(name.clone());
                    self.emit(&name, "reload", None);
                    if run {
                        self.restart_watcher(&name);
                    }
                }
                Some(_) => {
                    result.changed.push(name.clone());
                    self.emit(&name, "reload", None);
                    self.replace_config(&name, cfg);
                }
                None => {
                    let run = cfg.autostart;
                    self.add_watcher(&name, cfg, run);
                    result.added.push(name);
                }
            }
        }
        self.persist();
        self.reply(reply, data(result));
    }
}
