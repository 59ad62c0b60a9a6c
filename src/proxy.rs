//! The Pingora side: a thin `ProxyHttp` that turns a request into facts, asks the decision core,
//! and either answers the denial itself or forwards with the decided headers.

use crate::admission::{Admitted, RequestHead};
use crate::engine::{Snapshot, Step};
use crate::facts::{Body, RequestFacts};
use crate::head_timeout::{HeadTimedStream, TunnelEnd};
use crate::limit_store::Charged;
use crate::policy::decision::Allow;
use crate::policy::route::RouteMatch;
use crate::policy::{Decision, Outcome};
use crate::request_id::RequestId;
use crate::sources::SourceFetcher;
use crate::telemetry::{log_decision, LogFacts, Metrics, RouteMetrics};
use crate::upstream::UpstreamProtocol;
use crate::upstream_edits::Edits;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::modules::http::grpc_web::{GrpcWeb, GrpcWebBridge};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct ClaimgateProxy {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// External source caches; they outlive reloads.
    pub sources: SourceFetcher,
    /// The counters of `[[route.limit]]`s.
    pub limits: Arc<crate::limit_store::LimitStore>,
    /// Stopping: HTTP/1 connections are not kept alive once SIGTERM arrived.
    pub drain: Arc<crate::drain::Drain>,
}

/// The upstream answered an upgrade with `101` but not with the WebSocket handshake.
const BAD_UPGRADE: &str = "bad upstream upgrade";

/// Where the decision time comes from. Always the system clock in production; a fixed instant
/// only when the operator asks for it on the command line (for tests and demos).
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    #[default]
    System,
    Fixed(SystemTime),
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Fixed(t) => *t,
        }
    }
}

/// Per-request state: the snapshot the request is decided and routed with, and what was allowed.
#[derive(Default)]
pub struct RequestCtx {
    snapshot: Option<Arc<Snapshot>>,
    allow: Option<Allow>,
    /// The TCP peer (appended to X-Forwarded-For) and whether it is a trusted proxy: read once,
    /// for the headers the rules see and the headers the upstream is sent.
    peer: Option<(IpAddr, bool)>,
    request_id: RequestId,
    route: Option<Arc<str>>,
    upstream_started: Option<Instant>,
    upstream_observed: bool,
    /// The route's metric series, resolved when the request was decided.
    route_metrics: Option<Arc<RouteMetrics>>,
    /// What admission decided the upstream receives: the upstream head is built from it.
    admitted: Option<Admitted>,
    /// The `exp` of the token the request was allowed with.
    token_expires_at: Option<i64>,
    /// The upstream answered an upgrade with 101: the connection is a tunnel now, and no
    /// HTTP answer may be written on it.
    tunnel: bool,
    /// The request came over the TLS listener.
    over_tls: bool,
    /// The `RateLimit-Policy` and `RateLimit` fields of the limits the request was charged.
    limit_headers: Option<[(http::HeaderName, String); 2]>,
    /// The chosen upstream's `preserve_header_case`, read when its peer was chosen (the pool
    /// is looked up by name once per request).
    preserve_header_case: Option<bool>,
}

/// Spelled as a static string: Pingora keeps an inserted name's spelling, and a `&'static str`
/// is kept without the copy a `HeaderName` argument costs.
const REQUEST_ID: &str = "x-request-id";

/// Concurrent streams per HTTP/2 connection to an upstream (Pingora's default is one, which
/// turns h2 multiplexing into one connection per request).
const UPSTREAM_H2_STREAMS: usize = 100;

/// The request head as the decision core reads it.
fn head_of<'a>(req: &'a RequestHeader, h2_target: Option<&'a [u8]>) -> RequestHead<'a> {
    RequestHead {
        method: req.method.as_str(),
        target: h2_target.unwrap_or_else(|| req.raw_path()),
        http10: req.version < http::Version::HTTP_11,
        headers: &req.headers,
    }
}

