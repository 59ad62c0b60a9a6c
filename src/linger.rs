//! Lingering close: when the gateway ends a connection the client has not ended, it keeps
//! reading (and discarding) what the client still sends until the client closes its side, for
//! a bounded time.
//!
//! Why: a socket closed with unread bytes in its receive queue, or one that receives bytes after
//! it was closed, answers with a TCP reset, and a reset can destroy what the client has not yet
//! read of the gateway's last answer, and fails the client's next write. A client legitimately
//! still sends after the gateway decided to close: an HTTP/2 client answers the GOAWAY of a
//! drain (its PING acknowledgement, its own GOAWAY, its TLS `close_notify`), an HTTP/1 client
//! may have pipelined the next request or still be sending the body of a request refused
//! early. nginx does the same (`lingering_close`, for HTTP/2 since 1.19.1).
//!
//! Bounded three ways, so a client cannot hold the socket: it ends at the client's end of
//! stream (or any error), after [`QUIET`] without a byte, after [`TOTAL`] in all, and after
//! [`MAX_DISCARDED`] bytes (the socket then closes with a reset, as it did before).

use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// The longest wait for the client's next bytes (or its end of stream).
pub const QUIET: Duration = Duration::from_secs(1);
/// The longest a closed connection lingers in all.
pub const TOTAL: Duration = Duration::from_secs(5);
/// The most the gateway reads and discards before it gives up on a clean close.
pub const MAX_DISCARDED: usize = 4 << 20;

/// Hands `stream` to a task that closes it cleanly: the gateway's end of stream first (FIN;
/// on TLS, `close_notify`), then reads until the client's. Without a runtime (a unit test
/// dropping a stream) the stream is just dropped.
pub fn close(stream: Stream) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(linger(stream));
    }
}

async fn linger(mut stream: Stream) {
    // tokio's shutdown, not Pingora's `Shutdown`, which logs a peer that already left as a
    // warning: a client gone first is the common, uninteresting case.
    let _ = tokio::time::timeout(QUIET, tokio::io::AsyncWriteExt::shutdown(&mut stream)).await;
    let ends = Instant::now() + TOTAL;
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0usize;
    while discarded <= MAX_DISCARDED {
        let wait = (Instant::now() + QUIET).min(ends);
        match tokio::time::timeout_at(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            // The client's end of stream, an error, or silence: close now.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn pair() -> (Stream, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        (Box::new(ours), theirs)
    }

    #[tokio::test(start_paused = true)]
    async fn reads_what_the_client_still_sends_until_its_end_of_stream() {
        let (ours, mut theirs) = pair();
        let task = tokio::spawn(linger(ours));
        // The gateway's end of stream reaches the client first.
        let mut seen = Vec::new();
        theirs.read_to_end(&mut seen).await.unwrap();
        assert!(seen.is_empty());
        // What the client sends after it is read, not refused.
        theirs.write_all(b"GOAWAY").await.unwrap();
        tokio::time::sleep(QUIET / 2).await;
        theirs.write_all(b"close_notify").await.unwrap();
        assert!(!task.is_finished());
        theirs.shutdown().await.unwrap();
        drop(theirs);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_let_go_after_the_quiet_period() {
        let (ours, _theirs) = pair();
        let started = Instant::now();
        linger(ours).await;
        let took = started.elapsed();
        assert!(took >= QUIET && took < QUIET * 2, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_let_go_at_the_total_bound() {
        let (ours, mut theirs) = pair();
        let started = Instant::now();
        let task = tokio::spawn(linger(ours));
        let sender = tokio::spawn(async move {
            while theirs.write_all(b"x").await.is_ok() {
                tokio::time::sleep(QUIET / 4).await;
            }
        });
        task.await.unwrap();
        let took = started.elapsed();
        assert!(took >= TOTAL && took < TOTAL + QUIET, "{took:?}");
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_floods_is_let_go_after_the_byte_bound() {
        let (ours, mut theirs) = pair();
        let task = tokio::spawn(linger(ours));
        let sender = tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            let mut sent = 0usize;
            while theirs.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        task.await.unwrap();
        let sent = sender.await.unwrap();
        assert!(
            sent > MAX_DISCARDED && sent <= MAX_DISCARDED + 256 * 1024,
            "{sent}"
        );
    }
}
