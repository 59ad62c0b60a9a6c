//! Metrics (one Prometheus registry, served on the admin listener) and the decision log.
//!
//! Label values come only from configuration names and closed enums, never from a request or a
//! claim, so the number of series stays bounded whatever clients send.

use crate::config::{LoggingSettings, SubjectLogging};
use crate::policy::Decision;
use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Buckets of upstream and source fetch times, in seconds.
const FETCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A counter family, registered.
fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// A histogram family, registered.
fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Creates the series of a closed label set at zero, so dashboards see them before the first
/// event.
fn declare(c: &IntCounterVec, values: &[&str]) {
    for v in values {
        c.with_label_values(&[v]);
    }
}

/// Counts of proxy conditions logged below their Pingora level.
// The definition is constant: `new` fails only for an invalid metric name or label.
#[allow(clippy::expect_used)]
pub static PROXY_EVENTS: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "claimgate_proxy_events_total",
            "Conditions normal for a proxy, counted instead of logged as errors: pool_race (a pooled upstream connection was taken; a new one served the request), accept_error, client_closed (the client went away before its answer, or in the middle of its request head), h2_handshake_error (a client that negotiated HTTP/2 did not complete its preface), tls_handshake_error (a client's TLS handshake failed), upstream_retry (an upstream attempt failed on a pooled connection and was retried on another), and tunnels (WebSockets) closed by the gateway: tunnel_idle, tunnel_lifetime, tunnel_token_expired.",
        ),
        &["kind"],
    )
    .expect("a valid metric definition");
    for k in [
        "pool_race",
        "accept_error",
        "client_closed",
        "h2_handshake_error",
        "tls_handshake_error",
        "upstream_retry",
        "tunnel_idle",
        "tunnel_lifetime",
        "tunnel_token_expired",
    ] {
        c.with_label_values(&[k]);
    }
    c
});

/// Time of each call to the shared limit store (Redis), successful or not.
// Constant definitions: `new` fails only for an invalid name or buckets.
#[allow(clippy::expect_used)]
pub static LIMIT_STORE_SECONDS: std::sync::LazyLock<prometheus::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "claimgate_limit_store_seconds",
                "Time of each call to the shared rate limit store (Redis), including failed ones.",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .expect("a valid metric definition")
    });

/// Calls to the shared limit store that failed or timed out.
#[allow(clippy::expect_used)]
pub static LIMIT_STORE_ERRORS: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new(
            "claimgate_limit_store_errors_total",
            "Calls to the shared rate limit store that failed, timed out or found no connection.",
        )
        .expect("a valid metric definition")
    });

/// Requests refused in process because their key was known to be over its limit.
#[allow(clippy::expect_used)]
pub static LIMIT_LOCAL_REFUSALS: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new(
            "claimgate_limit_local_refusals_total",
            "Requests refused without asking the shared store: their key was known to be over its limit until later.",
        )
        .expect("a valid metric definition")
    });

/// Limits decided by their `on_store_error` mode because the store could not be asked.
#[allow(clippy::expect_used)]
pub static LIMIT_STORE_FALLBACKS: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(
    || {
        let c = IntCounterVec::new(
            Opts::new(
                "claimgate_limit_store_fallbacks_total",
                "Limits decided by their on_store_error mode (local, open, closed) while the shared store could not be asked.",
            ),
            &["mode"],
        )
        .expect("a valid metric definition");
        for m in ["local", "open", "closed"] {
            c.with_label_values(&[m]);
        }
        c
    },
);

/// Route label for requests that matched no route.
pub const UNMATCHED: &str = "_unmatched";

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub denials: IntCounterVec,
    pub audit_denials: IntCounterVec,
    pub decision_seconds: HistogramVec,
    pub reload: ReloadMetrics,
    pub upstream_responses: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub key_loads: IntCounterVec,
    pub source_requests: IntCounterVec,
    pub source_seconds: HistogramVec,
    pub token_cache: IntCounterVec,
    /// Each TLS certificate's `notAfter` (Unix seconds), by certificate file.
    pub tls_expiry: prometheus::GaugeVec,
    pub drain: DrainMetrics,
    token_cache_hit: IntCounter,
    token_cache_miss: IntCounter,
    /// Each route's series, resolved once: a labelled lookup hashes its label values and takes
    /// a lock, several times per request otherwise.
    routes: ArcSwap<HashMap<Arc<str>, Arc<RouteMetrics>, ahash::RandomState>>,
}

/// The stop's state, set at scrape time (nothing on the request path touches them).
pub struct DrainMetrics {
    /// 1 from SIGTERM on (the replica is draining).
    pub draining: IntGauge,
    /// Connections with a request in flight (or not yet through their first).
    pub connections_busy: IntGauge,
}

