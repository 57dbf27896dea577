//! Every NATS subject the product uses, built in one place, and the rules for the names
//! that become subject tokens. Nothing else formats a subject.

use std::fmt;

/// The subject prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "cluster";

/// Names that cannot be node names because they are subject tokens of their own.
pub const RESERVED_NAMES: &[&str] = &[
    "all", "svc", "registry", "members", "cmd", "stats", "events",
];

/// The longest node, watcher or service name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a name cannot be used as a subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    BadChar(char),
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "it is empty"),
            NameError::TooLong(n) => {
                write!(f, "it is {n} characters long (at most {MAX_NAME_LEN})")
            }
            NameError::BadChar(c) => write!(
                f,
                "it contains {c:?}; use only letters, digits, '_' and '-'"
            ),
            NameError::Reserved => write!(
                f,
                "it is reserved (reserved names: {})",
                RESERVED_NAMES.join(", ")
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks that `name` is one subject token: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_token(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong(len));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    Ok(())
}

/// Checks a node name: a valid token that is not reserved.
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    validate_token(name)?;
    if RESERVED_NAMES.contains(&name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Checks a subject prefix: one or more valid tokens joined by dots.
pub fn validate_prefix(prefix: &str) -> Result<(), NameError> {
    prefix.split('.').try_for_each(validate_token)
}

/// Builds the subjects under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// The caller validates the prefix with [`validate_prefix`] at the edge.
    pub fn new(prefix: impl Into<String>) -> Self {
        Subjects {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `cluster.<node>.cmd`: commands for one node.
    pub fn node_cmd(&self, node: &str) -> String {
        format!("{}.{node}.cmd", self.prefix)
    }

    /// `cluster.all.cmd`: commands for every node.
    pub fn all_cmd(&self) -> String {
        format!("{}.all.cmd", self.prefix)
    }

    /// `cluster.svc.<service>.cmd`: commands for one member of a service.
    pub fn service_cmd(&self, service: &str) -> String {
        format!("{}.svc.{service}.cmd", self.prefix)
    }

    /// `cluster.<node>.stats`.
    pub fn stats(&self, node: &str) -> String {
        format!("{}.{node}.stats", self.prefix)
    }

    /// `cluster.*.stats`: the stats of every node.
    pub fn stats_all(&self) -> String {
        format!("{}.*.stats", self.prefix)
    }

    /// `cluster.<node>.events.<watcher>.<kind>`.
    pub fn event(&self, node: &str, watcher: &str, kind: &str) -> String {
        format!("{}.{node}.events.{watcher}.{kind}", self.prefix)
    }

    /// The subscription for the events of `node` (or every node with `*`), for one
    /// watcher or every watcher (`*`).
    pub fn events_filter(&self, node: &str, watcher: &str) -> String {
        format!("{}.{node}.events.{watcher}.*", self.prefix)
    }

    /// `cluster.<node>.logs.<watcher>`: the lines a watcher's processes write, live.
    /// `node` or `watcher` may be `*` in a subscription.
    pub fn logs(&self, node: &str, watcher: &str) -> String {
        format!("{}.{node}.logs.{watcher}", self.prefix)
    }

    /// `cluster.registry.<node>`: membership announcements.
    pub fn registry(&self, node: &str) -> String {
        format!("{}.registry.{node}", self.prefix)
    }

    /// `cluster.registry.*`: every membership announcement.
    pub fn registry_all(&self) -> String {
        format!("{}.registry.*", self.prefix)
    }

    /// `cluster.members`: any one agent answers with its membership view.
    pub fn members(&self) -> String {
        format!("{}.members", self.prefix)
    }

    /// The queue group shared by the agents answering `cluster.members`.
    pub fn members_queue(&self) -> String {
        format!("{}-members", self.prefix)
    }

    /// The node name in a registry subject, if `subject` is one.
    pub fn node_of_registry<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".registry.")
            .filter(|n| !n.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_subjects_under_the_prefix() {
        let s = Subjects::new("prod.cluster");
        assert_eq!(s.node_cmd("first"), "prod.cluster.first.cmd");
        assert_eq!(s.all_cmd(), "prod.cluster.all.cmd");
        assert_eq!(s.service_cmd("web"), "prod.cluster.svc.web.cmd");
        assert_eq!(s.stats("first"), "prod.cluster.first.stats");
        assert_eq!(s.event("n", "w", "spawn"), "prod.cluster.n.events.w.spawn");
        assert_eq!(s.registry("n"), "prod.cluster.registry.n");
        assert_eq!(s.members(), "prod.cluster.members");
        assert_eq!(s.node_of_registry("prod.cluster.registry.n1"), Some("n1"));
        assert_eq!(s.node_of_registry("prod.cluster.n1.cmd"), None);
    }

    #[test]
    fn validates_names() {
        assert!(validate_node_name("first-1_a").is_ok());
        assert_eq!(validate_node_name(""), Err(NameError::Empty));
        assert_eq!(validate_node_name("a.b"), Err(NameError::BadChar('.')));
        assert_eq!(validate_node_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_node_name("all"), Err(NameError::Reserved));
        assert_eq!(
            validate_node_name(&"x".repeat(65)),
            Err(NameError::TooLong(65))
        );
        assert!(validate_token("stats").is_ok());
        assert!(validate_prefix("a.b").is_ok());
        assert!(validate_prefix("a..b").is_err());
    }

    #[test]
    fn builds_log_subjects() {
        let s = Subjects::new("prod.cluster");
        assert_eq!(s.logs("n", "web"), "prod.cluster.n.logs.web");
        assert_eq!(s.logs("*", "*"), "prod.cluster.*.logs.*");
    }
}
