//! The dependencies between watchers (`depends_on`): one watcher's list checked on its
//! own, and the graph of a node's watchers checked as a whole (a dependency on a missing
//! watcher, a cycle). Pure: it decides nothing about when processes start or stop (the
//! supervisor does, with these checks).

use std::collections::{BTreeMap, BTreeSet};

use protocol::subjects::validate_token;

use super::{Problem, WatcherConfig};

/// The most watchers one watcher may depend on.
pub const MAX_DEPENDS: usize = 64;

/// Checks one watcher's `depends_on` on its own: at most [`MAX_DEPENDS`] names, each a
/// valid watcher name, none twice, not the watcher itself.
pub fn check_list(name: &str, deps: &[String]) -> Result<(), String> {
    if deps.len() > MAX_DEPENDS {
        return Err(format!(
            "lists {} watchers; at most {MAX_DEPENDS} are allowed",
            deps.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for d in deps {
        if let Err(e) = validate_token(d) {
            return Err(format!("{d:?} cannot be a watcher name: {e}"));
        }
        if d == name {
            return Err(format!(
                "'{name}' depends on itself; list only other watchers"
            ));
        }
        if !seen.insert(d.as_str()) {
            return Err(format!("lists '{d}' twice"));
        }
    }
    Ok(())
}

/// Something wrong with the dependency graph of a node's watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepError {
    /// `watcher` depends on `missing`, which is not a watcher of the node.
    Missing { watcher: String, missing: String },
    /// The watchers depend on each other in a ring: `[a, b, a]` is a -> b -> a.
    Cycle(Vec<String>),
}

impl DepError {
    /// The watcher whose `depends_on` the problem is reported at.
    pub fn watcher(&self) -> &str {
        match self {
            DepError::Missing { watcher, .. } => watcher,
            DepError::Cycle(ring) => ring.first().map_or("", String::as_str),
        }
    }
}

impl std::fmt::Display for DepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DepError::Missing { watcher, missing } => write!(
                f,
                "'{watcher}' depends on '{missing}', which is not a watcher of this node; \
                 add it or remove it from depends_on"
            ),
            DepError::Cycle(ring) => write!(
                f,
                "dependency cycle: {}; remove one of these dependencies",
                ring.join(" -> ")
            ),
        }
    }
}

/// Every problem of a dependency graph (watcher name to the names it depends on): each
/// missing watcher, in name order, then each cycle once.
pub fn graph_errors(graph: &BTreeMap<String, Vec<String>>) -> Vec<DepError> {
    let mut errors = Vec::new();
    for (w, deps) in graph {
        for d in deps.iter().filter(|d| !graph.contains_key(*d)) {
            errors.push(DepError::Missing {
                watcher: w.clone(),
                missing: d.clone(),
            });
        }
    }
    errors.extend(cycles(graph).into_iter().map(DepError::Cycle));
    errors
}

