//! The command handlers: each checks a command against the watchers and the node's
//! limits, changes the model through the lifecycle, and answers with a
//! [`Effect::Reply`] (at once, or through a wait). It must not perform effects: no
//! signals, processes or persistence of its own, only effects for the actor.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;
use protocol::command::{
    AddProps, Command, GetProps, Numprocesses, Resize, SetProps, SignalProps, StartStop,
};
use protocol::options::OPTION_NAMES;
use protocol::reply::{
    ActionData, KeyChange, ListData, NumprocessesData, NumwatchersData, OptionsData, PlanData,
    ReplyData, SocketInfo, SocketsData, StatusData, WatcherState,
};
use protocol::{Errno, WatcherOptions};
use serde_json::Value;

use super::hooks::{Gate, GateOp};
use super::model::{Effect, ReplyId, Slot, Supervisor, Watcher};
use super::{data, gone, plan, CmdError, Outcome, Reload};
use crate::config::deps::{graph_errors, graph_of, DepError};
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
    "hooks",
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

/// Applies `set KEY VALUE` for `health_cmd` or `health_timeout`, the other spelling of
/// `ready.exec` and `ready.timeout`, to a watcher's options (which spell its readiness
/// check as `ready`): `health_cmd` makes the check that command, keeping its timeout
/// and interval; `health_timeout` sets the check's timeout; null removes an exec check,
/// or the timeout.
fn health_spelling(options: &mut WatcherOptions, key: &str, value: &Value) -> Result<(), CmdError> {
    let one = if value.is_null() {
        WatcherOptions::default()
    } else {
        protocol::options::parse_option(key, value)
            .map_err(|e| CmdError::new(Errno::BadOption, e))?
    };
    match (key, one.health_cmd, one.health_timeout) {
        ("health_cmd", Some(cmd), _) => {
            let r = options.ready.take().unwrap_or_default();
            options.ready = Some(protocol::options::ReadyCheck {
                exec: Some(cmd),
                timeout: r.timeout,
                interval: r.interval,
                ..Default::default()
            });
        }
        ("health_cmd", None, _) => {
            if options.ready.as_ref().is_some_and(|r| r.exec.is_some()) {
                options.ready = None;
            }
        }
        (_, _, timeout) => match options.ready.as_mut() {
            Some(r) => r.timeout = timeout,
            // No check: the value is kept, as a config may give it alone.
            None => options.health_timeout = timeout,
        },
    }
    Ok(())
}

/// The watcher operation a gate carries out.
fn gate_op(op: GateOp) -> fn(&mut Supervisor, &str) {
    match op {
        GateOp::Start => Supervisor::start_watcher,
        GateOp::Stop => Supervisor::stop_watcher,
    }
}

