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

/// How an issuer's keys are fetched: refresh timing, bounds, and whom its https server is
/// trusted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefreshSettings {
    pub interval: Duration,
    pub min_interval: Duration,
    pub max_interval: Duration,
    pub unknown_kid_cooldown: Duration,
    pub max_staleness: Duration,
    pub timeout: Duration,
    pub max_bytes: usize,
    /// The issuer's `ca_file`: the only roots its https servers may chain to. `None`: the
    /// system's trust roots.
    pub trusted_cas: Option<TrustedCas>,
}

/// CA certificates (DER), compared by content: a rewritten `ca_file` with the same
/// certificates is the same trust.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TrustedCas(pub Arc<[Vec<u8>]>);

impl std::fmt::Debug for TrustedCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedCas({} certificates)", self.0.len())
    }
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
    #[error("cannot make the client that fetches `{url}`: {message}")]
    Client { url: String, message: String },
}

impl FetchError {
    fn client(source: &Source, e: &reqwest::Error) -> FetchError {
        FetchError::Client {
            url: source.url().to_string(),
            message: causes(e),
        }
    }

    fn http(url: &str, e: reqwest::Error) -> FetchError {
        FetchError::Http {
            url: url.to_string(),
            message: causes(&e.without_url()),
        }
    }
}

/// An error and its causes on one line: reqwest's own text ("error sending request") says
/// nothing of why; the cause (a refused connection, an untrusted certificate) is what an
/// operator needs to read.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl Source {
    /// The URL fetched first: the JWKS, or the discovery document.
    pub fn url(&self) -> &str {
        match self {
            Source::Jwks(u) => u,
            Source::Discovery { url, .. } => url,
        }
    }
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

