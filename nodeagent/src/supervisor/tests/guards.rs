//! Table tests of the guards: `max_memory` readings and `max_age` recycling.

use std::time::Duration;

use super::super::model::{Input, Timer};
use super::super::MemoryReading;
use super::In::{Boot, Exit, NewUptime, StopCheck, Uptime};
use super::{config, ms, Sim, SPAWN_1};

/// Readings of slot `wid`'s process (`rss` bytes each), one input each.
fn memory(sim: &mut Sim, at: Duration, wid: u32, rss: u64) -> Vec<String> {
    let pid = sim.slot(wid).and_then(|s| s.pid).unwrap_or(0);
    memory_of_pid(sim, at, wid, pid, rss)
}

fn memory_of_pid(sim: &mut Sim, at: Duration, wid: u32, pid: u32, rss: u64) -> Vec<String> {
    sim.at = at;
    let input = Input::Memory(vec![MemoryReading {
        watcher: "w".into(),
        wid,
        pid,
        rss_bytes: rss,
    }]);
    let effects = sim.sup.step(input, sim.t0 + at);
    sim.perform(effects)
}

/// The `max_age` timer of slot `wid`'s process fires.
fn aged(sim: &mut Sim, at: Duration, wid: u32) -> Vec<String> {
    sim.at = at;
    let gen = sim.gen(wid);
    let input = Input::Timer(Timer::MaxAge {
        name: "w".into(),
        wid,
        gen,
    });
    let effects = sim.sup.step(input, sim.t0 + at);
    sim.perform(effects)
}

#[test]
fn max_memory_restarts_after_readings_in_a_row_above_it() {
    let mut cfg = config("sleep");
    cfg.max_memory = Some(100 << 20);
    cfg.max_memory_samples = 2;
    let mut sim = Sim::new(cfg, true);
    assert_eq!(sim.step(ms(0), Boot), SPAWN_1);
    assert!(sim.step(ms(1000), Uptime(1)).is_empty());
    // Above, then below: the count starts again.
    assert!(memory(&mut sim, ms(1100), 1, 200 << 20).is_empty());
    assert!(memory(&mut sim, ms(1200), 1, 50 << 20).is_empty());
    assert!(memory(&mut sim, ms(1300), 1, 200 << 20).is_empty());
    // Another pid (an older process) changes nothing.
    assert!(memory_of_pid(&mut sim, ms(1350), 1, 1, 900 << 20).is_empty());
    let old_pid = sim.slot(1).and_then(|s| s.pid);
    assert_eq!(
        memory(&mut sim, ms(1400), 1, 200 << 20),
        [
            "emit max_memory w/1",
            "SIGTERM w/1",
            "stop-check w/1 in 10s"
        ]
    );
    // While it stops, more readings change nothing.
    assert!(memory(&mut sim, ms(1500), 1, 300 << 20).is_empty());
    assert_eq!(
        sim.step(ms(1600), Exit(1, 0)),
        [
            "emit exit w/1",
            "ended",
            "spawn w/1",
            "emit spawn w/1",
            "uptime w/1 in 1s"
        ]
    );
    assert_ne!(sim.slot(1).and_then(|s| s.pid), old_pid);
    assert_eq!(sim.slot(1).map(|s| s.restarts), Some(1));
    assert_eq!(sim.end(), "active 1:starting");
}

#[test]
fn max_memory_event_carries_the_figures() {
    let mut cfg = config("sleep");
    cfg.max_memory = Some(100 << 20);
    cfg.max_memory_samples = 1;
    let mut sim = Sim::new(cfg, true);
    sim.step(ms(0), Boot);
    let pid = sim.slot(1).and_then(|s| s.pid).unwrap();
    let input = Input::Memory(vec![MemoryReading {
        watcher: "w".into(),
        wid: 1,
        pid,
        rss_bytes: 150 << 20,
    }]);
    let effects = sim.sup.step(input, sim.t0 + ms(10));
    let ev = effects
        .iter()
        .find_map(|e| match e {
            super::super::model::Effect::Emit(ev) => Some(ev.clone()),
            _ => None,
        })
        .expect("an event");
    assert_eq!(ev.kind, "max_memory");
    assert_eq!(ev.pid, Some(pid));
    assert_eq!(ev.rss_bytes, Some(150 << 20));
    assert_eq!(ev.max_memory, Some(100 << 20));
    assert!(ev.reason.unwrap().contains("150.0MiB"));
}

