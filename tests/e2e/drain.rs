//! Stopping without dropping a request: SIGTERM fails readiness at once, the listener keeps
//! accepting for the grace period, requests in flight finish, the process exits 0 as soon as
//! nothing is busy (bounded by the shutdown timeout). Rolling restarts behind a balancer are in
//! `rolling.rs`.

use super::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const OPEN: &str = "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n";

/// An upstream that answers `/slow/<ms>` after that many milliseconds, anything else at once.
fn slow_upstream() -> TestServer {
    TestServer::start(|req: hyper::Request<hyper::body::Incoming>| async move {
        let wait = req
            .uri()
            .path()
            .strip_prefix("/slow/")
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Response::new(Full::new(Bytes::from_static(b"upstream ok")))
    })
}

pub(super) fn config(upstream: SocketAddr, grace: u64, timeout: u64) -> String {
    standard_config(upstream)
        .replace(
            "grace_period_seconds = 0",
            &format!("grace_period_seconds = {grace}"),
        )
        .replace(
            "graceful_shutdown_timeout_seconds = 1",
            &format!("graceful_shutdown_timeout_seconds = {timeout}"),
        )
}

/// One answer on a raw HTTP/1.1 connection.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    /// The head's header lines, lowercased.
    pub(super) head: String,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn closes(&self) -> bool {
        self.head.contains("connection: close")
    }
}

/// Sends `GET path` on `reader`'s connection and reads the answer.
fn exchange(reader: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<Answer> {
    reader
        .get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())?;
    read_answer(reader)
}

pub(super) fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(BufReader::new(s))
}

pub(super) fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    exchange(&mut connect(addr)?, path)
}

fn send_term(pid: u32) {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM {pid}");
}

#[test]
fn sigterm_fails_readiness_keeps_accepting_for_the_grace_period_and_lets_requests_finish() {
    let up = slow_upstream();
    let mut gw = Gateway::start(&config(up.addr, 2, 10), &[("open.toml", OPEN)]);
    let proxy = gw.proxy;
    let admin = gw.admin;

    // A client on a persistent connection, and one whose request is at the upstream when the
    // signal comes.
    let mut kept = connect(proxy).unwrap();
    let first = exchange(&mut kept, "/fast").unwrap();
    assert_eq!(first.status, 200);
    assert!(!first.closes(), "{}", first.head);
    let slow = std::thread::spawn(move || get(proxy, "/slow/3000"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(admin, "/readyz").unwrap().status, 200);

    let signalled = Instant::now();
    send_term(gw.pid());
    std::thread::sleep(Duration::from_millis(300));
    let ready = get(admin, "/readyz").unwrap();
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "draining: this replica is stopping\n")
    );
    assert_eq!(
        get(admin, "/healthz").unwrap().status,
        200,
        "liveness holds while draining"
    );
    let metrics = get(admin, "/metrics").unwrap().body;
    assert_eq!(metric_value(&metrics, "claimgate_draining", &[]), Some(1.0));
    let busy = metric_value(&metrics, "claimgate_connections_busy", &[]).unwrap();
    assert!(busy >= 1.0, "the slow request is in flight: {busy}");

    // Within the grace period: a new connection is served, and told to close; so is the
    // persistent one, whose next request then goes elsewhere.
    std::thread::sleep(Duration::from_millis(700));
    let fresh = get(proxy, "/fast").unwrap();
    assert_eq!((fresh.status, fresh.body.as_str()), (200, "upstream ok"));
    assert!(fresh.closes(), "{}", fresh.head);
    let again = exchange(&mut kept, "/fast").unwrap();
    assert_eq!(again.status, 200);
    assert!(again.closes(), "{}", again.head);
    let mut rest = Vec::new();
    assert_eq!(
        kept.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after that answer"
    );

    // After it: nothing new is accepted.
    let refused_by = signalled + Duration::from_millis(2600);
    while Instant::now() < refused_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        get(proxy, "/fast").is_err(),
        "the listener still accepts {:?} after SIGTERM",
        signalled.elapsed()
    );

    // The request in flight is answered in full, and the process ends with it.
    let answer = slow
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!((answer.status, answer.body.as_str()), (200, "upstream ok"));
    let (status, _) = gw
        .wait_exit(Duration::from_secs(5))
        .expect("the process exits once nothing is in flight");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(
        took < Duration::from_millis(4500),
        "exit {took:?} after SIGTERM: it should follow the last answer (at ~3 s), not the 12 s bound"
    );
    let logs = gw.logs();
    assert!(logs.contains("draining"), "{logs}");
    assert!(logs.contains("drained: no request in flight"), "{logs}");
    assert!(!logs.contains(" ERROR "), "{logs}");
}

/// An h2 client connection to the gateway (h2c, prior knowledge), driven on its own task.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

/// Sends `GET path` on an h2 connection: the status and the body.
async fn h2_get(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
) -> (u16, String) {
    let req = http::Request::builder()
        .uri(format!("http://a.test:{}{path}", addr.port()))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).expect("the stream opens");
    h2_answer(resp).await.expect("an answer")
}

