//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or any other) through rustls-acme.
//!
//! A background task drives rustls-acme's state machine: it loads the account key and the last
//! certificate from `server.tls.acme.cache_dir`, orders a certificate when there is none (or the
//! one there has used up two thirds of its life), and deploys it into the resolver that the proxy
//! port's handshakes read. A failed order is logged and retried with exponential backoff (1 s,
//! 2 s, 4 s, ... up to about 18 h) while the last good certificate keeps being served.
//!
//! Challenges: `tls-alpn-01` is answered on the proxy port itself (a handshake offering only the
//! `acme-tls/1` protocol gets the challenge certificate and nothing else); `http-01` by a
//! plain-HTTP listener on `server.tls.acme.http_port` (see [`Http01Service`]), which sends every
//! other request to HTTPS.
//!
//! Creating the account accepts the CA's terms of service.

use std::convert::Infallible;
use std::future::{Ready, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_core::Stream;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::{
    AccountCache, AcmeState, CertCache, EventError, EventOk, ResolvesServerCertAcme,
};

use super::certificate::{CertificateSource, CertificateStatus, log_served, provider};
use super::self_signed::write_file;
use super::{TlsError, TlsStatus};
use crate::body::GatewayBody;
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::error::google_error;

/// What the proxy port needs from ACME.
pub(crate) struct Acme {
    /// Serves the certificate obtained last (and the TLS-ALPN-01 challenge certificate).
    pub(crate) resolver: Arc<ResolvesServerCertAcme>,
    /// The TLS config for `acme-tls/1` handshakes, with `tls-alpn-01`.
    pub(crate) challenge_config: Option<Arc<ServerConfig>>,
    /// The driver of orders and renewals; run it in a task.
    pub(crate) driver: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Sets ACME up from `server.tls.acme`; nothing is sent to the CA until the driver runs.
pub(crate) fn start(cfg: &AcmeConfig, status: TlsStatus) -> Result<Acme, TlsError> {
    let client_config = Arc::new(directory_client(
        cfg.directory_ca_path.as_deref().map(Path::new),
    )?);
    let latest = Arc::new(Mutex::new(None));
    let cache = DiskCache {
        dir: PathBuf::from(&cfg.cache_dir),
        latest: latest.clone(),
    };
    let challenge = match cfg.challenge {
        AcmeChallenge::TlsAlpn01 => rustls_acme::UseChallenge::TlsAlpn01,
        AcmeChallenge::Http01 => rustls_acme::UseChallenge::Http01,
    };
    let state = rustls_acme::AcmeConfig::new_with_client_config(&cfg.domains, client_config)
        .contact(cfg.email.iter().map(|e| {
            if e.starts_with("mailto:") {
                e.clone()
            } else {
                format!("mailto:{e}")
            }
        }))
        .directory(cfg.directory())
        .cache(cache)
        .challenge_type(challenge)
        .state();
    let resolver = state.resolver();
    let challenge_config = (cfg.challenge == AcmeChallenge::TlsAlpn01)
        .then(|| state.challenge_rustls_config_with_provider(provider()));
    status.set(CertificateStatus::acme_pending(&cfg.domains));
    tracing::info!(
        directory = cfg.directory(),
        domains = ?cfg.domains,
        challenge = ?cfg.challenge,
        cache_dir = %cfg.cache_dir,
        "TLS certificates from ACME"
    );
    Ok(Acme {
        resolver,
        challenge_config,
        driver: Box::pin(drive(state, latest, status)),
    })
}

/// The client for the CA's directory: the public web roots, plus the CAs in `extra` (a private or
/// test CA such as Pebble).
pub(crate) fn directory_client(extra: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let bad = |reason: String| TlsError::Certificate {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("not usable as a CA certificate: {e}")))?;
        }
    }
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Polls rustls-acme's state forever: every step (cache load, order, renewal) ends in an event,
/// logged here and reflected in `/health`.
async fn drive(
    mut state: AcmeState<std::io::Error>,
    latest: Arc<Mutex<Option<Vec<u8>>>>,
    status: TlsStatus,
) {
    loop {
        let event = poll_fn(
            |cx: &mut Context<'_>| match Pin::new(&mut state).poll_next(cx) {
                Poll::Ready(Some(event)) => Poll::Ready(event),
                // The stream never ends; treat an end as pending forever.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            },
        )
        .await;
        let deployed = || {
            let pem = latest.lock().unwrap_or_else(|e| e.into_inner()).take();
            pem.and_then(|pem| describe(&pem))
        };
        match event {
            Ok(EventOk::DeployedCachedCert) => {
                if let Some(s) = deployed() {
                    log_served("serving the ACME certificate from the cache", &s);
                    status.set(s);
                }
            }
            Ok(EventOk::DeployedNewCert) => {
                tracing::info!("ACME: obtained a new certificate");
            }
            // The new certificate reaches the cache right after it is deployed.
            Ok(EventOk::CertCacheStore) => {
                if let Some(s) = deployed() {
                    log_served("serving the new ACME certificate", &s);
                    status.set(s);
                }
            }
            Ok(EventOk::AccountCacheStore) => {
                tracing::info!("ACME: account key stored");
            }
            Err(e) => {
                if let EventError::CertCacheStore(_) = &e
                    && let Some(s) = deployed()
                {
                    log_served("serving the new ACME certificate", &s);
                    status.set(s);
                }
                if let EventError::CachedCertParse(_) = &e {
                    latest.lock().unwrap_or_else(|e| e.into_inner()).take();
                }
                let reason = format!("ACME: {e}");
                tracing::warn!(
                    error = %reason,
                    "ACME step failed; retrying with backoff while the last good certificate (if any) is served"
                );
                status.set_error(reason);
            }
        }
    }
}

