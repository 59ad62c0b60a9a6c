//! The TOML form of `rules/*.toml`, as written: deserialised with spans so every error can point
//! at its token. [`super::load`] turns it into compiled routes.

use super::Mode;
use crate::config::AuthMode;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RulesFile {
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    pub(super) path: Spanned<String>,
    #[serde(default)]
    pub(super) methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) auth: AuthMode,
    #[serde(default)]
    pub(super) issuers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub(super) forward: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) attr: BTreeMap<String, Spanned<RawAttr>>,
    #[serde(default)]
    pub(super) body_limit: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) upstream_select: Vec<Spanned<RawUpstreamCase>>,
    #[serde(default)]
    pub(super) limit: Vec<Spanned<RawLimit>>,
}

/// `[[route.limit]]`: a budget counted across requests, after the rules allowed one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub(super) name: Spanned<String>,
    /// CEL: whose budget (e.g. `claims.sub`).
    pub(super) key: Spanned<String>,
    /// CEL: how many units per window (e.g. `claims.apiRateLimit`).
    pub(super) limit: Spanned<String>,
    /// `30s`, `5m`, `1h`, `1d`.
    pub(super) window: Spanned<String>,
    /// CEL: what this request costs (default 1).
    #[serde(default)]
    pub(super) cost: Option<Spanned<String>>,
    /// When the shared store cannot be asked: `local` (default), `open` or `closed`.
    #[serde(default)]
    pub(super) on_store_error: crate::ratelimit::StoreFailMode,
}

/// `name = "cel"` (dynamic), or a table: `{ value = ... }` (static),
/// `{ cases = [{ if = "cel", then = "cel" }], else = "cel" }` (conditional), `{ expr = "cel" }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawAttr {
    Expr(String),
    Table(RawAttrTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttrTable {
    #[serde(default)]
    pub(super) expr: Option<String>,
    #[serde(default)]
    pub(super) value: Option<toml::Value>,
    #[serde(default)]
    pub(super) cases: Option<Vec<RawCase>>,
    #[serde(default, rename = "else")]
    pub(super) otherwise: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCase {
    #[serde(rename = "if")]
    pub(super) cond: String,
    pub(super) then: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamCase {
    #[serde(rename = "if")]
    pub(super) cond: Spanned<String>,
    pub(super) upstream: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) allow_if: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) deny_if: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) status: Option<Spanned<u16>>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) message_expr: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) mode: Mode,
}
