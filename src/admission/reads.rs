//! What a route's rules read by name from the request's headers and query must be one value to
//! every reader. The rules see one value per name; upstreams disagree about several: a header
//! sent as several lines is joined for the rules, while Go's `Header.Get` and most frameworks'
//! singular accessors take the first line; a repeated query parameter is its first value to
//! the rules and Go, its last to PHP, Rails and Django. And a name may reach an upstream under
//! another spelling than the rules read: CGI servers (PHP, Rack, WSGI) read `X_Tenant` as
//! `X-Tenant`; PHP reads `role[]`, `role[x]`, `role%00x` as `role` and `ro.le` as `ro_le`, Rails
//! and Express `[role]` as `role`. A request
//! where any of that touches a name the rules read is refused, on that route only.

use crate::policy::references::{NameReads, RequestReads};
use crate::policy::DenyReason;
use http::HeaderMap;

/// Headers whose lines the rules see joined and every upstream reads so too: cookies (an HTTP/2
/// client splits them, RFC 9113 §8.2.3) and a proxy chain, both sent on as one line
/// (`upstream_head`), and the lists proxies append to, which readers take whole.
const JOINED_HEADERS: [&str; 4] = ["cookie", "x-forwarded-for", "via", "forwarded"];

/// Checks the headers and the query (`?` excluded) against what the route reads.
pub(super) fn one_value_each(
    reads: &RequestReads,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), (DenyReason, String)> {
    if !reads.headers.is_empty() {
        headers_are_one_value(&reads.headers, headers)
            .map_err(|m| (DenyReason::AmbiguousHeader, m))?;
    }
    if let (false, Some(q)) = (reads.query.is_empty(), query) {
        query_is_one_value(&reads.query, q).map_err(|m| (DenyReason::AmbiguousQuery, m))?;
    }
    Ok(())
}

/// `X_Tenant` as CGI servers name it: `x-tenant`.
fn cgi(name: &str) -> String {
    name.replace('_', "-")
}

/// Whether two (lower-case) names are one to CGI servers, without allocating: most requests on
/// routes that read headers have no `_` anywhere.
fn same_to_cgi(a: &str, b: &str) -> bool {
    let dash = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| dash(x) == dash(y))
}

fn headers_are_one_value(reads: &NameReads, headers: &HeaderMap) -> Result<(), String> {
    for name in headers.keys() {
        let n = name.as_str();
        if reads.reads(n)
            && !JOINED_HEADERS.contains(&n)
            && headers.get_all(name).iter().nth(1).is_some()
        {
            return Err(format!(
                "the header `{n}`, which the rules read, is sent more than once"
            ));
        }
        let respelled = if reads.any {
            n.contains('_')
        } else {
            reads.names.iter().any(|r| r != n && same_to_cgi(r, n))
        };
        if respelled {
            return Err(format!(
                "the header `{n}` is `{}` to CGI servers, a header the rules read",
                cgi(n)
            ));
        }
    }
    Ok(())
}

/// The names a query parameter's (decoded) name stands for in the query grammars of common
/// upstreams. PHP cuts a name at NUL, drops leading spaces, reads `role[]` and `role[x]` as
/// `role`, and `.`, ` ` and an unclosed `[` as `_`; Rack (Rails) and `qs` (Express) drop
/// leading `[` and `]` and read up to the next one (`[role]`, `role]` and `role[x]` are `role`).
fn stems(name: &str) -> [String; 2] {
    let cut = name.split('\0').next().unwrap_or("");
    let php = {
        let n = cut.trim_start_matches(' ');
        let base = match n.find('[') {
            Some(i) if n[i..].contains(']') => &n[..i],
            _ => n,
        };
        base.chars()
            .map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c })
            .collect()
    };
    let rack = cut
        .trim_start_matches(['[', ']'])
        .split(['[', ']'])
        .next()
        .unwrap_or("")
        .to_string();
    [php, rack]
}

