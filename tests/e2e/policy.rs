//! CEL rules through the proxy: allow, deny, custom status and message, audit mode, run-time
//! errors, unmatched requests, and the metrics they produce.

use super::harness::*;
use super::tokens::*;
use serde_json::{json, Value};

const RULES: &str = r#"
[[route]]
name = "transfer"
path = "/api/transfer"
methods = ["POST"]
issuers = ["ec"]

  [[route.rule]]
  name = "needs-transfer-permission"
  allow_if = "has(claims.permissions) && 'transfer' in claims.permissions"
  message = "Transfer permission required"

  [[route.rule]]
  name = "not-blocked"
  deny_if = "has(claims.blocked) && claims.blocked"
  status = 451
  message_expr = "'user ' + claims.sub + ' is blocked'"

[[route]]
name = "reports"
path = "/api/reports/{id}"
methods = ["GET"]
issuers = ["ec"]

  [[route.rule]]
  name = "report-owner"
  mode = "audit"
  allow_if = "request.params.id == claims.sub"
  message = "reports are read by their owner"

  [[route.rule]]
  name = "numeric-level"
  allow_if = "claims.level >= 3"
  message = "level 3 required"

[[route]]
name = "query"
path = "/api/search"
issuers = ["ec"]

  [[route.rule]]
  name = "query-and-header"
  allow_if = "request.query.q == 'ok' && request.headers['x-tenant'] == 'acme' && request.method == 'GET'"
"#;

fn start() -> (Upstream, Gateway) {
    start_standard("", &[("policy.toml", RULES)])
}

#[tokio::test]
async fn cel_rules_allow_and_deny() {
    let (up, gw) = start();
    let c = client();
    let post = |t: String| {
        c.post(gw.url("/api/transfer"))
            .bearer_auth(t)
            .body("{}")
            .send()
    };

    let resp = post(es256(json!({"permissions": ["transfer"]})))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);

    let resp = post(es256(json!({"permissions": ["read"]}))).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "forbidden", "reason": "rule_denied", "route": "transfer",
               "rule": "needs-transfer-permission", "message": "Transfer permission required"})
    );

    // A deny_if rule with its own status and a computed message.
    let resp = post(es256(
        json!({"permissions": ["transfer"], "blocked": true, "sub": "bob"}),
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 451);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["rule"], "not-blocked");
    assert_eq!(body["message"], "user bob is blocked");
    assert_eq!(up.count(), 1, "denied requests never reach the upstream");

    // Methods are part of the route: GET on a POST-only path is a 405 naming what is served,
    // never a fall-through to another route or the unmatched action.
    let resp = c
        .get(gw.url("/api/transfer"))
        .bearer_auth(es256(json!({"permissions": ["transfer"]})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "method_not_allowed");
    // Counted under the route whose path it is, not among requests no route serves.
    let metrics = c
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denials = |route: &str| {
        metric_value(
            &metrics,
            "claimgate_denials_total",
            &[
                ("route", route),
                ("rule", ""),
                ("reason", "method_not_allowed"),
            ],
        )
    };
    assert_eq!(denials("transfer"), Some(1.0));
    assert_eq!(denials("_unmatched"), None);
}

