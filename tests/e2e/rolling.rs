//! Rolling restarts behind a real balancer (HAProxy with health checks on `/readyz`, no
//! retries): replicas are stopped with SIGTERM and replaced one after the other under load, and
//! not one request fails, for HTTP/1 clients behind a request balancer and for HTTP/2 clients
//! (gRPC's shape: few long connections, many streams) behind a connection balancer.

use super::drain::{config, connect, get, read_answer};
use super::harness::*;
use bytes::Bytes;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// HAProxy in front of the replicas: health checks on `/readyz` every 100 ms, one failure takes
/// a server out, two successes bring it back. No retries and no redispatch: a request a replica
/// drops reaches the client as an error, never hidden by a second try. `mode` is `http` (a
/// balancer that forwards requests) or `tcp` (one that forwards connections, as a Kubernetes
/// Service does).
fn haproxy_config(
    mode: &str,
    front: u16,
    socket: &std::path::Path,
    replicas: &[(u16, u16)],
) -> String {
    let mut cfg = format!(
        "global\n  maxconn 2000\n  stats socket {}\n\
         defaults\n  mode {mode}\n  timeout connect 2s\n  timeout client 20s\n  timeout server 20s\n  retries 0\n\
         frontend fe\n  bind 127.0.0.1:{front}\n  default_backend gateways\n\
         backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
         \x20 default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 2\n",
        socket.display()
    );
    for (i, (proxy, admin)) in replicas.iter().enumerate() {
        cfg.push_str(&format!(
            "  server r{i} 127.0.0.1:{proxy} check port {admin}\n"
        ));
    }
    cfg
}

/// The servers HAProxy sees as UP, from its stats socket.
fn haproxy_up(socket: &std::path::Path) -> Vec<String> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return Vec::new();
    };
    let _ = s.write_all(b"show stat\n");
    let mut csv = String::new();
    let _ = s.read_to_string(&mut csv);
    csv.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == "gateways" && f[1].starts_with('r') && f[17] == "UP")
                .then(|| f[1].to_string())
        })
        .collect()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts of the load: requests sent, answered 200, failed (an error status or no answer).
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connections the clients opened.
    connects: AtomicU64,
    /// The longest a client waited between two answers, in µs (the HTTP/2 clients note it).
    longest_wait_us: AtomicU64,
}

/// Clients on persistent connections through the balancer, each request a token-checked one.
fn load(
    front: SocketAddr,
    token: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..4)
        .map(|_| {
            let (tally, stop, token) = (tally.clone(), stop.clone(), token.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match connect(front) {
                            Ok(c) => {
                                tally.connects.fetch_add(1, Ordering::Relaxed);
                                conn.insert(c)
                            }
                            Err(e) => {
                                failures.push(format!("connect: {e}"));
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                tally.sent.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        },
                    };
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let request = format!(
                        "GET /orders HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
                    );
                    let answer = c
                        .get_mut()
                        .write_all(request.as_bytes())
                        .and_then(|()| read_answer(c));
                    match answer {
                        Ok(a) if a.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if a.closes() {
                                conn = None;
                            }
                        }
                        Ok(a) => {
                            failures.push(format!("status {}: {}", a.status, a.body));
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                        Err(e) => {
                            failures.push(format!("no answer: {e}"));
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
                failures
            })
        })
        .collect()
}

const RULES: [(&str, &str); 1] = [(
    "orders.toml",
    "[[route]]\nname = \"orders\"\npath = \"/orders\"\nissuers = [\"hs\"]\n\
     [[route.rule]]\nname = \"reader\"\nallow_if = \"claims.scope == 'orders:read'\"\n",
)];

fn orders_token() -> String {
    super::tokens::token(
        jsonwebtoken::Algorithm::HS256,
        serde_json::json!({"scope": "orders:read"}),
    )
}

/// Two replicas (grace period 1 s) behind HAProxy, in front of one upstream.
struct Fleet {
    replicas: Vec<Gateway>,
    ports: Vec<(u16, u16)>,
    config: String,
    socket: PathBuf,
    front: SocketAddr,
    _haproxy: Haproxy,
    _dir: tempfile::TempDir,
    _upstream: Upstream,
}

