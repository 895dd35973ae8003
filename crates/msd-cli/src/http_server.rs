//! The HTTP/1.1 server loop of `msd serve` and of the proxy's metrics server.
//!
//! Each connection takes a [`ConnectionLimit`] place and closes after its idle timeout (see
//! [`LimitedStream`]). A request head must arrive in full within [`MAX_HEADER_READ_TIMEOUT`], or
//! the idle timeout when that is shorter, so a client that trickles header bytes cannot keep a
//! place for long. The same timer closes a keep-alive connection that waits that long for its
//! next request. Shutdown stops accepting, lets open requests finish and is bounded by the
//! caller (see [`Draining`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::debug;

use crate::connections::{ConnectionLimit, LimitedStream};

/// Maximum time a client may take to send one request head.
pub(crate) const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections still open after the server stopped accepting.
pub(crate) struct Draining(GracefulShutdown);

impl std::fmt::Debug for Draining {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Draining")
    }
}

impl Draining {
    /// Asks every open connection to close after its current request, and returns once all are
    /// closed. Dropping the future leaves the rest to close on their own.
    pub(crate) async fn finish(self) {
        self.0.shutdown().await;
    }
}

/// Serves `app` on `listener` until `stop` completes, then returns the connections still open.
pub(crate) async fn serve(
    listener: TcpListener,
    limit: &Arc<ConnectionLimit>,
    idle_timeout: Duration,
    app: Router,
    stop: impl Future<Output = ()>,
) -> Draining {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle_timeout.min(MAX_HEADER_READ_TIMEOUT));
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = limit.accept(&listener) => accepted,
            () = &mut stop => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, %peer, "failed to set TCP_NODELAY");
        }
        let io = TokioIo::new(LimitedStream::new(stream, Arc::clone(limit), permit, idle_timeout));
        let connection = graceful.watch(builder.serve_connection(io, TowerToHyperService::new(app.clone())));
        let head_timeouts = limit.head_timeouts();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => {}
                Err(error) if error.is_timeout() => {
                    head_timeouts.inc();
                    debug!(%peer, "closing connection: the request head did not arrive in time");
                }
                Err(error) => debug!(%error, %peer, "connection ended with an error"),
            }
        });
    }
    Draining(graceful)
}
