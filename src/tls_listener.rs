//! The TLS listener: Pingora's rustls acceptor with claimgate's own certificate resolver, which
//! reads the certificates of the snapshot in force at each handshake (Pingora's rustls build
//! never calls its certificate callback, and panics on an unreadable file: certificates are read
//! and checked by the loader, never by Pingora).

use crate::engine::Snapshot;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Picks the certificate for each handshake by SNI from the snapshot in force.
#[derive(Debug)]
pub struct SnapshotCertificates {
    pub state: Arc<ArcSwap<Snapshot>>,
}

impl ResolvesServerCert for SnapshotCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.state.load().tls.as_ref()?.pick(hello.server_name())
    }
}

/// Settings for a TLS listener served from `state`'s certificates, HTTP/1.1 by ALPN.
pub fn settings(state: Arc<ArcSwap<Snapshot>>) -> pingora::Result<TlsSettings> {
    // Paths are ignored once a resolver is set (see `TlsSettings::build`).
    let mut s = TlsSettings::intermediate("", "")?;
    s.set_cert_resolver(Arc::new(SnapshotCertificates { state }));
    s.set_alpn(ALPN::H1);
    Ok(s)
}
