//! Policy cases (`claimgate test` files): a request (claims or a token, a fixed `now`, a country, mocked
//! sources) and the decision expected, run offline through [`crate::explain`].
//!
//! ```toml
//! [[case]]
//! name = "a player without credit is refused"
//! path = "/api/game/play"              # method defaults to GET
//! claims = { sub = "bob" }             # or token = "eyJ..." (verified)
//! sources = { balance = { balance = 0 } }
//! expect = { status = 402, rule = "has-balance" }
//! ```

use crate::engine::Snapshot;
use crate::explain::{
    check_names, explain, parse_header, EvalRequest, Explanation, Mock, TokenInput, Verdict,
};
use crate::location::SourceError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    case: Vec<Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The JSON body, written as TOML (a table, an array, a string ...).
    #[serde(default)]
    body: Option<toml::Value>,
    /// The body's bytes exactly as written, for bodies TOML cannot express (duplicate keys,
    /// numbers out of range, text that is not JSON).
    #[serde(default)]
    body_text: Option<String>,
    #[serde(default)]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    token: Option<String>,
    /// RFC 3339; default: the time the test runs.
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    client_ip: Option<IpAddr>,
    #[serde(default)]
    country: Option<String>,
    /// Mocked JSON answers of external sources, by name.
    #[serde(default)]
    sources: BTreeMap<String, serde_json::Value>,
    /// Sources that answer 404.
    #[serde(default)]
    not_found: Vec<String>,
    /// Sources that are down (also every source without a mock).
    #[serde(default)]
    unavailable: Vec<String>,
    /// The request came over TLS (`request.tls`), with a client certificate if given.
    #[serde(default)]
    tls: Option<CaseTls>,
    /// Units of each limit (by name) already used in its window.
    #[serde(default)]
    limits_used: BTreeMap<String, f64>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseTls {
    /// A PEM client certificate, relative to the test file.
    #[serde(default)]
    client_certificate: Option<PathBuf>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow` or `deny`.
    #[serde(default)]
    decision: Option<String>,
    /// The denial's status, or 200 for an allowed request.
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    /// Headers the upstream receives from the gateway; `""` means not sent.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Rules in audit mode that would deny, in order.
    #[serde(default)]
    audit_denials: Option<Vec<String>>,
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseReport {
    pub file: PathBuf,
    pub name: String,
    /// `file:line:col` of the case.
    pub location: String,
    /// Each difference, as `what: expected X, got Y`; empty when the case passes.
    pub differences: Vec<String>,
    pub explanation: Explanation,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Files given as files or directories (every `*.toml` inside, in name order).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("cannot read `{}`: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml") && f.is_file())
                .collect();
            inside.sort();
            files.extend(inside);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(format!("`{}` does not exist", p.display()));
        }
    }
    Ok(files)
}

/// What running one file gave: a report for every case that could run, and an error (with its
/// location) for every case that could not. One broken case never hides the others.
#[derive(Debug, Default)]
pub struct FileRun {
    pub reports: Vec<CaseReport>,
    pub errors: Vec<SourceError>,
}

/// Runs every case of `file`. A file that cannot be read or parsed is an error.
pub fn run_file(snapshot: &Snapshot, file: &Path) -> Result<FileRun, Vec<SourceError>> {
    let src = std::fs::read_to_string(file)
        .map_err(|e| vec![SourceError::whole_file(file, format!("cannot read: {e}"))])?;
    let parsed: TestFile =
        toml::from_str(&src).map_err(|e| vec![SourceError::from_toml(file, &src, &e)])?;
    if parsed.case.is_empty() {
        return Err(vec![SourceError::whole_file(
            file,
            "no [[case]] in the file",
        )]);
    }
    let mut errors = Vec::new();
    let mut reports = Vec::new();
    for spanned in &parsed.case {
        let at = |msg: String| SourceError::at_offset(file, &src, spanned.span().start, msg);
        let case = spanned.get_ref();
        match prepare(snapshot, case, file) {
            Ok((req, token, mocks, now)) => {
                let explanation = explain(snapshot, &req, &token, &mocks, now);
                let loc = at(String::new());
                reports.push(CaseReport {
                    file: file.to_path_buf(),
                    name: case.name.clone(),
                    location: format!("{}:{}:{}", loc.file.display(), loc.line, loc.column),
                    differences: compare(&case.expect, &explanation),
                    explanation,
                });
            }
            Err(msg) => errors.push(at(format!("case `{}`: {msg}", case.name))),
        }
    }
    Ok(FileRun { reports, errors })
}

type Prepared = (
    EvalRequest,
    TokenInput,
    BTreeMap<String, Mock>,
    std::time::SystemTime,
);

fn prepare(snapshot: &Snapshot, case: &Case, file: &Path) -> Result<Prepared, String> {
    let tls = match &case.tls {
        None => None,
        Some(t) => {
            let dir = file.parent().unwrap_or(Path::new("."));
            let pem = t.client_certificate.as_ref().map(|p| dir.join(p));
            Some(crate::tls::described_connection(
                pem.as_deref(),
                snapshot.tls.as_deref(),
            )?)
        }
    };
    let mut req = EvalRequest {
        tls,
        limits_used: case.limits_used.clone(),
        method: case.method.clone(),
        host: case.host.clone(),
        target: case.path.clone(),
        client_ip: case.client_ip,
        country: case.country.clone(),
        ..Default::default()
    };
    for (n, v) in &case.headers {
        let (n, v) = parse_header(&format!("{n}: {v}"))?;
        req.headers.append(n, v);
    }
    match (&case.body, &case.body_text) {
        (Some(_), Some(_)) => return Err("give `body` or `body_text`, not both".into()),
        (Some(b), None) => {
            let json = serde_json::to_vec(b).map_err(|e| format!("body: {e}"))?;
            req.body = Some(json);
            // Sent as JSON: typed so unless the case types it. `body_text` is sent as written.
            if !req.headers.contains_key(http::header::CONTENT_TYPE) {
                req.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
        }
        (None, Some(t)) => req.body = Some(t.clone().into_bytes()),
        (None, None) => {}
    }
    let token = match (&case.token, &case.claims) {
        (Some(_), Some(_)) => return Err("give `token` or `claims`, not both".into()),
        (Some(t), None) => TokenInput::Token(t.clone()),
        (None, Some(c)) => TokenInput::Claims {
            claims: c.clone(),
            issuer: case.issuer.clone(),
        },
        (None, None) => TokenInput::FromHeaders,
    };
    let mut mocks = BTreeMap::new();
    let named = case
        .sources
        .iter()
        .map(|(n, v)| (n, Mock::Json(v.clone())))
        .chain(case.not_found.iter().map(|n| (n, Mock::NotFound)))
        .chain(case.unavailable.iter().map(|n| (n, Mock::Unavailable)));
    for (name, mock) in named {
        mocks.insert(name.clone(), mock);
    }
    check_names(snapshot, &token, &mocks, &case.limits_used)?;
    let now = match &case.now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("`now` is not RFC 3339 ({e})"))?
            .into(),
        None => std::time::SystemTime::now(),
    };
    let e = &case.expect;
    let expects_nothing = e.decision.is_none()
        && e.status.is_none()
        && e.reason.is_none()
        && e.route.is_none()
        && e.rule.is_none()
        && e.message.is_none()
        && e.upstream.is_none()
        && e.headers.is_empty()
        && e.audit_denials.is_none();
    if expects_nothing {
        return Err("`expect` names nothing to check".into());
    }
    if let Some(d) = &case.expect.decision {
        if Verdict::parse(d).is_none() {
            return Err(format!("expect.decision is `allow` or `deny`, not `{d}`"));
        }
    }
    Ok((req, token, mocks, now))
}

fn compare(want: &Expect, got: &Explanation) -> Vec<String> {
    let s = &got.summary;
    let mut diffs = Vec::new();
    if let Some(w) = want.status {
        if w != s.status {
            diffs.push(format!("status: expected {w}, got {}", s.status));
        }
    }
    if let Some(w) = want.decision.as_deref().and_then(Verdict::parse) {
        if w != s.decision {
            diffs.push(format!(
                "decision: expected {:?}, got {:?}",
                w.name(),
                s.decision.name()
            ));
        }
    }
    let mut check = |what: &str, want: Option<String>, got: Option<String>| {
        if let Some(w) = want {
            if Some(&w) != got.as_ref() {
                let got = got.unwrap_or_else(|| "(none)".into());
                diffs.push(format!("{what}: expected {w:?}, got {got:?}"));
            }
        }
    };

    check("reason", want.reason.clone(), s.reason.map(str::to_string));
    check("route", want.route.clone(), s.route.clone());
    check("rule", want.rule.clone(), s.rule.clone());
    check("message", want.message.clone(), s.message.clone());
    check("upstream", want.upstream.clone(), s.upstream.clone());
    for (h, v) in &want.headers {
        let got_v = got
            .trace
            .upstream_headers
            .get(&h.to_ascii_lowercase())
            .cloned();
        let want_v = (!v.is_empty()).then(|| v.clone());
        if got_v != want_v {
            diffs.push(format!(
                "header {h}: expected {}, got {}",
                want_v.map_or("not sent".into(), |v| format!("{v:?}")),
                got_v.map_or("not sent".into(), |v| format!("{v:?}")),
            ));
        }
    }
    if let Some(a) = &want.audit_denials {
        if *a != s.audit_denials {
            diffs.push(format!(
                "audit_denials: expected {a:?}, got {:?}",
                s.audit_denials
            ));
        }
    }
    diffs
}
