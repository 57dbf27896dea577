//! The desired state that survives an agent restart: every watcher's options and whether
//! it should run, plus the config file's options as last seen, so that an edit of the
//! file made while the agent was down wins over older runtime changes. Kept in
//! `state_dir/state.json`, mode 0600 (env values can be secrets), written atomically and
//! durably; the copy before the last write is kept as `state.json.prev`, and a
//! `state.json` that cannot be read is set aside for it.
//!
//! Also the rules for the agent's own directories: private to its user
//! ([`private_dir`]), and one agent per state dir ([`lock_dir`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use protocol::WatcherOptions;
use serde::{Deserialize, Serialize};

use crate::config::WatcherConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedWatcher {
    pub options: WatcherOptions,
    pub run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// The watchers as they were last, runtime changes included.
    pub watchers: BTreeMap<String, SavedWatcher>,
    /// The config file's watchers when the state was written.
    pub base: BTreeMap<String, WatcherOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use directory {path}: {source}; check that its parent exists and is writable")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing directory {path}: {reason}; {hint}")]
    UnsafeDir {
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error(
        "state dir {path} is in use by another agent ({}); stop that agent, \
         or give this one a state_dir of its own",
        .pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}"))
    )]
    Locked { path: PathBuf, pid: Option<u32> },
}

