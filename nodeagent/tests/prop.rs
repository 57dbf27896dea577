//! Property tests of what the agent reads from its config file and from NATS: option
//! validation, the config loader, the duration parser and the member table never
//! panic; errors are well-formed; valid input round-trips. `PROPTEST_CASES` sets the
//! number of cases (256 by default).

#[path = "../../schemas/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    duration_string, hostile_string, json_value, plain_name, sane_watcher_options, tags,
    watcher_options,
};
use nodeagent::config::{self, format_duration, parse_duration, ConfigError, WatcherConfig};
use nodeagent::membership::{Membership, MembershipConfig, SuspectAfter};
use proptest::prelude::*;
use proptest::sample::select;
use protocol::registry::{AnnounceKind, Announcement, MembersRequest, WatcherBrief};
use protocol::reply::WatcherState;

fn check_config(text: &str) -> Result<(), TestCaseError> {
    match config::parse(Path::new("node.toml"), text) {
        Ok(c) => {
            for (name, w) in &c.watchers {
                prop_assert_eq!(
                    &WatcherConfig::from_options(name, &w.to_options()),
                    &Ok(w.clone())
                );
            }
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            prop_assert!(!problems.is_empty());
            for p in &problems {
                prop_assert!(!p.message.trim().is_empty(), "{p:?}");
            }
        }
        Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "parse read a file: {e}"),
    }
    Ok(())
}

/// A TOML value, written out: strings (durations, hostile), numbers, arrays, tables.
fn toml_value() -> impl Strategy<Value = String> {
    let quote = |s: String| toml::Value::String(s).to_string();
    prop_oneof![
        duration_string().prop_map(quote),
        hostile_string().prop_map(quote),
        plain_name().prop_map(quote),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[]".to_owned()),
        Just("[\"nats://127.0.0.1:4222\"]".to_owned()),
        prop::collection::vec(hostile_string(), 0..3).prop_map(|v| toml::Value::Array(
            v.into_iter().map(toml::Value::String).collect()
        )
        .to_string()),
        prop::collection::vec((hostile_string(), hostile_string()), 0..3).prop_map(|t| {
            let cells: Vec<String> = t
                .into_iter()
                .map(|(k, v)| format!("{} = {}", toml::Value::String(k), toml::Value::String(v)))
                .collect();
            format!("{{ {} }}", cells.join(", "))
        }),
        Just("1e300".to_owned()),
        (-2i64..70_000).prop_map(|n| n.to_string()),
        select(
            &[
                "\"::1\"",
                "\"[::]\"",
                "\"0.0.0.0\"",
                "\"/run/a.sock\"",
                "\"0660\""
            ][..]
        )
        .prop_map(str::to_owned),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
    ]
}

const AGENT_KEYS: &[&str] = &[
    "name",
    "tags",
    "heartbeat",
    "stats_interval",
    "state_dir",
    "log_dir",
    "allow_remote_exec",
    "suspect_after",
    "failed_after",
    "reap_after",
];
const NATS_KEYS: &[&str] = &[
    "servers",
    "prefix",
    "user",
    "password",
    "token",
    "nkey_seed",
    "creds_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "ping_interval",
    "system_events_account",
];

const SOCKET_KEYS: &[&str] = &["host", "port", "path", "mode", "backlog", "reuseport"];

/// A config that is nearly right: the real tables and keys, values of any kind.
fn near_valid_toml() -> impl Strategy<Value = String> {
    let entries = |keys: &'static [&'static str]| {
        prop::collection::vec(
            (
                prop_oneof![9 => select(keys).prop_map(str::to_owned), 1 => "[a-z_]{1,12}"],
                toml_value(),
            ),
            0..6,
        )
    };
    let watcher = (
        prop_oneof![3 => plain_name(), 1 => hostile_string()],
        prop::collection::vec(
            (
                select(protocol::options::OPTION_NAMES).prop_map(str::to_owned),
                toml_value(),
            ),
            0..8,
        ),
    );
    let socket = (
        prop_oneof![3 => plain_name(), 1 => hostile_string()],
        entries(SOCKET_KEYS),
    );
    (
        prop::option::of(plain_name()),
        entries(AGENT_KEYS),
        entries(NATS_KEYS),
        prop::collection::vec(watcher, 0..3),
        prop::collection::vec(socket, 0..3),
    )
        .prop_map(|(name, agent, nats, watchers, sockets)| {
            let mut s = String::from("[agent]\n");
            let mut seen = std::collections::BTreeSet::new();
            if let Some(n) = name {
                s.push_str(&format!("name = \"{n}\"\n"));
                seen.insert("name".to_owned());
            }
            // TOML refuses a key given twice; keep the first.
            let table = |s: &mut String,
                         mut seen: std::collections::BTreeSet<String>,
                         entries: Vec<(String, String)>| {
                for (k, v) in entries {
                    if seen.insert(k.clone()) {
                        s.push_str(&format!("{k} = {v}\n"));
                    }
                }
            };
            table(&mut s, seen, agent);
            s.push_str("[nats]\n");
            table(&mut s, Default::default(), nats);
            for (name, opts) in watchers {
                s.push_str(&format!("[watcher.{}]\n", toml::Value::String(name)));
                table(&mut s, Default::default(), opts);
            }
            for (name, opts) in sockets {
                s.push_str(&format!("[socket.{}]\n", toml::Value::String(name)));
                table(&mut s, Default::default(), opts);
            }
            s
        })
}

