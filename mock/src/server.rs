//! The accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, `TCP_NODELAY` on every socket.
//!
//! Like Google, the mock gzips every answer (streams included) for a client whose
//! `Accept-Encoding` allows it.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::{Layer, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::SizeAbove;

use crate::service;
use crate::shared::Shared;

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves `listener` until the task is aborted; connection tasks live in a `JoinSet` so they
/// end with it.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = Builder::new(TokioExecutor::new());
    // Benchmarks multiplex many streams over few connections.
    builder.http2().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&builder), Arc::clone(&shared)));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    builder: Arc<Builder<TokioExecutor>>,
    shared: Arc<Shared>,
) {
    // Small answers would otherwise wait on Nagle + delayed ACK (~40 ms).
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let compressed = CompressionLayer::new()
        .compress_when(SizeAbove::new(0))
        .layer(tower::service_fn(move |request| {
            service::handle(Arc::clone(&shared), request)
        }));
    let service = service_fn(move |request| compressed.clone().oneshot(request));
    // Errors here are the peer going away or a stream aborted on purpose: nothing to report.
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}
