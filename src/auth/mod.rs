//! Tokens: where they come from, which keys verify them, and what makes them valid.

pub mod cache;
pub mod claim_names;
pub mod claims;
pub mod error;
pub mod extract;
pub mod issuer;
pub mod keys;
pub mod verify;

pub use cache::TokenCache;
pub use error::TokenError;
pub use issuer::{Issuer, IssuerSet};
pub use verify::VerifiedToken;
pub mod remote;
pub mod segment;
pub mod signature;
