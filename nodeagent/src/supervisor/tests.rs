//! Table tests of the supervisor's transitions, without processes: each row is a
//! watcher, inputs at given times, the effects each input returns, and where the
//! watcher ends. Spawns are answered by the test (a made-up pid, or a failure for a
//! command under /nonexistent), as the actor answers them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::command::{Command, Resize, Restart, RmProps, StartStop};
use protocol::options::RestartPolicy;
use protocol::reply::{ExitStatus, ProcessState, WatcherState};
use protocol::WatcherOptions;

use super::model::{Effect, Input, Limits, Slot, Stage, Supervisor, Timer, Watcher};
use super::waiters::{dependency_budget, settle_budget, MAX_WAIT};
use crate::config::{LiveConfig, Probe, ReadyConfig, WatcherConfig};
use crate::probe::Check;

/// A supervisor with one watcher "w", driven by hand; each watcher "w" depends on is
/// there too, with the same config (running, but for one named `off`, which is
/// stopped).
struct Sim {
    sup: Supervisor,
    t0: Instant,
    at: Duration,
    next_pid: u32,
    next_reply: u64,
}

/// An input of a row; slot inputs name the slot, and go to its current process.
#[derive(Debug, Clone, Copy)]
enum In {
    Boot,
    Start,
    Stop,
    Restart,
    Rm,
    Incr(u32),
    Decr(u32),
    RestartSlot(u32),
    Shutdown,
    /// The leader of a slot exited with a code; its group is gone.
    Exit(u32, i32),
    /// The leader of a slot was killed by SIGKILL; whether its group still runs.
    Killed(u32, bool),
    /// A slot's stop check; whether its group still runs.
    StopCheck(u32, bool),
    Uptime(u32),
    RespawnDue(u32),
    /// A readiness probe of a slot's process passed or failed.
    Ready(u32, bool),
    /// A readiness probe passed, for the slot's previous process.
    StaleReady(u32),
    /// A liveness probe of a slot's process passed or failed.
    Live(u32, bool),
    /// A slot's next readiness or liveness probe is due.
    ReadyDue(u32),
    LiveDue(u32),
    /// A slot's process had `ready.timeout` to be ready.
    ReadyDeadline(u32),
    /// `start --waiting`.
    StartWaiting,
    Warmup,
    /// The same inputs for another watcher.
    StopOf(&'static str),
    RmOf(&'static str),
    UptimeOf(&'static str, u32),
    KilledOf(&'static str, u32, bool),
    /// Time passes with no input (a wait's deadline).
    Tick,
    /// The replacement of a slot (a restart with surge) has run for `min_uptime`.
    NewUptime(u32),
    /// The leader of a slot's replacement exited with a code; its group is gone.
    NewExit(u32, i32),
    /// The leader of a slot's replacement was killed; whether its group still runs.
    NewKilled(u32, bool),
    /// A readiness probe of a slot's replacement passed or failed.
    NewReady(u32, bool),
    /// A slot's replacement had `ready.timeout` to be ready.
    NewReadyDeadline(u32),
}

fn config(cmd: &str) -> WatcherConfig {
    let mut cfg = WatcherConfig::from_options(
        "w",
        &WatcherOptions {
            cmd: Some(cmd.into()),
            ..Default::default()
        },
    )
    .unwrap();
    cfg.lifecycle.graceful_timeout = Duration::from_secs(10);
    cfg.lifecycle.min_uptime = Duration::from_secs(1);
    cfg.lifecycle.restart_delay = Duration::ZERO;
    cfg.lifecycle.max_retry = 2;
    cfg.lifecycle.warmup_delay = Duration::ZERO;
    cfg.lifecycle.restart = RestartPolicy::Always;
    cfg.lifecycle.max_restart_delay = Duration::from_secs(60);
    cfg
}

impl Sim {
    fn new(cfg: WatcherConfig, run: bool) -> Sim {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(
            Limits {
                node: "n".into(),
                allow_remote_exec: false,
                max_processes: 10,
            },
            t0,
        );
        for dep in &cfg.lifecycle.depends_on {
            let mut other = cfg.clone();
            other.name = dep.clone();
            other.lifecycle.depends_on = vec![];
            sup.watchers
                .insert(dep.clone(), Watcher::new(other, dep != "off"));
        }
        sup.watchers.insert("w".into(), Watcher::new(cfg, run));
        Sim {
            sup,
            t0,
            at: Duration::ZERO,
            next_pid: 100,
            next_reply: 1,
        }
    }

    fn slot(&self, wid: u32) -> Option<&Slot> {
        self.sup.slot_at("w", wid)
    }

    fn gen(&self, wid: u32) -> u64 {
        self.slot(wid).map_or(0, |s| s.gen)
    }

    fn gen_of(&self, name: &str, wid: u32) -> u64 {
        self.sup.slot_at(name, wid).map_or(0, |s| s.gen)
    }

    fn new_gen(&self, wid: u32) -> u64 {
        self.slot(wid)
            .and_then(|s| s.replacement.as_deref())
            .map_or(0, |r| r.gen)
    }

    fn command(&mut self, c: Command) -> Input {
        self.next_reply += 1;
        Input::Command(c, self.next_reply)
    }

    fn input(&mut self, i: In) -> Input {
        let name = || "w".to_owned();
        let stop = |waiting| StartStop {
            name: Some(name()),
            waiting,
        };
        let exited = |wid, gen, code, signal, group_alive| Input::Exited {
            name: name(),
            wid,
            gen,
            exit: ExitStatus { code, signal },
            group_alive,
        };
        match i {
            In::Boot => Input::Boot,
            In::Start => self.command(Command::Start(stop(false))),
            In::Stop => self.command(Command::Stop(stop(false))),
            In::Restart => self.command(Command::Restart(Restart {
                name: Some(name()),
                waiting: true,
                rolling: false,
            })),
            In::Rm => self.command(Command::Rm(RmProps {
                name: name(),
                waiting: true,
            })),
            In::Incr(nb) => self.command(Command::Incr(Resize { name: name(), nb })),
            In::Decr(nb) => self.command(Command::Decr(Resize { name: name(), nb })),
            In::RestartSlot(wid) => {
                self.next_reply += 1;
                Input::RestartSlot {
                    name: name(),
                    wid,
                    reply: self.next_reply,
                }
            }
            In::Shutdown => Input::Shutdown,
            In::Exit(wid, code) => exited(wid, self.gen(wid), Some(code), None, false),
            In::Killed(wid, alive) => {
                exited(wid, self.gen(wid), None, Some("SIGKILL".into()), alive)
            }
            In::StopCheck(wid, group_alive) => Input::StopCheck {
                name: name(),
                wid,
                gen: self.gen(wid),
                group_alive,
            },
            In::Uptime(wid) => Input::Timer(Timer::UptimeReached {
                name: name(),
                wid,
                gen: self.gen(wid),
            }),
            In::RespawnDue(wid) => Input::Timer(Timer::RespawnDue {
                name: name(),
                wid,
                gen: self.gen(wid),
            }),
            In::Ready(wid, ok) | In::Live(wid, ok) => Input::Probe {
                name: name(),
                wid,
                gen: self.gen(wid),
                stage: if matches!(i, In::Ready(..)) {
                    Stage::Ready
                } else {
                    Stage::Live
                },
                result: if ok { Ok(()) } else { Err("refused".into()) },
            },
            In::StaleReady(wid) => Input::Probe {
                name: name(),
                wid,
                gen: self.gen(wid) - 1,
                stage: Stage::Ready,
                result: Ok(()),
            },
            In::ReadyDue(wid) | In::LiveDue(wid) => Input::Timer(Timer::Probe {
                name: name(),
                wid,
                gen: self.gen(wid),
                stage: if matches!(i, In::ReadyDue(_)) {
                    Stage::Ready
                } else {
                    Stage::Live
                },
            }),
            In::ReadyDeadline(wid) => Input::Timer(Timer::ReadyDeadline {
                name: name(),
                wid,
                gen: self.gen(wid),
            }),
            In::StartWaiting => self.command(Command::Start(stop(true))),
            In::Warmup => Input::Timer(Timer::Warmup { name: name() }),
            In::StopOf(n) => self.command(Command::Stop(StartStop {
                name: Some(n.into()),
                waiting: false,
            })),
            In::RmOf(n) => self.command(Command::Rm(RmProps {
                name: n.into(),
                waiting: false,
            })),
            In::UptimeOf(n, wid) => Input::Timer(Timer::UptimeReached {
                name: n.into(),
                wid,
                gen: self.gen_of(n, wid),
            }),
            In::KilledOf(n, wid, alive) => Input::Exited {
                name: n.into(),
                wid,
                gen: self.gen_of(n, wid),
                exit: ExitStatus {
                    code: None,
                    signal: Some("SIGKILL".into()),
                },
                group_alive: alive,
            },
            In::Tick => Input::Tick,
            In::NewUptime(wid) => Input::Timer(Timer::UptimeReached {
                name: name(),
                wid,
                gen: self.new_gen(wid),
            }),
            In::NewExit(wid, code) => exited(wid, self.new_gen(wid), Some(code), None, false),
            In::NewKilled(wid, alive) => {
                exited(wid, self.new_gen(wid), None, Some("SIGKILL".into()), alive)
            }
            In::NewReady(wid, ok) => Input::Probe {
                name: name(),
                wid,
                gen: self.new_gen(wid),
                stage: Stage::Ready,
                result: if ok { Ok(()) } else { Err("refused".into()) },
            },
            In::NewReadyDeadline(wid) => Input::Timer(Timer::ReadyDeadline {
                name: name(),
                wid,
                gen: self.new_gen(wid),
            }),
        }
    }

    /// Applies `i` at `at`, answering spawns as the actor does; returns every effect.
    fn step(&mut self, at: Duration, i: In) -> Vec<String> {
        self.at = at;
        let now = self.t0 + at;
        let input = self.input(i);
        let effects = self.sup.step(input, now);
        self.perform(effects)
    }

    /// Carries out effects as the actor does: a spawn's result goes back to the model
    /// before the next effect. Returns every effect.
    fn perform(&mut self, effects: Vec<Effect>) -> Vec<String> {
        let now = self.t0 + self.at;
        let mut todo: VecDeque<Effect> = effects.into();
        let mut seen = Vec::new();
        while let Some(e) = todo.pop_front() {
            seen.push(describe(&e));
            let Effect::Spawn(o) = e else { continue };
            let answer = if o.spec.cmd.starts_with("/nonexistent") {
                Input::SpawnFailed {
                    name: o.watcher,
                    wid: o.wid,
                    gen: o.gen,
                    reason: format!("cannot start {:?}: not found", o.spec.cmd),
                    respawn: o.respawn,
                }
            } else {
                self.next_pid += 1;
                Input::Spawned {
                    name: o.watcher,
                    wid: o.wid,
                    gen: o.gen,
                    pid: self.next_pid,
                    unix: 0.0,
                    respawn: o.respawn,
                }
            };
            for e in self.sup.step(answer, now).into_iter().rev() {
                todo.push_front(e);
            }
        }
        seen
    }

    /// The watcher's state and each slot's, e.g. `active 1:running 2:starting`, and
    /// `(finished)` once a shutdown is done.
    fn end(&self) -> String {
        let mut s = match self.sup.watchers.get("w") {
            None => "gone".to_owned(),
            Some(w) => {
                let mut s = w.state().to_string();
                for slot in w.slots.values() {
                    s.push_str(&format!(" {}:{}", slot.wid, slot.state));
                    if let Some(r) = &slot.replacement {
                        s.push_str(&format!("+{}", r.state));
                    }
                }
                s
            }
        };
        for (name, w) in self.sup.watchers.iter().filter(|(n, _)| *n != "w") {
            s.push_str(&format!(" | {name}: {}", w.state()));
            for slot in w.slots.values() {
                s.push_str(&format!(" {}:{}", slot.wid, slot.state));
            }
        }
        if self.sup.finished() {
            s.push_str(" (finished)");
        }
        s
    }
}

fn timer_name(t: &Timer) -> String {
    match t {
        Timer::RespawnDue { name, wid, .. } => format!("respawn-due {name}/{wid}"),
        Timer::UptimeReached { name, wid, .. } => format!("uptime {name}/{wid}"),
        Timer::StopCheck { name, wid, .. } => format!("stop-check {name}/{wid}"),
        Timer::Warmup { name } => format!("warmup {name}"),
        Timer::Probe { wid, stage, .. } => format!("{} w/{wid}", stage_name(*stage)),
        Timer::ReadyDeadline { wid, .. } => format!("ready-deadline w/{wid}"),
        Timer::MaxAge { wid, .. } => format!("max-age w/{wid}"),
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Ready => "ready-probe",
        Stage::Live => "live-probe",
    }
}

fn describe(e: &Effect) -> String {
    match e {
        Effect::Spawn(o) => format!("spawn {}/{}", o.watcher, o.wid),
        Effect::Signal {
            watcher,
            wid,
            signal,
            ..
        } => format!("{signal} {watcher}/{wid}"),
        Effect::Probe {
            watcher,
            wid,
            stage,
            check,
            timeout,
            ..
        } => {
            let what = match &**check {
                Check::Tcp(t) => format!("tcp {t}"),
                Check::Http(u) => format!("http {u}"),
                Check::Exec(spec) => format!("exec {} {}", spec.cmd, spec.args.join(" ")),
            };
            format!(
                "probe {} {watcher}/{wid} {what} within {timeout:?}",
                stage_name(*stage)
            )
        }
        Effect::ArmTimer { after, timer } => format!("{} in {after:?}", timer_name(timer)),
        Effect::NextTurn(timer) => format!("{} next turn", timer_name(timer)),
        Effect::Emit(ev) => match ev.wid {
            Some(wid) => format!("emit {} {}/{wid}", ev.kind, ev.watcher),
            None => format!("emit {} {}", ev.kind, ev.watcher),
        },
        Effect::Persist(_) => "persist".into(),
        Effect::Reply { outcome: Ok(_), .. } => "reply ok".into(),
        Effect::Reply {
            outcome: Err(e), ..
        } => format!("reply error: {}", e.reason),
        Effect::SignalProcesses { signal, .. } => format!("signal command {signal}"),
        Effect::Configure { watcher, .. } => format!("configure {watcher}"),
        Effect::Ended { .. } => "ended".into(),
        Effect::ForgetOutput(w) => format!("forget {w}"),
        Effect::Watch { watcher, wid, .. } => format!("watch {watcher}/{wid}"),
        Effect::Hook(h) => match h.wid {
            Some(wid) => format!("hook {} {}/{wid}", h.kind.as_str(), h.watcher),
            None => format!("hook {} {}", h.kind.as_str(), h.watcher),
        },
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A row: what it shows, the watcher's config, whether it runs, the inputs with their
/// time and the effects each returns, and where the watcher ends.
type Row<'a> = (
    &'a str,
    fn(&mut WatcherConfig),
    bool,
    &'a [(Duration, In, &'a [&'a str])],
    &'a str,
);

fn run_table(rows: &[Row<'_>]) {
    for (what, setup, run, steps, end) in rows {
        let mut cfg = config("sleep");
        setup(&mut cfg);
        let mut sim = Sim::new(cfg, *run);
        for (i, (at, input, expected)) in steps.iter().enumerate() {
            let got = sim.step(*at, *input);
            assert_eq!(got, *expected, "{what}: step {i} ({input:?} at {at:?})");
        }
        assert_eq!(sim.end(), *end, "{what}: end");
    }
}

fn same(_: &mut WatcherConfig) {}

/// `ready = { tcp = "127.0.0.1:80$(wid)", timeout = "4s", interval = "100ms" }`.
fn ready_tcp(c: &mut WatcherConfig) {
    c.ready = Some(ReadyConfig {
        probe: Probe::Tcp("127.0.0.1:80$(wid)".into()),
        timeout: Duration::from_secs(4),
        interval: ms(100),
    });
}

/// `live = { tcp = "127.0.0.1:80$(wid)", interval = "1s", timeout = "500ms", failures = 2 }`.
fn live_tcp(c: &mut WatcherConfig) {
    c.live = Some(LiveConfig {
        probe: Probe::Tcp("127.0.0.1:80$(wid)".into()),
        timeout: ms(500),
        interval: Duration::from_secs(1),
        failures: 2,
    });
}

const SPAWN_READY_1: [&str; 5] = [
    "spawn w/1",
    "emit spawn w/1",
    "uptime w/1 in 1s",
    "ready-deadline w/1 in 4s",
    "probe ready-probe w/1 tcp 127.0.0.1:801 within 4s",
];

const LIVE_PROBE: &str = "probe live-probe w/1 tcp 127.0.0.1:801 within 500ms";

fn surge(c: &mut WatcherConfig) {
    c.lifecycle.max_surge = Some(1);
}

const SPAWN_1: [&str; 3] = ["spawn w/1", "emit spawn w/1", "uptime w/1 in 1s"];

#[test]
fn lifecycle_table() {
    use In::*;
    run_table(&[
        (
            "start: starting until min_uptime, then running",
            same,
            true,
            &[(ms(0), Boot, &SPAWN_1), (ms(1000), Uptime(1), &[])],
            "active 1:running",
        ),
        (
            "an exit after min_uptime respawns at once, its group killed",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (
                    ms(5000),
                    Exit(1, 0),
                    &[
                        "emit exit w/1",
                        "SIGKILL w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "emit respawn w/1",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "a failed start backs off restart_delay, then respawns",
            |c| c.lifecycle.restart_delay = Duration::from_secs(2),
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(100),
                    Exit(1, 1),
                    &[
                        "emit exit w/1",
                        "SIGKILL w/1",
                        "ended",
                        "respawn-due w/1 in 2s",
                    ],
                ),
                (
                    ms(2100),
                    RespawnDue(1),
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "emit respawn w/1",
                    ],
                ),
                (
                    ms(2200),
                    Exit(1, 1),
                    &[
                        "emit exit w/1",
                        "SIGKILL w/1",
                        "ended",
                        "respawn-due w/1 in 4s",
                    ],
                ),
            ],
            "active 1:backoff",
        ),
        (
            "failed starts past max_retry are fatal",
            |c| c.lifecycle.max_retry = 0,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(100),
                    Exit(1, 1),
                    &["emit exit w/1", "SIGKILL w/1", "ended", "emit flapping w/1"],
                ),
            ],
            "fatal 1:fatal",
        ),
        (
            "a program that cannot start is a failed start",
            |c| {
                c.command.cmd = "/nonexistent/x".into();
                c.lifecycle.max_retry = 0;
            },
            true,
            &[(ms(0), Boot, &["spawn w/1", "emit flapping w/1"])],
            "fatal 1:fatal",
        ),
        (
            "stop sends stop_signal, then SIGKILL after graceful_timeout",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(2000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(11_000), StopCheck(1, true), &[]),
                (
                    ms(12_000),
                    StopCheck(1, true),
                    &["SIGKILL w/1", "stop-check w/1 in 20ms"],
                ),
                (ms(12_020), Killed(1, false), &["emit exit w/1", "ended"]),
            ],
            "stopped",
        ),
        (
            "a stop waits for the group after its leader is gone",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(2000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (
                    ms(3000),
                    Killed(1, true),
                    &["emit exit w/1", "stop-check w/1 in 20ms"],
                ),
                (ms(3020), StopCheck(1, true), &["stop-check w/1 in 20ms"]),
                (ms(3040), StopCheck(1, false), &["ended"]),
            ],
            "stopped",
        ),
        (
            "a group that survives SIGKILL is given up on after the grace",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(2000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (
                    ms(12_000),
                    StopCheck(1, true),
                    &["SIGKILL w/1", "stop-check w/1 in 20ms"],
                ),
                (ms(17_000), StopCheck(1, true), &["ended"]),
            ],
            "stopped",
        ),
        (
            "warm-up starts one process per warmup_delay",
            |c| {
                c.command.numprocesses = 3;
                c.lifecycle.warmup_delay = Duration::from_secs(1);
            },
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "warmup w in 1s",
                    ],
                ),
                (
                    ms(1000),
                    Warmup,
                    &[
                        "spawn w/2",
                        "emit spawn w/2",
                        "uptime w/2 in 1s",
                        "warmup w in 1s",
                    ],
                ),
                (
                    ms(2000),
                    Warmup,
                    &["spawn w/3", "emit spawn w/3", "uptime w/3 in 1s"],
                ),
            ],
            "active 1:starting 2:starting 3:starting",
        ),
        (
            "a rolling restart of one slot replies once its new process runs",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (
                    ms(2000),
                    RestartSlot(1),
                    &["SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                (
                    ms(3000),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                    ],
                ),
                (ms(4000), Uptime(1), &["reply ok"]),
            ],
            "active 1:running",
        ),
        (
            "with surge, the replacement starts first; the old process stops once it is up",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (ms(2500), Tick, &[]),
                (
                    ms(3000),
                    NewUptime(1),
                    &["SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                (
                    ms(3500),
                    Killed(1, false),
                    &["emit exit w/1", "ended", "reply ok"],
                ),
            ],
            "active 1:running",
        ),
        (
            "with surge, a replacement that exits goes; the old process keeps running",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (
                    ms(2500),
                    NewExit(1, 3),
                    &[
                        "emit exit w/1",
                        "SIGKILL w/1",
                        "ended",
                        "reply error: process 1 of 'w' was not replaced: its replacement \
                         exited (exit code 3); the old process keeps running",
                    ],
                ),
            ],
            "active 1:running",
        ),
        (
            "with surge, a replacement not up by its deadline is stopped; the old one stays",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (ms(30_000), Tick, &[]),
                (
                    ms(38_000),
                    Tick,
                    &[
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "reply error: process 1 of 'w' was not replaced: its replacement \
                         was not up in time (still starting); the old process keeps running",
                    ],
                ),
                (ms(39_000), NewKilled(1, false), &["emit exit w/1", "ended"]),
            ],
            "active 1:running",
        ),
        (
            "with surge, a replacement's failed ready check stops it; the old one stays",
            |c| {
                c.lifecycle.max_surge = Some(1);
                ready_tcp(c);
            },
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (ms(1000), Uptime(1), &[]),
                (ms(1100), Ready(1, true), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_READY_1),
                (ms(3000), NewUptime(1), &[]),
                (ms(3100), NewReady(1, false), &["ready-probe w/1 in 100ms"]),
                (
                    ms(6000),
                    NewReadyDeadline(1),
                    &[
                        "emit unhealthy w/1",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "reply error: process 1 of 'w' was not replaced: its replacement \
                         failed: not ready: health check did not pass within 4s (last: \
                         refused); the old process keeps running",
                    ],
                ),
                (ms(6500), NewKilled(1, false), &["emit exit w/1", "ended"]),
            ],
            "active 1:running",
        ),
        (
            "with surge, the old process exiting on its own hands the slot to the replacement",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (
                    ms(2500),
                    Exit(1, 0),
                    &["emit exit w/1", "SIGKILL w/1", "ended"],
                ),
                (ms(3000), Uptime(1), &["reply ok"]),
            ],
            "active 1:running",
        ),
        (
            "max_surge = 0 keeps stopping first",
            |c| c.lifecycle.max_surge = Some(0),
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (
                    ms(2000),
                    RestartSlot(1),
                    &["SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
            ],
            "stopping 1:stopping",
        ),
        (
            "a restart of a slot already being replaced is refused; the first goes on",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (
                    ms(2100),
                    RestartSlot(1),
                    &[
                        "reply error: process 1 of 'w' is already being replaced; wait for \
                       that restart to end",
                    ],
                ),
                (
                    ms(3000),
                    NewUptime(1),
                    &["SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
            ],
            "stopping 1:stopping+running",
        ),
        (
            "a stop during the overlap stops both processes of the slot",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (
                    ms(2500),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(3000), Killed(1, false), &["emit exit w/1", "ended"]),
                (
                    ms(3100),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "reply error: process 1 of 'w' went away during the restart",
                    ],
                ),
            ],
            "stopped",
        ),
        (
            "a shutdown during the overlap ends once both processes are gone",
            surge,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &[]),
                (ms(2000), RestartSlot(1), &SPAWN_1),
                (
                    ms(2500),
                    Shutdown,
                    &[
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                    ],
                ),
                (ms(3000), NewKilled(1, false), &["emit exit w/1", "ended"]),
                (
                    ms(3100),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "reply error: process 1 of 'w' went away during the restart",
                    ],
                ),
            ],
            "stopped (finished)",
        ),
        (
            "a decr during the overlap stops both processes of the slot above the count",
            |c| {
                c.command.numprocesses = 2;
                c.lifecycle.max_surge = Some(1);
            },
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "spawn w/2",
                        "emit spawn w/2",
                        "uptime w/2 in 1s",
                    ],
                ),
                (ms(1000), Uptime(2), &[]),
                (
                    ms(2000),
                    RestartSlot(2),
                    &["spawn w/2", "emit spawn w/2", "uptime w/2 in 1s"],
                ),
                (
                    ms(2500),
                    Decr(1),
                    &[
                        "SIGTERM w/2",
                        "stop-check w/2 in 10s",
                        "SIGTERM w/2",
                        "stop-check w/2 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(3000), Killed(2, false), &["emit exit w/2", "ended"]),
                (
                    ms(3100),
                    Killed(2, false),
                    &[
                        "emit exit w/2",
                        "ended",
                        "reply error: process 2 of 'w' went away during the restart",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "a restart of the watcher starts anew once every process stopped",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(2000),
                    Restart,
                    &["SIGTERM w/1", "stop-check w/1 in 10s", "persist"],
                ),
                (
                    ms(3000),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "reply ok",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "a decr while a slot restarts: the slot is not respawned above the count",
            |c| c.command.numprocesses = 2,
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "spawn w/2",
                        "emit spawn w/2",
                        "uptime w/2 in 1s",
                    ],
                ),
                (
                    ms(1000),
                    RestartSlot(2),
                    &["SIGTERM w/2", "stop-check w/2 in 10s"],
                ),
                (ms(2000), Decr(1), &["persist", "reply ok"]),
                (
                    ms(3000),
                    Killed(2, false),
                    &[
                        "emit exit w/2",
                        "ended",
                        "reply error: process 2 of 'w' went away during the restart",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "an incr while stopping starts nothing",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(1000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(2000), Incr(1), &["persist", "reply ok"]),
                (ms(3000), Killed(1, false), &["emit exit w/1", "ended"]),
            ],
            "stopped",
        ),
        (
            "a start while a slot stops starts it once its group is gone",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(1000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(2000), Start, &["emit start w", "persist", "reply ok"]),
                (
                    ms(3000),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "rm while stopping removes the watcher once its group is gone",
            same,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (
                    ms(1000),
                    Stop,
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(2000), Rm, &["persist"]),
                (
                    ms(3000),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "forget w",
                        "emit rm w",
                        "reply ok",
                    ],
                ),
            ],
            "gone",
        ),
        (
            "shutdown stops every process, last first, and refuses commands",
            |c| c.command.numprocesses = 2,
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "spawn w/2",
                        "emit spawn w/2",
                        "uptime w/2 in 1s",
                    ],
                ),
                (
                    ms(1000),
                    Shutdown,
                    &[
                        "SIGTERM w/2",
                        "stop-check w/2 in 10s",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                    ],
                ),
                (
                    ms(1500),
                    Start,
                    &["reply error: the agent is shutting down"],
                ),
                (ms(2000), Killed(2, false), &["emit exit w/2", "ended"]),
                (ms(2500), Killed(1, false), &["emit exit w/1", "ended"]),
            ],
            "stopped (finished)",
        ),
        (
            "a ready check holds starting until it passes, probing every interval",
            ready_tcp,
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (ms(1000), Uptime(1), &[]),
                (ms(1100), Ready(1, false), &["ready-probe w/1 in 100ms"]),
                (
                    ms(1200),
                    ReadyDue(1),
                    &["probe ready-probe w/1 tcp 127.0.0.1:801 within 2.8s"],
                ),
                (ms(1300), Ready(1, true), &[]),
                // Late timers of a ready process change nothing.
                (ms(4000), ReadyDeadline(1), &[]),
                (ms(4000), ReadyDue(1), &[]),
            ],
            "active 1:running",
        ),
        (
            "health_cmd is a ready exec check: $(wid) and $(pid) expand",
            |c| {
                let o = protocol::WatcherOptions {
                    cmd: Some("sleep".into()),
                    health_cmd: Some(vec!["check".into(), "$(wid)".into(), "$(pid)".into()]),
                    health_timeout: Some("2s".into()),
                    ..Default::default()
                };
                c.ready = WatcherConfig::from_options("w", &o).unwrap().ready;
            },
            true,
            &[(
                ms(0),
                Boot,
                &[
                    "spawn w/1",
                    "emit spawn w/1",
                    "uptime w/1 in 1s",
                    "ready-deadline w/1 in 2s",
                    "probe ready-probe w/1 exec check 1 101 within 2s",
                ],
            )],
            "active 1:starting",
        ),
        (
            "ready before min_uptime: running once min_uptime has passed",
            ready_tcp,
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (ms(300), Ready(1, true), &[]),
                (ms(1000), Uptime(1), &[]),
            ],
            "active 1:running",
        ),
        (
            "not ready within ready.timeout: stopped, unhealthy, a failed start respawned",
            ready_tcp,
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (ms(1000), Uptime(1), &[]),
                (ms(3000), Ready(1, false), &["ready-probe w/1 in 100ms"]),
                (
                    ms(4000),
                    ReadyDeadline(1),
                    &["emit unhealthy w/1", "SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                // The probe in flight when the deadline passed answers late.
                (ms(4010), Ready(1, true), &[]),
                (
                    ms(4100),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "ready-deadline w/1 in 4s",
                        "probe ready-probe w/1 tcp 127.0.0.1:801 within 4s",
                        "emit respawn w/1",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "not ready in time, past max_retry: fatal",
            |c| {
                ready_tcp(c);
                c.lifecycle.max_retry = 0;
            },
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (
                    ms(4000),
                    ReadyDeadline(1),
                    &["emit unhealthy w/1", "SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                (
                    ms(4100),
                    Killed(1, false),
                    &["emit exit w/1", "ended", "emit flapping w/1"],
                ),
            ],
            "fatal 1:fatal",
        ),
        (
            "a stale ready result, for the slot's previous process, is ignored",
            ready_tcp,
            true,
            &[
                (ms(0), Boot, &SPAWN_READY_1),
                (
                    ms(1500),
                    Exit(1, 0),
                    &[
                        "emit exit w/1",
                        "SIGKILL w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "ready-deadline w/1 in 4s",
                        "probe ready-probe w/1 tcp 127.0.0.1:801 within 4s",
                        "emit respawn w/1",
                    ],
                ),
                (ms(2600), Uptime(1), &[]),
                (ms(2700), StaleReady(1), &[]),
            ],
            "active 1:starting",
        ),
        (
            "notify: no probes; ready when the process says so",
            |c| {
                c.ready = Some(ReadyConfig {
                    probe: Probe::Notify,
                    timeout: Duration::from_secs(4),
                    interval: ms(100),
                });
            },
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "ready-deadline w/1 in 4s",
                    ],
                ),
                (ms(1000), Uptime(1), &[]),
                (ms(1500), Ready(1, true), &[]),
            ],
            "active 1:running",
        ),
        (
            "live fails `failures` times in a row: unhealthy, stopped, respawned",
            live_tcp,
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &["live-probe w/1 in 1s"]),
                (
                    ms(2000),
                    LiveDue(1),
                    &["probe live-probe w/1 tcp 127.0.0.1:801 within 500ms"],
                ),
                (ms(2100), Live(1, false), &["live-probe w/1 in 1s"]),
                (ms(3100), LiveDue(1), &[LIVE_PROBE]),
                // A pass in between starts the count again.
                (ms(3200), Live(1, true), &["live-probe w/1 in 1s"]),
                (ms(4200), LiveDue(1), &[LIVE_PROBE]),
                (ms(4300), Live(1, false), &["live-probe w/1 in 1s"]),
                (ms(5300), LiveDue(1), &[LIVE_PROBE]),
                (
                    ms(5400),
                    Live(1, false),
                    &["emit unhealthy w/1", "SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                // A timer of the old process's probes changes nothing.
                (ms(5500), LiveDue(1), &[]),
                (
                    ms(5600),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "emit respawn w/1",
                    ],
                ),
            ],
            "active 1:starting",
        ),
        (
            "live fails under restart = never: the process stays exited",
            |c| {
                live_tcp(c);
                c.lifecycle.restart = RestartPolicy::Never;
            },
            true,
            &[
                (ms(0), Boot, &SPAWN_1),
                (ms(1000), Uptime(1), &["live-probe w/1 in 1s"]),
                (ms(2000), LiveDue(1), &[LIVE_PROBE]),
                (ms(2100), Live(1, false), &["live-probe w/1 in 1s"]),
                (ms(3100), LiveDue(1), &[LIVE_PROBE]),
                (
                    ms(3200),
                    Live(1, false),
                    &["emit unhealthy w/1", "SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                (ms(3300), Killed(1, false), &["emit exit w/1", "ended"]),
            ],
            "stopped 1:exited",
        ),
        (
            "start --waiting answers once the process is ready",
            ready_tcp,
            false,
            &[
                (
                    ms(0),
                    StartWaiting,
                    &[
                        "emit start w",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "ready-deadline w/1 in 4s",
                        "probe ready-probe w/1 tcp 127.0.0.1:801 within 4s",
                        "persist",
                    ],
                ),
                (ms(1000), Uptime(1), &[]),
                (ms(1200), Ready(1, true), &["reply ok"]),
            ],
            "active 1:running",
        ),
        (
            "start --waiting fails once its process is not ready in time",
            ready_tcp,
            false,
            &[
                (
                    ms(0),
                    StartWaiting,
                    &[
                        "emit start w",
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "ready-deadline w/1 in 4s",
                        "probe ready-probe w/1 tcp 127.0.0.1:801 within 4s",
                        "persist",
                    ],
                ),
                (ms(500), Ready(1, false), &["ready-probe w/1 in 100ms"]),
                (
                    ms(4000),
                    ReadyDeadline(1),
                    &[
                        "emit unhealthy w/1",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "reply error: process 1 of 'w' did not come up: not ready: health check \
                         did not pass within 4s (last: refused); it is restarted as its restart \
                         policy says, and `ctl list w` shows how it goes",
                    ],
                ),
            ],
            "stopping 1:stopping",
        ),
        (
            "a stopped watcher starts nothing at boot",
            same,
            false,
            &[(ms(0), Boot, &[])],
            "stopped",
        ),
        (
            "depends_on: a watcher starts once every process of its dependency is up",
            |c| {
                c.command.numprocesses = 2;
                c.lifecycle.depends_on = vec!["db".into()];
            },
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "spawn db/1",
                        "emit spawn db/1",
                        "uptime db/1 in 1s",
                        "spawn db/2",
                        "emit spawn db/2",
                        "uptime db/2 in 1s",
                    ],
                ),
                (ms(1000), UptimeOf("db", 1), &[]),
                (
                    ms(1100),
                    UptimeOf("db", 2),
                    &[
                        "spawn w/1",
                        "emit spawn w/1",
                        "uptime w/1 in 1s",
                        "spawn w/2",
                        "emit spawn w/2",
                        "uptime w/2 in 1s",
                    ],
                ),
            ],
            "active 1:starting 2:starting | db: active 1:running 2:running",
        ),
        (
            "depends_on: a stopped dependency is started first (Requires= and After=)",
            |c| c.lifecycle.depends_on = vec!["off".into()],
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &[
                        "emit start off",
                        "spawn off/1",
                        "emit spawn off/1",
                        "uptime off/1 in 1s",
                    ],
                ),
                (ms(1000), UptimeOf("off", 1), &SPAWN_1),
            ],
            "active 1:starting | off: active 1:running",
        ),
        (
            "depends_on: start of a watcher starts its stopped dependency, then waits",
            |c| c.lifecycle.depends_on = vec!["off".into()],
            false,
            &[
                (ms(0), Boot, &[]),
                (
                    ms(1000),
                    Start,
                    &[
                        "emit start off",
                        "spawn off/1",
                        "emit spawn off/1",
                        "uptime off/1 in 1s",
                        "emit start w",
                        "persist",
                        "reply ok",
                    ],
                ),
                (ms(2000), UptimeOf("off", 1), &SPAWN_1),
            ],
            "active 1:starting | off: active 1:running",
        ),
        (
            "depends_on: shutdown stops a watcher before its dependency begins stopping",
            |c| c.lifecycle.depends_on = vec!["db".into()],
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &["spawn db/1", "emit spawn db/1", "uptime db/1 in 1s"],
                ),
                (ms(1000), UptimeOf("db", 1), &SPAWN_1),
                (ms(2000), Uptime(1), &[]),
                (
                    ms(3000),
                    Shutdown,
                    &["SIGTERM w/1", "stop-check w/1 in 10s"],
                ),
                (
                    ms(3500),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "SIGTERM db/1",
                        "stop-check db/1 in 10s",
                    ],
                ),
                (
                    ms(4000),
                    KilledOf("db", 1, false),
                    &["emit exit db/1", "ended"],
                ),
            ],
            "stopped | db: stopped (finished)",
        ),
        (
            "depends_on: stop of a dependency stops its dependents first",
            |c| c.lifecycle.depends_on = vec!["db".into()],
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &["spawn db/1", "emit spawn db/1", "uptime db/1 in 1s"],
                ),
                (ms(1000), UptimeOf("db", 1), &SPAWN_1),
                (
                    ms(2000),
                    StopOf("db"),
                    &[
                        "emit stop w",
                        "SIGTERM w/1",
                        "stop-check w/1 in 10s",
                        "emit stop db",
                        "persist",
                        "reply ok",
                    ],
                ),
                (
                    ms(2500),
                    Killed(1, false),
                    &[
                        "emit exit w/1",
                        "ended",
                        "SIGTERM db/1",
                        "stop-check db/1 in 10s",
                    ],
                ),
                (
                    ms(3000),
                    KilledOf("db", 1, false),
                    &["emit exit db/1", "ended"],
                ),
                // Starting the dependent starts the dependency again, then itself.
                (
                    ms(4000),
                    Start,
                    &[
                        "emit start db",
                        "spawn db/1",
                        "emit spawn db/1",
                        "uptime db/1 in 1s",
                        "emit start w",
                        "persist",
                        "reply ok",
                    ],
                ),
            ],
            "active | db: active 1:starting",
        ),
        (
            "depends_on: rm of a dependency is refused, naming its dependents",
            |c| c.lifecycle.depends_on = vec!["db".into()],
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &["spawn db/1", "emit spawn db/1", "uptime db/1 in 1s"],
                ),
                (
                    ms(100),
                    RmOf("db"),
                    &[
                        "reply error: watcher 'db' cannot be removed: 'w' depends on it; \
                       remove it first, or take 'db' out of its depends_on (ctl set w \
                       depends_on ...)",
                    ],
                ),
            ],
            "active | db: active 1:starting",
        ),
        (
            "depends_on: a dependency that stopped holds back new processes, not old ones",
            |c| c.lifecycle.depends_on = vec!["db".into()],
            true,
            &[
                (
                    ms(0),
                    Boot,
                    &["spawn db/1", "emit spawn db/1", "uptime db/1 in 1s"],
                ),
                (ms(1000), UptimeOf("db", 1), &SPAWN_1),
                (ms(2000), Uptime(1), &[]),
                (
                    ms(3000),
                    KilledOf("db", 1, false),
                    &[
                        "emit exit db/1",
                        "SIGKILL db/1",
                        "ended",
                        "spawn db/1",
                        "emit spawn db/1",
                        "uptime db/1 in 1s",
                        "emit respawn db/1",
                    ],
                ),
                (ms(3100), Incr(1), &["persist", "reply ok"]),
                (
                    ms(4000),
                    UptimeOf("db", 1),
                    &["spawn w/2", "emit spawn w/2", "uptime w/2 in 1s"],
                ),
            ],
            "active 1:running 2:starting | db: active 1:running",
        ),
    ]);
}