#[test]
fn max_age_recycles_one_process_at_a_time() {
    let mut cfg = config("sleep");
    cfg.command.numprocesses = 2;
    cfg.max_age = Some(Duration::from_secs(10));
    let mut sim = Sim::new(cfg, true);
    let boot = sim.step(ms(0), Boot);
    assert!(boot.contains(&"max-age w/1 in 10s".to_owned()), "{boot:?}");
    sim.step(ms(1000), Uptime(1));
    sim.step(ms(1000), Uptime(2));
    // Both are due: the first is recycled, the second waits.
    assert_eq!(
        aged(&mut sim, ms(10_000), 1),
        ["emit max_age w/1", "SIGTERM w/1", "stop-check w/1 in 10s"]
    );
    assert!(aged(&mut sim, ms(10_000), 2).is_empty());
    assert_eq!(sim.end(), "stopping 1:stopping 2:running");
    // Its replacement runs, but is not up yet: the second still waits.
    let respawn = sim.step(ms(10_500), Exit(1, 0));
    assert!(respawn.contains(&"spawn w/1".to_owned()), "{respawn:?}");
    assert_eq!(sim.end(), "active 1:starting 2:running");
    // Up: now the second goes.
    assert_eq!(
        sim.step(ms(11_500), Uptime(1)),
        ["emit max_age w/2", "SIGTERM w/2", "stop-check w/2 in 10s"]
    );
    assert!(sim.step(ms(11_600), StopCheck(1, false)).is_empty());
}

#[test]
fn max_age_with_surge_starts_the_replacement_first() {
    let mut cfg = config("sleep");
    cfg.command.numprocesses = 2;
    cfg.lifecycle.max_surge = Some(1);
    cfg.max_age = Some(Duration::from_secs(10));
    let mut sim = Sim::new(cfg, true);
    sim.step(ms(0), Boot);
    sim.step(ms(1000), Uptime(1));
    sim.step(ms(1000), Uptime(2));
    let got = aged(&mut sim, ms(10_000), 1);
    assert_eq!(&got[..2], ["emit max_age w/1", "spawn w/1"], "{got:?}");
    assert!(aged(&mut sim, ms(10_000), 2).is_empty());
    assert_eq!(sim.end(), "active 1:running+starting 2:running");
    // The replacement is up: the old process stops; the second waits until it is gone.
    let got = sim.step(ms(11_000), NewUptime(1));
    assert_eq!(got, ["SIGTERM w/1", "stop-check w/1 in 10s"]);
    assert_eq!(sim.end(), "stopping 1:stopping+running 2:running");
    let got = sim.step(ms(11_100), Exit(1, 0));
    assert!(got.contains(&"emit max_age w/2".to_owned()), "{got:?}");
    assert_eq!(sim.end(), "active 1:running 2:running+starting");
}

#[test]
fn max_age_variance_spreads_processes_within_it() {
    let mut sim = Sim::new(config("sleep"), true);
    sim.sup.seed = 42;
    let variance = Duration::from_secs(600);
    let shares: Vec<Duration> = (1..200).map(|g| sim.sup.age_jitter(g, variance)).collect();
    assert!(shares.iter().all(|d| *d < variance));
    let early = shares.iter().filter(|d| **d < variance / 2).count();
    assert!(
        (60..140).contains(&early),
        "{early} of 199 in the first half"
    );
    assert_eq!(sim.sup.age_jitter(7, Duration::ZERO), Duration::ZERO);
}

#[test]
fn a_timer_of_an_older_max_age_is_ignored() {
    let mut cfg = config("sleep");
    cfg.max_age = Some(Duration::from_secs(10));
    let mut sim = Sim::new(cfg, true);
    sim.step(ms(0), Boot);
    sim.step(ms(1000), Uptime(1));
    if let Some(w) = sim.sup.watchers.get_mut("w") {
        w.cfg.max_age = Some(Duration::from_secs(60));
    }
    // The timer armed for 10s: the process has not run 60s.
    assert!(aged(&mut sim, ms(10_000), 1).is_empty());
    assert_eq!(
        aged(&mut sim, ms(60_000), 1),
        ["emit max_age w/1", "SIGTERM w/1", "stop-check w/1 in 10s"]
    );
}
