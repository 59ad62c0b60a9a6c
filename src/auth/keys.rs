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
    #[error("an issuer cannot mix HMAC (HS*) and public-key algorithms")]
    MixedFamilies,
    #[error("`{path}`: {source}")]
    Unusable { path: PathBuf, source: UnusableKey },
}

/// Parses an algorithm name from configuration; `none` is not an algorithm.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.parse::<Algorithm>()
        .map_err(|_| KeyError::UnknownAlgorithm(name.to_string()))
}

/// Checks an issuer's algorithm list before any key is loaded.
pub fn check_algorithms(algs: &[Algorithm]) -> Result<(), KeyError> {
    let hmac = algs
        .iter()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .count();
    if hmac != 0 && hmac != algs.len() {
        return Err(KeyError::MixedFamilies);
    }
    Ok(())
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
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Keys from a PEM public key or certificate. The key type decides which of the issuer's
/// algorithms it serves; an EC key serves only the algorithm of its curve.
pub fn from_pem_file(
    path: &Path,
    kid: Option<&str>,
    allowed: &[Algorithm],
) -> Result<Vec<VerifyKey>, KeyError> {
    let pem = read(path)?;
    let (kind, key, algs): (&'static str, DecodingKey, Vec<Algorithm>) =
        if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            ("RSA", k, rsa_algorithms(allowed))
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            let curve_alg = match k.kind() {
                DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Some(Algorithm::ES256),
                DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Some(Algorithm::ES384),
                _ => None,
            };
            let Some(curve_alg) = curve_alg else {
                return Err(KeyError::InvalidPem {
                    path: path.to_path_buf(),
                });
            };
            let algs = allowed
                .iter()
                .copied()
                .filter(|a| *a == curve_alg)
                .collect();
            ("EC", k, algs)
        } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
            let algs = allowed
                .iter()
                .copied()
                .filter(|a| *a == Algorithm::EdDSA)
                .collect();
            ("Ed25519", k, algs)
        } else {
            return Err(KeyError::InvalidPem {
                path: path.to_path_buf(),
            });
        };
    if algs.is_empty() {
        return Err(KeyError::NoUsableAlgorithm {
            path: path.to_path_buf(),
            kind,
            allowed: allowed_list(allowed),
        });
    }
    algs.into_iter()
        .map(|alg| pinned(kid.map(str::to_string), alg, &key))
        .collect::<Result<_, _>>()
        .map_err(|source| KeyError::Unusable {
            path: path.to_path_buf(),
            source,
        })
}

fn rsa_algorithms(allowed: &[Algorithm]) -> Vec<Algorithm> {
    allowed
        .iter()
        .copied()
        .filter(|a| a.family() == AlgorithmFamily::Rsa)
        .collect()
}

/// Keys from a JWKS document. Encryption keys, keys of unknown types and keys whose algorithm the
/// issuer does not accept are skipped; a symmetric key is an error, because a JWKS is public.
pub fn from_jwks_file(path: &Path, allowed: &[Algorithm]) -> Result<Vec<VerifyKey>, KeyError> {
    let bytes = read(path)?;
    from_jwks_bytes(&bytes, allowed).map_err(|e| match e {
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

/// Keys from the bytes of a JWKS document (shared by files and, later, URLs).
pub fn from_jwks_bytes(bytes: &[u8], allowed: &[Algorithm]) -> Result<Vec<VerifyKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    let mut out = Vec::new();
    for raw in doc.keys {
        if raw.get("kty").and_then(|v| v.as_str()) == Some("oct") {
            return Err(JwksError::Symmetric);
        }
        // A key this version cannot parse (another kty, say) must not take the others down.
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            tracing::warn!("skipping a JWKS entry that is not a supported public key");
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let candidates: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => rsa_algorithms(allowed),
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
        // A key that names its algorithm is used with that one only.
        let named = jwk
            .common
            .key_algorithm
            .and_then(|ka| Algorithm::try_from(ka).ok());
        let algs: Vec<Algorithm> = candidates
            .into_iter()
            .filter(|a| allowed.contains(a))
            .filter(|a| named.is_none_or(|n| n == *a))
            .collect();
        if algs.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that does not parse");
            continue;
        };
        for alg in algs {
            match pinned(jwk.common.key_id.clone(), alg, &key) {
                Ok(k) => out.push(k),
                Err(e) => tracing::warn!(kid = ?jwk.common.key_id, "skipping a JWKS key: {e}"),
            }
        }
    }
    if out.is_empty() {
        return Err(JwksError::Empty);
    }
    Ok(out)
}

/// An HMAC secret, one key per HS algorithm the issuer accepts.
pub fn from_secret(
    secret: &[u8],
    kid: Option<&str>,
    allowed: &[Algorithm],
) -> Result<Vec<VerifyKey>, KeyError> {
    // RFC 7518 3.2: a key of the same size as the hash output or larger.
    if secret.len() < 32 {
        return Err(KeyError::ShortSecret);
    }
    let algs: Vec<Algorithm> = allowed
        .iter()
        .copied()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .collect();
    if algs.is_empty() {
        return Err(KeyError::SecretWithoutHmac);
    }
    let key = DecodingKey::from_secret(secret);
    algs.into_iter()
        .map(|alg| pinned(kid.map(str::to_string), alg, &key))
        .collect::<Result<_, _>>()
        .map_err(|_| KeyError::SecretWithoutHmac)
}

/// Reads a secret from an environment variable.
pub fn secret_from_env(var: &str) -> Result<Vec<u8>, KeyError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v.into_bytes()),
        _ => Err(KeyError::MissingEnv(var.to_string())),
    }
}

/// Reads a secret from a file; one trailing newline (as editors and `echo` add) is not part of it.
pub fn secret_from_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut bytes = read(path)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
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
