//! Admission's invariants over generated request heads: it never panics, and what it admits
//! is what the upstream is sent: a normalised origin-form path, a canonical host, and the
//! client's own target only when that is already exactly the decided one.

use super::host::parse_authority;
use super::target::{parse, Target};
use super::RequestHead;
use crate::config::Config;
use crate::engine::Snapshot;
use crate::load::load_context;
use crate::policy::PolicySet;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;

const RULES: &str = r#"
[[route]]
name = "open"
path = "/*"
auth = "none"

[[route]]
name = "admin"
host = "admin.test"
path = "/admin/*"
methods = ["GET"]
auth = "none"

[[route]]
name = "items"
path = "/items/{id}"
methods = ["GET", "PUT"]
auth = "none"
"#;

/// A snapshot of `rules` under a minimal configuration, loaded from memory.
fn snapshot_of(rules: &str) -> Snapshot {
    let config = r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[rules]
dir = "rules"
[upstreams.main]
addresses = ["127.0.0.1:3"]
"#;
    let config = Arc::new(Config::from_str(Path::new("g.toml"), config.into()).expect("config"));
    let policy = PolicySet::from_sources(
        &[("r.toml".into(), rules.to_string())],
        &load_context(&config, &Default::default()),
    )
    .expect("policy");
    Snapshot::new(
        config,
        Arc::new(Default::default()),
        Arc::new(policy),
        Arc::new(Default::default()),
        Arc::new(Default::default()),
    )
}

/// Built once: loading policies per case would dominate the run.
static SNAPSHOT: std::sync::LazyLock<Snapshot> = std::sync::LazyLock::new(|| snapshot_of(RULES));

fn target() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("admin".to_string()),
        Just("items".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%61".to_string()),
        Just("%2F".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("http://".to_string()),
        Just("admin.test".to_string()),
        Just(":80".to_string()),
        Just("@".to_string()),
        Just("*".to_string()),
        "[a-z0-9]{1,3}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat().into_bytes())
}

fn host() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("admin.test".to_string()),
        Just("Admin.TEST.:8080".to_string()),
        Just("[::1]:80".to_string()),
        "[a-z.:, @\\[\\]0-9-]{0,12}",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn what_is_admitted_is_what_the_upstream_is_sent(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "OPTIONS", "get", "CONNECT", "BREW"]),
        target in target(),
        host in host(),
        http10 in any::<bool>(),
        upgrade in prop::option::of("(websocket|WebSocket|h2c|H2C|TLS/1\\.2|websocket, h2c|h2c, websocket|[a-z0-9/]{1,8})"),
    ) {
        let snap = &*SNAPSHOT;
        let mut headers = HeaderMap::new();
        if let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(http::header::HOST, h);
        }
        if let Some(u) = upgrade.as_deref().and_then(|u| HeaderValue::from_str(u).ok()) {
            headers.insert(http::header::UPGRADE, u);
        }
        let head = RequestHead { method, target: &target, http10, headers: &headers };
        match snap.admit(&head) {
            Err(d) => {
                let den = d.denial().expect("a refusal is a denial");
                prop_assert!((400..500).contains(&den.status), "{}", den.status);
            }
            Ok(a) => {
                if a.path != "*" {
                    let n = crate::path::normalise(&a.path).expect("an admitted path normalises");
                    prop_assert_eq!(n.as_ref(), a.path.as_str());
                }
                if let Some(h) = &a.host {
                    // Canonical: reading it again gives itself (IPv6 hosts are kept unbracketed).
                    let again = if h.contains(':') { format!("[{h}]") } else { h.clone() };
                    prop_assert_eq!(&parse_authority(&again).map(|x| x.host).ok(), &Some(h.clone()));
                }
                let sent = a.upstream_target();
                if !a.rewrite_target {
                    prop_assert_eq!(sent.as_bytes(), &target[..]);
                }
                if a.path != "*" {
                    match parse("GET", sent.as_bytes()) {
                        Ok(Target::Origin { path, query }) => {
                            prop_assert_eq!(path, a.path.as_str());
                            prop_assert_eq!(query, a.query.as_deref());
                        }
                        other => prop_assert!(false, "sent {:?} parses as {:?}", sent, other),
                    }
                }
                // A host with its own routes is never decided by the host-less ones.
                if a.host.as_deref() == Some("admin.test") {
                    let name = a.route_name.as_deref();
                    prop_assert!(name.is_none() || name == Some("admin"), "{:?}", name);
                }
                prop_assert!(method != "get" && method != "CONNECT");
                // No tunnel the gateway cannot read: an admitted upgrade is WebSocket only.
                if let Some(u) = upgrade.as_deref() {
                    prop_assert!(
                        u.split(',').all(|p| p.trim().eq_ignore_ascii_case("websocket")),
                        "admitted Upgrade: {}", u
                    );
                }
            }
        }
    }
}

