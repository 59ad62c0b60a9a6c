//! Named upstream pools from `gateway.toml`: addresses used round-robin, their timeouts and TLS
//! material. Plain data; the proxy turns a pick into a connection.

use crate::config::Config;
pub use crate::config::UpstreamProtocol;
use crate::location::SourceError;
use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub addresses: Vec<SocketAddr>,
    /// `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Forward request header names as the client spelled them (slower; see `upstream_head`).
    pub preserve_header_case: bool,
    next: AtomicUsize,
}

impl Pool {
    /// The next address, round-robin.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addresses[i % self.addresses.len()]
    }
}

#[derive(Debug, Default)]
pub struct Upstreams {
    pools: HashMap<Arc<str>, Pool>,
}

impl Upstreams {
    /// Builds the pools, with the addresses `Config` resolved when it checked them.
    pub fn from_config(config: &Config) -> Upstreams {
        let mut pools = HashMap::new();
        for (name, up) in &config.raw.upstreams {
            let up = up.get_ref();
            let addresses = config
                .upstream_addresses
                .get(name)
                .cloned()
                .unwrap_or_default();
            let name: Arc<str> = Arc::from(name.as_str());
            pools.insert(
                name.clone(),
                Pool {
                    name,
                    addresses,
                    tls: up.tls.then(|| UpstreamTls {
                        sni: up.sni.clone(),
                        ca: None,
                        client: None,
                        prepared: OnceLock::new(),
                    }),
                    protocol: up.protocol,
                    connect_timeout: Duration::from_millis(up.connect_timeout_ms),
                    read_timeout: Duration::from_millis(up.read_timeout_ms),
                    idle_timeout: Duration::from_millis(up.idle_timeout_ms),
                    preserve_header_case: up.preserve_header_case,
                    next: AtomicUsize::new(0),
                },
            );
        }
        Upstreams { pools }
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name).filter(|p| !p.addresses.is_empty())
    }

    /// [`Upstreams::from_config`] with the TLS files read and checked: every error located at
    /// its upstream.
    pub fn load(config: &Config) -> Result<Upstreams, Vec<SourceError>> {
        let mut ups = Upstreams::from_config(config);
        let mut errors = Vec::new();
        for (name, up) in &config.raw.upstreams {
            let (u, span) = (up.get_ref(), up.span());
            let Some(tls) = ups
                .pools
                .get_mut(name.as_str())
                .and_then(|p| p.tls.as_mut())
            else {
                continue;
            };
            let at =
                |msg: String| config.error_at(span.clone(), format!("upstream `{name}`: {msg}"));
            if let Some(ca) = &u.ca_file {
                match read_chain(&config.resolve(ca)) {
                    Ok(ders) => tls.ca = Some(ders),
                    Err(e) => errors.push(at(e)),
                }
            }
            if let (Some(cert), Some(key)) = (&u.client_cert, &u.client_key) {
                let (cert, key) = (config.resolve(cert), config.resolve(key));
                match read_client(&cert, &key) {
                    Ok(pair) => tls.client = Some(pair),
                    Err(e) => errors.push(at(e)),
                }
            }
        }
        if errors.is_empty() {
            Ok(ups)
        } else {
            Err(errors)
        }
    }
}

/// TLS to an upstream: the name its certificate must carry (and the SNI sent), the CA bundle
/// it is verified against (`None`: the system's trust roots), and a client certificate.
#[derive(Debug)]
pub struct UpstreamTls {
    pub sni: String,
    /// DER certificates of `ca_file`.
    pub ca: Option<Vec<Vec<u8>>>,
    /// DER chain (leaf first) and DER key of the client certificate.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// The connection layer's form of the above, built once per pool by the proxy (which owns
    /// its types: the core never names them).
    pub prepared: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// The DER certificates of a PEM file; each must parse as X.509 (the connection layer would
/// panic on one that does not).
pub(crate) fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    let pem = crate::set_file::read(path).map_err(|e| format!("`{shown}`: cannot read ({e})"))?;
    let ders: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{shown}`: not PEM certificates ({e})"))?
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    if ders.is_empty() {
        return Err(format!("`{shown}` holds no certificate"));
    }
    for d in &ders {
        x509_parser::parse_x509_certificate(d)
            .map_err(|e| format!("`{shown}`: a certificate does not parse ({e})"))?;
    }
    Ok(ders)
}

/// A client chain and its key, checked to belong together.
fn read_client(cert: &Path, key: &Path) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = read_chain(cert)?;
    let key_pem = crate::set_file::read(key)
        .map_err(|e| format!("`{}`: cannot read ({e})", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("`{}`: not a PEM private key ({e})", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certs = chain
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    rustls::sign::CertifiedKey::from_der(certs, key_der.clone_key(), &provider).map_err(|e| {
        format!(
            "`{}` and `{}` do not make a usable pair ({e})",
            cert.display(),
            key.display()
        )
    })?;
    Ok((chain, key_der.secret_der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_use_the_addresses_resolved_when_the_file_was_checked() {
        let text = "[listen]\nproxy = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n[rules]\ndir = \"rules\"\n[upstreams.main]\naddresses = [\"localhost:8080\", \"127.0.0.1:9\"]\n";
        let mut config = Config::from_str(Path::new("/x/gateway.toml"), text.into()).unwrap();
        let resolved = config.upstream_addresses["main"].clone();
        assert_eq!(resolved.len(), 2, "{resolved:?}");
        assert_eq!(resolved[1], "127.0.0.1:9".parse().unwrap());
        // Whatever a name resolves to later, the pool is built from the checked addresses.
        let checked: SocketAddr = "192.0.2.1:80".parse().unwrap();
        config
            .upstream_addresses
            .insert("main".into(), vec![checked]);
        let ups = Upstreams::from_config(&config);
        assert_eq!(ups.get("main").unwrap().pick(), checked);
    }
}
