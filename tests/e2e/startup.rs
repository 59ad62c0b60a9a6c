//! Startup and `check`: bad configuration stops the gateway with located errors.

use super::harness::*;

fn run_and_fail(config: &str, rules: &[(&str, &str)]) -> String {
    let (dir, _, _) = write_setup(config, rules);
    let out = binary()
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("run claimgate");
    assert!(
        !out.status.success(),
        "claimgate started with a broken setup"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cel_syntax_error_stops_startup_with_file_line_column() {
    let up = "127.0.0.1:9".parse().unwrap();
    let rules = r#"# line 1
[[route]]
name = "r"
path = "/x"
issuers = ["ec"]

  [[route.rule]]
  name = "broken"
  allow_if = "claims.a == && true"
"#;
    let err = run_and_fail(&standard_config(up), &[("bad.toml", rules)]);
    // The error names the file, the line (9) and the column of the offending token in the file.
    let expected = "bad.toml:9:27:";
    assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
    assert!(err.contains("CEL syntax error"), "{err}");
}

#[test]
fn every_error_is_reported_with_its_location() {
    let up = "127.0.0.1:9".parse().unwrap();
    let rules = r#"[[route]]
name = "a"
path = "/a"
issuers = ["nobody"]
upstream = "nowhere"

[[route]]
name = "a"
path = "/b"
issuers = ["ec"]
  [[route.rule]]
  name = "r"
  allow_if = "bodyy.amount < 3"
  [route.forward]
  "authorization" = "'x'"
"#;
    let typo = "[[route]]\nname = \"t\"\npath = \"/t\"\nissuers = [\"ec\"]\nmethod = [\"GET\"]\n";
    let err = run_and_fail(&standard_config(up), &[("a.toml", rules), ("b.toml", typo)]);
    for needle in [
        "a.toml:4:12: unknown issuer `nobody`",
        "a.toml:5:12: unknown upstream `nowhere`",
        "a.toml:8:8: route name `a` is already used",
        // The column of the name itself, inside the expression.
        "a.toml:13:15: rule `r`: unknown variable `bodyy`",
        "a.toml:15:21: route `a` may not set the `authorization` header",
        "b.toml:5:1: unknown field `method`",
    ] {
        assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    }
}

fn assert_check_passes(dir: &std::path::Path) {
    let out = binary()
        .arg("check")
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nested_loops_over_request_data_are_refused_at_load() {
    let up = "127.0.0.1:9".parse().unwrap();
    let rules = r#"[[route]]
name = "pairs"
path = "/pairs"
issuers = ["ec"]
  [[route.rule]]
  name = "all-pairs-differ"
  allow_if = "claims.ids.all(a, claims.ids.all(b, a == b || a != b))"
"#;
    let err = run_and_fail(&standard_config(up), &[("pairs.toml", rules)]);
    assert!(
        err.contains("pairs.toml:7:14: rule `all-pairs-differ`: may take up to"),
        "{err}"
    );
    assert!(err.contains("`limits.max_eval_steps` = 1000000"), "{err}");
    // The same rule loads when the operator raises the budget on purpose.
    let config = format!(
        "{}\n[limits]\nmax_eval_steps = 1000000000\n",
        standard_config(up)
    );
    let (dir, _, _) = write_setup(&config, &[("pairs.toml", rules)]);
    assert_check_passes(dir.path());
}

#[test]
fn config_errors_are_located_and_check_agrees() {
    let up = "127.0.0.1:9".parse().unwrap();
    let config = standard_config(up).replace(
        "algorithms = [\"EdDSA\"]",
        "algorithms = [\"EdDSA\", \"none\"]",
    );
    let err = run_and_fail(&config, &[]);
    assert!(err.contains("gateway.toml:"), "{err}");
    assert!(
        err.contains("unknown or unsupported algorithm `none`"),
        "{err}"
    );

    let (dir, _, _) = write_setup(&config, &[]);
    let out = binary()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown or unsupported algorithm `none`"),
        "{stderr}"
    );

    let (dir, _, _) = write_setup(&standard_config(up), &[]);
    assert_check_passes(dir.path());
}

#[test]
fn the_repository_configuration_is_valid() {
    let out = binary()
        .arg("check")
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The gateway turns transparent huge pages off for itself: a 2 MiB page zeroed inside one
/// page fault held the one worker for milliseconds while the token cache grew (src/cli/run.rs).
#[test]
fn the_gateway_runs_without_transparent_huge_pages() {
    let (_up, gw) = start_standard("", &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line in /proc/PID/status:\n{status}"));
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
