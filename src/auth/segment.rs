//! The three segments of a compact JWS (RFC 7515 §7.1): base64url without padding.
//!
//! Decoding is strict: RFC 7515 §2 defines the segments as base64url with the padding omitted,
//! and RFC 4648 §3.5 lets a decoder refuse non-canonical input, which a verifier should (else
//! many strings stand for one signature, and a token can be altered without re-signing). A
//! padding character, a character outside the URL-safe alphabet, a length that no byte string
//! encodes, or non-zero bits after the last byte are all refused.
//!
//! Every new token decodes its header, claims and signature once. A SIMD decoder does it in
//! a fraction of the time of a scalar one (an RS256 token is ~650 characters), and the bytes go
//! to a buffer on the stack when they fit, so a typical token costs no allocation here.

use base64_simd::{Out, URL_SAFE_NO_PAD};
use std::mem::MaybeUninit;

/// A compact JWS cut at its two dots (RFC 7515 §7.1), found once per token: the size check on
/// the claims and the verification both read these parts instead of splitting the token again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compact<'a> {
    pub header: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
    /// The JWS signing input: header and payload as they arrived, the dot between included.
    pub signing_input: &'a [u8],
}

impl<'a> Compact<'a> {
    /// The three parts, or `None` unless the token has exactly two dots. A vectorised byte
    /// search: an RS256 token is ~650 characters and every new one is cut here.
    pub fn split(token: &'a str) -> Option<Compact<'a>> {
        let bytes = token.as_bytes();
        let first = memchr::memchr(b'.', bytes)?;
        let second = first + 1 + memchr::memchr(b'.', &bytes[first + 1..])?;
        if memchr::memchr(b'.', &bytes[second + 1..]).is_some() {
            return None;
        }
        // The dots are ASCII, so every cut is on a character boundary.
        Some(Compact {
            header: &token[..first],
            payload: &token[first + 1..second],
            signature: &token[second + 1..],
            signing_input: &bytes[..second],
        })
    }
}

/// A segment that is not strict base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64Url;

/// Decodes `segment` and hands the bytes to `read`: in a stack buffer of `N` bytes when they
/// fit, on the heap otherwise.
pub fn with_decoded<const N: usize, R>(
    segment: &str,
    read: impl FnOnce(&[u8]) -> R,
) -> Result<R, NotBase64Url> {
    let src = segment.as_bytes();
    let len = URL_SAFE_NO_PAD
        .decoded_length(src)
        .map_err(|_| NotBase64Url)?;
    if len <= N {
        let mut buf = [MaybeUninit::<u8>::uninit(); N];
        let bytes = URL_SAFE_NO_PAD
            .decode(src, Out::from_uninit_slice(&mut buf[..len]))
            .map_err(|_| NotBase64Url)?;
        Ok(read(bytes))
    } else {
        let bytes = URL_SAFE_NO_PAD
            .decode_to_vec(src)
            .map_err(|_| NotBase64Url)?;
        Ok(read(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as REFERENCE;
    use base64::Engine as _;
    use proptest::prelude::*;

    fn decode<const N: usize>(s: &str) -> Result<Vec<u8>, NotBase64Url> {
        with_decoded::<N, _>(s, <[u8]>::to_vec)
    }

    #[test]
    fn only_the_canonical_unpadded_url_safe_form_is_read() {
        assert_eq!(decode::<8>("eyJhIjoxfQ"), Ok(br#"{"a":1}"#.to_vec()));
        assert_eq!(decode::<8>(""), Ok(Vec::new()));
        for bad in [
            "eyJhIjoxfQ==", // padded
            "eyJhIjoxfR",   // non-zero bits after the last byte (same bytes as ...fQ)
            "eyJhIjox+Q",   // standard alphabet
            "eyJhIjox/Q",
            "eyJhIjoxf",   // 9 characters: no byte string has that length
            "eyJhI joxfQ", // space
            "eyJhIjoxfQ\n",
        ] {
            assert_eq!(decode::<64>(bad), Err(NotBase64Url), "{bad:?}");
            assert_eq!(decode::<0>(bad), Err(NotBase64Url), "{bad:?} (heap)");
        }
    }

    #[test]
    fn a_token_is_cut_at_exactly_two_dots() {
        let c = Compact::split("aa.bbb.c").unwrap();
        assert_eq!((c.header, c.payload, c.signature), ("aa", "bbb", "c"));
        assert_eq!(c.signing_input, b"aa.bbb");
        let c = Compact::split("..").unwrap();
        assert_eq!(
            (c.header, c.payload, c.signature, c.signing_input),
            ("", "", "", &b"."[..])
        );
        for bad in ["", "abc", "a.b", "a.b.c.", "a.b.c.d", "...", ".a.b.c"] {
            assert_eq!(Compact::split(bad), None, "{bad:?}");
        }
    }

    proptest! {
        // The same parts as splitting on every dot, for any text (multi-byte characters too).
        #[test]
        fn the_cut_agrees_with_a_split_on_every_dot(token in "[a-c.é😀]{0,80}") {
            let parts: Vec<&str> = token.split('.').collect();
            match Compact::split(&token) {
                Some(c) => {
                    prop_assert_eq!(parts, vec![c.header, c.payload, c.signature]);
                    prop_assert_eq!(c.signing_input, &token.as_bytes()[..c.header.len() + 1 + c.payload.len()]);
                }
                None => prop_assert_ne!(parts.len(), 3),
            }
        }

        // Stack and heap paths, long enough for the vector loop: the same bytes as the scalar
        // reference decoder for any input it accepts, and refused where it refuses.
        #[test]
        fn agrees_with_the_reference_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200), junk in any::<u8>(), at in any::<usize>()) {
            let mut text = REFERENCE.encode(&bytes);
            prop_assert_eq!(decode::<256>(&text), Ok(bytes.clone()));
            prop_assert_eq!(decode::<0>(&text), Ok(bytes));
            if !text.is_empty() && junk.is_ascii() {
                let at = at % text.len();
                text.replace_range(at..at + 1, &char::from(junk).to_string());
                let expected = REFERENCE.decode(&text).map_err(|_| NotBase64Url);
                prop_assert_eq!(decode::<256>(&text), expected.clone());
                prop_assert_eq!(decode::<0>(&text), expected);
            }
        }
    }
}
