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
