//! Property tests of what the protocol reads from the wire: the request parser and
//! per-option checks never panic, their errors are well-formed, and valid requests
//! round-trip. `PROPTEST_CASES` sets the number of cases (256 by default).

mod common;

use std::collections::BTreeMap;

use common::{hostile_string, json_key, json_value, plain_name, sane_watcher_options};
use proptest::prelude::*;
use proptest::sample::select;
use protocol::command::*;
use protocol::logs::{LogsProps, Stream};
use protocol::options::{check_option, OPTION_NAMES};
use protocol::registry::{Announcement, MemberState, MembersRequest, MembersView, StatusFilter};
use protocol::{parse_request, Errno, Request, RequestError};
use serde_json::{json, Value};

/// What every error must be: one of the parser's errnos and a reason that says
/// something.
fn assert_well_formed(e: &RequestError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            e.errno,
            Errno::BadMessage | Errno::BadOption | Errno::UnknownCommand
        ),
        "{e:?}"
    );
    prop_assert!(!e.reason.trim().is_empty(), "empty reason: {e:?}");
    Ok(())
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(bytes) {
        Ok(req) => {
            // What was accepted serializes and reads back the same.
            let again = serde_json::to_vec(&req).expect("a request serializes");
            prop_assert_eq!(parse_request(&again).ok(), Some(req));
        }
        Err(e) => assert_well_formed(&e)?,
    }
    Ok(())
}

