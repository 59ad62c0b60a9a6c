//! What reaches the upstream: forwarded headers, anti-spoofing, bodies, and upstream failures.

use super::harness::*;
use super::tokens::*;
use serde_json::{json, Value};

const RULES: &str = r#"
[[route]]
name = "profile"
path = "/api/users/{id}/*"
issuers = ["ec"]

  [route.forward]
  "x-user-id" = "claims.sub"
  "X-Roles" = "has(claims.roles) ? claims.roles : null"
  "x-tier" = "has(claims.subscription) ? claims.subscription.tier : 'free'"
  "x-profile" = "claims.profile"
  "x-user-param" = "request.params.id"

[[route]]
name = "upload"
path = "/upload"
methods = ["POST", "PUT"]
issuers = ["ec"]

[[route]]
name = "public"
path = "/public"
auth = "none"

  [route.forward]
  "x-gateway" = "'claimgate'"
"#;

fn start() -> (Upstream, Gateway) {
    start_standard("", &[("p.toml", RULES)])
}

#[tokio::test]
async fn forwarded_headers_replace_client_copies() {
    let (up, gw) = start();
    let t = es256(json!({"sub": "alice", "roles": ["admin", "ops"], "profile": {"a": 1}}));
    let resp = client()
        .get(gw.url("/api/users/7/settings/x?y=1"))
        .bearer_auth(&t)
        .header("x-user-id", "mallory")
        .header("X-User-Id", "mallory2")
        .header("x-tier", "platinum")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    let seen = up.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("x-user-id"), vec!["alice"]);
    assert_eq!(all("x-roles"), vec![r#"["admin","ops"]"#]);
    assert_eq!(all("x-tier"), vec!["free"]);
    assert_eq!(all("x-profile"), vec![r#"{"a":1}"#]);
    assert_eq!(all("x-user-param"), vec!["7"]);
    assert_eq!(all("x-other"), vec!["kept"]);
    assert_eq!(all("authorization"), vec![format!("Bearer {t}")]);
    assert_eq!(seen.uri, "/api/users/7/settings/x?y=1");
    assert_eq!(all("x-forwarded-for"), vec!["127.0.0.1"]);

    // The same token again (now from the token cache): the claim-only headers are remembered
    // with the token, the request-dependent one is computed for this request.
    let resp = client()
        .get(gw.url("/api/users/8/x"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-roles"], r#"["admin","ops"]"#);
    assert_eq!(seen.headers["x-user-param"], "8");

    // A header whose value is absent (null) is not sent, and the client's copy is still removed.
    let t = es256(json!({"profile": "p"}));
    let resp = client()
        .get(gw.url("/api/users/7/x"))
        .bearer_auth(&t)
        .header("x-roles", "root")
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert!(
        seen.headers.get("x-roles").is_none(),
        "spoofed x-roles reached the upstream"
    );
    // The client is no trusted proxy: its own X-Forwarded-For entries are dropped.
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // A forward expression that fails (no `profile` claim) denies: fail closed, also when the
    // token comes back from the cache.
    let t = es256(json!({}));
    for _ in 0..2 {
        let resp = client()
            .get(gw.url("/api/users/7/x"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], "policy_error");
    }
}

#[tokio::test]
async fn open_routes_need_no_token_and_still_strip() {
    let (up, gw) = start();
    let resp = client()
        .get(gw.url("/public"))
        .header("x-gateway", "spoofed")
        .header("authorization", "Bearer not-even-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-gateway"], "claimgate");
    // auth = "none" leaves the Authorization header alone for the upstream to judge.
    assert_eq!(seen.headers["authorization"], "Bearer not-even-a-jwt");
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_byte_for_byte() {
    let (up, gw) = start();
    // 300 KiB of every byte value, larger than any internal buffer.
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let resp = client()
        .post(gw.url("/upload?name=a%20b"))
        .bearer_auth(es256(json!({})))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/upload?name=a%20b");
    assert_eq!(seen.headers["content-type"], "application/octet-stream");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "body differs");

    // Chunked (no Content-Length) through PUT.
    let expected: Vec<u8> = (0..10).flat_map(|i| vec![i as u8; 10_000]).collect();
    let resp = client()
        .put(gw.url("/upload"))
        .bearer_auth(es256(json!({})))
        .body(chunked(&expected, 10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.method, "PUT");
    assert!(seen.body == expected, "chunked body differs");
}

#[tokio::test]
async fn upstream_down_is_a_json_502() {
    // An upstream address nothing listens on.
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(&standard_config(dead), &[("p.toml", RULES)]);
    let resp = client().get(gw.url("/public")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "upstream_unavailable");
    // The gateway is still up.
    let resp = client().get(gw.url("/public")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}
