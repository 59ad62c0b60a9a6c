//! The TLS listener's server certificates: read and checked when a snapshot loads (a bad file is a
//! located error and the certificates in force stay, never a panic in the listener), and chosen
//! by SNI at each handshake. Reloaded with everything else: a certificate replaced on disk is
//! served from the next handshake on. The client CA bundle likewise: its verifier is built with
//! the snapshot, and each handshake asks the snapshot in force.

use crate::config::{ClientAuth, Config};
use crate::facts::CertificateNames;
use crate::location::SourceError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
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
    /// Verifies client certificates against `client_ca` (`None`: none is asked for).
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Names the client-certificate trust (`client_ca`'s certificates and `client_auth`) by
    /// content: a connection's certificate verified under this trust needs no second check
    /// after a reload that left it unchanged. `None` without `client_ca`.
    pub client_trust: Option<u64>,
    /// `client_auth = "required"` with a `client_ca`: every request needs a certificate this
    /// trust accepts.
    pub client_required: bool,
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
        let (mut client_verifier, mut client_trust) = (None, None);
        if let Some(ca) = &tls.client_ca {
            match read_ca(&config.resolve(ca.get_ref())).and_then(|(roots, key)| {
                client_verifier_for(roots, tls.client_auth).map(|v| (v, key))
            }) {
                Ok((v, key)) => {
                    client_verifier = Some(v);
                    client_trust = Some(trust_key(key, tls.client_auth));
                }
                Err(msg) => errors.push(config.error_at(ca.span(), msg)),
            }
        }
        if errors.is_empty() {
            Ok(Some(Certificates {
                certs,
                client_verifier,
                client_required: client_trust.is_some() && tls.client_auth == ClientAuth::Required,
                client_trust,
            }))
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

    /// Whether a certificate names `host` (exactly, or by a wildcard one label above): a TLS
    /// client for it is then served a certificate it accepts, not the first one.
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let wildcard = host
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        self.certs.iter().any(|c| {
            c.names.contains(&host) || wildcard.as_ref().is_some_and(|w| c.names.contains(w))
        })
    }

    /// Whether `chain` (leaf first) is a client certificate the trust in force accepts now.
    pub fn accepts_client(&self, chain: &[CertificateDer<'static>]) -> bool {
        let (Some(verifier), Some((leaf, intermediates))) =
            (&self.client_verifier, chain.split_first())
        else {
            return false;
        };
        verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .is_ok()
    }
}

/// The client-certificate trust by content: the CA bundle's certificates and the mode.
fn trust_key(bundle: u64, auth: ClientAuth) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bundle.hash(&mut h);
    (auth == ClientAuth::Required).hash(&mut h);
    h.finish()
}

impl Certificate {
    /// A PEM chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn read(cert_file: &Path, key_file: &Path) -> Result<Certificate, String> {
        let shown = |p: &Path| p.display().to_string();
        let cert_pem = crate::set_file::read(cert_file)
            .map_err(|e| format!("`{}`: cannot read ({e})", shown(cert_file)))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`{}`: not a PEM certificate chain ({e})", shown(cert_file)))?;
        let Some(leaf) = chain.first() else {
            return Err(format!("`{}` holds no certificate", shown(cert_file)));
        };
        let key_pem = crate::set_file::read(key_file)
            .map_err(|e| format!("`{}`: cannot read ({e})", shown(key_file)))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
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

/// A PEM CA bundle as trust roots: at least one certificate, each parsing as X.509 and usable
/// as a trust anchor; and a hash of its certificates.
fn read_ca(path: &Path) -> Result<(rustls::RootCertStore, u64), String> {
    let pem = crate::set_file::read(path)
        .map_err(|e| format!("`{}`: cannot read ({e})", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}`: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in &certs {
            c.as_ref().hash(&mut h);
        }
        h.finish()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        leaf_facts(&c)
            .map_err(|e| format!("`{}`: a certificate does not parse ({e})", path.display()))?;
        if let Some(subject) = not_a_ca(&c) {
            return Err(format!(
                "`{}`: `{subject}` is not a CA certificate (no `CA:TRUE`): name the CA that issues the client certificates (a server's certificate chain here would make its issuer's every certificate a client)",
                path.display()
            ));
        }
        roots
            .add(c)
            .map_err(|e| format!("`{}`: not a usable CA certificate ({e})", path.display()))?;
    }
    Ok((roots, key))
}

/// The verifier of client certificates: chains to `roots`, with or without a certificate
/// required.
fn client_verifier_for(
    roots: rustls::RootCertStore,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| e.to_string())
}

/// A connection as the offline tools describe it (`eval --tls`, a test case's `tls`): TLS 1.3,
/// and the client certificate of a PEM file (leaf first, then intermediates) when one is given,
/// with the facts the listener would report for it. Held to what `listener` (the snapshot's
/// TLS listener) does with it: without `client_ca` no certificate is asked for, so none is
/// seen; one that `client_ca` does not accept, or none where one is required, fails the
/// handshake, which is no HTTP answer at all: an error here.
pub fn described_connection(
    client_pem: Option<&Path>,
    listener: Option<&Certificates>,
) -> Result<crate::facts::TlsFacts, String> {
    let required = listener.is_some_and(|l| l.client_required);
    let asked = listener.is_some_and(|l| l.client_verifier.is_some());
    let client = match client_pem {
        None if required => {
            return Err("the listener requires a client certificate (`client_auth = \"required\"`): the TLS handshake fails without one".into())
        }
        None => None,
        Some(_) if !asked => None,
        Some(path) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("`{}`: not a PEM certificate ({e})", path.display()))?;
            let Some(leaf) = chain.first() else {
                return Err(format!("`{}` holds no certificate", path.display()));
            };
            if listener.is_some_and(|l| !l.accepts_client(&chain)) {
                return Err(format!(
                    "`{}`: the listener's `client_ca` does not accept this certificate: the TLS handshake fails",
                    path.display()
                ));
            }
            Some(client_certificate(leaf.as_ref()).ok_or_else(|| {
                format!("`{}`: the certificate does not parse", path.display())
            })?)
        }
    };
    Ok(crate::facts::TlsFacts {
        version: crate::facts::tls_version_name("TLSv1_3"),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        client,
    })
}

/// The facts of a client certificate (DER), as the listener reports them: the RFC 8705
/// thumbprint, the organization and serial as Pingora's digest writes them, and the names.
pub fn client_certificate(der: &[u8]) -> Option<crate::facts::ClientCertificate> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let organization = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .map(str::to_string)
        .reduce(|a, b| a + &b);
    Some(crate::facts::ClientCertificate {
        thumbprint: base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(der)),
        organization,
        serial: Some(cert.raw_serial_as_string()),
        names: Arc::new(certificate_names(der)?),
    })
}

/// The subject and alternative names of a certificate (DER); `None` if it does not parse.
pub fn certificate_names(der: &[u8]) -> Option<CertificateNames> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = CertificateNames {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        ..CertificateNames::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.dns_names.push(d.to_string()),
                GeneralName::URI(u) => names.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => names.emails.push(e.to_string()),
                GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.ips.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Some(names)
}

/// The leaf's DNS names and `notAfter`.
/// The subject of a certificate that cannot be a trust anchor for client certificates: one
/// without `CA:TRUE` that is not self-signed (a self-signed one pins itself).
fn not_a_ca(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let self_signed = cert.issuer() == cert.subject();
    (!ca && !self_signed).then(|| cert.subject().to_string())
}

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
