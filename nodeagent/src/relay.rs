//! Forwards what happens inside the agent to the bus: the supervisor's lifecycle events,
//! the agent's own join and leave, and the captured lines of followed watchers. It
//! publishes only through the transport's bounded [`Publisher`], so a slow or absent
//! NATS drops messages here and never slows the processes down.

use std::sync::Arc;
use std::time::Instant;

use protocol::events::{Event, EventKind};
use protocol::Subjects;

use crate::identity::Identity;
use crate::logs::{FollowLeases, LogFeed};
use crate::supervisor::SupervisorHandle;
use crate::transport::Publisher;

/// Publishes the captured lines of followed watchers (see [`FollowLeases`]) on
/// `cluster.<node>.logs.<watcher>` for `ctl logs -f`. A slow connection loses lines here
/// rather than slowing the processes down.
pub async fn publish_logs(
    bus: Publisher,
    subjects: Subjects,
    feed: LogFeed,
    leases: Arc<FollowLeases>,
) {
    let mut rx = feed.subscribe();
    loop {
        match rx.recv().await {
            Ok(line) => {
                if !leases.active(&line.watcher, Instant::now()) {
                    continue;
                }
                if let Ok(bytes) = serde_json::to_vec(&*line) {
                    let subject = subjects.logs(&line.node, &line.watcher);
                    bus.publish_bytes(subject, bytes.into()).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!("{n} log lines not published: the connection fell behind");
            }
            Err(_) => return,
        }
    }
}

/// Publishes the supervisor's lifecycle events on
/// `cluster.<node>.events.<watcher>.<kind>`.
pub async fn publish_events(
    bus: Publisher,
    subjects: Subjects,
    identity: Identity,
    supervisor: SupervisorHandle,
) {
    let mut rx = supervisor.events();
    loop {
        match rx.recv().await {
            Ok(ev) => {
                let Ok(kind) = ev.kind.parse::<EventKind>() else {
                    continue;
                };
                let mut event = Event::new(&identity.node, &ev.watcher, kind)
                    .with_boot_id(identity.boot_id.clone());
                if let Some(pid) = ev.pid {
                    event = event.with_pid(pid);
                }
                if let Some(wid) = ev.wid {
                    event = event.with_wid(wid);
                }
                if let (Some(exit), EventKind::Exit) = (ev.exit.clone(), kind) {
                    event = event.with_exit(exit);
                }
                if let Some(reason) = ev.reason.clone() {
                    event = event.with_reason(reason);
                }
                if ev.time > 0.0 {
                    event.time = ev.time;
                }
                event.rss_bytes = ev.rss_bytes;
                event.max_memory = ev.max_memory;
                event.hook = ev.hook.clone();
                bus.publish_json(event.subject(&subjects), &event).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} events not published: the connection fell behind");
            }
            Err(_) => return,
        }
    }
}

/// Publishes an agent-level event (join, leave).
pub async fn publish_agent_event(
    bus: &Publisher,
    subjects: &Subjects,
    identity: &Identity,
    kind: EventKind,
) {
    let event = Event::agent(&identity.node, kind).with_boot_id(identity.boot_id.clone());
    bus.publish_json(event.subject(subjects), &event).await;
}
