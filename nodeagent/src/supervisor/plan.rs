//! The reload plan, pure: the watchers a config file leads to, by the rule the agent
//! applies at start (an entry the file changed since it was last loaded wins; the other
//! watchers keep their runtime changes, see `state::merge`), and what changes between
//! the watchers that run and those: added, removed, changed (which keys, old and new),
//! scaled. It must not perform effects; the supervisor applies the plan.

use std::collections::BTreeMap;

use protocol::options::OPTION_NAMES;
use protocol::reply::{KeyChange, PlanAction, PlanData, WatcherPlan};
use serde_json::Value;

use crate::config::WatcherConfig;

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
/// should run (a stopped watcher is not restarted by a change).
pub(super) fn plan(
    running: &BTreeMap<String, WatcherConfig>,
    target: &BTreeMap<String, WatcherConfig>,
    runs: impl Fn(&str) -> bool,
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
        let changes = key_changes(old, new);
        if changes.is_empty() {
            continue;
        }
        if changes.iter().all(|c| c.key == "numprocesses") {
            data.scaled.push(name.clone());
            plans.push(entry(name, PlanAction::Scaled, changes, false));
        } else {
            data.changed.push(name.clone());
            let restart = old.spawn_differs(new) && runs(name);
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
        quiet.graceful_timeout = std::time::Duration::from_secs(5);
        let target = map(&[
            w("same", &["1"], 1),
            quiet,
            w("db", &["1"], 4),
            w("new", &[], 1),
        ]);
        let p = plan(&running, &target, |_| true);
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
        let p = plan(&running, &target, |n| n != "web");
        assert!(!p.watchers.iter().any(|x| x.restart));
        // Nothing differs: an empty plan.
        let p = plan(&running, &running, |_| true);
        assert_eq!(p, PlanData::default());
    }

    #[test]
    fn a_change_that_leaves_what_runs_alone_restarts_nothing() {
        let old = w("web", &["1"], 1);
        let mut new = old.clone();
        new.priority = 7;
        new.depends_on = vec!["db".into()];
        let p = plan(&map(&[old]), &map(&[new]), |_| true);
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
        assert_eq!(t["a"].numprocesses, 3, "a keeps its runtime count");
        assert_eq!(t["b"].args, ["2"], "the file's edit of b wins");
        assert_eq!(kept, ["a", "extra", "gone"]);
        let p = plan(&running, &t, |_| true);
        assert_eq!(
            (p.added, p.changed, p.removed),
            (vec!["c".to_string()], vec!["b".to_string()], vec![])
        );
        // The file drops a watcher it had: it goes, runtime changes or not.
        let file = map(&[w("b", &["1"], 1), w("gone", &["1"], 1)]);
        let (t, _) = target(&running, &file, &base);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["b", "extra"]);
    }
}