impl DrainMetrics {
    fn new(r: &Registry) -> Result<DrainMetrics, prometheus::Error> {
        let draining = IntGauge::new(
            "claimgate_draining",
            "1 once SIGTERM arrived: /readyz answers 503 and the replica is stopping.",
        )?;
        r.register(Box::new(draining.clone()))?;
        let connections_busy = IntGauge::new(
            "claimgate_connections_busy",
            "Client connections with a request in flight, or accepted and not yet through their first request.",
        )?;
        r.register(Box::new(connections_busy.clone()))?;
        Ok(DrainMetrics {
            draining,
            connections_busy,
        })
    }
}

/// The series of loading and reloading.
pub struct ReloadMetrics {
    /// The generation of the set in force.
    pub generation: IntGauge,
    /// Reload checks by result.
    pub results: IntCounterVec,
    /// Reload checks (each reads the whole set), by what started them.
    pub checks: IntCounterVec,
    pub last_success: prometheus::Gauge,
}

impl ReloadMetrics {
    fn new(r: &Registry) -> Result<ReloadMetrics, prometheus::Error> {
        let rules_generation = IntGauge::new(
            "claimgate_rules_generation",
            "Generation of the policy set in force; increases on every successful load.",
        )?;
        r.register(Box::new(rules_generation.clone()))?;
        let reloads = counter(
                r,
                "claimgate_rules_reload_total",
                "Reload checks of rules, keys and configuration, by result (success, unchanged, error, refused, unsettled).",
                &["result"],
            )?;
        declare(
            &reloads,
            &["success", "unchanged", "error", "refused", "unsettled"],
        );
        let last_reload_success = prometheus::Gauge::new(
            "claimgate_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of rules, keys and configuration.",
        )?;
        r.register(Box::new(last_reload_success.clone()))?;
        let reload_checks = counter(
                r,
                "claimgate_reload_checks_total",
                "Checks of the files on disk against the rules in force, by trigger (watch, poll, sighup).",
                &["trigger"],
            )?;
        declare(&reload_checks, &["watch", "poll", "sighup"]);
        Ok(ReloadMetrics {
            generation: rules_generation,
            results: reloads,
            checks: reload_checks,
            last_success: last_reload_success,
        })
    }
}

/// Upstream response classes, in the order of [`RouteMetrics`]' counters.
const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "client_closed"];

/// The series one route's requests update. Each is created on first use, so a route shows the
/// same series it did with labelled lookups (none for what never happened).
pub struct RouteMetrics {
    route: Arc<str>,
    decision_seconds: OnceLock<Histogram>,
    allowed: OnceLock<IntCounter>,
    denied: OnceLock<IntCounter>,
    upstream_seconds: OnceLock<Histogram>,
    upstream: [OnceLock<IntCounter>; 7],
}

impl RouteMetrics {
    /// Counts an upstream response by status (`None`: no response came).
    pub fn upstream_response(&self, metrics: &Metrics, status: Option<u16>) {
        let i = match status {
            Some(100..=199) => 0,
            Some(200..=299) => 1,
            Some(300..=399) => 2,
            Some(400..=499) => 3,
            Some(_) => 4,
            None => 5,
        };
        self.upstream[i]
            .get_or_init(|| {
                metrics
                    .upstream_responses
                    .with_label_values(&[&self.route, CLASSES[i]])
            })
            .inc();
    }

    /// The client went away (or stopped sending) before its answer: a client event, not an
    /// upstream error.
    pub fn client_closed(&self, metrics: &Metrics) {
        self.upstream[6]
            .get_or_init(|| {
                metrics
                    .upstream_responses
                    .with_label_values(&[&self.route, CLASSES[6]])
            })
            .inc();
    }

