//! The fields of `request`, `token` and `geo` an expression reads by name must exist. The
//! interpreter answers a read of a missing field with an error, so a rule on `request.ip`
//! (for `request.client_ip`), `request.params.idd` on the path `/x/{id}`, or `token.iss` (for
//! `token.issuer`) would deny every request as a policy error: a mistake `check` must show at
//! the field. Maps whose keys come from the request or the token (`request.headers`,
//! `request.query`, `claims`, `body`) take any name.

use cel::common::ast::{Expr, LiteralValue};
use cel::IdedExpr;

/// A read of a field that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// The node of the read.
    pub id: u64,
    pub message: String,
}

/// What a value read by name holds.
enum Shape {
    /// Fields known by name.
    Fields(&'static [(&'static str, Shape)]),
    /// The route's path parameters.
    Params,
    /// Keys that come from the request or the token, or a plain value: not checked.
    Open,
}

use Shape::{Fields, Open, Params};

const CERTIFICATE: &[(&str, Shape)] = &[
    ("thumbprint", Open),
    ("organization", Open),
    ("serial", Open),
    ("subject", Open),
    ("common_name", Open),
    ("dns_names", Open),
    ("uris", Open),
    ("emails", Open),
    ("ips", Open),
];

const TLS: &[(&str, Shape)] = &[
    ("version", Open),
    ("cipher", Open),
    ("client_certificate", Fields(CERTIFICATE)),
];

const REQUEST: &[(&str, Shape)] = &[
    ("method", Open),
    ("host", Open),
    ("path", Open),
    ("query", Open),
    ("headers", Open),
    ("params", Params),
    ("client_ip", Open),
    ("tls", Fields(TLS)),
];

const TOKEN: &[(&str, Shape)] = &[
    ("alg", Open),
    ("kid", Open),
    ("typ", Open),
    ("issuer", Open),
];

const GEO: &[(&str, Shape)] = &[("country", Open), ("continent", Open)];

fn root(name: &str) -> Option<&'static [(&'static str, Shape)]> {
    match name {
        "request" => Some(REQUEST),
        "token" => Some(TOKEN),
        "geo" => Some(GEO),
        _ => None,
    }
}

