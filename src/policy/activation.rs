//! The variables of one evaluation: the request facts, the token, the body, sources and
//! attributes as CEL reads them. Each value is built on first read and at most once, so a route
//! whose rules read only `claims` never pays for converting headers; expressions that read only
//! the token are remembered with the (cached) token.

use super::cel::{json_to_val, string_map, string_val_map, to_forward_text, to_val, CelRuntime};
use super::variable::Variable;
use super::{native, AttrKind, Expr, Route};
use crate::auth::VerifiedToken;
use crate::facts::RequestFacts;
use crate::geo::GeoResolver;
use crate::request_id::REQUEST_ID;
use crate::upstream_edits::StripList;
use cel::common::traits::Indexer;
use cel::common::types::{self, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, ExecutionError, Program, Value};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

static NO_CLAIMS: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
    std::sync::LazyLock::new(serde_json::Map::new);

/// The variables of one evaluation, resolved lazily and at most once.
pub struct Activation<'a> {
    req: &'a RequestFacts<'a>,
    params: &'a [(String, String)],
    token: Option<&'a VerifiedToken>,
    now: DateTime<Utc>,
    route: Option<&'a Route>,
    cel: &'a CelRuntime,
    body: Option<&'a serde_json::Value>,
    geo: &'a GeoResolver,
    ext: Option<&'a Value>,
    memo_slots: usize,
    client_ip: OnceLock<Option<IpAddr>>,
    geo_val: OnceLock<Box<dyn Val>>,
    claims: OnceLock<Box<dyn Val>>,
    token_val: OnceLock<Box<dyn Val>>,
    /// `request.<field>`, each built on first read.
    request_fields: [OnceLock<Box<dyn Val>>; REQUEST_FIELDS.len()],
    now_val: OnceLock<Box<dyn Val>>,
    body_val: OnceLock<Box<dyn Val>>,
    ext_val: OnceLock<Box<dyn Val>>,
    attrs: Vec<OnceLock<Result<Box<dyn Val>, String>>>,
}

/// What one evaluation is about.
pub struct Inputs<'a> {
    pub req: &'a RequestFacts<'a>,
    pub params: &'a [(String, String)],
    pub token: Option<&'a VerifiedToken>,
    pub now: DateTime<Utc>,
    pub route: Option<&'a Route>,
    pub cel: &'a CelRuntime,
    /// The parsed JSON body, on routes whose expressions read it.
    pub body: Option<&'a serde_json::Value>,
    pub geo: &'a GeoResolver,
    /// External source values by name (a CEL map), on routes that read `ext`.
    pub ext: Option<&'a Value>,
    /// The policy set's count of token-only expressions (see [`Expr`]).
    pub memo_slots: usize,
}

