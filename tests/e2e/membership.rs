//! Membership as ctl sees it: who answers `members` and whom `--all` reaches.

use std::time::Duration;

use e2e::*;
use futures::StreamExt;

/// A newcomer learns of the alive members at once (Serf's state exchange on join), not
/// at their next heartbeat: otherwise `ctl --all` silently skips them while the
/// newcomer answers `members`.
#[test]
fn a_new_agent_knows_the_alive_members_at_once() {
    let nats = NatsServer::start();
    // A heartbeat long enough that waiting for it cannot pass for knowing at once.
    let _a = Agent::start_config(
        &nats,
        "[agent]\nname = \"a\"\nheartbeat = \"60s\"\nstate_dir = \"{dir}/state\"\n\n\
         [nats]\nservers = [\"{nats_url}\"]\n",
    );
    let _b = Agent::start(&nats, "b", "");
    let names = |r: &serde_json::Value| -> Vec<String> {
        r["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Any one agent answers `members`; ask until the newcomer does.
    wait_until(
        Duration::from_secs(15),
        "b to list a among its members",
        || {
            let replies = ctl_json(&nats, &["members"]);
            replies.len() == 1
                && replies[0]["node"] == "b"
                && names(&replies[0]).contains(&"a".to_owned())
        },
    );
    let (out, replies) = ctl_json_output(&nats, &["--all", "ping"]);
    out.expect_code(0, "ping every node");
    assert_eq!(replies.len(), 2, "{}", out.stdout);
}

/// The member names of `ctl members`' table, in its order.
fn table_names(out: &CtlOutput) -> Vec<String> {
    out.table().into_iter().map(|r| r["NAME"].clone()).collect()
}

/// With a `max_payload` so small that the member view comes in pages (64 KiB, the
/// least an agent takes; 600 virtual members of `membersim` and one real agent), ctl
/// follows them in every view: the table (only its fields), `--json` (every field, one
/// reply) and the fan-out of `--all` (names only) each see every member.
#[test]
fn every_view_of_the_members_comes_in_pages_and_ctl_follows_them() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, "max_payload: 65536\n").expect("write the server config");
    let nats = NatsServer::start_with_config(&conf);
    let _a = Agent::start(&nats, "a", "");
    let sim = std::process::Command::new(bin("membersim"))
        .args([
            "--server",
            &nats.url(),
            "--members",
            "600",
            "--heartbeat-ms",
            "2000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start membersim");
    let _sim = KillOnDrop(sim);
    let mut want: Vec<String> = vec!["a".into()];
    want.extend((0..600).map(|i| format!("v{i:05}")));
    wait_until(
        Duration::from_secs(30),
        "a and 600 virtual members alive",
        || {
            let out = ctl(&nats, &["members", "--status", "alive"]);
            out.code == 0 && table_names(&out) == want
        },
    );
    let table = ctl(&nats, &["members"]);
    table.expect_code(0, "ctl members");
    let rows = table.table();
    let v1 = rows.iter().find(|r| r["NAME"] == "v00001").expect("v00001");
    assert_eq!(
        (
            v1["HOST"].as_str(),
            v1["TAGS"].as_str(),
            v1["WATCHERS"].as_str()
        ),
        ("membersim", "rack=r1", "web(1/1)"),
        "{v1:?}"
    );
    assert_eq!(v1["PROCESSES"], "1/1", "{v1:?}");
    let (out, replies) = ctl_json_output(&nats, &["members"]);
    out.expect_code(0, "ctl members --json");
    assert_eq!(replies.len(), 1, "one reply with every member");
    validate_reply("members", &replies[0]);
    let full = replies[0]["members"].as_array().expect("members");
    let names: Vec<&str> = full.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, want);
    assert!(full.iter().all(|m| m["boot_id"].is_string()));
    let ping = ctl(&nats, &["--all", "ping"]);
    ping.expect_code(0, "ctl --all ping");
    let mut nodes: Vec<String> = ping
        .table()
        .into_iter()
        .map(|r| r["NODE"].clone())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, want);

    // The views on the wire: rows of their own fields, in pages that `next` follows.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let client = nats.client().await;
        let mut pages = 0;
        let mut seen: Vec<String> = vec![];
        let mut after: Option<String> = None;
        loop {
            let mut props = serde_json::json!({ "view": "table" });
            if let Some(a) = &after {
                props["after"] = a.as_str().into();
            }
            let page = ask_members(&client, props).await;
            assert_eq!(page["members"], serde_json::json!([]), "{page}");
            let rows = page["rows"].as_array().expect("rows");
            assert!(rows.iter().all(|r| r.get("boot_id").is_none()), "{page}");
            seen.extend(
                rows.iter()
                    .filter_map(|r| r["name"].as_str().map(str::to_owned)),
            );
            pages += 1;
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        assert!(pages > 1, "600 table rows fill more than 60 KiB");
        assert_eq!(seen, want);
        let names = ask_members(&client, serde_json::json!({ "view": "names" })).await;
        let row = &names["rows"][2];
        assert_eq!(
            row,
            &serde_json::json!({"name": "v00001", "state": "alive"})
        );
        assert_eq!(names["rows"].as_array().map(Vec::len), Some(601));
    });
}

