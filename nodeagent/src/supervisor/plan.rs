//! The reload plan, pure: the watchers a config file leads to, by the rule the agent
//! applies at start (an entry the file changed since it was last loaded wins; the other
//! watchers keep their runtime changes, see `state::merge`), and what changes between
//! the watchers that run and those: added, removed, changed (which keys, old and new),
//! scaled; and between the sockets bound and the file's `[socket.NAME]` tables. It must
//! not perform effects (nor bind anything); the supervisor applies the plan.

use std::collections::BTreeMap;

use protocol::options::OPTION_NAMES;
use protocol::reply::{KeyChange, PlanAction, PlanData, SocketPlan, WatcherPlan};
use serde_json::{json, Value};

use crate::config::WatcherConfig;
use crate::sockets::{Endpoint, SocketSpec};

/// The watchers after a reload of `file`, given the ones `running` and the file's
/// watchers as last loaded (`base`); and the watchers that keep runtime changes
/// (changed, added or removed at runtime while their entry in the file stayed as it was).
pub(super) fn target(
    running: &BTreeMap<String, WatcherConfig>,
    file: &BTreeMap<String, WatcherConfig>,
    base: &BTreeMap<String, WatcherConfig>,
) -> (BTreeMap<String, WatcherConfig>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut kept = Vec::new();
    for (name, f) in file {
        let unchanged = base.get(name) == Some(f);
        match (unchanged, running.get(name)) {
            (false, _) => {
                out.insert(name.clone(), f.clone());
            }
            (true, Some(r)) => {
                if r != f {
                    kept.push(name.clone());
                }
                out.insert(name.clone(), r.clone());
            }
            // Removed at runtime: it stays removed.
            (true, None) => kept.push(name.clone()),
        }
    }
    for (name, r) in running {
        if !file.contains_key(name) && !base.contains_key(name) {
            // Added at runtime.
            kept.push(name.clone());
            out.insert(name.clone(), r.clone());
        }
    }
    kept.sort();
    (out, kept)
}

/// What changes from `running` to `target`; `runs` says whether a watcher's processes
/// should run (a stopped watcher is not restarted by a change). `moved` holds the
/// sockets bound anew, by name, each as the change of its address: a watcher that keeps
/// listing one changes too, and its processes restart to get it.
pub(super) fn plan(
    running: &BTreeMap<String, WatcherConfig>,
    target: &BTreeMap<String, WatcherConfig>,
    runs: impl Fn(&str) -> bool,
    moved: &BTreeMap<String, KeyChange>,
) -> PlanData {
    let mut data = PlanData::default();
    let entry = |name: &str, action, changes, restart| WatcherPlan {
        name: name.to_owned(),
        action,
        changes,
        restart,
    };
    let mut plans = Vec::new();
    for name in target.keys().filter(|n| !running.contains_key(*n)) {
        data.added.push(name.clone());
        plans.push(entry(name, PlanAction::Added, vec![], false));
    }
    for name in running.keys().filter(|n| !target.contains_key(*n)) {
        data.removed.push(name.clone());
        plans.push(entry(name, PlanAction::Removed, vec![], false));
    }
    for (name, old) in running {
        let Some(new) = target.get(name) else {
            continue;
        };
        let mut changes = key_changes(old, new);
        let moves: Vec<KeyChange> = new
            .sockets
            .iter()
            .filter(|s| old.sockets.contains(s))
            .filter_map(|s| moved.get(s).cloned())
            .collect();
        let socket_moved = !moves.is_empty();
        changes.extend(moves);
        if changes.is_empty() {
            continue;
        }
        if changes.iter().all(|c| c.key == "numprocesses") {
            data.scaled.push(name.clone());
            plans.push(entry(name, PlanAction::Scaled, changes, false));
        } else {
            data.changed.push(name.clone());
            let restart = (old.spawn_differs(new) || socket_moved) && runs(name);
            plans.push(entry(name, PlanAction::Changed, changes, restart));
        }
    }
    let rank = |a: PlanAction| match a {
        PlanAction::Added => 0,
        PlanAction::Removed => 1,
        PlanAction::Changed => 2,
        PlanAction::Scaled => 3,
    };
    plans.sort_by(|a, b| (rank(a.action), &a.name).cmp(&(rank(b.action), &b.name)));
    data.watchers = plans;
    data
}

/// What changes from the sockets bound (`old`, their specs) to a file's `[socket.NAME]`
/// tables (`new`): added, removed, then changed sockets with the keys that change.
pub(super) fn sockets(
    old: &BTreeMap<String, SocketSpec>,
    new: &BTreeMap<String, SocketSpec>,
) -> Vec<SocketPlan> {
    let entry = |name: &str, action, changes| SocketPlan {
        name: name.to_owned(),
        action,
        changes,
    };
    let added = new
        .keys()
        .filter(|n| !old.contains_key(*n))
        .map(|n| entry(n, PlanAction::Added, vec![]));
    let removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .map(|n| entry(n, PlanAction::Removed, vec![]));
    let changed = new.iter().filter_map(|(n, s)| {
        let o = old.get(n)?;
        let changes = socket_key_changes(o, s);
        (!changes.is_empty()).then(|| entry(n, PlanAction::Changed, changes))
    });
    added.chain(removed).chain(changed).collect()
}

