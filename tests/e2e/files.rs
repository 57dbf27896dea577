//! The files the agent writes are safe: a remote client cannot make it write where it
//! likes, output files are opened as the watcher's user and never through a link, the
//! state survives damage, one agent owns a state dir, and everything is private.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use e2e::*;
use protocol::Errno;
use serde_json::Value;

/// The bound on every wait: generous, because the machine is shared; a wait ends as
/// soon as its condition holds.
const T: Duration = Duration::from_secs(20);

/// `[agent]` and `[nats]` for agent `name`, state and logs in `{dir}`, then `rest`.
fn config(name: &str, agent_extra: &str, rest: &str) -> String {
    format!(
        "[agent]\nname = \"{name}\"\nstate_dir = \"{{dir}}/state\"\nlog_dir = \"{{dir}}/logs\"\n\
         {agent_extra}\n\n[nats]\nservers = [\"{{nats_url}}\"]\n\n{rest}"
    )
}

/// A watcher that prints `tag`-WID on both streams once, then sleeps.
fn printer(name: &str, tag: &str, secs: &str, extra: &str) -> String {
    format!(
        "[watcher.{name}]\ncmd = \"sh\"\n\
         args = [\"-c\", \"echo {tag}-$NODEAGENT_WID; echo {tag}-err >&2; exec sleep {secs}\"]\n\
         {extra}\n\n"
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The one error reply of `ctl --json ARGS` on `agent`, checked for `errno`.
fn refused(agent: &Agent, args: &[&str], errno: Errno) -> String {
    let (out, replies) = agent.ctl_json(args);
    out.expect_code(1, &format!("{args:?}"));
    let r = &replies[0];
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["errno"], errno.code(), "{args:?}: {r}");
    r["reason"].as_str().unwrap_or_default().to_owned()
}

fn healthy(agent: &Agent, watcher: &str, n: usize) {
    wait_until(T, &format!("{watcher} to run {n} process(es)"), || {
        agent.pids(watcher).len() == n
    });
    let s = agent.ctl_ok(&["status"]);
    assert_eq!(s["statuses"][watcher], "active", "{s}");
}

#[test]
fn a_remote_file_write_is_refused_and_the_agent_stays_healthy() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let target = tempfile::tempdir().unwrap();
    let evil = target.path().join("sub/evil.txt");
    let evil = evil.to_str().unwrap();

    // Without allow_remote_exec: no file output, no copy_env, whatever the path.
    let locked = Agent::start_config(&nats, &config("locked", "", &printer("w", "a", &secs, "")));
    healthy(&locked, "w", 1);
    for key in ["stdout", "stderr"] {
        let reason = refused(&locked, &["set", "w", key, evil], Errno::Forbidden);
        assert!(
            reason.contains(&format!("setting '{key}' to a file"))
                && reason.contains("allow_remote_exec"),
            "{reason}"
        );
        let inside = format!("{}/logs/w.{key}", locked.dir().display());
        refused(&locked, &["set", "w", key, &inside], Errno::Forbidden);
    }
    let reason = refused(&locked, &["set", "w", "copy_env", "true"], Errno::Forbidden);
    assert!(reason.contains("allow_remote_exec"), "{reason}");
    assert!(!Path::new(evil).exists() && !target.path().join("sub").exists());
    // What writes nowhere new stays allowed.
    locked.ctl_ok(&["set", "w", "stderr", "discard"]);
    locked.ctl_ok(&["set", "w", "stdout", "capture"]);
    healthy(&locked, "w", 1);

    // With it: still only under the log dir or output_dirs.
    let open = Agent::start_config(
        &nats,
        &config(
            "open",
            "allow_remote_exec = true",
            &printer("w", "b", &secs, ""),
        ),
    );
    healthy(&open, "w", 1);
    let logs = open.dir().join("logs");
    for path in [
        evil.to_owned(),
        "/etc/ld.so.preload".to_owned(),
        format!("{}/../escape.txt", logs.display()),
        "relative.txt".to_owned(),
    ] {
        let reason = refused(&open, &["set", "w", "stderr", &path], Errno::BadOption);
        assert!(reason.contains("option 'stderr': "), "{reason}");
        assert!(
            reason.contains("output_dirs"),
            "{path}: the reason should name the way out: {reason}"
        );
    }
    let r = open.ctl_json(&["add", "x", "-o", &format!("stdout={evil}"), "--", "true"]);
    r.0.expect_code(1, "add with a file outside the allowed dirs");
    assert!(!Path::new(evil).exists());
    healthy(&open, "w", 1);
    let opts = open.ctl_ok(&["options", "w"]);
    assert_eq!(opts["options"]["stderr"], "capture", "{opts}");
}

