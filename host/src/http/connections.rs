//! Which connections are taken, and when an idle one is closed: applied to each TCP stream as it
//! is accepted, before TLS.
//!
//! - A global cap (`--max-connections`). Past it, [`HEALTH_RESERVE`] more connections are taken
//!   on which only the health routes are served (anything else gets 503 and the connection is
//!   closed), so a platform's probes (`/health*`, and KServe's `/v2/health/*`) still answer
//!   while the server is full. Past that, a
//!   connection is closed as soon as it is accepted.
//! - A per-address cap (`--max-connections-per-ip`, 0 for none): past it, closed at once.
//! - An idle timeout (`--idle-timeout`): a connection with no request in progress for that long
//!   is closed, whether it never sent a byte after its handshake, sits between HTTP/1.1
//!   requests, or keeps an HTTP/2 connection open with no stream (answering pings is not a
//!   request). A request in progress is bounded by `--request-timeout` instead.
//!
//! The stream is wrapped ([`Tracked`]) so the idle deadline is enforced where hyper waits for
//! bytes: when it passes, a read returns end-of-file and a write fails, and hyper closes the
//! connection. The per-connection service is wrapped ([`TrackedService`]) to count requests in
//! progress and to hand the handlers the connection's [`Conn`] (for the health-only mode).

use std::collections::HashMap;
use std::future::{Future, Ready};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::ApiError;

/// Connections taken past `--max-connections`, for health probes only.
pub const HEALTH_RESERVE: usize = 32;
/// How long a health-only connection may stay idle.
const HEALTH_ONLY_IDLE: Duration = Duration::from_secs(2);
/// Descriptors kept back from `--max-connections`' default for everything else the process
/// opens (models, guests, the compile cache, watchers, libraries) and the health reserve.
const DESCRIPTOR_RESERVE: u64 = 256;

/// The caps and the idle timeout, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max: usize,
    /// 0: no per-address cap.
    pub per_ip: usize,
    pub idle: Duration,
}

/// `--max-connections`' default: three quarters of what the descriptor limit leaves after a
/// reserve, at least 64. `nofile` is the soft limit, already raised to the hard one.
pub fn default_max_connections(nofile: u64) -> usize {
    let usable = nofile.saturating_sub(DESCRIPTOR_RESERVE + HEALTH_RESERVE as u64);
    usize::try_from(usable / 4 * 3).unwrap_or(usize::MAX).max(64)
}

