//! External sources through the proxy: a real local HTTP source (a game server's balance API)
//! that counts its calls, behind the real gateway.

use super::harness::*;
use super::tokens::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A game server: `GET /players/{id}/balance` answers `{"balance": N}` from its table, 404 for
/// unknown players; it counts calls per path, can be slowed down and can fail with a 500.
struct GameServer {
    addr: std::net::SocketAddr,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    delay_ms: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    _server: TestServer,
}

impl GameServer {
    fn start(balances: &[(&str, i64)]) -> GameServer {
        let table: Arc<HashMap<String, i64>> =
            Arc::new(balances.iter().map(|(k, v)| (k.to_string(), *v)).collect());
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let headers: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (c, h, d, f) = (
            calls.clone(),
            headers.clone(),
            delay_ms.clone(),
            failing.clone(),
        );
        let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
            let (table, calls, headers, delay, failing) =
                (table.clone(), c.clone(), h.clone(), d.clone(), f.clone());
            async move {
                let path = req.uri().path().to_string();
                *calls.lock().unwrap().entry(path.clone()).or_default() += 1;
                headers.lock().unwrap().push(req.headers().clone());
                let ms = delay.load(Ordering::SeqCst);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if failing.load(Ordering::SeqCst) {
                    return Response::builder()
                        .status(500)
                        .body(Full::new(Bytes::from_static(b"down")))
                        .unwrap();
                }
                let player = path
                    .strip_prefix("/players/")
                    .and_then(|p| p.strip_suffix("/balance"))
                    .unwrap_or("");
                match table.get(player) {
                    Some(b) => Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(json!({ "balance": b }).to_string())))
                        .unwrap(),
                    None => Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                }
            }
        });
        GameServer {
            addr: server.addr,
            calls,
            headers,
            delay_ms,
            failing,
            _server: server,
        }
    }

    fn calls(&self, player: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .get(&format!("/players/{player}/balance"))
            .copied()
            .unwrap_or(0)
    }

    fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

/// `[sources.balance]` at `addr` with extra settings.
fn source_config(addr: &str, extra: &str) -> String {
    format!(
        "[sources.balance]\nurl = \"http://{addr}/players/{{claims.sub}}/balance\"\n\
         headers = {{ \"x-game-key\" = \"gateway-{{token.issuer}}\" }}\n{extra}\n"
    )
}

/// Seed scenario 3: no balance, no play. Fails closed unless the test's config says otherwise.
const PLAY_RULES: &str = r#"
[[route]]
name = "play"
path = "/play"
issuers = ["hs"]

  [[route.rule]]
  name = "has-balance"
  deny_if = "ext.balance == null || ext.balance.balance <= 0"
  status = 402
  message = "Your balance is used up"

  [route.forward]
  "x-balance" = "string(ext.balance.balance)"

[[route]]
name = "lobby"
path = "/lobby"
issuers = ["hs"]
"#;

/// The same rule written for a source that may be absent (`on_error = "open"`).
const OPEN_RULES: &str = r#"
[[route]]
name = "play"
path = "/play"
issuers = ["hs"]

  [[route.rule]]
  name = "has-balance"
  deny_if = "has(ext.balance) && ext.balance.balance <= 0"
  status = 402

  [route.forward]
  "x-balance" = "has(ext.balance) ? string(ext.balance.balance) : 'unknown'"
"#;

fn player(sub: &str) -> String {
    token(Algorithm::HS256, json!({ "sub": sub }))
}

async fn play(gw: &Gateway, sub: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url("/play"))
        .bearer_auth(player(sub))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn start(game: &GameServer, extra: &str, rules: &str) -> (Upstream, Gateway) {
    start_standard(
        &source_config(&game.addr.to_string(), extra),
        &[("play.toml", rules)],
    )
}

