//! The decision core: `(snapshot, request facts, now) -> Decision`. No proxy types, no I/O, no
//! clock of its own. The proxy, the CLI and the benches all call [`Snapshot::decide`].

use crate::auth::claims::ClaimsRead;
use crate::auth::segment::Compact;
use crate::auth::verify::Rejection;
use crate::auth::{extract, verify, Issuer, IssuerSet, TokenCache, TokenError, VerifiedToken};
use crate::config::{AuthMode, Config, UnmatchedAction};
use crate::facts::{Body, RequestFacts};
use crate::geo::GeoResolver;
use crate::location::SourceError;
use crate::media_type::MediaTypeError;
use crate::policy::activation::{Activation, Inputs};
use crate::policy::cel::string_map;
use crate::policy::decision::Allow;
use crate::policy::eval::evaluate_traced;
use crate::policy::route::RouteMatch;
use crate::policy::trace::{RouteTrace, SourceTrace, TokenTrace};
use crate::policy::Trace;
use crate::policy::{Decision, Denial, DenyReason, Outcome, PolicySet};
use crate::sources::{FailMode, SourceRequest, SourceSet, SourceSpec, SourceValue};
use crate::strict_json::StrictJsonError;
use crate::upstream::Upstreams;
use crate::upstream_edits::StripList;
use chrono::{DateTime, Utc};
use http::HeaderName;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// Everything one request is decided with. Immutable; a reload builds a new one and swaps it in,
/// and a request keeps the snapshot it started with.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub issuers: Arc<IssuerSet>,
    pub policy: Arc<PolicySet>,
    pub upstreams: Upstreams,
    pub geo: Arc<GeoResolver>,
    /// The accepted issuers of each route, by route index, resolved once here.
    route_issuers: Vec<Vec<Arc<Issuer>>>,
    pub sources: Arc<SourceSet>,
    /// Verified tokens of this snapshot's issuers; a reload starts an empty one.
    pub token_cache: Option<TokenCache>,
    /// The claims of a new token that are decoded: those this snapshot's expressions read.
    /// Per snapshot, like the cache that keeps the tokens decoded with it.
    pub claims_read: ClaimsRead,
    /// The sources each route reads, by route index.
    route_sources: Vec<Vec<Arc<SourceSpec>>>,
    unmatched_issuers: Vec<Arc<Issuer>>,
    unmatched_upstream: Option<Arc<str>>,
    /// See [`Snapshot::strip_for`].
    strip_trusted: StripList,
    strip_untrusted: StripList,
    /// The TLS listener's certificates, loaded with everything else.
    pub tls: Option<Arc<crate::tls::Certificates>>,
}

impl Snapshot {
    /// Binds a policy set to the issuers it names. The policy was validated against the same
    /// configuration, so every name resolves.
    pub fn new(
        config: Arc<Config>,
        issuers: Arc<IssuerSet>,
        policy: Arc<PolicySet>,
        geo: Arc<GeoResolver>,
        sources: Arc<SourceSet>,
    ) -> Snapshot {
        let t = &config.raw.token_cache;
        let token_cache = t.enabled.then(|| {
            TokenCache::new(
                t.max_entries,
                std::time::Duration::from_secs(t.max_ttl_seconds),
            )
        });
        let route_sources = policy
            .routes
            .iter()
            .map(|r| {
                r.sources
                    .iter()
                    .filter_map(|n| sources.get(n).cloned())
                    .collect()
            })
            .collect();
        let route_issuers = policy
            .routes
            .iter()
            .map(|r| {
                r.issuers
                    .iter()
                    .filter_map(|n| issuers.get(n).cloned())
                    .collect()
            })
            .collect();
        let unmatched_issuers = issuers.iter().cloned().collect();
        let unmatched_upstream = match config.raw.unmatched.action {
            UnmatchedAction::Deny => None,
            UnmatchedAction::Allow => config
                .raw
                .unmatched
                .upstream
                .as_ref()
                .map(|u| Arc::from(u.get_ref().as_str()))
                .or_else(|| {
                    config
                        .raw
                        .upstreams
                        .keys()
                        .next()
                        .map(|k| Arc::from(k.as_str()))
                }),
        };
        let strip_trusted: Vec<HeaderName> = policy
            .routes
            .iter()
            .flat_map(|r| r.forward.iter().map(|f| f.header.clone()))
            .chain(strip_headers(&config).into_iter().flatten())
            .chain(REWRITING_HEADERS.iter().map(|h| HeaderName::from_static(h)))
            .collect();
        let strip_untrusted = StripList::new(
            strip_trusted
                .iter()
                .cloned()
                .chain(EDGE_HEADERS.iter().map(|h| HeaderName::from_static(h)))
                .chain(geo.country_header().cloned()),
        );
        let strip_trusted = StripList::new(strip_trusted);
        let claims_read = ClaimsRead {
            names: policy.claims.union(&sources.claims()),
            max_depth: config.raw.limits.max_claims_depth,
        };
        Snapshot {
            claims_read,
            strip_trusted,
            strip_untrusted,
            geo,
            upstreams: Upstreams::from_config(&config),
            config,
            issuers,
            policy,
            route_issuers,
            route_sources,
            sources,
            token_cache,
            unmatched_issuers,
            unmatched_upstream,
            tls: None,
        }
    }

