//! Strategies shared by the property tests of the protocol and of the agent: JSON
//! values, hostile strings, duration strings and watcher options. Included with
//! `#[path]` by the agent's tests, so it depends only on the protocol crate.

#![allow(dead_code)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;
use protocol::options::{
    IdSpec, LiveCheck, ReadyCheck, RestartPolicy, WatcherOptions, OPTION_NAMES,
};
use serde_json::Value;

/// A string that tries to hurt: control characters, escape sequences, long runs,
/// separators and anything else.
pub fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "(?s).{0,40}",
        2 => "[a-z0-9_.*> -]{0,20}",
        2 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{202e}\u{feff}a]{0,12}",
        1 => Just("\x1b]0;pwned\x07\x1b[2J".to_owned()),
        1 => Just("\u{9b}31m\u{1b}[1;1H".to_owned()),
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
        1 => Just(String::new()),
        1 => Just("../../etc/passwd".to_owned()),
        1 => Just("$(wid)$(name)$(circus.wid)$(".to_owned()),
    ]
    .boxed()
}

/// A plain name such as an agent would accept for a watcher or node.
pub fn plain_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,15}"
}

const UNITS: &[&str] = &[
    "ns", "us", "ms", "s", "sec", "m", "min", "h", "hr", "d", "days", "w", "M", "y", "years",
];

/// Duration strings: valid small ones, huge ones, malformed ones.
pub fn duration_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0u64..100_000, select(UNITS)).prop_map(|(n, u)| format!("{n}{u}")),
        2 => (any::<u64>(), select(UNITS)).prop_map(|(n, u)| format!("{n}{u}")),
        1 => (any::<u64>(), select(UNITS), any::<u64>(), select(UNITS))
            .prop_map(|(a, u, b, v)| format!("{a}{u} {b}{v}")),
        1 => Just("300000000000y".to_owned()),
        1 => Just("18446744073709551615s".to_owned()),
        1 => Just("18446744073709551616s".to_owned()),
        1 => Just("1e300s".to_owned()),
        1 => Just("-5s".to_owned()),
        1 => Just("NaN".to_owned()),
        1 => hostile_string(),
    ]
    .boxed()
}

/// Any JSON value; keys often name real fields so that deep paths get exercised.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // A NaN or an infinity becomes null.
        any::<f64>().prop_map(Value::from),
        Just(Value::from(1e300)),
        hostile_string().prop_map(Value::String),
        duration_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names of requests and options, or anything.
pub fn json_key() -> impl Strategy<Value = String> {
    const FIELDS: &[&str] = &[
        "id",
        "command",
        "properties",
        "name",
        "nb",
        "waiting",
        "rolling",
        "signum",
        "pid",
        "leader_only",
        "keys",
        "options",
        "cmd",
        "args",
        "start",
        "status",
        "tags",
        "lines",
        "stream",
        "follow_secs",
    ];
    prop_oneof![
        2 => select(FIELDS).prop_map(str::to_owned),
        2 => select(OPTION_NAMES).prop_map(str::to_owned),
        1 => hostile_string(),
    ]
}

fn id_spec() -> impl Strategy<Value = IdSpec> {
    prop_oneof![
        any::<u32>().prop_map(IdSpec::Id),
        Just(IdSpec::Name("root".into())),
        Just(IdSpec::Name("nobody".into())),
        hostile_string().prop_map(IdSpec::Name),
    ]
}

fn restart_policy() -> impl Strategy<Value = RestartPolicy> {
    select(
        &[
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ][..],
    )
}

fn signal_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["TERM", "SIGTERM", "int", "HUP", "KILL", "9", "15", "0", "-1", "99"][..])
            .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        hostile_string(),
    ]
}

fn output_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "capture",
                "discard",
                "null",
                "/dev/null",
                "inherit",
                "/tmp/x.log"
            ][..]
        )
        .prop_map(str::to_owned),
        hostile_string(),
    ]
}

fn big_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..20, any::<u32>(), Just(u32::MAX)]
}

