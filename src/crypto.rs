//! The process's one crypto backend (aws-lc-rs), installed and proven before anything uses it.

use thiserror::Error;

#[derive(Debug, Error)]
#[error("crypto self-test failed: {0}")]
pub struct CryptoError(String);

impl CryptoError {
    fn self_test(e: jsonwebtoken::errors::Error) -> Self {
        CryptoError(e.to_string())
    }
}

/// Makes the crypto backend explicit and proves it works before serving. With no backend or two
/// (feature unification through a dependency), jsonwebtoken would panic on the first request.
pub fn self_test() -> Result<(), CryptoError> {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    // One TLS provider for the process, before anything builds a TLS configuration: Pingora's
    // rustls build links ring too and would install it, and with two linked and none chosen,
    // rustls panics at the first handshake or fetch.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let secret = b"claimgate-self-test-secret-0123456789";
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let claims = serde_json::json!({"exp": 4_000_000_000u64});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(CryptoError::self_test)?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &v,
    )
    .map_err(CryptoError::self_test)?;
    Ok(())
}
