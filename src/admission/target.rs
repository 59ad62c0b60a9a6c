//! The request target (RFC 9112 §3.2): which of its four forms a request uses, and the path,
//! query and authority in it. Only origin-form (`/path?q`) and absolute-form
//! (`http://host/path?q`) lead to a route; asterisk-form is `OPTIONS *` alone; authority-form
//! belongs to CONNECT, which no route serves. Anything else is refused rather than guessed at,
//! because a gateway that decides on a guess forwards the original bytes to an upstream that
//! may read them differently.

use thiserror::Error;

/// A request target split into what routing needs. Slices of the original target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`.
    Origin {
        path: &'a str,
        query: Option<&'a str>,
    },
    /// `http://authority/path?query`: the authority names the host (RFC 9112 §3.2.2).
    Absolute {
        authority: &'a str,
        path: &'a str,
        query: Option<&'a str>,
    },
    /// `*`, for `OPTIONS *` only.
    Asterisk,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("the request target is not text")]
    NotText,
    #[error("the request target must be a path (`/...`) or an absolute `http` or `https` URL")]
    Form,
    #[error("the request target's scheme `{0}` is not `http` or `https`")]
    Scheme(String),
    #[error("the request target has user information (`user@`), which is not allowed")]
    UserInfo,
    #[error("the request target's URL has no host")]
    NoAuthority,
    #[error("`*` is a request target for `OPTIONS` only")]
    Asterisk,
}

/// Parses the target of a request with `method`. A fragment (`#...`) is not part of a target
/// and is dropped, as the HTTP parser in front of this does.
pub fn parse<'a>(method: &str, raw: &'a [u8]) -> Result<Target<'a>, TargetError> {
    let raw = match raw.iter().position(|&b| b == b'#') {
        Some(i) => &raw[..i],
        None => raw,
    };
    let text = std::str::from_utf8(raw).map_err(|_| TargetError::NotText)?;
    if text.starts_with('/') {
        let (path, query) = split_query(text);
        return Ok(Target::Origin { path, query });
    }
    if text == "*" {
        return if method.eq_ignore_ascii_case("OPTIONS") {
            Ok(Target::Asterisk)
        } else {
            Err(TargetError::Asterisk)
        };
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(TargetError::Form);
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(TargetError::Scheme(scheme.chars().take(16).collect()));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.contains('@') {
        return Err(TargetError::UserInfo);
    }
    if authority.is_empty() {
        return Err(TargetError::NoAuthority);
    }
    // `http://host?q` has no path; origin-form needs at least `/` (RFC 9112 §3.2.1).
    let (path, query) = match path_and_query.strip_prefix('?') {
        Some(q) => ("/", Some(q)),
        None if path_and_query.is_empty() => ("/", None),
        None => split_query(path_and_query),
    };
    Ok(Target::Absolute {
        authority,
        path,
        query,
    })
}

fn split_query(s: &str) -> (&str, Option<&str>) {
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_forms() {
        assert_eq!(
            parse("GET", b"/a?b=1#frag"),
            Ok(Target::Origin {
                path: "/a",
                query: Some("b=1")
            })
        );
        assert_eq!(
            parse("GET", b"HTTP://Admin.test:8080/x/y?z"),
            Ok(Target::Absolute {
                authority: "Admin.test:8080",
                path: "/x/y",
                query: Some("z")
            })
        );
        assert_eq!(
            parse("GET", b"https://h?q"),
            Ok(Target::Absolute {
                authority: "h",
                path: "/",
                query: Some("q")
            })
        );
        assert_eq!(
            parse("GET", b"http://h"),
            Ok(Target::Absolute {
                authority: "h",
                path: "/",
                query: None
            })
        );
        assert_eq!(parse("OPTIONS", b"*"), Ok(Target::Asterisk));
    }

    #[test]
    fn everything_else_is_refused() {
        assert_eq!(parse("GET", b"*"), Err(TargetError::Asterisk));
        assert_eq!(parse("GET", b"admin"), Err(TargetError::Form));
        assert_eq!(parse("GET", b""), Err(TargetError::Form));
        assert_eq!(parse("GET", b"example.com:443"), Err(TargetError::Form));
        assert!(matches!(
            parse("GET", b"ftp://h/x"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            parse("GET", b"foo:bar://h/x"),
            Err(TargetError::Scheme(_))
        ));
        assert_eq!(parse("GET", b"http://u@h/x"), Err(TargetError::UserInfo));
        assert_eq!(parse("GET", b"http:///x"), Err(TargetError::NoAuthority));
        assert_eq!(parse("GET", b"/\xff"), Err(TargetError::NotText));
    }
}
