//! Token verification through the proxy: every accepted algorithm, every rejection.

use super::harness::*;
use super::tokens::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

fn open_route() -> String {
    format!(
        r#"
[[route]]
name = "api"
path = "/api/*"
{ALL_ISSUERS}

  [route.forward]
  "x-issuer" = "token.issuer"
  "x-alg" = "token.alg"
"#
    )
}

fn start() -> (Upstream, Gateway) {
    start_standard("", &[("api.toml", &open_route())])
}

async fn get_with(gw: &Gateway, token: &str) -> reqwest::Response {
    client()
        .get(gw.url("/api/thing"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A 401 with an RFC 6750 challenge and a JSON body naming `reason`.
async fn assert_rejected(resp: reqwest::Response, reason: &str, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let www = resp
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.starts_with("Bearer realm=\"claimgate\""),
        "{what}: {www}"
    );
    assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json",
        "{what}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], reason, "{what}: {body}");
    assert_eq!(body["error"], "unauthorized", "{what}: {body}");
}

#[tokio::test]
async fn every_supported_algorithm_is_accepted() {
    let (up, gw) = start();
    let algs = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    for alg in algs {
        let resp = get_with(&gw, &token(alg, json!({}))).await;
        assert_eq!(
            resp.status(),
            200,
            "{alg:?}: {}",
            resp.text().await.unwrap()
        );
        assert_eq!(resp.text().await.unwrap(), "upstream ok");
        let seen = up.last();
        assert_eq!(seen.headers["x-alg"], format!("{alg:?}").as_str());
        let issuer = issuer_for(alg)
            .0
            .trim_start_matches("https://")
            .trim_end_matches(".test");
        assert_eq!(seen.headers["x-issuer"], issuer, "{alg:?}");
    }
    assert_eq!(up.count(), algs.len());
}

#[tokio::test]
async fn jwks_file_keys_verify_and_encryption_keys_are_skipped() {
    let (up, gw) = start();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rsa2-private.pem")).unwrap(),
    )
    .unwrap();
    let c = claims("https://jwks.test", json!({}));
    let ok = sign(Algorithm::RS256, Some("jwks-rsa"), &c, &key);
    assert_eq!(get_with(&gw, &ok).await.status(), 200);
    assert_eq!(up.last().headers["x-issuer"], "jwks");
    // The same key published for encryption only must not verify signatures.
    let enc = sign(Algorithm::RS256, Some("jwks-enc"), &c, &key);
    // No kid match and one unnamed... the `jwks-rsa` key has a kid, so `jwks-enc` finds nothing.
    assert_rejected(get_with(&gw, &enc).await, "unknown_key", "enc key").await;
    // RS384 is not allowed for this issuer even though the key is RSA.
    let rs384 = sign(Algorithm::RS384, Some("jwks-rsa"), &c, &key);
    assert_rejected(
        get_with(&gw, &rs384).await,
        "algorithm_not_allowed",
        "rs384",
    )
    .await;
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_401() {
    let (up, gw) = start();
    let ec = encoding_key(Algorithm::ES256);
    let good_claims = claims("https://ec.test", json!({}));

    // alg none, in several spellings, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let t = raw(&json!({"alg": alg, "typ": "JWT"}), &good_claims, b"");
        assert_rejected(get_with(&gw, &t).await, "algorithm_not_allowed", alg).await;
    }
    let t = format!(
        "{}.",
        raw(&json!({"alg": "none"}), &good_claims, b"").trim_end_matches('.')
    );
    assert_rejected(
        get_with(&gw, &t).await,
        "algorithm_not_allowed",
        "none, no sig",
    )
    .await;

    // Wrong key: signed by another RSA key under the configured kid.
    let other = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rsa2-private.pem")).unwrap(),
    )
    .unwrap();
    let t = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &claims("https://rsa.test", json!({})),
        &other,
    );
    assert_rejected(get_with(&gw, &t).await, "bad_signature", "wrong key").await;

    // Key confusion: HS256 signed with the RSA public key as the secret.
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let t = sign(
        Algorithm::HS256,
        Some("rsa1"),
        &claims("https://rsa.test", json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    );
    assert_rejected(
        get_with(&gw, &t).await,
        "algorithm_not_allowed",
        "hs with rsa key",
    )
    .await;

    // Expired beyond the 30 s leeway; within the leeway it still passes.
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"exp": now() - 31})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "token_expired", "expired").await;
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"exp": now() - 5})),
        &ec,
    );
    assert_eq!(get_with(&gw, &t).await.status(), 200, "within leeway");

    // Missing exp.
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"exp": null})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "missing_exp", "no exp").await;

    // nbf in the future.
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"nbf": now() + 120})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "token_not_yet_valid", "nbf").await;

    // Wrong iss: unknown issuer, and a known issuer's iss signed by another issuer's key.
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://evil.test", json!({})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "wrong_issuer", "unknown iss").await;
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://rsa.test", json!({})),
        &ec,
    );
    assert_rejected(
        get_with(&gw, &t).await,
        "algorithm_not_allowed",
        "iss of another issuer",
    )
    .await;

    // Wrong aud, as a string and as an array; a matching entry in an array is enough.
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"aud": "other"})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "wrong_audience", "aud string").await;
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"aud": ["x", "y"]})),
        &ec,
    );
    assert_rejected(get_with(&gw, &t).await, "wrong_audience", "aud array").await;
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"aud": ["x", "api"]})),
        &ec,
    );
    assert_eq!(
        get_with(&gw, &t).await.status(),
        200,
        "aud array with a match"
    );

    // Unknown kid.
    let t = sign(Algorithm::ES256, Some("nope"), &good_claims, &ec);
    assert_rejected(get_with(&gw, &t).await, "unknown_key", "unknown kid").await;

    // crit header (validly signed, so only the header decides).
    let header = json!({"alg": "HS256", "kid": "hs1", "crit": ["exp"], "exp": 1});
    let t = hs256_with_header(
        &header,
        &claims("https://hs.test", json!({})),
        HS_SECRET.as_bytes(),
    );
    assert_rejected(get_with(&gw, &t).await, "critical_header", "crit").await;
    // The same header without crit passes: the test above failed for crit alone.
    let header = json!({"alg": "HS256", "kid": "hs1"});
    let t = hs256_with_header(
        &header,
        &claims("https://hs.test", json!({})),
        HS_SECRET.as_bytes(),
    );
    assert_eq!(get_with(&gw, &t).await.status(), 200, "control for crit");

    // One spelling per token (RFC 7515 §2, RFC 4648 §3.5): each segment of the valid token
    // above, padded, or with its same bytes spelt with non-zero trailing bits, is refused as
    // malformed. A lenient decoder would pass the signature variants (same bytes) and call the
    // header and claims variants a bad signature.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let parts: Vec<&str> = t.split('.').collect();
    let mut with_trailing_bits = 0;
    for (i, seg) in parts.iter().enumerate() {
        let mut variants = vec![format!("{seg}{}", "=".repeat(4 - seg.len() % 4))];
        if seg.len() % 4 != 0 {
            with_trailing_bits += 1;
            let last = seg.as_bytes()[seg.len() - 1];
            let at = ALPHABET.iter().position(|&c| c == last).unwrap();
            variants.push(format!(
                "{}{}",
                &seg[..seg.len() - 1],
                ALPHABET[at + 1] as char
            ));
        }
        for v in variants {
            let mut p = parts.clone();
            p[i] = &v;
            let what = format!("segment {i} spelt {v}");
            assert_rejected(get_with(&gw, &p.join(".")).await, "malformed_token", &what).await;
        }
    }
    // The HMAC's 32 bytes take 43 characters: the signature at least has trailing bits.
    assert!(with_trailing_bits >= 1);

    // A key offered by the token itself is never used: jwk / jku / x5u headers with an
    // attacker's HMAC secret.
    for extra in [
        json!({"jwk": {"kty": "oct", "k": "YXR0YWNrZXI"}}),
        json!({"jku": "http://127.0.0.1:1/jwks.json"}),
        json!({"x5u": "http://127.0.0.1:1/cert.pem"}),
    ] {
        let mut header = json!({"alg": "HS256", "kid": "attacker"});
        for (k, v) in extra.as_object().unwrap() {
            header[k] = v.clone();
        }
        let t = hs256_with_header(&header, &claims("https://hs.test", json!({})), b"attacker");
        assert_rejected(get_with(&gw, &t).await, "unknown_key", &header.to_string()).await;
    }

    // Oversized token (limit 8 KiB by default), validly signed.
    let big = "x".repeat(9000);
    let t = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({"pad": big})),
        &ec,
    );
    assert!(t.len() > 8192);
    assert_rejected(get_with(&gw, &t).await, "token_too_large", "oversized").await;

    // Garbage.
    for t in ["abc", "a.b", "a.b.c.d", "!!!.###.$$$", "eyJ.eyJ.sig"] {
        let resp = client()
            .get(gw.url("/api/thing"))
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        assert_rejected(resp, "malformed_token", t).await;
    }

    // Tampered payload.
    let good = es256(json!({}));
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims("https://ec.test", json!({"sub": "admin"})).to_string(),
    );
    parts[1] = &tampered_payload;
    assert_rejected(
        get_with(&gw, &parts.join(".")).await,
        "bad_signature",
        "tampered",
    )
    .await;

    assert_eq!(
        up.count(),
        3,
        "only the three valid control tokens reached the upstream"
    );
}

