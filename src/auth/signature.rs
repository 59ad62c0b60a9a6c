//! Signature checking with keys parsed once. jsonwebtoken parses a public key (DER, curve point,
//! or RSA modulus and exponent) into the crypto library's key object on every verification and
//! clones the key bytes to do it; on the request path that costs as much as the signature check
//! itself. Here the parsed key (aws-lc `ParsedPublicKey`, or an HMAC key) is built when the key
//! loads and shared by every request. jsonwebtoken still reads PEM and JWK documents.

use aws_lc_rs::{hmac, signature as sig};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// A key ready to check one algorithm's signatures.
pub enum SignatureKey {
    // Boxed: an HMAC key holds its precomputed inner and outer hash states (over 1 KiB).
    Hmac(Box<hmac::Key>),
    Public(sig::ParsedPublicKey),
}

/// The key does not fit the algorithm or does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key cannot be used with {0:?}")]
pub struct UnusableKey(pub Algorithm);

impl SignatureKey {
    pub fn new(alg: Algorithm, key: &DecodingKey) -> Result<SignatureKey, UnusableKey> {
        let unusable = |_| UnusableKey(alg);
        let hmac_alg = match alg {
            Algorithm::HS256 => Some(hmac::HMAC_SHA256),
            Algorithm::HS384 => Some(hmac::HMAC_SHA384),
            Algorithm::HS512 => Some(hmac::HMAC_SHA512),
            _ => None,
        };
        if let Some(hmac_alg) = hmac_alg {
            return match key.kind() {
                DecodingKeyKind::SecretOrDer(secret) => Ok(SignatureKey::Hmac(Box::new(
                    hmac::Key::new(hmac_alg, secret),
                ))),
                DecodingKeyKind::RsaModulusExponent { .. } => Err(UnusableKey(alg)),
            };
        }
        // The same verification algorithms jsonwebtoken uses, so a key accepts exactly the
        // signatures it accepted there (RSA keys of 2048 bits and up).
        let params: &'static dyn sig::VerificationAlgorithm = match (rsa_params(alg), alg) {
            (Some(rsa), _) => rsa,
            (None, Algorithm::ES256) => &sig::ECDSA_P256_SHA256_FIXED,
            (None, Algorithm::ES384) => &sig::ECDSA_P384_SHA384_FIXED,
            (None, Algorithm::EdDSA) => &sig::ED25519,
            _ => return Err(UnusableKey(alg)),
        };
        let parsed = match key.kind() {
            DecodingKeyKind::SecretOrDer(bytes) => {
                sig::ParsedPublicKey::new(params, bytes).map_err(unusable)?
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                let rsa = rsa_params(alg).ok_or(UnusableKey(alg))?;
                sig::RsaPublicKeyComponents { n, e }
                    .to_parsed_public_key(rsa)
                    .map_err(unusable)?
            }
        };
        Ok(SignatureKey::Public(parsed))
    }

    /// Checks `signature` over `message` (the JWS signing input).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            SignatureKey::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            SignatureKey::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
    }
}

fn rsa_params(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn signing_input_and_sig(token: &str) -> (&str, Vec<u8>) {
        use base64::Engine as _;
        let dot = token.rfind('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token[dot + 1..])
            .unwrap();
        (&token[..dot], sig)
    }

    #[test]
    fn hmac_keys_accept_their_own_signatures_only() {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let secret = b"0123456789abcdef0123456789abcdef";
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"a": 1}),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        let (msg, sig) = signing_input_and_sig(&token);
        let good = SignatureKey::new(Algorithm::HS256, &DecodingKey::from_secret(secret)).unwrap();
        assert!(good.verify(msg.as_bytes(), &sig));
        assert!(!good.verify(b"other", &sig));
        let other = SignatureKey::new(Algorithm::HS256, &DecodingKey::from_secret(b"x")).unwrap();
        assert!(!other.verify(msg.as_bytes(), &sig));
        // The same secret under another hash is another key.
        let hs384 = SignatureKey::new(Algorithm::HS384, &DecodingKey::from_secret(secret)).unwrap();
        assert!(!hs384.verify(msg.as_bytes(), &sig));
    }

    #[test]
    fn an_rsa_key_from_components_is_refused_for_hmac_and_ec() {
        let key = DecodingKey::from_rsa_components("AQAB", "AQAB").unwrap();
        assert!(SignatureKey::new(Algorithm::HS256, &key).is_err());
        assert!(SignatureKey::new(Algorithm::ES256, &key).is_err());
    }
}
