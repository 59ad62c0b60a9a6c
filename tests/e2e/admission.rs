//! Each way around a rule that admission closes, end to end: absolute-form targets, method
//! fall-through across hosts, wildcard boundaries, targets that are not origin-form, spoofed
//! identity and edge headers, malformed hosts, ambiguous JSON bodies, list values in headers,
//! framing, and offline tools that must answer as the proxy does. The differential property
//! test in `guarantee.rs` covers the same classes at random; these name them one by one.

use super::harness::*;
use super::tokens::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const RULES: &str = r#"
[[route]]
name = "open"
path = "/*"
auth = "none"

[[route]]
name = "admin"
host = "admin.test"
path = "/admin/*"
methods = ["GET"]
issuers = ["hs"]
  [route.forward]
  "x-user" = "claims.sub"

[[route]]
name = "api"
path = "/api/pay"
methods = ["POST"]
issuers = ["hs"]
body_limit = 64
  [[route.rule]]
  name = "small"
  allow_if = "body.amount <= 100"
  [route.forward]
  "x-user" = "claims.sub"
  "x-groups" = "has(claims.groups) ? claims.groups : null"
  "x-name" = "has(claims.name) ? claims.name : null"
"#;

/// One raw exchange on a new connection: status, head and body of the answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| format!("<not JSON: {body:?}>"),
        |v| v["reason"].as_str().unwrap_or("").to_string(),
    )
}

fn admin_token() -> String {
    token(Algorithm::HS256, json!({"sub": "alice"}))
}

fn start() -> (Upstream, Gateway) {
    start_standard("", &[("routes.toml", RULES)])
}

#[test]
fn absolute_form_targets_are_decided_on_their_authority() {
    let (up, gw) = start();
    // The target names the protected host: decided as that host, with or without Host.
    for host in ["", "Host: admin.test\r\n"] {
        let req =
            format!("GET http://admin.test/admin/x HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let (status, _, body) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(
            (status, reason(&body).as_str()),
            (401, "missing_token"),
            "{host}"
        );
    }
    // A Host header naming another host than the target: refused, whichever is protected.
    for (target, host) in [("admin.test", "other.test"), ("other.test", "admin.test")] {
        let req = format!(
            "GET http://{target}/admin/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let (status, head, _) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(status, 400, "{target} {host}");
        assert!(head.contains("content-type: application/json"), "{head}");
    }
    let req = format!(
        "GET http://Admin.Test:80/admin/x?q=1 HTTP/1.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        admin_token()
    );
    let (status, _, _) = exchange(gw.proxy, req.as_bytes());
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/admin/x?q=1", "the upstream gets origin-form");
    assert_eq!(seen.headers["host"], "admin.test:80");
    assert_eq!(seen.headers["x-user"], "alice");
    // The open host through an absolute-form target: decided and sent as the open host.
    let req =
        "GET http://other.test/admin/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n";
    let (status, _, _) = exchange(gw.proxy, req.as_bytes());
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["host"], "other.test");
    assert_eq!(seen.uri, "/admin/x");
    assert_eq!(up.count(), 2);
}

