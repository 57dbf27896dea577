//! The agent without NATS: its processes keep running, it reconnects when the server is
//! back, it still stops cleanly on SIGTERM while the server is gone, and when one server
//! of a NATS cluster dies its agents move to another without any member taken for failed.

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

#[test]
fn a_nats_server_fail_over_keeps_every_member_and_process() {
    // Two servers routed into one NATS cluster, each with a monitoring port.
    let servers = NatsServer::start_routed(2, "");
    let urls = format!("\"{}\", \"{}\"", servers[0].url(), servers[1].url());
    let secs = unique_secs();
    let node = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nheartbeat = \"200ms\"\nstate_dir = \"{{dir}}/state\"\n\n\
             [nats]\nservers = [{urls}]\n\n{}",
            sleeper(&secs)
        )
    };
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .map(|n| Agent::start_config(&servers[0], &node(n)))
        .collect();
    let all_alive = |url: &str| {
        let s = member_states(url);
        s.len() == 3 && s.iter().all(|(_, st)| st == "alive")
    };
    for s in &servers {
        wait_until(T, "all 3 alive, seen through each server", || {
            all_alive(&s.url())
        });
    }
    let kids: Vec<Vec<u32>> = agents
        .iter()
        .map(|a| {
            wait_for(T, "2 children", || {
                let k = a.children();
                (k.len() == 2).then_some(k)
            })
        })
        .collect();

    // Kill the server that agent a is on; its agents move to the other one.
    let on = |i: usize| servers[i].monitor("/connz").contains("\"name\": \"a\"");
    let victim = wait_for(T, "the server agent a is on", || (0..2).find(|&i| on(i)));
    let (mut servers, survivor) = (servers, 1 - victim);
    let moved = ["a", "b", "c"]
        .iter()
        .filter(|n| {
            servers[victim]
                .monitor("/connz")
                .contains(&format!("\"name\": \"{n}\""))
        })
        .count();
    servers[victim].kill();
    let url = servers[survivor].url();
    let mut worst: Vec<(String, String)> = vec![];
    let (_, took) = timed(|| {
        wait_until(T, "every agent answering through the other server", || {
            let now = member_states(&url);
            worst.extend(now.iter().filter(|(_, st)| st != "alive").cloned());
            agents
                .iter()
                .all(|a| ctl_url(&url, &["--timeout", "1s", "--node", a.name(), "ping"]).code == 0)
                && all_alive(&url)
        })
    });
    eprintln!(
        "fail-over of {moved} agent(s) from s{victim} to s{survivor}: all answering and \
         alive again after {took:?}; states seen on the way: {worst:?}"
    );
    assert!(
        !worst.iter().any(|(_, st)| st == "failed" || st == "left"),
        "a member was taken for failed or gone: {worst:?}"
    );
    for (a, k) in agents.iter().zip(&kids) {
        assert_eq!(&a.children(), k, "the processes of {} changed", a.name());
    }
}
