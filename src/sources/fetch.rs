//! Fetching source requests: one bounded TTL cache per source, one fetch per key at a time
//! (concurrent requests for the same key wait for the same answer), and the `stale` fail mode.
//!
//! Caches outlive reloads: a source keeps its cache while its configuration stays the same.

use super::settings::FailMode;
use super::spec::{SourceRequest, SourceSpec, SourceValue};
use crate::policy::cel::json_to_value;
use crate::sync::lock;
use crate::telemetry::Metrics;
use ::cel::Value;
use moka::future::Cache;
use moka::Expiry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Key = [u8; 32];

/// A finished fetch, cached for its own time.
#[derive(Debug)]
struct Fetched {
    answer: Answer,
    ttl: Duration,
}

#[derive(Debug, Clone)]
enum Answer {
    Value(Value),
    NotFound,
    Failed,
}

struct PerEntryTtl;

impl Expiry<Key, Arc<Fetched>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, v: &Arc<Fetched>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

struct SourceCache {
    spec: Arc<SourceSpec>,
    fresh: Cache<Key, Arc<Fetched>>,
    /// The last good answer per key, kept `ttl + stale` (only with `on_error = "stale"`).
    last_good: Option<Cache<Key, Value>>,
}

impl SourceCache {
    fn new(spec: Arc<SourceSpec>) -> SourceCache {
        let max = spec.settings.max_entries;
        let last_good = (spec.on_error == FailMode::Stale).then(|| {
            Cache::builder()
                .max_capacity(max)
                .time_to_live(spec.ttl + spec.stale)
                .build()
        });
        SourceCache {
            fresh: Cache::builder()
                .max_capacity(max)
                .expire_after(PerEntryTtl)
                .build(),
            last_good,
            spec,
        }
    }
}

/// Fetches source requests for the proxy. One per server; cheap to share.
pub struct SourceFetcher {
    client: reqwest::Client,
    caches: std::sync::Mutex<HashMap<Arc<str>, Arc<SourceCache>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for SourceFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceFetcher")
    }
}

