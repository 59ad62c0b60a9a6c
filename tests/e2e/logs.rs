//! Logs that stay readable: JSON without build paths, a pretty format on request, no ERROR
//! line on healthy traffic, and a client that leaves counted as a client event.

use super::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use std::io::Write;
use std::time::Duration;

const RULES: &str = "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n";

#[test]
fn json_by_default_pretty_on_request() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("open.toml", RULES)]);
    let logs = gw.wait_log("claimgate starting");
    assert!(logs.lines().all(|l| l.starts_with('{')), "{logs}");
    assert!(!logs.contains("log.file"), "build paths in the log: {logs}");
    let gw = Gateway::start_with(
        &standard_config(up.addr),
        &[("open.toml", RULES)],
        &["--log-format", "pretty"],
    );
    let logs = gw.wait_log("claimgate starting");
    assert!(logs.contains("claimgate starting"), "{logs}");
    assert!(!logs.lines().any(|l| l.starts_with('{')), "{logs}");
}

#[tokio::test]
async fn healthy_traffic_logs_no_error_line() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("open.toml", RULES)]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = gw.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            for _ in 0..400 {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let logs = gw.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn a_client_that_leaves_is_no_upstream_error() {
    let slow = TestServer::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        hyper::Response::new(Full::new(Bytes::from_static(b"late")))
    });
    let gw = Gateway::start(&standard_config(slow.addr), &[("open.toml", RULES)]);
    {
        let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = gw.metrics().await;
    let class = |c: &str| {
        metric_value(
            &m,
            "claimgate_upstream_responses_total",
            &[("route", "open"), ("class", c)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        class("error"),
        0.0,
        "a client that left counted as an upstream error"
    );
    assert_eq!(class("client_closed"), 1.0, "{m}");
    let logs = gw.logs();
    assert!(!logs.contains("\"ERROR\""), "{logs}");
}

/// A query carries credentials in some APIs (`?access_token=`, a signed URL's signature), and
/// an absolute-form target `user:password@`: neither reaches a log line, whether the request is
/// refused before its rules (the decision line) or fails upstream (Pingora's own line).
#[tokio::test]
async fn a_query_or_userinfo_never_reaches_a_log_line() {
    // Nothing listens there: every allowed request fails upstream.
    let down: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rules = "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\nbody_limit = 16\n  [[route.rule]]\n  name = \"no-x\"\n  deny_if = \"body != null && has(body.x)\"\n";
    let gw = Gateway::start(&standard_config(down), &[("open.toml", rules)]);
    let c = client();
    let r = c
        .get(gw.url("/down?access_token=SECRET-Q1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = c
        .post(gw.url("/upload?access_token=SECRET-Q2"))
        .body(vec![b'x'; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
    s.write_all(b"GET http://user:SECRET-PW@a.test/x?k=SECRET-Q3 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    let logs = gw.wait_log("/upload");
    for secret in ["SECRET-Q1", "SECRET-Q2", "SECRET-PW", "SECRET-Q3"] {
        assert!(!logs.contains(secret), "{secret} in the log: {logs}");
    }
    // The failure upstream is still told, with its path and route.
    assert!(logs.contains("GET /down, route: open"), "{logs}");
}

/// Even with every filter opened (`RUST_LOG=debug`), no line shows the bearer token or the
/// cookie: Pingora's DEBUG records (which print request heads) are not passed on.
#[tokio::test]
async fn debug_logging_shows_no_token() {
    let up = Upstream::start();
    let rules = "[[route]]\nname = \"api\"\npath = \"/api/{*rest}\"\nissuers = [\"hs\"]\n\n\
                 [[route]]\nname = \"err\"\npath = \"/err\"\nissuers = [\"hs\"]\n  [[route.rule]]\n  name = \"missing\"\n  allow_if = \"claims.nope == 1\"\n";
    let (dir, proxy, admin) = write_setup(&standard_config(up.addr), &[("api.toml", rules)]);
    let gw = Gateway::start_in_wrapped(&["env", "RUST_LOG=debug"], dir, proxy, admin);
    let token = super::tokens::token(jsonwebtoken::Algorithm::HS256, serde_json::json!({}));
    let r = client()
        .get(gw.url("/api/x"))
        .bearer_auth(&token)
        .header("cookie", "session=COOKIE-SECRET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A rule that fails writes claimgate's own DEBUG line: the filter is open.
    let r = client()
        .get(gw.url("/err"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let logs = gw.wait_log("rule evaluation failed");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "a token in the log: {logs}");
    assert!(
        !logs.contains("COOKIE-SECRET"),
        "a cookie in the log: {logs}"
    );
}

/// A client that closes in the middle of its request head, or stalls past the head deadline,
/// is a client event: no ERROR line.
#[tokio::test]
async fn a_client_that_stops_mid_head_is_no_error() {
    let up = Upstream::start();
    let config =
        standard_config(up.addr).replace("[limits]", "[limits]\nrequest_head_timeout_ms = 300");
    let config = if config.contains("request_head_timeout_ms") {
        config
    } else {
        format!("{config}\n[limits]\nrequest_head_timeout_ms = 300\n")
    };
    let gw = Gateway::start(&config, &[("open.toml", RULES)]);
    {
        let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
        s.write_all(b"GET /half HTTP/1.1\r\nHost: a\r\n").unwrap();
    }
    let mut stalled = std::net::TcpStream::connect(gw.proxy).unwrap();
    stalled
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(stalled);
    // A request after them is served, and its line comes after theirs.
    let r = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let logs = gw.wait_log("/after");
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("\"ERROR\"")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// An upstream that closes a kept-alive connection when the next request arrives on it (as
/// one whose idle timeout is shorter than the gateway's does): the request is retried on a
/// new connection and served, counted as `upstream_retry`, with no WARN or ERROR line.
#[tokio::test]
async fn a_retry_on_a_closed_pooled_connection_is_no_warning() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let served = Served::start(|listener| async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // The first request on a connection is answered, kept alive; the second is
                // read and the connection closed without an answer.
                let mut answered = false;
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if answered {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    answered = true;
                }
            });
        }
    });
    let config = standard_config(served.addr).replace("threads = 2", "threads = 1");
    let gw = Gateway::start(&config, &[("open.toml", RULES)]);
    let c = client();
    for i in 0..3 {
        let r = c.get(gw.url(&format!("/r{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    let m = gw.metrics().await;
    let retries = metric_value(
        &m,
        "claimgate_proxy_events_total",
        &[("kind", "upstream_retry")],
    );
    assert!(
        retries.unwrap_or(0.0) >= 1.0,
        "no retry happened: the test tests nothing\n{m}"
    );
    let logs = gw.logs();
    let loud: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
}