#[derive(Clone)]
struct State {
    fetched_at: Option<Instant>,
    next_refresh: Instant,
    last_error: Option<String>,
    last_unknown_kid_fetch: Option<Instant>,
    /// The JWKS document the keys in use were read from: a successor with other algorithms
    /// reads its keys from it again.
    document: Option<Arc<[u8]>>,
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
    ) -> Result<RemoteKeys, FetchError> {
        // At most 3 redirects, and never from https to http: keys fetched over TLS must not
        // come from a server a network attacker can answer for.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() != "https"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                attempt.error("a redirect from https to http")
            } else if attempt.previous().len() > 3 {
                attempt.error("more than 3 redirects")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .redirect(redirects)
            // Fetches are rare and may run on different runtimes (startup, background):
            // pooled connections would outlive the runtime that made them.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("claimgate/", env!("CARGO_PKG_VERSION")));
        if let Some(cas) = &settings.trusted_cas {
            let certs = cas
                .0
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| FetchError::client(&source, &e))?;
            builder = builder.tls_certs_only(certs);
        }
        // No fallback to a default client: it would follow any redirect and trust other roots.
        let client = builder
            .build()
            .map_err(|e| FetchError::client(&source, &e))?;
        Ok(RemoteKeys {
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
                document: None,
            }),
            inflight: tokio::sync::Mutex::new(()),
            client,
            metrics,
        })
    }

    /// The same source with other algorithms or refresh settings, for a reload: it starts
    /// with this one's keys and fetch state rather than with none, so that raising
    /// `max_staleness_seconds` during an outage of the identity provider keeps its tokens
    /// verifying. With other algorithms, the keys are read again from the same document.
    fn successor(
        &self,
        algorithms: &[Algorithm],
        settings: &RefreshSettings,
    ) -> Result<RemoteKeys, FetchError> {
        let next = RemoteKeys::new(
            self.issuer.clone(),
            self.source.clone(),
            algorithms.to_vec(),
            settings.clone(),
            self.metrics.clone(),
        )?;
        let mut state = lock(&self.state).clone();
        let keys = if self.algorithms == algorithms {
            Some(self.keys.load_full())
        } else {
            state
                .document
                .as_deref()
                .and_then(|d| keys::from_jwks_bytes(d, algorithms).ok())
                .map(|k| Arc::new(KeySet::new(k)))
        };
        match keys {
            Some(k) => next.keys.store(k),
            // The document has no key for the new algorithms: none until the next fetch,
            // which is due now.
            None => {
                state.fetched_at = None;
                state.document = None;
                state.next_refresh = Instant::now();
            }
        }
        // A shorter interval than the one scheduled takes effect now; a new CA bundle at
        // once (the operator who replaces it is likely waiting for a failing fetch to pass).
        state.next_refresh = if settings.trusted_cas != self.settings.trusted_cas {
            Instant::now()
        } else {
            state
                .next_refresh
                .min(Instant::now() + settings.max_interval)
        };
        next.generation
            .store(self.generation.load(Ordering::Acquire), Ordering::Release);
        *lock(&next.state) = state;
        Ok(next)
    }

    pub fn url(&self) -> &str {
        self.source.url()
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
            Ok((set, document, max_age)) => {
                let kids = set.len();
                self.keys.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
                st.fetched_at = Some(Instant::now());
                st.document = Some(document);
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
        let http = |e: reqwest::Error| FetchError::http(url, e);
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

    async fn fetch(&self) -> Result<(KeySet, Arc<[u8]>, Option<Duration>), FetchError> {
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
                // A document fetched over TLS cannot send the keys' fetch over plain HTTP.
                if url.starts_with("https://") && !doc.jwks_uri.starts_with("https://") {
                    return Err(FetchError::Discovery {
                        url: url.clone(),
                        message: format!("`jwks_uri` `{}` is not https", doc.jwks_uri),
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
        Ok((KeySet::new(keys), Arc::from(bytes), max_age))
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

    /// The key set for an issuer's source as a set being built will use it: the one in force
    /// when nothing about it changed, else a successor of it (its keys carried over) or a new
    /// one. Nothing in the registry changes until the set is put in force ([`Self::publish`]):
    /// a set that fails to load, or is never committed, leaves the key sets in force (and
    /// their scheduled refreshes) as they were.
    pub fn get(
        &self,
        issuer: &str,
        source: Source,
        algorithms: &[Algorithm],
        settings: &RefreshSettings,
    ) -> Result<Arc<RemoteKeys>, FetchError> {
        let map = lock(&self.map);
        Ok(match map.get(&(issuer.to_string(), source.clone())) {
            Some(r) if r.algorithms == algorithms && r.settings == *settings => r.clone(),
            Some(r) => Arc::new(r.successor(algorithms, settings)?),
            None => Arc::new(RemoteKeys::new(
                Arc::from(issuer),
                source,
                algorithms.to_vec(),
                settings.clone(),
                self.metrics.clone(),
            )?),
        })
    }

    /// The key sets in force, which the background refresh keeps fresh.
    pub fn all(&self) -> Vec<Arc<RemoteKeys>> {
        lock(&self.map).values().cloned().collect()
    }

    /// Puts in force the key sets a snapshot put in force uses, and only those.
    pub fn publish(&self, in_use: &[Arc<RemoteKeys>]) {
        let mut map = lock(&self.map);
        map.clear();
        for r in in_use {
            map.insert((r.issuer.to_string(), r.source.clone()), r.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cas: Option<&[u8]>) -> RefreshSettings {
        RefreshSettings {
            interval: Duration::from_secs(300),
            min_interval: Duration::from_secs(600),
            max_interval: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_staleness: Duration::from_secs(86_400),
            timeout: Duration::from_secs(5),
            max_bytes: 1 << 20,
            trusted_cas: cas.map(|der| TrustedCas(vec![der.to_vec()].into())),
        }
    }

    fn ca_der() -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_new_ca_bundle_makes_a_successor_due_at_once_and_the_same_one_keeps_the_key_set() {
        let registry = RemoteRegistry::default();
        let source = Source::Jwks("https://idp.test/jwks".into());
        let (ca, other) = (ca_der(), ca_der());
        let get = |cas: &[u8]| {
            registry
                .get(
                    "idp",
                    source.clone(),
                    &[Algorithm::RS256],
                    &settings(Some(cas)),
                )
                .unwrap()
        };
        let first = get(&ca);
        registry.publish(std::slice::from_ref(&first));
        // As after a failed fetch: the next one is minutes away.
        lock(&first.state).next_refresh = Instant::now() + Duration::from_secs(600);
        // The same certificates (a file written again): the same key set, its schedule kept.
        let again = get(&ca.clone());
        assert!(Arc::ptr_eq(&again, &first));
        assert!(!first.is_due());
        // Another CA: a successor, with a client that trusts it, fetching now.
        let successor = get(&other);
        assert!(!Arc::ptr_eq(&successor, &first));
        assert!(successor.is_due());
        // Without a bundle (the system's roots) is another trust as well.
        let system = registry
            .get("idp", source.clone(), &[Algorithm::RS256], &settings(None))
            .unwrap();
        assert!(system.is_due());
    }

    #[test]
    fn a_bundle_the_client_cannot_take_is_an_error_not_a_default_client() {
        let registry = RemoteRegistry::default();
        let source = Source::Jwks("https://idp.test/jwks".into());
        let err = registry
            .get(
                "idp",
                source,
                &[Algorithm::RS256],
                &settings(Some(b"not DER")),
            )
            .unwrap_err();
        assert!(err.to_string().contains("https://idp.test/jwks"), "{err}");
    }

    #[test]
    fn an_error_reads_with_its_causes() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            causes(&Outer(inner)),
            "error sending request: invalid peer certificate: UnknownIssuer"
        );
    }
}
