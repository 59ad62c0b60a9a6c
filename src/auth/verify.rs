//! Token verification: signature with a pinned key, then `iss`, `aud`, `exp`, `nbf` against an
//! injected clock (so tests and the CLI can fix the time).

use super::claims::{self, ClaimsRead, Decoded, Registered};
use super::issuer::KeyMiss;
use super::segment::{with_decoded, Compact};
use super::{Issuer, TokenError};
use crate::policy::cel::json_object_to_val;
use cel::common::value::Val;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// What a token-only expression gave. A slot belongs to one expression, so it holds one kind:
/// a rule's value, or a forwarded header's value (`None`: not sent) kept as a header value, so
/// a cached token's headers cost no formatting or validation.
#[derive(Debug)]
enum Remembered {
    Value(Result<cel::Value, cel::ExecutionError>),
    Header(Result<Option<http::HeaderValue>, String>),
}

/// A token whose signature and registered claims have been checked.
#[derive(Debug)]
pub struct VerifiedToken {
    /// Name of the issuer that signed it.
    pub issuer: Arc<str>,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The claims the policy set names (all of them for tools and tests); the registered ones
    /// the gateway reads itself are kept apart, in the fields below.
    pub claims: Map<String, Value>,
    /// `cnf` (RFC 7800), for tokens bound to a client certificate.
    pub cnf: Option<Value>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// `nbf`, read once: a cached token is checked against it again on
    /// every hit (under a fixed clock the decision time may move backwards), and a lookup in
    /// the claims map there cost string compares on every request.
    pub not_before: Option<i64>,
    /// The claims as CEL sees them, built on first use and kept with the token, so a cached
    /// token is converted once, not once per request.
    cel_claims: OnceLock<Box<dyn Val>>,
    /// Results of expressions that read only this token, by memo slot (see
    /// [`crate::policy::Expr`]). Slots belong to one policy set, and so does a cached token: a
    /// reload builds a new token cache.
    memo: OnceLock<Box<[OnceLock<Remembered>]>>,
    /// Whether results are remembered: not for a token used once (no token cache), where the
    /// table would be built, filled and freed for nothing on every request.
    memoize: bool,
    /// `sub`, for decision logs.
    pub subject: Option<Arc<str>>,
}

impl VerifiedToken {
    /// A token with the claims set `claims` (registered claims read from it).
    pub fn new(
        issuer: Arc<str>,
        alg: Algorithm,
        kid: Option<String>,
        typ: Option<String>,
        claims: Map<String, Value>,
        expires_at: i64,
    ) -> VerifiedToken {
        let registered = Registered::from_map(&claims);
        VerifiedToken::with_registered(issuer, alg, kid, typ, claims, registered, expires_at)
    }

    /// A token whose registered claims were decoded apart from `claims`.
    fn with_registered(
        issuer: Arc<str>,
        alg: Algorithm,
        kid: Option<String>,
        typ: Option<String>,
        claims: Map<String, Value>,
        registered: Registered,
        expires_at: i64,
    ) -> VerifiedToken {
        VerifiedToken {
            issuer,
            alg,
            kid,
            typ,
            subject: registered
                .sub
                .as_ref()
                .and_then(Value::as_str)
                .map(Arc::from),
            // As `check_claims` read it (a fraction counts from its whole second); a value it
            // refuses never makes a token.
            not_before: numeric_date(registered.nbf.as_ref()).ok().flatten(),
            cnf: registered.cnf,
            claims,
            expires_at,
            cel_claims: OnceLock::new(),
            memo: OnceLock::new(),
            memoize: true,
        }
    }

    /// The token for one request only: nothing it evaluates is remembered.
    pub fn single_use(self) -> VerifiedToken {
        VerifiedToken {
            memoize: false,
            ..self
        }
    }

    /// The remembered result of memo slot `slot` (of `slots` in the policy set), computed by
    /// `eval` the first time.
    pub fn memo(
        &self,
        slot: u32,
        slots: usize,
        eval: impl FnOnce() -> Result<cel::Value, cel::ExecutionError>,
    ) -> Result<cel::Value, cel::ExecutionError> {
        self.remember(slot, slots, eval, Remembered::Value, |r| match r {
            Remembered::Value(v) => Some(v),
            Remembered::Header(_) => None,
        })
    }

