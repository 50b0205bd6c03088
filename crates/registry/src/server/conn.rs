//! Connections: the accept loop and what keeps a client from holding a connection (and its
//! descriptor) forever.
//!
//! - At most [`ConnectionLimits::max_connections`] connections are served at once; beyond that
//!   the loop stops accepting and new clients wait in the kernel's listen backlog.
//! - A failing `accept` (out of descriptors: EMFILE/ENFILE, or out of memory) backs off
//!   exponentially instead of retrying at once: the pending connection stays queued, so a
//!   retry would fail again straight away and spin.
//! - Each connection has a watchdog. With no request in flight it closes the connection once it
//!   has been idle for [`ConnectionLimits::header_read_timeout`] (no first request yet: a silent
//!   socket, a stalled TLS handshake, a trickled request head) or
//!   [`ConnectionLimits::idle_timeout`] (keep-alive between requests). While a response is being
//!   written it closes the connection once a write has been blocked for
//!   [`ConnectionLimits::send_timeout`] (a client that stopped reading).
//! - A request body that delivers nothing for [`ConnectionLimits::body_read_timeout`], or that
//!   averages less than [`ConnectionLimits::body_min_rate`] once it has been arriving for that
//!   long, fails its request (a client that sent its headers and then stopped or trickles).
//!
//! Time the server itself spends on a request (hashing a large upload, say) never counts
//! against the client.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use super::socket::ConnectionSocket;

/// Limits on what a client may hold: time without progress, and connections at once.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a connection may go without a request once it is accepted (the TLS handshake
    /// included), and how long a request's head may take to arrive once it starts.
    pub header_read_timeout: Duration,
    /// How long a connection may sit idle between requests (keep-alive) before it is closed.
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body; the request then fails.
    pub body_read_timeout: Duration,
    /// Slowest average rate, in bytes per second, of a request body that has been arriving for
    /// longer than `body_read_timeout` (0: any rate); a slower one fails its request.
    pub body_min_rate: u64,
    /// Longest a response write may stay blocked on a client that does not read; the
    /// connection is then closed.
    pub send_timeout: Duration,
    /// Connections served at once. Further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
            send_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
        }
    }
}

/// A third of the process's descriptor limit, less a reserve for storage files: a connection
/// holds its socket, and a request in flight a blob or upload file, rarely more.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct it is given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let soft = if rc == 0 { limit.rlim_cur } else { 1024 };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft.saturating_sub(64) / 3).clamp(16, 65_536)
}

/// How long to wait before accepting again after `error`, given the previous wait (`None`
/// after a success): nothing for errors of one connection (it was reset before it was
/// accepted), otherwise 10 ms doubling up to 1 s, since the cause (no descriptors, no memory)
/// outlasts a retry.
pub(crate) fn accept_backoff(error: &io::Error, previous: Option<Duration>) -> Option<Duration> {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => None,
        _ => Some(match previous {
            None => Duration::from_millis(10),
            Some(d) => (d * 2).min(Duration::from_secs(1)),
        }),
    }
}

/// Runs the accept loop on `listener` until `shutdown`, then lets requests in flight finish
/// (10 s at most).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let server = Arc::new(Server {
        builder,
        router,
        tls,
        limits: limits.clone(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = None;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff = None;
                    stream
                }
                Err(e) => {
                    backoff = accept_backoff(&e, backoff);
                    tracing::warn!(error = %e, ?backoff, "accepting a connection failed");
                    if let Some(wait) = backoff {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let server = server.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            server.connection(stream, watcher).await;
            drop(slot);
        });
    }
    drop(listener);
    // Requests in flight finish; idle connections close.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

struct Server {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
}

impl Server {
    async fn connection(&self, stream: tokio::net::TcpStream, watcher: Watcher) {
        let activity = Arc::new(Activity::new());
        match &self.tls {
            None => {
                // Only plain HTTP/1 bodies are the socket's bytes (see `socket`).
                let socket = ConnectionSocket::new(stream.as_raw_fd());
                let io = Watched::new(stream, activity.clone(), Some(socket.clone()));
                self.run(io, activity, Some(socket), watcher).await;
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                let stream =
                    match tokio::time::timeout(self.limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                let io = Watched::new(stream, activity.clone(), None);
                self.run(io, activity, None, watcher).await;
            }
        }
    }

    async fn run<I>(
        &self,
        io: Watched<I>,
        activity: Arc<Activity>,
        socket: Option<ConnectionSocket>,
        watcher: Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = ConnService {
            router: self.router.clone(),
            activity: activity.clone(),
            socket,
            body_read_timeout: self.limits.body_read_timeout,
            body_min_rate: self.limits.body_min_rate,
        };
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = watcher.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            () = watchdog(&activity, &self.limits) => {
                tracing::debug!("closing a connection that made no progress");
            }
        }
    }
}

