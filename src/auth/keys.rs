//! Verification keys: loaded and parsed once, when the configuration loads, never per request.

use super::signature::{SignatureKey, UnusableKey};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// One key, pinned to one algorithm. A key usable with several algorithms (an RSA key with RS256
/// and PS256, say) is stored once per algorithm, so a token can never pick the algorithm a key is
/// verified with.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    /// Parsed once; claims are checked by [`super::verify`].
    pub key: SignatureKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even a public key: logs get copied around.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` holds no RSA, EC (P-256, P-384) or Ed25519 public key in PEM")]
    InvalidPem { path: PathBuf },
    #[error("the {kind} key in `{path}` fits none of the issuer's algorithms ({allowed})")]
    NoUsableAlgorithm {
        path: PathBuf,
        kind: &'static str,
        allowed: String,
    },
    #[error("`{path}` is not a JWKS document: {message}")]
    InvalidJwks { path: PathBuf, message: String },
    #[error("`{path}` holds a symmetric (`oct`) key; HMAC secrets come from `secret_env` or `secret_file` only")]
    SymmetricJwk { path: PathBuf },
    #[error("`{path}` has no key usable with the issuer's algorithms ({allowed})")]
    EmptyJwks { path: PathBuf, allowed: String },
    #[error("environment variable `{0}` is not set or empty")]
    MissingEnv(String),
    #[error("the HMAC secret is shorter than 32 bytes")]
    ShortSecret,
    #[error("an HMAC secret needs an HS algorithm in `algorithms`")]
    SecretWithoutHmac,
    #[error("unknown or unsupported algorithm `{0}`")]
    UnknownAlgorithm(String),
    #[error("the {kind} key cannot be used with {alg:?} (`alg` of the key entry)")]
    AlgorithmDoesNotFit { kind: &'static str, alg: Algorithm },
    #[error("`alg = \"{alg:?}\"` is not in the issuer's `algorithms`")]
    AlgorithmNotAccepted { alg: Algorithm },
    #[error("the {kind} key fits {fits} of the issuer's algorithms: give it one with `alg` (RFC 8725 §3.1: one algorithm per key), one key entry per algorithm")]
    AmbiguousAlgorithm { kind: &'static str, fits: String },
    #[error("`{path}`: {source}")]
    Unusable { path: PathBuf, source: UnusableKey },
}

/// Parses an algorithm name from configuration; `none` is not an algorithm.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.parse::<Algorithm>()
        .map_err(|_| KeyError::UnknownAlgorithm(name.to_string()))
}

