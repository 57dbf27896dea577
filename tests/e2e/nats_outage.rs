//! The agent without NATS: its processes keep running, it reconnects when the server is
//! back, and it still stops cleanly on SIGTERM while the server is gone.

use std::time::Duration;

use e2e::*;

const T: Duration = Duration::from_secs(20);

fn sleeper(secs: &str) -> String {
    format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\nnumprocesses = 2\n")
}

fn wait_disconnected(agent: &Agent) {
    wait_until(T, "the agent to notice NATS is gone", || {
        agent.stderr_log().contains("disconnected from NATS")
    });
}

#[test]
fn processes_keep_running_while_nats_is_down_and_the_agent_reconnects() {
    let mut nats = NatsServer::start();
    let agent = Agent::start(&nats, "n1", &sleeper(&unique_secs()));
    let kids = wait_for(T, "2 children", || {
        let k = agent.children();
        (k.len() == 2).then_some(k)
    });
    nats.kill();
    wait_disconnected(&agent);
    assert_eq!(
        agent.children(),
        kids,
        "processes changed while NATS was down"
    );

    nats.restart();
    wait_until(T, "the agent to answer again", || {
        agent.ctl(&["--timeout", "1s", "ping"]).code == 0
    });
    assert_eq!(agent.children(), kids);
    let r = agent.ctl_ok(&["incr", "w"]);
    assert_eq!(r["numprocesses"], 3);
    wait_until(T, "3 children", || agent.children().len() == 3);
}

#[test]
fn sigterm_while_nats_is_down_still_stops_everything_and_exits_0() {
    let mut nats = NatsServer::start();
    let secs = unique_secs();
    let mut agent = Agent::start(&nats, "n1", &sleeper(&secs));
    wait_until(T, "2 children", || agent.children().len() == 2);
    nats.kill();
    wait_disconnected(&agent);

    // `terminate` fails the test if SIGTERM is not enough within 10 s.
    let status = agent.terminate();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 0);
}