#[tokio::test]
async fn balance_decides_and_is_forwarded() {
    let game = GameServer::start(&[("alice", 120), ("bob", 0), ("carol", -5)]);
    let (up, gw) = start(&game, "ttl_seconds = 60", PLAY_RULES);

    let (status, _) = play(&gw, "alice").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().headers["x-balance"], "120");
    let game_headers = game.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(game_headers["x-game-key"], "gateway-hs");

    for broke in ["bob", "carol"] {
        let (status, body) = play(&gw, broke).await;
        assert_eq!(status, 402, "{broke}");
        assert_eq!(body["rule"], "has-balance");
        assert_eq!(body["message"], "Your balance is used up");
    }
    // Unknown to the game server (404): `ext.balance` is null, and the rule denies.
    let (status, _) = play(&gw, "mallory").await;
    assert_eq!(status, 402);

    // A route that does not read the source never calls it.
    let before = game.total_calls();
    let r = client()
        .get(gw.url("/lobby"))
        .bearer_auth(player("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Nor does a request without a valid token.
    let r = client()
        .get(gw.url("/play"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(game.total_calls(), before);

    // A sub that tries to walk the game server's paths stays one path segment.
    let (status, _) = play(&gw, "../admin").await;
    assert_eq!(status, 402);
    assert_eq!(
        game.calls
            .lock()
            .unwrap()
            .get("/players/..%2Fadmin/balance"),
        Some(&1)
    );

    let m = gw.metrics().await;
    let v = |result: &str| {
        metric_value(
            &m,
            "claimgate_source_requests_total",
            &[("source", "balance"), ("result", result)],
        )
    };
    assert_eq!(v("miss"), Some(5.0));
    assert_eq!(
        metric_value(
            &m,
            "claimgate_denials_total",
            &[
                ("route", "play"),
                ("rule", "has-balance"),
                ("reason", "rule_denied")
            ]
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch_and_the_ttl_bounds_reuse() {
    let game = GameServer::start(&[("alice", 7)]);
    game.delay_ms.store(300, Ordering::SeqCst);
    let (_up, gw) = start(&game, "ttl_seconds = 1", PLAY_RULES);

    let token = player("alice");
    let requests = (0..50).map(|_| {
        let url = gw.url("/play");
        let token = token.clone();
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(game.calls("alice"), 1, "50 concurrent requests, one fetch");

    let m = gw.metrics().await;
    let v = |result: &str| {
        metric_value(
            &m,
            "claimgate_source_requests_total",
            &[("source", "balance"), ("result", result)],
        )
    };
    assert_eq!(v("miss"), Some(1.0));
    assert_eq!(v("hit"), Some(49.0));

    // Within the TTL: cached.
    game.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(game.calls("alice"), 1);
    // After it: exactly one new call.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(game.calls("alice"), 2);
}

#[tokio::test]
async fn a_down_source_fails_closed_with_503() {
    // Nothing listens there.
    let addr = format!("127.0.0.1:{}", free_port());
    let (_up, gw) = start_standard(
        &source_config(&addr, "timeout_ms = 1000"),
        &[("play.toml", PLAY_RULES)],
    );
    let (status, body) = play(&gw, "alice").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "source_unavailable");
    assert_eq!(body["route"], "play");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "claimgate_source_requests_total",
            &[("source", "balance"), ("result", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            "claimgate_denials_total",
            &[
                ("route", "play"),
                ("rule", ""),
                ("reason", "source_unavailable")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_down_source_in_open_mode_is_absent() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (up, gw) = start_standard(
        &source_config(&addr, "on_error = \"open\""),
        &[("play.toml", OPEN_RULES)],
    );
    let (status, _) = play(&gw, "alice").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().headers["x-balance"], "unknown");
}

#[tokio::test]
async fn a_failing_source_in_stale_mode_serves_the_last_answer_within_its_bound() {
    let game = GameServer::start(&[("alice", 42)]);
    let (up, gw) = start(
        &game,
        "ttl_seconds = 1\nnegative_ttl_seconds = 0\non_error = \"stale\"\nstale_seconds = 2",
        PLAY_RULES,
    );
    assert_eq!(play(&gw, "alice").await.0, 200);
    game.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Past the TTL, the source fails: the stale answer is served.
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(up.last().headers["x-balance"], "42");
    assert_eq!(game.calls("alice"), 2);
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "claimgate_source_requests_total",
            &[("source", "balance"), ("result", "stale")]
        ),
        Some(1.0)
    );

    // Past TTL + stale_seconds: closed.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, body) = play(&gw, "alice").await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn a_slow_source_is_cut_off_at_its_timeout() {
    let game = GameServer::start(&[("alice", 1)]);
    game.delay_ms.store(3000, Ordering::SeqCst);
    let (_up, gw) = start(&game, "timeout_ms = 300", PLAY_RULES);
    let started = Instant::now();
    let (status, body) = play(&gw, "alice").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        took < Duration::from_millis(300 + 400),
        "answered after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn source_templates_are_checked_at_load() {
    let bad = source_config("127.0.0.1:1", "").replace("{claims.sub}", "{attr.x}");
    let up = Upstream::start();
    let config = format!("{}\n{bad}\n", standard_config(up.addr));
    let (dir, _, _) = write_setup(&config, &[("play.toml", PLAY_RULES)]);
    let out = binary()
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gateway.toml:") && err.contains("may not read `attr`"),
        "{err}"
    );

    // A rule that reads a source nobody declared.
    let rules = PLAY_RULES.replace("ext.balance == null", "ext.wallet == null");
    let (dir, _, _) = write_setup(
        &format!(
            "{}\n{}\n",
            standard_config(up.addr),
            source_config("127.0.0.1:1", "")
        ),
        &[("play.toml", &rules)],
    );
    let out = binary()
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("play.toml:") && err.contains("unknown source `ext.wallet`"),
        "{err}"
    );
}

/// Writes `text` to `file` of the gateway's directory and waits until a reload has taken it.
async fn edit(gw: &Gateway, file: &str, text: String) {
    let generation = gw.status().await["rules"]["generation"].as_u64().unwrap() + 1;
    std::fs::write(gw.dir().join(file), text).unwrap();
    let ok = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..100 {
        if gw.status().await["rules"]["generation"].as_u64() >= Some(generation) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no reload to generation {generation}: {}",
        gw.status().await
    );
}

#[tokio::test]
async fn caches_survive_reloads_until_the_source_changes() {
    let game = GameServer::start(&[("alice", 5)]);
    let (_up, gw) = start(&game, "ttl_seconds = 60", PLAY_RULES);
    assert_eq!(play(&gw, "alice").await.0, 200);

    // A policy edit: the cached answer stays.
    edit(&gw, "rules/play.toml", PLAY_RULES.replace("402", "403")).await;
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(game.calls("alice"), 1);

    // A change to the source itself starts it afresh.
    let text = std::fs::read_to_string(gw.dir().join("gateway.toml")).unwrap();
    edit(
        &gw,
        "gateway.toml",
        text.replace("ttl_seconds = 60", "ttl_seconds = 30"),
    )
    .await;
    assert_eq!(play(&gw, "alice").await.0, 200);
    assert_eq!(game.calls("alice"), 2);
}

/// What a client controls cannot change what a source is asked, nor which answer it gets:
/// a value in a JSON body stays inside its string, a custom `cache_key` keeps its holes apart,
/// and the host of a source's URL is never templated.
#[tokio::test]
async fn client_values_cannot_change_what_a_source_is_asked() {
    use http_body_util::BodyExt;
    // Records each request's path and body; answers `{"asked": <the body's player>}`.
    type Asked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let asked: Asked = Arc::default();
    let record = asked.clone();
    let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            let player = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["player"].as_str().map(str::to_string))
                .unwrap_or_default();
            record.lock().unwrap().push((path, body));
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    json!({ "asked": player }).to_string(),
                )))
                .unwrap()
        }
    });
    let addr = server.addr;
    let sources = format!(
        "[sources.inventory]\nurl = \"http://{addr}/inventory\"\nmethod = \"POST\"\n\
         body = '{{{{\"player\":\"{{claims.sub}}\",\"item\":\"{{request.query.item}}\"}}}}'\n\
         [sources.tier]\nurl = \"http://{addr}/tier\"\ncache_key = \"{{claims.a}}{{claims.b}}\"\nttl_seconds = 60\n"
    );
    let rules = r#"