    /// With upstream pools whose TLS files were read ([`Upstreams::load`]).
    pub fn with_upstreams(self, upstreams: Upstreams) -> Snapshot {
        Snapshot { upstreams, ..self }
    }

    /// With the TLS listener's certificates.
    pub fn with_tls(self, tls: Option<crate::tls::Certificates>) -> Snapshot {
        Snapshot {
            tls: tls.map(Arc::new),
            ..self
        }
    }

    /// The fetched key sets a request may need: those of the issuers some route accepts, and
    /// every issuer's when unmatched requests are let through with a token. What `/readyz`
    /// waits for: an issuer no route uses cannot make a request fail.
    pub fn remotes_in_use(&self) -> Vec<Arc<crate::auth::remote::RemoteKeys>> {
        let unmatched_tokens = self.config.raw.unmatched.action == UnmatchedAction::Allow
            && self.config.raw.unmatched.auth != crate::config::AuthMode::None;
        let mut out: Vec<Arc<crate::auth::remote::RemoteKeys>> = Vec::new();
        let used = |i: &Arc<Issuer>| {
            unmatched_tokens
                || self
                    .route_issuers
                    .iter()
                    .flatten()
                    .any(|r| Arc::ptr_eq(r, i))
        };
        for i in self.unmatched_issuers.iter().filter(|i| used(i)) {
            out.extend(i.remote.iter().cloned());
        }
        out
    }

    /// The peer, and whether it is a trusted proxy (`network.trusted_proxies`).
    pub fn peer(&self, ip: Option<IpAddr>) -> Option<(IpAddr, bool)> {
        ip.map(|ip| (ip, self.geo.is_trusted(ip)))
    }

    /// Headers removed from every request forwarded for a client at `peer` (its address and
    /// whether it is a trusted proxy, as [`GeoResolver::is_trusted`] says), on every route,
    /// open and unmatched included: each header any route sets from claims (an upstream trusts
    /// them everywhere), `network.strip_headers`, method-override and URL-rewriting headers,
    /// and, unless the peer is a trusted proxy, the edge headers (`Forwarded`,
    /// `X-Forwarded-Host`, `-Proto`, `-Prefix`, `X-Real-IP` and the like, the country header).
    pub fn strip_for(&self, peer: Option<(IpAddr, bool)>) -> &StripList {
        match peer {
            Some((_, true)) => &self.strip_trusted,
            _ => &self.strip_untrusted,
        }
    }

    /// Decides a request admitted by [`Snapshot::admit`]. A route that reads external
    /// sources is decided as if none of them answered: callers that can fetch use
    /// [`Snapshot::begin`] and [`Snapshot::finish`].
    pub fn decide_matched(
        &self,
        req: &RequestFacts<'_>,
        m: Option<&RouteMatch>,
        now: SystemTime,
    ) -> Decision {
        let Some(m) = m else {
            return match self.begin_unmatched(req, now) {
                Step::Decided(d) | Step::NeedsKeys { otherwise: d, .. } => d,
                Step::Evaluate(_) => unreachable_unmatched(),
            };
        };
        match self.begin(req, m, now) {
            Step::Evaluate(p) => self.finish(req, m, p, &[]),
            Step::Decided(d) | Step::NeedsKeys { otherwise: d, .. } => d,
        }
    }

    /// The first half of a decision: token, body and, on routes that read `ext`, the source
    /// requests to fetch (`Pending::requests`, empty on most routes). Everything that can deny
    /// without external data denies here, so a request without a valid token never reaches a
    /// source.
    pub fn begin(&self, req: &RequestFacts<'_>, m: &RouteMatch, now: SystemTime) -> Step {
        self.begin_with(req, m, now, Credentials::Verify)
    }