/// HTTP/2 clients (gRPC channels, h2 load balancers) move at SIGTERM as HTTP/1 ones do: every
/// h2 connection is told GOAWAY when the drain begins, not when the listeners close at the end
/// of the grace period; the stream it carries is answered in full, and the connection then
/// closes. An h2 connection opened during the grace period is served until the listeners close
/// (GOAWAY at once could refuse a request its client had not yet sent), then told.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sends_goaway_to_h2_connections_at_the_start_of_the_grace_period() {
    const GRACE: Duration = Duration::from_secs(3);
    let up = slow_upstream();
    let mut gw = Gateway::start(
        &config(up.addr, GRACE.as_secs(), 10),
        &[("open.toml", OPEN)],
    );
    let proxy = gw.proxy;
    let (mut client, conn) = h2_connect(proxy).await;
    assert_eq!(
        h2_get(&mut client, proxy, "/fast").await,
        (200, "upstream ok".into())
    );
    let mut in_flight = client.clone();
    let slow = tokio::spawn(async move { h2_get(&mut in_flight, proxy, "/slow/1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    send_term(gw.pid());
    // The slow stream is answered (~0.8 s after the signal) and the connection then ends: the
    // GOAWAY came with the signal. Without it the connection would stay open until the
    // listeners close at the end of the grace period.
    let answer = tokio::time::timeout(Duration::from_secs(5), slow).await;
    assert_eq!(answer.unwrap().unwrap(), (200, "upstream ok".into()));
    let ended = tokio::time::timeout(GRACE, conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the connection ends cleanly after its last stream: {ended:?}"
    );
    let closed = signalled.elapsed();
    assert!(
        closed < GRACE - Duration::from_millis(600),
        "closed {closed:?} after SIGTERM"
    );
    assert!(
        client.ready().await.is_err(),
        "no new stream on a connection told GOAWAY"
    );

    // A connection opened in the grace period: served, kept open for more requests, and closed
    // when the listeners close at the end of the grace period.
    let (mut late, late_conn) = h2_connect(proxy).await;
    assert_eq!(
        h2_get(&mut late, proxy, "/fast").await,
        (200, "upstream ok".into())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h2_get(&mut late, proxy, "/fast").await,
        (200, "upstream ok".into())
    );
    let still_in_grace = signalled.elapsed();
    assert!(
        still_in_grace < GRACE - Duration::from_millis(300),
        "{still_in_grace:?}"
    );
    let ended = tokio::time::timeout(GRACE + Duration::from_secs(2), late_conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let closed = signalled.elapsed();
    assert!(
        closed >= GRACE - Duration::from_millis(100),
        "closed {closed:?} after SIGTERM"
    );

    let (code, logs) = tokio::task::spawn_blocking(move || {
        let exit = gw.wait_exit(Duration::from_secs(8));
        (exit.map(|(s, _)| s.code()), gw.logs())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(Some(0)), "{logs}");
    assert!(!logs.contains(" ERROR "), "{logs}");
}

/// A connection the gateway ends (here a `Connection: close` answer, as every HTTP/1 answer of
/// a drain says) is closed without a reset: what the client still sends after the answer (a
/// request it had pipelined, the rest of a body) is read until the client closes, so its
/// writes do not fail and nothing it has yet to read is destroyed. Bounded: a client that goes
/// quiet without closing is let go after about a second.
#[test]
fn a_connection_the_gateway_closes_still_reads_what_the_client_sends_for_a_bounded_time() {
    let up = slow_upstream();
    let gw = Gateway::start(&config(up.addr, 0, 1), &[("open.toml", OPEN)]);
    let mut conn = TcpStream::connect(gw.proxy).unwrap();
    conn.write_all(
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("upstream ok"), "{answer}");

    // The gateway's end of stream arrived; it still takes the client's bytes. Without the
    // lingering close the first write draws a reset and the next one fails.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        conn.write_all(b"x-more: 1\r\n")
            .expect("a write after the gateway's close is read, not reset");
    }

    // Silent past the quiet period: the gateway has closed for good.
    std::thread::sleep(claimgate::linger::QUIET + Duration::from_millis(500));
    let refused = (0..5).any(|_| {
        let failed = conn.write_all(b"x-more: 1\r\n").is_err();
        std::thread::sleep(Duration::from_millis(50));
        failed
    });
    assert!(refused, "the connection was held past its quiet period");
    assert!(!gw.logs().contains(" ERROR "), "{}", gw.logs());
}

#[test]
fn a_request_longer_than_the_shutdown_timeout_is_cut_off_and_the_exit_is_still_bounded() {
    let up = slow_upstream();
    let mut gw = Gateway::start(&config(up.addr, 0, 1), &[("open.toml", OPEN)]);
    let proxy = gw.proxy;
    let slow = std::thread::spawn(move || get(proxy, "/slow/20000"));
    std::thread::sleep(Duration::from_millis(200));
    let (status, took) = gw
        .stop("TERM", Duration::from_secs(6))
        .expect("the stop ends");
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    // The timeout (1 s) and Pingora's runtime shutdown (1 s): far from the 20 s request.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        slow.join().unwrap().is_err(),
        "the cut-off request has no answer"
    );
    assert!(gw.logs().contains("still busy"), "{}", gw.logs());
}

/// Reads one answer from a connection whose request was written already.
pub(super) fn read_answer(reader: &mut BufReader<TcpStream>) -> std::io::Result<Answer> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        let line = line.to_ascii_lowercase();
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v
                .trim()
                .parse()
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
