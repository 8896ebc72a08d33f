//! What every accepted socket goes through before HTTP or MQTT sees it: byte counting on
//! the raw socket (so TLS records count), an idle clock, connection limits in total and per
//! source address, and the HTTP listener's accept loop with its timeouts.
//!
//! HTTP connections are bounded so that no client can take the descriptors devices and
//! health checks need:
//! - at most `max_connections` HTTP connections, and at most `per_source` from one address;
//!   past the per-source cap a connection is closed as soon as it is accepted (accepting it
//!   keeps the listen queue moving for everyone else);
//! - at `max_connections`, a new connection evicts the oldest connection that has not sent
//!   a complete request yet (an idle or slow client holds no place against someone who
//!   talks), so a health check or an operator still gets in during a flood of idle sockets;
//! - with nobody to evict (every connection busy with requests), [`HEALTH_RESERVE`] more
//!   are accepted but only answer `GET /api/health` (anything else gets 503), then close;
//!   past that a new connection is closed at once;
//! - a request head must arrive within `header_timeout` (hyper's header read timeout, which
//!   also bounds the wait between requests on a kept-alive connection), and a connection
//!   with no byte in either direction for `idle_timeout` is closed (an event stream sends a
//!   comment every 15 s, so it is never idle);
//! - a TLS handshake must finish within `header_timeout` too.
//!
//! The MQTT listener has its own total cap, so HTTP clients never use up the room devices
//! need (see [`crate::gateway`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::tls::Reloading;

/// Bytes that crossed one socket, both ways, and when it last moved.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from the socket.
    pub received: AtomicU64,
    /// Bytes written to the socket.
    pub sent: AtomicU64,
    /// Milliseconds since [`epoch`] of the last byte read or written.
    last_active_ms: AtomicU64,
}

impl Traffic {
    /// How long since a byte last crossed the socket.
    pub fn idle(&self) -> Duration {
        let now = epoch().elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)))
    }

    fn touch(&self) {
        self.last_active_ms.store(epoch().elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// A socket that counts what crosses it into its own [`Traffic`] and, optionally, into
/// listener-wide totals. Wrapped around the raw TCP stream, beneath TLS, so the counts are
/// what goes on the wire (TLS records and handshakes included).
pub struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
    totals: Option<Arc<Traffic>>,
}

impl<S> Counted<S> {
    /// Wraps `inner`; `totals`, if given, is added to as well.
    pub fn new(inner: S, totals: Option<Arc<Traffic>>) -> Self {
        let traffic = Arc::new(Traffic::default());
        traffic.touch();
        Counted { inner, traffic, totals }
    }

    /// This socket's counts (shared: they keep growing while the socket is used).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    fn count(&self, received: u64, sent: u64) {
        for traffic in std::iter::once(&self.traffic).chain(self.totals.as_ref()) {
            traffic.received.fetch_add(received, Ordering::Relaxed);
            traffic.sent.fetch_add(sent, Ordering::Relaxed);
        }
        self.traffic.touch();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count(n as u64, 0);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.count(0, n as u64);
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.count(0, n as u64);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How many connections past the HTTP cap are still accepted for health checks.
pub const HEALTH_RESERVE: usize = 16;

/// Connection limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, in total.
    pub max_connections: usize,
    /// Connections at once from one source address (0: no per-source cap).
    pub per_source: usize,
}

/// What a listener lets a new connection do.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Full service.
    Full,
    /// Health checks only (the listener is at its cap).
    HealthOnly,
}

/// Counts live connections per listener and per source; a [`Slot`] gives its place back
/// when dropped.
pub struct Admission {
    limits: Limits,
    reserve: usize,
    state: Mutex<AdmissionState>,
}

#[derive(Default)]
struct AdmissionState {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// Connections that have not completed a request yet, oldest first, by admission order.
    waiting: std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>,
    next: u64,
}

/// One admitted connection's place.
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
    order: u64,
    evicted: Arc<tokio::sync::Notify>,
}

impl Slot {
    /// The connection made a request: it is no longer the first to be evicted.
    pub fn active(&self) {
        self.admission.lock().waiting.remove(&self.order);
    }

