//! Logs for people: one subscriber for claimgate's lines and Pingora's, JSON for machines or a
//! compact coloured format on a terminal, identical lines collapsed, and a bounded number of
//! lines per second whatever happens. Decision logs (one per request, by the operator's
//! choice) are never collapsed.
//!
//! Pingora logs through the `log` crate; [`bridge`] turns its records into events of target
//! `pingora` without the build paths (`log.file`) that a generic bridge adds, and demotes the
//! conditions that are normal for a proxy (see [`bridge::classify`]), counting them instead.

pub mod bridge;
pub mod rate_limit;
pub mod target;

use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// Compact, coloured, one line an event: for a terminal.
    Pretty,
    /// Pretty when stderr is a terminal, JSON otherwise.
    #[default]
    Auto,
}

/// How long identical lines are collapsed into one, and how many other lines a second pass.
const WINDOW: Duration = Duration::from_secs(10);
const LINES_PER_SECOND: u32 = 200;

/// Installs the subscriber and the Pingora bridge; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let max = filter.max_level_hint();
    let pretty = match format {
        LogFormat::Json => false,
        LogFormat::Pretty => true,
        LogFormat::Auto => std::io::stderr().is_terminal(),
    };
    let report: rate_limit::Report = Box::new(move |line, n, window| {
        use std::io::Write;
        let text = rate_limit::summary_line(!pretty, line, n, window);
        let _ = std::io::stderr().write_all(text.as_bytes());
    });
    let limit = rate_limit::RateLimit::new(WINDOW, LINES_PER_SECOND, report);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if pretty {
        fmt.compact().with_ansi(true).boxed()
    } else {
        fmt.json()
            .with_current_span(false)
            .with_span_list(false)
            .boxed()
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(limit));
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        bridge::install(max);
    }
}
