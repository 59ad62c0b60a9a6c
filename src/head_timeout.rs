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
//! The same wrapper sees what Pingora writes before any hook ran: its empty 400 for a head it
//! cannot parse and its 405 for CONNECT are replaced by claimgate's JSON answers (counted like
//! every denial), so a client gets a reason whichever layer refused it.

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
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const IN_REQUEST: u8 = 2;

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
    metrics: Arc<Metrics>,
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
    fn new(inner: Stream, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        HeadTimedStream {
            inner,
            phase: AtomicU8::new(IDLE),
            timeout,
            deadline: None,
            timer: None,
            expired: None,
            replaced: false,
            metrics,
        }
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
        let phase = this.phase.load(Ordering::Relaxed);
        if phase != HEAD {
            this.timer = None;
        } else if this.deadline.is_some_and(|d| Instant::now() >= d) {
            this.timer = None;
            this.expire();
            let _ = this.send_timeout_response(cx);
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match (&res, phase) {
            (Poll::Ready(Ok(())), IDLE) if buf.filled().len() > before => {
                this.phase.store(HEAD, Ordering::Relaxed);
                this.deadline = Some(Instant::now() + this.timeout);
            }
            (Poll::Pending, HEAD) => {
                // The head is unfinished and the client is silent: wake this task at the
                // deadline, so a client that sends nothing more is still cut off.
                if let Some(deadline) = this.deadline {
                    // Dropped whenever the stream leaves the head phase, so a timer found here
                    // was armed for this head's deadline.
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
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
        if this.phase.load(Ordering::Relaxed) != IN_REQUEST
            && this.expired.is_none()
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
        // through `poll_write`, where Pingora's own error answers are replaced.
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
        self.inner.try_peek(buf).await
    }
}

/// Serves HTTP/1 connections for an HTTP app (the proxy), each in a [`HeadTimedStream`] with
/// the deadline of the configuration current when the connection is accepted. The keepalive loop
/// is Pingora's own (a new session per request on the same stream); it is here so the stream
/// can be marked idle between requests, after Pingora drained the previous body. The gateway
/// serves neither TLS nor h2c downstream, so HTTP/1 is all this needs to handle.
pub struct HeadTimeoutApp<A> {
    pub inner: Arc<A>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeadTimeoutApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 (negotiated by ALPN on the TLS listener) has its own framing: Pingora's h2
        // server takes the connection; the head deadline below reads HTTP/1 heads only.
        if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let ms = self.state.load().config.raw.limits.request_head_timeout_ms;
        let wrapped = HeadTimedStream::new(
            stream,
            Duration::from_millis(ms.max(1)),
            self.metrics.clone(),
        );
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