/// The cycles of a graph, each once, starting at its smallest name and ending where it
/// began (`[a, b, a]`). Depth-first without recursion, so that a long chain of watchers
/// cannot exhaust the stack; edges to missing watchers are skipped.
pub fn cycles(graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = graph.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in graph.keys() {
        if mark[start.as_str()] != Mark::New {
            continue;
        }
        // The path from `start`, each node with the index of its next edge.
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        mark.insert(start, Mark::OnPath);
        while let Some((node, next)) = path.last_mut() {
            let deps = graph.get(*node).map(Vec::as_slice).unwrap_or_default();
            let Some(dep) = deps.get(*next) else {
                mark.insert(node, Mark::Done);
                path.pop();
                continue;
            };
            *next += 1;
            match mark.get(dep.as_str()).copied() {
                None | Some(Mark::Done) => {}
                Some(Mark::New) => {
                    mark.insert(dep, Mark::OnPath);
                    path.push((dep.as_str(), 0));
                }
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut ring: Vec<String> =
                        path[from..].iter().map(|(n, _)| (*n).to_owned()).collect();
                    let least = ring
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    ring.rotate_left(least);
                    ring.push(ring[0].clone());
                    found.insert(ring);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// `names` in the order they start: each after the watchers it depends on (among
/// `names`), the others by `priority`, higher first, then by name.
pub fn start_order(
    names: &[String],
    graph: &BTreeMap<String, Vec<String>>,
    priority: impl Fn(&str) -> i32,
) -> Vec<String> {
    let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    order(&set, dependency_edges(&set, graph), priority)
}

/// `names` in the order they stop: each before the watchers it depends on (among
/// `names`), the others by `priority`, higher first, then by name.
pub fn stop_order(
    names: &[String],
    graph: &BTreeMap<String, Vec<String>>,
    priority: impl Fn(&str) -> i32,
) -> Vec<String> {
    let set: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let reversed = dependency_edges(&set, graph).map(|(dep, n)| (n, dep));
    order(&set, reversed, priority)
}

/// Each (dependency, dependent) pair of the watchers in `set`.
fn dependency_edges<'a>(
    set: &'a BTreeSet<&'a str>,
    graph: &'a BTreeMap<String, Vec<String>>,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    set.iter().flat_map(move |n| {
        let deps = graph.get(*n).map(Vec::as_slice).unwrap_or_default();
        deps.iter().map(move |d| (d.as_str(), *n))
    })
}

/// The names of `set` ordered so that for each edge `(first, then)` between two of
/// them, `first` comes before `then`; among those free to go, higher `priority` first,
/// then by name (Kahn's algorithm with a heap: n log n). What a cycle holds back (a
/// graph that was never checked) goes last, by priority.
fn order<'a>(
    set: &BTreeSet<&'a str>,
    edges: impl Iterator<Item = (&'a str, &'a str)>,
    priority: impl Fn(&str) -> i32,
) -> Vec<String> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting: BTreeMap<&str, usize> = set.iter().map(|n| (*n, 0)).collect();
    let mut then: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (first, next) in edges {
        if first != next && set.contains(first) && set.contains(next) {
            then.entry(first).or_default().push(next);
            *waiting.entry(next).or_default() += 1;
        }
    }
    let key = |n: &'a str| (priority(n), Reverse(n));
    let mut free: BinaryHeap<(i32, Reverse<&str>)> = waiting
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(n, _)| key(n))
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(set.len());
    while out.len() < set.len() {
        let next = match free.pop() {
            Some((_, Reverse(n))) => n,
            // Only a cycle is left: the best of what waits.
            None => match waiting
                .iter()
                .filter(|(_, w)| **w > 0)
                .map(|(n, _)| key(n))
                .max()
            {
                Some((_, Reverse(n))) => n,
                None => break,
            },
        };
        if waiting.remove(next).is_none() {
            continue;
        }
        out.push(next.to_owned());
        for t in then.get(next).into_iter().flatten() {
            if let Some(w) = waiting.get_mut(t) {
                *w = w.saturating_sub(1);
                if *w == 0 {
                    free.push(key(t));
                }
            }
        }
    }
    out
}

/// The dependency graph of a set of watchers.
pub fn graph_of<'a>(
    watchers: impl IntoIterator<Item = &'a WatcherConfig>,
) -> BTreeMap<String, Vec<String>> {
    watchers
        .into_iter()
        .map(|w| (w.name.clone(), w.lifecycle.depends_on.clone()))
        .collect()
}

