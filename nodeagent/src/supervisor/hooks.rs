//! Hooks as pure transitions: which hook runs when, with what environment, and what its
//! result does. A `before_start` or `before_stop` hook holds its command (or the
//! agent's start of the watcher) in a [`Gate`] until every hook of it has answered: one
//! failure and nothing is done, the command answering with the hook's reason. A
//! `before_spawn` hook holds the process's spawn order; failing, the start fails as a
//! spawn would. `after_*` hooks are only run, a failure said in an event. It must not
//! perform effects: hooks run in the actor's tasks, their results come back as inputs.

use std::collections::BTreeSet;
use std::time::Duration;

use protocol::reply::{ExitStatus, ProcessState};
use protocol::Errno;

use super::model::{Effect, ReplyId, SpawnOrder, Supervisor};
use super::{CmdError, LifecycleEvent};
use crate::config::guards::HookKind;
use crate::config::Output;
use crate::process::SpawnSpec;

/// What a gate does once its hooks passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GateOp {
    Start,
    Stop,
}

/// A command (or the agent's start of a watcher) waiting for `before_*` hooks.
#[derive(Debug)]
pub(super) struct Gate {
    pub token: u64,
    pub op: GateOp,
    /// Every watcher the command acts on, in order.
    pub names: Vec<String>,
    pub waiting: bool,
    /// None for the agent's own start of a watcher.
    pub reply: Option<ReplyId>,
    /// The first generation the command may start (for `--waiting`).
    pub since_gen: u64,
    /// The watchers whose hook has not answered yet.
    pub pending: BTreeSet<String>,
    /// Why the first failed hook failed.
    pub failure: Option<String>,
}

/// A hook to run.
#[derive(Debug, Clone)]
pub(super) struct HookOrder {
    pub watcher: String,
    pub kind: HookKind,
    /// The process's slot and generation (per-process hooks), or the gate's token in
    /// `gen` (watcher hooks).
    pub wid: Option<u32>,
    pub gen: u64,
    pub pid: Option<u32>,
    pub spec: SpawnSpec,
    pub timeout: Duration,
}

/// A hook's result.
#[derive(Debug)]
pub(super) struct HookDone {
    pub watcher: String,
    pub kind: HookKind,
    pub wid: Option<u32>,
    pub gen: u64,
    pub pid: Option<u32>,
    pub result: Result<(), String>,
}

/// The process a per-process hook is about.
#[derive(Debug, Clone, Default)]
pub(super) struct About {
    pub wid: Option<u32>,
    pub pid: Option<u32>,
    pub exit: Option<ExitStatus>,
}

impl Supervisor {
    /// Asks the actor to run hook `kind` of watcher `name`, if it has one; `gen` is the
    /// process's generation, or a gate's token. Returns whether it has one.
    pub(super) fn run_hook(&mut self, name: &str, kind: HookKind, gen: u64, about: About) -> bool {
        let node = self.limits.node.clone();
        let Some(w) = self.watchers.get(name) else {
            return false;
        };
        let Some(hook) = w.cfg.hooks.get(&kind) else {
            return false;
        };
        let cfg = &w.cfg;
        let mut env = super::lifecycle::process_env(cfg, &node, about.wid.unwrap_or(0));
        if about.wid.is_none() {
            env.retain(|(k, _)| k != "NODEAGENT_WID");
        }
        env.push(("NODEAGENT_HOOK".into(), kind.as_str().into()));
        if let Some(pid) = about.pid {
            env.push(("NODEAGENT_PID".into(), pid.to_string()));
        }
        if let Some(exit) = &about.exit {
            if let Some(code) = exit.code {
                env.push(("NODEAGENT_EXIT_CODE".into(), code.to_string()));
            }
            if let Some(signal) = &exit.signal {
                env.push(("NODEAGENT_EXIT_SIGNAL".into(), signal.clone()));
            }
        }
        let spec = SpawnSpec {
            cmd: hook.argv.first().cloned().unwrap_or_default(),
            args: hook.argv.get(1..).unwrap_or_default().to_vec(),
            env,
            clear_env: !cfg.command.copy_env,
            working_dir: cfg.command.working_dir.clone(),
            uid: cfg.command.uid_num,
            gid: cfg.command.gid_num,
            stdout: Output::Discard,
            stderr: Output::Capture,
            listen: Vec::new(),
            rlimits: Vec::new(),
        };
        let timeout = hook.timeout;
        self.out.push(Effect::Hook(Box::new(HookOrder {
            watcher: name.to_owned(),
            kind,
            wid: about.wid,
            gen,
            pid: about.pid,
            spec,
            timeout,
        })));
        true
    }

