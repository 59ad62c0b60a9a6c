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
    small_pages_only();
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

/// Turns transparent huge pages off for this process, before the gateway's threads start.
///
/// The allocator asks the kernel for huge pages on its arenas, and the first touch of one then
/// zeroes 2 MiB inside the page fault, on whichever thread allocated: with many distinct tokens
/// the token cache grows on the request thread, and a profile showed single faults holding the
/// one worker for 5-7 ms (`clear_page_erms` under `do_huge_pmd_anonymous_page`), the
/// latency tail of `benches/load/many-tokens.sh`. With 4 KiB pages the same zeroing is spread
/// over many short faults. Redis and most databases recommend the same for the same reason.
fn small_pages_only() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // An old kernel or a seccomp profile without prctl: the system's setting stays.
        tracing::info!("transparent huge pages stay as the system sets them: {e}");
    }
}
