//! Custom CEL functions for the seed scenarios. Each is pure: time comes in as an argument
//! (usually `now`), so results are reproducible with a fixed clock.
//!
//! | function | result |
//! | --- | --- |
//! | `daysBetween(a, b)` | whole days from timestamp `a` to timestamp `b` (negative if `b` is earlier) |
//! | `daysUntilAnniversary(date, now)` | days from `now` (UTC date) to the next anniversary of `date` (`YYYY-MM-DD`); 0 on the day |
//! | `inCidr(ip, cidr)` | whether the IP address string is inside the CIDR block |
//! | `s.matches(re)`, `matches(s, re)` | the standard function; literal patterns compiled once, at load |

use super::regexes::Regexes;
use cel::common::types::{CelBool, CelString};
use cel::common::value::CowVal;
use cel::extractors::This;
use cel::{Context, ExecutionError, FunctionContext};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use std::sync::Arc;

/// One of claimgate's own functions, as conditions call it.
pub struct Custom {
    pub name: &'static str,
    /// Its arguments, when called as `f(...)` (as `x.f(...)`, `x` is the first).
    pub arity: usize,
}

/// claimgate's functions; `register` adds each, and a test checks the two agree.
pub const CUSTOM: &[Custom] = &[
    Custom {
        name: "daysBetween",
        arity: 2,
    },
    Custom {
        name: "daysUntilAnniversary",
        arity: 2,
    },
    Custom {
        name: "inCidr",
        arity: 2,
    },
    Custom {
        name: "matches",
        arity: 2,
    },
];

/// Checks a literal argument of claimgate's functions at load: argument `index` of a call to
/// `name` written as `text`.
pub fn literal_check(name: &str, index: usize, text: &str) -> Result<(), String> {
    match (name, index) {
        ("inCidr", 1) => text
            .parse::<ipnet::IpNet>()
            .map(|_| ())
            .map_err(|_| format!("`{text}` is not a CIDR block such as `10.0.0.0/8`")),
        ("inCidr", 0) => text
            .parse::<std::net::IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("`{text}` is not an IP address")),
        ("daysUntilAnniversary", 0) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(|_| ())
            .map_err(|_| format!("`{text}` is not a date such as `2024-02-29`")),
        _ => Ok(()),
    }
}

pub fn register(ctx: &mut Context<'static, 'static>, regexes: Arc<Regexes>) {
    // The names are ours and unknown to the standard library (built without its `matches`), so
    // registration cannot conflict.
    let _ = ctx.add_function("daysBetween", days_between);
    let _ = ctx.add_function("daysUntilAnniversary", days_until_anniversary);
    let _ = ctx.add_function("inCidr", in_cidr);
    let matches: MatchesFn = Box::new(move |ftx| matches(ftx, &regexes));
    let _ = ctx.add_function("matches", matches);
}

type MatchesFn = Box<
    dyn for<'c, 'a> Fn(&mut FunctionContext<'c, 'a>) -> Result<CowVal<'c, 'a>, ExecutionError>
        + Send
        + Sync,
>;

/// `s.matches(re)` and `matches(s, re)`: the standard function, with literal patterns compiled
/// once at load (see [`Regexes`]).
fn matches<'c, 'a>(
    ftx: &mut FunctionContext<'c, 'a>,
    regexes: &Regexes,
) -> Result<CowVal<'c, 'a>, ExecutionError> {
    let (text, pattern) = match (&ftx.this, ftx.args.as_slice()) {
        (Some(t), [p]) => (t.as_ref(), p.as_ref()),
        (None, [t, p]) => (t.as_ref(), p.as_ref()),
        (this, args) => {
            return Err(ExecutionError::invalid_argument_count(
                2,
                args.len() + usize::from(this.is_some()),
            ))
        }
    };
    let (Some(text), Some(pattern)) = (
        text.downcast_ref::<CelString>(),
        pattern.downcast_ref::<CelString>(),
    ) else {
        return Err(ExecutionError::no_such_overload(
            "matches",
            vec![
                text.get_type().name().to_string(),
                pattern.get_type().name().to_string(),
            ],
        ));
    };
    let re = regexes
        .get(pattern.inner())
        .map_err(|e| ExecutionError::function_error("matches", e))?;
    Ok(CowVal::Owned(Box::new(CelBool::from(
        re.is_match(text.inner()),
    ))))
}

