//! A deadline for the whole request head (slowloris). Pingora times out each read of the head
//! (60 s), so a client that sends one byte every 59 s holds its connection and its task forever.
//! Pingora reads the head before any hook runs, so the deadline lives in the stream: every
//! downstream connection is wrapped in [`HeadTimedStream`], which sets a deadline when the first
//! byte of a request head arrives and fails reads once it passed; the proxy marks the head as
//! complete in its first hook, and the connection loop marks the stream idle between requests.
//! A timer is armed only when a read of an unfinished head has to wait: most heads arrive in one
//! read, and a timer per request (an allocation and two timer-wheel updates) was a measurable
//! part of the proxy's per-request cost.
//! Waiting for the next request on a kept-alive connection is not counted: that is Pingora's
//! keepalive timeout.
//!
//! HTTP/2 has its own framing: requests are multiplexed, and Pingora's h2 server reads them.
//! On an h2 connection the deadline covers the connection preface (the client's first 24 bytes);
//! after it, Pingora's h2 idle timeout closes a connection on which no request completes its
//! head (its timer is reset by accepted streams, not by frames), and the h2 limits bound what
//! one connection holds: 100 concurrent streams, 64 KiB of decoded headers per request, and the
//! h2 crate's caps on reset streams (rapid reset, CVE-2023-44487).
//! On the plain listener an h2c client (prior knowledge, RFC 9113 §3.3) is told apart from an
//! HTTP/1 one by its first bytes, read here under the same deadline and replayed to the server
//! that takes the connection: a mismatch with the preface shows within two bytes for any
//! HTTP/1 method, so a short HTTP/1 request is never held waiting for 24 bytes (Pingora's own
//! h2c peek reads exactly 24).
//!
//! Once an upgrade is answered 101 the connection is a tunnel (a WebSocket): the proxy marks it,
//! and the wrapper closes it when no data moved either way for the idle limit, or at the end of
//! its lifetime (a configured maximum, or the expiry of the token it was opened with): the
//! wrapper sees both directions of the client's side, and its timer wakes a read that would
//! otherwise wait forever.
//!
//! The same wrapper sees what Pingora writes before any hook ran: its empty 400 for a head it
//! cannot parse and its 405 for CONNECT are replaced by claimgate's JSON answers (counted like
//! every denial), so a client gets a reason whichever layer refused it.

use crate::drain::Drain;
use crate::engine::Snapshot;
use crate::policy::DenyReason;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const IN_REQUEST: u8 = 2;
/// An upgraded connection: bytes pass both ways until the tunnel's limits end it.
const TUNNEL: u8 = 3;

/// Why a tunnel's lifetime ends, as stored in [`HeadTimedStream::tunnel_end_kind`].
const END_LIFETIME: u8 = 1;
const END_TOKEN: u8 = 2;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection may stay silent before its first byte: Pingora's own first-read
/// timeout, kept for connections whose protocol is sniffed here.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of an HTTP/1 head arrives in the sniffing read.
const SNIFF_BUFFER: usize = 4096;

/// A downstream connection whose request heads must arrive within a deadline.
pub struct HeadTimedStream {
    inner: Stream,
    phase: AtomicU8,
    timeout: Duration,
    /// When the head being read must be complete.
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set once the deadline fired; the 408 still to be written, and whether it was.
    expired: Option<(Vec<u8>, usize)>,
    /// Pingora answered a head it could not parse (or a CONNECT) before any hook ran, with an
    /// empty body; claimgate's JSON answer was written instead and the rest of Pingora's is
    /// dropped.
    replaced: bool,
    /// Bytes read from the connection to tell its protocol, returned before any new read.
    replay: Option<(Box<[u8]>, usize)>,
    /// An HTTP/2 connection: how much of the preface is still to come (the deadline's part);
    /// no HTTP/1 answer is ever written on it.
    h2_preface_left: Option<usize>,
    /// A tunnel's limits, set by the proxy through a shared reference: the idle limit and the
    /// end of its lifetime in ms after `opened` (0: none), and why it ends then.
    tunnel_idle_ms: AtomicU64,
    tunnel_end_ms: AtomicU64,
    tunnel_end_kind: AtomicU8,
    opened: Instant,
    /// The last time tunnel data moved either way.
    tunnel_activity: Option<Instant>,
    /// When the armed timer fires (a tunnel's deadline moves with its traffic).
    timer_at: Option<Instant>,
    metrics: Arc<Metrics>,
    /// Whether this connection counts as busy in `drain` (see [`crate::drain::Drain`]): from
    /// its accept, and from each request's first byte, until the request is answered.
    busy: AtomicBool,
    drain: Arc<Drain>,
    /// The client ended its side (a read saw its end of stream) or the connection failed:
    /// nothing to linger for when it closes.
    peer_done: bool,
}

