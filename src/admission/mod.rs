//! Admission: the one step that turns a request head into what the decision core decides on,
//! and into what the upstream will receive. The proxy, `claimgate eval`, `claimgate test` and
//! the benches all call [`Snapshot::admit`]; none of them reads a request's target, host or
//! path any other way, so an offline answer is the proxy's answer.
//!
//! In order: header limits (431), the method (a standard method in another case such as `get`:
//! 400 `bad_method`), the request target (400 `bad_target`; CONNECT 405), the host
//! (400 `bad_host`), `Connection` and `Upgrade` (400 `bad_framing`: only hop-by-hop options,
//! only WebSocket), `Content-Length` (400 `bad_request`), the path (400 `bad_path`), the route
//! (405 with `Allow` when the path is served for other methods only; 400 `bad_path` when an
//! upstream that ignores letter case or a trailing slash would serve another route), the
//! headers and query parameters the route reads (400 `ambiguous_header` / `ambiguous_query`,
//! see `reads.rs`), and the declared body size against the route's limit (413). What comes out
//! names the exact method, host, path and query that the rules see and that the upstream is
//! sent.

pub mod framing;
pub mod host;
#[cfg(test)]
mod properties;
pub(crate) mod reads;
pub mod target;

use crate::engine::Snapshot;
use crate::facts::{Body, RequestFacts};
use crate::policy::route::{Lookup, RouteMatch};
use crate::policy::{Decision, Denial, DenyReason};
use crate::upstream_edits::StripList;
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;
use target::Target;

const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A request head as received: no proxy types.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target as sent (`/path?q`, `http://host/path`, `*`, ...).
    pub target: &'a [u8],
    /// HTTP/1.0, which may omit `Host`.
    pub http10: bool,
    pub headers: &'a HeaderMap,
}

/// A request that may go on to its rules: what they decide on, and what the upstream receives.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The host routes and rules see: lower-case, without port or trailing dot.
    pub host: Option<String>,
    /// The `Host` to send upstream when it is not the client's own header (an absolute-form
    /// target names the host; RFC 9112 §3.2.2).
    pub set_host: Option<String>,
    /// The normalised path (see [`crate::path`]).
    pub path: String,
    pub query: Option<String>,
    /// The upstream must be sent `path?query` rather than the client's target: the target was
    /// not origin-form, or the path was normalised.
    pub rewrite_target: bool,
    pub route: Option<RouteMatch>,
    /// The matched route's name.
    pub route_name: Option<Arc<str>>,
    /// The route reads the body, up to this many bytes.
    pub body_limit: Option<usize>,
    /// The declared body length, when `Content-Length` frames the body.
    pub content_length: Option<u64>,
    /// `Content-Length` came as several equal values: send one.
    pub collapse_content_length: bool,
}

impl Admitted {
    /// The facts the rules see, for this request's headers, peer and body: the headers as the
    /// upstream will be sent them, without `hidden` (`Snapshot::strip_for` the peer; see
    /// [`RequestFacts::hidden`]).
    pub fn facts<'a>(
        &'a self,
        hidden: &'a StripList,
        request_id: Option<&'a str>,
        head: &RequestHead<'a>,
        client_ip: Option<IpAddr>,
        body: Body<'a>,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method: head.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: head.headers,
            hidden: Some(hidden),
            request_id,
            client_ip,
            body,
            location: None,
            tls: None,
        }
    }

    /// The body as the rules may see it: only on routes that read it, and only within the
    /// route's limit.
    pub fn body<'a>(&self, bytes: &'a [u8]) -> Body<'a> {
        match self.body_limit {
            None => Body::NotRead,
            Some(limit) if bytes.len() > limit => Body::TooLarge,
            Some(_) => Body::Bytes(bytes),
        }
    }

    /// The origin-form target to send upstream.
    pub fn upstream_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// A denial from the request's form alone, before or without a route.
