//! Egress proxies per key (`gemini.api_keys[].proxy`, default `gemini.proxy`): the pooled
//! clients that leave through them.
//!
//! hyper-util's own connectors do the proxy's part: [`Tunnel`] (an HTTP `CONNECT` tunnel, to an
//! `http://` proxy or over TLS to an `https://` one) and [`SocksV5`] (`socks5://` resolving names
//! here, `socks5h://` letting the proxy resolve them), each with the proxy's user and password.
//! The TLS to Google runs inside the tunnel as on a direct connection; a Live API WebSocket,
//! which cannot ride the pool, opens its own tunnel ([`EgressClient::tunnel`]). There is one pooled
//! client per distinct proxy, shared by the keys that name it; keys without one use the
//! gateway's direct client ([`crate::gateway::Live::client`]). Built with each config snapshot.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use crate::config::GeminiConfig;
use crate::config::egress::{ProxyScheme, ProxyTarget};
use crate::http_client::{client_over, tcp_connector};

type Https<C> = hyper_rustls::HttpsConnector<C>;

/// A pooled client whose connections leave through one proxy.
#[derive(Debug)]
pub struct EgressClient {
    via: Via,
    /// The proxy's part alone, for connections that do not ride the pool (a Live WebSocket).
    connector: Connector,
    shown: String,
}

#[derive(Debug, Clone)]
enum Connector {
    Tunnel(Tunnel<HttpConnector>),
    TlsTunnel(Tunnel<Https<HttpConnector>>),
    Socks(SocksV5<HttpConnector>),
}

/// A connection through a proxy to its destination, before any TLS to the destination.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

#[derive(Debug)]
enum Via {
    Tunnel(Client<Https<Tunnel<HttpConnector>>, Full<Bytes>>),
    TlsTunnel(Client<Https<Tunnel<Https<HttpConnector>>>, Full<Bytes>>),
    Socks(Client<Https<SocksV5<HttpConnector>>, Full<Bytes>>),
}

impl EgressClient {
    /// A client through `proxy`.
    pub fn new(proxy: &ProxyTarget, connect_timeout: Duration) -> Self {
        let host = if proxy.host.contains(':') {
            format!("[{}]", proxy.host)
        } else {
            proxy.host.clone()
        };
        let scheme = if proxy.scheme == ProxyScheme::Https {
            "https"
        } else {
            "http"
        };
        let dst: Uri = format!("{scheme}://{host}:{}", proxy.port)
            .parse()
            .expect("a validated proxy host and port make a URI");
        let tcp = tcp_connector(connect_timeout);
        let (via, connector) = match proxy.scheme {
            ProxyScheme::Http => {
                let tunnel = with_basic(Tunnel::new(dst, tcp), proxy);
                (
                    Via::Tunnel(client_over(tunnel.clone())),
                    Connector::Tunnel(tunnel),
                )
            }
            ProxyScheme::Https => {
                // TLS to the proxy (HTTP/1.1: CONNECT), then Google's TLS inside the tunnel.
                let to_proxy = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
                    .expect("aws-lc-rs supports the default TLS versions")
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                let tunnel = with_basic(Tunnel::new(dst, to_proxy), proxy);
                (
                    Via::TlsTunnel(client_over(tunnel.clone())),
                    Connector::TlsTunnel(tunnel),
                )
            }
            ProxyScheme::Socks5 | ProxyScheme::Socks5h => {
                let mut socks =
                    SocksV5::new(dst, tcp).local_dns(proxy.scheme == ProxyScheme::Socks5);
                if let Some((user, pass)) = &proxy.credentials {
                    socks = socks.with_auth(user.clone(), pass.clone());
                }
                (
                    Via::Socks(client_over(socks.clone())),
                    Connector::Socks(socks),
                )
            }
        };
        Self {
            via,
            connector,
            shown: proxy.shown(),
        }
    }