impl Drop for HeadTimedStream {
    fn drop(&mut self) {
        if *self.busy.get_mut() {
            self.drain.idle();
        }
        // Closed by the gateway while the client may still send (a GOAWAY's answer, a
        // pipelined request, the rest of a refused body): close without a reset (linger.rs).
        // Not for a head that timed out: that client is the slow one the deadline is for.
        let head_timed_out = self.expired.is_some() && !self.replaced;
        if !self.peer_done && !head_timed_out {
            let placeholder: Stream = Box::new(std::io::Cursor::new(Vec::new()));
            crate::linger::close(std::mem::replace(&mut self.inner, placeholder));
        }
    }
}

impl std::fmt::Debug for HeadTimedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadTimedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl HeadTimedStream {
    /// A connection that `drain` already counts as busy (from its accept).
    fn new(inner: Stream, timeout: Duration, metrics: Arc<Metrics>, drain: Arc<Drain>) -> Self {
        HeadTimedStream {
            inner,
            phase: AtomicU8::new(IDLE),
            timeout,
            deadline: None,
            timer: None,
            expired: None,
            replaced: false,
            replay: None,
            h2_preface_left: None,
            tunnel_idle_ms: AtomicU64::new(0),
            tunnel_end_ms: AtomicU64::new(0),
            tunnel_end_kind: AtomicU8::new(0),
            opened: Instant::now(),
            tunnel_activity: None,
            timer_at: None,
            metrics,
            busy: AtomicBool::new(true),
            drain,
            peer_done: false,
        }
    }

