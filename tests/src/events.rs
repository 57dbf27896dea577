//! Lifecycle and agent events read from NATS by async tests: a subscription in place
//! on the server before the test goes on, and bounded waits for the events the test
//! expects. Every event read is checked against its schema and against the subject it
//! came on (`<prefix>.<node>.events.<watcher>.<kind>`), and kept: a wait that ends
//! empty panics naming what it waited for and every event it read.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::schema::validate;
use crate::wait::bound;

/// A subscription to events, with every event read from it so far.
pub struct Events {
    /// Held so that the connection lives as long as the subscription.
    _client: async_nats::Client,
    sub: async_nats::Subscriber,
    seen: Vec<Value>,
}

impl Events {
    /// Subscribes to `subject` (such as "cluster.a.events.w.>") on the server at
    /// `url`; the subscription is in place on the server when this returns.
    pub async fn subscribe(url: &str, subject: &str) -> Events {
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        let sub = client
            .subscribe(subject.to_owned())
            .await
            .unwrap_or_else(|e| panic!("cannot subscribe to {subject}: {e}"));
        client
            .flush()
            .await
            .unwrap_or_else(|e| panic!("cannot flush the subscription to {subject}: {e}"));
        Events {
            _client: client,
            sub,
            seen: Vec::new(),
        }
    }

    /// Every event read so far, in the order they came.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// The next event, within `timeout` (scaled by the slack).
    pub async fn next(&mut self, timeout: Duration) -> Value {
        self.next_where(timeout, "an event", |_| true).await
    }

    /// The next event that `f` accepts, within `timeout` in all (scaled by the slack);
    /// panics naming `what` when none comes.
    pub async fn next_where(
        &mut self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let limit = bound(timeout);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.read_until(deadline, limit, what).await;
            if f(&v) {
                return v;
            }
        }
    }

    /// Reads events until `done` holds for those read by this call, within `timeout`
    /// in all (scaled by the slack), and returns them; panics naming `what` when they
    /// do not come.
    pub async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let limit = bound(timeout);
        let deadline = tokio::time::Instant::now() + limit;
        let from = self.seen.len();
        while !done(&self.seen[from..]) {
            self.read_until(deadline, limit, what).await;
        }
        self.seen[from..].to_vec()
    }

    /// The next event, checked and kept, before `deadline` (`limit` from the start).
    async fn read_until(
        &mut self,
        deadline: tokio::time::Instant,
        limit: Duration,
        what: &str,
    ) -> Value {
        let msg = match tokio::time::timeout_at(deadline, self.sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("the subscription closed waiting for: {what}"),
            Err(_) => panic!(
                "timed out after {limit:?} waiting for: {what}; events read: {:#?}",
                self.seen
            ),
        };
        let v: Value = serde_json::from_slice(&msg.payload)
            .unwrap_or_else(|e| panic!("an event that is not JSON ({e}): {:?}", msg.payload));
        validate("events.schema.json", &v);
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let prefix = msg.subject.split('.').next().unwrap_or_default();
        let want = format!(
            "{prefix}.{}.events.{}.{}",
            field("node"),
            field("watcher"),
            field("kind")
        );
        assert_eq!(msg.subject.as_str(), want, "the subject of {v}");
        self.seen.push(v.clone());
        v
    }
}