/// What a connection is doing, for its watchdog. Times are milliseconds since `epoch`.
struct Activity {
    epoch: tokio::time::Instant,
    /// Requests in flight (their responses not yet fully handed to the connection).
    active: AtomicU64,
    /// Requests seen.
    requests: AtomicU64,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// When a write started to wait for the client, plus one; zero when no write waits.
    write_blocked_since: AtomicU64,
    /// Wakes the watchdog when a request starts (its deadline may then come sooner).
    request_started: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: tokio::time::Instant::now(),
            active: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            request_started: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn write_blocked(&self, blocked: bool) {
        let current = self.write_blocked_since.load(Ordering::Relaxed);
        match (blocked, current) {
            (true, 0) => self
                .write_blocked_since
                .store(self.now() + 1, Ordering::Relaxed),
            (false, c) if c != 0 => self.write_blocked_since.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Completes when the connection has made no progress for longer than its limits allow.
async fn watchdog(activity: &Activity, limits: &ConnectionLimits) {
    loop {
        let now = activity.now();
        let deadline = if activity.active.load(Ordering::Acquire) == 0 {
            let limit = if activity.requests.load(Ordering::Relaxed) == 0 {
                limits.header_read_timeout
            } else {
                limits.idle_timeout
            };
            activity
                .idle_since
                .load(Ordering::Acquire)
                .saturating_add(millis(limit))
        } else {
            match activity.write_blocked_since.load(Ordering::Relaxed) {
                0 => now.saturating_add(millis(limits.send_timeout)),
                since => (since - 1).saturating_add(millis(limits.send_timeout)),
            }
        };
        if deadline <= now {
            return;
        }
        // Besides a request starting, events only ever move the deadline later: waking at the
        // old one and looking again is enough.
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
            () = activity.request_started.notified() => {}
        }
    }
}

/// Counts a request as in flight from its arrival until its response body is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        // A mark left by a flush of the previous response must not count against this one.
        activity.write_blocked(false);
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.request_started.notify_one();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's transport, recording when writes wait for the client.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    socket: Option<ConnectionSocket>,
}

impl<I> Watched<I> {
    fn new(inner: I, activity: Arc<Activity>, socket: Option<ConnectionSocket>) -> Self {
        Watched {
            inner,
            activity,
            socket,
        }
    }

    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write_blocked(polled.is_pending());
        polled
    }
}