    /// The connection became a tunnel (an upgrade answered 101): it closes after `idle` without
    /// data either way, and at `ends` (with why: the lifetime or the token's expiry).
    pub fn tunnel(&self, idle: Option<Duration>, ends: Option<(Instant, TunnelEnd)>) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.tunnel_idle_ms
            .store(idle.map_or(0, ms), Ordering::Relaxed);
        if let Some((at, why)) = ends {
            self.tunnel_end_ms.store(
                ms(at.saturating_duration_since(self.opened)),
                Ordering::Relaxed,
            );
            let kind = match why {
                TunnelEnd::Lifetime => END_LIFETIME,
                TunnelEnd::TokenExpired => END_TOKEN,
            };
            self.tunnel_end_kind.store(kind, Ordering::Relaxed);
        }
        self.phase.store(TUNNEL, Ordering::Relaxed);
    }

    /// When the tunnel closes as things stand, and the metric kind that names why.
    fn tunnel_deadline(&self, now: Instant) -> Option<(Instant, &'static str)> {
        let last = self.tunnel_activity.unwrap_or(now);
        let idle = match self.tunnel_idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((last + Duration::from_millis(ms), "tunnel_idle")),
        };
        let end = match self.tunnel_end_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => {
                let why = if self.tunnel_end_kind.load(Ordering::Relaxed) == END_TOKEN {
                    "tunnel_token_expired"
                } else {
                    "tunnel_lifetime"
                };
                Some((self.opened + Duration::from_millis(ms), why))
            }
        };
        match (idle, end) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// A read on a tunnel: fails once its deadline passed; otherwise reads, and while it waits,
    /// a timer wakes it at the deadline.
    fn poll_tunnel_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let now = Instant::now();
        let last = *self.tunnel_activity.get_or_insert(now);
        if let Some((deadline, why)) = self.tunnel_deadline(now) {
            if now >= deadline {
                crate::telemetry::PROXY_EVENTS
                    .with_label_values(&[why])
                    .inc();
                tracing::info!(
                    reason = why,
                    open_ms = now.duration_since(self.opened).as_millis() as u64,
                    idle_ms = now.duration_since(last).as_millis() as u64,
                    "closing a WebSocket tunnel"
                );
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note_peer_end(&res, buf, before);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.tunnel_activity = Some(Instant::now());
            }
            Poll::Pending => {
                if let Some((deadline, _)) = self.tunnel_deadline(now) {
                    self.arm(deadline, cx);
                }
            }
            _ => {}
        }
        res
    }

    /// Notes a read that showed the client's end of stream (nothing read into room for it) or
    /// a failed connection.
    fn note_peer_end(&mut self, res: &Poll<std::io::Result<()>>, buf: &ReadBuf<'_>, before: usize) {
        match res {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.peer_done = true
            }
            Poll::Ready(Err(_)) => self.peer_done = true,
            _ => {}
        }
    }

    /// Makes sure this task is woken at `deadline`.
    fn arm(&mut self, deadline: Instant, cx: &mut Context<'_>) {
        if self.timer_at != Some(deadline) {
            self.timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
            self.timer_at = Some(deadline);
        }
        if let Some(timer) = self.timer.as_mut() {
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
    }

    /// An HTTP/1 connection whose first bytes (`read`, received at `first_byte`) were read to
    /// tell its protocol: its head's deadline already runs.
    fn http1_sniffed(
        inner: Stream,
        read: Vec<u8>,
        first_byte: Instant,
        timeout: Duration,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
    ) -> Self {
        let mut s = Self::new(inner, timeout, metrics, drain);
        s.phase.store(HEAD, Ordering::Relaxed);
        s.deadline = Some(first_byte + timeout);
        s.replay = Some((read.into_boxed_slice(), 0));
        s
    }

    /// An HTTP/2 connection; `read` holds what was read of it to tell its protocol (the whole
    /// preface for h2c, nothing for h2 negotiated by ALPN, whose preface must then arrive
    /// within the deadline).
    fn http2(
        inner: Stream,
        read: Vec<u8>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
    ) -> Self {
        let mut s = Self::new(inner, timeout, metrics, drain);
        let left = H2_PREFACE.len().saturating_sub(read.len());
        if left > 0 {
            s.phase.store(HEAD, Ordering::Relaxed);
            s.deadline = Some(Instant::now() + timeout);
        } else {
            s.phase.store(IN_REQUEST, Ordering::Relaxed);
        }
        s.h2_preface_left = Some(left);
        if !read.is_empty() {
            s.replay = Some((read.into_boxed_slice(), 0));
        }
        s
    }

    /// Serves bytes read while sniffing the protocol, if any are left.
    fn poll_replay(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some((bytes, at)) = &mut self.replay else {
            return false;
        };
        let n = (bytes.len() - *at).min(buf.remaining());
        buf.put_slice(&bytes[*at..*at + n]);
        *at += n;
        if *at >= bytes.len() {
            self.replay = None;
        }
        true
    }

    /// Pingora's own error answer to a head no hook saw: replaced by claimgate's JSON, counted
    /// like every other denial. Only the status line is Pingora's.
    fn replace_pingora_answer(&mut self, buf: &[u8], cx: &mut Context<'_>) -> bool {
        let status = match buf.get(..13) {
            Some(b"HTTP/1.1 400 " | b"HTTP/1.0 400 ") => 400,
            Some(b"HTTP/1.1 405 " | b"HTTP/1.0 405 ") => 405,
            _ => return false,
        };
        let decision = if status == 405 {
            crate::policy::Decision::refused(
                405,
                DenyReason::MethodNotAllowed,
                "CONNECT is not served".into(),
            )
        } else {
            crate::policy::Decision::refused(
                400,
                DenyReason::MalformedRequest,
                "the request head is not valid HTTP/1.1".into(),
            )
        };
        self.metrics.record(&decision, Duration::ZERO);
        let Some(denial) = decision.denial() else {
            return false;
        };
        let body = denial.body(None);
        let reason = if status == 405 {
            "Method Not Allowed"
        } else {
            "Bad Request"
        };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        self.replaced = true;
        self.expired = Some((response, 0));
        let _ = self.send_timeout_response(cx);
        true
    }

    /// The head was parsed: reads from here on are the body, which has its own limits.
    pub fn head_complete(&self) {
        self.phase.store(IN_REQUEST, Ordering::Relaxed);
    }

    /// The request was answered (and its body drained): the next bytes start a new head.
    fn request_done(&self) {
        self.phase.store(IDLE, Ordering::Relaxed);
        if self.busy.swap(false, Ordering::Relaxed) {
            self.drain.idle();
        }
    }

    /// The wrapper of a session's downstream stream, when it has one.
    pub fn of(stream: Option<&Stream>) -> Option<&HeadTimedStream> {
        stream.and_then(|s| s.as_any().downcast_ref::<HeadTimedStream>())
    }

    fn expire(&mut self) {
        let decision = crate::policy::Decision::refused(
            408,
            DenyReason::HeadTimeout,
            format!(
                "the request head did not arrive within {} ms",
                self.timeout.as_millis()
            ),
        );
        self.metrics.record(&decision, Duration::ZERO);
        let Some(denial) = decision.denial() else {
            return;
        };
        tracing::info!(
            reason = "request_head_timeout",
            timeout_ms = self.timeout.as_millis() as u64,
            "closing a connection whose request head did not arrive in time"
        );
        if self.h2_preface_left.is_some() {
            // An HTTP/1 answer means nothing to an h2 client: the connection just closes.
            self.expired = Some((Vec::new(), 0));
            return;
        }
        let body = denial.body(None);
        let mut response = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        self.expired = Some((response, 0));
    }

    /// Writes what it can of the 408 without waiting: the socket's buffer is empty (nothing was
    /// answered on this head yet), so it normally all goes at once; if not, the client that
    /// stalled its own request does not get to stall this too.
    /// Pending only while the socket cannot take more (the waker is then registered); a
    /// failed write gives up.
    fn send_timeout_response(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((bytes, written)) = &mut self.expired else {
            return Poll::Ready(());
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(n)) if n > 0 => *written += n,
                Poll::Pending => return Poll::Pending,
                _ => {
                    *written = bytes.len();
                    return Poll::Ready(());
                }
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(())
    }
}

