//! The TLS listener with a real client (curl): SNI chooses between two certificates; a
//! certificate replaced on disk is served from the next handshake without a restart; a broken
//! one is refused and the old one keeps serving; `check` locates a bad certificate.

use super::harness::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A test CA and a way to issue leaf certificates from it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "claimgate test CA");
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `name` with common name `cn`, written as `<file>.pem` and `<file>-key.pem`.
    fn issue(&self, dir: &Path, file: &str, name: &str, cn: &str) {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        write_atomically(&dir.join(format!("{file}.pem")), &cert.pem());
        write_atomically(&dir.join(format!("{file}-key.pem")), &key.serialize_pem());
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// curl to `https://<name>:<port>/api/x` through the TLS listener: (HTTP status, the served
/// certificate's subject as curl prints it).
fn curl(dir: &Path, tls: SocketAddr, name: &str) -> (String, String) {
    curl_path(dir, tls, name, "/open", None)
}

fn curl_path(
    dir: &Path,
    tls: SocketAddr,
    name: &str,
    path: &str,
    token: Option<&str>,
) -> (String, String) {
    let mut cmd = Command::new("curl");
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .args(["-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", tls.port()))
        .arg(format!("https://{name}:{}{path}", tls.port()))
        .output()
        .expect("curl");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let subject = err
        .lines()
        .find_map(|l| l.split_once("subject: ").map(|(_, s)| s.trim().to_string()))
        .unwrap_or_default();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        format!("{subject} | {err}"),
    )
}

const OPEN: &str = "[[route]]\nname = \"open\"\npath = \"/open\"\nauth = \"none\"\n\n[[route]]\nname = \"api\"\npath = \"/api\"\nissuers = [\"ec\"]\n";

fn tls_config(up: SocketAddr, tls_port: u16, dir: &Path) -> String {
    format!(
        "{}\n[listen.tls]\naddress = \"127.0.0.1:{tls_port}\"\ncertificates = [\n  {{ cert = \"{d}/a.pem\", key = \"{d}/a-key.pem\" }},\n  {{ cert = \"{d}/b.pem\", key = \"{d}/b-key.pem\" }},\n]\n[reload]\ndebounce_ms = 50\npoll_seconds = 1\n",
        standard_config(up),
        d = dir.display()
    )
}

fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no TLS listener");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sni_picks_the_certificate_and_a_replaced_one_is_served_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    std::fs::write(certs.path().join("ca.pem"), ca.cert.pem()).unwrap();
    ca.issue(certs.path(), "a", "a.test", "a.test first");
    ca.issue(certs.path(), "b", "b.test", "b.test");
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(
        &tls_config(up.addr, tls.port(), certs.path()),
        &[("open.toml", OPEN)],
    );
    wait_listening(tls);

    // SNI chooses; the request goes through to the upstream.
    let (status, a) = curl(certs.path(), tls, "a.test");
    assert_eq!(status, "200", "{a}");
    assert!(a.starts_with("CN=a.test first"), "{a}");
    let (status, b) = curl(certs.path(), tls, "b.test");
    assert_eq!(status, "200", "{b}");
    assert!(b.starts_with("CN=b.test"), "{b}");
    assert!(up.count() >= 2);
    // Over TLS, a token is verified as on the plain listener (one crypto provider for the
    // handshake and the signature in one process).
    let token = super::tokens::es256(serde_json::json!({}));
    assert_eq!(
        curl_path(certs.path(), tls, "a.test", "/api", Some(&token)).0,
        "200"
    );
    assert_eq!(
        curl_path(certs.path(), tls, "a.test", "/api", None).0,
        "401"
    );

    // Replaced on disk: the next handshake gets the new certificate, no restart.
    ca.issue(certs.path(), "a", "a.test", "a.test second");
    let start = Instant::now();
    loop {
        let (status, a) = curl(certs.path(), tls, "a.test");
        if a.starts_with("CN=a.test second") {
            assert_eq!(status, "200");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new certificate was never served: {a}\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken certificate is refused; the one in force keeps serving.
    write_atomically(
        &certs.path().join("b.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = Instant::now();
    loop {
        let s = rt.block_on(gw.status());
        if s["rules"]["last_result"] == "error" {
            let e = s["rules"]["last_error"].as_str().unwrap_or("");
            assert!(e.contains("b.pem"), "{e}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never refused: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, b) = curl(certs.path(), tls, "b.test");
    assert_eq!(status, "200", "{b}");
    assert!(b.starts_with("CN=b.test"), "{b}");

    // Expiry of each certificate in force, as a metric.
    let m = rt.block_on(gw.metrics());
    let a_file = certs.path().join("a.pem").display().to_string();
    let expiry = metric_value(
        &m,
        "claimgate_tls_certificate_expiry_seconds",
        &[("certificate", &a_file)],
    )
    .expect("expiry series");
    assert!(expiry > super::tokens::now() as f64, "{expiry}");
}

#[test]
fn check_locates_a_certificate_that_does_not_load() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.issue(certs.path(), "a", "a.test", "a.test");
    // b's key does not belong to b's certificate.
    ca.issue(certs.path(), "b", "b.test", "b.test");
    ca.issue(certs.path(), "other", "other.test", "other.test");
    std::fs::copy(
        certs.path().join("other-key.pem"),
        certs.path().join("b-key.pem"),
    )
    .unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (dir, _, _) = write_setup(
        &tls_config(up, free_port(), certs.path()),
        &[("open.toml", OPEN)],
    );
    let out = binary()
        .args(["check", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("gateway.toml:"), "{err}");
    assert!(err.contains("do not make a usable pair"), "{err}");
}