    /// [`Snapshot::begin`] with the token's origin chosen by the caller.
    pub fn begin_with(
        &self,
        req: &RequestFacts<'_>,
        m: &RouteMatch,
        now: SystemTime,
        credentials: Credentials,
    ) -> Step {
        let now: DateTime<Utc> = now.into();
        let route = &self.policy.routes[m.route];
        if let Some(mut d) = self.client_certificate_missing(req) {
            d.route = Some(route.name.clone());
            return Step::Decided(d);
        }
        let (token, verified, token_cache) = match credentials {
            Credentials::Verify => {
                match self.authenticate(req, route.auth, &self.route_issuers[m.route], now) {
                    Ok((t, cached)) => (t, true, cached),
                    Err(e) => return token_step(Some(route.name.clone()), e),
                }
            }
            // Taken as given, and held to what the proxy holds a verified token to: a route
            // without auth gives its rules no token; a token of an issuer the route does not
            // accept is refused; a certificate-bound issuer's token needs the connection's
            // certificate.
            Credentials::Unverified(_) if route.auth == AuthMode::None => (None, false, None),
            Credentials::Unverified(Some(t)) => {
                let issuers = &self.route_issuers[m.route];
                let checked = if issuers.iter().any(|i| i.name == t.issuer) {
                    bound_to_connection(&t, issuers, req)
                } else {
                    Err(TokenError::WrongIssuer.into())
                };
                if let Err(e) = checked {
                    return token_step(Some(route.name.clone()), e);
                }
                (Some(t), false, None)
            }
            Credentials::Unverified(None) => (None, false, None),
        };
        let body = if route.reads_body {
            match parse_body(req) {
                Ok(b) => b,
                Err((status, reason, message)) => {
                    let denial = Denial::new(status, reason, message);
                    return Step::Decided(denied(route, denial, token.as_deref(), token_cache));
                }
            }
        } else {
            None
        };
        // Upstreams that also read query parameters from the body.
        if let Err((status, reason, message)) = crate::admission::reads::body_fields_are_not_read(
            &route.request_reads,
            req,
            body.as_ref(),
        ) {
            let denial = Denial::new(status, reason, message);
            return Step::Decided(denied(route, denial, token.as_deref(), token_cache));
        }
        let sources = &self.route_sources[m.route];
        let mut requests = Vec::with_capacity(sources.len());
        if !sources.is_empty() {
            let act = self.activation(req, m, token.as_deref(), body.as_ref(), now, None);
            for spec in sources {
                match spec.render(&act) {
                    Ok(r) => requests.push(r),
                    Err(e) => {
                        tracing::debug!(route = %route.name, source = %spec.name, error = %e, "source request could not be built");
                        let denial = Denial::new(
                            403,
                            DenyReason::PolicyError,
                            format!("the request to source `{}` could not be built", spec.name),
                        );
                        return Step::Decided(denied(route, denial, token.as_deref(), token_cache));
                    }
                }
            }
        }
        Step::Evaluate(Pending {
            token,
            verified,
            token_cache,
            body,
            now,
            requests,
        })
    }

    /// The second half: the route's rules, with `values[i]` the answer to
    /// `pending.requests[i]` (missing values count as unavailable).
    pub fn finish(
        &self,
        req: &RequestFacts<'_>,
        m: &RouteMatch,
        pending: Pending,
        values: &[SourceValue],
    ) -> Decision {
        self.finish_traced(req, m, pending, values, None)
    }

    /// [`Snapshot::finish`], recording how the decision came about in `trace`.
    pub fn finish_traced(
        &self,
        req: &RequestFacts<'_>,
        m: &RouteMatch,
        pending: Pending,
        values: &[SourceValue],
        mut trace: Option<&mut Trace>,
    ) -> Decision {
        let route = &self.policy.routes[m.route];
        if let Some(t) = trace.as_deref_mut() {
            t.route = Some(RouteTrace {
                name: route.name.to_string(),
                file: route.file.display().to_string(),
                params: m.params.iter().cloned().collect(),
            });
            t.token = pending.token.as_deref().map(|tok| TokenTrace {
                issuer: tok.issuer.to_string(),
                verified: pending.verified,
                subject: subject(Some(tok)).map(|s| s.to_string()),
            });
        }
        let mut ext: Vec<(String, ::cel::Value)> = Vec::with_capacity(pending.requests.len());
        for (i, r) in pending.requests.iter().enumerate() {
            let spec = &r.spec;
            let value = values.get(i).unwrap_or(&SourceValue::Unavailable);
            if let Some(t) = trace.as_deref_mut() {
                t.sources.push(source_trace(r, value));
            }
            match value {
                SourceValue::Value(v) => ext.push((spec.name.to_string(), v.clone())),
                SourceValue::NotFound => ext.push((spec.name.to_string(), ::cel::Value::Null)),
                SourceValue::Unavailable if spec.on_error == FailMode::Open => {}
                SourceValue::Unavailable => {
                    let denial = Denial::new(
                        spec.settings.error_status,
                        DenyReason::SourceUnavailable,
                        format!(
                            "the `{}` data source is unavailable; try again later",
                            spec.name
                        ),
                    );
                    return denied(route, denial, pending.token.as_deref(), pending.token_cache);
                }
            }
        }
        let ext = (!pending.requests.is_empty()).then(|| string_map(ext));
        let act = self.activation(
            req,
            m,
            pending.token.as_deref(),
            pending.body.as_ref(),
            pending.now,
            ext.as_ref(),
        );
        let verdict = evaluate_traced(route, &act, trace);
        drop(act);
        verdict_decision(
            route,
            verdict,
            pending.token.as_deref(),
            pending.token_cache,
        )
    }

