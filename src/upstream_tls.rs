//! TLS to upstreams in the connection layer's own types: a pool's CA bundle and client
//! certificate, converted once per pool (per snapshot) and shared by every connection.
//! Hostname verification stays on: `sni` is required with `tls` (see `config.rs`), and Pingora
//! verifies the certificate against it.

use crate::upstream::UpstreamTls;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use std::sync::Arc;

/// A pool's TLS material as Pingora takes it.
pub struct Prepared {
    pub ca: Option<Arc<CaType>>,
    pub client: Option<Arc<CertKey>>,
}

/// The material of `tls`, built on first use. The loader checked every certificate parses and
/// the client key belongs to its chain, so the conversions here cannot fail. `None` only if the
/// slot held something else: the caller then refuses to connect rather than connect without the
/// configured CA or client certificate.
pub fn prepared(tls: &UpstreamTls) -> Option<Arc<Prepared>> {
    let any = tls.prepared.get_or_init(|| {
        let ca = tls.ca.as_ref().map(|ders| {
            let certs: Vec<WrappedX509> = ders
                .iter()
                .map(|d| WrappedX509::new(d.clone(), parse_x509))
                .collect();
            Arc::<CaType>::from(certs.into_boxed_slice())
        });
        let client = tls
            .client
            .as_ref()
            .map(|(chain, key)| Arc::new(CertKey::new(chain.clone(), key.clone())));
        Arc::new(Prepared { ca, client })
    });
    any.clone().downcast::<Prepared>().ok()
}
