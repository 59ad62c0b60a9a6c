//! The guarantee, as a property: every request the upstream receives was allowed by a route
//! whose auth and rules ran on exactly the method, host and path the upstream saw.
//!
//! A generator writes raw request bytes (methods, absolute-form and odd targets, missing,
//! duplicated and malformed hosts, path encodings and wildcard boundaries, client copies of
//! forwarded headers, bodies with duplicate keys and `Content-Length` lists) and sends them
//! through the real gateway, in front of a layout ops teams write every day: an open catch-all
//! beside host-specific and host-less protected routes. Each route forwards the method, host and
//! path it decided on. For each request the upstream received, the test checks that they equal
//! what the upstream saw, and that an independent model of README's matching rules picks the
//! same route for what the upstream saw, and the same one again for an upstream that ignores
//! letter case (a route with capitals in its pattern sits among them); a protected route must
//! have seen a valid token; the same again for an upstream that ignores a trailing slash. On a
//! route whose rules read a header and a query parameter (sent
//! once, twice, or in CGI's, PHP's and Rails' other spellings), every value an upstream could
//! take for either must be the one the rules decided on.
//!
//! Cases per run: `CLAIMGATE_GUARANTEE_CASES` (default 2000); seed: `CLAIMGATE_GUARANTEE_SEED`
//! (32 hex digits; random by default, printed on failure).

use super::harness::*;
use super::tokens::*;
use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DECIDED: &str = r#"
  "x-decided-method" = "request.method"
  "x-decided-host" = "request.host"
  "x-decided-path" = "request.path"
"#;

fn rules() -> String {
    format!(
        r#"
[[route]]
name = "open"
path = "/*"
auth = "none"
  [route.forward]
  "x-decided-route" = "'open'"
{DECIDED}

[[route]]
name = "admin"
host = "admin.test"
path = "/admin/*"
methods = ["GET"]
issuers = ["hs"]
  [[route.rule]]
  name = "admins-only"
  allow_if = "has(claims.roles) && 'admin' in claims.roles"
  [route.forward]
  "x-decided-route" = "'admin'"
  "x-user" = "claims.sub"
{DECIDED}

[[route]]
name = "admin-status"
host = "admin.test"
path = "/status"
auth = "none"
  [route.forward]
  "x-decided-route" = "'admin-status'"
{DECIDED}

[[route]]
name = "api"
path = "/api/*"
methods = ["GET", "POST"]
issuers = ["hs"]
  [[route.rule]]
  name = "small-amounts"
  allow_if = "body == null || !has(body.amount) || body.amount <= 100"
  [route.forward]
  "x-decided-route" = "'api'"
  "x-user" = "claims.sub"
{DECIDED}

[[route]]
name = "reports"
path = "/Reports/*"
issuers = ["hs"]
  [route.forward]
  "x-decided-route" = "'reports'"
  "x-user" = "claims.sub"
{DECIDED}

[[route]]
name = "tenant"
path = "/tenant/*"
auth = "none"
  [[route.rule]]
  name = "not-evil"
  deny_if = "('x-tenant' in request.headers && request.headers['x-tenant'] == 'evil') || (has(request.query.q) && request.query.q == 'evil')"
  [route.forward]
  "x-decided-route" = "'tenant'"
  "x-decided-tenant" = "'x-tenant' in request.headers ? request.headers['x-tenant'] : '-'"
  "x-decided-q" = "has(request.query.q) ? request.query.q : '-'"
  "x-decided-request-id" = "'x-request-id' in request.headers ? request.headers['x-request-id'] : '-'"
{DECIDED}

[[route]]
name = "item"
path = "/items/{{id}}"
methods = ["GET"]
issuers = ["hs"]
  [route.forward]
  "x-decided-route" = "'item'"
  "x-user" = "claims.sub"
{DECIDED}
"#
    )
}

/// What the client sends, before it is written as bytes.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: String,
    http10: bool,
    hosts: Vec<&'static str>,
    token: Tok,
    spoof: bool,
    body: Option<(&'static str, bool)>,
    /// Header lines a route's rules read, in one spelling or another, once or twice, and
    /// cookies some upstreams read as query parameters.
    tenant: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    None,
    Admin,
    User,
    Forged,
}

