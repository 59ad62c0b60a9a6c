//! Pingora's `log` records as claimgate events. Conditions that are normal for a proxy are
//! logged below ERROR and counted in `claimgate_proxy_events_total{kind}`:
//! - `pool_race`: "failed to acquire reusable stream": a pooled upstream connection was taken
//!   by another request; this one opens a new connection and succeeds.
//! - `accept_error`: "Accept() failed": the listener failing to accept, which Pingora repeats
//!   in a tight loop while a runtime shuts down (rate-limited like every line).
//! - `h2_handshake_error`: "H2 handshake error": a client that negotiated HTTP/2 and then did
//!   not complete its connection preface (gone, silent past the head deadline, or not h2).
//! - `tls_handshake_error`: "Downstream handshake error": a client whose TLS handshake failed
//!   (closed early, no common version, a client certificate that does not verify). A client's
//!   failure; a rise is a metric to alert on, not an ERROR line per connection.

use tracing::level_filters::LevelFilter;
use tracing::Level;

pub use crate::telemetry::PROXY_EVENTS;

/// The level a Pingora record is logged at, and the condition it counts as.
pub fn classify(level: log::Level, message: &str) -> (Level, Option<&'static str>) {
    if message.contains("failed to acquire reusable stream") {
        return (Level::DEBUG, Some("pool_race"));
    }
    if message.starts_with("Accept() failed") {
        return (Level::WARN, Some("accept_error"));
    }
    if message.starts_with("H2 handshake error") {
        return (Level::INFO, Some("h2_handshake_error"));
    }
    if message.starts_with("Downstream handshake error") {
        return (Level::INFO, Some("tls_handshake_error"));
    }
    let level = match level {
        log::Level::Error => Level::ERROR,
        log::Level::Warn => Level::WARN,
        log::Level::Info => Level::INFO,
        log::Level::Debug => Level::DEBUG,
        log::Level::Trace => Level::TRACE,
    };
    (level, None)
}

struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let (level, kind) = classify(record.level(), &message);
        if let Some(k) = kind {
            PROXY_EVENTS.with_label_values(&[k]).inc();
        }
        let module = record.module_path().unwrap_or("");
        // The macros need the level at compile time.
        match level {
            Level::ERROR => tracing::error!(target: "pingora", module, "{message}"),
            Level::WARN => tracing::warn!(target: "pingora", module, "{message}"),
            Level::INFO => tracing::info!(target: "pingora", module, "{message}"),
            Level::DEBUG => tracing::debug!(target: "pingora", module, "{message}"),
            _ => tracing::trace!(target: "pingora", module, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Routes the `log` crate into the subscriber, up to `max` (the filter's most verbose level)
/// and never below INFO: Pingora's DEBUG and TRACE records print request and response heads
/// (`Authorization` and `Cookie` included) and body bytes, and no filter setting
/// (`RUST_LOG=debug`) may put a token in the log. claimgate's own DEBUG lines are not affected.
pub fn install(max: Option<LevelFilter>) {
    if log::set_boxed_logger(Box::new(Bridge)).is_err() {
        return;
    }
    let level = match max.unwrap_or(LevelFilter::TRACE) {
        LevelFilter::OFF => log::LevelFilter::Off,
        LevelFilter::ERROR => log::LevelFilter::Error,
        LevelFilter::WARN => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    // Demoted records start at ERROR in Pingora, so they always reach the classifier.
    log::set_max_level(level.max(log::LevelFilter::Warn));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_proxy_conditions_are_demoted_and_counted() {
        assert_eq!(
            classify(log::Level::Error, "failed to acquire reusable stream"),
            (Level::DEBUG, Some("pool_race"))
        );
        assert_eq!(
            classify(
                log::Level::Error,
                "Accept() failed Socket is being shutdown"
            ),
            (Level::WARN, Some("accept_error"))
        );
        assert_eq!(
            classify(
                log::Level::Error,
                "H2 handshake error  HandshakeError context: while h2 handshaking"
            ),
            (Level::INFO, Some("h2_handshake_error"))
        );
        assert_eq!(
            classify(
                log::Level::Error,
                "Downstream handshake error from 127.0.0.1:4646: TLSHandshakeFailure"
            ),
            (Level::INFO, Some("tls_handshake_error"))
        );
        assert_eq!(
            classify(log::Level::Error, "something else"),
            (Level::ERROR, None)
        );
    }
}