/// A socket's keys as a `[socket.NAME]` table says them (the defaults filled in).
fn socket_keys(s: &SocketSpec) -> [(&'static str, Option<Value>); 6] {
    let (host, port, path, mode) = match &s.endpoint {
        Endpoint::Tcp { host, port } => (Some(json!(host)), Some(json!(port)), None, None),
        Endpoint::Unix { path, mode } => (
            None,
            None,
            Some(json!(path.display().to_string())),
            mode.map(|m| json!(format!("{m:04o}"))),
        ),
    };
    [
        ("host", host),
        ("port", port),
        ("path", path),
        ("mode", mode),
        ("backlog", Some(json!(s.backlog))),
        ("reuseport", Some(json!(s.reuseport))),
    ]
}

/// The keys of a socket whose values differ.
fn socket_key_changes(old: &SocketSpec, new: &SocketSpec) -> Vec<KeyChange> {
    socket_keys(old)
        .into_iter()
        .zip(socket_keys(new))
        .filter(|((_, o), (_, n))| o != n)
        .map(|((key, old), (_, new))| KeyChange {
            key: key.to_owned(),
            old,
            new,
        })
        .collect()
}

/// The options whose values differ, in the order of [`OPTION_NAMES`].
pub(super) fn key_changes(old: &WatcherConfig, new: &WatcherConfig) -> Vec<KeyChange> {
    let map = |c: &WatcherConfig| match serde_json::to_value(c.to_options()) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (map(old), map(new));
    OPTION_NAMES
        .iter()
        .filter(|k| old.get(**k) != new.get(**k))
        .map(|k| KeyChange {
            key: (*k).to_owned(),
            old: old.get(*k).cloned(),
            new: new.get(*k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use protocol::WatcherOptions;
    use serde_json::json;

    use super::*;

    fn w(name: &str, args: &[&str], n: u32) -> WatcherConfig {
        WatcherConfig::from_options(
            name,
            &WatcherOptions {
                cmd: Some("sleep".into()),
                args: Some(args.iter().map(|s| s.to_string()).collect()),
                numprocesses: Some(n),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn map(ws: &[WatcherConfig]) -> BTreeMap<String, WatcherConfig> {
        ws.iter().map(|w| (w.name.clone(), w.clone())).collect()
    }

    #[test]
    fn the_plan_lists_added_removed_changed_and_scaled_watchers() {
        let running = map(&[
            w("same", &["1"], 1),
            w("gone", &["1"], 1),
            w("web", &["1"], 2),
            w("db", &["1"], 1),
        ]);
        let mut quiet = w("web", &["2"], 3);
        quiet.lifecycle.graceful_timeout = std::time::Duration::from_secs(5);
        let target = map(&[
            w("same", &["1"], 1),
            quiet,
            w("db", &["1"], 4),
            w("new", &[], 1),
        ]);
        let p = plan(&running, &target, |_| true, &BTreeMap::new());
        assert_eq!(p.added, ["new"]);
        assert_eq!(p.removed, ["gone"]);
        assert_eq!(p.changed, ["web"]);
        assert_eq!(p.scaled, ["db"]);
        let web = p.watchers.iter().find(|x| x.name == "web").unwrap();
        assert_eq!(web.action, PlanAction::Changed);
        assert!(web.restart);
        let keys: Vec<&str> = web.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["args", "numprocesses", "graceful_timeout"]);
        assert_eq!(web.changes[0].old, Some(json!(["1"])));
        assert_eq!(web.changes[0].new, Some(json!(["2"])));
        let db = p.watchers.iter().find(|x| x.name == "db").unwrap();
        assert_eq!((db.action, db.restart), (PlanAction::Scaled, false));
        assert_eq!(db.changes[0].old, Some(json!(1)));
        assert_eq!(db.changes[0].new, Some(json!(4)));
        // A stopped watcher takes a change without a restart.
        let p = plan(&running, &target, |n| n != "web", &BTreeMap::new());
        assert!(!p.watchers.iter().any(|x| x.restart));
        // Nothing differs: an empty plan.
        let p = plan(&running, &running, |_| true, &BTreeMap::new());
        assert_eq!(p, PlanData::default());
    }

    #[test]
    fn a_change_that_leaves_what_runs_alone_restarts_nothing() {
        let old = w("web", &["1"], 1);
        let mut new = old.clone();
        new.lifecycle.priority = 7;
        new.lifecycle.depends_on = vec!["db".into()];
        let p = plan(&map(&[old]), &map(&[new]), |_| true, &BTreeMap::new());
        assert_eq!(p.changed, ["web"]);
        let keys: Vec<&str> = p.watchers[0]
            .changes
            .iter()
            .map(|c| c.key.as_str())
            .collect();
        assert_eq!(keys, ["priority", "depends_on"]);
        assert_eq!(p.watchers[0].changes[1].old, None);
        assert!(!p.watchers[0].restart);
    }

    #[test]
    fn file_edits_win_and_runtime_changes_stay() {
        let base = map(&[w("a", &["1"], 1), w("b", &["1"], 1), w("gone", &["1"], 1)]);
        // At runtime: a resized, b unchanged, gone removed, extra added.
        let running = map(&[w("a", &["1"], 3), w("b", &["1"], 1), w("extra", &["1"], 1)]);
        // The file is edited: b changes, c is added; a and gone stay as they were.
        let file = map(&[
            w("a", &["1"], 1),
            w("b", &["2"], 1),
            w("c", &["1"], 1),
            w("gone", &["1"], 1),
        ]);
        let (t, kept) = target(&running, &file, &base);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a", "b", "c", "extra"]);
        assert_eq!(t["a"].command.numprocesses, 3, "a keeps its runtime count");
        assert_eq!(t["b"].command.args, ["2"], "the file's edit of b wins");
        assert_eq!(kept, ["a", "extra", "gone"]);
        let p = plan(&running, &t, |_| true, &BTreeMap::new());
        assert_eq!(
            (p.added, p.changed, p.removed),
            (vec!["c".to_string()], vec!["b".to_string()], vec![])
        );
        // The file drops a watcher it had: it goes, runtime changes or not.
        let file = map(&[w("b", &["1"], 1), w("gone", &["1"], 1)]);
        let (t, _) = target(&running, &file, &base);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["b", "extra"]);
    }

    #[test]
    fn the_socket_plan_names_the_keys_that_change() {
        use crate::sockets::SocketOptions;
        let spec = |name: &str, o: SocketOptions| {
            (name.to_owned(), SocketSpec::from_options(name, &o).unwrap())
        };
        let tcp = |port| SocketOptions {
            port: Some(port),
            ..Default::default()
        };
        let unix = |mode: &str| SocketOptions {
            path: Some("/run/a.sock".into()),
            mode: Some(mode.into()),
            ..Default::default()
        };
        let old = BTreeMap::from([
            spec("web", tcp(8000)),
            spec("same", tcp(8001)),
            spec("gone", tcp(8002)),
            spec("admin", unix("0600")),
        ]);
        let new = BTreeMap::from([
            spec("web", tcp(8080)),
            spec("same", tcp(8001)),
            spec("new", tcp(8003)),
            spec("admin", unix("0660")),
        ]);
        let p = sockets(&old, &new);
        let rows: Vec<(&str, PlanAction)> = p.iter().map(|s| (s.name.as_str(), s.action)).collect();
        assert_eq!(
            rows,
            [
                ("new", PlanAction::Added),
                ("gone", PlanAction::Removed),
                ("admin", PlanAction::Changed),
                ("web", PlanAction::Changed)
            ]
        );
        assert_eq!(p[2].changes[0].key, "mode");
        assert_eq!(p[2].changes[0].old, Some(json!("0600")));
        assert_eq!(p[2].changes[0].new, Some(json!("0660")));
        assert_eq!(p[3].changes.len(), 1);
        assert_eq!(
            (p[3].changes[0].old.clone(), p[3].changes[0].new.clone()),
            (Some(json!(8000)), Some(json!(8080)))
        );
        assert!(sockets(&old, &old).is_empty());
    }

    #[test]
    fn a_watcher_whose_socket_moves_restarts() {
        let mut web = w("web", &["1"], 2);
        web.sockets = vec!["s".into()];
        let moved = BTreeMap::from([(
            "s".to_owned(),
            KeyChange {
                key: "socket.s".into(),
                old: Some(json!("127.0.0.1:8000")),
                new: Some(json!("127.0.0.1:8080")),
            },
        )]);
        let running = map(&[web.clone(), w("other", &["1"], 1)]);
        let p = plan(&running, &running, |_| true, &moved);
        assert_eq!(p.changed, ["web"]);
        assert!(p.watchers[0].restart);
        assert_eq!(p.watchers[0].changes[0].key, "socket.s");
        // Resized as well: still a change that restarts, not a resize alone.
        let mut more = web.clone();
        more.command.numprocesses = 3;
        let p = plan(
            &running,
            &map(&[more, w("other", &["1"], 1)]),
            |_| true,
            &moved,
        );
        assert_eq!((p.changed.len(), p.scaled.len()), (1, 0));
        assert!(p.watchers[0].restart);
        // A stopped watcher takes it at its next start.
        let p = plan(&running, &running, |_| false, &moved);
        assert!(!p.watchers[0].restart);
    }
}
