//! Bounds on the TCP connections that `msd serve` and `msd proxy` hold open.
//!
//! [`ConnectionLimit`] caps the connections open at once. When every place is taken, the
//! connection just accepted waits for a place and the server accepts no other. Further clients
//! wait in the kernel's listen backlog, and once that is full their TCP stacks retry or give up.
//! Nothing is accepted only to be closed again, and a flood of connections cannot exhaust the
//! process's file descriptors.
//!
//! [`LimitedStream`] adds an idle timeout for the HTTP servers: a connection on which nothing was
//! read or written for the timeout, while the server waits to read or write, is closed. A client
//! that connects and sends nothing, or stops reading a response, therefore gives its place back.
//! [`Activity`] does the same for the proxy, whose connections may stop being polled at all.
//!
//! The process's soft limit on open files is raised towards the hard limit at start so that the
//! connection limit fits in it ([`raise_open_file_limit`]), and listeners get a backlog of
//! [`BACKLOG`] connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::exit::CliError;
use crate::settings::{parse_duration, usage};
use crate::warning_limit::{nonzero, WarningLimit};

/// Minimum time between two warnings that the limit was reached, and between two warnings of
/// failed accepts.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Pause after an accept error that is not about one connection (out of file descriptors, for
/// example), so that the loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Largest `--max-connections`: a million connections are far beyond what one process of these
/// servers is built for, and the bound keeps the value within what a semaphore can count.
pub(crate) const MAX_CONNECTIONS: usize = 1_000_000;

/// Maximum idle timeout, so that deadlines computed from it cannot overflow.
pub(crate) const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Connections the kernel queues for a listener before the server accepts them. The kernel
/// caps it at `net.core.somaxconn`.
pub(crate) const BACKLOG: u32 = 1024;

/// Descriptors a server needs besides its connections: the discoverer's sockets, the
/// listeners, the standard streams and some room.
const OTHER_FILES: u64 = 64;

/// Checks a `--max-connections` value read by clap.
pub(crate) fn check_max_connections(max: NonZeroUsize) -> Result<NonZeroUsize, CliError> {
    check_at_most_connections("--max-connections", max)
}

/// Checks a `--max-event-clients` value read by clap against the connection limit. Each event
/// client keeps its connection for as long as it listens, so event clients alone must not be
/// able to take every place.
pub(crate) fn check_max_event_clients(max: NonZeroUsize, max_connections: NonZeroUsize) -> Result<NonZeroUsize, CliError> {
    check_at_most_connections("--max-event-clients", max)?;
    if max >= max_connections {
        return Err(usage(format!(
            "invalid --max-event-clients {max}: it must be below --max-connections ({max_connections}), so that other requests still find a place"
        )));
    }
    Ok(max)
}

fn check_at_most_connections(flag: &str, max: NonZeroUsize) -> Result<NonZeroUsize, CliError> {
    if max.get() > MAX_CONNECTIONS {
        return Err(usage(format!("invalid {flag} {max}: it must be at most {MAX_CONNECTIONS}")));
    }
    Ok(max)
}

/// Parses an idle timeout flag: a duration from 1 s to [`MAX_IDLE_TIMEOUT`].
pub(crate) fn parse_idle_timeout(name: &str, text: &str) -> Result<Duration, CliError> {
    let timeout = parse_duration(name, text)?;
    if timeout < Duration::from_secs(1) {
        return Err(usage(format!("invalid {name} {text:?}: it must be at least 1s")));
    }
    if timeout > MAX_IDLE_TIMEOUT {
        return Err(usage(format!("invalid {name} {text:?}: it must be at most 7 days")));
    }
    Ok(timeout)
}