/// An HTTP/2 request's target as admission reads it: `:authority` is the host (RFC 9113
/// §8.3.1), so the request is presented in absolute form, `scheme://authority/path`; a `Host`
/// header beside it must then say the same. `None` for HTTP/1.x.
fn h2_target(req: &RequestHeader) -> Option<Vec<u8>> {
    if req.version != http::Version::HTTP_2 {
        return None;
    }
    let authority = req.uri.authority()?;
    let scheme = req.uri.scheme_str().unwrap_or("https");
    let mut t = format!("{scheme}://{authority}").into_bytes();
    t.extend_from_slice(req.raw_path());
    Some(t)
}

/// What the TLS listener learnt of the connection: version, cipher and the client certificate
/// it verified (its SHA-256 thumbprint, RFC 8705's `x5t#S256`).
/// The TLS facts of the request's connection. Its client certificate counts only if the
/// trust of `certs` (the snapshot deciding the request) accepts it: a resumed session or a
/// reload may have brought one that trust never verified.
fn tls_facts(
    session: &Session,
    certs: Option<&crate::tls::Certificates>,
) -> Option<crate::facts::TlsFacts> {
    use base64::Engine as _;
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    let seen = ssl
        .extension
        .get::<Arc<crate::tls_listener::ClientCertificateSeen>>()
        .filter(|seen| seen.accepted_by(certs));
    let client =
        seen.filter(|_| !ssl.cert_digest.is_empty())
            .map(|seen| crate::facts::ClientCertificate {
                thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(&ssl.cert_digest),
                organization: ssl.organization.clone(),
                serial: ssl.serial_number.clone(),
                names: seen.names.clone(),
            });
    Some(crate::facts::TlsFacts {
        version: crate::facts::tls_version_name(&ssl.version),
        cipher: ssl.cipher.clone(),
        client,
    })
}

/// Answers a refused request: the JSON denial, or for a gRPC client the same refusal as a
/// trailers-only gRPC response carrying `message`.
async fn respond_refusal(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    headers: &[(http::HeaderName, String)],
    request_id: &str,
    message: &str,
) -> Result<()> {
    // gRPC is always POST: a GET that claims a gRPC type gets the JSON denial (an empty
    // 200 for it could be cached as the page's answer).
    let req = session.req_header();
    let grpc = req.method == http::Method::POST
        && crate::grpc::is_grpc(
            req.headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
        );
    if grpc {
        return respond_grpc(session, status, headers, request_id, message).await;
    }
    let mut resp = ResponseHeader::build(status, Some(5))?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    // A write that fails here failed towards the client (gone, or its h2 stream reset): a
    // client event, never counted or logged as an upstream's failure.
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|e| e.into_down())?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
        .map_err(|e| e.into_down())
}

