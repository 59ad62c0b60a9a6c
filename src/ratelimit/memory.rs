//! The in-process store: one replica's counters, under one lock so a request's charges are
//! applied all or none. Also what the tools use to replay a mocked counter state.

use super::{gcra, Charge, Outcome};
use std::collections::HashMap;
use std::sync::Mutex;

/// Counters of one process: key -> (TAT in ms, when the entry stops mattering in ms).
#[derive(Debug, Default)]
pub struct MemoryStore {
    counters: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    map: HashMap<String, (f64, f64)>,
    /// When expired entries were last swept (ms).
    swept_at: f64,
}

/// Entries past their expiry are swept when the map holds more than this many, at most once a
/// second (a sweep walks the whole map under the lock).
const SWEEP_AT: usize = 100_000;
const SWEEP_EVERY_MS: f64 = 1000.0;

impl MemoryStore {
    /// Applies `charges` at `now_ms`: every outcome, and the state stored only if all were
    /// allowed (a request refused by one limit spends nothing from the others).
    pub fn charge(&self, charges: &[Charge], now_ms: f64) -> Vec<Outcome> {
        let mut counters = match self.counters.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let c = &mut *counters;
        let outcomes = decide(charges, now_ms, |key| {
            c.map
                .get(key)
                .filter(|(_, until)| *until > now_ms)
                .map(|(t, _)| *t)
        });
        if outcomes.iter().all(|o| o.step.allowed) {
            for (ch, o) in charges.iter().zip(&outcomes) {
                if let Some((tat, ttl)) = o.step.store {
                    c.map.insert(ch.key.clone(), (tat, now_ms + ttl));
                }
            }
        }
        if c.map.len() > SWEEP_AT && now_ms - c.swept_at >= SWEEP_EVERY_MS {
            c.map.retain(|_, (_, until)| *until > now_ms);
            c.swept_at = now_ms;
        }
        outcomes
    }
}

/// The outcomes of `charges` given each key's stored TAT. Two charges on one key (two limits
/// with the same key expression are different keys; this is the same limit twice) see each
/// other's spending.
pub fn decide(
    charges: &[Charge],
    now_ms: f64,
    mut stored: impl FnMut(&str) -> Option<f64>,
) -> Vec<Outcome> {
    let mut pending: HashMap<&str, f64> = HashMap::new();
    charges
        .iter()
        .map(|c| {
            let tat = pending
                .get(c.key.as_str())
                .copied()
                .or_else(|| stored(&c.key));
            let step = if c.limit > 0.0 {
                gcra::step(tat, now_ms, c.limit, c.window_ms as f64, c.cost)
            } else {
                nothing_allowed(c.window_ms)
            };
            if let Some((t, _)) = step.store {
                pending.insert(c.key.as_str(), t);
            }
            Outcome {
                name: c.name.clone(),
                limit: c.limit,
                window_ms: c.window_ms,
                cost: c.cost,
                step,
            }
        })
        .collect()
}

/// A limit of zero (or less): every request is refused, and waiting does not help.
fn nothing_allowed(window_ms: u64) -> gcra::Step {
    gcra::Step {
        allowed: false,
        remaining: 0.0,
        retry_after_ms: None,
        reset_ms: window_ms as f64,
        store: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn charge(name: &str, key: &str, limit: f64, cost: f64) -> Charge {
        Charge {
            name: Arc::from(name),
            key: key.into(),
            limit,
            window_ms: 3_600_000,
            cost,
            on_store_error: crate::ratelimit::StoreFailMode::Local,
        }
    }

    #[test]
    fn a_request_refused_by_one_limit_spends_nothing_from_the_others() {
        let store = MemoryStore::default();
        let both = [charge("a", "ka", 10.0, 1.0), charge("b", "kb", 1.0, 1.0)];
        assert!(store.charge(&both, 0.0).iter().all(|o| o.step.allowed));
        let again = store.charge(&both, 1.0);
        assert!(again[0].step.allowed && !again[1].step.allowed);
        // `a` was not spent by the refused request: 8 left after the next one.
        let a = store.charge(&[charge("a", "ka", 10.0, 1.0)], 2.0);
        assert_eq!(a[0].step.remaining.round(), 8.0);
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let store = MemoryStore::default();
        let o = store.charge(&[charge("z", "kz", 0.0, 1.0)], 0.0);
        assert!(!o[0].step.allowed && o[0].step.retry_after_ms.is_none());
    }
}
