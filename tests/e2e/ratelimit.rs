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
    budgets("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_follow_the_token_and_the_body_on_redis() {
    let redis = RedisServer::start(free_port());
    budgets(&format!(
        "[rate_limits]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\n",
        redis.port
    ))
    .await;
}

/// Tier budgets and a daily total, on the store `extra` configures.
async fn budgets(extra: &str) {
    let (up, gw) = start_standard(extra, &[("limits.toml", RULES)]);
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

    // The window shortened on reload (24h to 1h): tia's spent budget is a spent hour now,
    // not a lock-out for the 23 hours the old window had left.
    let generation = gw.status().await["rules"]["generation"].as_u64().unwrap();
    write_atomically(
        &gw.dir().join("rules/limits.toml"),
        &RULES.replace("window = \"24h\"", "window = \"1h\""),
    );
    gw.wait_generation(generation + 1).await;
    let refused = pay(50.0).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((170..=181).contains(&retry), "{retry}"); // 50 units at 1000 per hour
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

/// A real `redis-server` on a loopback port, with no persistence; killed when dropped.
struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    /// [`RedisServer::start`] with more `redis-server` arguments.
    fn start_with(port: u16, more: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(more)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let started = std::time::Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() {
                    break;
                }
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const SHARED: &str = r#"
[[route]]
name = "shared"
path = "/api/{*rest}"
issuers = ["hs"]
  [[route.limit]]
  name = "per-user"
  key = "claims.sub"
  limit = "50"
  window = "1h"

[[route]]
name = "local"
path = "/local"
issuers = ["hs"]
  [[route.limit]]
  name = "local-mode"
  key = "claims.sub"
  limit = "4"
  window = "1h"
  on_store_error = "local"

[[route]]
name = "open"
path = "/open-mode"
issuers = ["hs"]
  [[route.limit]]
  name = "open-mode"
  key = "claims.sub"
  limit = "1"
  window = "1h"
  on_store_error = "open"

[[route]]
name = "closed"
path = "/closed"
issuers = ["hs"]
  [[route.limit]]
  name = "closed-mode"
  key = "claims.sub"
  limit = "1000"
  window = "1h"
  on_store_error = "closed"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_one_budget_on_redis_and_each_mode_holds_when_it_is_down() {
    let mut redis = RedisServer::start(free_port());
    let up = Upstream::start();
    let config = format!(
        "{}\n[rate_limits]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\ntimeout_ms = 200\nreplicas = 2\n",
        standard_config(up.addr),
        redis.port
    );
    let a = Gateway::start(&config, &[("limits.toml", SHARED)]);
    let b = Gateway::start(&config, &[("limits.toml", SHARED)]);
    // A third replica whose readiness follows the store.
    let c = Gateway::start(
        &format!("{config}ready_requires_store = true\n"),
        &[("limits.toml", SHARED)],
    );
    let ready = |gw: &Gateway| {
        let url = format!("http://{}/readyz", gw.admin);
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&c).await, 200);
    assert_eq!(ready(&a).await, 200);
    let t = user("sam", json!({}));

    // 300 requests from 6 concurrent clients over both replicas: exactly 50 pass.
    let mut tasks = Vec::new();
    for client_no in 0..6 {
        let urls = [a.url("/api/x"), b.url("/api/x")];
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut codes = Vec::new();
            for i in 0..50 {
                let url = &urls[(i + client_no) % 2];
                codes.push(
                    c.get(url)
                        .bearer_auth(&t)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.extend(task.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 50, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 250);
    assert_eq!(up.count(), 50);
    // Repeat offenders are refused in process, without a round trip to Redis.
    let mut local = 0.0;
    for gw in [&a, &b] {
        local += metric_value(
            &gw.metrics().await,
            "claimgate_limit_local_refusals_total",
            &[],
        )
        .unwrap_or(0.0);
    }
    assert!(
        local >= 200.0,
        "{local} of 250 refusals answered in process"
    );

    // Redis gone: each mode as documented, and no 5xx but `closed`'s 503.
    redis.stop();
    let get = |gw: &Gateway, path: &str| {
        let (url, t) = (gw.url(path), t.clone());
        async move { client().get(url).bearer_auth(t).send().await.unwrap() }
    };
    assert_eq!(ready(&c).await, 503);
    assert_eq!(
        ready(&a).await,
        200,
        "readiness ignores the store unless asked"
    );
    let r = get(&a, "/closed").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "limit_store_unavailable");
    for _ in 0..3 {
        assert_eq!(get(&a, "/open-mode").await.status(), 200);
    }
    // `local`: the limit of 4 over 2 replicas is 2 in each.
    for gw in [&a, &b] {
        let codes = [
            get(gw, "/local").await.status().as_u16(),
            get(gw, "/local").await.status().as_u16(),
            get(gw, "/local").await.status().as_u16(),
        ];
        assert_eq!(codes, [200, 200, 429]);
    }
    let metrics = a.metrics().await;
    for mode in ["local", "open", "closed"] {
        assert!(
            metric_value(
                &metrics,
                "claimgate_limit_store_fallbacks_total",
                &[("mode", mode)]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{mode}: {metrics}"
        );
    }
    assert!(
        metric_value(&metrics, "claimgate_limit_store_errors_total", &[]).unwrap_or(0.0) >= 1.0
    );
    a.wait_log("rate limit store unavailable");

    // Redis back (empty, on the same port): shared counting resumes.
    let _redis = RedisServer::start(redis.port);
    let started = std::time::Instant::now();
    while get(&a, "/closed").await.status() != 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "shared counting did not resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let started = std::time::Instant::now();
    while ready(&c).await != 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "not ready again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The open-mode limit of 1 is counted again, across replicas.
    let second = get(&b, "/open-mode").await.status();
    let third = get(&a, "/open-mode").await.status();
    assert_eq!((second.as_u16(), third.as_u16()), (200, 429));
    a.wait_log("shared counting resumed");
    let logs = a.logs() + &b.logs() + &c.logs();
    assert!(!logs.contains("\"ERROR\""), "{logs}");
}

/// A store that answers PING but refuses to count (a read-only replica, as after a failover
/// that demoted it) is not ready where readiness follows the store, and `closed` limits refuse.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_refuses_writes_is_not_ready() {
    let up = Upstream::start();
    // A replica of a primary that does not exist: PING answers, writes are refused.
    let unused = free_port();
    let replica = RedisServer::start_with(
        free_port(),
        &["--replicaof", "127.0.0.1", &unused.to_string()],
    );
    let config = format!(
        "{}\n[rate_limits]\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\ntimeout_ms = 200\nready_requires_store = true\n",
        standard_config(up.addr),
        replica.port
    );
    let gw = Gateway::start(&config, &[("limits.toml", SHARED)]);
    let readyz = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let r = client()
        .get(gw.url("/closed"))
        .bearer_auth(user("sam", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "a closed limit counted on a store that cannot count"
    );
    assert_eq!(up.count(), 0);
}
