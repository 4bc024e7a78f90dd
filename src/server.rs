//! Listeners: accept connections, serve HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over
//! TLS) on them, and shut down gracefully.
//!
//! With `server.tls.enabled` the proxy port speaks TLS ([`crate::tls`]): the handshake runs in the
//! connection's own task under `server.tls.handshake_timeout_seconds`, so a slow client never holds
//! up the accept loop. ACME's `http-01` challenge adds a plain-HTTP listener on
//! `server.tls.acme.http_port`.
//!
//! Every accepted socket gets `TCP_NODELAY`. `server.max_connections` caps open client connections
//! (further ones wait in the listen backlog). `server.header_read_timeout_seconds` closes HTTP/1.1
//! connections that never finish their headers. On shutdown the listeners close at once, running
//! requests and streams finish, and after `server.shutdown_grace_seconds` whatever is left is cut.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

use crate::body::BoxError;
use crate::client_addr::ClientAddr;
use crate::gateway::{Gateway, Live};
use crate::metrics::{Listener, Metrics};
use crate::tls::TlsAcceptor;
use crate::{admin, stack};

/// A running gateway: the proxy listener and the admin listener.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    proxy_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// How one listener serves its connections.
#[derive(Debug, Clone, Copy)]
struct ServeOptions {
    max_connections: usize,
    header_read_timeout: Duration,
    shutdown_grace: Duration,
}

impl Server {
    /// Binds the listeners of `live.config` and starts serving.
    pub async fn start(live: Live) -> io::Result<Server> {
        Self::start_gateway(Gateway::new(live)).await
    }

    /// Binds the listeners of the gateway's config and starts serving it; also watches the config
    /// file (`admin.config_watch_interval_seconds`).
    pub async fn start_gateway(gateway: Arc<Gateway>) -> io::Result<Server> {
        let live = gateway.live();
        let cfg = &live.config;
        let proxy = bind(&cfg.server.host, cfg.server.port).await?;
        let admin = if cfg.metrics.enabled {
            let host = cfg
                .admin
                .host
                .as_deref()
                .or(cfg.metrics.host.as_deref())
                .unwrap_or(&cfg.server.host);
            Some(bind(host, cfg.metrics.prometheus_port).await?)
        } else {
            None
        };
        let proxy_opts = ServeOptions {
            max_connections: cfg.server.max_connections,
            header_read_timeout: cfg.server.header_read_timeout(),
            shutdown_grace: cfg.server.shutdown_grace(),
        };
        let proxy_addr = proxy.local_addr()?;
        let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;

        let watch_interval = Duration::from_secs(cfg.admin.config_watch_interval_seconds);
        let server_cfg = &cfg.server;
        let tls = if server_cfg.tls.enabled {
            let tls = TlsAcceptor::start(server_cfg, proxy_addr.port(), gateway.tls())
                .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
            Some(Arc::new(tls))
        } else {
            None
        };
        let acme_http = match tls.as_ref().and_then(|t| t.http01_service()) {
            Some(service) => Some((
                bind(&server_cfg.host, server_cfg.tls.acme.http_port).await?,
                service,
            )),
            None => None,
        };
        let (shutdown, watch_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(
            proxy,
            stack::build::<Incoming>(gateway.clone()),
            proxy_opts,
            watch_rx.clone(),
            tls,
            Some((gateway.metrics().clone(), Listener::Proxy)),
        ));
        if let Some((listener, service)) = acme_http {
            let opts = ServeOptions {
                max_connections: 256,
                ..proxy_opts
            };
            tasks.spawn(serve(listener, service, opts, watch_rx.clone(), None, None));
        }
        if !watch_interval.is_zero() {
            tasks.spawn(watch_config_file(
                gateway.clone(),
                watch_interval,
                watch_rx.clone(),
            ));
        }
        if let Some(admin) = admin {
            let opts = ServeOptions {
                max_connections: 256,
                ..proxy_opts
            };
            tasks.spawn(serve(
                admin,
                admin::service(gateway.clone()),
                opts,
                watch_rx,
                None,
                Some((gateway.metrics().clone(), Listener::Admin)),
            ));
        }
        tracing::info!(
            %proxy_addr,
            tls = server_cfg.tls.enabled,
            admin_addr = ?admin_addr,
            "gem-proxy listening"
        );
        Ok(Server {
            gateway,
            proxy_addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    /// Where the proxy listens.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where the admin listener (health, metrics) listens, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared state.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Starts a graceful shutdown: listeners close now, running requests may finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every listener has shut down and its connections have finished (or the grace
    /// period ran out).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(tracing) = self.gateway.tracing().cloned() {
            // Export the last spans; the exporter may block on the collector for a few seconds.
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        }
    }
}

/// Checks the config file for edits made on disk every `interval` until shutdown.
async fn watch_config_file(
    gateway: Arc<Gateway>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        gateway.check_config_file();
    }
}

async fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}")))
}

async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    opts: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<TlsAcceptor>>,
    // Counts this listener's connections in `gem_proxy_connections_*`.
    connections: Option<(Arc<Metrics>, Listener)>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);

    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set TCP_NODELAY failed");
        }
        // The connection counts as open for as long as its permit is held.
        let permit = (
            permit,
            connections.as_ref().map(|(m, l)| m.connection_opened(*l)),
        );
        let service = service.clone();
        let hyper_service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            service.clone().oneshot(req)
        });
        if let Some(tls) = &tls {
            // The handshake happens in the connection's task, never here in the accept loop.
            let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
            tokio::spawn(async move {
                if let Some(stream) = tls.accept(stream, peer).await {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), hyper_service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                drop(permit);
            });
            continue;
        }
        let conn = builder
            .serve_connection(TokioIo::new(stream), hyper_service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = opts.shutdown_grace.as_secs(),
            "shutdown grace period over; closing the remaining connections"
        );
    }
}