/// The problems of a config's watchers, each at `[watcher.NAME] depends_on`.
pub fn problems(watchers: &BTreeMap<String, WatcherConfig>) -> Vec<Problem> {
    graph_errors(&graph_of(watchers.values()))
        .into_iter()
        .map(|e| {
            Problem::at(
                &format!("[watcher.{}]", e.watcher()),
                "depends_on",
                e.to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(w, d)| (w.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn rings(g: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        cycles(g).iter().map(|c| c.join(" -> ")).collect()
    }

    #[test]
    fn cycles_are_found_once_each_from_their_least_name() {
        type Edges<'a> = &'a [(&'a str, &'a [&'a str])];
        let cases: &[(&str, Edges<'_>, &[&str])] = &[
            ("no edges", &[("a", &[]), ("b", &[])], &[]),
            (
                "a chain",
                &[("web", &["db"]), ("db", &["disk"]), ("disk", &[])],
                &[],
            ),
            (
                "a diamond is no cycle",
                &[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])],
                &[],
            ),
            ("itself", &[("a", &["a"])], &["a -> a"]),
            ("two", &[("b", &["a"]), ("a", &["b"])], &["a -> b -> a"]),
            (
                "three, entered in the middle",
                &[("x", &["c"]), ("c", &["a"]), ("a", &["b"]), ("b", &["c"])],
                &["a -> b -> c -> a"],
            ),
            (
                "two separate cycles",
                &[("a", &["b"]), ("b", &["a"]), ("c", &["d"]), ("d", &["c"])],
                &["a -> b -> a", "c -> d -> c"],
            ),
            ("a missing watcher is skipped", &[("a", &["nope"])], &[]),
        ];
        for (what, edges, want) in cases {
            assert_eq!(rings(&graph(edges)), *want, "{what}");
        }
    }

    #[test]
    fn a_long_chain_does_not_exhaust_the_stack() {
        let n = 100_000;
        let mut g: BTreeMap<String, Vec<String>> = (0..n)
            .map(|i| (format!("w{i}"), vec![format!("w{}", i + 1)]))
            .collect();
        g.insert(format!("w{n}"), vec![]);
        let t = std::time::Instant::now();
        assert!(cycles(&g).is_empty());
        println!(
            "checked a chain of {n} watchers for cycles in {:?}",
            t.elapsed()
        );
        g.insert(format!("w{n}"), vec!["w0".into()]);
        assert_eq!(cycles(&g).len(), 1);
    }

    #[test]
    fn graph_errors_name_the_missing_watcher_and_the_cycle() {
        let g = graph(&[("web", &["db", "cache"]), ("db", &["web"])]);
        let errors: Vec<String> = graph_errors(&g).iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("'web' depends on 'cache', which is not a watcher"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("dependency cycle: db -> web -> db"),
            "{errors:?}"
        );
    }

    #[test]
    fn dependencies_order_starts_and_stops_and_priority_the_rest() {
        let g = graph(&[
            ("web", &["db", "cache"]),
            ("db", &[]),
            ("cache", &["db"]),
            ("cron", &[]),
            ("low", &[]),
        ]);
        let prio = |n: &str| match n {
            "web" => 100,
            "cron" => 5,
            "low" => -5,
            _ => 0,
        };
        let names: Vec<String> = g.keys().cloned().collect();
        // web has the highest priority, but waits for db and cache.
        assert_eq!(
            start_order(&names, &g, prio),
            ["cron", "db", "cache", "web", "low"]
        );
        assert_eq!(
            stop_order(&names, &g, prio),
            ["web", "cron", "cache", "db", "low"]
        );
        // Only the names given are ordered; the others do not hold them back.
        let some = vec!["web".to_string(), "db".to_string()];
        assert_eq!(start_order(&some, &g, prio), ["db", "web"]);
        // A cycle (never checked) still gives every name once.
        let ring = graph(&[("a", &["b"]), ("b", &["a"]), ("c", &[])]);
        let all: Vec<String> = ring.keys().cloned().collect();
        assert_eq!(start_order(&all, &ring, |_| 0), ["c", "a", "b"]);
        // A large set is ordered fast.
        let many: BTreeMap<String, Vec<String>> = (0..50_000)
            .map(|i| {
                (
                    format!("w{i}"),
                    if i > 0 {
                        vec![format!("w{}", i - 1)]
                    } else {
                        vec![]
                    },
                )
            })
            .collect();
        let names: Vec<String> = many.keys().cloned().collect();
        let (ordered, took) = {
            let t = std::time::Instant::now();
            (start_order(&names, &many, |_| 0), t.elapsed())
        };
        assert_eq!(ordered.len(), 50_000);
        assert_eq!(ordered[..2], ["w0", "w1"]);
        println!("ordered 50,000 dependent watchers in {took:?}");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        let names: Vec<String> = g.keys().cloned().collect();
        // Without dependencies, priority alone, as before.
        let none = BTreeMap::new();
        assert_eq!(
            start_order(&names, &none, prio),
            ["web", "cron", "cache", "db", "low"]
        );
    }

    #[test]
    fn a_list_is_checked_on_its_own() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_list("web", &names(&["db", "cache"])), Ok(()));
        let e = check_list("web", &names(&["web"])).unwrap_err();
        assert!(e.contains("depends on itself"), "{e}");
        let e = check_list("web", &names(&["db", "db"])).unwrap_err();
        assert!(e.contains("'db' twice"), "{e}");
        let e = check_list("web", &names(&["a.b"])).unwrap_err();
        assert!(e.contains("cannot be a watcher name"), "{e}");
        let many: Vec<String> = (0..=MAX_DEPENDS).map(|i| format!("w{i}")).collect();
        let e = check_list("web", &many).unwrap_err();
        assert!(e.contains("at most 64"), "{e}");
    }
}