    pub fn upstream_time(&self, metrics: &Metrics, took: Duration) {
        self.upstream_seconds
            .get_or_init(|| metrics.upstream_seconds.with_label_values(&[&self.route]))
            .observe(took.as_secs_f64());
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let requests = counter(
            &r,
            "claimgate_requests_total",
            "Requests decided, by route and decision.",
            &["route", "decision"],
        )?;
        let denials = counter(
            &r,
            "claimgate_denials_total",
            "Denied requests, by route, rule and reason.",
            &["route", "rule", "reason"],
        )?;
        let audit_denials = counter(
            &r,
            "claimgate_audit_denials_total",
            "Would-be denials of rules in audit mode, by route, rule and reason (rule_denied: the rule would deny; policy_error: it could not be evaluated).",
            &["route", "rule", "reason"],
        )?;
        let decision_seconds = histogram(
            &r,
            "claimgate_decision_duration_seconds",
            "Time to decide a request: token verification and policy evaluation.",
            &[
                5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2,
            ],
            &["route"],
        )?;
        let reload = ReloadMetrics::new(&r)?;
        let upstream_responses = counter(
            &r,
            "claimgate_upstream_responses_total",
            "Responses from upstreams, by route and status class (2xx..5xx; error when the upstream failed; client_closed when the client went away first).",
            &["route", "class"],
        )?;
        let upstream_seconds = histogram(
            &r,
            "claimgate_upstream_duration_seconds",
            "Time from choosing the upstream to its response header.",
            FETCH_BUCKETS,
            &["route"],
        )?;
        let key_loads = counter(
            &r,
            "claimgate_jwks_refresh_total",
            "Loads of an issuer's verification keys, by issuer and result.",
            &["issuer", "result"],
        )?;
        let source_requests = counter(
            &r,
            "claimgate_source_requests_total",
            "Lookups of external sources, by source and result (hit, miss, error, stale).",
            &["source", "result"],
        )?;
        let source_seconds = histogram(
            &r,
            "claimgate_source_fetch_duration_seconds",
            "Time of one fetch from an external source (cache misses only), by source and outcome.",
            FETCH_BUCKETS,
            &["source", "outcome"],
        )?;
        let token_cache = counter(
            &r,
            "claimgate_token_cache_total",
            "Token verifications answered by the verified-token cache (hit) or not (miss).",
            &["result"],
        )?;
        let tls_expiry = prometheus::GaugeVec::new(
            Opts::new(
                "claimgate_tls_certificate_expiry_seconds",
                "When each certificate of the TLS listener expires (its notAfter, Unix seconds), by certificate file.",
            ),
            &["certificate"],
        )?;
        r.register(Box::new(tls_expiry.clone()))?;
        let drain = DrainMetrics::new(&r)?;
        r.register(Box::new(PROXY_EVENTS.clone()))?;
        r.register(Box::new(LIMIT_STORE_SECONDS.clone()))?;
        r.register(Box::new(LIMIT_STORE_ERRORS.clone()))?;
        r.register(Box::new(LIMIT_LOCAL_REFUSALS.clone()))?;
        r.register(Box::new(LIMIT_STORE_FALLBACKS.clone()))?;
        Ok(Metrics {
            registry: r,
            requests,
            denials,
            audit_denials,
            decision_seconds,
            reload,
            upstream_responses,
            upstream_seconds,
            key_loads,
            source_requests,
            source_seconds,
            token_cache_hit: token_cache.with_label_values(&["hit"]),
            token_cache_miss: token_cache.with_label_values(&["miss"]),
            token_cache,
            tls_expiry,
            drain,
            routes: ArcSwap::default(),
        })
    }