/// The HTTP layer removes every header the `Connection` field names before the request goes
/// upstream: rules would decide on headers the upstream never sees. Only the hop-by-hop
/// options of HTTP/1.1 may be named.
fn connection_tokens(headers: &HeaderMap) -> Result<(), String> {
    for v in headers.get_all(http::header::CONNECTION) {
        let text = v
            .to_str()
            .map_err(|_| "the Connection header is not text".to_string())?;
        for token in text.split(',').map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let known = ["close", "keep-alive", "upgrade", "te"]
                .iter()
                .any(|k| token.eq_ignore_ascii_case(k));
            if !known {
                return Err(format!(
                    "the Connection header names `{}`, which would be removed before the upstream sees it",
                    token.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

/// An upgrade turns the connection into a tunnel the gateway no longer reads. WebSocket is the
/// one protocol offered: after an `Upgrade: h2c` the client could send any number of HTTP/2
/// requests inside the tunnel, none of them decided (h2c smuggling); other protocols would be
/// opaque the same way.
fn upgrade_protocols(headers: &HeaderMap) -> Result<(), String> {
    for v in headers.get_all(http::header::UPGRADE) {
        let text = v
            .to_str()
            .map_err(|_| "the Upgrade header is not text".to_string())?;
        for token in text.split(',').map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let name = token.split('/').next().unwrap_or(token);
            if !name.eq_ignore_ascii_case("websocket") {
                return Err(format!(
                    "upgrading to `{}` is not served (only WebSocket; HTTP/2 is spoken with prior knowledge or by TLS ALPN)",
                    token.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    Ok(())
}

/// Where a request goes, as its target and Host header say.
struct Place<'h> {
    /// The host decided on (see [`host::parse_host`]).
    host: Option<String>,
    /// The `Host` to send when the client's is not the one decided on.
    set_host: Option<String>,
    path: &'h str,
    query: Option<&'h str>,
    /// Whether the target is sent upstream rewritten (it was absolute-form).
    rewrite: bool,
}

/// Methods are case-sensitive, but some servers read `get` as GET: a standard method in
/// another case would be decided as one method and served as another. CONNECT is not served.
fn check_method(method: &str) -> Result<(), Box<Decision>> {
    if let Some(m) = STANDARD_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method) && **m != method)
    {
        return Err(deny(
            400,
            DenyReason::BadMethod,
            format!("`{method}` is not a method; methods are case-sensitive (`{m}`)"),
        ));
    }
    if method == "CONNECT" {
        return Err(deny(
            405,
            DenyReason::MethodNotAllowed,
            "CONNECT is not served".into(),
        ));
    }
    Ok(())
}

/// [`Decision::refused`], boxed: admission's error path.
fn deny(status: u16, reason: DenyReason, message: String) -> Box<Decision> {
    Box::new(Decision::refused(status, reason, message))
}

impl Snapshot {
    /// Admits a request head, or answers it. See the module documentation for the order.
    pub fn admit(&self, head: &RequestHead<'_>) -> Result<Admitted, Box<Decision>> {
        self.within_limits(head)?;
        check_method(head.method)?;
        let target = target::parse(head.method, head.target)
            .map_err(|e| deny(400, DenyReason::BadTarget, e.to_string()))?;
        let place = self.place(head, &target)?;
        connection_tokens(head.headers).map_err(|m| deny(400, DenyReason::BadFraming, m))?;
        upgrade_protocols(head.headers).map_err(|m| deny(400, DenyReason::BadFraming, m))?;
        let declared = framing::declared_length(head.headers)
            .map_err(|e| deny(400, DenyReason::BadFraming, e.to_string()))?;
        let host = place.host;
        let (path, normalised) = if matches!(target, Target::Asterisk) {
            ("*".to_string(), false)
        } else {
            match crate::path::normalise(place.path) {
                Ok(std::borrow::Cow::Borrowed(p)) => (p.to_string(), false),
                Ok(std::borrow::Cow::Owned(p)) => (p, true),
                Err(e) => return Err(deny(400, DenyReason::BadPath, e.to_string())),
            }
        };
        let route = self.route(host.as_deref(), head.method, &path)?;
        let (route_name, body_limit) = match &route {
            Some(m) => {
                let r = &self.policy.routes[m.route];
                reads::one_value_each(&r.request_reads, head.headers, place.query).map_err(
                    |(reason, m)| {
                        let mut d = Decision::refused(400, reason, m);
                        d.route = Some(r.name.clone());
                        Box::new(d)
                    },
                )?;
                // Read for the rules, or for the names of its fields (see `reads`).
                let read =
                    r.reads_body || reads::body_fields_checked(&r.request_reads, head.headers);
                (Some(r.name.clone()), read.then_some(r.body_limit))
            }
            None => (None, None),
        };
        if let (Some(limit), Some(n)) = (body_limit, declared.length) {
            if n > limit as u64 {
                let mut d = Decision::refused(
                    413,
                    DenyReason::BodyTooLarge,
                    "the request body is too large".into(),
                );
                d.route = route_name;
                return Err(Box::new(d));
            }
        }
        Ok(Admitted {
            host,
            set_host: place.set_host,
            path,
            query: place.query.map(str::to_string),
            // A fragment is never sent on (the HTTP layer drops it too).
            rewrite_target: place.rewrite || normalised || head.target.contains(&b'#'),
            route,
            route_name,
            body_limit,
            content_length: declared.length,
            collapse_content_length: declared.collapse,
        })
    }

    /// Header fields and bytes within `limits` (431 otherwise).
    fn within_limits(&self, head: &RequestHead<'_>) -> Result<(), Box<Decision>> {
        let limits = &self.config.raw.limits;
        let header_bytes: usize = head
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head.headers.len() > limits.max_headers || header_bytes > limits.max_header_bytes {
            return Err(deny(
                431,
                DenyReason::HeadersTooLarge,
                format!(
                    "the request headers exceed {} fields or {} bytes",
                    limits.max_headers, limits.max_header_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Where the request goes: the host it is decided on, from the target's authority or the
    /// Host header, and the path and query of its target.
    fn place<'h>(
        &self,
        head: &RequestHead<'h>,
        target: &Target<'h>,
    ) -> Result<Place<'h>, Box<Decision>> {
        let bad_host = |m: String| deny(400, DenyReason::BadHost, m);
        let mut hosts = head.headers.get_all(http::header::HOST).iter();
        let header = hosts.next();
        if hosts.next().is_some() {
            return Err(bad_host("the request has several Host headers".into()));
        }
        let header_text = match header {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| bad_host("the Host header is not text".into()))?,
            ),
            None => None,
        };
        let header = match header_text {
            Some(text) => Some(host::parse_host(text).map_err(|e| bad_host(e.to_string()))?),
            None => None,
        };
        let place = match *target {
            Target::Origin { path, query } => Place {
                host: header,
                set_host: None,
                path,
                query,
                rewrite: false,
            },
            Target::Absolute {
                authority,
                path,
                query,
            } => {
                let a = host::parse_authority(authority).map_err(|e| bad_host(e.to_string()))?;
                // The target's authority is the host (RFC 9112 §3.2.2). A Host header must
                // say the same, byte for byte (as the HTTP layer in front of this insists);
                // without one, the upstream is sent the authority as Host.
                if header_text.is_some_and(|h| h != authority) {
                    return Err(bad_host(
                        "the request target and the Host header name different hosts".into(),
                    ));
                }
                Place {
                    set_host: header_text.is_none().then(|| a.value.clone()),
                    host: Some(a.host),
                    path,
                    query,
                    rewrite: true,
                }
            }
            Target::Asterisk => Place {
                host: header,
                set_host: None,
                path: "*",
                query: None,
                rewrite: false,
            },
        };
        if place.host.is_none() && !head.http10 {
            return Err(bad_host(
                "an HTTP/1.1 request must have a Host header".into(),
            ));
        }
        // Sent on without a Host, the request would reach whatever virtual host the upstream
        // picks by default, perhaps one that the host-specific routes protect.
        if place.host.is_none() && self.policy.index.has_host_routes() {
            return Err(bad_host(
                "a request without a Host header cannot be decided: some routes are for specific hosts".into(),
            ));
        }
        Ok(place)
    }

    /// The route of a normalised path: a match, none (the unmatched action decides), or a
    /// refusal (405, or a path whose letter case decides which route serves it).
    fn route(
        &self,
        host: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<Option<RouteMatch>, Box<Decision>> {
        let found = self.policy.index.lookup(host, method, path);
        // Where an upstream would serve this request as another route than the one matched,
        // the route that decides depends on how the client spelled the path: refused, whichever
        // of the two protects more (how much a rule protects cannot be compared). Another
        // form no route serves protects nothing, and a 405 stays a 405.
        let same = |other: &Lookup| match (&found, other) {
            (_, Lookup::NoRoute) | (Lookup::MethodNotAllowed { .. }, _) => true,
            (Lookup::Route(a), Lookup::Route(b)) => a.route == b.route,
            _ => false,
        };
        // Counted under the route that matched as written (`_unmatched` said nothing of it).
        let refuse = |how: &str| {
            let mut d = Decision::refused(
                400,
                DenyReason::BadPath,
                format!("the path would match another route {how}"),
            );
            if let Lookup::Route(m) = &found {
                d.route = Some(self.policy.routes[m.route].name.clone());
            }
            Err(Box::new(d))
        };
        // Many upstreams match paths without regard to case (`/ADMIN/x` is `/admin/x` to
        // them): such an upstream serves the request as the route of its lower-cased path in
        // the lower-cased patterns. Routes with capitals of their own (gRPC's
        // `/pkg.Service/Method`) are served as written when no route serves their lower case.
        if let Some(folded) = self.policy.index.lookup_folded(host, method, path) {
            if !same(&folded) {
                return refuse("if letter case were ignored");
            }
        }
        // Many upstreams ignore a trailing slash (Express by default, Spring before 6):
        // `/admin/` is `/admin` to them. Where a wildcard took the slash (`/*` catching
        // `/admin/` beside an exact `/admin`, `/api/*` catching `/api/transfer/`), the route of
        // the path without it must be the same. A route written with its trailing slash
        // (`/api/users/`, as Django's routes are) decides that form itself.
        let absorbed = match &found {
            Lookup::Route(m) => !self.policy.routes[m.route].path.ends_with('/'),
            Lookup::NoRoute => true,
            Lookup::MethodNotAllowed { .. } => false,
        };
        if let (true, Some(stripped)) = (absorbed, path.strip_suffix('/').filter(|s| !s.is_empty()))
        {
            if !same(&self.policy.index.lookup(host, method, stripped)) {
                return refuse("without its trailing slash");
            }
            if let Some(folded) = self.policy.index.lookup_folded(host, method, stripped) {
                if !same(&folded) {
                    return refuse("without its trailing slash, if letter case were ignored");
                }
            }
        }
        match found {
            Lookup::Route(m) => Ok(Some(m)),
            Lookup::NoRoute => Ok(None),
            Lookup::MethodNotAllowed { allowed, route } => {
                let methods = allowed.join(", ");
                let denial = Denial::new(
                    405,
                    DenyReason::MethodNotAllowed,
                    format!("this path is served for {methods} only"),
                )
                .with_allow(methods);
                // Counted under the route of the path (`_unmatched` said nothing of it).
                let mut d = Decision::denied(None, denial);
                d.route = Some(self.policy.routes[route].name.clone());
                Err(Box::new(d))
            }
        }
    }

    /// Admits and decides a request whose whole body (if any) is at hand: the offline tools'
    /// and the benches' path through the same steps as the proxy's. Sources are unavailable.
    pub fn decide_head(
        &self,
        head: &RequestHead<'_>,
        client_ip: Option<IpAddr>,
        body: &[u8],
        now: std::time::SystemTime,
    ) -> Decision {
        match self.admit(head) {
            Err(d) => *d,
            Ok(a) => {
                let hidden = self.strip_for(self.peer(client_ip));
                // The id the gateway would send, made only for rules that read it.
                let id = a
                    .route
                    .as_ref()
                    .filter(|m| {
                        self.policy.routes[m.route]
                            .request_reads
                            .headers
                            .reads(crate::request_id::REQUEST_ID.as_str())
                    })
                    .map(|_| crate::request_id::RequestId::for_headers(head.headers));
                let id = id.as_ref().map(crate::request_id::RequestId::as_str);
                let facts = a.facts(hidden, id, head, client_ip, a.body(body));
                self.decide_matched(&facts, a.route.as_ref(), now)
            }
        }
    }
}