#[tokio::test]
async fn request_facts_in_conditions() {
    let (up, gw) = start();
    let c = client();
    let t = es256(json!({}));
    let resp = c
        .get(gw.url("/api/search?q=ok&other=1&other=2"))
        .bearer_auth(&t)
        .header("X-Tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().uri, "/api/search?q=ok&other=1&other=2");
    // A parameter the rule reads, sent twice: which one an upstream acts on varies.
    let resp = c
        .get(gw.url("/api/search?q=ok&q=second"))
        .bearer_auth(&t)
        .header("X-Tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "ambiguous_query");
    assert_eq!(up.count(), 1);
    let resp = c
        .get(gw.url("/api/search?q=no"))
        .bearer_auth(&t)
        .header("X-Tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A missing header is a run-time error in CEL: denied as policy_error, never allowed.
    let resp = c
        .get(gw.url("/api/search?q=ok"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "policy_error");
    assert_eq!(body["rule"], "query-and-header");
}

#[tokio::test]
async fn audit_rules_log_but_do_not_deny() {
    let (up, gw) = start();
    let c = client();
    // sub user-1 reads report 42: the audit rule would deny, the enforced rule allows.
    let resp = c
        .get(gw.url("/api/reports/42"))
        .bearer_auth(es256(json!({"level": 5})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);
    let logs = gw.wait_log("audit_deny");
    let line = logs
        .lines()
        .find(|l| l.contains("audit_deny"))
        .unwrap_or_else(|| panic!("no audit line in logs:\n{logs}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["fields"]["route"], "reports");
    assert_eq!(v["fields"]["rule"], "report-owner");
    assert_eq!(v["fields"]["reason"], "rule_denied");
    assert_eq!(v["fields"]["sub"], "user-1");

    // Owner reading their own report: no audit line for it.
    let resp = c
        .get(gw.url("/api/reports/user-1"))
        .bearer_auth(es256(json!({"level": 5})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Type error (level is a string): policy_error, and the audit rule still counted.
    let resp = c
        .get(gw.url("/api/reports/42"))
        .bearer_auth(es256(json!({"level": "5"})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "policy_error");

    let m = gw.metrics().await;
    let audit = |rule| {
        metric_value(
            &m,
            "claimgate_audit_denials_total",
            &[
                ("route", "reports"),
                ("rule", rule),
                ("reason", "rule_denied"),
            ],
        )
    };
    assert_eq!(audit("report-owner"), Some(2.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "claimgate_requests_total",
            &[("route", "reports"), ("decision", "allow")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "claimgate_denials_total",
            &[
                ("route", "reports"),
                ("rule", "numeric-level"),
                ("reason", "policy_error")
            ]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn unmatched_requests_get_the_default_action() {
    let (up, gw) = start();
    let c = client();
    let resp = c
        .get(gw.url("/not/a/route"))
        .bearer_auth(es256(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["reason"], "no_route");
    assert_eq!(body["route"], Value::Null);
    assert_eq!(up.count(), 0);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "claimgate_denials_total",
            &[
                ("route", "_unmatched"),
                ("rule", ""),
                ("reason", "no_route")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    drop(gw);

    // Configured to allow (with a valid token) instead.
    let config = standard_config(up.addr)
        + "\n[unmatched]\naction = \"allow\"\nupstream = \"main\"\nauth = \"required\"\n";
    let gw = Gateway::start(&config, &[("policy.toml", RULES)]);
    let resp = c.get(gw.url("/elsewhere")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(gw.url("/elsewhere?x=1"))
        .bearer_auth(es256(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().uri, "/elsewhere?x=1");
}

#[tokio::test]
async fn token_only_rules_are_remembered_per_token_and_per_rule() {
    // Both rules read only the token, so their results are kept with the cached token: each
    // route must still get its own rule's answer, every time.
    let rules = r#"
[[route]]
name = "strict"
path = "/strict"
issuers = ["ec"]
  [[route.rule]]
  name = "level-3"
  allow_if = "claims.level >= 3"

[[route]]
name = "lenient"
path = "/lenient"
issuers = ["ec"]
  [[route.rule]]
  name = "level-1"
  allow_if = "claims.level >= 1"
  [route.forward]
  "x-level" = "claims.level"
"#;
    let (up, gw) = start_standard("", &[("memo.toml", rules)]);
    let two = es256(json!({"level": 2}));
    let five = es256(json!({"level": 5}));
    for _ in 0..3 {
        for (t, path, want) in [
            (&two, "/strict", 403),
            (&two, "/lenient", 200),
            (&five, "/strict", 200),
            (&five, "/lenient", 200),
        ] {
            let r = client()
                .get(gw.url(path))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), want, "{path}");
        }
        assert_eq!(up.last().headers["x-level"], "5");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "claimgate_token_cache_total", &[("result", "miss")]),
        Some(2.0)
    );
}

const LIST_RULES: &str = r#"
[[route]]
name = "admin"
path = "/api/admin"
issuers = ["ec"]

  [[route.rule]]
  name = "has-admin-role"
  allow_if = "has(claims.roles) && claims.roles.exists(r, r.startsWith('admin:'))"

[[route]]
name = "basket"
path = "/api/basket"
methods = ["POST"]
issuers = ["ec"]
body_limit = 8192

  [[route.rule]]
  name = "every-line-within-limit"
  allow_if = "body.lines.all(l, l.amount <= claims.max) && body.lines.map(l, l.amount).size() <= 10"
"#;

#[tokio::test]
async fn list_macros_bind_their_own_variables() {
    let (up, gw) = start_standard("", &[("lists.toml", LIST_RULES)]);
    let c = client();
    let get = |roles: Value| {
        c.get(gw.url("/api/admin"))
            .bearer_auth(es256(json!({ "roles": roles })))
            .send()
    };
    assert_eq!(
        get(json!(["user", "admin:billing"]))
            .await
            .unwrap()
            .status(),
        200
    );
    let denied = get(json!(["user"])).await.unwrap();
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["rule"], "has-admin-role");

    let post = |lines: Value| {
        c.post(gw.url("/api/basket"))
            .bearer_auth(es256(json!({ "max": 100 })))
            .header("content-type", "application/json")
            .body(json!({ "lines": lines }).to_string())
            .send()
    };
    let ok = post(json!([{"amount": 10}, {"amount": 100}]))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let over = post(json!([{"amount": 10}, {"amount": 101}]))
        .await
        .unwrap();
    assert_eq!(over.status(), 403);
    assert_eq!(up.count(), 2);
}
