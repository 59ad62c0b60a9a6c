//! WebSockets through the gateway with a real client and server (tokio-tungstenite): the
//! upgrade is decided like any request (token, rules, forwarded headers), a denied upgrade gets
//! the JSON denial, and the tunnel closes when idle, at its lifetime, and when the token that
//! opened it expires.

// tungstenite's handshake callback returns a whole HTTP response as its error.
#![allow(clippy::result_large_err)]

use super::harness::*;
use super::tokens::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Notes an upgrade the server accepts.
fn record_upgrade(
    req: &http::Request<()>,
    resp: http::Response<()>,
    path: &mut String,
    seen: &Mutex<Vec<Option<String>>>,
) -> Result<http::Response<()>, http::Response<Option<String>>> {
    *path = req.uri().path().to_string();
    let user = req
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push(user);
    Ok(resp)
}

/// A WebSocket server on its own runtime: `/echo` echoes text; `/push` sends a message every
/// 200 ms. Records the `x-user-id` of each upgrade.
struct WsUpstream {
    addr: SocketAddr,
    users: Arc<Mutex<Vec<Option<String>>>>,
    _served: Served,
}

impl WsUpstream {
    fn start() -> WsUpstream {
        let users: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = users.clone();
        let served = Served::start(move |listener| async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut path = String::new();
                    let ws = tokio_tungstenite::accept_hdr_async(
                        tcp,
                        |req: &http::Request<()>, resp| record_upgrade(req, resp, &mut path, &seen),
                    )
                    .await;
                    let Ok(mut ws) = ws else { return };
                    if path.ends_with("/push") {
                        for i in 0.. {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if ws.send(Message::text(format!("tick {i}"))).await.is_err() {
                                return;
                            }
                        }
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsUpstream {
            addr: served.addr,
            users,
            _served: served,
        }
    }
}

const RULES: &str = r#"
[[route]]
name = "ws"
path = "/ws/{*rest}"
issuers = ["hs"]
upstream = "ws"
  [route.forward]
  "x-user-id" = "claims.sub"

  [[route.rule]]
  name = "chat-members"
  allow_if = "has(claims.chat) && claims.chat"
  message = "chat is for members"
"#;

fn config(http: SocketAddr, ws: SocketAddr, limits: &str) -> String {
    format!(
        "{}\n[upstreams.ws]\naddresses = [\"{ws}\"]\n\n[limits]\n{limits}\n",
        standard_config(http)
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(gw: &Gateway, path: &str, token: Option<&str>) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{}{path}", gw.proxy)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("the upgrade failed: {e}"),
    }
}

/// Reads until the tunnel ends; how long that took and how many messages came.
async fn until_closed(ws: &mut Ws) -> (Duration, usize) {
    let started = Instant::now();
    let mut messages = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() {
                messages += 1;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel was not closed");
    (started.elapsed(), messages)
}

fn member(extra: serde_json::Value) -> String {
    let mut claims = json!({"sub": "wendy", "chat": true});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    token(jsonwebtoken::Algorithm::HS256, claims)
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_are_decided_and_tunnels_end_on_their_limits() {
    let up = Upstream::start();
    let ws_up = WsUpstream::start();
    let gw = Gateway::start(
        &config(up.addr, ws_up.addr, "websocket_idle_timeout_ms = 700"),
        &[("ws.toml", RULES)],
    );

    // Allowed: the tunnel carries messages both ways; the upstream saw the forwarded claim.
    let mut ws = open(&gw, "/ws/echo", Some(&member(json!({}))))
        .await
        .unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    assert_eq!(
        ws_up.users.lock().unwrap().last().unwrap().as_deref(),
        Some("wendy")
    );
    // Then silence both ways: closed at the idle limit.
    let (took, _) = until_closed(&mut ws).await;
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(3000),
        "closed after {took:?}"
    );

    // Denied upgrades: the usual JSON denial, and nothing reaches the upstream.
    let upgrades = ws_up.users.lock().unwrap().len();
    let (status, body) = open(&gw, "/ws/echo", None).await.unwrap_err();
    assert_eq!(status, 401);
    assert!(body.contains("\"reason\":\"missing_token\""), "{body}");
    let outsider = token(
        jsonwebtoken::Algorithm::HS256,
        json!({"sub": "eve", "chat": false}),
    );
    let (status, body) = open(&gw, "/ws/echo", Some(&outsider)).await.unwrap_err();
    assert_eq!(status, 403);
    assert!(body.contains("chat is for members"), "{body}");
    assert_eq!(ws_up.users.lock().unwrap().len(), upgrades);

    // Traffic in one direction keeps a tunnel open past the idle limit; the token's expiry
    // ends it even so.
    let exp = now() + 3;
    let mut ws = open(&gw, "/ws/push", Some(&member(json!({"exp": exp}))))
        .await
        .unwrap();
    let (took, messages) = until_closed(&mut ws).await;
    assert!(messages >= 6, "{messages} messages before the close");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(4500),
        "closed after {took:?}"
    );
    assert!(now() >= exp - 1, "closed before the token expired");

    let metrics = gw.metrics().await;
    for kind in ["tunnel_idle", "tunnel_token_expired"] {
        assert_eq!(
            metric_value(&metrics, "claimgate_proxy_events_total", &[("kind", kind)]),
            Some(1.0),
            "{kind}: {metrics}"
        );
    }
    let logs = gw.logs();
    assert!(!logs.contains("\"ERROR\""), "{logs}");

    // A configured lifetime ends a busy tunnel.
    let gw = Gateway::start(
        &config(
            up.addr,
            ws_up.addr,
            "websocket_idle_timeout_ms = 0\nwebsocket_max_lifetime_ms = 1000",
        ),
        &[("ws.toml", RULES)],
    );
    let mut ws = open(&gw, "/ws/push", Some(&member(json!({}))))
        .await
        .unwrap();
    let (took, messages) = until_closed(&mut ws).await;
    assert!(messages >= 2, "{messages}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3000),
        "closed after {took:?}"
    );
    assert_eq!(
        metric_value(
            &gw.metrics().await,
            "claimgate_proxy_events_total",
            &[("kind", "tunnel_lifetime")]
        ),
        Some(1.0)
    );
}

/// An upstream that answers every request head with `answer` and records what it reads after
/// the head (bytes that would have reached it through a tunnel).
fn switching_upstream(answer: &'static str) -> (Served, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let after: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen = after.clone();
    let served = Served::start(move |listener| async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                seen.lock().unwrap().extend_from_slice(&buf[end..]);
                let _ = tcp.write_all(answer.as_bytes()).await;
                while let Ok(n) = tcp.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (served, after)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_101_without_the_websocket_handshake_opens_no_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for answer in [
        // No accept value at all: the upstream did not read the handshake as WebSocket.
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        // An accept value for another key.
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        // The right accept value, another protocol.
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    ] {
        let (fake, after) = switching_upstream(answer);
        let gw = Gateway::start(&config(up.addr, fake.addr, ""), &[("ws.toml", RULES)]);
        let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        // The upgrade, and behind it a plain request that a tunnel would carry undecided.
        let request = format!(
            "GET /ws/echo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {key}\r\n\r\nGET /ws/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            member(json!({}))
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answered = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answered)).await;
        let text = String::from_utf8_lossy(&answered);
        assert!(text.starts_with("HTTP/1.1 502"), "{answer:?}: {text}");
        assert!(text.contains("bad_upstream_upgrade"), "{text}");
        assert!(!text.contains(" 101 "), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            after.lock().unwrap().is_empty(),
            "bytes after the upgrade reached the upstream: {:?}",
            String::from_utf8_lossy(&after.lock().unwrap())
        );
    }
    // The same upstream with the handshake completed: the tunnel opens.
    let (fake, after) = switching_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    );
    let gw = Gateway::start(&config(up.addr, fake.addr, ""), &[("ws.toml", RULES)]);
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let request = format!(
        "GET /ws/echo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n\r\n",
        member(json!({}))
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    s.write_all(b"frame bytes").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while after.lock().unwrap().len() < 11 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(&after.lock().unwrap()[..], b"frame bytes");
}
