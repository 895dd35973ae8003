//! Bounds on the TCP connections that `msd serve` and `msd proxy` hold open.
//!
//! [`ConnectionLimit`] caps the connections open at once. When every place is taken, the
//! connection just accepted waits for a place and the server accepts no other. Further clients
//! wait in the kernel's listen backlog, and once that is full their TCP stacks retry or give up. Nothing is accepted only to be closed again, and a flood of connections cannot
//! exhaust the process's file descriptors.
//!
//! [`LimitedListener`] adds an idle timeout for `msd serve`: a connection on which nothing was
//! read or written for the timeout, while hyper waits to read or write, is closed. A client that
//! connects and sends nothing, or stops reading a response, therefore gives its place back.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, warn};

/// Minimum time between two warnings that the limit was reached.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Pause after an accept error that is not about one connection (out of file descriptors, for
/// example), so that the loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Places for open connections, shared by a listener and the connections it accepted.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// Times a connection had to wait because every place was taken.
    waits: Counter,
    /// Connections closed by the idle timeout.
    idle_closed: Counter,
    /// When the last limit warning was logged, and how many were left out since.
    warning: Mutex<(Option<Instant>, u64)>,
    /// Flag that sets the limit, named in the warning; `None` for a fixed limit.
    flag: Option<&'static str>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: NonZeroUsize, flag: Option<&'static str>) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            permits: Arc::new(Semaphore::new(max.get())),
            max: max.get(),
            waits: Counter::default(),
            idle_closed: Counter::default(),
            warning: Mutex::new((None, 0)),
            flag,
        })
    }

    /// Waits for a free place. The place is given back when the permit is dropped.
    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        self.waits.inc();
        self.warn_limit_reached();
        match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed, so this wait never ends in practice.
            Err(_) => std::future::pending().await,
        }
    }

    /// Accepts the next connection and returns it once it has a place.
    ///
    /// While every place is taken, the one connection just accepted waits and the listener
    /// accepts no other, so the rest wait in the backlog. Errors that concern one connection
    /// (reset or aborted before it was accepted) are skipped; other errors are logged at most
    /// once per [`LIMIT_WARNING_INTERVAL`] and retried after a short pause.
    pub(crate) async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let mut last_warning: Option<Instant> = None;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => return (stream, peer, self.acquire().await),
                Err(error) if is_connection_error(&error) => debug!(%error, "connection failed before it was accepted"),
                Err(error) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                        warn!(%error, "accept failed; retrying");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Returns the number of open connections.
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// Returns the limit.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Returns the counter of times a connection waited for a place, to register in metrics.
    pub(crate) fn waits(&self) -> Counter {
        self.waits.clone()
    }

    /// Returns the counter of connections the idle timeout closed, to register in metrics.
    pub(crate) fn idle_closed(&self) -> Counter {
        self.idle_closed.clone()
    }

    fn warn_limit_reached(&self) {
        let mut warning = self.warning.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, left_out) = &mut *warning;
        if last.is_some_and(|at| at.elapsed() < LIMIT_WARNING_INTERVAL) {
            *left_out = left_out.saturating_add(1);
            return;
        }
        let earlier = std::mem::take(left_out);
        *last = Some(Instant::now());
        warn!(
            max = self.max,
            raise_with = self.flag,
            earlier_waits_not_logged = (earlier > 0).then_some(earlier),
            "connection limit reached; new clients wait until a connection closes"
        );
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// An `axum` listener that takes a [`ConnectionLimit`] place for each connection and closes
/// connections idle for longer than its timeout.
#[derive(Debug)]
pub(crate) struct LimitedListener {
    listener: TcpListener,
    limit: Arc<ConnectionLimit>,
    idle_timeout: Duration,
}

