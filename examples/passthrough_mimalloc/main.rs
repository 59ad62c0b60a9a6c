//! The same passthrough with the allocator claimgate uses (mimalloc), so the load benchmark can
//! tell the cost of claimgate's own work apart from the gain of the allocator.
//!
//! Usage: `passthrough_mimalloc LISTEN UPSTREAM [THREADS]`

// Tests, benches and examples fail loudly on what they cannot use: unwrap and expect are the
// point here. The library and the binary deny them (Cargo.toml `[lints]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../passthrough/proxy.rs"]
mod proxy;

fn main() {
    proxy::main()
}
