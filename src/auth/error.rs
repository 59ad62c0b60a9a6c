use thiserror::Error;

/// Why a token was not accepted. Each variant maps to a stable `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error("the bearer token is empty")]
    Empty,
    #[error("the bearer token is too large")]
    TooLarge,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token has a critical header the gateway does not understand")]
    CriticalHeader,
    #[error("no key matches the token's key id")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no valid `exp` claim")]
    MissingExpiry,
    #[error("the token's issuer is not accepted here")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token's claims are nested too deeply")]
    ClaimsTooDeep,
    #[error("the token's claims are too large")]
    ClaimsTooLarge,
    /// RFC 7519 §2 and §4.1.4-6: `exp`, `nbf` and `iat` are NumericDate values, JSON numbers.
    #[error("the token's `exp`, `nbf` or `iat` is not a number of seconds within range")]
    InvalidDate,
    /// RFC 7519 §4.1.6: a token issued after now (beyond the leeway) was not issued yet.
    #[error("the token was issued in the future")]
    IssuedInFuture,
    /// The issuer's fetched keys are older than `max_staleness_seconds` (or were never
    /// fetched): the gateway's problem, not the client's token.
    #[error("the issuer's keys could not be refreshed; try again later")]
    KeysStale,
    /// The issuer names the accepted `typ` values (e.g. `at+jwt`, RFC 9068) and the token's
    /// is another, or missing.
    #[error("the token's type (`typ`) is not accepted here")]
    WrongType,
    /// RFC 8705 §3: the issuer's tokens are bound to the client certificate that presents them,
    /// and this one's `cnf["x5t#S256"]` is missing or names another certificate.
    #[error("the token is not bound to the client certificate of this connection")]
    CertificateBinding,
}

impl TokenError {
    /// The stable, closed `reason` label used in metrics, logs and response bodies.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::MultipleAuthorization => "multiple_authorization",
            TokenError::Empty => "empty_token",
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed => "malformed_token",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::CriticalHeader => "critical_header",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::MissingExpiry => "missing_exp",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::ClaimsTooDeep => "claims_too_deep",
            TokenError::ClaimsTooLarge => "claims_too_large",
            TokenError::InvalidDate => "invalid_date_claim",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::KeysStale => "keys_stale",
            TokenError::WrongType => "wrong_token_type",
            TokenError::CertificateBinding => "certificate_binding",
        }
    }

    /// RFC 6750 error code: `None` when the request carried no credentials at all.
    pub fn rfc6750_code(self) -> Option<&'static str> {
        match self {
            TokenError::Missing | TokenError::KeysStale => None,
            TokenError::MultipleAuthorization => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// HTTP status: 400 for a request that is malformed as a request, 503 when the gateway
    /// cannot verify for want of current keys, 401 otherwise.
    pub fn status(self) -> u16 {
        match self {
            TokenError::MultipleAuthorization => 400,
            TokenError::KeysStale => 503,
            _ => 401,
        }
    }
}
