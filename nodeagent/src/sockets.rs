//! Listening sockets the agent binds once (`[socket.NAME]`) and hands to the processes
//! of the watchers that list them: their validated specs, the binding (TCP over IPv4 or
//! IPv6, unix stream sockets), the set of bound sockets that lives as long as the agent
//! (every fd close-on-exec in the agent), and the expansion of `$(sockets.NAME)`. It
//! starts no process (passing the fds to a child is `process`'s job) and reads no TOML.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The fd the first socket of a watcher gets in its processes (systemd's
/// `SD_LISTEN_FDS_START`); the next ones follow in the order of its `sockets` list.
pub const FIRST_FD: u32 = 3;

/// The most sockets one watcher may list.
pub const MAX_PER_WATCHER: usize = 64;

/// The most `[socket.NAME]` tables a config may hold.
pub const MAX_SOCKETS: usize = 1024;

/// The range of `backlog`.
pub const MIN_BACKLOG: i64 = 1;
pub const MAX_BACKLOG: i64 = 65535;

/// `backlog` when the config gives none.
pub const DEFAULT_BACKLOG: u32 = 128;

/// The longest unix socket path, in bytes (`sun_path` holds 108 with the final NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// A `[socket.NAME]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketOptions {
    /// An IP address (IPv4, or IPv6 with or without brackets; "localhost" is
    /// 127.0.0.1); TCP.
    pub host: Option<String>,
    /// 0 to 65535; 0 takes any free port. TCP.
    pub port: Option<i64>,
    /// An absolute path: a unix stream socket.
    pub path: Option<String>,
    /// The unix socket file's permissions, in octal ("0660").
    pub mode: Option<String>,
    pub backlog: Option<i64>,
    /// SO_REUSEPORT: other sockets may bind the same address.
    pub reuseport: Option<bool>,
}

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf, mode: Option<u32> },
}

impl Endpoint {
    /// Where it listens, ignoring how (a unix socket's mode).
    fn place(&self) -> (&'static str, String) {
        match self {
            Endpoint::Tcp { host, port } => ("tcp", format!("{host}:{port}")),
            Endpoint::Unix { path, .. } => ("unix", path.display().to_string()),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// A socket, validated, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    pub name: String,
    pub endpoint: Endpoint,
    pub backlog: u32,
    pub reuseport: bool,
}

/// Checks a socket or watcher name: the rules of watcher names.
pub fn check_name(name: &str) -> Result<(), String> {
    if let Err(e) = protocol::subjects::validate_token(name) {
        return Err(format!("{name:?} cannot be a socket name: {e}"));
    }
    if name.starts_with('_') {
        return Err(format!(
            "{name:?} cannot be a socket name: names starting with '_' are reserved"
        ));
    }
    Ok(())
}

/// Reads a unix socket's mode: octal digits ("0660", "660", "0o660"), at most 0777.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let hint = "write it in octal as a string, such as mode = \"0660\"";
    let digits = s.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{s:?} is not an octal mode; {hint}"));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?} is out of range; use 0000 to 0777 (no setuid, setgid or sticky bits)"
        )),
    }
}

impl SocketSpec {
    /// Validates `[socket.NAME]`; each problem as (key, message), the key empty when
    /// it is about the table as a whole.
    pub fn from_options(
        name: &str,
        o: &SocketOptions,
    ) -> Result<SocketSpec, Vec<(&'static str, String)>> {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if let Err(m) = check_name(name) {
            problems.push(("", m));
        }
        let backlog = match o.backlog {
            None => DEFAULT_BACKLOG,
            Some(b) if (MIN_BACKLOG..=MAX_BACKLOG).contains(&b) => b as u32,
            Some(b) => {
                problems.push((
                    "backlog",
                    format!("{b} is out of range; use {MIN_BACKLOG} to {MAX_BACKLOG}"),
                ));
                DEFAULT_BACKLOG
            }
        };
        let tcp = o.host.is_some() || o.port.is_some();
        let endpoint = match (&o.path, tcp) {
            (Some(_), true) => {
                problems.push((
                    "",
                    "has both path and host/port; give path for a unix socket, or host and \
                     port for TCP"
                        .into(),
                ));
                None
            }
            (None, false) => {
                problems.push((
                    "",
                    "says nowhere to listen; give port (and host) for TCP, or path for a unix \
                     socket"
                        .into(),
                ));
                None
            }
            (Some(path), false) => unix_endpoint(path, o.mode.as_deref(), &mut problems),
            (None, true) => {
                if o.mode.is_some() {
                    problems.push((
                        "mode",
                        "applies to unix sockets only; remove it, or give path instead of \
                         host/port"
                            .into(),
                    ));
                }
                tcp_endpoint(o.host.as_deref(), o.port, &mut problems)
            }
        };
        match endpoint {
            Some(endpoint) if problems.is_empty() => Ok(SocketSpec {
                name: name.to_owned(),
                endpoint,
                backlog,
                reuseport: o.reuseport.unwrap_or(false),
            }),
            _ => Err(problems),
        }
    }
}