fn big_i32() -> impl Strategy<Value = i32> {
    prop_oneof![-3i32..20, any::<i32>(), Just(i32::MIN), Just(i32::MAX)]
}

/// Watcher options with every field drawn from hostile values: huge numbers, huge or
/// malformed durations, control characters, paths.
pub fn watcher_options() -> impl Strategy<Value = WatcherOptions> {
    let strings = || prop::collection::vec(hostile_string(), 0..4);
    let env = prop::collection::btree_map(hostile_string(), hostile_string(), 0..4);
    let dir = prop_oneof![
        Just("/".to_owned()),
        Just("/tmp".to_owned()),
        hostile_string()
    ];
    let a = (
        prop::option::of(prop_oneof![Just("sleep".to_owned()), hostile_string()]),
        prop::option::of(strings()),
        prop::option::of(big_u32()),
        prop::option::of(env),
        prop::option::of(any::<bool>()),
        prop::option::of(dir),
        prop::option::of(id_spec()),
        prop::option::of(id_spec()),
        prop::option::of(signal_string()),
    )
        .boxed();
    let b = (
        prop::option::of(duration_string()),
        prop::option::of(any::<bool>()),
        prop::option::of(restart_policy()),
        prop::option::of(prop::collection::vec(big_i32(), 0..4)),
        prop::option::of(big_i32()),
        prop::option::of(duration_string()),
        prop::option::of(duration_string()),
        prop::option::of(duration_string()),
        prop::option::of(duration_string()),
    )
        .boxed();
    let c = (
        prop::option::of(any::<bool>()),
        prop::option::of(big_i32()),
        prop::option::of(output_string()),
        prop::option::of(output_string()),
        prop::option::of(prop_oneof![plain_name(), hostile_string()]),
        prop::option::of(strings()),
        prop::option::of(duration_string()),
        prop::option::of(prop_oneof![0u64..4096, any::<u64>()]),
        prop::option::of(big_u32()),
        // `depends_on` and `sockets`: up to 70 names, past the 64 each allows.
        prop::option::of(prop::collection::vec(
            prop_oneof![plain_name(), hostile_string()],
            0..70,
        )),
        prop::option::of(prop::collection::vec(
            prop_oneof![plain_name(), hostile_string()],
            0..70,
        )),
    )
        .boxed();
    let d = (
        prop::option::of(ready_check()),
        prop::option::of(live_check()),
        prop::option::of(big_u32()),
        prop::option::of(big_u32()),
    );
    (a, b, c, d).prop_map(
        |(
            (cmd, args, numprocesses, env, copy_env, working_dir, uid, gid, stop_signal),
            (
                graceful_timeout,
                respawn,
                restart,
                exit_codes,
                max_retry,
                min_uptime,
                restart_delay,
                max_restart_delay,
                warmup_delay,
            ),
            (
                autostart,
                priority,
                stdout,
                stderr,
                service,
                health_cmd,
                health_timeout,
                log_max_bytes,
                log_backups,
                depends_on,
                sockets,
            ),
            (ready, live, max_surge, max_unavailable),
        )| WatcherOptions {
            cmd,
            args,
            numprocesses,
            env,
            copy_env,
            working_dir,
            uid,
            gid,
            stop_signal,
            graceful_timeout,
            respawn,
            restart,
            exit_codes,
            max_retry,
            min_uptime,
            restart_delay,
            max_restart_delay,
            warmup_delay,
            autostart,
            priority,
            depends_on,
            stdout,
            stderr,
            service,
            health_cmd,
            health_timeout,
            ready,
            live,
            log_max_bytes,
            log_backups,
            sockets,
            max_surge,
            max_unavailable,
            max_memory: None,
            max_memory_samples: None,
            rlimits: None,
            max_age: None,
            max_age_variance: None,
            hooks: None,
        },
    )
}