impl Fleet {
    fn start(mode: &str) -> Fleet {
        let upstream = Upstream::start();
        let config = config(upstream.addr, 1, 10);
        let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
        let replicas = ports.iter().map(|p| replica(&config, *p)).collect();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("haproxy.sock");
        let front = free_port();
        std::fs::write(
            dir.path().join("haproxy.cfg"),
            haproxy_config(mode, front, &socket, &ports),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (.ci/run installs it)");
        let haproxy = Haproxy(child);
        wait_for(
            "HAProxy sees both replicas UP",
            Duration::from_secs(10),
            || haproxy_up(&socket).len() == 2,
        );
        Fleet {
            replicas,
            ports,
            config,
            socket,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            _haproxy: haproxy,
            _dir: dir,
            _upstream: upstream,
        }
    }

    /// Stops each replica with SIGTERM and starts its successor, one after the other, each
    /// time until HAProxy sees the successor UP; how long it took.
    fn roll(&mut self) -> Duration {
        let started = Instant::now();
        for i in 0..self.replicas.len() {
            let (status, took) = self.replicas[i]
                .stop("TERM", Duration::from_secs(15))
                .expect("the replica stops");
            assert_eq!(status.code(), Some(0), "{}", self.replicas[i].logs());
            assert!(
                took >= Duration::from_secs(1),
                "the grace period was kept: {took:?}"
            );
            self.replicas[i] = replica(&self.config, self.ports[i]);
            let name = format!("r{i}");
            wait_for(
                "HAProxy sees the successor UP",
                Duration::from_secs(10),
                || haproxy_up(&self.socket).contains(&name),
            );
        }
        started.elapsed()
    }

    /// The requests replica `i` (a successor, after a roll) allowed on the orders route.
    fn served(&self, i: usize) -> f64 {
        let metrics = get(self.replicas[i].admin, "/metrics").unwrap().body;
        metric_value(
            &metrics,
            "claimgate_requests_total",
            &[("route", "orders"), ("decision", "allow")],
        )
        .unwrap_or(0.0)
    }
}

fn replica(config: &str, (proxy, admin): (u16, u16)) -> Gateway {
    let (dir, proxy, admin) = write_setup_at(config, &RULES, proxy, admin);
    Gateway::start_in(dir, proxy, admin, &[])
}

/// The counts of a load, checked whole: every request sent was answered 200.
fn assert_nothing_lost(what: &str, tally: &Tally, failures: &[String], restart: Duration) {
    let (sent, ok, failed) = (
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "rolling restart of 2 replicas in {restart:?}, {what}: sent {sent}, answered 200 {ok}, \
         failed {failed}, connections opened {}",
        tally.connects.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{failed} failed: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert_eq!((sent, ok, failed), (sent, sent, 0));
    assert!(
        sent > 500,
        "the load was too light to show anything: {sent}"
    );
}

#[test]
fn a_rolling_restart_of_two_replicas_behind_haproxy_loses_no_request() {
    let mut fleet = Fleet::start("http");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(fleet.front, orders_token(), tally.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let restart = fleet.roll();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_nothing_lost(
        "HTTP/1.1 behind HAProxy (http mode)",
        &tally,
        &failures,
        restart,
    );
    // A request balancer spreads requests: both successors served part of the load.
    let served = (fleet.served(0), fleet.served(1));
    assert!(served.0 > 0.0 && served.1 > 0.0, "{served:?}");
}

/// An HTTP/2 connection through the balancer: the client's handle, its connection driven on a
/// task of its own.
async fn h2_open(front: SocketAddr) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(front)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// An HTTP/2 client as a gRPC channel runs: one connection, requests on it one after another;
/// once the connection is told GOAWAY (it takes no new stream) or ends, a new one through the
/// balancer. A request counts as sent once its stream is; anything but a whole 200 answer to
/// it is a failure (no retry of any kind).
async fn h2_client(
    front: SocketAddr,
    token: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut conn: Option<h2::client::SendRequest<Bytes>> = None;
    let mut last_ok = Instant::now();
    let mut worst = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let client = match conn.take() {
            Some(c) => c,
            None => match h2_open(front).await {
                Ok(c) => {
                    tally.connects.fetch_add(1, Ordering::Relaxed);
                    c
                }
                Err(e) => {
                    failures.push(e);
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(mut client) = client.ready().await else {
            continue;
        };
        let request = http::Request::builder()
            .uri("http://gw/orders")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let Ok((resp, _)) = client.send_request(request, true) else {
            continue;
        };
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match h2_answer(resp).await {
            Ok((200, _)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                worst = worst.max(last_ok.elapsed());
                last_ok = Instant::now();
                conn = Some(client);
            }
            Ok((status, body)) => {
                failures.push(format!("status {status}: {body}"));
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failures.push(format!("no answer: {e}"));
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
        .longest_wait_us
        .fetch_max(worst.as_micros() as u64, Ordering::Relaxed);
    failures
}

/// gRPC's shape behind a Kubernetes Service: HTTP/2 clients on long connections, balanced by
/// connection (HAProxy in TCP mode), so a replica's failing readiness moves no existing
/// connection: the GOAWAY each replica sends at SIGTERM does, and each client reconnects
/// through the balancer while its streams in flight are answered. Not one stream fails, and
/// every client opened new connections (at least one per replica it was on).
#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_behind_a_connection_balancer_lose_nothing_in_a_rolling_restart() {
    const CLIENTS: u64 = 4;
    let fleet = tokio::task::spawn_blocking(|| Fleet::start("tcp"))
        .await
        .unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let token = orders_token();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(h2_client(
                fleet.front,
                token.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fleet, restart) = tokio::task::spawn_blocking(move || {
        let mut fleet = fleet;
        let took = fleet.roll();
        (fleet, took)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert_nothing_lost(
        "HTTP/2 behind HAProxy (tcp mode)",
        &tally,
        &failures,
        restart,
    );
    // Every client was on a stopped replica at least once (the second stop finds them all on
    // the second replica), so each reconnected at least once after its first connection.
    let connects = tally.connects.load(Ordering::Relaxed);
    assert!(connects >= 2 * CLIENTS, "connections opened: {connects}");
    // Moving is quick: no client waits out a grace period on a connection that will end (a
    // few ms here).
    let waited = Duration::from_micros(tally.longest_wait_us.load(Ordering::Relaxed));
    eprintln!("longest wait of an HTTP/2 client between two answers: {waited:?}");
    assert!(
        waited < Duration::from_secs(1),
        "a client waited {waited:?}"
    );
    // Balanced by connection, the clients the second stop moved went to the first successor,
    // the one replica ready then, and stay there (the second successor gets new connections
    // only).
    let served = tokio::task::spawn_blocking(move || (fleet.served(0), fleet.served(1)))
        .await
        .unwrap();
    assert!(served.0 > 0.0, "the clients did not move: {served:?}");
}
