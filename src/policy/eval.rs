//! Rules -> decision for one matched route.

use super::activation::Activation;
use super::cel::to_message_text;
use super::decision::{Allow, AuditDenial, Denial, DenyReason, Outcome};
use super::trace::{RuleTrace, Trace};
use super::{Condition, Message, Mode, Route, Rule};
use ::cel::Value;

/// What evaluating a route's rules gives: the outcome and the audit-mode would-be denials.
pub struct RouteVerdict {
    pub outcome: Outcome,
    pub audits: Vec<AuditDenial>,
}

enum RuleResult {
    Pass,
    Deny,
    Error(String),
}

fn run_rule(rule: &Rule, ctx: &Activation<'_>) -> RuleResult {
    let (program, deny_when) = match &rule.condition {
        Condition::AllowIf(p) => (p, false),
        Condition::DenyIf(p) => (p, true),
    };
    match ctx.execute(program) {
        Ok(Value::Bool(b)) if b == deny_when => RuleResult::Deny,
        Ok(Value::Bool(_)) => RuleResult::Pass,
        Ok(other) => RuleResult::Error(format!(
            "condition gave {} instead of a bool",
            other.type_of()
        )),
        Err(e) => RuleResult::Error(e.to_string()),
    }
}

fn message(rule: &Rule, ctx: &Activation<'_>) -> String {
    match &rule.message {
        Message::Text(t) => t.clone(),
        Message::Expr(p) => match ctx.execute(p) {
            Ok(v) => to_message_text(&v),
            // The denial stands; only its wording failed.
            Err(_) => format!("denied by rule `{}`", rule.name),
        },
    }
}

/// Evaluates `route`'s rules in order, then its forwarded headers. The first enforced denial
/// decides; an evaluation error denies with `policy_error` (fail closed).
pub fn evaluate(route: &Route, activation: &Activation<'_>) -> RouteVerdict {
    evaluate_traced(route, activation, None)
}

/// [`evaluate`], recording each step in `trace` when one is given.
pub fn evaluate_traced(
    route: &Route,
    activation: &Activation<'_>,
    mut trace: Option<&mut Trace>,
) -> RouteVerdict {
    let verdict = run(route, activation, trace.as_deref_mut());
    if let Some(t) = trace {
        // A denial stops the evaluation: the rules after it did not run.
        for rule in route.rules.iter().skip(t.rules.len()) {
            t.rules.push(rule_trace(rule, "not run", None, None));
        }
        t.attrs = activation.attr_values();
        if let Outcome::Allow(a) = &verdict.outcome {
            t.upstream = Some(a.upstream.to_string());
            t.forward = a
                .forward
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
        }
    }
    verdict
}

fn run(route: &Route, activation: &Activation<'_>, mut trace: Option<&mut Trace>) -> RouteVerdict {
    let ctx = activation;
    let mut audits = Vec::new();

    for rule in &route.rules {
        let result = run_rule(rule, ctx);
        let (reason, status, msg, error) = match result {
            RuleResult::Pass => {
                if let Some(t) = trace.as_deref_mut() {
                    t.rules.push(rule_trace(rule, "pass", None, None));
                }
                continue;
            }
            RuleResult::Deny => (
                DenyReason::RuleDenied,
                rule.status,
                message(rule, ctx),
                None,
            ),
            RuleResult::Error(e) => {
                tracing::debug!(route = %route.name, rule = %rule.name, error = %e, "rule evaluation failed");
                (
                    DenyReason::PolicyError,
                    403,
                    format!("rule `{}` could not be evaluated", rule.name),
                    Some(e),
                )
            }
        };
        if let Some(t) = trace.as_deref_mut() {
            let result = if error.is_some() { "error" } else { "deny" };
            t.rules
                .push(rule_trace(rule, result, Some(msg.clone()), error));
        }
        if rule.mode == Mode::Audit {
            audits.push(AuditDenial {
                rule: rule.name.clone(),
                reason,
                status,
                message: msg,
            });
            continue;
        }
        return RouteVerdict {
            outcome: Outcome::Deny(Denial::by_rule(rule.name.clone(), status, reason, msg)),
            audits,
        };
    }

    let mut forward = Vec::with_capacity(route.forward.len());
    for f in &route.forward {
        match ctx.header_value(&f.expr) {
            Ok(Some(v)) => forward.push((f.header.clone(), v)),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(route = %route.name, header = %f.header, error = %e, "forward header evaluation failed");
                return forward_error(route, &f.header, audits);
            }
        }
    }
    let mut upstream = route.upstream.clone();
    for case in &route.upstream_select {
        match ctx.execute(&case.condition) {
            Ok(Value::Bool(true)) => {
                upstream = case.upstream.clone();
                break;
            }
            Ok(Value::Bool(false)) => {}
            other => {
                // The kind of result only: a value would be a claim's or a header's.
                let result = match &other {
                    Ok(v) => format!("a {} instead of a bool", v.type_of()),
                    Err(e) => e.to_string(),
                };
                tracing::debug!(route = %route.name, %result, "upstream selection failed");
                return RouteVerdict {
                    outcome: Outcome::Deny(Denial::new(
                        403,
                        DenyReason::PolicyError,
                        format!("the upstream of route `{}` could not be chosen", route.name),
                    )),
                    audits,
                };
            }
        }
    }
    let limits = match charges(route, ctx) {
        Ok(l) => l,
        Err(denial) => {
            return RouteVerdict {
                outcome: Outcome::Deny(*denial),
                audits,
            }
        }
    };
    RouteVerdict {
        outcome: Outcome::Allow(Allow {
            upstream,
            forward,
            limits,
        }),
        audits,
    }
}

