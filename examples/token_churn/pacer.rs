//! Release of requests at their due time, finer than tokio's timer. Tokio's timer wheel ticks
//! once a millisecond, so at 12 000 requests a second the ~12 requests due within a millisecond
//! all wake together and reach the gateway as one burst; each request's latency then includes
//! its place in the burst times the gateway's cost per request, which inflates the tail of
//! whichever load costs more per request (see `benches/load/results-many-tokens-bursts.md`).
//! Clients of a real gateway are many independent programs, not one timer.
//!
//! A thread of its own sleeps to each tick of `tick` (the kernel's high-resolution timers; no
//! spinning, which would take the CPU from the upstream that shares this core) and wakes the
//! connections whose request became due. A connection that finds its request already due does
//! not wait at all.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

pub struct Pacer {
    started: Instant,
    step_ns: u128,
    /// Requests with an index below this are due.
    released: AtomicU64,
    /// Connections waiting, by the index of their request.
    waiting: Mutex<BTreeMap<u64, Waker>>,
}

impl Pacer {
    /// Request `i` is due at `started + i × step`; requests are released every `tick` until all
    /// `total` are.
    pub fn start(started: Instant, step: Duration, tick: Duration, total: u64) -> Arc<Pacer> {
        let pacer = Arc::new(Pacer {
            started,
            step_ns: step.as_nanos().max(1),
            released: AtomicU64::new(0),
            waiting: Mutex::new(BTreeMap::new()),
        });
        let p = pacer.clone();
        let tick_ns = tick.as_nanos().max(1) as u64;
        std::thread::spawn(move || {
            for k in 0u64.. {
                let at = p.started + Duration::from_nanos(tick_ns.saturating_mul(k));
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let due = p.due_at(Instant::now()).min(total);
                p.released.store(due, Ordering::Release);
                let woken: Vec<Waker> = {
                    let mut waiting = p.waiting.lock().unwrap_or_else(|e| e.into_inner());
                    let later = waiting.split_off(&due);
                    std::mem::replace(&mut *waiting, later)
                        .into_values()
                        .collect()
                };
                for w in woken {
                    w.wake();
                }
                if due >= total {
                    return;
                }
            }
        });
        pacer
    }

    /// How many requests are due at `now`.
    fn due_at(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.started) {
            Some(elapsed) => (elapsed.as_nanos() / self.step_ns) as u64 + 1,
            None => 0,
        }
    }

    /// Waits until request `i` is released.
    pub async fn until(&self, i: u64) {
        poll_fn(|cx| {
            if self.released.load(Ordering::Acquire) > i {
                return Poll::Ready(());
            }
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(i, cx.waker().clone());
            // Released between the check and the insert: the pacer may have drained the
            // waiting list already (it would find this entry only at its next tick).
            if self.released.load(Ordering::Acquire) > i {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn requests_are_released_in_order_at_their_time_and_all_of_them() {
        let step = Duration::from_micros(200);
        let started = Instant::now() + Duration::from_millis(5);
        let total = 50;
        let pacer = Pacer::start(started, step, Duration::from_micros(100), total);
        let mut late = Duration::ZERO;
        for i in 0..total {
            pacer.until(i).await;
            let now = Instant::now();
            let due = started + step * i as u32;
            assert!(now >= due, "request {i} released {:?} early", due - now);
            late = late.max(now - due);
        }
        // Loose: a loaded CI machine may deschedule the pacer; the point is no lost wake-up
        // (a lost one would wait forever) and nothing early.
        assert!(late < Duration::from_millis(500), "{late:?}");
    }
}
