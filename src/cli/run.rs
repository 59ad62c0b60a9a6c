//! `claimgate run`: the gateway.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunArgs {
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
    /// Log lines as JSON, or compact for a person (`auto`: pretty on a terminal).
    #[arg(long, value_enum, default_value = "auto")]
    log_format: claimgate::logging::LogFormat,
}

/// Exit status: 0 after a clean stop, 1 when the stop watchdog ended it, 2 when it cannot start.
pub fn run(a: RunArgs) -> ExitCode {
    claimgate::logging::init(a.log_format);
    let clock = match a.fixed_clock {
        Some(t) => claimgate::proxy::Clock::Fixed(t.into()),
        None => claimgate::proxy::Clock::System,
    };
    let echo = a.echo_upstream.map(|addr| (addr, a.echo_data));
    match claimgate::server::run(&a.config, echo, clock) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claimgate: cannot start:\n{e}");
            ExitCode::from(2)
        }
    }
}
