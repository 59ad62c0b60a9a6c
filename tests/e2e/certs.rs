//! Test certificates: a CA that issues leaves, and a server's TLS configuration from it.

use super::harness::write_atomically;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;

/// A test CA and a way to issue leaf certificates from it.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "claimgate test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `name` with common name `cn`, written as `<file>.pem` and `<file>-key.pem`.
    pub fn issue(&self, dir: &Path, file: &str, name: &str, cn: &str) {
        self.issue_with(dir, file, name, cn, Vec::new());
    }

    /// [`Ca::issue`] with more subject alternative names.
    pub fn issue_with(
        &self,
        dir: &Path,
        file: &str,
        name: &str,
        cn: &str,
        more: Vec<rcgen::SanType>,
    ) {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.subject_alt_names.extend(more);
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        write_atomically(&dir.join(format!("{file}.pem")), &cert.pem());
        write_atomically(&dir.join(format!("{file}-key.pem")), &key.serialize_pem());
    }

    /// [`Ca::issue`] with a certificate that expires `days` days from today.
    pub fn issue_expiring(&self, dir: &Path, file: &str, name: &str, days: i64) {
        use chrono::Datelike;
        let end = chrono::Utc::now() + chrono::Duration::days(days);
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        write_atomically(&dir.join(format!("{file}.pem")), &cert.pem());
        write_atomically(&dir.join(format!("{file}-key.pem")), &key.serialize_pem());
    }

    /// A server's TLS configuration with a certificate for `name` from this CA, offering h2
    /// and HTTP/1.1; with `client_ca`, clients must show a certificate from that CA.
    pub fn server_config(&self, name: &str, client_ca: Option<&Ca>) -> rustls::ServerConfig {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let mut config = match client_ca {
            Some(c) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(c.cert.der().to_vec()))
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        }
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}
