//! Real signed tokens for the tests.

use super::harness::{fixture, HS_SECRET};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for issuer `iss`, merged with `extra`.
pub fn claims(iss: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": iss,
        "aud": "api",
        "sub": "user-1",
        "iat": now(),
        "exp": now() + 600,
    });
    if let (Some(base), Value::Object(more)) = (c.as_object_mut(), extra) {
        for (k, v) in more {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    c
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let pem = |f: &str| std::fs::read(fixture(f)).unwrap();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HS_SECRET.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec256-private.pem")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&pem("ec384-private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519-private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

/// The issuer and kid the standard test config gives an algorithm.
pub fn issuer_for(alg: Algorithm) -> (&'static str, Option<&'static str>) {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => ("https://hs.test", Some("hs1")),
        Algorithm::ES256 => ("https://ec.test", Some("ec256")),
        Algorithm::ES384 => ("https://ec.test", Some("ec384")),
        Algorithm::EdDSA => ("https://ed.test", None),
        _ => ("https://rsa.test", Some("rsa1")),
    }
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// A valid token of `alg` from the matching test issuer, with `extra` claims.
pub fn token(alg: Algorithm, extra: Value) -> String {
    let (iss, kid) = issuer_for(alg);
    sign(alg, kid, &claims(iss, extra), &encoding_key(alg))
}

/// An ES256 token from the `ec` issuer.
pub fn es256(extra: Value) -> String {
    token(Algorithm::ES256, extra)
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token with a hand-written header and payload and the given signature bytes.
pub fn raw(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(signature)
    )
}

/// Re-signs `header`+`payload` with HMAC-SHA256 under `secret` (for header tampering tests).
pub fn hs256_with_header(header: &Value, payload: &Value, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

/// A token from the repository's development issuer (`dev/keys/`), valid around `at`.
pub fn dev_token_at(at: i64, extra: Value) -> String {
    let key = EncodingKey::from_ec_pem(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dev/keys/es256-private.pem"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut c = json!({
        "iss": "https://dev.claimgate.local",
        "aud": "claimgate-demo",
        "sub": "user-1",
        "iat": at - 10,
        "exp": at + 600,
    });
    if let (Some(base), Value::Object(more)) = (c.as_object_mut(), extra) {
        for (k, v) in more {
            base.insert(k, v);
        }
    }
    sign(Algorithm::ES256, Some("dev-es256"), &c, &key)
}

pub fn dev_token(extra: Value) -> String {
    dev_token_at(now(), extra)
}
