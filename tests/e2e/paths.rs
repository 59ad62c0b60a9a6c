//! Path confusion: the policy and the upstream must agree on what the path is.

use super::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RULES: &str = r#"
[[route]]
name = "api"
path = "/api/*"
auth = "none"

[[route]]
name = "transfer"
path = "/api/transfer"
auth = "none"
  [[route.rule]]
  name = "never"
  deny_if = "true"
  message = "transfers are closed"
"#;

/// Sends a raw request line (HTTP clients normalise paths themselves) and returns the status.
async fn raw_status(gw: &Gateway, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn ambiguous_paths_never_bypass_a_route() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("p.toml", RULES)]);

    assert_eq!(raw_status(&gw, "/api/other").await, 200);
    assert_eq!(raw_status(&gw, "/api/transfer").await, 403);
    // An encoded unreserved character is the same path: the same route, the same denial.
    assert_eq!(raw_status(&gw, "/api/%74ransfer").await, 403);
    assert_eq!(raw_status(&gw, "/api/tr%61nsfer?x=1").await, 403);
    // Ambiguous spellings are refused before any route is chosen.
    for target in [
        "/api/./transfer",
        "/api/../api/transfer",
        "/api//transfer",
        "/api/%2e/transfer",
        "/api%2ftransfer",
        "/api/transfer%2f",
        "/api/transfer;x=1",
        "/api/%5ctransfer",
        "/api/%00",
        "/api/%C0%AF",
        "/api/%zz",
    ] {
        assert_eq!(raw_status(&gw, target).await, 400, "{target}");
    }
    assert_eq!(up.count(), 1);

    // The upstream receives the normalised path, the one the policy matched.
    assert_eq!(raw_status(&gw, "/api/%7euser/%3f?q=%2F").await, 200);
    assert_eq!(up.last().uri, "/api/~user/%3F?q=%2F");
    // Characters a path may not hold as they are: escaped, so both spellings are one path
    // (escaped control characters are refused above; these are path text).
    for spelling in ["/api/a|b[0]", "/api/a%7cb%5B0%5d"] {
        assert_eq!(raw_status(&gw, spelling).await, 200, "{spelling}");
        assert_eq!(up.last().uri, "/api/a%7Cb%5B0%5D");
    }
    assert_eq!(raw_status(&gw, "/api/admin%0A").await, 400);

    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "claimgate_denials_total",
            &[
                ("route", "_unmatched"),
                ("rule", ""),
                ("reason", "bad_path")
            ]
        ),
        Some(12.0),
        "{m}"
    );
}

/// Sends raw request bytes and returns the response status (0 when the connection closed first).
async fn raw(gw: &Gateway, request: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

const HOSTS: &str = r#"
[[route]]
name = "admin"
host = "admin.example.com"
path = "/x"
auth = "none"
  [[route.rule]]
  name = "closed"
  deny_if = "true"

[[route]]
name = "public"
path = "/x"
auth = "none"
"#;

#[tokio::test]
async fn ambiguous_hosts_and_framing_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("h.toml", HOSTS)]);
    let get = |host: &str| format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");

    assert_eq!(raw(&gw, &get("www.example.com")).await, 200);
    assert_eq!(raw(&gw, &get("admin.example.com")).await, 403);
    // Case, port and a trailing dot do not make another host.
    assert_eq!(raw(&gw, &get("ADMIN.example.com.:8080")).await, 403);
    // Two Host headers.
    assert_eq!(
        raw(&gw, "GET /x HTTP/1.1\r\nHost: www.example.com\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n").await,
        400
    );
    // Absolute-form target naming another host than the Host header.
    assert_eq!(
        raw(&gw, "GET http://www.example.com/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n").await,
        400
    );
    assert_eq!(
        raw(&gw, "GET http://admin.example.com/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n").await,
        403
    );
    // Framing: Pingora parses these before any hook runs (RFC 9112 6.3): Transfer-Encoding wins
    // over Content-Length, which is removed, and the connection is closed afterwards; differing
    // Content-Length values are refused. What reaches the upstream is never ambiguous.
    assert_eq!(
        raw(&gw, "POST /x HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await,
        200
    );
    let seen = up.last();
    assert!(
        seen.headers.get("content-length").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen.body.is_empty());
    let before = up.count();
    assert_eq!(
        raw(&gw, "POST /x HTTP/1.1\r\nHost: w\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd").await,
        400
    );
    assert_eq!(
        up.count(),
        before,
        "conflicting lengths reached the upstream"
    );
}