#[test]
fn more_than_a_batch_of_processes_start_over_turns() {
    let mut cfg = config("sleep");
    cfg.command.numprocesses = 30;
    let mut sim = Sim::new(cfg, true);
    let first = sim.step(ms(0), In::Boot);
    let spawns = |e: &[String]| e.iter().filter(|e| e.starts_with("spawn")).count();
    assert_eq!(spawns(&first), 25, "{first:?}");
    assert_eq!(first.last().map(String::as_str), Some("warmup w next turn"));
    assert!(!sim.sup.watchers["w"].settled());
    let second = sim.step(ms(0), In::Warmup);
    assert_eq!(spawns(&second), 5, "{second:?}");
    assert!(sim.sup.watchers["w"].settled());
}

/// A stopped-or-stopping watcher "w" whose slot 1 is stopping a process group, without
/// real processes: its command does not exist and it is never respawned, so any start
/// shows as one failed spawn.
fn stopping_sim() -> Sim {
    let cfg = WatcherConfig::from_options(
        "w",
        &WatcherOptions {
            cmd: Some("/nonexistent/never-runs".into()),
            respawn: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    let mut sim = Sim::new(cfg, true);
    sim.sup.next_gen = 10;
    let mut slot = Slot::new(1);
    slot.gen = 1;
    slot.state = ProcessState::Running;
    slot.pid = Some(u32::MAX);
    slot.restarts = 3;
    sim.sup.watchers.get_mut("w").unwrap().slots.insert(1, slot);
    sim
}

/// The leader of slot 1 was killed, and its group is gone.
fn leader_killed(sim: &mut Sim) {
    sim.step(ms(1000), In::Killed(1, false));
}

#[test]
fn a_start_while_a_slot_stops_starts_it_once_its_group_is_gone() {
    type Step = fn(&mut Supervisor);
    let stop: Step = |a| a.stop_watcher("w");
    let start: Step = |a| a.start_watcher("w");
    let restart_one: Step = |a| a.stop_slot("w", 1, true);
    // What happens while slot 1 stops, then the restarts of the new process started
    // in slot 1 once the group is gone, or None when the slot goes.
    let cases: &[(&str, &[Step], Option<u32>)] = &[
        ("stop", &[stop], None),
        ("stop, start", &[stop, start], Some(0)),
        ("stop, start, stop", &[stop, start, stop], None),
        ("stop, start, start", &[stop, start, start], Some(0)),
        ("restart one", &[restart_one], Some(4)),
        ("restart one, start", &[restart_one, start], Some(4)),
        ("restart one, stop", &[restart_one, stop], None),
    ];
    for (what, steps, restarts) in cases {
        let mut actor = stopping_sim();
        for step in *steps {
            step(&mut actor.sup);
            let effects = std::mem::take(&mut actor.sup.out);
            actor.perform(effects);
        }
        let w = &actor.sup.watchers["w"];
        // Until the group is gone, the watcher says it is stopping, not active.
        assert_eq!(w.state(), WatcherState::Stopping, "{what}");
        assert!(!w.settled(), "{what}");
        leader_killed(&mut actor);
        let w = &actor.sup.watchers["w"];
        assert!(w.settled(), "{what}");
        match (w.slots.get(&1), restarts) {
            (None, None) => {}
            (Some(s), Some(restarts)) => {
                // A new process was spawned (here it cannot start, and stays exited).
                assert!(s.gen >= 10, "{what}: {s:?}");
                assert_eq!(s.restarts, *restarts, "{what}: {s:?}");
                assert!(
                    s.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("cannot start")),
                    "{what}: {s:?}"
                );
                assert_eq!(s.state, ProcessState::Exited, "{what}: {s:?}");
            }
            (slot, _) => panic!("{what}: slot 1 is {slot:?}, expected {restarts:?}"),
        }
        // A watcher that should run has its process started; one that should not,
        // none.
        assert_eq!(w.run, restarts.is_some(), "{what}");
    }
}

#[test]
fn every_wait_has_a_bounded_budget() {
    let mut cfg = WatcherConfig::from_options(
        "w",
        &WatcherOptions {
            cmd: Some("sleep".into()),
            ..Default::default()
        },
    )
    .unwrap();
    // 30s graceful, 5s SIGKILL grace, no warmup, 60s margin.
    assert_eq!(settle_budget(&cfg), Duration::from_secs(95));
    cfg.lifecycle.warmup_delay = Duration::from_secs(3600);
    cfg.command.numprocesses = 100_000;
    assert_eq!(settle_budget(&cfg), MAX_WAIT);
    cfg.lifecycle.graceful_timeout = Duration::MAX;
    assert_eq!(settle_budget(&cfg), MAX_WAIT);
}

#[test]
fn a_wait_counts_the_watchers_it_depends_on_and_those_that_depend_on_it() {
    let mut cfg = config("sleep");
    cfg.lifecycle.depends_on = vec!["db".into()];
    let mut sim = Sim::new(cfg, true);
    let alone = Sim::new(config("sleep"), true);
    let db = sim.sup.watchers["db"].cfg.clone();
    for name in ["w", "db"] {
        sim.sup.wait_settled(vec![name.into()], 1, None);
        let w = sim.sup.waiters.pop().unwrap();
        let own = settle_budget(&sim.sup.watchers[name].cfg);
        let other = if name == "w" {
            db.clone()
        } else {
            config("sleep")
        };
        assert_eq!(
            w.deadline - sim.t0,
            own + dependency_budget(&other),
            "{name}"
        );
    }
    let mut alone = alone;
    alone.sup.wait_settled(vec!["w".into()], 1, None);
    let w = alone.sup.waiters.pop().unwrap();
    assert_eq!(
        w.deadline - alone.t0,
        settle_budget(&alone.sup.watchers["w"].cfg)
    );
}

/// Every watcher command answers with the type of data its protocol declares
/// ([`Command::reply_kind`], what ctl reads the reply as); the agent's own commands are
/// refused here, as dispatch answers them. With the exhaustive matches over `Command`
/// in dispatch, in the supervisor's handler and in `reply_kind`, a new command cannot
/// reach a client with data of another type unnoticed.
#[test]
fn every_command_answers_with_the_data_it_declares() {
    let mut watcher_commands = 0;
    for mut c in Command::examples() {
        if let Command::Add(a) = &mut c {
            a.name = "other".into();
        }
        let (name, declared) = (c.name(), c.reply_kind());
        let mut sim = Sim::new(config("sleep"), false);
        sim.sup.limits.allow_remote_exec = true;
        let mut input = sim.command(c);
        let outcome = (0..3).find_map(|_| {
            let effects = sim
                .sup
                .step(std::mem::replace(&mut input, Input::Tick), sim.t0);
            effects.into_iter().find_map(|e| {
                if let Effect::Reply { outcome, .. } | Effect::SignalProcesses { outcome, .. } = e {
                    Some(outcome)
                } else {
                    None
                }
            })
        });
        match outcome {
            Some(Ok(data)) => {
                assert_eq!(data.kind(), declared, "{name}");
                watcher_commands += 1;
            }
            Some(Err(e)) => assert!(
                e.reason.contains("is not a watcher command"),
                "{name}: {}",
                e.reason
            ),
            None => panic!("{name}: no answer"),
        }
    }
    assert_eq!(watcher_commands, 17);
}

/// `add` may list only sockets the node has bound; a process of a watcher with sockets
/// is spawned with their fds, in the order of its list, and `$(sockets.NAME)` expanded.
#[test]
fn added_watchers_get_the_node_s_sockets_by_name() {
    use crate::sockets::{SocketOptions, SocketSet, SocketSpec};
    let spec = |name: &str| {
        let o = SocketOptions {
            port: Some(0),
            ..Default::default()
        };
        (name.to_owned(), SocketSpec::from_options(name, &o).unwrap())
    };
    let sockets = SocketSet::bind(&[spec("a"), spec("b")].into(), &SocketSet::default()).unwrap();
    let mut sim = Sim::new(config("sleep"), false);
    sim.sup.limits.allow_remote_exec = true;
    sim.sup.sockets = sockets.clone();
    let add = |list: &[&str]| {
        Command::Add(Box::new(protocol::command::AddProps {
            name: "x".into(),
            cmd: "srv".into(),
            args: vec!["--fd=$(sockets.a)".into()],
            options: Some(WatcherOptions {
                sockets: Some(list.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            start: true,
        }))
    };
    let input = sim.command(add(&["a", "nope"]));
    let effects = sim.sup.step(input, sim.t0);
    let refused = effects.iter().find_map(|e| match e {
        Effect::Reply {
            outcome: Err(e), ..
        } => Some(e.reason.clone()),
        _ => None,
    });
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("no socket 'nope'")),
        "{effects:?}"
    );
    let input = sim.command(add(&["b", "a"]));
    let effects = sim.sup.step(input, sim.t0);
    let spawn = effects
        .iter()
        .find_map(|e| match e {
            Effect::Spawn(o) => Some(o.clone()),
            _ => None,
        })
        .expect("a spawn");
    let names: Vec<&str> = spawn.spec.listen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
    assert!(std::sync::Arc::ptr_eq(
        &spawn.spec.listen[1].1,
        &sockets.get("a").unwrap().fd
    ));
    assert_eq!(spawn.spec.args, ["--fd=4"]);
}

/// A reload that moves a socket: the dry run lists the socket's change and the watcher
/// that would restart, and changes nothing; applied with the sockets the actor bound,
/// the watcher restarts (by the handle, one process at a time) and the new sockets
/// replace the old. A watcher kept from runtime changes that lists a socket the file
/// drops refuses the reload.
#[test]
fn a_reload_that_moves_a_socket_restarts_its_watchers_and_a_dry_run_binds_nothing() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use protocol::reply::{PlanAction, PlanData, ReplyData};

    use super::Reload;
    use crate::sockets::{SocketOptions, SocketSet, SocketSpec};

    let spec = |name: &str, reuseport: bool| {
        let o = SocketOptions {
            port: Some(0),
            reuseport: Some(reuseport),
            ..Default::default()
        };
        (name.to_owned(), SocketSpec::from_options(name, &o).unwrap())
    };
    let old: BTreeMap<_, _> = [spec("a", false), spec("b", false)].into();
    let bound = SocketSet::bind(&old, &SocketSet::default()).unwrap();
    let mut cfg = config("sleep");
    cfg.sockets = vec!["a".into()];
    let mut sim = Sim::new(cfg.clone(), true);
    sim.sup.sockets = bound.clone();
    let file = BTreeMap::from([("w".to_owned(), cfg)]);
    // a moves (another socket: reuseport), b takes another backlog (the same socket),
    // c is new.
    let mut new = old.clone();
    new.extend([spec("a", true), spec("c", false)]);
    new.get_mut("b").unwrap().backlog = 512;
    let reload = |dry_run| {
        Box::new(Reload {
            file: file.clone(),
            sockets: new.clone(),
            base: file.clone(),
            dry_run,
        })
    };
    let plan_of = |effects: &[Effect]| -> PlanData {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::Reply {
                    outcome: Ok(ReplyData::Plan(p)),
                    ..
                } => Some(p.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no plan: {effects:?}"))
    };

    let effects = sim.sup.step(Input::Reload(reload(true), None, 900), sim.t0);
    let p = plan_of(&effects);
    assert!(p.dry_run);
    assert_eq!(p.changed, ["w"]);
    assert!(p.watchers[0].restart);
    assert_eq!(p.watchers[0].changes[0].key, "socket.a");
    let sockets: Vec<(&str, PlanAction)> = p
        .sockets
        .iter()
        .map(|s| (s.name.as_str(), s.action))
        .collect();
    assert_eq!(
        sockets,
        [
            ("c", PlanAction::Added),
            ("a", PlanAction::Changed),
            ("b", PlanAction::Changed)
        ]
    );
    assert_eq!(p.sockets[1].changes[0].key, "reuseport");
    assert_eq!(p.sockets[2].changes[0].key, "backlog");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Configure { .. })));
    assert!(Arc::ptr_eq(
        &sim.sup.sockets.get("a").unwrap().fd,
        &bound.get("a").unwrap().fd
    ));
    assert!(!sim.sup.sockets.contains("c"));

    let rebound = SocketSet::bind(&new, &bound).unwrap();
    let input = Input::Reload(reload(false), Some(Box::new(rebound.clone())), 901);
    let effects = sim.sup.step(input, sim.t0);
    let applied = plan_of(&effects);
    assert!(!applied.dry_run);
    assert_eq!(applied.changed, ["w"]);
    assert!(applied.watchers[0].restart);
    assert_eq!(applied.sockets, p.sockets);
    assert!(Arc::ptr_eq(
        &sim.sup.sockets.get("a").unwrap().fd,
        &rebound.get("a").unwrap().fd
    ));
    assert!(sim.sup.sockets.contains("c"));

    // Kept from runtime changes (the file's entry is as last loaded), "w" lists a socket
    // the file no longer defines.
    let mut dropped = reload(false);
    dropped.sockets.remove("a");
    let e = sim.sup.check_reload(&dropped).unwrap_err();
    assert!(e.reason.contains("lists socket 'a'"), "{}", e.reason);
    let mut runtime = file["w"].clone();
    runtime.lifecycle.graceful_timeout = Duration::from_secs(3);
    sim.sup.watchers.get_mut("w").unwrap().cfg = runtime;
    let e = sim.sup.check_reload(&dropped).unwrap_err();
    assert!(
        e.reason.contains("which the file no longer defines"),
        "{}",
        e.reason
    );
}