    fn has_hook(&self, name: &str, kind: HookKind) -> bool {
        self.watchers
            .get(name)
            .is_some_and(|w| w.cfg.hooks.contains_key(&kind))
    }

    /// Starts or stops `names` (a command's, in order) once the `before_start` or
    /// `before_stop` hooks of those that will start or stop have passed. Returns false
    /// when none has such a hook: the caller acts at once.
    pub(super) fn gate(
        &mut self,
        op: GateOp,
        names: &[String],
        waiting: bool,
        reply: Option<ReplyId>,
        since_gen: u64,
    ) -> bool {
        let kind = match op {
            GateOp::Start => HookKind::BeforeStart,
            GateOp::Stop => HookKind::BeforeStop,
        };
        let hooked: Vec<String> = names
            .iter()
            .filter(|n| {
                self.has_hook(n, kind)
                    && self.watchers.get(*n).is_some_and(|w| match op {
                        // The agent's start (no reply) runs it for a watcher set to run.
                        GateOp::Start => !w.run || reply.is_none(),
                        GateOp::Stop => w.run,
                    })
            })
            .cloned()
            .collect();
        if hooked.is_empty() {
            return false;
        }
        let token = self.next_gen;
        self.next_gen += 1;
        for n in &hooked {
            self.run_hook(n, kind, token, About::default());
        }
        self.gates.push(Gate {
            token,
            op,
            names: names.to_vec(),
            waiting,
            reply,
            since_gen,
            pending: hooked.into_iter().collect(),
            failure: None,
        });
        true
    }

    /// Holds a process's spawn until its `before_spawn` hook passed, or spawns it now.
    pub(super) fn launch(&mut self, order: SpawnOrder) {
        let (name, wid, gen) = (order.watcher.clone(), order.wid, order.gen);
        if !self.has_hook(&name, HookKind::BeforeSpawn) {
            self.out.push(Effect::Spawn(Box::new(order)));
            return;
        }
        // Starting, with no pid yet: a stop meanwhile ends it at once, and the hook's
        // result then finds no such process.
        if let Some(s) = self.slot_mut(&name, wid, gen) {
            s.state = ProcessState::Starting;
            s.pid = None;
        }
        self.held_spawns.insert(gen, Box::new(order));
        self.run_hook(
            &name,
            HookKind::BeforeSpawn,
            gen,
            About {
                wid: Some(wid),
                ..Default::default()
            },
        );
    }

    /// Emits `hook_failed` for hook `kind` of `name`.
    fn hook_failed(&mut self, name: &str, kind: HookKind, about: About, why: &str) {
        tracing::warn!(watcher = name, hook = kind.as_str(), "hook failed: {why}");
        self.out.push(Effect::Emit(LifecycleEvent {
            watcher: name.to_owned(),
            kind: "hook_failed",
            wid: about.wid,
            pid: about.pid,
            reason: Some(format!("{} hook: {why}", kind.as_str())),
            hook: Some(kind.as_str().to_owned()),
            ..Default::default()
        }));
    }