/// Letter case: a path is refused when an upstream that ignores case would serve it as another
/// route's path than the route it matches as written (however the two routes compare); a
/// lower-case form that no route serves protects nothing.
const CASE_RULES: &str = r#"
[[route]]
name = "grpc"
path = "/pkg.Orders/{*method}"
methods = ["POST"]
auth = "none"
  [[route.rule]]
  name = "any"
  allow_if = "true"

[[route]]
name = "public"
path = "/docs/{page}"
auth = "none"

[[route]]
name = "admin"
path = "/admin/*"
auth = "none"
  [[route.rule]]
  name = "internal"
  allow_if = "request.client_ip == '10.0.0.1'"

[[route]]
name = "catch-all"
path = "/*"
auth = "none"
  [[route.rule]]
  name = "as-strong-by-count"
  deny_if = "request.client_ip == '10.9.9.9'"

[[route]]
name = "orders"
path = "/api/Orders/*"
auth = "none"
  [[route.rule]]
  name = "internal"
  allow_if = "request.client_ip == '10.0.0.1'"

[[route]]
name = "reports"
path = "/reports"
methods = ["POST"]
auth = "none"

[[route]]
name = "exact"
path = "/docs/readme/x"
auth = "none"
  [[route.rule]]
  name = "internal"
  allow_if = "request.client_ip == '10.0.0.1'"

[[route]]
name = "django"
path = "/files/list/"
auth = "none"
"#;
/// The layout of the letter-case and trailing-slash tests: routes with and without capitals
/// beside a catch-all as protected (by count of rules) as they are.
static CASE_SNAPSHOT: std::sync::LazyLock<Snapshot> =
    std::sync::LazyLock::new(|| snapshot_of(CASE_RULES));

/// The route a request is admitted to, or the reason it is refused.
fn admit_case(
    method: &str,
    target: &str,
) -> Result<Option<String>, Option<crate::policy::DenyReason>> {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("a"));
    let head = RequestHead {
        method,
        target: target.as_bytes(),
        http10: false,
        headers: &headers,
    };
    CASE_SNAPSHOT
        .admit(&head)
        .map(|a| a.route_name.as_deref().map(str::to_string))
        .map_err(|d| d.denial().map(|d| d.reason))
}

