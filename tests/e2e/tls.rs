//! The TLS listener with a real client (curl): SNI chooses between two certificates; a
//! certificate replaced on disk is served from the next handshake without a restart; a broken
//! one is refused and the old one keeps serving; `check` locates a bad certificate.

use super::certs::Ca;
use super::harness::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A CA (its certificate in `ca.pem`) and leaf certificates for `a.test` and `b.test` (`a.pem`,
/// `b.pem` and their keys), in a new directory: what [`tls_config`] serves.
fn a_and_b_certificates() -> (tempfile::TempDir, Ca) {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    std::fs::write(certs.path().join("ca.pem"), ca.cert.pem()).unwrap();
    ca.issue(certs.path(), "a", "a.test", "a.test");
    ca.issue(certs.path(), "b", "b.test", "b.test");
    (certs, ca)
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

    // `[listen.tls]` removed: the listener stays bound until a restart, and keeps serving
    // the certificates in force (not failing every handshake).
    let path = gw.dir().join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start_tls = text.find("[listen.tls]").unwrap();
    let end_tls = text.find("[reload]").unwrap();
    write_atomically(
        &path,
        &format!("{}{}", &text[..start_tls], &text[end_tls..]),
    );
    let start = Instant::now();
    loop {
        let s = rt.block_on(gw.status());
        if s["rules"]["last_result"] == "success"
            && s["rules"]["restart_needed"]
                .as_array()
                .is_some_and(|r| r.iter().any(|v| v == "listen.tls.address"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the set without TLS never loaded: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, a) = curl(certs.path(), tls, "a.test");
    assert_eq!(status, "200", "{a}");
    assert!(a.starts_with("CN=a.test second"), "{a}");
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

/// An HTTPS upstream with a certificate for `name` from `ca`; with `client_ca`, it requires a
/// client certificate from that CA. Answers 200 `secure upstream` and counts requests.
struct HttpsUpstream {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _served: Served,
}

impl HttpsUpstream {
    fn start(ca: &Ca, name: &str, client_ca: Option<&Ca>) -> HttpsUpstream {
        let config = ca.server_config(name, client_ca);
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = requests.clone();
        let served = Served::start(move |listener| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = format!("secure upstream over {:?}", req.version());
                        async move {
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::from(body),
                            )))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, svc)
                        .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        HttpsUpstream {
            addr: served.addr,
            requests,
            _served: served,
        }
    }
}

/// A gateway whose upstreams `ok`, `wrong-name` and `mtls` reach HTTPS upstreams.
fn upstream_tls_config(dir: &Path, ok: SocketAddr, mtls: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"
[server]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[listen]
proxy = "127.0.0.1:{{proxy}}"
admin = "127.0.0.1:{{admin}}"

[rules]
dir = "rules"

[upstreams.ok]
addresses = ["{ok}"]
tls = true
sni = "up.test"
ca_file = "{d}/ca.pem"

[upstreams.ok-h2]
addresses = ["{ok}"]
tls = true
sni = "up.test"
ca_file = "{d}/ca.pem"
protocol = "auto"

[upstreams.wrong-name]
addresses = ["{ok}"]
tls = true
sni = "other.test"
ca_file = "{d}/ca.pem"

[upstreams.mtls]
addresses = ["{mtls}"]
tls = true
sni = "up.test"
ca_file = "{d}/ca.pem"
client_cert = "{d}/client.pem"
client_key = "{d}/client-key.pem"

[upstreams.mtls-without-cert]
addresses = ["{mtls}"]
tls = true
sni = "up.test"
ca_file = "{d}/ca.pem"
"#
    )
}

const UPSTREAM_ROUTES: &str = r#"
[[route]]
name = "ok"
path = "/ok"
auth = "none"
upstream = "ok"

[[route]]
name = "ok-h2"
path = "/ok-h2"
auth = "none"
upstream = "ok-h2"

[[route]]
name = "wrong-name"
path = "/wrong-name"
auth = "none"
upstream = "wrong-name"

[[route]]
name = "mtls"
path = "/mtls"
auth = "none"
upstream = "mtls"

[[route]]
name = "mtls-without-cert"
path = "/mtls-without-cert"
auth = "none"
upstream = "mtls-without-cert"
"#;

#[tokio::test]
async fn upstreams_over_tls_verify_the_name_and_present_a_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    std::fs::write(certs.path().join("ca.pem"), ca.cert.pem()).unwrap();
    ca.issue(certs.path(), "client", "gateway.test", "gateway client");
    let plain = HttpsUpstream::start(&ca, "up.test", None);
    let mtls = HttpsUpstream::start(&ca, "up.test", Some(&ca));
    let gw = Gateway::start(
        &upstream_tls_config(certs.path(), plain.addr, mtls.addr),
        &[("r.toml", UPSTREAM_ROUTES)],
    );
    let get = |path: &str| {
        let url = gw.url(path);
        async move { client().get(url).send().await.unwrap() }
    };
    let r = get("/ok").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "secure upstream over HTTP/1.1");
    assert_eq!(plain.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    // `protocol = "auto"`: the upstream offers h2 by ALPN and gets the request over HTTP/2.
    let r = get("/ok-h2").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "secure upstream over HTTP/2.0");
    assert_eq!(plain.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    // The upstream's certificate does not carry the configured name: 502, and a log line says
    // why; the upstream never sees a request.
    let r = get("/wrong-name").await;
    assert_eq!(r.status(), 502);
    assert_eq!(plain.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let line = gw.wait_log("other.test");
    assert!(
        line.to_lowercase().contains("certificate") || line.contains("TLS"),
        "{line}"
    );

    // Upstream mTLS: with the client certificate the request goes through; without, refused.
    let r = get("/mtls").await;
    assert_eq!(r.status(), 200);
    assert_eq!(mtls.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r = get("/mtls-without-cert").await;
    assert_eq!(r.status(), 502);
    assert_eq!(mtls.requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    // `ca_file` rotated to a CA that did not sign the upstream's certificate: once the new
    // bundle is in force, no request goes over a connection the old one verified (pooled
    // connections are kept per bundle).
    assert_eq!(get("/ok").await.status(), 200);
    let before = plain.requests.load(std::sync::atomic::Ordering::SeqCst);
    write_atomically(&certs.path().join("ca.pem"), &Ca::new().cert.pem());
    gw.wait_generation(2).await;
    assert_eq!(get("/ok").await.status(), 502);
    assert_eq!(
        plain.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

/// curl with a client certificate (or none) to `path` with a token: the HTTP status, or `fail`
/// when the handshake did not complete.
fn curl_client(
    dir: &Path,
    tls: SocketAddr,
    client: Option<&str>,
    path: &str,
    token: Option<&str>,
) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", tls.port()));
    if let Some(c) = client {
        cmd.arg("--cert")
            .arg(dir.join(format!("{c}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{c}-key.pem")));
    }
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(format!("https://a.test:{}{path}", tls.port()))
        .output()
        .expect("curl");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        "fail".into()
    }
}

/// RFC 8705's `x5t#S256` of a PEM certificate file.
fn thumbprint(pem: &Path) -> String {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn mtls_config(up: SocketAddr, tls_port: u16, dir: &Path, auth: &str) -> String {
    format!(
        "{}\n[issuers.bound]\nissuer = \"https://bound.test\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\ncertificate_bound = true\nkeys = [{{ pem_file = \"{ec}\", kid = \"b-ec\" }}]\n\n[listen.tls]\naddress = \"127.0.0.1:{tls_port}\"\nclient_ca = \"{d}/client-ca.pem\"\nclient_auth = \"{auth}\"\ncertificates = [{{ cert = \"{d}/a.pem\", key = \"{d}/a-key.pem\" }}]\n\n[reload]\ndebounce_ms = 50\npoll_seconds = 1\n",
        standard_config(up),
        ec = fixture("ec256-public.pem").display(),
        d = dir.display()
    )
}

const MTLS_ROUTES: &str = r#"
[[route]]
name = "who"
path = "/who"
auth = "none"
  [[route.rule]]
  name = "has-a-client-certificate"
  allow_if = "request.tls != null && request.tls.client_certificate != null"
  [route.forward]
  "x-client-thumbprint" = "request.tls.client_certificate.thumbprint"
  "x-client-subject" = "request.tls.client_certificate.subject"
  "x-client-dns" = "request.tls.client_certificate.dns_names[0]"
  "x-tls-version" = "request.tls.version"

[[route]]
name = "workload"
path = "/workload"
auth = "none"
  [[route.rule]]
  name = "spiffe-payments"
  allow_if = "request.tls.client_certificate != null && 'spiffe://claimgate.test/payments' in request.tls.client_certificate.uris && request.tls.client_certificate.emails == ['ops@claimgate.test']"

[[route]]
name = "bound"
path = "/bound"
issuers = ["bound"]
"#;

#[test]
fn client_certificates_are_verified_and_bind_tokens() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let clients = Ca::new();
    let strangers = Ca::new();
    std::fs::write(certs.path().join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(certs.path().join("client-ca.pem"), clients.cert.pem()).unwrap();
    ca.issue(certs.path(), "a", "a.test", "a.test");
    clients.issue_with(
        certs.path(),
        "alice",
        "alice.client",
        "alice",
        vec![
            rcgen::SanType::URI("spiffe://claimgate.test/payments".try_into().unwrap()),
            rcgen::SanType::Rfc822Name("ops@claimgate.test".try_into().unwrap()),
        ],
    );
    clients.issue(certs.path(), "bob", "bob.client", "bob");
    strangers.issue(certs.path(), "mallory", "mallory.client", "mallory");
    let d = certs.path();

    // Required: a certificate from the client CA is admitted, none or another CA's is not.
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(
        &mtls_config(up.addr, tls.port(), d, "required"),
        &[("m.toml", MTLS_ROUTES)],
    );
    wait_listening(tls);
    assert_eq!(curl_client(d, tls, Some("alice"), "/who", None), "200");
    assert_eq!(
        up.last()
            .headers
            .get("x-client-thumbprint")
            .map(|v| v.to_str().unwrap().to_string())
            .as_deref(),
        Some(thumbprint(&d.join("alice.pem")).as_str()),
        "the rule and the upstream see the certificate's thumbprint"
    );
    let seen = up.last();
    assert_eq!(seen.headers.get("x-client-subject").unwrap(), "CN=alice");
    assert_eq!(seen.headers.get("x-client-dns").unwrap(), "alice.client");
    // The name `eval --tls` and the README give (the TLS layer's own is `TLSv1_3`).
    assert_eq!(seen.headers.get("x-tls-version").unwrap(), "TLSv1.3");
    // Rules read the alternative names: alice's certificate carries the SPIFFE ID, bob's not.
    assert_eq!(curl_client(d, tls, Some("alice"), "/workload", None), "200");
    assert_eq!(curl_client(d, tls, Some("bob"), "/workload", None), "403");
    assert_eq!(curl_client(d, tls, None, "/who", None), "fail");
    assert_eq!(curl_client(d, tls, Some("mallory"), "/who", None), "fail");

    // The client CA replaced on disk: the next handshakes verify against the new bundle, with
    // no restart (and none asked for).
    write_atomically(&d.join("client-ca.pem"), &strangers.cert.pem());
    until_admitted(d, tls, Some("mallory"), "the new client CA was not used");
    assert_eq!(curl_client(d, tls, Some("alice"), "/who", None), "fail");
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(gw.status());
    assert_eq!(
        status["rules"]["restart_needed"],
        serde_json::json!([]),
        "{status}"
    );
    // A broken bundle is refused; the one in force stays.
    write_atomically(&d.join("client-ca.pem"), "not a certificate");
    gw.wait_log("client-ca.pem");
    assert_eq!(curl_client(d, tls, Some("mallory"), "/who", None), "200");
    write_atomically(&d.join("client-ca.pem"), &clients.cert.pem());
    until_admitted(d, tls, Some("alice"), "the client CA was not restored");
    drop(gw);

    // Optional: no certificate is admitted (and the rule sees none); a token bound to alice's
    // certificate (RFC 8705 §3) passes only with alice's certificate.
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _gw = Gateway::start(
        &mtls_config(up.addr, tls.port(), d, "optional"),
        &[("m.toml", MTLS_ROUTES)],
    );
    wait_listening(tls);
    assert_eq!(curl_client(d, tls, None, "/who", None), "403");
    assert_eq!(curl_client(d, tls, Some("mallory"), "/who", None), "fail");
    let bound = |x5t: &str| {
        super::tokens::sign(
            jsonwebtoken::Algorithm::ES256,
            Some("b-ec"),
            &super::tokens::claims(
                "https://bound.test",
                serde_json::json!({"cnf": {"x5t#S256": x5t}}),
            ),
            &super::tokens::encoding_key(jsonwebtoken::Algorithm::ES256),
        )
    };
    let alices = bound(&thumbprint(&d.join("alice.pem")));
    assert_eq!(
        curl_client(d, tls, Some("alice"), "/bound", Some(&alices)),
        "200"
    );
    assert_eq!(
        curl_client(d, tls, Some("bob"), "/bound", Some(&alices)),
        "401"
    );
    assert_eq!(curl_client(d, tls, None, "/bound", Some(&alices)), "401");
    let unbound = super::tokens::sign(
        jsonwebtoken::Algorithm::ES256,
        Some("b-ec"),
        &super::tokens::claims("https://bound.test", serde_json::json!({})),
        &super::tokens::encoding_key(jsonwebtoken::Algorithm::ES256),
    );
    assert_eq!(
        curl_client(d, tls, Some("alice"), "/bound", Some(&unbound)),
        "401"
    );
}

#[test]
fn http2_by_alpn_is_decided_on_the_authority() {
    let (certs, _ca) = a_and_b_certificates();
    let rules = format!(
        "{OPEN}\n[[route]]\nname = \"only-b\"\nhost = \"b.test\"\npath = \"/open\"\nauth = \"none\"\n  [route.forward]\n  \"x-route\" = \"'only-b'\"\n"
    );
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _gw = Gateway::start(
        &tls_config(up.addr, tls.port(), certs.path()),
        &[("open.toml", &rules)],
    );
    wait_listening(tls);
    let h2 = |name: &str, token: Option<&str>| {
        let mut cmd = Command::new("curl");
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = cmd
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg("--cacert")
            .arg(certs.path().join("ca.pem"))
            .arg("--resolve")
            .arg(format!("{name}:{}:127.0.0.1", tls.port()))
            .arg(format!("https://{name}:{}/open", tls.port()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // HTTP/2 end to end from the client's side; the host-specific route decides `b.test`
    // (RFC 9113 §8.3.1: `:authority` is the host), and the upstream gets it as `Host`.
    assert_eq!(h2("a.test", None), "2 200");
    assert!(up.last().headers.get("x-route").is_none());
    assert_eq!(h2("b.test", None), "2 200");
    let seen = up.last();
    assert_eq!(seen.headers.get("x-route").unwrap(), "only-b");
    assert_eq!(
        seen.headers.get("host").unwrap().to_str().unwrap(),
        format!("b.test:{}", tls.port())
    );
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
}

/// A TLS connection to `addr` for `name`, trusting `ca`, with HTTP/2 negotiated by ALPN.
async fn h2_over_tls(
    ca: &Ca,
    addr: SocketAddr,
    name: &'static str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name.try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    conn
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_client_that_never_sends_its_preface_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let (certs, ca) = a_and_b_certificates();
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = tls_config(up.addr, tls.port(), certs.path()).replace(
        "[reload]",
        "[limits]\nrequest_head_timeout_ms = 600\n\n[reload]",
    );
    let gw = Gateway::start(&config, &[("open.toml", OPEN)]);
    wait_listening(tls);
    let mut conn = h2_over_tls(&ca, tls, "a.test").await;
    // HTTP/2 negotiated, then silence: the server's SETTINGS arrive, then the connection ends
    // at the head deadline.
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(ended.is_ok(), "the silent h2 connection was kept open");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(3000),
        "cut off after {took:?}"
    );
    // A client's failure, counted; not an ERROR line.
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "claimgate_proxy_events_total",
            &[("kind", "h2_handshake_error")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!gw.logs().contains("\"ERROR\""), "{}", gw.logs());
}

/// The drain's GOAWAY reaches HTTP/2 by ALPN on the TLS listener too (the h2c case is in
/// `drain.rs`): at SIGTERM an idle h2 connection over TLS is told GOAWAY and closed at once,
/// seconds before the grace period ends, and opens no new stream.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_goaway_to_h2_connections_over_tls_at_once() {
    const GRACE: Duration = Duration::from_secs(3);
    let (certs, ca) = a_and_b_certificates();
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = tls_config(up.addr, tls.port(), certs.path()).replace(
        "grace_period_seconds = 0",
        &format!("grace_period_seconds = {}", GRACE.as_secs()),
    );
    let mut gw = Gateway::start(&config, &[("open.toml", OPEN)]);
    wait_listening(tls);
    let stream = h2_over_tls(&ca, tls, "a.test").await;
    let (mut client, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://a.test:{}/open", tls.port()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);

    let signalled = Instant::now();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(GRACE, conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let closed = signalled.elapsed();
    assert!(
        closed < Duration::from_millis(1500),
        "closed {closed:?} after SIGTERM"
    );
    assert!(client.ready().await.is_err(), "a new stream after GOAWAY");
    let exit = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit(Duration::from_secs(8)).map(|(s, _)| s.code());
        (code, gw.logs())
    })
    .await
    .unwrap();
    assert_eq!(exit.0, Some(Some(0)), "{}", exit.1);
}

/// Waits (10 s at most) until `client`'s certificate is admitted to `/who` on a fresh
/// connection: a reload of `client-ca.pem` took effect.
fn until_admitted(d: &Path, tls: SocketAddr, client: Option<&str>, what: &str) {
    let started = Instant::now();
    while curl_client(d, tls, client, "/who", None) != "200" {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS client that keeps its sessions (rustls' in-memory store): connections after the first
/// resume, with the client certificate of the first, which a resuming server does not verify
/// again.
struct ResumingClient {
    connector: tokio_rustls::TlsConnector,
}

impl ResumingClient {
    /// A client with `client`'s certificate, or with none.
    fn new(dir: &Path, client: Option<&str>) -> ResumingClient {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(c) => {
                let chain =
                    vec![CertificateDer::from_pem_file(dir.join(format!("{c}.pem"))).unwrap()];
                let key = PrivateKeyDer::from_pem_file(dir.join(format!("{c}-key.pem"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        ResumingClient {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        }
    }

    /// `GET path` on a new connection: whether the session was resumed, and the status
    /// (`None` when the handshake or the exchange failed).
    async fn get(&self, tls: SocketAddr, path: &str) -> (bool, Option<u16>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let Ok(mut s) = self.connector.connect(name, tcp).await else {
            return (false, None);
        };
        let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).await.is_err() {
            return (resumed, None);
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        let status = String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok());
        (resumed, status)
    }
}

/// `GET path` on a resumed session is refused (403) and reaches no upstream.
async fn refused_on_resumption(
    client: &ResumingClient,
    tls: SocketAddr,
    path: &str,
    up: &Upstream,
) {
    let seen = up.count();
    let (resumed, status) = client.get(tls, path).await;
    assert!(
        resumed,
        "the session was not resumed: the test tests nothing"
    );
    assert_eq!(status, Some(403));
    assert_eq!(up.count(), seen, "a refused request reached the upstream");
}

/// A TLS session resumed after a reload replaced `client_ca` brings back a client certificate
/// the new trust never verified: it does not count. Where a certificate is required, the
/// request is refused (403 `client_certificate`); the trust restored, it counts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_session_brings_no_certificate_the_trust_in_force_refuses() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, clients, strangers) = (Ca::new(), Ca::new(), Ca::new());
    let d = certs.path();
    std::fs::write(d.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(d.join("client-ca.pem"), clients.cert.pem()).unwrap();
    ca.issue(d, "a", "a.test", "a.test");
    clients.issue(d, "alice", "alice.client", "alice");
    strangers.issue(d, "mallory", "mallory.client", "mallory");
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(
        &mtls_config(up.addr, tls.port(), d, "required"),
        &[("m.toml", MTLS_ROUTES)],
    );
    wait_listening(tls);
    let alice = ResumingClient::new(d, Some("alice"));
    assert_eq!(alice.get(tls, "/who").await, (false, Some(200)));
    // The client resumes: what follows tests resumption, not a new handshake.
    assert_eq!(alice.get(tls, "/who").await, (true, Some(200)));
    assert_eq!(up.count(), 2);

    // Alice's CA is no longer trusted (mallory's is): a fresh handshake with alice's
    // certificate fails, and a resumed one must not let her certificate count.
    write_atomically(&d.join("client-ca.pem"), &strangers.cert.pem());
    until_admitted(d, tls, Some("mallory"), "the new client CA was not used");
    refused_on_resumption(&alice, tls, "/who", &up).await;
    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "claimgate_denials_total",
            &[
                ("route", "who"),
                ("rule", ""),
                ("reason", "client_certificate")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );

    // Alice's CA trusted again: her resumed sessions count again.
    write_atomically(&d.join("client-ca.pem"), &clients.cert.pem());
    until_admitted(d, tls, Some("alice"), "the client CA was not restored");
    assert_eq!(alice.get(tls, "/who").await, (true, Some(200)));
}

/// `client_ca` must hold CAs: a client's (or a server's) leaf certificate there is a located
/// error, not a trust anchor.
#[test]
fn check_refuses_a_leaf_as_the_client_ca() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let (ca, clients) = (Ca::new(), Ca::new());
    ca.issue(d, "a", "a.test", "a.test");
    clients.issue(d, "alice", "alice.client", "alice");
    std::fs::copy(d.join("alice.pem"), d.join("client-ca.pem")).unwrap();
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (dir, _, _) = write_setup(
        &mtls_config(up, free_port(), d, "required"),
        &[("m.toml", MTLS_ROUTES)],
    );
    let (code, err) = check(&dir.path().join("gateway.toml"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("gateway.toml:"), "{err}");
    assert!(err.contains("`CN=alice` is not a CA certificate"), "{err}");
    // The CA itself loads.
    std::fs::write(d.join("client-ca.pem"), clients.cert.pem()).unwrap();
    let (code, err) = check(&dir.path().join("gateway.toml"));
    assert_eq!(code, Some(0), "{err}");
}

/// `eval` describes a client certificate as the listener would take it: one `client_ca`
/// accepts is seen by the rules; one it refuses, or none where one is required, fails the
/// handshake (an error, exit 2), not an HTTP answer the gateway would never give.
#[test]
fn eval_holds_a_described_client_certificate_to_the_listener() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let (ca, clients, strangers) = (Ca::new(), Ca::new(), Ca::new());
    std::fs::write(d.join("client-ca.pem"), clients.cert.pem()).unwrap();
    ca.issue(d, "a", "a.test", "a.test");
    clients.issue(d, "alice", "alice.client", "alice");
    strangers.issue(d, "mallory", "mallory.client", "mallory");
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let eval = |auth: &str, cert: Option<&str>| {
        let (dir, _, _) = write_setup(
            &mtls_config(up, free_port(), d, auth),
            &[("m.toml", MTLS_ROUTES)],
        );
        let mut cmd = binary();
        cmd.args(["eval", "--config"])
            .arg(dir.path().join("gateway.toml"));
        match cert {
            Some(c) => cmd.arg("--client-cert").arg(d.join(format!("{c}.pem"))),
            None => cmd.arg("--tls"),
        };
        let out = cmd.arg("/who").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(eval("optional", Some("alice")).0, Some(0));
    let (code, err) = eval("optional", Some("mallory"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not accept this certificate"), "{err}");
    // Optional and no certificate: decided, the rule sees none.
    assert_eq!(eval("optional", None).0, Some(1));
    let (code, err) = eval("required", None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("requires a client certificate"), "{err}");
}

/// `check` warns about certificates that load and that clients will refuse: one that expires
/// within two weeks, and a route host no certificate names (its clients get the first one).
#[test]
fn check_warns_about_certificates_clients_will_refuse() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let ca = Ca::new();
    ca.issue(d, "a", "a.test", "a.test");
    ca.issue_expiring(d, "b", "b.test", 3);
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let routes = format!(
        "{OPEN}\n[[route]]\nname = \"c-only\"\nhost = \"c.test\"\npath = \"/c\"\nauth = \"none\"\n"
    );
    let (dir, _, _) = write_setup(&tls_config(up, free_port(), d), &[("open.toml", &routes)]);
    let (code, err) = check(&dir.path().join("gateway.toml"));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("b.pem` expires on"), "{err}");
    assert!(err.contains("gateway.toml:"), "{err}");
    assert!(
        err.contains("no certificate of `[listen.tls]` names host `c.test`"),
        "{err}"
    );
    assert!(!err.contains("a.pem`"), "{err}");
}

/// A session made without a client certificate on an `optional` listener, resumed after a
/// reload made certificates `required`: the resumed session has none, and is refused (403
/// `client_certificate`), where a full handshake without one fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_resumed_after_certificates_became_required_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, clients) = (Ca::new(), Ca::new());
    let d = certs.path();
    std::fs::write(d.join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(d.join("client-ca.pem"), clients.cert.pem()).unwrap();
    ca.issue(d, "a", "a.test", "a.test");
    let up = Upstream::start();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let routes =
        format!("{MTLS_ROUTES}\n[[route]]\nname = \"open\"\npath = \"/open\"\nauth = \"none\"\n");
    let gw = Gateway::start(
        &mtls_config(up.addr, tls.port(), d, "optional"),
        &[("m.toml", &routes)],
    );
    wait_listening(tls);
    let anonymous = ResumingClient::new(d, None);
    assert_eq!(anonymous.get(tls, "/open").await, (false, Some(200)));
    assert_eq!(anonymous.get(tls, "/open").await, (true, Some(200)));
    let generation = gw.status().await["rules"]["generation"].as_u64().unwrap();
    let config = std::fs::read_to_string(gw.dir().join("gateway.toml")).unwrap();
    write_atomically(
        &gw.dir().join("gateway.toml"),
        &config.replace("client_auth = \"optional\"", "client_auth = \"required\""),
    );
    gw.wait_generation(generation + 1).await;
    // A full handshake without a certificate now fails.
    assert_eq!(curl_path(d, tls, "a.test", "/open", None).0, "000");
    refused_on_resumption(&anonymous, tls, "/open", &up).await;
}
