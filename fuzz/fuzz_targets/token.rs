//! Bearer extraction and token verification on arbitrary bytes: never a panic, and nothing
//! but a signed token with valid claims verifies.
#![no_main]

use claimgate::auth::extract::bearer_token;
use claimgate::auth::keys::{from_secret, KeySet};
use claimgate::auth::verify::verify;
use claimgate::auth::Issuer;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn issuers() -> &'static [Arc<Issuer>] {
    static I: OnceLock<Vec<Arc<Issuer>>> = OnceLock::new();
    I.get_or_init(|| {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let keys = from_secret(
            b"fuzz-secret-0123456789abcdef-0123456789",
            None,
            &[Algorithm::HS256],
        )
        .unwrap();
        vec![Arc::new(Issuer {
            name: Arc::from("fuzz"),
            iss: "https://fuzz.test".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            leeway_seconds: 0,
            keys: KeySet::new(keys),
            remote: Vec::new(),
        })]
    })
}

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    if let Ok(Some(t)) = bearer_token(&headers, 8192) {
        let _ = verify(t, issuers(), 1_800_000_000);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        // Without a valid HMAC over it, nothing may verify.
        assert!(verify(s, issuers(), 1_800_000_000).is_err());
    }
});