#[test]
fn a_path_whose_route_depends_on_letter_case_is_refused() {
    let admit = admit_case;
    // Served as written: its lower-case form reaches no route.
    assert_eq!(
        admit("POST", "/pkg.Orders/Get"),
        Ok(Some("grpc".to_string()))
    );
    // `/Admin/x` is the public route as written, the admin route to a case-insensitive
    // upstream.
    assert_eq!(admit("GET", "/docs/x"), Ok(Some("public".to_string())));
    assert_eq!(admit("GET", "/admin/x"), Ok(Some("admin".to_string())));
    let bad = Err(Some(crate::policy::DenyReason::BadPath));
    // As written the catch-all (one enforced rule, as many as the admin route's), to a
    // case-insensitive upstream the admin route.
    assert_eq!(admit("GET", "/Admin/x"), bad);
    // Counted under the route that matched as written.
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("a"));
    let head = RequestHead {
        method: "GET",
        target: b"/Admin/x",
        http10: false,
        headers: &headers,
    };
    let refused = CASE_SNAPSHOT.admit(&head).unwrap_err();
    assert_eq!(refused.route.as_deref(), Some("catch-all"));
    assert_eq!(admit("GET", "/ADMIN"), bad);
    // The dotless `ı` is `I` to .NET's and Java's case-insensitive matching, the Kelvin sign
    // `k` and the long `ſ` `s` to Java's.
    assert_eq!(admit("GET", "/adm%C4%B1n/x"), bad);
    assert_eq!(admit("GET", "/adm%c4%b1n"), bad);
    assert_eq!(admit("POST", "/report%C5%BF"), bad);
    // Other letters outside ASCII are path text.
    assert_eq!(
        admit("GET", "/adm%C3%AEn/x"),
        Ok(Some("catch-all".to_string()))
    );
    // A pattern with capitals: its lower-case spelling reaches the catch-all as written, the
    // orders route to a case-insensitive upstream; its own spelling is served.
    assert_eq!(
        admit("GET", "/api/Orders/1"),
        Ok(Some("orders".to_string()))
    );
    assert_eq!(admit("GET", "/api/orders/1"), bad);
    assert_eq!(admit("GET", "/API/ORDERS/1"), bad);
    // The folded form is only served for another method: a case-insensitive upstream would be
    // sent a GET the gateway answers 405 in lower case.
    assert_eq!(admit("GET", "/Reports"), bad);
    assert_eq!(admit("POST", "/Reports"), bad);
    assert_eq!(admit("POST", "/reports"), Ok(Some("reports".to_string())));
    // Capitals that lead to the same route either way are served.
    assert_eq!(
        admit("GET", "/files/README"),
        Ok(Some("catch-all".to_string()))
    );
    assert_eq!(admit("GET", "/docs/README"), Ok(Some("public".to_string())));
    assert_eq!(admit("GET", "/Docs/README"), bad);
    // A trailing slash a wildcard took, where the path without it is another route's: an
    // upstream that ignores the slash serves that route.
    assert_eq!(
        admit("GET", "/docs/readme/x"),
        Ok(Some("exact".to_string()))
    );
    assert_eq!(admit("GET", "/docs/readme/x/"), bad);
    assert_eq!(admit("GET", "/DOCS/README/X/"), bad);
    assert_eq!(admit("GET", "/docs/x/"), bad);
    assert_eq!(admit("GET", "/files/y/"), Ok(Some("catch-all".to_string())));
    // A route written with its slash decides that form; without it is another path.
    assert_eq!(admit("GET", "/files/list/"), Ok(Some("django".to_string())));
    assert_eq!(
        admit("GET", "/files/list"),
        Ok(Some("catch-all".to_string()))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every spelling of one path that is admitted lands on one route: an upstream that ignores
    /// letter case cannot be reached through two routes by spelling the path two ways.
    #[test]
    fn every_admitted_spelling_of_a_path_has_one_route(
        method in prop::sample::select(vec!["GET", "POST"]),
        segments in prop::collection::vec(
            prop::sample::select(vec!["admin", "api", "orders", "reports", "docs", "x", "readme", "1", "pkg.orders", "get"]),
            1..4,
        ),
        masks in prop::collection::vec(any::<u64>(), 4),
    ) {
        let lower = format!("/{}", segments.join("/"));
        // Each letter in either case, or as a letter outside ASCII that .NET or Java folds to it.
        let spell = |mask: u64| -> String {
            lower
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    let other = mask >> ((i + 32) % 64) & 1 == 1;
                    match (c, other) {
                        ('i', true) if mask >> (i % 64) & 1 == 1 => "%C4%B0".to_string(),
                        ('i', true) => "%C4%B1".to_string(),
                        ('s', true) => "%C5%BF".to_string(),
                        ('k', true) => "%E2%84%AA".to_string(),
                        _ if mask >> (i % 64) & 1 == 1 => c.to_ascii_uppercase().to_string(),
                        _ => c.to_string(),
                    }
                })
                .collect()
        };
        let mut routes = std::collections::BTreeMap::new();
        for p in std::iter::once(lower.clone()).chain(masks.iter().map(|m| spell(*m))) {
            // With a trailing slash too: the same resource to an upstream that ignores it.
            for p in [p.clone(), format!("{p}/")] {
                if let Ok(route) = admit_case(method, &p) {
                    routes.insert(route, p);
                }
            }
        }
        prop_assert!(routes.len() <= 1, "{} {} reaches {:?}", method, lower, routes);
    }
}