    fn activation<'a>(
        &'a self,
        req: &'a RequestFacts<'a>,
        m: &'a RouteMatch,
        token: Option<&'a VerifiedToken>,
        body: Option<&'a serde_json::Value>,
        now: DateTime<Utc>,
        ext: Option<&'a ::cel::Value>,
    ) -> Activation<'a> {
        Activation::new(Inputs {
            req,
            params: &m.params,
            token,
            now,
            route: Some(&self.policy.routes[m.route]),
            cel: &self.policy.cel,
            body,
            geo: &self.geo,
            ext,
            memo_slots: self.policy.memo_slots,
        })
    }

    fn authenticate(
        &self,
        req: &RequestFacts<'_>,
        mode: AuthMode,
        issuers: &[Arc<Issuer>],
        now: DateTime<Utc>,
    ) -> Result<Authenticated, Rejection> {
        if mode == AuthMode::None {
            return Ok((None, None));
        }
        let max = self.config.raw.limits.max_token_bytes;
        let bytes = match extract::bearer_bytes(req.headers, max)? {
            Some(t) => t,
            None if mode == AuthMode::Optional => return Ok((None, None)),
            None => return Err(TokenError::Missing.into()),
        };
        let now = now.timestamp();
        let Some(cache) = &self.token_cache else {
            let t = self
                .verify_within_limits(extract::jws(bytes)?, issuers, now)?
                .single_use();
            bound_to_connection(&t, issuers, req)?;
            return Ok((Some(Arc::new(t)), None));
        };
        // Looked up as sent: equal bytes are a token that passed `jws` when it was cached.
        if let Some(t) = cache.get(bytes, issuers, now) {
            // Per request, never cached: the same token may come on another connection.
            bound_to_connection(&t, issuers, req)?;
            return Ok((Some(t), Some(true)));
        }
        let raw = extract::jws(bytes)?;
        // What the cache keeps (the token, its claims, the cache's entry) is allocated apart
        // from the request's own memory (see `heap`).
        let t = crate::heap::long_lived(|| -> Result<_, Rejection> {
            let t = Arc::new(self.verify_within_limits(raw, issuers, now)?);
            if let Some(issuer) = issuers.iter().find(|i| i.name == t.issuer) {
                cache.insert(raw, t.clone(), issuer);
            }
            Ok(t)
        })?;
        bound_to_connection(&t, issuers, req)?;
        Ok((Some(t), Some(false)))
    }

    /// A request over TLS without a client certificate the trust in force accepts, where
    /// `client_auth = "required"`: a full handshake never lets one through, but a session
    /// resumed after a reload that added or replaced `client_ca` (or made it required) does.
    fn client_certificate_missing(&self, req: &RequestFacts<'_>) -> Option<Decision> {
        let tls = req.tls?;
        let required = self.tls.as_ref().is_some_and(|t| t.client_required);
        (required && tls.client.is_none()).then(|| {
            Decision::refused(
                403,
                DenyReason::ClientCertificate,
                "this listener requires a client certificate that its `client_ca` accepts; connect again with one".into(),
            )
        })
    }

    /// Verifies a token within the limits on what rules will walk: claims larger than
    /// `limits.max_claims_bytes` (judged before decoding) or nested deeper than
    /// `limits.max_claims_depth` (read or not) are refused. Only the claims this snapshot's
    /// expressions read are decoded.
    fn verify_within_limits(
        &self,
        raw: &str,
        issuers: &[Arc<Issuer>],
        now: i64,
    ) -> Result<VerifiedToken, Rejection> {
        let parts = Compact::split(raw).ok_or(TokenError::Malformed)?;
        // The payload's decoded size follows from its base64 length: no need to decode, or to
        // spend a signature check, on claims that will be refused anyway.
        if parts.payload.len() * 3 / 4 > self.config.raw.limits.max_claims_bytes {
            return Err(TokenError::ClaimsTooLarge.into());
        }
        verify::verify_parts(parts, issuers, now, &self.claims_read)
    }

    /// The `[unmatched]` action for a request no route serves: a decision, or the need for
    /// an issuer's keys first.
    pub fn begin_unmatched(&self, req: &RequestFacts<'_>, now: SystemTime) -> Step {
        self.begin_unmatched_with(req, now, Credentials::Verify)
    }

    /// The names of the issuers the `[unmatched]` action accepts.
    pub fn unmatched_issuer_names(&self) -> Vec<String> {
        self.unmatched_issuers
            .iter()
            .map(|i| i.name.to_string())
            .collect()
    }

    /// [`Snapshot::begin_unmatched`] with the token's origin chosen by the caller (the offline
    /// tools' claims, held to what the action holds a verified token to).
    pub fn begin_unmatched_with(
        &self,
        req: &RequestFacts<'_>,
        now: SystemTime,
        credentials: Credentials,
    ) -> Step {
        if let Some(d) = self.client_certificate_missing(req) {
            return Step::Decided(d);
        }
        let Some(upstream) = &self.unmatched_upstream else {
            let status = self.config.raw.unmatched.status;
            return Step::Decided(Decision::refused(
                status,
                DenyReason::NoRoute,
                "no route matches this request".into(),
            ));
        };
        let mode = self.config.raw.unmatched.auth;
        let authenticated = match credentials {
            Credentials::Verify => {
                self.authenticate(req, mode, &self.unmatched_issuers, now.into())
            }
            Credentials::Unverified(_) if mode == AuthMode::None => Ok((None, None)),
            Credentials::Unverified(Some(t)) => {
                let issuers = &self.unmatched_issuers;
                if issuers.iter().any(|i| i.name == t.issuer) {
                    bound_to_connection(&t, issuers, req).map(|()| (Some(t), None))
                } else {
                    Err(TokenError::WrongIssuer.into())
                }
            }
            Credentials::Unverified(None) if mode == AuthMode::Optional => Ok((None, None)),
            Credentials::Unverified(None) => Err(TokenError::Missing.into()),
        };
        match authenticated {
            Ok((token, token_cache)) => Step::Decided(
                Decision::new(
                    None,
                    Outcome::Allow(Allow {
                        upstream: upstream.clone(),
                        forward: Vec::new(),
                        limits: Vec::new(),
                    }),
                )
                .with_expiry(token.as_deref().map(|t| t.expires_at))
                .with_token(
                    subject(token.as_deref()),
                    token.map(|t| t.issuer.clone()),
                    token_cache,
                ),
            ),
            Err(e) => token_step(None, e),
        }
    }
}

