//! External sources: HTTP endpoints whose JSON answers policies read as `ext.NAME`.
//!
//! The decision core only renders the requests a route needs ([`spec`]) and reads the values it
//! is given; fetching, caching and single-flight live in [`fetch`], which the proxy drives.
//! `claimgate eval` and `claimgate test` give mocked values instead.

pub mod fetch;
pub mod settings;
pub mod spec;
pub mod template;

pub use fetch::SourceFetcher;
pub use settings::{FailMode, SourceConfig};
pub use spec::{SourceRequest, SourceSet, SourceSpec, SourceValue};