#[tokio::test]
async fn authorization_header_shapes() {
    let (up, gw) = start();
    let t = es256(json!({}));
    let c = client();

    // No token: 401 with a bare challenge (RFC 6750 3.1: no error code).
    let resp = c.get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"claimgate\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "missing_token");

    // Other schemes carry no bearer token.
    let resp = c
        .get(gw.url("/api/x"))
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Scheme case-insensitive.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let resp = c
            .get(gw.url("/api/x"))
            .header("authorization", format!("{scheme} {t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{scheme}");
    }

    // Empty token.
    let resp = c
        .get(gw.url("/api/x"))
        .header("authorization", "Bearer ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "empty_token");

    // Two Authorization headers: refused as a bad request, even when both are valid.
    let resp = c
        .get(gw.url("/api/x"))
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_request"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "multiple_authorization");

    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    let (_up, gw) = start();
    let good = es256(json!({"permissions": ["x"]}));
    let expired = es256(json!({"exp": now() - 3600}));
    assert_eq!(get_with(&gw, &good).await.status(), 200);
    assert_eq!(get_with(&gw, &expired).await.status(), 401);
    let logs = gw.wait_log("token_expired");
    assert!(logs.contains("token_expired"), "{logs}");
    for t in [&good, &expired] {
        // Neither the whole token nor its signature part.
        let sig = t.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(t.as_str()) && !logs.contains(sig),
            "token leaked into logs"
        );
    }
    assert!(!logs.contains(HS_SECRET));
}