/// `set` of a check: one that runs a command needs `allow_remote_exec`, as `health_cmd`
/// does; `health_cmd` and `health_timeout` set the `ready` check they spell; both
/// spellings at once are refused.
#[test]
fn set_of_checks_is_gated_and_health_cmd_spells_ready_exec() {
    use serde_json::json;
    let set = |sim: &mut Sim, options: serde_json::Value, remote_exec: bool| {
        sim.sup.limits.allow_remote_exec = remote_exec;
        let options = options
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let input = sim.command(Command::Set(protocol::command::SetProps {
            name: "w".into(),
            options,
        }));
        let got = sim.sup.step(input, sim.t0);
        got.into_iter()
            .find_map(|e| match e {
                Effect::Reply { outcome, .. } => Some(outcome.map(|_| ())),
                _ => None,
            })
            .unwrap()
    };
    let ready = |sim: &Sim| sim.sup.watchers["w"].cfg.ready.clone();
    let mut sim = Sim::new(config("sleep"), false);
    for (options, what) in [
        (
            json!({"ready": {"exec": ["true"]}}),
            "setting 'ready' with exec",
        ),
        (
            json!({"live": {"exec": ["true"]}}),
            "setting 'live' with exec",
        ),
        (json!({"health_cmd": ["true"]}), "setting 'health_cmd'"),
    ] {
        let e = set(&mut sim, options, false).unwrap_err();
        assert_eq!(e.errno, protocol::Errno::Forbidden, "{}", e.reason);
        assert!(e.reason.starts_with(what), "{}", e.reason);
    }
    set(
        &mut sim,
        json!({"ready": {"tcp": "127.0.0.1:80$(wid)"}}),
        false,
    )
    .unwrap();
    assert_eq!(
        ready(&sim).unwrap().probe,
        Probe::Tcp("127.0.0.1:80$(wid)".into())
    );
    set(&mut sim, json!({"health_timeout": "3s"}), false).unwrap();
    assert_eq!(ready(&sim).unwrap().timeout, Duration::from_secs(3));
    set(&mut sim, json!({"health_cmd": ["check", "$(wid)"]}), true).unwrap();
    let r = ready(&sim).unwrap();
    assert_eq!(r.probe, Probe::Exec(vec!["check".into(), "$(wid)".into()]));
    assert_eq!(r.timeout, Duration::from_secs(3), "the timeout is kept");
    set(&mut sim, json!({"health_cmd": null}), true).unwrap();
    assert_eq!(ready(&sim), None);
    let e = set(
        &mut sim,
        json!({"ready": {"tcp": "h:1"}, "health_timeout": "1s"}),
        true,
    )
    .unwrap_err();
    assert!(
        e.reason.contains("another spelling of ready.timeout"),
        "{}",
        e.reason
    );
    for bad in [
        json!({"ready": {"tcp": "h:1", "timeout": "2h"}}),
        json!({"live": {"tcp": "h:1", "failures": 0}}),
        json!({"ready": {"http": "http://h/\r\nX: y"}}),
        json!({"ready": {"nope": 1}}),
    ] {
        let e = set(&mut sim, bad.clone(), true).unwrap_err();
        assert_eq!(e.errno, protocol::Errno::BadOption, "{bad}: {}", e.reason);
        assert!(
            e.reason.starts_with("option 'ready") || e.reason.starts_with("option 'live"),
            "{bad}: {}",
            e.reason
        );
    }
}

#[test]
fn a_replacement_that_cannot_start_leaves_the_old_process_running() {
    let mut cfg = config("sleep");
    cfg.lifecycle.max_surge = Some(1);
    let mut sim = Sim::new(cfg, true);
    sim.step(ms(0), In::Boot);
    sim.step(ms(1000), In::Uptime(1));
    let old = sim.slot(1).and_then(|s| s.pid);
    if let Some(w) = sim.sup.watchers.get_mut("w") {
        w.cfg.command.cmd = "/nonexistent/server".into();
    }
    let got = sim.step(ms(2000), In::RestartSlot(1));
    assert_eq!(
        got,
        [
            "spawn w/1",
            "reply error: process 1 of 'w' was not replaced: its replacement cannot start \
             \"/nonexistent/server\": not found; the old process keeps running"
        ]
    );
    assert_eq!(sim.end(), "active 1:running");
    assert_eq!(sim.slot(1).and_then(|s| s.pid), old);
}

mod guards;
mod hooks;
