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
                tracing::debug!(route = %route.name, result = ?other, "upstream selection failed");
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
    RouteVerdict {
        outcome: Outcome::Allow(Allow { upstream, forward }),
        audits,
    }
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
