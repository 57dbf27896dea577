//! A member cut off the network without a word (its link goes down, as when a cable is
//! pulled; no FIN, no RST): the others find it suspect, then failed, from its missed
//! heartbeats; its processes keep running; when the link is back it is alive again,
//! with the same processes. The member runs in a network namespace of the test's own.

use std::time::{Duration, Instant};

use e2e::*;

const T: Duration = Duration::from_secs(30);

fn state_of(url: &str, name: &str) -> Option<String> {
    member_states(url)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

#[test]
fn a_silently_cut_member_is_failed_then_alive_again_with_its_processes() {
    let net = NetNs::create();
    let nats = NatsServer::start_on(&net.host_ip, None);
    let url = nats.url();
    let secs = unique_secs();
    let node = |name: &str| {
        format!(
            "[agent]\nname = \"{name}\"\nheartbeat = \"200ms\"\nfailed_after = \"2s\"\n\
             state_dir = \"{{dir}}/state\"\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\
             ping_interval = \"1s\"\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n\
             numprocesses = 2\n"
        )
    };
    let _a = Agent::start_config(&nats, &node("a"));
    let _b = Agent::start_config(&nats, &node("b"));
    let x = Agent::start_config_in(&nats, &node("x"), &net);
    wait_all_alive(&url, &["a", "b", "x"], T);
    let kids = wait_for(T, "x's 2 processes", || {
        let k = x.children();
        (k.len() == 2).then_some(k)
    });

    net.cut();
    let cut = Instant::now();
    let cut_unix = protocol::unix_time();
    let failed_at = wait_for(T, "x to be failed", || {
        (state_of(&url, "x").as_deref() == Some("failed")).then(|| cut.elapsed())
    });
    // Suspect first, as both agents outside logged it (read from their logs: a poll
    // could miss the window between suspect and failed).
    for agent in [&_a, &_b] {
        let suspect = agent.wait_log(T, &["member suspect", "member=\"x\""]) - cut_unix;
        let failed = agent.wait_log(T, &["member failed", "member=\"x\""]) - cut_unix;
        eprintln!(
            "link of x cut: {} logged suspect after {suspect:.3}s, failed after {failed:.3}s",
            agent.name()
        );
        assert!(suspect < failed, "x went failed without being suspect");
    }
    assert!(
        failed_at < Duration::from_secs(2) + bound(Duration::from_millis(2500)),
        "failed too late: {failed_at:?}"
    );
    assert_eq!(
        x.children(),
        kids,
        "x's processes changed while it was cut off"
    );
    for n in ["a", "b"] {
        assert_eq!(state_of(&url, n).as_deref(), Some("alive"), "{n}");
    }

    net.heal();
    let (_, back) = timed(|| {
        wait_until(T, "x to answer again", || {
            ctl_url(&url, &["--timeout", "1s", "--node", "x", "ping"]).code == 0
        });
        wait_all_alive(&url, &["a", "b", "x"], T);
    });
    eprintln!("link of x healed: answering and alive again after {back:?}");
    assert_eq!(x.children(), kids, "x's processes changed");
}
