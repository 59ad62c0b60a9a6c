//! Pingora's `log` records as claimgate events. Conditions that are normal for a proxy are
//! logged below ERROR and counted in `claimgate_proxy_events_total{kind}`:
//! - `pool_race`: "failed to acquire reusable stream": a pooled upstream connection was taken
//!   by another request; this one opens a new connection and succeeds.
//! - `accept_error`: "Accept() failed": the listener failing to accept, which Pingora repeats
//!   in a tight loop while a runtime shuts down (rate-limited like every line).
//! - `h2_handshake_error`: "H2 handshake error": a client that negotiated HTTP/2 and then did
//!   not complete its connection preface (gone, silent past the head deadline, or not h2).
//! - `tls_handshake_error`: "Downstream handshake error" or "timeout": a client whose TLS
//!   handshake failed (closed early, too slow, no common version, a client certificate that
//!   does not verify). A client's failure; a rise is a metric to alert on, not an ERROR line
//!   per connection.
//! - `client_closed`: "Fail to proxy: Downstream ConnectionClosed … while reading request
//!   headers": a client that closed in the middle of its request head (at DEBUG; one that
//!   stalled there is the head deadline's, logged and counted as `request_head_timeout`).

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
    if message.starts_with("Downstream handshake error")
        || message.starts_with("Downstream handshake timeout")
    {
        return (Level::INFO, Some("tls_handshake_error"));
    }
    // A client that closed or stalled in the middle of its request head: its own failure,
    // before any request exists (a stall is counted and logged by the head deadline).
    if message.starts_with("Fail to proxy: Downstream")
        && message.contains("while reading request headers")
    {
        let closed = message.contains("ConnectionClosed");
        return (Level::DEBUG, closed.then_some("client_closed"));
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
    fn a_client_failing_in_its_head_is_no_error() {
        assert_eq!(
            classify(log::Level::Error, "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 29, downstream session type: h1"),
            (Level::DEBUG, Some("client_closed"))
        );
        assert_eq!(
            classify(log::Level::Error, "Fail to proxy: Downstream ReadError context: while reading request headers cause: timed out, downstream session type: h1"),
            (Level::DEBUG, None)
        );
        assert_eq!(
            classify(log::Level::Error, "Downstream handshake timeout"),
            (Level::INFO, Some("tls_handshake_error"))
        );
        // An upstream's failure stays an ERROR.
        assert_eq!(
            classify(
                log::Level::Error,
                "Fail to proxy: Upstream ConnectRefused context: ..."
            ),
            (Level::ERROR, None)
        );
    }

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