impl AsyncRead for HeadTimedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.expired.is_some() {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        if this.poll_replay(buf) {
            return Poll::Ready(Ok(()));
        }
        let phase = this.phase.load(Ordering::Relaxed);
        if phase == TUNNEL {
            return this.poll_tunnel_read(cx, buf);
        }
        if phase != HEAD {
            this.timer = None;
            this.timer_at = None;
        } else if this.deadline.is_some_and(|d| Instant::now() >= d) {
            this.timer = None;
            this.expire();
            let _ = this.send_timeout_response(cx);
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.note_peer_end(&res, buf, before);
        match (&res, phase) {
            (Poll::Ready(Ok(())), IDLE) if buf.filled().len() > before => {
                if !this.busy.swap(true, Ordering::Relaxed) {
                    this.drain.busy_one();
                }
                this.phase.store(HEAD, Ordering::Relaxed);
                this.deadline = Some(Instant::now() + this.timeout);
            }
            (Poll::Ready(Ok(())), HEAD) if this.h2_preface_left.is_some() => {
                let read = buf.filled().len() - before;
                let left = this.h2_preface_left.unwrap_or(0).saturating_sub(read);
                this.h2_preface_left = Some(left);
                // The preface is in (or the connection ended): from here on Pingora's h2
                // server and its idle timeout govern the connection.
                if left == 0 || read == 0 {
                    this.phase.store(IN_REQUEST, Ordering::Relaxed);
                    this.timer = None;
                }
            }
            (Poll::Pending, HEAD) => {
                // The head is unfinished and the client is silent: wake this task at the
                // deadline, so a client that sends nothing more is still cut off.
                if let Some(deadline) = this.deadline {
                    this.arm(deadline, cx);
                }
            }
            _ => {}
        }
        res
    }
}