fn tcp_endpoint(
    host: Option<&str>,
    port: Option<i64>,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<Endpoint> {
    let port = match port {
        None => {
            problems.push((
                "port",
                "missing; give a port from 0 to 65535 (0 takes any free port)".into(),
            ));
            None
        }
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                problems.push((
                    "port",
                    format!("{p} is out of range; use 0 to 65535 (0 takes any free port)"),
                ));
                None
            }
        },
    };
    let raw = host.unwrap_or("127.0.0.1").trim();
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(raw);
    // An address, not a name to look up: binding never waits on DNS.
    let host = if unbracketed.eq_ignore_ascii_case("localhost") {
        Some("127.0.0.1".to_owned())
    } else if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        Some(ip.to_string())
    } else {
        problems.push((
            "host",
            format!(
                "{raw:?} is not an IP address; write an address of this machine such as \
                 \"127.0.0.1\", \"0.0.0.0\" (every IPv4 address), \"::1\" or \"::\" \
                 (every IPv6 address)"
            ),
        ));
        None
    };
    Some(Endpoint::Tcp {
        host: host?,
        port: port?,
    })
}

fn unix_endpoint(
    path: &str,
    mode: Option<&str>,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<Endpoint> {
    let mode = mode.and_then(|m| parse_mode(m).map_err(|e| problems.push(("mode", e))).ok());
    let p = Path::new(path);
    let bad = if !p.is_absolute() {
        Some(format!(
            "{path:?} is not an absolute path; write it like \"/run/web.sock\""
        ))
    } else if path.len() > MAX_UNIX_PATH {
        Some(format!(
            "{path:?} is {} bytes long, longer than a unix socket path may be ({MAX_UNIX_PATH}); \
             pick a shorter path",
            path.len()
        ))
    } else if path.contains('\0') {
        Some("holds a NUL byte".to_owned())
    } else if p.components().any(|c| c == std::path::Component::ParentDir) {
        Some(format!("{path:?} holds '..'; write the path without it"))
    } else if p.file_name().is_none() {
        Some(format!("{path:?} names no file"))
    } else {
        None
    };
    if let Some(m) = bad {
        problems.push(("path", m));
        return None;
    }
    Some(Endpoint::Unix {
        path: p.to_owned(),
        mode,
    })
}

/// Checks a watcher's `sockets` list on its own: valid names, none twice, at most
/// [`MAX_PER_WATCHER`]; and that every `$(sockets.NAME)` in `texts` (its args and env
/// values) names one of them. Whether the sockets exist is checked where they are known.
pub fn check_watcher_list<'a>(
    list: &[String],
    texts: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if list.len() > MAX_PER_WATCHER {
        problems.push(format!(
            "lists {} sockets, more than {MAX_PER_WATCHER}; pass fewer",
            list.len()
        ));
        return problems;
    }
    let mut seen = BTreeSet::new();
    for name in list {
        if let Err(m) = check_name(name) {
            problems.push(m);
        } else if !seen.insert(name.as_str()) {
            problems.push(format!("lists socket '{name}' twice; list each once"));
        }
    }
    for text in texts {
        for named in referenced(text) {
            if !list.iter().any(|n| n == named) {
                problems.push(format!(
                    "$(sockets.{named}) is used but socket '{named}' is not in this watcher's \
                     sockets list; add it to sockets = [...]"
                ));
            }
        }
    }
    problems
}