fn kind() -> impl Strategy<Value = AnnounceKind> {
    select(
        &[
            AnnounceKind::Join,
            AnnounceKind::Alive,
            AnnounceKind::Leaving,
            AnnounceKind::Left,
        ][..],
    )
}

fn wild_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0f64..2e9,
        any::<f64>(),
        select(
            &[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                1e300,
                -1e300,
                0.0,
                -0.0,
                f64::MIN_POSITIVE
            ][..]
        ),
    ]
}

fn wild_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..10, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)]
}

fn watcher_brief() -> impl Strategy<Value = WatcherBrief> {
    (
        hostile_string(),
        hostile_string(),
        prop_oneof![0u32..10, any::<u32>(), Just(u32::MAX)],
        prop_oneof![0u32..10, any::<u32>(), Just(u32::MAX)],
    )
        .prop_map(|(name, service, numprocesses, running)| WatcherBrief {
            name,
            service,
            state: WatcherState::Active,
            numprocesses,
            running,
        })
}

/// Announcements from a few nodes and boots, so that ordering rules are exercised,
/// with any sequence numbers, clocks and heartbeats.
fn announcement() -> impl Strategy<Value = Announcement> {
    (
        prop_oneof![
            4 => select(&["n1", "n2", "n3"][..]).prop_map(str::to_owned),
            1 => hostile_string(),
        ],
        kind(),
        prop_oneof![4 => select(&["b1", "b2", "b3"][..]).prop_map(str::to_owned), 1 => hostile_string()],
        wild_u64(),
        wild_f64(),
        wild_f64(),
        prop_oneof![Just(1000u64), wild_u64()],
        (tags(), hostile_string(), hostile_string(), any::<u32>()),
        prop::collection::vec(watcher_brief(), 0..3),
        prop::collection::vec(hostile_string(), 0..2),
    )
        .prop_map(
            |(node, kind, boot_id, seq, started_at, time, heartbeat_ms, (tags, version, hostname, pid), watchers, services)| {
                Announcement {
                    node,
                    kind,
                    boot_id,
                    seq,
                    started_at,
                    time,
                    heartbeat_ms,
                    tags,
                    version,
                    hostname,
                    pid,
                    address: None,
                    watchers,
                    services,
                    server_id: None,
                    client_id: None,
                    upgrading_ms: None,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Step {
    Observe(Box<Announcement>),
    Tick,
    MarkFailed(String),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => announcement().prop_map(|a| Step::Observe(Box::new(a))),
        2 => Just(Step::Tick),
        1 => select(&["n1", "n2", "n3", "zz"][..]).prop_map(|n| Step::MarkFailed(n.to_owned())),
        3 => prop_oneof![0u64..5_000, any::<u32>().prop_map(u64::from), Just(100_000_000_000)].prop_map(Step::Wait),
    ]
}

fn membership_config() -> impl Strategy<Value = MembershipConfig> {
    let dur = || {
        prop_oneof![
            (0u64..100_000).prop_map(Duration::from_millis),
            (0u64..10_000_000).prop_map(Duration::from_secs)
        ]
    };
    (
        prop_oneof![
            any::<u32>().prop_map(SuspectAfter::Heartbeats),
            dur().prop_map(SuspectAfter::Fixed)
        ],
        dur(),
        dur(),
    )
        .prop_map(
            |(suspect_after, failed_after, reap_after)| MembershipConfig {
                suspect_after,
                failed_after,
                reap_after,
            },
        )
}

proptest! {
    #[test]
    fn from_options_never_panics(name in prop_oneof![plain_name(), hostile_string()], o in watcher_options()) {
        match WatcherConfig::from_options(&name, &o) {
            Ok(w) => {
                prop_assert_eq!(WatcherConfig::from_options(&name, &w.to_options()), Ok(w.clone()));
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(!p.message.trim().is_empty(), "{p:?}");
                    prop_assert!(p.location.starts_with("[watcher."), "{p:?}");
                }
            }
        }
    }

    #[test]
    fn sane_options_make_a_config_that_round_trips(name in plain_name(), o in sane_watcher_options()) {
        let w = WatcherConfig::from_options(&name, &o);
        prop_assert!(w.is_ok(), "{:?}", w);
        let w = w.unwrap();
        prop_assert_eq!(WatcherConfig::from_options(&name, &w.to_options()), Ok(w.clone()));
    }

    #[test]
    fn options_from_json_never_panic(v in json_value()) {
        // What `add` and `set` do with options sent over NATS.
        if let Ok(o) = serde_json::from_value::<protocol::WatcherOptions>(v) {
            let _ = WatcherConfig::from_options("w", &o);
        }
    }

    #[test]
    fn config_text_never_panics(text in "(?s).{0,400}") {
        check_config(&text)?;
    }

    #[test]
    fn near_valid_config_never_panics(text in near_valid_toml()) {
        check_config(&text)?;
    }

    #[test]
    fn parse_duration_never_panics(s in prop_oneof![duration_string(), hostile_string()]) {
        if let Err(e) = parse_duration(&s) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    #[test]
    fn durations_round_trip(
        secs in prop_oneof![0u64..100_000, 0u64..1_000_000_000, any::<u64>()],
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
    ) {
        let d = Duration::new(secs, nanos);
        let text = format_duration(d);
        match parse_duration(&text) {
            Ok(back) => prop_assert_eq!(back, d, "{}", text),
            // A range check may refuse huge durations, but not the everyday ones.
            Err(e) => prop_assert!(secs > 10 * 365 * 86_400, "{text}: {e}"),
        }
    }

    #[test]
    fn membership_never_panics(config in membership_config(), steps in prop::collection::vec(step(), 1..40)) {
        let start = Instant::now();
        let mut now = start;
        let mut table = Membership::with_anchor(config, start, 1.7e9);
        for step in steps {
            match step {
                Step::Observe(a) => {
                    let _ = table.observe(&a, now);
                }
                Step::Tick => {
                    let _ = table.tick(now);
                }
                Step::MarkFailed(n) => {
                    let _ = table.mark_failed(&n, now);
                }
                Step::Wait(ms) => now += Duration::from_millis(ms),
            }
            let _ = table.next_deadline();
            let _ = table.alive();
            let all = table.members(&MembersRequest::default());
            prop_assert_eq!(all.len(), table.len());
        }
    }

    #[test]
    fn membership_timing_from_any_config_never_panics(
        suspect_after in prop::option::of(duration_string()),
        failed_after in prop::option::of(duration_string()),
        reap_after in prop::option::of(duration_string()),
        a in announcement(),
        wait_ms in prop_oneof![0u64..10_000, any::<u32>().prop_map(u64::from)],
    ) {
        // The timing keys as an operator writes them; what the config accepts, the
        // member table must live with.
        let mut text = String::from("[agent]\nname = \"a\"\n");
        for (k, v) in [("suspect_after", suspect_after), ("failed_after", failed_after), ("reap_after", reap_after)] {
            if let Some(v) = v {
                text.push_str(&format!("{k} = {}\n", toml::Value::String(v)));
            }
        }
        let Ok(c) = config::parse(Path::new("node.toml"), &text) else {
            return Ok(());
        };
        // As the agent builds it from its config.
        let config = MembershipConfig {
            suspect_after: match c.agent.suspect_after {
                Some(d) => SuspectAfter::Fixed(d),
                None => SuspectAfter::Heartbeats(3),
            },
            failed_after: c.agent.failed_after,
            reap_after: c.agent.reap_after,
        };
        let now = Instant::now();
        let mut table = Membership::new(config);
        let _ = table.observe(&a, now);
        let _ = table.next_deadline();
        let later = now + Duration::from_millis(wait_ms);
        let _ = table.tick(later);
        let _ = table.mark_failed(&a.node, later);
        let _ = table.next_deadline();
        let _ = table.tick(later + Duration::from_millis(wait_ms));
    }

    #[test]
    fn announcements_from_json_never_panic(v in json_value()) {
        if let Ok(a) = serde_json::from_value::<Announcement>(v) {
            let mut table = Membership::new(MembershipConfig::default());
            let _ = table.observe(&a, Instant::now());
            let _ = table.members(&MembersRequest::default());
        }
    }
}
