//! The upstream's side of a WebSocket handshake (RFC 6455 §4.2.2), checked before the
//! connection becomes a tunnel. A `101` alone proves nothing: an upstream (or something a
//! request can steer it to) that answers `101` to anything would turn the connection into a
//! raw pipe, and whatever the client wrote next (plain HTTP requests, say) would reach it with
//! no decision. A server that computed `Sec-WebSocket-Accept` from this request's key has read
//! the handshake as WebSocket, and from then on reads masked WebSocket frames, not requests.

use base64::Engine;
use http::HeaderMap;

/// RFC 6455 §1.3: appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a request's `Sec-WebSocket-Key`.
pub fn accept_for(key: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Whether a `101` answer completes the WebSocket handshake the request began: `Upgrade:
/// websocket` and the accept value of the request's one key.
pub fn completes(request: &HeaderMap, response: &HeaderMap) -> bool {
    let mut keys = request.get_all(http::header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return false;
    };
    let upgrade = response
        .get_all(http::header::UPGRADE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && response.contains_key(http::header::UPGRADE);
    let mut accepts = response.get_all(http::header::SEC_WEBSOCKET_ACCEPT).iter();
    let accepted = match (accepts.next(), accepts.next()) {
        (Some(a), None) => a.as_bytes() == accept_for(key.as_bytes().trim_ascii()).as_bytes(),
        _ => false,
    };
    upgrade && accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_rfc_s_example() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_the_accept_of_this_key_with_upgrade_websocket_completes() {
        let req = headers(&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]);
        let ok = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert!(completes(&req, &ok));
        for bad in [
            headers(&[("upgrade", "websocket")]),
            headers(&[("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]),
            headers(&[
                ("upgrade", "h2c"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ]),
            headers(&[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ]),
            headers(&[
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ]),
        ] {
            assert!(!completes(&req, &bad), "{bad:?}");
        }
        // No key in the request: nothing can complete it.
        assert!(!completes(&HeaderMap::new(), &ok));
    }
}
