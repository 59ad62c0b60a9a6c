//! Offline decisions with a trace, for `claimgate eval` and `claimgate test`: the same core the
//! proxy runs ([`Snapshot::begin_with`] and [`Snapshot::finish_traced`]), fed from a described
//! request, with mocked source values instead of fetches.

use crate::admission::RequestHead;
use crate::auth::VerifiedToken;
use crate::engine::{Credentials, Snapshot, Step};
use crate::facts::RequestFacts;
use crate::geo::{continent_of, Location};
use crate::policy::DenyReason;
use crate::policy::{Decision, Outcome, Trace};
use crate::sources::SourceValue;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// A request as an operator describes it.
#[derive(Debug, Clone, Default)]
pub struct EvalRequest {
    pub method: String,
    pub host: Option<String>,
    /// Path with an optional `?query`.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
    pub client_ip: Option<IpAddr>,
    /// Decide as if the client were in this country (ISO code), whatever the address says.
    pub country: Option<String>,
    /// The TLS connection the request came on (`None`: the plain listener).
    pub tls: Option<crate::facts::TlsFacts>,
    /// Units of each `[[route.limit]]` (by name) already used in its window; a limit not
    /// named has its whole budget.
    pub limits_used: BTreeMap<String, f64>,
}

/// Where the token comes from.
#[derive(Debug, Clone, Default)]
pub enum TokenInput {
    /// No token (or one already in the `authorization` header, verified as the proxy would).
    #[default]
    FromHeaders,
    /// A bearer token, verified against the configured issuers.
    Token(String),
    /// Claims taken as they are: no signature is checked, and the trace says so.
    Claims {
        claims: serde_json::Map<String, serde_json::Value>,
        /// The issuer name (from gateway.toml) to attribute them to; default: the route's first.
        issuer: Option<String>,
    },
}

/// A mocked answer of an external source.
#[derive(Debug, Clone)]
pub enum Mock {
    Json(serde_json::Value),
    NotFound,
    Unavailable,
}

/// The decision as a test or an operator reads it.
/// Whether the request goes on to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    /// `allow` or `deny`, as policy test files write it.
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "allow" => Some(Verdict::Allow),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub decision: Verdict,
    /// The denial's status; 200 for an allowed request (the upstream answers it).
    pub status: u16,
    pub reason: Option<&'static str>,
    pub route: Option<String>,
    pub rule: Option<String>,
    pub message: Option<String>,
    pub upstream: Option<String>,
    /// Rules in audit mode that would have denied.
    pub audit_denials: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub summary: Summary,
    /// Claims were given directly; no signature was checked.
    pub unverified: bool,
    pub trace: Trace,
}

/// Checks that what an operator named exists in the configuration: the issuer given with raw
/// claims, every mocked source and every limit given a usage (a misspelt one would be
/// ignored, and the answer read as the limit's).
pub fn check_names(
    snapshot: &Snapshot,
    token: &TokenInput,
    mocks: &BTreeMap<String, Mock>,
    limits_used: &BTreeMap<String, f64>,
) -> Result<(), String> {
    let limit_names = || {
        snapshot
            .policy
            .routes
            .iter()
            .flat_map(|r| r.limits.iter().map(|l| &*l.name))
    };
    if let Some(n) = limits_used
        .keys()
        .find(|n| !limit_names().any(|l| l == n.as_str()))
    {
        return Err(format!("no limit `{n}` in the rules"));
    }
    if let TokenInput::Claims {
        issuer: Some(i), ..
    } = token
    {
        if snapshot.issuers.get(i).is_none() {
            return Err(format!("no issuer `{i}` in the configuration"));
        }
    }
    match mocks.keys().find(|n| snapshot.sources.get(n).is_none()) {
        Some(n) => Err(format!("no source `{n}` in the configuration")),
        None => Ok(()),
    }
}

