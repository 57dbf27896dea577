//! `ctl top`: a live full-screen view of every node's stats stream (like circus-top, for
//! the whole cluster). Owns the terminal while it runs and restores it on every way out;
//! it only listens on NATS and never sends a command.
//!
//! The pure parts ([`TopState`]: updates, expiry, sorting, rows and strings, keys) are
//! apart from the drawing ([`draw`]) and from the terminal and NATS loop ([`run`]).
//!
//! Driving it from an end-to-end test in tmux (80x24, as a person would see it):
//! ```text
//! tmux new-session -d -s top -x 80 -y 24 'NATS_URL=nats://127.0.0.1:PORT ctl top'
//! tmux capture-pane -p -t top      # poll until it shows the node names
//! tmux send-keys -t top m          # sort by memory
//! tmux send-keys -t top q          # quit; the session ends with the program
//! tmux kill-session -t top         # in the test's drop guard, in case it did not
//! ```
//! The screen shows `q quit` on its last line as soon as it is up, and each node's name
//! once its first stats message has arrived.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::{Stream, StreamExt};
use protocol::stats::StatsMessage;
use protocol::Subjects;
use ratatui::backend::Backend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};

use crate::fmt::{age_fine, bytes, number};
use crate::output::sanitize;

/// The keys, as shown on the last line.
pub const KEYS_HELP: &str = "q quit  c cpu  m mem  n name  a age  arrows/PgUp/PgDn scroll";

/// A node is shown stale after this many of its intervals without a message...
const STALE_AFTER_INTERVALS: f64 = 3.0;
/// ...and dropped after this many (at least [`DROP_AFTER_MIN`]).
const DROP_AFTER_INTERVALS: f64 = 10.0;
const DROP_AFTER_MIN: Duration = Duration::from_secs(10);
/// The shortest interval believed, so that a bogus 0 does not make every node stale.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval believed, so that a bogus 1e19 keeps every figure in range.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How often the screen is redrawn at most while messages pour in.
const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// How the processes table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Most CPU first.
    Cpu,
    /// Most resident memory first.
    Mem,
    /// By node, watcher, wid.
    Name,
    /// Youngest first (recent restarts on top).
    Age,
}

impl SortKey {
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Mem => "mem",
            SortKey::Name => "name",
            SortKey::Age => "age",
        }
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    Quit,
    /// The view changed: redraw.
    Redraw,
    Ignore,
}

#[derive(Debug, Clone)]
struct NodeEntry {
    msg: StatsMessage,
    /// When its latest message arrived.
    seen: Instant,
}

impl NodeEntry {
    fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.msg.interval_secs)
            .unwrap_or(MIN_INTERVAL)
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.seen)
    }

    fn is_stale(&self, now: Instant) -> bool {
        self.silent_for(now) > self.interval().mul_f64(STALE_AFTER_INTERVALS)
    }

    fn is_gone(&self, now: Instant) -> bool {
        let limit = self
            .interval()
            .mul_f64(DROP_AFTER_INTERVALS)
            .max(DROP_AFTER_MIN);
        self.silent_for(now) > limit
    }
}

/// One line of the nodes table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node: String,
    pub load: String,
    /// Used / total memory.
    pub mem: String,
    pub agent_cpu: String,
    pub agent_rss: String,
    pub processes: String,
    /// Empty, or how long it has been silent.
    pub status: String,
    pub stale: bool,
}

impl NodeRow {
    fn cells(&self) -> [&str; 7] {
        [
            &self.node,
            &self.load,
            &self.mem,
            &self.agent_cpu,
            &self.agent_rss,
            &self.processes,
            &self.status,
        ]
    }
}

/// One line of the processes table, with the raw figures it sorts by.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    pub node: String,
    pub watcher: String,
    pub wid: u32,
    pub pid: u32,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub age_secs: f64,
    pub restarts: u32,
    pub stale: bool,
}