#[test]
fn a_host_with_its_own_routes_is_decided_by_them_alone() {
    let (up, gw) = start();
    for method in ["POST", "DELETE", "PUT", "PATCH"] {
        let req = format!(
            "{method} /admin/users HTTP/1.1\r\nHost: admin.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, head, body) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(status, 405, "{method}");
        assert!(head.contains("\r\nallow: get"), "{head}");
        assert_eq!(reason(&body), "method_not_allowed");
    }
    // A path the host's routes do not serve is unmatched, not the open catch-all's.
    let (status, _, body) = exchange(
        gw.proxy,
        b"GET /public HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, reason(&body).as_str()), (404, "no_route"));
    // Methods are case-sensitive: `get` is neither GET nor let through.
    let (status, _, body) = exchange(
        gw.proxy,
        b"get /admin/x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, reason(&body).as_str()), (400, "bad_method"));
    assert_eq!(up.count(), 0);
}

#[test]
fn wildcards_cover_their_boundaries() {
    let (up, gw) = start();
    for path in ["/admin", "/admin/", "/admin/x", "/%61dmin/"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n");
        let (status, _, body) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(
            (status, reason(&body).as_str()),
            (401, "missing_token"),
            "{path}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn targets_that_are_not_origin_form_are_refused() {
    let (up, gw) = start();
    // Refused by claimgate (`bad_target`) or, where it never reaches a hook, by the HTTP
    // layer (`malformed_request`); either way a JSON 400 and nothing forwarded.
    for (target, host) in [
        ("admin/x", "admin.test"),
        ("ftp://admin.test/admin/x", "admin.test"),
        ("foo:bar://admin.test/admin/x", "admin.test"),
        ("http://u@admin.test/admin/x", "u@admin.test"),
        ("*", "admin.test"),
        ("http:///admin/x", "admin.test"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, head, body) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(status, 400, "{target}");
        assert!(head.contains("content-type: application/json"), "{target}");
        let why = reason(&body);
        assert!(
            why == "bad_target" || why == "malformed_request",
            "{target}: {why}"
        );
    }
    // `OPTIONS *` is a valid target that no route serves.
    let (status, _, body) = exchange(
        gw.proxy,
        b"OPTIONS * HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, reason(&body).as_str()), (404, "no_route"));
    // CONNECT never reaches a hook; its answer is still claimgate's JSON.
    let (status, head, body) = exchange(
        gw.proxy,
        b"CONNECT admin.test:443 HTTP/1.1\r\nHost: admin.test:443\r\n\r\n",
    );
    assert_eq!(status, 405);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(reason(&body), "method_not_allowed");
    // An upgrade to h2c would carry undecided HTTP/2 requests inside the tunnel (h2c
    // smuggling): refused on every route, open ones included, token or not.
    for upgrade in ["h2c", "H2C", "websocket, h2c", "TLS/1.2"] {
        let req = format!(
            "GET /open/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        let (status, _, body) = exchange(gw.proxy, req.as_bytes());
        assert_eq!(
            (status, reason(&body).as_str()),
            (400, "bad_framing"),
            "{upgrade}: {body}"
        );
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn malformed_hosts_are_refused_and_http10_may_omit_host() {
    let (up, gw) = start();
    for host in [
        "admin.test, other.test",
        "admin.test:1:2",
        "admin .test",
        "admin.test:",
        "%61dmin.test",
        "u@admin.test",
        "",
        "[::1",
    ] {
        let req = format!("GET /admin/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, _, body) = exchange(gw.proxy, req.as_bytes());
        let why = reason(&body);
        assert_eq!(status, 400, "{host:?}");
        // Refused by claimgate, or before any hook by the HTTP layer (`u@`): JSON either way.
        assert!(
            why == "bad_host" || why == "malformed_request",
            "{host:?}: {why}"
        );
    }
    let (status, _, body) = exchange(
        gw.proxy,
        b"GET /admin/x HTTP/1.1\r\nHost: admin.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = exchange(
        gw.proxy,
        b"GET /admin/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, reason(&body).as_str()), (400, "bad_host"));
    // HTTP/1.0 without Host, where some routes are for specific hosts: the upstream might
    // pick one of those as its default, so it is refused.
    let (status, _, body) = exchange(gw.proxy, b"GET /admin/x HTTP/1.0\r\n\r\n");
    assert_eq!((status, reason(&body).as_str()), (400, "bad_host"));
    assert_eq!(up.count(), 0);
    // Without host-specific routes, HTTP/1.0 may omit Host.
    let (up, gw) = start_standard(
        "",
        &[(
            "open.toml",
            "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n",
        )],
    );
    let (status, _, _) = exchange(gw.proxy, b"GET /admin/x HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn identity_and_edge_headers_are_stripped_on_every_route() {
    let extra = r#"
[network]
strip_headers = ["X-Internal-Role"]

[geo]
country_header = "CF-IPCountry"
"#;
    let (up, gw) = start_standard(extra, &[("routes.toml", RULES)]);
    let resp = client()
        .get(gw.url("/anything"))
        .header("x-user", "mallory")
        .header("x-groups", "admins")
        .header("x-internal-role", "root")
        .header("cf-ipcountry", "US")
        .header("x-http-method-override", "DELETE")
        .header("x-original-url", "/admin/x")
        .header("x-forwarded-host", "admin.test")
        .header("forwarded", "host=admin.test")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-ssl", "on")
        .header("true-client-ip", "10.0.0.1")
        .header("x-original-uri", "/admin/x")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    for h in [
        "x-user",
        "x-groups",
        "x-internal-role",
        "cf-ipcountry",
        "x-http-method-override",
        "x-original-url",
        "x-forwarded-host",
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-ssl",
        "true-client-ip",
        "x-original-uri",
    ] {
        assert!(
            seen.headers.get(h).is_none(),
            "{h} reached the upstream on an open route"
        );
    }
    assert_eq!(seen.headers["x-kept"], "yes");

    // From a trusted proxy the edge header is its to set, and passes.
    let extra = r#"
[network]
trusted_proxies = ["127.0.0.1"]

[geo]
country_header = "CF-IPCountry"
"#;
    let (up, gw) = start_standard(extra, &[("routes.toml", RULES)]);
    let resp = client()
        .get(gw.url("/anything"))
        .header("cf-ipcountry", "DE")
        .header("x-forwarded-host", "edge.example")
        .header("x-original-url", "/admin/x")
        .header("x-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["cf-ipcountry"], "DE");
    assert_eq!(seen.headers["x-forwarded-host"], "edge.example");
    assert!(seen.headers.get("x-user").is_none());
    assert!(
        seen.headers.get("x-original-url").is_none(),
        "not even a trusted proxy rewrites the path"
    );
}

async fn pay(gw: &Gateway, t: &str, body: &'static str) -> (u16, String) {
    let r = client()
        .post(gw.url("/api/pay"))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, reason(&r.text().await.unwrap()))
}

#[tokio::test]
async fn json_bodies_that_parsers_read_differently_are_refused() {
    let (up, gw) = start();
    let t = admin_token();
    assert_eq!(pay(&gw, &t, r#"{"amount":5}"#).await.0, 200);
    for body in [
        r#"{"amount":5,"amount":5000}"#,
        r#"{"amount":5000,"amount":5}"#,
        r#"{"amount":5,"x":{"a":1,"a":2}}"#,
        r#"{"amount":18446744073709551616}"#,
        r#"{"amount":-1e300}"#,
    ] {
        assert_eq!(
            pay(&gw, &t, body).await,
            (400, "bad_body".to_string()),
            "{body}"
        );
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn list_values_are_forwarded_as_json_and_never_trimmed() {
    let (up, gw) = start();
    let t = token(
        Algorithm::HS256,
        json!({"sub": "alice", "groups": ["a,b", "c"], "name": "Alice"}),
    );
    assert_eq!(pay(&gw, &t, r#"{"amount":5}"#).await.0, 200);
    let seen = up.last();
    let groups: Vec<String> = serde_json::from_slice(seen.headers["x-groups"].as_bytes()).unwrap();
    assert_eq!(groups, ["a,b", "c"], "the upstream recovers every element");
    assert_eq!(seen.headers["x-name"], "Alice");
    // A value HTTP would trim is not forwarded as another value: the request is denied.
    let t = token(Algorithm::HS256, json!({"sub": "alice", "name": " Alice "}));
    assert_eq!(
        pay(&gw, &t, r#"{"amount":5}"#).await,
        (403, "policy_error".to_string())
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn framing_ends_as_the_client_s_failure_and_is_counted_under_the_route() {
    let extra = "[limits]\nclient_body_timeout_ms = 300\n";
    let (up, gw) = start_standard(extra, &[("routes.toml", RULES)]);
    // A chunked body on a streaming route that stops mid-chunk: 408, not a 502 after the
    // upstream's read timeout, and no upstream error counted.
    let started = std::time::Instant::now();
    let (status, head, body) = exchange(
        gw.proxy,
        b"POST /upload HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    );
    assert_eq!(
        (status, reason(&body).as_str()),
        (408, "incomplete_body"),
        "{head}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "claimgate_upstream_responses_total",
            &[("route", "open"), ("class", "error")]
        )
        .unwrap_or(0.0),
        0.0,
        "a stalled client is not an upstream error"
    );
    // A malformed chunk on a streaming route: the client's error, answered as such.
    let (status, head, body) = exchange(
        gw.proxy,
        b"POST /upload HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
    );
    assert_eq!(status, 400, "{head}{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    // A Content-Length list of equal values reaches the upstream as one value.
    let (status, _, _) = exchange(
        gw.proxy,
        b"POST /upload HTTP/1.1\r\nHost: other.test\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200);
    // The stalled request above may be recorded by the upstream after this one: find it.
    let seen = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.body == b"hello")
        .cloned()
        .expect("the upstream saw the request");
    let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"]);
    // A body the rules read that stops arriving is counted under its route once known.
    let req = format!(
        "POST /api/pay HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{{\"amount\"",
        admin_token()
    );
    let (status, _, body) = exchange(gw.proxy, req.as_bytes());
    assert_eq!((status, reason(&body).as_str()), (408, "incomplete_body"));
    // Declared larger than the route's limit: 413 before reading, under the route.
    let req = format!(
        "POST /api/pay HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        admin_token()
    );
    let (status, _, body) = exchange(gw.proxy, req.as_bytes());
    assert_eq!((status, reason(&body).as_str()), (413, "body_too_large"));
    let metrics = gw.metrics().await;
    for r in ["incomplete_body", "body_too_large"] {
        assert_eq!(
            metric_value(
                &metrics,
                "claimgate_denials_total",
                &[("route", "api"), ("rule", ""), ("reason", r)]
            ),
            Some(1.0),
            "{r}"
        );
    }
}

#[test]
fn pingora_s_own_refusals_are_json_answers() {
    let (up, gw) = start();
    let (status, head, body) = exchange(
        gw.proxy,
        b"GET /x HTTP/1.1\r\nHost: other.test\r\nBad Header Line\r\n\r\n",
    );
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(reason(&body), "malformed_request");
    let (status, _, body) = exchange(
        gw.proxy,
        b"POST /x HTTP/1.1\r\nHost: other.test\r\nContent-Length: 5, 6\r\n\r\nhello",
    );
    assert_eq!((status, reason(&body).as_str()), (400, "malformed_request"));
    assert_eq!(up.count(), 0);
}

/// `claimgate eval --json` status for a request.
fn eval_status(dir: &std::path::Path, args: &[&str]) -> (u16, String) {
    let out = binary()
        .arg("eval")
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (
        v["status"].as_u64().unwrap() as u16,
        v["reason"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn eval_and_test_answer_as_the_proxy_does() {
    let (_up, gw) = start();
    let t = admin_token();
    let big = format!("{{\"amount\":1,\"pad\":\"{}\"}}", "x".repeat(80));
    // (method, target, host, body) -> the proxy's answer and eval's must agree.
    let cases: Vec<(&str, &str, &str, Option<&str>)> = vec![
        ("POST", "/api/pay", "other.test", Some(big.as_str())),
        (
            "POST",
            "/api/pay",
            "other.test",
            Some(r#"{"amount":1,"amount":1000}"#),
        ),
        ("POST", "/api/pay", "other.test", Some(r#"{"amount":1}"#)),
        ("GET", "admin/x", "other.test", None),
        ("GET", "http://admin.test/admin", "other.test", None),
        ("GET", "/admin/x", "admin .test", None),
        ("DELETE", "/admin/x", "admin.test", None),
        ("GET", "/admin", "admin.test", None),
        ("GET", "/x/../admin", "admin.test", None),
        ("get", "/x", "other.test", None),
    ];
    for (method, target, host, body) in cases {
        let body_part = body.unwrap_or("");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body_part}",
            body_part.len()
        );
        let (proxy_status, _, _) = exchange(gw.proxy, req.as_bytes());
        let mut args = vec!["-X", method, "--host", host, "--token", &t];
        if let Some(b) = body {
            args.extend(["--body", b]);
        }
        args.push(target);
        let (status, _) = eval_status(gw.dir(), &args);
        assert_eq!(status, proxy_status, "{method} {target} Host {host}");
    }

    // A policy test expecting the proxy's 413 passes.
    let tests = gw.dir().join("rules/tests");
    std::fs::create_dir_all(&tests).unwrap();
    std::fs::write(
        tests.join("limits.toml"),
        format!(
            r#"
[[case]]
name = "a body over the route's limit"
method = "POST"
host = "other.test"
path = "/api/pay"
claims = {{ sub = "alice" }}
body_text = '{big}'
expect = {{ status = 413, reason = "body_too_large" }}

[[case]]
name = "a duplicate key"
method = "POST"
host = "other.test"
path = "/api/pay"
claims = {{ sub = "alice" }}
headers = {{ content-type = "application/json" }}
body_text = '{{"amount":1,"amount":1000}}'
expect = {{ status = 400, reason = "bad_body" }}

[[case]]
name = "exact bytes are sent as written: no type, no JSON"
method = "POST"
host = "other.test"
path = "/api/pay"
claims = {{ sub = "alice" }}
body_text = '{{"amount":1}}'
expect = {{ status = 415, reason = "unsupported_media_type" }}

[[case]]
name = "a body shorter than its declared length never arrives whole"
method = "POST"
host = "other.test"
path = "/api/pay"
claims = {{ sub = "alice" }}
headers = {{ content-type = "application/json", content-length = "20" }}
body_text = '{{"amount":1}}'
expect = {{ status = 400, reason = "incomplete_body" }}

[[case]]
name = "given claims are held to the token's checks: expired"
method = "POST"
host = "other.test"
path = "/api/pay"
claims = {{ sub = "alice", exp = 1 }}
body = {{ amount = 1 }}
expect = {{ status = 401, reason = "token_expired" }}
"#
        ),
    )
    .unwrap();
    let (code, out) = policy_tests(&gw.dir().join("gateway.toml"));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_warns_when_a_weaker_route_serves_a_protected_boundary() {
    let rules = r#"
[[route]]
name = "open"
path = "/*"
auth = "none"

[[route]]
name = "admin"
path = "/admin"
issuers = ["hs"]

[[route]]
name = "users"
path = "/users/{id}"
issuers = ["hs"]
"#;
    let up = Upstream::start();
    let (dir, _, _) = write_setup(&standard_config(up.addr), &[("routes.toml", rules)]);
    let out = binary()
        .args(["check", "--deny-warnings", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for needle in [
        "`GET /admin/`",
        "`GET /users`",
        "`GET /users/`",
        "route `open`",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    assert!(
        text.contains("routes.toml:4:"),
        "the warning points at the weaker route's path:\n{text}"
    );
}

#[tokio::test]
async fn parser_differentials_found_in_review_are_closed() {
    let rules = r#"
[[route]]
name = "open"
path = "/*"
auth = "none"

[[route]]
name = "batch-delete"
path = "/v1/users:batchDelete"
issuers = ["hs"]
  [route.forward]
  "x-user" = "claims.sub"

[[route]]
name = "admin"
path = "/admin/*"
issuers = ["hs"]

[[route]]
name = "pay"
path = "/pay"
methods = ["POST"]
auth = "none"
  [[route.rule]]
  name = "small"
  allow_if = "body.amount <= 100"
"#;
    let (up, gw) = start_standard("", &[("routes.toml", rules)]);
    let send = |req: String| exchange(gw.proxy, req.as_bytes());
    // An escaped `:` is the same path to servers that decode before routing.
    let (status, _, body) =
        send("GET /v1/users%3AbatchDelete HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into());
    assert_eq!((status, reason(&body).as_str()), (401, "missing_token"));
    // Upper case that a case-insensitive upstream would route to the protected path.
    let (status, _, body) =
        send("GET /ADMIN/users HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into());
    assert_eq!((status, reason(&body).as_str()), (400, "bad_path"));
    // Upper case that changes nothing is served.
    let (status, _, _) =
        send("GET /Docs/Intro HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into());
    assert_eq!(status, 200);
    // Keys equal when case is folded; several Content-Type headers.
    for (body, types) in [
        (
            r#"{"amount":1,"AMOUNT":1000000}"#,
            "Content-Type: application/json\r\n",
        ),
        (
            r#"{"amount":1}"#,
            "Content-Type: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        ),
    ] {
        let (status, _, answer) = send(format!(
            "POST /pay HTTP/1.1\r\nHost: a\r\n{types}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        assert_eq!(
            (status, reason(&answer).as_str()),
            (400, "bad_body"),
            "{body}"
        );
    }
    // A Connection header naming a header would have it removed after the decision.
    let (status, _, body) = send(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close, x-tenant\r\nX-Tenant: t\r\n\r\n".into(),
    );
    assert_eq!((status, reason(&body).as_str()), (400, "bad_framing"));
    assert_eq!(up.count(), 1);
    // CGI spellings of stripped headers, and a forged X-Forwarded-For, do not pass.
    let (status, _, _) = send(
        "GET /x HTTP/1.1\r\nHost: a\r\nx_user: mallory\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n\r\n"
            .into(),
    );
    assert_eq!(status, 200);
    let seen = up.last();
    assert!(seen.headers.get("x_user").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[test]
fn headers_and_query_parameters_the_rules_read_must_be_one_value_to_every_reader() {
    let rules = r#"
[[route]]
name = "tenants"
path = "/t/*"
auth = "none"
  [[route.rule]]
  name = "not-the-admin-tenant"
  deny_if = "'x-tenant' in request.headers && request.headers['x-tenant'] == 'admin'"

[[route]]
name = "statements"
path = "/statements"
auth = "none"
  [[route.rule]]
  name = "not-the-victim"
  deny_if = "has(request.query.account) && request.query.account == 'victim'"

[[route]]
name = "internal"
path = "/internal/*"
auth = "none"
  [[route.rule]]
  name = "from-the-office"
  allow_if = "'x-real-ip' in request.headers && request.headers['x-real-ip'] == '10.0.0.1'"

[[route]]
name = "all-headers"
path = "/all/*"
auth = "none"
  [[route.rule]]
  name = "few"
  allow_if = "size(request.headers) < 40"

[[route]]
name = "open"
path = "/*"
auth = "none"
"#;
    let (up, gw) = start_standard("", &[("routes.toml", rules)]);
    let send = |path: &str, headers: &str| {
        exchange(
            gw.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // One line: decided on its value.
    assert_eq!(send("/t/x", "X-Tenant: admin\r\n").0, 403);
    assert_eq!(send("/t/x", "X-Tenant: z\r\n").0, 200);
    assert_eq!(up.count(), 1);
    // Two lines: the rule would see `admin, z` (not denied) where Go reads `admin`; an `_`
    // spelling: the rule would see no `x-tenant` where PHP reads HTTP_X_TENANT = admin.
    for headers in [
        "X-Tenant: admin\r\nX-Tenant: z\r\n",
        "X-Tenant: z\r\nX-Tenant: admin\r\n",
        "X_Tenant: admin\r\n",
        "X-Tenant: z\r\nx_tenant: admin\r\n",
    ] {
        let (status, _, body) = send("/t/x", headers);
        assert_eq!(
            (status, reason(&body).as_str()),
            (400, "ambiguous_header"),
            "{headers:?}"
        );
    }
    // Headers the rules do not read pass as sent, repeated or not; so do cookies.
    assert_eq!(
        send(
            "/t/x",
            "Accept: a/b\r\nAccept: c/d\r\nX_Other: 1\r\nCookie: a=1\r\nCookie: b=2\r\n"
        )
        .0,
        200
    );
    // A route that reads every header: any repeated line or `_` name is refused.
    assert_eq!(send("/all/x", "Accept: a/b\r\n").0, 200);
    assert_eq!(send("/all/x", "Accept: a/b\r\nAccept: c/d\r\n").0, 400);
    assert_eq!(send("/all/x", "X_Other: 1\r\n").0, 400);
    // Routes that read no header are untouched.
    assert_eq!(
        send("/x", "X-Tenant: admin\r\nX-Tenant: z\r\nX_Tenant: q\r\n").0,
        200
    );
    assert_eq!(up.count(), 4);
    // Cookies in several lines reach the upstream as one, as the rules see them.
    assert_eq!(send("/x", "Cookie: a=1\r\nCookie: b=2\r\n").0, 200);
    assert_eq!(up.last().headers["cookie"], "a=1; b=2");
    assert_eq!(up.count(), 5);
    // The same for query parameters: the rules read the first of two values, PHP, Rails and
    // Django the last; PHP reads `account[]` as `account`.
    assert_eq!(send("/statements?account=victim", "").0, 403);
    assert_eq!(send("/statements?account=mine&x=1&x=2", "").0, 200);
    for query in [
        "account=mine&account=victim",
        "account[]=victim",
        "account=mine&account%5B%5D=victim",
        "account=mine&account%00=victim",
        "account=mine&[account]=victim",
    ] {
        let (status, _, body) = send(&format!("/statements?{query}"), "");
        assert_eq!(
            (status, reason(&body).as_str()),
            (400, "ambiguous_query"),
            "{query}"
        );
    }
    assert_eq!(up.count(), 6);
    // The rules see the headers the upstream is sent: an edge header from a peer that is not
    // a trusted proxy is removed before the upstream sees it, and the rules do not see it
    // either (else a client would pass a rule on its own copy).
    assert_eq!(send("/internal/x", "X-Real-IP: 10.0.0.1\r\n").0, 403);
    assert_eq!(up.count(), 6);
    let (up, gw) = start_standard(
        "[network]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        &[("routes.toml", rules)],
    );
    let (status, _, _) = exchange(
        gw.proxy,
        b"GET /internal/x HTTP/1.1\r\nHost: a\r\nX-Real-IP: 10.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(up.last().headers["x-real-ip"], "10.0.0.1");
}

/// Go's `FormValue`, PHP's `$_REQUEST`, Rails' `params` and ASP.NET's model binding read a query
/// parameter from the body too, most of them over the query's value: on a route whose rules
/// read a query parameter, a form, multipart or JSON body that carries it is refused, and any
/// other body passes untouched.
#[test]
fn a_body_field_is_a_query_parameter_to_some_upstreams() {
    let rules = r#"
[[route]]
name = "statements"
path = "/statements"
auth = "none"
body_limit = 1024
  [[route.rule]]
  name = "not-the-victim"
  deny_if = "!has(request.query.account) || request.query.account == 'victim'"

[[route]]
name = "transfers"
path = "/transfers"
auth = "none"
  [[route.rule]]
  name = "small-for-the-victim"
  deny_if = "has(request.query.account) && request.query.account == 'victim' && body.amount > 10"

[[route]]
name = "open"
path = "/*"
auth = "none"
"#;
    let (up, gw) = start_standard("", &[("routes.toml", rules)]);
    let post = |path: &str, content_type: &str, body: &[u8]| {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        exchange(gw.proxy, &req)
    };
    let form = "application/x-www-form-urlencoded";
    let multipart = "multipart/form-data; boundary=B";
    let part = |name: &str| {
        format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\nvictim\r\n--B--\r\n")
    };
    // Fields of other names pass, and the upstream gets the body as sent.
    for (ty, body) in [
        (form, "memo=hi&amount=5".to_string()),
        ("application/json", r#"{"memo":"hi"}"#.to_string()),
        (multipart, part("memo")),
        ("text/plain", "account=victim".to_string()),
    ] {
        let (status, _, resp) = post("/statements?account=mine", ty, body.as_bytes());
        assert_eq!(status, 200, "{ty}: {resp}");
        assert_eq!(up.last().body, body.as_bytes(), "{ty}");
    }
    assert_eq!(up.count(), 4);
    // The rules read `account` from the query; these upstreams would read the body's.
    for (ty, body) in [
        (form, "account=victim".to_string()),
        (form, "memo=hi&account%5B%5D=victim".to_string()),
        (
            "application/json; charset=utf-8",
            r#"{"account":"victim"}"#.to_string(),
        ),
        (multipart, part("account")),
    ] {
        let (status, _, resp) = post("/statements?account=mine", ty, body.as_bytes());
        assert_eq!(
            (status, reason(&resp).as_str()),
            (400, "ambiguous_query"),
            "{ty} {body}"
        );
    }
    // A type that cannot be told from a form, and a body too large to check.
    let (status, _, resp) = post(
        "/statements?account=mine",
        "application/x-www-form-urlencoded,x/y",
        b"account=victim",
    );
    assert_eq!(
        (status, reason(&resp).as_str()),
        (415, "unsupported_media_type")
    );
    let (status, _, _) = post("/statements?account=mine", form, &vec![b'a'; 2000]);
    assert_eq!(status, 413);
    // A text body is no field to anyone: not read, whatever its size.
    let big = vec![b'x'; 200_000];
    assert_eq!(post("/statements?account=mine", "text/plain", &big).0, 200);
    assert_eq!(up.last().body.len(), big.len());
    // A route that reads the body as JSON and a query parameter: its members are checked too.
    assert_eq!(
        post(
            "/transfers?account=victim",
            "application/json",
            br#"{"amount":5}"#
        )
        .0,
        200
    );
    assert_eq!(
        post(
            "/transfers?account=victim",
            "application/json",
            br#"{"amount":50}"#
        )
        .0,
        403
    );
    let (status, _, resp) = post(
        "/transfers?account=mine",
        "application/json",
        br#"{"amount":50,"account":"victim"}"#,
    );
    assert_eq!((status, reason(&resp).as_str()), (400, "ambiguous_query"));
    // Routes whose rules read no query parameter are untouched.
    assert_eq!(post("/x?account=mine", form, b"account=victim").0, 200);
    assert_eq!(up.count(), 7);
    // PHP's `$_REQUEST` (no php.ini) and ASP.NET's `Request[...]` read a cookie as a parameter.
    let get = |path: &str, cookie: &str| {
        exchange(
            gw.proxy,
            format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    for cookie in [
        "account=victim",
        "theme=dark; account=victim",
        "account%5B%5D=victim",
    ] {
        let (status, _, resp) = get("/statements?account=mine", cookie);
        assert_eq!(
            (status, reason(&resp).as_str()),
            (400, "ambiguous_query"),
            "{cookie}"
        );
        assert!(resp.contains("the cookie `account"), "{resp}");
    }
    assert_eq!(
        get("/statements?account=mine", "theme=dark; accounts=2").0,
        200
    );
    assert_eq!(up.last().headers["cookie"], "theme=dark; accounts=2");
    assert_eq!(get("/x?account=mine", "account=victim").0, 200);
    assert_eq!(up.count(), 9);
}