/// Decides `req` at `now` with `snapshot`, sources answered from `mocks` (a source without a
/// mock is unavailable).
pub fn explain(
    snapshot: &Snapshot,
    req: &EvalRequest,
    token: &TokenInput,
    mocks: &BTreeMap<String, Mock>,
    now: SystemTime,
) -> Explanation {
    let mut headers = req.headers.clone();
    if let TokenInput::Token(t) = token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    // The length a client would declare, so a body over the limit is refused before the token
    // is looked at, as the proxy does.
    if let Some(b) = &req.body {
        if !headers.contains_key(http::header::CONTENT_LENGTH)
            && !headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(b.len()));
        }
    }
    if let Some(h) = &req.host {
        match HeaderValue::from_str(h) {
            Ok(v) => {
                headers.insert(http::header::HOST, v);
            }
            Err(_) => {
                let d = Decision::refused(
                    400,
                    DenyReason::BadHost,
                    "the Host header is not text".into(),
                );
                return finish(d, Trace::default(), false);
            }
        }
    }
    // Without a host the request is decided as the proxy decides one without a Host header
    // (HTTP/1.0): by the host-less routes.
    let head = RequestHead {
        method: &req.method,
        target: req.target.as_bytes(),
        http10: req.host.is_none(),
        headers: &headers,
    };
    let location = req.country.as_ref().map(|c| {
        let c = c.to_ascii_uppercase();
        Location {
            continent: continent_of(&c).map(str::to_string),
            country: Some(c),
        }
    });
    let unverified = matches!(token, TokenInput::Claims { .. });
    let mut trace = Trace::default();

    let admitted = match snapshot.admit(&head) {
        Ok(a) => a,
        Err(d) => return finish(*d, trace, unverified),
    };
    let Some(body_bytes) = as_framed(&headers, req.body.as_deref().unwrap_or_default()) else {
        let d = crate::engine::incomplete_body(false, admitted.route_name.clone());
        return finish(d, trace, unverified);
    };
    // What the gateway would send upstream, and the rules would see.
    let request_id = crate::request_id::RequestId::for_headers(&headers);
    let body = admitted.body(body_bytes);
    let facts = RequestFacts {
        location: location.as_ref(),
        tls: req.tls.as_ref(),
        ..admitted.facts(
            snapshot.strip_for(snapshot.peer(req.client_ip)),
            Some(request_id.as_str()),
            &head,
            req.client_ip,
            body,
        )
    };
    let route = admitted
        .route
        .as_ref()
        .map(|m| &snapshot.policy.routes[m.route]);
    let credentials = match token {
        TokenInput::Claims { claims, issuer } => {
            match claims_as_given(snapshot, route, claims, issuer.as_deref(), now) {
                Ok(c) => c,
                Err(d) => return finish(*d, trace, unverified),
            }
        }
        _ => Credentials::Verify,
    };
    let sent = |d: &Decision| upstream_headers(snapshot, req, &headers, &admitted, &request_id, d);
    let Some(m) = admitted.route.clone() else {
        let d = unmatched(snapshot, &facts, now, credentials);
        trace.upstream_headers = sent(&d);
        return finish(d, trace, unverified);
    };
    let pending = match snapshot.begin_with(&facts, &m, now, credentials) {
        Step::Evaluate(p) => p,
        Step::Decided(d) | Step::NeedsKeys { otherwise: d, .. } => {
            return finish(d, trace, unverified)
        }
    };
    let values = mocked(&pending, mocks);
    let d = snapshot.finish_traced(&facts, &m, pending, &values, Some(&mut trace));
    let d = with_mocked_limits(d, &req.limits_used, now);
    trace.upstream_headers = sent(&d);
    finish(d, trace, unverified)
}

/// The headers of the head the gateway would send upstream for an allowed `d`: the described
/// request's, with the edits the proxy makes (the same function). Empty for a denial.
fn upstream_headers(
    snapshot: &Snapshot,
    req: &EvalRequest,
    headers: &HeaderMap,
    admitted: &crate::admission::Admitted,
    request_id: &crate::request_id::RequestId,
    d: &Decision,
) -> BTreeMap<String, String> {
    let crate::policy::Outcome::Allow(allow) = &d.outcome else {
        return BTreeMap::new();
    };
    let peer = snapshot.peer(req.client_ip);
    let Ok(edits) = crate::upstream_edits::Edits::for_request(
        snapshot.strip_for(peer),
        admitted,
        &allow.forward,
        request_id.header_value().clone(),
        peer,
        req.tls.is_some(),
    ) else {
        return BTreeMap::new();
    };
    let mut head = http::Request::new(()).into_parts().0;
    head.headers = headers.clone();
    if crate::upstream_edits::edit(&mut head, &edits).is_err() {
        return BTreeMap::new();
    }
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &head.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// The `[unmatched]` action's answer, with the given credentials.
fn unmatched(
    snapshot: &Snapshot,
    facts: &RequestFacts<'_>,
    now: SystemTime,
    credentials: Credentials,
) -> Decision {
    match snapshot.begin_unmatched_with(facts, now, credentials) {
        Step::Decided(d) | Step::NeedsKeys { otherwise: d, .. } => d,
        Step::Evaluate(_) => Decision::refused(
            403,
            DenyReason::PolicyError,
            "the unmatched action could not be decided".into(),
        ),
    }
}

/// The body as the gateway reads it by its declared length: `None` when it is shorter (it
/// never arrives whole: 400 `incomplete_body`); a longer one is cut at the length (the rest
/// would be the next request on the connection).
fn as_framed<'b>(headers: &HeaderMap, body: &'b [u8]) -> Option<&'b [u8]> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match declared {
        Some(n) => body.get(..n),
        None => Some(body),
    }
}

