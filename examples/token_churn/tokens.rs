//! The tokens of the run: minted when first used, kept while they have uses left, then
//! dropped, so the client holds the working set, not the whole population.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::collections::HashMap;
use std::rc::Rc;

/// What every token says besides its subject and id.
pub struct Minter {
    pub key: EncodingKey,
    pub header: Header,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Minter {
    pub fn new(
        alg: Algorithm,
        key_pem: &[u8],
        kid: Option<String>,
        iss: String,
        aud: String,
        claims: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Minter, String> {
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(key_pem),
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(key_pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(key_pem),
            Algorithm::HS256 => Ok(EncodingKey::from_secret(key_pem)),
            other => return Err(format!("{other:?} is not supported here")),
        }
        .map_err(|e| format!("signing key: {e}"))?;
        let mut header = Header::new(alg);
        header.kid = kid;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Ok(Minter {
            key,
            header,
            iss,
            aud,
            exp: now + 86_400,
            claims,
        })
    }

    /// A new token for user `n`: its own subject and `jti`, so no two are equal.
    pub fn mint(&self, n: u64) -> Result<String, String> {
        let mut claims = self.claims.clone();
        claims.insert("iss".into(), self.iss.clone().into());
        claims.insert("aud".into(), self.aud.clone().into());
        claims.insert("exp".into(), self.exp.into());
        claims.insert("sub".into(), format!("user-{n}").into());
        claims.insert("jti".into(), format!("churn-{n}").into());
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Live tokens by index.
pub struct Live {
    minter: Minter,
    live: HashMap<u64, Rc<str>>,
    pub minted: u64,
}

impl Live {
    pub fn new(minter: Minter) -> Live {
        Live {
            minter,
            live: HashMap::new(),
            minted: 0,
        }
    }

    /// The token with index `n` for its use `round` of `uses`.
    pub fn get(&mut self, n: u64, round: u64, uses: u64) -> Result<Rc<str>, String> {
        let t = match self.live.get(&n) {
            Some(t) => t.clone(),
            None => {
                self.minted += 1;
                let t: Rc<str> = Rc::from(self.minter.mint(n)?);
                if round + 1 < uses {
                    self.live.insert(n, t.clone());
                }
                t
            }
        };
        if round + 1 >= uses {
            self.live.remove(&n);
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }
}
