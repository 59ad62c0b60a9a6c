//! gRPC through the gateway with a real client and server (tonic's health service: a unary
//! `Check` and a server-streaming `Watch`): h2c prior knowledge from the client, HTTP/2 to the
//! upstream, trailers carried through; denials answered as trailers-only gRPC responses with the
//! status and the rule's message.

use super::harness::*;
use super::tokens::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::{Code, Request};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_health::server::HealthReporter;

/// A tonic server with the health service on its own runtime; records the `x-user-id` each call
/// arrived with.
struct GrpcUpstream {
    addr: SocketAddr,
    reporter: HealthReporter,
    users: Arc<Mutex<Vec<Option<String>>>>,
    _served: Served,
}

impl GrpcUpstream {
    async fn start() -> GrpcUpstream {
        let (reporter, service) = tonic_health::server::health_reporter();
        let users: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let seen = users.clone();
        let served = Served::start(move |listener| async move {
            let service = tonic::service::interceptor::InterceptedService::new(
                service,
                move |req: Request<()>| {
                    let user = req
                        .metadata()
                        .get("x-user-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock().unwrap().push(user);
                    Ok(req)
                },
            );
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        reporter
            .set_service_status("orders", tonic_health::ServingStatus::Serving)
            .await;
        GrpcUpstream {
            addr: served.addr,
            reporter,
            users,
            _served: served,
        }
    }
}

const RULES: &str = r#"
[[route]]
name = "health"
path = "/grpc.health.v1.Health/{*method}"
methods = ["POST"]
issuers = ["hs"]
upstream = "grpc"

  [route.forward]
  "x-user-id" = "claims.sub"

  [[route.rule]]
  name = "ops-only"
  allow_if = "has(claims.role) && claims.role == 'ops'"
  message = "health is for the ops role (100% of the time)"
"#;

fn config(http: SocketAddr, grpc: SocketAddr) -> String {
    format!(
        "{}\n[upstreams.grpc]\naddresses = [\"{grpc}\"]\nprotocol = \"h2\"\n",
        standard_config(http)
    )
}

fn with_token(service: &str, token: Option<&str>) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest {
        service: service.into(),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_are_decided_and_denials_speak_grpc() {
    let up = Upstream::start();
    let grpc = GrpcUpstream::start().await;
    let gw = Gateway::start(&config(up.addr, grpc.addr), &[("grpc.toml", RULES)]);
    // Plain http:// in tonic is HTTP/2 with prior knowledge: the gateway's h2c.
    let channel = tonic::transport::Channel::from_shared(gw.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let ops = token(
        jsonwebtoken::Algorithm::HS256,
        json!({"sub": "olga", "role": "ops"}),
    );
    let dev = token(
        jsonwebtoken::Algorithm::HS256,
        json!({"sub": "dan", "role": "dev"}),
    );

    // Allowed unary call: the answer and its status (a trailer) came through the gateway.
    let ok = client
        .check(with_token("orders", Some(&ops)))
        .await
        .unwrap();
    assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);
    assert_eq!(
        grpc.users.lock().unwrap().last().unwrap().as_deref(),
        Some("olga")
    );
    // An error status from the upstream is a trailer too, and arrives as the upstream sent it.
    let unknown = client
        .check(with_token("no-such-service", Some(&ops)))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // gRPC-Web over HTTP/1.1: bridged to gRPC for the h2 upstream; the answer's status comes
    // back as a trailer frame in the body, as gRPC-Web clients read it.
    let grpc_web = |token: Option<String>| {
        // One length-prefixed message: HealthCheckRequest { service: "orders" }.
        let mut body = vec![0u8, 0, 0, 0, 8, 0x0a, 6];
        body.extend_from_slice(b"orders");
        let mut req = super::harness::client()
            .post(gw.url("/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    let r = grpc_web(Some(ops.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/grpc-web"));
    let body = r.bytes().await.unwrap();
    // HealthCheckResponse { status: SERVING (1) }, then the trailers frame (flag 0x80).
    assert_eq!(&body[..7], &[0, 0, 0, 0, 2, 0x08, 0x01], "{body:?}");
    assert_eq!(body[7], 0x80, "{body:?}");
    let trailers = String::from_utf8_lossy(&body[12..]).to_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let r = grpc_web(None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("grpc-status").unwrap(), "16");

    // Denials: no token, the rule's refusal (its message, percent-encoded on the wire), and a
    // method no route serves.
    let calls = grpc.users.lock().unwrap().len();
    let none = client.check(with_token("orders", None)).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let denied = client
        .check(with_token("orders", Some(&dev)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "health is for the ops role (100% of the time)"
    );
    assert!(denied.metadata().get("x-request-id").is_some());
    // On the wire a denial is trailers-only: one HEADERS frame that ends the stream, no DATA
    // (grpc-go and grpc-java read a stream ended by an empty DATA frame as INTERNAL).
    let got = super::http2::raw_h2(
        gw.proxy,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a.test"),
            (":path", "/grpc.health.v1.Health/Check"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
        &[0, 0, 0, 0, 0],
    );
    let frames = super::http2::stream_1_frames(&got);
    assert_eq!(
        frames.first(),
        Some(&(0x1, 0x5)),
        "HEADERS with END_HEADERS and END_STREAM: {frames:?}"
    );
    assert!(
        frames.iter().all(|(kind, _)| *kind != 0x0),
        "a DATA frame: {frames:?}"
    );
    // gRPC is POST: a GET claiming a gRPC type is answered as any other request (JSON, not an
    // empty 200 a cache could keep).
    let r = super::harness::client()
        .get(gw.url("/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        grpc.users.lock().unwrap().len(),
        calls,
        "a denied call reached the upstream"
    );

    // A server-streaming call: allowed, it streams updates as the upstream sends them.
    let mut watch = client
        .watch(with_token("orders", Some(&ops)))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    grpc.reporter
        .set_service_status("orders", tonic_health::ServingStatus::NotServing)
        .await;
    let second = watch.message().await.unwrap().unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    drop(watch);
    // Denied before it starts: the stream ends with the status at once.
    let refused = client
        .watch(with_token("orders", Some(&dev)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A service no route serves: UNIMPLEMENTED, as from a server without it.
    let mut other = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(gw.url(""))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    other.ready().await.unwrap();
    let missing = other
        .unary::<_, tonic_health::pb::HealthCheckResponse, _>(
            with_token("orders", Some(&ops)),
            "/other.v1.Orders/Get".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unimplemented, "{missing:?}");

    let metrics = gw.metrics().await;
    let denied = metric_value(
        &metrics,
        "claimgate_denials_total",
        &[
            ("route", "health"),
            ("rule", "ops-only"),
            ("reason", "rule_denied"),
        ],
    );
    assert_eq!(denied, Some(2.0), "{metrics}");
    assert!(!gw.logs().contains(&ops), "a token in the log");
}