/// The charges of the route's limits; one that cannot be evaluated denies (fail closed).
fn charges(
    route: &Route,
    ctx: &Activation<'_>,
) -> Result<Vec<crate::ratelimit::Charge>, Box<Denial>> {
    route
        .limits
        .iter()
        .map(|l| {
            charge(route, l, ctx).map_err(|e| {
                tracing::debug!(route = %route.name, limit = %l.name, error = %e, "limit evaluation failed");
                Box::new(Denial::by_rule(
                    l.name.clone(),
                    403,
                    DenyReason::PolicyError,
                    format!("limit `{}` could not be evaluated", l.name),
                ))
            })
        })
        .collect()
}

/// A limit's charge for this request: its key (a string or a number), its limit and cost
/// (finite numbers; a cost not negative).
fn charge(
    route: &Route,
    l: &crate::policy::Limit,
    ctx: &Activation<'_>,
) -> Result<crate::ratelimit::Charge, String> {
    let key = match ctx.execute(&l.key).map_err(|e| e.to_string())? {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        other => return Err(format!("the key is {other:?}, not a string or a number")),
    };
    let limit = number(ctx.execute(&l.limit).map_err(|e| e.to_string())?)
        .ok_or("the limit is not a number")?;
    // A limit so small that one unit would take forever to come back admits nothing (the
    // arithmetic would otherwise divide into infinity).
    let limit = if limit > 0.0 && (l.window_ms as f64 / limit).is_finite() {
        limit
    } else {
        0.0
    };
    let cost = match &l.cost {
        Some(c) => number(ctx.execute(c).map_err(|e| e.to_string())?)
            .filter(|c| *c >= 0.0)
            .ok_or("the cost is not a number of zero or more")?,
        None => 1.0,
    };
    Ok(crate::ratelimit::Charge {
        name: l.name.clone(),
        key: crate::ratelimit::Charge::key_for(&route.name, &l.name, &key),
        limit,
        window_ms: l.window_ms,
        cost,
        on_store_error: l.on_store_error,
    })
}

/// A finite number from a CEL value.
fn number(v: Value) -> Option<f64> {
    let n = match v {
        Value::Int(i) => i as f64,
        Value::UInt(u) => u as f64,
        Value::Float(f) => f,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn rule_trace(
    rule: &Rule,
    result: &'static str,
    message: Option<String>,
    error: Option<String>,
) -> RuleTrace {
    RuleTrace {
        name: rule.name.to_string(),
        mode: match rule.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        },
        result,
        message,
        error,
    }
}

fn forward_error(
    route: &Route,
    header: &http::HeaderName,
    audits: Vec<AuditDenial>,
) -> RouteVerdict {
    RouteVerdict {
        outcome: Outcome::Deny(Denial::new(
            403,
            DenyReason::PolicyError,
            format!(
                "header `{header}` of route `{}` could not be computed",
                route.name
            ),
        )),
        audits,
    }
}