    /// The series of route `name` (or of unmatched requests).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self.routes.load().get(name) {
            return m.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let fresh = Arc::new(RouteMetrics {
            route: name.clone(),
            decision_seconds: OnceLock::new(),
            allowed: OnceLock::new(),
            denied: OnceLock::new(),
            upstream_seconds: OnceLock::new(),
            upstream: Default::default(),
        });
        // Route names come from configuration only, so this map is as bounded as the series.
        self.routes.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(name.clone()).or_insert_with(|| fresh.clone());
            map
        });
        self.routes.load().get(&name).cloned().unwrap_or(fresh)
    }

    /// The expiry of each certificate in force; a certificate no longer served loses its series.
    pub fn declare_certificates(&self, tls: Option<&crate::tls::Certificates>) {
        self.tls_expiry.reset();
        for c in tls.iter().flat_map(|t| t.iter()) {
            self.tls_expiry
                .with_label_values(&[&c.file.display().to_string()])
                .set(c.not_after as f64);
        }
    }

    /// Gives every configured source its series at zero, so dashboards and alerts see a source
    /// before its first lookup.
    pub fn declare_sources(&self, names: &[&str]) {
        for name in names {
            for result in ["hit", "miss", "error", "stale"] {
                self.source_requests.with_label_values(&[name, result]);
            }
            for outcome in ["value", "not_found", "error"] {
                self.source_seconds.with_label_values(&[name, outcome]);
            }
        }
    }

    /// Gives every route and rule of a policy set its series at zero: requests by decision,
    /// and for each rule, its denials (enforced rules) or audit denials (audit rules) by
    /// reason. A new rule shows on dashboards, and in a `grep` of `/metrics`, before its first
    /// event; a rule that only errors shows as `policy_error`, not as a would-deny.
    pub fn declare_routes(&self, policy: &crate::policy::PolicySet) {
        use crate::policy::{DenyReason, Mode};
        let reasons = [DenyReason::RuleDenied, DenyReason::PolicyError];
        for route in &policy.routes {
            let name = &*route.name;
            for decision in ["allow", "deny"] {
                self.requests.with_label_values(&[name, decision]);
            }
            for rule in &route.rules {
                let family = match rule.mode {
                    Mode::Enforce => &self.denials,
                    Mode::Audit => &self.audit_denials,
                };
                for r in reasons {
                    family.with_label_values(&[name, &rule.name, r.label()]);
                }
            }
        }
    }

    /// Counts one decision; returns the route's series for the rest of the request.
    pub fn record(&self, d: &Decision, took: Duration) -> Arc<RouteMetrics> {
        match d.token_cache {
            Some(true) => self.token_cache_hit.inc(),
            Some(false) => self.token_cache_miss.inc(),
            None => {}
        }
        let route = d.route.as_deref().unwrap_or(UNMATCHED);
        let rm = self.route(route);
        rm.decision_seconds
            .get_or_init(|| self.decision_seconds.with_label_values(&[route]))
            .observe(took.as_secs_f64());
        match d.denial() {
            None => rm
                .allowed
                .get_or_init(|| self.requests.with_label_values(&[route, "allow"]))
                .inc(),
            Some(den) => {
                rm.denied
                    .get_or_init(|| self.requests.with_label_values(&[route, "deny"]))
                    .inc();
                let rule = den.rule.as_deref().unwrap_or("");
                self.denials
                    .with_label_values(&[route, rule, den.reason.label()])
                    .inc();
            }
        }
        for a in &d.audits {
            self.audit_denials
                .with_label_values(&[route, &a.rule, a.reason.label()])
                .inc();
        }
        rm
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Facts of a request for its decision log line, borrowed from the proxy. The client address is
/// resolved (through trusted proxies) only when a line is actually written.
pub struct LogFacts<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub peer: Option<std::net::IpAddr>,
    pub headers: &'a http::HeaderMap,
    pub geo: &'a crate::geo::GeoResolver,
}

fn subject_for_log(sub: Option<&str>, how: SubjectLogging) -> String {
    match (sub, how) {
        (None, _) | (_, SubjectLogging::Omit) => String::new(),
        (Some(s), SubjectLogging::Plain) => s.to_string(),
        (Some(s), SubjectLogging::Hash) => {
            use sha2::Digest;
            format!(
                "sha256:{}",
                hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8])
            )
        }
    }
}

/// Whether an allowed request is in the sample: decided from the request id, so every log
/// line of one request agrees and no random source is needed.
fn sampled(request_id: &str, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    if rate >= 1.0 {
        return true;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut h);
    (h.finish() as f64 / u64::MAX as f64) < rate
}

/// One structured line per denial and per audit-mode would-be denial (and sampled allows).
/// Never the token.
pub fn log_decision(
    d: &Decision,
    facts: &LogFacts<'_>,
    took: Duration,
    settings: &LoggingSettings,
) {
    let logs_allow = d.denial().is_none() && sampled(facts.request_id, settings.allow_sample_rate);
    if d.denial().is_none() && d.audits.is_empty() && !logs_allow {
        // The common case: an allowed request with nothing to report costs nothing here.
        return;
    }
    let route = d.route.as_deref().unwrap_or(UNMATCHED);
    let client_ip = facts
        .geo
        .client_ip(facts.peer, facts.headers)
        .map(|ip| ip.to_string());
    let client_ip = client_ip.as_deref().unwrap_or("");
    let latency_us = took.as_micros() as u64;
    let sub = subject_for_log(d.subject.as_deref(), settings.subject);
    match d.denial() {
        Some(den) => tracing::info!(
            target: "claimgate::decision",
            request_id = facts.request_id,
            decision = "deny",
            route,
            rule = den.rule.as_deref().unwrap_or(""),
            reason = den.reason.label(),
            status = den.status,
            sub = %sub,
            client_ip,
            method = facts.method,
            path = facts.path,
            latency_us,
            "request denied"
        ),
        None if logs_allow => tracing::info!(
            target: "claimgate::decision",
            request_id = facts.request_id,
            decision = "allow",
            route,
            sub = %sub,
            client_ip,
            method = facts.method,
            path = facts.path,
            latency_us,
            "request allowed"
        ),
        None => {}
    }
    for a in &d.audits {
        tracing::info!(
            target: "claimgate::decision",
            request_id = facts.request_id,
            decision = "audit_deny",
            route,
            rule = &*a.rule,
            reason = a.reason.label(),
            status = a.status,
            sub = %sub,
            client_ip,
            method = facts.method,
            path = facts.path,
            latency_us,
            "audit rule would have denied"
        );
    }
}
