//! `claimgate check`: validate the configuration, keys and rules.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(after_help = "\
Exit status: 0 valid (warnings allowed unless --deny-warnings), 1 errors (or warnings with
--deny-warnings), 2 the crypto self-test failed.

Run it before every deploy, e.g. in CI:  claimgate check --config gateway.toml --deny-warnings")]
pub struct CheckArgs {
    #[arg(short, long, default_value = "gateway.toml")]
    config: PathBuf,
    /// Fail on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

pub fn run(a: CheckArgs) -> ExitCode {
    if let Err(e) = claimgate::crypto::self_test() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    match claimgate::load::load(&a.config, &Default::default()).map(|l| l.snapshot) {
        Ok(s) => {
            for w in s.issuers.warnings.iter().chain(&s.policy.warnings) {
                eprintln!("warning: {w}");
            }
            let warned = s.issuers.warnings.len() + s.policy.warnings.len();
            println!(
                "ok: {} routes from {} files, {} issuers, {} sources, {warned} warning(s)",
                s.policy.routes.len(),
                s.policy.files.len(),
                s.issuers.len(),
                s.sources.iter().count(),
            );
            if a.deny_warnings && warned > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            ExitCode::from(1)
        }
    }
}