/// The socket names `$(sockets.NAME)` and `$(circus.sockets.NAME)` refer to in `text`.
fn referenced(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for prefix in ["$(sockets.", "$(circus.sockets."] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            if let Some(end) = rest.find(')') {
                out.push(&rest[..end]);
            }
        }
    }
    out
}

/// Expands `$(sockets.NAME)` (and Circus's `$(circus.sockets.NAME)`) in `s` to the fd
/// that socket has in the process: 3 for the first of `sockets`, 4 for the next...
pub fn expand(s: &str, sockets: &[String]) -> String {
    if sockets.is_empty() || !s.contains("sockets.") {
        return s.to_owned();
    }
    let mut out = s.to_owned();
    for (i, name) in sockets.iter().enumerate() {
        let fd = (FIRST_FD as usize).saturating_add(i).to_string();
        out = out
            .replace(&format!("$(sockets.{name})"), &fd)
            .replace(&format!("$(circus.sockets.{name})"), &fd);
    }
    out
}

/// Removes a unix socket's file when the last holder of its fd lets go, if the path
/// still names the file that was bound.
#[derive(Debug)]
struct UnlinkOnDrop {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// One bound, listening socket.
#[derive(Debug, Clone)]
pub struct Bound {
    pub spec: SocketSpec,
    /// The listening socket (close-on-exec in the agent).
    pub fd: Arc<OwnedFd>,
    /// Where it listens: `127.0.0.1:8080` with the real port, `[::1]:8080`, or the path.
    pub address: String,
    _unlink: Option<Arc<UnlinkOnDrop>>,
}

impl Bound {
    /// "tcp" or "unix".
    pub fn kind(&self) -> &'static str {
        self.spec.endpoint.place().0
    }

    /// Its fd number in the agent.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Why sockets could not be bound: each failure names its socket and address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot bind {}:\n{}", if .0.len() == 1 { "a socket" } else { "sockets" }, .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct BindError(pub Vec<String>);

/// The bound sockets of the agent, by name. Clones share the sockets; a socket is
/// closed when no set and no spawn order holds it any more.
#[derive(Debug, Clone, Default)]
pub struct SocketSet {
    bound: BTreeMap<String, Bound>,
}

impl SocketSet {
    /// Binds `specs`, keeping the sockets of `previous` whose spec is the same (and the
    /// fd of one at the same address, with its backlog and mode updated). Nothing is
    /// kept unless everything could be bound: every failure is in the error.
    pub fn bind(
        specs: &BTreeMap<String, SocketSpec>,
        previous: &SocketSet,
    ) -> Result<SocketSet, BindError> {
        let mut bound = BTreeMap::new();
        let mut adopted = Vec::new();
        let mut failed = Vec::new();
        let fail = |name: &str, spec: &SocketSpec, e: String| {
            format!("[socket.{name}] {}: {e}", spec.endpoint)
        };
        for (name, spec) in specs {
            if let Some(same) = previous.bound.get(name).filter(|b| b.spec == *spec) {
                bound.insert(name.clone(), same.clone());
            } else if let Some(old) = previous.at_same_place(name, spec) {
                adopted.push((name, spec, old));
            } else {
                match bind_one(spec) {
                    Ok(b) => {
                        bound.insert(name.clone(), b);
                    }
                    Err(e) => failed.push(fail(name, spec, e)),
                }
            }
        }
        if !failed.is_empty() {
            // The new sockets close here; the old ones are untouched.
            return Err(BindError(failed));
        }
        // Only now, with everything bound, are sockets in use changed.
        for (name, spec, old) in adopted {
            match adopt(old, spec) {
                Ok(b) => {
                    bound.insert(name.clone(), b);
                }
                Err(e) => failed.push(fail(name, spec, e)),
            }
        }
        if failed.is_empty() {
            Ok(SocketSet { bound })
        } else {
            Err(BindError(failed))
        }
    }