/// Charges an allowed request's limits against a described state (`used` units per limit
/// name), as the proxy charges its store: the same arithmetic, the same 429.
fn with_mocked_limits(d: Decision, used: &BTreeMap<String, f64>, now: SystemTime) -> Decision {
    let crate::policy::Outcome::Allow(allow) = &d.outcome else {
        return d;
    };
    if allow.limits.is_empty() {
        return d;
    }
    let now_ms = crate::ratelimit::millis(now);
    let outcomes = crate::ratelimit::memory::decide(&allow.limits, now_ms, |key| {
        let c = allow.limits.iter().find(|c| c.key == key)?;
        let u = used.get(&*c.name)?;
        (c.limit > 0.0).then(|| now_ms + u * c.window_ms as f64 / c.limit)
    });
    d.limited(&outcomes)
}

/// Claims taken as given (`eval --claims`, policy tests), as a token of `issuer` (by default
/// the route's first, or the unmatched action's) signed with its first algorithm. Held to what
/// the gateway holds a signed token to at `now`: `iss` and `aud` (filled in with the issuer's
/// when absent), `exp`, `nbf` and `iat`, and the claims' size and depth limits: a denial, as
/// the gateway would answer the same claims signed.
fn claims_as_given(
    snapshot: &Snapshot,
    route: Option<&crate::policy::Route>,
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: Option<&str>,
    now: SystemTime,
) -> Result<Credentials, Box<Decision>> {
    let issuer = issuer
        .map(str::to_string)
        .or_else(|| route.and_then(|r| r.issuers.first()).map(|i| i.to_string()))
        .or_else(|| snapshot.unmatched_issuer_names().into_iter().next())
        .unwrap_or_else(|| "unverified".to_string());
    let configured = snapshot.issuers.get(&issuer);
    let alg = configured
        .and_then(|i| i.algorithms.first().copied())
        .unwrap_or(jsonwebtoken::Algorithm::RS256);
    let mut claims = claims.clone();
    let now_s = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let exp = match configured {
        Some(i) => {
            claims
                .entry("iss")
                .or_insert_with(|| serde_json::Value::String(i.iss.clone()));
            if let Some(a) = i.audiences.first() {
                claims
                    .entry("aud")
                    .or_insert_with(|| serde_json::Value::String(a.clone()));
            }
            // Without `exp` the claims are taken as valid an hour past `now`.
            claims
                .entry("exp")
                .or_insert_with(|| serde_json::Value::from(now_s + 3600));
            let refused = |e: crate::auth::error::TokenError| {
                Box::new(crate::engine::token_refusal(
                    route.map(|r| r.name.clone()),
                    e,
                ))
            };
            let text = serde_json::Value::Object(claims.clone()).to_string();
            if text.len() > snapshot.config.raw.limits.max_claims_bytes {
                return Err(refused(crate::auth::error::TokenError::ClaimsTooLarge));
            }
            crate::auth::verify::check_given_claims(&claims, i, now_s).map_err(refused)?
        }
        None => claims
            .get("exp")
            .and_then(|e| e.as_i64())
            .unwrap_or(i64::MAX),
    };
    Ok(Credentials::Unverified(Some(Arc::new(VerifiedToken::new(
        Arc::from(issuer.as_str()),
        alg,
        None,
        Some("JWT".into()),
        claims,
        exp,
    )))))
}

/// The mocked answer of each source the request needs, in its order; a source without a mock
/// is unavailable.
fn mocked(pending: &crate::engine::Pending, mocks: &BTreeMap<String, Mock>) -> Vec<SourceValue> {
    pending
        .requests
        .iter()
        .map(|r| match mocks.get(&*r.spec.name) {
            Some(Mock::Json(j)) => SourceValue::Value(crate::policy::cel::json_to_value(j)),
            Some(Mock::NotFound) => SourceValue::NotFound,
            Some(Mock::Unavailable) | None => SourceValue::Unavailable,
        })
        .collect()
}

fn finish(d: Decision, trace: Trace, unverified: bool) -> Explanation {
    let audit_denials = d.audits.iter().map(|a| a.rule.to_string()).collect();
    let route = d.route.as_deref().map(str::to_string);
    let summary = match d.outcome {
        Outcome::Allow(a) => Summary {
            decision: Verdict::Allow,
            status: 200,
            reason: None,
            route,
            rule: None,
            message: None,
            upstream: Some(a.upstream.to_string()),
            audit_denials,
        },
        Outcome::Deny(den) => Summary {
            decision: Verdict::Deny,
            status: den.status,
            reason: Some(den.reason.label()),
            route,
            rule: den.rule.as_deref().map(str::to_string),
            message: Some(den.message),
            upstream: None,
            audit_denials,
        },
    };
    Explanation {
        summary,
        unverified,
        trace,
    }
}

/// Parses `Name: value` header arguments.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not `Name: value`"))?;
    let name = HeaderName::from_bytes(n.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a header name", n.trim()))?;
    let value = HeaderValue::from_str(v.trim())
        .map_err(|_| format!("the value of `{name}` is not valid"))?;
    Ok((name, value))
}
