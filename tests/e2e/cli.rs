//! The policy tooling through the real binary: `check`, `eval`, `test`, `token`, `completions`:
//! exit codes and output.

use super::harness::*;
use super::tokens::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

const REPO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml");

fn run(args: &[&str]) -> Output {
    binary()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_error_with_its_location_and_warnings_apart() {
    let up = Upstream::start();
    let broken_a = r#"
[[route]]
name = "a"
path = "/a"
  [[route.rule]]
  name = "r"
  allow_if = "claims.level >>= 3"
"#;
    let broken_b = r#"
[[route]]
name = "b"
path = "/b"
issuers = ["nobody"]
"#;
    let (dir, _, _) = write_setup(
        &standard_config(up.addr),
        &[("a.toml", broken_a), ("b.toml", broken_b)],
    );
    let config = dir.path().join("gateway.toml");
    let o = run(&["check", "--config", config.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a.toml:7:"), "{err}");
    assert!(err.contains("b.toml:5:"), "{err}");
    assert!(err.contains("unknown issuer `nobody`"), "{err}");

    // Valid, but with a route that can never match and a constant rule: warnings, exit 0;
    // with --deny-warnings, exit 1.
    let odd = r#"
[[route]]
name = "dotted"
path = "/api/./x"
issuers = ["hs"]

[[route]]
name = "closed"
path = "/closed"
issuers = ["hs"]
  [[route.rule]]
  name = "never"
  allow_if = "false"
"#;
    std::fs::remove_file(dir.path().join("rules/a.toml")).unwrap();
    std::fs::write(dir.path().join("rules/b.toml"), odd).unwrap();
    let o = run(&["check", "--config", config.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("2 warning(s)"), "{out}");
    assert!(
        err.contains("b.toml:4:8: route `dotted` can never match"),
        "{err}"
    );
    assert!(err.contains("rule `never`: the condition is constant and always denies"));
    let o = run(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--deny-warnings",
    ]);
    assert_eq!(o.status.code(), Some(1));

    // The repository's own configuration has no warnings.
    let o = run(&["check", "--config", REPO_CONFIG, "--deny-warnings"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("0 warning(s)"), "{out}");
}

#[test]
fn eval_explains_a_denial_from_raw_claims() {
    let o = run(&[
        "eval",
        "--config",
        REPO_CONFIG,
        "--claims",
        r#"{"sub":"alice","permissions":["transfer"],"geoCompliance":{"isAllowed":true}}"#,
        "-X",
        "POST",
        "--body",
        r#"{"amount": 2500}"#,
        "/api/transfer",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("decision:  DENY 400 (rule_denied)"), "{out}");
    assert!(out.contains("rule:    amount-within-limit"), "{out}");
    assert!(out.contains("UNVERIFIED"), "{out}");
    assert!(out.contains("geo-compliance"), "{out}");
    assert!(out.contains("max_amount = 1000"), "{out}");
}

#[test]
fn eval_json_traces_rules_attributes_sources_upstream_and_headers() {
    let o = run(&[
        "eval",
        "--config",
        REPO_CONFIG,
        "--claims",
        r#"{"sub":"alice"}"#,
        "--source",
        r#"subscription={"tier":"premium"}"#,
        "--json",
        "/api/files/large/a.bin",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["unverified"], true);
    assert_eq!(v["upstream"], "echo");
    let t = &v["trace"];
    assert_eq!(t["route"]["name"], "subscription-features");
    assert_eq!(t["rules"][0]["name"], "premium-for-large-uploads");
    assert_eq!(t["rules"][0]["result"], "pass");
    assert_eq!(t["attrs"]["tier"], "premium");
    assert_eq!(t["attrs"]["rate_limit"], 10000);
    assert_eq!(t["sources"][0]["name"], "subscription");
    assert_eq!(
        t["sources"][0]["url"],
        "http://127.0.0.1:9000/_data/subscriptions/alice"
    );
    assert_eq!(t["forward"]["x-storage-quota-gb"], "1000");

    // A rule after the deciding one did not run; a time rule at a fixed instant; geo by country.
    let o = run(&[
        "eval",
        "--config",
        REPO_CONFIG,
        "--claims",
        r#"{"sub":"a"}"#,
        "--now",
        "2026-03-07T10:00:00-05:00",
        "--json",
        "/api/support/x",
    ]);
    let v: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["rule"], "weekdays-only");
    assert_eq!(v["trace"]["rules"][1]["result"], "not run");
    let o = run(&[
        "eval",
        "--config",
        REPO_CONFIG,
        "--claims",
        r#"{"sub":"a"}"#,
        "--country",
        "ca",
        "--json",
        "/api/data/x",
    ]);
    let v: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["upstream"], "ca-central-1");
}

#[test]
fn eval_verifies_real_tokens_minted_by_the_token_command() {
    let o = run(&[
        "token",
        "--key",
        "dev/keys/es256-private.pem",
        "--alg",
        "ES256",
        "--kid",
        "dev-es256",
        "--iss",
        "https://dev.claimgate.local",
        "--aud",
        "claimgate-demo",
        "--sub",
        "alice",
        "--claims",
        r#"{"permissions":["reports:read"]}"#,
    ]);
    let (token, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3);

    let o = run(&["eval", "--token", token, "/api/reports/7"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("signature verified"), "{out}");
    assert!(out.contains("x-report-id: 7"), "{out}");

    // A tampered token is refused as the gateway would refuse it.
    let mut bad = token.to_string();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let o = run(&["eval", "--token", &bad, "--json", "/api/reports/7"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["status"], 401);

    // An expired token, at real time.
    let old = dev_token_at(now() - 7200, json!({}));
    let o = run(&["eval", "--token", &old, "--json", "/api/profile"]);
    let v: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["reason"], "token_expired");

    // Bad arguments: exit 2 with a clear message.
    let o = run(&["eval", "--claims", "[1]", "/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--claims must be a JSON object"));
    let o = run(&["eval", "--claims", "{}", "--source", "nope={}", "/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("no source `nope`"));
}

#[test]
fn the_repository_policy_tests_pass() {
    let o = run(&["test", "--config", REPO_CONFIG]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
    let cases: usize = out
        .lines()
        .last()
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(cases >= 30, "{out}");
}

#[test]
fn a_failing_policy_test_names_the_case_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("game.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "credit lets you play"
path = "/api/game/play"
claims = { sub = "alice" }
sources = { balance = { balance = 5 } }
expect = { decision = "allow", headers = { "x-balance" = "5" } }

[[case]]
name = "deliberately wrong: zero balance expected to pass"
path = "/api/game/play"
claims = { sub = "bob" }
sources = { balance = { balance = 0 } }
expect = { status = 200, headers = { "x-balance" = "0" } }
"#,
    )
    .unwrap();
    let o = run(&["test", "--config", REPO_CONFIG, file.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("ok    credit lets you play"), "{out}");
    assert!(
        out.contains("FAIL  deliberately wrong: zero balance expected to pass"),
        "{out}"
    );
    assert!(out.contains("game.toml:9:1"), "{out}");
    assert!(out.contains("status: expected 200, got 402"), "{out}");
    assert!(
        out.contains("header x-balance: expected \"0\", got not sent"),
        "{out}"
    );
    assert!(out.contains("has-balance"), "the trace is shown: {out}");
    assert!(out.contains("2 case(s), 1 passed, 1 failed"), "{out}");

    // A broken test file is an error with its location, not a pass.
    std::fs::write(
        &file,
        "[[case]]\nname = \"x\"\npath = \"/api/profile\"\nexpect = { stauts = 200 }\n",
    )
    .unwrap();
    let o = run(&["test", "--config", REPO_CONFIG, file.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("game.toml:4:"), "{out}");
    assert!(out.contains("stauts"), "{out}");
}

#[test]
fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success());
        let (out, _) = text(&o);
        assert!(out.contains("claimgate") && out.contains("eval"), "{shell}");
    }
    let o = run(&["--help"]);
    let (out, _) = text(&o);
    for needle in ["check", "eval", "test", "token", "Changing a policy safely"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let o = run(&["test", "--help"]);
    assert!(text(&o).0.contains("expect keys"));
    assert!(Path::new(REPO_CONFIG).exists());
}

#[test]
fn a_test_file_reports_every_failing_case_and_every_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three.toml");
    let case = |name: &str, expect: &str| {
        format!("[[case]]\nname = \"{name}\"\npath = \"/api/profile\"\nexpect = {expect}\n\n")
    };
    let cases = [
        case("first wrong", "{ status = 418 }"),
        case("broken", "{ decision = \"maybe\" }"),
        case("second wrong", "{ status = 419 }"),
        case("third wrong", "{ decision = \"allow\" }"),
    ]
    .concat();
    std::fs::write(&file, cases).unwrap();
    let o = run(&["test", "--config", REPO_CONFIG, file.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    for name in ["first wrong", "second wrong", "third wrong"] {
        assert!(out.contains(&format!("FAIL  {name}")), "{name}: {out}");
    }
    assert!(out.contains("case `broken`: expect.decision"), "{out}");
    assert!(
        out.contains("3 case(s), 0 passed, 3 failed, 1 error(s) in test files"),
        "{out}"
    );
}

#[test]
fn token_claims_win_over_defaults_and_conflicts_are_refused() {
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/dev/keys/es256-private.pem");
    let base = ["token", "--key", key, "--kid", "k", "--aud", "a"];
    let payload = |o: &Output| -> Value {
        let (out, err) = text(o);
        assert!(o.status.success(), "{err}");
        let part = out.trim().split('.').nth(1).unwrap().to_string();
        use base64::Engine as _;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let mut args = base.to_vec();
    args.extend([
        "--claims",
        r#"{"sub":"x","iss":"https://i","exp":4000000000}"#,
    ]);
    let p = payload(&run(&args));
    assert_eq!(
        (p["sub"].as_str(), p["iss"].as_str()),
        (Some("x"), Some("https://i"))
    );
    assert_eq!(p["exp"], 4_000_000_000u64);
    let mut args = base.to_vec();
    args.extend([
        "--iss",
        "https://i",
        "--sub",
        "y",
        "--claims",
        r#"{"sub":"x"}"#,
    ]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o)
        .1
        .contains("`sub` is given by --sub and by --claims"));
    let mut args = base.to_vec();
    args.extend(["--claims", "{}"]);
    let o = run(&args);
    assert!(text(&o).1.contains("give --iss"), "{}", text(&o).1);
}

#[test]
fn messages_name_the_configuration_file_given() {
    let up = Upstream::start();
    let route = "[[route]]\nname = \"a\"\npath = \"/a\"\nissuers = [\"nobody\"]\n";
    let (dir, _, _) = write_setup(&standard_config(up.addr), &[("a.toml", route)]);
    let edge = dir.path().join("edge.toml");
    std::fs::rename(dir.path().join("gateway.toml"), &edge).unwrap();
    let o = run(&["check", "--config", edge.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(
        err.contains("unknown issuer `nobody` (not in edge.toml)"),
        "{err}"
    );
    assert!(!err.contains("gateway.toml"), "{err}");
}

/// Claims given to `eval` are held to what the gateway holds a verified token to: a route
/// without auth gives its rules no claims, and a token of an issuer the route does not accept
/// is refused as such.
#[test]
fn eval_claims_meet_the_routes_auth_and_issuers() {
    let rules = r#"
[[route]]
name = "ec-only"
path = "/ec"
issuers = ["ec"]

[[route]]
name = "open"
path = "/open"
auth = "none"
  [[route.rule]]
  name = "no-claims-here"
  deny_if = "has(claims.sub)"
"#;
    let (dir, _, _) = write_setup(
        &standard_config("127.0.0.1:9".parse().unwrap()),
        &[("r.toml", rules)],
    );
    let config = dir.path().join("gateway.toml");
    let eval = |args: &[&str]| {
        let o = binary()
            .arg("eval")
            .arg("--config")
            .arg(&config)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        serde_json::from_str::<Value>(&out).unwrap_or_else(|_| panic!("{out}"))
    };
    let v = eval(&["--claims", r#"{"sub":"a"}"#, "--issuer", "hs", "/ec"]);
    assert_eq!(
        (v["status"].as_u64(), v["reason"].as_str()),
        (Some(401), Some("wrong_issuer")),
        "{v}"
    );
    let v = eval(&["--claims", r#"{"sub":"a"}"#, "--issuer", "ec", "/ec"]);
    assert_eq!(v["decision"], "allow", "{v}");
    // The proxy gives an `auth = "none"` route's rules no token, whatever the request carries.
    let v = eval(&["--claims", r#"{"sub":"a"}"#, "/open"]);
    assert_eq!(v["decision"], "allow", "{v}");
    // Held to what the gateway holds the same claims signed to: expired, not yet valid, for
    // another audience.
    for (claims, reason) in [
        (r#"{"sub":"a","exp":1}"#, "token_expired"),
        (r#"{"sub":"a","nbf":4102444800}"#, "token_not_yet_valid"),
        (r#"{"sub":"a","aud":"someone-else"}"#, "wrong_audience"),
    ] {
        let v = eval(&["--claims", claims, "--issuer", "ec", "/ec"]);
        assert_eq!(
            (v["status"].as_u64(), v["reason"].as_str()),
            (Some(401), Some(reason)),
            "{claims}: {v}"
        );
    }

    // A request no route serves, where `[unmatched]` lets tokens through: the claims count.
    let config_text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{config_text}\n[unmatched]\naction = \"allow\"\nupstream = \"main\"\nauth = \"required\"\n"),
    )
    .unwrap();
    let v = eval(&[
        "--claims",
        r#"{"sub":"a"}"#,
        "--issuer",
        "hs",
        "/not-routed",
    ]);
    assert_eq!(v["decision"], "allow", "{v}");
    let v = eval(&["/not-routed"]);
    assert_eq!(v["reason"], "missing_token", "{v}");
}

/// `check` warns about key setups that load and refuse every token: a certificate-bound issuer
/// with no listener that asks for client certificates, two keys of one algorithm that no
/// token can tell apart, and a JWKS key skipped (which the gateway only logged).
#[test]
fn check_warns_about_keys_no_token_can_use() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("keys.json");
    // The fixture's RSA key without its `alg`: it fits both RSA algorithms the issuer accepts.
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let mut rsa = doc["keys"][0].clone();
    rsa.as_object_mut().unwrap().remove("alg");
    rsa["kid"] = json!("bad");
    doc["keys"] = json!([rsa, doc["keys"][0].clone()]);
    std::fs::write(&jwks, doc.to_string()).unwrap();
    let config = format!(
        r#"
[listen]
proxy = "127.0.0.1:1"
admin = "127.0.0.1:2"
[rules]
dir = "rules"
[upstreams.main]
addresses = ["127.0.0.1:9"]
[issuers.bound]
issuer = "https://bound.test"
audiences = ["api"]
algorithms = ["ES256"]
certificate_bound = true
keys = [{{ pem_file = "{ec}", kid = "a" }}]
[issuers.twins]
issuer = "https://twins.test"
audiences = ["api"]
algorithms = ["ES256"]
keys = [{{ pem_file = "{ec}", alg = "ES256" }}, {{ pem_file = "{ec}", alg = "ES256" }}]
[issuers.file]
issuer = "https://file.test"
audiences = ["api"]
algorithms = ["RS256", "PS256"]
keys = [{{ jwks_file = "{jwks}" }}]
"#,
        ec = fixture("ec256-public.pem").display(),
        jwks = jwks.display()
    );
    std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/r.toml"),
        "[[route]]\nname = \"r\"\npath = \"/r\"\nissuers = [\"bound\", \"twins\", \"file\"]\n",
    )
    .unwrap();
    let o = run(&[
        "check",
        "--config",
        dir.path().join("gateway.toml").to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("issuer `bound`: `certificate_bound` needs a client certificate"),
        "{err}"
    );
    assert!(
        err.contains("issuer `twins`: several keys of one algorithm have no `kid` (2 ES256)"),
        "{err}"
    );
    assert!(
        err.contains("issuer `file`: skipping the JWKS key `bad`"),
        "{err}"
    );
    assert!(out.contains("3 warning(s)"), "{out}");
}

/// A limit named in `eval --limit-used` or a test case's `limits_used` must exist: a misspelt
/// one would be ignored, and the allowed answer read as the limit's.
#[test]
fn eval_refuses_a_usage_for_a_limit_that_does_not_exist() {
    let o = run(&[
        "eval",
        "--config",
        REPO_CONFIG,
        "--claims",
        r#"{"sub":"alice"}"#,
        "--limit-used",
        "api-rat=9999",
        "/api/files/large/a.bin",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("no limit `api-rat` in the rules"), "{err}");
}

/// With `[unmatched] action = "allow"`, a host with routes of its own lets the paths of the
/// protected host-less routes through unchecked on that host: `check` says so.
#[test]
fn check_warns_where_unmatched_allow_opens_a_protected_route_on_a_host() {
    let config = format!(
        "{}\n[unmatched]\naction = \"allow\"\nupstream = \"main\"\n",
        standard_config("127.0.0.1:9".parse().unwrap())
    );
    let rules = "[[route]]\nname = \"admin\"\npath = \"/admin\"\nissuers = [\"ec\"]\n\n[[route]]\nname = \"status\"\nhost = \"status.test\"\npath = \"/status\"\nauth = \"none\"\n";
    let (dir, _, _) = write_setup(&config, &[("r.toml", rules)]);
    let o = run(&[
        "check",
        "--config",
        dir.path().join("gateway.toml").to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("host `status.test` has routes of its own") && err.contains("(admin)"),
        "{err}"
    );
}