    /// The remembered forwarded-header value of memo slot `slot`, as [`Self::memo`].
    pub fn header_memo(
        &self,
        slot: u32,
        slots: usize,
        eval: impl FnOnce() -> Result<Option<http::HeaderValue>, String>,
    ) -> Result<Option<http::HeaderValue>, String> {
        self.remember(slot, slots, eval, Remembered::Header, |r| match r {
            Remembered::Header(v) => Some(v),
            Remembered::Value(_) => None,
        })
    }

    /// No lock and no hashing on the request path: a fixed table of once-cells, sized when the
    /// token first meets its policy set.
    fn remember<T: Clone>(
        &self,
        slot: u32,
        slots: usize,
        eval: impl FnOnce() -> T,
        keep: fn(T) -> Remembered,
        read: fn(&Remembered) -> Option<&T>,
    ) -> T {
        if !self.memoize {
            return eval();
        }
        // What is remembered lives as long as the token: allocated apart from the request's
        // memory (see `crate::heap`).
        let table = self.memo.get_or_init(|| {
            crate::heap::long_lived(|| (0..slots).map(|_| OnceLock::new()).collect())
        });
        // A slot beyond the table belongs to no policy set this token has met: not kept.
        let Some(cell) = table.get(slot as usize) else {
            return eval();
        };
        if let Some(r) = cell.get() {
            return read(r).cloned().unwrap_or_else(eval);
        }
        // Two requests may both compute a new slot; the values are the same, one is kept.
        crate::heap::long_lived(|| {
            let v = eval();
            let _ = cell.set(keep(v.clone()));
            v
        })
    }

    /// `claims` as a CEL value.
    pub fn cel_claims(&self) -> &dyn Val {
        self.cel_claims
            .get_or_init(|| {
                if self.memoize {
                    // Kept as long as the token (see `crate::heap`).
                    crate::heap::long_lived(|| json_object_to_val(&self.claims))
                } else {
                    json_object_to_val(&self.claims)
                }
            })
            .as_ref()
    }
}

/// The parts of the JOSE header this gateway reads. `jku`, `x5u` and `jwk` are deliberately not
/// read: a key offered by the token itself is never used to verify it. `alg` is borrowed from
/// the decoded header (unless escaped): only what the verified token keeps is copied.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    // Only its presence matters (`null` counts as absent, as before).
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// What the JOSE header decides.
struct Header {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
}

/// Longest header segment read, in base64 characters.
const MAX_HEADER_BYTES: usize = 2048;
/// Stack room for a decoded header: all of [`MAX_HEADER_BYTES`].
const HEADER_BUF: usize = MAX_HEADER_BYTES / 4 * 3;
/// Stack room for a decoded signature: the longest any accepted key makes (RSA, 8192 bits).
const SIGNATURE_BUF: usize = 1024;
/// Stack room for decoded claims; larger claims sets (up to `limits.max_claims_bytes`) are
/// decoded on the heap.
const CLAIMS_BUF: usize = 4096;

/// A failed verification: why, and which issuer the token was judged against (so the caller can
/// refetch that issuer's keys when the key id was unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub error: TokenError,
    pub issuer: Option<Arc<str>>,
    /// For [`TokenError::KeysStale`]: seconds until the next fetch of the keys is due.
    pub retry_after: Option<u64>,
}

impl From<TokenError> for Rejection {
    fn from(error: TokenError) -> Self {
        Rejection {
            error,
            issuer: None,
            retry_after: None,
        }
    }
}

/// Verifies `token` against the issuers a route accepts, at time `now` (seconds since the epoch),
/// keeping all its claims at any depth (the gateway verifies with [`verify_parts`] and its
/// snapshot's [`ClaimsRead`]; this is for tools, tests and benches).
pub fn verify(token: &str, accepted: &[Arc<Issuer>], now: i64) -> Result<VerifiedToken, Rejection> {
    let parts = Compact::split(token).ok_or(TokenError::Malformed)?;
    verify_parts(parts, accepted, now, &ClaimsRead::everything())
}

