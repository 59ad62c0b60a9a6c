//! Policies: routes and their rules, loaded from `rules/*.toml` and compiled once.

pub mod activation;
pub mod analysis;
pub mod calls;
pub mod cel;
pub mod decision;
pub mod eval;
pub mod fields;
pub mod functions;
pub mod load;
pub mod native;
mod raw;
pub mod references;
pub mod regexes;
pub mod route;
pub mod trace;
pub mod variable;

use crate::config::AuthMode;
use ::cel::Program;
use http::HeaderName;
use std::path::PathBuf;
use std::sync::Arc;

pub use cel::CelRuntime;
pub use decision::{AuditDenial, Decision, Denial, DenyReason, Outcome};
pub use load::{EvalBudget, LoadContext, PolicySet, SourceReads};
pub use trace::Trace;
pub use variable::Variable;

/// Whether a failing rule denies or is only recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Shadow mode: a would-be denial is counted and logged, the request goes on.
    Audit,
}

/// A compiled expression. One that reads only `claims` and `token` gives the same value for
/// every request with the same token, so its result is remembered with the (cached) token:
/// `memo` is its slot there.
#[derive(Debug)]
pub struct Expr {
    pub program: Program,
    pub memo: Option<u32>,
    /// The native form of the expression, when it has one (see [`native`]).
    pub native: Option<native::Plan>,
}

#[derive(Debug)]
pub enum Condition {
    /// The request passes this rule when the expression is `true`.
    AllowIf(Expr),
    /// The request is denied when the expression is `true`.
    DenyIf(Expr),
}

#[derive(Debug)]
pub enum Message {
    Text(String),
    Expr(Expr),
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    pub condition: Condition,
    pub status: u16,
    pub message: Message,
    pub mode: Mode,
}

/// A compiled `[[route.limit]]`.
#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    pub key: Expr,
    pub limit: Expr,
    /// `None`: each request costs 1.
    pub cost: Option<Expr>,
    pub window_ms: u64,
    pub on_store_error: crate::ratelimit::StoreFailMode,
}

#[derive(Debug)]
pub struct Forward {
    pub header: HeaderName,
    pub expr: Expr,
}

/// A derived attribute, computed at most once per request and only when read.
#[derive(Debug)]
pub enum AttrKind {
    /// A fixed value.
    Static(Box<dyn ::cel::common::value::Val>),
    /// A CEL expression.
    Dynamic(Expr),
    /// The first case whose `if` holds gives the value; `else` otherwise.
    Conditional {
        cases: Vec<(Expr, Expr)>,
        otherwise: Expr,
    },
}

#[derive(Debug)]
pub struct Attr {
    pub name: Arc<str>,
    pub kind: AttrKind,
}

/// One case of upstream selection: the first whose condition holds picks the upstream.
#[derive(Debug)]
pub struct UpstreamCase {
    pub condition: Expr,
    pub upstream: Arc<str>,
}

/// Largest body a rule may read: Pingora replays at most 64 KiB of a buffered body upstream.
pub const MAX_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// The file the route came from.
    pub file: PathBuf,
    pub host: Option<String>,
    pub path: String,
    /// Upper-case methods; `None` for any.
    pub methods: Option<Vec<String>>,
    pub auth: AuthMode,
    /// Issuer names whose tokens the route accepts.
    pub issuers: Vec<Arc<str>>,
    /// The upstream when no `upstream_select` case matches.
    pub upstream: Arc<str>,
    pub upstream_select: Vec<UpstreamCase>,
    pub rules: Vec<Rule>,
    pub attrs: Vec<Attr>,
    /// Whether any expression of the route reads `body`: only then is the body buffered.
    pub reads_body: bool,
    /// The request headers and query parameters its expressions (and its sources' templates)
    /// read.
    pub request_reads: references::RequestReads,
    pub body_limit: usize,
    pub forward: Vec<Forward>,
    /// External sources any expression of the route reads (`ext.NAME`), fetched before its
    /// rules run.
    pub sources: Vec<Arc<str>>,
    /// Budgets charged for each request the rules allow.
    pub limits: Vec<Limit>,
}

impl Route {
    pub fn attr_index(&self, name: &str) -> Option<usize> {
        self.attrs.iter().position(|a| &*a.name == name)
    }

    /// How strongly the route protects what it serves, comparable across routes: its
    /// authentication (none < optional < required), then how many rules it enforces.
    pub fn protection(&self) -> (u8, usize) {
        let auth = match self.auth {
            crate::config::AuthMode::None => 0,
            crate::config::AuthMode::Optional => 1,
            crate::config::AuthMode::Required => 2,
        };
        let enforced = self
            .rules
            .iter()
            .filter(|r| r.mode == Mode::Enforce)
            .count();
        (auth, enforced)
    }
}
