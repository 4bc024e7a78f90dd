//! The HTTP clients the gateway sends with: [`UpstreamClient`] to Gemini and Vertex AI (the
//! gateway's own connection pool, [`crate::conn_pool`]), [`HttpClient`] to an OTLP collector, a
//! JWKS endpoint and Vertex AI's token endpoint; where upstream requests go
//! ([`UpstreamTarget`]); and the Gemini header names several modules share. The service that
//! forwards client requests is [`crate::upstream`].

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::conn_pool::ConnPool;
use crate::error::GatewayError;

/// The pooled HTTP client: HTTP/2 by ALPN, HTTP/1.1 otherwise, rustls with the
/// aws-lc-rs provider, `TCP_NODELAY`.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client that forwards requests to the upstream (Gemini, Vertex AI): the gateway's own
/// connection pool ([`crate::conn_pool`]) over the same connector as [`HttpClient`].
pub type UpstreamClient = ConnPool<hyper_rustls::HttpsConnector<HttpConnector>>;

/// `x-goog-api-key`.
pub static X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
/// `x-goog-upload-url`: where a resumable upload continues; Google puts the key in it.
pub static X_GOOG_UPLOAD_URL: HeaderName = HeaderName::from_static("x-goog-upload-url");
/// `x-goog-upload-control-url`: the same for status queries and cancels; also carries the key.
pub static X_GOOG_UPLOAD_CONTROL_URL: HeaderName =
    HeaderName::from_static("x-goog-upload-control-url");

/// Builds a client (the gateway's upstream client, OTLP over HTTP and JWKS refresh each have one).
pub fn build_client(connect_timeout: Duration) -> HttpClient {
    client_over(tcp_connector(connect_timeout))
}

/// The upstream client: `TCP_NODELAY`, keep-alive, `connect_timeout`, TLS with ALPN.
pub fn build_upstream_client(connect_timeout: Duration) -> UpstreamClient {
    ConnPool::new(https_over(tcp_connector(connect_timeout)))
}

/// The TCP connector every client starts from: `TCP_NODELAY`, keep-alive, the connect timeout.
pub fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// A pooled client over `connector` (plain TCP, or a proxy tunnel over it): rustls with the
/// aws-lc-rs provider and the web roots, HTTP/2 by ALPN, HTTP/1.1 otherwise.
pub fn client_over<C>(connector: C) -> Client<hyper_rustls::HttpsConnector<C>, Full<Bytes>>
where
    hyper_rustls::HttpsConnector<C>:
        hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let https = https_over(connector);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// TLS (rustls, aws-lc-rs, the web roots) with ALPN `h2` and `http/1.1` over `connector`; plain
/// HTTP passes through.
fn https_over<C>(connector: C) -> hyper_rustls::HttpsConnector<C> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .expect("aws-lc-rs supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector)
}

/// Google's API host, whose URLs in answers (download links) are the upstream's whatever
/// `gemini.base_url` says.
const GOOGLE_HOST: &str = "generativelanguage.googleapis.com";

/// Where upstream requests go, parsed once from `gemini.base_url`.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of the base URL without a trailing slash (usually empty).
    prefix: String,
}

impl UpstreamTarget {
    /// Parses a base URL that [`Config::validate`](crate::config::Config::validate) accepted.
    pub fn parse(base_url: &str) -> Option<Self> {
        let uri: Uri = base_url.parse().ok()?;
        let parts = uri.into_parts();
        let scheme = parts.scheme?;
        let authority = parts.authority?;
        Some(Self {
            scheme,
            authority,
            prefix: parts
                .path_and_query
                .map(|pq| pq.path().trim_end_matches('/').to_owned())
                .unwrap_or_default(),
        })
    }

    /// The path prefix of the base URL, without a trailing slash (usually empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The path (base URL prefix removed) of a URL that points at the upstream (or at Google's
    /// own host), `None` for any other URL.
    pub fn path_of<'u>(&self, url: &'u Uri) -> Option<&'u str> {
        let authority = url.authority()?;
        let ours = url.scheme() == Some(&self.scheme) && *authority == self.authority;
        if ours {
            return Some(url.path().strip_prefix(&*self.prefix).unwrap_or(url.path()));
        }
        (authority.host() == GOOGLE_HOST).then(|| url.path())
    }

    /// The upstream URI for a client request URI: same path and query, without `key=`.
    pub fn uri_for(&self, client: &Uri) -> Result<Uri, GatewayError> {
        let pq = client.path_and_query().map_or("/", PathAndQuery::as_str);
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let query = query.map(strip_key_param);
        let path_and_query = match (&query, self.prefix.is_empty()) {
            (None | Some(Cow::Borrowed(_)), true) => match client.path_and_query() {
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            },
            _ => {
                let mut s = String::with_capacity(self.prefix.len() + pq.len());
                s.push_str(&self.prefix);
                s.push_str(path);
                if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
                    s.push('?');
                    s.push_str(q);
                }
                PathAndQuery::try_from(s)
                    .map_err(|_| GatewayError::Internal("bad upstream path"))?
            }
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| GatewayError::Internal("bad upstream URI"))
    }
}

/// Drops every `key` parameter from a query string, keeping the rest byte for byte.
pub fn strip_key_param(query: &str) -> Cow<'_, str> {
    fn is_key(p: &str) -> bool {
        p == "key" || p.starts_with("key=")
    }
    if !query.split('&').any(is_key) {
        return Cow::Borrowed(query);
    }
    Cow::Owned(
        query
            .split('&')
            .filter(|p| !is_key(p))
            .collect::<Vec<_>>()
            .join("&"),
    )
}
