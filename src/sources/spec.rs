//! Compiled sources and the requests rendered from them. Pure: rendering needs only the
//! request's facts; fetching is the caller's business ([`super::fetch`] in the proxy, mocked
//! values in `claimgate eval` and `claimgate test`).

use super::settings::{FailMode, SourceConfig};
use super::template::{self, Escape, Template};
use crate::auth::claim_names::{ClaimNames, ClaimReads};
use crate::config::Config;
use crate::location::{line_col, offset_in_string_value, SourceError};
use crate::policy::activation::Activation;
use crate::policy::references::References;
use crate::policy::references::RequestReads;
use crate::policy::CelRuntime;
use crate::policy::Variable;
use ::cel::Value;
use http::{HeaderName, HeaderValue, Method};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// What a template hole may read: the request and its token, never other sources or derived
/// attributes (those may read sources themselves).
/// One source, ready to render requests.
#[derive(Debug)]
pub struct SourceSpec {
    pub name: Arc<str>,
    /// The configuration it was built from: a cache survives a reload only while this is equal.
    pub settings: SourceConfig,
    pub method: Method,
    url: Template,
    headers: Vec<(HeaderName, Template)>,
    body: Option<Template>,
    cache_key: Option<Template>,
    /// Whether a template reads `body`: the route must then buffer it.
    pub reads_body: bool,
    /// The request headers and query parameters the templates read: the routes that read the
    /// source read them.
    pub request_reads: RequestReads,
    pub timeout: Duration,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale: Duration,
    pub on_error: FailMode,
}

/// Every source of a configuration.
#[derive(Debug, Default)]
pub struct SourceSet {
    specs: Vec<Arc<SourceSpec>>,
    /// What the request templates read of `claims`.
    claim_reads: ClaimReads,
}

