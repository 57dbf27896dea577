//! A NATS server that wants credentials: agents and ctl log in with them, and a wrong
//! or missing one gets a clear error and a non-zero exit instead of endless retries.

use std::time::Duration;

use e2e::*;

/// Users for the agents and for the operator's ctl.
const AUTH: &str = "authorization {\n  users = [\n    { user: \"agent\", password: \"s3cret\" }\n    { user: \"ops\", password: \"opspass\" }\n  ]\n}\n";

fn node(name: &str, password: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\n\n[nats]\n\
         servers = [\"{{nats_url}}\"]\nuser = \"agent\"\npassword = \"{password}\"\n\n\
         [watcher.w]\ncmd = \"sleep\"\nargs = [\"{}\"]\n",
        unique_secs()
    )
}

#[test]
fn agents_and_ctl_log_in_and_a_refusal_is_said_plainly() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let conf = dir.path().join("auth.conf");
    std::fs::write(&conf, AUTH).expect("write the server config");
    let nats = NatsServer::start_with_config(&conf);
    let ops = nats.url_as("ops", "opspass");

    // The harness pings with credentials in the URL, as the nats CLI takes them.
    let a = Agent::start_config_as(&nats, &node("a", "s3cret"), &ops);
    let r = a.ctl_ok(&["numprocesses", "w"]);
    assert_eq!(r["numprocesses"], 1, "{r}");
    // And with --user/--password.
    let out = ctl_url(
        &nats.url(),
        &["--user", "ops", "--password", "opspass", "--all", "status"],
    );
    out.expect_code(0, "ctl --user --password --all status");
    assert!(out.stdout.contains("active"), "{}", out.stdout);

    // No credentials: exit 3, and what to give.
    let out = ctl_url(&nats.url(), &["--node", "a", "ping"]);
    out.expect_code(3, "ctl without credentials");
    assert!(
        out.stderr.contains("authorization violation") && out.stderr.contains("--user/--password"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("ERROR"),
        "library noise: {}",
        out.stderr
    );
    // A wrong password in the URL: the same, and the password is not echoed.
    let out = ctl_url(&nats.url_as("ops", "nope"), &["--node", "a", "ping"]);
    out.expect_code(3, "ctl with a wrong password");
    assert!(!out.stderr.contains("nope"), "{}", out.stderr);

    // An agent with a wrong password stops at once, saying why; it does not retry
    // forever as if the server were down.
    let bad = tempfile::tempdir().expect("a temporary dir");
    let path = bad.path().join("b.toml");
    let text = node("b", "wrong")
        .replace("{dir}", &bad.path().display().to_string())
        .replace("{nats_url}", &nats.url());
    std::fs::write(&path, text).expect("write the config");
    let out = nodeagent(
        &["-c", &path.display().to_string()],
        Duration::from_secs(20),
    );
    out.expect_code(1, "an agent with a wrong password");
    assert!(
        out.stderr.contains("refused this agent") && out.stderr.contains("[nats] user/password"),
        "{}",
        out.stderr
    );
    // The good one is unharmed.
    a.ctl(&["ping"]).expect_code(0, "a still answers");
}
