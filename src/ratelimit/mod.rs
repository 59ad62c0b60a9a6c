//! Limits counted across requests: a route's `[[route.limit]]`s, evaluated after its rules allow
//! a request, become [`Charge`]s; a store applies them all or none. The arithmetic is
//! [`gcra::step`], the same wherever the state lives.

pub mod gcra;
pub mod memory;

use sha2::Digest as _;
use std::sync::Arc;

/// What a limit does when its shared store cannot be asked (slow or down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFailMode {
    /// Count in this process at the limit divided by `rate_limits.replicas`.
    #[default]
    Local,
    /// Allow the request uncounted.
    Open,
    /// Refuse the request: 503 `limit_store_unavailable`.
    Closed,
}

impl StoreFailMode {
    pub fn label(self) -> &'static str {
        match self {
            StoreFailMode::Local => "local",
            StoreFailMode::Open => "open",
            StoreFailMode::Closed => "closed",
        }
    }
}

/// One limit applied to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The limit's name (`[[route.limit]] name`).
    pub name: Arc<str>,
    /// The counter's key: a digest of the route, the limit and the key expression's value, so
    /// no subject id is stored in clear.
    pub key: String,
    pub limit: f64,
    pub window_ms: u64,
    pub cost: f64,
    pub on_store_error: StoreFailMode,
}

impl Charge {
    /// The stored key for `value` of limit `name` on `route`.
    pub fn key_for(route: &str, name: &str, value: &str) -> String {
        let mut h = sha2::Sha256::new();
        for part in [route, name, value] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// What the store said about one charge.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: Arc<str>,
    pub limit: f64,
    pub window_ms: u64,
    pub cost: f64,
    pub step: gcra::Step,
}

impl Outcome {
    /// The `RateLimit-Policy` and `RateLimit` fields (IETF httpapi draft) for these outcomes.
    pub fn headers(outcomes: &[Outcome]) -> [(http::HeaderName, String); 2] {
        let policy = outcomes
            .iter()
            .map(|o| {
                format!(
                    "\"{}\";q={};w={}",
                    o.name,
                    o.limit.floor().max(0.0) as u64,
                    o.window_ms / 1000
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let state = outcomes
            .iter()
            .map(|o| {
                format!(
                    "\"{}\";r={};t={}",
                    o.name,
                    number(o.step.remaining.floor()),
                    (o.step.reset_ms / 1000.0).ceil().max(0.0) as u64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        [
            (http::HeaderName::from_static("ratelimit-policy"), policy),
            (http::HeaderName::from_static("ratelimit"), state),
        ]
    }
}

/// An instant as the in-process counters keep time: milliseconds since the Unix epoch.
pub fn millis(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// A number as a person writes it: `1000`, `12.5`.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{:.2}", v)
    }
}

/// The first refused outcome, if any.
pub fn refused(outcomes: &[Outcome]) -> Option<&Outcome> {
    outcomes.iter().find(|o| !o.step.allowed)
}

/// The denial's message for a refused outcome.
pub fn message(o: &Outcome) -> String {
    let left = number(o.step.remaining.floor());
    let limit = number(o.limit);
    let window = window_text(o.window_ms);
    if o.cost > 1.0 || o.cost.fract() != 0.0 {
        format!(
            "limit `{}`: this request costs {}, {left} of {limit} per {window} left",
            o.name,
            number(o.cost)
        )
    } else {
        format!("limit `{}`: {limit} per {window} used up", o.name)
    }
}

/// `1h`, `24h`, `90s` for a window.
pub fn window_text(ms: u64) -> String {
    let s = ms / 1000;
    if s.is_multiple_of(86_400) && s / 86_400 > 1 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) && s >= 3600 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A window written as `30s`, `5m`, `1h`, `1d` (1 s to 31 days), in milliseconds.
pub fn parse_window(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{t}` has no unit: write e.g. `30s`, `5m`, `1h`, `1d`"))?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{t}` does not start with a number"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{unit}` is not a unit: use s, m, h or d")),
    };
    if !(1..=31 * 86_400).contains(&secs) {
        return Err(format!("`{t}` is outside 1s..31d"));
    }
    Ok(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_print() {
        assert_eq!(parse_window("1h"), Ok(3_600_000));
        assert_eq!(parse_window("24h"), Ok(86_400_000));
        assert_eq!(parse_window("1d"), Ok(86_400_000));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("10").is_err());
        assert!(parse_window("1w").is_err());
        assert!(parse_window("32d").is_err());
        assert_eq!(window_text(3_600_000), "1h");
        assert_eq!(window_text(86_400_000), "24h");
        assert_eq!(window_text(90_000), "90s");
    }

    #[test]
    fn keys_hide_the_subject_and_differ_by_route_and_limit() {
        let a = Charge::key_for("api", "rate", "alice");
        assert_eq!(a.len(), 32);
        assert!(!a.contains("alice"));
        assert_ne!(a, Charge::key_for("api", "daily", "alice"));
        assert_ne!(a, Charge::key_for("ap", "irate", "alice"));
    }
}
