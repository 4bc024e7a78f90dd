//! Config changes while running: validate → apply → persist, with a history to roll back to and
//! a watch on the file for edits made on disk.
//!
//! Every change goes the same way, whoever makes it (admin API, rollback, file edit), and under
//! one lock from the first step to the last, so two changes never interleave and none is lost:
//! 0. with `If-Match`, the version the admin read must still be the current one (else
//!    [`ChangeError::Stale`]); an edit (add a key, revoke a token) is made to the current document
//!    inside the lock;
//! 1. the new [`ConfigDocument`] is expanded, parsed and validated — any problem refuses the whole
//!    change and nothing moves;
//! 2. it is applied atomically (the caller swaps the live config: new requests see it, running ones
//!    finish on the old one);
//! 3. it is written to the config file (a temporary file created 0600, synced, renamed over the old
//!    one, then the directory synced; the previous file is kept as `<file>.prev`), unless it came
//!    from the file. An edit made on disk that the watch has not applied yet loses to it, with a
//!    warning in the log;
//! 4. it is recorded in the history (version, time, who, what changed — a secret only as
//!    `changed`) and in an audit log line (target `gem_proxy::audit`).
//!
//! The file watch applies an edit only once it parses and has stayed the same across two polls,
//! so a file caught half-written is never applied; a change that turns auth off is logged as a
//! warning whoever makes it.

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
    "usage.enabled",
    "usage.path",
    "usage.replica_id",
    "usage.queue_capacity",
    "usage.flush_interval_milliseconds",
    "usage.share_interval_milliseconds",
    "state.",
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
    /// `If-Match` named a version that is no longer current: someone changed the config since
    /// it was read.
    #[error("the configuration is at version {current}, not {expected}: read it again and retry")]
    Stale {
        /// The version the request expected.
        expected: u64,
        /// The current version.
        current: u64,
    },
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
    /// Hash of a file content the watch has seen once: applied if the next poll sees it again.
    pending_file: Option<u64>,
    rejected: Option<RejectedEdit>,
    /// The config of the last applied change, to diff the next one against.
    applied: Option<Config>,
}