impl<'a> Activation<'a> {
    pub fn new(i: Inputs<'a>) -> Self {
        let n_attrs = i.route.map(|r| r.attrs.len()).unwrap_or(0);
        Activation {
            req: i.req,
            params: i.params,
            token: i.token,
            now: i.now,
            route: i.route,
            cel: i.cel,
            body: i.body,
            geo: i.geo,
            ext: i.ext,
            memo_slots: i.memo_slots,
            client_ip: OnceLock::new(),
            geo_val: OnceLock::new(),
            claims: OnceLock::new(),
            token_val: OnceLock::new(),
            request_fields: Default::default(),
            now_val: OnceLock::new(),
            body_val: OnceLock::new(),
            ext_val: OnceLock::new(),
            attrs: (0..n_attrs).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Evaluates `expr`; one that reads only the token is evaluated once per token.
    pub fn execute(&self, expr: &Expr) -> Result<Value, ExecutionError> {
        match (expr.memo, self.token) {
            (Some(slot), Some(t)) => t.memo(slot, self.memo_slots, || self.evaluate(expr)),
            _ => self.evaluate(expr),
        }
    }

    /// The value of a forwarded header computed by `expr` (`None`: not sent); one that reads
    /// only the token is computed once per token, header value included.
    pub fn header_value(&self, expr: &Expr) -> Result<Option<HeaderValue>, String> {
        let run = || {
            let v = self.evaluate(expr).map_err(|e| e.to_string())?;
            match to_forward_text(&v)? {
                None => Ok(None),
                Some(text) => HeaderValue::try_from(text)
                    .map(Some)
                    .map_err(|_| "not a valid header value".to_string()),
            }
        };
        match (expr.memo, self.token) {
            (Some(slot), Some(t)) => t.header_memo(slot, self.memo_slots, run),
            _ => run(),
        }
    }

    /// `expr`'s native plan when it answers, else the interpreter.
    fn evaluate(&self, expr: &Expr) -> Result<Value, ExecutionError> {
        match expr
            .native
            .as_ref()
            .and_then(|p| p.eval(&self.native_facts()))
        {
            Some(v) => Ok(v),
            None => self.execute_program(&expr.program),
        }
    }

    fn native_facts(&self) -> native::Facts<'_> {
        native::Facts {
            // Without a token the interpreter's `claims` is an empty map; so is this.
            claims: self.token.map_or(&NO_CLAIMS, |t| &t.claims),
            params: self.params,
            method: self.req.method,
            host: self.req.host,
            path: self.req.path,
            headers: self.req.headers,
            hidden: self.req.hidden,
            request_id: self.req.request_id,
        }
    }

    /// Runs `program` with this activation's variables.
    pub fn execute_program(&self, program: &Program) -> Result<Value, ExecutionError> {
        let root: &Context<'_, '_> = self.cel.root();
        let mut ctx = root.new_inner_scope();
        ctx.set_variable_resolver(self);
        program.execute(&ctx)
    }

    fn claims(&self) -> &dyn Val {
        match self.token {
            Some(t) => t.cel_claims(),
            None => self
                .claims
                .get_or_init(|| to_val(string_map(std::iter::empty::<(String, Value)>())))
                .as_ref(),
        }
    }

    fn token(&self) -> &dyn Val {
        self.token_val
            .get_or_init(|| {
                let v = match self.token {
                    Some(t) => string_map([
                        ("alg", Value::from(format!("{:?}", t.alg))),
                        ("kid", t.kid.clone().map(Value::from).unwrap_or(Value::Null)),
                        ("typ", t.typ.clone().map(Value::from).unwrap_or(Value::Null)),
                        ("issuer", Value::from(t.issuer.to_string())),
                    ]),
                    None => string_map(std::iter::empty::<(String, Value)>()),
                };
                to_val(v)
            })
            .as_ref()
    }

    /// The client's address, through trusted proxies.
    pub fn client_ip(&self) -> Option<IpAddr> {
        *self
            .client_ip
            .get_or_init(|| self.geo.client_ip(self.req.client_ip, self.req.headers))
    }

    /// One field of `request`, built on first read: a rule on `request.method` never pays
    /// for copying the headers.
    fn request_field(&self, name: &str) -> Option<&dyn Val> {
        let i = REQUEST_FIELDS.iter().position(|f| *f == name)?;
        let v = self.request_fields[i]
            .get_or_init(|| request_field(name, self.req, self.params, self.client_ip()));
        Some(v.as_ref())
    }

    fn geo(&self) -> &dyn Val {
        self.geo_val
            .get_or_init(|| {
                let loc = match self.req.location {
                    Some(l) => l.clone(),
                    None => self
                        .geo
                        .locate(self.req.client_ip, self.client_ip(), self.req.headers),
                };
                let v = |s: Option<String>| s.map(Value::from).unwrap_or(Value::Null);
                to_val(string_map([
                    ("country", v(loc.country)),
                    ("continent", v(loc.continent)),
                ]))
            })
            .as_ref()
    }

    fn now(&self) -> &dyn Val {
        self.now_val
            .get_or_init(|| to_val(Value::Timestamp(self.now.fixed_offset())))
            .as_ref()
    }

    fn body(&self) -> &dyn Val {
        self.body_val
            .get_or_init(|| match self.body {
                Some(b) => json_to_val(b),
                None => to_val(Value::Null),
            })
            .as_ref()
    }

    fn ext(&self) -> &dyn Val {
        self.ext_val
            .get_or_init(|| {
                to_val(match self.ext {
                    Some(v) => v.clone(),
                    None => string_map(std::iter::empty::<(String, Value)>()),
                })
            })
            .as_ref()
    }

    /// The derived attributes computed so far (static ones always), as JSON; an attribute
    /// whose expression failed shows its error.
    pub fn attr_values(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let Some(route) = self.route else {
            return Default::default();
        };
        let json = |v: &dyn Val| {
            Value::try_from(v)
                .ok()
                .and_then(|v| v.json().ok())
                .unwrap_or(serde_json::Value::Null)
        };
        route
            .attrs
            .iter()
            .zip(&self.attrs)
            .filter_map(|(attr, slot)| {
                let v = match (&attr.kind, slot.get()) {
                    (AttrKind::Static(v), _) => json(v.as_ref()),
                    (_, Some(Ok(v))) => json(v.as_ref()),
                    (_, Some(Err(e))) => serde_json::json!({ "error": e }),
                    (_, None) => return None,
                };
                Some((attr.name.to_string(), v))
            })
            .collect()
    }

    /// The value of derived attribute `name`, computed on first use.
    fn attr(&self, name: &str) -> Result<&dyn Val, ExecutionError> {
        let route = self
            .route
            .ok_or_else(|| ExecutionError::no_such_key(name))?;
        let i = route
            .attr_index(name)
            .ok_or_else(|| ExecutionError::no_such_key(name))?;
        let attr = &route.attrs[i];
        if let AttrKind::Static(v) = &attr.kind {
            return Ok(v.as_ref());
        }
        let slot = self.attrs[i].get_or_init(|| self.compute(&attr.kind).map(to_val));
        match slot {
            Ok(v) => Ok(v.as_ref()),
            Err(e) => Err(ExecutionError::function_error(
                &format!("attr.{name}"),
                e.clone(),
            )),
        }
    }

    fn compute(&self, kind: &AttrKind) -> Result<Value, String> {
        let run = |p: &Expr| self.execute(p).map_err(|e| e.to_string());
        match kind {
            AttrKind::Static(_) => Err("static attributes are not computed".into()),
            AttrKind::Dynamic(p) => run(p),
            AttrKind::Conditional { cases, otherwise } => {
                for (cond, then) in cases {
                    match run(cond)? {
                        Value::Bool(true) => return run(then),
                        Value::Bool(false) => {}
                        other => {
                            return Err(format!("a case condition gave {other:?}, not a bool"))
                        }
                    }
                }
                run(otherwise)
            }
        }
    }
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let lazy = |of| {
            Some(CowVal::Owned(
                Box::new(LazyMap { act: self, of }) as Box<dyn Val>
            ))
        };
        let v: &dyn Val = match Variable::parse(variable)? {
            Variable::Claims => self.claims(),
            Variable::Token => self.token(),
            Variable::Now => self.now(),
            Variable::Body => self.body(),
            Variable::Geo => self.geo(),
            Variable::Ext => self.ext(),
            Variable::Request => return lazy(Lazy::Request),
            Variable::Attr => return lazy(Lazy::Attr),
        };
        Some(CowVal::Borrowed(v))
    }
}

