//! The head the upstream receives: the client's head with the decision's edits
//! ([`crate::upstream_edits`]: strip the identity headers no client may send, add the
//! forwarded claims, the decided target, host and length, the request id, `X-Forwarded-For` /
//! `X-Forwarded-Proto`), applied in one of two ways to Pingora's head.
//!
//! Pingora's HTTP/1 head keeps every name's spelling in a second map beside `http`'s. Each
//! insert into it parses the name again, copies a `HeaderName` argument, writes both maps and
//! grows both (they are sized to the client's own header count): five inserts were ~7 000
//! instructions of a cached request. The default path takes the head apart instead, reserves
//! room once and inserts ready names into `http`'s map alone; the upstream then reads
//! lowercase names (as HAProxy sends them, and as HTTP/2 requires), except the few Pingora
//! spells itself (`Host`, `Content-Length`, ...). `preserve_header_case` on an upstream keeps the
//! client's spelling for servers that (wrongly) read names case-sensitively.

use crate::upstream_edits::{edit, EditError, Edits, Head};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

/// Applies `edits` to the upstream head. `preserve_case` keeps Pingora's case-preserving map
/// (slower: see the module's documentation).
pub fn apply(req: &mut RequestHeader, edits: &Edits, preserve_case: bool) -> Result<()> {
    if preserve_case || !req.has_case() {
        // A head without the case map (HTTP/2 from the client) is edited in place at the
        // same cost as the rebuilt one.
        return edit(req, edits).map_err(failed);
    }
    // What `http`'s parts cannot carry, saved to be put back: a target the URI does not
    // reproduce (absolute-form, not UTF-8), and whether an HTTP/2 request ends with its
    // HEADERS frame (the gRPC-Web bridge turns that off). The latter is only readable on an
    // HTTP/2 head, hence the version flip.
    let raw_target = match &edits.target {
        Some(_) => None,
        None => {
            let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
            (from_uri != Some(req.raw_path())).then(|| req.raw_path().to_vec())
        }
    };
    let version = req.version;
    req.set_version(Version::HTTP_2);
    let end_stream = req.send_end_stream();
    req.set_version(version);

    let empty = http::Request::new(()).into_parts().0;
    let mut parts: http::request::Parts = std::mem::replace(req, empty.into()).into();
    parts
        .headers
        .try_reserve(edits.added())
        .map_err(|_| failed(EditError::too_many()))?;
    edit(&mut parts, edits).map_err(failed)?;
    *req = parts.into();
    if let Some(raw) = raw_target {
        req.set_raw_path(&raw)?;
    }
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    Ok(())
}

/// An edit that could not be made, as the connection layer's error: the request fails.
fn failed(e: EditError) -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, e.to_string())
}