/// A probe target: near-valid ones (with expansions, IPv6, ports out of range, https)
/// and hostile strings.
fn probe_target() -> BoxedStrategy<String> {
    prop_oneof![
        2 => select(&[
            "127.0.0.1:80$(wid)",
            "[::1]:8080",
            "localhost:0",
            "127.0.0.1:65536",
            "::1:80",
            "http://127.0.0.1:8080/health?x=$(name)",
            "https://example.com/",
            "http://user@host/",
            "http://[::1]/",
            "http://h:99999/",
            "http://a b/",
            "http://x/\r\nHost: evil",
        ][..])
        .prop_map(str::to_owned),
        1 => hostile_string(),
    ]
    .boxed()
}

/// A readiness check with every field drawn from near-valid and hostile values.
pub fn ready_check() -> impl Strategy<Value = ReadyCheck> {
    (
        prop::option::of(probe_target()),
        prop::option::of(probe_target()),
        prop::option::of(prop::collection::vec(hostile_string(), 0..3)),
        prop::option::of(any::<bool>()),
        prop::option::of(duration_string()),
        prop::option::of(duration_string()),
    )
        .prop_map(|(tcp, http, exec, notify, timeout, interval)| ReadyCheck {
            tcp,
            http,
            exec,
            notify,
            timeout,
            interval,
        })
}

/// A liveness check with every field drawn from near-valid and hostile values.
pub fn live_check() -> impl Strategy<Value = LiveCheck> {
    (
        prop::option::of(probe_target()),
        prop::option::of(probe_target()),
        prop::option::of(prop::collection::vec(hostile_string(), 0..3)),
        prop::option::of(duration_string()),
        prop::option::of(duration_string()),
        prop::option::of(big_u32()),
    )
        .prop_map(|(tcp, http, exec, timeout, interval, failures)| LiveCheck {
            tcp,
            http,
            exec,
            timeout,
            interval,
            failures,
        })
}

/// Options an operator would write: every value in a sane range, so that the agent
/// must accept them.
pub fn sane_watcher_options() -> impl Strategy<Value = WatcherOptions> {
    let dur = || {
        prop::option::of((1u64..60, select(&["ms", "s"][..])).prop_map(|(n, u)| format!("{n}{u}")))
    };
    let word = || "[a-z0-9]{1,8}";
    let a = (
        prop::option::of(prop::collection::vec(word(), 0..3)),
        prop::option::of(1u32..20),
        prop::option::of(prop::collection::btree_map("[A-Z]{1,6}", word(), 0..3)),
        prop::option::of(any::<bool>()),
        prop::option::of(select(&["TERM", "INT", "HUP", "KILL", "QUIT"][..])),
        prop::option::of(restart_policy()),
        prop::option::of(prop::collection::vec(0i32..255, 0..3)),
        prop::option::of(-1i32..20),
    );
    let b = (
        dur(),
        dur(),
        dur(),
        dur(),
        dur(),
        dur(),
        prop::option::of(any::<bool>()),
        prop::option::of(-100i32..100),
        prop::option::of(select(&["capture", "discard", "inherit"][..])),
        prop::option::of(1024u64..100_000_000),
        prop::option::of(0u32..10),
    );
    (a, b).prop_map(
        |(
            (args, numprocesses, env, copy_env, stop_signal, restart, exit_codes, max_retry),
            (
                graceful_timeout,
                min_uptime,
                restart_delay,
                max_restart_delay,
                warmup_delay,
                health_timeout,
                autostart,
                priority,
                stdout,
                log_max_bytes,
                log_backups,
            ),
        )| WatcherOptions {
            cmd: Some("sleep".into()),
            args,
            numprocesses,
            env,
            copy_env,
            stop_signal: stop_signal.map(str::to_owned),
            graceful_timeout,
            restart,
            exit_codes,
            max_retry,
            min_uptime,
            restart_delay,
            max_restart_delay,
            warmup_delay,
            autostart,
            priority,
            stdout: stdout.map(str::to_owned),
            health_timeout,
            log_max_bytes,
            log_backups,
            ..WatcherOptions::default()
        },
    )
}

/// Tags as a node's config has them.
pub fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(hostile_string(), hostile_string(), 0..3)
}
