//! What an expression reads, from its syntax tree: the variables, the members of `attr` and
//! `ext` read by name, and any name that is not a variable. Never from the expression's text, so
//! `'see ext.docs'` in a string literal reads nothing.

use super::variable::Variable;
use cel::common::ast::{EntryExpr, Expr, IdedEntryExpr, LiteralValue};
use cel::IdedExpr;
use std::collections::{BTreeMap, BTreeSet};

/// The free names an expression reads: identifiers not bound by an enclosing comprehension
/// (`claims.roles.exists(r, r == 'admin')` reads `claims`, not `r`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// The variables read.
    pub variables: BTreeSet<Variable>,
    /// Free names that are no variable (an error in a condition), each with the node of its
    /// first use.
    pub unknown: BTreeMap<String, u64>,
    /// Members read by name from variables with [`Variable::named_members`] and from `claims`:
    /// `attr.total`, `has(ext.limits)`, `ext['limits']`, `claims.tier`, each with the node of
    /// its first read.
    pub members: BTreeMap<(Variable, String), u64>,
    /// Those variables also read whole (`ext`, `ext[k]`, `'x' in claims`): what is read cannot
    /// be known by name. With the node of the first such read.
    pub whole: BTreeMap<Variable, u64>,
    /// The request headers and query parameters read by name.
    pub request: RequestReads,
}

/// Which request headers and query parameters expressions read. Admission refuses a request
/// whose headers or query the rules would read otherwise than the upstream may.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestReads {
    /// `request.headers['x-tenant']`, `'x-tenant' in request.headers` (lower-case names).
    pub headers: NameReads,
    /// `request.query.account`, `'account' in request.query`.
    pub query: NameReads,
}

impl RequestReads {
    pub fn add(&mut self, other: &RequestReads) {
        self.headers.add(&other.headers);
        self.query.add(&other.query);
    }
}

/// Members of a request map read: by name, or any (the map read whole, or with a key computed
/// at run time).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameReads {
    pub names: BTreeSet<String>,
    pub any: bool,
}

impl NameReads {
    pub fn add(&mut self, other: &NameReads) {
        self.names.extend(other.names.iter().cloned());
        self.any |= other.any;
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.any
    }

    /// Whether a header of this (lower-case) name is read.
    pub fn reads(&self, name: &str) -> bool {
        self.any || self.names.contains(name)
    }
}

/// The request map an expression is (`request.headers` or `request.query`, with `request` a
/// free variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestMap {
    Headers,
    Query,
}

