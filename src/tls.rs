//! The TLS listener's server certificates: read and checked when a snapshot loads (a bad file is a
//! located error and the certificates in force stay, never a panic in the listener), and chosen
//! by SNI at each handshake. Reloaded with everything else: a certificate replaced on disk is
//! served from the next handshake on.

use crate::config::Config;
use crate::location::SourceError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One certificate chain with its key.
#[derive(Debug)]
pub struct Certificate {
    /// The chain's file.
    pub file: PathBuf,
    /// The DNS names of the leaf (subject alternative names; the common name when it has none),
    /// lower-case. `*.example.com` matches one label.
    pub names: Vec<String>,
    /// The leaf's `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

/// The certificates of the TLS listener; the first is served when no name matches.
#[derive(Debug)]
pub struct Certificates {
    certs: Vec<Certificate>,
}

impl Certificates {
    /// The certificates `config` names (`None` without a TLS listener), every error located at
    /// its entry.
    pub fn load(config: &Config) -> Result<Option<Certificates>, Vec<SourceError>> {
        let Some(tls) = &config.raw.listen.tls else {
            return Ok(None);
        };
        let mut certs = Vec::new();
        let mut errors = Vec::new();
        for entry in &tls.certificates {
            let e = entry.get_ref();
            match Certificate::read(&config.resolve(&e.cert), &config.resolve(&e.key)) {
                Ok(c) => certs.push(c),
                Err(msg) => errors.push(config.error_at(entry.span(), msg)),
            }
        }
        if let Some(ca) = &tls.client_ca {
            if let Err(msg) = read_ca(&config.resolve(ca.get_ref())) {
                errors.push(config.error_at(ca.span(), msg));
            }
        }
        if errors.is_empty() {
            Ok(Some(Certificates { certs }))
        } else {
            Err(errors)
        }
    }

    /// The certificate for the name the client asked for: an exact name first, then a wildcard,
    /// else the first certificate.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni.map(str::to_ascii_lowercase).and_then(|name| {
            let exact = self.certs.iter().find(|c| c.names.contains(&name));
            exact
                .or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    let wildcard = format!("*.{parent}");
                    self.certs.iter().find(|c| c.names.contains(&wildcard))
                })
                .map(|c| c.key.clone())
        });
        by_name.or_else(|| self.certs.first().map(|c| c.key.clone()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Certificate> {
        self.certs.iter()
    }
}

impl Certificate {
    /// A PEM chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn read(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
        let shown = |p: &Path| p.display().to_string();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("`{}`: not a PEM certificate chain ({e})", shown(cert_file)))?;
        let Some(leaf) = chain.first() else {
            return Err(format!("`{}` holds no certificate", shown(cert_file)));
        };
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| format!("`{}`: not a PEM private key ({e})", shown(key_file)))?;
        let (names, not_after) = leaf_facts(leaf).map_err(|e| {
            format!(
                "`{}`: the certificate does not parse ({e})",
                shown(cert_file)
            )
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            format!(
                "`{}` and `{}` do not make a usable pair ({e})",
                shown(cert_file),
                shown(key_file)
            )
        })?;
        Ok(Certificate {
            file: cert_file.to_path_buf(),
            names,
            not_after,
            key: Arc::new(key),
        })
    }
}

/// Checks a PEM CA bundle: at least one certificate, each parsing as X.509.
fn read_ca(path: &Path) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("`{}`: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    for c in &certs {
        leaf_facts(c)
            .map_err(|e| format!("`{}`: a certificate does not parse ({e})", path.display()))?;
    }
    Ok(())
}

/// The leaf's DNS names and `notAfter`.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}
