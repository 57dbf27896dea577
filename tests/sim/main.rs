//! `membersim`: plays many virtual cluster members against a real nats-server, with a
//! few connections, to measure what membership costs at scale (see bench/scale.sh and
//! docs/SCALE.md). A benchmark tool, not part of the agent.
//!
//! Each virtual member announces itself on `<prefix>.registry.<name>` exactly as an
//! agent does (the protocol crate's `Announcement`, one watcher, a join and then a
//! heartbeat every `--heartbeat`, spread evenly over the interval), holds its own
//! subscription to the broadcast subject `<prefix>.all.cmd.*` (so the server delivers a
//! broadcast once per member, as it would to real agents), and answers `ping` and
//! `status` on its node and broadcast subjects. A `members` sent to one virtual member
//! is passed on to `<prefix>.members` and the answer relayed: a virtual member keeps no
//! table. With `--keepers-feed`, each virtual member also subscribes to the keepers'
//! announcements (`<prefix>.registry.keepers.*`), as an ordinary agent does.
//!
//! `membersim --silence NAME` tells a running simulator (on the same server and prefix)
//! to stop NAME's heartbeats, as if that member hung with its connection open.
//!
//!   membersim --server nats://127.0.0.1:4222 --members 1000 [--heartbeat-ms 1000]
//!             [--connections 4] [--prefix cluster] [--name-prefix v] [--keepers-feed]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::{Client, HeaderMap, Message};
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use protocol::command::Command;
use protocol::registry::{AnnounceKind, Announcement, WatcherBrief};
use protocol::reply::{PingData, StatusData, WatcherState, WatcherSummary};
use protocol::subjects::{HEADER_NODES, HEADER_TAGS};
use protocol::{Errno, Reply, Request, RequestError, Subjects};

struct Opts {
    server: String,
    prefix: String,
    members: usize,
    name_prefix: String,
    heartbeat: Duration,
    connections: usize,
    keepers_feed: bool,
    silence: Option<String>,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        server: std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        prefix: "cluster".into(),
        members: 100,
        name_prefix: "v".into(),
        heartbeat: Duration::from_secs(1),
        connections: 4,
        keepers_feed: false,
        silence: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--server" => o.server = value()?,
            "--prefix" => o.prefix = value()?,
            "--members" => o.members = value()?.parse().context("--members: a count")?,
            "--name-prefix" => o.name_prefix = value()?,
            "--heartbeat-ms" => {
                o.heartbeat = Duration::from_millis(value()?.parse().context("--heartbeat-ms")?)
            }
            "--connections" => {
                o.connections = value()?.parse().context("--connections: a count")?
            }
            "--keepers-feed" => o.keepers_feed = true,
            "--silence" => o.silence = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: membersim [--server URL] [--members N] [--heartbeat-ms MS] \
                     [--connections C] [--prefix P] [--name-prefix V] [--keepers-feed]\n       \
                     membersim [--server URL] [--prefix P] --silence NAME"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    if o.connections == 0 || o.members == 0 {
        bail!("--members and --connections must be at least 1");
    }
    Ok(o)
}

/// `sim.<prefix>.silence`: where a running simulator takes the names to silence.
fn control_subject(prefix: &str) -> String {
    format!("sim.{prefix}.silence")
}

/// One virtual member.
struct Member {
    name: String,
    boot_id: String,
    started_at: f64,
    seq: u64,
    tags: BTreeMap<String, String>,
}

impl Member {
    fn announcement(&mut self, heartbeat: Duration, conn: &Client) -> Announcement {
        self.seq += 1;
        let info = conn.server_info();
        Announcement {
            node: self.name.clone(),
            kind: if self.seq == 1 {
                AnnounceKind::Join
            } else {
                AnnounceKind::Alive
            },
            boot_id: self.boot_id.clone(),
            seq: self.seq,
            started_at: self.started_at,
            time: protocol::unix_time(),
            heartbeat_ms: heartbeat.as_millis() as u64,
            tags: self.tags.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: "membersim".into(),
            pid: std::process::id(),
            address: None,
            watchers: vec![WatcherBrief {
                name: "web".into(),
                service: "web".into(),
                state: WatcherState::Active,
                numprocesses: 1,
                running: 1,
            }],
            services: vec!["web".into()],
            server_id: Some(info.server_id),
            client_id: Some(info.client_id),
            keeper: false,
            upgrading_ms: None,
        }
    }