/// What a handler does with the command's reply.
enum Answer {
    /// Reply now.
    Now(Outcome),
    /// Reply once these watchers have settled.
    Settled(Vec<String>),
    /// Reply once these watchers have settled and their processes are ready.
    Up(Vec<String>),
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
        let since_gen = self.next_gen;
        let answer = if self.shutting_down {
            Answer::Now(Err(gone()))
        } else {
            self.handle(command, reply)
        };
        self.answer(reply, answer, since_gen);
    }

    fn answer(&mut self, reply: ReplyId, answer: Answer, since_gen: u64) {
        match answer {
            Answer::Now(outcome) => self.reply(reply, outcome),
            Answer::Settled(names) => self.wait_settled(names, reply, None),
            Answer::Up(names) => self.wait_settled(names, reply, Some(since_gen)),
            Answer::Done => {}
        }
    }

    /// Starts or stops the watchers of a command now, after its `before_start` or
    /// `before_stop` hooks (see [`Supervisor::gate`]), unless they are to wait for
    /// hooks first.
    fn gated(&mut self, op: GateOp, names: Vec<String>, waiting: bool, reply: ReplyId) -> Answer {
        let since_gen = self.next_gen;
        if self.gate(op, &names, waiting, Some(reply), since_gen) {
            return Answer::Done;
        }
        self.act(names, waiting, gate_op(op))
    }

    /// The hooks of a gate passed: its command is carried out and answered.
    pub(super) fn gate_passed(&mut self, gate: Gate) {
        let op = gate_op(gate.op);
        match gate.reply {
            None => {
                // The agent's start, unless a command stopped the watcher meanwhile.
                for n in &gate.names {
                    if self.watchers.get(n).is_some_and(|w| w.run) {
                        op(self, n);
                    }
                }
            }
            Some(reply) if self.shutting_down => self.reply(reply, Err(gone())),
            Some(reply) => {
                let answer = self.act(gate.names, gate.waiting, op);
                self.answer(reply, answer, gate.since_gen);
            }
        }
    }

    fn handle(&mut self, command: Command, reply: ReplyId) -> Answer {
        match command {
            Command::Status(p) => self.status(&p.name).into(),
            Command::List(p) => self.list(p.name.as_deref()).into(),
            Command::Start(StartStop { name, waiting }) => match self.targets(&name) {
                // All of them: after their dependencies, then by priority.
                Ok(names) if name.is_none() => {
                    let all = self.start_order(names);
                    self.gated(GateOp::Start, all, waiting, reply)
                }
                // The stopped or fatal watchers it depends on start first.
                Ok(names) => {
                    let mut all = names.clone();
                    for n in &names {
                        all.extend(self.dependencies_to_start(n));
                    }
                    all.sort();
                    all.dedup();
                    let all = self.start_order(all);
                    self.gated(GateOp::Start, all, waiting, reply)
                }
                Err(e) => Answer::Now(Err(e)),
            },
            Command::Stop(StartStop { name, waiting }) => match self.targets(&name) {
                // All of them: before their dependencies, then by priority.
                Ok(names) if name.is_none() => {
                    let all = self.stop_order(names);
                    self.gated(GateOp::Stop, all, waiting, reply)
                }
                // The running watchers that depend on it stop first.
                Ok(names) => {
                    let mut all = names.clone();
                    for n in &names {
                        all.extend(self.dependents_to_stop(n));
                    }
                    all.sort();
                    all.dedup();
                    let all = self.stop_order(all);
                    self.gated(GateOp::Stop, all, waiting, reply)
                }
                Err(e) => Answer::Now(Err(e)),
            },
            Command::Restart(r) | Command::Reload(r) => match self.targets(&r.name) {
                Ok(names) => self.act(names, r.waiting, Supervisor::restart_watcher),
                Err(e) => Answer::Now(Err(e)),
            },
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
                    numprocesses: w.cfg.command.numprocesses,
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
            Command::Rm(p) => match self.watcher(&p.name).and_then(|_| self.check_rm(&p.name)) {
                Err(e) => Answer::Now(Err(e)),
                Ok(()) => {
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
            | Command::Logs(_)
            | Command::Upgrade(_)) => Answer::Now(Err(CmdError::new(
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
                    .map(|(n, w)| (std::cmp::Reverse(w.cfg.lifecycle.priority), n.clone()))
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

    /// Applies `op` to the watchers `names` in their order, persists, and replies at once
    /// or, with `wait`, once the watchers have settled.
    fn act(&mut self, names: Vec<String>, wait: bool, op: fn(&mut Supervisor, &str)) -> Answer {
        for n in &names {
            op(self, n);
        }
        self.persist();
        if wait {
            Answer::Up(names)
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
        let old = self.watcher(name)?.cfg.command.numprocesses;
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
            w.cfg.command.numprocesses = n;
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
                sum.saturating_add(w.cfg.command.numprocesses.into())
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

    /// Refuses to remove a watcher that others depend on.
    fn check_rm(&self, name: &str) -> Result<(), CmdError> {
        let dependents = self.dependents(name);
        if dependents.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = dependents.iter().map(|d| format!("'{d}'")).collect();
        Err(CmdError::new(
            Errno::CommandFailed,
            format!(
                "watcher '{name}' cannot be removed: {} depend{} on it; remove {} first, or \
                 take '{name}' out of {} depends_on (ctl set {} depends_on ...)",
                list.join(", "),
                if dependents.len() == 1 { "s" } else { "" },
                if dependents.len() == 1 { "it" } else { "them" },
                if dependents.len() == 1 {
                    "its"
                } else {
                    "their"
                },
                dependents[0],
            ),
        ))
    }

    /// Refuses a watcher config whose dependencies, with the other watchers, name a
    /// missing watcher or form a cycle.
    fn check_dependencies(&self, cfg: &WatcherConfig) -> Result<(), CmdError> {
        let mut graph = self.graph();
        if cfg.lifecycle.depends_on.is_empty() && !graph.values().flatten().any(|d| *d == cfg.name)
        {
            return Ok(());
        }
        graph.insert(cfg.name.clone(), cfg.lifecycle.depends_on.clone());
        // Only what this watcher takes part in: a problem elsewhere (from a saved state)
        // must not block fixing it.
        let mine = graph_errors(&graph).into_iter().find(|e| match e {
            DepError::Missing { watcher, .. } => *watcher == cfg.name,
            DepError::Cycle(ring) => ring.contains(&cfg.name),
        });
        match mine {
            None => Ok(()),
            Some(e) => Err(CmdError::new(
                Errno::BadOption,
                format!("option 'depends_on': {e}"),
            )),
        }
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
        // A check that runs a command is a program started remotely.
        let runs_a_command = |(k, v): &(&String, &Value)| {
            matches!(k.as_str(), "ready" | "live") && v.get("exec").is_some_and(|e| !e.is_null())
        };
        if let Some((k, _)) = options.iter().find(runs_a_command) {
            if let Some(e) = self.remote_exec_refused(&format!("setting '{k}' with exec")) {
                return Err(e);
            }
        }
        let spelled = |k: &&String| matches!(k.as_str(), "health_cmd" | "health_timeout");
        if options.contains_key("ready") {
            if let Some(k) = options.keys().find(spelled) {
                return Err(CmdError::new(
                    Errno::BadOption,
                    format!(
                        "option '{k}': set together with 'ready'; {k} is another spelling of \
                         ready.{}, keep one",
                        if k == "health_cmd" { "exec" } else { "timeout" }
                    ),
                ));
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
            if matches!(k.as_str(), "health_cmd" | "health_timeout") {
                health_spelling(&mut options, k, v)?;
            } else if v.is_null() {
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
        if new.command.numprocesses > w.cfg.command.numprocesses {
            self.check_node_limit(&p.name, new.command.numprocesses)?;
        }
        if new.lifecycle.depends_on != w.cfg.lifecycle.depends_on {
            self.check_dependencies(&new)?;
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
        let aging = w.cfg.max_age != new.max_age || w.cfg.max_age_variance != new.max_age_variance;
        self.out.push(Effect::Configure {
            watcher: name.to_owned(),
            stop: (new.lifecycle.stop_signal, new.lifecycle.graceful_timeout),
        });
        w.cfg = new;
        if aging && !restart {
            self.rearm_max_age(name);
        }
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
        self.check_node_limit(&p.name, cfg.command.numprocesses)?;
        self.check_dependencies(&cfg)?;
        self.add_watcher(&p.name, cfg, p.start);
        self.persist();
        Ok(vec![p.name])
    }

    fn add_watcher(&mut self, name: &str, cfg: WatcherConfig, run: bool) {
        self.watchers
            .insert(name.to_owned(), Watcher::new(cfg, run));
        self.emit(name, "add", None);
        if run {
            // The stopped watchers it depends on start first; it waits until they are up.
            for d in self.dependencies_to_start(name) {
                self.start_watcher(&d);
            }
        }
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

    /// The plan between the watchers and sockets that run and a newly read config file
    /// (`r.base` is the file's watchers as last loaded), applied unless `r.dry_run`, with
    /// `bound` the file's sockets as the actor bound them (none for a dry run, whose plan
    /// foretells which sockets binding would replace): the sockets are replaced, removed
    /// watchers stop (dependents first) and go, changed ones take their new options
    /// (those whose processes must restart to take them, or to get a socket bound anew,
    /// are restarted by the handle as `restart --rolling` restarts them),
    /// scaled ones resize, added ones start (after their dependencies). Unchanged
    /// watchers are not touched. A plan refused by [`Self::check_reload`] changes nothing.
    pub(super) fn reload(&mut self, r: Reload, bound: Option<SocketSet>, reply: ReplyId) {
        if self.shutting_down {
            return self.reply(reply, Err(gone()));
        }
        let moved = self.moved_sockets(&r, bound.as_ref());
        match self.reload_plan(&r, &moved) {
            Ok((target, mut p)) => {
                p.dry_run = r.dry_run;
                if !r.dry_run {
                    if let Some(sockets) = bound {
                        self.sockets = sockets;
                    }
                    self.apply_plan(target, &p);
                }
                self.reply(reply, data(p));
            }
            Err(e) => self.reply(reply, Err(e)),
        }
    }

    /// Whether a reload may go ahead, checked before the actor binds its sockets: its
    /// watchers may not depend on a missing watcher or form a cycle, list a socket the
    /// file does not define, or ask for more than `max_processes`.
    pub(super) fn check_reload(&self, r: &Reload) -> Result<(), CmdError> {
        if self.shutting_down {
            return Err(gone());
        }
        self.reload_plan(r, &BTreeMap::new()).map(|_| ())
    }

    /// The sockets a reload binds anew (`bound`, or for a dry run those binding would),
    /// by name, each as the change of its address: the processes that have the old one
    /// restart to get it.
    fn moved_sockets(&self, r: &Reload, bound: Option<&SocketSet>) -> BTreeMap<String, KeyChange> {
        let rebound: BTreeSet<String> = match bound {
            Some(b) => b.changed_since(&self.sockets),
            None => self.sockets.rebinds(&r.sockets),
        };
        rebound
            .into_iter()
            .filter_map(|name| {
                let old = self.sockets.get(&name)?.address.clone();
                let new = match bound.and_then(|b| b.get(&name)) {
                    Some(b) => b.address.clone(),
                    None => r.sockets.get(&name)?.endpoint.to_string(),
                };
                let change = KeyChange {
                    key: format!("socket.{name}"),
                    old: Some(Value::String(old)),
                    new: Some(Value::String(new)),
                };
                Some((name, change))
            })
            .collect()
    }

    fn reload_plan(
        &self,
        r: &Reload,
        moved: &BTreeMap<String, KeyChange>,
    ) -> Result<(BTreeMap<String, WatcherConfig>, PlanData), CmdError> {
        let running: BTreeMap<String, WatcherConfig> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.removing)
            .map(|(n, w)| (n.clone(), w.cfg.clone()))
            .collect();
        let (target, kept) = plan::target(&running, &r.file, &r.base);
        let refuse = |what: String| {
            CmdError::new(
                Errno::CommandFailed,
                format!(
                    "{what}\nnothing was changed; fix the file (or the runtime changes) and \
                     reload again"
                ),
            )
        };
        if let Some(e) = graph_errors(&graph_of(target.values())).first() {
            return Err(refuse(format!(
                "with the watchers kept from runtime changes ({}), {e}",
                kept.join(", ")
            )));
        }
        // The file's own watchers list only its sockets (the config checks that); one
        // kept from runtime changes may list a socket the file has dropped since.
        let unbound = target.values().find_map(|w| {
            w.sockets
                .iter()
                .find(|s| !r.sockets.contains_key(*s))
                .map(|s| (&w.name, s))
        });
        if let Some((w, s)) = unbound {
            return Err(refuse(format!(
                "with the watchers kept from runtime changes ({}), watcher '{w}' lists socket \
                 '{s}', which the file no longer defines; add a [socket.{s}] table, or take \
                 '{s}' out of the watcher's sockets (ctl set)",
                kept.join(", ")
            )));
        }
        let total = target
            .values()
            .fold(0u64, |n, w| n.saturating_add(w.command.numprocesses.into()));
        let max = self.limits.max_processes;
        if total > u64::from(max) {
            return Err(refuse(format!(
                "the watchers would ask for {total} processes together, more than \
                 max_processes = {max}"
            )));
        }
        let mut p = plan::plan(
            &running,
            &target,
            |n| self.watchers.get(n).is_some_and(|w| w.run),
            moved,
        );
        p.sockets = plan::sockets(&self.sockets.specs(), &r.sockets);
        p.kept = kept;
        Ok((target, p))
    }

    fn apply_plan(&mut self, mut target: BTreeMap<String, WatcherConfig>, p: &PlanData) {
        for name in self.stop_order(p.removed.clone()) {
            self.remove_watcher(&name);
        }
        for name in p.changed.iter().chain(&p.scaled) {
            let Some(new) = target.remove(name) else {
                continue;
            };
            self.emit(name, "reload", None);
            self.out.push(Effect::Configure {
                watcher: name.clone(),
                stop: (new.lifecycle.stop_signal, new.lifecycle.graceful_timeout),
            });
            if let Some(w) = self.watchers.get_mut(name) {
                w.cfg = new;
            }
            self.ensure(name);
        }
        for name in self.start_order(p.added.clone()) {
            if let Some(cfg) = target.remove(&name) {
                let run = cfg.lifecycle.autostart;
                self.add_watcher(&name, cfg, run);
            }
        }
        self.persist();
    }
}
