//! Decision-core benchmarks: the same `Snapshot::decide` call the proxy makes.
//!
//! - `verify_primitive`: the bare signature check of one token per algorithm (RS256, ES256,
//!   EdDSA, HS256) with its key parsed once, as the gateway holds it: the floor under an uncached
//!   request. `benches/load/run.sh` divides each uncached target's cost above the open route by
//!   these. `verify_primitive_cold`: the same check with the core's private caches evicted
//!   before each call, as other work between two checks leaves them in the gateway.
//! - `decide_3_rules`: verification + a route with 3 rules and 2 forwarded headers, HS256,
//!   ES256, RS256 and EdDSA tokens, with the verified-token cache off and on (warm).
//!   `<alg>/new_token`: the same decision for a token verified just before but never decided
//!   on (its rules and headers not yet remembered): the policy's own work on a new token, what
//!   an uncached request adds to its signature check and token parsing.
//! - `routes`: the same decision among 10, 1 000 and 10 000 routes (cache on).
//! - `reload`: compiling 10 000 routes into a snapshot, as a reload does.
//!
//! Run: `cargo bench --bench decision`

// Tests, benches and examples fail loudly on what they cannot use: unwrap and expect are the
// point here. The library and the binary deny them (Cargo.toml `[lints]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use claimgate::admission::RequestHead;
use claimgate::auth::IssuerSet;
use claimgate::config::Config;
use claimgate::engine::Snapshot;
use claimgate::load::load_context;
use claimgate::policy::PolicySet;
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::hint::black_box;
use std::path::Path;

// The gateway binary's allocator, so the bench measures the core as it runs in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "bench-secret-for-hmac-keys-0123456789abcdef";

const RULES: &str = r#"
[[route]]
name = "transfer"
path = "/api/accounts/{id}/transfer"
methods = ["POST"]
issuers = ["hs", "ec", "rs", "ed"]

  [[route.rule]]
  name = "needs-transfer-permission"
  allow_if = "'transfer' in claims.permissions"

  [[route.rule]]
  name = "account-owner"
  allow_if = "request.params.id == claims.account"

  [[route.rule]]
  name = "limit-present"
  allow_if = "has(claims.features.maxTransactionAmount) && claims.features.maxTransactionAmount > 0"

  [route.forward]
  "x-user-id" = "claims.sub"
  "x-max-amount" = "claims.features.maxTransactionAmount"
"#;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
        .display()
        .to_string()
}

/// `n` more routes beside the transfer route, each with a rule and a forwarded header.
fn many_routes(n: usize) -> String {
    let mut out = String::from(RULES);
    for i in 0..n {
        out.push_str(&format!(
            r#"
[[route]]
name = "svc-{i}"
path = "/svc/{i}/items/{{item}}"
methods = ["GET"]
issuers = ["ec"]
  [[route.rule]]
  name = "reader"
  allow_if = "'read' in claims.permissions"
  [route.forward]
  "x-item" = "request.params.item"
"#
        ));
    }
    out
}

