//! How long the body is, as the upstream will be told. HTTP/1.1 allows `Content-Length` to
//! repeat as long as every value is the same (RFC 9110 §8.6); such a list is collapsed to one
//! value before the request goes upstream, so no parser downstream of the gateway can read it
//! another way. Differing or malformed values are refused.

use http::HeaderMap;
use thiserror::Error;

/// The body length a request declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Declared {
    /// The length from `Content-Length`, unless `Transfer-Encoding` frames the body.
    pub length: Option<u64>,
    /// `Content-Length` came as several values (lines or a list) that must be sent as one.
    pub collapse: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("the Content-Length header is not a number")]
    NotANumber,
    #[error("the Content-Length header has several different values")]
    Conflicting,
}

/// Reads `Content-Length`. With `Transfer-Encoding` present the length is not used for
/// framing (RFC 9112 §6.3), and the HTTP layer has already dropped the header.
pub fn declared_length(headers: &HeaderMap) -> Result<Declared, FramingError> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Ok(Declared::default());
    }
    let mut length: Option<u64> = None;
    let mut tokens = 0usize;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| FramingError::NotANumber)?;
        for token in text.split(',') {
            let token = token.trim_matches([' ', '\t']);
            if token.is_empty() || token.len() > 19 || !token.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FramingError::NotANumber);
            }
            let n: u64 = token.parse().map_err(|_| FramingError::NotANumber)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::Conflicting);
            }
            length = Some(n);
            tokens += 1;
        }
    }
    Ok(Declared {
        length,
        collapse: tokens > 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::CONTENT_LENGTH,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn equal_values_collapse_and_others_are_refused() {
        assert_eq!(declared_length(&with(&[])).unwrap(), Declared::default());
        assert_eq!(
            declared_length(&with(&["5"])).unwrap(),
            Declared {
                length: Some(5),
                collapse: false
            }
        );
        assert_eq!(
            declared_length(&with(&["5, 5"])).unwrap(),
            Declared {
                length: Some(5),
                collapse: true
            }
        );
        assert_eq!(
            declared_length(&with(&["5", "5"])).unwrap(),
            Declared {
                length: Some(5),
                collapse: true
            }
        );
        assert_eq!(
            declared_length(&with(&["5, 6"])),
            Err(FramingError::Conflicting)
        );
        for bad in ["", "-1", "+5", "5,", "0x10", "1.0", "99999999999999999999"] {
            assert_eq!(
                declared_length(&with(&[bad])),
                Err(FramingError::NotANumber),
                "{bad}"
            );
        }
    }
}