    fn ping(&self) -> PingData {
        PingData {
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: self.boot_id.clone(),
            pid: std::process::id(),
            hostname: "membersim".into(),
            tags: self.tags.clone(),
            uptime_secs: protocol::unix_time() - self.started_at,
        }
    }
}

fn status() -> StatusData {
    StatusData {
        statuses: [("web".to_owned(), WatcherState::Active)].into(),
        watchers: vec![WatcherSummary {
            name: "web".into(),
            state: WatcherState::Active,
            numprocesses: 1,
            running: 1,
            ready: 1,
            restarts: 0,
            service: "web".into(),
            reason: None,
        }],
    }
}

/// True when a broadcast's target headers select `m` (as the agent decides).
fn selected(headers: Option<&HeaderMap>, m: &Member) -> bool {
    let Some(h) = headers else { return true };
    if let Some(nodes) = h.get(HEADER_NODES) {
        if !nodes.as_str().split(',').any(|n| n.trim() == m.name) {
            return false;
        }
    }
    if let Some(tags) = h.get(HEADER_TAGS) {
        for pair in tags.as_str().split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if m.tags.get(k.trim()).map(String::as_str) != Some(v.trim()) {
                return false;
            }
        }
    }
    true
}

type Silenced = Arc<Mutex<HashSet<String>>>;

/// Where a message came from.
enum Feed {
    /// A request on a node subject (wildcard over this connection's members).
    Node(Message),
    /// A broadcast, delivered to member `usize`'s own subscription.
    All(usize, Message),
    /// A keeper's announcement, delivered to an ordinary member; dropped.
    Keepers,
}

async fn run_connection(
    o: Arc<Opts>,
    index: usize,
    names: Vec<usize>,
    silenced: Silenced,
) -> Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("membersim-{index}"))
        .subscription_capacity(1 << 16)
        .max_reconnects(None)
        .connect(o.server.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", o.server))?;
    let subjects = Subjects::new(o.prefix.clone());
    let started_at = protocol::unix_time();
    let mut members: Vec<Member> = names
        .iter()
        .map(|&i| Member {
            name: format!("{}{i:05}", o.name_prefix),
            boot_id: format!("sim-{}-{i}-{}", std::process::id(), started_at),
            started_at,
            seq: 0,
            tags: [("rack".to_owned(), format!("r{}", i % 5))].into(),
        })
        .collect();
    let by_name: HashMap<String, usize> = members
        .iter()
        .enumerate()
        .map(|(k, m)| (m.name.clone(), k))
        .collect();

    let mut feeds: SelectAll<BoxStream<'static, Feed>> = SelectAll::new();
    for s in [
        format!("{}.*.cmd", o.prefix),
        format!("{}.*.cmd.*", o.prefix),
    ] {
        feeds.push(client.subscribe(s).await?.map(Feed::Node).boxed());
    }
    for k in 0..members.len() {
        let sub = client.subscribe(format!("{}.all.cmd.*", o.prefix)).await?;
        feeds.push(sub.map(move |m| Feed::All(k, m)).boxed());
        if o.keepers_feed {
            let sub = client
                .subscribe(format!("{}.registry.keepers.*", o.prefix))
                .await?;
            feeds.push(sub.map(|_| Feed::Keepers).boxed());
        }
    }
    client.flush().await?;

    let mut parsed = LastRequest::default();
    // Heartbeats spread evenly: every tick, the share of members due.
    let tick = Duration::from_millis(10);
    let per_tick = members.len() as f64 * tick.as_secs_f64() / o.heartbeat.as_secs_f64();
    let mut owed = 0.0f64;
    let mut cursor = 0usize;
    let mut joined = 0usize;
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                owed += per_tick;
                // Everyone joins within the first interval, then beats round robin.
                while owed >= 1.0 {
                    owed -= 1.0;
                    let k = cursor;
                    cursor = (cursor + 1) % members.len();
                    joined = (joined + 1).min(members.len());
                    let m = &mut members[k];
                    if silenced.lock().unwrap().contains(&m.name) {
                        continue;
                    }
                    let ann = m.announcement(o.heartbeat, &client);
                    let body = serde_json::to_vec(&ann)?;
                    client.publish(subjects.registry(&m.name), body.into()).await?;
                }
            }
            Some(feed) = feeds.next() => match feed {
                Feed::Node(msg) => {
                    let Some(cmd) = subjects.parse_cmd(&msg.subject) else { continue };
                    let protocol::subjects::CmdTarget::Node(name) = cmd.target else { continue };
                    let Some(&k) = by_name.get(&name) else { continue };
                    answer(&client, &subjects, &members[k], msg, false).await;
                }
                Feed::All(k, msg) => {
                    if selected(msg.headers.as_ref(), &members[k]) {
                        let req = parsed.read(&msg.payload);
                        answer_parsed(&client, &subjects, &members[k], msg, req, true).await;
                    }
                }
                Feed::Keepers => {}
            },
        }
    }
}

