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

/// Which requests carry one repeated token instead of the population's: after `warm` blocks,
/// every `every`th block of `block` requests (0: none). Why: a baseline run minutes before or
/// after the population measures the host of that moment as much as the gateway (two baselines
/// of one run differed 1.6x in their p99); blocks of the one token interleaved with the
/// population put both under the same host, the same process and the same load, a few seconds
/// apart. The population's schedule pauses during a reference block and resumes where it was,
/// so each token's uses stay `uses`, and the reference blocks add requests, never replace them.
#[derive(Debug, Clone, Copy)]
pub struct Interleave {
    pub block: u64,
    pub warm: u64,
    pub every: u64,
}

/// What request `i` of the run carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The population's request number `p` (for `Pattern::token_of`).
    Population(u64),
    /// The one repeated token.
    Reference,
}

impl Interleave {
    /// No reference blocks: request `i` is the population's `i`.
    pub fn off() -> Interleave {
        Interleave {
            block: 1,
            warm: 0,
            every: 0,
        }
    }

    fn is_reference(&self, b: u64) -> bool {
        self.every > 1 && b >= self.warm && (b - self.warm) % self.every == self.every - 1
    }

    /// Reference blocks before block `b`.
    fn references_before(&self, b: u64) -> u64 {
        if self.every > 1 && b > self.warm {
            (b - self.warm) / self.every
        } else {
            0
        }
    }

    pub fn at(&self, i: u64) -> Slot {
        let block = self.block.max(1);
        let b = i / block;
        if self.is_reference(b) {
            Slot::Reference
        } else {
            Slot::Population(i - self.references_before(b) * block)
        }
    }

    /// Requests in a run whose population sends `population` requests: those plus every
    /// reference block that starts before the population's last request.
    pub fn requests(&self, population: u64) -> u64 {
        if self.every < 2 || population == 0 {
            return population;
        }
        let block = self.block.max(1);
        // The block holding the population's last request, found by walking whole cycles.
        let last = population - 1;
        let warm = self.warm * block;
        if last < warm {
            return population;
        }
        let per_cycle = (self.every - 1) * block;
        let cycles = (last - warm) / per_cycle;
        population + cycles * block
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

    /// The invariants of `reference_blocks_pause_the_population_and_add_to_it`, over every
    /// small schedule: the population's requests in order and all sent, reference blocks whole,
    /// only where they belong, and the run ending on the population's last request.
    #[test]
    fn every_small_schedule_keeps_the_population_whole() {
        for block in 1..6u64 {
            for warm in 0..4u64 {
                for every in 0..6u64 {
                    let il = Interleave { block, warm, every };
                    for population in 1..80u64 {
                        let total = il.requests(population);
                        let mut next = 0u64;
                        for i in 0..total {
                            match il.at(i) {
                                Slot::Population(p) => {
                                    assert_eq!(p, next, "{il:?} {population} {i}");
                                    next += 1;
                                }
                                Slot::Reference => {
                                    let b = i / block;
                                    assert!(every > 1 && b >= warm, "{il:?} {i}");
                                    assert_eq!((b - warm) % every, every - 1, "{il:?} {i}");
                                }
                            }
                        }
                        assert_eq!(next, population, "{il:?}");
                        let last = il.at(total - 1);
                        assert_eq!(last, Slot::Population(population - 1), "{il:?}");
                        // Every block that started is finished: the reference requests are
                        // whole blocks.
                        assert_eq!((total - population) % block, 0, "{il:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn reference_blocks_pause_the_population_and_add_to_it() {
        let il = Interleave {
            block: 10,
            warm: 3,
            every: 4,
        };
        let population = 137u64;
        let total = il.requests(population);
        let mut next = 0u64;
        let mut references = 0u64;
        for i in 0..total {
            match il.at(i) {
                // The population's requests come in order, none skipped or repeated.
                Slot::Population(p) => {
                    assert_eq!(p, next, "request {i}");
                    next += 1;
                }
                Slot::Reference => {
                    let b = i / il.block;
                    assert!(b >= il.warm, "no reference block in the warm-up: {i}");
                    assert_eq!((b - il.warm) % il.every, il.every - 1, "request {i}");
                    references += 1;
                }
            }
        }
        assert_eq!(next, population, "every population request is sent");
        // Whole blocks only, and the run ends on the population's last request.
        assert_eq!(references % il.block, 0);
        assert!(matches!(il.at(total - 1), Slot::Population(p) if p == population - 1));
        // Blocks 0-2 warm, then cycles of 3 population blocks and 1 reference block: the
        // population's 137 requests end in block 16, after reference blocks 6, 10 and 14.
        assert_eq!(references, 30);
        assert_eq!(total, 167);
        // Ending exactly at a block edge (block 13), no reference block follows.
        assert_eq!(il.requests(120), 140);
    }

    #[test]
    fn off_means_every_request_is_the_populations() {
        let il = Interleave::off();
        assert_eq!(il.requests(1000), 1000);
        assert!((0..1000).all(|i| il.at(i) == Slot::Population(i)));
        // Every second block after the warm-up; a population ending exactly at a block edge
        // is not followed by a reference block.
        let il = Interleave {
            block: 5,
            warm: 0,
            every: 2,
        };
        assert_eq!(il.requests(10), 15);
        assert_eq!(il.at(5), Slot::Reference);
        assert_eq!(il.at(10), Slot::Population(5));
    }
}