/// `attr` and `request` as CEL sees them: maps whose entries are computed when first read, so a
/// rule pays only for what it reads.
#[derive(Clone, Copy)]
struct LazyMap<'a> {
    act: &'a Activation<'a>,
    of: Lazy,
}

#[derive(Clone, Copy, Debug)]
enum Lazy {
    Attr,
    Request,
}

impl<'a> LazyMap<'a> {
    fn entry(&self, name: &str) -> Result<&'a dyn Val, ExecutionError> {
        match self.of {
            Lazy::Attr => self.act.attr(name),
            Lazy::Request => self
                .act
                .request_field(name)
                .ok_or_else(|| ExecutionError::no_such_key(name)),
        }
    }

    fn key(idx: &dyn Val) -> Result<&str, ExecutionError> {
        idx.downcast_ref::<CelString>()
            .map(|s| s.inner())
            .ok_or_else(|| ExecutionError::unsupported_key_type(Value::Null))
    }
}

impl std::fmt::Debug for LazyMap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.of)
    }
}

impl Val for LazyMap<'_> {
    fn get_type(&self) -> &types::Type {
        &types::MAP_TYPE
    }

    fn cel_type() -> &'static types::Type
    where
        Self: Sized,
    {
        &types::MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(*self)
    }
}

impl<'a> Indexer for LazyMap<'a> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Ok(CowVal::Borrowed(self.entry(Self::key(idx)?)?))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Ok(self.entry(Self::key(idx)?)?.clone_as_boxed())
    }
}

