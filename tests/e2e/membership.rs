//! Membership as ctl sees it: who answers `members` and whom `--all` reaches.

use std::time::Duration;

use e2e::*;

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
