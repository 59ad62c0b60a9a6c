//! A request's id (`X-Request-Id`): the client's when it is a sane token, else a new one. It is
//! sent upstream, returned on refusals and logged, and it is the `x-request-id` the rules see:
//! the upstream never gets the client's value when it was replaced, so neither do the rules.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Built once as a header value. Empty (the default) until the request head is read.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl RequestId {
    /// The id of a request with these headers. A client's value is kept as it came (a shared
    /// slice of the request, no copy); a new one is 32 hex digits of a random UUID (a
    /// thread-local generator: no system call per request).
    pub fn for_headers(headers: &HeaderMap) -> RequestId {
        let sane = |v: &&HeaderValue| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        };
        if let Some(v) = headers.get(REQUEST_ID).filter(sane) {
            return RequestId(v.clone());
        }
        let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut hex);
        // Hex digits are always a valid value; the fallback is never taken.
        RequestId(HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-")))
    }

    /// As text (ASCII by construction: a sane client value or hex digits).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_a_sane_id_and_gets_a_fresh_one_otherwise() {
        let with = |id: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(id) = id {
                h.insert(REQUEST_ID, HeaderValue::from_str(id).unwrap());
            }
            RequestId::for_headers(&h)
        };
        assert_eq!(with(Some("req-123_a.b:c")).as_str(), "req-123_a.b:c");
        let mut seen = std::collections::HashSet::new();
        let long = "a".repeat(129);
        for id in [
            None,
            Some(""),
            Some("bad id"),
            Some("x/y"),
            Some(long.as_str()),
        ] {
            let fresh = with(id);
            let text = fresh.as_str().to_string();
            assert_eq!(text.len(), 32, "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
            assert!(seen.insert(text), "ids repeat");
        }
        assert_eq!(with(Some(&"a".repeat(128))).as_str().len(), 128);
    }
}