fn snapshot(rules: &str, cache: bool) -> Snapshot {
    let config = format!(
        r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[rules]
dir = "rules"
[upstreams.main]
addresses = ["127.0.0.1:3"]
[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
keys = [{{ secret_env = "CLAIMGATE_BENCH_SECRET" }}]
[issuers.ec]
issuer = "https://ec.test"
audiences = ["api"]
algorithms = ["ES256"]
keys = [{{ pem_file = "{ec}", kid = "ec256" }}]
[issuers.rs]
issuer = "https://rs.test"
audiences = ["api"]
algorithms = ["RS256"]
keys = [{{ pem_file = "{rs}", kid = "rs1", alg = "RS256" }}]
[issuers.ed]
issuer = "https://ed.test"
audiences = ["api"]
algorithms = ["EdDSA"]
keys = [{{ pem_file = "{ed}", kid = "ed1" }}]
[token_cache]
enabled = {cache}
"#,
        ec = fixture("ec256-public.pem"),
        rs = fixture("rsa-public.pem"),
        ed = fixture("ed25519-public.pem"),
    );
    std::env::set_var("CLAIMGATE_BENCH_SECRET", SECRET);
    let config = Arc::new(Config::from_str(Path::new("bench.toml"), config).expect("config"));
    let issuers = IssuerSet::load(&config, &Default::default()).expect("issuers");
    let policy = PolicySet::from_sources(
        &[("bench.toml".into(), rules.to_string())],
        &load_context(&config, &Default::default()),
    )
    .expect("policy");
    Snapshot::new(
        config,
        Arc::new(issuers),
        Arc::new(policy),
        Arc::new(Default::default()),
        Arc::new(Default::default()),
    )
}

fn token(alg: Algorithm, iss: &str, kid: Option<&str>, key: &EncodingKey) -> String {
    sign(alg, kid, key, &claims(iss, None))
}

/// [`token`] with a `jti` of `n`: as many distinct tokens as needed.
fn token_with(alg: Algorithm, iss: &str, kid: Option<&str>, key: &EncodingKey, n: usize) -> String {
    sign(alg, kid, key, &claims(iss, Some(n)))
}

fn claims(iss: &str, jti: Option<usize>) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": iss, "aud": "api", "sub": "user-1", "exp": now + 3600, "iat": now,
        "account": "acc-1", "permissions": ["read", "transfer"],
        "features": {"maxTransactionAmount": 5000},
    });
    if let Some(n) = jti {
        claims["jti"] = n.to_string().into();
    }
    claims
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

