//! Finding the bearer token in a request (RFC 6750, section 2.1).

use super::TokenError;
use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The token from `Authorization: Bearer <token>`.
///
/// `Ok(None)` when there is no Authorization header or it uses another scheme (Basic, say): the
/// request carries no bearer token. Two Authorization headers are refused outright, because a
/// gateway and an upstream that pick different ones disagree about who is calling.
pub fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&str>, TokenError> {
    bearer_bytes(headers, max_bytes)?.map(jws).transpose()
}

/// [`bearer_token`] before its alphabet is checked: the bytes of the credential, not empty and
/// within `max_bytes`. A token cache looks these up first: bytes equal to a token verified
/// before passed [`jws`] then, and checking hundreds of bytes again was a visible share of a
/// cached request.
pub fn bearer_bytes(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&[u8]>, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::MultipleAuthorization);
    }
    // One pass over bytes: this runs on every request, over tokens of hundreds of bytes.
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let value = value.as_bytes();
    let value = &value[value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len())..];
    let (scheme, rest) = match value.iter().position(is_space) {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let start = rest.iter().position(|b| !is_space(b)).unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    let token = &rest[start..end.max(start)];
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    Ok(Some(token))
}

/// The credential as a JWS compact serialisation's text: b64token of RFC 6750, restricted to
/// what such a serialisation can contain (ASCII, so the conversion to text cannot fail).
pub fn jws(token: &[u8]) -> Result<&str, TokenError> {
    if !jws_chars(token) {
        return Err(TokenError::Malformed);
    }
    std::str::from_utf8(token).map_err(|_| TokenError::Malformed)
}

/// Whether every byte is one of `A-Z a-z 0-9 - _ . =`. Branch-free over the whole token, so the
/// compiler checks 16 or 32 bytes at a time; a short-circuiting `all` goes byte by byte.
fn jws_chars(token: &[u8]) -> bool {
    token.iter().fold(true, |ok, &b| {
        let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
        let digit = b.wrapping_sub(b'0') < 10;
        ok & (alpha | digit | (b == b'-') | (b == b'_') | (b == b'.') | (b == b'='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_alphabet_is_exactly_base64url_dots_and_padding() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=');
            assert_eq!(jws_chars(&[b]), expected, "byte {b:#04x}");
            let mut long = vec![b'a'; 70];
            long[37] = b;
            assert_eq!(
                jws_chars(&long),
                expected,
                "byte {b:#04x} inside a long token"
            );
        }
    }

    #[test]
    fn scheme_is_case_insensitive() {
        for v in ["Bearer a.b.c", "bearer a.b.c", "BEARER   a.b.c  "] {
            assert_eq!(bearer_token(&headers(&[v]), 100), Ok(Some("a.b.c")), "{v}");
        }
    }

    #[test]
    fn other_schemes_carry_no_token() {
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpw"]), 100), Ok(None));
        assert_eq!(bearer_token(&HeaderMap::new(), 100), Ok(None));
    }

    #[test]
    fn rejects_duplicates_empty_oversized_and_junk() {
        assert_eq!(
            bearer_token(&headers(&["Bearer a.b.c", "Bearer d.e.f"]), 100),
            Err(TokenError::MultipleAuthorization)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer "]), 100),
            Err(TokenError::Empty)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer"]), 100),
            Err(TokenError::Empty)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer aaaaaaaaaaa"]), 10),
            Err(TokenError::TooLarge)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a.b c"]), 100),
            Err(TokenError::Malformed)
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn extracted_tokens_are_bounded_and_clean(value in "[ -~]{0,64}", max in 1usize..40) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(AUTHORIZATION, v);
            }
            if let Ok(Some(t)) = bearer_token(&h, max) {
                prop_assert!(!t.is_empty() && t.len() <= max);
                prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)));
                prop_assert!(value.to_ascii_lowercase().trim_start().starts_with("bearer"));
            }
        }

        #[test]
        fn never_panics_on_raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.insert(AUTHORIZATION, v);
            }
            let _ = bearer_token(&h, 32);
        }
    }
}
