//! Authorization by subject: each subject accepts only its declared commands, the
//! shipped roles of examples/nats-secure.conf let a monitor look but not touch and keep
//! each agent to its own subjects, a forged disconnect fails nobody, and a flood of
//! requests gets `busy` instead of exhausting the agent. Every refusal is checked for a
//! clear error, and the agent for its health afterwards: it answers a ping and its
//! processes (read from /proc) are the ones it had.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::*;
use futures::StreamExt;
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The agent's supervised processes, sorted.
fn children(agent: &Agent) -> Vec<u32> {
    let mut c = agent.children();
    c.sort_unstable();
    c
}

/// Waits until the agent runs `n` processes and returns them.
fn wait_children(agent: &Agent, n: usize) -> Vec<u32> {
    wait_for(T, &format!("{} to run {n} processes", agent.name()), || {
        let c = children(agent);
        (c.len() == n).then_some(c)
    })
}

/// One request on a raw subject; the reply as JSON.
async fn request(client: &async_nats::Client, subject: &str, body: &str) -> Value {
    let msg = tokio::time::timeout(
        T,
        client.request(subject.to_owned(), body.as_bytes().to_vec().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} within {T:?}"))
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("reply on {subject} is not JSON ({e})"))
}

/// Checks an error reply: its errno, a reason containing `needle`, and the schema.
fn expect_refused(reply: &Value, errno: u64, needle: &str, what: &str) {
    assert_eq!(reply["status"], "error", "{what}: {reply}");
    assert_eq!(reply["errno"], errno, "{what}: {reply}");
    let reason = reply["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(needle),
        "{what}: {reason:?} lacks {needle:?}"
    );
    validate("reply.schema.json", reply);
}