    /// The bound socket that `spec`, named `name`, takes over: the one of that name if it
    /// listens at the same place, else another one there (never for port 0, where each
    /// socket has a port of its own).
    fn at_same_place(&self, name: &str, spec: &SocketSpec) -> Option<&Bound> {
        let same = |b: &&Bound| {
            b.spec.endpoint.place() == spec.endpoint.place() && b.spec.reuseport == spec.reuseport
        };
        if let Some(b) = self.bound.get(name).filter(same) {
            return Some(b);
        }
        if matches!(spec.endpoint, Endpoint::Tcp { port: 0, .. }) {
            return None;
        }
        self.bound.values().find(same)
    }

    pub fn get(&self, name: &str) -> Option<&Bound> {
        self.bound.get(name)
    }

    /// The sockets the agent's previous image handed over across its exec, each taken
    /// as the config's socket of the same name when it listens where that one says
    /// (then [`SocketSet::bind`] keeps it: processes still hold it, so it cannot be
    /// bound again); the others are closed, with a warning.
    pub fn inherited(
        specs: &BTreeMap<String, SocketSpec>,
        fds: Vec<(String, OwnedFd, String)>,
    ) -> SocketSet {
        let mut bound = BTreeMap::new();
        for (name, fd, address) in fds {
            let Some(spec) = specs.get(&name) else {
                tracing::warn!(socket = %name, "the config no longer defines this handed-over socket; it is closed");
                continue;
            };
            let local = socket2::SockRef::from(&fd).local_addr();
            let same = match (&spec.endpoint, &local) {
                (Endpoint::Tcp { port, .. }, Ok(a)) => a
                    .as_socket()
                    .is_some_and(|a| *port == 0 || a.port() == *port),
                (Endpoint::Unix { path, .. }, Ok(a)) => a.as_pathname() == Some(path.as_path()),
                (_, Err(_)) => false,
            };
            if !same {
                tracing::warn!(socket = %name, "the handed-over socket listens elsewhere than the config says; it is closed");
                continue;
            }
            let unlink = match &spec.endpoint {
                Endpoint::Unix { path, .. } => std::fs::symlink_metadata(path).ok().map(|m| {
                    Arc::new(UnlinkOnDrop {
                        path: path.clone(),
                        dev: m.dev(),
                        ino: m.ino(),
                    })
                }),
                Endpoint::Tcp { .. } => None,
            };
            bound.insert(
                name,
                Bound {
                    spec: spec.clone(),
                    fd: Arc::new(fd),
                    address,
                    _unlink: unlink,
                },
            );
        }
        SocketSet { bound }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Bound> {
        self.bound.values()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.bound.contains_key(name)
    }

    /// The fds of `names`, in order, for a process; an error names a socket not bound.
    pub fn fds(&self, names: &[String]) -> Result<Vec<(String, Arc<OwnedFd>)>, String> {
        names
            .iter()
            .map(|n| match self.bound.get(n) {
                Some(b) => Ok((n.clone(), b.fd.clone())),
                None => Err(format!(
                    "socket '{n}' is not bound on this node; define it in a [socket.{n}] \
                     table of the config"
                )),
            })
            .collect()
    }

    /// The names whose socket is not the one of `old` (bound anew, or new): processes
    /// that had the old one must start again to get it. A new backlog or mode keeps
    /// the socket.
    pub fn changed_since(&self, old: &SocketSet) -> BTreeSet<String> {
        self.bound
            .iter()
            .filter(|(n, b)| old.bound.get(*n).is_none_or(|o| !Arc::ptr_eq(&o.fd, &b.fd)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The names whose socket binding `specs` over this set would bind anew (those
    /// [`Self::changed_since`] would give after [`Self::bind`]), without binding anything.
    pub fn rebinds(&self, specs: &BTreeMap<String, SocketSpec>) -> BTreeSet<String> {
        specs
            .iter()
            .filter(|(name, spec)| {
                let mine = self.bound.get(*name);
                if mine.is_some_and(|b| b.spec == **spec) {
                    return false;
                }
                match (self.at_same_place(name, spec), mine) {
                    (Some(old), Some(mine)) => !Arc::ptr_eq(&old.fd, &mine.fd),
                    _ => true,
                }
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The specs of the bound sockets, by name.
    pub fn specs(&self) -> BTreeMap<String, SocketSpec> {
        self.bound
            .iter()
            .map(|(n, b)| (n.clone(), b.spec.clone()))
            .collect()
    }

    /// What binding `new` over this set would do: sockets added, removed and changed.
    pub fn plan(&self, new: &BTreeMap<String, SocketSpec>) -> SocketChanges {
        SocketChanges {
            added: new
                .keys()
                .filter(|n| !self.bound.contains_key(*n))
                .cloned()
                .collect(),
            removed: self
                .bound
                .keys()
                .filter(|n| !new.contains_key(*n))
                .cloned()
                .collect(),
            changed: new
                .iter()
                .filter(|(n, s)| self.bound.get(*n).is_some_and(|b| b.spec != **s))
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }
}

/// Sockets a new config adds, removes and changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Takes over `old`'s fd for `spec`, which listens at the same place with other
/// options: a new backlog (`listen` again) and mode.
fn adopt(old: &Bound, spec: &SocketSpec) -> Result<Bound, String> {
    let sock = socket2::SockRef::from(old.fd.as_ref());
    sock.listen(spec.backlog as i32)
        .map_err(|e| format!("cannot change the backlog: {e}"))?;
    if let Endpoint::Unix {
        path,
        mode: Some(mode),
    } = &spec.endpoint
    {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| format!("cannot change the mode: {e}"))?;
    }
    Ok(Bound {
        spec: spec.clone(),
        ..old.clone()
    })
}

/// True when a process listens on the unix socket at `path`. The connect does not wait:
/// a listener whose queue is full counts as live.
fn listened_on(path: &Path) -> bool {
    let Ok(sock) = Socket::new(Domain::UNIX, Type::STREAM, None) else {
        return false;
    };
    let Ok(addr) = SockAddr::unix(path) else {
        return false;
    };
    if sock.set_nonblocking(true).is_err() {
        return false;
    }
    match sock.connect(&addr) {
        Ok(()) => true,
        Err(e) => matches!(
            e.raw_os_error(),
            Some(nix::libc::EAGAIN) | Some(nix::libc::EINPROGRESS)
        ),
    }
}

/// The socket as an fd above 0, 1 and 2 (which a child's stdio replaces before the
/// sockets are moved into place), close-on-exec.
fn above_stdio(sock: Socket) -> Result<OwnedFd, String> {
    let fd = OwnedFd::from(sock);
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // std duplicates to 3 or above, close-on-exec.
    fd.try_clone()
        .map_err(|e| format!("cannot move the socket above fd 2: {e}"))
}

/// Binds one socket and listens on it.
fn bind_one(spec: &SocketSpec) -> Result<Bound, String> {
    match &spec.endpoint {
        Endpoint::Tcp { host, port } => bind_tcp(spec, host, *port),
        Endpoint::Unix { path, mode } => bind_unix(spec, path, *mode),
    }
}

/// A bind error in words, with what to do.
fn bind_failed(e: &io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "another process (or another socket of this config) listens there; stop it, \
             pick another port, or set reuseport = true on both"
        }
        io::ErrorKind::PermissionDenied => {
            "the agent's user may not bind it (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE; a path needs write access to its directory)"
        }
        io::ErrorKind::AddrNotAvailable => "no interface of this machine has that address",
        _ => "check the address",
    };
    format!("cannot bind it: {e}; {hint}")
}

fn bind_tcp(spec: &SocketSpec, host: &str, port: u16) -> Result<Bound, String> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{host:?} is not an IP address"))?;
    let addr = SocketAddr::new(ip, port);
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    let setup = || -> io::Result<()> {
        sock.set_reuse_address(true)?;
        if addr.is_ipv6() {
            // One family per socket, whatever net.ipv6.bindv6only says: "::" is IPv6 only.
            sock.set_only_v6(true)?;
        }
        if spec.reuseport {
            sock.set_reuse_port(true)?;
        }
        Ok(())
    };
    setup().map_err(|e| format!("cannot set the socket's options: {e}"))?;
    sock.bind(&SockAddr::from(addr))
        .map_err(|e| bind_failed(&e))?;
    sock.listen(spec.backlog as i32)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    Ok(Bound {
        spec: spec.clone(),
        fd: Arc::new(above_stdio(sock)?),
        address: local.to_string(),
        _unlink: None,
    })
}

fn bind_unix(spec: &SocketSpec, path: &Path, mode: Option<u32>) -> Result<Bound, String> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(format!(
            "directory {} does not exist; create it (the agent does not)",
            dir.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A socket file left by an earlier run is replaced; a live one is not.
            if listened_on(path) {
                return Err(format!(
                    "{shown} is in use: a process listens on it; stop it or pick another path"
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot replace the old socket file {shown}: {e}"))?;
        }
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; remove it or pick another path"
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot check {shown}: {e}")),
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    let addr = SockAddr::unix(path).map_err(|e| format!("bad path {shown}: {e}"))?;
    sock.bind(&addr).map_err(|e| bind_failed(&e))?;
    // From here on the file is ours: removed again if anything below fails.
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot read the new socket file {shown}: {e}"))?;
    let unlink = Arc::new(UnlinkOnDrop {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    });
    if let Some(mode) = mode {
        // Before listen: nobody can connect while the file has the umask's mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set mode {mode:04o} on {shown}: {e}"))?;
    }
    sock.listen(spec.backlog as i32)
        .map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    Ok(Bound {
        spec: spec.clone(),
        fd: Arc::new(above_stdio(sock)?),
        address: shown.to_string(),
        _unlink: Some(unlink),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: Option<&str>, port: i64) -> SocketOptions {
        SocketOptions {
            host: host.map(Into::into),
            port: Some(port),
            ..Default::default()
        }
    }

    fn errors(name: &str, o: &SocketOptions) -> Vec<String> {
        SocketSpec::from_options(name, o)
            .unwrap_err()
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect()
    }

    #[test]
    fn tcp_and_unix_specs_are_validated() {
        let s = SocketSpec::from_options("web", &tcp(None, 8080)).unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!((s.backlog, s.reuseport), (DEFAULT_BACKLOG, false));
        let s = SocketSpec::from_options("v6", &tcp(Some("[::1]"), 0)).unwrap();
        assert_eq!(s.endpoint.to_string(), "[::1]:0");
        let s = SocketSpec::from_options("any", &tcp(Some("::"), 80)).unwrap();
        assert_eq!(s.endpoint.to_string(), "[::]:80");
        let s = SocketSpec::from_options("h", &tcp(Some("LocalHost"), 80)).unwrap();
        assert_eq!(s.endpoint.to_string(), "127.0.0.1:80");
        let unix = SocketOptions {
            path: Some("/run/web.sock".into()),
            mode: Some("0660".into()),
            backlog: Some(1024),
            reuseport: Some(true),
            ..Default::default()
        };
        let s = SocketSpec::from_options("u", &unix).unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Unix {
                path: "/run/web.sock".into(),
                mode: Some(0o660)
            }
        );
        assert_eq!((s.backlog, s.reuseport), (1024, true));

        let cases: &[(&str, SocketOptions, &str)] = &[
            (
                "web",
                tcp(None, 65536),
                "port: 65536 is out of range; use 0 to 65535",
            ),
            ("web", tcp(None, -1), "port: -1 is out of range"),
            (
                "web",
                tcp(Some("no such host!"), 80),
                "host: \"no such host!\" is not an IP address",
            ),
            (
                "web",
                SocketOptions {
                    host: Some("::1".into()),
                    ..Default::default()
                },
                "port: missing",
            ),
            ("web", SocketOptions::default(), "says nowhere to listen"),
            (
                "web",
                SocketOptions {
                    path: Some("/a.sock".into()),
                    port: Some(1),
                    ..Default::default()
                },
                "has both path and host/port",
            ),
            (
                "web",
                SocketOptions {
                    path: Some("rel.sock".into()),
                    ..Default::default()
                },
                "path: \"rel.sock\" is not an absolute path",
            ),
            (
                "web",
                SocketOptions {
                    path: Some(format!("/{}", "a".repeat(200))),
                    ..Default::default()
                },
                "longer than a unix socket path may be (107)",
            ),
            (
                "web",
                SocketOptions {
                    path: Some("/run/../x.sock".into()),
                    ..Default::default()
                },
                "holds '..'",
            ),
            (
                "web",
                SocketOptions {
                    path: Some("/x.sock".into()),
                    mode: Some("0999".into()),
                    ..Default::default()
                },
                "mode: \"0999\" is not an octal mode",
            ),
            (
                "web",
                SocketOptions {
                    path: Some("/x.sock".into()),
                    mode: Some("4755".into()),
                    ..Default::default()
                },
                "mode: \"4755\" is out of range",
            ),
            (
                "web",
                SocketOptions {
                    mode: Some("0660".into()),
                    ..tcp(None, 80)
                },
                "mode: applies to unix sockets only",
            ),
            (
                "web",
                SocketOptions {
                    backlog: Some(0),
                    ..tcp(None, 80)
                },
                "backlog: 0 is out of range; use 1 to 65535",
            ),
            ("bad name", tcp(None, 80), "cannot be a socket name"),
            ("_x", tcp(None, 80), "reserved"),
        ];
        for (name, o, needle) in cases {
            let e = errors(name, o).join("\n");
            assert!(e.contains(needle), "{name} {o:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o777"), Ok(0o777));
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("01777").is_err());
    }

    #[test]
    fn expands_socket_fds_in_list_order() {
        let list = vec!["web".to_owned(), "admin".to_owned()];
        assert_eq!(expand("--fd=$(sockets.web)", &list), "--fd=3");
        assert_eq!(
            expand("$(circus.sockets.admin),$(sockets.web)", &list),
            "4,3"
        );
        assert_eq!(expand("$(sockets.webx)", &list), "$(sockets.webx)");
        assert_eq!(expand("$(sockets.web)", &[]), "$(sockets.web)");
        assert_eq!(expand("plain", &list), "plain");
    }

    #[test]
    fn a_watcher_list_is_checked() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_watcher_list(&list(&["a", "b"]), ["$(sockets.b)"]).is_empty());
        let e = check_watcher_list(&list(&["a", "a"]), []);
        assert!(e[0].contains("twice"), "{e:?}");
        let e = check_watcher_list(&list(&["a b"]), []);
        assert!(e[0].contains("cannot be a socket name"), "{e:?}");
        let e = check_watcher_list(&list(&["a"]), ["--fd=$(circus.sockets.c)"]);
        assert!(
            e[0].contains("socket 'c' is not in this watcher's sockets"),
            "{e:?}"
        );
        let many: Vec<String> = (0..=MAX_PER_WATCHER).map(|i| format!("s{i}")).collect();
        assert!(check_watcher_list(&many, [])[0].contains("more than 64"));
    }

    fn one(s: &SocketSpec) -> BTreeMap<String, SocketSpec> {
        BTreeMap::from([(s.name.clone(), s.clone())])
    }

    #[test]
    fn binds_keeps_and_rebinds() {
        let web = SocketSpec::from_options("web", &tcp(None, 0)).unwrap();
        let set = SocketSet::bind(&one(&web), &SocketSet::default()).unwrap();
        let b = set.get("web").unwrap();
        assert_eq!(b.kind(), "tcp");
        let port: u16 = b.address.rsplit(':').next().unwrap().parse().unwrap();
        assert_ne!(port, 0, "the real port is shown");
        // Close-on-exec in the agent.
        let flags = nix::fcntl::fcntl(b.fd.as_ref(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::fcntl::FdFlag::FD_CLOEXEC.bits(), 0);
        // The same spec keeps its socket; another backlog keeps the fd too.
        let again = SocketSet::bind(&one(&web), &set).unwrap();
        assert!(Arc::ptr_eq(&again.get("web").unwrap().fd, &b.fd));
        assert!(again.changed_since(&set).is_empty());
        let wider = SocketSpec {
            backlog: 512,
            ..web.clone()
        };
        let relisted = SocketSet::bind(&one(&wider), &set).unwrap();
        assert!(Arc::ptr_eq(&relisted.get("web").unwrap().fd, &b.fd));
        assert!(relisted.changed_since(&set).is_empty());
        assert_eq!(relisted.get("web").unwrap().spec.backlog, 512);
        // Another port is another socket.
        let moved = SocketSpec::from_options("web", &tcp(None, 0)).unwrap();
        let moved = SocketSpec {
            reuseport: true,
            ..moved
        };
        let rebound = SocketSet::bind(&one(&moved), &set).unwrap();
        assert_eq!(
            rebound.changed_since(&set).into_iter().collect::<Vec<_>>(),
            ["web"]
        );
        // What a dry run foretells, without binding, is what binding does.
        assert!(set.rebinds(&one(&web)).is_empty());
        assert!(set.rebinds(&one(&wider)).is_empty());
        assert_eq!(set.rebinds(&one(&moved)), rebound.changed_since(&set));
        assert_eq!(set.specs(), one(&web));
        // Two sockets on port 0 have a port each: a new backlog of one keeps its own.
        let named = |n: &str| {
            let spec = SocketSpec {
                name: n.into(),
                ..web.clone()
            };
            (n.to_owned(), spec)
        };
        let two = BTreeMap::from([named("a"), named("b")]);
        let pair = SocketSet::bind(&two, &SocketSet::default()).unwrap();
        let mut deeper = two.clone();
        deeper.get_mut("b").unwrap().backlog = 512;
        assert!(pair.rebinds(&deeper).is_empty());
        let relisted = SocketSet::bind(&deeper, &pair).unwrap();
        assert!(relisted.changed_since(&pair).is_empty());
        for n in ["a", "b"] {
            assert!(Arc::ptr_eq(
                &relisted.get(n).unwrap().fd,
                &pair.get(n).unwrap().fd
            ));
        }
        let plan = set.plan(&one(&wider));
        assert_eq!(plan.changed, ["web"]);
        // A taken port: the error names the socket and the address; nothing is kept.
        let taken = SocketSpec::from_options("dup", &tcp(None, i64::from(port))).unwrap();
        let e = SocketSet::bind(&one(&taken), &SocketSet::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("[socket.dup] 127.0.0.1:{port}")) && e.contains("in use"),
            "{e}"
        );
    }

    #[test]
    fn unix_sockets_get_their_mode_and_replace_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let spec = SocketSpec::from_options(
            "u",
            &SocketOptions {
                path: Some(path.display().to_string()),
                mode: Some("0640".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let set = SocketSet::bind(&one(&spec), &SocketSet::default()).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o640);
        // A reload refused for another socket leaves this one as it was.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = SocketSpec::from_options(
            "busy",
            &tcp(None, i64::from(taken.local_addr().unwrap().port())),
        )
        .unwrap();
        let mut narrower = spec.clone();
        narrower.endpoint = Endpoint::Unix {
            path: path.clone(),
            mode: Some(0o600),
        };
        let both = BTreeMap::from([("u".to_owned(), narrower), ("busy".to_owned(), busy)]);
        assert!(SocketSet::bind(&both, &set).is_err());
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        // Renamed at the same path: the socket is kept, but counts as new for the name.
        let renamed = SocketSpec {
            name: "v".into(),
            ..spec.clone()
        };
        let adopted = SocketSet::bind(&one(&renamed), &set).unwrap();
        assert!(Arc::ptr_eq(
            &adopted.get("v").unwrap().fd,
            &set.get("u").unwrap().fd
        ));
        assert_eq!(set.rebinds(&one(&renamed)), adopted.changed_since(&set));
        drop(adopted);
        // In use: refused.
        let e = SocketSet::bind(&one(&spec), &SocketSet::default()).unwrap_err();
        assert!(e.to_string().contains("is in use"), "{e}");
        // Closed with its last holder: the file goes.
        drop(set);
        assert!(!path.exists());
        // A stale socket file is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let set = SocketSet::bind(&one(&spec), &SocketSet::default()).unwrap();
        assert!(set.contains("u"));
        drop(set);
        // A regular file is not.
        std::fs::write(&path, "data").unwrap();
        let e = SocketSet::bind(&one(&spec), &SocketSet::default()).unwrap_err();
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