/// One `members` request on `cluster.members` with these properties; its reply, checked
/// against the schema.
async fn ask_members(client: &async_nats::Client, props: serde_json::Value) -> serde_json::Value {
    let req = serde_json::json!({ "command": "members", "properties": props });
    let body = serde_json::to_vec(&req).expect("json");
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("cluster.members", body.into()),
    )
    .await
    .expect("a keeper answers within 5s")
    .expect("a reply");
    let reply: serde_json::Value = serde_json::from_slice(&msg.payload).expect("json");
    validate_reply("members", &reply);
    reply
}

/// `client` in the members queue group, as a keeper is (the server knows it once this
/// returns): ctl's `cluster.members` requests come to it.
async fn join_the_keepers(client: &async_nats::Client) -> async_nats::Subscriber {
    let members = client
        .queue_subscribe("cluster.members", "cluster-members".to_owned())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    members
}

/// ctl against an agent that knows no view (an older keeper, played here by a client
/// in the members queue group that refuses `view` as such a keeper does and pages full
/// rows): the table and the fan-out still list every member, from the full rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reads_the_full_rows_of_a_keeper_that_knows_no_view() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut members = join_the_keepers(&client).await;
    let mut pings = client
        .subscribe("cluster.all.cmd.ping")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let member = |name: &str| {
        serde_json::json!({
            "name": name, "state": "alive", "since": 1.0, "boot_id": "b", "seq": 1,
            "hostname": "old-host", "tags": {"rack": "r1"}, "version": "0.0.9", "pid": 9,
            "started_at": 1.0, "last_seen": 1.0, "heartbeat_ms": 1000,
            "watchers": [{"name": "web", "service": "web", "state": "active",
                          "numprocesses": 2, "running": 1}],
            "services": ["web"], "numprocesses": 2, "running": 1
        })
    };
    let responder = client.clone();
    let old = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(msg) = members.next() => {
                    let Some(to) = msg.reply else { continue };
                    let req: serde_json::Value =
                        serde_json::from_slice(&msg.payload).unwrap_or_default();
                    let props = &req["properties"];
                    let reply = if props.get("view").is_some() {
                        serde_json::json!({
                            "node": "old", "status": "error", "time": 1.0, "errno": 2,
                            "reason": "bad properties for 'members': unknown field `view`, \
                                       expected one of `status`, `tags`, `name`, `after`"
                        })
                    } else if props["after"].is_null() {
                        serde_json::json!({"node": "old", "status": "ok", "time": 1.0,
                                           "members": [member("n1")], "next": "n1"})
                    } else {
                        serde_json::json!({"node": "old", "status": "ok", "time": 1.0,
                                           "members": [member("n2")]})
                    };
                    let body = serde_json::to_vec(&reply).expect("json");
                    let _ = responder.publish(to, body.into()).await;
                }
                Some(msg) = pings.next() => {
                    let Some(to) = msg.reply else { continue };
                    for n in ["n1", "n2"] {
                        let reply = serde_json::json!({
                            "node": n, "status": "ok", "time": 1.0, "version": "0.0.9",
                            "boot_id": "b", "pid": 9, "hostname": "old-host", "tags": {},
                            "uptime_secs": 5.0
                        });
                        let body = serde_json::to_vec(&reply).expect("json");
                        let _ = responder.publish(to.clone(), body.into()).await;
                    }
                }
                else => break,
            }
        }
    });
    let url = nats.url();
    let (table, ping) = tokio::task::spawn_blocking(move || {
        (
            ctl_url(&url, &["members"]),
            ctl_url(&url, &["--all", "ping"]),
        )
    })
    .await
    .expect("ctl runs");
    old.abort();
    table.expect_code(0, "ctl members");
    let rows = table.table();
    assert_eq!(table_names(&table), ["n1", "n2"], "{}", table.stdout);
    assert_eq!(rows[0]["HOST"], "old-host", "{}", table.stdout);
    assert_eq!(rows[0]["PROCESSES"], "1/2", "{}", table.stdout);
    assert_eq!(rows[0]["WATCHERS"], "web(1/2)", "{}", table.stdout);
    ping.expect_code(0, "ctl --all ping");
    let nodes: Vec<String> = ping
        .table()
        .into_iter()
        .map(|r| r["NODE"].clone())
        .collect();
    assert_eq!(nodes, ["n1", "n2"], "{}", ping.stdout);
}

/// A keeper whose pages carry no member but say more follow (a forged or broken reply)
/// is not followed: ctl asks once and lists what came, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_that_says_more_follow_is_not_followed() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut members = join_the_keepers(&client).await;
    let responder = client.clone();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    let forged = tokio::spawn(async move {
        while let Some(msg) = members.next().await {
            let Some(to) = msg.reply else { continue };
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reply = serde_json::json!({"node": "forged", "status": "ok", "time": 1.0,
                                           "members": [], "rows": [], "next": format!("z{n}")});
            let body = serde_json::to_vec(&reply).expect("json");
            let _ = responder.publish(to, body.into()).await;
        }
    });
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || ctl_url(&url, &["members"]))
        .await
        .expect("ctl runs");
    forged.abort();
    out.expect_code(0, "ctl members");
    assert!(table_names(&out).is_empty(), "{}", out.stdout);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}
