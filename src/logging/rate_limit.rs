//! Identical lines within a window are written once; the rest are counted and reported in one
//! line when the window ends. Lines past a per-second budget are dropped and counted the same
//! way; WARN and ERROR lines have a budget of their own, so a flood of INFO lines (a client's
//! failed TLS handshakes, say) cannot hide a failed reload. Decision logs
//! (`claimgate::decision`) are exempt: each is about one request, and the operator chose to
//! have them.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter};

const EXEMPT_TARGET: &str = "claimgate::decision";
const SUMMARY_TARGET: &str = "claimgate::logging";

pub struct RateLimit {
    window: Duration,
    per_second: u32,
    state: Mutex<State>,
    /// Writes a summary line. Not an event: tracing drops events emitted while it dispatches
    /// one, which is where a filter runs.
    report: Report,
}

/// Writes a summary: the line suppressed, how many times, in what window.
pub type Report = Box<dyn Fn(&str, u64, Duration) + Send + Sync>;

/// A summary line in the format of the other lines.
pub fn summary_line(json: bool, line: &str, suppressed: u64, window: Duration) -> String {
    let message = "identical log lines suppressed";
    if json {
        serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "WARN",
            "fields": {
                "message": message,
                "suppressed": suppressed,
                "window_ms": window.as_millis() as u64,
                "line": line,
            },
            "target": SUMMARY_TARGET,
        })
        .to_string()
            + "\n"
    } else {
        format!(
            "{} \x1b[33m WARN\x1b[0m {SUMMARY_TARGET}: {message} suppressed={suppressed} window_ms={} line={line:?}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            window.as_millis()
        )
    }
}

struct State {
    window_start: Instant,
    /// Per line (hash of level, target and fields): the text, and how many were suppressed.
    seen: HashMap<u64, (String, u64)>,
    second_start: Instant,
    /// Lines written this second: INFO and below, WARN and ERROR.
    this_second: u32,
    important_this_second: u32,
    over_budget: u64,
}

/// Collects an event's fields as text, and its message.
#[derive(Default)]
struct Text {
    all: String,
    message: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        }
        let _ = write!(self.all, "{}={value:?};", field.name());
    }
}

impl RateLimit {
    pub fn new(window: Duration, per_second: u32, report: Report) -> Self {
        let now = Instant::now();
        RateLimit {
            window,
            per_second,
            report,
            state: Mutex::new(State {
                window_start: now,
                seen: HashMap::new(),
                second_start: now,
                this_second: 0,
                important_this_second: 0,
                over_budget: 0,
            }),
        }
    }

    /// Whether `event` is written; reports what was suppressed when a window ends.
    pub fn admit(&self, event: &Event<'_>) -> bool {
        let meta = event.metadata();
        if meta.target() == EXEMPT_TARGET || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut h = DefaultHasher::new();
        meta.level().hash(&mut h);
        meta.target().hash(&mut h);
        text.all.hash(&mut h);
        let key = h.finish();
        let now = Instant::now();
        let (allowed, report) = {
            let mut s = match self.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let mut report = Vec::new();
            if now.duration_since(s.window_start) >= self.window {
                s.window_start = now;
                report = s
                    .seen
                    .drain()
                    .filter(|(_, (_, n))| *n > 0)
                    .map(|(_, v)| v)
                    .collect();
                if s.over_budget > 0 {
                    report.push(("lines over the per-second budget".into(), s.over_budget));
                    s.over_budget = 0;
                }
            }
            if now.duration_since(s.second_start) >= Duration::from_secs(1) {
                s.second_start = now;
                s.this_second = 0;
                s.important_this_second = 0;
            }
            let state = &mut *s;
            let budget = if *meta.level() <= tracing::Level::WARN {
                &mut state.important_this_second
            } else {
                &mut state.this_second
            };
            let allowed = if let Some((_, n)) = state.seen.get_mut(&key) {
                *n += 1;
                false
            } else if *budget >= self.per_second {
                state.over_budget += 1;
                false
            } else {
                *budget += 1;
                state.seen.insert(key, (text.message, 0));
                true
            };
            (allowed, report)
        };
        for (line, n) in report {
            (self.report)(&line, n, self.window);
        }
        allowed
    }
}

impl<S: Subscriber> Filter<S> for RateLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        self.admit(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buffer) -> Vec<String> {
        String::from_utf8_lossy(&buf.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn identical_lines_collapse_and_decisions_pass() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let summaries = buf.clone();
        let report: Report = Box::new(move |line, n, w| {
            let _ = std::io::Write::write_all(
                &mut summaries.clone(),
                summary_line(true, line, n, w).as_bytes(),
            );
        });
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || writer.clone())
            .with_filter(RateLimit::new(Duration::from_millis(200), 50, report));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..10_000 {
                tracing::error!(target: "pingora", "Accept() failed Socket is being shutdown");
            }
            for i in 0..100 {
                tracing::info!(target: "claimgate::decision", request_id = i, "request denied");
            }
            // Many different lines: only the per-second budget passes.
            for i in 0..1000 {
                tracing::warn!(n = i, "a different line every time");
            }
            // INFO lines spend a budget of their own (50 more written, 950 dropped).
            for i in 0..1000 {
                tracing::info!(target: "pingora", n = i, "Downstream handshake error");
            }
            std::thread::sleep(Duration::from_millis(1100));
            tracing::info!("after the window");
        });
        let out = lines(&buf);
        let accept = out
            .iter()
            .filter(|l| l.contains("Accept() failed") && !l.contains("suppressed"))
            .count();
        assert_eq!(accept, 1, "{out:?}");
        let decisions = out.iter().filter(|l| l.contains("request denied")).count();
        assert_eq!(decisions, 100);
        let different = out
            .iter()
            .filter(|l| l.contains("a different line"))
            .count();
        assert_eq!(
            different, 49,
            "the budget of 50 a second, one taken by Accept()"
        );
        let summary: Vec<&String> = out
            .iter()
            .filter(|l| l.contains("identical log lines suppressed"))
            .collect();
        assert!(
            summary.iter().any(|l| l.contains("\"suppressed\":9999")),
            "{summary:?}"
        );
        assert!(
            summary.iter().any(|l| l.contains("\"suppressed\":1901")),
            "{summary:?}"
        );
        assert!(out.iter().any(|l| l.contains("after the window")));
        assert!(out.len() < 250, "{} lines", out.len());
    }

    #[test]
    fn a_flood_of_info_lines_does_not_hide_an_error() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let report: Report = Box::new(|_, _, _| {});
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || writer.clone())
            .with_filter(RateLimit::new(Duration::from_secs(10), 50, report));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::info!(target: "pingora", peer = i, "Downstream handshake error");
            }
            tracing::error!("reload failed: the set in force stays");
        });
        let out = lines(&buf);
        assert!(out.iter().any(|l| l.contains("reload failed")), "{out:?}");
        assert_eq!(out.len(), 51);
    }
}
