//! The desired state that survives an agent restart: every watcher's options and whether
//! it should run, plus the config file's options as last seen, so that an edit of the
//! file made while the agent was down wins over older runtime changes. Written
//! atomically (temporary file, then rename) to `state_dir/state.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
    #[error(
        "state file {path} is not valid ({source}); move it away to start from the config alone"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
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

    /// The saved state, or `None` when there is none yet.
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Parse {
                        path: self.path.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Remembers the config file's watchers as the base of later saves.
    pub fn set_base(&mut self, config: &BTreeMap<String, WatcherConfig>) {
        self.base = config
            .iter()
            .map(|(n, w)| (n.clone(), w.to_options()))
            .collect();
    }

    /// Writes the state atomically.
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
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            let bytes = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
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
        let unchanged = saved.base.get(name) == Some(&cfg.to_options());
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
        assert_eq!(ws["a"].numprocesses, 3);
        assert!(stopped.contains("a"));
        assert!(!ws.contains_key("gone"));
        assert_eq!(ws["extra"].cmd, "cat");

        // The file changed b while the agent was down: the file wins for b.
        let edited = map(&[
            w("a", "sleep", 1),
            w("b", "sleep", 4),
            w("gone", "sleep", 1),
        ]);
        let (ws, _) = merge(&edited, saved);
        assert_eq!(ws["b"].numprocesses, 4);
        assert_eq!(ws["a"].numprocesses, 3);
    }

    #[test]
    fn no_state_means_the_config() {
        let config = map(&[w("a", "sleep", 1)]);
        let (ws, stopped) = merge(&config, None);
        assert_eq!(ws, config);
        assert!(stopped.is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{oops").unwrap();
        let e = StateStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}
