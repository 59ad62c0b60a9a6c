//! The head the upstream receives: the client's head with the decision's edits (strip the
//! identity headers no client may send, add the forwarded claims, the decided target, host and
//! length, the request id, `X-Forwarded-For` / `X-Forwarded-Proto`), applied in one of two
//! ways to Pingora's head.
//!
//! Pingora's HTTP/1 head keeps every name's spelling in a second map beside `http`'s. Each
//! insert into it parses the name again, copies a `HeaderName` argument, writes both maps and
//! grows both (they are sized to the client's own header count): five inserts were ~7 000
//! instructions of a cached request. The default path takes the head apart instead, reserves
//! room once and inserts ready names into `http`'s map alone; the upstream then reads
//! lowercase names (as HAProxy sends them, and as HTTP/2 requires), except the few Pingora
//! spells itself (`Host`, `Content-Length`, ...). `preserve_header_case` on an upstream keeps the
//! client's spelling for servers that (wrongly) read names case-sensitively.

use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;

pub use crate::request_id::REQUEST_ID;
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the decision changes in the client's head.
pub struct Edits<'a> {
    /// Names no client may send (see `Snapshot::strip_for`).
    pub strip: &'a StripList,
    /// Headers computed from the token's claims.
    pub forward: &'a [(HeaderName, HeaderValue)],
    /// The decided origin-form target, when it is not the client's.
    pub target: Option<Uri>,
    /// The decided host, when the client's `Host` is not it.
    pub host: Option<&'a str>,
    /// The one `Content-Length`, when the client sent it more than once.
    pub content_length: Option<u64>,
    pub request_id: HeaderValue,
    /// The client's address and whether it is a trusted proxy (whose chain is extended).
    pub client: Option<(IpAddr, bool)>,
    /// `http` or `https`: the scheme the client used.
    pub scheme: &'static str,
}

impl Edits<'_> {
    /// An upper bound of the headers the edits add.
    fn added(&self) -> usize {
        self.forward.len() + 5
    }
}

/// Applies `edits` to the upstream head. `preserve_case` keeps Pingora's case-preserving map
/// (slower: see the module's documentation).
pub fn apply(req: &mut RequestHeader, edits: &Edits, preserve_case: bool) -> Result<()> {
    if preserve_case || !req.has_case() {
        // A head without the case map (HTTP/2 from the client) is edited in place at the
        // same cost as the rebuilt one.
        return edit(req, edits);
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
        .map_err(|_| too_many())?;
    edit(&mut parts, edits)?;
    *req = parts.into();
    if let Some(raw) = raw_target {
        req.set_raw_path(&raw)?;
    }
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
    Ok(())
}

fn too_many() -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "too many request headers")
}

/// A request head the edits can be made to: Pingora's (case kept) or `http`'s parts.
trait Head {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()>;
    fn set_target(&mut self, uri: Uri);
}

impl Head for RequestHeader {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.insert_header(name.clone(), value)
    }
    fn set_target(&mut self, uri: Uri) {
        self.set_uri(uri);
    }
}

impl Head for http::request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.headers
            .try_insert(name.clone(), value)
            .map(drop)
            .map_err(|_| too_many())
    }
    fn set_target(&mut self, uri: Uri) {
        self.uri = uri;
    }
}

