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
        /// With --echo-upstream: also answer `GET /_data/PATH` with the file DIR/PATH.json,
        /// the demo's stand-in for external services (e.g. dev/demo-data).
        #[arg(long, value_name = "DIR", requires = "echo_upstream")]
        echo_data: Option<PathBuf>,
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
    /// Write a small country database (.mmdb) for tests and demos.
    GeoDb {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Write the demo database shipped as dev/geo-demo.mmdb.
        #[arg(long, conflicts_with = "entry")]
        demo: bool,
        /// A network and its place: CIDR=COUNTRY:CONTINENT, e.g. 192.0.2.0/24=DE:EU.
        #[arg(long, value_name = "CIDR=CC:CONT")]
        entry: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            echo_upstream,
            echo_data,
            fixed_clock,
        } => {
            claimgate::telemetry::init_logging();
            let clock = match fixed_clock {
                Some(t) => claimgate::proxy::Clock::Fixed(t.into()),
                None => claimgate::proxy::Clock::System,
            };
            match claimgate::server::run(&config, echo_upstream.map(|a| (a, echo_data)), clock) {
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
            match claimgate::server::load(&config, &Default::default()) {
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
        Command::GeoDb { out, demo, entry } => {
            use claimgate::geo::writer;
            let (entries, epoch) = if demo {
                (writer::demo_entries(), writer::DEMO_EPOCH)
            } else {
                let mut v = Vec::new();
                for e in &entry {
                    let parsed = e.split_once('=').and_then(|(net, place)| {
                        let (cc, cont) = place.split_once(':')?;
                        Some(writer::Entry {
                            network: net.parse().ok()?,
                            country: cc.to_string(),
                            continent: cont.to_string(),
                        })
                    });
                    match parsed {
                        Some(x) => v.push(x),
                        None => {
                            eprintln!(
                                "claimgate geo-db: `{e}` is not CIDR=COUNTRY:CONTINENT (IPv4)"
                            );
                            return ExitCode::from(1);
                        }
                    }
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                (v, now)
            };
            match std::fs::write(&out, writer::build(&entries, epoch)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("claimgate geo-db: cannot write `{}`: {e}", out.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}
