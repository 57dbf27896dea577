//! A network namespace joined to this one by a veth pair, so that a test can run an
//! agent "on another host" and cut its network silently (no FIN, no RST: the link goes
//! down, as when a cable is pulled), then heal it. Needs root and `ip` (iproute2).
//! Deleted on drop, also when the test panics.
//!
//! ```text
//! let net = NetNs::create();                                 // 10.X.Y.1 <-> 10.X.Y.2
//! let nats = NatsServer::start_on(&net.host_ip, None);       // reachable from both sides
//! let agent = Agent::start_config_in(&nats, &toml, &net);    // runs inside the namespace
//! net.cut();  ...  net.heal();
//! ```

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace with one veth link to the test's namespace.
pub struct NetNs {
    name: String,
    /// The link's end inside the namespace.
    inner_if: String,
    /// The address of the test's (host) side.
    pub host_ip: String,
    /// The address inside the namespace.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the `e2e-<pid>-<n>` namespaces whose test run (`<pid>`) is gone: a run
/// killed before its drops ran leaves them behind. Done once per run, before the first
/// namespace is made.
pub fn remove_stale() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return vec![];
    };
    let mut removed = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("e2e-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let run_alive = crate::procs::cmdline(pid).is_some_and(|c| c.contains("e2e"));
        if !run_alive && ip(&["netns", "del", name]).is_ok() {
            removed.push(name.to_owned());
        }
    }
    removed
}

impl NetNs {
    /// Creates the namespace and its link, both up. Panics with what failed (for
    /// example, not running as root).
    pub fn create() -> NetNs {
        static STALE: std::sync::Once = std::sync::Once::new();
        STALE.call_once(|| {
            let gone = remove_stale();
            if !gone.is_empty() {
                eprintln!("harness: removed test networks of a run that is gone: {gone:?}");
            }
        });
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names have at most 15 characters; addresses differ per process
        // and per namespace, so that parallel runs do not share a subnet.
        let tag = format!("{}{n}", pid % 100_000);
        let (host_if, inner_if) = (format!("e2h{tag}"), format!("e2n{tag}"));
        let (b, c) = (100 + n % 100, pid % 250);
        let net = NetNs {
            name: format!("e2e-{pid}-{n}"),
            inner_if: inner_if.clone(),
            host_ip: format!("10.{b}.{c}.1"),
            ns_ip: format!("10.{b}.{c}.2"),
        };
        let ns = net.name.as_str();
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", ns],
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
            ],
            vec!["link", "set", &inner_if, "netns", ns],
        ];
        let host_cidr = format!("{}/30", net.host_ip);
        let ns_cidr = format!("{}/30", net.ns_ip);
        let more: Vec<Vec<&str>> = vec![
            vec!["addr", "add", &host_cidr, "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", ns, "addr", "add", &ns_cidr, "dev", &inner_if],
            vec!["-n", ns, "link", "set", &inner_if, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps.iter().chain(&more) {
            if let Err(e) = ip(step) {
                drop(net);
                let _ = ip(&["link", "del", &host_if]);
                panic!("cannot set up a test network ({e}); the network tests need root");
            }
        }
        net
    }

    /// The namespace's name, for `ip netns exec NAME ...`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the link down: packets are dropped without a word to either side.
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "down"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Brings the link back up.
    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_if, "up"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the
        // other end.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
