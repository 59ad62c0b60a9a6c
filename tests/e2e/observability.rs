//! Metrics, decision logs and the admin listener.

use super::harness::*;
use super::tokens::*;
use serde_json::{json, Value};

const RULES: &str = r#"
[[route]]
name = "obs"
path = "/obs"
issuers = ["ec"]

  [[route.rule]]
  name = "level-1"
  allow_if = "claims.level >= 1"
  message = "level 1 required"

  [[route.rule]]
  name = "watch-level-5"
  mode = "audit"
  allow_if = "claims.level >= 5"

  [route.forward]
  "x-rules-saw-id" = "request.headers['x-request-id']"
"#;

fn start(extra_config: &str) -> (Upstream, Gateway) {
    start_standard(extra_config, &[("obs.toml", RULES)])
}

#[tokio::test]
async fn counters_match_a_known_sequence_exactly() {
    let (up, gw) = start("");
    let c = client();
    let send = |t: Option<String>, path: &'static str| {
        let mut r = c.get(gw.url(path));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // 3 allowed (one of them also an audit would-be denial), 2 denied by level-1, 1 policy
    // error (level is a string), 1 missing token, 1 expired token, 2 unmatched.
    for level in [5, 6, 2] {
        assert_eq!(
            send(Some(es256(json!({"level": level}))), "/obs")
                .await
                .unwrap()
                .status(),
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            send(Some(es256(json!({"level": 0}))), "/obs")
                .await
                .unwrap()
                .status(),
            403
        );
    }
    assert_eq!(
        send(Some(es256(json!({"level": "x"}))), "/obs")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(send(None, "/obs").await.unwrap().status(), 401);
    assert_eq!(
        send(
            Some(es256(json!({"level": 9, "exp": now() - 3600}))),
            "/obs"
        )
        .await
        .unwrap()
        .status(),
        401
    );
    for _ in 0..2 {
        assert_eq!(send(None, "/elsewhere").await.unwrap().status(), 404);
    }
    assert_eq!(up.count(), 3);

    let m = gw.metrics().await;
    let v = |name: &str, labels: &[(&str, &str)]| metric_value(&m, name, labels);
    assert_eq!(
        v(
            "claimgate_requests_total",
            &[("route", "obs"), ("decision", "allow")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "claimgate_requests_total",
            &[("route", "obs"), ("decision", "deny")]
        ),
        Some(5.0)
    );
    assert_eq!(
        v(
            "claimgate_requests_total",
            &[("route", "_unmatched"), ("decision", "deny")]
        ),
        Some(2.0)
    );
    let denials = |rule: &str, reason: &str| {
        v(
            "claimgate_denials_total",
            &[("route", "obs"), ("rule", rule), ("reason", reason)],
        )
    };
    assert_eq!(denials("level-1", "rule_denied"), Some(2.0));
    assert_eq!(denials("level-1", "policy_error"), Some(1.0));
    assert_eq!(denials("", "missing_token"), Some(1.0));
    assert_eq!(denials("", "token_expired"), Some(1.0));
    assert_eq!(
        v(
            "claimgate_denials_total",
            &[
                ("route", "_unmatched"),
                ("rule", ""),
                ("reason", "no_route")
            ]
        ),
        Some(2.0)
    );
    // Audit: only level 2 would have been denied; denied requests stop at the enforced rule
    // before the audit rule runs.
    assert_eq!(
        v(
            "claimgate_audit_denials_total",
            &[
                ("route", "obs"),
                ("rule", "watch-level-5"),
                ("reason", "rule_denied")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "claimgate_upstream_responses_total",
            &[("route", "obs"), ("class", "2xx")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v(
            "claimgate_decision_duration_seconds_count",
            &[("route", "obs")]
        ),
        Some(8.0)
    );
    assert_eq!(
        v(
            "claimgate_upstream_duration_seconds_count",
            &[("route", "obs")]
        ),
        Some(3.0)
    );
    assert_eq!(v("claimgate_rules_generation", &[]), Some(1.0));
    assert_eq!(
        v(
            "claimgate_jwks_refresh_total",
            &[("issuer", "ec"), ("result", "success")]
        ),
        Some(1.0)
    );
    // No label value comes from a request or a claim.
    for forbidden in ["=\"x\"", "user-1", "/elsewhere", "https://ec.test", "/obs"] {
        assert!(
            !m.lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.contains(forbidden)),
            "`{forbidden}` in a metric label"
        );
    }
}

fn names_in(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("claimgate_"))
        .map(|w| {
            let w = w.strip_suffix("_bucket").unwrap_or(w);
            let w = w.strip_suffix("_count").unwrap_or(w);
            w.strip_suffix("_sum").unwrap_or(w).to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_alerts_exists() {
    // A configured source has its series before any lookup.
    let (_up, gw) = start("[sources.obs]\nurl = \"http://127.0.0.1:1/{claims.sub}\"\n");
    // One request of each kind so that label-less families have samples.
    let _ = client()
        .get(gw.url("/obs"))
        .bearer_auth(es256(json!({"level": 1})))
        .send()
        .await;
    let _ = client().get(gw.url("/obs")).send().await;
    let m = gw.metrics().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard =
        std::fs::read_to_string(format!("{root}/observability/grafana-dashboard.json")).unwrap();
    let _: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts =
        std::fs::read_to_string(format!("{root}/observability/prometheus-alerts.yml")).unwrap();
    let mut checked = 0;
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let names = names_in(text);
        assert!(names.len() >= 4, "{file}: too few metrics found: {names:?}");
        for n in names {
            assert!(
                m.contains(&format!("# TYPE {n} ")),
                "{file} uses `{n}`, which /metrics does not expose"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10);
}

#[tokio::test]
async fn request_ids_flow_through_and_logs_never_hold_tokens() {
    let (up, gw) = start("[logging]\nsubject = \"hash\"\nallow_sample_rate = 1.0\n");
    let c = client();
    let good = es256(json!({"level": 2, "sub": "alice"}));
    let bad = es256(json!({"level": 0, "sub": "alice"}));

    let r = c
        .get(gw.url("/obs"))
        .bearer_auth(&good)
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-request-id"], "req-123");

    let r = c
        .get(gw.url("/obs"))
        .bearer_auth(&bad)
        .header("x-request-id", "req-456")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-request-id"], "req-456");

    // No id, or an unusable one: a fresh id, the same in the upstream request and the log.
    let r = c
        .get(gw.url("/obs"))
        .bearer_auth(&good)
        .header("x-request-id", "bad id\twith junk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let generated = up.last().headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(generated.len(), 32, "{generated}");
    // The rules saw the id the upstream was sent, not the client's.
    assert_eq!(up.last().headers["x-rules-saw-id"], generated.as_str());
    // Sent twice: the first line is the id, to the upstream and to the rules alike.
    let r = c
        .get(gw.url("/obs"))
        .bearer_auth(&good)
        .header("x-request-id", "req-1")
        .header("x-request-id", "req-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-request-id"], "req-1");
    assert_eq!(up.last().headers["x-rules-saw-id"], "req-1");

    let logs = gw.wait_log(&generated);
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "claimgate::decision")
        .collect();
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|v| v["fields"]["request_id"] == id)
            .cloned()
    };
    let denied = by_id("req-456").expect("denial logged");
    assert_eq!(denied["fields"]["decision"], "deny");
    assert_eq!(denied["fields"]["rule"], "level-1");
    assert_eq!(denied["fields"]["status"], 403);
    assert_eq!(denied["fields"]["client_ip"], "127.0.0.1");
    assert_eq!(denied["fields"]["method"], "GET");
    assert_eq!(denied["fields"]["path"], "/obs");
    assert!(denied["fields"]["latency_us"].is_u64());
    assert!(denied["timestamp"].is_string());
    let sub = denied["fields"]["sub"].as_str().unwrap();
    assert!(sub.starts_with("sha256:") && sub != "alice", "{sub}");
    assert_eq!(
        by_id("req-123").expect("sampled allow")["fields"]["decision"],
        "allow"
    );
    assert!(by_id(&generated).is_some());

    assert!(!logs.contains("alice"), "the subject must be hashed");
    for t in [&good, &bad] {
        assert!(!logs.contains(t.as_str()), "a token leaked into the logs");
        assert!(!logs.contains(t.rsplit('.').next().unwrap()));
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let (_up, gw) = start("");
    let get = |p: &str| client().get(format!("http://{}{p}", gw.admin)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/nope").await.unwrap().status(), 404);
    let s = gw.status().await;
    assert_eq!(s["routes"], json!(["obs"]));
    assert_eq!(s["rules"]["generation"], 1);
    assert_eq!(s["rules"]["last_result"], "success");
    assert_eq!(s["rules"]["content_hash"].as_str().unwrap().len(), 32);
    let ec = s["issuers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "ec")
        .unwrap();
    let kids: Vec<&str> = ec["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, vec!["ec256", "ec384"]);
    assert!(ec["keys_age_seconds"].is_u64());
}

#[tokio::test]
async fn the_token_cache_counts_hits_and_misses() {
    let (_up, gw) = start("");
    let t = es256(json!({"level": 2}));
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/obs"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    let v = |r: &str| metric_value(&m, "claimgate_token_cache_total", &[("result", r)]);
    assert_eq!(v("miss"), Some(1.0));
    assert_eq!(v("hit"), Some(2.0));

    // With the cache off, nothing is counted.
    let (_up, gw) = start("[token_cache]\nenabled = false\n");
    for _ in 0..2 {
        let r = client()
            .get(gw.url("/obs"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "claimgate_token_cache_total", &[("result", "hit")]),
        Some(0.0)
    );
}
