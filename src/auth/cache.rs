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
use moka::{Equivalent, Expiry};
use std::hash::{Hash, Hasher};
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

impl Expiry<Key, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _: &Key, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let left = Duration::from_secs(e.valid_until.saturating_sub(now).max(0) as u64);
        Some(left.min(self.max_ttl))
    }
}

/// A token's bytes and their hash, computed once per request. The table hashes only the
/// stored hash: when moka rebuilds a part of its table (see [`TokenCache::new`]) it reads one
/// number per entry instead of following each entry to its token and hashing hundreds of bytes
/// again, and a lookup compares hashes before bytes, so entries that share a bucket with the
/// token are not followed to theirs (each a cache miss in a large table).
#[derive(PartialEq, Eq)]
struct Key {
    hash: u64,
    bytes: Arc<[u8]>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A request's token as the table looks it up, without copying it.
struct Probe<'a> {
    hash: u64,
    bytes: &'a [u8],
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Equivalent<Key> for Probe<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.hash == key.hash && *self.bytes == *key.bytes
    }
}

/// Entries per shard the cache aims at (see [`TokenCache::new`]).
const ENTRIES_PER_SHARD: u64 = 4096;
const MAX_SHARDS: u64 = 64;

/// A bounded cache of verified tokens, one per snapshot.
pub struct TokenCache {
    // aHash, not SipHash: a token is hundreds of bytes, hashed on every request. HashDoS
    // resistance comes from its random per-process keys; collisions cost time, never a wrong
    // answer, since entries compare the whole token.
    // Keyed by the credential's bytes: a request's are looked up before their alphabet is
    // checked (see `extract::bearer_bytes`).
    hasher: ahash::RandomState,
    /// A token's shard is picked by the low bits of its hash; each shard hashes that hash
    /// again with keys of its own to place it in its table.
    shards: Box<[Cache<Key, Arc<Entry>, ahash::RandomState>]>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("shards", &self.shards.len())
            .field(
                "entries",
                &self.shards.iter().map(Cache::entry_count).sum::<u64>(),
            )
            .finish()
    }
}

impl TokenCache {
    /// At most `max_entries` tokens, in shards of about [`ENTRIES_PER_SHARD`]. Why shards:
    /// moka rebuilds a part of its table (1/64th of it) at once, on the request that finds too
    /// many removed entries there, and with 100 000 entries churning those parts filled at the
    /// same pace: every 30–40 s about 60 decisions took over 0.25 ms, one after another
    /// (`benches/load/many-tokens.sh`). Smaller tables make each rebuild that much shorter.
    /// moka's own segmented cache would not: it picks a segment by the same hash bits its
    /// table picks a part by, so each segment would use only a few parts. Least recently used
    /// is then judged within a shard, which over thousands of entries a shard is the same
    /// thing.
    pub fn new(max_entries: u64, max_ttl: Duration) -> TokenCache {
        let wanted = (max_entries / ENTRIES_PER_SHARD).clamp(1, MAX_SHARDS);
        // A power of two, rounded down: the shard is the hash's low bits.
        let count = 1u64 << (63 - wanted.leading_zeros());
        let shards = (0..count)
            .map(|i| {
                // The shards' capacities add up to `max_entries` exactly.
                let capacity = max_entries / count + u64::from(i < max_entries % count);
                Cache::builder()
                    .max_capacity(capacity)
                    // Least recently used goes first. Tokens are used in bursts by one client
                    // and then never again: the next use of a token just seen is likely, that
                    // of a token used often an hour ago is not. The default (TinyLFU) admits
                    // a new entry to a full cache only if it was seen more often than its
                    // victim, so a new token was turned away until its third or fourth use:
                    // measured with many tokens (benches/load/many-tokens.sh), a cache as
                    // large as the working set hit 0.49 of requests under TinyLFU.
                    .eviction_policy(moka::policy::EvictionPolicy::lru())
                    .expire_after(UntilExpiry { max_ttl })
                    .build_with_hasher(ahash::RandomState::new())
            })
            .collect();
        TokenCache {
            hasher: ahash::RandomState::new(),
            shards,
        }
    }

