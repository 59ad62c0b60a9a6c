//! `rules/*.toml` -> a compiled, validated [`PolicySet`]. Every error names file, line and column,
//! and all of them are reported in one pass.

use super::analysis::{free_variables, worst_case_steps, InputBounds};
use super::cel::{CelRuntime, VARIABLES};
use super::native::Plan;
use super::route::RouteIndex;
use super::{
    Attr, AttrKind, Condition, Expr, Forward, Message, Mode, Route, Rule, UpstreamCase,
    MAX_BODY_LIMIT,
};
use crate::config::AuthMode;
use crate::location::{offset_in_string_value, SourceError};
use http::HeaderName;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    #[serde(default)]
    host: Option<String>,
    path: Spanned<String>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    #[serde(default)]
    auth: AuthMode,
    #[serde(default)]
    issuers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    forward: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    attr: BTreeMap<String, Spanned<RawAttr>>,
    #[serde(default)]
    body_limit: Option<Spanned<usize>>,
    #[serde(default)]
    upstream_select: Vec<Spanned<RawUpstreamCase>>,
}

/// `name = "cel"` (dynamic), or a table: `{ value = ... }` (static),
/// `{ cases = [{ if = "cel", then = "cel" }], else = "cel" }` (conditional), `{ expr = "cel" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAttr {
    Expr(String),
    Table(RawAttrTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttrTable {
    #[serde(default)]
    expr: Option<String>,
    #[serde(default)]
    value: Option<toml::Value>,
    #[serde(default)]
    cases: Option<Vec<RawCase>>,
    #[serde(default, rename = "else")]
    otherwise: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    #[serde(rename = "if")]
    cond: String,
    then: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamCase {
    #[serde(rename = "if")]
    cond: Spanned<String>,
    upstream: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    allow_if: Option<Spanned<String>>,
    #[serde(default)]
    deny_if: Option<Spanned<String>>,
    #[serde(default)]
    status: Option<Spanned<u16>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    message_expr: Option<Spanned<String>>,
    #[serde(default)]
    mode: Mode,
}

/// What a policy may refer to, from `gateway.toml`.
#[derive(Debug, Clone, Default)]
pub struct LoadContext {
    pub issuers: Vec<String>,
    pub upstreams: Vec<String>,
    /// The upstream of routes that name none.
    pub default_upstream: Option<String>,
    /// External sources by name, and whether the source's request templates read `body`.
    pub sources: BTreeMap<String, bool>,
    /// How large inputs can be, and how many evaluation steps an expression may take at worst.
    pub eval: EvalBudget,
}

/// The worst-case evaluation budget of each expression (see [`super::analysis`]).
#[derive(Debug, Clone, Copy)]
pub struct EvalBudget {
    pub bounds: InputBounds,
    pub max_steps: u64,
}

impl Default for EvalBudget {
    fn default() -> Self {
        EvalBudget {
            bounds: InputBounds::from_bytes(8 * 1024, MAX_BODY_LIMIT, 32 * 1024, 64 * 1024),
            max_steps: crate::config::DEFAULT_MAX_EVAL_STEPS,
        }
    }
}

/// Headers a route may not set: they belong to the HTTP connection or to the client's identity
/// as the upstream sees it.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "x-forwarded-for",
];

/// A compiled set of policies: one immutable snapshot, swapped whole on reload.
#[derive(Debug)]
pub struct PolicySet {
    pub routes: Vec<Route>,
    pub index: RouteIndex,
    pub cel: CelRuntime,
    /// The files loaded, in load order.
    pub files: Vec<PathBuf>,
    /// What loads but is probably a mistake: routes that can never match, rules that always or
    /// never deny, open routes that read claims.
    pub warnings: Vec<SourceError>,
    /// How many expressions read only the token (their results are kept per token).
    pub memo_slots: usize,
}

impl PolicySet {
    /// Loads every `*.toml` file of `dir`, in name order.
    pub fn load_dir(dir: &Path, ctx: &LoadContext) -> Result<PolicySet, Vec<SourceError>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![SourceError::whole_file(
                dir,
                format!("cannot read the rules directory: {e}"),
            )]
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(s) => sources.push((f, s)),
                Err(e) => errors.push(SourceError::whole_file(&f, format!("cannot read: {e}"))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::from_sources(&sources, ctx)
    }

    /// Compiles policy files given as (path, text).
    pub fn from_sources(
        sources: &[(PathBuf, String)],
        ctx: &LoadContext,
    ) -> Result<PolicySet, Vec<SourceError>> {
        let mut loader = Loader {
            ctx,
            cel: CelRuntime::new(),
            routes: Vec::new(),
            index: RouteIndex::default(),
            names: HashSet::new(),
            errors: Vec::new(),
            reads_body: false,
            attr_reads: Vec::new(),
            ext_reads: Vec::new(),
            reads_claims: false,
            warnings: Vec::new(),
            memo_slots: 0,
            body_bound: MAX_BODY_LIMIT,
            path_locations: Vec::new(),
        };
        for (path, src) in sources {
            loader.file(path, src);
        }
        if !loader.errors.is_empty() {
            return Err(loader.errors);
        }
        loader.index.seal();
        loader.boundary_warnings();
        Ok(PolicySet {
            routes: loader.routes,
            index: loader.index,
            cel: loader.cel,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
            warnings: loader.warnings,
            memo_slots: loader.memo_slots as usize,
        })
    }
}

struct Loader<'c> {
    ctx: &'c LoadContext,
    cel: CelRuntime,
    routes: Vec<Route>,
    index: RouteIndex,
    names: HashSet<String>,
    errors: Vec<SourceError>,
    /// Per route being loaded: whether an expression reads `body`, and every `attr.x` read,
    /// with where it was read.
    reads_body: bool,
    attr_reads: Vec<(String, usize, String)>,
    /// Per route being loaded: every `ext.x` read, with where it was read.
    ext_reads: Vec<(String, usize, String)>,
    /// Per route being loaded: whether an expression reads `claims` or `token`.
    reads_claims: bool,
    warnings: Vec<SourceError>,
    /// Expressions that read only the token, numbered for their memo slots.
    memo_slots: u32,
    /// Where each route's `path` is written, by route index (message left empty).
    path_locations: Vec<SourceError>,
    /// Per route being loaded: the largest body its rules can see, for the evaluation budget.
    body_bound: usize,
}