/// The last broadcast request read on a connection. The server delivers a broadcast
/// once to each virtual member; on a real cluster each agent reads its own copy on its
/// own machine, so the simulator reads the copies of one broadcast once, not once per
/// member, to spend its CPU on what the agents would not.
#[derive(Default)]
struct LastRequest {
    payload: Vec<u8>,
    request: Option<Result<Request, RequestError>>,
}

impl LastRequest {
    fn read(&mut self, payload: &[u8]) -> Result<Request, RequestError> {
        match &self.request {
            Some(r) if self.payload == payload => r.clone(),
            _ => {
                let r = protocol::command::parse_request(payload);
                self.payload = payload.to_vec();
                self.request = Some(r.clone());
                r
            }
        }
    }
}

/// Answers one request for member `m`.
async fn answer(client: &Client, subjects: &Subjects, m: &Member, msg: Message, broadcast: bool) {
    let req = protocol::command::parse_request(&msg.payload);
    answer_parsed(client, subjects, m, msg, req, broadcast).await
}

/// Answers one request, already read, for member `m`.
async fn answer_parsed(
    client: &Client,
    subjects: &Subjects,
    m: &Member,
    msg: Message,
    req: Result<Request, RequestError>,
    broadcast: bool,
) {
    let Some(to) = msg.reply.clone() else { return };
    let now = protocol::unix_time();
    let reply: Reply = match req {
        Err(e) => Reply::error(e.id, &m.name, now, e.errno, e.reason),
        Ok(req) => match req.command {
            Command::Ping(_) => Reply::ok(req.id, &m.name, now, m.ping()),
            Command::Status(_) => Reply::ok(req.id, &m.name, now, status()),
            // A broadcast `members` is for the agents that keep the table.
            Command::Members(_) if broadcast => return,
            Command::Members(_) => {
                let asked = client.request(subjects.members(), msg.payload.clone());
                match tokio::time::timeout(Duration::from_secs(2), asked).await {
                    Ok(Ok(r)) => {
                        let _ = client.publish(to, r.payload).await;
                        return;
                    }
                    _ => Reply::error(
                        req.id,
                        &m.name,
                        now,
                        Errno::Busy,
                        "no member list within 2s: no agent keeps the table",
                    ),
                }
            }
            other => Reply::error(
                req.id,
                &m.name,
                now,
                Errno::BadMessage,
                format!(
                    "'{}' is not simulated: a virtual member answers ping, status and members",
                    other.name()
                ),
            ),
        },
    };
    if let Ok(body) = serde_json::to_vec(&reply) {
        let _ = client.publish(to, body.into()).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = Arc::new(parse_args()?);
    if let Some(name) = &o.silence {
        let client = async_nats::connect(o.server.as_str()).await?;
        let r = client
            .request(control_subject(&o.prefix), name.clone().into())
            .await
            .context("no simulator answered")?;
        println!("{}", String::from_utf8_lossy(&r.payload));
        return Ok(());
    }
    let silenced: Silenced = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..o.connections {
        let names: Vec<usize> = (c..o.members).step_by(o.connections).collect();
        if !names.is_empty() {
            tasks.spawn(run_connection(o.clone(), c, names, silenced.clone()));
        }
    }
    let control = async_nats::ConnectOptions::new()
        .name("membersim-control")
        .connect(o.server.as_str())
        .await?;
    let mut sub = control.subscribe(control_subject(&o.prefix)).await?;
    eprintln!(
        "membersim: {} members on {} connections, heartbeat {:?}",
        o.members, o.connections, o.heartbeat
    );
    loop {
        tokio::select! {
            Some(msg) = sub.next() => {
                let name = String::from_utf8_lossy(&msg.payload).trim().to_owned();
                silenced.lock().unwrap().insert(name.clone());
                if let Some(to) = msg.reply {
                    let _ = control.publish(to, format!("silenced {name}").into()).await;
                }
            }
            // A connection that ends is an error: the run is no longer what was asked.
            Some(done) = tasks.join_next() => {
                done??;
                bail!("a connection task ended");
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
