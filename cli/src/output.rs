//! How replies look to a person: aligned tables and short sentences. `--json` bypasses
//! this and prints each reply as one JSON line.

use std::fmt::Write as _;

use protocol::reply::*;
use protocol::{Reply, WatcherOptions};
use serde_json::Value;

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

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
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

/// "3s", "5m", "2h", "4d": a short age.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Bytes as "12.3M".
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn opt_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the successful replies of one command. `multi` adds a NODE column.
pub fn render(command: &str, replies: &[&Reply], multi: bool) -> String {
    let node_cell = |r: &Reply| -> Vec<String> {
        if multi {
            vec![r.node.clone()]
        } else {
            vec![]
        }
    };
    let head = |cols: &[&str]| -> Table {
        let mut h: Vec<&str> = if multi { vec!["NODE"] } else { vec![] };
        h.extend_from_slice(cols);
        Table::new(&h)
    };
    let prefix = |r: &Reply| {
        if multi {
            format!("{}: ", r.node)
        } else {
            String::new()
        }
    };
    let mut out = String::new();
    match command {
        "status" => {
            let mut t = head(&[
                "WATCHER",
                "STATE",
                "PROCESSES",
                "RESTARTS",
                "SERVICE",
                "REASON",
            ]);
            for r in replies {
                if let Ok(d) = r.data::<StatusData>() {
                    for w in d.watchers {
                        let mut row = node_cell(r);
                        row.extend([
                            w.name,
                            w.state.to_string(),
                            format!("{}/{}", w.running, w.numprocesses),
                            w.restarts.to_string(),
                            w.service,
                            w.reason.unwrap_or_default(),
                        ]);
                        t.row(row);
                    }
                }
            }
            if t.is_empty() {
                out.push_str("no watchers\n");
            } else {
                out = t.render();
            }
        }
        "list" => {
            let now = protocol::unix_time();
            let mut t = head(&["WID", "PID", "STATE", "AGE", "RESTARTS", "LAST EXIT"]);
            let mut names = head(&["WATCHER"]);
            for r in replies {
                let Ok(d) = r.data::<ListData>() else {
                    continue;
                };
                if let Some(ws) = d.watchers {
                    for w in ws {
                        let mut row = node_cell(r);
                        row.push(w);
                        names.row(row);
                    }
                }
                if let Some(ps) = d.processes {
                    for p in ps {
                        let mut row = node_cell(r);
                        row.extend([
                            p.wid.to_string(),
                            p.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                            p.state.to_string(),
                            p.started_at
                                .map(|t| age(now - t))
                                .unwrap_or_else(|| "-".into()),
                            p.restarts.to_string(),
                            p.last_exit.map(|e| e.to_string()).unwrap_or_default(),
                        ]);
                        t.row(row);
                    }
                }
            }
            if !names.is_empty() {
                out.push_str(&names.render());
            } else if t.is_empty() {
                out.push_str("no processes\n");
            } else {
                out.push_str(&t.render());
            }
        }
        "incr" | "decr" | "numprocesses" => {
            for r in replies {
                if let Ok(d) = r.data::<NumprocessesData>() {
                    let _ = writeln!(out, "{}{} processes", prefix(r), d.numprocesses);
                }
            }
        }
        "numwatchers" => {
            for r in replies {
                if let Ok(d) = r.data::<NumwatchersData>() {
                    let _ = writeln!(out, "{}{} watchers", prefix(r), d.numwatchers);
                }
            }
        }
        "start" | "stop" | "restart" | "reload" | "set" | "add" | "rm" | "signal" => {
            for r in replies {
                let Ok(d) = r.data::<ActionData>() else {
                    continue;
                };
                if let Some(pids) = &d.pids {
                    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                    let _ = writeln!(
                        out,
                        "{}signalled {} processes ({})",
                        prefix(r),
                        pids.len(),
                        list.join(", ")
                    );
                    continue;
                }
                if d.statuses.is_empty() {
                    let _ = writeln!(out, "{}ok", prefix(r));
                }
                for (w, s) in d.statuses {
                    let _ = writeln!(out, "{}{w}: {s}", prefix(r));
                }
            }
        }
        "options" | "get" => {
            for r in replies {
                let Ok(d) = r.data::<OptionsData>() else {
                    continue;
                };
                if multi {
                    let _ = writeln!(out, "[{}]", r.node);
                }
                if let Ok(Value::Object(m)) = serde_json::to_value::<&WatcherOptions>(&d.options) {
                    for (k, v) in m {
                        let _ = writeln!(out, "{k} = {}", opt_value(&v));
                    }
                }
            }
        }
        "reloadconfig" => {
            for r in replies {
                let Ok(d) = r.data::<ReloadData>() else {
                    continue;
                };
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "-".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                let _ = writeln!(
                    out,
                    "{}reloaded: added {}; removed {}; changed {}",
                    prefix(r),
                    list(&d.added),
                    list(&d.removed),
                    list(&d.changed)
                );
            }
        }
        "dstats" => {
            let mut t = Table::new(&[
                "NODE", "PID", "CPU%", "RSS", "THREADS", "CHILDREN", "UPTIME", "VERSION",
            ]);
            for r in replies {
                if let Ok(d) = r.data::<DstatsData>() {
                    t.row(vec![
                        r.node.clone(),
                        d.pid.to_string(),
                        format!("{:.1}", d.cpu_percent),
                        bytes(d.rss_bytes),
                        d.threads.to_string(),
                        d.children.to_string(),
                        age(d.uptime_secs),
                        d.version,
                    ]);
                }
            }
            out = t.render();
        }
        "ping" => {
            let mut t = Table::new(&["NODE", "VERSION", "PID", "HOST", "UPTIME", "TAGS"]);
            for r in replies {
                if let Ok(d) = r.data::<PingData>() {
                    let tags: Vec<String> =
                        d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    t.row(vec![
                        r.node.clone(),
                        d.version,
                        d.pid.to_string(),
                        d.hostname,
                        age(d.uptime_secs),
                        tags.join(","),
                    ]);
                }
            }
            out = t.render();
        }
        "logs" => {
            for r in replies {
                let Ok(d) = r.data::<protocol::logs::LogsData>() else {
                    continue;
                };
                if d.truncated {
                    let _ = writeln!(
                        out,
                        "({}: older lines left out to fit one message; ask for fewer with -n)",
                        r.node
                    );
                }
                for l in &d.lines {
                    out.push_str(&log_line(l, multi));
                }
            }
        }
        "quit" => {
            for r in replies {
                let _ = writeln!(out, "node {} is shutting down", r.node);
            }
        }
        _ => {
            for r in replies {
                let _ = writeln!(out, "{}{}", prefix(r), Value::Object(r.data.clone()));
            }
        }
    }
    out
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
    format!("[{node}{}.{}{err}] {}\n", l.watcher, l.wid, l.line)
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
    fn formats_ages_and_bytes() {
        assert_eq!(age(5.0), "5s");
        assert_eq!(age(600.0), "10m");
        assert_eq!(age(10_000.0), "2h");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
    }
}
