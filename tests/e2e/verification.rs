//! Verification to the letter of the RFCs: each case names the clause it enforces.

use super::harness::*;
use super::tokens::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const ROUTE: &str = r#"
[[route]]
name = "api"
path = "/api/*"
issuers = ["hs", "rsa", "ec", "mixed", "typed"]
"#;

/// Issuers beside the standard ones: one holding an HMAC secret and an EC key together, one
/// that accepts only RFC 9068 access tokens, one whose RSA key is pinned to RS256 among
/// several RSA algorithms.
fn extra() -> String {
    format!(
        r#"
[issuers.mixed]
issuer = "https://mixed.test"
audiences = ["api"]
algorithms = ["HS256", "ES256", "RS256", "RS384"]
keys = [
  {{ secret_env = "CLAIMGATE_TEST_SECRET", kid = "m-hs", alg = "HS256" }},
  {{ pem_file = "{ec}", kid = "m-ec" }},
  {{ pem_file = "{rsa}", kid = "m-rsa", alg = "RS256" }},
]

[issuers.typed]
issuer = "https://typed.test"
audiences = ["api"]
algorithms = ["ES256"]
types = ["at+jwt"]
keys = [{{ pem_file = "{ec}", kid = "t-ec" }}]
"#,
        ec = fixture("ec256-public.pem").display(),
        rsa = fixture("rsa-public.pem").display(),
    )
}