/// [`verify`] on a token already cut into its parts, decoding the claims `read` names (and
/// refusing one nested deeper than it allows).
pub fn verify_parts(
    parts: Compact<'_>,
    accepted: &[Arc<Issuer>],
    now: i64,
    read: &ClaimsRead,
) -> Result<VerifiedToken, Rejection> {
    let Compact {
        header: h,
        payload,
        signature,
        signing_input,
    } = parts;
    if h.len() > MAX_HEADER_BYTES {
        return Err(TokenError::Malformed.into());
    }
    let header =
        with_decoded::<HEADER_BUF, _>(h, parse_header).map_err(|_| TokenError::Malformed)??;
    let alg = header.alg;

    // With several accepted issuers the claims are read first, to pick the issuer whose keys
    // check the signature; they are read once, and kept.
    let early_claims = match accepted {
        [_, _, ..] => Some(parse_claims(payload, read)?),
        _ => None,
    };
    let issuer = pick_issuer(early_claims.as_ref().map(|d| &d.registered), accepted)?;
    // With one accepted issuer the claims are read only after the signature check, so a token
    // of another issuer fails on its algorithm, type, key or signature. On that failure (never
    // on the way to success) its `iss` is read: a token that names another issuer is refused
    // as what it is, `wrong_issuer`, and does not make the gateway refetch keys for its `kid`.
    let read_late = early_claims.is_none();
    let named_another = |error: TokenError| {
        let other = read_late
            && matches!(
                error,
                TokenError::AlgorithmNotAllowed
                    | TokenError::WrongType
                    | TokenError::UnknownKey
                    | TokenError::BadSignature
            )
            && parse_claims(payload, read).is_ok_and(|d| {
                d.registered.iss.as_ref().and_then(Value::as_str) != Some(issuer.iss.as_str())
            });
        if other {
            TokenError::WrongIssuer
        } else {
            error
        }
    };
    let reject = |error| Rejection {
        error: named_another(error),
        issuer: Some(issuer.name.clone()),
        retry_after: None,
    };
    if !issuer.algorithms.contains(&alg) {
        return Err(reject(TokenError::AlgorithmNotAllowed));
    }
    if !issuer.types.is_empty()
        && !header
            .typ
            .as_deref()
            .is_some_and(|t| issuer.types.contains(&super::issuer::media_type(t)))
    {
        return Err(reject(TokenError::WrongType));
    }
    let valid = with_decoded::<SIGNATURE_BUF, _>(signature, |signature| {
        issuer.with_key(header.kid.as_deref(), alg, |key| {
            key.key.verify(signing_input, signature)
        })
    })
    .map_err(|_| reject(TokenError::Malformed))?
    .map_err(|miss| match miss {
        KeyMiss::Unknown => reject(TokenError::UnknownKey),
        KeyMiss::Stale { retry_after } => Rejection {
            retry_after: Some(retry_after),
            ..reject(TokenError::KeysStale)
        },
    })?;
    if !valid {
        return Err(reject(TokenError::BadSignature));
    }
    let Decoded {
        claims,
        registered,
        too_deep,
    } = match early_claims {
        Some(claims) => claims,
        None => parse_claims(payload, read).map_err(reject)?,
    };
    let expires_at = check_claims(&registered, issuer, now).map_err(reject)?;
    // After the signature and the registered claims, as when depth was judged on the result.
    if too_deep {
        return Err(reject(TokenError::ClaimsTooDeep));
    }
    Ok(VerifiedToken::with_registered(
        issuer.name.clone(),
        alg,
        header.kid,
        header.typ,
        claims,
        registered,
        expires_at,
    ))
}

/// The JOSE header (decoded): `alg`, `kid`, `typ`, and no critical extension.
fn parse_header(json: &[u8]) -> Result<Header, TokenError> {
    // RFC 7515 §4 and RFC 7519 §7.2: the JOSE header is a JSON object. serde would also fill
    // the struct from an array, reading its elements by position as `alg`, `kid`, ...
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(TokenError::Malformed);
    }
    let raw: RawHeader = from_json(json)?;
    if raw.crit.is_some() {
        // RFC 7515 4.1.11: a recipient that does not understand a critical extension must reject.
        return Err(TokenError::CriticalHeader);
    }
    Ok(Header {
        // `none` (in any spelling) and anything unknown fail to parse here.
        alg: raw
            .alg
            .parse()
            .map_err(|_| TokenError::AlgorithmNotAllowed)?,
        kid: raw.kid,
        typ: raw.typ,
    })
}

