//! Request paths as the policy sees them, and as the upstream will see them.
//!
//! A gateway that enforces per-path policy must agree with the upstream about what the path is:
//! `/api/./transfer`, `/api//transfer` and `/api/%74ransfer` are `/api/transfer` to many servers.
//! So before route lookup, percent-encoded characters that may stand in a path segment as they
//! are (unreserved ones, RFC 3986 6.2.2, and also `:` `@` and the sub-delimiters `!$&'()*+,=`,
//! which many servers decode before routing: `/users%3Abatch` is `/users:batch` to them) are
//! decoded and other escapes' hex digits upper-cased, and anything still ambiguous is refused:
//! dot segments, empty segments, encoded `/` `\` or NUL, `;` parameters (escaped or not),
//! backslashes, control and non-ASCII bytes, escaped control characters. Characters a path
//! may not hold as they are (`|`, `[`, `{`, ...) are escaped, so both spellings are one path.
//! The upstream receives the normalised path: the one the policy matched.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path encodes a `/`, `\\` or NUL")]
    EncodedSeparator,
    #[error("the path has a `;` parameter")]
    Parameter,
    #[error("the path has a backslash, a control character or a non-ASCII byte")]
    BadCharacter,
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    #[error("the path encodes a control character")]
    EncodedControl,
    #[error("a path segment starts or ends with escaped white space")]
    EdgeWhitespace,
}

/// A byte that stands for itself in a path segment (`pchar` less `;`), so its escape is
/// decoded.
const fn literal_in_segment(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
        )
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The normalised path, or why the path is refused. Returns the input unchanged (borrowed) in
/// the common case where nothing needs rewriting.
pub fn normalise(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    match plain(path.as_bytes()) {
        Some(Ok(())) => Ok(std::borrow::Cow::Borrowed(path)),
        Some(Err(e)) => Err(e),
        None => normalise_escaped(path),
    }
}

/// The bytes a plain path is made of: the literal segment characters and `/`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b as u8 == b'/' || literal_in_segment(b as u8);
        b += 1;
    }
    t
};

/// The common path: nothing escaped, nothing refused for its characters. Checked in one pass
/// over the bytes with the segment rules (a path's normalisation was a visible share of a
/// cached request); `None` when the path has any other byte, which [`normalise_escaped`]
/// judges, so that the error reported is the same whichever way a path is read.
fn plain(bytes: &[u8]) -> Option<Result<(), PathError>> {
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut first_error = None;
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if !PLAIN[b as usize] {
            return None;
        }
        if b == b'/' && first_error.is_none() {
            first_error = segment_error(&bytes[start..i], false);
            start = i + 1;
        }
    }
    if first_error.is_none() {
        first_error = segment_error(&bytes[start..], true);
    }
    Some(first_error.map_or(Ok(()), Err))
}

/// Why a path segment is refused: a dot segment, or an empty one other than the last (a
/// trailing `/`).
fn segment_error(seg: &[u8], last: bool) -> Option<PathError> {
    match seg {
        b"." | b".." => Some(PathError::DotSegment),
        b"" if !last => Some(PathError::EmptySegment),
        _ => None,
    }
}