impl ProcessRow {
    /// The strings shown: node, watcher, wid, pid, cpu%, mem, age, restarts.
    pub fn cells(&self) -> [String; 8] {
        [
            self.node.clone(),
            self.watcher.clone(),
            self.wid.to_string(),
            self.pid.to_string(),
            number(self.cpu_percent),
            bytes(self.rss_bytes),
            age_fine(self.age_secs),
            self.restarts.to_string(),
        ]
    }
}

/// The header line's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub nodes: usize,
    pub stale: usize,
    pub processes: usize,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// Everything the view shows, updated by messages, time and keys.
#[derive(Debug, Clone)]
pub struct TopState {
    nodes: BTreeMap<String, NodeEntry>,
    sort: SortKey,
    /// The first process row shown.
    scroll: usize,
    /// How many process rows fit, as of the last drawing.
    page: usize,
    bad_messages: u64,
    /// What it listens to, shown while no node has spoken.
    listening: String,
}

impl TopState {
    pub fn new(listening: impl Into<String>) -> TopState {
        TopState {
            nodes: BTreeMap::new(),
            sort: SortKey::Cpu,
            scroll: 0,
            page: 10,
            bad_messages: 0,
            listening: listening.into(),
        }
    }

    #[cfg(test)]
    pub fn sort(&self) -> SortKey {
        self.sort
    }

    #[cfg(test)]
    pub fn scroll(&self) -> usize {
        self.scroll
    }

    #[cfg(test)]
    pub fn bad_messages(&self) -> u64 {
        self.bad_messages
    }

    /// The nodes known, by name.
    #[cfg(test)]
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.keys().map(String::as_str).collect()
    }

    /// Keeps `msg` as its node's latest, unless an older sample of the same boot.
    pub fn update(&mut self, msg: StatsMessage, now: Instant) {
        if let Some(old) = self.nodes.get(&msg.node) {
            if old.msg.boot_id == msg.boot_id && old.msg.time > msg.time {
                return;
            }
        }
        self.nodes
            .insert(msg.node.clone(), NodeEntry { msg, seen: now });
    }

    /// Parses a message off the wire and keeps it; counts the ones that do not parse.
    pub fn update_from_payload(&mut self, payload: &[u8], now: Instant) -> bool {
        match serde_json::from_slice::<StatsMessage>(payload) {
            Ok(msg) => {
                self.update(msg, now);
                true
            }
            Err(_) => {
                self.bad_messages += 1;
                false
            }
        }
    }

    /// Forgets the nodes silent for too long; whether any was dropped.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|_, e| !e.is_gone(now));
        before != self.nodes.len()
    }

    pub fn totals(&self, now: Instant) -> Totals {
        let mut t = Totals {
            nodes: self.nodes.len(),
            ..Totals::default()
        };
        for e in self.nodes.values() {
            if e.is_stale(now) {
                t.stale += 1;
            }
            for w in &e.msg.watchers {
                t.processes += w.processes.len();
                t.cpu_percent += w.processes.iter().map(|p| p.cpu_percent).sum::<f64>();
                t.rss_bytes = w
                    .processes
                    .iter()
                    .fold(t.rss_bytes, |sum, p| sum.saturating_add(p.rss_bytes));
            }
        }
        t
    }

    /// The nodes table, by name.
    pub fn node_rows(&self, now: Instant) -> Vec<NodeRow> {
        self.nodes
            .values()
            .map(|e| {
                let h = &e.msg.host;
                let stale = e.is_stale(now);
                NodeRow {
                    node: sanitize(&e.msg.node),
                    load: format!("{} {} {}", load(h.load1), load(h.load5), load(h.load15)),
                    mem: format!(
                        "{}/{}",
                        bytes(h.mem_total_bytes.saturating_sub(h.mem_available_bytes)),
                        bytes(h.mem_total_bytes)
                    ),
                    agent_cpu: number(h.agent_cpu_percent),
                    agent_rss: bytes(h.agent_rss_bytes),
                    processes: e.msg.process_count().to_string(),
                    status: if stale {
                        format!("stale {}", age_fine(e.silent_for(now).as_secs_f64()))
                    } else {
                        String::new()
                    },
                    stale,
                }
            })
            .collect()
    }

    /// Every process of every node, sorted by the current key. Ages run on from the
    /// sample's, so they keep counting between messages.
    pub fn process_rows(&self, now: Instant) -> Vec<ProcessRow> {
        let mut rows = Vec::new();
        for e in self.nodes.values() {
            let stale = e.is_stale(now);
            let since = e.silent_for(now).as_secs_f64();
            for w in &e.msg.watchers {
                for p in &w.processes {
                    rows.push(ProcessRow {
                        node: sanitize(&e.msg.node),
                        watcher: sanitize(&w.name),
                        wid: p.wid,
                        pid: p.pid,
                        cpu_percent: p.cpu_percent,
                        rss_bytes: p.rss_bytes,
                        age_secs: p.age_secs + since,
                        restarts: p.restarts,
                        stale,
                    });
                }
            }
        }
        sort_rows(&mut rows, self.sort);
        rows
    }

    /// Applies a key. PgUp/PgDn move by the rows that fit at the last drawing.
    pub fn handle_key(&mut self, key: KeyEvent) -> KeyAction {
        if key.kind == KeyEventKind::Release {
            return KeyAction::Ignore;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let page = self.page.max(1);
        match key.code {
            KeyCode::Char('c') if ctrl => return KeyAction::Quit,
            KeyCode::Char('q') | KeyCode::Esc => return KeyAction::Quit,
            KeyCode::Char('c') => self.set_sort(SortKey::Cpu),
            KeyCode::Char('m') => self.set_sort(SortKey::Mem),
            KeyCode::Char('n') => self.set_sort(SortKey::Name),
            KeyCode::Char('a') => self.set_sort(SortKey::Age),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(page),
            KeyCode::Home => self.scroll = 0,
            KeyCode::End => self.scroll = usize::MAX,
            _ => return KeyAction::Ignore,
        }
        KeyAction::Redraw
    }

    fn set_sort(&mut self, key: SortKey) {
        self.sort = key;
        self.scroll = 0;
    }

    /// Keeps the scroll within `rows` rows of which `visible` fit.
    fn clamp_scroll(&mut self, rows: usize, visible: usize) {
        self.page = visible;
        self.scroll = self.scroll.min(rows.saturating_sub(visible));
    }
}