impl LimitedListener {
    pub(crate) fn new(listener: TcpListener, limit: Arc<ConnectionLimit>, idle_timeout: Duration) -> Self {
        LimitedListener { listener, limit, idle_timeout }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer, permit) = self.limit.accept(&self.listener).await;
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, peer = %peer, "failed to set TCP_NODELAY");
        }
        (LimitedStream::new(stream, Arc::clone(&self.limit), permit, self.idle_timeout), peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A TCP stream that keeps its place in a [`ConnectionLimit`] and fails with
/// [`io::ErrorKind::TimedOut`] when a read or write has waited for the idle timeout with no
/// byte moved in either direction since the last one did.
#[derive(Debug)]
pub(crate) struct LimitedStream {
    stream: TcpStream,
    limit: Arc<ConnectionLimit>,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: bool,
}

impl LimitedStream {
    fn new(stream: TcpStream, limit: Arc<ConnectionLimit>, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        LimitedStream {
            stream,
            limit,
            _permit: permit,
            idle_timeout,
            deadline: Box::pin(tokio::time::sleep(idle_timeout)),
            timed_out: false,
        }
    }

    fn restart_idle_timeout(&mut self) {
        self.deadline.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
    }

    /// Returns the idle-timeout error once the deadline has passed. Called only when the stream
    /// is not ready.
    fn poll_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !self.timed_out {
            self.timed_out = true;
            self.limit.idle_closed.inc();
            let peer = self.stream.peer_addr().ok();
            debug!(?peer, timeout = ?self.idle_timeout, "closing idle connection");
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle for longer than the idle timeout")))
    }

    /// Restarts the idle timeout when bytes were written, and checks it when none could be.
    fn after_write(&mut self, cx: &mut Context<'_>, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(count)) => {
                if count > 0 {
                    self.restart_idle_timeout();
                }
                Poll::Ready(Ok(count))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(cx),
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.restart_idle_timeout();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limit(max: usize) -> Arc<ConnectionLimit> {
        ConnectionLimit::new(NonZeroUsize::new(max).unwrap(), Some("--max-connections"))
    }

    async fn bound() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    #[tokio::test]
    async fn places_taken_and_returned() {
        let limit = limit(2);
        let first = limit.acquire().await;
        let second = limit.acquire().await;
        assert_eq!(limit.open(), 2);

        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a third connection got a place while two were open");

        drop(first);
        let third = waiting.await.unwrap();
        assert_eq!(limit.open(), 2);
        assert_eq!(limit.waits().get(), 1);
        drop((second, third));
        assert_eq!(limit.open(), 0);
    }

    #[tokio::test]
    async fn accept_waits_for_a_place() {
        let (listener, address) = bound().await;
        let limit = limit(1);
        let _client_a = TcpStream::connect(address).await.unwrap();
        let (_a, _, permit) = limit.accept(&listener).await;

        let _client_b = TcpStream::connect(address).await.unwrap();
        let accepting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.accept(&listener).await.2 }
        });
        // The second connection is accepted and then waits for the place.
        while limit.waits().get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!accepting.is_finished(), "a second connection got a place over the limit of one");

        drop(permit);
        let _second_permit = accepting.await.unwrap();
        assert_eq!(limit.open(), 1);
        assert_eq!(limit.waits().get(), 1);
    }

    /// Connects a client and wraps the accepted side with a limit of one and `idle_timeout`.
    async fn limited_pair(idle_timeout: Duration) -> (TcpStream, LimitedStream, Arc<ConnectionLimit>) {
        let (listener, address) = bound().await;
        let limit = limit(1);
        let client = TcpStream::connect(address).await.unwrap();
        let (server, _, permit) = limit.accept(&listener).await;
        (client, LimitedStream::new(server, Arc::clone(&limit), permit, idle_timeout), limit)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_closed_when_idle() {
        let (_client, mut server, limit) = limited_pair(Duration::from_secs(60)).await;
        let started = tokio::time::Instant::now();

        let mut byte = [0u8; 1];
        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60), "closed after {:?}", started.elapsed());
        assert_eq!(limit.idle_closed().get(), 1);

        // Reporting the timeout again does not count the connection twice.
        assert_eq!(server.read(&mut byte).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(limit.idle_closed().get(), 1);

        drop(server);
        assert_eq!(limit.open(), 0, "the closed connection kept its place");
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_restarts_idle_timeout() {
        let (mut client, mut server, limit) = limited_pair(Duration::from_secs(60)).await;
        let started = tokio::time::Instant::now();
        let mut byte = [0u8; 1];

        tokio::time::advance(Duration::from_secs(40)).await;
        client.write_all(b"a").await.unwrap();
        server.read_exact(&mut byte).await.unwrap();

        tokio::time::advance(Duration::from_secs(40)).await;
        server.write_all(b"b").await.unwrap();
        client.read_exact(&mut byte).await.unwrap();

        tokio::time::advance(Duration::from_secs(40)).await;
        client.write_all(b"c").await.unwrap();
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"c");
        assert!(started.elapsed() >= Duration::from_secs(120), "the exchange took only {:?}", started.elapsed());
        assert_eq!(limit.idle_closed().get(), 0);

        let error = server.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(limit.idle_closed().get(), 1);
    }
}