/// [`normalise`] for a path with escapes or refused bytes: decodes what may be decoded, and
/// refuses what is ambiguous.
fn normalise_escaped(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Option<Vec<u8>> = None;
    // Every escape decoded, to check that the bytes the upstream may decode are valid UTF-8
    // (this refuses overlong encodings such as `%C0%AF` for `/`). Kept only from the first
    // escape on: the bytes before it are plain ASCII (checked byte by byte below), which cannot
    // change whether the rest is valid.
    let mut decoded_all: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let decoded = h * 16 + l;
                decoded_all.get_or_insert_with(Vec::new).push(decoded);
                if matches!(decoded, b'/' | b'\\' | 0) {
                    return Err(PathError::EncodedSeparator);
                }
                if decoded == b';' {
                    return Err(PathError::Parameter);
                }
                let buf = out.get_or_insert_with(|| bytes[..i].to_vec());
                if literal_in_segment(decoded) {
                    buf.push(decoded);
                } else {
                    buf.push(b'%');
                    buf.push(bytes[i + 1].to_ascii_uppercase());
                    buf.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
            b';' => return Err(PathError::Parameter),
            b'\\' => return Err(PathError::BadCharacter),
            0..=0x20 | 0x7f..=0xff => return Err(PathError::BadCharacter),
            // Not allowed in a path as they are (RFC 3986), yet sent so by some clients and
            // taken by the HTTP layer: escaped, so that `/a|b` and `/a%7Cb` are one path to
            // the rules (`request.path`, `params`) as they are to an upstream that decodes.
            b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^' | b'[' | b']' => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                let buf = out.get_or_insert_with(|| bytes[..i].to_vec());
                buf.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
                if let Some(d) = decoded_all.as_mut() {
                    d.push(b);
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        if let Some(buf) = out.as_mut() {
            buf.push(b);
        }
        if let Some(d) = decoded_all.as_mut() {
            d.push(b);
        }
        i += 1;
    }
    if let Some(d) = decoded_all {
        let text = std::str::from_utf8(&d).map_err(|_| PathError::BadEncoding)?;
        // Escaped controls (`%0A`, `%09`, `%7F`, `%C2%85`) are never part of a resource's name,
        // and upstreams read them unlike the route table does: Python's `re` lets `$` match
        // before a final `\n`, so `/admin%0A` is `/admin` to a Django `re_path`, and servers
        // that trim what they decode serve `/admin%09` as `/admin`.
        if text.chars().any(char::is_control) {
            return Err(PathError::EncodedControl);
        }
    }
    let result = match out {
        // Only ASCII was pushed, so this cannot fail.
        Some(buf) => {
            std::borrow::Cow::Owned(String::from_utf8(buf).map_err(|_| PathError::BadEncoding)?)
        }
        None => std::borrow::Cow::Borrowed(path),
    };
    // Segment checks run on the decoded path, so `%2e%2e` counts as `..`.
    let mut segments = result[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        if seg == "." || seg == ".." {
            return Err(PathError::DotSegment);
        }
        // A trailing slash (`/a/`) is an empty last segment and is allowed.
        if seg.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
        // Escaped white space that starts or ends a segment (`/admin%20`, `/%C2%A0admin`):
        // servers that trim what they decode (Spring's `trimTokens`) serve another path than
        // the one matched. Inside a segment (`/my%20file`) it is path text.
        if seg.contains('%') {
            let text = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            if text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
                return Err(PathError::EdgeWhitespace);
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/",
            "/api/transfer",
            "/a/b/",
            "/a-b_c~d.e",
            "/files/a%20x",
            "/q%3Fx",
            "/a:b@c",
            "/caf%C3%A9",
        ] {
            assert_eq!(normalise(p).unwrap(), p);
        }
        assert!(matches!(
            normalise("/api/transfer"),
            Ok(std::borrow::Cow::Borrowed(_))
        ));
    }

    #[test]
    fn characters_a_path_may_not_hold_as_they_are_are_escaped() {
        assert_eq!(normalise("/items/a|b").unwrap(), "/items/a%7Cb");
        assert_eq!(normalise("/items/a%7cb").unwrap(), "/items/a%7Cb");
        assert_eq!(
            normalise("/x/{id}/[0]^`\"<>").unwrap(),
            "/x/%7Bid%7D/%5B0%5D%5E%60%22%3C%3E"
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_hex_upper_cased() {
        assert_eq!(normalise("/api/%74ransfer").unwrap(), "/api/transfer");
        assert_eq!(normalise("/a/%7euser").unwrap(), "/a/~user");
        assert_eq!(normalise("/a/%3f").unwrap(), "/a/%3F");
        assert_eq!(
            normalise("/v1/users%3AbatchDelete").unwrap(),
            "/v1/users:batchDelete"
        );
        assert_eq!(normalise("/a/%40%21%2B%2c%3D").unwrap(), "/a/@!+,=");
        assert_eq!(normalise("/a/%23%3F%25").unwrap(), "/a/%23%3F%25");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/api/./transfer", PathError::DotSegment),
            ("/api/../admin", PathError::DotSegment),
            ("/api/%2e%2e/admin", PathError::DotSegment),
            ("/api/.%2E/admin", PathError::DotSegment),
            ("/api//transfer", PathError::EmptySegment),
            ("/api%2ftransfer", PathError::EncodedSeparator),
            ("/api%5Ctransfer", PathError::EncodedSeparator),
            ("/api%00", PathError::EncodedSeparator),
            ("/api;jsessionid=1/transfer", PathError::Parameter),
            ("/api%3Bjsessionid=1/transfer", PathError::Parameter),
            ("/api\\transfer", PathError::BadCharacter),
            ("/api/%zz", PathError::BadEncoding),
            ("/api/%4", PathError::BadEncoding),
            ("/caf\u{e9}", PathError::BadCharacter),
            ("/%C0%AF", PathError::BadEncoding),
            ("/%FF", PathError::BadEncoding),
            ("/admin%0A", PathError::EncodedControl),
            ("/admin%0d%0a", PathError::EncodedControl),
            ("/admin%09", PathError::EncodedControl),
            ("/a%1Fb", PathError::EncodedControl),
            ("/admin%7F", PathError::EncodedControl),
            ("/admin%C2%85", PathError::EncodedControl),
            ("/admin%20", PathError::EdgeWhitespace),
            ("/%20admin/x", PathError::EdgeWhitespace),
            ("/admin%C2%A0/x", PathError::EdgeWhitespace),
            ("/admin%E2%80%A8", PathError::EdgeWhitespace),
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (p, e) in cases {
            assert_eq!(normalise(p), Err(e), "{p}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn path_like() -> impl Strategy<Value = String> {
        // Paths built from the pieces that cause trouble, plus arbitrary text.
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2F".to_string()),
            Just("%5c".to_string()),
            Just("%00".to_string()),
            Just("%41".to_string()),
            Just("%c3%a9".to_string()),
            Just("%C0%AF".to_string()),
            Just(";".to_string()),
            "[a-z0-9_~-]{1,4}",
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent_and_leaves_nothing_ambiguous(p in path_like()) {
            if let Ok(n) = normalise(&p) {
                let again = normalise(&n).expect("a normalised path normalises");
                prop_assert_eq!(&again, &n);
                let decoded = n.replace("%2E", ".").replace("%2e", ".");
                prop_assert!(!decoded[1..].split('/').any(|s| s == "." || s == ".."));
                prop_assert!(!n.contains("//"));
                prop_assert!(!n.to_ascii_uppercase().contains("%2F"));
                prop_assert!(!n.contains('\\') && !n.contains(';'));
                prop_assert!(n.is_ascii());
            }
        }

        /// The one-pass check of plain paths answers exactly as the full parser: the same
        /// path, or the same error.
        #[test]
        fn the_plain_path_check_agrees_with_the_full_parser(p in path_like()) {
            if let Some(fast) = plain(p.as_bytes()) {
                let full = normalise_escaped(&p);
                prop_assert_eq!(fast.map(|()| std::borrow::Cow::Borrowed(p.as_str())), full);
            }
        }

        #[test]
        fn never_panics_on_any_input(p in any::<String>()) {
            let _ = normalise(&p);
        }
    }
}