/// Sorts process rows by `key`, ties broken by name so the order is stable on screen.
pub fn sort_rows(rows: &mut [ProcessRow], key: SortKey) {
    fn by_name(a: &ProcessRow, b: &ProcessRow) -> Ordering {
        (&a.node, &a.watcher, a.wid, a.pid).cmp(&(&b.node, &b.watcher, b.wid, b.pid))
    }
    rows.sort_by(|a, b| {
        let first = match key {
            SortKey::Cpu => b.cpu_percent.total_cmp(&a.cpu_percent),
            SortKey::Mem => b.rss_bytes.cmp(&a.rss_bytes),
            SortKey::Name => Ordering::Equal,
            SortKey::Age => a.age_secs.total_cmp(&b.age_secs),
        };
        first.then_with(|| by_name(a, b))
    });
}

/// A load average with two decimals, bounded in width like [`number`].
fn load(v: f64) -> String {
    if v.is_finite() && v.abs() < 1e6 {
        format!("{v:.2}")
    } else {
        number(v)
    }
}

/// The header line.
pub fn header_line(t: &Totals, sort: SortKey, bad_messages: u64) -> String {
    let mut line = format!(
        "ctl top  {} node{}",
        t.nodes,
        if t.nodes == 1 { "" } else { "s" }
    );
    if t.stale > 0 {
        line.push_str(&format!(" ({} stale)", t.stale));
    }
    line.push_str(&format!(
        "  {} processes  cpu {}%  mem {}  sort {}",
        t.processes,
        number(t.cpu_percent),
        bytes(t.rss_bytes),
        sort.label()
    ));
    if bad_messages > 0 {
        line.push_str(&format!("  {bad_messages} bad"));
    }
    line
}

