//! Tests of the agent's architecture (see ARCHITECTURE.md), read from its source: the
//! top-level modules use each other one way only (no import cycle), ARCHITECTURE.md
//! draws that graph as it is, the transport knows nothing of the agent's own types,
//! only the NATS edge touches `async_nats`, and only `process` sends signals or creates
//! process groups. Run them with `cargo test -p nodeagent module_graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's name, and the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to: `src/x.rs` and `src/x/**` are `x`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel.components().next().expect("a file under src");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// The code of `text` without line comments (doc links are not dependencies).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by `crate::x` paths in `code`, including grouped ones
/// (`use crate::{a, b::c};`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `nodeagent_crate::` or `my_crate::` are not this crate.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || item.is_empty() {
                    item.push(c);
                }
            }
            out.extend(first_ident(&item));
        } else {
            out.extend(first_ident(rest));
        }
    }
    out.retain(|m| m != "self" && m != "super");
    out
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let ident: String = s.chars().take_while(|&c| is_ident(c)).collect();
    (!ident.is_empty()).then_some(ident)
}

/// The graph of the crate's top-level modules, from `src/`. `lib.rs` (the module list)
/// and `main.rs` (another crate) are left out, and so is this file.
fn crate_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let module = module_of(src, &file);
        if ["lib", "main", "module_graph"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let code: Vec<&str> = code_lines(&text).collect();
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(crate_refs(&code.join("\n")));
        uses.remove(&module);
    }
    graph
}

/// A cycle of `graph` (first module repeated at the end), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Visiting);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut vec![]) {
            return Some(cycle);
        }
    }
    None
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            format!("  {m} -> {}", uses.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_modules_use_each_other_one_way() {
    let graph = crate_graph(&src_dir());
    assert!(graph.len() > 10, "too few modules found:\n{}", show(&graph));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle: {}\nthe module graph:\n{}",
            cycle.join(" -> "),
            show(&graph)
        );
    }
    // What each module uses is printed with --nocapture.
    println!("{}", show(&graph));
}

/// The graph drawn in ARCHITECTURE.md under "What may use what": lines `a -> b c`,
/// continued on indented lines; `a b -> (nothing)` for modules that use none.
fn documented_graph() -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let section = text
        .split("## What may use what")
        .nth(1)
        .expect("a section 'What may use what'");
    let block = section.split("```").nth(1).expect("a code block in it");
    let mut graph = Graph::new();
    let mut current: Vec<String> = vec![];
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (names, uses) = match line.split_once("->") {
            Some((l, r)) if !line.starts_with(' ') => {
                current = l.split_whitespace().map(String::from).collect();
                (current.clone(), r)
            }
            _ => (current.clone(), line),
        };
        for name in names {
            let entry = graph.entry(name).or_default();
            entry.extend(
                uses.split_whitespace()
                    .filter(|u| *u != "(nothing)")
                    .map(String::from),
            );
        }
    }
    graph
}

#[test]
fn architecture_md_draws_the_graph_as_it_is() {
    let (code, doc) = (crate_graph(&src_dir()), documented_graph());
    assert_eq!(
        code,
        doc,
        "ARCHITECTURE.md is out of date; the graph is:\n{}",
        show(&code)
    );
}

#[test]
fn the_transport_knows_nothing_of_the_agent() {
    let graph = crate_graph(&src_dir());
    let uses = &graph["transport"];
    for banned in [
        "agent",
        "dispatch",
        "supervisor",
        "statsloop",
        "relay",
        "memberloop",
    ] {
        assert!(!uses.contains(banned), "transport uses {banned}: {uses:?}");
    }
    for m in [
        "statsloop",
        "relay",
        "memberloop",
        "membership",
        "stats",
        "identity",
    ] {
        assert!(
            !graph[m].contains("agent"),
            "{m} uses agent: {:?}",
            graph[m]
        );
    }
}

/// The modules whose code (outside comments and the tests at the end of each file)
/// contains any of `needles`.
fn modules_using(needles: &[&str]) -> BTreeSet<String> {
    let src = src_dir();
    rust_files(&src)
        .into_iter()
        .filter(|f| module_of(&src, f) != "module_graph")
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let found = code_lines(&text)
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .any(|l| needles.iter().any(|n| l.contains(n)));
            found
        })
        .map(|f| module_of(&src, &f))
        .collect()
}

#[test]
fn only_the_nats_edge_touches_async_nats() {
    // `config` only parses server addresses with `ServerAddr`, so that a bad one is
    // reported with every other config error.
    let allowed: BTreeSet<String> = ["transport", "sysevents", "config"]
        .map(String::from)
        .into();
    let users = modules_using(&["async_nats::"]);
    assert!(
        users.is_subset(&allowed),
        "async_nats used outside {allowed:?}: {users:?}"
    );
}

#[test]
fn only_process_signals_and_groups_processes() {
    let users = modules_using(&[
        "signal::kill",
        "killpg",
        "nix::sys::wait",
        "setpgid",
        "setsid",
        "process_group(",
        "nix::unistd::fork",
    ]);
    let allowed: BTreeSet<String> = ["process".to_owned()].into();
    assert!(
        users.is_subset(&allowed),
        "process groups or signals handled outside process: {users:?}"
    );
}

#[test]
fn finds_references_and_cycles() {
    let refs = crate_refs(
        "use crate::a::B;\nuse crate::{b, c::{D, E}, d::F};\nlet x = crate::e::f();\n\
         my_crate::g::h();\nuse crate::{self as me};",
    );
    assert_eq!(refs, ["a", "b", "c", "d", "e"].map(String::from).into());

    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    // (edges, has a cycle)
    let cases: [(&[(&str, &str)], bool); 4] = [
        (&[("a", "b"), ("b", "c")], false),
        (&[("a", "b"), ("a", "c"), ("b", "c")], false),
        (&[("a", "b"), ("b", "a")], true),
        (&[("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")], true),
    ];
    for (edges, cyclic) in cases {
        let found = find_cycle(&graph(edges));
        assert_eq!(found.is_some(), cyclic, "{edges:?}: {found:?}");
        if let Some(cycle) = found {
            assert_eq!(cycle.first(), cycle.last(), "{cycle:?}");
        }
    }
}