impl Head for RequestHeader {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<(), EditError> {
        self.insert_header(name.clone(), value)
            .map_err(EditError::rejected)
    }
    fn set_target(&mut self, uri: Uri) {
        self.set_uri(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::apply;
    use crate::upstream_edits::{Edits, StripList};
    use http::{HeaderName, HeaderValue};
    use pingora::http::RequestHeader;
    use proptest::prelude::*;

    /// The head on the wire: request line and header lines, as Pingora writes it upstream.
    fn wire(req: &RequestHeader) -> (String, Vec<(String, String)>) {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let fields = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        (String::from_utf8_lossy(req.raw_path()).into_owned(), fields)
    }

    fn client_head(target: &[u8], fields: &[(String, String)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", target, Some(fields.len())).unwrap();
        for (n, v) in fields {
            req.append_header(n.clone(), v.as_str()).unwrap();
        }
        req
    }

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Host".to_string()),
            Just("X-User-Id".to_string()),
            Just("x_user_id".to_string()),
            Just("X-Forwarded-For".to_string()),
            Just("X-Forwarded-Proto".to_string()),
            Just("x-request-id".to_string()),
            Just("Content-Length".to_string()),
            Just("Authorization".to_string()),
            "[A-Za-z][A-Za-z0-9-]{0,10}",
        ]
    }

    fn edits_case(
    ) -> impl Strategy<Value = (Vec<(String, String)>, Option<String>, bool, bool, bool)> {
        (
            proptest::collection::vec((field_name(), "[ -~]{0,12}"), 0..12),
            prop_oneof![Just(None), Just(Some("/decided?q=1".to_string())),],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
    }

    proptest! {
        /// The rebuilt head and the case-preserving one carry the same request: the same
        /// target, and the same fields in the same order with the same values, names equal
        /// but for case. Whatever the client sent and whichever edits the decision makes.
        #[test]
        fn both_ways_of_editing_give_the_same_request(
            (fields, target, host, trusted, h2) in edits_case(),
            raw in prop_oneof![
                Just(b"/a/b?c=d".to_vec()),
                Just(b"http://api.test/x?y".to_vec()),
                Just(b"/caf\xe9".to_vec()),
            ],
        ) {
            let names = [
                HeaderName::from_static("x-forwarded-for"),
                HeaderName::from_static("x-forwarded-proto"),
                HeaderName::from_static("x-user-id"),
            ];
            let strip = StripList::new(names[if trusted { 2 } else { 0 }..].iter().cloned());
            let forward = [(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_static("user-1"),
            )];
            let edits = Edits {
                strip: &strip,
                forward: &forward,
                target: target.map(|t| t.parse().unwrap()),
                host: host.then_some("api.test"),
                content_length: host.then_some(7),
                request_id: HeaderValue::from_static("req-1"),
                client: Some(("192.0.2.9".parse().unwrap(), trusted)),
                scheme: "https",
            };
            let mut kept = client_head(&raw, &fields);
            let mut rebuilt = client_head(&raw, &fields);
            if h2 {
                for r in [&mut kept, &mut rebuilt] {
                    r.set_version(http::Version::HTTP_2);
                    r.set_send_end_stream(false);
                }
            }
            let a = apply(&mut kept, &edits, true).is_ok();
            let b = apply(&mut rebuilt, &edits, false).is_ok();
            prop_assert_eq!(a, b);
            prop_assume!(a);
            let (ta, fa) = wire(&kept);
            let (tb, fb) = wire(&rebuilt);
            prop_assert_eq!(ta, tb);
            prop_assert_eq!(kept.raw_path_is_utf8(), rebuilt.raw_path_is_utf8());
            prop_assert_eq!(kept.send_end_stream(), rebuilt.send_end_stream());
            let lower = |f: Vec<(String, String)>| {
                f.into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect::<Vec<_>>()
            };
            prop_assert_eq!(lower(fa), lower(fb.clone()));
            // What the decision guarantees, on the rebuilt head: one id, one hop added, no
            // client-supplied identity.
            let count = |n: &str| fb.iter().filter(|(m, _)| m.eq_ignore_ascii_case(n)).count();
            prop_assert_eq!(count("x-request-id"), 1);
            prop_assert_eq!(count("x-user-id"), 1);
            prop_assert_eq!(count("x-forwarded-for"), 1);
            // A trusted proxy's scheme is passed on as it sent it (possibly more than once).
            prop_assert!(count("x-forwarded-proto") >= 1);
            if !trusted {
                prop_assert_eq!(count("x-forwarded-proto"), 1);
            }
            prop_assert!(fb.iter().any(|(n, v)| n == "x-user-id" && v == "user-1"));
        }
    }

    #[test]
    fn the_rebuilt_head_keeps_a_client_spelling_only_where_pingora_spells_it() {
        let fields = [
            ("Host".to_string(), "api.test".to_string()),
            ("X-Custom".to_string(), "1".to_string()),
        ];
        let edits = Edits {
            strip: &StripList::default(),
            forward: &[],
            target: None,
            host: None,
            content_length: None,
            request_id: HeaderValue::from_static("req-1"),
            client: None,
            scheme: "http",
        };
        let mut kept = client_head(b"/", &fields);
        apply(&mut kept, &edits, true).unwrap();
        let mut rebuilt = client_head(b"/", &fields);
        apply(&mut rebuilt, &edits, false).unwrap();
        let names = |r: &RequestHeader| wire(r).1.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            names(&kept),
            ["Host", "X-Custom", "x-request-id", "x-forwarded-proto"]
        );
        assert_eq!(
            names(&rebuilt),
            ["Host", "x-custom", "x-request-id", "x-forwarded-proto"]
        );
    }
}
