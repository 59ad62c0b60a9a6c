//! `rules/*.toml` -> a compiled, validated [`PolicySet`]. Every error names file, line and column,
//! and all of them are reported in one pass.

use super::analysis::{worst_case_steps, InputBounds};
use super::cel::CelRuntime;
use super::native::Plan;
use super::raw::{RawAttr, RawRoute, RawRule, RawUpstreamCase, RulesFile};
use super::references::{References, RequestReads};
use super::route::RouteIndex;
use super::variable::Variable;
use super::{
    Attr, AttrKind, Condition, Expr, Forward, Limit, Message, Mode, Route, Rule, UpstreamCase,
    MAX_BODY_LIMIT,
};
use crate::auth::claim_names::{ClaimNames, ClaimReads};
use crate::config::AuthMode;
use crate::location::{offset_in_string_value, SourceError};
use http::HeaderName;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// What a policy may refer to, from `gateway.toml`.
/// What a source's request templates read of the request: the routes that read the source read
/// it too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReads {
    pub body: bool,
    pub request: RequestReads,
}

#[derive(Debug, Clone, Default)]
pub struct LoadContext {
    pub issuers: Vec<String>,
    pub upstreams: Vec<String>,
    /// The upstream of routes that name none.
    pub default_upstream: Option<String>,
    /// External sources by name, and what their request templates read of the request.
    pub sources: BTreeMap<String, SourceReads>,
    /// How large inputs can be, and how many evaluation steps an expression may take at worst.
    pub eval: EvalBudget,
    /// The configuration file, for messages (`gateway.toml` when not set).
    pub config_file: Option<String>,
}

impl LoadContext {
    /// The configuration file's name as messages give it.
    fn config_name(&self) -> &str {
        self.config_file.as_deref().unwrap_or("gateway.toml")
    }
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
    /// The claims some expression reads: the rest of a new token's claims are not decoded.
    pub claims: ClaimNames,
}

impl PolicySet {
    /// The policy files of `dir`: every `*.toml` file, in name order.
    pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            SourceError::whole_file(dir, format!("cannot read the rules directory: {e}"))
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads and compiles `files` (see [`PolicySet::files_in`]).
    pub fn load_files(files: &[PathBuf], ctx: &LoadContext) -> Result<PolicySet, Vec<SourceError>> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match crate::set_file::read_to_string(f) {
                Ok(s) => sources.push((f.clone(), s)),
                Err(e) => errors.push(SourceError::whole_file(f, format!("cannot read: {e}"))),
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
            reads: RouteReads::default(),
            warnings: Vec::new(),
            memo_slots: 0,
            path_locations: Vec::new(),
            claim_reads: ClaimReads::default(),
        };
        for (path, src) in sources {
            loader.file(path, src);
        }
        if !loader.errors.is_empty() {
            return Err(loader.errors);
        }
        loader.case_collisions();
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
            claims: loader.claim_reads.names(),
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
    /// What the expressions of the route being loaded read.
    reads: RouteReads,
    warnings: Vec<SourceError>,
    /// Expressions that read only the token, numbered for their memo slots.
    memo_slots: u32,
    /// Where each route's `path` is written, by route index (message left empty).
    path_locations: Vec<SourceError>,
    /// What every expression that loaded reads of `claims`.
    claim_reads: ClaimReads,
}

/// What the expressions of one route read, gathered while they compile.
#[derive(Default)]
struct RouteReads {
    body: bool,
    /// `claims` or `token`.
    claims: bool,
    /// Every `attr.NAME` read, with where and by what.
    attrs: Vec<NamedRead>,
    /// Every `ext.NAME` read, with where and by what.
    sources: Vec<NamedRead>,
    /// The largest body the route's rules can see, for the evaluation budget.
    body_bound: usize,
    /// The request headers and query parameters read.
    request: RequestReads,
    /// The route's path parameters, what `request.params` holds (`None` when the path does
    /// not parse: its own error says so).
    params: Option<Vec<String>>,
}

struct NamedRead {
    name: String,
    at: usize,
    what: String,
}

/// Why a rule whose condition reads nothing is a mistake, if it is one.
fn constant_rule(cel: &CelRuntime, c: &Condition, mode: Mode) -> Option<&'static str> {
    let (p, deny_when) = match c {
        Condition::AllowIf(p) => (p, false),
        Condition::DenyIf(p) => (p, true),
    };
    let refs = References::of(p.program.expression());
    if !refs.variables.is_empty() || !refs.unknown.is_empty() {
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
    lines: crate::location::LineIndex,
}

impl FileCx<'_> {
    fn err(&self, offset: usize, msg: impl Into<String>) -> SourceError {
        let (line, column) = self.lines.line_col(self.src, offset);
        SourceError::at(self.path, line, column, msg)
    }
}

