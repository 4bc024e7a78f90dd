//! Live rotation of a certificate kept in files (own or self-signed): every
//! `server.tls.reload_interval_seconds` the two files are looked at (modification time, size,
//! inode) and, when either changed, loaded again. A good pair is served to every new connection
//! from then on (connections already open keep theirs); a broken one is logged and recorded in
//! `/health`, and the previous certificate stays.
//!
//! Looking at metadata instead of waiting for file events works the same for an editor's save, a
//! `mv`, and Kubernetes' atomic symlink swap of a mounted secret (what cert-manager causes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::TlsStatus;
use super::certificate::{LoadedCertificate, load_files, log_served};

/// Serves whichever certificate was loaded last, without a lock.
#[derive(Debug)]
pub(crate) struct FileResolver {
    current: ArcSwap<CertifiedKey>,
}

impl FileResolver {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: ArcSwap::new(key),
        }
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What identifies a version of a file on disk; `None` when it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

/// What one look at the files found.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Neither file changed.
    Unchanged,
    /// A new certificate is served from now on.
    Reloaded,
    /// The files changed, but not into something usable; the previous certificate stays (and
    /// the status says why).
    Rejected,
}

/// Watches `cert_path` and `key_path` and swaps the served certificate when they change.
#[derive(Debug)]
pub(crate) struct Reloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    seen: (Stamp, Stamp),
    resolver: Arc<FileResolver>,
    status: TlsStatus,
}

impl Reloader {
    /// Loads the files and starts serving them. The stamps are taken before reading, so a change
    /// made while loading is noticed by the next check.
    pub(crate) fn start(
        cert_path: &Path,
        key_path: &Path,
        status: TlsStatus,
    ) -> Result<(Self, Arc<FileResolver>), super::TlsError> {
        let seen = (stamp(cert_path), stamp(key_path));
        let LoadedCertificate { key, status: info } = load_files(cert_path, key_path)?;
        let resolver = Arc::new(FileResolver::new(key));
        status.set(info);
        Ok((
            Self {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
                seen,
                resolver: resolver.clone(),
                status,
            },
            resolver,
        ))
    }

    /// Looks at the files once; loads them again if either changed.
    pub(crate) fn check(&mut self) -> Checked {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if now == self.seen {
            return Checked::Unchanged;
        }
        self.seen = now;
        match load_files(&self.cert_path, &self.key_path) {
            Ok(LoadedCertificate { key, status }) => {
                log_served("TLS certificate reloaded; new connections get it", &status);
                self.resolver.current.store(key);
                self.status.set(status);
                Checked::Reloaded
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(
                    error = %reason,
                    "the replaced TLS certificate files cannot be used; still serving the previous certificate"
                );
                self.status.set_error(reason);
                Checked::Rejected
            }
        }
    }

    /// Checks every `interval`, forever.
    pub(crate) async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certificate::CertificateSource;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Replaces a file the way cert-manager's secret mounts and `mv` do: a new file renamed over
    /// the old one.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn served(resolver: &FileResolver) -> Vec<u8> {
        resolver.current.load().cert[0].to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_is_served_after_one_interval_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (a_cert, a_key) = pair("a.example");
        std::fs::write(&cert, &a_cert).unwrap();
        std::fs::write(&key, &a_key).unwrap();
        let status = TlsStatus::default();
        let (reloader, resolver) = Reloader::start(&cert, &key, status.clone()).unwrap();
        let first = served(&resolver);
        assert_eq!(status.certificate().unwrap().names, ["a.example"]);
        let interval = Duration::from_secs(10);
        let task = tokio::spawn(reloader.run(interval));

        let (b_cert, b_key) = pair("b.example");
        replace(&key, &b_key);
        replace(&cert, &b_cert);
        // Not before the interval is up ...
        tokio::time::sleep(interval / 2).await;
        assert_eq!(served(&resolver), first);
        // ... and right after it.
        tokio::time::sleep(interval).await;
        let second = served(&resolver);
        assert_ne!(second, first);
        let now = status.certificate().unwrap();
        assert_eq!(now.names, ["b.example"]);
        assert_eq!(now.source, CertificateSource::File);
        assert_eq!(now.last_error, None);

        // Half a certificate: refused, b stays, and /health says why.
        replace(&cert, &b_cert[..b_cert.len() / 2]);
        tokio::time::sleep(interval + Duration::from_secs(1)).await;
        assert_eq!(served(&resolver), second);
        let now = status.certificate().unwrap();
        assert_eq!(now.names, ["b.example"]);
        let err = now.last_error.clone().expect("the failure is recorded");
        assert!(
            err.contains("cert.pem") && err.contains("not valid PEM"),
            "{err}"
        );

        // A key that belongs to another certificate: refused too.
        let (_, c_key) = pair("c.example");
        replace(&cert, &b_cert);
        replace(&key, &c_key);
        tokio::time::sleep(interval + Duration::from_secs(1)).await;
        assert_eq!(served(&resolver), second);
        let err = status.certificate().unwrap().last_error.clone().unwrap();
        assert!(err.contains("does not belong"), "{err}");

        // Mended: served, and the error is gone.
        replace(&key, &b_key);
        tokio::time::sleep(interval + Duration::from_secs(1)).await;
        assert_eq!(served(&resolver), second);
        assert_eq!(status.certificate().unwrap().last_error, None);
        task.abort();
    }

    #[test]
    fn files_that_did_not_change_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (c, k) = pair("a.example");
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        let status = TlsStatus::default();
        let (mut reloader, _) = Reloader::start(&cert, &key, status.clone()).unwrap();
        assert!(matches!(reloader.check(), Checked::Unchanged));
        std::fs::remove_file(&cert).unwrap();
        assert!(matches!(reloader.check(), Checked::Rejected));
        let err = status.certificate().unwrap().last_error.clone().unwrap();
        assert!(err.contains("cannot read"), "{err}");
        // Still missing: nothing new to say.
        assert!(matches!(reloader.check(), Checked::Unchanged));
    }
}