fn request_map(e: &IdedExpr, bound: &[&str]) -> Option<RequestMap> {
    let (operand, field) = match &e.expr {
        Expr::Select(s) if !s.test => (&*s.operand, s.field.as_str()),
        // `request['headers']`
        Expr::Call(c) if c.func_name == "_[_]" && c.target.is_none() => match c.args.as_slice() {
            [o, k] => match &k.expr {
                Expr::Literal(LiteralValue::String(f)) => (o, &**f),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    };
    if !is_free_request(operand, bound) {
        return None;
    }
    match field {
        "headers" => Some(RequestMap::Headers),
        "query" => Some(RequestMap::Query),
        _ => None,
    }
}

fn is_free_request(e: &IdedExpr, bound: &[&str]) -> bool {
    matches!(&e.expr, Expr::Ident(n) if n == "request" && !bound.contains(&n.as_str()))
}

/// Variables whose members are recorded by name: those declared member by member, and
/// `claims`, so that a new token's unread claims need not be decoded.
fn by_member(v: Variable) -> bool {
    v.named_members() || v == Variable::Claims
}

impl References {
    pub fn of(e: &IdedExpr) -> References {
        let mut out = References::default();
        out.walk(e, &mut Vec::new());
        out
    }

    pub fn reads(&self, v: Variable) -> bool {
        self.variables.contains(&v)
    }

    /// The names read from `v` as `v.NAME`, each with the node of its first read.
    pub fn members_of(&self, v: Variable) -> impl Iterator<Item = (&str, u64)> {
        self.members
            .iter()
            .filter(move |((var, _), _)| *var == v)
            .map(|((_, n), id)| (n.as_str(), *id))
    }

    /// Reads something, and only variables that are the same for every request with the same
    /// token.
    pub fn per_token_only(&self) -> bool {
        !self.variables.is_empty()
            && self.unknown.is_empty()
            && self.variables.iter().all(|v| v.per_token())
    }

    /// `name` (at node `id`) as a free variable: known, or recorded as unknown.
    fn free<'a>(&mut self, name: &'a str, id: u64, bound: &[&'a str]) -> Option<Variable> {
        if bound.contains(&name) {
            return None;
        }
        match Variable::parse(name) {
            Some(v) => {
                self.variables.insert(v);
                Some(v)
            }
            None => {
                self.unknown.entry(name.to_string()).or_insert(id);
                None
            }
        }
    }

    /// `v.NAME` or `v['NAME']` (node `id`) read from a free variable with named members.
    fn member<'a>(
        &mut self,
        operand: &'a IdedExpr,
        name: &str,
        id: u64,
        bound: &[&'a str],
    ) -> bool {
        let Expr::Ident(var) = &operand.expr else {
            return false;
        };
        match self.free(var, operand.id, bound) {
            Some(v) if by_member(v) => {
                self.members.entry((v, name.to_string())).or_insert(id);
                true
            }
            // Another variable's member, or a bound or unknown name: recorded by `free`.
            _ => true,
        }
    }

    fn walk<'a>(&mut self, e: &'a IdedExpr, bound: &mut Vec<&'a str>) {
        match &e.expr {
            Expr::Ident(name) => {
                if let Some(v) = self.free(name, e.id, bound) {
                    if by_member(v) {
                        self.whole.entry(v).or_insert(e.id);
                    }
                    // `request` itself as a value (`dyn(request)`, `[request]`,
                    // `request.?headers`): its maps can be read in any way.
                    if v == Variable::Request {
                        self.request.headers.any = true;
                        self.request.query.any = true;
                    }
                }
            }
            Expr::Select(s) => {
                if let Some(map) = request_map(&s.operand, bound) {
                    // `request.query.account`, `has(request.headers.accept)`.
                    self.request_member(map, &s.field);
                    self.walk_request(&s.operand, bound);
                    return;
                }
                if let Some(map) = request_map(e, bound) {
                    // Read whole, or with a key known only at run time.
                    self.request_names(map).any = true;
                }
                if !self.member(&s.operand, &s.field, e.id, bound) {
                    self.walk(&s.operand, bound);
                }
            }
            Expr::Call(c) => {
                let request_key = match (c.func_name.as_str(), c.args.as_slice()) {
                    ("_[_]", [operand, key]) => Some((operand, key)),
                    ("@in", [key, operand]) => Some((operand, key)),
                    _ => None,
                };
                if let Some((operand, key)) = request_key {
                    if let (Some(map), Expr::Literal(LiteralValue::String(k))) =
                        (request_map(operand, bound), &key.expr)
                    {
                        self.request_member(map, k);
                        self.walk_request(operand, bound);
                        return;
                    }
                }
                if let Some(map) = request_map(e, bound) {
                    // `request['headers']` read whole.
                    self.request_names(map).any = true;
                }
                if let (true, [operand, key]) = (c.func_name == "_[_]", c.args.as_slice()) {
                    if let Expr::Literal(LiteralValue::String(k)) = &key.expr {
                        if self.member(operand, k, e.id, bound) {
                            return;
                        }
                    }
                }
                if let Some(t) = &c.target {
                    self.walk(t, bound);
                }
                for a in &c.args {
                    self.walk(a, bound);
                }
            }
            Expr::List(l) => {
                for x in &l.elements {
                    self.walk(x, bound);
                }
            }
            Expr::Map(m) => self.entries(&m.entries, bound),
            Expr::Struct(s) => self.entries(&s.entries, bound),
            Expr::Comprehension(c) => {
                // The range and the initial accumulator are evaluated outside the loop's scope.
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let depth = bound.len();
                bound.push(c.iter_var.as_str());
                if let Some(v2) = &c.iter_var2 {
                    bound.push(v2.as_str());
                }
                bound.push(c.accu_var.as_str());
                self.walk(&c.loop_cond, bound);
                self.walk(&c.loop_step, bound);
                self.walk(&c.result, bound);
                bound.truncate(depth);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn request_names(&mut self, map: RequestMap) -> &mut NameReads {
        match map {
            RequestMap::Headers => &mut self.request.headers,
            RequestMap::Query => &mut self.request.query,
        }
    }

    /// One member of a request map read by name (header names are case-insensitive).
    fn request_member(&mut self, map: RequestMap, name: &str) {
        let name = match map {
            RequestMap::Headers => name.to_ascii_lowercase(),
            RequestMap::Query => name.to_string(),
        };
        self.request_names(map).names.insert(name);
    }

    /// A request map read by name: `request` is read, the map is not read whole.
    fn walk_request<'a>(&mut self, map: &'a IdedExpr, bound: &mut Vec<&'a str>) {
        let operand = match &map.expr {
            Expr::Select(s) => &*s.operand,
            Expr::Call(c) => match c.args.first() {
                Some(o) => o,
                None => return,
            },
            _ => return,
        };
        if let Expr::Ident(name) = &operand.expr {
            self.free(name, operand.id, bound);
        }
    }

    fn entries<'a>(&mut self, entries: &'a [IdedEntryExpr], bound: &mut Vec<&'a str>) {
        for en in entries {
            match &en.expr {
                EntryExpr::MapEntry(m) => {
                    self.walk(&m.key, bound);
                    self.walk(&m.value, bound);
                }
                EntryExpr::StructField(f) => self.walk(&f.value, bound),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> References {
        References::of(cel::Program::compile(src).unwrap().expression())
    }

    fn vars(src: &str) -> Vec<&'static str> {
        refs(src)
            .variables
            .into_iter()
            .map(Variable::name)
            .collect()
    }

    #[test]
    fn request_headers_are_read_by_name_or_whole() {
        let names = |src: &str| {
            let r = refs(src);
            assert!(r.reads(Variable::Request), "{src}");
            (
                r.request.headers.names.into_iter().collect::<Vec<_>>(),
                r.request.headers.any,
            )
        };
        assert_eq!(
            names("request.headers['X-Tenant'] == 'a'"),
            (vec!["x-tenant".to_string()], false)
        );
        assert_eq!(
            names("'x-a' in request.headers && has(request.headers.accept)"),
            (vec!["accept".to_string(), "x-a".to_string()], false)
        );
        assert_eq!(names("request.method == 'GET'"), (vec![], false));
        for whole in [
            "size(request.headers) > 3",
            "request.headers[claims.h] == 'x'",
            "request.headers.exists(k, k.startsWith('x-'))",
            "claims.h in request.headers",
        ] {
            assert!(names(whole).1, "{whole}");
        }
        // A bound `request` is not the variable.
        assert!(
            refs("[{'headers': {}}].exists(request, 'a' in request.headers)")
                .request
                .headers
                .is_empty()
        );
        let q = refs("request.query.account == 'a' && 'b' in request.query").request;
        assert_eq!(
            q.query.names.into_iter().collect::<Vec<_>>(),
            ["account", "b"]
        );
        assert!(q.headers.is_empty() && !q.query.any);
        assert!(refs("request.query[claims.k] == 'x'").request.query.any);
        // Other ways to reach the maps: read whole.
        assert_eq!(
            refs("request['headers']['X-Tenant'] == 'a'")
                .request
                .headers
                .names
                .into_iter()
                .collect::<Vec<_>>(),
            ["x-tenant"]
        );
        for whole in [
            "size(request['headers']) > 1",
            "dyn(request).headers['x-tenant'] == 'a'",
            "[request].exists(r, r.headers['x-tenant'] == 'a')",
        ] {
            let r = refs(whole).request;
            assert!(r.headers.any, "{whole}");
        }
        let r = refs("request.method == 'GET' && request.path == '/'").request;
        assert!(r.headers.is_empty() && r.query.is_empty());
    }

    #[test]
    fn comprehension_variables_are_not_free() {
        assert_eq!(vars("claims.roles.exists(r, r == 'admin')"), ["claims"]);
        assert_eq!(
            vars("body.items.all(i, i.amount <= claims.limit)"),
            ["claims", "body"]
        );
        let r = refs("[1, 2].map(x, x * y)");
        assert!(r.variables.is_empty());
        assert_eq!(r.unknown.keys().collect::<Vec<_>>(), ["y"]);
        // A name bound in one loop is free outside it.
        assert_eq!(
            refs("[1].exists(x, x == 1) && x == 2")
                .unknown
                .keys()
                .collect::<Vec<_>>(),
            ["x"]
        );
    }

    #[test]
    fn named_members_come_from_the_tree_not_the_text() {
        let r = refs("ext.balance.amount > 0 && has(ext.limits) && attr['tier'] == 'gold'");
        let members: Vec<_> = r
            .members
            .keys()
            .map(|(v, n)| (v.name(), n.as_str()))
            .collect();
        assert_eq!(
            members,
            [("attr", "tier"), ("ext", "balance"), ("ext", "limits")]
        );
        assert!(r.whole.is_empty());
        // Inside a string literal, `ext.` and `attr.` are text.
        let only_claim = |r: &References, name: &str| {
            r.members
                .keys()
                .map(|(v, n)| (*v, n.as_str()))
                .collect::<Vec<_>>()
                == [(Variable::Claims, name)]
        };
        let r = refs("claims.note == 'see ext.docs and attr.x'");
        assert!(only_claim(&r, "note"), "{r:?}");
        assert_eq!(vars("claims.note == 'see ext.docs'"), ["claims"]);
        // A loop variable named like a member is not one.
        let r = refs("claims.xs.exists(ext, ext.a == 1)");
        assert!(only_claim(&r, "xs") && !r.reads(Variable::Ext), "{r:?}");
    }

    #[test]
    fn reading_a_named_member_variable_whole_is_recorded() {
        assert!(refs("size(ext) > 0").whole.contains_key(&Variable::Ext));
        assert!(refs("attr[claims.k] == 1")
            .whole
            .contains_key(&Variable::Attr));
        assert!(refs("claims.a.b == 1").whole.is_empty());
        // `claims` has no declared members, but what it is read for decides what is decoded.
        assert!(refs("'a' in claims").whole.contains_key(&Variable::Claims));
    }

    #[test]
    fn token_only_expressions() {
        assert!(refs("claims.a == token.alg").per_token_only());
        assert!(!refs("claims.a == request.path").per_token_only());
        assert!(!refs("1 == 1").per_token_only());
    }
}