/// Where an expression is written in its file.
#[derive(Clone, Copy)]
struct Written<'a> {
    src: &'a str,
    /// The offset of the string holding it.
    start: usize,
    /// Whether `start` is the string's opening quote, so positions inside the expression map
    /// to the file; otherwise (an expression inside an inline table) errors point at `start`
    /// and give the position inside the expression.
    exact: bool,
}

impl Written<'_> {
    /// Where node `id` of `p` is: a file offset, and the text to add to a message when that
    /// offset is only the expression's start.
    fn node(&self, fx: &FileCx<'_>, p: &::cel::Program, id: u64) -> (usize, String) {
        self.node_back(fx, p, id, 0)
    }

    /// [`Written::node`] for a call, placed at its `(` by the parser: moved back over the
    /// `back` characters of the function's name written before it.
    fn node_back(
        &self,
        fx: &FileCx<'_>,
        p: &::cel::Program,
        id: u64,
        back: usize,
    ) -> (usize, String) {
        let Some((mut from, _)) = p.source_info().offset_for(id) else {
            return (self.start, String::new());
        };
        if back > 0 && self.src.chars().nth(from as usize) == Some('(') {
            from = from.saturating_sub(back as u32);
        }
        // A field read is placed at its `.` (or `[`): the name follows it.
        if back == FIELD && matches!(self.src.chars().nth(from as usize), Some('.' | '[')) {
            from += 1;
        }
        let (mut line, mut col) = (1, 1);
        for ch in self.src.chars().take(from as usize) {
            if ch == '\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
        if self.exact {
            (
                offset_in_string_value(fx.src, self.start, line, col),
                String::new(),
            )
        } else {
            (self.start, format!(" (at {line}:{col} of the expression)"))
        }
    }
}

/// [`Written::node_back`]'s `back` for a field read: the name after the `.` or `[`.
const FIELD: usize = usize::MAX;

