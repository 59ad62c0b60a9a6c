//! Request facts: what the proxy (or the CLI, or a bench) knows about a request, and how CEL
//! conditions see it. Values are built on first use, so a route whose rules read only `claims`
//! never pays for converting headers.

use crate::auth::VerifiedToken;
use crate::policy::cel::{json_object_to_value, string_map, to_val};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::Value;
use chrono::{DateTime, Utc};
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// A request as the decision core sees it; no proxy types.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Host without port, lower-cased by the caller.
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
}

/// The variables of one evaluation, resolved lazily and at most once.
pub struct Activation<'a> {
    req: &'a RequestFacts<'a>,
    params: &'a [(String, String)],
    token: Option<&'a VerifiedToken>,
    now: DateTime<Utc>,
    claims: OnceLock<Box<dyn Val>>,
    token_val: OnceLock<Box<dyn Val>>,
    request: OnceLock<Box<dyn Val>>,
    now_val: OnceLock<Box<dyn Val>>,
}

impl<'a> Activation<'a> {
    pub fn new(
        req: &'a RequestFacts<'a>,
        params: &'a [(String, String)],
        token: Option<&'a VerifiedToken>,
        now: DateTime<Utc>,
    ) -> Self {
        Activation {
            req,
            params,
            token,
            now,
            claims: OnceLock::new(),
            token_val: OnceLock::new(),
            request: OnceLock::new(),
            now_val: OnceLock::new(),
        }
    }

    fn claims(&self) -> &dyn Val {
        self.claims
            .get_or_init(|| {
                to_val(match self.token {
                    Some(t) => json_object_to_value(&t.claims),
                    None => string_map(std::iter::empty::<(String, Value)>()),
                })
            })
            .as_ref()
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

    fn request(&self) -> &dyn Val {
        self.request
            .get_or_init(|| to_val(request_value(self.req, self.params)))
            .as_ref()
    }

    fn now(&self) -> &dyn Val {
        self.now_val
            .get_or_init(|| to_val(Value::Timestamp(self.now.fixed_offset())))
            .as_ref()
    }
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let v: &dyn Val = match variable {
            "claims" => self.claims(),
            "token" => self.token(),
            "request" => self.request(),
            "now" => self.now(),
            _ => return None,
        };
        Some(CowVal::Borrowed(v))
    }
}

fn request_value(req: &RequestFacts<'_>, params: &[(String, String)]) -> Value {
    let mut headers: std::collections::HashMap<String, String> = Default::default();
    for (name, value) in req.headers.iter() {
        let text = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&text);
            })
            .or_insert_with(|| text.into_owned());
    }
    let mut query: std::collections::HashMap<String, String> = Default::default();
    if let Some(q) = req.query {
        // The first value of a repeated parameter wins, as in most frameworks.
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            query
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
    }
    string_map([
        ("method", Value::from(req.method)),
        ("host", Value::from(req.host.unwrap_or(""))),
        ("path", Value::from(req.path)),
        ("query", string_map(query)),
        ("headers", string_map(headers)),
        (
            "params",
            string_map(params.iter().map(|(k, v)| (k.clone(), v.clone()))),
        ),
        (
            "client_ip",
            Value::String(Arc::new(
                req.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            )),
        ),
    ])
}