/// The attribute names an expression reads as `attr.name`.
pub fn attr_refs(src: &str) -> Vec<String> {
    member_refs(src, "attr.")
}

/// The names read as `<prefix>name` (e.g. `ext.balance`), where `prefix` is a whole
/// identifier followed by a dot.
pub fn member_refs(src: &str, prefix: &str) -> Vec<String> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = src[i..].find(prefix) {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        };
        let name_start = start + prefix.len();
        let name_end = src[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|e| name_start + e)
            .unwrap_or(src.len());
        if boundary && name_end > name_start {
            out.push(src[name_start..name_end].to_string());
        }
        i = name_end.max(start + prefix.len());
    }
    out
}

/// Why a rule whose condition reads nothing is a mistake, if it is one.
fn constant_rule(cel: &CelRuntime, c: &Condition, mode: Mode) -> Option<&'static str> {
    let (p, deny_when) = match c {
        Condition::AllowIf(p) => (p, false),
        Condition::DenyIf(p) => (p, true),
    };
    if !free_variables(p.program.expression()).is_empty() {
        return None;
    }
    let ctx = cel.root().new_inner_scope();
    match p.program.execute(&ctx) {
        Ok(::cel::Value::Bool(b)) if b == deny_when && mode == Mode::Enforce => {
            Some("the condition is constant and always denies: every request is refused and later rules never run")
        }
        Ok(::cel::Value::Bool(b)) if b == deny_when => {
            Some("the condition is constant: this audit rule reports every request")
        }
        Ok(::cel::Value::Bool(_)) => Some("the condition is constant and never denies"),
        _ => Some("the condition is constant and never gives a bool: it always fails"),
    }
}

