//! TLS on the proxy port (`server.tls`): TLS 1.3 and 1.2 through rustls with the aws-lc-rs
//! provider, ALPN `h2` and `http/1.1`, session tickets.
//!
//! Where the certificate comes from, first match wins:
//! 1. **ACME** (`server.tls.acme.enabled`): obtained and renewed from an ACME CA in the
//!    background, cached on disk (see `acme.rs`).
//! 2. **Own files** (`cert_path`, `key_path`): a PEM chain and a PEM key (PKCS#8, PKCS#1 or SEC1;
//!    RSA, ECDSA or Ed25519). Replacing them takes effect for new connections without a restart
//!    (see `reload.rs`); a broken replacement is refused and the previous certificate
//!    stays.
//! 3. **Self-signed**, when neither file exists: generated there once and reused (see
//!    `self_signed.rs`); its SHA-256 fingerprint is logged and in `/health`.
//!
//! The handshake runs in the connection's own task, never in the accept loop, and must finish
//! within `server.tls.handshake_timeout_seconds`. A client that speaks plain HTTP to the TLS port
//! gets a `400` in Google's error shape telling it to use `https://`, and its connection is
//! closed; anything else that is not TLS is closed at once.
//!
//! What is served is described by a [`CertificateStatus`] held in the gateway's [`TlsStatus`]:
//! `/health` shows it, and the metrics read its expiry from there
//! (`gem_proxy_tls_certificate_expiry_timestamp_seconds`).

mod acme;
mod certificate;
mod reload;
mod self_signed;
mod validate;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

pub use acme::Http01Service;
pub use certificate::{CertificateSource, CertificateStatus, fingerprint};
pub(crate) use validate::problems;

use crate::config::{AcmeChallenge, ServerConfig as ServerSettings};

/// Why TLS could not be set up, or a certificate not used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The certificate file is not a usable PEM certificate chain.
    #[error("{path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// Only one of the two files exists, so nothing is generated (it would overwrite it).
    #[error(
        "{present} exists but {missing} does not exist: give both, or neither to have a self-signed certificate generated"
    )]
    Incomplete {
        /// The file that exists.
        present: String,
        /// The one that does not.
        missing: String,
    },
    /// `server.tls.cert_path` or `key_path` is not set.
    #[error(
        "server.tls.cert_path and server.tls.key_path are required when TLS is on without ACME"
    )]
    NoPaths,
    /// Generating a certificate or building a TLS configuration failed.
    #[error("cannot set TLS up: {0}")]
    Generate(String),
}

/// The certificate the proxy port serves, as `/health` and the metrics see it. Empty while TLS is
/// off. Cheap to clone (one `Arc`); reading never locks.
#[derive(Debug, Clone, Default)]
pub struct TlsStatus {
    current: Arc<ArcSwapOption<CertificateStatus>>,
}

impl TlsStatus {
    /// The certificate being served; `None` when TLS is off.
    pub fn certificate(&self) -> Option<Arc<CertificateStatus>> {
        self.current.load_full()
    }

    /// When the served certificate expires, in Unix seconds (for an expiry gauge); `None` when
    /// TLS is off or an ACME certificate is still pending.
    pub fn expiry_unix_seconds(&self) -> Option<i64> {
        self.current.load().as_ref().and_then(|c| c.not_after_unix)
    }

    /// A new certificate is being served.
    pub(crate) fn set(&self, status: CertificateStatus) {
        self.current.store(Some(Arc::new(status)));
    }

    /// A reload or renewal failed; the certificate being served stays.
    pub(crate) fn set_error(&self, reason: String) {
        self.current.rcu(|cur| {
            cur.as_ref().map(|c| {
                let mut c = CertificateStatus::clone(c);
                c.last_error = Some(reason.clone());
                Arc::new(c)
            })
        });
    }

