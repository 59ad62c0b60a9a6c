//! `claimgate test`: run policy test files against the configuration's rules.

use claimgate::cases::{collect_files, run_file};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(after_help = "\
A test file holds cases; each describes a request and the decision expected:

  [[case]]
  name = \"a player without credit is refused\"
  method = \"GET\"                        # default GET
  path = \"/api/game/play\"
  claims = { sub = \"bob\" }              # unverified claims; or token = \"eyJ...\" (verified)
  now = \"2026-03-04T10:00:00-05:00\"     # optional fixed instant
  country = \"DE\"                        # optional; or client_ip = \"203.0.113.7\"
  headers = { \"x-tenant\" = \"acme\" }
  body = { amount = 50 }                # JSON body, written as TOML
  sources = { balance = { balance = 0 } }   # mocked source answers
  # not_found = [\"balance\"], unavailable = [\"subscription\"]
  expect = { status = 402, rule = \"has-balance\" }
  # expect keys: decision (allow|deny), status (200 when allowed), reason, route, rule,
  # message, upstream, headers = { name = \"value\" } (\"\" = not sent), audit_denials = [..]

Exit status: 0 every case passed, 1 a case failed, 2 a file or the configuration is wrong.")]
pub struct TestArgs {
    /// The gateway configuration file.
    #[arg(short, long, default_value = "gateway.toml")]
    config: PathBuf,
    /// Test files or directories; default: the `tests` directory inside the rules directory.
    paths: Vec<PathBuf>,
    /// Also print the trace of passing cases.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(a: TestArgs) -> ExitCode {
    let snapshot = match claimgate::load::for_tools(&a.config, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("claimgate test: the configuration does not load:\n{e}");
            return ExitCode::from(2);
        }
    };
    let paths = if a.paths.is_empty() {
        vec![snapshot.config.rules_dir.join("tests")]
    } else {
        a.paths
    };
    let files = match collect_files(&paths) {
        Ok(f) if f.is_empty() => {
            eprintln!("claimgate test: no test files found");
            return ExitCode::from(2);
        }
        Ok(f) => f,
        Err(e) => {
            eprintln!("claimgate test: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut total, mut failed, mut broken) = (0, 0, 0);
    for file in &files {
        println!("{}", file.display());
        match run_file(&snapshot, file) {
            Err(errors) => {
                for e in errors {
                    println!("  error: {e}");
                    broken += 1;
                }
            }
            Ok(run) => {
                for e in &run.errors {
                    println!("  error: {e}");
                    broken += 1;
                }
                for r in run.reports {
                    total += 1;
                    if r.passed() {
                        println!("  ok    {}", r.name);
                        if a.verbose {
                            print!("{}", indent(&super::render::explanation(&r.explanation), 8));
                        }
                    } else {
                        failed += 1;
                        println!("  FAIL  {}  ({})", r.name, r.location);
                        for d in &r.differences {
                            println!("        {d}");
                        }
                        println!("        trace:");
                        print!(
                            "{}",
                            indent(&super::render::explanation(&r.explanation), 10)
                        );
                    }
                }
            }
        }
    }
    println!(
        "{total} case(s), {} passed, {failed} failed{}",
        total - failed,
        if broken > 0 {
            format!(", {broken} error(s) in test files")
        } else {
            String::new()
        }
    );
    if broken > 0 {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}
