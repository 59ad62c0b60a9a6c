//! What the decision core answers.

use crate::auth::TokenError;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

/// Why a request was denied: a closed set, so it can be a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Token(TokenError),
    /// A rule's condition denied the request.
    RuleDenied,
    /// A condition or expression failed at run time (missing field, wrong type): fail closed.
    PolicyError,
    /// No route matched and the default action is deny.
    NoRoute,
    /// The body is larger than the route's `body_limit`.
    BodyTooLarge,
    /// A rule reads the body, and it is not JSON by its content type.
    UnsupportedMediaType,
    /// A rule reads the body, and it does not parse as JSON.
    InvalidJson,
    /// The request path is ambiguous (dot segments, `//`, encoded separators, ...).
    BadPath,
    /// Several Host headers, none on HTTP/1.1, or one that is not `host[:port]`.
    BadHost,
    /// A request target that is not origin-form, absolute-form or `OPTIONS *`.
    BadTarget,
    /// A request head that is not valid HTTP/1.1 (answered for Pingora, which refused it).
    MalformedRequest,
    /// A standard method written in another case (`get`).
    BadMethod,
    /// The path is served, but not for this method (405).
    MethodNotAllowed,
    /// `Content-Length` values that are not numbers or disagree.
    BadFraming,
    /// A header the rules read is sent as several lines, or spelled with `_` for `-`.
    AmbiguousHeader,
    /// A query parameter the rules read is sent twice, or under another spelling PHP reads
    /// as it (`role[]`, `ro.le`).
    AmbiguousQuery,
    /// A JSON body the rules read that parsers could read differently: duplicate keys, numbers
    /// out of range.
    BadBody,
    /// An external source the route needs could not be fetched, and it fails closed.
    SourceUnavailable,
    /// A body the rules need stopped arriving (closed early, or too slow).
    IncompleteBody,
    /// More header bytes or fields than `limits` allow.
    HeadersTooLarge,
    /// The request head did not arrive within `limits.request_head_timeout_ms`.
    HeadTimeout,
    /// A `[[route.limit]]` budget is spent (429).
    RateLimited,
    /// A limit's shared store could not be asked, and the limit fails closed (503).
    LimitStoreUnavailable,
    /// `client_auth = "required"`, and the connection has no client certificate the trust in
    /// force accepts (a TLS session resumed across a `client_ca` change).
    ClientCertificate,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Token(t) => t.reason(),
            DenyReason::RuleDenied => "rule_denied",
            DenyReason::PolicyError => "policy_error",
            DenyReason::NoRoute => "no_route",
            DenyReason::BodyTooLarge => "body_too_large",
            DenyReason::UnsupportedMediaType => "unsupported_media_type",
            DenyReason::InvalidJson => "invalid_json",
            DenyReason::BadPath => "bad_path",
            DenyReason::BadHost => "bad_host",
            DenyReason::BadTarget => "bad_target",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::BadMethod => "bad_method",
            DenyReason::MalformedRequest => "malformed_request",
            DenyReason::BadFraming => "bad_framing",
            DenyReason::AmbiguousHeader => "ambiguous_header",
            DenyReason::AmbiguousQuery => "ambiguous_query",
            DenyReason::BadBody => "bad_body",
            DenyReason::SourceUnavailable => "source_unavailable",
            DenyReason::IncompleteBody => "incomplete_body",
            DenyReason::HeadersTooLarge => "headers_too_large",
            DenyReason::HeadTimeout => "request_head_timeout",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::LimitStoreUnavailable => "limit_store_unavailable",
            DenyReason::ClientCertificate => "client_certificate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    pub reason: DenyReason,
    pub rule: Option<Arc<str>>,
    pub message: String,
    /// The `WWW-Authenticate` header value, for 401s (RFC 6750).
    pub www_authenticate: Option<String>,
    /// The `Allow` header value, for 405s: the methods the path is served for.
    pub allow: Option<String>,
    /// The `Retry-After` header value in seconds, for 503s the gateway expects to clear.
    pub retry_after: Option<u64>,
    /// More header fields of the answer (the `RateLimit` fields of a 429).
    pub extra_headers: Vec<(http::HeaderName, String)>,
}

impl Denial {
    /// A denial that no rule made (the request's form, its token, a failure to evaluate).
    pub fn new(status: u16, reason: DenyReason, message: impl Into<String>) -> Denial {
        Denial {
            status,
            reason,
            rule: None,
            message: message.into(),
            www_authenticate: None,
            allow: None,
            retry_after: None,
            extra_headers: Vec::new(),
        }
    }

    /// A spent budget: 429 naming the limit, `Retry-After` when waiting helps, and the
    /// `RateLimit-Policy`/`RateLimit` fields of every limit the request was charged.
    pub fn rate_limited(outcomes: &[crate::ratelimit::Outcome]) -> Option<Denial> {
        let spent = crate::ratelimit::refused(outcomes)?;
        let denial = Denial {
            extra_headers: crate::ratelimit::Outcome::headers(outcomes).into(),
            ..Denial::by_rule(
                spent.name.clone(),
                429,
                DenyReason::RateLimited,
                crate::ratelimit::message(spent),
            )
        };
        Some(match spent.step.retry_after_ms {
            Some(ms) => denial.with_retry_after((ms / 1000.0).ceil().max(1.0) as u64),
            None => denial,
        })
    }

    /// A denial by the rule `rule`.
    pub fn by_rule(
        rule: Arc<str>,
        status: u16,
        reason: DenyReason,
        message: impl Into<String>,
    ) -> Denial {
        Denial {
            rule: Some(rule),
            ..Denial::new(status, reason, message)
        }
    }

