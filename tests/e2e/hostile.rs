//! The hostile-input suite: well over a thousand generated malformed requests and tokens sent
//! over raw TCP to the real binary. No answer may be a 5xx from the gateway itself, the process
//! must not crash, and it must still serve a valid request afterwards.

use super::harness::*;
use super::tokens::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const RULES: &str = r#"
[[route]]
name = "api"
path = "/api/{*rest}"
issuers = ["hs", "ec"]

  [[route.rule]]
  name = "needs-read"
  allow_if = "'read' in claims.permissions"

  [[route.rule]]
  name = "level"
  allow_if = "claims.level >= 1 && claims.sub.startsWith('u')"

  [route.forward]
  "x-user-id" = "claims.sub"

[[route]]
name = "body"
path = "/body"
methods = ["POST"]
issuers = ["hs"]
body_limit = 4096

  [[route.rule]]
  name = "amount"
  allow_if = "body.amount <= 100"
"#;

/// A deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() as usize) % items.len()]
    }
}

fn hs(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs1".into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(HS_SECRET.as_bytes())).unwrap()
}

/// Tokens that are malformed, or correctly signed with hostile claims.
fn hostile_tokens(rng: &mut Lcg) -> Vec<String> {
    let good = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"]}),
    ));
    let mut out = Vec::new();
    // Truncated at every length, and with single bytes flipped.
    for cut in (0..good.len()).step_by(3) {
        out.push(good[..cut].to_string());
    }
    for _ in 0..60 {
        let mut b = good.clone().into_bytes();
        let i = (rng.next() as usize) % b.len();
        b[i] = *rng.pick(b"A_-.=+/!~0");
        out.push(String::from_utf8_lossy(&b).into_owned());
    }
    // Signed, with claims of the wrong types, deep nesting, odd unicode and huge values.
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    let hostile_claims = [
        json!({"exp": "tomorrow"}),
        json!({"exp": 1e300}),
        json!({"exp": -1}),
        json!({"exp": null}),
        json!({"aud": 7}),
        json!({"aud": [[], {}, null]}),
        json!({"iss": ["https://hs.test"]}),
        json!({"nbf": "now"}),
        json!({"nbf": 9_999_999_999i64}),
        json!({"permissions": "read"}),
        json!({"permissions": [1, 2, {"read": true}]}),
        json!({"permissions": null, "level": "high"}),
        json!({"level": 1e308, "permissions": ["read"], "sub": 5}),
        json!({"level": u64::MAX, "permissions": ["read"], "sub": "u\u{0000}x"}),
        json!({"sub": "u\u{202e}evil\u{1F600}", "level": 3, "permissions": ["read"]}),
        json!({"deep": deep.clone(), "permissions": ["read"], "level": 1, "sub": "u"}),
        json!({"big": "x".repeat(9000)}),
        json!({"permissions": (0..2000).map(|i| format!("p{i}")).collect::<Vec<_>>()}),
    ];
    for extra in hostile_claims {
        out.push(hs(&claims("https://hs.test", extra)));
    }
    // Valid JSON, not a JWT; a JWT with hostile headers.
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"NoNe","typ":"JWT"}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","kid":"../../etc/passwd"}"#,
        r#"{"alg":"RS256","jku":"http://evil.test/jwks"}"#,
        r#"{"alg":"HS256","kid":{"nested":true}}"#,
        r#"{"alg":"ES256"}"#,
        r#"[1,2,3]"#,
        r#"{"alg":"HS256""#,
        "\u{FEFF}{\"alg\":\"HS256\"}",
    ] {
        out.push(format!(
            "{}.{}.{}",
            b64(header),
            b64(r#"{"sub":"u"}"#),
            b64("sig")
        ));
    }
    for junk in [
        "a.b.c",
        "....",
        "a..c",
        "=.=.=",
        "eyJ.eyJ.eyJ",
        "%00.%00.%00",
        "a.b.c.d.e",
    ] {
        out.push(junk.to_string());
    }
    out.push("a".repeat(20_000));
    out
}