    fn shard(&self, hash: u64) -> &Cache<Key, Arc<Entry>, ahash::RandomState> {
        // `shards.len()` is a power of two.
        &self.shards[(hash as usize) & (self.shards.len() - 1)]
    }

    /// The verified token for `token`, if it was verified before for one of `accepted`, with
    /// the keys that issuer still has, and is still valid at `now` (seconds since the epoch).
    pub fn get(
        &self,
        token: &[u8],
        accepted: &[Arc<Issuer>],
        now: i64,
    ) -> Option<Arc<VerifiedToken>> {
        let probe = Probe {
            hash: self.hasher.hash_one(token),
            bytes: token,
        };
        let e = self.shard(probe.hash).get(&probe)?;
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
        let bytes = token.as_bytes();
        let hash = self.hasher.hash_one(bytes);
        self.shard(hash).insert(
            Key {
                hash,
                bytes: Arc::from(bytes),
            },
            Arc::new(Entry {
                token: verified,
                issuer: issuer.clone(),
                key_generation,
                valid_until,
            }),
        );
    }

    /// Tokens held, after the pending evictions and expiries are applied.
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.run_pending_tasks();
                s.entry_count()
            })
            .sum()
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
    fn a_lookup_matches_on_the_whole_token_not_on_its_hash() {
        let stored = Key {
            hash: 7,
            bytes: Arc::from(&b"header.claims.signature"[..]),
        };
        let probe = |hash, bytes| Probe { hash, bytes }.equivalent(&stored);
        assert!(probe(7, &b"header.claims.signature"[..]));
        // An equal hash (a collision) with other bytes is another token.
        assert!(!probe(7, &b"header.claims.signaturX"[..]));
        assert!(!probe(8, &b"header.claims.signature"[..]));
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
            // Applies the pending evictions one insert at a time.
            cache.len();
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
    fn a_large_cache_is_sharded_and_bounded_in_total() {
        let (cache, a, now) = setup(20_000);
        assert_eq!(cache.shards.len(), 4);
        let base = token("https://a.test", now + 600);
        let v = verified(&base, &a, now);
        // Distinct keys for one verified token: what is looked up is the key.
        let key = |i: u32| format!("{base}{i}");
        for i in 0..25_000 {
            cache.insert(&key(i), v.clone(), &a);
        }
        let held = cache.len();
        assert!(held <= 20_000, "{held}");
        // Every shard took its share (the capacities add up to the whole).
        assert!(held >= 19_000, "{held}");
        // The latest tokens are found, whichever shard each went to.
        for i in 24_900..25_000 {
            assert!(
                cache
                    .get(key(i).as_bytes(), std::slice::from_ref(&a), now)
                    .is_some(),
                "{i}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever texts a client sends (prefixes of one another, one byte apart, empty), a
        /// lookup finds a token only under the exact text it was stored with, in whichever
        /// shard that text went to: never another token's entry.
        #[test]
        fn a_lookup_finds_exactly_the_texts_stored(
            stored in proptest::collection::hash_set("[a-c.]{0,6}", 1..40),
            asked in proptest::collection::vec("[a-c.]{0,6}", 1..40),
        ) {
            // 8 192 entries: two shards, none full.
            let (cache, a, now) = setup(8_192);
            let v = verified(&token("https://a.test", now + 600), &a, now);
            for t in &stored {
                cache.insert(t, v.clone(), &a);
            }
            for t in stored.iter().chain(asked.iter()) {
                let hit = cache.get(t.as_bytes(), std::slice::from_ref(&a), now).is_some();
                proptest::prop_assert_eq!(hit, stored.contains(t), "{:?}", t);
            }
        }
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
