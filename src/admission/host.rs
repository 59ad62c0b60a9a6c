//! The host a request is for, from a `Host` header or an absolute-form target's authority:
//! RFC 3986 `host [ ":" port ]`, strictly. A value that one parser could read as another host
//! (extra colons, commas, spaces, user information, percent-escapes) is refused, never routed
//! as host-less: the upstream might pick a virtual host from it that the policy never saw.

use std::net::Ipv6Addr;
use thiserror::Error;

/// A checked authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// The host as routes name it: lower-case, without port, brackets or a trailing dot.
    pub host: String,
    /// `host[:port]` lower-cased, as it is sent upstream in `Host`.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host `{0}` has a character that is not allowed in a host name")]
    Character(String),
    #[error("the host `{0}` has an empty label")]
    EmptyLabel(String),
    #[error("the port of `{0}` is not a number from 0 to 65535")]
    Port(String),
    #[error("`{0}` is not a valid IPv6 literal")]
    Ipv6(String),
}

/// Shown in messages: at most 64 characters of what the client sent.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses `host[:port]`: a DNS name or IPv4 address (letters, digits, `-`, `.`, `_`, `~`) or a
/// bracketed IPv6 address, and an optional decimal port.
pub fn parse_authority(raw: &str) -> Result<Authority, HostError> {
    Ok(Authority {
        host: parse_host(raw)?,
        value: raw.to_ascii_lowercase(),
    })
}

/// [`parse_authority`]'s host alone: what a `Host` header is read for when it is sent upstream
/// as the client wrote it (no lower-cased copy of the whole value is made).
pub fn parse_host(raw: &str) -> Result<String, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| HostError::Ipv6(shown(raw)))?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| HostError::Ipv6(shown(raw)))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| HostError::Port(shown(raw)))?,
            ),
        };
        (ip.to_string(), port)
    } else {
        // Byte searches, not `str` pattern ones: this runs on every request.
        let (name, port) = match raw.bytes().position(|b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if !name.bytes().all(allowed) {
            return Err(HostError::Character(shown(raw)));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        let b = name.as_bytes();
        let empty_label =
            b[0] == b'.' || b[b.len() - 1] == b'.' || b.windows(2).any(|w| w == b"..");
        if empty_label {
            return Err(HostError::EmptyLabel(shown(raw)));
        }
        (name.to_ascii_lowercase(), port)
    };
    if let Some(p) = port {
        let ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
        if !ok || p.parse::<u32>().map_or(true, |n| n > 65535) {
            return Err(HostError::Port(shown(raw)));
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_authorities() {
        let a = parse_authority("Admin.Example.com.:8080").unwrap();
        assert_eq!(a.host, "admin.example.com");
        assert_eq!(a.value, "admin.example.com.:8080");
        assert_eq!(parse_authority("10.0.0.1").unwrap().host, "10.0.0.1");
        assert_eq!(parse_authority("[::1]:80").unwrap().host, "::1");
        assert_eq!(parse_authority("[::1]").unwrap().host, "::1");
        assert_eq!(parse_authority("a_b~c").unwrap().host, "a_b~c");
    }

    #[test]
    fn ambiguous_authorities_are_refused() {
        for bad in [
            "",
            ":80",
            ".",
            "a..b",
            "a:b:c",
            "a,b",
            "a b",
            "a\tb",
            "u@h",
            "h:",
            "h:65536",
            "h:+80",
            "h:123456",
            "%61dmin",
            "[::1",
            "[zz]",
            "[::1]x",
            "[fe80::1%25eth0]",
            "h/x",
            "h?x",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?}");
        }
    }

    /// The host of a name as the first version of this parser read it, with `str` patterns:
    /// the byte-wise one must answer the same for every input.
    fn name_by_patterns(raw: &str) -> Result<String, HostError> {
        let name = raw.split_once(':').map_or(raw, |(n, _)| n);
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        if !name.chars().all(allowed) {
            return Err(HostError::Character(shown(raw)));
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.split('.').any(str::is_empty) {
            return Err(HostError::EmptyLabel(shown(raw)));
        }
        Ok(name.to_ascii_lowercase())
    }

    proptest::proptest! {
        #[test]
        fn names_are_read_as_the_pattern_version_read_them(
            raw in "[aA.:_~-]{1,3}[.a-z0-9:]{0,6}[.a:,é]{0,2}",
        ) {
            let port_ok = raw.split_once(':').is_none_or(|(_, p)| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            });
            proptest::prop_assume!(port_ok);
            proptest::prop_assert_eq!(parse_host(&raw), name_by_patterns(&raw));
        }
    }
}