#[test]
fn file_outputs_are_never_written_through_a_link_and_belong_to_the_watcher() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    // An output dir the watcher's user (nobody) owns, reachable by it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = outside.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    nix::unistd::chown(&out_dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let extra = format!(
        "allow_remote_exec = true\noutput_dirs = [\"{}\"]",
        out_dir.display()
    );
    let agent = Agent::start_config(
        &nats,
        &config(
            "links",
            &extra,
            &format!(
                "{}{}",
                printer("p", "plain", &secs, "stdout = \"{dir}/logs/p.out\""),
                printer(
                    "u",
                    "nobody",
                    &secs,
                    &format!(
                        "uid = 65534\ngid = 65534\nstdout = \"{}/u.out\"\nstderr = \"{}/u.out\"",
                        out_dir.display(),
                        out_dir.display()
                    )
                )
            ),
        ),
    );
    let logs = agent.dir().join("logs");
    // A file under the log dir gets the output; the agent's own capture takes stderr.
    wait_until(T, "p's line in p.out", || {
        read(&logs.join("p.out")) == "plain-1\n"
    });
    assert_eq!(mode(&logs.join("p.out")), 0o640);
    let m = std::fs::metadata(logs.join("p.out")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // A uid's file is its own, opened as that user.
    wait_until(T, "u's lines in u.out", || {
        let t = read(&out_dir.join("u.out"));
        t.contains("nobody-1\n") && t.contains("nobody-err\n")
    });
    let m = std::fs::metadata(out_dir.join("u.out")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o640));
    // Under the log dir too, where the operator gave that user a dir it can reach.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o711)).unwrap();
    let own = logs.join("nobody");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(&own, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    agent.ctl_ok(&["set", "u", "stdout", own.join("u.out").to_str().unwrap()]);
    wait_until(T, "u's line in logs/nobody/u.out", || {
        read(&own.join("u.out")) == "nobody-1\n"
    });
    let m = std::fs::metadata(own.join("u.out")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o640));

    // A link planted at the target path: not followed, the target untouched.
    let secret = agent.dir().join("secret.txt");
    std::fs::write(&secret, "secret\n").unwrap();
    let planted = logs.join("planted.out");
    std::os::unix::fs::symlink(&secret, &planted).unwrap();
    agent.ctl_ok(&["set", "p", "stdout", planted.to_str().unwrap()]);
    wait_until(T, "the agent to refuse the link", || {
        agent.stderr_log().contains(&format!(
            "output file {} is a symbolic link",
            planted.display()
        ))
    });
    assert_eq!(read(&secret), "secret\n");
    assert!(std::fs::symlink_metadata(&planted)
        .unwrap()
        .file_type()
        .is_symlink());
    // The agent is fine, and the watcher runs again once pointed at a plain file.
    agent.ctl_ok(&["set", "p", "stdout", logs.join("p2.out").to_str().unwrap()]);
    wait_until(T, "p's line in p2.out", || {
        read(&logs.join("p2.out")) == "plain-1\n"
    });
    healthy(&agent, "p", 1);
    healthy(&agent, "u", 1);
    assert_eq!(read(&secret), "secret\n");
}

