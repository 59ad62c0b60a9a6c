//! A rule that cannot work never goes live: `check` and a live reload refuse the same mistakes,
//! each pointing at the offending token.

use super::harness::*;
use super::tokens::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Each class of mistake: the condition, the token the error must point at, and what the
/// message must say.
const CLASSES: &[(&str, &str, &str, &str)] = &[
    (
        "misspelt function",
        "now.getDayOfWek() < 6",
        "getDayOfWek",
        "unknown function `getDayOfWek`; did you mean `getDayOfWeek`?",
    ),
    (
        "misspelt method",
        "request.path.startWith('/a')",
        "startWith",
        "did you mean `startsWith`?",
    ),
    (
        "wrong number of arguments",
        "now.getHours('UTC', 2) > 1",
        "getHours",
        "`getHours` takes 0 or 1 argument(s) after its receiver, not 2",
    ),
    (
        "unknown time zone",
        "now.getDayOfWeek('Europe/Berln') < 6",
        "'Europe/Berln'",
        "`Europe/Berln` is not a time zone",
    ),
    (
        "invalid regular expression",
        "request.path.matches('^/(a|b')",
        "'^/(a|b'",
        "is not a valid regular expression",
    ),
    (
        "invalid timestamp",
        "now > timestamp('2025-02-30T00:00:00Z')",
        "'2025-02-30T00:00:00Z'",
        "is not an RFC 3339 timestamp",
    ),
    (
        "invalid duration",
        "now - timestamp('2025-01-01T00:00:00Z') > duration('3 days')",
        "'3 days'",
        "is not a duration",
    ),
];

fn rules(condition: &str) -> String {
    format!(
        "[[route]]\nname = \"t\"\npath = \"/t\"\nauth = \"none\"\n  [[route.rule]]\n  name = \"r\"\n  allow_if = \"{}\"\n",
        condition.replace('"', "\\\"")
    )
}

/// `file:line:col` of `token` inside the rules text.
fn location(text: &str, token: &str) -> String {
    let off = text.find(token).unwrap();
    let line = text[..off].matches('\n').count() + 1;
    let col = off - text[..off].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("r.toml:{line}:{col}")
}

#[test]
fn check_refuses_each_class_at_its_token() {
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (class, condition, token, message) in CLASSES {
        let text = rules(condition);
        let (dir, _, _) = write_setup(&standard_config(up), &[("r.toml", &text)]);
        let out = binary()
            .args(["check", "--deny-warnings", "--config"])
            .arg(dir.path().join("gateway.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{class}: {err}");
        assert!(err.contains(&location(&text, token)), "{class}: {err}");
        assert!(err.contains(message), "{class}: {err}");
    }
    // Names inside string literals are text, not references.
    let text = rules("request.path != 'see ext.docs and attr.tier'");
    let (dir, _, _) = write_setup(&standard_config(up), &[("r.toml", &text)]);
    let out = binary()
        .args(["check", "--deny-warnings", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_live_reload_refuses_each_class_and_keeps_the_rules_in_force() {
    let good = rules("now.getDayOfWeek('Europe/Berlin') >= 0 && request.path.matches('^/t$')");
    let (_up, gw) = start_standard(
        "\n[reload]\ndebounce_ms = 50\npoll_seconds = 1\n",
        &[("r.toml", &good)],
    );
    let path = gw.dir().join("rules/r.toml");
    let ok = || async { client().get(gw.url("/t")).send().await.unwrap().status() };
    assert_eq!(ok().await, 200);
    for (i, (class, condition, _, message)) in CLASSES.iter().enumerate() {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, rules(condition)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let start = Instant::now();
        let status = loop {
            let s = gw.status().await;
            let error = s["rules"]["last_error"].as_str().unwrap_or("").to_string();
            if error.contains(message) {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{class}: the reload never reported it: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status["rules"]["last_result"], "error", "{class}");
        assert_eq!(
            status["rules"]["generation"], 1,
            "{class}: nothing was applied"
        );
        assert_eq!(ok().await, 200, "{class}: the rules in force changed");
        let m = gw.metrics().await;
        let errors = metric_value(&m, "claimgate_rules_reload_total", &[("result", "error")]);
        assert!(errors >= Some((i + 1) as f64), "{class}: {errors:?}");
    }
}

#[tokio::test]
async fn audit_series_exist_from_load_and_say_why() {
    let rules = r#"
[[route]]
name = "audited"
path = "/audited"
issuers = ["ec"]
  [[route.rule]]
  name = "new-check"
  mode = "audit"
  deny_if = "claims.level < 3"
  [[route.rule]]
  name = "enforced"
  allow_if = "true || claims.x"
"#;
    let (_up, gw) = start_standard("", &[("a.toml", rules)]);
    let m = gw.metrics().await;
    for reason in ["rule_denied", "policy_error"] {
        let labels = [
            ("route", "audited"),
            ("rule", "new-check"),
            ("reason", reason),
        ];
        assert_eq!(
            metric_value(&m, "claimgate_audit_denials_total", &labels),
            Some(0.0),
            "{reason}: {m}"
        );
        let labels = [
            ("route", "audited"),
            ("rule", "enforced"),
            ("reason", reason),
        ];
        assert_eq!(
            metric_value(&m, "claimgate_denials_total", &labels),
            Some(0.0),
            "{reason}"
        );
    }
    // A rule that cannot be evaluated (no `level` claim) is a policy error, not a would-deny.
    let t = es256(json!({}));
    let r = client()
        .get(gw.url("/audited"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = es256(json!({"level": 1}));
    client()
        .get(gw.url("/audited"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let m = gw.metrics().await;
    let count = |reason| {
        metric_value(
            &m,
            "claimgate_audit_denials_total",
            &[
                ("route", "audited"),
                ("rule", "new-check"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(count("policy_error"), Some(1.0));
    assert_eq!(count("rule_denied"), Some(1.0));
}
