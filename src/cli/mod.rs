//! The command line: one file per command, each with its arguments and its exit codes.
//! `main.rs` only parses and dispatches.

pub mod check;
pub mod completions;
pub mod eval;
pub mod geo_db;
pub mod render;
pub mod run;
pub mod test;
pub mod token;
