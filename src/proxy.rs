//! The Pingora side: a thin `ProxyHttp` that turns a request into facts, asks the decision core,
//! and either answers the denial itself or forwards with the decided headers.

use crate::engine::{Snapshot, Step};
use crate::facts::{bare_host, Body, RequestFacts};
use crate::head_timeout::HeadTimedStream;
use crate::policy::decision::Allow;
use crate::policy::route::RouteMatch;
use crate::policy::{Decision, DenyReason, Outcome};
use crate::sources::SourceFetcher;
use crate::telemetry::{log_decision, LogFacts, Metrics, RouteMetrics};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub struct ClaimgateProxy {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// External source caches; they outlive reloads.
    pub sources: SourceFetcher,
}

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
    /// The TCP peer, appended to X-Forwarded-For.
    client_ip: Option<IpAddr>,
    request_id: String,
    route: Option<Arc<str>>,
    upstream_started: Option<Instant>,
    upstream_observed: bool,
    /// The route's metric series, resolved when the request was decided.
    route_metrics: Option<Arc<RouteMetrics>>,
    /// The normalised path, when it differs from what the client sent.
    rewritten_path: Option<String>,
}

const REQUEST_ID: &str = "x-request-id";

/// The client's request id when it is a sane token, else a new one.
fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The host a route is matched on; refuses requests whose host is ambiguous: several Host
/// headers, or an absolute-form target naming another host than the Host header.
fn request_host(req: &RequestHeader) -> std::result::Result<Option<String>, &'static str> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has several Host headers");
    }
    let header = match header {
        Some(h) => Some(bare_host(
            h.to_str().map_err(|_| "the Host header is not text")?,
        )),
        None => None,
    };
    match (req.uri.host().map(bare_host), header) {
        (Some(a), Some(h)) if a != h => {
            Err("the request target and the Host header name different hosts")
        }
        (Some(a), _) => Ok(Some(a)),
        (None, h) => Ok(h),
    }
}

fn request_facts<'a>(
    req: &'a RequestHeader,
    path: Option<&'a str>,
    host: Option<&'a str>,
    client_ip: Option<IpAddr>,
    body: Body<'a>,
) -> RequestFacts<'a> {
    RequestFacts {
        method: req.method.as_str(),
        host,
        path: path.unwrap_or(req.uri.path()),
        query: req.uri.query(),
        headers: &req.headers,
        client_ip,
        body,
        location: None,
    }
}

