//! How replies look to a person: aligned tables and short sentences. `--json` bypasses
//! this and prints each reply as one JSON line.
//!
//! Everything shown here came from a peer on the bus, so every string goes through
//! [`sanitize`] (no escape sequence reaches the terminal) and every number is formatted
//! by a total function (no NaN, infinity or 1e300 can panic or flood the screen).

use std::fmt::Write as _;

use protocol::logs::LogsData;
use protocol::registry::{MemberRow, MembersData, MembersView};
use protocol::reply::*;
use protocol::stats::StatsData;
use protocol::{Command, Reply, WatcherOptions};
use serde_json::Value;

use crate::fmt::{age, bytes, number, timestamp};

/// An aligned text table; the last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Adds a row; its cells are sanitised, with tabs turned into spaces.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .iter()
                .map(|c| sanitize(c).replace('\t', " "))
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let _ = write!(line, "{c:<w$}  ", w = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Makes a string a peer sent safe to print on a terminal: removes ANSI escape
/// sequences (CSI, OSC, DCS and the other string controls, in their 7-bit and 8-bit
/// forms), every other C0 control but tab, DEL, C1 controls, and the Unicode controls
/// that reorder text (bidi overrides and isolates). Newlines and carriage returns become
/// spaces, so one message stays one line. Every renderer of peer data uses it.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(needs_care) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push('\t'),
            '\n' | '\r' => out.push(' '),
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                // ESC, intermediates (0x20-0x2f), one final character.
                Some(' '..='/') => {
                    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            c if needs_care(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `c` is a control character or reorders text.
fn needs_care(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Skips a control sequence's parameters and intermediates, and its final character.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if !matches!(c, '0'..='?' | ' '..='/') {
            return;
        }
    }
}

/// Skips a control string (OSC, DCS, ...) up to its terminator: BEL, ESC \ or ST.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                chars.next_if_eq(&'\\');
                return;
            }
            _ => {}
        }
    }
}

/// Appends one line of text, sanitised.
macro_rules! push_line {
    ($out:expr, $($arg:tt)*) => {{
        let text = format!($($arg)*);
        $out.push_str(&sanitize(&text));
        $out.push('\n');
    }};
}

fn opt_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the successful replies of one command, each read as the type of data the
/// command's reply carries (a reply that is not is left out). `multi` adds a NODE
/// column, or the node before each line.
pub fn render(command: &Command, replies: &[&Reply], multi: bool) -> String {
    let n = Nodes { multi };
    match command.reply_kind() {
        ReplyKind::Status => status(n, &typed(replies)),
        ReplyKind::List => list(n, &typed(replies)),
        ReplyKind::Action => action(n, &typed(replies)),
        ReplyKind::Numprocesses => numprocesses(n, &typed(replies)),
        ReplyKind::Numwatchers => numwatchers(n, &typed(replies)),
        ReplyKind::Options => options(n, &typed(replies)),
        ReplyKind::Plan => plan(n, &typed(replies)),
        ReplyKind::Dstats => dstats(&typed(replies)),
        ReplyKind::Ping => ping(&typed(replies)),
        ReplyKind::Stats => stats(&typed(replies)),
        ReplyKind::Members => members(&typed(replies)),
        ReplyKind::Logs => logs(n, &typed(replies)),
        ReplyKind::Sockets => sockets(n, &typed(replies)),
        ReplyKind::Upgrade => upgrade(&typed(replies)),
        ReplyKind::Empty => empty(command, n, &typed(replies)),
    }
}

/// The replies whose data is a `T`, each with the node that sent it.
fn typed<'a, T: KindData>(replies: &[&'a Reply]) -> Vec<(&'a str, &'a T)> {
    replies
        .iter()
        .filter_map(|r| {
            let d = r.data.as_ref().and_then(T::of)?;
            Some((r.node.as_str(), d))
        })
        .collect()
}

/// How the answering node is shown: a first column, or a prefix, when several answer.
#[derive(Debug, Clone, Copy)]
struct Nodes {
    multi: bool,
}

