//! Identical lines within a window are written once; the rest are counted and reported in one
//! line when the window ends. Lines of any kind past a per-second budget are dropped and
//! counted the same way. Decision logs (`claimgate::decision`) are exempt: each is about one
//! request, and the operator chose to have them.

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
}

struct State {
    window_start: Instant,
    /// Per line (hash of level, target and fields): the text, and how many were suppressed.
    seen: HashMap<u64, (String, u64)>,
    second_start: Instant,
    this_second: u32,
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
    pub fn new(window: Duration, per_second: u32) -> Self {
        let now = Instant::now();
        RateLimit {
            window,
            per_second,
            state: Mutex::new(State {
                window_start: now,
                seen: HashMap::new(),
                second_start: now,
                this_second: 0,
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
            }
            let state = &mut *s;
            let allowed = if let Some((_, n)) = state.seen.get_mut(&key) {
                *n += 1;
                false
            } else if state.this_second >= self.per_second {
                state.over_budget += 1;
                false
            } else {
                state.this_second += 1;
                state.seen.insert(key, (text.message, 0));
                true
            };
            (allowed, report)
        };
        // Written outside the lock: the summary passes through this filter too.
        let secs = self.window.as_secs();
        for (message, n) in report {
            tracing::warn!(
                target: SUMMARY_TARGET,
                suppressed = n,
                window_seconds = secs,
                line = %message,
                "identical log lines suppressed"
            );
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
