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

/// Settings for a TLS listener served from `state`'s certificates, `h2` or `http/1.1` by ALPN; with a
/// client CA, client certificates are verified against it (required or optional). The client CA
/// is read once, at start (a change is reported as needing a restart).
pub fn settings(state: Arc<ArcSwap<Snapshot>>) -> Result<TlsSettings, String> {
    let snapshot = state.load_full();
    // Paths are ignored once a resolver is set (see `TlsSettings::build`).
    let mut s = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
    s.set_cert_resolver(Arc::new(SnapshotCertificates { state }));
    s.set_alpn(ALPN::H2H1);
    if let Some(v) = client_verifier(&snapshot)? {
        s.set_client_cert_verifier(v);
    }
    Ok(s)
}

fn client_verifier(
    snapshot: &Snapshot,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, String> {
    use crate::config::ClientAuth;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let Some(tls) = &snapshot.config.raw.listen.tls else {
        return Ok(None);
    };
    let Some(ca) = &tls.client_ca else {
        return Ok(None);
    };
    let path = snapshot.config.resolve(ca.get_ref());
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`{}`: not PEM certificates ({e})", path.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("`{}`: {e}", path.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match tls.client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map(Some).map_err(|e| e.to_string())
}