/// The edits, in the order both heads take them.
fn edit<H: Head>(head: &mut H, e: &Edits) -> Result<()> {
    // Every header any route sets from claims, on every route: an upstream that trusts
    // `x-user-id` on one path trusts it on all of them. Removed before the computed ones are
    // added, so a client never supplies one, even when the gateway's value is absent. One pass
    // over the names the request carries (a handful), each looked up in the sorted list; a
    // lookup per listed name would hash every one of them on every request. Usually none is
    // present: no list is allocated for nothing.
    let mut doomed: Option<Vec<HeaderName>> = None;
    for n in head.headers().keys() {
        if e.strip.contains(n.as_str()) {
            doomed.get_or_insert_with(Vec::new).push(n.clone());
        }
    }
    for n in doomed.iter().flatten() {
        head.remove(n);
    }
    for (name, value) in e.forward {
        head.insert(name, value.clone())?;
    }
    // The upstream is sent what was decided: the origin-form target of the normalised path,
    // the host the target named, one Content-Length.
    if let Some(uri) = &e.target {
        head.set_target(uri.clone());
    }
    if let Some(host) = e.host {
        let value = HeaderValue::from_str(host)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "decided host"))?;
        head.insert(&http::header::HOST, value)?;
    }
    if let Some(n) = e.content_length {
        head.insert(&http::header::CONTENT_LENGTH, HeaderValue::from(n))?;
    }
    head.insert(&REQUEST_ID, e.request_id.clone())?;
    // Cookies in several fields (an HTTP/2 client's crumbs, RFC 9113 §8.2.3, or a client's
    // several lines) go on as one line, joined with `; ` as the rules saw them: HTTP/1.1
    // servers read several Cookie lines each their own way (the last only, or joined with `,`).
    let cookies = head.headers().get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let all = cookies
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let value = HeaderValue::from_bytes(&all)
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "Cookie"))?;
        head.insert(&http::header::COOKIE, value)?;
    }
    if let Some((ip, trusted)) = e.client {
        // A trusted proxy's chain is extended; an untrusted client's own entries are dropped,
        // so an upstream reading the left-most address never sees a forged one.
        // Every line of the chain, in order: a proxy in front (HAProxy's `option forwardfor`)
        // may add its own line rather than extend the client's, and the client address the
        // rules saw was read from all of them (`Geo::client_ip`). Keeping only the first line
        // would hand the upstream the client's own forged entry as the whole chain.
        let prev = trusted
            .then(|| {
                let lines: Vec<_> = head
                    .headers()
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                (!lines.is_empty()).then(|| lines.join(", "))
            })
            .flatten();
        let value = match prev {
            Some(prev) => HeaderValue::try_from(format!("{prev}, {ip}")).ok(),
            None => forwarded_for(ip),
        };
        // Never forwarded without this hop: a chain that cannot be extended fails the request
        // rather than reach the upstream unchanged.
        let Some(value) = value else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "X-Forwarded-For");
        };
        head.insert(&X_FORWARDED_FOR, value)?;
    }
    // The scheme the client used, for upstreams that build absolute URLs: a trusted proxy's
    // value stays (an untrusted client's was removed above).
    if !head.headers().contains_key(X_FORWARDED_PROTO) {
        head.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(e.scheme))?;
    }
    Ok(())
}

/// The header names no client may send (see `Snapshot::strip_for`): sorted for a binary
/// search, with the set of their lengths beside them, so that most request headers (`host`,
/// `authorization`, ...) are let through on one bit test rather than a search of string
/// comparisons (the search was a visible share of a cached request).
#[derive(Debug, Clone, Default)]
pub struct StripList {
    names: Vec<HeaderName>,
    /// Bit `n` is set when a listed name is `n` bytes long; bit 127 for every name of 127 bytes
    /// or more.
    lengths: u128,
}

impl StripList {
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> StripList {
        let mut names: Vec<HeaderName> = names.into_iter().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        let lengths = names.iter().fold(0, |m, n| m | length_bit(n.as_str()));
        StripList { names, lengths }
    }

    /// Whether a request header named `name` (lowercase, as parsed) must not reach the
    /// upstream: it is listed, or it is a listed name spelled with underscores, which some
    /// servers read as the dashed one (CGI naming). Both spellings have the same length.
    pub fn contains(&self, name: &str) -> bool {
        if self.lengths & length_bit(name) == 0 {
            return false;
        }
        let listed = |n: &str| self.names.binary_search_by(|s| s.as_str().cmp(n)).is_ok();
        listed(name) || (name.contains('_') && listed(&name.replace('_', "-")))
    }

    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }
}

fn length_bit(name: &str) -> u128 {
    1 << name.len().min(127)
}

/// `X-Forwarded-For` for a client at `ip`. A client sends its requests one after another on a
/// kept-alive connection, so the last address's value is kept per thread: formatting an
/// address and building a header value from it was a visible share of a cached request.
fn forwarded_for(ip: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((at, value)) if *at == ip => Some(value.clone()),
            _ => {
                let value = HeaderValue::try_from(ip.to_string()).ok()?;
                *last = Some((ip, value.clone()));
                Some(value)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{apply, Edits, StripList};
    use http::{HeaderName, HeaderValue};
    use pingora::http::RequestHeader;
    use proptest::prelude::*;

    proptest! {
        /// The one-pass strip check answers as the per-name lookups it replaced: a name goes
        /// when it is listed, or when its underscores read as dashes make a listed name.
        #[test]
        fn a_header_is_stripped_exactly_when_listed(
            name in "[a-z_-]{1,12}",
            listed in proptest::collection::vec("[a-z-]{1,12}", 0..8),
        ) {
            let strip = StripList::new(
                listed.iter().filter_map(|n| HeaderName::try_from(n.as_str()).ok()),
            );
            let dashed = name.replace('_', "-");
            let expected = strip.names().iter().any(|s| s.as_str() == name || s.as_str() == dashed);
            prop_assert_eq!(strip.contains(&name), expected);
        }
    }

    #[test]
    fn forwarded_for_follows_the_client_address() {
        let a: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        for ip in [a, a, b, a, b, b] {
            let v = super::forwarded_for(ip).unwrap();
            assert_eq!(v.to_str().unwrap(), ip.to_string());
        }
    }

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
