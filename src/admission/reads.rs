//! What a route's rules read by name from the request's headers and query must be one value to
//! every reader. The rules see one value per name; upstreams disagree about several: a header
//! sent as several lines is joined for the rules, while Go's `Header.Get` and most frameworks'
//! singular accessors take the first line; a repeated query parameter is its first value to
//! the rules and Go, its last to PHP, Rails and Django. And a name may reach an upstream under
//! another spelling than the rules read: CGI servers (PHP, Rack, WSGI) read `X_Tenant` as
//! `X-Tenant`; PHP reads `role[]`, `role[x]`, `role%00x` as `role` and `ro.le` as `ro_le`, Rails
//! and Express `[role]` as `role`. A request
//! where any of that touches a name the rules read is refused, on that route only.
//!
//! Some upstreams also read a query parameter from the body: Go's `FormValue`, PHP's
//! `$_REQUEST`, Rails' `params` and ASP.NET's model binding take a form field (Rails also a
//! multipart field and a JSON member) of the same name, most of them over the query's. On a
//! route whose rules read query parameters, such a body is read and its field names checked.
//! And PHP's `$_REQUEST` and ASP.NET's `Request[...]` read cookies as parameters too.

use crate::facts::{Body, RequestFacts};
use crate::media_type::{self, MediaType};
use crate::policy::references::{NameReads, RequestReads};
use crate::policy::DenyReason;
use futures_util::FutureExt as _;
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
    if !reads.query.is_empty() {
        no_cookie_is_a_parameter(&reads.query, headers)
            .map_err(|m| (DenyReason::AmbiguousQuery, m))?;
    }
    Ok(())
}

/// Some upstreams read a cookie as a request parameter: PHP's `$_REQUEST` takes cookies after
/// the query and the form (over them) when `request_order` is unset, as it is without a
/// `php.ini` (the official container images), and classic ASP.NET's `Request[name]` reads a
/// cookie when the query has no such parameter. A cookie named (in any spelling PHP reads) as
/// a query parameter the rules read is refused; on a route whose rules read the whole query,
/// every cookie is.
fn no_cookie_is_a_parameter(reads: &NameReads, headers: &HeaderMap) -> Result<(), String> {
    for line in headers.get_all(http::header::COOKIE) {
        // PHP splits at `;` and decodes names as it decodes the query's.
        for pair in line.as_bytes().split(|b| *b == b';') {
            let Some((name, _)) = form_urlencoded::parse(pair.trim_ascii_start()).next() else {
                continue;
            };
            if reads.any || reads.names.iter().any(|r| one_name(r, &name)) {
                return Err(format!(
                    "the cookie `{name}` is the query parameter `{name}` to some upstreams (PHP's `$_REQUEST`, ASP.NET's `Request[...]`), a name the rules read"
                ));
            }
        }
    }
    Ok(())
}

/// A refusal: status, reason, message.
pub type Refusal = (u16, DenyReason, String);

/// Whether a body's `Content-Type` is one upstreams read fields from: a form, a multipart form,
/// JSON. A type that is not one well-formed media type (or several types) cannot be told apart
/// from those, so it counts as one.
fn has_fields(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let Some(first) = types.next() else {
        return false;
    };
    if types.next().is_some() {
        return true;
    }
    match first.to_str().ok().map(media_type::parse) {
        Some(Ok(m)) => fields_type(&m),
        _ => true,
    }
}

fn fields_type(m: &MediaType<'_>) -> bool {
    m.is("application", "x-www-form-urlencoded") || m.is("multipart", "form-data") || m.is_json()
}

/// Whether admission must have the body read for [`body_fields_are_not_read`]: the route's
/// rules read query parameters and the body is typed as fields.
pub(super) fn body_fields_checked(reads: &RequestReads, headers: &HeaderMap) -> bool {
    !reads.query.is_empty() && has_fields(headers)
}