impl AsyncWrite for HeadTimedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replaced {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.phase.load(Ordering::Relaxed) == TUNNEL {
            let res = Pin::new(&mut this.inner).poll_write(cx, buf);
            if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
                this.tunnel_activity = Some(Instant::now());
            }
            return res;
        }
        if this.phase.load(Ordering::Relaxed) != IN_REQUEST
            && this.expired.is_none()
            && this.h2_preface_left.is_none()
            && this.replace_pingora_answer(buf, cx)
        {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A replacement answer goes out whole before the connection is flushed or closed.
        if self.replaced && self.send_timeout_response(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.replaced && self.send_timeout_response(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // Once the head is in (every answer the proxy writes), straight through; before it,
        // through `poll_write`, where Pingora's own error answers are replaced; in a tunnel,
        // through `poll_write`, which notes the activity.
        if self.phase.load(Ordering::Relaxed) == IN_REQUEST && !self.replaced {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.poll_write(cx, b),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadTimedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadTimedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

// The TLS facts of the connection (version, cipher, the client certificate's digest, the ALPN
// protocol) are the wrapped stream's: a wrapper that hid them would make every request look
// like plain HTTP/1.1.
impl Ssl for HeadTimedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadTimedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadTimedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadTimedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadTimedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Pingora peeks for the h2c preface on a connection handed to it as h2c: it was read
        // here already.
        if let Some((bytes, at)) = &self.replay {
            return match bytes.get(*at..*at + buf.len()) {
                Some(seen) => {
                    buf.copy_from_slice(seen);
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        self.inner.try_peek(buf).await
    }
}

/// Why a tunnel's lifetime ends when it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// `limits.websocket_max_lifetime_ms`.
    Lifetime,
    /// The token the upgrade was decided on expires.
    TokenExpired,
}

/// What the first bytes of a plain connection showed.
enum Sniffed {
    Http1 {
        read: Vec<u8>,
        first_byte: Instant,
    },
    Http2 {
        read: Vec<u8>,
    },
    /// Closed, failed or silent before its first byte: nothing to serve.
    Gone,
}

/// Reads a plain connection's first bytes until they match the h2 preface whole or depart from
/// it. The first byte may take [`FIRST_BYTE_TIMEOUT`]; the rest counts against the head's
/// deadline, which a client that stalls inside something looking like the preface runs out on
/// the HTTP/1 path (a 408), as any other stalled head does.
async fn sniff(stream: &mut Stream, head_timeout: Duration) -> Sniffed {
    use tokio::io::AsyncReadExt;
    let mut read = vec![0u8; SNIFF_BUFFER];
    let first = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.read(&mut read)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return Sniffed::Gone,
    };
    let first_byte = Instant::now();
    let deadline = first_byte + head_timeout;
    let mut len = first;
    loop {
        let seen = &read[..len];
        let compared = seen.len().min(H2_PREFACE.len());
        if seen[..compared] != H2_PREFACE[..compared] {
            read.truncate(len);
            return Sniffed::Http1 { read, first_byte };
        }
        if compared == H2_PREFACE.len() {
            read.truncate(len);
            return Sniffed::Http2 { read };
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut read[len..])).await {
            Ok(Ok(n)) if n > 0 => len += n,
            Ok(_) => return Sniffed::Gone,
            Err(_) => {
                read.truncate(len);
                return Sniffed::Http1 { read, first_byte };
            }
        }
    }
}

/// Serves connections for an HTTP app (the proxy), each in a [`HeadTimedStream`] with the
/// deadline of the configuration current when the connection is accepted. HTTP/2 connections
/// (ALPN `h2`, or the h2c preface on the plain listener) go to the app's own h2 server; for
/// HTTP/1 the keepalive loop is Pingora's own (a new session per request on the same stream),
/// here so the stream can be marked idle between requests, after Pingora drained the previous
/// body.
pub struct HeadTimeoutApp<A> {
    pub inner: Arc<A>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeadTimeoutApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (timeout, h2c) = {
            let snapshot = self.state.load();
            let ms = snapshot.config.raw.limits.request_head_timeout_ms;
            (
                Duration::from_millis(ms.max(1)),
                snapshot.config.raw.listen.h2c,
            )
        };
        let metrics = self.metrics.clone();
        let drain = self.drain.clone();
        // Busy from the accept: the stream wrapper takes this count over.
        drain.busy_one();
        let wrapped = if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
            // GOAWAY when the drain begins, not when the listeners close (drain.rs).
            let stopping = drain.h2_watch(shutdown);
            let h2 = HeadTimedStream::http2(stream, Vec::new(), timeout, metrics, drain);
            return self.inner.process_new(Box::new(h2), &stopping).await;
        } else if h2c && stream.get_ssl_digest().is_none() {
            let mut stream = stream;
            match sniff(&mut stream, timeout).await {
                Sniffed::Http2 { read } => {
                    let stopping = drain.h2_watch(shutdown);
                    let h2 = HeadTimedStream::http2(stream, read, timeout, metrics, drain);
                    return self.inner.process_new(Box::new(h2), &stopping).await;
                }
                Sniffed::Http1 { read, first_byte } => HeadTimedStream::http1_sniffed(
                    stream, read, first_byte, timeout, metrics, drain,
                ),
                Sniffed::Gone => {
                    drain.idle();
                    return None;
                }
            }
        } else {
            HeadTimedStream::new(stream, timeout, metrics, drain)
        };
        let mut session = ServerSession::new_http1(Box::new(wrapped));
        // Pingora's defaults for a new connection: keepalive 60 s unless shutting down.
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        session.set_keepalive_reuses_remaining(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        let mut reused = self.inner.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            if let Some(s) = HeadTimedStream::of(Some(&stream)) {
                s.request_done();
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
