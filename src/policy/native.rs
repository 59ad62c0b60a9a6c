//! Native evaluation of the commonest expression shapes, beside the CEL interpreter.
//!
//! Most request-dependent rules compare one request attribute with one claim or a literal
//! (`request.params.id == claims.account`, `request.method in ['GET', 'HEAD']`,
//! `request.path.startsWith('/admin')`). The interpreter pays for that with a child scope, a
//! CEL map built for `request.params`, hashed lookups and boxed values: most of a cached
//! decision's time. A [`Plan`] reads the same facts in place. The same holds for claim-only
//! rules and forwarded claims (`claims.sub`) when the token is not cached: each of them would
//! otherwise convert the claims to CEL and run the interpreter on every request.
//!
//! A plan answers only when the answer cannot differ from CEL's: both operands present and of
//! the same kind (string, int or bool). Anything else (a missing claim, a type mismatch, a
//! repeated header) is [`None`], and the caller asks the interpreter, which gives the same
//! value or the same error it always did. `&&` and `||` follow CEL: `false && x` is `false`
//! and `true || x` is `true` whatever `x` is.

use cel::common::ast::{operators, Expr, LiteralValue};
use cel::IdedExpr;
use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value as Json};

/// What a plan reads: the same facts the interpreter's variables are built from.
pub struct Facts<'a> {
    pub claims: &'a Map<String, Json>,
    pub params: &'a [(String, String)],
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// See [`crate::facts::RequestFacts::hidden`].
    pub hidden: Option<&'a crate::upstream_edits::StripList>,
    /// See [`crate::facts::RequestFacts::request_id`].
    pub request_id: Option<&'a str>,
}

/// An expression compiled to native steps: a condition, or a single attribute.
#[derive(Debug)]
pub struct Plan(Kind);

#[derive(Debug)]
enum Kind {
    Cond(Cond),
    Value(Operand),
}

impl Plan {
    /// The plan for `e`, when every part of it has a native form.
    pub fn of(e: &IdedExpr) -> Option<Plan> {
        match cond(e)? {
            // A bare attribute is a condition only when it is a bool; as a plan it gives its
            // value, whatever the kind, and the caller treats it as the interpreter's result.
            Cond::Is(o) => Some(Plan(Kind::Value(o))),
            c => Some(Plan(Kind::Cond(c))),
        }
    }

    /// The expression's value, or `None` when only the interpreter can tell.
    pub fn eval(&self, f: &Facts<'_>) -> Option<cel::Value> {
        match &self.0 {
            Kind::Cond(c) => c.eval(f).map(cel::Value::Bool),
            Kind::Value(o) => Some(match o.eval(f)? {
                V::Str(s) => cel::Value::String(std::sync::Arc::new(s.to_string())),
                V::Int(i) => cel::Value::Int(i),
                V::Bool(b) => cel::Value::Bool(b),
            }),
        }
    }
}

#[derive(Debug)]
enum Cond {
    Cmp(Cmp, Operand, Operand),
    In(Operand, List),
    /// `has(claims.a.b)`: the object at `claims.a` has a field `b`.
    Has(Box<[String]>, String),
    Str(StrTest, Operand, Operand),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    /// A bool-valued attribute used as the condition itself (`claims.email_verified`).
    Is(Operand),
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug)]
enum List {
    Literal(Box<[Lit]>),
    Claim(Box<[String]>),
}