/// A request-shaped object: a known or unknown command, an id of any type, and
/// properties with known or unknown keys and values of any type.
fn near_request() -> impl Strategy<Value = Value> {
    let command = prop_oneof![
        4 => select(COMMAND_NAMES).prop_map(|c| Value::String(c.to_owned())),
        1 => json_value(),
    ];
    let props = prop_oneof![
        4 => prop::collection::btree_map(json_key(), json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => json_value(),
    ];
    (
        prop::option::of(json_value()),
        prop::option::of(command),
        prop::option::of(props),
        prop::option::of((hostile_string(), json_value())),
    )
        .prop_map(|(id, command, props, extra)| {
            let mut m = serde_json::Map::new();
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            if let Some(c) = command {
                m.insert("command".into(), c);
            }
            if let Some(p) = props {
                m.insert("properties".into(), p);
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

fn maybe_name() -> impl Strategy<Value = Option<String>> {
    prop::option::of(plain_name())
}

/// Option values an operator would send with `set`.
fn set_options() -> impl Strategy<Value = BTreeMap<String, Value>> {
    let one = prop_oneof![
        (1u32..50).prop_map(|n| ("numprocesses".to_owned(), json!(n))),
        (1u32..60).prop_map(|n| ("graceful_timeout".to_owned(), json!(format!("{n}s")))),
        (1u32..900).prop_map(|n| ("min_uptime".to_owned(), json!(format!("{n}ms")))),
        any::<bool>().prop_map(|b| ("autostart".to_owned(), json!(b))),
        (-50i32..50).prop_map(|n| ("priority".to_owned(), json!(n))),
        select(&["TERM", "INT", "HUP"][..]).prop_map(|s| ("stop_signal".to_owned(), json!(s))),
    ];
    prop::collection::vec(one, 0..4).prop_map(|v| v.into_iter().collect())
}

/// Typed requests with values in ranges any agent accepts.
fn sane_request() -> impl Strategy<Value = Request> {
    let command = prop_oneof![
        maybe_name().prop_map(|name| Command::Status(MaybeName { name })),
        maybe_name().prop_map(|name| Command::List(MaybeName { name })),
        (maybe_name(), any::<bool>())
            .prop_map(|(name, waiting)| Command::Start(StartStop { name, waiting })),
        (maybe_name(), any::<bool>())
            .prop_map(|(name, waiting)| Command::Stop(StartStop { name, waiting })),
        (maybe_name(), any::<bool>(), any::<bool>()).prop_map(|(name, waiting, rolling)| {
            Command::Restart(Restart {
                name,
                waiting,
                rolling,
            })
        }),
        (maybe_name(), any::<bool>(), any::<bool>()).prop_map(|(name, waiting, rolling)| {
            Command::Reload(Restart {
                name,
                waiting,
                rolling,
            })
        }),
        (plain_name(), 1u32..100).prop_map(|(name, nb)| Command::Incr(Resize { name, nb })),
        (plain_name(), 1u32..100).prop_map(|(name, nb)| Command::Decr(Resize { name, nb })),
        (plain_name(), prop::option::of(0u32..100))
            .prop_map(|(name, nb)| Command::Numprocesses(Numprocesses { name, nb })),
        Just(Command::Numwatchers(Empty {})),
        (
            plain_name(),
            prop_oneof![
                (1i32..32).prop_map(SignalSpec::Number),
                select(&["HUP", "SIGTERM", "USR1"][..])
                    .prop_map(|s| SignalSpec::Name(s.to_owned())),
            ],
            prop::option::of(1u32..4_000_000),
            any::<bool>()
        )
            .prop_map(
                |(name, signum, pid, leader_only)| Command::Signal(SignalProps {
                    name,
                    signum,
                    pid,
                    leader_only
                })
            ),
        plain_name().prop_map(|name| Command::Options(Name { name })),
        (
            plain_name(),
            prop::collection::vec(select(OPTION_NAMES).prop_map(str::to_owned), 0..4)
        )
            .prop_map(|(name, keys)| Command::Get(GetProps { name, keys })),
        (plain_name(), set_options())
            .prop_map(|(name, options)| Command::Set(SetProps { name, options })),
        (
            plain_name(),
            prop::collection::vec("[a-z0-9]{1,8}", 0..3),
            prop::option::of(sane_watcher_options()),
            any::<bool>()
        )
            .prop_map(|(name, args, options, start)| {
                Command::Add(Box::new(AddProps {
                    name,
                    cmd: "sleep".into(),
                    args,
                    options,
                    start,
                }))
            }),
        (plain_name(), any::<bool>())
            .prop_map(|(name, waiting)| Command::Rm(RmProps { name, waiting })),
        Just(Command::Reloadconfig(Default::default())),
        Just(Command::Reloadconfig(ReloadconfigProps { dry_run: true })),
        Just(Command::Dstats(Empty {})),
        Just(Command::Quit(Empty {})),
        Just(Command::Ping(Empty {})),
        maybe_name().prop_map(|name| Command::Stats(MaybeName { name })),
        (
            prop::option::of(prop_oneof![
                select(&MemberState::ALL[..]).prop_map(StatusFilter::One),
                prop::collection::vec(select(&MemberState::ALL[..]), 0..3)
                    .prop_map(StatusFilter::Many),
            ]),
            prop::collection::btree_map("[a-z]{1,5}", "[a-z]{1,5}", 0..3),
            prop::option::of("[a-z*-]{1,10}"),
            select(&[MembersView::Full, MembersView::Table, MembersView::Names][..]),
        )
            .prop_map(
                |(status, tags, name, view)| Command::Members(MembersRequest {
                    status,
                    tags,
                    name,
                    after: None,
                    view,
                })
            ),
        (
            plain_name(),
            prop::option::of(1u32..1000),
            prop::option::of(select(&Stream::ALL[..])),
            prop::option::of(0u32..300),
        )
            .prop_map(
                |(name, lines, stream, follow_secs)| Command::Logs(LogsProps {
                    name,
                    lines,
                    stream,
                    follow_secs
                })
            ),
    ];
    (prop::option::of("[A-Za-z0-9-]{1,36}"), command)
        .prop_map(|(id, command)| Request { id, command })
}

/// Changes a few bytes of a valid request: flips, cuts, inserts.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
            continue;
        }
        let i = at % bytes.len();
        match kind % 4 {
            0 => bytes[i] = byte,
            1 => {
                bytes.remove(i);
            }
            2 => bytes.insert(i, byte),
            _ => bytes.truncate(i),
        }
    }
    bytes
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes)?;
    }

    #[test]
    fn any_json_never_panics(v in json_value()) {
        check(&serde_json::to_vec(&v).unwrap())?;
    }

    #[test]
    fn request_shaped_json_never_panics(v in near_request()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let out = parse_request(&bytes);
        if let (Err(e), Some(Value::String(id))) = (&out, v.get("id")) {
            // Once the id could be read, the error carries it back.
            if e.id.is_some() {
                prop_assert_eq!(e.id.as_deref(), Some(id.as_str()));
            }
        }
        check(&bytes)?;
    }

    #[test]
    fn mutated_requests_never_panic(
        req in sane_request(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = mutate(serde_json::to_vec(&req).unwrap(), &edits);
        check(&bytes)?;
    }

    #[test]
    fn valid_requests_round_trip(req in sane_request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        prop_assert_eq!(parse_request(&bytes), Ok(req));
    }

    #[test]
    fn any_typed_request_round_trips_or_is_refused_cleanly(
        req in sane_request(),
        name in hostile_string(),
        nb in any::<u32>(),
    ) {
        // The same shapes with hostile names and counts: the parser may refuse them
        // (range checks), but says why and keeps the id.
        let mut v = serde_json::to_value(&req).unwrap();
        if let Some(p) = v.get_mut("properties").and_then(Value::as_object_mut) {
            if p.contains_key("name") {
                p.insert("name".into(), json!(name));
            }
            if p.contains_key("nb") {
                p.insert("nb".into(), json!(nb));
            }
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        match parse_request(&bytes) {
            Ok(back) => prop_assert_eq!(serde_json::to_value(&back).unwrap(), v),
            Err(e) => {
                assert_well_formed(&e)?;
                prop_assert_eq!(e.id, req.id);
            }
        }
    }

    #[test]
    fn check_option_never_panics(
        key in prop_oneof![3 => select(OPTION_NAMES).prop_map(str::to_owned), 1 => hostile_string()],
        value in json_value(),
    ) {
        if let Err(e) = check_option(&key, &value) {
            prop_assert!(!e.trim().is_empty());
            if OPTION_NAMES.contains(&key.as_str()) {
                prop_assert!(e.contains(&key), "{e:?} does not name {key:?}");
            }
        }
    }

    #[test]
    fn sane_option_values_pass_check_option(opts in sane_watcher_options()) {
        let v = serde_json::to_value(&opts).unwrap();
        for (k, v) in v.as_object().unwrap() {
            prop_assert_eq!(check_option(k, v), Ok(()), "{} = {}", k, v);
        }
    }

    #[test]
    fn any_announcement_bytes_never_panic(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<Announcement>(&serde_json::to_vec(&v).unwrap());
        let _ = serde_json::from_slice::<Announcement>(&bytes);
    }
}
