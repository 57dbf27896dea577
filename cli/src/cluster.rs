//! Cluster-wide operations built from single requests: the member list, fan-out to
//! the alive members, the rolling restart node by node, and spreading a service's
//! processes over its members.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use protocol::command::{Command, Numprocesses, Restart};
use protocol::registry::{
    MemberInfo, MemberRow, MemberState, MembersData, MembersRequest, MembersView, StatusFilter,
    MAX_MEMBERS,
};
use protocol::reply::ReplyData;
use protocol::subjects::CmdTarget;
use protocol::Errno;
use protocol::{Reply, Request, Subjects};

use crate::client::{self, Conn, Denial, Outcome};

/// Why no member list came back.
#[derive(Debug)]
pub enum MembersError {
    /// The server did not let this user ask.
    Denied(Denial),
    /// No agent answered, or the answer was unusable.
    Other(String),
}

impl std::fmt::Display for MembersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembersError::Denied(d) => f.write_str(&d.explain()),
            MembersError::Other(s) => f.write_str(s),
        }
    }
}

impl From<String> for MembersError {
    fn from(s: String) -> Self {
        MembersError::Other(s)
    }
}
use crate::fmt::age;
use crate::output::Table;

/// Asks any one agent that keeps the member table for its view, every field of every
/// member, page after page when it does not fit in one reply. `Err` says why none
/// answered.
pub async fn members(
    client: &Conn,
    subjects: &Subjects,
    filter: MembersRequest,
    timeout: Duration,
) -> Result<(Reply, Vec<MemberInfo>), MembersError> {
    let filter = MembersRequest {
        view: MembersView::Full,
        ..filter
    };
    let mut all: Vec<MemberInfo> = vec![];
    let reply = follow_pages(client, subjects, filter, timeout, |page| {
        all.extend(page.members);
    })
    .await?;
    // One reply with every member, as if it had come in one page.
    let mut reply = reply;
    let whole = MembersData {
        members: all,
        rows: vec![],
        next: None,
    };
    reply.data = Some(whole.clone().into());
    Ok((reply, whole.members))
}

/// Like [`members`], but only the fields of `view` (the filter's view): what the
/// `ctl members` table shows, or the names for a fan-out. An agent that sends every
/// field (one that knows no view) is read too.
pub async fn member_rows(
    client: &Conn,
    subjects: &Subjects,
    filter: MembersRequest,
    timeout: Duration,
) -> Result<Vec<MemberRow>, MembersError> {
    let view = filter.view;
    let mut all: Vec<MemberRow> = vec![];
    follow_pages(client, subjects, filter, timeout, |page| {
        all.extend(page.rows);
        all.extend(page.members.iter().map(|m| MemberRow::of(m, view)));
    })
    .await?;
    Ok(all)
}

/// Asks for the member view page after page, giving each page's data to `take`, until
/// a page says no more follow; returns the first reply. A page must move forward and
/// carry members, and all of them together at most [`MAX_MEMBERS`]: a reply that does
/// not is not followed. When an agent refuses the filter's view (it knows none), the
/// same page is asked again in every field, and so are the pages after it.
async fn follow_pages(
    client: &Conn,
    subjects: &Subjects,
    mut filter: MembersRequest,
    timeout: Duration,
    mut take: impl FnMut(MembersData),
) -> Result<Reply, MembersError> {
    let deadline = Instant::now() + timeout;
    let mut first = None;
    let mut count = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (reply, page) = match members_page(client, subjects, filter.clone(), left).await? {
            Ok(answer) => answer,
            Err(refusal)
                if refusal.errno == Some(Errno::BadOption.code()) && !filter.view.is_full() =>
            {
                tracing::info!(
                    "node {} knows no member view ({}); asking for every field",
                    refusal.node,
                    refusal.reason.as_deref().unwrap_or_default()
                );
                filter.view = MembersView::Full;
                continue;
            }
            Err(refusal) => return Err(refusal.reason.unwrap_or_default().into()),
        };
        let rows = page.members.len().saturating_add(page.rows.len());
        count = count.saturating_add(rows);
        if count > MAX_MEMBERS {
            return Err(format!(
                "node {} sent more than {MAX_MEMBERS} members; a cluster has no more",
                crate::output::sanitize(&reply.node)
            )
            .into());
        }
        // A page must move forward; a reply that does not is not followed.
        let next = page
            .next
            .clone()
            .filter(|n| rows > 0 && filter.after.as_ref().is_none_or(|a| n > a));
        take(page);
        let kept = first.take().unwrap_or(reply);
        match next {
            Some(n) => {
                tracing::info!("{count} members so far; asking for those after {n}");
                filter.after = Some(n);
                first = Some(kept);
            }
            None => return Ok(kept),
        }
    }
}