/// The answer to a body that stopped arriving on `route`: 400 when the client closed early,
/// 408 when it was too slow.
pub fn incomplete_body(timed_out: bool, route: Option<Arc<str>>) -> Decision {
    let mut d = if timed_out {
        Decision::refused(
            408,
            DenyReason::IncompleteBody,
            "the request body did not arrive in time".into(),
        )
    } else {
        Decision::refused(
            400,
            DenyReason::IncompleteBody,
            "the request body ended before its declared length".into(),
        )
    };
    d.route = route;
    d
}

pub(crate) type BodyError = (u16, DenyReason, &'static str);

/// The JSON body for rules: `null` when the request has none.
fn parse_body(req: &RequestFacts<'_>) -> Result<Option<serde_json::Value>, BodyError> {
    let bytes = match req.body {
        Body::TooLarge => {
            return Err((
                413,
                DenyReason::BodyTooLarge,
                "the request body is too large",
            ));
        }
        Body::NotRead | Body::Bytes(&[]) => return Ok(Some(serde_json::Value::Null)),
        Body::Bytes(b) => b,
    };
    // One parser may take the first Content-Type, another the last: one type, or no decision.
    if req
        .headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .count()
        > 1
    {
        return Err((
            400,
            DenyReason::BadBody,
            "the request has several Content-Type headers",
        ));
    }
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let unsupported = |message| Err((415, DenyReason::UnsupportedMediaType, message));
    match content_type.map(crate::media_type::check_json) {
        Some(Ok(())) => {}
        Some(Err(MediaTypeError::Malformed)) => {
            return unsupported("the Content-Type header is not one well-formed media type")
        }
        Some(Err(MediaTypeError::Charset)) => {
            return unsupported("this endpoint takes a JSON body in UTF-8")
        }
        None | Some(Err(MediaTypeError::NotJson)) => {
            return unsupported("this endpoint takes a JSON body (Content-Type: application/json)")
        }
    }
    // A compressed body is bytes the rules cannot read as JSON, and an upstream that inflates
    // it would read other JSON than the rules did.
    if crate::media_type::has_content_coding(req.headers) {
        return unsupported("this endpoint takes an uncompressed JSON body (no Content-Encoding)");
    }
    crate::strict_json::parse(bytes)
        .map(Some)
        .map_err(json_refusal)
}

/// The refusal of a JSON body that [`crate::strict_json`] does not take.
pub(crate) fn json_refusal(e: StrictJsonError) -> BodyError {
    match e {
        StrictJsonError::Syntax => (
            400,
            DenyReason::InvalidJson,
            "the request body is not valid JSON",
        ),
        StrictJsonError::DuplicateKey => (
            400,
            DenyReason::BadBody,
            "the request body has an object with a duplicate key",
        ),
        StrictJsonError::NumberOutOfRange => (
            400,
            DenyReason::BadBody,
            "the request body has a number whose magnitude is 2^64 or more",
        ),
    }
}

/// What [`Snapshot::begin`] gives: a decision already, or a request ready for its rules once
/// its sources (`Pending::requests`, often none) are fetched.
pub enum Step {
    Decided(Decision),
    Evaluate(Pending),
    /// The token names a key id none of `issuer`'s keys has: perhaps the identity provider
    /// rotated. A caller that can refetch keys does, then begins again; otherwise (or if the
    /// refetch brings nothing) `otherwise` is the decision.
    NeedsKeys {
        issuer: Arc<str>,
        otherwise: Decision,
    },
}

/// [`Snapshot::begin_unmatched`] never asks for rules to be evaluated.
fn unreachable_unmatched() -> Decision {
    Decision::refused(
        403,
        DenyReason::PolicyError,
        "the unmatched action could not be decided".into(),
    )
}

/// RFC 8705 §3: for an issuer with `certificate_bound`, the token's `cnf["x5t#S256"]` must be
/// the thumbprint of the client certificate of this request's TLS connection.
fn bound_to_connection(
    t: &VerifiedToken,
    issuers: &[Arc<Issuer>],
    req: &RequestFacts<'_>,
) -> Result<(), Rejection> {
    let bound = issuers
        .iter()
        .any(|i| i.name == t.issuer && i.certificate_bound);
    if !bound {
        return Ok(());
    }
    let want = t
        .cnf
        .as_ref()
        .and_then(|c| c.get("x5t#S256"))
        .and_then(serde_json::Value::as_str);
    let have = req
        .tls
        .and_then(|tls| tls.client.as_ref())
        .map(|c| c.thumbprint.as_str());
    match (want, have) {
        (Some(w), Some(h)) if w == h => Ok(()),
        _ => Err(Rejection {
            error: TokenError::CertificateBinding,
            issuer: Some(t.issuer.clone()),
            retry_after: None,
        }),
    }
}

/// The denial of a token refused for `error` (offline tools that check given claims).
pub fn token_refusal(route: Option<Arc<str>>, error: TokenError) -> Decision {
    token_denial(route, error.into())
}

/// The step after a token was rejected: a refetch of keys for an unknown key id, else the
/// denial.
fn token_step(route: Option<Arc<str>>, r: Rejection) -> Step {
    // An unknown key id may be a new key; stale keys may have been refreshed meanwhile.
    let refetch = matches!(r.error, TokenError::UnknownKey | TokenError::KeysStale);
    let issuer = refetch.then(|| r.issuer.clone()).flatten();
    let otherwise = token_denial(route, r);
    match issuer {
        Some(issuer) => Step::NeedsKeys { issuer, otherwise },
        None => Step::Decided(otherwise),
    }
}

/// A request's token, if any, and whether the token cache answered.
type Authenticated = (Option<Arc<VerifiedToken>>, Option<bool>);

/// Where the token of a request comes from.
pub enum Credentials {
    /// The request's bearer token, verified against the route's issuers (the proxy's way).
    Verify,
    /// A token taken as given, signature unchecked: `claimgate eval --claims` and policy
    /// tests, never the proxy.
    Unverified(Option<Arc<VerifiedToken>>),
}

/// A request between the two halves of its decision, waiting for its external sources.
pub struct Pending {
    token: Option<Arc<VerifiedToken>>,
    verified: bool,
    /// Whether the token came from the token cache (`None`: no cache, or no token).
    token_cache: Option<bool>,
    body: Option<serde_json::Value>,
    /// The decision time, kept so both halves decide at the same instant.
    now: DateTime<Utc>,
    /// What to fetch, in the route's order.
    pub requests: Vec<SourceRequest>,
}

fn denied(
    route: &crate::policy::Route,
    denial: Denial,
    token: Option<&VerifiedToken>,
    token_cache: Option<bool>,
) -> Decision {
    Decision::denied(Some(route.name.clone()), denial).with_token(
        subject(token),
        token.map(|t| t.issuer.clone()),
        token_cache,
    )
}

fn verdict_decision(
    route: &crate::policy::Route,
    verdict: crate::policy::eval::RouteVerdict,
    token: Option<&VerifiedToken>,
    token_cache: Option<bool>,
) -> Decision {
    Decision::new(Some(route.name.clone()), verdict.outcome)
        .with_token(subject(token), token.map(|t| t.issuer.clone()), token_cache)
        .with_expiry(token.map(|t| t.expires_at))
        .with_audits(verdict.audits)
}

fn source_trace(r: &SourceRequest, value: &SourceValue) -> SourceTrace {
    let (outcome, value) = match value {
        SourceValue::Value(v) => ("value", Some(v.json().unwrap_or(serde_json::Value::Null))),
        SourceValue::NotFound => ("not_found", Some(serde_json::Value::Null)),
        SourceValue::Unavailable => ("unavailable", None),
    };
    SourceTrace {
        name: r.spec.name.to_string(),
        url: r.url.clone(),
        value,
        outcome,
    }
}

fn subject(token: Option<&VerifiedToken>) -> Option<Arc<str>> {
    token.and_then(|t| t.subject.clone())
}

fn token_denial(route: Option<Arc<str>>, r: Rejection) -> Decision {
    let e = r.error;
    let message = if e == TokenError::Missing {
        "a bearer token is required".into()
    } else {
        format!("invalid token: {e}")
    };
    let denial = Denial::new(e.status(), DenyReason::Token(e), message);
    // Keys the gateway cannot refresh are its own problem: 503 with when to try again, and
    // no challenge that would send the client for a new token.
    if e == TokenError::KeysStale {
        return Decision::denied(route, denial.with_retry_after(r.retry_after.unwrap_or(1)));
    }
    let www = match e.rfc6750_code() {
        None => "Bearer realm=\"claimgate\"".to_string(),
        Some(code) => {
            format!("Bearer realm=\"claimgate\", error=\"{code}\", error_description=\"{e}\"")
        }
    };
    Decision::denied(route, denial.with_www_authenticate(www))
}

/// Headers that make some upstreams act on another method or path than the request's
/// (method overrides, rewritten URLs): the upstream would not serve what was decided. Removed
/// from every request.
const REWRITING_HEADERS: [&str; 6] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
];

