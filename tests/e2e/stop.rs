//! Stops that always end: the gateway started and stopped under load many times, with SIGINT
//! and SIGTERM and a grace period of 0. Every stop ends within the documented bound
//! (graceful_shutdown_timeout_seconds + 5 s) and the log of each run stays small, whatever
//! Pingora's accept loop does while it shuts down.

use super::harness::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RULES: &str = "[[route]]\nname = \"open\"\npath = \"/*\"\nauth = \"none\"\n";

/// Keep-alive clients sending requests until told to stop.
fn load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    for _ in 0..50 {
                        if stop.load(Ordering::Relaxed)
                            || s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").is_err()
                            || !matches!(s.read(&mut buf), Ok(n) if n > 0)
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect()
}

#[test]
fn fifty_stops_under_load_all_end_within_the_bound() {
    let up = Upstream::start();
    let config = standard_config(up.addr);
    let bound = Duration::from_secs(1) + Duration::from_secs(5);
    let mut slowest = Duration::ZERO;
    let mut largest_log = 0;
    for i in 0..50 {
        let mut gw = Gateway::start(&config, &[("open.toml", RULES)]);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(gw.proxy, stop.clone());
        std::thread::sleep(Duration::from_millis(30 + (i % 5) * 20));
        let signal = if i % 2 == 0 { "INT" } else { "TERM" };
        let ended = gw.stop(signal, bound + Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        let Some((status, took)) = ended else {
            panic!(
                "stop {i} (SIG{signal}) did not end within {bound:?}:\n{}",
                gw.logs()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        };
        assert!(took <= bound, "stop {i} (SIG{signal}) took {took:?}");
        assert!(
            status.code().is_some(),
            "stop {i}: killed by a signal: {status}"
        );
        slowest = slowest.max(took);
        largest_log = largest_log.max(gw.log_bytes());
        assert!(
            gw.log_bytes() < 64 * 1024,
            "stop {i}: the log grew to {} bytes",
            gw.log_bytes()
        );
        assert!(!gw.logs().contains("panicked"), "stop {i}: a panic");
    }
    eprintln!("50 stops: slowest {slowest:?}, largest log {largest_log} bytes");
}
