//! The agent as a NATS micro service (the `$SRV` protocol), so that `nats micro ls`,
//! `nats micro info nodeagent` and `nats micro stats nodeagent` list every agent with
//! its command endpoints, its version and its request counts.
//!
//! The command subscriptions themselves are the service's endpoints, so each request
//! is received once and counted once. A micro endpoint always joins a queue group: the
//! per-node and broadcast endpoints join a group of their own, unique to this agent
//! process ([`own_queue`]), which behaves like a plain subscription: every agent gets
//! every broadcast. Only the per-service endpoints share a queue group (the service's
//! name), and `cluster.members` its members group, as before.
//!
//! It knows nothing of the commands: [`super::serve`] hands each request to its handler
//! and answers through [`respond`].

use std::collections::HashMap;

use async_nats::service::{endpoint::Endpoint, Request, Service, ServiceExt};
use async_nats::Client;
use futures::stream::SelectAll;
use protocol::Subjects;

use super::{TransportError, PUBLISH_TIMEOUT};
use crate::identity::Identity;

/// The micro service name every agent registers under: `nats micro info nodeagent`.
pub const SERVICE_NAME: &str = "nodeagent";

/// The queue group of this agent process's own endpoints (per node, broadcast): no
/// other process is in it, so it load-balances nothing.
pub fn own_queue(identity: &Identity) -> String {
    format!("{}-{}", identity.node, identity.boot_id)
}

/// What `nats micro info` shows of this agent besides its endpoints.
fn metadata(identity: &Identity, subjects: &Subjects) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("node".to_owned(), identity.node.clone()),
        ("hostname".to_owned(), identity.hostname.clone()),
        ("boot_id".to_owned(), identity.boot_id.clone()),
        ("pid".to_owned(), identity.pid.to_string()),
        ("prefix".to_owned(), subjects.prefix().to_owned()),
    ]);
    if !identity.tags.is_empty() {
        let tags: Vec<String> = identity
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        m.insert("tags".to_owned(), tags.join(","));
    }
    m
}

/// Registers this agent as an instance of the `nodeagent` micro service (it answers
/// `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`, also by name and by instance id). It has
/// no endpoint yet: see [`endpoints`].
pub async fn register(
    client: &Client,
    subjects: &Subjects,
    identity: &Identity,
) -> Result<Service, TransportError> {
    client
        .service_builder()
        .description(format!(
            "process supervisor of node {} (commands on {}.{}.cmd)",
            identity.node,
            subjects.prefix(),
            identity.node
        ))
        .metadata(metadata(identity, subjects))
        .queue_group(own_queue(identity))
        // Cargo versions are semantic, as the micro protocol wants.
        .start(SERVICE_NAME, &identity.version)
        .await
        .map_err(|e| TransportError::Service(e.to_string()))
}

/// One endpoint `name` on `subject`, in `queue` (`None`: this agent's own group).
pub async fn endpoint(
    service: &Service,
    name: String,
    subject: String,
    queue: Option<&str>,
) -> Result<Endpoint, TransportError> {
    let mut builder = service.endpoint_builder().name(name);
    if let Some(q) = queue {
        builder = builder.queue_group(q);
    }
    builder
        .add(subject.clone())
        .await
        .map_err(|e| TransportError::Service(format!("cannot serve {subject}: {e}")))
}

/// Two endpoints: `name` on `subject` (the command in the body) and `name-command` on
/// `subject.*` (one subject per command), in `queue` (`None`: this agent's own group),
/// merged into one stream of requests.
pub async fn endpoints(
    service: &Service,
    name: &str,
    subject: String,
    queue: Option<String>,
) -> Result<SelectAll<Endpoint>, TransportError> {
    let queue = queue.as_deref();
    let each = format!("{subject}.*");
    let plain = endpoint(service, name.to_owned(), subject, queue).await?;
    let each = endpoint(service, format!("{name}-command"), each, queue).await?;
    Ok(futures::stream::select_all([plain, each]))
}

/// Sends `payload` as the answer to `request`, and counts it in the endpoint's stats;
/// bounded like every publish ([`PUBLISH_TIMEOUT`]). A request without a reply subject
/// gets nothing.
pub async fn respond(request: &Request, payload: bytes::Bytes) {
    if request.message.reply.is_none() {
        return;
    }
    match tokio::time::timeout(PUBLISH_TIMEOUT, request.respond(Ok(payload))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(subject = %request.message.subject, "cannot reply: {e}"),
        Err(_) => tracing::debug!(
            subject = %request.message.subject,
            "reply not sent: the send buffer is full"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_queue_is_unique_to_the_process() {
        let a = Identity::new("first", Default::default());
        let b = Identity::new("first", Default::default());
        assert_ne!(own_queue(&a), own_queue(&b));
        assert!(own_queue(&a).starts_with("first-"));
    }
}