#[derive(Debug)]
enum Operand {
    Lit(Lit),
    Claim(Box<[String]>),
    Param(String),
    Method,
    Host,
    Path,
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A value read during evaluation, borrowed from the facts or the plan.
#[derive(Clone, Copy, PartialEq)]
enum V<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

fn cond(e: &IdedExpr) -> Option<Cond> {
    if let Some(o) = operand(e) {
        return match o {
            // A literal condition is rare and CEL's to answer.
            Operand::Lit(_) => None,
            o => Some(Cond::Is(o)),
        };
    }
    match &e.expr {
        Expr::Call(c) => {
            let two = || match c.args.as_slice() {
                [a, b] if c.target.is_none() => Some((a, b)),
                _ => None,
            };
            let cmp = |op| two().and_then(|(a, b)| Some(Cond::Cmp(op, operand(a)?, operand(b)?)));
            match c.func_name.as_str() {
                operators::EQUALS => cmp(Cmp::Eq),
                operators::NOT_EQUALS => cmp(Cmp::Ne),
                operators::LESS => cmp(Cmp::Lt),
                operators::LESS_EQUALS => cmp(Cmp::Le),
                operators::GREATER => cmp(Cmp::Gt),
                operators::GREATER_EQUALS => cmp(Cmp::Ge),
                operators::IN => {
                    let (a, b) = two()?;
                    Some(Cond::In(operand(a)?, list(b)?))
                }
                operators::LOGICAL_AND => {
                    let (a, b) = two()?;
                    Some(Cond::And(Box::new(cond(a)?), Box::new(cond(b)?)))
                }
                operators::LOGICAL_OR => {
                    let (a, b) = two()?;
                    Some(Cond::Or(Box::new(cond(a)?), Box::new(cond(b)?)))
                }
                operators::LOGICAL_NOT => match c.args.as_slice() {
                    [a] if c.target.is_none() => Some(Cond::Not(Box::new(cond(a)?))),
                    _ => None,
                },
                name @ ("startsWith" | "endsWith" | "contains") => {
                    let test = match name {
                        "startsWith" => StrTest::StartsWith,
                        "endsWith" => StrTest::EndsWith,
                        _ => StrTest::Contains,
                    };
                    match (c.target.as_deref(), c.args.as_slice()) {
                        (Some(t), [a]) => Some(Cond::Str(test, operand(t)?, operand(a)?)),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        Expr::Select(s) if s.test => {
            Some(Cond::Has(claim_path(&s.operand)?.into(), s.field.clone()))
        }
        _ => None,
    }
}

fn operand(e: &IdedExpr) -> Option<Operand> {
    if let Expr::Literal(l) = &e.expr {
        return literal(l).map(Operand::Lit);
    }
    if let Some(path) = claim_path(e) {
        // `claims` itself is a map, never a comparable value.
        return (!path.is_empty()).then(|| Operand::Claim(path.into()));
    }
    let (base, key) = member(e)?;
    match (&base.expr, key.as_str()) {
        (Expr::Ident(r), "method") if r == "request" => Some(Operand::Method),
        (Expr::Ident(r), "host") if r == "request" => Some(Operand::Host),
        (Expr::Ident(r), "path") if r == "request" => Some(Operand::Path),
        _ => {
            let (root, field) = member(base)?;
            if !matches!(&root.expr, Expr::Ident(r) if r == "request") {
                return None;
            }
            match field.as_str() {
                "params" => Some(Operand::Param(key)),
                // The interpreter's map is keyed by lower-case names; another spelling is a
                // missing key there, so it is left to the interpreter.
                "headers" => HeaderName::from_bytes(key.as_bytes())
                    .ok()
                    .filter(|h| h.as_str() == key)
                    .map(Operand::Header),
                _ => None,
            }
        }
    }
}

fn list(e: &IdedExpr) -> Option<List> {
    match &e.expr {
        Expr::List(l) if l.optional_indices.is_empty() => l
            .elements
            .iter()
            .map(|x| match &x.expr {
                Expr::Literal(v) => literal(v),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| List::Literal(v.into())),
        _ => claim_path(e)
            .filter(|p| !p.is_empty())
            .map(|p| List::Claim(p.into())),
    }
}

fn literal(l: &LiteralValue) -> Option<Lit> {
    match l {
        LiteralValue::String(s) => Some(Lit::Str(s.inner().to_string())),
        LiteralValue::Int(i) => Some(Lit::Int(*i.inner())),
        LiteralValue::Boolean(b) => Some(Lit::Bool(*b.inner())),
        _ => None,
    }
}

/// `claims.a.b` / `claims['a'].b` as `["a", "b"]`; `claims` alone as `[]`.
fn claim_path(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(r) if r == "claims" => Some(Vec::new()),
        _ => {
            let (base, key) = member(e)?;
            let mut path = claim_path(base)?;
            path.push(key);
            Some(path)
        }
    }
}

/// `base.key` or `base['key']`.
fn member(e: &IdedExpr) -> Option<(&IdedExpr, String)> {
    match &e.expr {
        Expr::Select(s) if !s.test => Some((&s.operand, s.field.clone())),
        Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => {
            match c.args.as_slice() {
                [base, key] => match &key.expr {
                    Expr::Literal(LiteralValue::String(k)) => Some((base, k.inner().to_string())),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

impl Cond {
    fn eval(&self, f: &Facts<'_>) -> Option<bool> {
        match self {
            Cond::Cmp(op, a, b) => {
                let (a, b) = (a.eval(f)?, b.eval(f)?);
                match (op, a, b) {
                    (Cmp::Eq, a, b) if same_kind(a, b) => Some(a == b),
                    (Cmp::Ne, a, b) if same_kind(a, b) => Some(a != b),
                    (op, V::Int(a), V::Int(b)) => Some(match op {
                        Cmp::Lt => a < b,
                        Cmp::Le => a <= b,
                        Cmp::Gt => a > b,
                        Cmp::Ge => a >= b,
                        Cmp::Eq | Cmp::Ne => unreachable!("same kind, handled above"),
                    }),
                    _ => None,
                }
            }
            Cond::In(x, list) => {
                let x = x.eval(f)?;
                match list {
                    List::Literal(items) => contains(x, items.iter().map(|i| Some(i.as_v()))),
                    List::Claim(path) => contains(x, claim(f, path)?.as_array()?.iter().map(json)),
                }
            }
            Cond::Has(path, field) => {
                let obj = match path.is_empty() {
                    true => f.claims,
                    false => claim(f, path)?.as_object()?,
                };
                Some(obj.contains_key(field))
            }
            Cond::Str(test, s, arg) => match (s.eval(f)?, arg.eval(f)?) {
                (V::Str(s), V::Str(a)) => Some(match test {
                    StrTest::StartsWith => s.starts_with(a),
                    StrTest::EndsWith => s.ends_with(a),
                    StrTest::Contains => s.contains(a),
                }),
                _ => None,
            },
            Cond::And(a, b) => match a.eval(f)? {
                false => Some(false),
                true => b.eval(f),
            },
            Cond::Or(a, b) => match a.eval(f)? {
                true => Some(true),
                false => b.eval(f),
            },
            Cond::Not(a) => a.eval(f).map(|b| !b),
            Cond::Is(o) => match o.eval(f)? {
                V::Bool(b) => Some(b),
                _ => None,
            },
        }
    }
}

impl Operand {
    fn eval<'a>(&'a self, f: &Facts<'a>) -> Option<V<'a>> {
        match self {
            Operand::Lit(l) => Some(l.as_v()),
            Operand::Claim(path) => json(claim(f, path)?),
            // The interpreter's map keeps the last of a repeated name.
            Operand::Param(name) => f
                .params
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| V::Str(v)),
            Operand::Method => Some(V::Str(f.method)),
            Operand::Host => Some(V::Str(f.host.unwrap_or(""))),
            Operand::Path => Some(V::Str(f.path)),
            Operand::Header(name) => {
                // A header the upstream is not sent is missing from the interpreter's map.
                if f.hidden.is_some_and(|s| s.contains(name.as_str())) {
                    return None;
                }
                // The id the upstream is sent stands for the client's lines.
                if let (Some(id), true) = (f.request_id, name == crate::request_id::REQUEST_ID) {
                    return Some(V::Str(id));
                }
                // A repeated header is joined with ", " in the interpreter's map.
                let mut values = f.headers.get_all(name).iter();
                let v = values.next()?;
                if values.next().is_some() {
                    return None;
                }
                std::str::from_utf8(v.as_bytes()).ok().map(V::Str)
            }
        }
    }
}

impl Lit {
    fn as_v(&self) -> V<'_> {
        match self {
            Lit::Str(s) => V::Str(s),
            Lit::Int(i) => V::Int(*i),
            Lit::Bool(b) => V::Bool(*b),
        }
    }
}

fn claim<'a>(f: &Facts<'a>, path: &[String]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    let mut v = f.claims.get(first)?;
    for k in rest {
        v = v.as_object()?.get(k)?;
    }
    Some(v)
}

/// A claim as the interpreter sees it: JSON integers within `i64` are CEL ints; other numbers,
/// nulls, lists and maps are left to the interpreter.
fn json(v: &Json) -> Option<V<'_>> {
    match v {
        Json::String(s) => Some(V::Str(s)),
        Json::Bool(b) => Some(V::Bool(*b)),
        Json::Number(n) => n.as_i64().map(V::Int),
        _ => None,
    }
}

/// `x in items`, when every item is of `x`'s kind.
fn contains<'a>(x: V<'a>, items: impl Iterator<Item = Option<V<'a>>>) -> Option<bool> {
    let mut found = false;
    for i in items {
        let i = i?;
        if !same_kind(x, i) {
            return None;
        }
        found |= x == i;
    }
    Some(found)
}

fn same_kind(a: V<'_>, b: V<'_>) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::VerifiedToken;
    use crate::facts::{Body, RequestFacts};
    use crate::geo::GeoResolver;
    use crate::policy::activation::{Activation, Inputs};
    use crate::policy::CelRuntime;
    use chrono::Utc;
    use http::HeaderValue;
    use jsonwebtoken::Algorithm;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;

    /// Shapes the planner takes; each must agree with the interpreter whenever it answers.
    const PLANNED: &[&str] = &[
        "request.params.id == claims.account",
        "request.params['id'] != claims.account",
        "claims.account == request.params.id && request.method == 'POST'",
        "request.method in ['GET', 'HEAD'] || claims.admin",
        "request.method in ['GET', 1]",
        "request.params.id in claims.accounts",
        "!(request.path.startsWith('/admin')) && request.host.endsWith('.example.com')",
        "request.path.contains(claims.account)",
        "request.headers['x-tenant'] == claims.tenant",
        "claims.features.maxTransactionAmount > 0 && request.params.id == 'acc-1'",
        "claims.level >= 3 || claims.level < -1 || claims.level <= 0",
        "claims.level > 3",
        "claims.level < 3",
        "claims.level <= 3 && claims.level != 3",
        "claims.level == 3",
        "claims.level <= 3",
        "has(claims.features.beta) && request.method == 'GET'",
        "has(claims.tier) || request.method == 'PUT'",
        "has(claims.features) && claims.features.beta",
        "claims.email_verified && request.params.id != ''",
        "claims['a']['b'] == request.params.id",
        "request.method == claims.admin",
        "claims.account",
        "claims.features.maxTransactionAmount",
        "claims.email_verified",
        "request.params.id",
        "request.headers['x-tenant']",
        "'transfer' in claims.permissions",
        "request.headers['x-request-id'] == 'r1'",
    ];

    /// Shapes left to the interpreter.
    const NOT_PLANNED: &[&str] = &[
        "size(request.params.id) > 2",
        "claims.level + 1 > 3",
        "request.params.id.matches('^acc-')",
        "now.getHours() > 9",
        "request.query.a == 'x'",
        // The interpreter's header map has lower-case keys only: a missing key there.
        "request.headers['X-Tenant'] == claims.tenant",
        "claims.roles.exists(r, r == request.params.id)",
        "true",
        "claims",
        "claims.accounts + ['x']",
        "claims == request.params",
        "request.params.id == claims.account ? true : false",
    ];

    fn compile(src: &str) -> (cel::Program, Option<Plan>) {
        let p = CelRuntime::new().compile(src).expect(src);
        let plan = Plan::of(p.expression());
        (p, plan)
    }

    #[derive(Debug)]
    struct Case {
        claims: Map<String, Json>,
        params: Vec<(String, String)>,
        method: &'static str,
        host: Option<&'static str>,
        path: String,
        headers: http::HeaderMap,
        /// `x-tenant` is a header the upstream is not sent (hidden from the rules).
        tenant_hidden: bool,
        /// The `X-Request-Id` the upstream is sent, when the caller says.
        request_id: Option<&'static str>,
    }

    /// The native answer and the interpreter's for `src` on `c`.
    fn both(src: &str, c: &Case) -> (Option<cel::Value>, Result<cel::Value, cel::ExecutionError>) {
        answers(src, c, true)
    }

    /// As [`both`], on a request with a token (`c.claims`) or without one (no claims at all).
    fn answers(
        src: &str,
        c: &Case,
        with_token: bool,
    ) -> (Option<cel::Value>, Result<cel::Value, cel::ExecutionError>) {
        let (program, plan) = compile(src);
        let plan = plan.unwrap_or_else(|| panic!("no plan for {src}"));
        let token = VerifiedToken::new(
            Arc::from("t"),
            Algorithm::HS256,
            None,
            None,
            c.claims.clone(),
            i64::MAX,
        );
        let hidden = crate::upstream_edits::StripList::new(
            c.tenant_hidden
                .then(|| http::HeaderName::from_static("x-tenant")),
        );
        let req = RequestFacts {
            method: c.method,
            host: c.host,
            path: &c.path,
            query: None,
            headers: &c.headers,
            hidden: Some(&hidden),
            request_id: c.request_id,
            client_ip: None,
            body: Body::NotRead,
            location: None,
            tls: None,
        };
        let cel = CelRuntime::new();
        let geo = GeoResolver::default();
        let act = Activation::new(Inputs {
            req: &req,
            params: &c.params,
            token: with_token.then_some(&token),
            now: Utc::now(),
            route: None,
            cel: &cel,
            body: None,
            geo: &geo,
            ext: None,
            memo_slots: 0,
        });
        let no_claims = Map::new();
        let facts = Facts {
            claims: if with_token { &c.claims } else { &no_claims },
            params: &c.params,
            method: c.method,
            host: c.host,
            path: &c.path,
            headers: &c.headers,
            hidden: Some(&hidden),
            request_id: c.request_id,
        };
        (plan.eval(&facts), act.execute_program(&program))
    }

    fn happy() -> Case {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("t1"));
        Case {
            claims: json!({
                "account": "acc-1", "accounts": ["acc-1", "acc-2"], "admin": false,
                "tenant": "t1", "features": {"maxTransactionAmount": 5000, "beta": true},
                "level": 3, "email_verified": true, "a": {"b": "acc-1"}, "tier": "gold",
            })
            .as_object()
            .cloned()
            .unwrap(),
            params: vec![("id".into(), "acc-1".into())],
            method: "POST",
            host: Some("api.example.com"),
            path: "/api/accounts/acc-1/transfer".into(),
            headers,
            tenant_hidden: false,
            request_id: Some("r1"),
        }
    }

    #[test]
    fn planned_shapes_answer_natively_and_as_cel_does() {
        let c = happy();
        for src in PLANNED {
            let (native, cel) = both(src, &c);
            match (src, native) {
                // Mixed-kind list and bool-vs-string comparison: left to the interpreter.
                (&"request.method in ['GET', 1]" | &"request.method == claims.admin", None) => {}
                // No `permissions` claim in the happy case: the interpreter's error.
                (&"'transfer' in claims.permissions", None) => {}
                (_, Some(v)) => assert!(
                    cel.as_ref().is_ok_and(|x| *x == v),
                    "{src}: native {v:?}, CEL {cel:?}"
                ),
                (_, None) => panic!("{src}: no native answer on the happy case (CEL {cel:?})"),
            }
        }
    }

    #[test]
    fn without_a_token_claims_are_an_empty_map_as_in_the_interpreter() {
        let c = happy();
        for (src, expected) in [
            ("has(claims.tier) || request.method == 'POST'", Some(true)),
            ("has(claims.tier)", Some(false)),
            ("request.params.id == 'acc-1'", Some(true)),
            // A missing claim: the interpreter's error, not a native answer.
            ("claims.account == 'acc-1'", None),
        ] {
            let (native, cel) = answers(src, &c, false);
            assert_eq!(native, expected.map(cel::Value::Bool), "{src}");
            match expected {
                Some(b) => assert_eq!(cel.ok(), Some(cel::Value::Bool(b)), "{src}"),
                None => assert!(cel.is_err(), "{src}: {cel:?}"),
            }
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_interpreter() {
        for src in NOT_PLANNED {
            assert!(compile(src).1.is_none(), "{src} should have no plan");
        }
    }

    fn leaf() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            prop_oneof![
                Just(0i64),
                Just(1),
                Just(-1),
                Just(3),
                Just(5000),
                Just(i64::MAX)
            ]
            .prop_map(|i| json!(i)),
            Just(json!(1.5)),
            Just(json!(3.0)),
            Just(json!(3.5)),
            Just(json!(u64::MAX)),
            prop_oneof![
                Just("acc-1"),
                Just("acc-2"),
                Just(""),
                Just("t1"),
                Just("/admin")
            ]
            .prop_map(|s| json!(s)),
        ]
    }

    fn value() -> impl Strategy<Value = Json> {
        leaf().prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::btree_map(
                    prop_oneof![Just("b"), Just("beta"), Just("maxTransactionAmount")],
                    inner,
                    0..3
                )
                .prop_map(|m| Json::Object(m.into_iter().map(|(k, v)| (k.into(), v)).collect())),
            ]
        })
    }