/// The fields of `request`.
const REQUEST_FIELDS: [&str; 8] = [
    "method",
    "host",
    "path",
    "query",
    "headers",
    "params",
    "client_ip",
    "tls",
];

fn request_field(
    name: &str,
    req: &RequestFacts<'_>,
    params: &[(String, String)],
    client_ip: Option<IpAddr>,
) -> Box<dyn Val> {
    let v = match name {
        "method" => Value::from(req.method),
        "host" => Value::from(req.host.unwrap_or("")),
        "path" => Value::from(req.path),
        "headers" => return headers_value(req.headers, req.hidden, req.request_id),
        "query" => return query_value(req.query),
        "params" => return string_val_map(params.iter().cloned()),
        "client_ip" => Value::String(Arc::new(
            client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        )),
        "tls" => tls_value(req.tls),
        _ => Value::Null,
    };
    to_val(v)
}

/// `request.tls`: `null` on a plain connection; otherwise `version`, `cipher` and
/// `client_certificate` (`null`, or `thumbprint` (RFC 8705 `x5t#S256`), `organization`,
/// `serial`, `subject`, `common_name`, and the alternative names `dns_names`, `uris`, `emails`,
/// `ips`). A certificate is there only once verified against `client_ca`.
fn tls_value(tls: Option<&crate::facts::TlsFacts>) -> Value {
    let Some(t) = tls else {
        return Value::Null;
    };
    let text = |s: Option<&String>| s.map_or(Value::Null, |s| Value::from(s.as_str()));
    let list = |v: &[String]| {
        Value::List(Arc::new(
            v.iter().map(|s| Value::from(s.as_str())).collect(),
        ))
    };
    let client = t.client.as_ref().map_or(Value::Null, |c| {
        let n = &c.names;
        string_map([
            ("thumbprint", Value::from(c.thumbprint.as_str())),
            ("organization", text(c.organization.as_ref())),
            ("serial", text(c.serial.as_ref())),
            ("subject", Value::from(n.subject.as_str())),
            ("common_name", text(n.common_name.as_ref())),
            ("dns_names", list(&n.dns_names)),
            ("uris", list(&n.uris)),
            ("emails", list(&n.emails)),
            ("ips", list(&n.ips)),
        ])
    });
    string_map([
        ("version", Value::from(t.version.as_ref())),
        ("cipher", Value::from(t.cipher.as_ref())),
        ("client_certificate", client),
    ])
}

fn headers_value(
    h: &HeaderMap,
    hidden: Option<&StripList>,
    request_id: Option<&str>,
) -> Box<dyn Val> {
    let mut headers: std::collections::HashMap<String, String> = Default::default();
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID.as_str().to_string(), id.to_string());
    }
    for (name, value) in h.iter() {
        if hidden.is_some_and(|s| s.contains(name.as_str()))
            || (request_id.is_some() && name == REQUEST_ID)
        {
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        // Cookie crumbs (an HTTP/2 client sends each cookie as its own field) are joined as
        // RFC 9113 §8.2.3 says; other fields as RFC 9110 §5.3 says.
        let separator = if name == http::header::COOKIE {
            "; "
        } else {
            ", "
        };
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(separator);
                v.push_str(&text);
            })
            .or_insert_with(|| text.into_owned());
    }
    string_val_map(headers)
}