async fn answer(gw: &Gateway, token: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn reason(gw: &Gateway, token: &str) -> String {
    let (status, body) = answer(gw, token).await;
    format!("{status} {}", body["reason"].as_str().unwrap_or("-"))
}

fn es256(iss: &str, kid: &str, extra: Value) -> String {
    sign(
        Algorithm::ES256,
        Some(kid),
        &claims(iss, extra),
        &encoding_key(Algorithm::ES256),
    )
}

#[tokio::test]
async fn the_jose_header_and_the_payload_must_be_json_objects() {
    let (_up, gw) = start_standard(&extra(), &[("api.toml", ROUTE)]);
    let payload = claims("https://hs.test", json!({}));
    // RFC 7515 §4 / RFC 7519 §7.2: the header is a JSON object. An array whose elements would be
    // read by position as `alg`, `kid` is refused, although its HMAC is right.
    let array = json!(["HS256", "hs1"]);
    let t = hs256_with_header(&array, &payload, HS_SECRET.as_bytes());
    assert_eq!(reason(&gw, &t).await, "401 malformed_token");
    // RFC 7519 §7.2 step 10: the claims set is a JSON object.
    let header = json!({"alg": "HS256", "kid": "hs1"});
    let t = hs256_with_header(&header, &json!(["iss", "aud"]), HS_SECRET.as_bytes());
    assert_eq!(reason(&gw, &t).await, "401 malformed_token");
    // The same header as an object passes.
    let t = hs256_with_header(&header, &payload, HS_SECRET.as_bytes());
    assert_eq!(reason(&gw, &t).await, "200 -");
}

#[tokio::test]
async fn numeric_dates_are_numbers_within_range() {
    let (_up, gw) = start_standard(&extra(), &[("api.toml", ROUTE)]);
    let t = |extra: Value| es256("https://ec.test", "ec256", extra);
    // RFC 7519 §2: a NumericDate is a JSON number; a string `iat` is not one.
    assert_eq!(
        reason(&gw, &t(json!({"iat": "1700000000"}))).await,
        "401 invalid_date_claim"
    );
    assert_eq!(
        reason(&gw, &t(json!({"nbf": "0"}))).await,
        "401 invalid_date_claim"
    );
    // RFC 7519 §4.1.4: an `exp` beyond the 64-bit range is not clamped into a token that never
    // expires.
    assert_eq!(
        reason(&gw, &t(json!({"exp": 1e20}))).await,
        "401 invalid_date_claim"
    );
    assert_eq!(
        reason(&gw, &t(json!({"exp": u64::MAX}))).await,
        "401 invalid_date_claim"
    );
    // RFC 7519 §4.1.6: a token issued after now (beyond the 30 s leeway) is refused.
    assert_eq!(
        reason(&gw, &t(json!({"iat": now() + 3600}))).await,
        "401 issued_in_future"
    );
    // Within the leeway, and fractional seconds, pass.
    assert_eq!(reason(&gw, &t(json!({"iat": now() + 10}))).await, "200 -");
    assert_eq!(
        reason(&gw, &t(json!({"exp": now() as f64 + 600.5}))).await,
        "200 -"
    );
}

#[tokio::test]
async fn each_key_is_used_with_its_one_algorithm() {
    let (_up, gw) = start_standard(&extra(), &[("api.toml", ROUTE)]);
    let rsa = encoding_key(Algorithm::RS256);
    let c = claims("https://mixed.test", json!({}));
    // RFC 8725 §3.1: the RSA key is pinned to RS256; an RS384 signature by the same key is not
    // accepted although the issuer lists RS384.
    let t = sign(Algorithm::RS256, Some("m-rsa"), &c, &rsa);
    assert_eq!(reason(&gw, &t).await, "200 -");
    let t = sign(Algorithm::RS384, Some("m-rsa"), &c, &rsa);
    assert_eq!(reason(&gw, &t).await, "401 unknown_key");
    // One issuer holds an HMAC secret and public keys, each pinned to its algorithm.
    let t = sign(
        Algorithm::HS256,
        Some("m-hs"),
        &c,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    );
    assert_eq!(reason(&gw, &t).await, "200 -");
    assert_eq!(
        reason(&gw, &es256("https://mixed.test", "m-ec", json!({}))).await,
        "200 -"
    );
    // RFC 8725 §2.1 (algorithm confusion): HS256 "signed" with the public EC or RSA key as the
    // secret finds no HMAC key under those key ids.
    for (kid, file) in [("m-ec", "ec256-public.pem"), ("m-rsa", "rsa-public.pem")] {
        let public = std::fs::read(fixture(file)).unwrap();
        let t = sign(
            Algorithm::HS256,
            Some(kid),
            &c,
            &EncodingKey::from_secret(&public),
        );
        assert_eq!(reason(&gw, &t).await, "401 unknown_key", "{kid}");
    }
}

#[tokio::test]
async fn an_issuer_can_require_access_tokens_by_type() {
    let (_up, gw) = start_standard(&extra(), &[("api.toml", ROUTE)]);
    let typed = |typ: Option<&str>| {
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some("t-ec".into());
        h.typ = typ.map(str::to_string);
        jsonwebtoken::encode(
            &h,
            &claims("https://typed.test", json!({})),
            &encoding_key(Algorithm::ES256),
        )
        .unwrap()
    };
    // RFC 9068 §4: access tokens are typed `at+jwt`; RFC 7515 §4.1.9: compared without case,
    // `application/` implied.
    assert_eq!(reason(&gw, &typed(Some("at+jwt"))).await, "200 -");
    assert_eq!(
        reason(&gw, &typed(Some("application/AT+JWT"))).await,
        "200 -"
    );
    assert_eq!(
        reason(&gw, &typed(Some("JWT"))).await,
        "401 wrong_token_type"
    );
    assert_eq!(reason(&gw, &typed(None)).await, "401 wrong_token_type");
    // Issuers that name no types accept any.
    assert_eq!(
        reason(&gw, &es256("https://ec.test", "ec256", json!({}))).await,
        "200 -"
    );
}

#[test]
fn check_warns_about_inferred_algorithms_and_clamped_refresh_settings() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = format!(
        "{}\n[issuers.inferred]\nissuer = \"https://inferred.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\nrefresh_seconds = 5\nmin_refresh_seconds = 30\nkeys = [{{ pem_file = \"{}\" }}]\n",
        standard_config(up),
        fixture("rsa-public.pem").display()
    );
    let route = "[[route]]\nname = \"api\"\npath = \"/api/*\"\nissuers = [\"inferred\"]\n";
    let (dir, _, _) = write_setup(&config, &[("api.toml", route)]);
    let out = binary()
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("this key's algorithm is inferred as RS256"),
        "{err}"
    );
    assert!(
        err.contains("`refresh_seconds` (5) is below `min_refresh_seconds` (30)"),
        "{err}"
    );
    // An RSA key without `alg` where the issuer accepts several RSA algorithms does not load.
    let ambiguous = config.replace(
        "algorithms = [\"RS256\"]\nrefresh",
        "algorithms = [\"RS256\", \"PS256\"]\nrefresh",
    );
    let (dir, _, _) = write_setup(&ambiguous, &[("api.toml", route)]);
    let out = binary()
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fits RS256, PS256"), "{err}");
}
