//! Keys from an identity provider: a real local HTTP server serving OIDC discovery and JWKS.

use super::harness::*;
use super::tokens::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ISS: &str = "https://idp.test";

/// A fake identity provider: discovery at `/.well-known/openid-configuration`, keys at `/jwks`.
struct Idp {
    addr: SocketAddr,
    published: Arc<Mutex<Vec<&'static str>>>,
    jwks_requests: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    /// `Cache-Control: max-age` sent with the JWKS, when set.
    max_age: Arc<Mutex<Option<u64>>>,
    _server: TestServer,
}

fn jwk(kid: &str) -> Value {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rotation-jwks.json")).unwrap())
            .unwrap();
    all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap()
}

impl Idp {
    fn start(kids: &[&'static str]) -> Idp {
        let published = Arc::new(Mutex::new(kids.to_vec()));
        let jwks_requests = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let max_age: Arc<Mutex<Option<u64>>> = Arc::default();
        let addr_cell: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (p, n, d, ma, a) = (
            published.clone(),
            jwks_requests.clone(),
            down.clone(),
            max_age.clone(),
            addr_cell.clone(),
        );
        let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
            let (p, n, d, ma, a) = (p.clone(), n.clone(), d.clone(), ma.clone(), a.clone());
            async move {
                let path = req.uri().path().to_string();
                let addr = a.lock().unwrap().expect("address set");
                let (status, body) = if d.load(Ordering::SeqCst) {
                    if path == "/jwks" {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    (503, json!({"error": "down"}))
                } else if path == "/.well-known/openid-configuration" {
                    (
                        200,
                        json!({"issuer": ISS, "jwks_uri": format!("http://{addr}/jwks")}),
                    )
                } else if path == "/jwks" {
                    n.fetch_add(1, Ordering::SeqCst);
                    let kids = p.lock().unwrap().clone();
                    (
                        200,
                        json!({"keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>()}),
                    )
                } else {
                    (404, json!({}))
                };
                let cache = match *ma.lock().unwrap() {
                    Some(s) => format!("public, max-age={s}"),
                    None => "no-store".to_string(),
                };
                Response::builder()
                    .status(status)
                    .header("cache-control", cache)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
        });
        *addr_cell.lock().unwrap() = Some(server.addr);
        Idp {
            addr: server.addr,
            published,
            jwks_requests,
            down,
            max_age,
            _server: server,
        }
    }

    fn publish(&self, kids: &[&'static str]) {
        *self.published.lock().unwrap() = kids.to_vec();
    }

    fn fetches(&self) -> usize {
        self.jwks_requests.load(Ordering::SeqCst)
    }
}

/// An upstream, an identity provider publishing `rot-1`, and a gateway using both.
fn setup(extra: &str) -> (Upstream, Idp, Gateway) {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    let gw = Gateway::start(&config(up.addr, &idp, extra), &[("api.toml", ROUTE)]);
    (up, idp, gw)
}

fn config(up: SocketAddr, idp: &Idp, extra: &str) -> String {
    format!(
        r#"
[server]
threads = 2
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
[listen]
proxy = "127.0.0.1:{{proxy}}"
admin = "127.0.0.1:{{admin}}"
[rules]
dir = "rules"
[reload]
poll_seconds = 0
[upstreams.main]
addresses = ["{up}"]
[issuers.idp]
issuer = "{ISS}"
audiences = ["api"]
algorithms = ["RS256"]
keys = [{{ discovery_url = "http://{idp}/.well-known/openid-configuration" }}]
{extra}
"#,
        idp = idp.addr
    )
}

const ROUTE: &str = "[[route]]\nname = \"api\"\npath = \"/api\"\n";

fn token(kid: &str) -> String {
    let pem = if kid == "rot-1" {
        "rsa-private.pem"
    } else {
        "rsa2-private.pem"
    };
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(pem)).unwrap()).unwrap();
    sign(Algorithm::RS256, Some(kid), &claims(ISS, json!({})), &key)
}

/// Waits (`secs` at most) until a request with `token` is answered `status`; how long it took.
async fn until_status(gw: &Gateway, token: &str, status: u16, secs: u64, what: &str) -> Duration {
    let start = Instant::now();
    while status_of(gw, token).await != status {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn status_of(gw: &Gateway, t: &str) -> u16 {
    status_at(gw, "/api", t).await
}

async fn status_at(gw: &Gateway, path: &str, t: &str) -> u16 {
    client()
        .get(gw.url(path))
        .bearer_auth(t)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn rotation_retirement_and_readiness() {
    // Refresh every second, unknown kids refetch without cooldown in this test.
    let (_up, idp, gw) =
        setup("refresh_seconds = 1\nmin_refresh_seconds = 1\nunknown_kid_cooldown_seconds = 0");
    assert_eq!(
        client()
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // One token string throughout: after its first verification it is answered from the
    // verified-token cache, which must not outlive its key.
    let rot1 = token("rot-1");
    assert_eq!(status_of(&gw, &rot1).await, 200);
    assert_eq!(status_of(&gw, &rot1).await, 200);
    assert_eq!(
        status_of(&gw, &token("rot-2")).await,
        401,
        "rot-2 is not published yet"
    );

    // Rotation: a token with a newly published kid is accepted after the refetch it triggers.
    idp.publish(&["rot-1", "rot-2"]);
    let before = idp.fetches();
    assert_eq!(status_of(&gw, &token("rot-2")).await, 200);
    assert!(
        idp.fetches() > before,
        "the unknown kid did not trigger a fetch"
    );

    // Retirement: once the refresh sees rot-1 gone, its tokens are rejected.
    idp.publish(&["rot-2"]);
    until_status(&gw, &rot1, 401, 5, "retired key still accepted").await;
    assert_eq!(status_of(&gw, &token("rot-2")).await, 200);
    let s = gw.status().await;
    let fetched = &s["issuers"][0]["fetched"][0];
    assert_eq!(fetched["kids"], json!(["rot-2"]));
    assert!(fetched["age_seconds"].as_u64().unwrap() <= 2, "{fetched}");
}

#[tokio::test]
async fn outage_keeps_the_last_good_keys() {
    let (_up, idp, gw) = setup("refresh_seconds = 1\nmin_refresh_seconds = 1");
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
    idp.down.store(true, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let m = gw.metrics().await;
        if metric_value(
            &m,
            "claimgate_jwks_refresh_total",
            &[("issuer", "idp"), ("result", "error")],
        )
        .unwrap_or(0.0)
            >= 2.0
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "no failed refresh counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cached keys keep working through the outage.
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
    let s = gw.status().await;
    let fetched = &s["issuers"][0]["fetched"][0];
    assert!(
        fetched["last_error"].as_str().unwrap().contains("503"),
        "{fetched}"
    );
    assert_eq!(fetched["stale"], false);
}

#[tokio::test]
async fn a_flood_of_made_up_kids_fetches_at_most_once_per_cooldown() {
    let (_up, idp, gw) = setup("unknown_kid_cooldown_seconds = 30");
    let before = idp.fetches();
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let key =
                EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap())
                    .unwrap();
            let t = sign(
                Algorithm::RS256,
                Some(&format!("made-up-{i}")),
                &claims(ISS, json!({})),
                &key,
            );
            status_of(&gw, &t).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert!(
        idp.fetches() - before <= 1,
        "{} fetches for one cooldown",
        idp.fetches() - before
    );
    // Valid tokens are unaffected.
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
}

#[tokio::test]
async fn identity_provider_down_at_startup_means_not_ready_until_it_answers() {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    idp.down.store(true, Ordering::SeqCst);
    let gw = Gateway::start(
        &config(
            up.addr,
            &idp,
            "min_refresh_seconds = 1\nfetch_timeout_ms = 500",
        ),
        &[("api.toml", ROUTE)],
    );
    let r = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("idp"));
    // Fail closed without keys, as the gateway's problem: 503 `keys_stale`, not a 401 that
    // would send the client for a new token.
    assert_eq!(
        status_of(&gw, &token("rot-1")).await,
        503,
        "fail closed without keys"
    );
    idp.down.store(false, Ordering::SeqCst);
    let start = Instant::now();
    while client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
    assert!(gw
        .logs()
        .contains("cannot fetch the issuer's keys at startup"));
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    let text = config(up.addr, &idp, "").replace(
        &format!("issuer = \"{ISS}\""),
        "issuer = \"https://someone-else.test\"",
    );
    let gw = Gateway::start(&text, &[("api.toml", ROUTE)]);
    let s = gw.status().await;
    let err = s["issuers"][0]["fetched"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(err.contains("names issuer `https://idp.test`"), "{s}");
    assert_eq!(
        client()
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

/// A reload that fails after reading an issuer's changed settings leaves that issuer's keys in
/// force, and their scheduled refresh, as they were: a key the provider retires stops working.
#[tokio::test]
async fn a_failed_reload_leaves_the_key_refresh_in_force() {
    let (_up, idp, gw) = setup("refresh_seconds = 1\nmin_refresh_seconds = 1");
    let rot1 = token("rot-1");
    assert_eq!(status_of(&gw, &rot1).await, 200);
    let path = gw.dir().join("gateway.toml");
    let changed = std::fs::read_to_string(&path).unwrap().replace(
        "min_refresh_seconds = 1",
        "min_refresh_seconds = 1\nmax_staleness_seconds = 7200",
    );
    std::fs::write(gw.dir().join("rules/broken.toml"), "[[route]]\nname = ").unwrap();
    write_atomically(&path, &changed);
    let start = Instant::now();
    while gw.status().await["rules"]["last_result"] != "error" {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "the bad set was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    idp.publish(&["rot-2"]);
    until_status(
        &gw,
        &rot1,
        401,
        5,
        "a retired key is still accepted after a failed reload",
    )
    .await;
}

#[tokio::test]
async fn cache_control_max_age_sets_the_refresh_within_bounds() {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    *idp.max_age.lock().unwrap() = Some(1);
    // The configured interval is long; the response's max-age (1 s) decides.
    let gw = Gateway::start(
        &config(
            up.addr,
            &idp,
            "refresh_seconds = 300\nmin_refresh_seconds = 1\nunknown_kid_cooldown_seconds = 300",
        ),
        &[("api.toml", ROUTE)],
    );
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
    idp.publish(&["rot-2"]);
    until_status(
        &gw,
        &token("rot-1"),
        401,
        5,
        "max-age did not shorten the refresh",
    )
    .await;

    // A max-age below the minimum is raised to it: with min 2 s, at most ~2 fetches in 3 s.
    let idp2 = Idp::start(&["rot-1"]);
    *idp2.max_age.lock().unwrap() = Some(0);
    let gw2 = Gateway::start(
        &config(
            up.addr,
            &idp2,
            "refresh_seconds = 300\nmin_refresh_seconds = 2",
        ),
        &[("api.toml", ROUTE)],
    );
    let before = idp2.fetches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let extra = idp2.fetches() - before;
    assert!(extra <= 2, "{extra} fetches in 3 s with a 2 s minimum");
    drop(gw2);
}

#[tokio::test]
async fn keys_older_than_the_staleness_bound_are_not_used() {
    let (_up, idp, gw) =
        setup("refresh_seconds = 1\nmin_refresh_seconds = 1\nmax_staleness_seconds = 2");
    let rot1 = token("rot-1");
    assert_eq!(status_of(&gw, &rot1).await, 200);
    idp.down.store(true, Ordering::SeqCst);
    let waited = until_status(&gw, &rot1, 503, 6, "stale keys still in use").await;
    assert!(
        waited >= Duration::from_millis(800),
        "keys dropped before the bound"
    );
    // The key id is known, the keys are stale: the gateway's problem (503 `keys_stale`, with
    // when to try again), not the client's token (no `unknown_key`, no WWW-Authenticate).
    let r = client()
        .get(gw.url("/api"))
        .bearer_auth(&rot1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("www-authenticate").is_none());
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "keys_stale", "{body}");
    let s = gw.status().await;
    let age = s["issuers"][0]["keys_age_seconds"].as_u64().unwrap();
    assert!(age >= 2, "the keys' age counts from the last fetch: {s}");
    assert_eq!(s["issuers"][0]["fetched"][0]["stale"], true, "{s}");
    assert_eq!(
        client()
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    // The operator rides out the outage by raising the bound: the new set keeps the keys it
    // had (a reload used to start that issuer's keys from none).
    let path = gw.dir().join("gateway.toml");
    let raised = std::fs::read_to_string(&path)
        .unwrap()
        .replace("max_staleness_seconds = 2", "max_staleness_seconds = 3600");
    write_atomically(&path, &raised);
    gw.wait_generation(2).await;
    assert_eq!(status_of(&gw, &rot1).await, 200);
    assert_eq!(
        client()
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// `claimgate eval` verifies a token sent as an `Authorization` header with the fetched keys,
/// as the gateway does (it used to fetch them only for `--token`, and answered 503).
#[test]
fn eval_fetches_keys_for_a_token_in_an_authorization_header() {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    let (dir, _, _) = write_setup(&config(up.addr, &idp, ""), &[("api.toml", ROUTE)]);
    let token = token("rot-1");
    for args in [
        vec!["-H".to_string(), format!("Authorization: Bearer {token}")],
        vec!["--token".to_string(), token.clone()],
    ] {
        let o = binary()
            .arg("eval")
            .arg("--config")
            .arg(dir.path().join("gateway.toml"))
            .args(&args)
            .arg("--json")
            .arg("/api")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
        assert_eq!(v["decision"], "allow", "{args:?}: {v}");
    }
}

/// `/readyz` waits for the keys of issuers a request may need, not for an issuer no route
/// accepts (whose provider being down makes no request fail).
#[tokio::test]
async fn readiness_ignores_the_keys_of_an_issuer_no_route_uses() {
    let up = Upstream::start();
    let idp = Idp::start(&["rot-1"]);
    let unused = Idp::start(&["rot-1"]);
    unused.down.store(true, Ordering::SeqCst);
    let extra = format!(
        "fetch_timeout_ms = 500\n[issuers.unused]\nissuer = \"https://unused.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\nfetch_timeout_ms = 500\nkeys = [{{ jwks_url = \"http://{}/jwks\" }}]\n",
        unused.addr
    );
    let rules = "[[route]]\nname = \"api\"\npath = \"/api\"\nissuers = [\"idp\"]\n";
    let gw = Gateway::start(&config(up.addr, &idp, &extra), &[("api.toml", rules)]);
    let ready = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_eq!(status_of(&gw, &token("rot-1")).await, 200);
    // Used by a route, the same down issuer keeps the replica out of rotation.
    let rules = "[[route]]\nname = \"api\"\npath = \"/api\"\nissuers = [\"idp\", \"unused\"]\n";
    let gw = Gateway::start(&config(up.addr, &idp, &extra), &[("api.toml", rules)]);
    let ready = client()
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("unused"));
}

/// An identity provider over https whose certificate comes from a private CA, serving: its
/// discovery document for `https://a.test` at `/a/...` (keys at its own https `/jwks`), one
/// for `https://c.test` at `/c/...` naming `plain`'s http `/jwks`, and at `/to-plain` a
/// redirect to `plain`'s http `/jwks`. Records the paths asked for.
struct TlsIdp {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    _server: TestServer,
}

impl TlsIdp {
    fn start(ca: &super::certs::Ca, plain: SocketAddr) -> TlsIdp {
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let port: Arc<Mutex<u16>> = Arc::default();
        let (record, own) = (asked.clone(), port.clone());
        let server = TestServer::start_tls(ca.server_config("localhost", None), move |req| {
            let (record, own) = (record.clone(), own.clone());
            async move {
                let path = req.uri().path().to_string();
                record.lock().unwrap().push(path.clone());
                let own = *own.lock().unwrap();
                let json = |v: Value| {
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(v.to_string())))
                        .unwrap()
                };
                match path.as_str() {
                    "/a/.well-known/openid-configuration" => json(json!({
                        "issuer": "https://a.test",
                        "jwks_uri": format!("https://localhost:{own}/jwks"),
                    })),
                    "/c/.well-known/openid-configuration" => json(json!({
                        "issuer": "https://c.test",
                        "jwks_uri": format!("http://{plain}/jwks"),
                    })),
                    "/jwks" => json(json!({"keys": [jwk("rot-1")]})),
                    "/to-plain" => Response::builder()
                        .status(302)
                        .header("location", format!("http://{plain}/jwks"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                    _ => Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                }
            }
        });
        *port.lock().unwrap() = server.addr.port();
        TlsIdp {
            addr: server.addr,
            asked,
            _server: server,
        }
    }

    fn asked(&self, path: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// The `last_error` of issuer `name`'s fetched keys in the admin `/status`.
async fn last_fetch_error(gw: &Gateway, name: &str) -> String {
    let status: Value = client()
        .get(format!("http://{}/status", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = status["issuers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap();
    issuer["fetched"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An identity provider behind a private CA: its keys are fetched only when the issuer's
/// `ca_file` holds that CA, and a corrected `ca_file` is used at once, without a restart (the
/// next fetch would otherwise be `min_refresh_seconds` away). Keys fetched over TLS never
/// come over plain HTTP: neither a redirect from https to http nor a discovery document that
/// names an http `jwks_uri` is followed; the plain server is never asked.
#[tokio::test]
async fn an_identity_provider_behind_a_private_ca() {
    let up = Upstream::start();
    let plain = Idp::start(&["rot-1"]);
    let (ca, stranger) = (super::certs::Ca::new(), super::certs::Ca::new());
    let idp = TlsIdp::start(&ca, plain.addr);
    let url = |path: &str| format!("https://localhost:{}{path}", idp.addr.port());
    let issuer = |name: &str, key: &str, ca_file: &str| {
        format!(
            "[issuers.{name}]\nissuer = \"https://{name}.test\"\naudiences = [\"api\"]\n\
             algorithms = [\"RS256\"]\nkeys = [{key}]\nca_file = \"{ca_file}\"\n\
             fetch_timeout_ms = 2000\n"
        )
    };
    let config =
        format!(
        "[server]\nthreads = 2\ngrace_period_seconds = 0\ngraceful_shutdown_timeout_seconds = 1\n\
         [listen]\nproxy = \"127.0.0.1:{{proxy}}\"\nadmin = \"127.0.0.1:{{admin}}\"\n\
         [rules]\ndir = \"rules\"\n[reload]\ndebounce_ms = 50\npoll_seconds = 1\n\
         [upstreams.main]\naddresses = [\"{}\"]\n{}{}{}",
        up.addr,
        issuer(
            "a",
            &format!("{{ discovery_url = \"{}\" }}", url("/a/.well-known/openid-configuration")),
            "idp-ca.pem",
        ),
        issuer("b", &format!("{{ jwks_url = \"{}\" }}", url("/to-plain")), "ca.pem"),
        issuer(
            "c",
            &format!("{{ discovery_url = \"{}\" }}", url("/c/.well-known/openid-configuration")),
            "ca.pem",
        ),
    );
    let routes = "[[route]]\nname = \"a\"\npath = \"/a\"\nissuers = [\"a\"]\n\n\
                  [[route]]\nname = \"b\"\npath = \"/b\"\nissuers = [\"b\"]\n\n\
                  [[route]]\nname = \"c\"\npath = \"/c\"\nissuers = [\"c\"]\n";
    let (dir, proxy, admin) = write_setup(&config, &[("api.toml", routes)]);
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    // Issuer a's `ca_file` holds another CA at first.
    std::fs::write(dir.path().join("idp-ca.pem"), stranger.cert.pem()).unwrap();
    let conf_dir = dir.path().to_path_buf();
    let gw = Gateway::start_in(dir, proxy, admin, &[]);
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let token = |iss: &str| {
        sign(
            Algorithm::RS256,
            Some("rot-1"),
            &claims(iss, json!({})),
            &key,
        )
    };
    let at = |path: &'static str, iss: &str| {
        let (gw, t) = (&gw, token(iss));
        async move { status_at(gw, path, &t).await }
    };
    // No keys anywhere: fail closed (503), each for its own reason.
    let start = Instant::now();
    while last_fetch_error(&gw, "a").await.is_empty()
        || last_fetch_error(&gw, "b").await.is_empty()
        || last_fetch_error(&gw, "c").await.is_empty()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no fetch failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (path, iss) in [
        ("/a", "https://a.test"),
        ("/b", "https://b.test"),
        ("/c", "https://c.test"),
    ] {
        assert_eq!(at(path, iss).await, 503, "{path}");
    }
    let a = last_fetch_error(&gw, "a").await;
    assert!(a.contains("certificate"), "{a}");
    assert_eq!(
        idp.asked("/a/.well-known/openid-configuration"),
        0,
        "no TLS session with an untrusted server"
    );
    let b = last_fetch_error(&gw, "b").await;
    assert!(b.contains("a redirect from https to http"), "{b}");
    assert!(idp.asked("/to-plain") >= 1);
    let c = last_fetch_error(&gw, "c").await;
    assert!(c.contains("is not https"), "{c}");
    assert!(idp.asked("/c/.well-known/openid-configuration") >= 1);
    assert_eq!(plain.fetches(), 0, "keys were asked for over plain HTTP");

    // The right CA: keys at once, without a restart.
    write_atomically(&conf_dir.join("idp-ca.pem"), &ca.cert.pem());
    let took = {
        let start = Instant::now();
        while at("/a", "https://a.test").await != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the new CA was not used: {}",
                last_fetch_error(&gw, "a").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    };
    assert!(idp.asked("/jwks") >= 1);
    assert_eq!(plain.fetches(), 0);
    eprintln!("keys from the private-CA provider {took:?} after the CA file was corrected");
}
