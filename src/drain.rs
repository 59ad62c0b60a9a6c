//! Stopping without dropping requests: what happens between SIGTERM and the exit.
//!
//! 1. SIGTERM: `/readyz` answers 503 at once, HTTP/1 responses carry `Connection: close` and
//!    every open HTTP/2 connection gets GOAWAY (its streams already sent are still served), so
//!    load balancers that probe readiness and clients on persistent connections, gRPC channels
//!    included, all move to other replicas. The listeners keep accepting for
//!    `grace_period_seconds`: whatever a load balancer still sends before it notices is served
//!    (an h2 connection opened then is served until the listeners close; see
//!    [`Drain::h2_watch`]).
//! 2. The grace period ends: the listeners close (Pingora's shutdown), idle keep-alive
//!    connections are closed, h2 connections opened during the grace period get GOAWAY.
//! 3. Requests in flight finish: the process exits 0 once no connection has been busy for
//!    [`QUIET`], or when `graceful_shutdown_timeout_seconds` has passed (what is still busy then
//!    is cut off).
//!
//! SIGINT skips all of it (an operator's Ctrl-C). The stop watchdog (server.rs) bounds the whole.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long no connection must be busy before the process exits. A connection accepted just
/// before the listeners closed is not counted until its TLS handshake is done and its first
/// byte is read; on any network a load balancer sits on, that is well under this.
pub const QUIET: Duration = Duration::from_millis(200);
/// How often the exit check looks at the busy count.
const POLL: Duration = Duration::from_millis(10);