impl SourceSet {
    /// Compiles the `[sources]` of `config`; every error with its location. Templates run in
    /// the policy set's CEL context at request time; compiling needs only the language.
    pub fn compile(config: &Config) -> Result<SourceSet, Vec<SourceError>> {
        let cel = &CelRuntime::new();
        let mut errors = Vec::new();
        let mut specs = Vec::new();
        let mut claim_reads = ClaimReads::default();
        for (name, raw) in &config.raw.sources {
            let mut c = Compiler {
                config,
                cel,
                errors: &mut errors,
                claim_reads: &mut claim_reads,
                reads_body: false,
                request_reads: RequestReads::default(),
                what: format!("source `{name}`"),
            };
            if let Some(spec) = c.source(name, raw.get_ref()) {
                specs.push(Arc::new(spec));
            }
        }
        if errors.is_empty() {
            Ok(SourceSet { specs, claim_reads })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<SourceSpec>> {
        self.specs.iter().find(|s| &*s.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<SourceSpec>> {
        self.specs.iter()
    }

    /// The claims the request templates read.
    pub fn claims(&self) -> ClaimNames {
        self.claim_reads.names()
    }
}

struct Compiler<'a> {
    config: &'a Config,
    cel: &'a CelRuntime,
    errors: &'a mut Vec<SourceError>,
    claim_reads: &'a mut ClaimReads,
    reads_body: bool,
    request_reads: RequestReads,
    what: String,
}

impl Compiler<'_> {
    fn source(&mut self, name: &str, raw: &SourceConfig) -> Option<SourceSpec> {
        let before = self.errors.len();
        let url = self.template(&raw.url, "url");
        if !(raw.url.get_ref().starts_with("http://") || raw.url.get_ref().starts_with("https://"))
        {
            self.err(
                &raw.url,
                0,
                "`url` must start with http:// or https://".into(),
            );
        } else if let Some(t) = &url {
            // The endpoint is the operator's: a hole in the host (or before the path's first
            // `/`) would let a claim or a header choose the server the gateway calls.
            let prefix = t.prefix();
            let authority_written = prefix
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
            if !authority_written && prefix.len() < raw.url.get_ref().len() {
                self.err(
                    &raw.url,
                    prefix.len(),
                    "`url`: the scheme and host are written out, with the path's first `/`; a hole may stand only in the path or the query".into(),
                );
            }
        }
        let method = match raw.method.get_ref().to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            other => {
                self.err(
                    &raw.method,
                    0,
                    format!("`method` must be GET or POST, not `{other}`"),
                );
                Method::GET
            }
        };
        let mut headers = Vec::new();
        for (h, t) in &raw.headers {
            let name = match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    self.err(t, 0, format!("`{h}` is not a valid header name"));
                    continue;
                }
            };
            if let Some(t) = self.template(t, "header") {
                headers.push((name, t));
            }
        }
        let body = raw.body.as_ref().and_then(|b| self.template(b, "body"));
        if raw.body.is_some() && method == Method::GET {
            if let Some(b) = &raw.body {
                self.err(b, 0, "a `body` needs `method = \"POST\"`".into());
            }
        }
        let cache_key = raw
            .cache_key
            .as_ref()
            .and_then(|k| self.template(k, "cache_key"));
        if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
            self.whole(format!(
                "{}: `timeout_ms` must be between 1 and 60000",
                self.what
            ));
        }
        if raw.max_entries == 0 {
            self.whole(format!("{}: `max_entries` must be at least 1", self.what));
        }
        if !(400..=599).contains(&raw.error_status) {
            self.whole(format!(
                "{}: `error_status` must be a 4xx or 5xx status",
                self.what
            ));
        }
        if self.errors.len() > before {
            return None;
        }
        Some(SourceSpec {
            name: Arc::from(name),
            settings: raw.clone(),
            method,
            url: url?,
            headers,
            body,
            cache_key,
            reads_body: self.reads_body,
            request_reads: self.request_reads.clone(),
            timeout: Duration::from_millis(raw.timeout_ms),
            ttl: Duration::from_secs(raw.ttl_seconds),
            negative_ttl: Duration::from_secs(raw.negative_ttl_seconds),
            stale: Duration::from_secs(raw.stale_seconds),
            on_error: raw.on_error,
        })
    }

    fn whole(&mut self, msg: String) {
        self.errors
            .push(SourceError::whole_file(&self.config.path, msg));
    }

    /// An error at byte `offset` of the string value `at`.
    fn err(&mut self, at: &Spanned<String>, offset: usize, msg: String) {
        let (line, col) = line_col(at.get_ref(), offset);
        let file_offset = if at.span().is_empty() {
            0
        } else {
            offset_in_string_value(&self.config.source, at.span().start, line, col)
        };
        let msg = format!("{}: {msg}", self.what);
        self.errors
            .push(self.config.error_at(file_offset..file_offset, msg));
    }

    fn template(&mut self, t: &Spanned<String>, field: &str) -> Option<Template> {
        let pieces = match template::parse(t.get_ref()) {
            Ok(p) => p,
            Err((offset, msg)) => {
                self.err(t, offset, format!("`{field}`: {msg}"));
                return None;
            }
        };
        let mut programs = Vec::new();
        let mut ok = true;
        for piece in &pieces {
            let template::Piece::Hole { expr, offset } = piece else {
                continue;
            };
            match self.cel.compile(expr) {
                Ok(p) => {
                    let refs = References::of(p.expression());
                    let bad = refs
                        .variables
                        .iter()
                        .find(|v| !v.in_templates())
                        .map(|v| v.name().to_string())
                        .or_else(|| refs.unknown.keys().next().cloned());
                    if let Some(v) = bad {
                        self.err(
                            t,
                            *offset,
                            format!(
                                "`{field}`: a template may not read `{v}` (it may read {})",
                                Variable::list(Variable::in_templates)
                            ),
                        );
                        ok = false;
                    }
                    // The same call checks as conditions: a misspelt function never loads.
                    if let Some(e) = crate::policy::calls::check(p.expression(), self.cel)
                        .into_iter()
                        .next()
                    {
                        self.err(t, *offset, format!("`{field}`: {}", e.message));
                        ok = false;
                    }
                    if refs.reads(Variable::Body) {
                        self.reads_body = true;
                    }
                    self.request_reads.add(&refs.request);
                    self.claim_reads.add(&refs);
                    programs.push(p);
                }
                Err(errs) => {
                    let first = errs.errors.first().map(|e| e.msg.clone());
                    self.err(
                        t,
                        *offset,
                        format!("`{field}`: CEL syntax error: {}", first.unwrap_or_default()),
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| Template::new(pieces, programs))
    }
}

/// A request to a source, rendered for one gateway request.
#[derive(Debug, Clone)]
pub struct SourceRequest {
    pub spec: Arc<SourceSpec>,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    /// SHA-256 of the cache key: the whole rendered request unless `cache_key` is set.
    pub key: [u8; 32],
}

impl SourceSpec {
    /// Renders this source's request from the facts of one gateway request.
    pub fn render(self: &Arc<Self>, act: &Activation<'_>) -> Result<SourceRequest, String> {
        let url = self.url.render(act, Escape::Url)?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, t) in &self.headers {
            let text = t.render(act, Escape::None)?;
            let value = HeaderValue::from_str(&text)
                .map_err(|_| format!("header `{name}` is not valid header text"))?;
            headers.push((name.clone(), value));
        }
        let body = match &self.body {
            Some(t) => Some(json_body(t.render(act, Escape::Json)?)?),
            None => None,
        };
        let mut h = Sha256::new();
        // Length-prefixed, so no two different requests give the same byte stream.
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        match &self.cache_key {
            // Piece by piece: `{a}{b}` of ("ac", "me1") and ("acme", "1") are two keys.
            Some(k) => k.each_piece(act, Escape::None, |p| part(p.as_bytes()))?,
            None => {
                part(self.method.as_str().as_bytes());
                part(url.as_bytes());
                for (n, v) in &headers {
                    part(n.as_str().as_bytes());
                    part(v.as_bytes());
                }
                part(body.as_deref().unwrap_or("").as_bytes());
            }
        }
        Ok(SourceRequest {
            spec: self.clone(),
            url,
            headers,
            body,
            key: h.finalize().into(),
        })
    }
}

/// A rendered body, sent as `application/json`: it must be one JSON document without
/// duplicate keys (a hole outside a string, say a number the client made text, cannot add a
/// member the source would read over the operator's).
fn json_body(text: String) -> Result<String, String> {
    crate::strict_json::parse(text.as_bytes()).map_err(|e| {
        format!("the rendered body is not one JSON document without duplicate keys ({e:?})")
    })?;
    Ok(text)
}

/// What a source gave for one request, after the fetcher applied TTLs and `stale`.
#[derive(Debug, Clone)]
pub enum SourceValue {
    /// The JSON answer, as CEL sees it.
    Value(Value),
    /// The source answered 404 or 410: `ext.NAME` is `null`.
    NotFound,
    /// No usable answer: `closed` and `stale` deny, `open` leaves `ext.NAME` absent.
    Unavailable,
}
