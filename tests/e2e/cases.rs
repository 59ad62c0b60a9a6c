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