/// The issuer a token claims to be from, among those a route accepts; its signature is checked
/// next, with that issuer's keys.
///
/// `claims` are the token's, read already when the route accepts several issuers.
fn pick_issuer<'a>(
    claims: Option<&Registered>,
    accepted: &'a [Arc<Issuer>],
) -> Result<&'a Arc<Issuer>, TokenError> {
    match (accepted, claims) {
        ([], _) => Err(TokenError::WrongIssuer),
        // The common case: one issuer per route, its claims read after the signature check.
        ([only], _) => Ok(only),
        (many, Some(claims)) => {
            let iss = claims.iss.as_ref().and_then(Value::as_str);
            many.iter()
                .find(|i| Some(i.iss.as_str()) == iss)
                .ok_or(TokenError::WrongIssuer)
        }
        (_, None) => Err(TokenError::Malformed),
    }
}

/// The claims set of a payload segment: a JSON object (RFC 7519 §7.2), with the claims `read`
/// names.
fn parse_claims(payload: &str, read: &ClaimsRead) -> Result<Decoded, TokenError> {
    with_decoded::<CLAIMS_BUF, _>(payload, |json| {
        claims::decode(json_text(json)?, read).map_err(|_| TokenError::Malformed)
    })
    .map_err(|_| TokenError::Malformed)?
}

/// A JSON text of a token segment. JSON text is UTF-8 (RFC 8259 §8.1): checked once for the
/// whole segment, so the parser reads it as `str` and does not validate each string again
/// (per string, on a claims set of short strings, that was a fifth of the parse).
fn json_text(json: &[u8]) -> Result<&str, TokenError> {
    std::str::from_utf8(json).map_err(|_| TokenError::Malformed)
}

/// A JSON segment read into `T` (see [`json_text`]).
fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, TokenError> {
    serde_json::from_str(json_text(json)?).map_err(|_| TokenError::Malformed)
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds, fractions allowed. Absent is
/// `None`; anything else (a string, a number beyond the 64-bit range, which would otherwise be
/// clamped and never expire) is an error.
fn numeric_date(claim: Option<&Value>) -> Result<Option<i64>, TokenError> {
    // 2^63 as a double: the first value beyond the range of i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match claim {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && f.abs() < LIMIT)
                .map(|f| Some(f.floor() as i64))
                .ok_or(TokenError::InvalidDate),
        },
        Some(_) => Err(TokenError::InvalidDate),
    }
}

/// Checks the registered claims; returns `exp`.
/// The registered-claim checks of a verified token, on claims given as they are (the offline
/// tools): `iss`, `aud`, `exp`, `nbf`, `iat` at `now`. The `exp` to keep.
pub fn check_given_claims(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    now: i64,
) -> Result<i64, TokenError> {
    check_claims(&Registered::from_map(claims), issuer, now)
}

fn check_claims(claims: &Registered, issuer: &Issuer, now: i64) -> Result<i64, TokenError> {
    let Registered {
        iss,
        aud,
        exp,
        nbf,
        iat,
        ..
    } = claims;
    let (exp, nbf, iat) = (exp.as_ref(), nbf.as_ref(), iat.as_ref());
    match iss {
        Some(Value::String(s)) if *s == issuer.iss => {}
        _ => return Err(TokenError::WrongIssuer),
    }
    let aud_ok = match aud {
        Some(Value::String(a)) => issuer.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(TokenError::WrongAudience);
    }
    let leeway = issuer.leeway_seconds as i64;
    let exp = numeric_date(exp)?.ok_or(TokenError::MissingExpiry)?;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(nbf)? {
        if now.saturating_add(leeway) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    // RFC 7519 §4.1.6: `iat` is when the token was issued; later than now (beyond the
    // leeway) is a token from a wrong clock or a forged one.
    if let Some(iat) = numeric_date(iat)? {
        if iat > now.saturating_add(leeway) {
            return Err(TokenError::IssuedInFuture);
        }
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> VerifiedToken {
        VerifiedToken::new(
            Arc::from("issuer"),
            Algorithm::HS256,
            None,
            None,
            Map::new(),
            0,
        )
    }

    /// How many times `eval` runs when slot 0 is asked for twice.
    fn evaluations(t: &VerifiedToken) -> usize {
        let mut calls = 0;
        for _ in 0..2 {
            let _ = t.memo(0, 1, || {
                calls += 1;
                Ok(cel::Value::Null)
            });
        }
        calls
    }

    #[test]
    fn a_cached_token_remembers_and_a_single_use_one_does_not() {
        assert_eq!(evaluations(&token()), 1);
        assert_eq!(evaluations(&token().single_use()), 2);
    }
}
