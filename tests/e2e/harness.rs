//! The harness itself: whatever a test starts is gone when the test ends, also when it
//! panics, also when a process left its group or the agent was SIGKILLed.

use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(20);

/// A watcher whose process starts one child in a session of its own (out of the
/// group the agent signals) and one in its group.
fn escaping(secs: &str) -> String {
    format!(
        "[watcher.esc]\ncmd = \"sh\"\n\
         args = [\"-c\", \"setsid sleep {secs} & sleep {secs} & exec sleep {secs}\"]\n"
    )
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let secs = unique_secs();
    let needle = format!("sleep {secs}");
    let caught = std::panic::catch_unwind(|| {
        let nats = NatsServer::start();
        let mut agent = Agent::start(&nats, "n1", &escaping(&secs));
        wait_until(T, "3 sleeps", || count_processes_with_cmdline(&needle) == 3);
        // SIGKILL the agent: its process dies with it (parent-death signal); the
        // children do not.
        agent.kill();
        panic!("the test fails here");
    });
    assert!(caught.is_err());
    assert_eq!(
        count_processes_with_cmdline(&needle),
        0,
        "processes outlived their test: {:?}",
        pids_with_cmdline(&needle)
    );
}

#[test]
fn a_process_that_left_its_group_is_found_by_its_marker() {
    let secs = unique_secs();
    let needle = format!("sleep {secs}");
    let nats = NatsServer::start();
    let marker;
    {
        let agent = Agent::start(&nats, "n1", &escaping(&secs));
        marker = agent.marker().to_owned();
        wait_until(T, "3 sleeps", || count_processes_with_cmdline(&needle) == 3);
        // Every one of them carries the agent's marker, also the one in its own session.
        let marked = pids_with_environ(&marker);
        for pid in pids_with_cmdline(&needle) {
            assert!(marked.contains(&pid), "{pid} has no marker");
        }
    }
    assert_eq!(count_processes_with_cmdline(&needle), 0);
    assert!(pids_with_environ(&marker).is_empty());
}