/// Draws the whole screen. Takes the state mutably only to keep the scroll in range.
pub fn draw(frame: &mut Frame, state: &mut TopState, now: Instant) {
    let area = frame.area();
    let nodes = state.node_rows(now);
    // The nodes table takes at most a third of the screen; the rest is for processes.
    let max_node_rows = usize::from(area.height.saturating_sub(4) / 3).max(1);
    let shown_nodes = nodes.len().clamp(1, max_node_rows);
    let node_height = u16::try_from(shown_nodes + 2).unwrap_or(u16::MAX);
    let [header_area, nodes_area, procs_area, footer_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(node_height),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);

    let totals = state.totals(now);
    frame.render_widget(
        Paragraph::new(header_line(&totals, state.sort, state.bad_messages)).bold(),
        header_area,
    );
    draw_nodes(frame, nodes_area, &nodes, shown_nodes);
    draw_processes(frame, procs_area, state, now);
    frame.render_widget(Paragraph::new(KEYS_HELP).reversed(), footer_area);
}

fn stale_style(stale: bool) -> Style {
    if stale {
        Style::new().add_modifier(Modifier::DIM)
    } else {
        Style::new()
    }
}

/// Cells with the numeric columns (`true` in `right`) right-aligned.
fn aligned<S: Into<String>>(
    values: impl IntoIterator<Item = S>,
    right: &[bool],
) -> Vec<Cell<'static>> {
    values
        .into_iter()
        .zip(right.iter().chain(std::iter::repeat(&false)))
        .map(|(v, &r)| {
            let line = Line::from(v.into());
            Cell::from(if r { line.right_aligned() } else { line })
        })
        .collect()
}

/// Which columns of the nodes table are numbers.
const NODE_NUMERIC: [bool; 7] = [false, false, true, true, true, true, false];
/// Which columns of the processes table are numbers.
const PROCESS_NUMERIC: [bool; 8] = [false, false, true, true, true, true, true, true];

fn draw_nodes(frame: &mut Frame, area: Rect, nodes: &[NodeRow], shown: usize) {
    let title = if nodes.len() > shown {
        format!(" nodes ({shown} of {}) ", nodes.len())
    } else {
        " nodes ".to_owned()
    };
    let header = Row::new(aligned(
        ["node", "load 1/5/15", "mem", "agent%", "a.rss", "procs", ""],
        &NODE_NUMERIC,
    ))
    .style(Style::new().bold());
    let rows = nodes
        .iter()
        .take(shown)
        .map(|n| Row::new(aligned(n.cells(), &NODE_NUMERIC)).style(stale_style(n.stale)));
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(14),
        Constraint::Length(11),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::new().borders(Borders::TOP).title(title));
    frame.render_widget(table, area);
}

