//! Custom CEL functions for the seed scenarios. Each is pure: time comes in as an argument
//! (usually `now`), so results are reproducible with a fixed clock.
//!
//! | function | result |
//! | --- | --- |
//! | `daysBetween(a, b)` | whole days from timestamp `a` to timestamp `b` (negative if `b` is earlier) |
//! | `daysUntilAnniversary(date, now)` | days from `now` (UTC date) to the next anniversary of `date` (`YYYY-MM-DD`); 0 on the day |
//! | `inCidr(ip, cidr)` | whether the IP address string is inside the CIDR block |

use cel::{Context, ExecutionError};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate};
use std::sync::Arc;

pub fn register(ctx: &mut Context<'static, 'static>) {
    // The names are ours and unknown to the standard library, so registration cannot conflict.
    let _ = ctx.add_function("daysBetween", days_between);
    let _ = ctx.add_function("daysUntilAnniversary", days_until_anniversary);
    let _ = ctx.add_function("inCidr", in_cidr);
}

fn days_between(a: DateTime<FixedOffset>, b: DateTime<FixedOffset>) -> i64 {
    (b - a).num_days()
}

fn days_until_anniversary(
    date: Arc<String>,
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

fn in_cidr(ip: Arc<String>, cidr: Arc<String>) -> Result<bool, ExecutionError> {
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
}
