//! NATS servers that want credentials or TLS: agents and ctl log in with them, and a
//! wrong or missing one gets a clear error and a non-zero exit instead of endless
//! retries.

use std::path::Path;
use std::process::Command;
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
    let a = Agent::start_config_as(&nats, &node("a", "s3cret"), &ops, &[]);
    let r = a.ctl_ok(&["numprocesses", "w"]);
    assert_eq!(r["numprocesses"], 1, "{r}");
    // And with --user/--password.
    let out = ctl_url(
        &nats.url(),
        &["--user", "ops", "--password", "opspass", "--all", "status"],
    );
    out.expect_code(0, "ctl --user --password --all status");
    let rows = out.table();
    assert!(!rows.is_empty(), "{}", out.stdout);
    assert!(
        rows.iter().all(|r| r["STATE"] == "active"),
        "{}",
        out.stdout
    );

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

/// Runs openssl with `args` in `dir`, panicking with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certificates(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=e2e-ca",
            days[0],
            days[1],
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write");
    for (who, cn) in [("server", "/CN=127.0.0.1"), ("client", "/CN=ops")] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", cn,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-extfile",
                &ext,
                days[0],
                days[1],
            ],
        );
    }
}

#[test]
fn agents_and_ctl_speak_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("a temporary dir");
    let d = dir.path();
    make_certificates(d);
    let file = |n: &str| d.join(n).display().to_string();
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            file("server.pem"),
            file("server.key"),
            file("ca.pem")
        ),
    )
    .expect("write the server config");
    let nats = NatsServer::start_with_config(&conf);
    let url = nats.url().replace("nats://", "tls://");
    let toml = format!(
        "[agent]\nname = \"t\"\nstate_dir = \"{{dir}}/state\"\n\n[nats]\nservers = [\"{url}\"]\n\
         tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n\
         [watcher.w]\ncmd = \"sleep\"\nargs = [\"{}\"]\n",
        file("ca.pem"),
        file("client.pem"),
        file("client.key"),
        unique_secs()
    );
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let flags = ["--tlsca", &ca, "--tlscert", &cert, "--tlskey", &key];
    let a = Agent::start_config_as(&nats, &toml, &url, &flags);
    let r = a.ctl_ok(&["numprocesses", "w"]);
    assert_eq!(r["numprocesses"], 1, "{r}");

    // Without the CA, or without a client certificate: exit 3, and what to give.
    let out = ctl_url(&url, &["--node", "t", "ping"]);
    out.expect_code(3, "ctl without --tlsca");
    assert!(out.stderr.contains("--tlsca"), "{}", out.stderr);
    let out = ctl_url(&url, &["--tlsca", &ca, "--node", "t", "ping"]);
    out.expect_code(3, "ctl without a client certificate");

    // The same files from NATS_CA, NATS_CERT and NATS_KEY, and the server from NATS_URL.
    let mut cmd = e2e::bins::hermetic(bin("ctl"));
    cmd.args(["--node", "t", "ping"])
        .env("NATS_URL", &url)
        .env("NATS_CA", &ca)
        .env("NATS_CERT", &cert)
        .env("NATS_KEY", &key);
    e2e::bins::run(cmd, e2e::bins::CTL_DEADLINE).expect_code(0, "NATS_CA/NATS_CERT/NATS_KEY");
}