/// The status of a cached PEM (the private key, then the chain).
fn describe(pem: &[u8]) -> Option<CertificateStatus> {
    let leaf = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    CertificateStatus::of_leaf(&leaf, Some(CertificateSource::Acme)).ok()
}

/// rustls-acme's cache, on disk: files readable by the owner only (they hold private keys), and
/// the last certificate seen kept for [`drive`] to describe.
struct DiskCache {
    dir: PathBuf,
    latest: Arc<Mutex<Option<Vec<u8>>>>,
}

impl DiskCache {
    /// `<kind>-<hash of the names and the directory>`, so certificates for other domains or
    /// another CA never mix.
    fn path(&self, kind: &str, names: &[String], directory_url: &str) -> PathBuf {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for name in names {
            ctx.update(name.as_bytes());
            ctx.update(&[0]);
        }
        ctx.update(directory_url.as_bytes());
        let hash: String = ctx.finish().as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{kind}-{hash}"))
    }

    async fn read(path: PathBuf) -> std::io::Result<Option<Vec<u8>>> {
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn write(&self, path: PathBuf, bytes: &[u8]) -> std::io::Result<()> {
        let bytes = bytes.to_vec();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            write_file(&path, &bytes, 0o600).map_err(std::io::Error::other)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[async_trait]
impl CertCache for DiskCache {
    type EC = std::io::Error;

    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let pem = Self::read(self.path("cert", domains, directory_url)).await?;
        if let Some(pem) = &pem {
            *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(pem.clone());
        }
        Ok(pem)
    }

    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(cert.to_vec());
        self.write(self.path("cert", domains, directory_url), cert)
            .await
    }
}

#[async_trait]
impl AccountCache for DiskCache {
    type EA = std::io::Error;

    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        Self::read(self.path("account", contact, directory_url)).await
    }

    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.write(self.path("account", contact, directory_url), account)
            .await
    }
}

/// The plain-HTTP listener for `http-01`: answers `GET /.well-known/acme-challenge/{token}` with
/// the key authorization the CA expects, and redirects everything else to HTTPS on the proxy
/// port.
#[derive(Clone)]
pub struct Http01Service {
    resolver: Arc<ResolvesServerCertAcme>,
    https_port: u16,
}

impl std::fmt::Debug for Http01Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http01Service")
            .field("https_port", &self.https_port)
            .finish_non_exhaustive()
    }
}

impl Http01Service {
    pub(crate) fn new(resolver: Arc<ResolvesServerCertAcme>, https_port: u16) -> Self {
        Self {
            resolver,
            https_port,
        }
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<GatewayBody> {
        const PREFIX: &str = "/.well-known/acme-challenge/";
        if let Some(token) = req.uri().path().strip_prefix(PREFIX) {
            let key_auth = (req.method() == Method::GET)
                .then(|| self.resolver.get_http_01_key_auth(token))
                .flatten();
            return match key_auth {
                Some(key_auth) => {
                    let mut res = Response::new(GatewayBody::full(key_auth));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    res
                }
                None => google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such challenge"),
            };
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok());
        let Some(host) = host else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "this port serves ACME challenges; use HTTPS",
            );
        };
        let port = match self.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("https://{}{port}{path}", host.host());
        match HeaderValue::try_from(location) {
            Ok(location) => {
                let mut res = Response::new(GatewayBody::full(bytes::Bytes::new()));
                *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
                res.headers_mut().insert(header::LOCATION, location);
                res
            }
            Err(_) => google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "use HTTPS"),
        }
    }
}

impl<B> tower::Service<Request<B>> for Http01Service {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer(&req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_ca_is_checked_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(directory_client(None).is_ok());
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = directory_client(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = directory_client(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[tokio::test]
    async fn the_cache_keeps_private_files_and_separates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache {
            dir: dir.path().join("acme"),
            latest: Arc::default(),
        };
        let names = vec!["a.example".to_string()];
        assert_eq!(
            cache.load_cert(&names, "https://ca-1/dir").await.unwrap(),
            None
        );
        cache
            .store_cert(&names, "https://ca-1/dir", b"pem")
            .await
            .unwrap();
        assert_eq!(
            cache.load_cert(&names, "https://ca-1/dir").await.unwrap(),
            Some(b"pem".to_vec())
        );
        assert_eq!(
            cache.load_cert(&names, "https://ca-2/dir").await.unwrap(),
            None
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = cache.path("cert", &names, "https://ca-1/dir");
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = std::fs::metadata(dir.path().join("acme"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
