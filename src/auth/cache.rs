//! The verified-token cache: a token seen before is not verified again, and its claims are
//! converted to CEL values once, not once per request.
//!
//! Keyed by the whole token string (equality on the full text, so no two tokens can share an
//! entry), bounded in entries, each entry dropped at the token's `exp` (plus leeway). A hit
//! counts only for a route that accepts the issuer the token was verified for, and only while
//! that issuer's keys are the ones it was verified with: a JWKS rotation or a reload (which
//! builds a new cache) invalidates it.

use super::issuer::Issuer;
use super::verify::VerifiedToken;
use moka::sync::Cache;
use moka::Expiry;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
struct Entry {
    token: Arc<VerifiedToken>,
    issuer: Arc<Issuer>,
    key_generation: u64,
    /// Unix second from which the token is no longer accepted (`exp` + leeway).
    valid_until: i64,
}

struct UntilExpiry {
    max_ttl: Duration,
}

impl Expiry<Arc<[u8]>, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _: &Arc<[u8]>, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left = Duration::from_secs(e.valid_until.saturating_sub(now).max(0) as u64);
        Some(left.min(self.max_ttl))
    }
}

/// A bounded cache of verified tokens, one per snapshot.
pub struct TokenCache {
    // aHash, not SipHash: a token is hundreds of bytes, hashed on every request. HashDoS
    // resistance comes from its random per-process keys; collisions cost time, never a wrong
    // answer, since entries compare the whole token.
    // Keyed by the credential's bytes: a request's are looked up before their alphabet is
    // checked (see `extract::bearer_bytes`).
    entries: Cache<Arc<[u8]>, Arc<Entry>, ahash::RandomState>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl TokenCache {
    pub fn new(max_entries: u64, max_ttl: Duration) -> TokenCache {
        TokenCache {
            entries: Cache::builder()
                .max_capacity(max_entries)
                // Least recently used goes first. Tokens are used in bursts by one client and
                // then never again: the next use of a token just seen is likely, that of a
                // token used often an hour ago is not. The default (TinyLFU) admits a new
                // entry to a full cache only if it was seen more often than its victim, so a
                // new token was turned away until its third or fourth use: measured with
                // many tokens (benches/load/many-tokens.sh), a cache as large as the working
                // set hit 0.49 of requests under TinyLFU.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .expire_after(UntilExpiry { max_ttl })
                .build_with_hasher(ahash::RandomState::new()),
        }
    }

    /// The verified token for `token`, if it was verified before for one of `accepted`, with
    /// the keys that issuer still has, and is still valid at `now` (seconds since the epoch).
    pub fn get(
        &self,
        token: &[u8],
        accepted: &[Arc<Issuer>],
        now: i64,
    ) -> Option<Arc<VerifiedToken>> {
        let e = self.entries.get(token)?;
        let ok = now < e.valid_until
            && not_before_ok(&e.token, e.issuer.leeway_seconds, now)
            && accepted.iter().any(|i| Arc::ptr_eq(i, &e.issuer))
            && e.issuer.key_generation() == Some(e.key_generation);
        ok.then(|| e.token.clone())
    }

    /// Remembers a token just verified for `issuer`.
    pub fn insert(&self, token: &str, verified: Arc<VerifiedToken>, issuer: &Arc<Issuer>) {
        let Some(key_generation) = issuer.key_generation() else {
            return;
        };
        let valid_until = verified
            .expires_at
            .saturating_add(issuer.leeway_seconds as i64);
        self.entries.insert(
            Arc::from(token.as_bytes()),
            Arc::new(Entry {
                token: verified,
                issuer: issuer.clone(),
                key_generation,
                valid_until,
            }),
        );
    }

    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `nbf` is checked again on a hit: under a fixed clock the decision time may move backwards.
fn not_before_ok(t: &VerifiedToken, leeway: u64, now: i64) -> bool {
    match t.not_before {
        Some(nbf) => now.saturating_add(leeway as i64) >= nbf,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{from_secret, KeySet};
    use crate::auth::verify::verify;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const SECRET: &[u8] = b"token-cache-test-secret-0123456789abcdef";

    fn issuer(name: &str) -> Arc<Issuer> {
        Arc::new(Issuer {
            name: Arc::from(name),
            iss: format!("https://{name}.test"),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            leeway_seconds: 0,
            types: Vec::new(),
            certificate_bound: false,
            keys: KeySet::new(vec![
                from_secret(SECRET, None, None, &[Algorithm::HS256])
                    .unwrap()
                    .key,
            ]),
            remote: Vec::new(),
        })
    }

    fn token(iss: &str, exp: i64) -> String {
        signed(&serde_json::json!({"iss": iss, "aud": "api", "sub": "u", "exp": exp}))
    }

    fn signed(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn verified(t: &str, i: &Arc<Issuer>, now: i64) -> Arc<VerifiedToken> {
        Arc::new(verify(t, std::slice::from_ref(i), now).unwrap())
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// A cache of `capacity` entries, the issuer `a` and the current second.
    fn setup(capacity: u64) -> (TokenCache, Arc<Issuer>, i64) {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        (
            TokenCache::new(capacity, Duration::from_secs(3600)),
            issuer("a"),
            now(),
        )
    }

    #[test]
    fn a_hit_needs_the_same_token_the_same_issuer_and_time_left() {
        let (cache, a, now) = setup(100);
        let t = token("https://a.test", now + 60);
        cache.insert(&t, verified(&t, &a, now), &a);

        let hit = cache
            .get(t.as_bytes(), std::slice::from_ref(&a), now)
            .unwrap();
        assert_eq!(hit.claims["sub"], "u");
        // Another token (even one differing in its last byte) misses.
        let mut other = t.clone();
        other.pop();
        assert!(cache
            .get(other.as_bytes(), std::slice::from_ref(&a), now)
            .is_none());
        // A route that does not accept the issuer misses, and so does an equal issuer of another
        // snapshot (a reload): the entry belongs to the issuer object it was verified with.
        assert!(cache.get(t.as_bytes(), &[issuer("b")], now).is_none());
        assert!(cache.get(t.as_bytes(), &[issuer("a")], now).is_none());
        // Past `exp` (by the decision clock): a miss, so verification reports the expiry.
        assert!(cache
            .get(t.as_bytes(), std::slice::from_ref(&a), now + 60)
            .is_none());
    }

    #[test]
    fn a_hit_before_the_tokens_nbf_misses() {
        let (cache, a, now) = setup(100);
        let t = signed(&serde_json::json!({
            "iss": "https://a.test", "aud": "api", "sub": "u", "exp": now + 600, "nbf": now,
        }));
        cache.insert(&t, verified(&t, &a, now), &a);
        let at = |when: i64| cache.get(t.as_bytes(), std::slice::from_ref(&a), when);
        assert!(at(now).is_some());
        // A decision clock set back (a fixed clock, a test) before `nbf`: not served.
        assert!(at(now - 1).is_none());
        assert!(at(now + 1).is_some());
        // A fractional `nbf` (RFC 7519 allows one) counts from its whole second, as at
        // verification.
        let t = signed(&serde_json::json!({
            "iss": "https://a.test", "aud": "api", "sub": "u", "exp": now + 600, "nbf": now as f64 + 0.5,
        }));
        cache.insert(&t, verified(&t, &a, now), &a);
        assert!(cache
            .get(t.as_bytes(), std::slice::from_ref(&a), now - 1)
            .is_none());
        assert!(cache
            .get(t.as_bytes(), std::slice::from_ref(&a), now)
            .is_some());
    }

    #[test]
    fn entries_never_outlive_the_token() {
        let (cache, a, now) = setup(100);
        let t = token("https://a.test", now + 1);
        cache.insert(&t, verified(&t, &a, now), &a);
        assert_eq!(cache.len(), 1);
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(cache.len(), 0, "the entry expired with the token");
    }

    #[test]
    fn a_new_token_displaces_the_least_recently_used_not_the_least_frequent() {
        let (cache, a, now) = setup(10);
        let old: Vec<String> = (0..10)
            .map(|i| token("https://a.test", now + 600 + i))
            .collect();
        for t in &old {
            cache.insert(t, verified(t, &a, now), &a);
        }
        // The old tokens were used often; the new ones once, just now.
        for _ in 0..5 {
            for t in &old {
                assert!(cache
                    .get(t.as_bytes(), std::slice::from_ref(&a), now)
                    .is_some());
            }
        }
        let new: Vec<String> = (0..10)
            .map(|i| token("https://a.test", now + 700 + i))
            .collect();
        for t in &new {
            cache.insert(t, verified(t, &a, now), &a);
            cache.entries.run_pending_tasks();
        }
        let kept = new
            .iter()
            .filter(|t| {
                cache
                    .get(t.as_bytes(), std::slice::from_ref(&a), now)
                    .is_some()
            })
            .count();
        assert_eq!(kept, 10, "a frequency-based policy turns new tokens away");
        assert!(cache.len() <= 10);
    }

    #[test]
    fn the_cache_is_bounded() {
        let (cache, a, now) = setup(10);
        for i in 0..100 {
            let t = token("https://a.test", now + 600 + i);
            cache.insert(&t, verified(&t, &a, now), &a);
        }
        assert!(cache.len() <= 10, "{}", cache.len());
    }
}
