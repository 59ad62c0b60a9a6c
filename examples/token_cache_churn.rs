//! The verified-token cache under churn, without the network: a full cache of `entries` tokens
//! in which every step inserts a new token and looks up nine live ones, as
//! `benches/load/many-tokens.sh` does at a 90 % hit ratio. Prints, per cache, the time per
//! operation and the slowest ones: a cache that rebuilds a large table on the request that
//! finds it dirty shows there as operations over 0.25 ms, each of which holds a worker.
//!
//! Two caches in one run: the table claimgate used before (one moka cache keyed by the token's
//! bytes) and [`claimgate::auth::TokenCache`] as it is now.
//!
//! `cargo run --release --example token_cache_churn`

// A command-line report: its output is the point.
#![allow(clippy::print_stdout)]

use claimgate::auth::keys::{from_secret, KeySet};
use claimgate::auth::{Issuer, TokenCache, VerifiedToken};
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
struct Args {
    /// Distinct tokens inserted, one per step.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    /// The cache's capacity (`[token_cache] max_entries`).
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    /// Lookups go to the tokens inserted within this many steps (the working set).
    #[arg(long, default_value_t = 48_000)]
    window: u64,
}

const SECRET: &[u8] = b"token-cache-churn-secret-0123456789abcdef";

fn main() {
    let args = Args::parse();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let issuer = Arc::new(Issuer {
        name: Arc::from("bench"),
        iss: "https://bench.test".into(),
        audiences: vec!["api".into()],
        algorithms: vec![Algorithm::HS256],
        leeway_seconds: 0,
        types: Vec::new(),
        certificate_bound: false,
        keys: KeySet::new(vec![
            match from_secret(SECRET, None, None, &[Algorithm::HS256]) {
                Ok(k) => k.key,
                Err(e) => fail(&e.to_string()),
            },
        ]),
        remote: Vec::new(),
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = serde_json::json!({
        "iss": "https://bench.test", "aud": "api", "sub": "user-1", "exp": now + 86_400,
        "account": "acc-1", "permissions": ["read", "transfer"], "scope": "read transfer",
        "features": {"maxTransactionAmount": 5000},
    });
    let signed = match jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    ) {
        Ok(t) => t,
        Err(e) => fail(&e.to_string()),
    };
    // One verified token stands for all: what is measured is the table, keyed by the text.
    let verified =
        match claimgate::auth::verify::verify(&signed, std::slice::from_ref(&issuer), now) {
            Ok(v) => Arc::new(v),
            Err(e) => fail(&format!("{e:?}")),
        };
    // Distinct texts as long as a real ES256 token (~430 bytes), each unique in its last bytes.
    let texts: Vec<String> = (0..args.tokens)
        .map(|n| {
            let mut t = signed.clone();
            t.truncate(410);
            while t.len() < 410 {
                t.push('x');
            }
            t.push_str(&format!(".{n:019}"));
            t
        })
        .collect();
    println!(
        "{} tokens inserted, 9 lookups each, into a cache of {} entries (working set {})",
        args.tokens, args.entries, args.window
    );

    let before: moka::sync::Cache<Arc<[u8]>, Arc<VerifiedToken>, ahash::RandomState> =
        moka::sync::Cache::builder()
            .max_capacity(args.entries)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(ahash::RandomState::new());
    let times = churn(&args, &texts, |text, insert| {
        if insert {
            before.insert(Arc::from(text.as_bytes()), verified.clone());
        } else {
            let _ = before.get(text.as_bytes());
        }
    });
    report("one table keyed by the token's bytes (before)", times);

    let cache = TokenCache::new(args.entries, Duration::from_secs(86_400));
    let accepted = std::slice::from_ref(&issuer);
    let times = churn(&args, &texts, |text, insert| {
        if insert {
            cache.insert(text, verified.clone(), &issuer);
        } else {
            let _ = cache.get(text.as_bytes(), accepted, now);
        }
    });
    report("claimgate's TokenCache", times);
}

/// Runs the steps; the time of every operation, in nanoseconds.
fn churn(args: &Args, texts: &[String], op: impl Fn(&str, bool)) -> Vec<u64> {
    let mut times = Vec::with_capacity(texts.len() * 10);
    for (i, text) in texts.iter().enumerate() {
        let i = i as u64;
        let t = Instant::now();
        op(text, true);
        times.push(t.elapsed().as_nanos() as u64);
        for j in 1..10u64 {
            // Spread over the working set, not only the latest tokens.
            let back = (j * 7_919 + i) % args.window.max(1);
            let t = Instant::now();
            op(&texts[i.saturating_sub(back) as usize], false);
            times.push(t.elapsed().as_nanos() as u64);
        }
    }
    times
}

fn report(label: &str, mut times: Vec<u64>) {
    times.sort_unstable();
    let n = times.len().max(1);
    let total: u64 = times.iter().sum();
    let slow = times.iter().filter(|&&t| t > 250_000).count();
    println!(
        "{label}: mean {:.0} ns per operation, p99.99 {:.3} ms, slowest {:.3} ms, {slow} operations over 0.25 ms",
        total as f64 / n as f64,
        times[(n * 9_999 / 10_000).saturating_sub(1)] as f64 / 1e6,
        times[n - 1] as f64 / 1e6,
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("token_cache_churn: {msg}");
    std::process::exit(1)
}
