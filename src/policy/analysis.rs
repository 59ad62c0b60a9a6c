//! What an expression reads, and how much work it can take, found from its syntax tree at load.
//!
//! The `cel` crate evaluates without any step limit, and a rule runs on the request path, so the
//! budget is enforced before a rule can run: each expression's worst-case number of evaluation
//! steps is bounded from the sizes the gateway's limits allow its inputs (a list in the claims
//! cannot have more elements than a token has bytes, a body list more than `body_limit`), and an
//! expression over the budget is a load error. This is the estimated-cost check Kubernetes
//! applies to CEL in admission policies; nested iteration over request data is what it stops.

use super::variable::{SizedBy, Variable};
use cel::common::ast::{EntryExpr, Expr};
use cel::IdedExpr;

/// The most elements a list or map read from each variable can have, derived from the limits.
#[derive(Debug, Clone, Copy)]
pub struct InputBounds {
    pub claims: u64,
    pub body: u64,
    pub request: u64,
    pub ext: u64,
}

impl InputBounds {
    /// Every element of a JSON list or map takes at least two bytes (`0,`), so `bytes / 2` bounds
    /// the elements of any collection in an input of `bytes`.
    pub fn from_bytes(token: usize, body: usize, headers: usize, source: usize) -> Self {
        let n = |b: usize| (b as u64 / 2).max(1);
        InputBounds {
            claims: n(token),
            body: n(body),
            request: n(headers),
            ext: n(source),
        }
    }

    fn any(&self) -> u64 {
        self.claims.max(self.body).max(self.request).max(self.ext)
    }

    /// How many times a comprehension over `range` can iterate.
    fn iterations(&self, range: &IdedExpr, bound: &[(&str, u64)]) -> u64 {
        if let Expr::List(l) = &range.expr {
            return l.elements.len() as u64;
        }
        if let Expr::Map(m) = &range.expr {
            return m.entries.len() as u64;
        }
        let Some(name) = root(range) else {
            // A computed list (`map`, `filter`, a function's result) is bounded by the largest
            // input: it cannot have more elements than what it was made from.
            return self.any();
        };
        // A loop variable shadows a variable of the same name.
        let loop_bound = bound.iter().rev().find(|(n, _)| *n == name);
        match (
            loop_bound,
            Variable::parse(name).and_then(Variable::sized_by),
        ) {
            // An element of an enclosing loop's range is no larger than that range.
            (Some((_, n)), _) => *n,
            (None, Some(SizedBy::Token)) => self.claims,
            (None, Some(SizedBy::Body)) => self.body,
            (None, Some(SizedBy::Headers)) => self.request,
            (None, Some(SizedBy::Source)) => self.ext,
            (None, None) => self.any(),
        }
    }
}

/// The variable a field selection starts from: `claims` for `claims.a.b`.
fn root(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(name) => Some(name),
        Expr::Select(s) => root(&s.operand),
        // `claims.a[0]`, `body.items.filter(...)`: indexing and list macros keep the size bound
        // of what they start from.
        Expr::Call(c) if c.func_name == "_[_]" => c.args.first().and_then(root),
        _ => None,
    }
}

/// An upper bound on the steps evaluating `e` takes: one per node, with a comprehension's body
/// counted once per possible iteration. Saturates instead of overflowing.
pub fn worst_case_steps(e: &IdedExpr, bounds: &InputBounds) -> u64 {
    let mut bound = Vec::new();
    steps(e, bounds, &mut bound)
}

fn steps<'a>(e: &'a IdedExpr, b: &InputBounds, bound: &mut Vec<(&'a str, u64)>) -> u64 {
    let sum = |items: &mut dyn Iterator<Item = &'a IdedExpr>, bound: &mut Vec<(&'a str, u64)>| {
        items.fold(0u64, |acc, x| acc.saturating_add(steps(x, b, bound)))
    };
    let own = match &e.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
        Expr::Select(s) => steps(&s.operand, b, bound),
        Expr::Call(c) => sum(
            &mut c.target.iter().map(|t| &**t).chain(c.args.iter()),
            bound,
        ),
        Expr::List(l) => sum(&mut l.elements.iter(), bound),
        Expr::Map(m) => sum(&mut entry_exprs(&m.entries), bound),
        Expr::Struct(s) => sum(&mut entry_exprs(&s.entries), bound),
        Expr::Comprehension(c) => {
            let n = b.iterations(&c.iter_range, bound);
            let outside =
                steps(&c.iter_range, b, bound).saturating_add(steps(&c.accu_init, b, bound));
            let depth = bound.len();
            bound.push((c.iter_var.as_str(), n));
            if let Some(v2) = &c.iter_var2 {
                bound.push((v2.as_str(), n));
            }
            // `map` and `filter` append to their accumulator in place (the crate recognises the
            // shape), so a step costs what its expression costs.
            bound.push((c.accu_var.as_str(), n));
            let per_iteration =
                steps(&c.loop_cond, b, bound).saturating_add(steps(&c.loop_step, b, bound));
            let result = steps(&c.result, b, bound);
            bound.truncate(depth);
            outside
                .saturating_add(n.saturating_mul(per_iteration))
                .saturating_add(result)
        }
    };
    own.saturating_add(1)
}

fn entry_exprs(
    entries: &[cel::common::ast::IdedEntryExpr],
) -> impl Iterator<Item = &IdedExpr> + '_ {
    entries.iter().flat_map(|en| match &en.expr {
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
        EntryExpr::StructField(f) => vec![&f.value],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(src: &str) -> cel::Program {
        cel::Program::compile(src).unwrap()
    }

    const BOUNDS: InputBounds = InputBounds {
        claims: 4096,
        body: 32768,
        request: 16384,
        ext: 32768,
    };

    fn cost(src: &str) -> u64 {
        worst_case_steps(program(src).expression(), &BOUNDS)
    }

    #[test]
    fn plain_expressions_cost_their_size() {
        assert!(cost("claims.level >= 2 && 'read' in claims.permissions") < 20);
    }

    #[test]
    fn one_loop_costs_its_range_and_nesting_multiplies() {
        let one = cost("claims.roles.exists(r, r == 'admin')");
        assert!((4096..4096 * 20).contains(&one), "{one}");
        let nested = cost("claims.a.all(x, claims.b.all(y, x != y))");
        assert!(nested > 4096 * 4096, "{nested}");
        let literal = cost("['a', 'b'].exists(r, r in claims.roles)");
        assert!(literal < 50, "{literal}");
        // Iterating over an element of the outer range is bounded by the outer range.
        let inner = cost("body.rows.all(r, r.all(c, c > 0))");
        assert!(inner > 32768 * 32768, "{inner}");
    }

    #[test]
    fn map_and_filter_are_linear_and_their_results_bounded_by_the_inputs() {
        let m = cost("body.items.map(i, i.amount).size() > 0");
        assert!((32768..32768 * 20).contains(&m), "{m}");
        let chained = cost("body.items.filter(i, i.amount > 10).exists(i, i.amount > 99)");
        assert!(chained < 32768 * 40, "{chained}");
    }

    #[test]
    fn huge_costs_saturate() {
        let c = cost("body.a.all(a, body.a.all(b, body.a.all(c, body.a.all(d, body.a.all(e, body.a.all(f, a == f))))))");
        assert_eq!(c, u64::MAX);
    }
}