/// The running config's document, its history, and the file it lives in.
pub struct ConfigVersions {
    path: Option<PathBuf>,
    loader: ConfigLoader,
    state: Mutex<State>,
    /// Held from validation to the history record of each change (never by readers).
    write: Mutex<()>,
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
                pending_file: None,
                rejected: None,
                applied: None,
            }),
            write: Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
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
        self.update(who, None, running, |_| Ok(document), apply)
    }

    /// Makes the change `edit` computes from the current document, all under the write lock:
    /// with `if_match`, only while that version is still the current one.
    pub fn update<E: From<ChangeError>>(
        &self,
        who: &str,
        if_match: Option<u64>,
        running: &Config,
        edit: impl FnOnce(&ConfigDocument) -> Result<ConfigDocument, E>,
        apply: impl FnOnce(Config) -> Result<(), Vec<Problem>>,
    ) -> Result<Applied, E> {
        let _write = self.write_lock();
        let current = self.version();
        if let Some(expected) = if_match
            && expected != current
        {
            return Err(ChangeError::Stale { expected, current }.into());
        }
        let document = edit(&self.document())?;
        Ok(self.change_locked(document, who, running, apply, true)?)
    }

    /// Makes version `version` current again (as a new version).
    pub fn rollback(
        &self,
        version: u64,
        who: &str,
        if_match: Option<u64>,
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
        self.update(
            &format!("{who} (rollback to {version})"),
            if_match,
            running,
            |_| Ok::<_, ChangeError>(document),
            apply,
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
        let _write = self.write_lock();
        let bytes = std::fs::read(path).ok()?;
        let h = hash(&bytes);
        {
            let mut state = self.state();
            if state.file_hash == Some(h) {
                state.pending_file = None;
                return None;
            }
            // Seen for the first time: an editor may be half way through writing it. Apply it
            // only if the next poll finds the very same content.
            if state.pending_file != Some(h) {
                state.pending_file = Some(h);
                return None;
            }
            state.pending_file = None;
        }
        let result = String::from_utf8(bytes)
            .map_err(|_| ChangeError::Invalid(vec![Problem::new("", "the file is not UTF-8")]))
            .and_then(|text| {
                ConfigDocument::from_yaml(&text).map_err(|e| ChangeError::Invalid(e.problems()))
            })
            .and_then(|doc| self.change_locked(doc, "file", running, apply, false));
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

    /// Steps 1–4; the caller holds the write lock.
    fn change_locked(
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
        let previous = self.state().applied.clone();
        let previous = previous.as_ref().unwrap_or(running);
        let mut changes = diff(&masked_view(previous), &masked_view(&config));
        changes.extend(secret_changes(previous, &config));
        let restart_required: Vec<String> = changes
            .iter()
            .filter(|c| RESTART_KEYS.iter().any(|k| c.starts_with(k)))
            .cloned()
            .collect();
        if previous.auth.enabled && !config.auth.enabled {
            tracing::warn!(
                target: "gem_proxy::audit",
                who,
                "this change turns client authentication OFF (auth.enabled: false): requests are \
                 now served without a token"
            );
        }
        apply(config.clone()).map_err(ChangeError::Invalid)?;

        let mut state = self.state();
        state.applied = Some(config);
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
            let on_disk = std::fs::read(path).ok().map(|b| hash(&b));
            if on_disk.is_some() && on_disk != state.file_hash {
                tracing::warn!(
                    target: "gem_proxy::audit",
                    who,
                    version,
                    file = %path.display(),
                    "the config file was edited on disk and that edit was not applied yet; this \
                     change replaces it (the edited file is kept as <file>.prev)"
                );
            }
            state.pending_file = None;
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
/// Both files are created readable by the owner only: they hold secrets from their first byte.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    if let Ok(old) = std::fs::read(path) {
        write_private(&tmp, &old)?;
        std::fs::rename(&tmp, dir.join(format!("{file_name}.prev")))?;
    }
    write_private(&tmp, content)?;
    std::fs::rename(&tmp, path)?;
    // The rename itself is only durable once the directory is synced.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Creates `path` with mode 0600 (never wider, not even for a moment), writes and syncs it.
fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    // A temporary file left by a crash would make `create_new` fail.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// Secrets that changed while staying set: the masked views show `********` on both sides, so
/// [`diff`] cannot see them. Listed as `path: changed`, never with a value.
fn secret_changes(old: &Config, new: &Config) -> Vec<String> {
    let rotated = |a: &super::Secret, b: &super::Secret| !a.is_empty() && !b.is_empty() && a != b;
    let mut out = Vec::new();
    if rotated(&old.admin.token, &new.admin.token) {
        out.push("admin.token: changed".to_owned());
    }
    if rotated(&old.auth.jwt_secret, &new.auth.jwt_secret) {
        out.push("auth.jwt_secret: changed".to_owned());
    }
    for key in &new.gemini.api_keys {
        if let Some(before) = old.gemini.api_keys.iter().find(|k| k.id == key.id)
            && rotated(&before.key, &key.key)
        {
            out.push(format!("gemini.api_keys[{}].key: changed", key.id));
        }
    }
    out
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
            .rollback(1, "alice", None, &running, |c| {
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
            versions.rollback(42, "x", None, &running, |_| Ok(())),
            Err(ChangeError::UnknownVersion(42))
        ));
    }

    #[test]
    fn an_edit_on_disk_is_applied_and_a_broken_one_refused_and_reported() {
        let (_dir, path, versions, running) = setup();
        std::fs::write(&path, V1.replace("30", "45")).unwrap();
        // The first poll only notes it (it may be half-written); the second applies it.
        assert!(
            versions
                .check_file(&running, |_| panic!("too early"))
                .is_none()
        );
        let applied = versions.check_file(&running, |_| Ok(())).unwrap().unwrap();
        assert_eq!(applied.changes, ["gemini.timeout_seconds: 30 → 45"]);
        assert_eq!(versions.history()[1].who, "file");

        std::fs::write(&path, "gemini: { api_keys: [] }\n").unwrap();
        assert!(versions.check_file(&running, |_| panic!()).is_none());
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

    /// A file caught half-written — here a truncation that drops the `auth:` section and so
    /// would turn auth off — is never applied: only content that stayed the same across two
    /// polls is.
    #[test]
    fn a_torn_file_is_never_applied() {
        let (_dir, path, versions, running) = setup();
        let whole = format!(
            "{V1}auth:\n  enabled: true\n  jwt_secret: \"0123456789abcdef0123456789abcdef\"\n"
        );
        std::fs::write(&path, &whole).unwrap();
        assert!(versions.check_file(&running, |_| panic!()).is_none());
        let applied = versions.check_file(&running, |c| {
            assert!(c.auth.enabled);
            Ok(())
        });
        assert!(applied.unwrap().is_ok());
        // The editor writes again: the watch sees the first half (no auth section)…
        std::fs::write(&path, V1).unwrap();
        assert!(
            versions
                .check_file(&running, |_| panic!("half a file applied"))
                .is_none()
        );
        // …and by the next poll the rest has arrived: a new content, so it waits again.
        std::fs::write(&path, whole.replace("abcdef\"", "abcdee\"")).unwrap();
        assert!(
            versions
                .check_file(&running, |_| panic!("applied after one poll"))
                .is_none()
        );
        let applied = versions.check_file(&running, |c| {
            assert!(c.auth.enabled, "auth stays on");
            Ok(())
        });
        assert_eq!(
            applied.unwrap().unwrap().changes,
            ["auth.jwt_secret: changed"]
        );
        assert_eq!(versions.version(), 3);
    }

    #[test]
    fn a_stale_if_match_changes_nothing() {
        let (_dir, _path, versions, running) = setup();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        let err = versions
            .update(
                "alice",
                Some(7),
                &running,
                |_| Ok::<_, ChangeError>(doc),
                |_| panic!("must not apply"),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ChangeError::Stale {
                expected: 7,
                current: 1
            }
        ));
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        let applied = versions
            .update(
                "alice",
                Some(1),
                &running,
                |_| Ok::<_, ChangeError>(doc),
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(applied.version, 2);
    }

    /// Edits run on the current document inside the lock: many writers at once, none lost.
    #[test]
    fn concurrent_edits_are_all_kept() {
        let (_dir, path, versions, running) = setup();
        let versions = std::sync::Arc::new(versions);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (versions, running) = (versions.clone(), running.clone());
                std::thread::spawn(move || {
                    versions
                        .update(
                            &format!("admin-{i}"),
                            None,
                            &running,
                            |doc| {
                                let mut tree = doc.tree().clone();
                                tree["gemini"]["api_keys"].as_array_mut().unwrap().push(
                                    serde_json::json!({ "id": format!("k{i}"), "key": "AIzaX" }),
                                );
                                ConfigDocument::from_value(tree)
                                    .map_err(|e| ChangeError::Invalid(e.problems()))
                            },
                            |_| Ok(()),
                        )
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let keys = versions.document().tree()["gemini"]["api_keys"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(keys, 9);
        assert_eq!(versions.version(), 9);
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(
            (0..8).all(|i| on_disk.contains(&format!("k{i}"))),
            "{on_disk}"
        );
    }

    #[test]
    fn secret_rotations_are_recorded_as_changed_never_shown() {
        let (_dir, _path, versions, running) = setup();
        let doc = edited(&versions, |t| {
            t["gemini"]["api_keys"][0]["key"] = "AIzaROTATED".into();
            t["admin"] = serde_json::json!({ "token": "admin-token-0123456789" });
        });
        versions.change(doc, "alice", &running, |_| Ok(())).unwrap();
        let doc = edited(&versions, |t| {
            t["admin"]["token"] = "admin-token-9876543210".into();
        });
        let applied = versions.change(doc, "alice", &running, |_| Ok(())).unwrap();
        assert_eq!(applied.changes, ["admin.token: changed"]);
        let history = serde_json::to_string(&versions.history()).unwrap();
        assert!(
            history.contains("gemini.api_keys[a].key: changed"),
            "{history}"
        );
        assert!(
            !history.contains("AIzaROTATED") && !history.contains("0123456789"),
            "{history}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_written_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, versions, running) = setup();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        versions.change(doc, "alice", &running, |_| Ok(())).unwrap();
        for file in [path.clone(), path.with_extension("yaml.prev")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }

    /// An edit on disk not yet applied loses to an API write, visibly: it is kept as `.prev`
    /// (and a warning is logged), and the watch does not apply it afterwards.
    #[test]
    fn an_unapplied_edit_on_disk_loses_to_an_api_write_visibly() {
        let (dir, path, versions, running) = setup();
        std::fs::write(&path, V1.replace("30", "45")).unwrap();
        let doc = edited(&versions, |t| t["gemini"]["timeout_seconds"] = 99.into());
        versions.change(doc, "alice", &running, |_| Ok(())).unwrap();
        let prev = std::fs::read_to_string(dir.path().join("proxy.yaml.prev")).unwrap();
        assert!(prev.contains("timeout_seconds: 45"), "{prev}");
        assert!(versions.check_file(&running, |_| panic!()).is_none());
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