/// Raw requests: the request line, headers and framing themselves are hostile.
fn hostile_requests(rng: &mut Lcg, host: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let paths = [
        "/api/x",
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2F..%2Fadmin",
        "/api//x",
        "/api/./x",
        "/api/x;jsessionid=1",
        "/api/%00",
        "/api/%C0%AF",
        "/api/%ZZ",
        "/api/\\x",
        "/api/x%",
        "/api/\u{00e9}",
        "*",
        "http://other.test/api/x",
        "/api/x?a=%00&b=\u{1F600}",
        "/body",
        "http://a/api/x",
        "HTTP://A:80/api/../x",
        "https://a/api/x#frag",
        "ftp://a/api/x",
        "foo:bar://a/api/x",
        "http://u@a/api/x",
        "http:///api/x",
        "a:443",
        "api/x",
        "/api/x#/../admin",
    ];
    let framing = [
        "",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "X-Folded: a\r\n b\r\n",
        "Host: second.test\r\n",
        "Expect: 100-continue\r\nContent-Length: 3\r\n",
        "Content-Type: application/json\r\nContent-Length: 8\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,6\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Host: a, b\r\n",
        "X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\n",
        "Forwarded: host=admin.test\r\nX-Forwarded-Host: admin.test\r\n",
    ];
    let bodies = [
        "",
        "hello",
        "0\r\n\r\n",
        "zz\r\nxx\r\n",
        "{\"amount\":",
        "{\"amount\":5}",
        "{\"amount\":5,\"amount\":5}",
        "{\"amount\":18446744073709551616}",
    ];
    let methods = [
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "BREW", "get", "G ET",
    ];
    for _ in 0..400 {
        let method = rng.pick(&methods);
        let path = rng.pick(&paths);
        let frame = rng.pick(&framing);
        let body = rng.pick(&bodies);
        let auth = match rng.next() % 3 {
            0 => String::new(),
            1 => format!(
                "Authorization: Bearer {}\r\n",
                hs(&claims(
                    "https://hs.test",
                    json!({"sub": "u1", "level": 2, "permissions": ["read"]})
                ))
            ),
            _ => "Authorization: Basic Zm9vOmJhcg==\r\nAuthorization: Bearer a.b.c\r\n".into(),
        };
        out.push(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{frame}Connection: close\r\n\r\n{body}")
                .into_bytes(),
        );
    }
    // Hosts that are not `host[:port]`.
    for bad in [
        "a b", "a:1:2", "a,b", "u@a", "", "a:", "%61", "[::1]x", "a\tb", "a..b",
    ] {
        out.push(
            format!("GET /api/x HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n").into_bytes(),
        );
    }
    // Broken request lines and header sections.
    let broken: [&[u8]; 12] = [
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\n: empty-name\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nX: \xff\xfe\r\n\r\n",
        b"GET /api/x HTTP/1.1\nHost: a\n\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xc3\x28.x.y\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a.\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    ];
    for b in broken {
        out.push(b.to_vec());
    }
    // Oversized header sections: one huge header, many headers.
    out.push(
        format!(
            "GET /api/x HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(200_000)
        )
        .into_bytes(),
    );
    let many: String = (0..400).map(|i| format!("X-H{i}: v\r\n")).collect();
    out.push(
        format!("GET /api/x HTTP/1.1\r\nHost: {host}\r\n{many}Connection: close\r\n\r\n")
            .into_bytes(),
    );
    out
}

/// Sends one raw request and returns the status code of the answer, if one came. The write
/// side is closed after the request, so a request that promised more bytes than it sent ends
/// instead of waiting for the gateway's read timeout (Pingora takes a client's half-close for a
/// client that left, so an allowed request sent this way may get no answer; that is counted).
fn send_raw(addr: &str, bytes: &[u8]) -> Option<Answer> {
    send(addr, bytes, true)
}

/// An answer's status, and whether its body is claimgate's JSON (every refusal must be).
type Answer = (u16, bool);

fn send(addr: &str, bytes: &[u8], half_close: bool) -> Option<Answer> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let json = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
            && serde_json::from_str::<Value>(body).is_ok_and(|v| v["reason"].is_string())
    });
    Some((status, json))
}