    /// With an RFC 6750 `WWW-Authenticate` challenge (401s).
    pub fn with_www_authenticate(self, value: String) -> Denial {
        Denial {
            www_authenticate: Some(value),
            ..self
        }
    }

    /// With the `Allow` header of a 405.
    pub fn with_allow(self, methods: String) -> Denial {
        Denial {
            allow: Some(methods),
            ..self
        }
    }

    /// With `Retry-After` (seconds).
    pub fn with_retry_after(self, seconds: u64) -> Denial {
        Denial {
            retry_after: Some(seconds),
            ..self
        }
    }

    /// The headers the answer carries besides its body's.
    pub fn headers(&self) -> Vec<(http::HeaderName, String)> {
        let mut h = Vec::new();
        if let Some(w) = &self.www_authenticate {
            h.push((http::header::WWW_AUTHENTICATE, w.clone()));
        }
        if let Some(a) = &self.allow {
            h.push((http::header::ALLOW, a.clone()));
        }
        if let Some(r) = self.retry_after {
            h.push((http::header::RETRY_AFTER, r.to_string()));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }

    /// The JSON body sent to the client. It never contains the token or a claim value other
    /// than what a rule's own message chose to show.
    pub fn body(&self, route: Option<&str>) -> Vec<u8> {
        let body = serde_json::json!({
            "error": error_code(self.status),
            "reason": self.reason.label(),
            "route": route,
            "rule": self.rule.as_deref(),
            "message": self.message,
        });
        let mut body = body;
        if self.reason == DenyReason::RateLimited {
            body["limit"] = serde_json::json!(self.rule.as_deref());
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// A short, stable code for the status, for clients that branch on it.
pub fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        402 => "payment_required",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        431 => "request_header_fields_too_large",
        429 => "too_many_requests",
        451 => "unavailable_for_legal_reasons",
        500..=599 => "unavailable",
        _ => "denied",
    }
}

#[derive(Debug, Clone)]
pub struct Allow {
    pub upstream: Arc<str>,
    /// Headers to set on the upstream request, computed from the route's `forward` table.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// The route's limits for this request, to be charged before it is forwarded.
    pub limits: Vec<crate::ratelimit::Charge>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Allow(Allow),
    Deny(Denial),
}

/// A rule in audit mode that would have denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDenial {
    pub rule: Arc<str>,
    pub reason: DenyReason,
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Decision {
    /// The matched route, if any.
    pub route: Option<Arc<str>>,
    pub outcome: Outcome,
    pub audits: Vec<AuditDenial>,
    /// The token's `sub`, for decision logs.
    pub subject: Option<Arc<str>>,
    /// Name of the issuer of the verified token.
    pub issuer: Option<Arc<str>>,
    /// Whether the verified-token cache answered (`None`: no cache, or no token checked).
    pub token_cache: Option<bool>,
    /// The verified token's `exp` (seconds since the epoch): what was decided holds until
    /// then, which bounds a tunnel (WebSocket) opened with it.
    pub token_expires_at: Option<i64>,
}

impl Decision {
    /// A denial on `route` (`None`: before or without a route), with no token known.
    pub fn denied(route: Option<Arc<str>>, denial: Denial) -> Decision {
        Decision::new(route, Outcome::Deny(denial))
    }

    /// A request refused before or without a route (admission, no route, an incomplete body).
    pub fn refused(status: u16, reason: DenyReason, message: String) -> Decision {
        Decision::denied(None, Denial::new(status, reason, message))
    }

    /// An outcome on `route`, with no token, audits or key refetch known yet.
    pub fn new(route: Option<Arc<str>>, outcome: Outcome) -> Decision {
        Decision {
            route,
            outcome,
            audits: Vec::new(),
            subject: None,
            issuer: None,
            token_cache: None,
            token_expires_at: None,
        }
    }

    /// The same decision, made with `token` (its subject and issuer, for logs) and with what
    /// the token cache said.
    pub fn with_token(
        self,
        subject: Option<Arc<str>>,
        issuer: Option<Arc<str>>,
        token_cache: Option<bool>,
    ) -> Decision {
        Decision {
            subject,
            issuer,
            token_cache,
            ..self
        }
    }

    /// With the verified token's expiry.
    pub fn with_expiry(self, token_expires_at: Option<i64>) -> Decision {
        Decision {
            token_expires_at,
            ..self
        }
    }

    /// The same decision after its limits were charged: a spent budget turns an allow into
    /// the 429 of [`Denial::rate_limited`] (route, token and audits kept for the log).
    pub fn limited(self, outcomes: &[crate::ratelimit::Outcome]) -> Decision {
        match Denial::rate_limited(outcomes) {
            Some(d) => Decision {
                outcome: Outcome::Deny(d),
                ..self
            },
            None => self,
        }
    }

    /// The same decision when a limit that fails closed could not be charged: 503 naming the
    /// limit, with a short `Retry-After`.
    pub fn limit_store_unavailable(self, limit: Arc<str>) -> Decision {
        let denial = Denial::by_rule(
            limit.clone(),
            503,
            DenyReason::LimitStoreUnavailable,
            format!("limit `{limit}` cannot be counted right now; try again shortly"),
        )
        .with_retry_after(1);
        Decision {
            outcome: Outcome::Deny(denial),
            ..self
        }
    }

    /// With the rules in audit mode that would have denied.
    pub fn with_audits(self, audits: Vec<AuditDenial>) -> Decision {
        Decision { audits, ..self }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self.outcome, Outcome::Allow(_))
    }

    pub fn denial(&self) -> Option<&Denial> {
        match &self.outcome {
            Outcome::Deny(d) => Some(d),
            Outcome::Allow(_) => None,
        }
    }
}
