//! The upstream connection pool: hyper's own client connections (`hyper::client::conn`) kept per
//! scheme and authority, instead of hyper-util's legacy client on top of them.
//!
//! - **HTTP/1.1**: a stack of idle connections per host, most recently used on top. A connection
//!   goes back on the stack when its answer's body has been read to the end ([`PooledBody`]); a
//!   body dropped before its end takes its connection with it (hyper closes it).
//! - **HTTP/2** (when TLS's ALPN picks `h2`, as Google's servers do): one shared connection per
//!   host, many requests at once on it.
//! - A request that a reused connection turned away before sending it (the upstream had closed
//!   it while it sat idle) is sent again on another connection; a fresh connection's failure is
//!   the answer. A failed connect (TCP, TLS, handshake) is told apart from a failure after it
//!   ([`PoolError::is_connect`]): only the first proves the request never left.
//! - Idle connections are closed after [`IDLE_TIMEOUT`].
//!
//! Connecting (DNS, TCP with `TCP_NODELAY`, TLS and ALPN) is the connector's: the same
//! hyper-rustls connector the legacy client used.
//!
//! Per request this does what the request needs and no more: no pool key hashed, no task spawned
//! to wait for the connection to be ready again, no channel besides hyper's own.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;

/// How long a connection may sit idle before the pool closes it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Retries of a request that reused connections turned away unsent, at most.
const MAX_UNSENT_RETRIES: usize = 4;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (DNS, TCP, TLS, the HTTP handshake): the request never left.
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The request may have reached the upstream: the connection failed during the exchange.
    #[error("request failed")]
    Request(#[source] hyper::Error),
    /// The URI has no scheme or authority.
    #[error("the request URI is not absolute")]
    NotAbsolute,
}

impl PoolError {
    /// Whether no connection could be made, so the request was certainly not sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }
}

/// A pool of upstream connections over `connector`.
#[derive(Debug)]
pub struct ConnPool<C> {
    connector: C,
    hosts: RwLock<Vec<Arc<Host>>>,
}

/// One scheme and authority's connections.
#[derive(Debug)]
struct Host {
    scheme: Scheme,
    authority: Authority,
    /// What HTTP/1.1 requests to it carry as `Host` when they have none.
    host_header: Option<HeaderValue>,
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection, once one was negotiated.
    h2: Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    /// Whether the task that closes idle connections runs.
    reaping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

enum Conn {
    H1 {
        tx: http1::SendRequest<Full<Bytes>>,
        reused: bool,
    },
    H2 {
        tx: http2::SendRequest<Full<Bytes>>,
        reused: bool,
    },
}

impl<C, T> ConnPool<C>
where
    C: Service<Uri, Response = T> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
    T: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
{
    /// An empty pool that connects with `connector`.
    pub fn new(connector: C) -> Self {
        Self {
            connector,
            hosts: RwLock::new(Vec::new()),
        }
    }

    /// Sends `req` (an absolute URI) on a pooled connection to its host, or a new one.
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let host = self.host(req.uri())?;
        // HTTP/1.1 wants the origin form and a Host header; HTTP/2 the absolute URI and none.
        // The absolute URI is kept aside while the request is in the origin form.
        let mut absolute: Option<Uri> = None;
        let mut retries = 0;
        loop {
            let conn = match host.checkout().await {
                Some(conn) => conn,
                // Boxed: connecting (TLS state, handshakes) would make every request's future
                // that much bigger, and futures are moved by value.
                None => Box::pin(self.connect(&host)).await?,
            };
            let (sent, reused) = match conn {
                Conn::H1 { mut tx, reused } => {
                    if absolute.is_none() {
                        absolute = Some(to_h1_form(&mut req, &host));
                    }
                    match tx.try_send_request(req).await {
                        Ok(res) => {
                            let host = host.clone();
                            return Ok(res.map(|body| PooledBody::returning(body, tx, host)));
                        }
                        Err(e) => (e, reused),
                    }
                }
                Conn::H2 { mut tx, reused } => {
                    if let Some(uri) = absolute.take() {
                        *req.uri_mut() = uri;
                    }
                    req.headers_mut().remove(HOST);
                    match tx.try_send_request(req).await {
                        Ok(res) => return Ok(res.map(PooledBody::new)),
                        Err(e) => {
                            host.forget_h2();
                            (e, reused)
                        }
                    }
                }
            };
            let mut sent = sent;
            match sent.take_message() {
                // Turned away unsent by a connection that had been idle: try another one.
                Some(unsent) if reused && retries < MAX_UNSENT_RETRIES => {
                    retries += 1;
                    req = unsent;
                }
                _ => return Err(PoolError::Request(sent.into_error())),
            }
        }
    }

    /// The host of `uri`, added on first use.
    fn host(&self, uri: &Uri) -> Result<Arc<Host>, PoolError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(PoolError::NotAbsolute);
        };
        let find = |hosts: &[Arc<Host>]| {
            hosts
                .iter()
                .find(|h| h.authority == *authority && h.scheme == *scheme)
                .cloned()
        };
        if let Some(h) = find(&self.hosts.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(h);
        }
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = find(&hosts) {
            return Ok(h);
        }
        let host = Arc::new(Host::new(scheme.clone(), authority.clone()));
        hosts.push(host.clone());
        Ok(host)
    }

    /// A new connection to `host`: HTTP/2 when ALPN said so (then shared), HTTP/1.1 otherwise.
    async fn connect(&self, host: &Arc<Host>) -> Result<Conn, PoolError> {
        let uri = Uri::builder()
            .scheme(host.scheme.clone())
            .authority(host.authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|e| PoolError::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        if io.connected().is_negotiated_h2() {
            // Boxed on its own: HTTP/2's handshake state is several KiB, and every HTTP/1.1
            // connect would carry it otherwise (a thousand streams opening at once add up).
            return Box::pin(connect_h2(host, io)).await;
        }
        // The stream boxed once here (it holds TLS state inline): the handshake then moves a
        // pointer, not a kilobyte, and so does this future.
        let (tx, conn) = http1::handshake(Box::new(io))
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        drive(conn, "HTTP/1.1");
        Ok(Conn::H1 { tx, reused: false })
    }

    /// Open connections the pool holds idle, and shared HTTP/2 ones, over all hosts.
    pub fn idle_connections(&self) -> usize {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|h| {
                let idle = h
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|i| !i.tx.is_closed())
                    .count();
                let h2 =
                    h.h2.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(|tx| !tx.is_closed());
                idle + usize::from(h2)
            })
            .sum()
    }
}

