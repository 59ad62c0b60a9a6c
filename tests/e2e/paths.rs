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
        Some(11.0),
        "{m}"
    );
}
