//! The seed scenarios, through the repository's own `gateway.toml` and `rules/`.

use super::harness::*;
use super::tokens::*;
use chrono::DateTime;
use serde_json::{json, Value};

/// The repository's gateway with its clock fixed at `at` (RFC 3339).
fn at(at: &str) -> (Upstream, Gateway, i64) {
    let up = Upstream::start();
    let gw = Gateway::start_with(&repo_config(up.addr), &[], &["--fixed-clock", at]);
    let ts = DateTime::parse_from_rfc3339(at).unwrap().timestamp();
    (up, gw, ts)
}

fn real_time() -> (Upstream, Gateway) {
    let up = Upstream::start();
    let gw = Gateway::start(&repo_config(up.addr), &[]);
    (up, gw)
}

async fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn body_of(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap()
}

#[tokio::test]
async fn scenario_1_paid_permission_or_beta_user() {
    let (up, gw) = real_time();
    let paid =
        dev_token(json!({"permissions": ["paid:access"], "createdAt": 1_790_000_000_000i64}));
    let beta = dev_token(json!({"createdAt": 1_760_000_000_000i64}));
    let neither = dev_token(json!({"permissions": ["read"], "createdAt": 1_790_000_000_000i64}));
    let no_claims = dev_token(json!({}));

    let r = get(&gw, "/api/paid/reports", &paid).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-access-basis"], "paid");
    let r = get(&gw, "/api/paid/reports", &beta).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-access-basis"], "beta");
    for t in [&neither, &no_claims] {
        let r = get(&gw, "/api/paid/reports", t).await;
        assert_eq!(r.status(), 402);
        let b = body_of(r).await;
        assert_eq!(b["rule"], "paid-or-beta");
        assert_eq!(b["message"], "This feature needs a paid plan");
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn scenario_2_birthday_headers() {
    let (up, gw, now) = at("2026-06-10T12:00:00Z");
    let r = get(
        &gw,
        "/api/greeting",
        &dev_token_at(now, json!({"birthday": "1990-06-13"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-birthday"], "1990-06-13");
    assert_eq!(h["x-birthday-soon"], "true");
    assert_eq!(h["x-days-to-birthday"], "3");

    let r = get(
        &gw,
        "/api/greeting",
        &dev_token_at(now, json!({"birthday": "1990-07-01"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-birthday-soon"], "false");
    assert_eq!(h["x-days-to-birthday"], "21");

    // No birthday claim: no birthday headers, and a client cannot inject them.
    let r = client()
        .get(gw.url("/api/greeting"))
        .bearer_auth(dev_token_at(now, json!({})))
        .header("x-birthday", "2000-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = up.last().headers;
    assert!(h.get("x-birthday").is_none());
    assert!(h.get("x-days-to-birthday").is_none());
    assert_eq!(h["x-birthday-soon"], "false");
}

#[tokio::test]
async fn scenario_5_risk_bands() {
    let (up, gw) = real_time();
    let c = client();
    let low = dev_token(json!({"riskScore": 10, "jailbroken": false, "attestationCount": 11}));
    let low_but_jailbroken =
        dev_token(json!({"riskScore": 10, "jailbroken": true, "attestationCount": 50}));
    let medium = dev_token(json!({"riskScore": 35, "jailbroken": false, "attestationCount": 3}));
    let high = dev_token(json!({"riskScore": 80, "jailbroken": false, "attestationCount": 30}));

    let del = |t: &str| {
        c.delete(gw.url("/api/documents/1"))
            .bearer_auth(t.to_string())
            .send()
    };
    let put = |t: &str| {
        c.put(gw.url("/api/documents/1"))
            .bearer_auth(t.to_string())
            .body("x")
            .send()
    };

    let r = del(&low).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().headers["x-permissions"],
        r#"["read","write","delete","admin"]"#
    );

    let r = del(&low_but_jailbroken).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        body_of(r).await["message"],
        "Your device risk level does not allow delete access"
    );
    assert_eq!(put(&low_but_jailbroken).await.unwrap().status(), 200);
    assert_eq!(up.last().headers["x-permissions"], r#"["read","write"]"#);

    assert_eq!(put(&medium).await.unwrap().status(), 200);
    assert_eq!(del(&medium).await.unwrap().status(), 403);

    assert_eq!(get(&gw, "/api/documents/1", &high).await.status(), 200);
    assert_eq!(up.last().headers["x-permissions"], r#"["read"]"#);
    let r = put(&high).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        body_of(r).await["message"],
        "Your device risk level does not allow write access"
    );

    // A token without riskScore cannot be placed in a band: fail closed.
    let r = get(&gw, "/api/documents/1", &dev_token(json!({}))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(body_of(r).await["reason"], "policy_error");
}

fn transfer_claims() -> Value {
    json!({"permissions": ["transfer"], "geoCompliance": {"isAllowed": true}})
}

async fn post_json(gw: &Gateway, path: &str, token: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(gw.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn scenario_8_transfer_validation() {
    let (up, gw) = real_time();
    let ok = dev_token(transfer_claims());
    let amount = |a: f64| serde_json::to_vec(&json!({"amount": a, "to": "acc-2"})).unwrap();

    // Invalid token: 401 before any rule.
    let r = post_json(&gw, "/api/transfer", "not.a.token", amount(5.0)).await;
    assert_eq!(r.status(), 401);
    assert!(body_of(r).await["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid token"));

    // Geo flag.
    let t = dev_token(json!({"permissions": ["transfer"], "geoCompliance": {"isAllowed": false}}));
    let r = post_json(&gw, "/api/transfer", &t, amount(5.0)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        body_of(r).await["message"],
        "Service not available in your region"
    );

    // Permission.
    let t = dev_token(json!({"geoCompliance": {"isAllowed": true}}));
    let r = post_json(&gw, "/api/transfer", &t, amount(5.0)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(body_of(r).await["message"], "Transfer permission required");

    // Amount against the default limit of 1000.
    let r = post_json(&gw, "/api/transfer", &ok, amount(1500.0)).await;
    assert_eq!(r.status(), 400);
    let b = body_of(r).await;
    assert_eq!(b["message"], "Amount exceeds limit of 1000");
    assert_eq!(b["rule"], "amount-within-limit");
    let body = amount(1000.0);
    let r = post_json(&gw, "/api/transfer", &ok, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body, body);
    assert_eq!(up.last().headers["x-max-amount"], "1000");

    // A limit carried in the token.
    let mut c = transfer_claims();
    c["features"] = json!({"maxTransactionAmount": 5000});
    let t = dev_token(c);
    assert_eq!(
        post_json(&gw, "/api/transfer", &t, amount(4999.5))
            .await
            .status(),
        200
    );
    let r = post_json(&gw, "/api/transfer", &t, amount(5001.0)).await;
    assert_eq!(r.status(), 400);
    assert_eq!(body_of(r).await["message"], "Amount exceeds limit of 5000");
}

/// A JSON document of exactly `len` bytes with an `amount`.
fn json_of_len(len: usize, amount: u32) -> Vec<u8> {
    let head = format!("{{\"amount\":{amount},\"pad\":\"");
    let tail = "\"}";
    let pad = len - head.len() - tail.len();
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(tail.as_bytes());
    assert_eq!(v.len(), len);
    v
}

#[tokio::test]
async fn body_limits_types_and_integrity() {
    let (up, gw) = real_time();
    let ok = dev_token(transfer_claims());

    // The transfer route's limit is 16 KiB: exactly at the limit passes, byte for byte.
    let body = json_of_len(16384, 10);
    let r = post_json(&gw, "/api/transfer", &ok, body.clone()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen = up.last();
    assert!(seen.body == body, "the upstream got other bytes");
    assert_eq!(seen.headers["content-length"], "16384");

    // One byte over, by Content-Length.
    let r = post_json(&gw, "/api/transfer", &ok, json_of_len(16385, 10)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(body_of(r).await["reason"], "body_too_large");

    // Over the limit, chunked (no Content-Length): caught while reading.
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(&ok)
        .header("content-type", "application/json")
        .body(chunked(&json_of_len(20000, 10), 4000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Chunked and within the limit: allowed, and the bytes arrive intact.
    let small = json_of_len(9000, 10);
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(&ok)
        .header("content-type", "application/json")
        .body(chunked(&small, 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.last().body == small);

    // Invalid JSON and a non-JSON content type.
    let r = post_json(&gw, "/api/transfer", &ok, b"{\"amount\": 1,".to_vec()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(body_of(r).await["reason"], "invalid_json");
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(&ok)
        .header("content-type", "text/plain")
        .body("{\"amount\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // application/*+json counts as JSON.
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(&ok)
        .header("content-type", "application/vnd.api+json; charset=utf-8")
        .body("{\"amount\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 3);
    // Types one reader takes for JSON and another for something else, JSON in another
    // charset, and a body compressed: refused, and nothing reaches the upstream. PHP reads the
    // first two as forms (it cuts the type at `,` or a space), whose `amount` is a million.
    let form = "{\"amount\":1,\"x\":\"&amount=1000000&\"}";
    for (name, value) in [
        ("content-type", "application/x-www-form-urlencoded,x/y+json"),
        ("content-type", "application/x-www-form-urlencoded x+json"),
        ("content-type", "application/json; charset=utf-7"),
    ] {
        let r = client()
            .post(gw.url("/api/transfer"))
            .bearer_auth(&ok)
            .header(name, value)
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{value}");
        assert_eq!(body_of(r).await["reason"], "unsupported_media_type");
    }
    for encoding in ["gzip", "identity, br", "deflate"] {
        let r = client()
            .post(gw.url("/api/transfer"))
            .bearer_auth(&ok)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body("{\"amount\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{encoding}");
    }
    let r = client()
        .post(gw.url("/api/transfer"))
        .bearer_auth(&ok)
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body("{\"amount\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn body_limit_of_64_kib_exactly() {
    // Wednesday 2026-03-04 10:00 in New York: orders of any size are open.
    let (up, gw, now) = at("2026-03-04T10:00:00-05:00");
    let t = dev_token_at(now, json!({}));
    let body = json_of_len(64 * 1024, 20000);
    let r = post_json(&gw, "/api/orders", &t, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(up.last().body == body, "64 KiB body not replayed intact");
    let r = post_json(&gw, "/api/orders", &t, json_of_len(64 * 1024 + 1, 20000)).await;
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn scenario_9_time_windows_in_new_york() {
    struct Case {
        at: &'static str,
        path: &'static str,
        amount: Option<u32>,
        status: u16,
        rule: Option<&'static str>,
    }
    let cases = [
        // Wednesday 10:00 EST: support open.
        Case {
            at: "2026-03-04T15:00:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 200,
            rule: None,
        },
        // Wednesday 18:00 EST: closed.
        Case {
            at: "2026-03-04T23:00:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 403,
            rule: Some("business-hours"),
        },
        // Saturday 10:00 EST.
        Case {
            at: "2026-03-07T15:00:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 403,
            rule: Some("weekdays-only"),
        },
        // DST: 13:30Z is 08:30 on Friday 6 March (EST, closed) but 09:30 on Monday 9 March (EDT, open).
        Case {
            at: "2026-03-06T13:30:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 403,
            rule: Some("business-hours"),
        },
        Case {
            at: "2026-03-09T13:30:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 200,
            rule: None,
        },
        // DST ended on 1 November 2026: 13:30Z on Monday 2 November is 08:30 EST (closed), where a
        // summer offset would have said 09:30 (open).
        Case {
            at: "2026-11-02T13:30:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 403,
            rule: Some("business-hours"),
        },
        Case {
            at: "2026-11-02T14:30:00Z",
            path: "/api/support/chat",
            amount: None,
            status: 200,
            rule: None,
        },
        // Maintenance 02:00-04:00 local, small or large orders alike.
        Case {
            at: "2026-03-04T08:30:00Z",
            path: "/api/orders",
            amount: Some(5),
            status: 503,
            rule: Some("maintenance-window"),
        },
        Case {
            at: "2026-03-04T09:00:00Z",
            path: "/api/orders",
            amount: Some(5),
            status: 200,
            rule: None,
        },
        // High-value only on weekdays in business hours.
        Case {
            at: "2026-03-04T09:00:00Z",
            path: "/api/orders",
            amount: Some(20000),
            status: 403,
            rule: Some("high-value-in-business-hours"),
        },
        Case {
            at: "2026-03-04T16:00:00Z",
            path: "/api/orders",
            amount: Some(20000),
            status: 200,
            rule: None,
        },
        Case {
            at: "2026-03-07T16:00:00Z",
            path: "/api/orders",
            amount: Some(20000),
            status: 403,
            rule: Some("high-value-in-business-hours"),
        },
        // A window across midnight: 22:00-06:00 local.
        Case {
            at: "2026-03-05T03:30:00Z",
            path: "/api/batch/run",
            amount: None,
            status: 200,
            rule: None,
        },
        Case {
            at: "2026-03-05T04:30:00Z",
            path: "/api/batch/run",
            amount: None,
            status: 200,
            rule: None,
        },
        Case {
            at: "2026-03-05T10:30:00Z",
            path: "/api/batch/run",
            amount: None,
            status: 200,
            rule: None,
        },
        Case {
            at: "2026-03-05T11:30:00Z",
            path: "/api/batch/run",
            amount: None,
            status: 403,
            rule: Some("night-window"),
        },
        Case {
            at: "2026-03-05T02:59:00Z",
            path: "/api/batch/run",
            amount: None,
            status: 403,
            rule: Some("night-window"),
        },
    ];
    for c in cases {
        let (_up, gw, now) = at(c.at);
        let t = dev_token_at(now, json!({}));
        let r = match c.amount {
            None => get(&gw, c.path, &t).await,
            Some(a) => {
                post_json(
                    &gw,
                    c.path,
                    &t,
                    serde_json::to_vec(&json!({"amount": a})).unwrap(),
                )
                .await
            }
        };
        let status = r.status().as_u16();
        let b: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{} {}: {b}", c.at, c.path);
        if let Some(rule) = c.rule {
            assert_eq!(b["rule"], rule, "{} {}", c.at, c.path);
        }
    }
}

#[tokio::test]
async fn scenario_10_device_history() {
    let (up, gw, now) = at("2026-06-10T12:00:00Z");
    let device = |first_seen: &str, score: i64, avg: i64| {
        dev_token_at(
            now,
            json!({"device": {"firstSeen": first_seen, "attestations30d": 14, "riskScore": score, "riskAvg30d": avg}}),
        )
    };
    let r = get(
        &gw,
        "/api/account/security/keys",
        &device("2026-04-01T00:00:00Z", 10, 18),
    )
    .await;
    assert_eq!(r.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-device-age-days"], "70");
    assert_eq!(h["x-device-attestations-30d"], "14");
    assert_eq!(h["x-device-risk-trend"], "improving");
    assert_eq!(h["x-device-trusted"], "true");

    // Too new.
    let r = get(
        &gw,
        "/api/account/security/keys",
        &device("2026-05-20T00:00:00Z", 10, 18),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(body_of(r).await["rule"], "trusted-device");
    // Old but risky on average.
    let r = get(
        &gw,
        "/api/account/security/keys",
        &device("2025-01-01T00:00:00Z", 40, 30),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(up.count(), 1);
}

struct Pools {
    eu: Upstream,
    ca: Upstream,
    us: Upstream,
    gw: Gateway,
}

fn pools(edit: impl Fn(String) -> String) -> Pools {
    let (default, eu, ca, us) = (
        Upstream::start(),
        Upstream::start(),
        Upstream::start(),
        Upstream::start(),
    );
    let config = edit(repo_config_with_pools(
        default.addr,
        eu.addr,
        ca.addr,
        us.addr,
    ));
    let gw = Gateway::start(&config, &[]);
    Pools { eu, ca, us, gw }
}

async fn regional(gw: &Gateway, token: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client().get(gw.url("/api/data/x")).bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn scenario_7_geo_from_edge_header_and_residency() {
    let p = pools(|c| c);
    let consented = dev_token(json!({"consents": ["gdpr"]}));
    let plain = dev_token(json!({}));

    let (s, _) = regional(&p.gw, &consented, &[("cf-ipcountry", "DE")]).await;
    assert_eq!(s, 200);
    assert_eq!(p.eu.count(), 1);
    let h = p.eu.last().headers;
    assert_eq!(h["x-data-region"], "eu-west-1");
    assert_eq!(h["x-country"], "DE");

    let (s, b) = regional(&p.gw, &plain, &[("cf-ipcountry", "de")]).await;
    assert_eq!(s, 451);
    assert_eq!(b["message"], "Consent is required in your region");

    // Another EU country without the consent rule.
    assert_eq!(
        regional(&p.gw, &plain, &[("cf-ipcountry", "NL")]).await.0,
        200
    );
    assert_eq!(p.eu.count(), 2);

    assert_eq!(
        regional(&p.gw, &plain, &[("cf-ipcountry", "CA")]).await.0,
        200
    );
    assert_eq!(p.ca.count(), 1);
    assert_eq!(p.ca.last().headers["x-data-region"], "ca-central-1");
    assert_eq!(
        regional(&p.gw, &plain, &[("cf-ipcountry", "US")]).await.0,
        200
    );
    assert_eq!(p.us.count(), 1);

    let (s, b) = regional(&p.gw, &plain, &[("cf-ipcountry", "JP")]).await;
    assert_eq!(s, 403);
    assert_eq!(b["message"], "Service not available in your region");
    assert_eq!(b["rule"], "allowed-regions");
}

#[tokio::test]
async fn scenario_7_geo_from_the_database_through_trusted_proxies() {
    let p = pools(|c| c);
    let consented = dev_token(json!({"consents": ["gdpr"]}));
    // 192.0.2.200 is FR in the demo database; the client address comes from X-Forwarded-For
    // because the peer (127.0.0.1) is a trusted proxy.
    let (s, _) = regional(&p.gw, &consented, &[("x-forwarded-for", "192.0.2.200")]).await;
    assert_eq!(s, 200);
    assert_eq!(p.eu.last().headers["x-country"], "FR");
    // The upstream still sees the whole chain, with the proxy appended.
    assert_eq!(
        p.eu.last().headers["x-forwarded-for"],
        "192.0.2.200, 127.0.0.1"
    );

    // A proxy in front that adds a line of its own (HAProxy's `option forwardfor`) instead of
    // extending the client's: the rules read the right-most untrusted hop of all lines, and
    // the upstream is sent every line, in order, never the client's forged one alone.
    let (s, _) = regional(
        &p.gw,
        &consented,
        &[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-for", "192.0.2.200"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(p.eu.last().headers["x-country"], "FR");
    assert_eq!(
        p.eu.last().headers["x-forwarded-for"],
        "198.51.100.9, 192.0.2.200, 127.0.0.1"
    );

    let (s, _) = regional(&p.gw, &consented, &[("x-forwarded-for", "198.51.100.9")]).await;
    assert_eq!(s, 200);
    assert_eq!(p.us.last().headers["x-country"], "US");
    // A spoofed left-most entry is ignored: the right-most untrusted hop (JP) counts.
    let (s, _) = regional(
        &p.gw,
        &consented,
        &[("x-forwarded-for", "198.51.100.9, 203.0.113.200")],
    )
    .await;
    assert_eq!(s, 403);
    // Not in the database: no country, not allowed.
    let (s, b) = regional(&p.gw, &consented, &[("x-forwarded-for", "8.8.8.8")]).await;
    assert_eq!(s, 403);
    assert_eq!(b["message"], "Service not available in your region");
}

#[tokio::test]
async fn scenario_7_untrusted_peers_cannot_choose_their_country() {
    let p = pools(|c| {
        c.replace(
            r#"trusted_proxies = ["127.0.0.1", "::1"]"#,
            "trusted_proxies = []",
        )
    });
    let consented = dev_token(json!({"consents": ["gdpr"]}));
    for headers in [
        &[("cf-ipcountry", "US")][..],
        &[("x-forwarded-for", "198.51.100.9")][..],
    ] {
        let (s, b) = regional(&p.gw, &consented, headers).await;
        assert_eq!(s, 403, "{headers:?}");
        assert_eq!(b["rule"], "allowed-regions");
    }
    assert_eq!(p.us.count() + p.eu.count() + p.ca.count(), 0);
}

#[tokio::test]
async fn expect_continue_on_a_body_reading_route() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = real_time();
    let token = dev_token(transfer_claims());
    let body = br#"{"amount": 12}"#;
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let head = format!(
        "POST /api/transfer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The gateway must invite the body before it waits for it.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no 100 Continue: the client would wait forever")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !String::from_utf8_lossy(&resp).contains("upstream ok")
        && std::time::Instant::now() < deadline
    {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.contains("200 OK") && text.contains("upstream ok"),
        "{text}"
    );
    assert_eq!(up.last().body, body);
}

/// The repository's gateway whose sources are served by its built-in echo from dev/demo-data.
fn with_demo_data() -> (Upstream, Gateway) {
    let up = Upstream::start();
    let data = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data_dir = demo_data_dir();
    let gw = Gateway::start_with(
        &repo_config_with_data(up.addr, data),
        &[],
        &[
            "--echo-upstream",
            &data.to_string(),
            "--echo-data",
            data_dir.to_str().unwrap(),
        ],
    );
    (up, gw)
}

#[tokio::test]
async fn scenario_3_players_without_balance_are_blocked() {
    let (up, gw) = with_demo_data();
    let alice = dev_token(json!({"sub": "alice"}));
    let r = get(&gw, "/api/game/session", &alice).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-balance"], "120");
    assert_eq!(up.last().headers["x-player-id"], "alice");

    for who in ["bob", "nobody-knows-me"] {
        let r = get(&gw, "/api/game/session", &dev_token(json!({"sub": who}))).await;
        assert_eq!(r.status(), 402, "{who}");
        let b = body_of(r).await;
        assert_eq!(b["rule"], "has-balance");
        assert_eq!(b["error"], "payment_required");
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn scenario_3_game_server_down_fails_closed() {
    // The sources point at a port nobody listens on.
    let up = Upstream::start();
    let nowhere = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(&repo_config_with_data(up.addr, nowhere), &[]);
    let r = get(
        &gw,
        "/api/game/session",
        &dev_token(json!({"sub": "alice"})),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(body_of(r).await["reason"], "source_unavailable");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn scenario_6_subscription_tier_sets_features_limits_and_quota() {
    let (up, gw) = with_demo_data();
    let alice = dev_token(json!({"sub": "alice"}));
    let r = get(&gw, "/api/files/large/upload-1", &alice).await;
    assert_eq!(r.status(), 200);
    let h = up.last().headers;
    assert_eq!(h["x-subscription-tier"], "premium");
    assert_eq!(h["x-rate-limit"], "10000");
    assert_eq!(h["x-storage-quota-gb"], "1000");
    assert_eq!(
        h["x-premium-features"],
        r#"["large-uploads","version-history","priority-support"]"#
    );

    // Free tier, and a user the billing service does not know (404 -> free).
    for who in ["bob", "dave"] {
        let t = dev_token(json!({"sub": who}));
        let r = get(&gw, "/api/files/docs/a.txt", &t).await;
        assert_eq!(r.status(), 200, "{who}");
        let h = up.last().headers;
        assert_eq!(h["x-subscription-tier"], "free");
        assert_eq!(h["x-rate-limit"], "1000");
        assert_eq!(h["x-storage-quota-gb"], "5");
        assert_eq!(h["x-premium-features"], "[]");
        let r = get(&gw, "/api/files/large/upload-2", &t).await;
        assert_eq!(r.status(), 403);
        assert_eq!(body_of(r).await["rule"], "premium-for-large-uploads");
    }
}
