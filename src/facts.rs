//! Request facts: what the proxy (or the CLI, or a bench) knows about a request, as plain data.
//! How conditions see these facts is [`crate::policy::activation`].

use crate::geo::Location;
use crate::upstream_edits::StripList;
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A request as the decision core sees it; no proxy types.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Host without port, lower-cased by the caller.
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The headers the upstream is not sent (identity headers, edge headers from an untrusted
    /// peer, method overrides): `request.headers` does not hold them, so that the rules decide
    /// on the headers the upstream sees, never on a client's copy of a header it never gets.
    pub hidden: Option<&'a StripList>,
    /// The `X-Request-Id` the upstream is sent (the client's when sane, else a new one): the
    /// rules see it in place of the client's lines. `None` where the caller has none (the
    /// route's rules do not read it): the client's lines stand.
    pub request_id: Option<&'a str>,
    /// The address of the connection's peer (the client, or a proxy in front of it).
    pub client_ip: Option<IpAddr>,
    pub body: Body<'a>,
    /// The client's location when the caller already knows it (`claimgate eval --country`);
    /// otherwise `geo` is resolved from the edge header or the database.
    pub location: Option<&'a Location>,
    /// The TLS connection the request came on; `None` on a plain one.
    pub tls: Option<&'a TlsFacts>,
}

/// A TLS version as rules see it, `TLSv1.3` (RFC 8446's name, and `eval --tls`'s), from the
/// TLS layer's name for it (rustls names it `TLSv1_3`).
pub fn tls_version_name(raw: &str) -> std::borrow::Cow<'static, str> {
    match raw {
        "TLSv1_3" | "TLSv1.3" => "TLSv1.3".into(),
        "TLSv1_2" | "TLSv1.2" => "TLSv1.2".into(),
        other => other.replace('_', ".").into(),
    }
}

/// What the TLS listener knows of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1.3` or `TLSv1.2` ([`tls_version_name`]; static names: no copy per request)
    pub version: std::borrow::Cow<'static, str>,
    pub cipher: std::borrow::Cow<'static, str>,
    /// The client certificate, when one was presented; the listener verified it against its
    /// `client_ca` before the request could arrive.
    pub client: Option<ClientCertificate>,
}

/// A verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// base64url (no padding) of the SHA-256 of the certificate's DER: RFC 8705's
    /// `x5t#S256`.
    pub thumbprint: String,
    pub organization: Option<String>,
    pub serial: Option<String>,
    /// Its subject and alternative names, read once per connection.
    pub names: Arc<CertificateNames>,
}

/// What a certificate names: its subject and its subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subject's distinguished name as text, e.g. `CN=alice, O=Example`.
    pub subject: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    /// URI names, e.g. SPIFFE IDs (`spiffe://example.org/ns/prod/sa/payments`).
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<String>,
}

/// A host without port, lower-cased, without a trailing dot (`example.com.` is `example.com`).
pub fn bare_host(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        // [v6]:port
        raw.split_once(']').map(|(h, _)| &h[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The request body as far as the caller read it. Only routes whose expressions read `body`
/// need it; the proxy reads it for those only.
#[derive(Debug, Clone, Copy, Default)]
pub enum Body<'a> {
    /// Not read (the route does not need it, or the caller does not have it).
    #[default]
    NotRead,
    /// The whole body.
    Bytes(&'a [u8]),
    /// Longer than the route's `body_limit` (from Content-Length or while reading).
    TooLarge,
}