impl SourceFetcher {
    /// Fails only if no HTTP client can be made (no TLS roots): a default client in its place
    /// would follow redirects the sources must not follow.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Result<SourceFetcher, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("claimgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(SourceFetcher {
            client,
            caches: Default::default(),
            metrics,
        })
    }

    /// The values of `requests`, in the same order, all fetched at once. `named` is the set of
    /// sources of the snapshot deciding the request: a cache of a source it does not name (a
    /// reload removed or renamed it) is dropped, and its memory with it.
    pub async fn fetch_all(
        &self,
        requests: &[SourceRequest],
        named: &super::SourceSet,
    ) -> Vec<SourceValue> {
        if !requests.is_empty() {
            self.forget_others(named);
        }
        match requests {
            [] => Vec::new(),
            [one] => vec![self.fetch(one).await],
            many => futures_util::future::join_all(many.iter().map(|r| self.fetch(r))).await,
        }
    }

    fn forget_others(&self, named: &super::SourceSet) {
        lock(&self.caches).retain(|name, _| named.get(name).is_some());
    }

    fn cache_for(&self, spec: &Arc<SourceSpec>) -> Arc<SourceCache> {
        let mut caches = lock(&self.caches);
        match caches.get(&spec.name) {
            Some(c) if c.spec.settings == spec.settings => c.clone(),
            _ => {
                let c = Arc::new(SourceCache::new(spec.clone()));
                caches.insert(spec.name.clone(), c.clone());
                c
            }
        }
    }

    pub async fn fetch(&self, req: &SourceRequest) -> SourceValue {
        let cache = self.cache_for(&req.spec);
        let fetched_here = std::sync::atomic::AtomicBool::new(false);
        let entry = cache
            .fresh
            .entry(req.key)
            .or_insert_with(async {
                fetched_here.store(true, std::sync::atomic::Ordering::Relaxed);
                Arc::new(self.fetch_uncached(req, &cache).await)
            })
            .await;
        let missed = fetched_here.load(std::sync::atomic::Ordering::Relaxed);
        let fetched = entry.into_value();
        let (value, result) = match &fetched.answer {
            Answer::Value(v) => (SourceValue::Value(v.clone()), hit_or_miss(missed)),
            Answer::NotFound => (SourceValue::NotFound, hit_or_miss(missed)),
            Answer::Failed => match &cache.last_good {
                Some(lg) => match lg.get(&req.key).await {
                    Some(v) => (SourceValue::Value(v), "stale"),
                    None => (SourceValue::Unavailable, "error"),
                },
                None => (SourceValue::Unavailable, "error"),
            },
        };
        if let Some(m) = &self.metrics {
            m.source_requests
                .with_label_values(&[&*req.spec.name, result])
                .inc();
        }
        value
    }

    async fn fetch_uncached(&self, req: &SourceRequest, cache: &SourceCache) -> Fetched {
        let spec = &req.spec;
        let started = Instant::now();
        let answer = match tokio::time::timeout(spec.timeout, self.get(req)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tracing::warn!(source = %spec.name, error = %e, "source fetch failed");
                Answer::Failed
            }
            Err(_) => {
                tracing::warn!(source = %spec.name, timeout_ms = spec.timeout.as_millis() as u64, "source fetch timed out");
                Answer::Failed
            }
        };
        let outcome = match answer {
            Answer::Value(_) => "value",
            Answer::NotFound => "not_found",
            Answer::Failed => "error",
        };
        if let Some(m) = &self.metrics {
            m.source_seconds
                .with_label_values(&[&*spec.name, outcome])
                .observe(started.elapsed().as_secs_f64());
        }
        if let (Answer::Value(v), Some(lg)) = (&answer, &cache.last_good) {
            lg.insert(req.key, v.clone()).await;
        }
        let ttl = match answer {
            Answer::Value(_) => spec.ttl,
            _ => spec.negative_ttl,
        };
        Fetched { answer, ttl }
    }

    async fn get(&self, req: &SourceRequest) -> Result<Answer, String> {
        let spec = &req.spec;
        let mut builder = self
            .client
            .request(spec.method.clone(), &req.url)
            .timeout(spec.timeout);
        let mut has_content_type = false;
        for (n, v) in &req.headers {
            has_content_type |= n == http::header::CONTENT_TYPE;
            builder = builder.header(n.clone(), v.clone());
        }
        if let Some(b) = &req.body {
            if !has_content_type {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            }
            builder = builder.body(b.clone());
        }
        let mut resp = builder.send().await.map_err(|e| without_url(&e))?;
        let status = resp.status();
        if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE {
            return Ok(Answer::NotFound);
        }
        if !status.is_success() {
            return Err(format!("the source answered {status}"));
        }
        let limit = spec.settings.max_response_bytes;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| without_url(&e))? {
            if body.len() + chunk.len() > limit {
                return Err(format!("the answer is larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        Ok(Answer::Value(json_to_value(&json)))
    }
}

fn hit_or_miss(missed: bool) -> &'static str {
    if missed {
        "miss"
    } else {
        "hit"
    }
}

/// reqwest errors print the URL, which may carry a claim; the source name identifies it.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "bad answer body"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sources::SourceSet;
    use std::path::Path;

    fn sources(names: &[&str]) -> SourceSet {
        let mut text = String::from(
            "[listen]\nproxy = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9901\"\n[rules]\ndir = \"rules\"\n",
        );
        for n in names {
            text.push_str(&format!(
                "[sources.{n}]\nurl = \"http://127.0.0.1:9/{n}/{{claims.sub}}\"\n"
            ));
        }
        let config = Config::from_str(Path::new("/x/gateway.toml"), text).unwrap();
        SourceSet::compile(&config).unwrap()
    }

    #[test]
    fn a_source_no_snapshot_names_loses_its_cache() {
        let fetcher = SourceFetcher::new(None).unwrap();
        let both = sources(&["a", "b"]);
        for name in ["a", "b"] {
            fetcher.cache_for(both.get(name).unwrap());
        }
        assert_eq!(lock(&fetcher.caches).len(), 2);
        // The same settings after a reload: the cache is kept; a source removed: dropped.
        let only_a = sources(&["a"]);
        let kept = fetcher.cache_for(only_a.get("a").unwrap());
        fetcher.forget_others(&only_a);
        let caches = lock(&fetcher.caches);
        assert_eq!(caches.keys().map(|k| &**k).collect::<Vec<_>>(), ["a"]);
        assert!(Arc::ptr_eq(&caches["a"], &kept));
    }
}