/// On a route whose rules read query parameters, no field of the body (a form's, a multipart
/// form's, a JSON object's members) may be a name the rules read, in any spelling an upstream
/// reads as it. `json` is the body already parsed for the rules, on routes that read it.
pub fn body_fields_are_not_read(
    reads: &RequestReads,
    req: &RequestFacts<'_>,
    json: Option<&serde_json::Value>,
) -> Result<(), Refusal> {
    if reads.query.is_empty() {
        return Ok(());
    }
    let read = |n: &str| reads.query.any || reads.query.names.iter().any(|r| one_name(r, n));
    let refuse = |n: &str| {
        Err((
            400,
            DenyReason::AmbiguousQuery,
            format!(
                "the body field `{n}` is the query parameter `{n}` to some upstreams (Go, PHP, Rails, ASP.NET), a name the rules read"
            ),
        ))
    };
    // Parsed for the rules already: a JSON body (its type was checked then).
    if let Some(v) = json {
        return match v.as_object().and_then(|o| o.keys().find(|k| read(k))) {
            Some(k) => refuse(k),
            None => Ok(()),
        };
    }
    let bytes = match req.body {
        Body::NotRead | Body::Bytes(&[]) => return Ok(()),
        Body::TooLarge => {
            return Err((
                413,
                DenyReason::BodyTooLarge,
                "the request body is too large".into(),
            ))
        }
        Body::Bytes(b) => b,
    };
    let unsupported = |m: &str| Err((415, DenyReason::UnsupportedMediaType, m.to_string()));
    let mut types = req.headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (types.next(), types.next()) else {
        // Admission has the body read only when there is a Content-Type.
        return unsupported("the request has several Content-Type headers");
    };
    let Some(media) = value.to_str().ok().and_then(|v| media_type::parse(v).ok()) else {
        return unsupported("the Content-Type header is not one well-formed media type");
    };
    if !fields_type(&media) {
        return Ok(());
    }
    if media_type::has_content_coding(req.headers) {
        return unsupported(
            "a form or JSON body on this endpoint must be uncompressed (no Content-Encoding)",
        );
    }
    if media.is_json() {
        return match crate::strict_json::parse(bytes) {
            Ok(serde_json::Value::Object(o)) => match o.keys().find(|k| read(k)) {
                Some(k) => refuse(k),
                None => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(e) => {
                let (status, reason, message) = crate::engine::json_refusal(e);
                Err((status, reason, message.to_string()))
            }
        };
    }
    if media.is("application", "x-www-form-urlencoded") {
        return match form_urlencoded::parse(bytes).find(|(k, _)| read(k)) {
            Some((k, _)) => refuse(&k),
            None => Ok(()),
        };
    }
    let bad_multipart = |m: &str| Err((400, DenyReason::BadBody, m.to_string()));
    let Ok(Some(boundary)) = media.param("boundary") else {
        return bad_multipart("the multipart body has no boundary");
    };
    match multipart_field_named(bytes, boundary, read) {
        Ok(Some(n)) => refuse(&n),
        Ok(None) => Ok(()),
        Err(()) => bad_multipart("the multipart body cannot be read"),
    }
}

/// The first field of a whole multipart body whose name `read` picks. The body is in memory,
/// so every step is ready at once; one that is not counts as unreadable.
fn multipart_field_named(
    bytes: &[u8],
    boundary: &str,
    read: impl Fn(&str) -> bool,
) -> Result<Option<String>, ()> {
    let body = bytes::Bytes::copy_from_slice(bytes);
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    loop {
        match parts.next_field().now_or_never() {
            Some(Ok(Some(field))) => {
                if let Some(n) = field.name().filter(|n| read(n)) {
                    return Ok(Some(n.to_string()));
                }
            }
            Some(Ok(None)) => return Ok(None),
            Some(Err(_)) | None => return Err(()),
        }
    }
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
        // The gateway sends one `X-Request-Id`, and the rules see that one.
        if reads.reads(n)
            && !JOINED_HEADERS.contains(&n)
            && name != crate::request_id::REQUEST_ID
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
    // Older parsers also split at `;` (Rack before 3, which Rails 6 and 7 run on; Python's
    // `parse_qs` before 3.9.2; Go before 1.17): `q=good;q=evil` is one parameter to the rules
    // and two to them, and `q=a;b` another value.
    if query.contains(';') {
        for piece in query.split('&').filter(|p| p.contains(';')) {
            let read = |n: &str| reads.any || reads.names.iter().any(|r| one_name(r, n));
            let touched = piece
                .split(';')
                .flat_map(|p| form_urlencoded::parse(p.as_bytes()).map(|(k, _)| k))
                .find(|n| read(n));
            if let Some(n) = touched {
                return Err(format!(
                    "the query parameter `{n}`, which the rules read, is split at `;` by some upstreams"
                ));
            }
        }
    }
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
        // `;` separates parameters to older parsers.
        for bad in [
            "account=a;account=b",
            "x=1;account=b",
            "account=a;b",
            "x=1&y=2;account=b",
        ] {
            assert!(query_is_one_value(&r, bad).is_err(), "{bad}");
        }
        for ok in ["account=a%3Bb", "x=1;y=2&account=a", "account=a&x=1;y"] {
            assert_eq!(query_is_one_value(&r, ok), Ok(()), "{ok}");
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
        assert!(query_is_one_value(&r, "a=1;b").is_err());
    }

    #[test]
    fn a_cookie_is_never_a_query_parameter_the_rules_read() {
        let check = |r: &NameReads, lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(
                    http::header::COOKIE,
                    http::HeaderValue::from_str(l).unwrap(),
                );
            }
            no_cookie_is_a_parameter(r, &h)
        };
        let r = reads(&["account"], false);
        for ok in [
            &["session=1"][..],
            &["accounts=1; x=2"],
            &["session=1", "theme=dark"],
            &[],
        ] {
            assert_eq!(check(&r, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            &["account=victim"][..],
            &["session=1; account=victim"],
            &["session=1", "account=victim"],
            &["acc%6Funt=victim"],
            &["account[]=victim"],
            &[" account=victim"],
        ] {
            let e = check(&r, bad).unwrap_err();
            assert!(e.contains("the cookie `account"), "{bad:?}: {e}");
        }
        // Read whole: every cookie; not read: none.
        assert!(check(&reads(&[], true), &["theme=dark"]).is_err());
        assert_eq!(check(&reads(&[], false), &["account=1"]), Ok(()));
    }

    fn request_reads(query: &[&str], any: bool) -> RequestReads {
        RequestReads {
            query: reads(query, any),
            ..RequestReads::default()
        }
    }

    /// The check on a body of type `content_type`.
    fn body_check(r: &RequestReads, content_type: &str, body: &[u8]) -> Result<(), Refusal> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_str(content_type).unwrap(),
        );
        assert!(body_fields_checked(r, &headers), "{content_type}");
        let req = RequestFacts {
            method: "POST",
            host: None,
            path: "/",
            query: None,
            headers: &headers,
            hidden: None,
            request_id: None,
            client_ip: None,
            body: Body::Bytes(body),
            location: None,
            tls: None,
        };
        body_fields_are_not_read(r, &req, None)
    }

    const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

    fn multipart(names: &[&str]) -> Vec<u8> {
        let mut b = String::new();
        for n in names {
            b.push_str(&format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\nvalue\r\n"
            ));
        }
        b.push_str("--XyZ--\r\n");
        b.into_bytes()
    }

    #[test]
    fn a_body_field_named_as_a_query_parameter_the_rules_read_is_refused() {
        let r = request_reads(&["amount"], false);
        let reason = |res: Result<(), Refusal>| res.map_err(|(s, reason, _)| (s, reason));
        let ambiguous = Err((400, DenyReason::AmbiguousQuery));
        let form = "application/x-www-form-urlencoded";
        assert_eq!(reason(body_check(&r, form, b"amount=9")), ambiguous);
        assert_eq!(
            reason(body_check(&r, form, b"x=1&amount%5B%5D=9")),
            ambiguous
        );
        assert_eq!(reason(body_check(&r, form, b"x=1&other=2")), Ok(()));
        assert_eq!(
            reason(body_check(&r, "application/json", br#"{"amount":9}"#)),
            ambiguous
        );
        assert_eq!(
            reason(body_check(&r, "application/json", br#"{"x":{"amount":9}}"#)),
            Ok(())
        );
        assert_eq!(reason(body_check(&r, "application/json", b"[1]")), Ok(()));
        assert_eq!(
            reason(body_check(&r, "application/json", b"{")),
            Err((400, DenyReason::InvalidJson))
        );
        // Refused as on routes that read the body: a duplicate key is read two ways.
        assert_eq!(
            reason(body_check(&r, "application/json", br#"{"x":1,"x":2}"#)),
            Err((400, DenyReason::BadBody))
        );
        assert_eq!(
            reason(body_check(&r, MULTIPART, &multipart(&["a", "amount"]))),
            ambiguous
        );
        assert_eq!(
            reason(body_check(&r, MULTIPART, &multipart(&["a", "amount[x]"]))),
            ambiguous
        );
        assert_eq!(
            reason(body_check(&r, MULTIPART, &multipart(&["a", "b"]))),
            Ok(())
        );
        assert_eq!(
            reason(body_check(&r, MULTIPART, b"--XyZ\r\nno end")),
            Err((400, DenyReason::BadBody))
        );
        assert_eq!(
            reason(body_check(&r, "multipart/form-data", &multipart(&["a"]))),
            Err((400, DenyReason::BadBody))
        );
        // A type that is not one well-formed media type is read, and refused.
        assert_eq!(
            reason(body_check(
                &r,
                "application/x-www-form-urlencoded,x/y+json",
                b"amount=9"
            )),
            Err((415, DenyReason::UnsupportedMediaType))
        );
        // Read whole: every field is a name the rules read.
        let any = request_reads(&[], true);
        assert_eq!(reason(body_check(&any, form, b"x=1")), ambiguous);
    }

    #[test]
    fn only_typed_bodies_on_routes_that_read_query_parameters_are_read() {
        let mut headers = HeaderMap::new();
        let query = request_reads(&["amount"], false);
        assert!(!body_fields_checked(&query, &headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        assert!(!body_fields_checked(&query, &headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        );
        assert!(body_fields_checked(&query, &headers));
        assert!(!body_fields_checked(&RequestReads::default(), &headers));
        headers.append(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        assert!(body_fields_checked(&query, &headers));
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