fn path_piece() -> impl Strategy<Value = &'static str> {
    let plain = prop::sample::select(vec![
        "",
        "/",
        "/x",
        "/x/y",
        "/1",
        "?q=1",
        "/x?a=/admin",
        "/X",
    ]);
    let hostile = prop::sample::select(vec![
        "//x",
        "/./x",
        "/../admin/x",
        "/%2e%2e/admin",
        "/%2Fx",
        "/%61",
        ";p",
        "%2f",
        "/%7e",
        "%0a",
        "%09",
    ]);
    prop_oneof![3 => plain, 1 => hostile]
}

fn prefix() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/admin",
        "/Admin",
        "/%61dmin",
        "/api",
        "/items",
        "/status",
        "/public",
        "",
        "/admin/",
        "/api/",
        "/items/",
        "/items/7",
        "/Reports",
        "/reports",
        "/REPORTS/",
        "/API",
        "/Items/7",
        "/tenant/x?q=good",
        "/tenant/x?q=evil",
        "/tenant/x?q=good&q=evil",
        "/tenant/x?q[]=evil",
        "/tenant/x?q=good&[q]=evil",
        "/tenant/x?q%00=evil&q=good",
        "/tenant/x?q.=evil",
        "/tenant/x?q=good;q=evil",
        "/tenant/x?x=1;q=evil&q=good",
        "/ap%C4%B1",
        "/Report%C5%BF",
        "/%C4%B0tems/7",
        "/items/%E2%84%AA",
        "/tenant/x",
    ])
}

fn authority() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "admin.test",
        "ADMIN.test.",
        "admin.test:80",
        "other.test",
        "u@admin.test",
        "",
        "[::1]",
        "admin.test:x",
    ])
}

fn target() -> impl Strategy<Value = String> {
    let origin = (prefix(), path_piece()).prop_map(|(a, b)| {
        let t = format!("{a}{b}");
        if t.is_empty() {
            "/".to_string()
        } else {
            t
        }
    });
    let absolute = (
        prop::sample::select(vec!["http", "HTTP", "https", "ftp", "foo:bar"]),
        authority(),
        prefix(),
        path_piece(),
    )
        .prop_map(|(s, a, p, q)| format!("{s}://{a}{p}{q}"));
    let odd = prop::sample::select(vec![
        "*".to_string(),
        "admin.test:443".to_string(),
        "admin/x".to_string(),
        "/admin/x#frag".to_string(),
    ]);
    prop_oneof![12 => origin, 3 => absolute, 1 => odd]
}

fn host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "admin.test",
        "Admin.Test.",
        "admin.test:8080",
        "other.test",
        "127.0.0.1",
    ])
}

fn bad_host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "admin.test, other.test",
        "admin.test:1:2",
        "admin .test",
        "",
        "admin.test:",
        "%61dmin.test",
        "u@admin.test",
    ])
}

/// Host header lines: mostly one valid host, sometimes none, two, or a malformed one.
fn hosts() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        8 => host().prop_map(|h| vec![h]),
        1 => Just(Vec::new()),
        1 => (host(), host()).prop_map(|(a, b)| vec![a, b]),
        2 => bad_host().prop_map(|h| vec![h]),
    ]
}

fn tenant_lines() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "X-Tenant: good",
            "X-Tenant: evil",
            "X_Tenant: evil",
            "x-tenant: good, evil",
            "X-Request-Id: client-1",
            "X-Request-Id: bad id",
            "Cookie: theme=dark",
            "Cookie: theme=dark; q=evil",
            "Cookie: q%5B%5D=evil",
        ]),
        0..3,
    )
}

/// Mostly requests of every shape; one in four meant for one route (its host, path, method and
/// a valid token, the other hostile parts random), so that every route is reached in every run
/// and the coverage check below does not depend on chance.
fn case() -> impl Strategy<Value = Case> {
    prop_oneof![3 => any_case(), 1 => routed_case()]
}