async fn respond_json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    www_authenticate: Option<&str>,
    request_id: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(w) = www_authenticate {
        resp.insert_header(http::header::WWW_AUTHENTICATE, w)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
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
        let Some(m) = m else {
            return snapshot.decide_matched(facts, None, now);
        };
        match snapshot.begin(facts, m, now) {
            Step::Decided(d) => d,
            Step::Evaluate(pending) if pending.requests.is_empty() => {
                snapshot.finish(facts, m, pending, &[])
            }
            Step::Evaluate(pending) => {
                let values = self.sources.fetch_all(&pending.requests).await;
                snapshot.finish(facts, m, pending, &values)
            }
        }
    }

    /// Answers a request refused before any route was chosen (ambiguous host, path, framing).
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
        let log = LogFacts {
            request_id: &ctx.request_id,
            method: req.method.as_str(),
            path: req.uri.path(),
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
                ctx.allow = Some(allow);
                ctx.snapshot = Some(snapshot);
                Ok(false)
            }
            Outcome::Deny(denial) => {
                let body = denial.body(decision.route.as_deref());
                respond_json(
                    session,
                    denial.status,
                    body,
                    denial.www_authenticate.as_deref(),
                    &ctx.request_id,
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
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(BodyRead::TooLarge);
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.as_mut().write_continue_response().await?;
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

#[async_trait]
impl ProxyHttp for ClaimgateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
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
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let started = Instant::now();
        let snapshot = self.state.load_full();
        ctx.request_id = request_id(session.req_header());
        let limits = &snapshot.config.raw.limits;
        let headers = &session.req_header().headers;
        let header_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if headers.len() > limits.max_headers || header_bytes > limits.max_header_bytes {
            let decision = crate::engine::refused(
                431,
                DenyReason::HeadersTooLarge,
                format!(
                    "the request headers exceed {} fields or {} bytes",
                    limits.max_headers, limits.max_header_bytes
                ),
            );
            return self.refuse(session, ctx, snapshot, decision, started).await;
        }
        let host = match request_host(session.req_header()) {
            Ok(h) => h,
            Err(message) => {
                let decision = crate::engine::bad_request(DenyReason::BadHost, message.to_string());
                return self.refuse(session, ctx, snapshot, decision, started).await;
            }
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = client_ip;
        // The policy and the upstream must see the same path: normalise or refuse it first.
        match crate::path::normalise(session.req_header().uri.path()) {
            Ok(std::borrow::Cow::Borrowed(_)) => {}
            Ok(std::borrow::Cow::Owned(p)) => ctx.rewritten_path = Some(p),
            Err(e) => {
                let decision = crate::engine::bad_path(e);
                return self.refuse(session, ctx, snapshot, decision, started).await;
            }
        }
        // Look the route up first: only routes whose rules read the body buffer it.
        let (m, body_limit) = {
            let facts = request_facts(
                session.req_header(),
                ctx.rewritten_path.as_deref(),
                host.as_deref(),
                client_ip,
                Body::NotRead,
            );
            let m = snapshot.lookup(&facts);
            let limit = m.as_ref().and_then(|m| snapshot.body_limit(m));
            (m, limit)
        };
        let mut buf = Vec::new();
        let mut read = BodyRead::Complete;
        if let Some(limit) = body_limit {
            let timeout = std::time::Duration::from_millis(limits.client_body_timeout_ms);
            session.as_mut().set_read_timeout(Some(timeout));
            read = read_body(session, limit, &mut buf).await?;
        }
        if let BodyRead::Broken { timed_out } = read {
            let decision = crate::engine::incomplete_body(timed_out);
            // The connection cannot carry another request after a half-read body.
            session.set_keepalive(None);
            return self.refuse(session, ctx, snapshot, decision, started).await;
        }
        let body = match (body_limit, read) {
            (None, _) => Body::NotRead,
            (Some(_), BodyRead::TooLarge) => Body::TooLarge,
            (Some(_), _) => Body::Bytes(&buf),
        };
        let facts = request_facts(
            session.req_header(),
            ctx.rewritten_path.as_deref(),
            host.as_deref(),
            client_ip,
            body,
        );
        let mut decision = self.decide(&snapshot, &facts, m.as_ref()).await;
        // A key id no key has: maybe the identity provider rotated. Refetch (single-flight,
        // rate-limited per issuer) and decide once more.
        if let Some(issuer) = decision
            .unknown_key_issuer
            .as_deref()
            .and_then(|n| snapshot.issuers.get(n))
        {
            let mut refreshed = false;
            for r in &issuer.remote {
                refreshed |= r.refresh_for_unknown_kid().await;
            }
            if refreshed {
                decision = self.decide(&snapshot, &facts, m.as_ref()).await;
            }
        }
        let log = LogFacts {
            request_id: &ctx.request_id,
            method: facts.method,
            path: facts.path,
            peer: client_ip,
            headers: facts.headers,
            geo: &snapshot.geo,
        };
        ctx.route_metrics = Some(self.observe(&decision, &log, started, &snapshot));
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
        let mut peer = HttpPeer::new(pool.pick(), pool.tls, pool.sni.clone());
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
        if let Some(allow) = &ctx.allow {
            // Remove every header the route may set before adding the computed ones, so a client
            // can never supply them, not even when the gateway's own value is absent.
            for h in allow.strip.iter() {
                upstream_request.remove_header(h);
            }
            for (name, value) in &allow.forward {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(path) = &ctx.rewritten_path {
            // Forward the path the policy matched, not the client's spelling of it.
            let pq = match upstream_request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            match http::Uri::builder().path_and_query(pq).build() {
                Ok(uri) => upstream_request.set_uri(uri),
                Err(_) => {
                    return Error::e_explain(ErrorType::InvalidHTTPHeader, "normalised path");
                }
            }
        }
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(ip) = ctx.client_ip {
            let xff = http::header::HeaderName::from_static("x-forwarded-for");
            let value = match upstream_request.headers.get(&xff) {
                Some(prev) => format!("{}, {ip}", String::from_utf8_lossy(prev.as_bytes())),
                None => ip.to_string(),
            };
            upstream_request.insert_header(xff, value)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(series) = &ctx.route_metrics {
            if let Some(t) = ctx.upstream_started {
                series.upstream_time(&self.metrics, t.elapsed());
            }
            series.upstream_response(&self.metrics, Some(upstream_response.status.as_u16()));
        }
        ctx.upstream_observed = true;
        Ok(())
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX)
    where
        Self::CTX: Send + Sync,
    {
        // An allowed request that got no upstream response header: the upstream failed.
        if ctx.allow.is_some() && !ctx.upstream_observed && e.is_some() {
            if let Some(series) = &ctx.route_metrics {
                series.upstream_response(&self.metrics, None);
            }
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let (code, reason, message) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "http_error", "the request could not be served"),
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
            if let Err(err) = respond_json(session, code, body, None, "").await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}