/// Why a path pattern can never match, if it cannot: requests are normalised before lookup
/// (see [`crate::path`]), so a pattern the normaliser would rewrite or refuse is never reached.
fn unreachable_path(pattern: &str) -> Option<String> {
    let sample: String = pattern
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') || seg == "*" {
                "x"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    match crate::path::normalise(&sample) {
        Ok(n) if n == sample => None,
        Ok(n) => Some(format!(
            "requests for it are normalised to `{n}` before lookup"
        )),
        Err(e) => Some(format!("requests for it are refused before lookup: {e}")),
    }
}

/// One file being loaded: where errors go and how to locate them.
struct FileCx<'a> {
    path: &'a Path,
    src: &'a str,
}

impl FileCx<'_> {
    fn err(&self, offset: usize, msg: impl Into<String>) -> SourceError {
        SourceError::at_offset(self.path, self.src, offset, msg)
    }
}

impl Loader<'_> {
    fn file(&mut self, path: &Path, src: &str) {
        let fx = FileCx { path, src };
        let file: RulesFile = match toml::from_str(src) {
            Ok(f) => f,
            Err(e) => {
                self.errors.push(SourceError::from_toml(path, src, &e));
                return;
            }
        };
        for route in file.route {
            if let Some(r) = self.route(&fx, route) {
                self.routes.push(r);
            }
        }
    }

    fn compile(&mut self, fx: &FileCx<'_>, expr: &Spanned<String>, what: &str) -> Option<Expr> {
        self.compile_at(fx, expr.get_ref(), expr.span().start, true, what)
    }

    /// Compiles `src`, written at `start` in the file. When `exact`, `start` is the string's
    /// opening quote and CEL positions map to file positions; otherwise errors point at `start`
    /// and give the position inside the expression.
    fn compile_at(
        &mut self,
        fx: &FileCx<'_>,
        src: &str,
        start: usize,
        exact: bool,
        what: &str,
    ) -> Option<Expr> {
        match self.cel.compile(src) {
            Ok(p) => {
                let vars = free_variables(p.expression());
                if let Some(v) = vars.iter().find(|v| !VARIABLES.contains(v)) {
                    self.errors.push(fx.err(
                        start,
                        format!(
                            "{what}: unknown variable `{v}` (known: {})",
                            VARIABLES.join(", ")
                        ),
                    ));
                    return None;
                }
                if vars.contains("body") {
                    self.reads_body = true;
                }
                if vars.contains("claims") || vars.contains("token") {
                    self.reads_claims = true;
                }
                if vars.contains("attr") {
                    for a in attr_refs(src) {
                        self.attr_reads.push((a, start, what.to_string()));
                    }
                }
                if vars.contains("ext") {
                    let names = member_refs(src, "ext.");
                    if names.is_empty() {
                        self.errors.push(fx.err(
                            start,
                            format!("{what}: read sources by name, as `ext.NAME`"),
                        ));
                    }
                    for n in names {
                        self.ext_reads.push((n, start, what.to_string()));
                    }
                }
                let bounds = InputBounds {
                    body: (self.body_bound as u64 / 2).max(1),
                    ..self.ctx.eval.bounds
                };
                let steps = worst_case_steps(p.expression(), &bounds);
                if steps > self.ctx.eval.max_steps {
                    let shown = if steps == u64::MAX {
                        "more than 10^19".to_string()
                    } else {
                        steps.to_string()
                    };
                    self.errors.push(fx.err(
                        start,
                        format!(
                            "{what}: may take up to {shown} evaluation steps on inputs within the limits \
                             (`limits.max_eval_steps` = {}); iterate over request data once, not in nested loops",
                            self.ctx.eval.max_steps
                        ),
                    ));
                    return None;
                }
                let token_only =
                    !vars.is_empty() && vars.iter().all(|v| *v == "claims" || *v == "token");
                let memo = token_only.then(|| {
                    self.memo_slots += 1;
                    self.memo_slots - 1
                });
                let native = Plan::of(p.expression());
                Some(Expr {
                    program: p,
                    memo,
                    native,
                })
            }
            Err(errs) => {
                for e in errs.errors {
                    let (line, col) = (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize);
                    if exact {
                        let off = offset_in_string_value(fx.src, start, line, col);
                        self.errors
                            .push(fx.err(off, format!("{what}: CEL syntax error: {}", e.msg)));
                    } else {
                        self.errors.push(fx.err(
                            start,
                            format!(
                                "{what}: CEL syntax error at {line}:{col} of the expression: {}",
                                e.msg
                            ),
                        ));
                    }
                }
                None
            }
        }
    }

    /// Compiles a route's derived attributes and checks that what reads them exists and that
    /// they do not depend on each other in a cycle.
    fn attrs(
        &mut self,
        fx: &FileCx<'_>,
        route: &str,
        raw: &BTreeMap<String, Spanned<RawAttr>>,
    ) -> Vec<Attr> {
        let mut attrs = Vec::new();
        let mut deps: Vec<(String, Vec<String>, usize)> = Vec::new();
        for (name, spanned) in raw {
            let start = spanned.span().start;
            let what = format!("attribute `{name}`");
            let reads_before = self.attr_reads.len();
            let kind = match spanned.get_ref() {
                RawAttr::Expr(e) => self
                    .compile_at(fx, e, start, true, &what)
                    .map(AttrKind::Dynamic),
                RawAttr::Table(t) => match (&t.expr, &t.value, &t.cases, &t.otherwise) {
                    (Some(e), None, None, None) => self
                        .compile_at(fx, e, start, false, &what)
                        .map(AttrKind::Dynamic),
                    (None, Some(v), None, None) => match serde_json::to_value(v) {
                        Ok(j) => Some(AttrKind::Static(super::cel::to_val(
                            super::cel::json_to_value(&j),
                        ))),
                        Err(e) => {
                            self.errors.push(fx.err(start, format!("{what}: {e}")));
                            None
                        }
                    },
                    (None, None, Some(cases), Some(otherwise)) => {
                        let mut compiled = Vec::new();
                        for (i, c) in cases.iter().enumerate() {
                            let w = format!("{what}, case {}", i + 1);
                            let cond =
                                self.compile_at(fx, &c.cond, start, false, &format!("{w} `if`"));
                            let then =
                                self.compile_at(fx, &c.then, start, false, &format!("{w} `then`"));
                            if let (Some(a), Some(b)) = (cond, then) {
                                compiled.push((a, b));
                            }
                        }
                        let otherwise =
                            self.compile_at(fx, otherwise, start, false, &format!("{what} `else`"));
                        (compiled.len() == cases.len())
                            .then_some(otherwise)
                            .flatten()
                            .map(|otherwise| AttrKind::Conditional {
                                cases: compiled,
                                otherwise,
                            })
                    }
                    _ => {
                        self.errors.push(fx.err(
                            start,
                            format!("{what} needs an expression, `value`, or `cases` with `else`"),
                        ));
                        None
                    }
                },
            };
            let reads: Vec<String> = self.attr_reads[reads_before..]
                .iter()
                .map(|(a, _, _)| a.clone())
                .collect();
            deps.push((name.clone(), reads, start));
            if let Some(kind) = kind {
                attrs.push(Attr {
                    name: Arc::from(name.as_str()),
                    kind,
                });
            }
        }
        for (a, at, what) in std::mem::take(&mut self.attr_reads) {
            if !raw.contains_key(&a) {
                self.errors.push(fx.err(
                    at,
                    format!("{what}: unknown attribute `attr.{a}` in route `{route}`"),
                ));
            }
        }
        // Depth-first search for a cycle among the attributes.
        fn visit<'d>(
            n: &'d str,
            deps: &'d [(String, Vec<String>, usize)],
            path: &mut Vec<&'d str>,
            done: &mut HashSet<&'d str>,
        ) -> Option<Vec<String>> {
            if done.contains(n) {
                return None;
            }
            if let Some(i) = path.iter().position(|p| *p == n) {
                let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            path.push(n);
            if let Some((_, reads, _)) = deps.iter().find(|(d, _, _)| d == n) {
                for r in reads {
                    if let Some(c) = visit(r, deps, path, done) {
                        return Some(c);
                    }
                }
            }
            path.pop();
            done.insert(n);
            None
        }
        let mut done = HashSet::new();
        for (name, _, start) in &deps {
            if let Some(cycle) = visit(name, &deps, &mut Vec::new(), &mut done) {
                self.errors.push(fx.err(
                    *start,
                    format!(
                        "attributes depend on each other in a cycle: {}",
                        cycle.join(" -> ")
                    ),
                ));
                break;
            }
        }
        attrs
    }

    /// Warns where a less protected route serves a path on the boundary of a more protected
    /// route's pattern (`/admin/` beside `/admin`, `/x` beside `/x/{id}`): many upstreams
    /// serve both alike, so the weaker route is a way around the stronger one.
    fn boundary_warnings(&mut self) {
        let routes = &self.routes;
        let mut seen = HashSet::new();
        for c in self.index.boundary_catches(|i| routes[i].methods.clone()) {
            let (strong, weak) = (&routes[c.protected], &routes[c.catcher]);
            if !less_protected(weak, strong) || !seen.insert((c.catcher, c.path.clone())) {
                continue;
            }
            let mut w = self.path_locations[c.catcher].clone();
            w.message = format!(
                "route `{}` serves `{} {}` with less protection (auth `{}`, {} enforced rule(s)) than route `{}` (`{}`: auth `{}`, {} enforced rule(s)) gives the path next to it; an upstream that treats both paths alike is reached around `{}`. Give `{}` its own route for that path, or the same protection",
                weak.name,
                c.method,
                c.path,
                auth_name(weak.auth),
                enforced(weak),
                strong.name,
                strong.path,
                auth_name(strong.auth),
                enforced(strong),
                strong.name,
                c.path,
            );
            self.warnings.push(w);
        }
    }

    fn route(&mut self, fx: &FileCx<'_>, raw: Spanned<RawRoute>) -> Option<Route> {
        let before = self.errors.len();
        self.reads_body = false;
        self.attr_reads.clear();
        self.ext_reads.clear();
        self.reads_claims = false;
        let route_start = raw.span().start;
        let raw = raw.into_inner();
        self.body_bound = raw
            .body_limit
            .as_ref()
            .map(|l| *l.get_ref())
            .filter(|l| (1..=MAX_BODY_LIMIT).contains(l))
            .unwrap_or(MAX_BODY_LIMIT);
        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            self.errors
                .push(fx.err(raw.name.span().start, "a route needs a non-empty name"));
        } else if !self.names.insert(name.clone()) {
            self.errors.push(fx.err(
                raw.name.span().start,
                format!("route name `{name}` is already used"),
            ));
        }

        let mut methods = Vec::new();
        for m in &raw.methods {
            let up = m.get_ref().to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_alphabetic()) {
                self.errors.push(fx.err(
                    m.span().start,
                    format!("`{}` is not an HTTP method", m.get_ref()),
                ));
            }
            methods.push(up);
        }
        let methods = (!methods.is_empty()).then_some(methods);

        let issuers: Vec<Arc<str>> = match (&raw.issuers, raw.auth) {
            (_, AuthMode::None) => Vec::new(),
            (Some(list), _) => {
                let mut v = Vec::new();
                for i in list {
                    if self.ctx.issuers.contains(i.get_ref()) {
                        v.push(Arc::from(i.get_ref().as_str()));
                    } else {
                        self.errors.push(fx.err(
                            i.span().start,
                            format!("unknown issuer `{}` (not in gateway.toml)", i.get_ref()),
                        ));
                    }
                }
                if list.is_empty() {
                    self.errors.push(fx.err(
                        route_start,
                        format!("route `{name}`: `issuers` is empty; use `auth = \"none\"` for an open route"),
                    ));
                }
                v
            }
            (None, _) if self.ctx.issuers.len() == 1 => {
                vec![Arc::from(self.ctx.issuers[0].as_str())]
            }
            (None, _) => {
                self.errors.push(fx.err(
                    route_start,
                    format!(
                        "route `{name}` needs `issuers`: gateway.toml has {} issuers",
                        self.ctx.issuers.len()
                    ),
                ));
                Vec::new()
            }
        };

        let upstream: Arc<str> = match &raw.upstream {
            Some(u) if self.ctx.upstreams.contains(u.get_ref()) => Arc::from(u.get_ref().as_str()),
            Some(u) => {
                self.errors.push(fx.err(
                    u.span().start,
                    format!("unknown upstream `{}` (not in gateway.toml)", u.get_ref()),
                ));
                Arc::from("")
            }
            None => match &self.ctx.default_upstream {
                Some(d) => Arc::from(d.as_str()),
                None => {
                    self.errors.push(fx.err(
                        route_start,
                        format!(
                            "route `{name}` needs `upstream`: gateway.toml has {} upstreams and none is `default = true`",
                            self.ctx.upstreams.len()
                        ),
                    ));
                    Arc::from("")
                }
            },
        };

        let mut rules = Vec::new();
        let mut rule_names = HashSet::new();
        for r in raw.rule {
            let rule_start = r.span().start;
            let r = r.into_inner();
            let rname = r.name.get_ref().clone();
            if !rule_names.insert(rname.clone()) {
                self.errors.push(fx.err(
                    r.name.span().start,
                    format!("rule name `{rname}` is already used in route `{name}`"),
                ));
            }
            let what = format!("rule `{rname}`");
            let condition = match (&r.allow_if, &r.deny_if) {
                (Some(e), None) => self.compile(fx, e, &what).map(Condition::AllowIf),
                (None, Some(e)) => self.compile(fx, e, &what).map(Condition::DenyIf),
                _ => {
                    self.errors.push(fx.err(
                        rule_start,
                        format!("{what} needs exactly one of `allow_if` and `deny_if`"),
                    ));
                    None
                }
            };
            let status = match &r.status {
                Some(s) if (400..=599).contains(s.get_ref()) => *s.get_ref(),
                Some(s) => {
                    self.errors.push(fx.err(
                        s.span().start,
                        format!("{what}: status must be between 400 and 599"),
                    ));
                    403
                }
                None => 403,
            };
            let message = match (&r.message, &r.message_expr) {
                (Some(_), Some(e)) => {
                    self.errors.push(fx.err(
                        e.span().start,
                        format!("{what}: set `message` or `message_expr`, not both"),
                    ));
                    None
                }
                (_, Some(e)) => self
                    .compile(fx, e, &format!("{what} message_expr"))
                    .map(Message::Expr),
                (Some(m), None) => Some(Message::Text(m.clone())),
                (None, None) => Some(Message::Text(format!("denied by rule `{rname}`"))),
            };
            if let Some(c) = &condition {
                if let Some(w) = constant_rule(&self.cel, c, r.mode) {
                    self.warnings
                        .push(fx.err(rule_start, format!("route `{name}`, {what}: {w}")));
                }
            }
            if let (Some(condition), Some(message)) = (condition, message) {
                rules.push(Rule {
                    name: Arc::from(rname.as_str()),
                    condition,
                    status,
                    message,
                    mode: r.mode,
                });
            }
        }

        let mut forward = Vec::new();
        for (header, expr) in &raw.forward {
            let lower = header.to_ascii_lowercase();
            let hn = match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    self.errors.push(fx.err(
                        expr.span().start,
                        format!("`{header}` is not a valid header name"),
                    ));
                    continue;
                }
            };
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                self.errors.push(fx.err(
                    expr.span().start,
                    format!("route `{name}` may not set the `{lower}` header"),
                ));
                continue;
            }
            if let Some(p) = self.compile(fx, expr, &format!("forward header `{lower}`")) {
                forward.push(Forward {
                    header: hn,
                    expr: p,
                });
            }
        }

        let mut upstream_select = Vec::new();
        for case in &raw.upstream_select {
            let c = case.get_ref();
            let name_ok = self.ctx.upstreams.contains(c.upstream.get_ref());
            if !name_ok {
                self.errors.push(fx.err(
                    c.upstream.span().start,
                    format!(
                        "unknown upstream `{}` (not in gateway.toml)",
                        c.upstream.get_ref()
                    ),
                ));
            }
            if let Some(p) = self.compile(fx, &c.cond, "upstream_select") {
                if name_ok {
                    upstream_select.push(UpstreamCase {
                        condition: p,
                        upstream: Arc::from(c.upstream.get_ref().as_str()),
                    });
                }
            }
        }

        // Attributes last: everything above has recorded which attributes it reads.
        let attrs = self.attrs(fx, &name, &raw.attr);
        let mut sources: Vec<Arc<str>> = Vec::new();
        for (n, at, what) in std::mem::take(&mut self.ext_reads) {
            match self.ctx.sources.get(&n) {
                None => self.errors.push(fx.err(
                    at,
                    format!("{what}: unknown source `ext.{n}` (not in gateway.toml `[sources]`)"),
                )),
                Some(reads_body) => {
                    self.reads_body |= *reads_body;
                    if !sources.iter().any(|s| **s == *n) {
                        sources.push(Arc::from(n.as_str()));
                    }
                }
            }
        }
        let reads_body = self.reads_body;

        let body_limit = match &raw.body_limit {
            Some(l) if *l.get_ref() == 0 || *l.get_ref() > MAX_BODY_LIMIT => {
                self.errors.push(fx.err(
                    l.span().start,
                    format!("`body_limit` must be between 1 and {MAX_BODY_LIMIT} bytes"),
                ));
                MAX_BODY_LIMIT
            }
            Some(l) => *l.get_ref(),
            None => MAX_BODY_LIMIT,
        };
        if raw.body_limit.is_some() && !reads_body {
            self.errors.push(fx.err(
                route_start,
                format!("route `{name}` sets `body_limit` but no expression reads `body`"),
            ));
        }

        // A host the index can never see would leave that host to the host-less routes:
        // fail open. Only a host as requests are matched on (no port, no trailing dot,
        // IPv6 without brackets) loads.
        let host = raw.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let written = if h.contains(':') && !h.starts_with('[') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            match crate::admission::host::parse_authority(&written) {
                Ok(a) if a.host == *h || format!("[{}]", a.host) == *h => {}
                Ok(a) => self.errors.push(fx.err(
                    route_start,
                    format!("route `{name}`: host `{h}` never matches: hosts are matched without port and trailing dot; write `{}`", a.host),
                )),
                Err(e) => self.errors.push(fx.err(
                    route_start,
                    format!("route `{name}`: `{h}` is not a host name ({e})"),
                )),
            }
        }
        let host = host.map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string());
        self.path_locations
            .push(fx.err(raw.path.span().start, String::new()));
        if let Err(m) = self.index.insert(
            host.as_deref(),
            raw.path.get_ref(),
            methods.clone(),
            self.routes.len(),
        ) {
            self.errors
                .push(fx.err(raw.path.span().start, format!("route `{name}`: {m}")));
        }

        if raw.auth == AuthMode::None && self.reads_claims {
            self.warnings.push(fx.err(
                route_start,
                format!("route `{name}` has `auth = \"none\"` but reads `claims` or `token`, which are always empty there"),
            ));
        }
        if let Some(w) = unreachable_path(raw.path.get_ref()) {
            self.warnings.push(fx.err(
                raw.path.span().start,
                format!("route `{name}` can never match: {w}"),
            ));
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Route {
            name: Arc::from(name.as_str()),
            file: fx.path.to_path_buf(),
            host,
            path: raw.path.into_inner(),
            methods,
            auth: raw.auth,
            issuers,
            upstream,
            upstream_select,
            rules,
            attrs,
            reads_body,
            body_limit,
            forward,
            sources,
        })
    }
}

fn auth_name(a: AuthMode) -> &'static str {
    match a {
        AuthMode::None => "none",
        AuthMode::Optional => "optional",
        AuthMode::Required => "required",
    }
}

fn enforced(r: &Route) -> usize {
    r.protection().1
}

/// Weaker authentication, or the same with fewer enforced rules.
fn less_protected(weak: &Route, strong: &Route) -> bool {
    weak.protection() < strong.protection()
}
