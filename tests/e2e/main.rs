//! End-to-end tests: the real claimgate binary on ephemeral loopback ports, in front of a real
//! upstream owned by the test, with tokens signed by real keys. One binary, one link step.

// Tests, benches and examples fail loudly on what they cannot use: unwrap and expect are the
// point here. The library and the binary deny them (Cargo.toml `[lints]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A scenario reads top to bottom as one story (start, send, assert what the upstream saw);
// splitting it would hide the order that is its point.
#![allow(clippy::too_many_lines)]

mod harness;
mod jwks;
mod layers;
mod logs;
mod tls;
mod tokens;
mod verification;
mod websocket;

mod admission;
mod auth;
mod cases;
mod certs;
mod cli;
mod deploy;
mod drain;
mod grpc;
mod guarantee;
mod hostile;
mod http2;
mod observability;
mod paths;
mod policy;
mod proxying;
mod ratelimit;
mod reload;
mod rolling;
mod scenarios;
mod settle;
mod sources;
mod startup;
mod static_checks;
mod stop;
