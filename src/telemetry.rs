//! Metrics (one Prometheus registry, served on the admin listener) and the decision log.
//!
//! Label values come only from configuration names and closed enums, never from a request or a
//! claim, so the number of series stays bounded whatever clients send.

use crate::policy::Decision;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use std::time::Duration;

/// Route label for requests that matched no route.
pub const UNMATCHED: &str = "_unmatched";

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub denials: IntCounterVec,
    pub audit_denials: IntCounterVec,
    pub decision_seconds: HistogramVec,
    pub rules_generation: IntGauge,
    pub reloads: IntCounterVec,
    pub last_reload_success: prometheus::Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "claimgate_requests_total",
                "Requests decided, by route and decision.",
            ),
            &["route", "decision"],
        )?;
        let denials = IntCounterVec::new(
            Opts::new(
                "claimgate_denials_total",
                "Denied requests, by route, rule and reason.",
            ),
            &["route", "rule", "reason"],
        )?;
        let audit_denials = IntCounterVec::new(
            Opts::new(
                "claimgate_audit_denials_total",
                "Would-be denials of rules in audit mode, by route and rule.",
            ),
            &["route", "rule"],
        )?;
        let decision_seconds = HistogramVec::new(
            HistogramOpts::new(
                "claimgate_decision_duration_seconds",
                "Time to decide a request: token verification and policy evaluation.",
            )
            .buckets(vec![
                5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2,
            ]),
            &["route"],
        )?;
        let rules_generation = IntGauge::new(
            "claimgate_rules_generation",
            "Generation of the policy set in force; increases on every successful load.",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "claimgate_rules_reload_total",
                "Reload attempts of rules, keys and configuration, by result (success, error, refused).",
            ),
            &["result"],
        )?;
        let last_reload_success = prometheus::Gauge::new(
            "claimgate_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of rules, keys and configuration.",
        )?;
        for r in ["success", "error", "refused"] {
            reloads.with_label_values(&[r]);
        }
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_success.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(denials.clone()))?;
        registry.register(Box::new(audit_denials.clone()))?;
        registry.register(Box::new(decision_seconds.clone()))?;
        registry.register(Box::new(rules_generation.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            denials,
            audit_denials,
            decision_seconds,
            rules_generation,
            reloads,
            last_reload_success,
        })
    }

    /// Counts one decision.
    pub fn record(&self, d: &Decision, took: Duration) {
        let route = d.route.as_deref().unwrap_or(UNMATCHED);
        self.decision_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
        match d.denial() {
            None => self.requests.with_label_values(&[route, "allow"]).inc(),
            Some(den) => {
                self.requests.with_label_values(&[route, "deny"]).inc();
                let rule = den.rule.as_deref().unwrap_or("");
                self.denials
                    .with_label_values(&[route, rule, den.reason.label()])
                    .inc();
            }
        }
        for a in &d.audits {
            self.audit_denials
                .with_label_values(&[route, &a.rule])
                .inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Facts of a request for its decision log line, borrowed from the proxy.
pub struct LogFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub client_ip: Option<std::net::IpAddr>,
}

/// One structured line per denial and per audit-mode would-be denial. Never the token; the
/// subject is logged because operators need to know whom a denial hit.
pub fn log_decision(d: &Decision, facts: &LogFacts<'_>, took: Duration) {
    let route = d.route.as_deref().unwrap_or(UNMATCHED);
    let client_ip = facts.client_ip.map(|ip| ip.to_string());
    let latency_us = took.as_micros() as u64;
    if let Some(den) = d.denial() {
        tracing::info!(
            target: "claimgate::decision",
            decision = "deny",
            route,
            rule = den.rule.as_deref().unwrap_or(""),
            reason = den.reason.label(),
            status = den.status,
            sub = d.subject.as_deref().unwrap_or(""),
            client_ip = client_ip.as_deref().unwrap_or(""),
            method = facts.method,
            path = facts.path,
            latency_us,
            "request denied"
        );
    }
    for a in &d.audits {
        tracing::info!(
            target: "claimgate::decision",
            decision = "audit_deny",
            route,
            rule = &*a.rule,
            reason = a.reason.label(),
            status = a.status,
            sub = d.subject.as_deref().unwrap_or(""),
            client_ip = client_ip.as_deref().unwrap_or(""),
            method = facts.method,
            path = facts.path,
            latency_us,
            "audit rule would have denied"
        );
    }
}

/// JSON logs on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}
