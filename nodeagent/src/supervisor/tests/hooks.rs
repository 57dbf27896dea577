//! Table tests of hooks: which hook runs when, and what a result does.

use std::time::Duration;

use super::super::hooks::HookDone;
use super::super::model::Input;
use super::In::{Start, Stop, Uptime};
use super::{config, ms, Sim};
use crate::config::guards::{HookConfig, HookKind};

fn hooked(kinds: &[HookKind]) -> Sim {
    let mut cfg = config("sleep");
    for k in kinds {
        cfg.hooks.insert(
            *k,
            HookConfig {
                argv: vec!["true".into()],
                timeout: Duration::from_secs(1),
            },
        );
    }
    Sim::new(cfg, false)
}

/// The result of the hook `kind` last asked for, for `gen` (a gate's token or a
/// process's generation).
fn done(
    sim: &mut Sim,
    at: Duration,
    kind: HookKind,
    wid: Option<u32>,
    gen: u64,
    ok: bool,
) -> Vec<String> {
    sim.at = at;
    let input = Input::HookDone(Box::new(HookDone {
        watcher: "w".into(),
        kind,
        wid,
        gen,
        pid: None,
        result: if ok {
            Ok(())
        } else {
            Err("exited with code 1: no".into())
        },
    }));
    let effects = sim.sup.step(input, sim.t0 + at);
    sim.perform(effects)
}

#[test]
fn before_start_holds_the_start_and_a_failure_answers_it() {
    let mut sim = hooked(&[HookKind::BeforeStart]);
    let token = sim.sup.next_gen;
    assert_eq!(sim.step(ms(0), Start), ["hook before_start w"]);
    assert_eq!(sim.end(), "stopped");
    assert_eq!(
        done(&mut sim, ms(10), HookKind::BeforeStart, None, token, false),
        [
            "emit hook_failed w",
            "reply error: the before_start hook of 'w' failed: exited with code 1: no; \
             nothing was started"
        ]
    );
    assert_eq!(sim.end(), "stopped");
    // Passing, the start goes on and answers.
    let token = sim.sup.next_gen;
    sim.step(ms(20), Start);
    let got = done(&mut sim, ms(30), HookKind::BeforeStart, None, token, true);
    assert_eq!(
        got,
        [
            "emit start w",
            "spawn w/1",
            "emit spawn w/1",
            "uptime w/1 in 1s",
            "persist",
            "reply ok"
        ]
    );
}

#[test]
fn before_spawn_holds_the_spawn_and_a_failure_fails_the_start() {
    let mut sim = hooked(&[
        HookKind::BeforeSpawn,
        HookKind::AfterSpawn,
        HookKind::AfterExit,
    ]);
    let got = sim.step(ms(0), Start);
    assert_eq!(
        got,
        [
            "emit start w",
            "hook before_spawn w/1",
            "persist",
            "reply ok"
        ]
    );
    assert_eq!(sim.end(), "active 1:starting");
    let gen = sim.gen(1);
    let got = done(&mut sim, ms(10), HookKind::BeforeSpawn, Some(1), gen, true);
    assert_eq!(
        got,
        [
            "spawn w/1",
            "emit spawn w/1",
            "uptime w/1 in 1s",
            "hook after_spawn w/1"
        ]
    );
    sim.step(ms(1010), Uptime(1));
    // A stop runs after_exit once the process is gone.
    let got = sim.step(ms(2000), Stop);
    assert!(got.contains(&"SIGTERM w/1".to_owned()), "{got:?}");
    let got = sim.step(ms(2100), super::In::Exit(1, 0));
    assert!(got.contains(&"hook after_exit w/1".to_owned()), "{got:?}");
    // A failing before_spawn fails the start as a spawn would.
    sim.step(ms(3000), Start);
    let gen = sim.gen(1);
    let got = done(
        &mut sim,
        ms(3010),
        HookKind::BeforeSpawn,
        Some(1),
        gen,
        false,
    );
    assert_eq!(got[0], "emit hook_failed w/1", "{got:?}");
    assert!(!got.contains(&"spawn w/1".to_owned()), "{got:?}");
    // A stale result (an older generation) changes nothing.
    assert!(done(
        &mut sim,
        ms(3020),
        HookKind::BeforeSpawn,
        Some(1),
        gen,
        true
    )
    .is_empty());
}

#[test]
fn after_start_waits_for_every_process_and_after_stop_for_none() {
    let mut sim = hooked(&[HookKind::AfterStart, HookKind::AfterStop]);
    let got = sim.step(ms(0), Start);
    assert!(got.contains(&"hook after_start w".to_owned()), "{got:?}");
    let got = sim.step(ms(1000), Stop);
    assert!(!got.contains(&"hook after_stop w".to_owned()), "{got:?}");
    let got = sim.step(ms(1100), super::In::Exit(1, 0));
    assert!(got.contains(&"hook after_stop w".to_owned()), "{got:?}");
}