/// A trailers-only gRPC response: HTTP 200 and one header block that ends the stream (on
/// HTTP/2, END_STREAM on the HEADERS frame: clients read `grpc-status` there, and report a
/// stream ended by an empty DATA frame without trailers as INTERNAL).
async fn respond_grpc(
    session: &mut Session,
    status: u16,
    headers: &[(http::HeaderName, String)],
    request_id: &str,
    message: &str,
) -> Result<()> {
    let answer = crate::grpc::GrpcAnswer::new(status, message);
    let mut resp = ResponseHeader::build(200, Some(5 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", answer.status.to_string())?;
    resp.insert_header("grpc-message", answer.message)?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if !session.is_http2() {
        // gRPC-Web over HTTP/1.1: a body of none, said so.
        resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    }
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    for (name, value) in headers {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    // Not `write_response_header`, which writes the header block without ending the stream.
    session
        .write_response_tasks(vec![pingora::protocols::http::HttpTask::Header(
            Box::new(resp),
            true,
        )])
        .await
        .map(|_| ())
        .map_err(|e| e.into_down())
}

impl ClaimgateProxy {
    /// Metrics and the decision log line for a decided request.
    fn observe(
        &self,
        decision: &Decision,
        log: &LogFacts<'_>,
        started: Instant,
        snapshot: &Snapshot,
    ) -> Arc<RouteMetrics> {
        let took = started.elapsed();
        let series = self.metrics.record(decision, took);
        log_decision(decision, log, took, &snapshot.config.raw.logging);
        series
    }

    /// The decision core's two halves, with the route's external sources fetched between them.
    async fn decide(
        &self,
        snapshot: &Snapshot,
        facts: &RequestFacts<'_>,
        m: Option<&RouteMatch>,
    ) -> Decision {
        let now = self.clock.now();
        let mut refetched = false;
        loop {
            let step = match m {
                Some(m) => snapshot.begin(facts, m, now),
                None => snapshot.begin_unmatched(facts, now),
            };
            return match (step, m) {
                (Step::Decided(d), _) => d,
                // A key id no key has: maybe the identity provider rotated. Refetch
                // (single-flight, rate-limited per issuer) and begin once more.
                (Step::NeedsKeys { issuer, otherwise }, _) => {
                    if refetched || !self.refetch_keys(snapshot, &issuer).await {
                        return otherwise;
                    }
                    refetched = true;
                    continue;
                }
                (Step::Evaluate(pending), Some(m)) if pending.requests.is_empty() => {
                    snapshot.finish(facts, m, pending, &[])
                }
                (Step::Evaluate(pending), Some(m)) => {
                    let values = self
                        .sources
                        .fetch_all(&pending.requests, &snapshot.sources)
                        .await;
                    snapshot.finish(facts, m, pending, &values)
                }
                (Step::Evaluate(_), None) => snapshot.decide_matched(facts, None, now),
            };
        }
    }

    /// Refetches `issuer`'s keys for an unknown key id; whether anything new came.
    async fn refetch_keys(&self, snapshot: &Snapshot, issuer: &str) -> bool {
        let Some(issuer) = snapshot.issuers.get(issuer) else {
            return false;
        };
        let mut refreshed = false;
        for r in &issuer.remote {
            refreshed |= r.refresh_for_unknown_kid().await;
        }
        refreshed
    }

    /// The upgrade was accepted: the connection's limits as a tunnel, from the configuration
    /// the request was decided with and the token it was allowed on.
    fn open_tunnel(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.tunnel = true;
        let Some(snapshot) = &ctx.snapshot else {
            return;
        };
        let limits = &snapshot.config.raw.limits;
        let now = tokio::time::Instant::now();
        let idle = (limits.websocket_idle_timeout_ms > 0)
            .then(|| Duration::from_millis(limits.websocket_idle_timeout_ms));
        let lifetime = (limits.websocket_max_lifetime_ms > 0).then(|| {
            (
                now + Duration::from_millis(limits.websocket_max_lifetime_ms),
                TunnelEnd::Lifetime,
            )
        });
        let token = ctx
            .token_expires_at
            .filter(|_| limits.websocket_ends_with_token)
            .map(|exp| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(exp.max(0).unsigned_abs());
                let left = at.duration_since(self.clock.now()).unwrap_or_default();
                (now + left, TunnelEnd::TokenExpired)
            });
        let ends = match (lifetime, token) {
            (Some(l), Some(t)) => Some(if t.0 <= l.0 { t } else { l }),
            (l, t) => l.or(t),
        };
        if let Some(s) = HeadTimedStream::of(session.as_downstream().stream()) {
            s.tunnel(idle, ends);
        }
    }

    /// Answers a request refused before its rules ran (ambiguous target, host, path, framing,
    /// size, a body that stopped arriving).
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: Arc<Snapshot>,
        decision: Decision,
        started: Instant,
    ) -> Result<bool> {
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // Refused before a path was decided on: the target as sent, cut to its path.
        let path = crate::logging::target::loggable(req.raw_path());
        let log = LogFacts {
            request_id: ctx.request_id.as_str(),
            method: req.method.as_str(),
            path: &path,
            peer,
            headers: &req.headers,
            geo: &snapshot.geo,
        };
        ctx.route_metrics = Some(self.observe(&decision, &log, started, &snapshot));
        self.conclude(session, ctx, snapshot, decision).await
    }

    /// Acts on a decision: remember what an allow needs for forwarding, or answer a denial.
    async fn conclude(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: Arc<Snapshot>,
        decision: Decision,
    ) -> Result<bool> {
        ctx.route = decision.route.clone();
        match decision.outcome {
            Outcome::Allow(allow) => {
                ctx.token_expires_at = decision.token_expires_at;
                ctx.allow = Some(allow);
                ctx.snapshot = Some(snapshot);
                Ok(false)
            }
            Outcome::Deny(denial) => {
                let body = denial.body(decision.route.as_deref());
                respond_refusal(
                    session,
                    denial.status,
                    body,
                    &denial.headers(),
                    ctx.request_id.as_str(),
                    &denial.message,
                )
                .await?;
                Ok(true)
            }
        }
    }
}

/// How reading a body for the rules ended.
enum BodyRead {
    Complete,
    TooLarge,
    /// The client stopped sending (closed early, or too slow): its request cannot be decided.
    Broken {
        timed_out: bool,
    },
}

/// Reads the whole request body into `buf`, up to `limit` bytes, judged from Content-Length
/// first, then from what arrives.
///
/// Pingora sends the request head upstream before any body hook runs, so a body that decides
/// must be read here; retry buffering makes Pingora replay what was read to the upstream. That
/// buffer holds 64 KiB, which is why `body_limit` cannot exceed it.
async fn read_body(session: &mut Session, limit: usize, buf: &mut Vec<u8>) -> Result<BodyRead> {
    // A declared length over the limit was answered by admission.
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_mut()
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    session.as_mut().enable_retry_buffering();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Ok(BodyRead::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(BodyRead::Complete),
            // A client error, not a gateway one: answered with a 4xx, never a 502.
            Err(e) => {
                let timed_out = matches!(e.etype(), ErrorType::ReadTimedout);
                return Ok(BodyRead::Broken { timed_out });
            }
        }
    }
}