/// Whether some upstream reads the two names as one.
fn one_name(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (x, y) = (stems(a), stems(b));
    x.iter().any(|s| y.contains(s))
}

fn query_is_one_value(reads: &NameReads, query: &str) -> Result<(), String> {
    let names: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, _)| k.into_owned())
        .collect();
    for (i, n) in names.iter().enumerate() {
        let read = reads.any || reads.names.iter().any(|r| one_name(r, n));
        if !read {
            continue;
        }
        // Read by the rules under one spelling, sent under another an upstream reads as it.
        let respelled = if reads.any {
            stems(n).iter().any(|s| s != n)
        } else {
            !reads.names.contains(n)
        };
        if respelled {
            return Err(format!(
                "the query parameter `{n}` is another name's to some upstreams (PHP, Rails, Express), a name the rules read"
            ));
        }
        if names[i + 1..].iter().any(|m| one_name(m, n)) {
            return Err(format!(
                "the query parameter `{n}`, which the rules read, is sent more than once"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(names: &[&str], any: bool) -> NameReads {
        NameReads {
            names: names.iter().map(|s| s.to_string()).collect(),
            any,
        }
    }

    #[test]
    fn spellings_of_one_name() {
        for (a, b) in [
            ("role", "role[]"),
            ("role", "role[x][y]"),
            ("ro_le", "ro.le"),
            ("ro_le", "ro le"),
            ("role", " role"),
            ("ro_le", "ro[le"),
            ("ro", "ro[le"),
            ("role", "role\0x"),
            ("role", "[role]"),
            ("role", "role]"),
        ] {
            assert!(one_name(a, b), "{a} {b}");
        }
        for (a, b) in [("role", "roles"), ("a", "b"), ("role", "x[role]")] {
            assert!(!one_name(a, b), "{a} {b}");
        }
    }

    #[test]
    fn a_query_parameter_the_rules_read_is_one_value() {
        let r = reads(&["account"], false);
        for ok in ["account=a", "account=a&other=1&other=2", "x[]=1&x[]=2", ""] {
            assert_eq!(query_is_one_value(&r, ok), Ok(()), "{ok}");
        }
        for bad in [
            "account=a&account=b",
            "account=a&account[]=b",
            "account[]=b",
            "acc%6Funt=a&account=b",
            "account[x]=b",
            "account=a&account%00=b",
            "account=a&[account]=b",
            "account]=b",
        ] {
            assert!(query_is_one_value(&r, bad).is_err(), "{bad}");
        }
        // A name with PHP's mangling in the policy: its other spelling is refused.
        let r = reads(&["a.b"], false);
        assert!(query_is_one_value(&r, "a_b=1").is_err());
        assert_eq!(query_is_one_value(&r, "a.b=1"), Ok(()));
        // Read whole: any repeated or respelled parameter.
        let r = reads(&[], true);
        assert_eq!(query_is_one_value(&r, "a=1&b=2"), Ok(()));
        assert!(query_is_one_value(&r, "a=1&a=2").is_err());
        assert!(query_is_one_value(&r, "a[]=1").is_err());
    }

    #[test]
    fn a_header_the_rules_read_is_one_line_and_one_spelling() {
        let mut h = HeaderMap::new();
        h.append("x-tenant", "a".parse().unwrap());
        h.append("accept", "a".parse().unwrap());
        h.append("accept", "b".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        let r = reads(&["x-tenant", "cookie"], false);
        assert_eq!(headers_are_one_value(&r, &h), Ok(()));
        h.append("x-tenant", "b".parse().unwrap());
        assert!(headers_are_one_value(&r, &h).is_err());
        let mut h = HeaderMap::new();
        h.append("x_tenant", "a".parse().unwrap());
        assert!(headers_are_one_value(&r, &h).is_err());
        assert!(headers_are_one_value(&reads(&[], true), &h).is_err());
        assert_eq!(headers_are_one_value(&reads(&["other"], false), &h), Ok(()));
    }
}