    /// A connection through the proxy to `host:port`, for what cannot ride the pooled client (a
    /// Live API WebSocket): the TLS to Google runs inside it as on a direct connection.
    pub async fn tunnel(&self, host: &str, port: u16) -> io::Result<Box<dyn TunnelIo>> {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let dst: Uri = format!("http://{host}:{port}")
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad tunnel destination"))?;
        let failed = |e: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string())
        };
        Ok(match &self.connector {
            Connector::Tunnel(c) => Box::new(TokioIo::new(
                c.clone().oneshot(dst).await.map_err(|e| failed(&e))?,
            )),
            Connector::TlsTunnel(c) => Box::new(TokioIo::new(
                c.clone().oneshot(dst).await.map_err(|e| failed(&e))?,
            )),
            Connector::Socks(c) => Box::new(TokioIo::new(
                c.clone().oneshot(dst).await.map_err(|e| failed(&e))?,
            )),
        })
    }

    /// Sends `req` through the proxy.
    pub fn request(&self, req: Request<Full<Bytes>>) -> ResponseFuture {
        match &self.via {
            Via::Tunnel(c) => c.request(req),
            Via::TlsTunnel(c) => c.request(req),
            Via::Socks(c) => c.request(req),
        }
    }

    /// The proxy as logs and `/health` may show it (no user or password).
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// `Proxy-Authorization: Basic …` on the tunnel request, when the proxy has credentials.
fn with_basic<C>(tunnel: Tunnel<C>, proxy: &ProxyTarget) -> Tunnel<C> {
    let Some((user, pass)) = &proxy.credentials else {
        return tunnel;
    };
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    match HeaderValue::try_from(format!("Basic {token}")) {
        Ok(mut v) => {
            v.set_sensitive(true);
            tunnel.with_auth(v)
        }
        Err(_) => tunnel,
    }
}

/// The egress clients of one config snapshot, by key id.
#[derive(Debug, Default)]
pub struct Egress {
    by_key: HashMap<Arc<str>, Arc<EgressClient>>,
}

impl Egress {
    /// One client per distinct proxy of `gemini`'s keys.
    pub fn build(gemini: &GeminiConfig) -> Self {
        let mut by_proxy: HashMap<ProxyTarget, Arc<EgressClient>> = HashMap::new();
        let mut by_key = HashMap::new();
        for key in &gemini.api_keys {
            if let Some(proxy) = gemini.proxy_for(key) {
                let client = by_proxy
                    .entry(proxy)
                    .or_insert_with_key(|p| {
                        Arc::new(EgressClient::new(p, gemini.connect_timeout()))
                    })
                    .clone();
                by_key.insert(Arc::from(key.id.as_str()), client);
            }
        }
        Self { by_key }
    }

    /// The client for key `id`; `None` when it connects directly.
    pub fn for_key(&self, id: &str) -> Option<&Arc<EgressClient>> {
        self.by_key.get(id)
    }

    /// Distinct proxies in use.
    pub fn proxies(&self) -> usize {
        let mut seen: Vec<*const EgressClient> = self.by_key.values().map(Arc::as_ptr).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigLoader;

    #[test]
    fn one_client_per_distinct_proxy_and_direct_keys_have_none() {
        let config = ConfigLoader::default()
            .load_str(
                r#"
gemini:
  proxy: "socks5h://u:p@10.0.0.1:1080"
  api_keys:
    - { id: "a", key: "k1" }
    - { id: "b", key: "k2" }
    - { id: "c", key: "k3", proxy: "http://10.0.0.2:3128" }
    - { id: "d", key: "k4", proxy: "direct" }
"#,
            )
            .unwrap();
        let egress = Egress::build(&config.gemini);
        let [a, b, c] = ["a", "b", "c"].map(|id| egress.for_key(id).unwrap());
        assert!(Arc::ptr_eq(a, b), "keys naming one proxy share its pool");
        assert!(!Arc::ptr_eq(a, c));
        assert_eq!(a.shown(), "socks5h://10.0.0.1:1080");
        assert_eq!(c.shown(), "http://10.0.0.2:3128");
        assert!(egress.for_key("d").is_none());
        assert_eq!(egress.proxies(), 2);
    }
}
