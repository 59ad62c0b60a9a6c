//! How `eval` and `test` show a decision to a person: the route, the token, each source, rule
//! and attribute, the upstream and the headers it would receive.

use claimgate::explain::{Explanation, Verdict};
use std::fmt::Write as _;

/// The human-readable report of an explanation.
pub fn explanation(e: &Explanation) -> String {
    let s = &e.summary;
    let t = &e.trace;
    let mut out = String::new();
    let _ = match s.decision {
        Verdict::Allow => writeln!(out, "decision:  ALLOW"),
        Verdict::Deny => writeln!(
            out,
            "decision:  DENY {} ({})",
            s.status,
            s.reason.unwrap_or("")
        ),
    };
    if let Some(r) = &s.rule {
        let _ = writeln!(out, "  rule:    {r}");
    }
    if let Some(m) = &s.message {
        let _ = writeln!(out, "  message: {m}");
    }
    match &t.route {
        Some(r) => {
            let _ = write!(out, "route:     {} ({})", r.name, r.file);
            if !r.params.is_empty() {
                let _ = write!(out, " params {:?}", r.params);
            }
            out.push('\n');
        }
        None => {
            let _ = writeln!(
                out,
                "route:     {}",
                s.route.as_deref().unwrap_or("(none matched)")
            );
        }
    }
    if let Some(tok) = &t.token {
        let _ = writeln!(
            out,
            "token:     issuer {}, sub {}{}",
            tok.issuer,
            tok.subject.as_deref().unwrap_or("-"),
            if tok.verified {
                ", signature verified"
            } else {
                "  [UNVERIFIED: claims given directly, no signature checked]"
            }
        );
    }
    if !t.sources.is_empty() {
        out.push_str("sources:\n");
        for src in &t.sources {
            let v = match &src.value {
                Some(v) => v.to_string(),
                None => "(unavailable)".into(),
            };
            let _ = writeln!(out, "  {:<16} {} -> {}", src.name, src.url, v);
        }
    }
    if !t.rules.is_empty() {
        out.push_str("rules:\n");
        for r in &t.rules {
            let mode = if r.mode == "audit" { " [audit]" } else { "" };
            let mut line = format!("  {:<28} {:<8}{mode}", r.name, r.result);
            if let Some(e) = &r.error {
                let _ = write!(line, " error: {e}");
            } else if let Some(m) = &r.message {
                let _ = write!(line, " {m}");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if !t.attrs.is_empty() {
        out.push_str("attributes:\n");
        for (k, v) in &t.attrs {
            let _ = writeln!(out, "  {k} = {v}");
        }
    }
    if let Some(u) = &s.upstream {
        let _ = writeln!(out, "upstream:  {u}");
    }
    if !t.forward.is_empty() {
        out.push_str("forwarded headers:\n");
        for (k, v) in &t.forward {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    if !s.audit_denials.is_empty() {
        let _ = writeln!(out, "audit:     would deny: {}", s.audit_denials.join(", "));
    }
    out
}