/// `operand.field` or `operand['field']`: the operand, the field and the read's node.
fn read_by_name(e: &IdedExpr) -> Option<(&IdedExpr, &str)> {
    match &e.expr {
        Expr::Select(s) => Some((&s.operand, s.field.as_str())),
        Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() => match c.args.as_slice() {
            [o, k] => match &k.expr {
                Expr::Literal(LiteralValue::String(f)) => Some((o, &**f)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The path of names `e` reads from a free variable (`request.tls.version`:
/// `["request", "tls", "version"]`, each with its node), when it is such a path.
fn path<'a>(e: &'a IdedExpr, bound: &[&str]) -> Option<Vec<(&'a str, u64)>> {
    match &e.expr {
        Expr::Ident(n) if !bound.contains(&n.as_str()) => Some(vec![(n.as_str(), e.id)]),
        _ => {
            let (operand, field) = read_by_name(e)?;
            let mut p = path(operand, bound)?;
            p.push((field, e.id));
            Some(p)
        }
    }
}

/// Every read of a field that does not exist in `e`. `params`: the route's path parameters
/// (`None` outside a route: not checked).
pub fn unknown_fields(e: &IdedExpr, params: Option<&[String]>) -> Vec<UnknownField> {
    let mut out = Vec::new();
    walk(e, &mut Vec::new(), params, &mut out);
    out
}

fn check_path(p: &[(&str, u64)], params: Option<&[String]>, out: &mut Vec<UnknownField>) {
    let Some(mut fields) = root(p[0].0) else {
        return;
    };
    let mut shown = p[0].0.to_string();
    for (i, &(name, id)) in p.iter().enumerate().skip(1) {
        let Some((_, shape)) = fields.iter().find(|(f, _)| *f == name) else {
            let known: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
            out.push(UnknownField {
                id,
                message: format!(
                    "`{shown}` has no field `{name}` (it has {})",
                    known.join(", ")
                ),
            });
            return;
        };
        shown = format!("{shown}.{name}");
        match shape {
            Fields(f) => fields = f,
            Open => return,
            Params => {
                let Some(params) = params else { return };
                // The parameter read, if the path goes on.
                if let Some(&(param, id)) = p.get(i + 1) {
                    if !params.iter().any(|x| x == param) {
                        let known = if params.is_empty() {
                            "the route's path has no parameter".to_string()
                        } else {
                            format!("the route's path has {}", params.join(", "))
                        };
                        out.push(UnknownField {
                            id,
                            message: format!("`request.params` has no `{param}` ({known})"),
                        });
                    }
                }
                return;
            }
        }
    }
}

fn walk<'a>(
    e: &'a IdedExpr,
    bound: &mut Vec<&'a str>,
    params: Option<&[String]>,
    out: &mut Vec<UnknownField>,
) {
    if read_by_name(e).is_some() {
        if let Some(p) = path(e, bound) {
            check_path(&p, params, out);
            return;
        }
    }
    match &e.expr {
        Expr::Select(s) => walk(&s.operand, bound, params, out),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, bound, params, out);
            }
            for a in &c.args {
                walk(a, bound, params, out);
            }
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, bound, params, out);
            }
        }
        Expr::Map(m) => {
            for en in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(m) = &en.expr {
                    walk(&m.key, bound, params, out);
                    walk(&m.value, bound, params, out);
                }
            }
        }
        Expr::Struct(s) => {
            for en in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &en.expr {
                    walk(&f.value, bound, params, out);
                }
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, params, out);
            walk(&c.accu_init, bound, params, out);
            let depth = bound.len();
            bound.push(c.iter_var.as_str());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.as_str());
            }
            bound.push(c.accu_var.as_str());
            walk(&c.loop_cond, bound, params, out);
            walk(&c.loop_step, bound, params, out);
            walk(&c.result, bound, params, out);
            bound.truncate(depth);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(src: &str, params: &[&str]) -> Vec<String> {
        let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
        let p = cel::Program::compile(src).unwrap();
        unknown_fields(p.expression(), Some(&params))
            .into_iter()
            .map(|u| u.message)
            .collect()
    }

    #[test]
    fn fields_that_exist_pass() {
        for src in [
            "request.client_ip == '10.0.0.1' && request.method == 'GET'",
            "request.headers['x-anything'] == request.query.whatever",
            "request.params.id == claims.sub && token.issuer == 'a' && geo.country == 'FR'",
            "has(request.tls.client_certificate.thumbprint) && request.tls.version == 'TLSv1.3'",
            "request['params']['id'] != ''",
            "claims.anything.at.all && body.x.y",
            "[1].exists(request, request.ip == 1)",
            "request.headers.exists(h, h == 'a')",
        ] {
            assert_eq!(unknown(src, &["id"]), Vec::<String>::new(), "{src}");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            ("request.ip == '10.0.0.1'", "`request` has no field `ip`"),
            ("has(request.ip)", "`request` has no field `ip`"),
            ("request['ip'] == ''", "`request` has no field `ip`"),
            ("token.iss == 'x'", "`token` has no field `iss`"),
            ("geo.city == 'x'", "`geo` has no field `city`"),
            (
                "request.tls.versoin == 'x'",
                "`request.tls` has no field `versoin`",
            ),
            (
                "request.tls.client_certificate.cn == 'x'",
                "`request.tls.client_certificate` has no field `cn`",
            ),
            (
                "request.params.idd == 'x'",
                "`request.params` has no `idd` (the route's path has id)",
            ),
        ];
        for (src, expected) in cases {
            let got = unknown(src, &["id"]);
            assert_eq!(got.len(), 1, "{src}: {got:?}");
            assert!(got[0].starts_with(expected), "{src}: {got:?}");
        }
        assert_eq!(
            unknown("request.params.id == 'x'", &[]),
            vec!["`request.params` has no `id` (the route's path has no parameter)".to_string()]
        );
    }
}
