//! The decision core: `(snapshot, request facts, now) -> Decision`. No proxy types, no I/O, no
//! clock of its own. The proxy, the CLI and the benches all call [`Snapshot::decide`].

use crate::auth::remote::RemoteRegistry;
use crate::auth::verify::Rejection;
use crate::auth::{extract, verify, Issuer, IssuerSet, TokenError, VerifiedToken};
use crate::config::{AuthMode, Config, UnmatchedAction};
use crate::facts::{Activation, Body, Inputs, RequestFacts};
use crate::geo::GeoResolver;
use crate::location::SourceError;
use crate::policy::decision::Allow;
use crate::policy::eval::evaluate;
use crate::policy::route::RouteMatch;
use crate::policy::{Decision, Denial, DenyReason, LoadContext, Outcome, PolicySet};
use crate::upstream::Upstreams;
use chrono::{DateTime, Utc};
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
    unmatched_issuers: Vec<Arc<Issuer>>,
    unmatched_upstream: Option<Arc<str>>,
}

impl Snapshot {
    /// Loads keys and policies for `config`. All errors, each with its location.
    pub fn load(
        config: Arc<Config>,
        remote: &RemoteRegistry,
    ) -> Result<Snapshot, Vec<SourceError>> {
        let issuers = IssuerSet::load(&config, remote);
        let ctx = load_context(&config);
        let policy = PolicySet::load_dir(&config.rules_dir, &ctx);
        let geo = load_geo(&config);
        match (issuers, policy, geo) {
            (Ok(i), Ok(p), Ok(g)) => {
                Ok(Snapshot::new(config, Arc::new(i), Arc::new(p), Arc::new(g)))
            }
            (i, p, g) => {
                let mut errors = i.err().unwrap_or_default();
                errors.extend(p.err().unwrap_or_default());
                errors.extend(g.err());
                Err(errors)
            }
        }
    }

    /// Binds a policy set to the issuers it names. The policy was validated against the same
    /// configuration, so every name resolves.
    pub fn new(
        config: Arc<Config>,
        issuers: Arc<IssuerSet>,
        policy: Arc<PolicySet>,
        geo: Arc<GeoResolver>,
    ) -> Snapshot {
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
        Snapshot {
            geo,
            upstreams: Upstreams::from_config(&config),
            config,
            issuers,
            policy,
            route_issuers,
            unmatched_issuers,
            unmatched_upstream,
        }
    }

    /// Decides one request at time `now`. The path is normalised first (see [`crate::path`]);
    /// callers that forward the request must forward the normalised path too.
    pub fn decide(&self, req: &RequestFacts<'_>, now: SystemTime) -> Decision {
        let path = match crate::path::normalise(req.path) {
            Ok(p) => p,
            Err(e) => return bad_path(e),
        };
        let req = RequestFacts {
            path: &path,
            ..*req
        };
        let m = self.lookup(&req);
        self.decide_matched(&req, m.as_ref(), now)
    }

    /// The route a request matches. Callers that may need to read the body look first, then
    /// decide with [`Snapshot::decide_matched`].
    pub fn lookup(&self, req: &RequestFacts<'_>) -> Option<RouteMatch> {
        self.policy.index.lookup(req.host, req.method, req.path)
    }

    /// The body limit of the matched route, when its expressions read the body.
    pub fn body_limit(&self, m: &RouteMatch) -> Option<usize> {
        let r = &self.policy.routes[m.route];
        r.reads_body.then_some(r.body_limit)
    }

    /// Decides a request whose route was already looked up.
    pub fn decide_matched(
        &self,
        req: &RequestFacts<'_>,
        m: Option<&RouteMatch>,
        now: SystemTime,
    ) -> Decision {
        let now: DateTime<Utc> = now.into();
        let Some(m) = m else {
            return self.unmatched(req, now);
        };
        let route = &self.policy.routes[m.route];
        let token = match self.authenticate(req, route.auth, &self.route_issuers[m.route], now) {
            Ok(t) => t,
            Err(e) => return token_denial(Some(route.name.clone()), e),
        };
        let body = if route.reads_body {
            match parse_body(req) {
                Ok(b) => b,
                Err((status, reason, message)) => {
                    return Decision {
                        route: Some(route.name.clone()),
                        outcome: Outcome::Deny(Denial {
                            status,
                            reason,
                            rule: None,
                            message: message.into(),
                            www_authenticate: None,
                        }),
                        audits: Vec::new(),
                        subject: subject(token.as_ref()),
                        issuer: token.map(|t| t.issuer),
                        unknown_key_issuer: None,
                    };
                }
            }
        } else {
            None
        };
        let activation = Activation::new(Inputs {
            req,
            params: &m.params,
            token: token.as_ref(),
            now,
            route: Some(route),
            cel: &self.policy.cel,
            body: body.as_ref(),
            geo: &self.geo,
        });
        let verdict = evaluate(route, &activation);
        Decision {
            route: Some(route.name.clone()),
            outcome: verdict.outcome,
            audits: verdict.audits,
            subject: subject(token.as_ref()),
            issuer: token.map(|t| t.issuer),
            unknown_key_issuer: None,
        }
    }