impl<I> Drop for Watched<I> {
    fn drop(&mut self) {
        // `inner` (the socket) is closed right after this.
        if let Some(socket) = &self.socket {
            socket.closing();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        // A ready flush is no sign of progress (a TCP flush does nothing): only a write that
        // goes through clears the mark.
        if polled.is_pending() {
            self.activity.write_blocked(true);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a connection's hyper service: request bodies get the read timeout, requests
/// are counted in flight, and plain-HTTP requests carry their socket.
#[derive(Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
    socket: Option<ConnectionSocket>,
    body_read_timeout: Duration,
    body_min_rate: u64,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        use tower::ServiceExt as _;

        let in_flight = InFlight::new(self.activity.clone());
        let (timeout, min_rate) = (self.body_read_timeout, self.body_min_rate);
        let socket = self.socket.clone();
        let mut req = req.map(|body| {
            if body.is_end_stream() {
                Body::new(body)
            } else {
                Body::new(TimeoutBody::new(body, timeout, min_rate, socket))
            }
        });
        if let Some(socket) = &self.socket {
            req.extensions_mut().insert(socket.clone());
        }
        let response = self.router.clone().oneshot(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(InFlightBody {
                    inner: body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct InFlightBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a request body that stalled or crawled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyTimedOut {
    /// Nothing arrived for this long.
    #[error("no request body bytes arrived for {0:?}")]
    Stalled(Duration),
    /// Bytes arrived, but slower than the minimum rate.
    #[error("the request body arrives at {rate} bytes/s, below the minimum of {min} bytes/s")]
    TooSlow {
        /// The average rate so far.
        rate: u64,
        /// The minimum.
        min: u64,
    },
}

/// A request body that fails once nothing has arrived for `timeout` (the clock runs only while
/// the body is waited for), or when after `timeout` it has averaged less than `min_rate`.
///
/// On a plain HTTP/1 connection the body may be waiting for a raised receive low-water mark
/// (see `socket`): bytes queued in the kernel then count as arrived.
struct TimeoutBody {
    inner: Incoming,
    timeout: Duration,
    min_rate: u64,
    socket: Option<ConnectionSocket>,
    /// Armed while a poll waits for the client.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// First poll.
    started: Option<tokio::time::Instant>,
    /// Bytes delivered.
    received: u64,
    /// Bytes seen queued on the socket at the last expiry.
    queued: u64,
}

impl TimeoutBody {
    fn new(
        inner: Incoming,
        timeout: Duration,
        min_rate: u64,
        socket: Option<ConnectionSocket>,
    ) -> Self {
        TimeoutBody {
            inner,
            timeout,
            min_rate,
            socket,
            sleep: None,
            armed: false,
            started: None,
            received: 0,
            queued: 0,
        }
    }

    /// Fails a body that averaged under the minimum rate since its first `timeout`.
    fn check_rate(&self, now: tokio::time::Instant, queued: u64) -> Result<(), BodyTimedOut> {
        let Some(started) = self.started else {
            return Ok(());
        };
        let elapsed = now.duration_since(started);
        if self.min_rate == 0 || elapsed <= self.timeout {
            return Ok(());
        }
        let arrived = self.received + queued;
        let rate = (arrived as f64 / elapsed.as_secs_f64()) as u64;
        if rate < self.min_rate {
            return Err(BodyTimedOut::TooSlow {
                rate,
                min: self.min_rate,
            });
        }
        Ok(())
    }

    fn arm(&mut self, deadline: tokio::time::Instant) {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.armed = true;
    }
}

impl hyper::body::Body for TimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let now = tokio::time::Instant::now();
        this.started.get_or_insert(now);
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            this.queued = 0;
            if let Some(Ok(frame)) = &frame
                && let Some(data) = frame.data_ref()
            {
                this.received += data.len() as u64;
                if let Err(e) = this.check_rate(now, 0) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.armed {
            this.arm(now + this.timeout);
        }
        loop {
            let sleep = this.sleep.as_mut().expect("armed above");
            ready!(sleep.as_mut().poll(cx));
            // Bytes that arrived below the socket's low-water mark are progress too.
            let queued = this.socket.as_ref().and_then(ConnectionSocket::queued);
            let now = tokio::time::Instant::now();
            match queued {
                Some(q) if q > this.queued => {
                    this.queued = q;
                    if let Err(e) = this.check_rate(now, q) {
                        this.armed = false;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    this.arm(now + this.timeout);
                }
                _ => {
                    this.armed = false;
                    let e = BodyTimedOut::Stalled(this.timeout);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (from reading a request body) is a stalled body.
pub(crate) fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        // An `io::Error` wrapping an error reports that error's source, not the error itself.
        next = match e.downcast_ref::<io::Error>() {
            Some(io) if io.get_ref().is_some() => io.get_ref().map(|e| e as _),
            _ => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_on_resource_errors_only() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let first = accept_backoff(&emfile, None).unwrap();
        assert_eq!(first, Duration::from_millis(10));
        let mut wait = first;
        for _ in 0..20 {
            wait = accept_backoff(&emfile, Some(wait)).unwrap();
        }
        assert_eq!(wait, Duration::from_secs(1));
        let enfile = io::Error::from_raw_os_error(libc::ENFILE);
        assert!(accept_backoff(&enfile, None).is_some());
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(accept_backoff(&aborted, Some(first)), None);
    }

    #[test]
    fn default_connection_cap_leaves_descriptors_spare() {
        let cap = default_max_connections();
        assert!(cap >= 16);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: getrlimit writes one `rlimit`.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        if limit.rlim_cur >= 1024 {
            assert!((cap as u64) * 3 < limit.rlim_cur);
        }
    }

    #[tokio::test]
    async fn watchdog_spares_busy_connections_and_closes_idle_ones() {
        let ms = Duration::from_millis;
        let limits = ConnectionLimits {
            header_read_timeout: ms(100),
            idle_timeout: ms(400),
            body_read_timeout: ms(100),
            body_min_rate: 0,
            send_timeout: ms(200),
            max_connections: 1,
        };
        let activity = Arc::new(Activity::new());
        // A connection waiting for its first request, which then arrives and blocks its writes:
        // the send timeout applies at once, not the header timeout computed before.
        let long = ConnectionLimits {
            header_read_timeout: ms(60_000),
            ..limits.clone()
        };
        let first = Arc::new(Activity::new());
        let blocked = async {
            tokio::time::sleep(ms(50)).await;
            let request = InFlight::new(first.clone());
            first.write_blocked(true);
            request
        };
        let start = tokio::time::Instant::now();
        let (_, _request) = tokio::join!(watchdog(&first, &long), blocked);
        assert!(start.elapsed() < ms(3000));
        // A request in flight with no blocked write is never closed, however long it takes.
        let request = InFlight::new(activity.clone());
        let watched = tokio::time::timeout(ms(1000), watchdog(&activity, &limits));
        assert!(watched.await.is_err());
        drop(request);
        // Idle after a request: the keep-alive limit applies.
        let start = tokio::time::Instant::now();
        watchdog(&activity, &limits).await;
        let waited = start.elapsed();
        assert!(waited >= ms(390) && waited < ms(3000), "{waited:?}");
        // A write blocked on the client.
        let _request = InFlight::new(activity.clone());
        activity.write_blocked(true);
        let start = tokio::time::Instant::now();
        watchdog(&activity, &limits).await;
        let waited = start.elapsed();
        assert!(waited >= ms(190) && waited < ms(3000), "{waited:?}");
    }

    #[tokio::test]
    async fn a_new_connection_gets_the_header_timeout() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(100),
            ..ConnectionLimits::default()
        };
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        watchdog(&activity, &limits).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
