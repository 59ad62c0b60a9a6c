//! Test harness: a real upstream (hyper) that records what it receives, and the real claimgate
//! binary started on ephemeral loopback ports, killed when the guard drops.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// A server's accept loop on an ephemeral loopback port, on a runtime of its own so it outlives
/// the test's runtime; stopped when dropped.
pub struct Served {
    pub addr: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // Tests drop servers inside their own runtime, where a blocking shutdown panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Served {
    /// Binds a loopback port and runs `serve` with its listener on a runtime of its own.
    pub fn start<F, Fut>(serve: F) -> Served
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = bind_unclaimed();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            serve(listener).await;
        });
        Served { addr, rt: Some(rt) }
    }
}

/// An HTTP/1.1 server on an ephemeral loopback port, on its own runtime so it outlives the
/// test's runtime; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    _served: Served,
}

impl TestServer {
    pub fn start<F, Fut>(handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        TestServer::serve(None, handler)
    }

    /// The same over TLS with `tls` (HTTP/1.1 only).
    pub fn start_tls<F, Fut>(tls: rustls::ServerConfig, handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        TestServer::serve(Some(acceptor), handler)
    }

    fn serve<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let served = Served::start(move |listener| async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, tls) = (handler.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, hyper::Error>(handler(req).await) }
                    });
                    let http = http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), svc).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        TestServer {
            addr: served.addr,
            _served: served,
        }
    }
}

/// The upstream: records every request and answers `upstream ok`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _server: TestServer,
}

impl Upstream {
    pub fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let server = TestServer::start(move |req: Request<Incoming>| {
            let seen = record.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body: body.to_vec(),
                });
                Response::builder()
                    .header("x-upstream", "yes")
                    .body(Full::new(Bytes::from_static(b"upstream ok")))
                    .unwrap()
            }
        });
        Upstream {
            addr: server.addr,
            seen,
            _server: server,
        }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Every loopback port this test run has handed out, to a gateway or to a test server.
static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Records `port` as handed out; false if it was before.
fn claim(port: u16) -> bool {
    let mut given = GIVEN.lock().unwrap();
    if given.contains(&port) {
        return false;
    }
    given.push(port);
    true
}

/// A port free now, never handed out before in this test run. The gateway binds its ports with
/// SO_REUSEPORT, so two gateways given the same port would both start and share its traffic:
/// ports released and picked again by the kernel must not reach two tests.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if claim(port) {
            return port;
        }
    }
}

/// A loopback listener for a test server, on a port never handed out before in this test run.
/// A port `free_port` gave a gateway is free until the gateway's process binds it; a test
/// server binding port 0 in that window could get it, and then the other test's requests and
/// its start-up check reach this server instead (seen in CI: one test's request answered by
/// another test's upstream). Ports already handed out are held while the kernel picks again.
pub fn bind_unclaimed() -> TcpListener {
    let mut held = Vec::new();
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("addr").port();
        if claim(port) {
            return listener;
        }
        held.push(listener);
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

pub const HS_SECRET: &str = "test-secret-for-hmac-keys-0123456789abcdef";

/// The issuers every test gateway knows; `{upstream}` is replaced by the upstream address.
pub fn standard_config(upstream: SocketAddr) -> String {
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

[upstreams.main]
addresses = ["{upstream}"]
connect_timeout_ms = 500
read_timeout_ms = 5000

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256", "HS384", "HS512"]
# One algorithm per key entry (RFC 8725 §3.1); the tests sign with each.
keys = [
  {{ secret_env = "CLAIMGATE_TEST_SECRET", kid = "hs1", alg = "HS256" }},
  {{ secret_env = "CLAIMGATE_TEST_SECRET", kid = "hs1", alg = "HS384" }},
  {{ secret_env = "CLAIMGATE_TEST_SECRET", kid = "hs1", alg = "HS512" }},
]

[issuers.rsa]
issuer = "https://rsa.test"
audiences = ["api", "other-api"]
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
keys = [
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "RS256" }},
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "RS384" }},
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "RS512" }},
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "PS256" }},
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "PS384" }},
  {{ pem_file = "{rsa}", kid = "rsa1", alg = "PS512" }},
]

