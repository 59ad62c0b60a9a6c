//! Plain Pingora passthrough with the system allocator: the baseline as a user would build it.
//!
//! Usage: `passthrough LISTEN UPSTREAM [THREADS]`, e.g. `passthrough 127.0.0.1:18081 127.0.0.1:18080 1`

// Tests, benches and examples fail loudly on what they cannot use: unwrap and expect are the
// point here. The library and the binary deny them (Cargo.toml `[lints]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy;

fn main() {
    proxy::main()
}
