//! The `claimgate` command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod token_cmd;

/// claimgate: a reverse proxy that verifies JWTs and enforces policies on their claims.
#[derive(Parser)]
#[command(name = "claimgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The gateway configuration file.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Also serve a built-in echo upstream on this address (for trying claimgate out).
        #[arg(long, value_name = "ADDR")]
        echo_upstream: Option<SocketAddr>,
        /// Testing only: decide every request as if it were this instant (RFC 3339, e.g.
        /// 2026-03-02T10:00:00+01:00) instead of the real time, token expiry included.
        #[arg(long, value_name = "TIME")]
        fixed_clock: Option<chrono::DateTime<chrono::FixedOffset>>,
    },
    /// Validate the configuration, its keys and every rules file; print every error found.
    Check {
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Mint a signed token for local testing.
    Token(token_cmd::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            echo_upstream,
            fixed_clock,
        } => {
            claimgate::telemetry::init_logging();
            let clock = match fixed_clock {
                Some(t) => claimgate::proxy::Clock::Fixed(t.into()),
                None => claimgate::proxy::Clock::System,
            };
            match claimgate::server::run(&config, echo_upstream, clock) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("claimgate: cannot start:\n{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check { config } => {
            if let Err(e) = claimgate::server::crypto_self_test() {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            match claimgate::server::load(&config) {
                Ok(s) => {
                    println!(
                        "ok: {} routes from {} files, {} issuers",
                        s.policy.routes.len(),
                        s.policy.files.len(),
                        s.issuers.len()
                    );
                    ExitCode::SUCCESS
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
        Command::Token(args) => token_cmd::run(args),
    }
}