    /// Cases around the happy one: each claim kept, dropped or replaced by an arbitrary value,
    /// so that most cases reach the native steps and many end in a mismatch.
    fn case() -> impl Strategy<Value = Case> {
        let claims = happy().claims;
        let n = claims.len();
        let word = prop_oneof![Just("acc-1"), Just("acc-2"), Just(""), Just("t1")];
        (
            proptest::collection::vec((0..3u8, value()), n..=n),
            proptest::collection::vec(word, 0..3),
            prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
            prop_oneof![Just(None), Just(Some("api.example.com")), Just(Some(""))],
            prop_oneof![
                Just("/api/accounts/acc-1"),
                Just("/admin/x"),
                Just("/x/admin"),
                Just("/")
            ],
            proptest::collection::vec(
                prop_oneof![
                    Just(b"t1".to_vec()),
                    Just(b"t2".to_vec()),
                    Just(vec![0xff, b'a'])
                ],
                0..3,
            ),
            proptest::bool::weighted(0.2),
            (
                proptest::collection::vec(prop_oneof![Just("r1"), Just("r2")], 0..3),
                prop_oneof![Just(None), Just(Some("r1")), Just(Some("r2"))],
            ),
        )
            .prop_map(
                move |(
                    edits,
                    ids,
                    method,
                    host,
                    path,
                    tenants,
                    tenant_hidden,
                    (sent_ids, request_id),
                )| {
                    let mut headers = http::HeaderMap::new();
                    for t in tenants {
                        headers.append("x-tenant", HeaderValue::from_bytes(&t).unwrap());
                    }
                    for id in sent_ids {
                        headers.append("x-request-id", HeaderValue::from_static(id));
                    }
                    let claims = claims
                        .iter()
                        .zip(edits)
                        .filter_map(|((k, v), (edit, other))| match edit {
                            0 => Some((k.clone(), v.clone())),
                            1 => None,
                            _ => Some((k.clone(), other)),
                        })
                        .collect();
                    Case {
                        claims,
                        params: ids.into_iter().map(|v| ("id".into(), v.into())).collect(),
                        method,
                        host,
                        path: path.into(),
                        headers,
                        tenant_hidden,
                        request_id,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn a_native_answer_is_always_the_interpreters(c in case()) {
            for src in PLANNED {
                let (native, cel) = both(src, &c);
                if let Some(v) = native {
                    prop_assert!(
                        cel.as_ref().is_ok_and(|x| *x == v),
                        "{}: native {:?}, CEL {:?}", src, v, cel
                    );
                }
            }
        }
    }
}