#[test]
fn a_thousand_hostile_inputs_get_no_5xx_and_the_gateway_survives() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("api.toml", RULES)]);
    let addr = gw.proxy.to_string();
    let mut rng = Lcg(0x5eed);

    let mut sent = 0usize;
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    let mut five_xx = Vec::new();
    let mut not_json = Vec::new();
    let mut check = |what: String, answer: Option<Answer>| {
        sent += 1;
        let status = answer.map(|a| a.0);
        let key = status.map_or("no answer".to_string(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
        if status.is_some_and(|s| s >= 500) {
            five_xx.push(what.clone());
        }
        // The upstream answers 200; every 4xx is a refusal and must say why, as JSON.
        if answer.is_some_and(|(s, json)| (400..500).contains(&s) && !json) {
            not_json.push(what);
        }
    };

    for token in hostile_tokens(&mut rng) {
        for path in ["/api/x", "/api/deep/path"] {
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            );
            let status = send_raw(&addr, req.as_bytes());
            check(format!("token {:.60}", token), status);
        }
        // The body is 12 bytes: declared as 12, and as 13 (the client then closes early).
        for declared in [12, 13] {
            let req = format!(
                "POST /body HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n{{\"amount\":7}}"
            );
            check(
                format!("body ({declared}) token {:.60}", token),
                send_raw(&addr, req.as_bytes()),
            );
        }
    }
    for req in hostile_requests(&mut rng, "a") {
        let status = send_raw(&addr, &req);
        check(format!("{:.80}", String::from_utf8_lossy(&req)), status);
    }
    // Hostile JSON bodies on the body route, with a valid token.
    let t = hs(&claims("https://hs.test", json!({"sub": "u1"})));
    let bodies = [
        "{\"amount\": 1e999}".to_string(),
        "{\"amount\": \"7\"}".to_string(),
        "[".repeat(3000),
        format!("{{\"amount\": 1, \"x\": \"{}\"}}", "\u{FFFF}".repeat(100)),
        "\u{FEFF}{\"amount\":1}".to_string(),
        "{\"amount\":1,\"amount\":500}".to_string(),
        "x".repeat(5000),
        "null".to_string(),
    ];
    for _ in 0..10 {
        for b in &bodies {
            let req = format!(
                "POST /body HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
            check(format!("body {:.40}", b), send_raw(&addr, req.as_bytes()));
        }
    }

    assert!(sent >= 1000, "only {sent} hostile inputs");
    assert!(
        not_json.is_empty(),
        "{} refusals without a JSON body, e.g. {:?}",
        not_json.len(),
        &not_json[..not_json.len().min(5)]
    );
    assert!(
        five_xx.is_empty(),
        "{} answers were 5xx, e.g. {:?}; all statuses: {statuses:?}",
        five_xx.len(),
        &five_xx[..five_xx.len().min(5)]
    );
    // The process is alive and serves a valid request.
    let ok = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"]}),
    ));
    let req = format!(
        "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ok}\r\nConnection: close\r\n\r\n"
    );
    let last = send(&addr, req.as_bytes(), false);
    let logs = gw.logs();
    let tail: Vec<&str> = logs.lines().rev().take(8).collect();
    assert_eq!(
        last.map(|a| a.0),
        Some(200),
        "{statuses:?}\nlast log lines: {tail:#?}"
    );
    assert!(!gw.logs().to_lowercase().contains("panicked"));
    eprintln!("hostile inputs: {sent}, statuses: {statuses:?}");
}

