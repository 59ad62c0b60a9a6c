//! Where what the token cache keeps is allocated: a heap of its own on each thread, apart from
//! what lives as long as one request.
//!
//! Why: a full token cache drops its least recently used token for every new one, so the
//! memory of the tokens it keeps is freed in the order it was allocated minutes before, a
//! block here and there in every page. With one heap, each request's own short-lived
//! allocations (Pingora's header maps and buffers, the decision's temporaries) were then
//! served from those scattered holes across hundreds of megabytes instead of a few hot pages.
//! Measured with 400 000 tokens through a full cache of 100 000 (`benches/load/many-tokens.sh`,
//! A/B in `benches/load/results-many-tokens-heap-ab.md`): with one heap the same repeated token
//! took 25–67 % longer to decide after the population than before it, and the many-token p99
//! was 1.81–1.82x one token's; with the cache's blocks apart, no longer (0.80–0.94x), and
//! 1.13–1.35x. A second heap keeps the cache's blocks in pages of their own; a request's
//! allocations stay where the last request's were freed.
//!
//! The gateway's allocator is mimalloc (`src/main.rs`); [`long_lived`] makes a thread-local
//! heap the thread's default for the duration of a closure (a thread-local write and a
//! `pthread_setspecific` each way, no lock: ~9 ns a switch, measured as ~0.06 µs on a new
//! token's first decision, which switches seven times). Under
//! another global allocator (the library's unit tests) the calls change nothing Rust allocates.
//! Blocks may be freed from any thread and from either scope: mimalloc finds a block's page by
//! its address, not by the heap it was asked for.

use libmimalloc_sys::{mi_heap_new, mi_heap_set_default, mi_heap_t};
use std::cell::Cell;
use std::ptr;

thread_local! {
    /// This thread's heap for long-lived blocks, made on first use. mimalloc deletes it when
    /// the thread ends (its blocks still in use move to the thread's main heap), after which
    /// no request runs on the thread to ask for it.
    static LONG_LIVED: Cell<*mut mi_heap_t> = const { Cell::new(ptr::null_mut()) };
}

/// Runs `f` with this thread's allocations going to its long-lived heap: for what a cached
/// token keeps (its claims, their CEL values, remembered results, the cache's own entry).
/// Scopes nest; the previous default comes back when `f` returns or unwinds.
pub fn long_lived<R>(f: impl FnOnce() -> R) -> R {
    let Some(heap) = this_threads_heap() else {
        return f();
    };
    let _restore = Restore(set_default(heap));
    f()
}

/// Makes the heap that was the default before a scope the default again, also on unwinding.
struct Restore(*mut mi_heap_t);

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.0.is_null() {
            set_default(self.0);
        }
    }
}

fn this_threads_heap() -> Option<*mut mi_heap_t> {
    LONG_LIVED
        .try_with(|cell| {
            if cell.get().is_null() {
                cell.set(new_heap());
            }
            cell.get()
        })
        .ok()
        .filter(|h| !h.is_null())
}

// The one audited use of mimalloc's heap API: both functions are safe to call on any thread
// at any time; `mi_heap_new` returns null only when out of memory (then nothing changes), and
// the heap passed to `mi_heap_set_default` is this thread's own, alive until the thread ends.
#[allow(unsafe_code)]
fn new_heap() -> *mut mi_heap_t {
    unsafe { mi_heap_new() }
}

#[allow(unsafe_code)]
fn set_default(heap: *mut mi_heap_t) -> *mut mi_heap_t {
    unsafe { mi_heap_set_default(heap) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_returns_what_its_closure_returns_and_nests() {
        let v = long_lived(|| long_lived(|| vec![1u8; 4096]));
        assert_eq!(v.len(), 4096);
        // Freed outside the scope it was allocated in.
        drop(v);
        let s = long_lived(String::new);
        assert!(s.is_empty());
    }

    #[test]
    fn the_default_heap_comes_back_after_the_scope_and_after_a_panic() {
        #[allow(unsafe_code)]
        let default = || unsafe { libmimalloc_sys::mi_heap_get_default() };
        let before = default();
        let inside = long_lived(default);
        assert_ne!(inside, before, "the scope's heap is another heap");
        assert_eq!(default(), before);
        let r = std::panic::catch_unwind(|| long_lived(|| panic!("inside the scope")));
        assert!(r.is_err());
        assert_eq!(default(), before);
        // The same heap for every scope on this thread.
        assert_eq!(long_lived(default), inside);
    }

    #[test]
    fn each_thread_has_a_heap_of_its_own() {
        #[allow(unsafe_code)]
        let default = || unsafe { libmimalloc_sys::mi_heap_get_default() } as usize;
        let here = long_lived(default);
        let there = std::thread::spawn(move || long_lived(default))
            .join()
            .unwrap_or_default();
        assert_ne!(there, 0);
        assert_ne!(here, there);
    }
}
