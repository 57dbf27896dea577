//! Every NATS subject the product uses, built in one place, and the rules for the names
//! that become subject tokens. Nothing else formats a subject.

use std::fmt;

/// The subject prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "cluster";

/// Header on a broadcast (`cmd.all`): only the nodes named (comma separated) act.
pub const HEADER_NODES: &str = "Cluster-Nodes";
/// Header on a broadcast (`cmd.all`): only the nodes that have every tag `k=v` (comma
/// separated) act.
pub const HEADER_TAGS: &str = "Cluster-Tags";

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

    /// `cluster.<node>.cmd.<token>`: one command for one node, on its own subject
    /// (`token` is [`Command::subject_token`](crate::Command::subject_token), or `*`
    /// in a subscription).
    pub fn node_cmd_for(&self, node: &str, token: &str) -> String {
        format!("{}.{node}.cmd.{token}", self.prefix)
    }

    /// `cluster.all.cmd.<token>`: one command for every node, on its own subject.
    pub fn all_cmd_for(&self, token: &str) -> String {
        format!("{}.all.cmd.{token}", self.prefix)
    }

    /// `cluster.svc.<service>.cmd.<token>`: one command for one member of a service, on
    /// its own subject.
    pub fn service_cmd_for(&self, service: &str, token: &str) -> String {
        format!("{}.svc.{service}.cmd.{token}", self.prefix)
    }

    /// The per-command subject of `command` for `target`; `cluster.members` for
    /// [`CmdTarget::Members`], which has no per-command form.
    pub fn command(&self, target: &CmdTarget, command: &crate::Command) -> String {
        let token = command.subject_token();
        match target {
            CmdTarget::Node(n) => self.node_cmd_for(n, token),
            CmdTarget::All => self.all_cmd_for(token),
            CmdTarget::Service(s) => self.service_cmd_for(s, token),
            CmdTarget::Members => self.members(),
        }
    }

    /// What a command subject addresses, and its command token if it is a
    /// per-command subject; `None` when `subject` is no command subject.
    pub fn parse_cmd(&self, subject: &str) -> Option<CmdSubject> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        let token = |t: &str| validate_token(t).ok().map(|_| t.to_owned());
        let (target, tok) = match parts.as_slice() {
            ["members"] => (CmdTarget::Members, None),
            ["svc", s, "cmd"] => (CmdTarget::Service(token(s)?), None),
            ["svc", s, "cmd", t] => (CmdTarget::Service(token(s)?), Some(token(t)?)),
            ["all", "cmd"] => (CmdTarget::All, None),
            ["all", "cmd", t] => (CmdTarget::All, Some(token(t)?)),
            [n, "cmd"] if validate_node_name(n).is_ok() => (CmdTarget::Node((*n).into()), None),
            [n, "cmd", t] if validate_node_name(n).is_ok() => {
                (CmdTarget::Node((*n).into()), Some(token(t)?))
            }
            _ => return None,
        };
        Some(CmdSubject { target, token: tok })
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

    /// `cluster.registry.keepers.<node>`: the announcements of a member table keeper.
    pub fn keepers(&self, node: &str) -> String {
        format!("{}.registry.keepers.{node}", self.prefix)
    }

    /// `cluster.registry.keepers.*`: every keeper's announcements, read by every agent.
    pub fn keepers_all(&self) -> String {
        format!("{}.registry.keepers.*", self.prefix)
    }

    /// The node name in a keepers subject, if `subject` is one.
    pub fn node_of_keepers<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".registry.keepers.")
            .filter(|n| !n.contains('.'))
    }

    /// `cluster.members`: any one keeper answers with its membership view.
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

/// Who a command subject addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdTarget {
    /// `cluster.<node>.cmd`.
    Node(String),
    /// `cluster.all.cmd`.
    All,
    /// `cluster.svc.<service>.cmd`.
    Service(String),
    /// `cluster.members`.
    Members,
}

/// A command subject read back: whom it addresses, and the command token of a
/// per-command subject (`None` for the plain `... .cmd` and for `cluster.members`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdSubject {
    pub target: CmdTarget,
    pub token: Option<String>,
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
        assert_eq!(s.node_cmd_for("n", "stop"), "prod.cluster.n.cmd.stop");
        assert_eq!(s.all_cmd_for("*"), "prod.cluster.all.cmd.*");
        assert_eq!(
            s.service_cmd_for("web", "incr"),
            "prod.cluster.svc.web.cmd.incr"
        );
    }

    #[test]
    fn reads_command_subjects_back() {
        let s = Subjects::new("p.c");
        let node = |n: &str| CmdTarget::Node(n.into());
        let svc = |n: &str| CmdTarget::Service(n.into());
        type Want<'a> = Option<(CmdTarget, Option<&'a str>)>;
        let cases: &[(&str, Want)] = &[
            ("p.c.n1.cmd", Some((node("n1"), None))),
            ("p.c.n1.cmd.stop", Some((node("n1"), Some("stop")))),
            ("p.c.all.cmd", Some((CmdTarget::All, None))),
            ("p.c.all.cmd.resize", Some((CmdTarget::All, Some("resize")))),
            ("p.c.svc.web.cmd", Some((svc("web"), None))),
            ("p.c.svc.web.cmd.incr", Some((svc("web"), Some("incr")))),
            ("p.c.members", Some((CmdTarget::Members, None))),
            ("p.c.n1.stats", None),
            ("p.c.registry.n1", None),
            ("p.c.n1.cmd.a.b", None),
            ("p.c.svc.cmd", None),
            ("p.c.registry.cmd", None),
            ("q.c.n1.cmd", None),
            ("p.cx.n1.cmd", None),
            ("p.c", None),
        ];
        for (subject, want) in cases {
            let got = s
                .parse_cmd(subject)
                .map(|c| (c.target, c.token.as_deref().map(str::to_owned)));
            let want = want.clone().map(|(t, tok)| (t, tok.map(str::to_owned)));
            assert_eq!(got, want, "{subject}");
        }
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