/// The signature check alone, with the key the gateway builds at load (parsed once): what an
/// uncached request cannot avoid. Named by algorithm, e.g. `verify_primitive/es256`.
fn verify_primitive(c: &mut Criterion, tokens: &[(&str, String)]) {
    use base64::Engine;
    use claimgate::auth::signature::SignatureKey;
    use jsonwebtoken::DecodingKey;
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    let mut checks = Vec::new();
    for (name, token) in tokens {
        let (alg, key) = match *name {
            "hs256" => (
                Algorithm::HS256,
                DecodingKey::from_secret(SECRET.as_bytes()),
            ),
            "es256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(&read("ec256-public.pem")).unwrap(),
            ),
            "rs256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&read("rsa-public.pem")).unwrap(),
            ),
            "eddsa" => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_pem(&read("ed25519-public.pem")).unwrap(),
            ),
            other => panic!("no key for {other}"),
        };
        let key = SignatureKey::new(alg, &key).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap();
        assert!(key.verify(message.as_bytes(), &signature), "{name}");
        checks.push((*name, key, message.to_string(), signature));
    }
    let mut group = c.benchmark_group("verify_primitive");
    for (name, key, message, signature) in &checks {
        group.bench_function(*name, |b| {
            b.iter(|| black_box(key.verify(black_box(message.as_bytes()), signature)))
        });
    }
    group.finish();
    // The same check after the core's private caches were filled with other data, as they are
    // in the gateway, where a request's parsing, routing and I/O run between two checks: the
    // loop above keeps the key, the big-number tables and the code hot. Not part of the floor
    // (`run.sh` divides by the hot medians); it says how much of a request's cost above the
    // floor a cold cache alone explains.
    let mut sweep = vec![0u64; (4 << 20) / 8];
    let mut cold = c.benchmark_group("verify_primitive_cold");
    for (name, key, message, signature) in &checks {
        cold.bench_function(*name, |b| {
            b.iter_batched_ref(
                || evict(&mut sweep),
                |_| black_box(key.verify(black_box(message.as_bytes()), signature)),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    cold.finish();
}

/// Writes and reads `sweep` (larger than the L2 caches of current x86 and ARM server cores):
/// what was cached before is evicted from the core's private caches.
fn evict(sweep: &mut [u64]) {
    for (i, w) in sweep.iter_mut().enumerate().step_by(8) {
        *w = w.wrapping_add(i as u64);
    }
    black_box(sweep.iter().step_by(8).fold(0u64, |a, w| a ^ w));
}

/// `decide_3_rules/<alg>/new_token`. Each measured decision meets a token verified in the
/// (unmeasured) setup and put in the cache, never decided on before: admission, the cache hit,
/// the rules and forwarded headers evaluated for the first time. Distinct tokens (by `jti`), so
/// a batch of decisions never meets a token an earlier one of the batch remembered.
fn new_token(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    [ec_key, rs_key, ed_key]: [&EncodingKey; 3],
) {
    const DISTINCT: usize = 256;
    let snap = snapshot(RULES, true);
    let cache = snap.token_cache.as_ref().unwrap();
    let hs_key = EncodingKey::from_secret(SECRET.as_bytes());
    for (name, alg, issuer, kid, key) in [
        ("hs256", Algorithm::HS256, "hs", None, &hs_key),
        ("es256", Algorithm::ES256, "ec", Some("ec256"), ec_key),
        ("rs256", Algorithm::RS256, "rs", Some("rs1"), rs_key),
        ("eddsa", Algorithm::EdDSA, "ed", Some("ed1"), ed_key),
    ] {
        let iss = snap.issuers.get(issuer).unwrap().clone();
        let tokens: Vec<String> = (0..DISTINCT)
            .map(|i| token_with(alg, &iss.iss, kid, key, i))
            .collect();
        let headers: Vec<HeaderMap> = tokens.iter().map(|t| bearer(t)).collect();
        let heads: Vec<RequestHead<'_>> = headers.iter().map(head_for).collect();
        let mut next = 0;
        let fresh_token = |next: usize| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            // Verified as the gateway verifies it (the claims its policy set reads), so the
            // decision converts the same claims map an uncached request's does.
            let fresh = claimgate::auth::verify::verify_parts(
                claimgate::auth::segment::Compact::split(&tokens[next]).unwrap(),
                std::slice::from_ref(&iss),
                now.as_secs() as i64,
                &snap.claims_read,
            )
            .unwrap();
            cache.insert(&tokens[next], Arc::new(fresh), &iss);
        };
        // What is measured: an allowed decision on a token the cache serves (no verification).
        fresh_token(0);
        let d = snap.decide_head(&heads[0], PEER, b"", SystemTime::now());
        assert!(d.is_allow() && d.token_cache == Some(true), "{name}: {d:?}");
        group.bench_function(format!("{name}/new_token"), |b| {
            b.iter_batched(
                || {
                    next = (next + 1) % DISTINCT;
                    fresh_token(next);
                    next
                },
                |i| snap.decide_head(black_box(&heads[i]), PEER, b"", SystemTime::now()),
                // Fewer than DISTINCT per batch: every decision meets a token of its own.
                criterion::BatchSize::NumIterations(DISTINCT as u64 / 2),
            )
        });
    }
}

/// `decide_3_rules/hs256/idp_token`: an uncached decision on a token shaped like an identity
/// provider's (Keycloak's default access token: two dozen claims, nested role maps), of which
/// the rules read three. The gateway decodes only the claims its expressions read;
/// `idp_token_all_claims` is the same decision with every claim decoded, as before it did.
fn idp_token(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use claimgate::auth::claim_names::ClaimNames;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "exp": now + 300, "iat": now, "auth_time": now - 60,
        "jti": "onrtac:4b8f5e2a-9c1d-4e7f-a3b6-2d8c0f1e5a79",
        "iss": "https://hs.test", "aud": "api", "sub": "user-1", "typ": "Bearer",
        "azp": "web-app", "sid": "8f14e45f-ceea-467f-a0e6-1b3b4a1c2d3e", "acr": "1",
        "allowed-origins": ["https://app.example.com"],
        "realm_access": {"roles": ["default-roles-demo", "offline_access", "uma_authorization"]},
        "resource_access": {"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}},
        "scope": "openid profile email", "email_verified": true, "name": "Ada Lovelace",
        "preferred_username": "ada", "given_name": "Ada", "family_name": "Lovelace",
        "email": "ada@example.com",
        "account": "acc-1", "permissions": ["read", "transfer"],
        "features": {"maxTransactionAmount": 5000},
    });
    let token = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
    );
    let headers = bearer(&token);
    let head = head_for(&headers);
    let named = snapshot(RULES, false);
    assert!(matches!(named.claims_read.names, ClaimNames::Only(_)));
    let mut every = snapshot(RULES, false);
    every.claims_read.names = ClaimNames::All;
    for (id, snap) in [("idp_token", &named), ("idp_token_all_claims", &every)] {
        let d = snap.decide_head(&head, PEER, b"", SystemTime::now());
        assert!(d.is_allow(), "{id}: {:?}", d.outcome);
        group.bench_function(format!("hs256/{id}"), |b| {
            b.iter(|| black_box(snap.decide_head(black_box(&head), PEER, b"", SystemTime::now())))
        });
    }
}

