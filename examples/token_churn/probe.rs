//! The host's memory speed, measured beside the run: a chain of dependent loads through a
//! 64 MiB buffer in random order (every load a cache miss, most a TLB miss), timed once per
//! report interval. Why: the gateway's mean decision rose over long many-token runs, and the
//! hypervisor's steal counter does not show a neighbour that slows the memory both share. A
//! gateway that slows while this stays flat changed itself; both slowing together is the host.
//!
//! It runs on the load generator's core (the gateway's is left alone), on a thread of its own:
//! several short chases, the fastest kept, so the client's own work preempting it does not count.

use std::hint::black_box;
use std::time::Instant;

/// 16 Mi slots of 4 bytes: far beyond any cache this host has.
const SLOTS: usize = 16 << 20;
/// Loads per chase, and chases per measurement (the fastest is kept): ~0.2 ms each.
const LOADS: usize = 2_000;
const CHASES: usize = 7;

pub struct Probe {
    next: Vec<u32>,
    at: u32,
}

impl Probe {
    /// One cycle through every slot in random order (Sattolo's shuffle), so a chase never
    /// falls into a short loop the caches could hold.
    pub fn new(seed: u64) -> Probe {
        Probe::with_slots(SLOTS, seed)
    }

    fn with_slots(slots: usize, seed: u64) -> Probe {
        let mut next: Vec<u32> = (0..slots as u32).collect();
        let mut x = seed | 1;
        for i in (1..slots).rev() {
            // xorshift64: enough to scatter the slots; nothing here needs to be unpredictable.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let j = (x % i as u64) as usize;
            next.swap(i, j);
        }
        Probe { next, at: 0 }
    }

    /// Nanoseconds per dependent load, the fastest of a few chases.
    pub fn ns_per_load(&mut self) -> f64 {
        let mut best = f64::INFINITY;
        for _ in 0..CHASES {
            let start = Instant::now();
            let mut at = self.at;
            for _ in 0..LOADS {
                at = self.next[at as usize];
            }
            self.at = black_box(at);
            best = best.min(start.elapsed().as_nanos() as f64 / LOADS as f64);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chase_is_one_cycle_through_every_slot() {
        // The same shuffle as the real size, small enough for a debug build.
        let slots = 1 << 16;
        let p = Probe::with_slots(slots, 42);
        let mut seen = vec![false; slots];
        let mut at = 0u32;
        for _ in 0..slots {
            assert!(!seen[at as usize], "slot {at} reached twice");
            seen[at as usize] = true;
            at = p.next[at as usize];
        }
        assert_eq!(at, 0, "back at the start after every slot");
    }
}