/// The one algorithm a key is used with (RFC 8725 §3.1). `fits`: the algorithms its type can
/// serve; `configured`: the key entry's `alg`; `allowed`: the issuer's `algorithms`. Without
/// `alg`, the key's type must leave exactly one of the issuer's algorithms; the answer then
/// says it was inferred when the type alone does not fix it (RSA keys and secrets do not; an
/// EC curve or Ed25519 does).
pub fn choose_algorithm(
    kind: &'static str,
    fits: &[Algorithm],
    configured: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<(Algorithm, bool), KeyError> {
    if let Some(alg) = configured {
        if !fits.contains(&alg) {
            return Err(KeyError::AlgorithmDoesNotFit { kind, alg });
        }
        if !allowed.contains(&alg) {
            return Err(KeyError::AlgorithmNotAccepted { alg });
        }
        return Ok((alg, false));
    }
    let usable: Vec<Algorithm> = fits
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    match usable.as_slice() {
        [] => Err(KeyError::NoUsableAlgorithm {
            path: PathBuf::new(),
            kind,
            allowed: allowed_list(allowed),
        }),
        [one] => Ok((*one, fits.len() > 1)),
        many => Err(KeyError::AmbiguousAlgorithm {
            kind,
            fits: allowed_list(many),
        }),
    }
}

/// Every algorithm of a family.
fn family(f: AlgorithmFamily) -> Vec<Algorithm> {
    [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .filter(|a| a.family() == f)
    .collect()
}

/// A key pinned to its algorithm, and whether that algorithm was inferred (see
/// [`choose_algorithm`]): `check` warns then.
pub struct Pinned {
    pub key: VerifyKey,
    pub inferred: bool,
}

fn allowed_list(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pinned(
    kid: Option<String>,
    alg: Algorithm,
    key: &DecodingKey,
) -> Result<VerifyKey, UnusableKey> {
    Ok(VerifyKey {
        kid,
        alg,
        key: SignatureKey::new(alg, key)?,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    crate::set_file::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The key of a PEM public key or certificate, with its algorithm (see [`choose_algorithm`]).
pub fn from_pem_file(
    path: &Path,
    kid: Option<&str>,
    configured: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<Pinned, KeyError> {
    let pem = read(path)?;
    let invalid = || KeyError::InvalidPem {
        path: path.to_path_buf(),
    };
    let (kind, key, fits): (&'static str, DecodingKey, Vec<Algorithm>) =
        if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            ("RSA", k, family(AlgorithmFamily::Rsa))
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            let curve_alg = match k.kind() {
                DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Algorithm::ES256,
                DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Algorithm::ES384,
                _ => return Err(invalid()),
            };
            ("EC", k, vec![curve_alg])
        } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
            ("Ed25519", k, vec![Algorithm::EdDSA])
        } else {
            return Err(invalid());
        };
    let (alg, inferred) =
        choose_algorithm(kind, &fits, configured, allowed).map_err(|e| match e {
            KeyError::NoUsableAlgorithm { kind, allowed, .. } => KeyError::NoUsableAlgorithm {
                path: path.to_path_buf(),
                kind,
                allowed,
            },
            other => other,
        })?;
    let key = pinned(kid.map(str::to_string), alg, &key).map_err(|source| KeyError::Unusable {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Pinned { key, inferred })
}

/// Keys from a JWKS document. Encryption keys, keys of unknown types and keys whose algorithm the
/// issuer does not accept are skipped; a symmetric key is an error, because a JWKS is public.
pub fn from_jwks_file(path: &Path, allowed: &[Algorithm]) -> Result<Jwks, KeyError> {
    let bytes = read(path)?;
    jwks(&bytes, allowed).map_err(|e| match e {
        JwksError::NotJwks(message) => KeyError::InvalidJwks {
            path: path.to_path_buf(),
            message,
        },
        JwksError::Symmetric => KeyError::SymmetricJwk {
            path: path.to_path_buf(),
        },
        JwksError::Empty => KeyError::EmptyJwks {
            path: path.to_path_buf(),
            allowed: allowed_list(allowed),
        },
    })
}

#[derive(Debug)]
pub enum JwksError {
    NotJwks(String),
    Symmetric,
    Empty,
}

/// The keys of a JWKS document, and why each key that could have been the issuer's was skipped.
pub struct Jwks {
    pub keys: Vec<VerifyKey>,
    /// One line per skipped key (its `kid`, and why): `check` shows them as warnings, the
    /// gateway logs them.
    pub skipped: Vec<String>,
}

/// Keys from the bytes of a JWKS document fetched from a URL; skipped keys are logged.
pub fn from_jwks_bytes(bytes: &[u8], allowed: &[Algorithm]) -> Result<Vec<VerifyKey>, JwksError> {
    let doc = jwks(bytes, allowed)?;
    for why in &doc.skipped {
        tracing::warn!("{why}");
    }
    Ok(doc.keys)
}

/// Keys from the bytes of a JWKS document (shared by files and URLs).
pub fn jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<Jwks, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let shown = |kid: &Option<String>| match kid {
        Some(k) => format!("the JWKS key `{k}`"),
        None => "a JWKS key without `kid`".to_string(),
    };
    for raw in doc.keys {
        if raw.get("kty").and_then(|v| v.as_str()) == Some("oct") {
            return Err(JwksError::Symmetric);
        }
        // A key this version cannot parse (another kty, say) must not take the others down.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            skipped.push("skipping a JWKS entry that is not a supported public key".to_string());
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let candidates: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => family(AlgorithmFamily::Rsa),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => vec![],
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                vec![Algorithm::EdDSA]
            }
            _ => vec![],
        };
        // A key that names its algorithm is used with that one only; one that does not must
        // leave exactly one of the issuer's algorithms (RFC 8725 §3.1).
        let named = jwk
            .common
            .key_algorithm
            .and_then(|ka| Algorithm::try_from(ka).ok());
        let kid = jwk.common.key_id.clone();
        let alg = match choose_algorithm("JWK", &candidates, named, allowed) {
            Ok((alg, _)) => alg,
            Err(KeyError::AmbiguousAlgorithm { fits, .. }) => {
                skipped.push(format!(
                    "skipping {}: it has no `alg` and fits several of the issuer's algorithms ({fits})",
                    shown(&kid)
                ));
                continue;
            }
            // Another algorithm, or one the issuer does not accept: not this issuer's key.
            Err(_) => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            skipped.push(format!("skipping {}: it does not parse", shown(&kid)));
            continue;
        };
        match pinned(kid.clone(), alg, &key) {
            Ok(k) => out.push(k),
            Err(e) => skipped.push(format!("skipping {}: {e}", shown(&kid))),
        }
    }
    if out.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(Jwks { keys: out, skipped })
}

/// An HMAC secret, with its algorithm (see [`choose_algorithm`]).
pub fn from_secret(
    secret: &[u8],
    kid: Option<&str>,
    configured: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<Pinned, KeyError> {
    // RFC 7518 3.2: a key of the same size as the hash output or larger.
    if secret.len() < 32 {
        return Err(KeyError::ShortSecret);
    }
    let (alg, inferred) =
        choose_algorithm("HMAC", &family(AlgorithmFamily::Hmac), configured, allowed).map_err(
            |e| match e {
                KeyError::NoUsableAlgorithm { .. } => KeyError::SecretWithoutHmac,
                other => other,
            },
        )?;
    let key = pinned(
        kid.map(str::to_string),
        alg,
        &DecodingKey::from_secret(secret),
    )
    .map_err(|_| KeyError::SecretWithoutHmac)?;
    Ok(Pinned { key, inferred })
}

/// Reads a secret from an environment variable.
/// Reads a secret from an environment variable (its bytes, UTF-8 or not); one trailing newline
/// is not part of it, as in a file: a Kubernetes secret made with `--from-file` from a file an
/// editor or `echo` wrote reaches the variable with it, and a key one byte longer than the
/// identity provider's would refuse every token as `bad_signature`.
pub fn secret_from_env(var: &str) -> Result<Vec<u8>, KeyError> {
    secret_from_value(var, std::env::var_os(var))
}

/// [`secret_from_env`] given the variable's value (tests never change the environment of a
/// process whose other threads may read it).
fn secret_from_value(var: &str, value: Option<std::ffi::OsString>) -> Result<Vec<u8>, KeyError> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = value
        .map(OsStringExt::into_vec)
        .map(without_trailing_newline)
        .unwrap_or_default();
    if bytes.is_empty() {
        return Err(KeyError::MissingEnv(var.to_string()));
    }
    Ok(bytes)
}

/// Reads a secret from a file; one trailing newline (as editors and `echo` add) is not part of it.
pub fn secret_from_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    read(path).map(without_trailing_newline)
}

fn without_trailing_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

/// The keys of one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>) -> Self {
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifyKey> {
        self.keys.iter()
    }

    /// The key for a token's `kid` and `alg`: an exact `kid` match first, else the one key of that
    /// algorithm that has no `kid`. Anything ambiguous finds nothing: guessing among keys would
    /// let a token steer verification.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        if let Some(kid) = kid {
            if let Some(k) = self
                .keys
                .iter()
                .find(|k| k.alg == alg && k.kid.as_deref() == Some(kid))
            {
                return Some(k);
            }
        }
        let mut unnamed = self
            .keys
            .iter()
            .filter(|k| k.alg == alg && (k.kid.is_none() || kid.is_none()));
        let first = unnamed.next()?;
        if unnamed.next().is_some() {
            return None;
        }
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_from_the_environment_or_a_file_loses_one_trailing_newline() {
        use std::os::unix::ffi::OsStrExt;
        let var = "CLAIMGATE_UNIT_SECRET_NEWLINE";
        let env = |v: &[u8]| secret_from_value(var, Some(std::ffi::OsStr::from_bytes(v).into()));
        assert_eq!(env(b"s3cret\n").unwrap(), b"s3cret");
        assert_eq!(env(b"s3cret\r\n").unwrap(), b"s3cret");
        assert_eq!(env(b"s3cret\n\n").unwrap(), b"s3cret\n");
        assert_eq!(env(b"s3cr\xffet").unwrap(), b"s3cr\xffet");
        assert!(matches!(env(b"\n"), Err(KeyError::MissingEnv(_))));
        assert!(matches!(
            secret_from_value(var, None),
            Err(KeyError::MissingEnv(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(secret_from_file(&file).unwrap(), b"s3cret");
    }
}