    /// Resolves when a newer connection needs this place.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Admission {
    /// Limits with `reserve` extra places past `max_connections` (health checks).
    pub fn new(limits: Limits, reserve: usize) -> Arc<Admission> {
        Arc::new(Admission { limits, reserve, state: Mutex::default() })
    }

    /// Takes a place for a connection from `source`, or `None` when it must be closed.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<(Slot, Admitted)> {
        let mut state = self.lock();
        let from_source = state.by_source.get(&source).copied().unwrap_or(0);
        if self.limits.per_source > 0 && from_source >= self.limits.per_source {
            return None;
        }
        let admitted = if state.total < self.limits.max_connections {
            Admitted::Full
        } else if state.total < self.limits.max_connections + self.reserve {
            // Evict the oldest connection that never made a request; it gives its place
            // back when its task ends, a moment later (the reserve covers the overlap).
            match state.waiting.pop_first() {
                Some((_, evict)) => {
                    evict.notify_one();
                    Admitted::Full
                }
                None => Admitted::HealthOnly,
            }
        } else {
            return None;
        };
        state.total += 1;
        *state.by_source.entry(source).or_default() += 1;
        let order = state.next;
        state.next += 1;
        let evicted = Arc::new(tokio::sync::Notify::new());
        if admitted == Admitted::Full {
            state.waiting.insert(order, evicted.clone());
        }
        Some((Slot { admission: self.clone(), source, order, evicted }, admitted))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        // Counters updated under the lock in one step each: usable even if poisoned.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.total = state.total.saturating_sub(1);
        state.waiting.remove(&self.order);
        if let Some(n) = state.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.by_source.remove(&self.source);
            }
        }
    }
}

/// Settings of the HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Connection limits.
    pub limits: Limits,
    /// A request head (and a TLS handshake) must arrive within this.
    pub header_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` (HTTPS when `tls` is given) until the process ends.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<Reloading>>,
    settings: HttpSettings,
) -> io::Result<()> {
    let admission = Admission::new(settings.limits, HEALTH_RESERVE);
    let health_only =
        axum::Router::new().route("/api/health", axum::routing::get(crate::api::health)).fallback(|| async {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "the server is at its connection limit\n")
        });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("http accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((slot, admitted)) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "http: connection refused by the connection limits");
            drop(stream);
            continue;
        };
        let app = if admitted == Admitted::Full { app.clone() } else { health_only.clone() };
        let tls = tls.clone();
        tokio::spawn(async move {
            let slot = Arc::new(slot);
            tokio::select! {
                () = serve_http_connection(stream, peer, app, tls, settings, admitted, slot.clone()) => {}
                () = slot.evicted() => tracing::debug!(%peer, "http: idle connection evicted for a newer one"),
            }
        });
    }
}

async fn serve_http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<Reloading>>,
    settings: HttpSettings,
    admitted: Admitted,
    slot: Arc<Slot>,
) {
    let _ = stream.set_nodelay(true);
    let stream = Counted::new(stream, None);
    let traffic = stream.traffic();
    let serve = async move {
        match tls {
            Some(tls) => {
                let handshake = tokio::time::timeout(settings.header_timeout, tls.http().accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => serve_hyper(stream, app, &settings, admitted, &slot).await,
                    Ok(Err(err)) => tracing::debug!(%peer, "https: handshake failed: {err}"),
                    Err(_) => tracing::debug!(%peer, "https: handshake timed out"),
                }
            }
            None => serve_hyper(stream, app, &settings, admitted, &slot).await,
        }
    };
    tokio::select! {
        () = serve => {}
        () = idle_watch(&traffic, settings.idle_timeout) => {
            tracing::debug!(%peer, "http: idle connection closed");
        }
    }
}

/// Ends when `traffic` has been idle for `limit`.
pub async fn idle_watch(traffic: &Traffic, limit: Duration) {
    loop {
        let idle = traffic.idle();
        if idle >= limit {
            return;
        }
        tokio::time::sleep(limit - idle).await;
    }
}

async fn serve_hyper<S>(stream: S, app: axum::Router, settings: &HttpSettings, admitted: Admitted, slot: &Arc<Slot>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = slot.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        slot.active();
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, request).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(settings.header_timeout);
    if admitted == Admitted::HealthOnly {
        builder.keep_alive(false);
    }
    let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
}