// The first argument is `This`: each function is also called as a method of it
// (`request.client_ip.inCidr('10.0.0.0/8')`), as `check` accepts.
fn days_between(This(a): This<DateTime<FixedOffset>>, b: DateTime<FixedOffset>) -> i64 {
    (b - a).num_days()
}

fn days_until_anniversary(
    This(date): This<Arc<String>>,
    now: DateTime<FixedOffset>,
) -> Result<i64, ExecutionError> {
    let d = NaiveDate::parse_from_str(&date, "%Y-%m-%d").map_err(|_| {
        ExecutionError::function_error("daysUntilAnniversary", "expected a YYYY-MM-DD date")
    })?;
    let today = now.naive_utc().date();
    // 29 February falls on 28 February in common years.
    let on = |year: i32| {
        NaiveDate::from_ymd_opt(year, d.month(), d.day())
            .or_else(|| NaiveDate::from_ymd_opt(year, d.month(), d.day() - 1))
    };
    let this_year = on(today.year())
        .ok_or_else(|| ExecutionError::function_error("daysUntilAnniversary", "invalid date"))?;
    let next = if this_year >= today {
        this_year
    } else {
        on(today.year() + 1)
            .ok_or_else(|| ExecutionError::function_error("daysUntilAnniversary", "invalid date"))?
    };
    Ok((next - today).num_days())
}

fn in_cidr(This(ip): This<Arc<String>>, cidr: Arc<String>) -> Result<bool, ExecutionError> {
    let net: ipnet::IpNet = cidr
        .parse()
        .map_err(|_| ExecutionError::function_error("inCidr", "invalid CIDR"))?;
    Ok(ip
        .parse::<std::net::IpAddr>()
        .map(|a| net.contains(&a))
        .unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use crate::policy::cel::CelRuntime;
    use cel::Value;

    fn eval(expr: &str) -> Value {
        let rt = CelRuntime::new();
        let ctx = rt.root().new_inner_scope();
        rt.compile(expr).unwrap().execute(&ctx).unwrap()
    }

    #[test]
    fn days_between_timestamps() {
        assert_eq!(
            eval(
                "daysBetween(timestamp('2026-01-01T00:00:00Z'), timestamp('2026-03-01T12:00:00Z'))"
            ),
            Value::Int(59)
        );
    }

    #[test]
    fn anniversaries() {
        let at = |now: &str, date: &str| {
            eval(&format!(
                "daysUntilAnniversary('{date}', timestamp('{now}'))"
            ))
        };
        assert_eq!(at("2026-06-10T23:00:00Z", "1990-06-10"), Value::Int(0));
        assert_eq!(at("2026-06-10T00:00:00Z", "1990-06-13"), Value::Int(3));
        assert_eq!(at("2026-12-30T00:00:00Z", "1990-01-02"), Value::Int(3));
        assert_eq!(at("2027-02-27T00:00:00Z", "2000-02-29"), Value::Int(1));
    }

    #[test]
    fn cidr_membership() {
        assert_eq!(eval("inCidr('10.1.2.3', '10.0.0.0/8')"), Value::Bool(true));
        assert_eq!(eval("inCidr('11.1.2.3', '10.0.0.0/8')"), Value::Bool(false));
        assert_eq!(eval("inCidr('::1', '::1/128')"), Value::Bool(true));
    }

    /// Each function is also a method of its first argument, as `check` accepts it.
    #[test]
    fn every_function_is_also_a_method_of_its_first_argument() {
        assert_eq!(eval("'10.1.2.3'.inCidr('10.0.0.0/8')"), Value::Bool(true));
        assert_eq!(
            eval(
                "timestamp('2026-01-01T00:00:00Z').daysBetween(timestamp('2026-01-03T00:00:00Z'))"
            ),
            Value::Int(2)
        );
        assert_eq!(
            eval("'1990-06-13'.daysUntilAnniversary(timestamp('2026-06-10T00:00:00Z'))"),
            Value::Int(3)
        );
        assert_eq!(eval("'abc'.matches('^a')"), Value::Bool(true));
    }
}
