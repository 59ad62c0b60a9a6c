//! The generic cell rate algorithm (GCRA) with a cost per request: one number of state per key
//! (the theoretical arrival time, TAT), no read-then-write race when the step runs where the
//! state lives (in one server-side script for the shared store, under one lock in memory).
//!
//! A limit of `L` per window `W` admits up to `L` units at once and refills continuously at
//! `L / W`: a budget used up at 09:00 under `5000 per 24h` has 208 units back by 10:00. Costs
//! may be fractional (an amount of money); a cost larger than the whole limit is never admitted.

/// What one step decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub allowed: bool,
    /// Units left after this request (allowed), or available now (refused).
    pub remaining: f64,
    /// Refused: milliseconds until the cost fits (`None`: it never does, being over the limit).
    pub retry_after_ms: Option<f64>,
    /// Milliseconds until the whole budget is back.
    pub reset_ms: f64,
    /// The state to store when allowed (the new TAT, ms), and how long it matters (ms).
    pub store: Option<(f64, f64)>,
}

/// One decision: `tat` is the stored TAT (ms since the epoch, `None` for a new key), `now_ms`
/// the store's clock. `limit` must be positive and `window_ms` at least 1 (callers refuse
/// others before coming here).
pub fn step(tat: Option<f64>, now_ms: f64, limit: f64, window_ms: f64, cost: f64) -> Step {
    let interval = window_ms / limit;
    // A TAT more than a window ahead was stored under a longer window (a reload shortened
    // it): the budget is spent, for this window's length, not for what is left of the old one.
    let base = tat.unwrap_or(now_ms).max(now_ms).min(now_ms + window_ms);
    let new_tat = base + cost.max(0.0) * interval;
    let allow_at = new_tat - window_ms;
    // A whisker of slack: costs and intervals are floating point, and `L` requests of cost 1
    // must all fit in a fresh window whatever the rounding.
    let slack = interval * 1e-9;
    if now_ms + slack >= allow_at {
        Step {
            allowed: true,
            remaining: ((window_ms - (new_tat - now_ms)) / interval).max(0.0),
            retry_after_ms: None,
            reset_ms: new_tat - now_ms,
            store: Some((new_tat, new_tat - now_ms)),
        }
    } else {
        let over = cost > limit;
        Step {
            allowed: false,
            remaining: ((window_ms - (base - now_ms)) / interval).max(0.0),
            retry_after_ms: (!over).then_some(allow_at - now_ms),
            reset_ms: base - now_ms,
            store: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `costs` at `now`, threading the state.
    fn run(limit: f64, window: f64, costs: &[(f64, f64)]) -> Vec<Step> {
        let mut tat = None;
        costs
            .iter()
            .map(|&(now, cost)| {
                let s = step(tat, now, limit, window, cost);
                if let Some((t, _)) = s.store {
                    tat = Some(t);
                }
                s
            })
            .collect()
    }

    #[test]
    fn a_shortened_window_holds_a_spent_budget_for_its_own_length() {
        let hour = 3_600_000.0;
        // Spent under 2 per 24h: the TAT is a day ahead.
        let s = step(Some(24.0 * hour), 0.0, 2.0, hour, 1.0);
        assert!(!s.allowed);
        assert_eq!(s.retry_after_ms, Some(hour / 2.0));
        assert_eq!(s.reset_ms, hour);
    }

    #[test]
    fn a_fresh_window_admits_exactly_the_limit() {
        let steps = run(50.0, 3_600_000.0, &[(1000.0, 1.0); 300]);
        assert_eq!(steps.iter().filter(|s| s.allowed).count(), 50);
        assert!(steps[..50].iter().all(|s| s.allowed));
        assert_eq!(steps[49].remaining.round(), 0.0);
        // The 51st waits one interval (72 s).
        assert_eq!(steps[50].retry_after_ms.map(f64::round), Some(72_000.0));
    }

    #[test]
    fn costs_spend_a_budget_and_report_what_is_left() {
        let day = 86_400_000.0;
        let s = run(5000.0, day, &[(0.0, 3000.0), (1.0, 1500.0), (2.0, 600.0)]);
        assert!(s[0].allowed && s[1].allowed);
        assert!(!s[2].allowed);
        assert!((s[2].remaining - 500.0).abs() < 0.01, "{}", s[2].remaining);
        // More than the whole limit: never, so no retry time.
        let s = run(5000.0, day, &[(0.0, 5000.5)]);
        assert!(!s[0].allowed && s[0].retry_after_ms.is_none());
    }

    #[test]
    fn the_budget_refills_continuously() {
        let hour = 3_600_000.0;
        // 24 per day: one back per hour.
        let s = run(
            24.0,
            24.0 * hour,
            &[(0.0, 24.0), (1.0, 1.0), (hour + 1.0, 1.0)],
        );
        assert!(s[0].allowed && !s[1].allowed && s[2].allowed);
    }

    proptest! {
        /// Over any schedule, what is admitted in any window never exceeds the limit plus what
        /// refilled since the window began.
        #[test]
        fn never_more_than_the_limit_and_its_refill(
            limit in 1u32..100,
            gaps in prop::collection::vec((0u32..5_000, 1u32..4), 1..200),
        ) {
            let (limit, window) = (f64::from(limit), 10_000.0);
            let mut now = 0.0;
            let mut schedule = Vec::new();
            for (gap, cost) in gaps {
                now += f64::from(gap);
                schedule.push((now, f64::from(cost)));
            }
            let steps = run(limit, window, &schedule);
            for (i, &(start, _)) in schedule.iter().enumerate() {
                let spent: f64 = schedule[i..]
                    .iter()
                    .zip(&steps[i..])
                    .filter(|((t, _), s)| s.allowed && *t < start + window)
                    .map(|((_, c), _)| c)
                    .sum();
                // Spent in [start, start + window): at most the limit, plus a full refill.
                prop_assert!(spent <= 2.0 * limit + 1e-6, "{spent} > 2 x {limit}");
            }
            for s in &steps {
                prop_assert!(s.remaining >= 0.0 && s.remaining <= limit + 1e-6);
            }
        }
    }
}
