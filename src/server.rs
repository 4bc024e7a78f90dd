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
//! connections that never finish their headers; `server.idle_connection_timeout_seconds` closes
//! any connection with no request in progress (see [`crate::connection`]), on both listeners.
//! HTTP/2 connections are bounded by `server.http2` (streams, header list size, resets).
//!
//! The admin listener holds [`ADMIN_CONNECTIONS`] connections and keeps [`ADMIN_RESERVE`] more
//! for when those are all taken (a flood of idle connections): it never stops accepting, and a
//! connection taken on the reserve must send its request within [`RESERVE_IDLE_TIMEOUT`]; when
//! the reserve is full too, its oldest connection makes room. So a `/health` probe, which asks
//! at once, is answered while the listener is flooded.
//!
//! On shutdown the listeners close at once, running requests and streams finish, and after
//! `server.shutdown_grace_seconds` whatever is left is cut. Live API sessions (WebSocket
//! upgrades, [`crate::live`]) keep their connection's place ([`SessionHold`]) and are closed
//! with 1001 "going away" when the grace period ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::body::BoxError;
use crate::client_addr::ClientAddr;
use crate::config::Http2Config;
use crate::connection::{self, Activity, Drained, Tracked};
use crate::gateway::{Gateway, Live};
use crate::live_sessions::SessionHold;
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

/// Connections the admin listener holds (besides its reserve).
pub const ADMIN_CONNECTIONS: usize = 256;
/// Connections the admin listener keeps in reserve for probes when the others are all taken.
pub const ADMIN_RESERVE: usize = 16;
/// How long a connection taken on the reserve may stay idle (probes ask at once).
pub const RESERVE_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the listener waits, after the grace period, for Live sessions to send their 1001.
const LIVE_CLOSE_MOMENT: Duration = Duration::from_secs(1);

/// How one listener serves its connections.
#[derive(Debug, Clone)]
struct ServeOptions {
    max_connections: usize,
    /// Connections accepted beyond `max_connections` (see the module docs); `0`: none, further
    /// connections wait in the listen backlog.
    reserve: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    http2: Http2Config,
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
            reserve: 0,
            header_read_timeout: cfg.server.header_read_timeout(),
            idle_timeout: cfg.server.idle_connection_timeout(),
            http2: cfg.server.http2.clone(),
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
            // A request body a layer refused without reading is drained, not the connection
            // closed ([`Drained`]).
            tower::ServiceExt::map_request(
                stack::build::<Drained<Incoming>>(gateway.clone()),
                |req: Request<Incoming>| req.map(Drained::new),
            ),
            proxy_opts.clone(),
            watch_rx.clone(),
            tls,
            Some((gateway.metrics().clone(), Listener::Proxy)),
        ));
        if let Some((listener, service)) = acme_http {
            let opts = ServeOptions {
                max_connections: 256,
                ..proxy_opts.clone()
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
                max_connections: ADMIN_CONNECTIONS,
                reserve: ADMIN_RESERVE,
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

/// Calls a clone of `service` with `req`. The stack's layers never apply backpressure (every
/// `poll_ready` is ready at once), so the clone is called right away and dropped: the request's
/// future then holds neither the stack nor a second copy of the request (tower's `oneshot`
/// keeps both until the service is ready, and moves them with the future). A service that is
/// not ready is waited for like `oneshot` does.
fn call_ready<S, R>(service: &S, req: R) -> Either<S::Future, Oneshot<S, R>>
where
    S: Service<R> + Clone,
{
    let mut svc = service.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        std::task::Poll::Ready(Ok(())) => Either::Left(svc.call(req)),
        _ => Either::Right(svc.oneshot(req)),
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
    shutdown: watch::Receiver<bool>,
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
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(opts.http2.max_concurrent_streams)
        .max_header_list_size(opts.http2.max_header_list_bytes)
        .max_pending_accept_reset_streams(opts.http2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(opts.http2.max_local_error_reset_streams);
    let builder = Arc::new(builder);
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    // Every connection task holds a clone; when all are gone, every connection has ended.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut reserve: VecDeque<AbortHandle> = VecDeque::with_capacity(opts.reserve);
    let mut stop_rx = shutdown.clone();
    let stop = async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);

    loop {
        // Without a reserve, wait for room before accepting: further clients queue in the
        // backlog. With one, always accept (see the module docs).
        let waited = if opts.reserve == 0 {
            tokio::select! {
                permit = limit.clone().acquire_owned() => Some(permit.expect("the semaphore is never closed")),
                () = &mut stop => break,
            }
        } else {
            None
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
        let permit = waited.or_else(|| limit.clone().try_acquire_owned().ok());
        let on_reserve = permit.is_none();
        if on_reserve {
            reserve.retain(|h| !h.is_finished());
            if reserve.len() >= opts.reserve
                && let Some(oldest) = reserve.pop_front()
            {
                oldest.abort();
            }
        }
        let idle_timeout = if on_reserve {
            opts.idle_timeout.min(RESERVE_IDLE_TIMEOUT)
        } else {
            opts.idle_timeout
        };
        // The connection counts as open for as long as its task holds this, or a Live session
        // upgraded from it does.
        let held = SessionHold::new(
            shutdown.clone(),
            opts.shutdown_grace,
            (
                permit,
                connections.as_ref().map(|(m, l)| m.connection_opened(*l)),
                open_tx.clone(),
            ),
        );
        let activity = Activity::new();
        let service = service.clone();
        let hyper_service = {
            let activity = activity.clone();
            let held = held.clone();
            service_fn(move |mut req: Request<Incoming>| {
                let request = activity.begin();
                req.extensions_mut().insert(ClientAddr(peer));
                req.extensions_mut().insert(held.clone());
                let call = call_ready(&service, req);
                async move {
                    let res = call.await?;
                    Ok::<_, Infallible>(res.map(|body| Tracked::new(body, request)))
                }
            })
        };
        let (tls, builder, shutdown) = (tls.clone(), builder.clone(), shutdown.clone());
        // The handshake and the connection are boxed: the task's own future stays small (it is
        // moved several times while spawned: a connection's state inline cost ~80 KB of copies
        // per connection), and a plain connection does not carry room for a TLS one.
        let task = tokio::spawn(async move {
            let result = match tls {
                // The handshake happens in the connection's task, never in the accept loop.
                Some(tls) => match Box::pin(tls.accept(stream, peer)).await {
                    Some(stream) => {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                        Box::pin(connection::drive(
                            conn,
                            |c| c.graceful_shutdown(),
                            &activity,
                            idle_timeout,
                            shutdown,
                        ))
                        .await
                    }
                    None => Ok(()),
                },
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                    Box::pin(connection::drive(
                        conn,
                        |c| c.graceful_shutdown(),
                        &activity,
                        idle_timeout,
                        shutdown,
                    ))
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(held);
        });
        if on_reserve {
            reserve.push_back(task.abort_handle());
        }
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(opts.shutdown_grace, open_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = opts.shutdown_grace.as_secs(),
            "shutdown grace period over; closing the remaining connections"
        );
        // Live sessions close themselves (1001) when the grace period ends: a moment to send it.
        let _ = tokio::time::timeout(LIVE_CLOSE_MOMENT, open_rx.recv()).await;
    }
}
