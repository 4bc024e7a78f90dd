//! Config changes while running: validate → apply → persist, with a history to roll back to and
//! a watch on the file for edits made on disk.
//!
//! Every change goes the same way, whoever makes it (admin API, rollback, file edit):
//! 1. the new [`ConfigDocument`] is expanded, parsed and validated — any problem refuses the whole
//!    change and nothing moves;
//! 2. it is applied atomically (the caller swaps the live config: new requests see it, running ones
//!    finish on the old one);
//! 3. it is written to the config file (write to a temporary file, then rename over the old one;
//!    the previous file is kept as `<file>.prev`), unless it came from the file;
//! 4. it is recorded in the history (version, time, who, what changed — never a secret) and in an
//!    audit log line (target `gem_proxy::audit`).

use crate::time::now_rfc3339;
use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::document::{ConfigDocument, diff, masked_view};
use super::{Config, ConfigLoader, Problem};

/// Versions kept for rollback.
pub const HISTORY_LEN: usize = 20;

/// Keys whose change needs a restart to take effect (listeners and the runtime are built once).
const RESTART_KEYS: &[&str] = &[
    "server.host",
    "server.port",
    "server.workers",
    "server.max_connections",
    "server.header_read_timeout_seconds",
    "server.shutdown_grace_seconds",
    "server.tls",
    "metrics.enabled",
    "metrics.prometheus_port",
    "metrics.host",
    "log.",
];

/// One applied version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// Increasing from 1 (the config the process started with).
    pub version: u64,
    /// When it was applied (RFC 3339, UTC).
    pub time: String,
    /// Who applied it: `startup`, `file`, or the admin's name.
    pub who: String,
    /// What changed against the previous version, one line per setting (secrets masked).
    pub changes: Vec<String>,
}

/// The outcome of an applied change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Applied {
    /// The new version.
    pub version: u64,
    /// What changed.
    pub changes: Vec<String>,
    /// Changed settings that only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// A refused edit of the config file, kept for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedEdit {
    /// When it was seen (RFC 3339, UTC).
    pub time: String,
    /// Why it was refused.
    pub problems: Vec<String>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The new config is not valid; nothing changed.
    #[error("invalid configuration")]
    Invalid(Vec<Problem>),
    /// No such version in the history.
    #[error("no version {0} in the history")]
    UnknownVersion(u64),
    /// Applied, but the file could not be written.
    #[error("the configuration was applied but could not be written to {path}: {error}")]
    Persist {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
}

struct Entry {
    info: VersionInfo,
    document: ConfigDocument,
}

struct State {
    history: VecDeque<Entry>,
    /// Hash of the file content last read or written, to tell our own writes from edits.
    file_hash: Option<u64>,
    rejected: Option<RejectedEdit>,
}

/// The running config's document, its history, and the file it lives in.
pub struct ConfigVersions {
    path: Option<PathBuf>,
    loader: ConfigLoader,
    state: Mutex<State>,
}

