//! Keys from identity providers: a JWKS URL, or OIDC discovery (`/.well-known/openid-configuration`
//! -> `jwks_uri`). Fetched at startup, refreshed on an interval (or the response's
//! `Cache-Control: max-age`, within bounds), refetched when a token names an unknown `kid`
//! (single-flight, at most once per cooldown), and kept through outages up to a maximum staleness.
//!
//! Fetching is I/O and lives here, outside the decision core: the core only reads the key set
//! that is current.

use super::keys::{self, KeySet};
use crate::sync::lock;
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Jwks(String),
    /// Discovery URL and the issuer the document must name.
    Discovery {
        url: String,
        issuer: String,
    },
}

/// Refresh timing, per issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefreshSettings {
    pub interval: Duration,
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub unknown_kid_cooldown: Duration,
    pub max_staleness: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
}

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("request to `{url}` failed: {message}")]
    Http { url: String, message: String },
    #[error("`{url}` answered {status}")]
    Status { url: String, status: u16 },
    #[error("`{url}` sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("`{url}` is not a discovery document: {message}")]
    Discovery { url: String, message: String },
    #[error("the discovery document names issuer `{found}`, not `{expected}`")]
    IssuerMismatch { expected: String, found: String },
    #[error("the JWKS from `{url}` has no usable key: {message}")]
    Jwks { url: String, message: String },
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RemoteStatus {
    pub url: String,
    pub kids: Vec<String>,
    /// Seconds since the keys in use were fetched; `None` before the first success.
    pub age_seconds: Option<u64>,
    pub last_error: Option<String>,
    pub fetches: u64,
    pub stale: bool,
}

struct State {
    fetched_at: Option<Instant>,
    next_refresh: Instant,
    last_error: Option<String>,
    last_unknown_kid_fetch: Option<Instant>,
}

pub struct RemoteKeys {
    pub issuer: Arc<str>,
    source: Source,
    algorithms: Vec<Algorithm>,
    settings: RefreshSettings,
    keys: ArcSwap<KeySet>,
    generation: AtomicU64,
    fetches: AtomicU64,
    state: Mutex<State>,
    inflight: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish()
    }
}

impl RemoteKeys {
    fn new(
        issuer: Arc<str>,
        source: Source,
        algorithms: Vec<Algorithm>,
        settings: RefreshSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> RemoteKeys {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            // Fetches are rare and may run on different runtimes (startup, background):
            // pooled connections would outlive the runtime that made them.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("claimgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        RemoteKeys {
            issuer,
            source,
            algorithms,
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            state: Mutex::new(State {
                fetched_at: None,
                next_refresh: Instant::now(),
                last_error: None,
                last_unknown_kid_fetch: None,
            }),
            inflight: tokio::sync::Mutex::new(()),
            client,
            metrics,
        }
    }

    pub fn url(&self) -> &str {
        match &self.source {
            Source::Jwks(u) => u,
            Source::Discovery { url, .. } => url,
        }
    }

    /// The keys in force, or `None` when there are none or they are older than the maximum
    /// staleness (then tokens are rejected: fail closed).
    pub fn current(&self) -> Option<arc_swap::Guard<Arc<KeySet>>> {
        let fresh = lock(&self.state)
            .fetched_at
            .is_some_and(|t| t.elapsed() <= self.settings.max_staleness);
        fresh.then(|| self.keys.load())
    }

    /// Increases with every successful fetch; `None` while the keys are missing or too stale
    /// to use.
    pub fn generation(&self) -> Option<u64> {
        let fresh = lock(&self.state)
            .fetched_at
            .is_some_and(|t| t.elapsed() <= self.settings.max_staleness);
        fresh.then(|| self.generation.load(Ordering::Acquire))
    }

    /// Seconds until the next fetch is due (at least 1): when a client may try again.
    pub fn retry_after_seconds(&self) -> u64 {
        let next = lock(&self.state).next_refresh;
        next.saturating_duration_since(Instant::now())
            .as_secs()
            .max(1)
    }

    pub fn has_keys(&self) -> bool {
        self.current().is_some_and(|k| !k.is_empty())
    }

    pub fn is_due(&self) -> bool {
        Instant::now() >= lock(&self.state).next_refresh
    }

    pub fn status(&self) -> RemoteStatus {
        let st = lock(&self.state);
        let keys = self.keys.load();
        let mut kids: Vec<String> = keys.iter().filter_map(|k| k.kid.clone()).collect();
        kids.sort();
        kids.dedup();
        RemoteStatus {
            url: self.url().to_string(),
            kids,
            age_seconds: st.fetched_at.map(|t| t.elapsed().as_secs()),
            last_error: st.last_error.clone(),
            fetches: self.fetches.load(Ordering::Relaxed),
            stale: st
                .fetched_at
                .is_none_or(|t| t.elapsed() > self.settings.max_staleness),
        }
    }

