//! The edits the decision makes to the head the upstream receives: strip the identity headers
//! no client may send, add the forwarded claims, the decided target, host and length, the
//! request id, `X-Forwarded-For` / `X-Forwarded-Proto`. Pure (`http`'s types only), so the
//! offline tools show the head the gateway sends; [`crate::upstream_head`] applies the same
//! edits to Pingora's head.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use std::net::IpAddr;

pub use crate::request_id::REQUEST_ID;
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Why the edits could not be made: the request fails rather than reach the upstream unedited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("too many request headers")]
    TooMany,
    #[error("the {0} cannot be written")]
    Header(&'static str),
    #[error("{0}")]
    Rejected(String),
}

impl EditError {
    pub fn too_many() -> EditError {
        EditError::TooMany
    }

    pub fn header(name: &'static str) -> EditError {
        EditError::Header(name)
    }

    /// The head refused an insert for `why`.
    pub fn rejected(why: impl std::fmt::Display) -> EditError {
        EditError::Rejected(why.to_string())
    }
}

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

impl<'a> Edits<'a> {
    /// The edits for a request admitted as `admitted` and allowed with `forward`, from a
    /// client at `client` (and whether it is a trusted proxy), over TLS or not: what the proxy
    /// applies to Pingora's head and the offline tools to the head they describe.
    pub fn for_request(
        strip: &'a StripList,
        admitted: &'a crate::admission::Admitted,
        forward: &'a [(HeaderName, HeaderValue)],
        request_id: HeaderValue,
        client: Option<(IpAddr, bool)>,
        over_tls: bool,
    ) -> Result<Edits<'a>, EditError> {
        let target = if admitted.rewrite_target {
            let uri = Uri::builder()
                .path_and_query(admitted.upstream_target())
                .build()
                .map_err(|_| EditError::header("decided target"))?;
            Some(uri)
        } else {
            None
        };
        Ok(Edits {
            strip,
            forward,
            target,
            host: admitted.set_host.as_deref(),
            content_length: admitted
                .content_length
                .filter(|_| admitted.collapse_content_length),
            request_id,
            client,
            scheme: if over_tls { "https" } else { "http" },
        })
    }

    /// An upper bound of the headers the edits add.
    pub(crate) fn added(&self) -> usize {
        self.forward.len() + 5
    }
}

/// A request head the edits can be made to: Pingora's (case kept) or `http`'s parts.
pub(crate) trait Head {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<(), EditError>;
    fn set_target(&mut self, uri: Uri);
}

impl Head for http::request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<(), EditError> {
        self.headers
            .try_insert(name.clone(), value)
            .map(drop)
            .map_err(|_| EditError::too_many())
    }
    fn set_target(&mut self, uri: Uri) {
        self.uri = uri;
    }
}

/// The edits, in the order both heads take them.
pub(crate) fn edit<H: Head>(head: &mut H, e: &Edits) -> Result<(), EditError> {
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
        let value =
            HeaderValue::from_str(host).map_err(|_| EditError::header("decided Host header"))?;
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
        let value =
            HeaderValue::from_bytes(&all).map_err(|_| EditError::header("Cookie header"))?;
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
            return Err(EditError::header("X-Forwarded-For header"));
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
    use super::*;
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
}
