//! Every agent is an instance of the NATS micro service `nodeagent`: a client that is
//! not ours (the raw NATS protocol over a TCP socket, as another tool speaks it) finds
//! every agent with `$SRV.PING`, `$SRV.INFO.nodeagent` and `$SRV.STATS.nodeagent`,
//! with its endpoints, version and request counts; the counts rise with ctl commands;
//! and a broadcast command still runs once on each agent, not once per endpoint or
//! never (queue groups). The shipped secure config lets a monitor discover the agents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use e2e::rawnats::RawNats;
use e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
/// How long a discovery request gathers answers when fewer than expected came.
const GATHER: Duration = Duration::from_secs(5);

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The answers to `subject`, by the node named in their metadata; waits for `nodes`.
fn by_node(raw: &mut RawNats, subject: &str, nodes: &[&str]) -> BTreeMap<String, Value> {
    let answers = raw.request_json(subject, b"", nodes.len(), GATHER);
    let got: BTreeMap<String, Value> = answers
        .into_iter()
        .map(|a| {
            let node = a["metadata"]["node"].as_str().map(str::to_owned);
            (node.unwrap_or_else(|| panic!("no node in {a}")), a)
        })
        .collect();
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, nodes, "answers to {subject}: {got:?}");
    got
}

/// The STATS of `node`: endpoint name -> num_requests. A stats answer has no
/// metadata: it is matched to its node by the instance id its PING answer gave.
fn requests(raw: &mut RawNats, nodes: &[&str], node: &str) -> BTreeMap<String, u64> {
    let id = by_node(raw, "$SRV.PING", nodes)[node]["id"]
        .as_str()
        .expect("an instance id")
        .to_owned();
    let stats = raw.request_json(&format!("$SRV.STATS.nodeagent.{id}"), b"", 1, GATHER);
    assert_eq!(stats.len(), 1, "{stats:?}");
    let s = &stats[0];
    assert_eq!(s["type"], "io.nats.micro.v1.stats_response", "{s}");
    s["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in {s}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["num_requests"].as_u64().unwrap_or_else(|| panic!("{e}")),
            )
        })
        .collect()
}

/// Every agent answers `$SRV.STATS.nodeagent`.
fn stats_all(raw: &mut RawNats, n: usize) {
    let stats = raw.request_json("$SRV.STATS.nodeagent", b"", n, GATHER);
    assert_eq!(stats.len(), n, "{stats:?}");
}

fn sleeper(n: u32) -> String {
    format!("[watcher.dummy]\ncmd = \"sleep\"\nargs = [\"1000\"]\nnumprocesses = {n}\n")
}