/// The agent answers a ping and runs exactly `procs`.
fn expect_healthy(agent: &Agent, procs: &[u32]) {
    agent
        .ctl(&["ping"])
        .expect_code(0, "ping after the refusals");
    assert_eq!(
        children(agent),
        procs,
        "{}'s processes changed",
        agent.name()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subject_takes_only_its_declared_commands() {
    let nats = NatsServer::start();
    let a = Agent::start(
        &nats,
        "a",
        "[watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\nnumprocesses = 2\n\n\
         [watcher.x]\ncmd = \"sleep\"\nargs = [\"1000\"]\nservice = \"other\"\n",
    );
    let procs = wait_children(&a, 3);
    let client = nats.client().await;

    // cluster.members is the queue group for membership questions, nothing else.
    for body in [
        r#"{"command":"quit"}"#,
        r#"{"command":"rm","properties":{"name":"w"}}"#,
        r#"{"command":"set","properties":{"name":"w","options":{"numprocesses":0}}}"#,
    ] {
        let r = request(&client, "cluster.members", body).await;
        expect_refused(&r, 5, "takes 'members' only", body);
    }
    let r = request(&client, "cluster.members", r#"{"command":"members"}"#).await;
    assert_eq!(r["status"], "ok", "{r}");

    // cluster.svc.w.cmd acts on watchers of service w only.
    let r = request(
        &client,
        "cluster.svc.w.cmd",
        r#"{"command":"stop","properties":{"name":"x"}}"#,
    )
    .await;
    expect_refused(&r, 5, "belongs to service 'other', not 'w'", "stop x via w");
    let r = request(&client, "cluster.svc.w.cmd.quit", r#"{"command":"quit"}"#).await;
    expect_refused(&r, 5, "names no watcher", "quit via a service");
    let r = request(
        &client,
        "cluster.svc.w.cmd.numprocesses",
        r#"{"command":"numprocesses","properties":{"name":"w"}}"#,
    )
    .await;
    assert_eq!(r["numprocesses"], 2, "a read on its own service: {r}");

    // A body that disagrees with its per-command subject.
    let r = request(&client, "cluster.a.cmd.status", r#"{"command":"quit"}"#).await;
    expect_refused(
        &r,
        5,
        "says 'quit' but came on the subject for 'status'",
        "quit on status",
    );
    let r = request(
        &client,
        "cluster.all.cmd.numprocesses",
        r#"{"command":"numprocesses","properties":{"name":"w","nb":0}}"#,
    )
    .await;
    expect_refused(&r, 5, "cmd.resize", "a resize on the read subject");

    expect_healthy(&a, &procs);
}

/// The `[nats]` table of the example node `name`, logging in as its own user.
fn secure_node(name: &str) -> String {
    let text = std::fs::read_to_string(example(&format!("{name}-secure.toml")))
        .unwrap_or_else(|e| panic!("read examples/{name}-secure.toml: {e}"));
    text.replace("nats://127.0.0.1:4222", "{nats_url}").replace(
        &format!("state_dir = \"state/{name}\""),
        "state_dir = \"{dir}/state\"",
    )
}

/// Connects as `user` with the password of examples/nats-secure.conf, recording the
/// server's error messages (permission violations) in the returned receiver.
async fn connect_as(
    nats: &NatsServer,
    user: &str,
    name: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .user_and_password(user.into(), format!("change-me-{user}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, rx)
}

/// Waits for the server to refuse a publish to each of `subjects`.
async fn expect_violations(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subjects: &[&str],
) {
    let mut want: Vec<String> = subjects
        .iter()
        .map(|s| format!("Permissions Violation for Publish to \"{s}\""))
        .collect();
    tokio::time::timeout(T, async {
        while !want.is_empty() {
            let e = errors.recv().await.expect("the error stream is open");
            want.retain(|w| !e.contains(w.as_str()));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permissions violation for {subjects:?} within {T:?}"));
}

/// Each node's own member view (asked of it directly), as name -> state.
async fn member_views(
    client: &async_nats::Client,
    nodes: &[&str],
) -> Vec<(String, Vec<(String, String)>)> {
    let mut views = vec![];
    for n in nodes {
        let r = request(
            client,
            &format!("cluster.{n}.cmd.members"),
            r#"{"command":"members"}"#,
        )
        .await;
        let members = r["members"]
            .as_array()
            .unwrap_or_else(|| panic!("members of {n}: {r}"))
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_owned(),
                    m["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        views.push((n.to_string(), members));
    }
    views
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_roles_let_a_monitor_look_and_keep_agents_to_their_own_subjects() {
    let nats = NatsServer::start_with_config(example("nats-secure.conf"));
    let admin = nats.url_as("admin", "change-me-admin");
    let monitor = nats.url_as("monitor", "change-me-monitor");
    let first = Agent::start_config_as(&nats, &secure_node("first"), &admin, &[]);
    let second = Agent::start_config_as(&nats, &secure_node("second"), &admin, &[]);
    let first_procs = wait_children(&first, 4);
    let second_procs = wait_children(&second, 3);
    let (admin_client, _) = connect_as(&nats, "admin", "e2e-admin").await;
    wait_until_async(T, "both agents to see each other alive", || async {
        member_views(&admin_client, &["first", "second"])
            .await
            .iter()
            .all(|(_, ms)| {
                ["first", "second"]
                    .iter()
                    .all(|n| ms.contains(&(n.to_string(), "alive".into())))
            })
    })
    .await;

    // The monitor reads: status of every node, and the stats stream.
    let out = ctl_url(&monitor, &["--all", "status"]);
    out.expect_code(0, "monitor: ctl --all status");
    assert!(
        out.stdout.contains("first") && out.stdout.contains("second"),
        "{}",
        out.stdout
    );
    let out = ctl_url(&monitor, &["--node", "second", "numprocesses", "dummy"]);
    out.expect_code(0, "monitor: numprocesses without a count");
    let (mon, _) = connect_as(&nats, "monitor", "e2e-monitor").await;
    let mut stats = mon
        .subscribe("cluster.*.stats")
        .await
        .expect("subscribe to stats");
    let msg = tokio::time::timeout(T, stats.next())
        .await
        .expect("a stats message as monitor")
        .expect("subscription open");
    validate(
        "stats.schema.json",
        &serde_json::from_slice(&msg.payload).expect("JSON"),
    );

    // ... but may not write: the server refuses, ctl says so, exit code 4.
    let (out, took) = timed(|| ctl_url(&monitor, &["--node", "first", "stop"]));
    out.expect_code(4, "monitor: ctl stop");
    assert!(
        out.stderr
            .contains("may not publish to cluster.first.cmd.stop")
            && out.stderr.contains("write permission"),
        "{}",
        out.stderr
    );
    println!("a refused stop is reported after {took:?}");
    let out = ctl_url(&monitor, &["--node", "first", "numprocesses", "dummy", "5"]);
    out.expect_code(4, "monitor: a resize");
    assert!(
        out.stderr.contains("cluster.first.cmd.resize"),
        "{}",
        out.stderr
    );
    // The plan of a reload is a read (its own subject); the reload itself is not.
    let out = ctl_url(&monitor, &["--node", "first", "reloadconfig", "--dry-run"]);
    out.expect_code(0, "monitor: reloadconfig --dry-run");
    assert!(out.stdout.contains("dry run"), "{}", out.stdout);
    let out = ctl_url(&monitor, &["--node", "first", "reloadconfig"]);
    out.expect_code(4, "monitor: reloadconfig");
    assert!(
        out.stderr.contains("cluster.first.cmd.reloadconfig"),
        "{}",
        out.stderr
    );

    // Agent first's user may not command node second ...
    let (as_first, mut errors) = connect_as(&nats, "first", "e2e-forger").await;
    let inbox = as_first.new_inbox();
    let mut answers = as_first
        .subscribe(format!("{inbox}.*"))
        .await
        .expect("subscribe to an inbox");
    for (i, subject) in ["cluster.second.cmd.quit", "cluster.second.cmd"]
        .iter()
        .enumerate()
    {
        as_first
            .publish_with_reply(
                *subject,
                format!("{inbox}.{i}"),
                r#"{"command":"quit"}"#.into(),
            )
            .await
            .expect("publish");
    }
    as_first.flush().await.expect("flush");
    expect_violations(
        &mut errors,
        &["cluster.second.cmd.quit", "cluster.second.cmd"],
    )
    .await;
    // ... nor speak for it: a forged "left" for second and a forged member.
    let ann = |node: &str, kind: &str| {
        serde_json::json!({
            "node": node, "kind": kind, "boot_id": "forged", "seq": 1_000_000,
            "started_at": 4.0e9, "time": 4.0e9, "heartbeat_ms": 1000, "version": "0",
            "hostname": "x", "pid": 1
        })
        .to_string()
    };
    as_first
        .publish("cluster.registry.second", ann("second", "left").into())
        .await
        .expect("publish");
    as_first
        .publish("cluster.registry.ghost", ann("ghost", "join").into())
        .await
        .expect("publish");
    as_first.flush().await.expect("flush");
    expect_violations(
        &mut errors,
        &["cluster.registry.second", "cluster.registry.ghost"],
    )
    .await;
    for (view, members) in member_views(&admin_client, &["first", "second"]).await {
        assert!(
            members.contains(&("second".into(), "alive".into())),
            "{view} sees {members:?}"
        );
        assert!(
            members.iter().all(|(n, _)| n != "ghost"),
            "{view} sees a forged member: {members:?}"
        );
    }

    expect_healthy(&second, &second_procs);
    expect_healthy(&first, &first_procs);
    // Second answered pings since, so a reply to first's requests would be here.
    as_first.flush().await.expect("flush");
    assert!(
        futures::FutureExt::now_or_never(answers.next()).is_none(),
        "second answered a request from first's user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_disconnect_fails_nobody_and_a_real_one_fails_its_member_after_a_reconnect() {
    let mut nats = NatsServer::start_with_config(example("nats-sysevents.conf"));
    // Heartbeats so slow that only a disconnect advisory can fail b within the test.
    let node = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nheartbeat = \"10s\"\nstate_dir = \"{{dir}}/state\"\n\n\
             [nats]\nservers = [\"{{nats_url}}\"]\nsystem_events_account = \"CLUSTER\"\n\n\
             [watcher.w]\ncmd = \"sleep\"\nargs = [\"1000\"]\n"
        )
    };
    let a = Agent::start_config(&nats, &node("a"));
    let mut b = Agent::start_config(&nats, &node("b"));
    let procs = wait_children(&a, 1);
    let client = nats.client().await;
    let state_of_b = || async {
        member_views(&client, &["a"]).await[0]
            .1
            .iter()
            .find(|(n, _)| n == "b")
            .map(|(_, s)| s.clone())
    };
    wait_until_async(T, "a to see b alive", || async {
        state_of_b().await.as_deref() == Some("alive")
    })
    .await;
    let mut advisories = client
        .subscribe("$SYS.ACCOUNT.CLUSTER.DISCONNECT")
        .await
        .expect("subscribe to advisories");
    client.flush().await.expect("flush");

    // A client that calls itself b connects and leaves.
    let forger = async_nats::ConnectOptions::new()
        .name("b")
        .connect(nats.url())
        .await
        .expect("the forger connects");
    forger.flush().await.expect("forger registered");
    drop(forger);
    tokio::time::timeout(T, async {
        while let Some(m) = advisories.next().await {
            if String::from_utf8_lossy(&m.payload).contains(r#""name":"b""#) {
                return;
            }
        }
    })
    .await
    .expect("the server announced the forger's disconnect");
    // a got the same advisory before these requests (one connection, in order); the
    // second asks after a has surely handled it.
    for _ in 0..2 {
        assert_eq!(
            state_of_b().await.as_deref(),
            Some("alive"),
            "a forged disconnect failed b"
        );
    }
    expect_healthy(&a, &procs);
    drop(client);

    // After a server restart b announces its new connection (a new server id) with its
    // next heartbeat.
    nats.kill();
    nats.restart();
    let client = nats.client().await;
    let server_id = client.server_info().server_id;
    let mut registry = client
        .subscribe("cluster.registry.b")
        .await
        .expect("subscribe to b's announcements");
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = registry.next().await {
            let ann: Value = serde_json::from_slice(&m.payload).expect("JSON");
            validate("registry.schema.json", &ann);
            if ann["server_id"] == server_id.as_str() && ann["client_id"].as_u64().is_some() {
                return;
            }
        }
    })
    .await
    .expect("b announces its connection to the restarted server");
    let state_of_b = || async {
        member_views(&client, &["a"]).await[0]
            .1
            .iter()
            .find(|(n, _)| n == "b")
            .map(|(_, s)| s.clone())
    };
    wait_until_async(T, "a to see b alive after the restart", || async {
        state_of_b().await.as_deref() == Some("alive")
    })
    .await;

    // b's own connection closing does fail it, long before a missed heartbeat could.
    let t0 = Instant::now();
    b.kill();
    wait_until_async(Duration::from_secs(8), "a to see b failed", || async {
        state_of_b().await.as_deref() == Some("failed")
    })
    .await;
    println!("b failed {:?} after its connection closed", t0.elapsed());
    expect_healthy(&a, &procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_256_requests_in_flight_the_agent_answers_busy() {
    let nats = NatsServer::start();
    // A process that ignores SIGTERM keeps every `stop` waiting for 60 s.
    let a = Agent::start(
        &nats,
        "a",
        "[watcher.stubborn]\ncmd = \"sh\"\nargs = [\"-c\", \"trap '' TERM; exec sleep 1000\"]\n\
         graceful_timeout = \"60s\"\n\n\
         [watcher.keep]\ncmd = \"sleep\"\nargs = [\"1000\"]\nnumprocesses = 2\n",
    );
    let all = wait_children(&a, 3);
    let keep: Vec<u32> = a.pids("keep").into_iter().map(|(_, p)| p).collect();
    let stubborn = a.pids("stubborn")[0].1;

    const SENT: usize = 300;
    const CAP: usize = 256;
    let client = nats.client().await;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .expect("subscribe to the inbox");
    let stop = r#"{"command":"stop","properties":{"name":"stubborn"}}"#;
    for i in 0..SENT {
        client
            .publish_with_reply("cluster.a.cmd.stop", format!("{inbox}.{i}"), stop.into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let mut busy = 0;
    let started = Instant::now();
    while busy < SENT - CAP {
        let msg = tokio::time::timeout(T, replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {busy} busy replies within {T:?}"))
            .expect("inbox open");
        let r: Value = serde_json::from_slice(&msg.payload).expect("JSON reply");
        expect_refused(&r, 9, "256 requests in flight", "a request past the cap");
        busy += 1;
    }
    println!("{busy} busy replies within {:?}", started.elapsed());

    // The stops finish once the stubborn process is gone; then the agent answers again.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stubborn as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut ok = 0;
    while ok < CAP {
        let msg = tokio::time::timeout(T, replies.next())
            .await
            .unwrap_or_else(|_| panic!("only {ok} of {CAP} stops answered within {T:?}"))
            .expect("inbox open");
        let r: Value = serde_json::from_slice(&msg.payload).expect("JSON reply");
        assert_eq!(r["status"], "ok", "{r}");
        ok += 1;
    }
    let mut left: Vec<u32> = all.into_iter().filter(|p| *p != stubborn).collect();
    left.sort_unstable();
    let mut keep = keep;
    keep.sort_unstable();
    assert_eq!(left, keep);
    expect_healthy(&a, &keep);
}

#[test]
fn an_agent_without_credentials_off_loopback_warns_once() {
    let net = NetNs::create();
    let nats = NatsServer::start_on(&net.host_ip, None);
    let a = Agent::start(&nats, "a", "");
    let warning = "without credentials on a non-loopback address";
    wait_until(T, "the warning", || a.stderr_log().contains(warning));
    // The start-up check and the agent's own connection: one warning.
    a.ctl(&["ping"]).expect_code(0, "ping");
    assert_eq!(
        a.stderr_log().matches(warning).count(),
        1,
        "{}",
        a.stderr_log()
    );

    // On loopback, no warning.
    let local = NatsServer::start();
    let b = Agent::start(&local, "b", "");
    b.ctl(&["ping"]).expect_code(0, "ping");
    assert!(!b.stderr_log().contains(warning), "{}", b.stderr_log());
}