impl Nodes {
    fn head(self, cols: &[&str]) -> Table {
        let mut h: Vec<&str> = if self.multi { vec!["NODE"] } else { vec![] };
        h.extend_from_slice(cols);
        Table::new(&h)
    }

    fn row(self, node: &str, cells: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut row = if self.multi {
            vec![node.to_owned()]
        } else {
            vec![]
        };
        row.extend(cells);
        row
    }

    fn prefix(self, node: &str) -> String {
        if self.multi {
            format!("{node}: ")
        } else {
            String::new()
        }
    }
}

fn status(n: Nodes, replies: &[(&str, &StatusData)]) -> String {
    let mut t = n.head(&[
        "WATCHER",
        "STATE",
        "PROCESSES",
        "READY",
        "RESTARTS",
        "SERVICE",
        "REASON",
    ]);
    for (node, d) in replies {
        for w in &d.watchers {
            t.row(n.row(
                node,
                [
                    w.name.clone(),
                    w.state.to_string(),
                    format!("{}/{}", w.running, w.numprocesses),
                    w.ready.to_string(),
                    w.restarts.to_string(),
                    w.service.clone(),
                    w.reason.clone().unwrap_or_default(),
                ],
            ));
        }
    }
    if t.is_empty() {
        "no watchers\n".to_owned()
    } else {
        t.render()
    }
}

fn list(n: Nodes, replies: &[(&str, &ListData)]) -> String {
    let now = protocol::unix_time();
    let mut t = n.head(&[
        "WID",
        "PID",
        "STATE",
        "HEALTH",
        "AGE",
        "RESTARTS",
        "LAST EXIT",
    ]);
    let mut names = n.head(&["WATCHER"]);
    for (node, d) in replies {
        for w in d.watchers.iter().flatten() {
            names.row(n.row(node, [w.clone()]));
        }
        for p in d.processes.iter().flatten() {
            t.row(
                n.row(
                    node,
                    [
                        p.wid.to_string(),
                        p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        p.state.to_string(),
                        match (&p.health, &p.reason) {
                            (Some(h), Some(why)) => format!("{h} ({why})"),
                            (Some(h), None) => h.to_string(),
                            (None, _) => "-".into(),
                        },
                        p.started_at
                            .map(|t| age(now - t))
                            .unwrap_or_else(|| "-".into()),
                        p.restarts.to_string(),
                        p.last_exit
                            .as_ref()
                            .map(|e| e.to_string())
                            .unwrap_or_default(),
                    ],
                ),
            );
        }
    }
    if !names.is_empty() {
        names.render()
    } else if t.is_empty() {
        "no processes\n".to_owned()
    } else {
        t.render()
    }
}