#[test]
fn a_damaged_state_file_is_set_aside_and_the_agent_starts_with_its_processes() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let mut agent = Agent::start(
        &nats,
        "damaged",
        &format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n"),
    );
    agent.ctl_ok(&["numprocesses", "w", "2"]);
    agent.ctl_ok(&["numprocesses", "w", "3"]);
    healthy(&agent, "w", 3);
    agent.terminate();
    let state = agent.state_dir();
    let path = state.join("state.json");
    // A torn write: the last change (3) is lost, the one before (2) is kept.
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    agent.start_again();
    healthy(&agent, "w", 2);
    let log = agent.stderr_log();
    assert!(
        log.contains(&format!("state file {} is not valid", path.display())),
        "{log}"
    );
    assert!(log.contains("starting from the last good state"), "{log}");
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");

    // Nothing valid left at all: the config alone.
    agent.terminate();
    std::fs::write(&path, "{\"watchers\": [").unwrap();
    std::fs::write(state.join("state.json.prev"), "").unwrap();
    agent.start_again();
    healthy(&agent, "w", 1);
    assert!(agent
        .stderr_log()
        .contains("starting from the config alone"));
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let first = Agent::start(
        &nats,
        "owner",
        &format!("[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n"),
    );
    healthy(&first, "w", 1);
    let second = first.dir().join("second.toml");
    std::fs::write(
        &second,
        format!(
            "[agent]\nname = \"intruder\"\nstate_dir = \"{}\"\nlog_dir = \"{}/logs2\"\n\n\
             [nats]\nservers = [\"{}\"]\n\n[watcher.w]\ncmd = \"sleep\"\nargs = [\"{secs}\"]\n",
            first.state_dir().display(),
            first.dir().display(),
            nats.url()
        ),
    )
    .unwrap();
    let out = nodeagent(&["-c", second.to_str().unwrap()], T);
    out.expect_code(1, "a second agent on a locked state dir");
    assert!(
        out.stderr.contains(&format!(
            "state dir {} is in use by another agent (pid {})",
            first.state_dir().display(),
            first.pid()
        )),
        "{}",
        out.stderr
    );
    // It started nothing and the owner is untouched.
    assert_eq!(count_processes_with_cmdline(&format!("sleep {secs}")), 1);
    healthy(&first, "w", 1);
}

#[test]
fn the_agent_s_files_are_private() {
    let nats = NatsServer::start();
    let secs = unique_secs();
    let agent = Agent::start(&nats, "private", &printer("w", "p", &secs, ""));
    agent.ctl_ok(&["numprocesses", "w", "2"]);
    agent.ctl_ok(&["numprocesses", "w", "1"]);
    healthy(&agent, "w", 1);
    let state = agent.state_dir();
    let logs = agent.dir().join("logs");
    wait_until(T, "w's captured output", || {
        logs.join("w.stdout.log").exists()
    });
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&logs), 0o700);
    for f in [
        state.join("state.json"),
        state.join("state.json.prev"),
        state.join("groups.log"),
        state.join("agent.lock"),
        logs.join("w.stdout.log"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(
        read(&state.join("agent.lock")).trim(),
        agent.pid().to_string()
    );
}

#[test]
fn shared_or_foreign_dirs_are_refused() {
    let nats = NatsServer::start();
    let base = tempfile::tempdir().unwrap();
    let cfg = base.path().join("node.toml");
    let run = |state: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "[agent]\nname = \"shared\"\nstate_dir = \"{}\"\n\n[nats]\nservers = [\"{}\"]\n",
                state.display(),
                nats.url()
            ),
        )
        .unwrap();
        let out = nodeagent(&["-c", cfg.to_str().unwrap()], T);
        out.expect_code(1, "an unsafe state dir");
        out.stderr
    };
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = run(&state);
    assert!(
        err.contains(&format!("refusing directory {}", state.display()))
            && err.contains("writable by others")
            && err.contains("chmod go-w"),
        "{err}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = run(&state);
    assert!(err.contains("belongs to uid 65534"), "{err}");
    // Nothing was written into them.
    let entries: Vec<Value> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| Value::from(e.unwrap().file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_config_file_output_outside_the_allowed_dirs_is_a_config_error() {
    let base = tempfile::tempdir().unwrap();
    let cfg = base.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nname = \"cfg\"\nstate_dir = \"{dir}/state\"\n\n\
             [watcher.w]\ncmd = \"sleep\"\nargs = [\"1\"]\nstderr = \"/etc/cron.d/evil\"\n",
            dir = base.path().display()
        ),
    )
    .unwrap();
    let out = nodeagent(&["--check", "-c", cfg.to_str().unwrap()], T);
    out.expect_code(2, "a file output outside the log dir");
    assert!(
        out.stderr
            .contains("[watcher.w] stderr: \"/etc/cron.d/evil\" is outside")
            && out.stderr.contains("output_dirs"),
        "{}",
        out.stderr
    );
    assert!(
        !base.path().join("state").exists(),
        "--check creates nothing"
    );
}