    fn authenticate(
        &self,
        req: &RequestFacts<'_>,
        mode: AuthMode,
        issuers: &[Arc<Issuer>],
        now: DateTime<Utc>,
    ) -> Result<Option<VerifiedToken>, Rejection> {
        if mode == AuthMode::None {
            return Ok(None);
        }
        let max = self.config.raw.limits.max_token_bytes;
        match extract::bearer_token(req.headers, max)? {
            Some(t) => verify::verify(t, issuers, now.timestamp()).map(Some),
            None if mode == AuthMode::Optional => Ok(None),
            None => Err(TokenError::Missing.into()),
        }
    }

    fn unmatched(&self, req: &RequestFacts<'_>, now: DateTime<Utc>) -> Decision {
        let Some(upstream) = &self.unmatched_upstream else {
            let status = self.config.raw.unmatched.status;
            return Decision {
                route: None,
                outcome: Outcome::Deny(Denial {
                    status,
                    reason: DenyReason::NoRoute,
                    rule: None,
                    message: "no route matches this request".into(),
                    www_authenticate: None,
                }),
                audits: Vec::new(),
                subject: None,
                issuer: None,
                unknown_key_issuer: None,
            };
        };
        let mode = self.config.raw.unmatched.auth;
        match self.authenticate(req, mode, &self.unmatched_issuers, now) {
            Ok(token) => Decision {
                route: None,
                outcome: Outcome::Allow(Allow {
                    upstream: upstream.clone(),
                    forward: Vec::new(),
                    strip: Arc::from([]),
                }),
                audits: Vec::new(),
                subject: subject(token.as_ref()),
                issuer: token.map(|t| t.issuer),
                unknown_key_issuer: None,
            },
            Err(e) => token_denial(None, e),
        }
    }
}

/// The answer to a path that cannot be matched unambiguously.
pub fn bad_path(e: crate::path::PathError) -> Decision {
    bad_request(DenyReason::BadPath, e.to_string())
}

/// A 400 decided before any route: the request itself is ambiguous.
pub fn bad_request(reason: DenyReason, message: String) -> Decision {
    Decision {
        route: None,
        outcome: Outcome::Deny(Denial {
            status: 400,
            reason,
            rule: None,
            message,
            www_authenticate: None,
        }),
        audits: Vec::new(),
        subject: None,
        issuer: None,
        unknown_key_issuer: None,
    }
}

type BodyError = (u16, DenyReason, &'static str);

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
    let json_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !json_type {
        return Err((
            415,
            DenyReason::UnsupportedMediaType,
            "this endpoint takes a JSON body (Content-Type: application/json)",
        ));
    }
    serde_json::from_slice(bytes).map(Some).map_err(|_| {
        (
            400,
            DenyReason::InvalidJson,
            "the request body is not valid JSON",
        )
    })
}

fn subject(token: Option<&VerifiedToken>) -> Option<String> {
    token
        .and_then(|t| t.claims.get("sub"))
        .and_then(|s| s.as_str())
        .map(str::to_string)
}

fn token_denial(route: Option<Arc<str>>, r: Rejection) -> Decision {
    let e = r.error;
    let unknown_key_issuer = (e == TokenError::UnknownKey).then_some(r.issuer).flatten();
    let www = match e.rfc6750_code() {
        None => "Bearer realm=\"claimgate\"".to_string(),
        Some(code) => {
            format!("Bearer realm=\"claimgate\", error=\"{code}\", error_description=\"{e}\"")
        }
    };
    Decision {
        route,
        outcome: Outcome::Deny(Denial {
            status: e.status(),
            reason: DenyReason::Token(e),
            rule: None,
            message: if e == TokenError::Missing {
                "a bearer token is required".into()
            } else {
                format!("invalid token: {e}")
            },
            www_authenticate: Some(www),
        }),
        audits: Vec::new(),
        subject: None,
        issuer: None,
        unknown_key_issuer,
    }
}

fn load_geo(config: &Config) -> Result<GeoResolver, SourceError> {
    let g = &config.raw.geo;
    let trusted: Vec<String> = config
        .raw
        .network
        .trusted_proxies
        .iter()
        .map(|t| t.get_ref().clone())
        .collect();
    let mmdb = g.mmdb.as_ref().map(|p| config.resolve(p.get_ref()));
    GeoResolver::new(
        mmdb.as_deref(),
        g.country_header.as_ref().map(|h| h.get_ref().as_str()),
        &trusted,
    )
    .map_err(|e| {
        let span = match (&e, &g.mmdb, &g.country_header) {
            (crate::geo::GeoError::Database { .. }, Some(p), _) => p.span(),
            (crate::geo::GeoError::BadHeader(_), _, Some(h)) => h.span(),
            _ => 0..0,
        };
        config.error_at(span, e.to_string())
    })
}

/// The names policies may refer to.
pub fn load_context(config: &Config) -> LoadContext {
    LoadContext {
        issuers: config.raw.issuers.keys().cloned().collect(),
        upstreams: config.raw.upstreams.keys().cloned().collect(),
        default_upstream: config.default_upstream().map(str::to_string),
    }
}
