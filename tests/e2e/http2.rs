//! HTTP/2 on the plain listener (h2c with prior knowledge) with real clients (curl and the h2
//! crate): decided like HTTP/1, told apart from HTTP/1 without delaying short HTTP/1 requests,
//! and bounded against hostile h2 clients (oversized header blocks, rapid reset) and against
//! requests that would smuggle a second request to an HTTP/1.1 upstream (raw frames).

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

/// One h2 frame: length, type, flags, stream id, payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields without indexing and without Huffman coding (RFC 7541
/// §6.2.2): any name and value, written exactly as given, whatever h2 libraries would send.
fn hpack_literal(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    let string = |s: &str, block: &mut Vec<u8>| {
        assert!(s.len() < 127);
        block.push(s.len() as u8);
        block.extend_from_slice(s.as_bytes());
    };
    for (name, value) in headers {
        block.push(0x00);
        string(name, &mut block);
        string(value, &mut block);
    }
    block
}

/// Sends one h2 request as raw frames (HEADERS, then `data` in one DATA frame ending the
/// stream) on a new h2c connection and reads what the gateway answers for a second.
pub(super) fn raw_h2(gw: SocketAddr, headers: &[(&str, &str)], data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let end_stream = if data.is_empty() { 0x1 } else { 0 };
    out.extend(frame(0x1, 0x4 | end_stream, 1, &hpack_literal(headers)));
    if !data.is_empty() {
        out.extend(frame(0x0, 0x1, 1, data));
    }
    s.write_all(&out).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 16384];
    while start.elapsed() < Duration::from_secs(2) && !stream_ended(&got) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    got
}

/// Whether the server refused stream 1 as malformed: RST_STREAM or GOAWAY with
/// PROTOCOL_ERROR (RFC 9113 §8.1.1).
fn refused(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            return false;
        }
        let code = |at: usize| {
            bytes
                .get(9 + at..13 + at)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        };
        match bytes[3] {
            0x3 if code(0) == Some(1) => return true,
            0x7 if code(4) == Some(1) => return true,
            _ => {}
        }
        bytes = &bytes[9 + len..];
    }
    false
}

/// The frames of stream 1 in what a server sent: (type, flags) in order.
pub(super) fn stream_1_frames(mut bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        if bytes.len() < 9 + len {
            break;
        }
        if stream == 1 {
            out.push((bytes[3], bytes[4]));
        }
        bytes = &bytes[9 + len..];
    }
    out
}

/// Whether the server's frames so far end stream 1 (END_STREAM on its HEADERS or DATA, or
/// RST_STREAM) or the connection (GOAWAY).
fn stream_ended(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        if bytes.len() < 9 + len {
            return false;
        }
        let ends = match kind {
            0x0 | 0x1 => stream == 1 && flags & 0x1 != 0,
            0x3 => stream == 1,
            0x7 => true,
            _ => false,
        };
        if ends {
            return true;
        }
        bytes = &bytes[9 + len..];
    }
    false
}

/// HTTP/2 requests go to HTTP/1.1 upstreams, where the body's framing is rewritten. An h2
/// request whose declared length disagrees with its DATA (H2.CL), or that carries HTTP/1
/// framing of its own (`transfer-encoding`, H2.TE), or a header that would be a second line in
/// HTTP/1, must not reach the upstream as anything but the one request decided on: otherwise
/// the rest of its body is read there as a second request, never decided (request
/// smuggling by downgrade).
#[test]
fn an_h2_request_cannot_smuggle_a_second_request_to_an_http1_upstream() {
    let (up, gw) = start_standard("", &[("rules.toml", RULES)]);
    let smuggled = "GET /api/x HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a.test"),
            (":path", "/open"),
        ];
        h.extend_from_slice(extra);
        h
    };
    let cl: &'static str = Box::leak(smuggled.len().to_string().into_boxed_str());
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "H2.CL: declares 0, sends a request",
            base(&[("content-length", "0")]),
        ),
        ("H2.CL: declares 1", base(&[("content-length", "1")])),
        ("H2.TE: chunked", base(&[("transfer-encoding", "chunked")])),
        ("two lengths", {
            let mut h = base(&[("content-length", "0")]);
            h.push(("content-length", cl));
            h
        }),
        (
            "connection-specific header",
            base(&[("connection", "keep-alive")]),
        ),
        ("upper-case name", base(&[("Content-Length", "0")])),
        // Header and request-line injection (HTTP/2 carries CR and LF where HTTP/1 cannot).
        (
            "CRLF in a value",
            base(&[("x-a", "1\r\ntransfer-encoding: chunked")]),
        ),
        (
            "CRLF in a name",
            base(&[("x-a\r\ntransfer-encoding", "chunked")]),
        ),
        ("colon in a name", base(&[("x-a:b", "1")])),
        (
            "CRLF in :path",
            vec![
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "a.test"),
                (":path", "/open HTTP/1.1\r\nHost: a.test\r\n\r\nGET /api/x"),
            ],
        ),
        (
            "a request line in :method",
            vec![
                (":method", "GET /api/x HTTP/1.1\r\nHost: a.test\r\n\r\nPOST"),
                (":scheme", "http"),
                (":authority", "a.test"),
                (":path", "/open"),
            ],
        ),
        (
            "CRLF in :authority",
            vec![
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "a.test\r\nx: y"),
                (":path", "/open"),
            ],
        ),
    ];
    // Whether the upstream got a request with exactly `body`, waiting a little: it records
    // a request when its handler runs, which may be after the client saw the answer.
    let arrived = |body: &[u8]| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if up.seen.lock().unwrap().iter().any(|s| s.body == body) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    for (n, (what, headers)) in cases.iter().enumerate() {
        let body = if what.starts_with("H2.TE") {
            format!("0\r\n\r\n{smuggled}")
        } else {
            smuggled.to_string()
        };
        let got = raw_h2(gw.proxy, headers, body.as_bytes());
        assert!(refused(&got), "{what}: not refused as malformed");
        // A request cut off upstream leaves no connection half-read in the pool: the next
        // requests arrive whole (a pooled connection still waiting for a declared byte would
        // take the next request's first byte as it).
        for i in 0..3 {
            let body = format!("whole-{n}-{i}");
            let len: &'static str = Box::leak(body.len().to_string().into_boxed_str());
            let _ = raw_h2(gw.proxy, &base(&[("content-length", len)]), body.as_bytes());
            assert!(
                arrived(body.as_bytes()),
                "{what}: the next request did not arrive whole"
            );
        }
    }
    // Malformed requests (RFC 9113 §8.2.2, §8.1.1) are refused before anything is sent on; a
    // length the DATA overruns may be found only after the head went upstream: then the
    // upstream gets no byte beyond the declared length, and the request is cut off. Either
    // way, nothing reached `/api/x`.
    for s in up.seen.lock().unwrap().iter() {
        assert_eq!(s.uri, "/open", "{s:?}");
        let declared: usize = s.headers["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(s.body.len() <= declared, "{s:?}");
        let text = String::from_utf8_lossy(&s.body);
        assert!(text.starts_with("whole-") || s.body.is_empty(), "{s:?}");
    }
    // The same text sent as a well-formed body is a body: it arrives whole, as one request.
    let _ = raw_h2(
        gw.proxy,
        &base(&[("content-length", cl)]),
        smuggled.as_bytes(),
    );
    assert!(arrived(smuggled.as_bytes()));
    assert!(up.seen.lock().unwrap().iter().all(|s| s.uri == "/open"));
}