[[route]]
name = "shop"
path = "/shop"
issuers = ["hs"]
  [route.forward]
  "x-asked" = "ext.inventory.asked"

[[route]]
name = "tier"
path = "/tier"
issuers = ["hs"]
  [route.forward]
  "x-tier" = "ext.tier.asked"
"#;
    let (up, gw) = start_standard(&sources, &[("shop.toml", rules)]);
    let shop = |item: &str| {
        let url = gw.url(&format!("/shop?item={item}"));
        async move {
            client()
                .get(url)
                .bearer_auth(token(Algorithm::HS256, json!({"sub": "alice"})))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(shop("sword").await, 200);
    assert_eq!(up.last().headers["x-asked"], "alice");
    // `x","player":"victim` would close the string and add a second `player`, which most
    // parsers read over the first.
    assert_eq!(shop("x%22%2C%22player%22%3A%22victim").await, 200);
    assert_eq!(up.last().headers["x-asked"], "alice");
    let (_, body) = asked.lock().unwrap().last().cloned().unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"player": "alice", "item": "x\",\"player\":\"victim"})
    );

    // `{claims.a}{claims.b}`: ("x", "yz") and ("xy", "z") are two keys, two calls.
    for (a, b) in [("x", "yz"), ("xy", "z")] {
        let r = client()
            .get(gw.url("/tier"))
            .bearer_auth(token(Algorithm::HS256, json!({"sub": a, "a": a, "b": b})))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let tier_calls = asked
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/tier")
        .count();
    assert_eq!(tier_calls, 2, "two users shared one cached answer");

    // A hole in the host: a header could choose the server the gateway calls.
    for url in [
        "http://{request.headers['x-region']}/v",
        "http://h{claims.sub}/v",
        "https://{claims.sub}",
    ] {
        let config = format!(
            "{}\n[sources.s]\nurl = \"{url}\"\n",
            standard_config(up.addr)
        );
        let (dir, _, _) = write_setup(&config, &[("shop.toml", "")]);
        let (code, err) = check(&dir.path().join("gateway.toml"));
        assert_eq!(code, Some(1), "{url}");
        assert!(
            err.contains("the scheme and host are written out"),
            "{url}: {err}"
        );
    }
}