/// Binds a TCP listener with a backlog of [`BACKLOG`] connections.
pub(crate) fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Raises the soft limit on open files so that `connections` connections, each using
/// `files_per_connection` descriptors, fit beside the process's other files, as far as the hard
/// limit allows. Logs a warning when they still do not fit.
pub(crate) fn raise_open_file_limit(connections: usize, files_per_connection: u64, flag: &str) {
    let needed = u64::try_from(connections).unwrap_or(u64::MAX).saturating_mul(files_per_connection).saturating_add(OTHER_FILES);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            warn!(%error, "failed to read the open-file limit");
            return;
        }
    };
    if needed <= soft {
        return;
    }
    let raised = needed.min(hard);
    let soft = match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
        Ok(()) => {
            debug!(from = soft, to = raised, "raised the open-file limit");
            raised
        }
        Err(error) => {
            warn!(%error, "failed to raise the open-file limit");
            soft
        }
    };
    if needed > soft {
        warn!(
            open_file_limit = soft,
            needed,
            "the open-file limit is below what {flag} connections may need; raise the hard limit (ulimit -Hn) or lower {flag}"
        );
    }
}

/// Returns whether an error means this process or host ran out of a resource (file
/// descriptors, buffers, memory), rather than that the peer failed.
pub(crate) fn is_local_exhaustion(error: &io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM))
}

/// Places for open connections, shared by a listener and the connections it accepted.
#[derive(Debug)]
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// Times an accepted connection found every place taken. Clients queued behind it in the
    /// listen backlog are not seen, so they are not counted.
    limit_reached: Counter,
    /// Connections closed by the idle timeout.
    idle_closed: Counter,
    limit_warnings: WarningLimit,
    accept_warnings: WarningLimit,
    /// Request heads that did not arrive in time, counted by the HTTP server.
    head_timeouts: Counter,
    /// Flag that sets the limit, named in the warning; `None` for a fixed limit.
    flag: Option<&'static str>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: NonZeroUsize, flag: Option<&'static str>) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            permits: Arc::new(Semaphore::new(max.get())),
            max: max.get(),
            limit_reached: Counter::default(),
            idle_closed: Counter::default(),
            limit_warnings: WarningLimit::new(WARNING_INTERVAL, 1),
            accept_warnings: WarningLimit::new(WARNING_INTERVAL, 1),
            head_timeouts: Counter::default(),
            flag,
        })
    }

    /// Waits for a free place. The place is given back when the permit is dropped.
    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return permit;
        }
        self.limit_reached.inc();
        if let Some(suppressed) = self.limit_warnings.admit(Instant::now()) {
            warn!(
                max = self.max,
                raise_with = self.flag,
                suppressed = nonzero(suppressed),
                "connection limit reached; new clients wait until a connection closes"
            );
        }
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
    /// (reset or aborted before it was accepted) are skipped. Other errors are logged at most
    /// once per [`WARNING_INTERVAL`] and retried after a short pause.
    pub(crate) async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => return (stream, peer, self.acquire().await),
                Err(error) if is_connection_error(&error) => debug!(%error, "connection failed before it was accepted"),
                Err(error) => {
                    if let Some(suppressed) = self.accept_warnings.admit(Instant::now()) {
                        warn!(%error, suppressed = nonzero(suppressed), "accept failed; retrying");
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

    /// Returns the counter of times an accepted connection found every place taken, to register
    /// in metrics.
    pub(crate) fn limit_reached(&self) -> Counter {
        self.limit_reached.clone()
    }

    /// Returns the counter of connections the idle timeout closed, to register in metrics.
    pub(crate) fn idle_closed(&self) -> Counter {
        self.idle_closed.clone()
    }

    /// Returns the counter of connections closed because a request head did not arrive in
    /// time, to register in metrics.
    pub(crate) fn head_timeouts(&self) -> Counter {
        self.head_timeouts.clone()
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
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
    pub(crate) fn new(stream: TcpStream, limit: Arc<ConnectionLimit>, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        LimitedStream {
            stream,
            limit,
            _permit: permit,
            idle_timeout,
            deadline: Box::pin(tokio::time::sleep_until(deadline_after(idle_timeout))),
            timed_out: false,
        }
    }

    fn restart_idle_timeout(&mut self) {
        self.deadline.as_mut().reset(deadline_after(self.idle_timeout));
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

/// Returns the instant `timeout` from now, or a far instant when that cannot be represented.
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + MAX_IDLE_TIMEOUT)
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

/// When bytes last moved through a proxied connection, and how many moved each way. The proxy's
/// idle timeout reads it from a task of its own, because a connection whose client has closed
/// its side may have no read or write pending that could notice the timeout.
#[derive(Debug)]
pub(crate) struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last time bytes moved.
    last_ms: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity { start: tokio::time::Instant::now(), last_ms: AtomicU64::new(0), read: AtomicU64::new(0), written: AtomicU64::new(0) })
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Returns once no byte has moved for `timeout`.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last.checked_add(timeout).unwrap_or_else(|| last + MAX_IDLE_TIMEOUT);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Returns the bytes read from and written to the watched stream.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.read.load(Ordering::Relaxed), self.written.load(Ordering::Relaxed))
    }
}

