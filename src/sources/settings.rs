//! `[sources.NAME]` in `gateway.toml`: an HTTP endpoint whose JSON answer policies read as
//! `ext.NAME`.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// URL template, e.g. `http://game:9100/players/{claims.sub}/balance`. Holes are CEL
    /// expressions over `claims`, `token`, `request`, `now`, `geo` and `body`; their values
    /// are percent-encoded.
    pub url: Spanned<String>,
    #[serde(default = "default_method")]
    pub method: Spanned<String>,
    /// Header templates; hole values are used as they are (they must be valid header text).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Body template (for POST), sent as `application/json` unless a header says otherwise.
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    /// What the cache is keyed by. Default: the whole rendered request (method, URL, headers,
    /// body), so every input that is sent is part of the key.
    #[serde(default)]
    pub cache_key: Option<Spanned<String>>,
    /// The whole fetch (connect, send, read the answer) must finish within this.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an answer is reused.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// How long a negative result (404/410, or a failed fetch) is reused before the source is
    /// asked again: a down source is not hammered by every request.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl_seconds: u64,
    /// Cached answers kept at most (least recently used go first).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// What a failed fetch means for the request.
    #[serde(default)]
    pub on_error: FailMode,
    /// With `on_error = "stale"`: how long past its TTL an answer may still be served.
    #[serde(default = "default_stale")]
    pub stale_seconds: u64,
    /// Status of the denial when the source fails closed.
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    /// Larger answers are failures.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

/// What a request gets when its source cannot be fetched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deny with `error_status` (503 by default).
    #[default]
    Closed,
    /// `ext.NAME` is absent; rules decide with `has(ext.NAME)`.
    Open,
    /// The last good answer, up to `stale_seconds` past its TTL; then as `closed`.
    Stale,
}

impl FailMode {
    pub fn label(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
            FailMode::Stale => "stale",
        }
    }
}

fn default_method() -> Spanned<String> {
    Spanned::new(0..0, "GET".to_string())
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_ttl() -> u64 {
    30
}
fn default_negative_ttl() -> u64 {
    2
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_stale() -> u64 {
    300
}
fn default_error_status() -> u16 {
    503
}
fn default_max_response_bytes() -> usize {
    64 * 1024
}
