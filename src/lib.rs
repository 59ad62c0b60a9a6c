//! claimgate: a reverse proxy that verifies JWTs and enforces CEL policies on claims and requests.
//!
//! The decision core ([`engine::Snapshot::decide`]) is plain library code: facts in, decision
//! out. The Pingora proxy ([`proxy`]), the CLI and the benches are thin callers of it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cases;
pub mod config;
pub mod echo;
pub mod engine;
pub mod explain;
pub mod facts;
pub mod geo;
pub mod head_timeout;
pub mod key_refresh;
pub mod location;
pub mod logging;
pub mod path;
pub mod policy;

pub mod proxy;
pub mod reload;
pub mod server;
pub mod sources;
pub mod strict_json;
pub mod sync;
pub mod telemetry;
pub mod upstream;