/// The request as the proxy hands it over: admission (target, host, path, route) is measured
/// with the decision.
fn head_for(headers: &HeaderMap) -> RequestHead<'_> {
    RequestHead {
        method: "POST",
        target: b"/api/accounts/acc-1/transfer",
        http10: false,
        headers,
    }
}

const PEER: Option<std::net::IpAddr> = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

fn bearer(t: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", "api.example.com".parse().unwrap());
    headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers
}

fn bench(c: &mut Criterion) {
    claimgate::crypto::self_test().expect("crypto");
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    let ec_key = EncodingKey::from_ec_pem(&read("ec256-private.pem")).unwrap();
    let rs_key = EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap();
    let ed_key = EncodingKey::from_ed_pem(&read("ed25519-private.pem")).unwrap();
    let tokens = [
        (
            "hs256",
            token(
                Algorithm::HS256,
                "https://hs.test",
                None,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        (
            "es256",
            token(Algorithm::ES256, "https://ec.test", Some("ec256"), &ec_key),
        ),
        (
            "rs256",
            token(Algorithm::RS256, "https://rs.test", Some("rs1"), &rs_key),
        ),
        (
            "eddsa",
            token(Algorithm::EdDSA, "https://ed.test", Some("ed1"), &ed_key),
        ),
    ];
    verify_primitive(c, &tokens);
    let mut group = c.benchmark_group("decide_3_rules");
    new_token(&mut group, [&ec_key, &rs_key, &ed_key]);
    for cache in [false, true] {
        let snap = snapshot(RULES, cache);
        for (name, t) in &tokens {
            let headers = bearer(t);
            let head = head_for(&headers);
            let d = snap.decide_head(&head, PEER, b"", SystemTime::now());
            assert!(d.is_allow(), "{name}: {:?}", d.outcome);
            let id = format!("{name}/cache_{}", if cache { "on" } else { "off" });
            group.bench_function(id, |b| {
                b.iter(|| {
                    black_box(snap.decide_head(black_box(&head), PEER, b"", SystemTime::now()))
                })
            });
        }
    }
    idp_token(&mut group);
    group.finish();

    let es256 = &tokens[1].1;
    let headers = bearer(es256);
    let head = head_for(&headers);
    let mut group = c.benchmark_group("routes");
    for n in [10usize, 1_000, 10_000] {
        let snap = snapshot(&many_routes(n - 1), true);
        assert_eq!(snap.policy.routes.len(), n);
        assert!(snap
            .decide_head(&head, PEER, b"", SystemTime::now())
            .is_allow());
        group.bench_function(n.to_string(), |b| {
            b.iter(|| black_box(snap.decide_head(black_box(&head), PEER, b"", SystemTime::now())))
        });
    }
    group.finish();

    let rules = many_routes(9_999);
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function("10000_routes", |b| {
        b.iter(|| black_box(snapshot(black_box(&rules), true)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