[issuers.ec]
issuer = "https://ec.test"
audiences = ["api"]
algorithms = ["ES256", "ES384"]
keys = [{{ pem_file = "{ec256}", kid = "ec256" }}, {{ pem_file = "{ec384}", kid = "ec384" }}]

[issuers.ed]
issuer = "https://ed.test"
audiences = ["api"]
algorithms = ["EdDSA"]
keys = [{{ pem_file = "{ed}" }}]

[issuers.jwks]
issuer = "https://jwks.test"
audiences = ["api"]
algorithms = ["RS256"]
keys = [{{ jwks_file = "{jwks}" }}]
"#,
        rsa = fixture("rsa-public.pem").display(),
        ec256 = fixture("ec256-public.pem").display(),
        ec384 = fixture("ec384-public.pem").display(),
        ed = fixture("ed25519-public.pem").display(),
        jwks = fixture("jwks.json").display(),
    )
}

/// An upstream and a gateway with the standard issuers (plus `extra_config`) and `rules`.
pub fn start_standard(extra_config: &str, rules: &[(&str, &str)]) -> (Upstream, Gateway) {
    let up = Upstream::start();
    let config = format!("{}\n{extra_config}\n", standard_config(up.addr));
    let gw = Gateway::start(&config, rules);
    (up, gw)
}

/// A body sent with chunked transfer encoding, in pieces of `size` bytes.
pub fn chunked(bytes: &[u8], size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(size).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

pub const ALL_ISSUERS: &str = r#"issuers = ["hs", "rsa", "ec", "ed", "jwks"]"#;

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Holds the configuration and rules; removed when the guard drops.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `path` by a rename, as editors and configuration tools do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Writes the configuration and rules into a temporary directory.
pub fn write_setup(config: &str, rules: &[(&str, &str)]) -> (tempfile::TempDir, u16, u16) {
    write_setup_at(config, rules, free_port(), free_port())
}

/// [`write_setup`] on given ports: a successor replica listens where its predecessor did.
pub fn write_setup_at(
    config: &str,
    rules: &[(&str, &str)],
    proxy: u16,
    admin: u16,
) -> (tempfile::TempDir, u16, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config
        .replace("{proxy}", &proxy.to_string())
        .replace("{admin}", &admin.to_string());
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write config");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    for (name, text) in rules {
        std::fs::write(dir.path().join("rules").join(name), text).expect("write rules");
    }
    (dir, proxy, admin)
}

/// `claimgate check --config <config>`: its exit code and what it wrote on stderr.
pub fn check(config: &Path) -> (Option<i32>, String) {
    let out = binary()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `claimgate test --config <config>`: its exit code and its output (stdout, then stderr).
pub fn policy_tests(config: &Path) -> (Option<i32>, String) {
    let out = binary()
        .args(["test", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_claimgate"));
    c.env("CLAIMGATE_TEST_SECRET", HS_SECRET);
    c
}

/// The repository's own `gateway.toml`, pointed at the test's ports, upstream and the
/// repository's `rules/` and dev key.
pub fn repo_config(upstream: SocketAddr) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("gateway.toml")).expect("repo gateway.toml");
    text.replace("127.0.0.1:8080", "127.0.0.1:{proxy}")
        .replace("127.0.0.1:9901", "127.0.0.1:{admin}")
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace(
            "dir = \"rules\"",
            &format!("dir = \"{}\"", root.join("rules").display()),
        )
        .replace("dev/keys/", &format!("{}/dev/keys/", root.display()))
        .replace("dev/tls/", &format!("{}/dev/tls/", root.display()))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "dev/geo-demo.mmdb",
            &format!("{}/dev/geo-demo.mmdb", root.display()),
        )
}

/// The repository configuration with its `[sources]` pointed at `data` (a built-in echo
/// upstream serving the repository's dev/demo-data) instead of the demo's echo address.
pub fn repo_config_with_data(upstream: SocketAddr, data: SocketAddr) -> String {
    let text = repo_config(upstream);
    let from = format!("http://{upstream}/_data/");
    assert!(
        text.contains(&from),
        "no [sources] on the echo in gateway.toml"
    );
    text.replace(&from, &format!("http://{data}/_data/"))
}