/// The HTTP/2 handshake on `io`; the connection becomes `host`'s shared one.
async fn connect_h2<T>(host: &Host, io: T) -> Result<Conn, PoolError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| PoolError::Connect(e.into()))?;
    drive(conn, "HTTP/2");
    *host.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx.clone());
    Ok(Conn::H2 { tx, reused: false })
}

/// Runs a connection (`conn`, hyper's connection future) in a task of its own until it ends.
fn drive<F>(conn: F, protocol: &'static str)
where
    F: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended");
        }
    });
}

/// Rewrites `req` for an HTTP/1.1 connection: origin-form target, `Host` when it has none. The
/// absolute URI it had is returned.
fn to_h1_form(req: &mut Request<Full<Bytes>>, host: &Host) -> Uri {
    if !req.headers().contains_key(HOST)
        && let Some(value) = &host.host_header
    {
        req.headers_mut().insert(HOST, value.clone());
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    std::mem::replace(req.uri_mut(), Uri::from(pq))
}

/// The `Host` header for `authority` reached over `scheme`: its host, and its port unless the
/// scheme's default.
pub fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => {
            HeaderValue::try_from(format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::try_from(authority.host()).ok(),
    }
}

impl Host {
    fn new(scheme: Scheme, authority: Authority) -> Self {
        Self {
            host_header: host_header(&scheme, &authority),
            scheme,
            authority,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            reaping: AtomicBool::new(false),
        }
    }

    /// A connection that can take a request now: the shared HTTP/2 one, else the most recently
    /// used idle HTTP/1.1 one. Closed and expired ones are dropped on the way.
    async fn checkout(&self) -> Option<Conn> {
        if let Some(tx) = self.h2.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && !tx.is_closed()
        {
            return Some(Conn::H2 {
                tx: tx.clone(),
                reused: true,
            });
        }
        loop {
            let now = Instant::now();
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if idle.tx.is_closed() || now.saturating_duration_since(idle.since) >= IDLE_TIMEOUT {
                continue;
            }
            let mut tx = idle.tx;
            // Back on the stack as its body ended; hyper may not have finished the exchange yet.
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            return Some(Conn::H1 { tx, reused: true });
        }
    }

    /// Puts an HTTP/1.1 connection whose answer was read whole back on the stack.
    fn checkin(self: &Arc<Self>, tx: http1::SendRequest<Full<Bytes>>) {
        if tx.is_closed() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Idle {
                tx,
                since: Instant::now(),
            });
        if !self.reaping.swap(true, Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Stops sharing the HTTP/2 connection that just turned a request away (closed, or going
    /// away); the next request makes a new one.
    fn forget_h2(&self) {
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] and closed ones.
    fn prune(&self, now: Instant) {
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, gone): (Vec<Idle>, Vec<Idle>) = idle.drain(..).partition(|i| {
                !i.tx.is_closed() && now.saturating_duration_since(i.since) < IDLE_TIMEOUT
            });
            *idle = keep;
            gone
        };
        drop(expired);
    }
}

/// Closes `host`'s idle connections as they expire, until the host is gone (a config reload
/// drops the pool, and the host goes when its last answer has ended).
async fn reap(host: Weak<Host>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 3).await;
        let Some(host) = host.upgrade() else { return };
        host.prune(Instant::now());
    }
}

/// An upstream answer's body. For an HTTP/1.1 connection from the pool, the connection goes back
/// to the pool when the body has been read to its end; dropped earlier, it is closed.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    back: Option<(http1::SendRequest<Full<Bytes>>, Arc<Host>)>,
}

impl PooledBody {
    /// A body that returns no connection (HTTP/2, or a client other than the pool).
    pub fn new(inner: Incoming) -> Self {
        Self { inner, back: None }
    }

    fn returning(inner: Incoming, tx: http1::SendRequest<Full<Bytes>>, host: Arc<Host>) -> Self {
        Self {
            inner,
            back: Some((tx, host)),
        }
    }

    fn release(&mut self) {
        if let Some((tx, host)) = self.back.take() {
            host.checkin(tx);
        }
    }
}

impl From<Incoming> for PooledBody {
    fn from(inner: Incoming) -> Self {
        Self::new(inner)
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            // The connection is broken: never back to the pool.
            Some(Err(_)) => self.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended; the connection is reusable then.
        if self.back.is_some() && self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_schemes_default() {
        for (url, host) in [
            ("http://127.0.0.1:9/base", "127.0.0.1:9"),
            (
                "https://generativelanguage.googleapis.com",
                "generativelanguage.googleapis.com",
            ),
            ("https://example.com:443/", "example.com"),
            ("http://example.com:80", "example.com"),
            ("http://example.com:443", "example.com:443"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            let uri: Uri = url.parse().unwrap();
            let header = host_header(uri.scheme().unwrap(), uri.authority().unwrap());
            assert_eq!(header.unwrap(), host, "{url}");
        }
    }
}
