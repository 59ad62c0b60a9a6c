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

/// An upstream that accepts and reads but never answers: the request fails with a JSON 502 once
/// `read_timeout_ms` has passed (not before it, not long after), and the gateway goes on
/// serving. The timeout runs on tokio's timer (`fast_timeout_to_tokio_threshold_seconds`).
#[tokio::test]
async fn an_upstream_that_never_answers_times_out_as_a_json_502() {
    use tokio::io::AsyncReadExt;
    let hung = Served::start(|listener| async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            held.push(stream);
        }
    });
    let config =
        standard_config(hung.addr).replace("read_timeout_ms = 5000", "read_timeout_ms = 1200");
    let gw = Gateway::start(&config, &[("p.toml", RULES)]);
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let resp = client().get(gw.url("/public")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 502);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], "upstream_unavailable");
        assert!(took >= std::time::Duration::from_millis(1100), "{took:?}");
        assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    }
}

/// An upstream that keeps each request head as it came off the wire (hyper's map would forget
/// how names were spelled) and answers `ok`.
fn raw_upstream() -> (Served, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let record = heads.clone();
    let served = Served::start(move |listener| async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        record
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (served, heads)
}

/// Header names reach the upstream in lowercase (as over HTTP/2), but for the few Pingora
/// spells itself; an upstream with `preserve_header_case` reads the client's spelling. Either
/// way the values, the decided headers and the stripping are the same.
#[tokio::test]
async fn header_names_are_lowercase_unless_the_upstream_keeps_their_case() {
    let (raw, heads) = raw_upstream();
    let config = format!(
        "{}\n[upstreams.cased]\naddresses = [\"{}\"]\npreserve_header_case = true\n",
        standard_config(raw.addr),
        raw.addr
    );
    let rules = r#"
[[route]]
name = "lower"
path = "/lower"
issuers = ["ec"]
upstream = "main"
  [route.forward]
  "X-User-Id" = "claims.sub"

[[route]]
name = "cased"
path = "/cased"
issuers = ["ec"]
upstream = "cased"
  [route.forward]
  "X-User-Id" = "claims.sub"
"#;
    let gw = Gateway::start(&config, &[("r.toml", rules)]);
    let t = es256(json!({"sub": "alice"}));
    // A client that spells names as `X-Custom-Thing` (reqwest's default is lowercase).
    let titled = reqwest::Client::builder()
        .http1_title_case_headers()
        .build()
        .unwrap();
    for path in ["/lower", "/cased"] {
        let resp = titled
            .get(gw.url(path))
            .bearer_auth(&t)
            .header("X-Custom-Thing", "v1")
            .header("x-user-id", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let names = |head: &str| -> Vec<String> {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
            .collect()
    };
    let (lower, cased) = (names(&heads[0]), names(&heads[1]));
    assert!(
        heads[0].starts_with("GET /lower HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /cased HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );
    for n in [
        "x-custom-thing",
        "x-user-id",
        "x-request-id",
        "x-forwarded-for",
        "authorization",
    ] {
        assert_eq!(
            lower.iter().filter(|m| m.as_str() == n).count(),
            1,
            "{n}: {lower:?}"
        );
        assert_eq!(
            cased.iter().filter(|m| m.eq_ignore_ascii_case(n)).count(),
            1,
            "{n}: {cased:?}"
        );
    }
    assert!(lower.contains(&"Host".to_string()), "{lower:?}");
    assert!(
        heads[0].contains("\r\nx-user-id: alice\r\n"),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("mallory") && !heads[1].contains("mallory"));
    // The client's spelling is what the cased upstream reads.
    assert!(cased.contains(&"X-Custom-Thing".to_string()), "{cased:?}");
    assert!(cased.contains(&"Authorization".to_string()), "{cased:?}");
}
