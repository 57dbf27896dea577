//! The `[socket.NAME]` tables, validated into [`SocketSpec`]s, and a watcher's
//! `sockets`: each listed once, each defined, and every `$(sockets.NAME)` its
//! arguments and environment name among them. The socket options themselves are
//! checked by `crate::sockets`; nothing here binds.

use std::collections::BTreeMap;

use protocol::WatcherOptions;

use crate::sockets::{SocketOptions, SocketSpec};

use super::{Problem, Problems, WatcherConfig};

/// Validates the `[socket.NAME]` tables, and that every socket a watcher lists is one
/// of them.
pub(super) fn validate(
    raw: &BTreeMap<String, SocketOptions>,
    watchers: &BTreeMap<String, WatcherConfig>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, SocketSpec> {
    let mut sockets = BTreeMap::new();
    if raw.len() > crate::sockets::MAX_SOCKETS {
        problems.push(Problem::at(
            "[socket]",
            "NAME",
            format!(
                "{} sockets, more than {}; define fewer",
                raw.len(),
                crate::sockets::MAX_SOCKETS
            ),
        ));
        return sockets;
    }
    for (name, o) in raw {
        match SocketSpec::from_options(name, o) {
            Ok(s) => {
                sockets.insert(name.clone(), s);
            }
            Err(list) => problems.extend(list.into_iter().map(|(key, message)| Problem {
                location: match key {
                    "" => format!("[socket.{name}]"),
                    key => format!("[socket.{name}] {key}"),
                },
                message,
            })),
        }
    }
    for w in watchers.values() {
        for s in w.sockets.iter().filter(|s| !raw.contains_key(*s)) {
            problems.push(Problem::at(
                &format!("[watcher.{}]", w.name),
                "sockets",
                format!("no socket '{s}'; define it in a [socket.{s}] table or remove it"),
            ));
        }
    }
    sockets
}

/// A watcher's `sockets`: each listed once, and every `$(sockets.NAME)` in its `args`
/// and `env` values among them. Whether each is defined is checked with the tables
/// ([`validate`]).
pub(super) fn from_options(o: &WatcherOptions, t: &mut Problems) -> Vec<String> {
    let sockets = o.sockets.clone().unwrap_or_default();
    let texts = o
        .args
        .iter()
        .flatten()
        .chain(o.env.iter().flat_map(|e| e.values()));
    for m in crate::sockets::check_watcher_list(&sockets, texts.map(String::as_str)) {
        t.at("sockets", m);
    }
    sockets
}
