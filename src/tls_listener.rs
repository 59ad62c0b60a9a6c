//! The TLS listener: Pingora's rustls acceptor with claimgate's own certificate resolver and
//! client-certificate verifier, both reading the snapshot in force at each handshake (Pingora's
//! rustls build never calls its certificate callback, and panics on an unreadable file:
//! certificates are read and checked by the loader, never by Pingora). After the handshake, the
//! client certificate's names are read once and travel with the connection's TLS digest.

use crate::engine::Snapshot;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::ALPN;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
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

/// Settings for a TLS listener served from `state`'s certificates, `h2` or `http/1.1` by ALPN.
/// Client certificates are asked for and verified by the snapshot in force: adding, replacing or
/// removing `client_ca` (or changing `client_auth`) takes effect at the next handshake.
pub fn settings(state: Arc<ArcSwap<Snapshot>>) -> Result<TlsSettings, String> {
    let mut s = TlsSettings::with_callbacks(Box::new(ClientIdentity {
        state: state.clone(),
    }))
    .map_err(|e| e.to_string())?;
    s.set_cert_resolver(Arc::new(SnapshotCertificates {
        state: state.clone(),
    }));
    s.set_alpn(ALPN::H2H1);
    s.set_client_cert_verifier(Arc::new(SnapshotClientVerifier { state }));
    Ok(s)
}

/// Verifies client certificates with the verifier of the snapshot in force; without one, none is
/// asked for and any offered is refused. No CA names are hinted to clients (the hints would
/// borrow from a snapshot that may be replaced mid-handshake); a client with several
/// certificates picks one itself.
#[derive(Debug)]
struct SnapshotClientVerifier {
    state: Arc<ArcSwap<Snapshot>>,
}

impl SnapshotClientVerifier {
    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.state.load().tls.as_ref()?.client_verifier.clone()
    }
}

impl ClientCertVerifier for SnapshotClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some_and(|v| v.offer_client_auth())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().is_some_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no client certificates are accepted".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &schemes())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &schemes())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes().supported_schemes()
    }
}

/// The signature algorithms of the process's one crypto provider.
fn schemes() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// After each handshake: the client certificate's names, parsed once for the connection and
/// carried in its TLS digest (every request on it, h2 streams included, reads the same `Arc`),
/// and whether the trust in force accepts it.
///
/// A resumed TLS session brings back the certificate of the handshake that made it without
/// verifying it again, and it may be resumed after a reload replaced `client_ca` (rustls keeps
/// sessions in memory and sends tickets; Pingora builds its configuration once): so the
/// certificate is verified here, after every handshake, and again per request whenever the
/// trust in force is not the one it was verified under.
struct ClientIdentity {
    state: Arc<ArcSwap<Snapshot>>,
}

#[async_trait::async_trait]
impl TlsAccept for ClientIdentity {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let chain = tls.peer_cert_chain_der()?;
        let names = crate::tls::certificate_names(chain.first()?)?;
        let seen = ClientCertificateSeen {
            names: Arc::new(names),
            chain: chain.to_vec(),
            verdict: std::sync::Mutex::new(None),
        };
        seen.accepted_by(self.state.load().tls.as_deref());
        Some(Arc::new(Arc::new(seen)))
    }
}

/// A connection's client certificate as its handshake showed it.
pub struct ClientCertificateSeen {
    pub names: Arc<crate::facts::CertificateNames>,
    chain: Vec<CertificateDer<'static>>,
    /// The trust (`Certificates::client_trust`) it was last verified under, and the answer.
    verdict: std::sync::Mutex<Option<(u64, bool)>>,
}

impl ClientCertificateSeen {
    /// Whether the trust of `certs` (the snapshot in force) accepts the certificate: verified
    /// once per trust, so a request after a reload that changed `client_ca` verifies it again.
    pub fn accepted_by(&self, certs: Option<&crate::tls::Certificates>) -> bool {
        let Some((certs, trust)) = certs.and_then(|c| Some((c, c.client_trust?))) else {
            return false;
        };
        let mut verdict = crate::sync::lock(&self.verdict);
        match *verdict {
            Some((t, ok)) if t == trust => ok,
            _ => {
                let ok = certs.accepts_client(&self.chain);
                *verdict = Some((trust, ok));
                ok
            }
        }
    }
}
