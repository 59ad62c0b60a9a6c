//! `rules/*.toml` -> a compiled, validated [`PolicySet`]. Every error names file, line and column,
//! and all of them are reported in one pass.

use super::cel::{CelRuntime, VARIABLES};
use super::route::RouteIndex;
use super::{Condition, Forward, Message, Mode, Route, Rule};
use crate::config::AuthMode;
use crate::location::{offset_in_string_value, SourceError};
use ::cel::Program;
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
        };
        for (path, src) in sources {
            loader.file(path, src);
        }
        if !loader.errors.is_empty() {
            return Err(loader.errors);
        }
        Ok(PolicySet {
            routes: loader.routes,
            index: loader.index,
            cel: loader.cel,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
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

    fn compile(&mut self, fx: &FileCx<'_>, expr: &Spanned<String>, what: &str) -> Option<Program> {
        let start = expr.span().start;
        match self.cel.compile(expr.get_ref()) {
            Ok(p) => {
                let refs = p.references();
                let mut unknown: Vec<&str> = refs
                    .variables()
                    .into_iter()
                    .filter(|v| !VARIABLES.contains(v))
                    .collect();
                unknown.sort_unstable();
                if let Some(v) = unknown.first() {
                    self.errors.push(fx.err(
                        start,
                        format!(
                            "{what}: unknown variable `{v}` (known: {})",
                            VARIABLES.join(", ")
                        ),
                    ));
                    return None;
                }
                Some(p)
            }
            Err(errs) => {
                for e in errs.errors {
                    let (line, col) = (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize);
                    let off = offset_in_string_value(fx.src, start, line, col);
                    self.errors
                        .push(fx.err(off, format!("{what}: CEL syntax error: {}", e.msg)));
                }
                None
            }
        }
    }

    fn route(&mut self, fx: &FileCx<'_>, raw: Spanned<RawRoute>) -> Option<Route> {
        let before = self.errors.len();
        let route_start = raw.span().start;
        let raw = raw.into_inner();
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
            None if self.ctx.upstreams.len() == 1 => Arc::from(self.ctx.upstreams[0].as_str()),
            None => {
                self.errors.push(fx.err(
                    route_start,
                    format!(
                        "route `{name}` needs `upstream`: gateway.toml has {} upstreams",
                        self.ctx.upstreams.len()
                    ),
                ));
                Arc::from("")
            }
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
        let strip: Arc<[HeaderName]> = forward.iter().map(|f| f.header.clone()).collect();

        let host = raw.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Err(m) = self.index.insert(
            host.as_deref(),
            raw.path.get_ref(),
            methods.clone(),
            self.routes.len(),
        ) {
            self.errors
                .push(fx.err(raw.path.span().start, format!("route `{name}`: {m}")));
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
            rules,
            forward,
            strip,
        })
    }
}