fn draw_processes(frame: &mut Frame, area: Rect, state: &mut TopState, now: Instant) {
    let rows = state.process_rows(now);
    // One line for the title, one for the column names.
    let visible = usize::from(area.height.saturating_sub(2));
    state.clamp_scroll(rows.len(), visible);
    let block = Block::new().borders(Borders::TOP);
    if rows.is_empty() {
        let text = if state.nodes.is_empty() {
            format!("waiting for stats on {}", state.listening)
        } else {
            "no processes running".to_owned()
        };
        frame.render_widget(
            Paragraph::new(Line::from(text)).block(block.title(" processes ")),
            area,
        );
        return;
    }
    let first = state.scroll;
    let last = (first + visible).min(rows.len());
    let title = format!(
        " processes {}-{} of {}, by {} ",
        first + 1,
        last,
        rows.len(),
        state.sort.label()
    );
    let header = Row::new(aligned(
        ["node", "watcher", "wid", "pid", "cpu%", "mem", "age", "rst"],
        &PROCESS_NUMERIC,
    ))
    .style(Style::new().bold());
    let body = rows[first..last]
        .iter()
        .map(|r| Row::new(aligned(r.cells(), &PROCESS_NUMERIC)).style(stale_style(r.stale)));
    let widths = [
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(4),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .block(block.title(title));
    frame.render_widget(table, area);
}

/// Takes the terminal (raw mode, alternate screen) and gives it back when dropped, also
/// on errors; a panic hook gives it back on panics.
struct TerminalGuard {
    terminal: ratatui::DefaultTerminal,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<TerminalGuard> {
        if !std::io::stdout().is_terminal() {
            anyhow::bail!("ctl top needs a terminal; use `ctl stats` for plain output");
        }
        match ratatui::try_init() {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                ratatui::restore();
                Err(e).context("cannot set up the terminal")
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Shows the stats of `nodes` (every node when `None`) until the user quits.
pub async fn run(
    client: async_nats::Client,
    subjects: Subjects,
    nodes: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let (listening, subs) = match nodes {
        None => {
            let subject = subjects.stats_all();
            let sub = client
                .subscribe(subject.clone())
                .await
                .with_context(|| format!("cannot subscribe to {subject}"))?;
            (subject, vec![sub])
        }
        Some(names) => {
            let mut subs = Vec::with_capacity(names.len());
            let mut listening = Vec::with_capacity(names.len());
            for name in &names {
                protocol::subjects::validate_node_name(name)
                    .map_err(|e| anyhow::anyhow!("invalid node name '{name}': {e}"))?;
                let subject = subjects.stats(name);
                subs.push(
                    client
                        .subscribe(subject.clone())
                        .await
                        .with_context(|| format!("cannot subscribe to {subject}"))?,
                );
                listening.push(subject);
            }
            (listening.join(", "), subs)
        }
    };
    let stats = futures::stream::select_all(subs).map(|m| m.payload);
    let mut guard = TerminalGuard::enter()?;
    let state = TopState::new(listening);
    event_loop(&mut guard.terminal, stats, EventStream::new(), state).await
}

/// The loop behind [`run`], on any backend and event source (tests use `TestBackend`).
pub async fn event_loop<B, S, P, K>(
    terminal: &mut Terminal<B>,
    stats: S,
    keys: K,
    mut state: TopState,
) -> anyhow::Result<()>
where
    B: Backend,
    B::Error: Send + Sync + 'static,
    S: Stream<Item = P>,
    P: AsRef<[u8]>,
    K: Stream<Item = std::io::Result<TermEvent>>,
{
    let mut stats = std::pin::pin!(stats);
    let mut keys = std::pin::pin!(keys);
    let mut tick = tokio::time::interval(REDRAW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        if dirty {
            let now = Instant::now();
            terminal
                .draw(|f| draw(f, &mut state, now))
                .map_err(anyhow::Error::new)
                .context("cannot draw on the terminal")?;
            dirty = false;
        }
        tokio::select! {
            msg = stats.next() => {
                let Some(payload) = msg else {
                    anyhow::bail!("the NATS subscription ended; is the server still up?");
                };
                // Redrawn at the next tick, so a burst of messages costs one drawing.
                state.update_from_payload(payload.as_ref(), Instant::now());
            }
            event = keys.next() => match event {
                Some(Ok(TermEvent::Key(key))) => match state.handle_key(key) {
                    KeyAction::Quit => return Ok(()),
                    KeyAction::Redraw => dirty = true,
                    KeyAction::Ignore => {}
                },
                Some(Ok(TermEvent::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("cannot read the terminal's input"),
                None => return Ok(()),
            },
            _ = tick.tick() => {
                state.expire(Instant::now());
                // Redraw every tick: ages and staleness move on even without messages.
                dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::reply::WatcherState;
    use protocol::stats::{HostStats, ProcessStats, StatsData, WatcherStats};
    use ratatui::backend::TestBackend;

    fn proc(wid: u32, pid: u32, cpu: f64, rss: u64, age: f64) -> ProcessStats {
        ProcessStats {
            wid,
            pid,
            cpu_percent: cpu,
            rss_bytes: rss,
            cpu_seconds: 0.0,
            age_secs: age,
            restarts: wid - 1,
            health: None,
        }
    }

    fn message(node: &str, procs: Vec<ProcessStats>) -> StatsMessage {
        StatsMessage {
            time: 100.0,
            ..StatsMessage::new(
                node,
                "boot",
                1.0,
                StatsData {
                    host: HostStats {
                        cpu_count: 2,
                        load1: 0.25,
                        load5: 0.5,
                        load15: 1.0,
                        mem_total_bytes: 8 << 30,
                        mem_available_bytes: 6 << 30,
                        agent_pid: 1,
                        agent_cpu_percent: 0.5,
                        agent_rss_bytes: 12 << 20,
                    },
                    watchers: vec![WatcherStats {
                        name: "web".into(),
                        service: "web".into(),
                        state: WatcherState::Active,
                        numprocesses: procs.len() as u32,
                        running: procs.len() as u32,
                        cpu_percent: procs.iter().map(|p| p.cpu_percent).sum(),
                        rss_bytes: procs.iter().map(|p| p.rss_bytes).sum(),
                        restarts: 0,
                        processes: procs,
                    }],
                },
            )
        }
    }

    fn state_with_two_nodes(now: Instant) -> TopState {
        let mut s = TopState::new("cluster.*.stats");
        s.update(
            message(
                "alpha",
                vec![
                    proc(1, 11, 5.0, 3 << 20, 50.0),
                    proc(2, 12, 90.0, 1 << 20, 5.0),
                ],
            ),
            now,
        );
        s.update(
            message("beta", vec![proc(1, 21, 20.0, 9 << 20, 500.0)]),
            now,
        );
        s
    }

    fn pids(rows: &[ProcessRow]) -> Vec<u32> {
        rows.iter().map(|r| r.pid).collect()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn sorts_by_each_key() {
        let now = Instant::now();
        let mut s = state_with_two_nodes(now);
        let cases = [
            ('c', SortKey::Cpu, vec![12, 21, 11]),
            ('m', SortKey::Mem, vec![21, 11, 12]),
            ('n', SortKey::Name, vec![11, 12, 21]),
            ('a', SortKey::Age, vec![12, 11, 21]),
        ];
        for (c, want_key, want_pids) in cases {
            assert_eq!(s.handle_key(key(KeyCode::Char(c))), KeyAction::Redraw);
            assert_eq!(s.sort(), want_key);
            assert_eq!(pids(&s.process_rows(now)), want_pids, "sort {c}");
        }
    }

    #[test]
    fn quits_on_q_esc_and_ctrl_c() {
        let mut s = TopState::new("x");
        for k in [
            key(KeyCode::Char('q')),
            key(KeyCode::Esc),
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(s.handle_key(k), KeyAction::Quit, "{k:?}");
        }
        assert_eq!(s.handle_key(key(KeyCode::Char('z'))), KeyAction::Ignore);
    }

    #[test]
    fn scrolls_within_the_rows() {
        let mut s = TopState::new("x");
        s.clamp_scroll(100, 10);
        s.handle_key(key(KeyCode::PageDown));
        assert_eq!(s.scroll(), 10);
        s.handle_key(key(KeyCode::Down));
        assert_eq!(s.scroll(), 11);
        s.handle_key(key(KeyCode::PageUp));
        s.handle_key(key(KeyCode::PageUp));
        assert_eq!(s.scroll(), 0);
        s.handle_key(key(KeyCode::Up));
        assert_eq!(s.scroll(), 0);
        s.handle_key(key(KeyCode::End));
        s.clamp_scroll(100, 10);
        assert_eq!(s.scroll(), 90);
        s.clamp_scroll(5, 10);
        assert_eq!(s.scroll(), 0);
        s.handle_key(key(KeyCode::PageDown));
        s.handle_key(key(KeyCode::Char('m')));
        assert_eq!(s.scroll(), 0, "a new sort starts at the top");
    }

    #[test]
    fn keeps_the_latest_message_per_node() {
        let now = Instant::now();
        let mut s = state_with_two_nodes(now);
        let older = StatsMessage {
            time: 50.0,
            ..message("alpha", vec![])
        };
        s.update(older, now);
        assert_eq!(s.process_rows(now).len(), 3, "an older sample is ignored");
        let rebooted = StatsMessage {
            time: 50.0,
            boot_id: "boot-2".into(),
            ..message("alpha", vec![])
        };
        s.update(rebooted, now);
        assert_eq!(s.process_rows(now).len(), 1, "a new boot replaces");
        assert!(!s.update_from_payload(b"not json", now));
        assert_eq!(s.bad_messages(), 1);
        let json = serde_json::to_vec(&message("gamma", vec![])).unwrap();
        assert!(s.update_from_payload(&json, now));
        assert_eq!(s.node_names(), ["alpha", "beta", "gamma"]);
    }

    #[test]
    fn silent_nodes_turn_stale_then_go() {
        let t0 = Instant::now();
        let mut s = state_with_two_nodes(t0);
        s.update(message("beta", vec![]), t0 + Duration::from_secs(20));
        let now = t0 + Duration::from_secs(4);
        let rows = s.node_rows(now);
        assert!(rows[0].stale && rows[0].status.starts_with("stale"));
        assert_eq!(s.totals(now).stale, 1, "beta spoke later");
        assert!(!s.expire(t0 + Duration::from_secs(9)));
        assert!(s.expire(t0 + Duration::from_secs(11)));
        assert_eq!(s.node_names(), ["beta"]);
    }

    #[test]
    fn builds_rows_and_totals() {
        let now = Instant::now();
        let s = state_with_two_nodes(now);
        let nodes = s.node_rows(now);
        assert_eq!(nodes[0].node, "alpha");
        assert_eq!(nodes[0].load, "0.25 0.50 1.00");
        assert_eq!(nodes[0].mem, "2.0G/8.0G");
        assert_eq!(nodes[0].agent_rss, "12M");
        assert_eq!(nodes[0].processes, "2");
        assert!(!nodes[0].stale && nodes[0].status.is_empty());
        let rows = s.process_rows(now);
        assert_eq!(
            rows[0].cells(),
            ["alpha", "web", "2", "12", "90.0", "1.0M", "5s", "1"].map(String::from)
        );
        let t = s.totals(now);
        assert_eq!((t.nodes, t.processes, t.stale), (2, 3, 0));
        assert_eq!(t.cpu_percent, 115.0);
        assert_eq!(
            header_line(&t, SortKey::Cpu, 0),
            "ctl top  2 nodes  3 processes  cpu 115.0%  mem 13M  sort cpu"
        );
    }

    #[test]
    fn bogus_intervals_and_figures_are_total() {
        let now = Instant::now();
        let mut s = TopState::new("x");
        let mut m = message("a\x1b[2J\u{9b}1m", vec![proc(1, 7, 1e300, u64::MAX, 1e300)]);
        m.interval_secs = 1e19;
        m.host.load1 = 1e300;
        m.host.agent_cpu_percent = f64::NAN;
        m.watchers.push(m.watchers[0].clone());
        s.update(m, now);
        let t = s.totals(now);
        assert_eq!(t.rss_bytes, u64::MAX, "the sum saturates");
        assert!(!s.expire(now + Duration::from_secs(3600)));
        let rows = s.node_rows(now);
        assert_eq!(rows[0].node, "a");
        assert_eq!(rows[0].load, "1.0e300 0.50 1.00");
        assert_eq!(rows[0].agent_cpu, "NaN");
        assert_eq!(s.process_rows(now)[0].cells()[4], "1.0e300");
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &mut s, now)).unwrap();
        crate::output::wild::assert_printable(&screen(&terminal));
    }

    proptest::proptest! {
        #[test]
        fn wild_stats_never_panic_nor_reach_the_screen_raw(
            mut seeds in crate::output::wild::seeds(),
            width in 1u16..200,
            height in 1u16..60,
            keys in proptest::collection::vec(proptest::sample::select(vec!['c', 'm', 'n', 'a', 'j', 'k']), 0..4),
        ) {
            let now = Instant::now();
            let mut s = TopState::new("cluster.*.stats");
            for _ in 0..3 {
                let mut v = seeds.like("", &crate::output::wild::stats_data());
                if let Some(m) = v.as_object_mut() {
                    m.insert("node".into(), seeds.string().into());
                    m.insert("boot_id".into(), seeds.string().into());
                    let time = seeds.like("", &serde_json::json!(1.5));
                    m.insert("time".into(), time);
                    let interval = seeds.like("", &serde_json::json!(1.5));
                    m.insert("interval_secs".into(), interval);
                }
                s.update_from_payload(&serde_json::to_vec(&v).unwrap(), now);
            }
            for k in keys {
                s.handle_key(key(KeyCode::Char(k)));
            }
            let later = now + Duration::from_secs(5);
            let _ = s.totals(later);
            let _ = s.expire(later);
            let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
            terminal.draw(|f| draw(f, &mut s, later)).unwrap();
            crate::output::wild::assert_printable(&screen(&terminal));
        }
    }

    fn screen(terminal: &Terminal<TestBackend>) -> String {
        terminal.backend().to_string()
    }

    #[test]
    fn draws_in_80x24() {
        let now = Instant::now();
        let mut s = state_with_two_nodes(now);
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &mut s, now)).unwrap();
        let text = screen(&terminal);
        for want in [
            "alpha",
            "beta",
            "q quit",
            "2 nodes",
            "processes 1-3 of 3",
            "90.0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn draws_many_processes_scrolled_in_80x24() {
        let now = Instant::now();
        let mut s = TopState::new("x");
        for n in 0..10 {
            let procs = (1..=50)
                .map(|w| proc(w, n * 100 + w, 1.0, 1 << 20, 1.0))
                .collect();
            s.update(message(&format!("node-{n:02}"), procs), now);
        }
        s.handle_key(key(KeyCode::Char('n')));
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &mut s, now)).unwrap();
        s.handle_key(key(KeyCode::PageDown));
        terminal.draw(|f| draw(f, &mut s, now)).unwrap();
        let text = screen(&terminal);
        assert!(text.contains("nodes (6 of 10)"), "{text}");
        assert!(text.contains("of 500, by name"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        assert!(s.scroll() > 0);
    }

    #[test]
    fn draws_while_waiting() {
        let mut s = TopState::new("cluster.*.stats");
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &mut s, Instant::now())).unwrap();
        let text = screen(&terminal);
        assert!(
            text.contains("waiting for stats on cluster.*.stats"),
            "{text}"
        );
        assert!(text.contains("0 nodes"));
    }

    #[tokio::test]
    async fn the_loop_shows_messages_and_quits_on_q() {
        let (stats_tx, stats_rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
        let (keys_tx, keys_rx) = futures::channel::mpsc::unbounded();
        let json = serde_json::to_vec(&message("alpha", vec![proc(1, 7, 1.0, 1, 1.0)])).unwrap();
        stats_tx.unbounded_send(json).unwrap();
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let run = event_loop(&mut terminal, stats_rx, keys_rx, TopState::new("x"));
        let quit = async {
            // After a tick the message is on screen; then quit.
            tokio::time::sleep(REDRAW_EVERY * 2).await;
            keys_tx
                .unbounded_send(Ok(TermEvent::Key(key(KeyCode::Char('q')))))
                .unwrap();
        };
        let (result, ()) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(run, quit) })
                .await
                .expect("the loop quits on q");
        result.unwrap();
        let text = screen(&terminal);
        assert!(text.contains("alpha") && text.contains("q quit"), "{text}");
        drop(stats_tx);
    }
}