/// Raises the soft descriptor limit to the hard one (as servers commonly do at start) and
/// returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Every connection the server holds.
pub struct Connections {
    limits: ConnectionLimits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    epoch: Instant,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Full,
    PerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Full => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a connection from `ip`, or says why not.
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Arc<Conn>, Refusal> {
        if let (Some(ip), true) = (ip, self.limits.per_ip > 0) {
            let mut per_ip = self.per_ip.lock().expect("the per-address table is never poisoned");
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.limits.per_ip {
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        let conn = Conn {
            connections: Arc::clone(self),
            ip: ip.filter(|_| self.limits.per_ip > 0),
            health_only: open > self.limits.max,
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
        };
        if open > self.limits.max + HEALTH_RESERVE {
            drop(conn);
            return Err(Refusal::Full);
        }
        crate::metrics::METRICS.connections_open.set(open as i64);
        Ok(Arc::new(conn))
    }
}

/// One accepted connection; dropped (and uncounted) when hyper drops its stream and service.
pub struct Conn {
    connections: Arc<Connections>,
    /// Counted in the per-address table.
    ip: Option<IpAddr>,
    /// Taken past `--max-connections`: only health probes are served on it.
    pub health_only: bool,
    /// Requests in progress.
    busy: AtomicUsize,
    /// When the last request ended (or the connection opened), in ms since `epoch`.
    idle_since_ms: AtomicU64,
}

impl Conn {
    fn idle_timeout(&self) -> Duration {
        if self.health_only {
            self.connections.limits.idle.min(HEALTH_ONLY_IDLE)
        } else {
            self.connections.limits.idle
        }
    }

    /// When the connection becomes idle for too long; `None` while a request is in progress.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
        Some(self.connections.epoch + since + self.idle_timeout())
    }

    fn begin(self: &Arc<Self>) -> InProgress {
        self.busy.fetch_add(1, Ordering::SeqCst);
        InProgress(Arc::clone(self))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let open = self.connections.open.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::metrics::METRICS.connections_open.set(open as i64);
        if let Some(ip) = self.ip {
            let mut per_ip = self.connections.per_ip.lock().expect("the per-address table is never poisoned");
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A request in progress on a connection; its end restarts the connection's idle clock.
struct InProgress(Arc<Conn>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since_ms.store(conn.connections.now_ms(), Ordering::SeqCst);
        conn.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The acceptor: admits or refuses each TCP stream, and wraps the ones it takes.
#[derive(Clone)]
pub struct Admit(pub Arc<Connections>);

impl<S> Accept<TcpStream, S> for Admit {
    type Stream = Tracked<TcpStream>;
    type Service = TrackedService<S>;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream.peer_addr().ok();
        std::future::ready(match self.0.admit(peer.map(|a| a.ip())) {
            Ok(conn) => {
                let _ = stream.set_nodelay(true);
                Ok((Tracked::new(stream, Arc::clone(&conn)), TrackedService { inner: service, conn }))
            }
            Err(refusal) => {
                crate::metrics::METRICS.connections_refused.with_label_values(&[refusal.label()]).inc();
                tracing::debug!(peer = ?peer, reason = refusal.label(), "connection refused");
                Err(io::Error::other(refusal.label()))
            }
        })
    }
}

/// A stream that ends when its connection has been idle too long.
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    timer: Pin<Box<Sleep>>,
}

impl<S> Tracked<S> {
    fn new(inner: S, conn: Arc<Conn>) -> Tracked<S> {
        let first = conn.idle_deadline().unwrap_or_else(Instant::now);
        Tracked { inner, conn, timer: Box::pin(tokio::time::sleep_until(first.into())) }
    }

    /// Whether the idle deadline has passed; otherwise the timer is armed to wake `cx` at it.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.conn.idle_deadline() {
                Some(deadline) if deadline <= now => {
                    crate::metrics::METRICS.connections_closed_idle.inc();
                    return true;
                }
                Some(deadline) => self.timer.as_mut().reset(deadline.into()),
                // A request is in progress: look again later.
                None => self.timer.as_mut().reset((now + self.conn.idle_timeout()).into()),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // End of file: hyper closes the connection.
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// On a connection taken past `--max-connections`, serves the health routes only (`/health*`,
/// `/v2/health/*` and gRPC's health service; anything else gets 503, or UNAVAILABLE over gRPC), and closes the connection after the answer.
pub async fn health_only(request: Request<Body>, next: Next) -> Response {
    let Some(conn) = request.extensions().get::<ConnHandle>().map(|c| Arc::clone(&c.0)) else {
        return next.run(request).await;
    };
    if !conn.health_only {
        return next.run(request).await;
    }
    let http1 = request.version() <= Version::HTTP_11;
    let path = request.uri().path();
    let grpc = super::access::is_grpc(request.headers());
    let mut response = if path.starts_with("/health")
        || path.starts_with("/v2/health")
        || path.starts_with(super::grpc::HEALTH_PATH)
    {
        next.run(request).await
    } else {
        let refusal = ApiError::overloaded(format!(
            "{} connections are open, the limit (--max-connections); past it only /health is served",
            conn.connections.limits.max
        ));
        if grpc {
            super::grpc::to_status(&refusal).into_http::<Body>().into_response()
        } else {
            refusal.into_response()
        }
    };
    if http1 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The connection's handle, in every request's extensions.
#[derive(Clone)]
pub struct ConnHandle(pub Arc<Conn>);

/// The per-connection service: counts the request in progress and hands it the connection.
#[derive(Clone)]
pub struct TrackedService<S> {
    inner: S,
    conn: Arc<Conn>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<Request<B>> for TrackedService<S>
where
    S: tower_service::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> BoxFuture<Result<S::Response, S::Error>> {
        let in_progress = self.conn.begin();
        request.extensions_mut().insert(ConnHandle(Arc::clone(&self.conn)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_progress);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> ConnectionLimits {
        ConnectionLimits { max, per_ip, idle: Duration::from_secs(60) }
    }

    #[test]
    fn caps_per_address_and_overall_with_a_health_reserve() {
        let connections = Connections::new(limits(2, 3));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = connections.admit(Some(a)).unwrap();
        let second = connections.admit(Some(a)).unwrap();
        assert!(!first.health_only && !second.health_only);
        let third = connections.admit(Some(a)).unwrap();
        assert!(third.health_only, "past --max-connections only health probes are served");
        assert!(matches!(connections.admit(Some(a)), Err(Refusal::PerIp)));
        let other = connections.admit(Some(b)).unwrap();
        assert!(other.health_only);
        drop((first, second, third, other));
        assert_eq!(connections.open.load(Ordering::SeqCst), 0);
        assert!(connections.per_ip.lock().unwrap().is_empty(), "closed connections leave no entry");

        let mut held = Vec::new();
        for i in 0..(2 + HEALTH_RESERVE) {
            held.push(connections.admit(Some(IpAddr::from([10, 1, 0, i as u8]))).unwrap());
        }
        assert!(matches!(connections.admit(Some(b)), Err(Refusal::Full)));
        assert_eq!(
            connections.open.load(Ordering::SeqCst),
            2 + HEALTH_RESERVE,
            "a refused connection is not counted"
        );
    }

    #[test]
    fn idle_only_without_a_request_in_progress() {
        let connections = Connections::new(limits(8, 0));
        let conn = connections.admit(None).unwrap();
        assert!(conn.idle_deadline().is_some());
        let request = conn.begin();
        assert_eq!(conn.idle_deadline(), None);
        drop(request);
        let deadline = conn.idle_deadline().unwrap();
        assert!(deadline > Instant::now() + Duration::from_secs(59));
    }

    #[test]
    fn the_default_cap_leaves_descriptors_to_spare() {
        assert_eq!(default_max_connections(1024), 552);
        assert_eq!(default_max_connections(300), 64);
        let big = default_max_connections(1 << 20) as u64;
        assert!(big + HEALTH_RESERVE as u64 + DESCRIPTOR_RESERVE < 1 << 20);
    }
}