/// One page of the member view: the reply and its data, or the error reply.
async fn members_page(
    client: &Conn,
    subjects: &Subjects,
    filter: MembersRequest,
    timeout: Duration,
) -> Result<Result<(Reply, MembersData), Reply>, MembersError> {
    let req = Request::new(Command::Members(filter));
    // Read-only: if the agent the queue group picked is hung, every agent is asked.
    let queue = subjects.command(&CmdTarget::Members, &req.command);
    let all = subjects.command(&CmdTarget::All, &req.command);
    tracing::info!(
        "asking one agent for the member list on {queue} (every agent on {all} if it is slow)"
    );
    let out = client::request_any(client, queue, all, "members", &req, timeout).await;
    if let Some(d) = out.denied.into_iter().next() {
        return Err(MembersError::Denied(d));
    }
    match out.replies.into_iter().next() {
        Some(mut r) if r.is_ok() => {
            // Read as the members kind by the client: ok replies carry their data.
            let data = match r.data.take() {
                Some(ReplyData::Members(data)) => data,
                _ => return Err("the members reply carries no members".to_owned().into()),
            };
            tracing::info!(
                "node {} knows {} matching members{}",
                r.node,
                data.members.len().saturating_add(data.rows.len()),
                if data.next.is_some() {
                    " in this page"
                } else {
                    ""
                }
            );
            Ok(Ok((r, data)))
        }
        Some(r) => Ok(Err(r)),
        None => Err(MembersError::Other(format!(
            "no agent answered on {}: is any nodeagent running and connected to this NATS server?",
            subjects.members()
        ))),
    }
}

/// The names of the alive (or suspect) members with all these tags (rows of the
/// `names` view).
pub async fn alive_members(
    client: &Conn,
    subjects: &Subjects,
    tags: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<MemberRow>, MembersError> {
    let filter = MembersRequest {
        view: MembersView::Names,
        ..alive_filter(tags)
    };
    let mut alive = member_rows(client, subjects, filter, timeout).await?;
    alive.retain(|m| usable_name(&m.name));
    tracing::info!("{} alive members to ask", alive.len());
    tracing::debug!(
        "alive members to ask: {:?}",
        alive.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    Ok(alive)
}

/// The alive (or suspect) members, every field of each.
pub async fn alive_full(
    client: &Conn,
    subjects: &Subjects,
    timeout: Duration,
) -> Result<Vec<MemberInfo>, MembersError> {
    let mut alive = members(client, subjects, alive_filter(&[]), timeout)
        .await?
        .1;
    alive.retain(|m| usable_name(&m.name));
    Ok(alive)
}

/// The alive and suspect members with all these tags.
fn alive_filter(tags: &[(String, String)]) -> MembersRequest {
    MembersRequest {
        status: Some(StatusFilter::Many(vec![
            MemberState::Alive,
            MemberState::Suspect,
        ])),
        tags: tags.iter().cloned().collect(),
        ..MembersRequest::default()
    }
}

/// A member's name becomes a subject token: a name no agent could have (from a forged
/// or broken reply) is never used.
fn usable_name(name: &str) -> bool {
    match protocol::subjects::validate_node_name(name) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "ignoring member {:?} of the members reply: {e}",
                crate::output::sanitize(name)
            );
            false
        }
    }
}

/// Parses a member state for `--status`.
pub fn parse_state(s: &str) -> Result<MemberState, String> {
    MemberState::ALL
        .into_iter()
        .find(|m| m.to_string() == s)
        .ok_or_else(|| {
            let all: Vec<String> = MemberState::ALL.iter().map(|m| m.to_string()).collect();
            format!("unknown state '{s}'; states are {}", all.join(", "))
        })
}

/// The `ctl members` table, like `serf members`.
pub fn render_members(members: &[MemberRow]) -> String {
    let now = protocol::unix_time();
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "HOST",
        "TAGS",
        "VERSION",
        "UPTIME",
        "PROCESSES",
        "WATCHERS",
    ]);
    for m in members {
        let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let watchers: Vec<String> = m
            .watchers
            .iter()
            .map(|w| format!("{}({}/{})", w.name, w.running, w.numprocesses))
            .collect();
        t.row(vec![
            m.name.clone(),
            m.state.to_string(),
            m.address.clone().unwrap_or_else(|| m.hostname.clone()),
            tags.join(","),
            m.version.clone(),
            m.started_at
                .map_or_else(|| "-".to_owned(), |t| age(now - t)),
            format!("{}/{}", m.processes().0, m.processes().1),
            watchers.join(" "),
        ]);
    }
    t.render()
}

