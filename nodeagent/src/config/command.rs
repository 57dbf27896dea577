//! What a watcher runs and how: the program and its arguments (`cmd`, `args`), how
//! many processes (`numprocesses`), their environment (`env`, `copy_env`), their
//! `working_dir`, and the user and group they run as (`uid`, `gid`, looked up here so
//! that an unknown name is a config error). Nothing here starts a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use protocol::{IdSpec, WatcherOptions};

use super::Problems;

/// A watcher's command and process keys, validated.
pub(super) struct Command {
    pub cmd: String,
    pub args: Vec<String>,
    pub numprocesses: u32,
    pub env: BTreeMap<String, String>,
    pub copy_env: bool,
    pub working_dir: Option<PathBuf>,
    pub uid_num: Option<u32>,
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
    match id {
        IdSpec::Id(n) => Ok(*n),
        IdSpec::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(format!("no user named {name:?} on this machine")),
            Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
        },
    }
}

fn resolve_group(id: &IdSpec) -> Result<u32, String> {
    match id {
        IdSpec::Id(n) => Ok(*n),
        IdSpec::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("no group named {name:?} on this machine")),
            Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
        },
    }
}
