//! What a watcher runs and how: the program and its arguments (`cmd`, `args`), how
//! many processes (`numprocesses`), their environment (`env`, `copy_env`), their
//! `working_dir`, and the user and group they run as (`uid`, `gid`, looked up here so
//! that an unknown name is a config error). Nothing here starts a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::{IdSpec, WatcherOptions};

use super::Problems;

/// A watcher's command and process keys, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The program to run (`cmd`).
    pub cmd: String,
    /// Its arguments, before `$(wid)` and `$(name)` are expanded.
    pub args: Vec<String>,
    /// How many processes run at once.
    pub numprocesses: u32,
    /// Variables set in each process's environment.
    pub env: BTreeMap<String, String>,
    /// Whether each process also gets the agent's own environment.
    pub copy_env: bool,
    /// The directory each process starts in; none: the agent's.
    pub working_dir: Option<PathBuf>,
    /// The user id each process runs as (`uid`, looked up); none: the agent's.
    pub uid_num: Option<u32>,
    /// The group id each process runs as (`gid`, looked up); none: the agent's.
    pub gid_num: Option<u32>,
}

/// Reads the command and process keys, with their defaults.
pub(super) fn from_options(o: &WatcherOptions, t: &mut Problems) -> Command {
    let cmd = o.cmd.clone().unwrap_or_default();
    if cmd.trim().is_empty() {
        t.at(
            "cmd",
            "missing; say which program to run, e.g. cmd = \"sleep\"",
        );
    }
    let numprocesses = o.numprocesses.unwrap_or(1);
    t.count("numprocesses", i64::from(numprocesses));
    let uid_num = o
        .uid
        .as_ref()
        .and_then(|u| resolve_user(u).map_err(|m| t.at("uid", m)).ok());
    let gid_num = o
        .gid
        .as_ref()
        .and_then(|g| resolve_group(g).map_err(|m| t.at("gid", m)).ok());
    if let Some(dir) = &o.working_dir {
        if !Path::new(dir).is_dir() {
            t.at("working_dir", format!("{dir:?} is not a directory"));
        }
    }
    Command {
        cmd,
        args: o.args.clone().unwrap_or_default(),
        numprocesses,
        env: o.env.clone().unwrap_or_default(),
        copy_env: o.copy_env.unwrap_or(false),
        working_dir: o.working_dir.as_ref().map(PathBuf::from),
        uid_num,
        gid_num,
    }
}

fn resolve_user(id: &IdSpec) -> Result<u32, String> {
    resolve(id, "user", |name| {
        Ok(nix::unistd::User::from_name(name)?.map(|u| u.uid.as_raw()))
    })
}

fn resolve_group(id: &IdSpec) -> Result<u32, String> {
    resolve(id, "group", |name| {
        Ok(nix::unistd::Group::from_name(name)?.map(|g| g.gid.as_raw()))
    })
}

/// A numeric id as given, or the id of the `kind` (user or group) that `by_name` finds.
fn resolve(
    id: &IdSpec,
    kind: &str,
    by_name: impl FnOnce(&str) -> nix::Result<Option<u32>>,
) -> Result<u32, String> {
    match id {
        IdSpec::Id(n) => Ok(*n),
        IdSpec::Name(name) => match by_name(name) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(format!("no {kind} named {name:?} on this machine")),
            Err(e) => Err(format!("cannot look up {kind} {name:?}: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_number_or_name() {
        let name = |s: &str| IdSpec::Name(s.into());
        assert_eq!(resolve_user(&IdSpec::Id(7)), Ok(7));
        assert_eq!(resolve_group(&IdSpec::Id(8)), Ok(8));
        assert_eq!(resolve_user(&name("root")), Ok(0));
        assert_eq!(resolve_group(&name("root")), Ok(0));
        assert_eq!(
            resolve_user(&name("no-such-user-here")),
            Err("no user named \"no-such-user-here\" on this machine".into())
        );
        assert_eq!(
            resolve_group(&name("no-such-group-here")),
            Err("no group named \"no-such-group-here\" on this machine".into())
        );
    }
}