    /// A scheduled refresh (startup, interval). Single-flight with every other fetch.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _g = self.inflight.lock().await;
        self.fetch_and_store().await
    }

    /// Called when a token names a `kid` no key has. Returns whether new keys arrived (the
    /// caller then decides once more). Refetches at most once per cooldown, however many
    /// requests ask; concurrent callers share one fetch.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let cooled = |st: &State| {
            st.last_unknown_kid_fetch
                .is_none_or(|t| t.elapsed() >= self.settings.unknown_kid_cooldown)
        };
        if !cooled(&lock(&self.state)) {
            return false;
        }
        let before = self.generation.load(Ordering::Acquire);
        let _g = self.inflight.lock().await;
        if self.generation.load(Ordering::Acquire) != before {
            // Someone else fetched while this request waited.
            return true;
        }
        {
            let mut st = lock(&self.state);
            if !cooled(&st) {
                return false;
            }
            st.last_unknown_kid_fetch = Some(Instant::now());
        }
        tracing::info!(issuer = %self.issuer, "unknown key id: refetching keys");
        self.fetch_and_store().await.is_ok()
    }

    async fn fetch_and_store(&self) -> Result<(), FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        let label = if result.is_ok() { "success" } else { "error" };
        if let Some(m) = &self.metrics {
            m.key_loads.with_label_values(&[&self.issuer, label]).inc();
        }
        let mut st = lock(&self.state);
        match result {
            Ok((set, max_age)) => {
                let kids = set.len();
                self.keys.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
                st.fetched_at = Some(Instant::now());
                st.last_error = None;
                let every = max_age
                    .unwrap_or(self.settings.interval)
                    .clamp(self.settings.min_interval, self.settings.max_interval);
                st.next_refresh = Instant::now() + every;
                tracing::info!(issuer = %self.issuer, keys = kids, next_in_s = every.as_secs(), "keys fetched");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "key fetch failed; keeping the last good keys");
                st.last_error = Some(e.to_string());
                // Retry sooner than a normal refresh, but not in a tight loop.
                st.next_refresh = Instant::now() + self.settings.min_interval;
                Err(e)
            }
        }
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let http = |e: reqwest::Error| FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        };
        let mut resp = self.client.get(url).send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let max_age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .filter_map(|d| d.trim().strip_prefix("max-age="))
                    .find_map(|n| n.trim().parse::<u64>().ok())
            })
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > self.settings.max_bytes {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                    limit: self.settings.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let jwks_url = match &self.source {
            Source::Jwks(u) => u.clone(),
            Source::Discovery { url, issuer } => {
                #[derive(serde::Deserialize)]
                struct Doc {
                    issuer: String,
                    jwks_uri: String,
                }
                let (bytes, _) = self.get(url).await?;
                let doc: Doc =
                    serde_json::from_slice(&bytes).map_err(|e| FetchError::Discovery {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
                if doc.issuer != *issuer {
                    return Err(FetchError::IssuerMismatch {
                        expected: issuer.clone(),
                        found: doc.issuer,
                    });
                }
                doc.jwks_uri
            }
        };
        let (bytes, max_age) = self.get(&jwks_url).await?;
        let keys =
            keys::from_jwks_bytes(&bytes, &self.algorithms).map_err(|e| FetchError::Jwks {
                url: jwks_url.clone(),
                message: format!("{e:?}"),
            })?;
        Ok((KeySet::new(keys), max_age))
    }
}

/// Remote key sets by issuer and source, kept across reloads so an unrelated policy edit does not
/// refetch every issuer's keys.
#[derive(Default)]
pub struct RemoteRegistry {
    map: Mutex<HashMap<(String, Source), Arc<RemoteKeys>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteRegistry")
    }
}

impl RemoteRegistry {
    pub fn new(metrics: Option<Arc<Metrics>>) -> RemoteRegistry {
        RemoteRegistry {
            map: Mutex::default(),
            metrics,
        }
    }

    /// The key set for an issuer's source, created on first use. A changed algorithm list or
    /// refresh setting makes a new one.
    pub fn get(
        &self,
        issuer: &str,
        source: Source,
        algorithms: &[Algorithm],
        settings: &RefreshSettings,
    ) -> Arc<RemoteKeys> {
        let mut map = lock(&self.map);
        let key = (issuer.to_string(), source.clone());
        if let Some(r) = map.get(&key) {
            if r.algorithms == algorithms && r.settings == *settings {
                return r.clone();
            }
        }
        let r = Arc::new(RemoteKeys::new(
            Arc::from(issuer),
            source,
            algorithms.to_vec(),
            settings.clone(),
            self.metrics.clone(),
        ));
        map.insert(key, r.clone());
        r
    }

    pub fn all(&self) -> Vec<Arc<RemoteKeys>> {
        lock(&self.map).values().cloned().collect()
    }

    /// Drops key sets no issuer of the snapshot in force uses any more.
    pub fn retain(&self, in_use: &[Arc<RemoteKeys>]) {
        lock(&self.map).retain(|_, r| in_use.iter().any(|u| Arc::ptr_eq(u, r)));
    }
}