    /// A hook's result.
    pub(super) fn on_hook(&mut self, done: HookDone) {
        let about = About {
            wid: done.wid,
            pid: done.pid,
            exit: None,
        };
        if let Err(why) = &done.result {
            self.hook_failed(&done.watcher, done.kind, about, why);
        }
        match done.kind {
            HookKind::BeforeStart | HookKind::BeforeStop => self.gate_answer(done),
            HookKind::BeforeSpawn => {
                let Some(order) = self.held_spawns.remove(&done.gen) else {
                    return;
                };
                let (wid, gen) = (order.wid, order.gen);
                let waiting = self
                    .slot(&done.watcher, wid, gen)
                    .is_some_and(|s| s.state == ProcessState::Starting && s.pid.is_none());
                if !waiting {
                    return;
                }
                match done.result {
                    Ok(()) => self.out.push(Effect::Spawn(order)),
                    Err(why) => self.on_spawn_failed(
                        &done.watcher,
                        wid,
                        gen,
                        format!("before_spawn hook failed: {why}"),
                        order.respawn,
                    ),
                }
            }
            HookKind::AfterStart
            | HookKind::AfterStop
            | HookKind::AfterSpawn
            | HookKind::AfterExit => {}
        }
    }

    fn gate_answer(&mut self, done: HookDone) {
        let Some(at) = self.gates.iter().position(|g| g.token == done.gen) else {
            return;
        };
        let gate = &mut self.gates[at];
        gate.pending.remove(&done.watcher);
        if let Err(why) = done.result {
            gate.failure.get_or_insert_with(|| {
                format!(
                    "the {} hook of '{}' failed: {why}; nothing was {}",
                    done.kind.as_str(),
                    done.watcher,
                    if gate.op == GateOp::Start {
                        "started"
                    } else {
                        "stopped"
                    }
                )
            });
        }
        if !gate.pending.is_empty() {
            return;
        }
        let gate = self.gates.remove(at);
        if let Some(why) = gate.failure {
            if gate.reply.is_none() {
                // The agent's start: the watcher stays stopped.
                for n in &gate.names {
                    if let Some(w) = self.watchers.get_mut(n) {
                        w.run = false;
                    }
                }
            }
            if let Some(reply) = gate.reply {
                self.reply(reply, Err(CmdError::new(Errno::HookFailed, why)));
            }
            return;
        }
        self.gate_passed(gate);
    }

    /// After each input: the `after_start` hook of a started watcher once each of its
    /// processes runs, the `after_stop` hook of a stopped one once all are gone.
    pub(super) fn advance_hooks(&mut self) {
        let mut fire = Vec::new();
        for (name, w) in self.watchers.iter_mut() {
            if w.after_start_due {
                let up = (1..=w.cfg.command.numprocesses)
                    .all(|wid| w.slots.get(&wid).is_some_and(|s| s.alive()));
                if !w.run {
                    w.after_start_due = false;
                } else if up {
                    w.after_start_due = false;
                    fire.push((name.clone(), HookKind::AfterStart));
                }
            }
            if w.after_stop_due {
                if w.run || w.removing {
                    w.after_stop_due = false;
                } else if w.slots.is_empty() {
                    w.after_stop_due = false;
                    fire.push((name.clone(), HookKind::AfterStop));
                }
            }
        }
        for (name, kind) in fire {
            self.run_hook(&name, kind, 0, About::default());
        }
    }

    /// Notes that watcher `name` was started or stopped, for its `after_*` hook.
    pub(super) fn hook_due(&mut self, name: &str, kind: HookKind) {
        let has = self.has_hook(name, kind);
        let shutting_down = self.shutting_down;
        if let Some(w) = self.watchers.get_mut(name) {
            match kind {
                HookKind::AfterStart => w.after_start_due = has,
                HookKind::AfterStop => w.after_stop_due = has && !shutting_down,
                HookKind::BeforeStart
                | HookKind::BeforeStop
                | HookKind::BeforeSpawn
                | HookKind::AfterSpawn
                | HookKind::AfterExit => {}
            }
        }
    }
}
