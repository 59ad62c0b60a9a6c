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
    /// Names the CA bundle for the connection pool: Pingora reuses a pooled connection for
    /// any peer of the same address, name and client certificate, whatever CA verified it, so
    /// after a `ca_file` rotation connections verified by the old CA would be reused. Peers
    /// carry this as their group key, so a new bundle is a new pool.
    pub ca_key: u64,
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
        let ca_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            tls.ca.hash(&mut h);
            h.finish()
        };
        Arc::new(Prepared { ca, client, ca_key })
    });
    any.clone().downcast::<Prepared>().ok()
}