/// Makes sure `dir` is private to this user: created (mode 0700, missing parents too)
/// when missing; refused when owned by another user or writable by group or others,
/// where anyone else could plant files or links for the agent to write through.
pub fn private_dir(dir: &Path) -> Result<(), StateError> {
    let err = |source| StateError::Dir {
        path: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?,
        Err(e) => return Err(err(e)),
    }
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |reason: String, hint: String| StateError::UnsafeDir {
        path: dir.to_owned(),
        reason,
        hint,
    };
    // A link someone else planted would send the agent's files where they chose.
    let link = std::fs::symlink_metadata(dir).map_err(err)?;
    if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
        return Err(unsafe_dir(
            format!("it is a symbolic link owned by uid {}", link.uid()),
            "point state_dir or log_dir at the real directory".into(),
        ));
    }
    let m = std::fs::metadata(dir).map_err(err)?;
    if !m.is_dir() {
        return Err(unsafe_dir(
            "it is not a directory".into(),
            "point state_dir or log_dir at a directory".into(),
        ));
    }
    if m.uid() != me {
        return Err(unsafe_dir(
            format!(
                "it belongs to uid {}, not to this agent's uid {me}",
                m.uid()
            ),
            format!("chown it to uid {me} or use another directory"),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            format!(
                "it is writable by {} (mode {:o})",
                if m.mode() & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                m.mode() & 0o7777
            ),
            format!(
                "run `chmod go-w {}` or use another directory",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// An exclusive lock on an agent's state dir, held while this value lives.
#[derive(Debug)]
pub struct DirLock {
    _lock: Flock<File>,
}

/// Locks `dir` for this agent (flock on `dir/agent.lock`, which holds the pid), so that
/// two agents never share a state dir: the second gets [`StateError::Locked`] with the
/// first one's pid.
pub fn lock_dir(dir: &Path) -> Result<DirLock, StateError> {
    let path = dir.join("agent.lock");
    let err = |source| StateError::Dir {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let me = std::process::id();
            lock.set_len(0)
                .and_then(|()| lock.write_all(format!("{me}\n").as_bytes()))
                .map_err(err)?;
            Ok(DirLock { _lock: lock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(StateError::Locked {
                path: dir.to_owned(),
                pid: text.trim().parse().ok(),
            })
        }
        Err((_, e)) => Err(err(e.into())),
    }
}

/// Fsyncs a directory, so that a rename in it survives a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file (mode 0600) is
/// written and fsynced, renamed over `path`, and the directory fsynced. With `keep`, the
/// file being replaced stays there (as a hard link) as the last good copy.
pub fn write_durably(path: &Path, bytes: &[u8], keep: Option<&Path>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    if let Some(keep) = keep {
        let mut link_name = keep.file_name().unwrap_or_default().to_owned();
        link_name.push(".tmp");
        let link = dir.join(link_name);
        let _ = std::fs::remove_file(&link);
        match std::fs::hard_link(path, &link) {
            Ok(()) => {
                std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o600))?;
                std::fs::rename(&link, keep)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Reads and writes `state.json` in a state dir.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
    base: BTreeMap<String, WatcherOptions>,
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            path: dir.join("state.json"),
            base: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last good copy, kept by each save.
    pub fn prev_path(&self) -> PathBuf {
        self.path.with_extension("json.prev")
    }

    /// The saved state, or `None` when there is none yet. A file that is not valid (cut
    /// short, damaged) is renamed `<name>.corrupt-<unix time>` and the last good copy is
    /// used instead; when that is not valid either, the agent starts from its config.
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        let prev = self.prev_path();
        for path in [&self.path, &prev] {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                // No state.json: a first start, or removed on purpose to start afresh.
                Err(e) if e.kind() == io::ErrorKind::NotFound && *path == self.path => {
                    return Ok(None)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(source) => {
                    return Err(StateError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            };
            match serde_json::from_slice::<SavedState>(&bytes) {
                Ok(state) => {
                    if *path != self.path {
                        tracing::warn!(
                            "starting from the last good state {}, which may lack the \
                             last runtime change",
                            path.display()
                        );
                    }
                    return Ok(Some(state));
                }
                Err(e) => {
                    let aside = set_aside(path);
                    tracing::error!(
                        "state file {} is not valid ({e}); {}",
                        path.display(),
                        match &aside {
                            Ok(to) => format!("moved it to {}", to.display()),
                            Err(e) => format!("cannot move it away: {e}"),
                        }
                    );
                }
            }
        }
        tracing::warn!("no valid saved state is left: starting from the config alone");
        Ok(None)
    }

    /// Remembers the config file's watchers as the base of later saves.
    pub fn set_base(&mut self, config: &BTreeMap<String, WatcherConfig>) {
        self.base = config
            .iter()
            .map(|(n, w)| (n.clone(), w.to_options()))
            .collect();
    }

    /// Writes the state atomically and durably, keeping the one it replaces.
    pub fn save(
        &self,
        watchers: &BTreeMap<String, (WatcherOptions, bool)>,
    ) -> Result<(), StateError> {
        let state = SavedState {
            watchers: watchers
                .iter()
                .map(|(n, (options, run))| {
                    (
                        n.clone(),
                        SavedWatcher {
                            options: options.clone(),
                            run: *run,
                        },
                    )
                })
                .collect(),
            base: self.base.clone(),
        };
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
            write_durably(&self.path, &bytes, Some(&self.prev_path()))
        };
        write().map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Renames a damaged file `<name>.corrupt-<unix time>` and returns the new path.
fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let to = path.with_file_name(name);
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// The watchers to run at start, and the ones that should stay stopped: the config,
/// with the saved runtime changes on top where the config did not change since.
pub fn merge(
    config: &BTreeMap<String, WatcherConfig>,
    saved: Option<SavedState>,
) -> (BTreeMap<String, WatcherConfig>, BTreeSet<String>) {
    let Some(saved) = saved else {
        return (config.clone(), BTreeSet::new());
    };
    let mut watchers = BTreeMap::new();
    let mut stopped = BTreeSet::new();
    for (name, cfg) in config {
        // Compared as configs too: an older agent spelled some options otherwise
        // (health_cmd and health_timeout, now `ready`).
        let unchanged = saved.base.get(name).is_some_and(|base| {
            *base == cfg.to_options()
                || WatcherConfig::from_options(name, base).is_ok_and(|b| b == *cfg)
        });
        if !unchanged {
            watchers.insert(name.clone(), cfg.clone());
            continue;
        }
        match saved.watchers.get(name) {
            // Removed at runtime.
            None => {}
            Some(sw) => match WatcherConfig::from_options(name, &sw.options) {
                Ok(w) => {
                    if !sw.run {
                        stopped.insert(name.clone());
                    }
                    watchers.insert(name.clone(), w);
                }
                Err(problems) => {
                    tracing::warn!(watcher = %name, "saved state is invalid ({}); using the config", problems[0]);
                    watchers.insert(name.clone(), cfg.clone());
                }
            },
        }
    }
    for (name, sw) in &saved.watchers {
        if config.contains_key(name) || saved.base.contains_key(name) {
            continue;
        }
        // Added at runtime.
        match WatcherConfig::from_options(name, &sw.options) {
            Ok(w) => {
                if !sw.run {
                    stopped.insert(name.clone());
                }
                watchers.insert(name.clone(), w);
            }
            Err(problems) => {
                tracing::warn!(watcher = %name, "saved watcher is invalid and is dropped: {}", problems[0]);
            }
        }
    }
    (watchers, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, cmd: &str, n: u32) -> WatcherConfig {
        WatcherConfig::from_options(
            name,
            &WatcherOptions {
                cmd: Some(cmd.into()),
                numprocesses: Some(n),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn map(ws: &[WatcherConfig]) -> BTreeMap<String, WatcherConfig> {
        ws.iter().map(|w| (w.name.clone(), w.clone())).collect()
    }

    #[test]
    fn runtime_changes_survive_and_config_edits_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::new(dir.path());
        let config = map(&[
            w("a", "sleep", 1),
            w("b", "sleep", 1),
            w("gone", "sleep", 1),
        ]);
        store.set_base(&config);
        // At runtime: a resized to 3 and stopped, b unchanged, gone removed, extra added.
        let mut running = BTreeMap::new();
        running.insert("a".to_string(), (w("a", "sleep", 3).to_options(), false));
        running.insert("b".to_string(), (w("b", "sleep", 1).to_options(), true));
        running.insert(
            "extra".to_string(),
            (w("extra", "cat", 2).to_options(), true),
        );
        store.save(&running).unwrap();
        let saved = store.load().unwrap();

        // Same config: runtime state comes back.
        let (ws, stopped) = merge(&config, saved.clone());
        assert_eq!(ws["a"].command.numprocesses, 3);
        assert!(stopped.contains("a"));
        assert!(!ws.contains_key("gone"));
        assert_eq!(ws["extra"].command.cmd, "cat");

        // The file changed b while the agent was down: the file wins for b.
        let edited = map(&[
            w("a", "sleep", 1),
            w("b", "sleep", 4),
            w("gone", "sleep", 1),
        ]);
        let (ws, _) = merge(&edited, saved);
        assert_eq!(ws["b"].command.numprocesses, 4);
        assert_eq!(ws["a"].command.numprocesses, 3);
    }

    /// A state written by an agent that spelled the readiness check `health_cmd` and
    /// `health_timeout` (and wrote `health_timeout` for every watcher) still matches
    /// the same config, so its runtime changes come back.
    #[test]
    fn a_state_with_the_older_spelling_of_checks_still_matches_its_config() {
        let cfg = |n: u32| {
            WatcherConfig::from_options(
                "a",
                &WatcherOptions {
                    cmd: Some("sleep".into()),
                    numprocesses: Some(n),
                    health_cmd: Some(vec!["true".into()]),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let older = |c: &WatcherConfig| {
            let mut o = c.to_options();
            o.ready = None;
            o.health_cmd = Some(vec!["true".into()]);
            o.health_timeout = Some("30s".into());
            o
        };
        let config = map(&[cfg(1)]);
        let saved = SavedState {
            watchers: [(
                "a".to_string(),
                SavedWatcher {
                    options: older(&cfg(3)),
                    run: true,
                },
            )]
            .into(),
            base: [("a".to_string(), older(&cfg(1)))].into(),
        };
        let (ws, _) = merge(&config, Some(saved));
        assert_eq!(ws["a"], cfg(3));
    }

    #[test]
    fn no_state_means_the_config() {
        let config = map(&[w("a", "sleep", 1)]);
        let (ws, stopped) = merge(&config, None);
        assert_eq!(ws, config);
        assert!(stopped.is_empty());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StateStore::new(dir.path()).load().unwrap(), None);
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn saves_are_private_and_keep_the_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let one = |n| BTreeMap::from([("a".to_string(), (w("a", "sleep", n).to_options(), true))]);
        store.save(&one(1)).unwrap();
        assert_eq!(files(dir.path()), ["state.json"]);
        store.save(&one(2)).unwrap();
        assert_eq!(files(dir.path()), ["state.json", "state.json.prev"]);
        for f in ["state.json", "state.json.prev"] {
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let n = |s: Option<SavedState>| s.unwrap().watchers["a"].options.numprocesses;
        assert_eq!(n(store.load().unwrap()), Some(2));

        // Torn: set aside, and the copy before the last save is used.
        let full = std::fs::read(store.path()).unwrap();
        std::fs::write(store.path(), &full[..full.len() / 2]).unwrap();
        assert_eq!(n(store.load().unwrap()), Some(1));
        let names = files(dir.path());
        assert!(!names.contains(&"state.json".to_string()), "{names:?}");
        assert!(
            names.iter().any(|f| f.starts_with("state.json.corrupt-")),
            "{names:?}"
        );

        // Both damaged: the config alone, nothing fails.
        std::fs::write(store.path(), "{oops").unwrap();
        std::fs::write(store.prev_path(), "").unwrap();
        assert_eq!(store.load().unwrap(), None);
        assert!(!store.path().exists() && !store.prev_path().exists());
    }

    #[test]
    fn saves_take_milliseconds() {
        // Figures for the docs: each runtime change costs one durable save.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let many: BTreeMap<_, _> = (0..100)
            .map(|i| (format!("w{i}"), (w("w", "sleep", 1).to_options(), true)))
            .collect();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            store.save(&many).unwrap();
        }
        let each = t.elapsed() / 20;
        eprintln!("save of 100 watchers: {each:?}");
        assert!(each < std::time::Duration::from_secs(1));
    }

    #[test]
    fn dirs_must_be_private() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        private_dir(&fresh).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!((mode(&fresh), mode(&tmp.path().join("a"))), (0o700, 0o700));
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o757)).unwrap();
        let e = private_dir(&fresh).unwrap_err().to_string();
        assert!(
            e.contains("writable by others (mode 757)") && e.contains("chmod go-w"),
            "{e}"
        );
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = private_dir(&fresh).unwrap_err().to_string();
        assert!(e.contains("writable by its group"), "{e}");
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&fresh).unwrap();
        if nix::unistd::geteuid().is_root() {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&fresh, &link).unwrap();
            private_dir(&link).unwrap();
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &link,
                Some(nobody),
                None,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let e = private_dir(&link).unwrap_err().to_string();
            assert!(e.contains("symbolic link owned by uid 65534"), "{e}");
            nix::unistd::chown(&fresh, Some(nobody), None).unwrap();
            let e = private_dir(&fresh).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
    }

    #[test]
    fn one_agent_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err();
        assert!(
            matches!(e, StateError::Locked { pid: Some(p), .. } if p == std::process::id()),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
