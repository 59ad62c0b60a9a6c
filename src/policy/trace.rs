//! How a decision came about, for `claimgate eval` and `claimgate test`: the route, each rule
//! with its result, the attributes computed, the sources read, the upstream and the headers.
//! Filled by the same evaluation the proxy runs; the proxy passes no trace and pays nothing.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Trace {
    pub route: Option<RouteTrace>,
    pub token: Option<TokenTrace>,
    pub sources: Vec<SourceTrace>,
    pub rules: Vec<RuleTrace>,
    /// Derived attributes the evaluation computed (attributes never read are not computed).
    pub attrs: BTreeMap<String, serde_json::Value>,
    pub upstream: Option<String>,
    /// The headers the route computes (`[route.forward]`).
    pub forward: BTreeMap<String, String>,
    /// Every header of the head the upstream would receive, as the gateway edits it: the
    /// client's own that pass, the forwarded ones, `Host`, `X-Request-Id`, `X-Forwarded-*`
    /// (several lines joined with `, `). Empty when the request is denied.
    pub upstream_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteTrace {
    pub name: String,
    pub file: String,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenTrace {
    pub issuer: String,
    /// `false` when the claims were given directly and no signature was checked.
    pub verified: bool,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceTrace {
    pub name: String,
    pub url: String,
    /// The value the rules saw: the JSON answer, `null` for not found, or absent.
    pub value: Option<serde_json::Value>,
    /// `value`, `not_found` or `unavailable`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleTrace {
    pub name: String,
    pub mode: &'static str,
    /// `pass`, `deny` or `error`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