/// Headers only an edge proxy may set (the client's host, scheme, address as the edge saw
/// them). Removed unless the peer is a trusted proxy.
const EDGE_HEADERS: [&str; 22] = [
    // Set again by the gateway (the peer's address alone, for an untrusted peer): listed so
    // that the rules do not see the client's own copy either, nor its `_` spelling.
    "x-forwarded-for",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
    "x-real-ip",
    // The same facts under the names other proxies and frameworks use (Rails and Rack read
    // `X-Forwarded-Ssl` and `X-Forwarded-Scheme`, Spring `X-Forwarded-Port`, IIS and Akamai
    // `True-Client-IP`, nginx's `auth_request` setups `X-Original-URI`).
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-original-uri",
    "x-original-host",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-url-scheme",
    "front-end-https",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
];

/// `network.strip_headers`, as header names.
pub(crate) fn strip_headers(config: &Config) -> Result<Vec<HeaderName>, Vec<SourceError>> {
    let mut names = Vec::new();
    let mut errors = Vec::new();
    for h in &config.raw.network.strip_headers {
        match HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes()) {
            Ok(n) => names.push(n),
            Err(_) => errors.push(config.error_at(
                h.span(),
                format!("`{}` is not a valid header name", h.get_ref()),
            )),
        }
    }
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use crate::admission::RequestHead;
    use crate::policy::{Decision, DenyReason, Outcome};
    use crate::testing::{token, Workspace};
    use http::{HeaderMap, HeaderValue};
    use serde_json::json;
    use std::time::SystemTime;

    const RULES: &str = r#"