fn query_value(q: Option<&str>) -> Box<dyn Val> {
    let mut query: std::collections::HashMap<String, String> = Default::default();
    if let Some(q) = q {
        // The first value of a repeated parameter wins, as in most frameworks.
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            query
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
    }
    string_val_map(query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Body;
    use crate::policy::{LoadContext, PolicySet};
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    struct Fixture {
        headers: HeaderMap,
        params: Vec<(String, String)>,
        token: VerifiedToken,
        cel: CelRuntime,
        geo: GeoResolver,
        body: serde_json::Value,
    }

    fn fixture() -> Fixture {
        let mut headers = HeaderMap::new();
        headers.append("x-role", HeaderValue::from_static("a"));
        headers.append("x-role", HeaderValue::from_static("b"));
        let claims = json!({"sub": "alice", "roles": ["admin"], "n": 3});
        Fixture {
            headers,
            params: vec![("id".into(), "42".into())],
            token: VerifiedToken::new(
                Arc::from("test"),
                Algorithm::HS256,
                Some("k1".into()),
                None,
                claims.as_object().cloned().unwrap_or_default(),
                i64::MAX,
            ),
            cel: CelRuntime::new(),
            geo: GeoResolver::default(),
            body: json!({"amount": 12.5}),
        }
    }

    fn check(
        f: &Fixture,
        route: Option<&Route>,
        with_token: bool,
        src: &str,
    ) -> Result<Value, String> {
        let req = RequestFacts {
            method: "POST",
            host: Some("api.test"),
            path: "/items/42",
            query: Some("q=first&q=second&x=%20y"),
            headers: &f.headers,
            hidden: None,
            request_id: None,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            body: Body::NotRead,
            location: None,
            tls: None,
        };
        let act = Activation::new(Inputs {
            req: &req,
            params: &f.params,
            token: with_token.then_some(&f.token),
            now: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            route,
            cel: &f.cel,
            body: Some(&f.body),
            geo: &f.geo,
            ext: None,
            memo_slots: 0,
        });
        let p = f.cel.compile(src).map_err(|e| e.to_string())?;
        act.execute_program(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn every_variable_resolves_to_the_request_it_describes() {
        let f = fixture();
        for src in [
            "claims.sub == 'alice' && 'admin' in claims.roles && claims.n == 3",
            "token.alg == 'HS256' && token.kid == 'k1' && token.issuer == 'test'",
            "request.method == 'POST' && request.host == 'api.test' && request.path == '/items/42'",
            "request.params.id == '42' && request.client_ip == '192.0.2.7'",
            // Repeated headers are joined; the first value of a repeated parameter wins.
            "request.headers['x-role'] == 'a, b' && request.query.q == 'first' && request.query.x == ' y'",
            "now == timestamp('2023-11-14T22:13:20Z')",
            "body.amount == 12.5",
            "size(ext) == 0",
            "geo.country == null",
        ] {
            assert_eq!(check(&f, None, true, src), Ok(Value::Bool(true)), "{src}");
        }
    }

    #[test]
    fn without_a_token_claims_and_token_are_empty_maps() {
        let f = fixture();
        assert_eq!(
            check(&f, None, false, "size(claims) == 0 && size(token) == 0"),
            Ok(Value::Bool(true))
        );
        assert!(check(&f, None, false, "claims.sub == 'alice'").is_err());
    }

    #[test]
    fn a_name_that_is_no_variable_does_not_resolve() {
        let f = fixture();
        assert!(check(&f, None, true, "claimz.sub == 'alice'").is_err());
    }

    #[test]
    fn attributes_are_computed_when_read_and_their_errors_kept() {
        let rules = r#"
[[route]]
name = "r"
path = "/items/{id}"
  [route.attr]
  tier = { cases = [{ if = "claims.n > 2", then = "'gold'" }], else = "'basic'" }
  broken = "claims.missing + 1"
  fixed = { value = 7 }
  [[route.rule]]
  name = "uses-attrs"
  allow_if = "attr.tier == 'gold' && attr.fixed == 7"
"#;
        let ctx = LoadContext {
            issuers: vec!["test".into()],
            upstreams: vec!["main".into()],
            default_upstream: Some("main".into()),
            ..Default::default()
        };
        let set = PolicySet::from_sources(&[("r.toml".into(), rules.into())], &ctx)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let f = fixture();
        let route = &set.routes[0];
        assert_eq!(
            check(
                &f,
                Some(route),
                true,
                "attr.tier == 'gold' && attr.fixed == 7"
            ),
            Ok(Value::Bool(true))
        );
        let err = check(&f, Some(route), true, "attr.broken == 1").unwrap_err();
        assert!(err.contains("attr.broken"), "{err}");
        assert!(check(&f, Some(route), true, "attr.nope == 1").is_err());
    }
}
