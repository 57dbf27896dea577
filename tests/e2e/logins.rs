//! Logging in to NATS every way the README names, agents and ctl alike, against a
//! nats-server configured for it: token, nkey, and a creds file (a user JWT under an
//! operator and account made here, as `nsc` would, and a server in operator mode).
//! A refused login is exit 3 for ctl and exit 1 for an agent.

use std::path::Path;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use e2e::*;
use nkeys::KeyPair;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn node(name: &str, nats_keys: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\n\n\
         [nats]\nservers = [\"{{nats_url}}\"]\n{nats_keys}\n\n\
         [watcher.w]\ncmd = \"sleep\"\nargs = [\"{}\"]\n",
        unique_secs()
    )
}

fn server_with(conf: &str) -> (tempfile::TempDir, NatsServer) {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let path = dir.path().join("server.conf");
    std::fs::write(&path, conf).expect("write the server config");
    let nats = NatsServer::start_with_config(&path);
    (dir, nats)
}

/// `ctl` with the given environment and no credentials on the command line.
fn ctl_env(env: &[(&str, &str)], args: &[&str]) -> CtlOutput {
    let mut cmd = e2e::bins::hermetic(bin("ctl"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    e2e::bins::run(cmd, e2e::bins::CTL_DEADLINE)
}

/// An agent whose `[nats]` credentials the server refuses exits 1 and says so.
fn refused_agent(nats: &NatsServer, nats_keys: &str) {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let conf = dir.path().join("node.toml");
    let text = node("bad", nats_keys)
        .replace("{dir}", &dir.path().display().to_string())
        .replace("{nats_url}", &nats.url());
    std::fs::write(&conf, text).expect("write the config");
    let out = nodeagent(&["-c", conf.to_str().expect("UTF-8")], T);
    out.expect_code(1, "an agent with refused credentials");
    assert!(
        out.stderr.contains("[nats]"),
        "the agent does not say which keys to check: {}",
        out.stderr
    );
}

#[test]
fn token_login_for_agents_and_ctl() {
    let (_d, nats) = server_with("authorization { token: \"s3cret-tok\" }\n");
    let agent = Agent::start_config_as(
        &nats,
        &node("tok", "token = \"s3cret-tok\""),
        &nats.url(),
        &["--token", "s3cret-tok"],
    );
    let r = agent.ctl_ok(&["status"]);
    assert_eq!(r["statuses"], json!({"w": "active"}));
    // NATS_TOKEN and the URL form.
    let host = nats.url().replace("nats://", "");
    ctl_env(
        &[("NATS_URL", &nats.url()), ("NATS_TOKEN", "s3cret-tok")],
        &["--node", "tok", "ping"],
    )
    .expect_code(0, "NATS_TOKEN");
    ctl_env(
        &[],
        &[
            "-s",
            &format!("nats://s3cret-tok@{host}"),
            "--node",
            "tok",
            "ping",
        ],
    )
    .expect_code(0, "token in the URL");
    // Refused: ctl exits 3 and names the options; an agent exits 1.
    let out = ctl(&nats, &["--token", "wrong", "--node", "tok", "ping"]);
    out.expect_code(3, "a wrong token");
    assert!(out.stderr.contains("--token"), "{}", out.stderr);
    ctl(&nats, &["--node", "tok", "ping"]).expect_code(3, "no token");
    refused_agent(&nats, "token = \"wrong\"");
}

#[test]
fn nkey_login_for_agents() {
    // The agent logs in with an nkey seed; ctl (which has no nkey option) as a user.
    let user = KeyPair::new_user();
    let seed = user.seed().expect("a seed");
    let (_d, nats) = server_with(&format!(
        "authorization {{\n  users = [\n    {{ nkey: {} }}\n    {{ user: ctl, password: c }}\n  ]\n}}\n",
        user.public_key()
    ));
    let url = nats.url_as("ctl", "c");
    let agent = Agent::start_config_as(
        &nats,
        &node("nk", &format!("nkey_seed = \"{seed}\"")),
        &url,
        &[],
    );
    let r = agent.ctl_ok(&["status"]);
    assert_eq!(r["statuses"], json!({"w": "active"}));
    // The agent has no other credentials the server takes: it logged in with the nkey.
    // A seed the server does not know is refused.
    let other = KeyPair::new_user();
    refused_agent(
        &nats,
        &format!("nkey_seed = \"{}\"", other.seed().expect("a seed")),
    );
}

/// A JWT signed with `signer`, as the NATS tools write it.
fn jwt(signer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = json!({
        "jti": format!("E2E{}", unique_secs()),
        "iat": iat,
        "iss": signer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let sig = signer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
}

/// A creds file for a new user of `account`.
fn creds(dir: &Path, name: &str, account: &KeyPair) -> std::path::PathBuf {
    let user = KeyPair::new_user();
    let user_jwt = jwt(
        account,
        &user.public_key(),
        name,
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n",
        user.seed().expect("a seed")
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(&path, text).expect("write the creds file");
    path
}

#[test]
fn creds_file_login_for_agents_and_ctl() {
    // Operator mode, as nsc sets it up: an operator signs an account, the account signs
    // users; the server knows the operator and preloads the account.
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let system = KeyPair::new_account();
    let op_jwt = jwt(
        &operator,
        &operator.public_key(),
        "e2e",
        json!({"type": "operator", "version": 2}),
    );
    let limits = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                        "wildcards": true, "conn": -1, "leaf": -1});
    let acc = |kp: &KeyPair, name: &str| {
        jwt(
            &operator,
            &kp.public_key(),
            name,
            json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                   "type": "account", "version": 2}),
        )
    };
    let (acc_jwt, sys_jwt) = (acc(&account, "CLUSTER"), acc(&system, "SYS"));
    let (dir, nats) = server_with(&format!(
        "operator: {op_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {acc}: {acc_jwt}\n  {sys}: {sys_jwt}\n}}\n",
        sys = system.public_key(),
        acc = account.public_key(),
    ));
    let agent_creds = creds(dir.path(), "agent", &account);
    let ctl_creds = creds(dir.path(), "ctl", &account);
    let ctl_creds_s = ctl_creds.display().to_string();
    let agent = Agent::start_config_as(
        &nats,
        &node("cr", &format!("creds_file = \"{}\"", agent_creds.display())),
        &nats.url(),
        &["--creds", &ctl_creds_s],
    );
    let r = agent.ctl_ok(&["status"]);
    assert_eq!(r["statuses"], json!({"w": "active"}));
    ctl_env(
        &[("NATS_URL", &nats.url()), ("NATS_CREDS", &ctl_creds_s)],
        &["--node", "cr", "ping"],
    )
    .expect_code(0, "NATS_CREDS");
    // A user of an account the server does not know is refused.
    let stranger = KeyPair::new_account();
    let bad = creds(dir.path(), "stranger", &stranger);
    let out = ctl(
        &nats,
        &[
            "--creds",
            bad.to_str().expect("UTF-8"),
            "--node",
            "cr",
            "ping",
        ],
    );
    out.expect_code(3, "creds of an unknown account");
    assert!(out.stderr.contains("--creds"), "{}", out.stderr);
    refused_agent(&nats, &format!("creds_file = \"{}\"", bad.display()));
}

#[test]
fn user_and_password_from_the_environment() {
    let (_d, nats) = server_with(
        "authorization {\n  users = [\n    { user: agent, password: a }\n    { user: ctl, password: c }\n  ]\n}\n",
    );
    let _agent = Agent::start_config_as(
        &nats,
        &node("up", "user = \"agent\"\npassword = \"a\""),
        &nats.url_as("ctl", "c"),
        &[],
    );
    ctl_env(
        &[
            ("NATS_URL", &nats.url()),
            ("NATS_USER", "ctl"),
            ("NATS_PASSWORD", "c"),
        ],
        &["--node", "up", "ping"],
    )
    .expect_code(0, "NATS_USER/NATS_PASSWORD");
    let out = ctl_env(
        &[
            ("NATS_URL", &nats.url()),
            ("NATS_USER", "ctl"),
            ("NATS_PASSWORD", "wrong"),
        ],
        &["--node", "up", "ping"],
    );
    out.expect_code(3, "a wrong NATS_PASSWORD");
}