fn routed_case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![
            ("admin.test", "/admin/x"),
            ("admin.test", "/status"),
            ("other.test", "/api/x"),
            ("other.test", "/items/7"),
            ("other.test", "/Reports/x"),
            ("other.test", "/tenant/x?q=good"),
            ("other.test", "/public"),
        ]),
        any::<bool>(),
        tenant_lines(),
    )
        .prop_map(|((host, target), spoof, tenant)| Case {
            method: "GET",
            target: target.to_string(),
            http10: false,
            hosts: vec![host],
            token: Tok::Admin,
            spoof,
            body: None,
            tenant,
        })
}

fn any_case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![
            8 => Just("GET"),
            3 => Just("POST"),
            3 => prop::sample::select(vec!["DELETE", "PUT", "OPTIONS", "HEAD", "get", "CONNECT"]),
        ],
        target(),
        prop::bool::weighted(0.1),
        hosts(),
        prop::sample::select(vec![
            Tok::None,
            Tok::Admin,
            Tok::Admin,
            Tok::User,
            Tok::Forged,
        ]),
        any::<bool>(),
        tenant_lines(),
        prop::option::of((
            prop::sample::select(vec![
                r#"{"amount":5}"#,
                r#"{"amount":500}"#,
                r#"{"amount":5,"amount":500}"#,
                r#"{"a":{"amount":1,"amount":2}}"#,
                r#"{"amount":18446744073709551616}"#,
                "not json",
                r#"{"q":"evil"}"#,
                "form:q=evil",
                "form:memo=1",
            ]),
            prop::bool::weighted(0.2),
        )),
    )
        .prop_map(
            |(method, target, http10, hosts, token, spoof, tenant, body)| Case {
                method,
                target,
                http10,
                hosts,
                token,
                spoof,
                body,
                tenant,
            },
        )
}

struct Tokens {
    admin: String,
    user: String,
    forged: String,
}

