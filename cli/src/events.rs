//! `ctl events`: the lifecycle events of every node, or of some, as lines until Ctrl-C.

use std::io::Write;
use std::process::ExitCode;

use futures::StreamExt;
use protocol::Subjects;

use crate::client::Conn;
use crate::output;

/// Prints the events of `nodes` (all when empty), of one watcher or all, until Ctrl-C.
pub async fn run(
    conn: &Conn,
    subjects: &Subjects,
    nodes: &[String],
    watcher: Option<&str>,
    json: bool,
) -> ExitCode {
    let w = watcher.unwrap_or("*");
    let targets = if nodes.is_empty() {
        vec!["*".to_owned()]
    } else {
        nodes.to_vec()
    };
    let mut subs = vec![];
    let mut listening = vec![];
    for n in &targets {
        let subject = subjects.events_filter(n, w);
        match conn.client.subscribe(subject.clone()).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                eprintln!("ctl: cannot subscribe to events: {e}");
                return ExitCode::from(crate::EXIT_NO_ANSWER);
            }
        }
        listening.push(subject);
    }
    // The subscriptions are in place once the server has seen them.
    let _ = conn.client.flush().await;
    tracing::info!("listening for events on {}", listening.join(", "));
    let listening: Vec<&str> = listening.iter().map(String::as_str).collect();
    let mut all = futures::stream::select_all(subs);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            d = conn.denied(&listening) => return crate::not_permitted(&d),
            msg = all.next() => {
                let Some(msg) = msg else { return ExitCode::from(crate::EXIT_NO_ANSWER) };
                let text = if json {
                    // One JSON object a line: what is not JSON is not passed on raw.
                    match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
                        Ok(v) => format!("{v}\n"),
                        Err(_) => continue,
                    }
                } else {
                    match serde_json::from_slice::<protocol::events::Event>(&msg.payload) {
                        Ok(e) => output::event_line(&e),
                        Err(_) => continue,
                    }
                };
                let mut out = std::io::stdout().lock();
                if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
}