[[route]]
name = "health"
path = "/health"
auth = "none"

[[route]]
name = "transfer"
path = "/accounts/{id}/transfer"
methods = ["POST"]
  [[route.rule]]
  name = "own-account"
  allow_if = "request.params.id == claims.account"
  [[route.rule]]
  name = "limit"
  deny_if = "body.amount > claims.limit"
  message = "over the limit"
  [[route.rule]]
  name = "small-limits"
  mode = "audit"
  deny_if = "claims.limit < 100"
  [route.forward]
  x-user = "claims.sub"

[[route]]
name = "broken"
path = "/broken"
  [[route.rule]]
  name = "compares-a-string"
  allow_if = "claims.level > 'x'"
"#;

    fn decide(method: &str, path: &str, token: Option<&str>, body: &str) -> Decision {
        let ws = Workspace::new(&[("api.toml", RULES)]);
        let snapshot = ws.snapshot();
        decide_with(&snapshot, method, path, token, body)
    }

    fn decide_with(
        snapshot: &super::Snapshot,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Decision {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.test"));
        if let Some(t) = token {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        if !body.is_empty() {
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            headers.insert("content-length", HeaderValue::from(body.len()));
        }
        let head = RequestHead {
            method,
            target: path.as_bytes(),
            http10: false,
            headers: &headers,
        };
        snapshot.decide_head(&head, None, body.as_bytes(), SystemTime::now())
    }

    fn denial(d: &Decision) -> (u16, DenyReason, Option<&str>, &str) {
        match &d.outcome {
            Outcome::Deny(x) => (x.status, x.reason, x.rule.as_deref(), &x.message),
            Outcome::Allow(_) => panic!("allowed: {d:?}"),
        }
    }

    #[test]
    fn a_protected_route_without_a_token_is_401_and_an_open_one_is_allowed() {
        let d = decide("POST", "/accounts/a1/transfer", None, "");
        assert_eq!(d.route.as_deref(), Some("transfer"));
        let (status, reason, _, _) = denial(&d);
        assert_eq!((status, reason.label()), (401, "missing_token"));
        assert!(decide("GET", "/health", None, "").is_allow());
    }

    #[test]
    fn rules_run_in_order_and_the_first_enforced_denial_decides() {
        let t = token(json!({"sub": "alice", "account": "a1", "limit": 500}));
        let d = decide(
            "POST",
            "/accounts/a2/transfer",
            Some(&t),
            r#"{"amount": 10}"#,
        );
        assert_eq!(denial(&d).2, Some("own-account"));
        let d = decide(
            "POST",
            "/accounts/a1/transfer",
            Some(&t),
            r#"{"amount": 900}"#,
        );
        let (status, reason, rule, message) = denial(&d);
        assert_eq!(
            (status, reason, rule, message),
            (403, DenyReason::RuleDenied, Some("limit"), "over the limit")
        );
        assert_eq!(d.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn an_allowed_request_carries_its_headers_and_audit_denials() {
        let t = token(json!({"sub": "bob", "account": "a1", "limit": 50}));
        let d = decide(
            "POST",
            "/accounts/a1/transfer",
            Some(&t),
            r#"{"amount": 10}"#,
        );
        let Outcome::Allow(a) = &d.outcome else {
            panic!("denied: {d:?}");
        };
        assert_eq!(&*a.upstream, "main");
        let forward: Vec<_> = a
            .forward
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(forward, [("x-user", "bob")]);
        let audits: Vec<_> = d.audits.iter().map(|a| &*a.rule).collect();
        assert_eq!(audits, ["small-limits"]);
    }

    #[test]
    fn a_rule_that_fails_at_run_time_denies_as_a_policy_error() {
        let t = token(json!({"level": 3}));
        let d = decide("GET", "/broken", Some(&t), "");
        let (status, reason, rule, _) = denial(&d);
        assert_eq!(
            (status, reason, rule),
            (403, DenyReason::PolicyError, Some("compares-a-string"))
        );
    }

    #[test]
    fn the_token_cache_answers_the_second_request() {
        let ws = Workspace::new(&[("api.toml", RULES)]);
        let snapshot = ws.snapshot();
        let t = token(json!({"sub": "carol", "account": "a1", "limit": 500}));
        let body = r#"{"amount": 1}"#;
        let first = decide_with(&snapshot, "POST", "/accounts/a1/transfer", Some(&t), body);
        let second = decide_with(&snapshot, "POST", "/accounts/a1/transfer", Some(&t), body);
        assert!(first.is_allow() && second.is_allow());
        assert_eq!(
            (first.token_cache, second.token_cache),
            (Some(false), Some(true))
        );
    }

    /// Rules that name their claims (no expression reads `claims` whole), so a new token's
    /// other claims are not decoded.
    const NAMED_CLAIMS: &str = r#"
[[route]]
name = "orders"
path = "/orgs/{id}/orders"
methods = ["GET", "POST"]
  [[route.rule]]
  name = "not-suspended"
  deny_if = "has(claims.suspended) && claims.suspended != false"
  [[route.rule]]
  name = "own-org"
  allow_if = "claims['org'].id == request.params.id || claims.roles.exists(r, r == 'admin')"
  [[route.rule]]
  name = "writer"
  mode = "audit"
  deny_if = "request.method == 'POST' && !('write' in claims.scopes)"
  [route.forward]
  x-tier = "claims.tier"
"#;

    fn claim_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            (-3i64..3).prop_map(|n| json!(n)),
            prop::sample::select(vec!["o1", "o2", "admin", "write", "gold", ""])
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec!["id", "admin", "x"]).prop_map(String::from),
                    inner,
                    0..3,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn decoding_only_the_claims_rules_name_never_changes_a_decision() {
        use crate::auth::claim_names::ClaimNames;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let ws = Workspace::new(&[("api.toml", NAMED_CLAIMS)]);
        let projected = ws.snapshot();
        let named = ["org", "roles", "scopes", "suspended", "tier"];
        assert_eq!(projected.claims_read.names, ClaimNames::only(named));
        let mut whole = ws.snapshot();
        whole.claims_read.names = ClaimNames::All;
        let names = prop::sample::select(vec![
            "org",
            "roles",
            "scopes",
            "suspended",
            "tier",
            "sub",
            "scope",
            "realm_access",
            "x",
        ]);
        let claims = prop::collection::btree_map(names.prop_map(String::from), claim_value(), 0..8);
        let request = (
            prop::sample::select(vec!["GET", "POST"]),
            prop::sample::select(vec!["o1", "o2"]),
        );
        let mut runner = TestRunner::new(Config {
            cases: 512,
            ..Config::default()
        });
        runner
            .run(&(claims, request), |(claims, (method, org))| {
                let t = token(serde_json::Value::Object(claims.into_iter().collect()));
                let path = format!("/orgs/{org}/orders");
                let a = decide_with(&projected, method, &path, Some(&t), "");
                let b = decide_with(&whole, method, &path, Some(&t), "");
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_bad_signature_is_refused_whatever_the_claims() {
        let t = token(json!({"account": "a1", "limit": 500}));
        let (head, sig) = t.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", sig.chars().rev().collect::<String>());
        let d = decide(
            "POST",
            "/accounts/a1/transfer",
            Some(&forged),
            r#"{"amount": 1}"#,
        );
        assert_eq!(denial(&d).0, 401);
    }
}