fn render(c: &Case, id: &str, t: &Tokens) -> Vec<u8> {
    let version = if c.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut out = format!("{} {} {version}\r\n", c.method, c.target);
    for h in &c.hosts {
        out.push_str(&format!("Host: {h}\r\n"));
    }
    out.push_str(&format!("X-Request-Id: {id}\r\n"));
    let token = match c.token {
        Tok::None => None,
        Tok::Admin => Some(&t.admin),
        Tok::User => Some(&t.user),
        Tok::Forged => Some(&t.forged),
    };
    if let Some(tok) = token {
        out.push_str(&format!("Authorization: Bearer {tok}\r\n"));
    }
    for line in &c.tenant {
        out.push_str(line);
        out.push_str("\r\n");
    }
    if c.spoof {
        for h in [
            "x-user: mallory",
            "x-decided-route: admin",
            "x-decided-path: /admin/x",
            "x-decided-host: admin.test",
            "x-decided-method: GET",
            "x-http-method-override: DELETE",
            "x-original-url: /admin/x",
            "x_user: mallory",
        ] {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    match c.body {
        Some((b, list)) => {
            let (b, ty) = match b.strip_prefix("form:") {
                Some(form) => (form, "application/x-www-form-urlencoded"),
                None => (b, "application/json"),
            };
            let n = b.len();
            out.push_str(&format!("Content-Type: {ty}\r\n"));
            if list {
                out.push_str(&format!("Content-Length: {n}, {n}\r\n"));
            } else {
                out.push_str(&format!("Content-Length: {n}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            out.push_str(b);
        }
        None => out.push_str("Connection: close\r\n\r\n"),
    }
    out.into_bytes()
}

/// The status of the answer, if one came.
fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.take(1 << 16).read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.lines().next()?.split(' ').nth(1)?.parse().ok()
}

/// Where the model puts a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modelled {
    Route(&'static str),
    /// A route serves the path for other methods only (405).
    NotAllowed,
    /// No route serves it (the unmatched action: deny).
    NoRoute,
}

/// README's matching rules, written again without the gateway's code: where `method host path`
/// lands. `folded`: as an upstream that ignores letter case sees the table, every pattern in
/// lower case (the caller lower-cases the path).
fn model_lookup(method: &str, host: &str, path: &str, folded: bool) -> Modelled {
    use Modelled::*;
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let only = |ok: bool, r: &'static str| if ok { Route(r) } else { NotAllowed };
    if host == "admin.test" {
        // Host-specific routes alone decide this host.
        if under("/admin") {
            return only(method == "GET", "admin");
        }
        return if path == "/status" {
            Route("admin-status")
        } else {
            NoRoute
        };
    }
    if under("/api") {
        return only(matches!(method, "GET" | "POST"), "api");
    }
    if under(if folded { "/reports" } else { "/Reports" }) {
        return Route("reports");
    }
    if under("/tenant") {
        return Route("tenant");
    }
    if segs.len() == 2 && segs[0] == "items" && !segs[1].is_empty() {
        return only(method == "GET", "item");
    }
    Route("open")
}

/// The route that must decide `method host path` as the upstream saw them, if any may let it
/// through.
fn model(method: &str, host: &str, path: &str) -> Option<&'static str> {
    match model_lookup(method, host, path, false) {
        Modelled::Route(r) => Some(r),
        _ => None,
    }
}

/// A path as an upstream that ignores letter case reads it: .NET's `OrdinalIgnoreCase` and
/// Java's `equalsIgnoreCase` also take `ı` and `İ` for `i`, `ſ` for `s` and the Kelvin sign for
/// `k` (the upstream is sent escapes with upper-case hex).
fn fold(path: &str) -> String {
    path.replace("%C4%B1", "i")
        .replace("%C4%B0", "i")
        .replace("%C5%BF", "s")
        .replace("%E2%84%AA", "k")
        .to_ascii_lowercase()
}

/// The host part of a `Host` value as the test reads it: brackets, port and trailing dot off.
fn bare(host: &str) -> String {
    let h = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

fn one<'a>(seen: &'a Seen, name: &str) -> Result<&'a str, TestCaseError> {
    let all: Vec<&str> = seen
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<binary>"))
        .collect();
    prop_assert_eq!(
        all.len(),
        1,
        "`{}` must reach the upstream once: {:?}",
        name,
        all
    );
    Ok(all[0])
}

/// Checks one request the upstream received, against what the client sent.
fn check_seen(c: &Case, seen: &Seen) -> Result<(), TestCaseError> {
    let (path, _query) = seen.uri.split_once('?').unwrap_or((&seen.uri, ""));
    prop_assert!(
        path.starts_with('/'),
        "the upstream got a non-origin target {}",
        seen.uri
    );
    let host = seen
        .headers
        .get("host")
        .map(|h| bare(h.to_str().unwrap_or("")))
        .unwrap_or_default();
    prop_assert_eq!(one(seen, "x-decided-method")?, seen.method.as_str());
    prop_assert_eq!(one(seen, "x-decided-path")?, path);
    prop_assert_eq!(one(seen, "x-decided-host")?, host.as_str());
    let route = one(seen, "x-decided-route")?;
    let expected = model(&seen.method, &host, path);
    prop_assert_eq!(
        Some(route),
        expected,
        "route for {} {} {}",
        seen.method,
        host,
        path
    );
    // An upstream that ignores letter case serves the lower-cased path: where a route serves
    // that, it must be the route that decided.
    let folded = model_lookup(&seen.method, &host, &fold(path), true);
    prop_assert!(
        matches!(folded, Modelled::NoRoute) || matches!(folded, Modelled::Route(r) if r == route),
        "{} {} {} was decided by `{}`; ignoring letter case it is {:?}",
        seen.method,
        host,
        path,
        route,
        folded
    );
    // An upstream that ignores a trailing slash serves the path without it (no route here
    // is written with its trailing slash): where a route serves that, it must be this one,
    // ignoring letter case too.
    if let Some(stripped) = path.strip_suffix('/').filter(|s| !s.is_empty()) {
        for (p, folded) in [(stripped.to_string(), false), (fold(stripped), true)] {
            let other = model_lookup(&seen.method, &host, &p, folded);
            prop_assert!(
                matches!(other, Modelled::NoRoute)
                    || matches!(other, Modelled::Route(r) if r == route),
                "{} {} {} was decided by `{}`; without its trailing slash it is {:?}",
                seen.method,
                host,
                path,
                route,
                other
            );
        }
    }
    if route == "tenant" {
        check_tenant(seen)?;
    }
    match route {
        "open" | "admin-status" | "tenant" => {
            prop_assert!(
                seen.headers.get("x-user").is_none(),
                "a client's x-user reached the upstream"
            );
        }
        protected => {
            prop_assert!(
                matches!(c.token, Tok::Admin | Tok::User),
                "protected route `{}` reached without a valid token",
                protected
            );
            prop_assert_eq!(
                one(seen, "x-user")?,
                if c.token == Tok::Admin {
                    "alice"
                } else {
                    "bob"
                }
            );
            if protected == "admin" {
                prop_assert_eq!(c.token, Tok::Admin);
            }
            if protected == "api" && !seen.body.is_empty() {
                let text = String::from_utf8_lossy(&seen.body);
                prop_assert!(
                    text.matches("\"amount\"").count() <= 1,
                    "ambiguous body {}",
                    text
                );
                let v: serde_json::Value = serde_json::from_slice(&seen.body)
                    .map_err(|e| TestCaseError::fail(format!("non-JSON body reached api: {e}")))?;
                prop_assert!(
                    v["amount"].as_u64().is_none_or(|a| a <= 100),
                    "amount over the limit: {}",
                    text
                );
            }
        }
    }
    for h in ["x-http-method-override", "x-original-url", "x_user"] {
        prop_assert!(seen.headers.get(h).is_none(), "{} reached the upstream", h);
    }
    // Whatever the client sent, one Content-Length value, equal to the body.
    let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
    prop_assert!(lengths.len() <= 1);
    if let Some(l) = lengths.first() {
        prop_assert_eq!(l.to_str().unwrap_or(""), seen.body.len().to_string());
    }
    Ok(())
}

/// The names a query parameter's name is to some upstream, written again without the gateway's
/// code: PHP cuts at NUL, drops leading spaces, reads `q[]`/`q[x]` as `q` and `.`, ` ` and an
/// unclosed `[` as `_`; Rack and `qs` drop leading brackets and read up to the next one.
fn stems(name: &str) -> Vec<String> {
    let cut = name.split('\0').next().unwrap_or("");
    let php = cut.trim_start_matches(' ');
    let php = match php.find('[') {
        Some(i) if php[i..].contains(']') => php[..i].to_string(),
        _ => php.replace('[', "_"),
    };
    let php = php.replace(['.', ' '], "_");
    let rack = cut
        .trim_start_matches(['[', ']'])
        .split(['[', ']'])
        .next()
        .unwrap_or("")
        .to_string();
    vec![php, rack, name.to_string()]
}

/// A route whose rules read `x-tenant` and `q`: every value any upstream could take for either
/// (the first line, the last, the CGI spelling, any spelling of `q`) is the one decided on,
/// and never the value the rules deny.
fn check_tenant(seen: &Seen) -> Result<(), TestCaseError> {
    let decided = one(seen, "x-decided-tenant")?;
    let mut readable: Vec<String> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.as_str().replace('_', "-") == "x-tenant")
        .map(|(_, v)| v.to_str().unwrap_or("<binary>").to_string())
        .collect();
    prop_assert!(readable.len() <= 1, "x-tenant reached as {:?}", readable);
    let got = readable.pop().unwrap_or_else(|| "-".to_string());
    prop_assert_eq!(got.as_str(), decided);
    prop_assert!(got != "evil");
    // The request id the upstream got is the one the rules saw, whatever the client sent.
    prop_assert_eq!(
        one(seen, "x-request-id")?,
        one(seen, "x-decided-request-id")?
    );
    let decided_q = one(seen, "x-decided-q")?;
    let query = seen.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    // Split at `&`, and also at `;` as older parsers do: every value any of them reads.
    let mut values: Vec<String> = Vec::new();
    for separators in [&['&'][..], &['&', ';'][..]] {
        for piece in query.split(separators) {
            values.extend(
                form_urlencoded::parse(piece.as_bytes())
                    .filter(|(k, _)| stems(k).iter().any(|s| s == "q"))
                    .map(|(_, v)| v.into_owned()),
            );
        }
    }
    // Go, PHP, Rails and ASP.NET also read it from a form body, Rails from a JSON one.
    let form = seen.headers.get("content-type").is_some_and(|t| {
        t.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    if form {
        values.extend(
            form_urlencoded::parse(&seen.body)
                .filter(|(k, _)| stems(k).iter().any(|s| s == "q"))
                .map(|(_, v)| v.into_owned()),
        );
    } else if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(&seen.body) {
        values.extend(
            o.get("q")
                .map(|v| v.as_str().unwrap_or("<not text>").to_string()),
        );
    }
    // PHP's `$_REQUEST` (without a php.ini) and ASP.NET's `Request[...]` read cookies too.
    for line in seen.headers.get_all("cookie") {
        for pair in line.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii_start();
            values.extend(
                form_urlencoded::parse(pair)
                    .take(1)
                    .filter(|(k, _)| stems(k).iter().any(|s| s == "q"))
                    .map(|(_, v)| v.into_owned()),
            );
        }
    }
    values.dedup();
    prop_assert!(
        values.len() <= 1,
        "q reached as {:?} in {}",
        values,
        seen.uri
    );
    let q = values.first().map(String::as_str).unwrap_or("-");
    prop_assert_eq!(q, decided_q);
    prop_assert!(q != "evil");
    Ok(())
}

fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    match std::env::var("CLAIMGATE_GUARANTEE_SEED") {
        Ok(hex) => {
            for (i, b) in seed.iter_mut().enumerate().take(16) {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
            }
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            seed[..16].copy_from_slice(&t.to_le_bytes());
        }
    }
    seed
}

#[test]
fn no_request_reaches_the_upstream_except_as_decided() {
    let up = Upstream::start();
    let gw = Gateway::start(&standard_config(up.addr), &[("routes.toml", &rules())]);
    let tokens = Tokens {
        admin: token(
            Algorithm::HS256,
            json!({"sub": "alice", "roles": ["admin"]}),
        ),
        user: token(Algorithm::HS256, json!({"sub": "bob", "roles": ["user"]})),
        forged: {
            let t = token(
                Algorithm::HS256,
                json!({"sub": "alice", "roles": ["admin"]}),
            );
            format!("{}AAAA", &t[..t.len() - 4])
        },
    };
    let cases: u32 = std::env::var("CLAIMGATE_GUARANTEE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed = seed();
    let hex: String = seed[..16].iter().map(|b| format!("{b:02x}")).collect();
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let counter = AtomicU64::new(0);
    let reached = AtomicU64::new(0);
    let routes_reached = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let result = runner.run(&case(), |c| {
        let id = format!("g{}", counter.fetch_add(1, Ordering::Relaxed));
        let status = send(gw.proxy, &render(&c, &id, &tokens));
        if let Some(s) = status {
            prop_assert!(s < 500, "the gateway answered {} to {:?}", s, c);
        }
        // Requests go one at a time: whatever the upstream holds now came from this case.
        let seen: Vec<Seen> = std::mem::take(&mut *up.seen.lock().unwrap());
        for s in &seen {
            prop_assert!(
                s.headers
                    .get("x-request-id")
                    .is_some_and(|v| v == id.as_str()),
                "the upstream received a request that is not this case's: {:?}",
                s.headers.get("x-request-id")
            );
        }
        prop_assert!(
            seen.len() <= 1,
            "one request reached the upstream {} times",
            seen.len()
        );
        if let Some(s) = seen.first() {
            reached.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = s.headers.get("x-decided-route") {
                routes_reached
                    .lock()
                    .unwrap()
                    .insert(r.to_str().unwrap_or("").to_string());
            }
            prop_assert_eq!(status, Some(200));
            check_seen(&c, s)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "{e}\nreproduce with CLAIMGATE_GUARANTEE_SEED={hex}\n{}",
            gw.logs()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The generator must exercise the allow side too, or the property says nothing.
    let reached = reached.load(Ordering::Relaxed);
    assert!(
        reached * 20 >= u64::from(cases),
        "only {reached} of {cases} requests reached the upstream (seed {hex})"
    );
    if cases >= 1000 {
        let routes = routes_reached.into_inner().unwrap();
        assert_eq!(
            routes.len(),
            7,
            "every route must be reached at least once: {routes:?} (seed {hex})"
        );
    }
}
