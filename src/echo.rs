//! A built-in echo upstream for trying the gateway without any other service: it answers every
//! request with a JSON description of what it received, so the forwarded headers are visible.
//!
//! With a data directory it also plays the external services of the demo policies: `GET
//! /_data/a/b` answers the file `DIR/a/b.json` (404 when there is none), so the repository's
//! `[sources]` have something to fetch.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct EchoApp {
    /// Where `/_data/...` is served from.
    pub data: Option<PathBuf>,
}

const DATA_PREFIX: &str = "/_data/";

/// The file for a `/_data/...` path: plain segments only, so nothing outside `dir` is reachable.
fn data_file(dir: &Path, rest: &str) -> Option<PathBuf> {
    let mut file = dir.to_path_buf();
    for seg in rest.split('/') {
        let plain = !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain {
            return None;
        }
        file.push(seg);
    }
    let mut name = file.into_os_string();
    name.push(".json");
    Some(PathBuf::from(name))
}

fn json_response(status: u16, out: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, out.len())
        .body(out)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Bodies larger than this are counted, not echoed.
const MAX_ECHO_BODY: usize = 64 * 1024;

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if let (Some(dir), Some(rest)) = (&self.data, req.uri.path().strip_prefix(DATA_PREFIX)) {
            return match data_file(dir, rest).map(std::fs::read) {
                Some(Ok(bytes)) => json_response(200, bytes),
                _ => json_response(404, br#"{"error":"not_found"}"#.to_vec()),
            };
        }
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
        json_response(200, serde_json::to_vec_pretty(&json).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_paths_stay_inside_the_directory() {
        let d = Path::new("/data");
        assert_eq!(
            data_file(d, "players/alice/balance"),
            Some(PathBuf::from("/data/players/alice/balance.json"))
        );
        for bad in [
            "../etc/passwd",
            "a/../../b",
            ".hidden",
            "a//b",
            "a%2F..",
            "",
        ] {
            assert_eq!(data_file(d, bad), None, "{bad}");
        }
    }
}