/// A stream that records its traffic in an [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }

    fn count_written(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(count)) = written {
            if *count > 0 {
                self.activity.touch();
                self.activity.written.fetch_add(*count as u64, Ordering::Relaxed);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let count = buf.filled().len().saturating_sub(before);
        if count > 0 {
            this.activity.touch();
            this.activity.read.fetch_add(count as u64, Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_written(&written);
        written
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
        assert_eq!(limit.limit_reached().get(), 1);
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
        while limit.limit_reached().get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!accepting.is_finished(), "a second connection got a place over the limit of one");

        drop(permit);
        let _second_permit = accepting.await.unwrap();
        assert_eq!(limit.open(), 1);
        assert_eq!(limit.limit_reached().get(), 1);
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

    /// Reads the backlog of the listener on `port` as `ss` reports it (the Send-Q of a
    /// listening socket).
    fn listen_backlog(port: u16) -> u32 {
        let output = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().expect("ss runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().next().unwrap_or_else(|| panic!("no listener on port {port}: {text:?}"));
        line.split_whitespace().nth(2).and_then(|field| field.parse().ok()).unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
    }

    #[tokio::test]
    async fn listener_backlog_set() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
        assert_eq!(listen_backlog(port), BACKLOG.min(somaxconn));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_idle_after_timeout_without_traffic() {
        let (listener, address) = bound().await;
        let mut client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let activity = Activity::new();
        let mut watched = Watched::new(server, Arc::clone(&activity));
        let started = tokio::time::Instant::now();

        tokio::time::advance(Duration::from_secs(40)).await;
        client.write_all(b"abc").await.unwrap();
        let mut buffer = [0u8; 3];
        watched.read_exact(&mut buffer).await.unwrap();
        tokio::time::advance(Duration::from_secs(40)).await;
        watched.write_all(b"de").await.unwrap();

        activity.idle_for(Duration::from_secs(60)).await;
        assert!(started.elapsed() >= Duration::from_secs(140), "idle after only {:?}", started.elapsed());
        assert_eq!(activity.bytes(), (3, 2));
    }

    #[test]
    fn local_exhaustion_told_from_peer_errors() {
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            assert!(is_local_exhaustion(&io::Error::from_raw_os_error(errno as i32)), "{errno}");
        }
        for errno in [Errno::ECONNREFUSED, Errno::ETIMEDOUT, Errno::EHOSTUNREACH] {
            assert!(!is_local_exhaustion(&io::Error::from_raw_os_error(errno as i32)), "{errno}");
        }
        assert!(!is_local_exhaustion(&io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
    }

    #[test]
    fn flag_bounds_checked() {
        let most = NonZeroUsize::new(MAX_CONNECTIONS).unwrap();
        assert_eq!(check_max_connections(most).unwrap(), most);
        assert!(check_max_connections(NonZeroUsize::new(MAX_CONNECTIONS + 1).unwrap()).is_err());
        assert!(check_max_connections(NonZeroUsize::MAX).is_err());

        let connections = NonZeroUsize::new(1024).unwrap();
        let below = NonZeroUsize::new(1023).unwrap();
        assert_eq!(check_max_event_clients(below, connections).unwrap(), below);
        assert!(check_max_event_clients(connections, connections).is_err());
        assert!(check_max_event_clients(NonZeroUsize::MAX, most).is_err());

        assert_eq!(parse_idle_timeout("--idle-timeout", "1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_idle_timeout("--idle-timeout", "7days").unwrap(), MAX_IDLE_TIMEOUT);
        assert!(parse_idle_timeout("--idle-timeout", "999ms").is_err());
        assert!(parse_idle_timeout("--idle-timeout", "8days").is_err());
        assert!(parse_idle_timeout("--idle-timeout", "300000000000years").is_err());
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
