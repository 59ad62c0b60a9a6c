//! Which token each request carries: a population of users arriving at a steady rate, each
//! sending `uses` requests with one token, spread evenly over `window` seconds, then leaving.
//!
//! Request `i` is sent at `i / rate` seconds. Requests take turns among the `uses` rounds
//! (`i mod uses`); round `j` carries the tokens born `j × window / uses` seconds earlier. So
//! every token is used exactly `uses` times, `window / uses` seconds apart, and at any moment
//! about `rate × window / uses` tokens are live: the working set a cache must hold for all but
//! the first use of each token to hit.

/// The request pattern.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    /// Requests per second.
    pub rate: u64,
    /// Requests carrying one token.
    pub uses: u64,
    /// Seconds between a token's first and last use (plus one spacing).
    pub window: u64,
}

impl Pattern {
    /// Tokens born between two uses of one token: the distance between rounds.
    fn spacing(&self) -> u64 {
        (self.rate * self.window / (self.uses * self.uses)).max(1)
    }

    /// The token (an index from 0) request `i` carries, and which of its uses this is.
    ///
    /// In the first window a later round has no token old enough yet: it repeats the token
    /// being born (as round 0). Those extra uses fall in the warm-up, which is not measured; a
    /// fresh token for each of them would mean signing `uses` times as many tokens for the
    /// first window as for any other.
    pub fn token_of(&self, i: u64) -> (u64, u64) {
        let round = i % self.uses;
        let born = i / self.uses;
        let back = round * self.spacing();
        if born >= back {
            (born - back, round)
        } else {
            (born, 0)
        }
    }

    /// Tokens live at once in steady state.
    pub fn working_set(&self) -> u64 {
        self.rate * self.window / self.uses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_token_is_used_the_same_number_of_times_evenly_spaced() {
        let p = Pattern {
            rate: 1000,
            uses: 10,
            window: 60,
        };
        let total = 200_000u64;
        let mut seen: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        for i in 0..total {
            let (t, round) = p.token_of(i);
            seen.entry(t).or_default().push((i, round));
        }
        // One token per `uses` requests, no more.
        assert_eq!(seen.len() as u64, total / p.uses);
        let spacing_requests = p.rate * p.window / p.uses; // requests between two uses
        let first_window = p.working_set(); // tokens born in the warm-up
        let mut complete = 0;
        for (t, uses) in seen.iter().filter(|(t, _)| **t >= first_window) {
            // After the warm-up a token's uses come once per round, in round order.
            let rounds: Vec<u64> = uses.iter().map(|u| u.1).collect();
            assert!(
                rounds.windows(2).all(|w| w[1] == w[0] + 1),
                "token {t}: {rounds:?}"
            );
            for w in uses.windows(2) {
                let gap = w[1].0 - w[0].0;
                assert!(
                    gap.abs_diff(spacing_requests) <= p.uses,
                    "token {t}: gap {gap}"
                );
            }
            if uses.len() == p.uses as usize {
                complete += 1;
            }
        }
        // All of them born early enough to finish within the run got all their uses.
        assert!(complete >= total / p.uses - 2 * first_window, "{complete}");
        assert_eq!(p.working_set(), 6000);
    }
}
