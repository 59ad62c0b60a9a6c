//! Plain Pingora passthrough with the system allocator: the baseline as a user would build it.
//!
//! Usage: `passthrough LISTEN UPSTREAM [THREADS]`, e.g. `passthrough 127.0.0.1:18081 127.0.0.1:18080 1`

mod proxy;

fn main() {
    proxy::main()
}