/// Whether `e` came while the client was still owing request body bytes and had stopped
/// sending them: the upstream then times out waiting for the body, and the fault is the
/// client's (408), not the upstream's (502).
fn client_body_stalled(session: &mut Session, e: &Error) -> bool {
    let waiting = matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    client_timed_out(e) || (waiting && !session.is_body_done())
}

/// The client stopped sending within the body timeout.
fn client_timed_out(e: &Error) -> bool {
    matches!(e.esource(), ErrorSource::Downstream) && matches!(e.etype(), ErrorType::ReadTimedout)
}

/// The client closed its connection, or it broke, before its answer was written.
fn client_gone(e: &Error) -> bool {
    matches!(e.esource(), ErrorSource::Downstream)
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

#[async_trait]
impl ProxyHttp for ClaimgateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // Pingora's default (compression, disabled), and its gRPC-Web bridge: a gRPC-Web call
        // over HTTP/1.1 reaches an h2 upstream as gRPC, and its trailers come back in the body
        // as gRPC-Web wants. Enabled per request below.
        modules.add_module(ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(GrpcWeb));
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The head is in: stop its deadline before anything (a body read) can wait.
        if let Some(s) = HeadTimedStream::of(session.as_downstream().stream()) {
            s.head_complete();
        }
        let grpc_web = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| crate::grpc::is_grpc_web(v.as_bytes()));
        if grpc_web {
            if let Some(bridge) = session.downstream_modules_ctx.get_mut::<GrpcWebBridge>() {
                bridge.init();
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let started = Instant::now();
        if self.drain.draining() {
            // A client on a persistent connection bypasses the load balancer's readiness
            // check: closing after this answer sends its next request through the balancer.
            session.set_keepalive(None);
        }
        let snapshot = self.state.load_full();
        ctx.request_id = RequestId::for_headers(&session.req_header().headers);
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = snapshot.peer(client_ip);
        // A body that stops arriving is the client's failure on every route: answered 408 when
        // it stalls, not left for the upstream's read timeout to turn into a 502.
        let timeout = Duration::from_millis(snapshot.config.raw.limits.client_body_timeout_ms);
        session.as_mut().set_read_timeout(Some(timeout));
        let h2 = h2_target(session.req_header());
        let admitted = match snapshot.admit(&head_of(session.req_header(), h2.as_deref())) {
            Ok(a) => a,
            Err(decision) => {
                let decision = *decision;
                // The body, if any, was not read: the connection cannot carry another request.
                if !session.is_body_empty() {
                    session.set_keepalive(None);
                }
                return self.refuse(session, ctx, snapshot, decision, started).await;
            }
        };
        let mut buf = Vec::new();
        let mut read = BodyRead::Complete;
        if let Some(limit) = admitted.body_limit {
            read = read_body(session, limit, &mut buf).await?;
        }
        if let BodyRead::Broken { timed_out } = read {
            let decision = crate::engine::incomplete_body(timed_out, admitted.route_name.clone());
            session.set_keepalive(None);
            return self.refuse(session, ctx, snapshot, decision, started).await;
        }
        let body = match read {
            BodyRead::TooLarge => Body::TooLarge,
            _ => admitted.body(&buf),
        };
        let tls = tls_facts(session, snapshot.tls.as_deref());
        ctx.over_tls = tls.is_some();
        let head = head_of(session.req_header(), h2.as_deref());
        let facts = RequestFacts {
            tls: tls.as_ref(),
            ..admitted.facts(
                snapshot.strip_for(ctx.peer),
                Some(ctx.request_id.as_str()),
                &head,
                client_ip,
                body,
            )
        };
        let m = admitted.route.as_ref();
        let mut decision = self.decide(&snapshot, &facts, m).await;
        if let Outcome::Allow(allow) = &decision.outcome {
            if !allow.limits.is_empty() {
                let now_ms = crate::ratelimit::millis(self.clock.now());
                decision = match self.limits.charge(&allow.limits, now_ms).await {
                    Charged::Outcomes(outcomes) => {
                        ctx.limit_headers = Some(crate::ratelimit::Outcome::headers(&outcomes));
                        decision.limited(&outcomes)
                    }
                    Charged::Unavailable(limit) => decision.limit_store_unavailable(limit),
                };
            }
        }
        let log = LogFacts {
            request_id: ctx.request_id.as_str(),
            method: facts.method,
            path: facts.path,
            peer: client_ip,
            headers: facts.headers,
            geo: &snapshot.geo,
        };
        ctx.route_metrics = Some(self.observe(&decision, &log, started, &snapshot));
        ctx.admitted = Some(admitted);
        self.conclude(session, ctx, snapshot, decision).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let (Some(snapshot), Some(allow)) = (&ctx.snapshot, &ctx.allow) else {
            return Error::e_explain(ErrorType::InternalError, "no decision for this request");
        };
        let Some(pool) = snapshot.upstreams.get(&allow.upstream) else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "unknown upstream");
        };
        ctx.upstream_started = Some(Instant::now());
        ctx.preserve_header_case = Some(pool.preserve_header_case);
        let tls = pool.tls.as_ref();
        let sni = tls.map(|t| t.sni.clone()).unwrap_or_default();
        let mut peer = HttpPeer::new(pool.pick(), tls.is_some(), sni);
        if let Some(t) = tls {
            let Some(m) = crate::upstream_tls::prepared(t) else {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "the upstream's TLS settings are not usable",
                );
            };
            peer.options.ca = m.ca.clone();
            peer.group_key = m.ca_key;
            peer.client_cert_key = m.client.clone();
        }
        match pool.protocol {
            UpstreamProtocol::Http1 => {}
            // Plain: prior knowledge (h2c); TLS: ALPN `h2` only.
            UpstreamProtocol::H2 => peer.options.set_http_version(2, 2),
            UpstreamProtocol::Auto => peer.options.set_http_version(2, 1),
        }
        if pool.protocol != UpstreamProtocol::Http1 {
            // Pingora opens one stream per h2 connection unless told otherwise.
            peer.options.max_h2_streams = UPSTREAM_H2_STREAMS;
        }
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(pool.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let (Some(snapshot), Some(allow), Some(admitted)) =
            (&ctx.snapshot, &ctx.allow, &ctx.admitted)
        else {
            return Error::e_explain(ErrorType::InternalError, "no decision for this request");
        };
        let preserve_case = match ctx.preserve_header_case {
            Some(p) => p,
            None => match snapshot.upstreams.get(&allow.upstream) {
                Some(pool) => pool.preserve_header_case,
                None => return Error::e_explain(ErrorType::ConnectNoRoute, "unknown upstream"),
            },
        };
        let trusted = ctx.peer;
        let edits = Edits::for_request(
            snapshot.strip_for(trusted),
            admitted,
            &allow.forward,
            ctx.request_id.header_value().clone(),
            trusted,
            ctx.over_tls,
        )
        .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e.to_string()))?;
        crate::upstream_head::apply(upstream_request, &edits, preserve_case)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // Only a completed WebSocket handshake becomes a tunnel (see
            // `websocket_handshake`); anything else is the upstream's failure, answered 502.
            if !crate::websocket_handshake::completes(
                &session.req_header().headers,
                &upstream_response.headers,
            ) {
                return Err(Error::create(
                    ErrorType::Custom(BAD_UPGRADE),
                    ErrorSource::Upstream,
                    Some(
                        "the upstream answered 101 without completing the WebSocket handshake"
                            .into(),
                    ),
                    None,
                ));
            }
            self.open_tunnel(session, ctx);
        }
        if let Some(fields) = ctx.limit_headers.take() {
            for (name, value) in fields {
                upstream_response.insert_header(name, value)?;
            }
        }
        if let Some(series) = &ctx.route_metrics {
            if let Some(t) = ctx.upstream_started {
                series.upstream_time(&self.metrics, t.elapsed());
            }
            series.upstream_response(&self.metrics, Some(upstream_response.status.as_u16()));
        }
        ctx.upstream_observed = true;
        Ok(())
    }

    /// What Pingora's own error and warning lines say of the request: by default the whole
    /// target and the Host (a query's `access_token=` in the log, and a different line for every
    /// request, which the repeated-line limit cannot collapse). The method, the path without
    /// its query and the route instead (no request id, which would make every line unique:
    /// the decision line carries it).
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!(
            "{} {}, route: {}",
            req.method,
            crate::logging::target::loggable(req.raw_path()),
            ctx.route.as_deref().unwrap_or("-")
        )
    }

    /// A retried upstream attempt (a pooled connection the upstream had closed, an h2 GOAWAY)
    /// is normal for a proxy whose upstream times out idle connections before it does: counted
    /// as `upstream_retry` and logged at DEBUG, not a WARN line per request. A retry that also
    /// fails ends in Pingora's ERROR line and the 502 as before.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        e: &Error,
        context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        if matches!(context, pingora::proxy::ProxyWarnLogContext::UpstreamRetry) {
            crate::logging::bridge::PROXY_EVENTS
                .with_label_values(&["upstream_retry"])
                .inc();
            tracing::debug!(error = %e, "retrying the request on another upstream connection");
            return true;
        }
        false
    }

    /// A client that went away or stopped sending is a client event: counted, logged at DEBUG,
    /// never as Pingora's ERROR "Fail to proxy".
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        let client = client_gone(e) || client_timed_out(e);
        if client {
            tracing::debug!(error = %e, "the client went away or stopped sending");
        }
        client
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX)
    where
        Self::CTX: Send + Sync,
    {
        // An allowed request that got no upstream response header because the upstream failed
        // (not the client: a client that went away or stopped sending is no upstream error).
        let upstream_failed = e.is_some_and(|e| {
            matches!(e.esource(), ErrorSource::Upstream) && !client_body_stalled(session, e)
        });
        if ctx.allow.is_some() && !ctx.upstream_observed && upstream_failed {
            if let Some(series) = &ctx.route_metrics {
                series.upstream_response(&self.metrics, None);
            }
        }
        let client_side = e.is_some_and(|e| client_gone(e) || client_body_stalled(session, e));
        if client_side {
            crate::logging::bridge::PROXY_EVENTS
                .with_label_values(&["client_closed"])
                .inc();
            if let Some(series) = ctx.route_metrics.as_ref().filter(|_| ctx.allow.is_some()) {
                series.client_closed(&self.metrics);
            }
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        // A tunnel that ended (closed by either side or by its limits) has no HTTP left to
        // answer in.
        if ctx.tunnel {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let (code, reason, message) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "http_error", "the request could not be served"),
            ErrorType::Custom(BAD_UPGRADE) => (
                502,
                "bad_upstream_upgrade",
                "the upstream switched protocols without completing the WebSocket handshake",
            ),
            _ if client_body_stalled(session, e) => (
                408,
                "incomplete_body",
                "the request body did not arrive in time",
            ),
            _ => match e.esource() {
                ErrorSource::Upstream => (
                    502,
                    "upstream_unavailable",
                    "the upstream could not be reached",
                ),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "", "")
                    }
                    ErrorType::ReadTimedout => (
                        408,
                        "incomplete_body",
                        "the request body did not arrive in time",
                    ),
                    _ => (400, "bad_request", "the request could not be read"),
                },
                ErrorSource::Internal | ErrorSource::Unset => (
                    502,
                    "upstream_unavailable",
                    "the request could not be forwarded",
                ),
            },
        };
        if code > 0 {
            let body = serde_json::json!({
                "error": crate::policy::decision::error_code(code),
                "reason": reason,
                "message": message,
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            if let Err(err) = respond_refusal(session, code, body, &[], "", message).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{h2_target, head_of};
    use crate::admission::host::parse_authority;
    use crate::engine::Snapshot;
    use crate::testing::Workspace;
    use pingora::http::RequestHeader;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    const RULES: &str = "[[route]]\nname = \"admin\"\nhost = \"admin.test\"\npath = \"/*\"\nauth = \"none\"\n  [[route.rule]]\n  name = \"never\"\n  deny_if = \"request.path != ''\"\n\n[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n";

    static SET: LazyLock<(Workspace, Snapshot)> = LazyLock::new(|| {
        let ws = Workspace::new(&[("r.toml", RULES)]);
        let s = ws.snapshot();
        (ws, s)
    });

    fn authority() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("admin.test"),
            Just("ADMIN.test"),
            Just("admin.test."),
            Just("other.test"),
            Just("user@"),
            Just(":443"),
            Just(":"),
            Just("[::1]"),
            Just("%61"),
            Just("127.0.0.1"),
            Just("_"),
        ];
        prop::collection::vec(piece, 1..4).prop_map(|v| v.concat())
    }

    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("x"),
            Just(".."),
            Just("%2e"),
            Just("%2F"),
            Just("?q=1"),
            Just("//"),
        ];
        prop::collection::vec(piece, 1..5).prop_map(|v| format!("/{}", v.concat()))
    }

    fn admit_h2(authority: &str, path: &str) -> Option<crate::admission::Admitted> {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        req.set_uri(format!("https://{authority}{path}").parse().unwrap());
        req.set_version(http::Version::HTTP_2);
        let target = h2_target(&req);
        SET.1.admit(&head_of(&req, target.as_deref())).ok()
    }

    #[test]
    fn h2_authorities_decide_the_host() {
        let a = admit_h2("ADMIN.test:8443", "/x").unwrap();
        assert_eq!(a.host.as_deref(), Some("admin.test"));
        assert_eq!(a.route_name.as_deref(), Some("admin"));
        assert_eq!(a.set_host.as_deref(), Some("admin.test:8443"));
        assert_eq!(a.upstream_target(), "/x");
        assert!(admit_h2("user@admin.test", "/x").is_none());
        assert_eq!(
            admit_h2("other.test", "/x").unwrap().route_name.as_deref(),
            Some("open")
        );
    }

    proptest! {
        /// HTTP/2: whatever `:authority` a client sends, a request is admitted only when the
        /// authority is a plain `host[:port]`, it is decided on that host (so `admin.test` in
        /// any spelling reaches the admin route and its rule), and the upstream is sent that
        /// authority as `Host` with an origin-form target.
        #[test]
        fn an_h2_request_is_decided_on_its_authority(a in authority(), p in path()) {
            let Ok(uri) = format!("https://{a}{p}").parse::<http::Uri>() else {
                return Ok(());
            };
            let mut req = RequestHeader::build("GET", p.as_bytes(), None).unwrap();
            req.set_uri(uri.clone());
            req.set_version(http::Version::HTTP_2);
            let target = h2_target(&req);
            prop_assert!(target.is_some());
            let admitted = SET.1.admit(&head_of(&req, target.as_deref()));
            let Ok(admitted) = admitted else {
                return Ok(());
            };
            let raw = uri.authority().unwrap().as_str();
            let parsed = parse_authority(raw);
            prop_assert!(parsed.is_ok(), "admitted {raw}");
            let parsed = parsed.unwrap();
            prop_assert_eq!(admitted.host.as_deref(), Some(parsed.host.as_str()));
            prop_assert_eq!(admitted.set_host.as_deref(), Some(parsed.value.as_str()));
            prop_assert!(admitted.upstream_target().starts_with('/'));
            let route = admitted.route_name.as_deref();
            if parsed.host == "admin.test" {
                prop_assert_eq!(route, Some("admin"));
            } else {
                prop_assert_ne!(route, Some("admin"));
            }
        }
    }
}