/// The repository's demo data directory, for `--echo-data`.
pub fn demo_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/demo-data")
}

/// The repository configuration with each residency pool at its own upstream.
pub fn repo_config_with_pools(
    default: SocketAddr,
    eu: SocketAddr,
    ca: SocketAddr,
    us: SocketAddr,
) -> String {
    let mut text = repo_config(default);
    for (pool, addr) in [("eu-west-1", eu), ("ca-central-1", ca), ("us-east-1", us)] {
        let section = format!("[upstreams.{pool}]\naddresses = [\"{default}\"]");
        assert!(text.contains(&section), "no pool {pool} in gateway.toml");
        text = text.replace(
            &section,
            &format!("[upstreams.{pool}]\naddresses = [\"{addr}\"]"),
        );
    }
    text
}

impl Gateway {
    pub fn start(config: &str, rules: &[(&str, &str)]) -> Gateway {
        Self::start_with(config, rules, &[])
    }

    pub fn start_with(config: &str, rules: &[(&str, &str)], args: &[&str]) -> Gateway {
        let (dir, proxy, admin) = write_setup(config, rules);
        Self::start_in(dir, proxy, admin, args)
    }

    /// Starts the gateway on a directory prepared by [`write_setup`].
    pub fn start_in(dir: tempfile::TempDir, proxy: u16, admin: u16, args: &[&str]) -> Gateway {
        Self::launch(binary(), dir, proxy, admin, args)
    }

    /// [`Gateway::start_in`] with the binary run by `wrapper` (e.g. `setpriv` with its
    /// options), which is given the binary's path and then the gateway's arguments.
    pub fn start_in_wrapped(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
    ) -> Gateway {
        let mut c = Command::new(wrapper[0]);
        c.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_claimgate"))
            .env("CLAIMGATE_TEST_SECRET", HS_SECRET);
        Self::launch(c, dir, proxy, admin, &[])
    }

    fn launch(
        mut command: Command,
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
        args: &[&str],
    ) -> Gateway {
        let log = dir.path().join("gateway.log");
        let child = command
            .arg("run")
            .args(args)
            .arg("--config")
            .arg(dir.path().join("gateway.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn claimgate");
        let mut gw = Gateway {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            _dir: dir,
            log,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "claimgate exited with {status} during startup:\n{}",
                    self.logs()
                );
            }
            if std::net::TcpStream::connect(self.proxy).is_ok()
                && std::net::TcpStream::connect(self.admin).is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("claimgate did not start in time:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The directory holding `gateway.toml` and `rules/`.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "INT", "TERM") and waits up to `bound` for the process to end:
    /// its exit status and how long it took, or `None` if it did not end.
    pub fn stop(
        &mut self,
        signal: &str,
        bound: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        self.wait_exit(bound)
            .map(|(status, _)| (status, started.elapsed()))
    }

    /// Waits up to `bound` for the process to end on its own: its exit status and how long
    /// the wait took, or `None`.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The size of the log written so far, in bytes.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The admin `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(format!("http://{}/status", self.admin))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    /// Waits (5 s at most) until the set in force is generation `generation`, with no file
    /// still waited for.
    pub async fn wait_generation(&self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status().await;
            if s["rules"]["generation"] == generation {
                assert_eq!(s["rules"]["waiting_for"], serde_json::json!([]), "{s}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation} never came: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text from the admin listener.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until the decision log contains `needle` (logs are written asynchronously).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if logs.contains(needle) || Instant::now() > deadline {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The value of a metric sample with exactly these labels, in Prometheus text format.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let body = rest.strip_suffix('}')?;
        let mut got: Vec<(String, String)> = body
            .split("\",")
            .filter(|s| !s.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').to_string()))
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

pub fn client() -> reqwest::Client {
    // Building a client loads the system's trust roots, which is slow: build one. No idle
    // connections are kept, because each test runs its own runtime and a pooled connection
    // would outlive the runtime that opened it.
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        })
        .clone()
}

/// The status and body of an HTTP/2 answer, read to its end (flow-control capacity released as
/// it is read, so a long body is not stalled).
pub async fn h2_answer(resp: h2::client::ResponseFuture) -> Result<(u16, String), h2::Error> {
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}
