//! The Debian package: scripts/package.sh builds it with cargo-deb from the binaries
//! the tests use; it holds what a host needs (binaries, unit, config, man pages,
//! completions, example NATS configs); dpkg installs it into a throwaway root
//! (`dpkg --root DIR --unpack`: files, database and conffiles, without the maintainer
//! scripts, which would add a user to this machine); the installed binaries run, the
//! man pages render, the unit passes `systemd-analyze verify`, the default config is
//! refused until it names the node, and the installed agent answers the installed ctl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use e2e::bins::hermetic;
use e2e::*;

const T: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The files every package must hold, with their modes.
const EXPECTED: &[(&str, &str)] = &[
    ("./usr/bin/nodeagent", "-rwxr-xr-x"),
    ("./usr/bin/ctl", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/nodeagent.service", "-rw-r--r--"),
    ("./etc/nodeagent/nodeagent.toml", "-rw-r-----"),
    ("./usr/share/man/man1/nodeagent.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/ctl.1.gz", "-rw-r--r--"),
    ("./usr/share/bash-completion/completions/ctl", "-rw-r--r--"),
    ("./usr/share/zsh/vendor-completions/_ctl", "-rw-r--r--"),
    (
        "./usr/share/fish/vendor_completions.d/ctl.fish",
        "-rw-r--r--",
    ),
    (
        "./usr/share/doc/nodeagent/examples/nats-secure.conf",
        "-rw-r--r--",
    ),
    (
        "./usr/share/doc/nodeagent/examples/nats-cluster/nats-a.conf",
        "-rw-r--r--",
    ),
];

#[test]
fn the_debian_package_builds_installs_into_a_throwaway_root_and_runs() {
    for tool in ["dpkg", "dpkg-deb", "gzip"] {
        if !have(tool) {
            println!("skipped: no {tool} on this machine (not Debian?)");
            return;
        }
    }
    let work = tempfile::tempdir().expect("a temporary dir");
    let started = std::time::Instant::now();
    let out = run(Command::new(repo().join("scripts/package.sh"))
        .env("OUT_DIR", work.path().join("out"))
        .current_dir(repo()));
    let deb = PathBuf::from(text(&out).trim().lines().last().unwrap_or_default());
    let deb = if deb.is_absolute() {
        deb
    } else {
        repo().join(deb)
    };
    println!(
        "package built in {:?}: {} ({} bytes)",
        started.elapsed(),
        deb.display(),
        std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0)
    );

    // Contents and metadata.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for (path, mode) in EXPECTED {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
        assert!(line.starts_with(mode), "{path}: {line}");
    }
    let control = work.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let read = |f: &str| std::fs::read_to_string(control.join(f)).unwrap_or_default();
    assert!(
        read("control")
            .lines()
            .any(|l| l.starts_with("Depends:") && l.contains("adduser")),
        "{}",
        read("control")
    );
    assert_eq!(read("conffiles").trim(), "/etc/nodeagent/nodeagent.toml");
    let postinst = read("postinst");
    assert!(
        postinst.contains("adduser --system") && !postinst.contains("#DEBHELPER#"),
        "{postinst}"
    );
    run(Command::new("sh").arg("-n").arg(control.join("postinst")));

    // Installed by dpkg into a root of its own.
    let root = work.path().join("root");
    let db = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(db.join(d)).expect("the dpkg database dirs");
    }
    std::fs::write(db.join("status"), "").expect("an empty status file");
    std::fs::write(db.join("available"), "").expect("an empty available file");
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--unpack"])
        .arg(&deb));
    let files = text(&run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-L", "nodeagent"])));
    assert!(files.lines().any(|l| l == "/usr/bin/ctl"), "{files}");

    let installed = |p: &str| root.join(p.trim_start_matches('/'));
    let version = text(&run(
        Command::new(installed("/usr/bin/ctl")).arg("--version")
    ));
    assert_eq!(
        version.trim(),
        format!("ctl {}", env!("CARGO_PKG_VERSION")),
        "ctl --version"
    );
    let help = text(&run(
        Command::new(installed("/usr/bin/nodeagent")).arg("--help")
    ));
    assert!(help.contains("--config"), "{help}");

    // The man pages render.
    for page in ["nodeagent", "ctl"] {
        let gz = installed(&format!("/usr/share/man/man1/{page}.1.gz"));
        if have("man") {
            let out = run(Command::new("man")
                .args(["-l", "-P", "cat"])
                .arg(&gz)
                .env("MANWIDTH", "80"));
            let shown = text(&out);
            assert!(
                shown.contains("NAME") && shown.contains("SYNOPSIS") && shown.contains(page),
                "{shown}"
            );
        } else if have("groff") {
            let out = run(Command::new("sh")
                .arg("-c")
                .arg(format!("gzip -dc '{}' | groff -man -Tutf8", gz.display())));
            assert!(text(&out).contains("NAME"), "{}", text(&out));
        } else {
            println!("skipped rendering {page}(1): neither man nor groff here");
        }
    }

    // The unit, with its programs taken from the root.
    let unit_text = std::fs::read_to_string(installed("/usr/lib/systemd/system/nodeagent.service"))
        .expect("the installed unit");
    if have("systemd-analyze") {
        let unit = work.path().join("nodeagent.service");
        std::fs::write(
            &unit,
            unit_text.replace(
                "/usr/bin/",
                &format!("{}/", installed("/usr/bin").display()),
            ),
        )
        .expect("write the unit");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .expect("run systemd-analyze");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "systemd-analyze verify:\n{report}"
        );
    } else {
        println!("skipped systemd-analyze verify: not on this machine");
    }

    // The default config (unpacked, not yet configured: dpkg keeps it as .dpkg-new) is
    // refused until it names the node, and then accepted.
    let conf = installed("/etc/nodeagent/nodeagent.toml.dpkg-new");
    let conf = if conf.exists() {
        conf
    } else {
        installed("/etc/nodeagent/nodeagent.toml")
    };
    let default = std::fs::read_to_string(&conf).expect("the default config");
    let check = |text: &str| {
        let path = work.path().join("nodeagent.toml");
        std::fs::write(&path, text).expect("write a config");
        hermetic(installed("/usr/bin/nodeagent"))
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run nodeagent --check")
    };
    let out = check(&default);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nats = NatsServer::start();
    let named = node_config(&default, work.path(), &nats.url());
    let out = check(&named);
    assert!(out.status.success(), "{out:?}");

    // The installed agent answers the installed ctl: the first `ctl members`.
    let path = work.path().join("node.toml");
    std::fs::write(&path, &named).expect("write the config");
    let _agent = KillOnDrop(
        hermetic(installed("/usr/bin/nodeagent"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the installed nodeagent"),
    );
    let ctl = installed("/usr/bin/ctl");
    wait_until(T, "the installed agent to be listed by ctl members", || {
        let out = hermetic(&ctl)
            .args(["-s", &nats.url(), "--timeout", "2s", "members"])
            .output()
            .expect("run the installed ctl");
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pkg-node")
    });
}

/// The default config with a node name, the test's NATS server, and its dirs in `dir`.
fn node_config(default: &str, dir: &Path, nats_url: &str) -> String {
    let out = default
        .replace("# name = \"web-1\"", "name = \"pkg-node\"")
        .replace("nats://127.0.0.1:4222", nats_url)
        .replace(
            "\"/var/lib/nodeagent\"",
            &format!("\"{}\"", dir.join("state").display()),
        )
        .replace(
            "\"/var/log/nodeagent\"",
            &format!("\"{}\"", dir.join("logs").display()),
        );
    assert!(out.contains("name = \"pkg-node\""), "{out}");
    out
}