/// On a route that accepts one issuer, a valid token of another configured issuer is refused as
/// `wrong_issuer`, whichever check it fails first (its algorithm, its key id, its signature),
/// and never makes the gateway refetch keys; a token of the route's issuer with a bad
/// signature is still `bad_signature`.
#[tokio::test]
async fn a_token_of_another_issuer_is_wrong_issuer_on_a_one_issuer_route() {
    let rules = "[[route]]\nname = \"ec-only\"\npath = \"/api/*\"\nissuers = [\"ec\"]\n";
    let (_up, gw) = start_standard("", &[("api.toml", rules)]);
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rsa-private.pem")).unwrap(),
    )
    .unwrap();
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(fixture("ec256-private.pem")).unwrap(),
    )
    .unwrap();
    let hs = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
    // Another issuer's algorithm (RS256), its key id (`hs1` is no EC key), and its iss on an
    // ES256 token under the route's key id but signed by a key of its own.
    let rs = sign(
        Algorithm::RS256,
        Some("rsa1"),
        &claims("https://rsa.test", json!({})),
        &rsa,
    );
    assert_rejected(get_with(&gw, &rs).await, "wrong_issuer", "rsa issuer").await;
    let h = sign(
        Algorithm::HS256,
        Some("hs1"),
        &claims("https://hs.test", json!({})),
        &hs,
    );
    assert_rejected(get_with(&gw, &h).await, "wrong_issuer", "hs issuer").await;
    // The route's own issuer and key id, signed by a P-256 key it does not have.
    let stranger = rcgen::KeyPair::generate().unwrap();
    let other_ec =
        jsonwebtoken::EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).unwrap();
    let forged = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({})),
        &other_ec,
    );
    assert_rejected(
        get_with(&gw, &forged).await,
        "bad_signature",
        "own iss, wrong key",
    )
    .await;
    let own = sign(
        Algorithm::ES256,
        Some("ec256"),
        &claims("https://ec.test", json!({})),
        &ec,
    );
    assert_eq!(get_with(&gw, &own).await.status(), 200);
}