impl std::fmt::Debug for ConfigVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigVersions")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ConfigVersions {
    /// Starts the history with the document the process started with (`path` is where it lives
    /// and where changes are written; `None` keeps changes in memory).
    pub fn new(path: Option<PathBuf>, loader: ConfigLoader, document: ConfigDocument) -> Self {
        let file_hash = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| hash(&b));
        let entry = Entry {
            info: VersionInfo {
                version: 1,
                time: now_rfc3339(),
                who: "startup".into(),
                changes: Vec::new(),
            },
            document,
        };
        Self {
            path,
            loader,
            state: Mutex::new(State {
                history: VecDeque::from([entry]),
                file_hash,
                rejected: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current document.
    pub fn document(&self) -> ConfigDocument {
        let state = self.state();
        state
            .history
            .back()
            .map(|e| e.document.clone())
            .expect("history is never empty")
    }

    /// The current version number.
    pub fn version(&self) -> u64 {
        self.state().history.back().map_or(0, |e| e.info.version)
    }

    /// The versions kept, oldest first.
    pub fn history(&self) -> Vec<VersionInfo> {
        self.state()
            .history
            .iter()
            .map(|e| e.info.clone())
            .collect()
    }

    /// The last refused edit of the file, if the file is still in that state.
    pub fn rejected_edit(&self) -> Option<RejectedEdit> {
        self.state().rejected.clone()
    }

    /// Validates `document` and, if good, hands the new config to `apply`, writes the file and
    /// records the version.
    pub fn change(
        &self,
        document: ConfigDocument,
        who: &str,
        running: &Config,
        apply: impl FnOnce(Config) -> Result<(), Vec<Problem>>,
    ) -> Result<Applied, ChangeError> {
        self.change_inner(document, who, running, apply, true)
    }

    /// Makes version `version` current again (as a new version).
    pub fn rollback(
        &self,
        version: u64,
        who: &str,
        running: &Config,
        apply: impl FnOnce(Config) -> Result<(), Vec<Problem>>,
    ) -> Result<Applied, ChangeError> {
        let document = self
            .state()
            .history
            .iter()
            .find(|e| e.info.version == version)
            .map(|e| e.document.clone())
            .ok_or(ChangeError::UnknownVersion(version))?;
        self.change_inner(
            document,
            &format!("{who} (rollback to {version})"),
            running,
            apply,
            true,
        )
    }

    /// Checks the file for an edit made on disk and applies it like any other change. An invalid
    /// edit keeps the running config and is remembered (see [`Self::rejected_edit`]).
    pub fn check_file(
        &self,
        running: &Config,
        apply: impl FnOnce(Config) -> Result<(), Vec<Problem>>,
    ) -> Option<Result<Applied, ChangeError>> {
        let path = self.path.as_deref()?;
        let bytes = std::fs::read(path).ok()?;
        let h = hash(&bytes);
        if self.state().file_hash == Some(h) {
            return None;
        }
        let result = String::from_utf8(bytes)
            .map_err(|_| ChangeError::Invalid(vec![Problem::new("", "the file is not UTF-8")]))
            .and_then(|text| {
                ConfigDocument::from_yaml(&text).map_err(|e| ChangeError::Invalid(e.problems()))
            })
            .and_then(|doc| self.change_inner(doc, "file", running, apply, false));
        let mut state = self.state();
        state.file_hash = Some(h);
        match &result {
            Err(ChangeError::Invalid(problems)) => {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                tracing::error!(
                    file = %path.display(),
                    problems = %problems.join("; "),
                    "config file edit refused; the running config is unchanged"
                );
                state.rejected = Some(RejectedEdit {
                    time: now_rfc3339(),
                    problems,
                });
            }
            _ => state.rejected = None,
        }
        Some(result)
    }

    fn change_inner(
        &self,
        document: ConfigDocument,
        who: &str,
        running: &Config,
        apply: impl FnOnce(Config) -> Result<(), Vec<Problem>>,
        persist: bool,
    ) -> Result<Applied, ChangeError> {
        let config = document
            .load(&self.loader)
            .map_err(|e| ChangeError::Invalid(e.problems()))?;
        let changes = diff(&masked_view(running), &masked_view(&config));
        let restart_required: Vec<String> = changes
            .iter()
            .filter(|c| RESTART_KEYS.iter().any(|k| c.starts_with(k)))
            .cloned()
            .collect();
        apply(config).map_err(ChangeError::Invalid)?;

        let mut state = self.state();
        let version = state.history.back().map_or(0, |e| e.info.version) + 1;
        let info = VersionInfo {
            version,
            time: now_rfc3339(),
            who: who.to_owned(),
            changes: changes.clone(),
        };
        tracing::info!(
            target: "gem_proxy::audit",
            who,
            version,
            changes = %changes.join("; "),
            restart_required = %restart_required.join("; "),
            "configuration applied"
        );
        state.history.push_back(Entry {
            info,
            document: document.clone(),
        });
        while state.history.len() > HISTORY_LEN {
            state.history.pop_front();
        }
        if persist && let Some(path) = &self.path {
            let text = document.to_yaml();
            write_atomically(path, text.as_bytes()).map_err(|e| ChangeError::Persist {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
            state.file_hash = Some(hash(text.as_bytes()));
            state.rejected = None;
        }
        Ok(Applied {
            version,
            changes,
            restart_required,
        })
    }
}

/// Keeps the old file as `<file>.prev`, writes the new content to a temporary file beside it,
/// syncs it, and renames it over the old one: readers see the old file or the new one, never half.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if path.exists() {
        std::fs::copy(path, dir.join(format!("{file_name}.prev")))?;
    }
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str =
        "gemini:\n  timeout_seconds: 30\n  api_keys:\n    - { id: a, key: \"${KEY_A}\" }\n";

    fn setup() -> (tempfile::TempDir, PathBuf, ConfigVersions, Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, V1).unwrap();
        let loader = ConfigLoader::with_env([("KEY_A", "AIzaA")]);
        let doc = ConfigDocument::from_yaml(V1).unwrap();
        let config = doc.load(&loader).unwrap();
        let versions = ConfigVersions::new(Some(path.clone()), loader, doc);
        (dir, path, versions, config)
    }

    fn edited(versions: &ConfigVersions, f: impl FnOnce(&mut serde_json::Value)) -> ConfigDocument {
        let mut tree = versions.document().tree().clone();
        f(&mut tree);
        ConfigDocument::from_value(tree).unwrap()
    }

    #[test]
    fn a_change_is_applied_written_atomically_and_recorded() {
        let (dir, path, versions, running) = setup();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        let mut applied_config = None;
        let applied = versions
            .change(doc, "alice", &running, |c| {
                applied_config = Some(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(applied.version, 2);
        assert_eq!(applied.changes, ["gemini.timeout_seconds: 30 → 99"]);
        assert!(applied.restart_required.is_empty());
        assert_eq!(applied_config.unwrap().gemini.timeout_seconds, 99);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(
            on_disk.contains("timeout_seconds: 99") && on_disk.contains("${KEY_A}"),
            "{on_disk}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("proxy.yaml.prev")).unwrap(),
            V1
        );
        let history = versions.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].who, "alice");
        // Our own write is not mistaken for an edit on disk.
        assert!(
            versions
                .check_file(&running, |_| panic!("not an edit"))
                .is_none()
        );
    }

    #[test]
    fn an_invalid_change_changes_nothing() {
        let (_dir, path, versions, running) = setup();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 0.into());
        let err = versions
            .change(doc, "bob", &running, |_| panic!("must not apply"))
            .unwrap_err();
        match err {
            ChangeError::Invalid(p) => {
                assert_eq!(p[0].to_string(), "gemini.timeout_seconds: must be > 0")
            }
            other => panic!("{other}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), V1);
        assert_eq!(versions.version(), 1);
    }

    #[test]
    fn rollback_restores_a_previous_version() {
        let (_dir, path, versions, running) = setup();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        versions.change(doc, "alice", &running, |_| Ok(())).unwrap();
        let mut restored = None;
        let applied = versions
            .rollback(1, "alice", &running, |c| {
                restored = Some(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(applied.version, 3);
        assert_eq!(restored.unwrap().gemini.timeout_seconds, 30);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("timeout_seconds: 30")
        );
        assert!(matches!(
            versions.rollback(42, "x", &running, |_| Ok(())),
            Err(ChangeError::UnknownVersion(42))
        ));
    }

    #[test]
    fn an_edit_on_disk_is_applied_and_a_broken_one_refused_and_reported() {
        let (_dir, path, versions, running) = setup();
        std::fs::write(&path, V1.replace("30", "45")).unwrap();
        let applied = versions.check_file(&running, |_| Ok(())).unwrap().unwrap();
        assert_eq!(applied.changes, ["gemini.timeout_seconds: 30 → 45"]);
        assert_eq!(versions.history()[1].who, "file");

        std::fs::write(&path, "gemini: { api_keys: [] }\n").unwrap();
        let result = versions
            .check_file(&running, |_| panic!("must not apply"))
            .unwrap();
        assert!(matches!(result, Err(ChangeError::Invalid(_))));
        let rejected = versions.rejected_edit().unwrap();
        assert_eq!(
            rejected.problems,
            ["gemini.api_keys: at least one key is required"]
        );
        assert_eq!(versions.version(), 2);
        // Seen once: not reported again until the file changes.
        assert!(versions.check_file(&running, |_| panic!()).is_none());
    }

    #[test]
    fn listener_changes_need_a_restart() {
        let (_dir, _path, versions, running) = setup();
        let doc = edited(&versions, |t| {
            t["server"] = serde_json::json!({ "port": 9999 })
        });
        let applied = versions.change(doc, "x", &running, |_| Ok(())).unwrap();
        assert_eq!(applied.restart_required, ["server.port: 8080 → 9999"]);
    }
}