#[test]
fn a_body_cut_short_is_a_400_not_a_502() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("api.toml", RULES)]);
    let t = hs(&claims("https://hs.test", json!({"sub": "u1"})));
    let req = format!(
        "POST /body HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"amount\":7}}"
    );
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"reason\":\"incomplete_body\""), "{out}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn header_limits_answer_431_with_json() {
    let (up, gw) = start_standard(
        "[limits]\nmax_headers = 20\nmax_header_bytes = 2048\n",
        &[("api.toml", RULES)],
    );
    let t = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"]}),
    ));
    let mut many = client().get(gw.url("/api/x")).bearer_auth(&t);
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let r = many.send().await.unwrap();
    assert_eq!(r.status(), 431);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "headers_too_large");
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&t)
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 1);
    assert_eq!(unmatched_denials(&gw, "headers_too_large").await, Some(2.0));
}

#[tokio::test]
async fn claims_nested_deeper_than_the_limit_are_refused() {
    let (_up, gw) = start_standard("[limits]\nmax_claims_depth = 4\n", &[("api.toml", RULES)]);
    let shallow = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"], "a": {"b": {"c": 1}}}),
    ));
    let deep = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"], "a": {"b": {"c": {"d": {"e": 1}}}}}),
    ));
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&shallow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "claims_too_deep");
}

/// Requests refused before any route was chosen, for one reason.
async fn unmatched_denials(gw: &Gateway, reason: &str) -> Option<f64> {
    metric_value(
        &gw.metrics().await,
        "claimgate_denials_total",
        &[("route", "_unmatched"), ("rule", ""), ("reason", reason)],
    )
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from a kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return String::from_utf8_lossy(&buf).into_owned(),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn a_request_head_sent_a_little_at_a_time_is_cut_off_with_408() {
    let (up, gw) = start_standard(
        "[limits]\nrequest_head_timeout_ms = 800\n",
        &[("api.toml", RULES)],
    );
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let started = std::time::Instant::now();
    // Each piece arrives well inside Pingora's per-read timeout; only the whole-head deadline
    // can stop this.
    let drip = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n");
        for i in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            if writer
                .write_all(format!("x-h{i}: v\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let took = started.elapsed();
    drip.join().unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"reason\":\"request_head_timeout\""), "{out}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(3000),
        "cut off after {took:?}"
    );
    assert_eq!(
        unmatched_denials(&gw, "request_head_timeout").await,
        Some(1.0)
    );

    // Part of a head, then silence: only the deadline's timer can wake the connection now.
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let took = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(3000),
        "cut off after {took:?}"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        unmatched_denials(&gw, "request_head_timeout").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn the_head_deadline_spares_slow_bodies_and_idle_keepalive_connections() {
    let (up, gw) = start_standard(
        "[limits]\nrequest_head_timeout_ms = 800\n",
        &[("api.toml", RULES)],
    );
    let t = hs(&claims(
        "https://hs.test",
        json!({"sub": "u1", "level": 2, "permissions": ["read"]}),
    ));
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A body streamed to the upstream over 1.5 s: the body is not the head.
    s.write_all(
        format!("POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Length: 10\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(b"ab").unwrap();
    }
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // A denied request, then the connection sits idle for longer than the head deadline: the
    // next request is served (waiting for a request is the keepalive timeout's business).
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let second = read_response(&mut s);
    assert!(second.starts_with("HTTP/1.1 401"), "{second}");
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(
        format!("GET /api/y HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let third = read_response(&mut s);
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn claims_larger_than_their_limit_are_refused_before_verification() {
    let (up, gw) = start_standard(
        "[limits]\nmax_token_bytes = 65536\nmax_claims_bytes = 1024\n",
        &[("api.toml", RULES)],
    );
    let base = json!({"sub": "u1", "level": 2, "permissions": ["read"]});
    let small = hs(&claims("https://hs.test", base.clone()));
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut big = base;
    big["padding"] = json!("p".repeat(2000));
    let big = hs(&claims("https://hs.test", big));
    assert!(big.len() < 65536);
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "claims_too_large");
    assert_eq!(up.count(), 1);
}
