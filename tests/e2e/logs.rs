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
