//! HTTP/2 on the plain listener (h2c with prior knowledge) with real clients (curl and the h2
//! crate): decided like HTTP/1, told apart from HTTP/1 without delaying short HTTP/1 requests,
//! and bounded against hostile h2 clients (oversized header blocks, rapid reset).

use super::harness::*;
use super::tokens::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const RULES: &str = r#"
[[route]]
name = "open"
path = "/open"
auth = "none"

[[route]]
name = "only-b"
host = "b.test"
path = "/open"
auth = "none"
  [route.forward]
  "x-route" = "'only-b'"

[[route]]
name = "api"
path = "/api/{*rest}"
issuers = ["hs"]
  [route.forward]
  "x-user-id" = "claims.sub"
"#;

/// curl with `flags` to `http://<name>:<port><path>` (the name resolved to the gateway): the
/// HTTP version, the status and the body.
fn curl(gw: SocketAddr, name: &str, path: &str, flags: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_version} %{http_code}"])
        .args(flags)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", gw.port()))
        .arg(format!("http://{name}:{}{path}", gw.port()))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), body.to_string())
}

#[test]
fn h2c_with_prior_knowledge_is_decided_like_http1() {
    let (up, gw) = start_standard("", &[("rules.toml", RULES)]);
    let h2c = ["--http2-prior-knowledge"];
    assert_eq!(curl(gw.proxy, "a.test", "/open", &h2c).0, "2 200");
    assert!(up.last().headers.get("x-route").is_none());
    // `:authority` is the host: the host-specific route decides b.test.
    assert_eq!(curl(gw.proxy, "b.test", "/open", &h2c).0, "2 200");
    assert_eq!(up.last().headers.get("x-route").unwrap(), "only-b");
    // A token route: refused without a token (the JSON denial), allowed with one.
    let (status, body) = curl(gw.proxy, "a.test", "/api/x", &h2c);
    assert_eq!(status, "2 401");
    assert!(body.contains("\"reason\":\"missing_token\""), "{body}");
    let t = token(jsonwebtoken::Algorithm::HS256, json!({"sub": "h2-user"}));
    let auth = format!("Authorization: Bearer {t}");
    let (status, _) = curl(
        gw.proxy,
        "a.test",
        "/api/x",
        &["--http2-prior-knowledge", "-H", &auth],
    );
    assert_eq!(status, "2 200");
    let seen = up.last();
    assert_eq!(seen.headers.get("x-user-id").unwrap(), "h2-user");
    assert_eq!(seen.uri, "/api/x");
    // A client's own scheme claim is not believed (it is not a trusted proxy).
    let (status, _) = curl(
        gw.proxy,
        "a.test",
        "/api/x",
        &[
            "--http2-prior-knowledge",
            "-H",
            &auth,
            "-H",
            "X-Forwarded-Proto: https",
        ],
    );
    assert_eq!(status, "2 200");
    assert_eq!(up.last().headers.get("x-forwarded-proto").unwrap(), "http");
    // HTTP/1.1 on the same port is unchanged.
    assert_eq!(curl(gw.proxy, "a.test", "/open", &[]).0, "1.1 200");

    // `h2c = false`: the plain listener speaks HTTP/1 only; the preface is a bad request.
    let up = Upstream::start();
    let config = standard_config(up.addr).replace(
        "admin = \"127.0.0.1:{admin}\"",
        "admin = \"127.0.0.1:{admin}\"\nh2c = false",
    );
    let gw = Gateway::start(&config, &[("rules.toml", RULES)]);
    assert_ne!(curl(gw.proxy, "a.test", "/open", &h2c).0, "2 200");
    assert_eq!(curl(gw.proxy, "a.test", "/open", &[]).0, "1.1 200");
}

#[test]
fn short_http1_requests_are_not_held_and_a_stalled_preface_is_cut_off() {
    let rules = "[[route]]\nname = \"open\"\npath = \"/open\"\nauth = \"none\"\n";
    let (up, gw) = start_standard(
        "[limits]\nrequest_head_timeout_ms = 600\n",
        &[("rules.toml", rules)],
    );
    // 22 bytes, shorter than the h2 preface: answered at once (a reader waiting for 24 bytes
    // to compare would hold it until the client gave up).
    let mut s = TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /open HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.count(), 1);

    // The start of the preface, then silence: cut off at the head deadline, as HTTP/1 (its
    // request line is not valid HTTP/1: 400; one byte is a head that did not arrive: 408).
    for (sent, answer) in [
        (&b"PRI * HTTP/2.0\r\n"[..], "HTTP/1.1 400"),
        (b"P", "HTTP/1.1 408"),
    ] {
        let mut s = TcpStream::connect(gw.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        s.write_all(sent).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let took = started.elapsed();
        assert!(out.starts_with(answer), "{out}");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
            "cut off after {took:?}"
        );
    }
    assert_eq!(up.count(), 1);
}

/// An h2 client connection to the gateway (h2c, prior knowledge).
async fn h2_connect(
    gw: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

fn get(gw: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .uri(format!("http://a.test:{}{path}", gw.port()))
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_h2_clients_are_bounded() {
    let (up, gw) = start_standard("", &[("rules.toml", RULES)]);

    // A header block far over the limit: that stream fails, the gateway serves on.
    let (sender, conn) = h2_connect(gw.proxy).await;
    let mut sender = sender.ready().await.unwrap();
    let mut huge = get(gw.proxy, "/open");
    huge.headers_mut()
        .insert("x-big", "v".repeat(200 * 1024).parse().unwrap());
    let refused = match sender.send_request(huge, true) {
        Ok((resp, _)) => match resp.await {
            Ok(r) => r.status() == 431,
            Err(_) => true,
        },
        Err(_) => true,
    };
    assert!(refused, "a 200 KiB header block was served");
    drop(sender);
    let _ = conn.await;
    assert_eq!(up.count(), 0);

    // Rapid reset (CVE-2023-44487): thousands of streams opened and cancelled at once. The
    // gateway either closes that connection or works through them, and meanwhile answers
    // another client without delay.
    let (flooder, conn) = h2_connect(gw.proxy).await;
    let flood = tokio::spawn(async move {
        let mut client = flooder;
        for _ in 0..5000 {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => return,
            };
            match client.send_request(get(gw.proxy, "/api/x"), false) {
                Ok((_, mut body)) => body.send_reset(h2::Reason::CANCEL),
                Err(_) => return,
            }
        }
    });
    let (probe, probe_conn) = h2_connect(gw.proxy).await;
    let started = Instant::now();
    for _ in 0..20 {
        let mut probe = probe.clone().ready().await.unwrap();
        let (resp, _) = probe.send_request(get(gw.proxy, "/open"), true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("the gateway stopped answering during a rapid-reset flood")
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood neither finished nor was cut off")
        .unwrap();
    drop(probe);
    let _ = probe_conn.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    // None of the cancelled streams carried a token: none reached the upstream.
    assert_eq!(up.count(), 20);
    let health = client()
        .get(format!("http://{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