    /// The `tls` section of `/health`.
    pub fn health(&self) -> serde_json::Value {
        let Some(c) = self.certificate() else {
            return serde_json::json!({ "enabled": false });
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let state = match c.not_after_unix {
            None => "pending",
            Some(end) if end <= now => "expired",
            Some(_) => "ok",
        };
        let utc = |t: Option<i64>| t.map(|t| crate::time::utc_time(t.max(0) as u64));
        serde_json::json!({
            "enabled": true,
            "state": state,
            "source": c.source,
            "names": c.names,
            "not_before": utc(c.not_before_unix),
            "not_after": utc(c.not_after_unix),
            "expires_in_seconds": c.not_after_unix.map(|end| end - now),
            "sha256_fingerprint": c.sha256_fingerprint,
            "last_error": c.last_error,
        })
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accepts TLS on the proxy port. Owns the background tasks that keep its certificate current
/// (file reload or ACME); they stop when it is dropped.
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    /// For `acme-tls/1` handshakes (TLS-ALPN-01), when ACME uses that challenge.
    acme_challenge: Option<Arc<ServerConfig>>,
    http01: Option<Http01Service>,
    handshake_timeout: Duration,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("acme_tls_alpn_01", &self.acme_challenge.is_some())
            .field("acme_http_01", &self.http01.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for TlsAcceptor {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl TlsAcceptor {
    /// Sets TLS up from `server.tls` (generating a self-signed certificate when there is none)
    /// and starts keeping the certificate current. `https_port` is where the proxy port really
    /// listens (for the HTTP-01 listener's redirects). Must run inside the Tokio runtime.
    pub fn start(
        server: &ServerSettings,
        https_port: u16,
        status: &TlsStatus,
    ) -> Result<Self, TlsError> {
        let tls = &server.tls;
        let mut background = Vec::new();
        let mut acme_challenge = None;
        let mut http01 = None;
        let resolver: Arc<dyn ResolvesServerCert> = if tls.acme.enabled {
            let acme = acme::start(&tls.acme, status.clone())?;
            acme_challenge = acme.challenge_config;
            if tls.acme.challenge == AcmeChallenge::Http01 {
                http01 = Some(Http01Service::new(acme.resolver.clone(), https_port));
            }
            background.push(tokio::spawn(acme.driver));
            acme.resolver
        } else {
            let (Some(cert), Some(key)) = (&tls.cert_path, &tls.key_path) else {
                return Err(TlsError::NoPaths);
            };
            let (cert, key) = (Path::new(cert), Path::new(key));
            self_signed::ensure(cert, key, &server.host, &tls.san)?;
            let (reloader, resolver) = reload::Reloader::start(cert, key, status.clone())?;
            if let Some(c) = status.certificate() {
                certificate::log_served("TLS certificate loaded", &c);
            }
            background.push(tokio::spawn(reloader.run(tls.reload_interval())));
            resolver
        };
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(server_config(resolver)?),
            acme_challenge,
            http01,
            handshake_timeout: tls.handshake_timeout(),
            background,
        })
    }

    /// The service for the plain-HTTP listener on `server.tls.acme.http_port`, when ACME uses
    /// the `http-01` challenge.
    pub fn http01_service(&self) -> Option<Http01Service> {
        self.http01.clone()
    }

    /// Runs the handshake on an accepted connection; `None` when there is nothing to serve
    /// (the handshake failed or timed out, the client spoke plain HTTP, or it was an ACME
    /// challenge). Call it in the connection's own task.
    pub async fn accept(&self, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.handshake(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    async fn handshake(&self, mut tcp: TcpStream) -> io::Result<Option<TlsStream<TcpStream>>> {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Ok(None);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plaintext(&mut tcp, first[0]).await?;
            return Ok(None);
        }
        let Some(challenge) = &self.acme_challenge else {
            return self.acceptor.accept(tcp).await.map(Some);
        };
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        if rustls_acme::is_tls_alpn_challenge(&start.client_hello()) {
            let mut tls = start.into_stream(challenge.clone()).await?;
            tls.shutdown().await?;
            tracing::info!("answered a TLS-ALPN-01 challenge");
            return Ok(None);
        }
        start
            .into_stream(self.acceptor.config().clone())
            .await
            .map(Some)
    }
}

/// The rustls config of the proxy port.
fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(certificate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A client sent something other than a TLS handshake. If it looks like an HTTP request (it starts
/// with a letter, as methods do), it gets a `400` saying to use HTTPS; then the connection closes.
async fn refuse_plaintext(tcp: &mut TcpStream, first: u8) -> io::Result<()> {
    if !first.is_ascii_uppercase() {
        return Ok(());
    }
    const BODY: &str = r#"{"error":{"code":400,"message":"This port speaks HTTPS: use https:// to reach it.","status":"INVALID_ARGUMENT"}}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json; charset=UTF-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut buf = [0u8; 4096];
    let _ = tcp.read(&mut buf).await?;
    tcp.write_all(answer.as_bytes()).await?;
    tcp.shutdown().await?;
    // Read on until the client closes (within the handshake timeout, and not forever): closing
    // with unread data would reset the connection and could destroy the answer in flight.
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match tcp.read(&mut buf).await? {
            0 => break,
            n => left = left.saturating_sub(n),
        }
    }
    Ok(())
}
