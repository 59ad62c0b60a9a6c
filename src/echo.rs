//! A built-in echo upstream for trying the gateway without any other service: it answers every
//! request with a JSON description of what it received, so the forwarded headers are visible.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct EchoApp;

/// Bodies larger than this are counted, not echoed.
const MAX_ECHO_BODY: usize = 64 * 1024;

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let mut body = Vec::new();
        let mut total = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            total += chunk.len();
            if body.len() < MAX_ECHO_BODY {
                let room = MAX_ECHO_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        let json = serde_json::json!({
            "echo": true,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "body_bytes": total,
        });
        let out = serde_json::to_vec_pretty(&json).unwrap_or_default();
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, out.len())
            .body(out)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