fn action(n: Nodes, replies: &[(&str, &ActionData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        if let Some(pids) = &d.pids {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            push_line!(
                out,
                "{}signalled {} processes ({})",
                n.prefix(node),
                pids.len(),
                list.join(", ")
            );
            continue;
        }
        if d.statuses.is_empty() {
            push_line!(out, "{}ok", n.prefix(node));
        }
        for (w, s) in &d.statuses {
            push_line!(out, "{}{w}: {s}", n.prefix(node));
        }
    }
    out
}

fn numprocesses(n: Nodes, replies: &[(&str, &NumprocessesData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        push_line!(out, "{}{} processes", n.prefix(node), d.numprocesses);
    }
    out
}

fn numwatchers(n: Nodes, replies: &[(&str, &NumwatchersData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        push_line!(out, "{}{} watchers", n.prefix(node), d.numwatchers);
    }
    out
}

fn options(n: Nodes, replies: &[(&str, &OptionsData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        if n.multi {
            push_line!(out, "[{node}]");
        }
        if let Ok(Value::Object(m)) = serde_json::to_value::<&WatcherOptions>(&d.options) {
            for (k, v) in m {
                push_line!(out, "{k} = {}", opt_value(&v));
            }
        }
    }
    out
}

/// `key: old -> new; ...`, an unset value shown as `(unset)`.
fn key_changes(changes: &[KeyChange]) -> String {
    let v = |v: &Option<Value>| v.as_ref().map_or("(unset)".to_owned(), opt_value);
    changes
        .iter()
        .map(|c| format!("{}: {} -> {}", c.key, v(&c.old), v(&c.new)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `reloadconfig`: what each node applied, or with `--dry-run` would apply.
fn plan(n: Nodes, replies: &[(&str, &PlanData)]) -> String {
    let mut out = String::new();
    let mut t = n.head(&["CHANGE", "NAME", "DETAIL"]);
    for (node, d) in replies {
        if d.dry_run {
            push_line!(
                out,
                "{}dry run: the plan below, nothing was changed",
                n.prefix(node)
            );
        } else {
            push_line!(out, "{}reloaded: applied the plan below", n.prefix(node));
        }
        // An agent of an earlier version sends the names only.
        let names_only: Vec<WatcherPlan> = if d.watchers.is_empty() {
            [
                (PlanAction::Added, &d.added),
                (PlanAction::Removed, &d.removed),
                (PlanAction::Changed, &d.changed),
                (PlanAction::Scaled, &d.scaled),
            ]
            .into_iter()
            .flat_map(|(action, names)| {
                names.iter().map(move |name| WatcherPlan {
                    name: name.clone(),
                    action,
                    changes: vec![],
                    restart: false,
                })
            })
            .collect()
        } else {
            vec![]
        };
        for w in d.watchers.iter().chain(&names_only) {
            let detail = match w.action {
                PlanAction::Added => "starts if autostart".to_owned(),
                PlanAction::Removed => "stops and goes".to_owned(),
                PlanAction::Scaled => key_changes(&w.changes),
                PlanAction::Changed if w.restart => {
                    format!("{} (rolling restart)", key_changes(&w.changes))
                }
                PlanAction::Changed if w.changes.is_empty() => String::new(),
                PlanAction::Changed => format!("{} (no restart)", key_changes(&w.changes)),
            };
            t.row(n.row(node, [w.action.to_string(), w.name.clone(), detail]));
        }
        for s in &d.sockets {
            t.row(n.row(
                node,
                [
                    format!("socket {}", s.action),
                    s.name.clone(),
                    key_changes(&s.changes),
                ],
            ));
        }
        for k in &d.kept {
            t.row(n.row(
                node,
                [
                    "kept".to_owned(),
                    k.clone(),
                    "runtime changes stay: its entry in the file is unchanged".to_owned(),
                ],
            ));
        }
    }
    if t.is_empty() {
        out.push_str("nothing to change\n");
    } else {
        out.push_str(&t.render());
    }
    out
}

fn sockets(n: Nodes, replies: &[(&str, &SocketsData)]) -> String {
    let mut t = n.head(&["NAME", "KIND", "ADDRESS", "FD", "WATCHERS"]);
    for (node, d) in replies {
        for s in &d.sockets {
            t.row(n.row(
                node,
                [
                    s.name.clone(),
                    s.kind.clone(),
                    s.address.clone(),
                    s.fd.to_string(),
                    s.watchers.join(","),
                ],
            ));
        }
    }
    if t.is_empty() {
        "no sockets\n".to_owned()
    } else {
        t.render()
    }
}

fn upgrade(replies: &[(&str, &UpgradeData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        push_line!(
            out,
            "node {node}: upgrading, was boot {} (version {}): executing {} again, {} \
             process(es) kept; `ctl --node {node} ping --json` shows the new boot",
            d.was_boot_id,
            d.was_version,
            d.path,
            d.processes
        );
    }
    out
}

fn dstats(replies: &[(&str, &DstatsData)]) -> String {
    let mut t = Table::new(&[
        "NODE", "PID", "CPU%", "RSS", "THREADS", "CHILDREN", "UPTIME", "VERSION",
    ]);
    for (node, d) in replies {
        t.row(vec![
            node.to_string(),
            d.pid.to_string(),
            number(d.cpu_percent),
            bytes(d.rss_bytes),
            d.threads.to_string(),
            d.children.to_string(),
            age(d.uptime_secs),
            d.version.clone(),
        ]);
    }
    t.render()
}

fn ping(replies: &[(&str, &PingData)]) -> String {
    let mut t = Table::new(&["NODE", "VERSION", "PID", "HOST", "UPTIME", "TAGS"]);
    for (node, d) in replies {
        let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            node.to_string(),
            d.version.clone(),
            d.pid.to_string(),
            d.hostname.clone(),
            age(d.uptime_secs),
            tags.join(","),
        ]);
    }
    t.render()
}

fn stats(replies: &[(&str, &StatsData)]) -> String {
    let mut t = Table::new(&[
        "NODE", "WATCHER", "WID", "PID", "CPU%", "MEM", "AGE", "RESTARTS",
    ]);
    for (node, d) in replies {
        for w in &d.watchers {
            for p in &w.processes {
                t.row(vec![
                    node.to_string(),
                    w.name.clone(),
                    p.wid.to_string(),
                    p.pid.to_string(),
                    number(p.cpu_percent),
                    bytes(p.rss_bytes),
                    age(p.age_secs),
                    p.restarts.to_string(),
                ]);
            }
        }
    }
    if t.is_empty() {
        "no processes\n".into()
    } else {
        t.render()
    }
}

fn members(replies: &[(&str, &MembersData)]) -> String {
    let all: Vec<MemberRow> = replies
        .iter()
        .flat_map(|(_, d)| {
            let full = d.members.iter();
            let rows = full.map(|m| MemberRow::of(m, MembersView::Table));
            d.rows.iter().cloned().chain(rows)
        })
        .collect();
    crate::cluster::render_members(&all)
}

fn logs(n: Nodes, replies: &[(&str, &LogsData)]) -> String {
    let mut out = String::new();
    for (node, d) in replies {
        if d.truncated {
            push_line!(
                out,
                "({node}: older lines left out to fit one message; ask for fewer with -n)"
            );
        }
        for l in &d.lines {
            out.push_str(&log_line(l, n.multi));
        }
    }
    out
}

/// A reply with no data: `quit`'s says the node is going away. Every command is named,
/// so that a new one is placed here on purpose.
fn empty(command: &Command, n: Nodes, replies: &[(&str, &NoData)]) -> String {
    let mut out = String::new();
    for (node, _) in replies {
        match command {
            Command::Quit(_) => push_line!(out, "node {node} is shutting down"),
            Command::Status(_)
            | Command::List(_)
            | Command::Start(_)
            | Command::Stop(_)
            | Command::Restart(_)
            | Command::Reload(_)
            | Command::Incr(_)
            | Command::Decr(_)
            | Command::Numprocesses(_)
            | Command::Numwatchers(_)
            | Command::Signal(_)
            | Command::Options(_)
            | Command::Get(_)
            | Command::Set(_)
            | Command::Add(_)
            | Command::Rm(_)
            | Command::Reloadconfig(_)
            | Command::Dstats(_)
            | Command::Ping(_)
            | Command::Stats(_)
            | Command::Members(_)
            | Command::Logs(_)
            | Command::Listsockets(_)
            | Command::Upgrade(_) => push_line!(out, "{}ok", n.prefix(node)),
        }
    }
    out
}

/// One event as a line: time, node, watcher, kind and what it carries.
pub fn event_line(e: &protocol::events::Event) -> String {
    let mut s = format!("{} {} {} {}", timestamp(e.time), e.node, e.watcher, e.kind);
    if let Some(w) = e.wid {
        s.push_str(&format!(" wid={w}"));
    }
    if let Some(p) = e.pid {
        s.push_str(&format!(" pid={p}"));
    }
    if let Some(x) = &e.exit {
        s.push_str(&format!(" ({x})"));
    }
    if let Some(r) = &e.reason {
        s.push_str(&format!(": {r}"));
    }
    let mut s = sanitize(&s);
    s.push('\n');
    s
}

/// One captured line: `[web.2] text`, `[web.2:err] text`, with the node when `multi`.
pub fn log_line(l: &protocol::logs::LogLine, multi: bool) -> String {
    let node = if multi {
        format!("{}/", l.node)
    } else {
        String::new()
    };
    let err = if l.stream == protocol::logs::Stream::Stderr {
        ":err"
    } else {
        ""
    };
    let mut s = sanitize(&format!("[{node}{}.{}{err}] {}", l.watcher, l.wid, l.line));
    s.push('\n');
    s
}

/// Hostile replies, events and stats for the property tests of every renderer: real
/// message shapes whose strings, numbers and lists are drawn at random.
#[cfg(test)]
pub mod wild {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    /// The random material one message is made of; used in turn, round and round.
    #[derive(Debug, Clone)]
    pub struct Seeds {
        strings: Vec<String>,
        floats: Vec<f64>,
        ints: Vec<u64>,
        counts: Vec<u8>,
        at: usize,
    }

    impl Seeds {
        fn next(&mut self) -> usize {
            self.at += 1;
            self.at
        }
        pub fn string(&mut self) -> String {
            let i = self.next();
            self.strings[i % self.strings.len()].clone()
        }
        fn float(&mut self) -> f64 {
            let i = self.next();
            self.floats[i % self.floats.len()]
        }
        fn int(&mut self) -> u64 {
            let i = self.next();
            self.ints[i % self.ints.len()]
        }
        fn count(&mut self) -> usize {
            let i = self.next();
            usize::from(self.counts[i % self.counts.len()] % 4)
        }

        /// A value shaped like `template`: same keys and kinds, wild contents. The
        /// strings of enum fields (`state`, `stream`, `kind`, `status`) are kept.
        pub fn like(&mut self, key: &str, template: &Value) -> Value {
            match template {
                Value::String(s) if matches!(key, "state" | "stream" | "kind" | "status") => {
                    Value::String(s.clone())
                }
                Value::String(_) => Value::String(self.string()),
                Value::Number(n) if n.is_f64() => json!(self.float()),
                Value::Number(_) => json!(self.int()),
                Value::Array(items) => {
                    let n = self.count();
                    let mut out = vec![];
                    for _ in 0..n {
                        for item in items {
                            out.push(self.like(key, item));
                        }
                    }
                    Value::Array(out)
                }
                Value::Object(m) if matches!(key, "statuses" | "tags" | "env") => {
                    let n = self.count();
                    let mut out = Map::new();
                    for _ in 0..n {
                        for v in m.values() {
                            let v = self.like("state", v);
                            out.insert(self.string(), v);
                        }
                    }
                    Value::Object(out)
                }
                Value::Object(m) => Value::Object(
                    m.iter()
                        .map(|(k, v)| (k.clone(), self.like(k, v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
    }

    /// Strings with escape sequences, controls and text-reordering characters.
    pub fn hostile_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "(?s).{0,24}",
            "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{202e}\u{2066}a\\[\\]0-9;]{0,16}",
            Just("\x1b]0;pwned\x07\x1b[2J".to_owned()),
            Just("\u{9b}31m\u{9d}0;x\u{9c}".to_owned()),
            Just("\x1b[".to_owned()),
            Just("\x1b".to_owned()),
            "[a-z]{0,8}",
        ]
    }

    pub fn seeds() -> impl Strategy<Value = Seeds> {
        let floats = prop_oneof![
            1 => any::<f64>(),
            3 => -1e10f64..1e10,
            2 => prop::sample::select(&[1e300, -1e300, f64::MAX, f64::MIN, 0.0, 2.6e11, 3e11][..]),
        ];
        let ints = prop_oneof![
            4 => 0u64..100,
            1 => any::<u64>(),
            1 => prop::sample::select(vec![u64::from(u32::MAX), u64::MAX]),
        ];
        (
            prop::collection::vec(hostile_string(), 1..12),
            prop::collection::vec(floats, 1..8),
            prop::collection::vec(ints, 1..8),
            prop::collection::vec(any::<u8>(), 1..8),
        )
            .prop_map(|(strings, floats, ints, counts)| Seeds {
                strings,
                floats,
                ints,
                counts,
                at: 0,
            })
    }

    /// The command of that name, with the least properties it takes.
    pub fn command(name: &str) -> protocol::Command {
        protocol::Command::examples()
            .into_iter()
            .find(|c| c.name() == name)
            .expect("a command of that name")
    }

    /// A command and the data of its reply, every optional field present.
    pub fn templates() -> Vec<(&'static str, Value)> {
        let exit_killed = json!({"signal": "KILL"});
        let process = |exit: Value| {
            json!({"wid": 1, "pid": 2, "state": "running", "started_at": 1.5, "restarts": 0,
                   "last_exit": exit})
        };
        let stats = stats_data();
        let action = json!({"statuses": {"w": "active"}});
        vec![
            (
                "status",
                json!({"statuses": {"w": "active"}, "watchers": [{"name": "w",
                "state": "fatal", "numprocesses": 1, "running": 1, "restarts": 1,
                "service": "s", "reason": "r"}]}),
            ),
            ("list", json!({"watchers": ["w"]})),
            (
                "list",
                json!({"pids": [1], "processes": [process(exit_killed.clone())]}),
            ),
            ("list", json!({"processes": [process(json!({"code": 1}))]})),
            ("numprocesses", json!({"numprocesses": 1})),
            ("numwatchers", json!({"numwatchers": 1})),
            ("stop", action.clone()),
            ("signal", json!({"statuses": {"w": "active"}, "pids": [1]})),
            (
                "options",
                json!({"options": {"cmd": "x", "args": ["a"], "numprocesses": 1,
                "env": {"K": "V"}, "working_dir": "d", "uid": "u", "stop_signal": "TERM",
                "graceful_timeout": "1s", "exit_codes": [0], "stdout": "capture",
                "service": "s", "health_cmd": ["c"]}}),
            ),
            (
                "reloadconfig",
                json!({"dry_run": true, "added": ["a"], "removed": ["b"], "changed": ["c"],
                "scaled": ["d"], "kept": ["e"],
                "watchers": [{"name": "a", "action": "added"},
                    {"name": "b", "action": "removed"},
                    {"name": "c", "action": "changed", "restart": true,
                     "changes": [{"key": "args", "old": ["x"], "new": ["y"]},
                                 {"key": "depends_on", "new": ["a"]}]},
                    {"name": "d", "action": "scaled",
                     "changes": [{"key": "numprocesses", "old": 1, "new": 2}]}],
                "sockets": [{"name": "s", "action": "changed",
                     "changes": [{"key": "port", "old": 1, "new": 2}]}]}),
            ),
            (
                "dstats",
                json!({"pid": 1, "cpu_percent": 1.5, "rss_bytes": 1,
                "uptime_secs": 1.5, "threads": 1, "children": 1, "version": "v"}),
            ),
            (
                "ping",
                json!({"version": "v", "boot_id": "b", "pid": 1, "hostname": "h",
                "tags": {"k": "v"}, "uptime_secs": 1.5}),
            ),
            ("stats", stats),
            (
                "logs",
                json!({"lines": [{"node": "n", "watcher": "w", "wid": 1,
                "stream": "stderr", "time": 1.5, "line": "l"}], "truncated": true}),
            ),
            ("quit", json!({})),
            (
                "upgrade",
                json!({"was_boot_id": "b", "was_version": "v", "path": "/p",
                "processes": 2}),
            ),
            ("members", json!({"members": []})),
            (
                "listsockets",
                json!({"sockets": [{"name": "web", "kind": "tcp",
                "address": "127.0.0.1:8080", "fd": 7, "watchers": ["w"]}]}),
            ),
        ]
    }

    /// The data of a `stats` reply and of a stats message.
    pub fn stats_data() -> Value {
        json!({"host": {"cpu_count": 1, "load1": 0.5, "load5": 0.5, "load15": 0.5,
            "mem_total_bytes": 1, "mem_available_bytes": 1, "agent_pid": 1,
            "agent_cpu_percent": 0.5, "agent_rss_bytes": 1},
            "watchers": [{"name": "w", "service": "s", "state": "active", "numprocesses": 1,
                "running": 1, "cpu_percent": 0.5, "rss_bytes": 1, "restarts": 1,
                "processes": [{"wid": 1, "pid": 1, "cpu_percent": 0.5, "rss_bytes": 1,
                    "age_secs": 0.5, "restarts": 1}]}]})
    }

    pub fn event_template() -> Value {
        json!({"node": "n", "watcher": "w", "kind": "exit", "time": 1.5, "pid": 1, "wid": 1,
               "exit": {"signal": "s"}, "reason": "r", "boot_id": "b"})
    }

    pub fn member_template() -> Value {
        json!({"name": "n", "state": "alive", "since": 1.5, "boot_id": "b", "seq": 1,
            "hostname": "h", "address": "a", "tags": {"k": "v"}, "version": "v", "pid": 1,
            "started_at": 1.5, "last_seen": 1.5, "heartbeat_ms": 1,
            "watchers": [{"name": "w", "service": "s", "state": "active", "numprocesses": 1,
                "running": 1}],
            "services": ["s"], "numprocesses": 1, "running": 1})
    }

    /// What a terminal must never be sent from peer data: escape sequences, controls
    /// other than tab and newline, and text-reordering characters.
    pub fn assert_printable(text: &str) {
        for c in text.chars() {
            assert!(
                c == '\t'
                    || c == '\n'
                    || !(c.is_control()
                        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')),
                "{c:?} in {text:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn sanitize_strips_escapes_and_controls() {
        let cases = [
            ("plain web-1", "plain web-1"),
            ("tab\there", "tab\there"),
            ("two\nlines\r", "two lines "),
            ("\x1b]0;pwned\x07\x1b[2Jafter", "after"),
            ("red \x1b[1;31mtext\x1b[0m", "red text"),
            ("osc st \x1b]8;;http://x\x1b\\link", "osc st link"),
            ("charset \x1b(Bok", "charset ok"),
            ("keypad \x1b=ok", "keypad ok"),
            ("8-bit \u{9b}2Jcsi", "8-bit csi"),
            ("8-bit \u{9d}0;t\u{9c}osc", "8-bit osc"),
            ("nul\0 bell\x07 del\x7f c1\u{85}", "nul bell del c1"),
            ("bidi \u{202e}txt\u{2066}", "bidi txt"),
            ("unterminated \x1b]0;title", "unterminated "),
            ("trailing esc \x1b", "trailing esc "),
            ("trailing csi \x1b[12", "trailing csi "),
            ("h\u{e9}llo \u{65e5}\u{672c}", "h\u{e9}llo \u{65e5}\u{672c}"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
    }

    /// A reply of `kind` from `node` with `data`'s fields, read from its bytes as ctl
    /// reads it.
    fn decoded(kind: ReplyKind, node: &str, data: &Value) -> Result<Reply, serde_json::Error> {
        let mut fields = data.as_object().cloned().unwrap_or_default();
        fields.insert("node".into(), node.into());
        fields.insert("status".into(), "ok".into());
        fields.insert("time".into(), 1.0.into());
        kind.decode(&serde_json::to_vec(&fields)?)
    }

    fn reply(kind: ReplyKind, node: &str, data: Value) -> Reply {
        decoded(kind, node, &data).unwrap()
    }

    #[test]
    fn a_reload_plan_reads_as_a_table() {
        let dry = reply(
            ReplyKind::Plan,
            "n1",
            serde_json::json!({"dry_run": true, "added": ["new"], "removed": [],
                "changed": ["web"], "scaled": [], "kept": ["db"],
                "watchers": [{"name": "new", "action": "added"},
                    {"name": "web", "action": "changed", "restart": true, "changes": [
                        {"key": "args", "old": ["1"], "new": ["2"]},
                        {"key": "health_cmd", "new": ["true"]}]}]}),
        );
        let c = Command::Reloadconfig(protocol::command::ReloadconfigProps { dry_run: true });
        assert_eq!(
            render(&c, &[&dry], false),
            "dry run: the plan below, nothing was changed\n\
             CHANGE   NAME  DETAIL\n\
             added    new   starts if autostart\n\
             changed  web   args: [\"1\"] -> [\"2\"]; health_cmd: (unset) -> [\"true\"] \
             (rolling restart)\n\
             kept     db    runtime changes stay: its entry in the file is unchanged\n"
        );
        // An agent of an earlier version: names only.
        let old = reply(
            ReplyKind::Plan,
            "n2",
            serde_json::json!({"added": [], "removed": ["gone"], "changed": ["web"]}),
        );
        assert_eq!(
            render(&c, &[&old], true),
            "n2: reloaded: applied the plan below\n\
             NODE  CHANGE   NAME  DETAIL\n\
             n2    removed  gone  stops and goes\n\
             n2    changed  web\n"
        );
        let none = reply(
            ReplyKind::Plan,
            "n1",
            serde_json::json!({"added": [], "removed": [], "changed": []}),
        );
        assert_eq!(
            render(&c, &[&none], false),
            "reloaded: applied the plan below\nnothing to change\n"
        );
    }

    #[test]
    fn numbers_and_times_are_total() {
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1e300), "1.0e300");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-inf");
        assert_eq!(timestamp(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1e300), "(bad time 1.0e300)");
        assert_eq!(timestamp(-1.0), "(bad time -1.0)");
        assert_eq!(timestamp(f64::NAN), "(bad time NaN)");
        assert!(timestamp(253_402_300_799.9).starts_with("9999-12-31T23:59:59"));
        assert!(timestamp(253_402_300_800.0).starts_with("(bad time"));
        assert_eq!(age(f64::NAN), "0s");
        assert_eq!(age(1e300), format!("{}d", u64::MAX / 86400));
        assert_eq!(bytes(u64::MAX), "16777216.0T");
    }

    #[test]
    fn an_event_from_far_in_time_is_printed() {
        let mut e = protocol::events::Event::new(
            "n1",
            "w\x1b]0;pwned\x07\x1b[2J",
            protocol::events::EventKind::Flapping,
        );
        e.reason = Some("bad\x1b[31m reason".into());
        for t in [1e300, f64::INFINITY, f64::NAN, -5.0, 3e11, 1.5e9] {
            e.time = t;
            let line = event_line(&e);
            wild::assert_printable(&line);
            assert!(line.contains(" n1 w flapping: bad reason\n"), "{line}");
        }
    }

    #[test]
    fn hostile_replies_render_clean() {
        let r = reply(
            ReplyKind::Status,
            "n\x1b[2J1",
            serde_json::json!({"statuses": {}, "watchers": [{"name": "w\x1b]0;t\x07", "state": "fatal",
                "numprocesses": 1, "running": 0, "restarts": 1, "service": "s\u{9b}1m",
                "reason": "why\nnot"}]}),
        );
        let out = render(&wild::command("status"), &[&r], true);
        wild::assert_printable(&out);
        assert!(out.lines().nth(1).unwrap().starts_with("n1    w "), "{out}");
        assert!(out.contains("why not"), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn rendering_wild_replies_never_panics_nor_prints_controls(
            mut seeds in wild::seeds(),
            multi in proptest::prelude::any::<bool>(),
        ) {
            for (command, template) in wild::templates() {
                let data = seeds.like("", &template);
                let kind = wild::command(command).reply_kind();
                // Data that does not read as its kind is left out, as ctl leaves it.
                let reply = decoded(kind, &seeds.string(), &data).ok();
                let replies: Vec<&Reply> = reply.iter().collect();
                let out = render(&wild::command(command), &replies, multi);
                wild::assert_printable(&out);
            }
            let event = seeds.like("", &wild::event_template());
            if let Ok(e) = serde_json::from_value::<protocol::events::Event>(event) {
                wild::assert_printable(&event_line(&e));
            }
            let members = seeds.like("members", &serde_json::json!([wild::member_template()]));
            if let Ok(ms) = serde_json::from_value::<Vec<protocol::registry::MemberInfo>>(members) {
                let rows: Vec<MemberRow> =
                    ms.iter().map(|m| MemberRow::of(m, MembersView::Table)).collect();
                wild::assert_printable(&crate::cluster::render_members(&rows));
            }
        }

        #[test]
        fn sanitize_is_total_and_clean(s in "(?s).{0,64}", h in wild::hostile_string()) {
            for text in [s, h] {
                let clean = sanitize(&text);
                wild::assert_printable(&clean);
                proptest::prop_assert!(!clean.contains('\n'));
                // Clean text is left as it is.
                proptest::prop_assert_eq!(sanitize(&clean), clean.clone());
            }
        }
    }
}
