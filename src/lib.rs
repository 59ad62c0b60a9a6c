//! claimgate: a reverse proxy that verifies JWTs and enforces CEL policies on claims and requests.
//!
//! Three layers (see `ARCHITECTURE.md`); a module imports only from its own layer or below, and
//! no core module names Pingora (a test reads the sources and fails if one does).
// No unsafe code, with two audited exceptions: `reload::writers` asks the kernel whether a file
// is open for writing (`fcntl(F_SETLEASE)`, which no safe wrapper offers), and `heap` switches
// mimalloc's default heap (its C API).
#![deny(unsafe_code)]

// The core: facts in, decision out. Plain data and pure functions; no Pingora, no sockets, no
// clock of its own. The proxy, the CLI and the benches all decide through
// `engine::Snapshot::admit` and `decide`/`begin`/`finish`.
pub mod admission;
pub mod auth;
pub mod config;
pub mod engine;
pub mod explain;
pub mod facts;
pub mod geo;
pub mod grpc;
pub mod heap;
pub mod location;
pub mod media_type;
pub mod path;
pub mod policy;
pub mod ratelimit;
pub mod request_id;
pub mod set_file;
pub mod sources;
pub mod strict_json;
pub mod sync;
pub mod tls;
pub mod upstream_edits;
pub mod websocket_handshake;

// Loading: files -> snapshot, for the shell and the tools alike.
pub mod crypto;
pub mod inputs;
pub mod load;
pub mod telemetry;

// The shell: Pingora services, listeners, reload, background fetching, logging.
pub mod admin;
pub mod drain;
pub mod echo;
pub mod head_timeout;
pub mod key_refresh;
pub mod limit_store;
pub mod linger;
pub mod logging;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod tls_listener;
pub mod upstream;
pub mod upstream_head;
pub mod upstream_tls;

// The tools: what the CLI runs besides serving.
pub mod cases;

#[cfg(test)]
mod testing;
