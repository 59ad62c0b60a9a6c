//! The gateway's own view of each interval, read from its /metrics: the token cache's hits and
//! misses, and how long its decisions and its upstream took. A latency tail the client sees but
//! the gateway's decisions do not show was spent elsewhere: waiting for the worker, in the
//! upstream, in the client or on the host.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// A decision slower than this counts as slow: an ES256 verification is ~60 µs here, so only a
/// stall (the cache's maintenance, an allocation storm, the host) takes a decision past it.
pub const SLOW_DECISION: &str = "0.00025";
/// An upstream answer slower than this counts as slow (nginx answers in well under it).
pub const SLOW_UPSTREAM: &str = "0.001";

/// Counters since the gateway started, summed over routes.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Counters {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub decisions: u64,
    pub decision_seconds: f64,
    /// Decisions that took longer than `SLOW_DECISION`.
    pub slow_decisions: u64,
    pub upstream: u64,
    pub upstream_seconds: f64,
    /// Upstream answers that took longer than `SLOW_UPSTREAM`.
    pub slow_upstream: u64,
}

impl Counters {
    /// Reads the counters from the Prometheus text format.
    pub fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        let mut fast_decisions = 0u64;
        let mut fast_upstream = 0u64;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let le = |bound: &str| labels.contains(&format!("le=\"{bound}\""));
            match name {
                "claimgate_token_cache_total" if labels.contains("result=\"hit\"") => {
                    c.cache_hits += v as u64
                }
                "claimgate_token_cache_total" if labels.contains("result=\"miss\"") => {
                    c.cache_misses += v as u64
                }
                "claimgate_decision_duration_seconds_count" => c.decisions += v as u64,
                "claimgate_decision_duration_seconds_sum" => c.decision_seconds += v,
                "claimgate_decision_duration_seconds_bucket" if le(SLOW_DECISION) => {
                    fast_decisions += v as u64
                }
                "claimgate_upstream_duration_seconds_count" => c.upstream += v as u64,
                "claimgate_upstream_duration_seconds_sum" => c.upstream_seconds += v,
                "claimgate_upstream_duration_seconds_bucket" if le(SLOW_UPSTREAM) => {
                    fast_upstream += v as u64
                }
                _ => {}
            }
        }
        c.slow_decisions = c.decisions.saturating_sub(fast_decisions);
        c.slow_upstream = c.upstream.saturating_sub(fast_upstream);
        c
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            cache_hits: self.cache_hits.saturating_sub(earlier.cache_hits),
            cache_misses: self.cache_misses.saturating_sub(earlier.cache_misses),
            decisions: self.decisions.saturating_sub(earlier.decisions),
            decision_seconds: (self.decision_seconds - earlier.decision_seconds).max(0.0),
            slow_decisions: self.slow_decisions.saturating_sub(earlier.slow_decisions),
            upstream: self.upstream.saturating_sub(earlier.upstream),
            upstream_seconds: (self.upstream_seconds - earlier.upstream_seconds).max(0.0),
            slow_upstream: self.slow_upstream.saturating_sub(earlier.slow_upstream),
        }
    }

    /// Mean decision time in microseconds; 0 without decisions.
    pub fn mean_decision_us(&self) -> f64 {
        if self.decisions == 0 {
            return 0.0;
        }
        self.decision_seconds * 1e6 / self.decisions as f64
    }

    /// Mean time from choosing the upstream to its answer's header, in microseconds (the
    /// upstream's own time plus the worker's delay in reading the answer); 0 without answers.
    pub fn mean_upstream_us(&self) -> f64 {
        if self.upstream == 0 {
            return 0.0;
        }
        self.upstream_seconds * 1e6 / self.upstream as f64
    }
}

/// The gateway's counters now.
pub async fn scrape(admin: &str) -> Result<Counters, String> {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("admin: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(conn);
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, admin)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Counters::parse(&String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_routes_and_slow_ones_counted_above_the_bound() {
        let text = r#"# HELP claimgate_token_cache_total x
claimgate_token_cache_total{result="hit"} 90
claimgate_token_cache_total{result="miss"} 10
claimgate_decision_duration_seconds_bucket{route="a",le="0.0001"} 70
claimgate_decision_duration_seconds_bucket{route="a",le="0.00025"} 95
claimgate_decision_duration_seconds_bucket{route="a",le="+Inf"} 100
claimgate_decision_duration_seconds_sum{route="a"} 0.005
claimgate_decision_duration_seconds_count{route="a"} 100
claimgate_decision_duration_seconds_bucket{route="b",le="0.00025"} 1
claimgate_decision_duration_seconds_sum{route="b"} 0.001
claimgate_decision_duration_seconds_count{route="b"} 4
claimgate_upstream_duration_seconds_bucket{route="a",le="0.0005"} 50
claimgate_upstream_duration_seconds_bucket{route="a",le="0.001"} 99
claimgate_upstream_duration_seconds_sum{route="a"} 0.0312
claimgate_upstream_duration_seconds_count{route="a"} 104
"#;
        let c = Counters::parse(text);
        assert_eq!((c.cache_hits, c.cache_misses), (90, 10));
        assert_eq!((c.decisions, c.slow_decisions), (104, 8));
        assert!((c.decision_seconds - 0.006).abs() < 1e-12);
        assert_eq!((c.upstream, c.slow_upstream), (104, 5));
        assert!((c.mean_upstream_us() - 300.0).abs() < 1e-6);
        let d = c.since(&Counters {
            decisions: 4,
            decision_seconds: 0.001,
            slow_decisions: 3,
            ..Counters::default()
        });
        assert_eq!((d.decisions, d.slow_decisions), (100, 5));
        assert!((d.mean_decision_us() - 50.0).abs() < 1e-6);
    }
}