impl Loader<'_> {
    fn file(&mut self, path: &Path, src: &str) {
        let fx = FileCx {
            path,
            src,
            lines: crate::location::LineIndex::new(src),
        };
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
            Ok(p) => self.accept(fx, p, Written { src, start, exact }, what),
            Err(errs) => {
                for e in errs.errors {
                    let (line, col) = (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize);
                    let err = if exact {
                        let off = offset_in_string_value(fx.src, start, line, col);
                        fx.err(off, format!("{what}: CEL syntax error: {}", e.msg))
                    } else {
                        fx.err(
                            start,
                            format!(
                                "{what}: CEL syntax error at {line}:{col} of the expression: {}",
                                e.msg
                            ),
                        )
                    };
                    self.errors.push(err);
                }
                None
            }
        }
    }

    /// Checks what a parsed expression reads, what it calls and what it may cost, and records
    /// its reads for the route. Errors point at the offending token.
    fn accept(
        &mut self,
        fx: &FileCx<'_>,
        p: ::cel::Program,
        w: Written<'_>,
        what: &str,
    ) -> Option<Expr> {
        let refs = References::of(p.expression());
        let before = self.errors.len();
        let at = |id: u64| w.node(fx, &p, id);
        if let Some((v, id)) = refs.unknown.iter().next() {
            let (off, inner) = at(*id);
            self.errors.push(fx.err(
                off,
                format!(
                    "{what}: unknown variable `{v}`{inner} (known: {})",
                    Variable::list(|_| true)
                ),
            ));
        }
        // `claims` may be read whole (it is not declared member by member).
        for (v, id) in refs.whole.iter().filter(|(v, _)| v.named_members()) {
            let (off, inner) = at(*id);
            self.errors.push(fx.err(
                off,
                format!("{what}: read `{v}` by name, as `{v}.NAME`{inner}"),
            ));
        }
        for e in super::calls::check(p.expression(), &self.cel) {
            let (off, inner) = w.node_back(fx, &p, e.id, e.name_len);
            self.errors
                .push(fx.err(off, format!("{what}: {}{inner}", e.message)));
        }
        for e in super::fields::unknown_fields(p.expression(), self.reads.params.as_deref()) {
            let (off, inner) = w.node_back(fx, &p, e.id, FIELD);
            self.errors
                .push(fx.err(off, format!("{what}: {}{inner}", e.message)));
        }
        if self.errors.len() > before {
            return None;
        }
        self.claim_reads.add(&refs);
        let r = &mut self.reads;
        r.body |= refs.reads(Variable::Body);
        r.request.add(&refs.request);
        r.claims |= refs.reads(Variable::Claims) || refs.reads(Variable::Token);
        let named = |v| {
            refs.members_of(v).map(|(name, id)| {
                let (off, inner) = at(id);
                NamedRead {
                    name: name.to_string(),
                    at: off,
                    what: format!("{what}{inner}"),
                }
            })
        };
        r.attrs.extend(named(Variable::Attr));
        r.sources.extend(named(Variable::Ext));
        if !self.within_budget(fx, &p, w.start, what) {
            return None;
        }
        let memo = refs.per_token_only().then(|| {
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

    /// Whether `p`'s worst-case evaluation fits `limits.max_eval_steps`; an error if not.
    fn within_budget(
        &mut self,
        fx: &FileCx<'_>,
        p: &::cel::Program,
        start: usize,
        what: &str,
    ) -> bool {
        let bounds = InputBounds {
            body: (self.reads.body_bound as u64 / 2).max(1),
            ..self.ctx.eval.bounds
        };
        let steps = worst_case_steps(p.expression(), &bounds);
        if steps <= self.ctx.eval.max_steps {
            return true;
        }
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
        false
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
            let reads_before = self.reads.attrs.len();
            if let Some(kind) = self.attr(fx, name, spanned.get_ref(), start) {
                attrs.push(Attr {
                    name: Arc::from(name.as_str()),
                    kind,
                });
            }
            let reads = self.reads.attrs[reads_before..]
                .iter()
                .map(|r| r.name.clone())
                .collect();
            deps.push((name.clone(), reads, start));
        }
        for r in std::mem::take(&mut self.reads.attrs) {
            if !raw.contains_key(&r.name) {
                self.errors.push(fx.err(
                    r.at,
                    format!(
                        "{}: unknown attribute `attr.{}` in route `{route}`",
                        r.what, r.name
                    ),
                ));
            }
        }
        if let Some((cycle, start)) = attr_cycle(&deps) {
            self.errors.push(fx.err(
                start,
                format!(
                    "attributes depend on each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            ));
        }
        attrs
    }

    /// One attribute, in any of its forms (see [`RawAttr`]).
    fn attr(
        &mut self,
        fx: &FileCx<'_>,
        name: &str,
        raw: &RawAttr,
        start: usize,
    ) -> Option<AttrKind> {
        let what = format!("attribute `{name}`");
        let t = match raw {
            RawAttr::Expr(e) => {
                return self
                    .compile_at(fx, e, start, true, &what)
                    .map(AttrKind::Dynamic)
            }
            RawAttr::Table(t) => t,
        };
        match (&t.expr, &t.value, &t.cases, &t.otherwise) {
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
                    let cond = self.compile_at(fx, &c.cond, start, false, &format!("{w} `if`"));
                    let then = self.compile_at(fx, &c.then, start, false, &format!("{w} `then`"));
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
        }
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
                "route `{}` serves `{} {}` (auth `{}`, {} enforced rule(s)) without the protection route `{}` (`{}`: auth `{}`, {} enforced rule(s)) gives the path next to it; an upstream that treats both paths alike is reached around `{}`. Give `{}` its own route for that path, or the same protection",
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

    /// Two routes whose patterns cannot be told apart once letter case is ignored (`/Admin`
    /// beside `/admin`, `/Files/*` beside `/files/{id}`) are an error: to an upstream that
    /// ignores case they are one path, and admission could not tell which route such an
    /// upstream serves.
    fn case_collisions(&mut self) {
        for c in self.index.case_collisions().to_vec() {
            let mut e = self.path_locations[c.route].clone();
            e.message = format!(
                "route `{}`: its path cannot be told apart from another route's when letter case is ignored, as many upstreams do ({}); give the two routes one spelling",
                self.routes[c.route].name, c.message
            );
            self.errors.push(e);
        }
    }

    fn route(&mut self, fx: &FileCx<'_>, raw: Spanned<RawRoute>) -> Option<Route> {
        let before = self.errors.len();
        let route_start = raw.span().start;
        let raw = raw.into_inner();
        self.reads = RouteReads {
            params: super::route::param_names(raw.path.get_ref()),
            body_bound: raw
                .body_limit
                .as_ref()
                .map(|l| *l.get_ref())
                .filter(|l| (1..=MAX_BODY_LIMIT).contains(l))
                .unwrap_or(MAX_BODY_LIMIT),
            ..RouteReads::default()
        };
        let at = RouteAt {
            name: raw.name.get_ref().clone(),
            start: route_start,
        };
        self.route_name(fx, &raw.name);
        let methods = self.methods(fx, &raw.methods);
        let issuers = self.issuers(fx, &at, raw.auth, raw.issuers.as_deref());
        let upstream = self.upstream(fx, &at, raw.upstream.as_ref());
        let rules = self.rules(fx, &at, raw.rule);
        let forward = self.forward(fx, &at, &raw.forward);
        let limits = self.limits(fx, raw.limit);
        let upstream_select = self.upstream_select(fx, &raw.upstream_select);
        // Attributes and sources last: everything above has recorded what it reads.
        let attrs = self.attrs(fx, &at.name, &raw.attr);
        let sources = self.sources(fx);
        let body_limit = self.body_limit(fx, &at, raw.body_limit.as_ref());
        let host = self.host(fx, &at, raw.host.as_ref());
        self.index_path(fx, &at, host.as_deref(), &raw.path, methods.clone());
        self.route_warnings(fx, &at, raw.auth, &raw.path);
        if self.errors.len() > before {
            return None;
        }
        Some(Route {
            name: Arc::from(at.name.as_str()),
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
            reads_body: self.reads.body,
            request_reads: std::mem::take(&mut self.reads.request),
            body_limit,
            forward,
            sources,
            limits,
        })
    }

    /// The route's `[[route.limit]]`s: unique names, a valid window, and three expressions
    /// compiled like rules.
    fn limits(&mut self, fx: &FileCx<'_>, raw: Vec<Spanned<super::raw::RawLimit>>) -> Vec<Limit> {
        let mut names = HashSet::new();
        let mut limits = Vec::new();
        for l in raw {
            let l = l.into_inner();
            let name = l.name.get_ref();
            let named = |what: &str| format!("limit `{name}` {what}");
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !token || !names.insert(name.clone()) {
                self.errors.push(fx.err(
                    l.name.span().start,
                    format!("limit name `{name}` must be letters, digits, `-`, `_` or `.`, once per route (it is sent in the RateLimit header fields)"),
                ));
                continue;
            }
            let window_ms = match crate::ratelimit::parse_window(l.window.get_ref()) {
                Ok(w) => Some(w),
                Err(e) => {
                    self.errors
                        .push(fx.err(l.window.span().start, named(&format!("window: {e}"))));
                    None
                }
            };
            let key = self.compile(fx, &l.key, &named("key"));
            let limit = self.compile(fx, &l.limit, &named("limit"));
            let cost = match &l.cost {
                Some(c) => self.compile(fx, c, &named("cost")).map(Some),
                None => Some(None),
            };
            if let (Some(window_ms), Some(key), Some(limit), Some(cost)) =
                (window_ms, key, limit, cost)
            {
                limits.push(Limit {
                    name: Arc::from(name.as_str()),
                    key,
                    limit,
                    cost,
                    window_ms,
                    on_store_error: l.on_store_error,
                });
            }
        }
        limits
    }

    fn route_name(&mut self, fx: &FileCx<'_>, name: &Spanned<String>) {
        let (n, at) = (name.get_ref(), name.span().start);
        if n.is_empty() {
            self.errors
                .push(fx.err(at, "a route needs a non-empty name"));
        } else if !self.names.insert(n.clone()) {
            self.errors
                .push(fx.err(at, format!("route name `{n}` is already used")));
        }
    }

    /// Upper-case methods; `None` (any method) when none is listed.
    fn methods(&mut self, fx: &FileCx<'_>, raw: &[Spanned<String>]) -> Option<Vec<String>> {
        let mut methods = Vec::new();
        for m in raw {
            let up = m.get_ref().to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_alphabetic()) {
                self.errors.push(fx.err(
                    m.span().start,
                    format!("`{}` is not an HTTP method", m.get_ref()),
                ));
            }
            methods.push(up);
        }
        (!methods.is_empty()).then_some(methods)
    }

    fn issuers(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        auth: AuthMode,
        raw: Option<&[Spanned<String>]>,
    ) -> Vec<Arc<str>> {
        let known = &self.ctx.issuers;
        match (raw, auth) {
            // Never used: an operator who wrote them expects a token to be asked for.
            (Some(list), AuthMode::None) => {
                let at = list.first().map_or(at.start, |i| i.span().start);
                self.errors.push(fx.err(
                    at,
                    "`issuers` on an `auth = \"none\"` route is never used (no token is asked for); remove it, or set `auth`".to_string(),
                ));
                Vec::new()
            }
            (None, AuthMode::None) => Vec::new(),
            (Some(list), _) => {
                let mut v = Vec::new();
                for i in list {
                    if known.contains(i.get_ref()) {
                        v.push(Arc::from(i.get_ref().as_str()));
                    } else {
                        self.errors.push(fx.err(
                            i.span().start,
                            format!(
                                "unknown issuer `{}` (not in {})",
                                i.get_ref(),
                                self.ctx.config_name()
                            ),
                        ));
                    }
                }
                if list.is_empty() {
                    self.errors.push(fx.err(
                        at.start,
                        format!("route `{}`: `issuers` is empty; use `auth = \"none\"` for an open route", at.name),
                    ));
                }
                v
            }
            (None, _) if known.len() == 1 => vec![Arc::from(known[0].as_str())],
            (None, _) => {
                self.errors.push(fx.err(
                    at.start,
                    format!(
                        "route `{}` needs `issuers`: {} has {} issuers",
                        at.name,
                        self.ctx.config_name(),
                        known.len()
                    ),
                ));
                Vec::new()
            }
        }
    }

    fn upstream(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        raw: Option<&Spanned<String>>,
    ) -> Arc<str> {
        match raw {
            Some(u) if self.ctx.upstreams.contains(u.get_ref()) => Arc::from(u.get_ref().as_str()),
            Some(u) => {
                self.errors.push(fx.err(
                    u.span().start,
                    format!(
                        "unknown upstream `{}` (not in {})",
                        u.get_ref(),
                        self.ctx.config_name()
                    ),
                ));
                Arc::from("")
            }
            None => match &self.ctx.default_upstream {
                Some(d) => Arc::from(d.as_str()),
                None => {
                    self.errors.push(fx.err(
                        at.start,
                        format!(
                            "route `{}` needs `upstream`: {} has {} upstreams and none is `default = true`",
                            at.name,
                            self.ctx.config_name(),
                            self.ctx.upstreams.len()
                        ),
                    ));
                    Arc::from("")
                }
            },
        }
    }

    fn rules(&mut self, fx: &FileCx<'_>, at: &RouteAt, raw: Vec<Spanned<RawRule>>) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut rule_names = HashSet::new();
        for r in raw {
            let rule_start = r.span().start;
            let r = r.into_inner();
            if !rule_names.insert(r.name.get_ref().clone()) {
                self.errors.push(fx.err(
                    r.name.span().start,
                    format!(
                        "rule name `{}` is already used in route `{}`",
                        r.name.get_ref(),
                        at.name
                    ),
                ));
            }
            rules.extend(self.rule(fx, at, r, rule_start));
        }
        rules
    }

    fn rule(&mut self, fx: &FileCx<'_>, at: &RouteAt, r: RawRule, start: usize) -> Option<Rule> {
        let rname = r.name.get_ref();
        let what = format!("rule `{rname}`");
        let condition = match (&r.allow_if, &r.deny_if) {
            (Some(e), None) => self.compile(fx, e, &what).map(Condition::AllowIf),
            (None, Some(e)) => self.compile(fx, e, &what).map(Condition::DenyIf),
            _ => {
                self.errors.push(fx.err(
                    start,
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
        if let Some(w) = condition
            .as_ref()
            .and_then(|c| constant_rule(&self.cel, c, r.mode))
        {
            self.warnings
                .push(fx.err(start, format!("route `{}`, {what}: {w}", at.name)));
        }
        Some(Rule {
            name: Arc::from(rname.as_str()),
            condition: condition?,
            status,
            message: message?,
            mode: r.mode,
        })
    }

    fn forward(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> Vec<Forward> {
        let mut forward = Vec::new();
        for (header, expr) in raw {
            let lower = header.to_ascii_lowercase();
            let Ok(hn) = HeaderName::from_bytes(lower.as_bytes()) else {
                self.errors.push(fx.err(
                    expr.span().start,
                    format!("`{header}` is not a valid header name"),
                ));
                continue;
            };
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                self.errors.push(fx.err(
                    expr.span().start,
                    format!("route `{}` may not set the `{lower}` header", at.name),
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
        forward
    }

    fn upstream_select(
        &mut self,
        fx: &FileCx<'_>,
        raw: &[Spanned<RawUpstreamCase>],
    ) -> Vec<UpstreamCase> {
        let mut cases = Vec::new();
        for case in raw {
            let c = case.get_ref();
            let name_ok = self.ctx.upstreams.contains(c.upstream.get_ref());
            if !name_ok {
                self.errors.push(fx.err(
                    c.upstream.span().start,
                    format!(
                        "unknown upstream `{}` (not in {})",
                        c.upstream.get_ref(),
                        self.ctx.config_name()
                    ),
                ));
            }
            if let Some(p) = self.compile(fx, &c.cond, "upstream_select") {
                if name_ok {
                    cases.push(UpstreamCase {
                        condition: p,
                        upstream: Arc::from(c.upstream.get_ref().as_str()),
                    });
                }
            }
        }
        cases
    }

    /// The external sources the route's expressions read, each once; a source whose request
    /// templates read `body` makes the route read it.
    fn sources(&mut self, fx: &FileCx<'_>) -> Vec<Arc<str>> {
        let mut sources: Vec<Arc<str>> = Vec::new();
        for r in std::mem::take(&mut self.reads.sources) {
            match self.ctx.sources.get(&r.name) {
                None => self.errors.push(fx.err(
                    r.at,
                    format!(
                        "{}: unknown source `ext.{}` (not in {} `[sources]`)",
                        r.what,
                        r.name,
                        self.ctx.config_name()
                    ),
                )),
                Some(reads) => {
                    self.reads.body |= reads.body;
                    self.reads.request.add(&reads.request);
                    if !sources.iter().any(|s| **s == *r.name) {
                        sources.push(Arc::from(r.name.as_str()));
                    }
                }
            }
        }
        sources
    }

    fn body_limit(&mut self, fx: &FileCx<'_>, at: &RouteAt, raw: Option<&Spanned<usize>>) -> usize {
        let limit = match raw {
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
        // Without `body` read, a body is read only to check its fields against the query
        // parameters the rules read (src/admission/reads.rs).
        if raw.is_some() && !self.reads.body && self.reads.request.query.is_empty() {
            self.errors.push(fx.err(
                at.start,
                format!(
                    "route `{}` sets `body_limit` but no expression reads `body` or a query parameter",
                    at.name
                ),
            ));
        }
        limit
    }

    /// The route's host as requests are matched on it. A host the index can never see would
    /// leave that host to the host-less routes (fail open), so only a host without port and
    /// trailing dot (IPv6 without brackets) loads.
    fn host(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        raw: Option<&Spanned<String>>,
    ) -> Option<String> {
        let raw = raw?;
        // At the value, past its opening quote.
        let value_at = raw.span().start + 1;
        let h = raw.get_ref().to_ascii_lowercase();
        // An IPv6 address may be written without brackets; `name:port` is a name and a port.
        let written = if h.parse::<std::net::Ipv6Addr>().is_ok() {
            format!("[{h}]")
        } else {
            h.clone()
        };
        let name = &at.name;
        match crate::admission::host::parse_authority(&written) {
            Ok(a) if a.host == h || format!("[{}]", a.host) == h => {}
            Ok(a) => self.errors.push(fx.err(
                value_at,
                format!("route `{name}`: host `{h}` never matches: hosts are matched without port and trailing dot; write `{}`", a.host),
            )),
            Err(e) => self.errors.push(fx.err(
                value_at,
                format!("route `{name}`: `{h}` is not a host name ({e})"),
            )),
        }
        Some(h.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    fn index_path(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        host: Option<&str>,
        path: &Spanned<String>,
        methods: Option<Vec<String>>,
    ) {
        self.path_locations
            .push(fx.err(path.span().start, String::new()));
        // A pattern no normalised request can reach (warned about below) stays out of the
        // case-folded table too: there its lower-cased form could match, and refuse requests
        // that another route serves.
        let reachable = unreachable_path(path.get_ref()).is_none();
        if let Err(m) =
            self.index
                .insert(host, path.get_ref(), methods, self.routes.len(), reachable)
        {
            self.errors
                .push(fx.err(path.span().start, format!("route `{}`: {m}", at.name)));
        }
    }

    fn route_warnings(
        &mut self,
        fx: &FileCx<'_>,
        at: &RouteAt,
        auth: AuthMode,
        path: &Spanned<String>,
    ) {
        let name = &at.name;
        if auth == AuthMode::None && self.reads.claims {
            self.warnings.push(fx.err(
                at.start,
                format!("route `{name}` has `auth = \"none\"` but reads `claims` or `token`, which are always empty there"),
            ));
        }
        if let Some(w) = unreachable_path(path.get_ref()) {
            self.warnings.push(fx.err(
                path.span().start,
                format!("route `{name}` can never match: {w}"),
            ));
        }
        // Every parameter may be one the rules read: what admission refuses for a read
        // parameter (see `admission::reads`) it refuses for all, cookies and form bodies too,
        // which a browser sends on every request.
        if self.reads.request.query.any {
            self.warnings.push(fx.err(
                at.start,
                format!("route `{name}` reads the query whole (not parameter by parameter): any repeated parameter, any cookie and any form, multipart or JSON body is refused on it (400 `ambiguous_query`), as some upstreams read those as query parameters; read the parameters by name"),
            ));
        }
    }
}

/// The route being loaded, for messages: its name and where it starts.
struct RouteAt {
    name: String,
    start: usize,
}

/// A cycle among attributes that read each other (`a -> b -> a`), with where its first
/// attribute is written; `deps` is (attribute, attributes it reads, where it is written).
fn attr_cycle(deps: &[(String, Vec<String>, usize)]) -> Option<(Vec<String>, usize)> {
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
    deps.iter().find_map(|(name, _, start)| {
        visit(name, deps, &mut Vec::new(), &mut done).map(|c| (c, *start))
    })
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

/// Not shown to protect as much: weaker authentication, or the same with fewer enforced rules,
/// or as many when the stronger route enforces any (the rules of two routes cannot be compared:
/// a catch-all's one `deny_if` is not an admin route's one `allow_if`).
fn less_protected(weak: &Route, strong: &Route) -> bool {
    let (w, s) = (weak.protection(), strong.protection());
    w < s || (w == s && s.1 > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> LoadContext {
        LoadContext {
            issuers: vec!["test".into()],
            upstreams: vec!["main".into()],
            default_upstream: Some("main".into()),
            sources: BTreeMap::from([("balance".to_string(), SourceReads::default())]),
            ..Default::default()
        }
    }

    fn load(files: &[(&str, &str)]) -> Result<PolicySet, Vec<String>> {
        let sources: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        PolicySet::from_sources(&sources, &ctx())
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    fn route(rule: &str) -> String {
        format!("[[route]]\nname = \"r\"\npath = \"/r\"\n[[route.rule]]\nname = \"x\"\n{rule}\n")
    }

    /// A route with one `[[route.limit]]` named `name`, with `window`.
    fn limited(name: &str, window: &str) -> Vec<String> {
        let src = format!(
            "[[route]]\nname = \"r\"\npath = \"/r\"\nauth = \"none\"\n[[route.limit]]\nname = \"{name}\"\nkey = \"request.client_ip\"\nlimit = \"10\"\nwindow = \"{window}\"\n"
        );
        match load(&[("l.toml", &src)]) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn limit_names_are_header_tokens_and_windows_have_units() {
        assert_eq!(limited("api-rate.v1_2", "1h"), Vec::<String>::new());
        for bad in ["two words", "quo\\\"te", ""] {
            let e = limited(bad, "1h");
            assert!(
                e.len() == 1 && e[0].starts_with("l.toml:6:"),
                "{bad}: {e:?}"
            );
        }
        let e = limited("ok", "1 week");
        assert!(e.len() == 1 && e[0].contains("window"), "{e:?}");
    }

    fn errors(rule: &str) -> Vec<String> {
        match load(&[("a.toml", &route(rule))]) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    #[test]
    fn a_boundary_served_by_a_route_with_other_rules_is_warned_about() {
        let src = "[[route]]\nname = \"admin\"\npath = \"/admin\"\nauth = \"none\"\n[[route.rule]]\nname = \"internal\"\nallow_if = \"request.client_ip == '10.0.0.1'\"\n\n[[route]]\nname = \"rest\"\npath = \"/*\"\nauth = \"none\"\n[[route.rule]]\nname = \"not-blocked\"\ndeny_if = \"request.client_ip == '10.9.9.9'\"\n";
        let set = load(&[("b.toml", src)]).unwrap();
        let warned: Vec<String> = set.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warned
                .iter()
                .any(|w| w.contains("route `rest` serves `GET /admin/`")),
            "{warned:?}"
        );
        // Two open routes without rules protect alike: nothing to say.
        let src = "[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\n\n[[route]]\nname = \"rest\"\npath = \"/*\"\nauth = \"none\"\n";
        assert!(load(&[("b.toml", src)]).unwrap().warnings.is_empty());
    }

    #[test]
    fn a_route_that_reads_the_query_whole_is_warned_about() {
        let warned = |rule: &str| -> Vec<String> {
            let set = load(&[("q.toml", &route(rule))]).unwrap();
            set.warnings.iter().map(|w| w.to_string()).collect()
        };
        for whole in [
            "allow_if = \"size(request.query) < 3\"",
            "allow_if = \"request.query[claims.param] == 'x'\"",
        ] {
            let w = warned(whole);
            assert!(
                w.iter()
                    .any(|w| w.starts_with("q.toml:1:") && w.contains("reads the query whole")),
                "{whole}: {w:?}"
            );
        }
        let by_name = warned("allow_if = \"!has(request.query.q) || request.query.q == 'x'\"");
        assert!(by_name.is_empty(), "{by_name:?}");
    }

    #[test]
    fn routes_one_by_letter_case_do_not_load() {
        let two = |a: &str, b: &str| {
            load(&[(
                "c.toml",
                &format!(
                    "[[route]]\nname = \"a\"\npath = \"{a}\"\nauth = \"none\"\n\n[[route]]\nname = \"b\"\npath = \"{b}\"\nauth = \"none\"\n"
                ),
            )])
            .err()
            .unwrap_or_default()
        };
        for (a, b) in [("/admin", "/ADMIN"), ("/files/{id}", "/Files/*")] {
            let e = two(a, b);
            assert!(
                e.len() == 1 && e[0].starts_with("c.toml:8:") && e[0].contains("letter case"),
                "{a} {b}: {e:?}"
            );
        }
        // One spelling each, or patterns that stay apart: loaded.
        assert!(two("/Files/{id}", "/reports/*").is_empty());
        assert!(two("/pkg.Orders/{*m}", "/*").is_empty());
    }

    #[test]
    fn names_inside_string_literals_are_text() {
        assert_eq!(
            errors(r#"allow_if = "claims.note != 'see ext.docs and attr.tier'""#),
            Vec::<String>::new()
        );
    }

    #[test]
    fn undeclared_members_are_located_errors() {
        let e = errors(r#"allow_if = "attr.tier == 'gold'""#);
        assert!(e[0].starts_with("a.toml:6:"), "{e:?}");
        assert!(e[0].contains("unknown attribute `attr.tier`"), "{e:?}");
        let e = errors(r#"allow_if = "ext.ledger.ok""#);
        assert!(e[0].contains("unknown source `ext.ledger`"), "{e:?}");
        let e = errors(r#"allow_if = "size(ext) > 0""#);
        assert!(e[0].contains("read `ext` by name"), "{e:?}");
        let e = errors(r#"allow_if = "claimz.a""#);
        assert!(e[0].contains("unknown variable `claimz`"), "{e:?}");
    }

    #[test]
    fn a_declared_source_is_fetched_for_the_route() {
        let set = load(&[("a.toml", &route(r#"allow_if = "has(ext.balance)""#))]).unwrap();
        assert_eq!(set.routes[0].sources, [Arc::from("balance")]);
    }

    #[test]
    fn every_error_of_every_file_is_reported_in_one_pass() {
        let e = load(&[
            ("a.toml", &route(r#"allow_if = "claims.a ==""#)),
            (
                "b.toml",
                "[[route]]\nname = \"r\"\npath = \"/b\"\nupstream = \"nowhere\"\n",
            ),
        ])
        .unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.starts_with("a.toml") && m.contains("syntax error")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("b.toml") && m.contains("route name `r` is already used")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("b.toml") && m.contains("unknown upstream `nowhere`")),
            "{e:?}"
        );
    }

    #[test]
    fn attributes_that_read_each_other_in_a_cycle_do_not_load() {
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.attr]\na = \"attr.b + 1\"\nb = \"attr.a + 1\"\n";
        let e = load(&[("a.toml", src)]).unwrap_err();
        assert!(e[0].contains("cycle: a -> b -> a"), "{e:?}");
    }

    #[test]
    fn a_host_that_never_matches_is_an_error_at_its_value() {
        let src =
            "[[route]]\nname = \"r\"\nhost = \"admin.test:8080\"\npath = \"/r\"\nauth = \"none\"\n";
        let e = load(&[("a.toml", src)]).unwrap_err();
        assert!(
            e[0].starts_with("a.toml:3:9: route `r`: host `admin.test:8080` never matches"),
            "{e:?}"
        );
    }

    #[test]
    fn issuers_on_an_open_route_are_an_error() {
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\nauth = \"none\"\nissuers = [\"typo\"]\n";
        let e = load(&[("a.toml", src)]).unwrap_err();
        assert!(
            e[0].starts_with("a.toml:5:12: `issuers` on an `auth = \"none\"` route is never used"),
            "{e:?}"
        );
    }

    #[test]
    fn a_field_that_does_not_exist_is_an_error_at_its_name() {
        let src = "[[route]]\nname = \"r\"\npath = \"/x/{id}\"\n[[route.rule]]\nname = \"a\"\nallow_if = \"request.ip == '1' || request.params.idd == 'x' || token.iss == 'y'\"\n";
        let e = load(&[("a.toml", src)]).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        // Line 6 is `allow_if = "request.ip ...`: `ip` starts at column 21.
        assert!(
            e[0].starts_with("a.toml:6:21: rule `a`: `request` has no field `ip`"),
            "{e:?}"
        );
        assert!(
            e[1].contains("`request.params` has no `idd` (the route's path has id)"),
            "{e:?}"
        );
        assert!(e[2].contains("`token` has no field `iss`"), "{e:?}");
    }

    #[test]
    fn a_body_limit_needs_a_rule_that_reads_the_body() {
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\nbody_limit = 10\n";
        let e = load(&[("a.toml", src)]).unwrap_err();
        assert!(e[0].contains("no expression reads `body`"), "{e:?}");
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\nbody_limit = 10\n[[route.rule]]\nname = \"x\"\nallow_if = \"body.n < 3\"\n";
        let set = load(&[("a.toml", src)]).unwrap();
        assert!(set.routes[0].reads_body);
        assert_eq!(set.routes[0].body_limit, 10);
        // A query parameter read: the body is read for its field names.
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\nbody_limit = 10\n[[route.rule]]\nname = \"x\"\nallow_if = \"request.query.n == '3'\"\n";
        let set = load(&[("a.toml", src)]).unwrap();
        assert!(!set.routes[0].reads_body);
        assert_eq!(set.routes[0].body_limit, 10);
    }

    #[test]
    fn expressions_of_the_token_alone_are_remembered_per_token() {
        let src = "[[route]]\nname = \"r\"\npath = \"/r\"\n[[route.rule]]\nname = \"a\"\nallow_if = \"claims.n > 1\"\n[[route.rule]]\nname = \"b\"\nallow_if = \"request.path == '/r'\"\n";
        let set = load(&[("a.toml", src)]).unwrap();
        let memo: Vec<_> = set.routes[0]
            .rules
            .iter()
            .map(|r| match &r.condition {
                Condition::AllowIf(e) | Condition::DenyIf(e) => e.memo,
            })
            .collect();
        assert_eq!(memo, [Some(0), None]);
        assert_eq!(set.memo_slots, 1);
    }
}
