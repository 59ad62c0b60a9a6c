//! `[[route.limit]]` through the proxy (the in-process store): budgets taken from the token,
//! a daily total driven by the JSON body, 429 with `Retry-After` and the `RateLimit` fields,
//! and nothing spent by a request the rules refuse.

use super::harness::*;
use super::tokens::*;
use serde_json::{json, Value};

const RULES: &str = r#"
[[route]]
name = "api"
path = "/api/{*rest}"
issuers = ["hs"]

  [[route.limit]]
  name = "api-rate"
  key = "claims.sub"
  limit = "has(claims.apiRateLimit) ? claims.apiRateLimit : 3"
  window = "1h"

[[route]]
name = "transfer"
path = "/transfer"
methods = ["POST"]
issuers = ["hs"]

  [[route.rule]]
  name = "positive"
  allow_if = "double(body.amount) > 0.0"

  [[route.limit]]
  name = "daily-total"
  key = "claims.sub"
  limit = "double(claims.maxDaily)"
  window = "24h"
  cost = "double(body.amount)"
"#;

fn user(sub: &str, extra: Value) -> String {
    let mut claims = json!({ "sub": sub });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    token(jsonwebtoken::Algorithm::HS256, claims)
}

#[tokio::test]
async fn budgets_follow_the_token_and_the_body() {
    let (up, gw) = start_standard("", &[("limits.toml", RULES)]);
    let get = |t: String| {
        let url = gw.url("/api/x");
        async move { client().get(url).bearer_auth(t).send().await.unwrap() }
    };

    // Two tiers, two budgets: 5 from the claim, 3 by default.
    let premium = user("pat", json!({"apiRateLimit": 5}));
    let basic = user("bob", json!({}));
    let first = get(premium.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers().get("ratelimit-policy").unwrap(),
        "\"api-rate\";q=5;w=3600"
    );
    assert!(first
        .headers()
        .get("ratelimit")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("\"api-rate\";r=4;t="));
    for _ in 0..4 {
        assert_eq!(get(premium.clone()).await.status(), 200);
    }
    let over = get(premium.clone()).await;
    assert_eq!(over.status(), 429);
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((700..=721).contains(&retry), "{retry}"); // one unit back per 720 s
    assert!(over.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"api-rate\";r=0;"));
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["reason"], "rate_limited");
    assert_eq!(body["limit"], "api-rate");
    assert_eq!(body["route"], "api");
    for expected in [200, 200, 200, 429] {
        assert_eq!(get(basic.clone()).await.status(), expected);
    }
    assert_eq!(up.count(), 8);

    // A daily total from the body; a transfer the rules refuse spends nothing.
    let t = user("tia", json!({"maxDaily": 1000}));
    let pay = |amount: f64| {
        let (url, t) = (gw.url("/transfer"), t.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(t)
                .json(&json!({ "amount": amount }))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(pay(600.0).await.status(), 200);
    assert_eq!(pay(-5.0).await.status(), 403);
    assert_eq!(pay(300.0).await.status(), 200);
    let refused = pay(200.0).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("costs 200") && message.contains("100 of 1000 per 24h left"),
        "{message}"
    );
    assert_eq!(pay(99.0).await.status(), 200);

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "claimgate_denials_total",
            &[
                ("route", "api"),
                ("rule", "api-rate"),
                ("reason", "rate_limited")
            ]
        ),
        Some(2.0),
        "{metrics}"
    );
    let line = gw.wait_log("rate_limited");
    assert!(
        line.contains("api-rate") || line.contains("daily-total"),
        "{line}"
    );
}

#[test]
fn check_locates_a_limit_that_cannot_work() {
    let (cfg, _, _) = write_setup(
        &standard_config("127.0.0.1:9".parse().unwrap()),
        &[(
            "bad.toml",
            "[[route]]\nname = \"r\"\npath = \"/r\"\nissuers = [\"hs\"]\n  [[route.limit]]\n  name = \"x\"\n  key = \"claims.sub\"\n  limit = \"10\"\n  window = \"1 week\"\n",
        )],
    );
    let out = binary()
        .args(["check", "--config"])
        .arg(cfg.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:9:") && err.contains("window"),
        "{err}"
    );
}