#[test]
fn nats_micro_ping_info_and_stats_list_every_agent_and_count_its_requests() {
    let nats = NatsServer::start();
    let first = Agent::start(&nats, "first", &sleeper(1));
    let second = Agent::start(&nats, "second", &sleeper(1));
    let nodes = ["first", "second"];
    let mut raw = RawNats::connect(nats.port(), None);

    // PING: one answer per agent, every one the same service in the same version.
    let pings = by_node(&mut raw, "$SRV.PING", &nodes);
    for (node, p) in &pings {
        assert_eq!(p["type"], "io.nats.micro.v1.ping_response", "{p}");
        assert_eq!(p["name"], "nodeagent", "{p}");
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"), "{p}");
        assert_eq!(p["metadata"]["prefix"], "cluster", "{node}: {p}");
    }
    // By instance id: that agent answers.
    let id = pings["second"]["id"].as_str().expect("an instance id");
    let one = raw.request_json(&format!("$SRV.PING.nodeagent.{id}"), b"", 1, GATHER);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["metadata"]["node"], "second");

    // INFO: each agent's command endpoints, the per-node and broadcast ones in a queue
    // group of their own, the service's in the service's group.
    let infos = by_node(&mut raw, "$SRV.INFO.nodeagent", &nodes);
    let mut own_queues = vec![];
    for (node, info) in &infos {
        assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
        let endpoints: BTreeMap<String, (String, String)> = info["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("no endpoints: {info}"))
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (s("name"), (s("subject"), s("queue_group")))
            })
            .collect();
        let own = endpoints["node"].1.clone();
        assert!(own.starts_with(&format!("{node}-")), "{endpoints:?}");
        let want: BTreeMap<String, (String, String)> = [
            ("node", format!("cluster.{node}.cmd"), own.clone()),
            ("node-command", format!("cluster.{node}.cmd.*"), own.clone()),
            ("all", "cluster.all.cmd".into(), own.clone()),
            ("all-command", "cluster.all.cmd.*".into(), own.clone()),
            (
                "members",
                "cluster.members".into(),
                "cluster-members".into(),
            ),
            ("svc-dummy", "cluster.svc.dummy.cmd".into(), "dummy".into()),
            (
                "svc-dummy-command",
                "cluster.svc.dummy.cmd.*".into(),
                "dummy".into(),
            ),
        ]
        .into_iter()
        .map(|(n, s, q)| (n.to_owned(), (s, q)))
        .collect();
        assert_eq!(endpoints, want, "{node}");
        own_queues.push(own);
    }
    assert_ne!(own_queues[0], own_queues[1], "each agent has its own group");

    // STATS: every agent answers, and the counts rise with the commands ctl sends.
    stats_all(&mut raw, 2);
    let before = requests(&mut raw, &nodes, "first");
    for _ in 0..3 {
        first.ctl_ok(&["status"]);
    }
    let after = requests(&mut raw, &nodes, "first");
    assert_eq!(
        after["node-command"],
        before["node-command"] + 3,
        "{before:?} -> {after:?}"
    );

    // A broadcast runs once on each agent: incr 1 -> 2 on both, and one more request
    // on each agent's broadcast endpoint.
    let all_before: Vec<u64> = nodes
        .iter()
        .map(|n| requests(&mut raw, &nodes, n)["all-command"])
        .collect();
    let out = ctl(&nats, &["--all", "incr", "dummy"]);
    out.expect_code(0, "ctl --all incr dummy");
    for (i, node) in nodes.iter().enumerate() {
        let r = ctl_ok(&nats, &["--node", node, "numprocesses", "dummy"]);
        assert_eq!(r["numprocesses"], 2, "{node}: {r}");
        let all_after = requests(&mut raw, &nodes, node)["all-command"];
        assert_eq!(all_after, all_before[i] + 1, "{node}");
    }
    for agent in [&first, &second] {
        wait_until(T, &format!("{} to run 2 processes", agent.name()), || {
            agent.running_children().len() == 2
        });
    }
}

#[test]
fn the_shipped_secure_config_lets_a_monitor_discover_the_agents() {
    let nats = NatsServer::start_with_config(example("nats-secure.conf"));
    let admin = nats.url_as("admin", "change-me-admin");
    let secure = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\n\n[nats]\n\
             servers = [\"{{nats_url}}\"]\nuser = \"{name}\"\npassword = \"change-me-{name}\"\n\n{}",
            sleeper(1)
        )
    };
    let first = Agent::start_config_as(&nats, &secure("first"), &admin, &[]);
    let second = Agent::start_config_as(&nats, &secure("second"), &admin, &[]);
    let nodes = ["first", "second"];
    let mut monitor = RawNats::connect(nats.port(), Some(("monitor", "change-me-monitor")));
    by_node(&mut monitor, "$SRV.PING", &nodes);
    let before = requests(&mut monitor, &nodes, "second");
    let out = ctl_url(
        &nats.url_as("monitor", "change-me-monitor"),
        &["--node", "second", "status"],
    );
    out.expect_code(0, "monitor: ctl --node second status");
    let after = requests(&mut monitor, &nodes, "second");
    assert_eq!(after["node-command"], before["node-command"] + 1);
    for agent in [&first, &second] {
        let log = agent.stderr_log();
        assert!(!log.contains("Permissions Violation"), "{log}");
    }
}
