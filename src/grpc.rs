//! How a refusal reads to a gRPC client. gRPC clients do not read HTTP status codes: a denial
//! is a trailers-only response (HTTP 200, `content-type: application/grpc`, `grpc-status` and a
//! percent-encoded `grpc-message` in the one header block), as Envoy answers. The status codes
//! are gRPC's own (`grpc/doc/statuscodes.md`), mapped from the HTTP status the gateway would
//! have answered.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// What a gRPC client receives instead of an HTTP denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAnswer {
    /// The `grpc-status` code.
    pub status: u8,
    /// The `grpc-message` value, already percent-encoded.
    pub message: String,
}

/// gRPC status codes the gateway answers with.
pub mod code {
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// Bytes a `grpc-message` carries as they are: printable ASCII except `%` (gRPC's
/// `Percent-Byte-Unencoded`); everything else, UTF-8 included, is percent-encoded.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// Whether a request with this `content-type` is gRPC (`application/grpc`, with `+proto`,
/// `+json` and the gRPC-Web forms, which read the same status headers).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type
        .is_some_and(|ct| ct.len() >= 16 && ct[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// Whether a `content-type` is binary gRPC-Web's (`application/grpc-web`, `+proto`), which the
/// proxy bridges to gRPC for the upstream. The base64 form (`application/grpc-web-text`) is not
/// bridged: it passes as it came.
pub fn is_grpc_web(content_type: &[u8]) -> bool {
    const WEB: &[u8] = b"application/grpc-web";
    content_type.len() >= WEB.len()
        && content_type[..WEB.len()].eq_ignore_ascii_case(WEB)
        && !content_type[WEB.len()..]
            .get(..5)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"-text"))
}

/// The gRPC status for an HTTP status the gateway answers.
pub fn status_of(http: u16) -> u8 {
    use code::*;
    match http {
        400 | 411 | 415 => INVALID_ARGUMENT,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 | 405 => UNIMPLEMENTED,
        408 => DEADLINE_EXCEEDED,
        413 | 414 | 429 | 431 => RESOURCE_EXHAUSTED,
        500 => INTERNAL,
        502..=504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

impl GrpcAnswer {
    /// The answer for an HTTP status and its human message.
    pub fn new(http: u16, message: &str) -> GrpcAnswer {
        GrpcAnswer {
            status: status_of(http),
            message: utf8_percent_encode(message, GRPC_MESSAGE).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_statuses_envoy_answers() {
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (404, 12),
            (400, 3),
            (429, 8),
            (503, 14),
            (502, 14),
            (408, 4),
            (418, 2),
        ] {
            assert_eq!(status_of(http), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC-web+proto",
        ] {
            assert!(is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        for ct in ["application/json", "application/grp", ""] {
            assert!(!is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        assert!(!is_grpc(None));
        assert!(is_grpc_web(b"application/grpc-web+proto"));
        assert!(!is_grpc_web(b"application/grpc+proto"));
        assert!(!is_grpc_web(b"application/grpc-web-text+proto"));
    }

    #[test]
    fn messages_are_percent_encoded_as_grpc_wants() {
        assert_eq!(
            GrpcAnswer::new(403, "amount 100% > limit: ünicode\n").message,
            "amount 100%25 > limit: %C3%BCnicode%0A"
        );
    }

    proptest! {
        /// Whatever the message, the header value is printable ASCII and decodes back to it.
        #[test]
        fn any_message_round_trips(text in "\\PC*|[\\x00-\\x7f]*") {
            let m = GrpcAnswer::new(403, &text).message;
            prop_assert!(m.bytes().all(|b| (0x20..0x7f).contains(&b)));
            let back = percent_encoding::percent_decode_str(&m).decode_utf8().unwrap();
            prop_assert_eq!(back, text);
        }
    }
}
