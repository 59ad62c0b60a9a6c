//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status`. Keep it on loopback.

use crate::engine::Snapshot;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::SystemTime;

pub struct AdminApp {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<crate::reload::ReloadStatus>,
    pub started: SystemTime,
    /// The limit store, for `/readyz` when `rate_limits.ready_requires_store` is set.
    pub limits: Arc<crate::limit_store::LimitStore>,
    /// Stopping: `/readyz` fails from SIGTERM on.
    pub drain: Arc<crate::drain::Drain>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            // Policies and file keys load before the process serves; fetched keys may still be
            // missing (identity provider down at startup): not ready until every issuer has keys,
            // nor, when asked for, while the shared limit store does not answer.
            // A stopping replica first of all: load balancers must stop sending before it stops
            // accepting (the grace period).
            "/readyz" if self.drain.draining() => reply(
                503,
                "text/plain",
                b"draining: this replica is stopping\n".to_vec(),
            ),
            "/readyz" => {
                let snap = self.state.load();
                let waiting: Vec<String> = snap
                    .remotes_in_use()
                    .iter()
                    .filter(|r| !r.has_keys())
                    .map(|r| r.issuer.to_string())
                    .collect();
                let needs_store = snap.config.raw.rate_limits.ready_requires_store;
                drop(snap);
                if !waiting.is_empty() {
                    let msg = format!("waiting for the keys of: {}\n", waiting.join(", "));
                    reply(503, "text/plain", msg.into_bytes())
                } else if needs_store && !self.limits.reachable().await {
                    reply(
                        503,
                        "text/plain",
                        b"the rate limit store does not answer\n".to_vec(),
                    )
                } else {
                    reply(200, "text/plain", b"ready\n".to_vec())
                }
            }
            "/metrics" => {
                // Read at scrape time: nothing on the request path touches a metric for this.
                self.metrics
                    .drain
                    .draining
                    .set(i64::from(self.drain.draining()));
                self.metrics
                    .drain
                    .connections_busy
                    .set(self.drain.busy() as i64);
                reply(200, "text/plain; version=0.0.4", self.metrics.render())
            }
            "/status" => {
                let snap = self.state.load();
                let view = self.status.view();
                let now = crate::sync::unix_seconds(SystemTime::now());
                let loaded_age = now.saturating_sub(view.loaded_at);
                let issuers: Vec<_> = snap
                    .issuers
                    .iter()
                    .map(|i| {
                        let fetched: Vec<_> = i.remote.iter().map(|r| r.status()).collect();
                        // Fetched keys are as old as their last successful fetch (the oldest
                        // source decides; `null` before the first); keys from files and secrets
                        // as old as the load that read them.
                        let keys_age = if fetched.is_empty() {
                            Some(loaded_age)
                        } else {
                            fetched
                                .iter()
                                .map(|f| f.age_seconds)
                                .collect::<Option<Vec<u64>>>()
                                .and_then(|ages| ages.into_iter().max())
                        };
                        serde_json::json!({
                            "name": &*i.name,
                            "iss": i.iss,
                            "keys_age_seconds": keys_age,
                            "fetched": fetched,
                            "keys": i.keys.iter().map(|k| serde_json::json!({
                                "kid": k.kid, "alg": format!("{:?}", k.alg)
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "rules": view,
                    "routes": snap.policy.routes.iter().map(|r| &*r.name).collect::<Vec<_>>(),
                    "rules_files": snap.policy.files,
                    "issuers": issuers,
                    "tls_certificates": snap.tls.iter().flat_map(|t| t.iter()).map(|c| serde_json::json!({
                        "file": c.file, "names": c.names, "not_after": c.not_after,
                    })).collect::<Vec<_>>(),
                    "uptime_seconds": self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                });
                reply(
                    200,
                    "application/json",
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )
            }
            _ => reply(
                404,
                "application/json",
                br#"{"error":"not_found"}"#.to_vec(),
            ),
        }
    }
}