/// Restarts `watcher` node by node (`batch` nodes at a time), each node restarting its
/// processes one by one. Stops at the first failure. Prints progress as it goes.
pub async fn rolling_restart(
    client: &Conn,
    subjects: &Subjects,
    nodes: &[String],
    restart: &Restart,
    batch: usize,
    timeout: Duration,
    json: bool,
) -> Outcome {
    let mut all = Outcome::default();
    let total = nodes.len();
    let mut done = 0;
    let started = Instant::now();
    for chunk in nodes.chunks(batch.max(1)) {
        let req = Request::new(Command::Restart(Restart {
            rolling: true,
            ..restart.clone()
        }));
        let sends = chunk.iter().map(|n| {
            let req = &req;
            async move {
                let t = Instant::now();
                let subject = subjects.command(&CmdTarget::Node(n.clone()), &req.command);
                let out = client::request_one(client, subject, n, req, timeout).await;
                (n, t.elapsed(), out)
            }
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = false;
        for (node, took, out) in results {
            done += 1;
            for r in out.replies {
                if !r.is_ok() {
                    // Said by the caller, with the other errors.
                    failed = true;
                    all.replies.push(r);
                } else if json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    println!(
                        "[{done}/{total}] {node}: restarted in {:.1}s",
                        took.as_secs_f64()
                    );
                }
            }
            failed |= !out.missing.is_empty() || !out.denied.is_empty();
            all.missing.extend(out.missing);
            all.denied.extend(out.denied);
        }
        let _ = std::io::stdout().flush();
        if failed {
            all.epilogue.push(format!(
                "rolling restart stopped after {done} of {total} nodes; not restarted: {}",
                not_reached(&nodes[done..])
            ));
            return all;
        }
    }
    if !json {
        println!(
            "rolling restart done: {total} nodes in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    // The progress lines were the output.
    all
}

/// The nodes a rolling action stopped before, for its last line: "-" when none.
pub fn not_reached(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "-".to_owned()
    } else {
        nodes.join(", ")
    }
}

/// How many processes each member gets when `total` are spread over `members`:
/// evenly, the remainder going to the least-loaded members first (fewest running
/// processes, then name). Returns (node, count) in node order.
pub fn spread(members: &[MemberInfo], total: u32) -> Vec<(String, u32)> {
    if members.is_empty() {
        return vec![];
    }
    let k = members.len() as u32;
    let (base, extra) = (total / k, total % k);
    let mut by_load: Vec<&MemberInfo> = members.iter().collect();
    by_load.sort_by(|a, b| a.running.cmp(&b.running).then(a.name.cmp(&b.name)));
    let lucky: BTreeSet<&str> = by_load
        .iter()
        .take(extra as usize)
        .map(|m| m.name.as_str())
        .collect();
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for m in members {
        out.insert(
            m.name.clone(),
            base + u32::from(lucky.contains(m.name.as_str())),
        );
    }
    out.into_iter().collect()
}

/// Sets the process count of `watcher` on each member of `service` so that they add up
/// to `total`.
pub async fn resize_service(
    client: &Conn,
    subjects: &Subjects,
    service: &str,
    watcher: &str,
    total: u32,
    timeout: Duration,
) -> Result<Outcome, MembersError> {
    let members: Vec<MemberInfo> = alive_full(client, subjects, timeout)
        .await?
        .into_iter()
        .filter(|m| m.services.iter().any(|s| s == service))
        .collect();
    if members.is_empty() {
        return Err(MembersError::Other(format!(
            "no alive node runs service '{service}' (`ctl members` shows what runs where)"
        )));
    }
    let plan = spread(&members, total);
    tracing::info!("spreading {total} processes of '{watcher}' over service '{service}': {plan:?}");
    let sends = plan.iter().map(|(node, n)| {
        let req = Request::new(Command::Numprocesses(Numprocesses {
            name: watcher.to_owned(),
            nb: Some(*n),
        }));
        async move {
            let subject = subjects.command(&CmdTarget::Node(node.clone()), &req.command);
            client::request_one(client, subject, node, &req, timeout).await
        }
    });
    let mut all = Outcome::default();
    for out in futures::future::join_all(sends).await {
        all.replies.extend(out.replies);
        all.missing.extend(out.missing);
        all.denied.extend(out.denied);
    }
    all.replies.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, running: u32) -> MemberInfo {
        serde_json::from_value(serde_json::json!({
            "name": name, "state": "alive", "since": 0.0, "boot_id": "b", "seq": 1,
            "hostname": "h", "tags": {}, "version": "v", "pid": 1, "started_at": 0.0,
            "last_seen": 0.0, "heartbeat_ms": 1000, "watchers": [], "services": ["web"],
            "numprocesses": running, "running": running
        }))
        .unwrap()
    }

    #[test]
    fn spreads_evenly_with_the_rest_to_the_least_loaded() {
        let ms = vec![member("a", 5), member("b", 0), member("c", 2)];
        assert_eq!(
            spread(&ms, 7),
            vec![("a".into(), 2), ("b".into(), 3), ("c".into(), 2)]
        );
        assert_eq!(
            spread(&ms, 8),
            vec![("a".into(), 2), ("b".into(), 3), ("c".into(), 3)]
        );
        assert_eq!(spread(&ms, 0).iter().map(|x| x.1).sum::<u32>(), 0);
        assert!(spread(&[], 3).is_empty());
    }
}