/// The process's drain state, shared by the listeners, the proxy and the admin listener.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Connections that are accepted and not idle between two requests: a new connection until
    /// its first request is answered, an HTTP/1 connection from a request's first byte until
    /// its answer, an h2 connection or a tunnel for its whole life.
    busy: AtomicUsize,
    /// Turns true with `draining`: what HTTP/2 connections watch instead of Pingora's shutdown,
    /// which only turns true when the listeners close, so that they send GOAWAY at the start of
    /// the grace period rather than at its end.
    stopping: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// SIGTERM arrived: readiness fails and connections stop being kept alive from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stopping.send_replace(true);
    }

    /// The shutdown watch an HTTP/2 connection is served with. Pingora's h2 server sends GOAWAY
    /// when the watch *changes* to true. A connection open when the drain begins watches the
    /// drain: GOAWAY at SIGTERM. A connection accepted once the drain has begun watches
    /// Pingora's shutdown, as before: it is served until the listeners close, like an HTTP/1
    /// connection in the grace period. Telling it GOAWAY at once would refuse the request of a
    /// client that reads the GOAWAY before its first request leaves, and the grace period is
    /// there to serve what a balancer still sends.
    pub fn h2_watch(&self, shutdown: &watch::Receiver<bool>) -> watch::Receiver<bool> {
        // Subscribed before the check: a drain that begins after it is seen as a change.
        let drain = self.stopping.subscribe();
        if !*drain.borrow() && !*shutdown.borrow() {
            return drain;
        }
        let mut pingora = shutdown.clone();
        if *pingora.borrow() {
            // Already shutting down: told at once (a change it would otherwise never see).
            pingora.mark_changed();
        }
        pingora
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// One connection became busy; [`Drain::idle`] must follow exactly once.
    pub fn busy_one(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn idle(&self) {
        // Never below zero, whatever a caller does wrong: an exit that waits for nothing would
        // be worse than none.
        let _ = self
            .busy
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Waits until no connection has been busy for [`QUIET`] (true) or until `deadline` (false).
    pub fn wait_drained(&self, deadline: Instant) -> bool {
        let mut quiet_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.busy() == 0 {
                let since = *quiet_since.get_or_insert(now);
                if now.duration_since(since) >= QUIET {
                    return true;
                }
            } else {
                quiet_since = None;
            }
            if now >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The drain settings, from `[server]` (restart-only).
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    /// Listeners keep accepting this long after SIGTERM.
    pub grace: Duration,
    /// In-flight requests get this long after the listeners close.
    pub timeout: Duration,
}

/// Pingora's shutdown trigger, with the drain in front of it: Pingora closes its listeners the
/// moment its signal watch returns, so the grace period is spent here, before returning.
pub struct DrainSignal {
    pub drain: Arc<Drain>,
    pub settings: DrainSettings,
}

#[async_trait]
impl ShutdownSignalWatch for DrainSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot listen for signals: SIGTERM stops the process at once");
            return std::future::pending().await;
        };
        // SIGQUIT is Pingora's socket hand-over to a new process, which claimgate does not use
        // (a rolling restart replaces the process): it drains like SIGTERM.
        tokio::select! {
            _ = term.recv() => {},
            _ = quit.recv() => {},
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        let DrainSettings { grace, timeout } = self.settings;
        self.drain.begin();
        tracing::info!(
            grace_seconds = grace.as_secs(),
            timeout_seconds = timeout.as_secs(),
            "draining: /readyz answers 503; still accepting for the grace period"
        );
        tokio::select! {
            _ = tokio::time::sleep(grace) => {},
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!(
            busy = self.drain.busy(),
            "grace period over: the listeners close; waiting for requests in flight"
        );
        exit_when_drained(self.drain.clone(), timeout);
        ShutdownSignal::GracefulTerminate
    }
}

/// Pingora now waits the whole shutdown timeout before it stops its runtimes; this ends the
/// process as soon as nothing is busy. If the timeout passes first, Pingora's runtime shutdown
/// cuts off what is left and the process still exits 0.
fn exit_when_drained(drain: Arc<Drain>, timeout: Duration) {
    // A little before Pingora's own end of the wait, so what is cut off is still logged.
    let deadline = Instant::now() + timeout.saturating_sub(POLL * 3);
    let spawned = std::thread::Builder::new()
        .name("claimgate drain".into())
        .spawn(move || {
            if drain.wait_drained(deadline) {
                tracing::info!("drained: no request in flight; exiting");
                std::process::exit(0);
            }
            tracing::warn!(
                busy = drain.busy(),
                timeout_seconds = timeout.as_secs(),
                "connections still busy at the end of the shutdown timeout are closed"
            );
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no drain watcher: the process exits at the end of the shutdown timeout");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_never_goes_below_zero() {
        let d = Drain::default();
        d.idle();
        assert_eq!(d.busy(), 0);
        d.busy_one();
        d.busy_one();
        d.idle();
        assert_eq!(d.busy(), 1);
    }

    #[test]
    fn drained_only_after_a_quiet_period() {
        let d = Arc::new(Drain::default());
        d.busy_one();
        let started = Instant::now();
        let d2 = d.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            d2.idle();
        });
        assert!(d.wait_drained(Instant::now() + Duration::from_secs(5)));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) + QUIET, "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        t.join().unwrap();
    }

    #[test]
    fn a_busy_connection_holds_the_exit_until_the_deadline() {
        let d = Drain::default();
        d.busy_one();
        let started = Instant::now();
        assert!(!d.wait_drained(Instant::now() + Duration::from_millis(150)));
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn h2_connections_open_at_the_drain_are_told_then_later_ones_at_the_listeners_close() {
        let d = Drain::default();
        let (pingora_tx, pingora) = watch::channel(false);
        // Open before the drain: told when it begins.
        let early = d.h2_watch(&pingora);
        assert!(!early.has_changed().unwrap());
        d.begin();
        assert!(early.has_changed().unwrap());
        assert!(*early.borrow());
        // Accepted during the grace period: served until Pingora's shutdown (the listeners
        // closing), then told.
        let late = d.h2_watch(&pingora);
        assert!(!late.has_changed().unwrap());
        pingora_tx.send_replace(true);
        assert!(late.has_changed().unwrap());
        // Accepted once Pingora's shutdown came (or a fast shutdown without a drain): told at
        // once.
        let after = d.h2_watch(&pingora);
        assert!(after.has_changed().unwrap());
        let fast = Drain::default().h2_watch(&pingora);
        assert!(fast.has_changed().unwrap());
    }

    #[test]
    fn begin_marks_draining() {
        let d = Drain::default();
        assert!(!d.draining());
        d.begin();
        assert!(d.draining());
    }
}
