//! The repository's policy cases (`rules/tests/*.toml`) run in-process, through the same
//! library calls as `claimgate test`: a failing case names its file, line and difference here,
//! in the test command's own output. (`cli::the_repository_policy_tests_pass` runs them once
//! through the binary too.)

use std::path::Path;

#[test]
fn every_repository_policy_case_passes_in_process() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Paths in gateway.toml are relative to it, as the binary resolves them.
    let snapshot = claimgate::load::for_tools(&root.join("gateway.toml"), false)
        .unwrap_or_else(|e| panic!("the repository configuration does not load:\n{e}"));
    let files = claimgate::cases::collect_files(&[root.join("rules/tests")]).unwrap();
    assert!(!files.is_empty());
    let mut ran = 0;
    let mut failures = Vec::new();
    for file in &files {
        let run = claimgate::cases::run_file(&snapshot, file)
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        for r in run.reports {
            ran += 1;
            if !r.passed() {
                failures.push(format!("{} {}: {:?}", r.location, r.name, r.differences));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(ran >= 30, "only {ran} cases");
}

/// Only the claims some expression names are decoded from a new token, so a name the loader
/// failed to collect would read as absent (`!has(claims.suspended)` would then allow). Every
/// claim the repository's rules and source templates mention, found here from their text, must
/// be decoded; claims nothing mentions must not be.
#[test]
fn every_claim_the_repository_rules_mention_is_decoded() {
    use claimgate::auth::claim_names::ClaimNames;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let snapshot = claimgate::load::for_tools(&root.join("gateway.toml"), false)
        .unwrap_or_else(|e| panic!("the repository configuration does not load:\n{e}"));
    let names = &snapshot.claims_read.names;
    assert!(matches!(names, ClaimNames::Only(_)), "{names:?}");
    let mention = regex::Regex::new(r#"claims(?:\.|\[')([A-Za-z_][A-Za-z0-9_]*)"#).unwrap();
    let mut files = claimgate::policy::PolicySet::files_in(&root.join("rules")).unwrap();
    files.push(root.join("gateway.toml"));
    let mut mentioned = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Comments describe; only what is written outside them is read.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for c in mention.captures_iter(line) {
                mentioned.push((file.display().to_string(), c[1].to_string()));
            }
        }
    }
    assert!(mentioned.len() >= 20, "{mentioned:?}");
    for (file, name) in &mentioned {
        assert!(
            names.keeps(name),
            "{file}: `claims.{name}` is read but not decoded"
        );
    }
    for unread in ["scope", "jti", "azp", "realm_access", "email"] {
        if !mentioned.iter().any(|(_, n)| n == unread) {
            assert!(
                !names.keeps(unread),
                "`{unread}` is decoded, yet no rule reads it"
            );
        }
    }
}

/// `expect.headers` of a policy case is checked against the whole head the gateway sends
/// upstream, not only the route's computed headers: the same request through the real gateway
/// and through `claimgate test` gives the same values, and a header the client sent that
/// passes cannot be asserted "not sent".
#[test]
fn expected_headers_are_the_head_the_gateway_sends() {
    use super::harness::*;
    let rules = "[[route]]\nname = \"api\"\npath = \"/api/{*rest}\"\nissuers = [\"hs\"]\n  [route.forward]\n  \"x-user-id\" = \"claims.sub\"\n";
    let (up, gw) = start_standard("", &[("api.toml", rules)]);
    let token = super::tokens::token(
        jsonwebtoken::Algorithm::HS256,
        serde_json::json!({"sub": "ann"}),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        client()
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .header("x-tenant", "acme")
            .header("x-user-id", "forged")
            .header("x-request-id", "req-42")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let seen = up.last();
    let names = [
        "x-tenant",
        "x-user-id",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
    ];
    let expected: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}\" = \"{}\"", seen.headers[*n].to_str().unwrap()))
        .collect();
    assert!(
        expected.contains(&"\"x-user-id\" = \"ann\"".to_string()),
        "{expected:?}"
    );
    let case = |expect: &str| {
        format!(
            "[[case]]\nname = \"c\"\npath = \"/api/x\"\ntoken = \"{token}\"\nclient_ip = \"127.0.0.1\"\n\
             headers = {{ x-tenant = \"acme\", x-user-id = \"forged\", x-request-id = \"req-42\" }}\n\
             expect = {{ status = 200, headers = {{ {expect} }} }}\n"
        )
    };
    let tests = gw.dir().join("rules/tests");
    std::fs::create_dir_all(&tests).unwrap();
    let run = |text: String| {
        std::fs::write(tests.join("h.toml"), text).unwrap();
        policy_tests(&gw.dir().join("gateway.toml"))
    };
    let (code, out) = run(case(&expected.join(", ")));
    assert_eq!(code, Some(0), "{out}");
    // The client's own header reaches the upstream: asserting it is not sent fails.
    let (code, out) = run(case("x-tenant = \"\""));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("header x-tenant: expected not sent, got \"acme\""),
        "{out}"
    );
}
