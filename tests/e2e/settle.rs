//! Reload under the edits ops teams really make, with traffic flowing: truncating in-place
//! writes, delete-then-recreate, and a file written byte by byte. No request may fail, and no
//! version that was never complete on disk may ever be in force: each version's last line
//! forwards `x-complete`, so a prefix of it that parses shows as a request without it.
//! Also: an idle gateway's own reads, or anyone's, start no reload check.

use super::harness::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BASE: &str = r#"
[[route]]
name = "base"
path = "/base"
auth = "none"
"#;

/// Version `k` of the edited file; padded so writes take several system calls.
fn version(k: u64) -> String {
    padded(k, 40)
}

fn padded(k: u64, lines: usize) -> String {
    let pad: String = (0..lines)
        .map(|i| format!("# padding line {i} of version {k}, to make the file longer\n"))
        .collect();
    format!(
        "{pad}[[route]]\nname = \"flip\"\npath = \"/flip\"\nauth = \"none\"\n  [route.forward]\n  \"x-version\" = \"'v{k}'\"\n  \"x-complete\" = \"'yes'\"\n"
    )
}

fn start() -> (Upstream, Gateway, PathBuf) {
    // The quiet period has a margin over the writers' pauses inside an edit, for a CI machine
    // whose two cores run several of these tests at once.
    start_with(400)
}

fn start_with(debounce_ms: u64) -> (Upstream, Gateway, PathBuf) {
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = {debounce_ms}\npoll_seconds = 1\n",
        standard_config(up.addr)
    );
    let gw = Gateway::start(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    let file = gw.dir().join("rules/10-flip.toml");
    (up, gw, file)
}

/// Edits `file` with `edit(k)` for `secs` seconds while four clients request `/flip`; returns
/// (requests, failures, versions applied).
async fn under_load(
    up: &Upstream,
    gw: &Gateway,
    secs: u64,
    edit: impl Fn(u64) + Send + 'static,
) -> (u64, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, done, url) = (stop.clone(), done.clone(), gw.url("/flip"));
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failures.push(format!("connection error: {e}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let writer_stop = stop.clone();
    let writer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut k = 1;
        while Instant::now() < deadline {
            edit(k);
            k += 1;
        }
        writer_stop.store(true, Ordering::Relaxed);
        k
    });
    let versions = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    // Every request the upstream saw was decided under a complete version.
    for s in up.seen.lock().unwrap().iter() {
        if s.uri == "/flip" {
            let complete = s.headers.get("x-complete").is_some_and(|v| v == "yes");
            let v = s
                .headers
                .get("x-version")
                .map(|v| v.to_str().unwrap_or("").to_string());
            if !complete {
                failures.push(format!("an incomplete version was in force: {v:?}"));
            }
        }
    }
    let _ = versions;
    (done.load(Ordering::Relaxed), failures)
}

fn write_slowly(path: &Path, text: &str, chunk: usize, pause: Duration) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap();
    for part in text.as_bytes().chunks(chunk) {
        f.write_all(part).unwrap();
        f.flush().unwrap();
        std::thread::sleep(pause);
    }
}

async fn assert_no_failures(
    up: &Upstream,
    gw: &Gateway,
    file: PathBuf,
    min_reloads: u64,
    edit: fn(&Path, u64),
) {
    let (requests, failures) = under_load(up, gw, 10, move |k| edit(&file, k)).await;
    assert!(requests > 200, "only {requests} requests");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gw.logs()
            .lines()
            .filter(|l| l.contains("claimgate::reload"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let s = gw.status().await;
    let generation = s["rules"]["generation"].as_u64().unwrap();
    assert!(
        generation > min_reloads,
        "only {} reloads: {s}",
        generation - 1
    );
}

#[tokio::test]
async fn truncating_in_place_writes_never_serve_a_partial_file() {
    let (up, gw, file) = start();
    assert_no_failures(&up, &gw, file, 2, |path, k| {
        // Truncate, pause, then write in pieces: the file is empty, then partial, for a while.
        write_slowly(path, &version(k), 512, Duration::from_millis(3));
        // Sometimes the next edit follows at once, sometimes after the quiet period.
        std::thread::sleep(Duration::from_millis((k * 37) % 900));
    })
    .await;
}

#[tokio::test]
async fn delete_then_recreate_is_one_edit() {
    let (up, gw, file) = start();
    assert_no_failures(&up, &gw, file, 2, |path, k| {
        std::fs::remove_file(path).unwrap();
        // Gaps from 1 to 100 ms between the delete and the new file.
        std::thread::sleep(Duration::from_millis(1 + (k * 13) % 100));
        std::fs::write(path, version(k)).unwrap();
        std::thread::sleep(Duration::from_millis((k * 53) % 900));
    })
    .await;
}

#[tokio::test]
async fn a_file_written_byte_by_byte_is_loaded_only_when_complete() {
    let (up, gw, file) = start();
    assert_no_failures(&up, &gw, file, 1, |path, k| {
        write_slowly(path, &padded(k, 8), 1, Duration::from_micros(200));
        std::thread::sleep(Duration::from_millis((k * 71) % 900));
    })
    .await;
}

#[tokio::test]
async fn reading_the_watched_files_starts_no_reload_check() {
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = 50\npoll_seconds = 0\n",
        standard_config(up.addr)
    );
    let gw = Gateway::start(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    // Let start-up events pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checks = |m: &str| -> f64 {
        ["watch", "poll", "sighup"]
            .iter()
            .map(|t| {
                metric_value(m, "claimgate_reload_checks_total", &[("trigger", t)]).unwrap_or(0.0)
            })
            .sum()
    };
    let before = checks(&gw.metrics().await);
    // Someone reads every watched file, several times.
    let mut files = vec![gw.dir().join("gateway.toml")];
    for e in std::fs::read_dir(gw.dir().join("rules")).unwrap() {
        files.push(e.unwrap().path());
    }
    for f in [
        "rsa-public.pem",
        "ec256-public.pem",
        "ec384-public.pem",
        "ed25519-public.pem",
        "jwks.json",
    ] {
        files.push(fixture(f));
    }
    for _ in 0..3 {
        for f in &files {
            let _ = std::fs::read(f).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = checks(&gw.metrics().await);
    assert_eq!(after, before, "reads started reload checks");
    assert!(metric_value(
        &gw.metrics().await,
        "claimgate_reload_checks_total",
        &[("trigger", "watch")]
    )
    .is_some());
    // A real edit is still seen.
    std::fs::write(gw.dir().join("rules/10-flip.toml"), version(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.status().await["rules"]["generation"] != 2 {
        assert!(Instant::now() < deadline, "the edit was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checks(&gw.metrics().await), after + 1.0);
}

#[tokio::test]
async fn status_tells_when_the_disk_is_the_running_set_again() {
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = 50\npoll_seconds = 1\n",
        standard_config(up.addr)
    );
    let gw = Gateway::start(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    let file = gw.dir().join("rules/10-flip.toml");
    let wait_for = |want: &'static str| {
        let gw = &gw;
        async move {
            let deadline = Instant::now() + Duration::from_secs(8);
            loop {
                let s = gw.status().await;
                if s["rules"]["last_result"] == want {
                    return s;
                }
                assert!(Instant::now() < deadline, "never {want}: {s}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    std::fs::write(&file, "[[route]\nbroken").unwrap();
    let s = wait_for("error").await;
    assert_eq!(s["rules"]["disk_matches_running"], false);
    assert!(s["rules"]["last_error"]
        .as_str()
        .unwrap()
        .contains("10-flip.toml:1:"));
    // The last good content put back: nothing to load, and the error no longer stands.
    std::fs::write(&file, version(0)).unwrap();
    let s = wait_for("unchanged").await;
    assert_eq!(s["rules"]["last_error"], serde_json::Value::Null, "{s}");
    assert!(s["rules"]["last_error_at"].as_u64().is_some(), "{s}");
    assert_eq!(s["rules"]["disk_matches_running"], true);
    assert_eq!(s["rules"]["generation"], 1);
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            "claimgate_rules_reload_total",
            &[("result", "unchanged")]
        )
        .unwrap()
            >= 1.0
    );
}

/// A writer that starts the next version just after the quiet period ended, writes a prefix
/// that parses and stalls: the gateway may read the file in that stall, and nothing in the read
/// itself tells a stalled writer from a finished one. The kernel's count of writers can, and the
/// writer's own events, which on a busy machine may arrive after the read: a read goes in force
/// only if no file is open for writing and the watcher has reported everything queued before
/// that, with no event among it.
#[tokio::test]
async fn a_writer_stalling_just_after_the_quiet_period_is_not_loaded() {
    const DEBOUNCE_MS: u64 = 100;
    let (up, gw, file) = start_with(DEBOUNCE_MS);
    assert_no_failures(&up, &gw, file, 2, |path, k| {
        std::fs::write(path, version(k)).unwrap();
        // The gateway reads about `DEBOUNCE_MS` after the close: start the next version in the
        // few milliseconds around that read (a different offset each time).
        std::thread::sleep(Duration::from_micros(DEBOUNCE_MS * 1000 + (k * 317) % 4000));
        let text = version(k + 1);
        let cut = text.find("[[route]]").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        // Only comments so far: a valid file without the route.
        f.write_all(&text.as_bytes()[..cut]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        f.write_all(&text.as_bytes()[cut..]).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(3 * DEBOUNCE_MS + (k * 37) % 300));
    })
    .await;
}

/// A file held open mid-write is never loaded, however long its writer pauses (here 40 quiet
/// periods); `/status` says what the gateway waits for, and the file is loaded once closed.
#[tokio::test]
async fn a_file_held_open_mid_write_waits_for_its_close() {
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = 50\npoll_seconds = 1\n",
        standard_config(up.addr)
    );
    let gw = Gateway::start(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    let file = gw.dir().join("rules/10-flip.toml");
    // At once: an edit before the watcher is up has no event to show, but the kernel still
    // knows the file is open.
    let rest = hold_half_written(&up, &gw, &file, 1, "v0", 1).await;
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "claimgate_rules_reload_total", &[("result", "waiting")]).unwrap_or(0.0)
            >= 1.0
    );
    rest.finish();
    gw.wait_generation(2).await;
    assert_eq!(served_version(&up, &gw).await, "v1");
    assert!(gw.logs().contains("open for writing"), "{}", gw.logs());
}

/// A gateway started while a file of the set is being written waits for its close before the
/// first load, then starts on the complete file.
#[tokio::test]
async fn the_first_load_waits_for_a_file_being_written() {
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = 50\n",
        standard_config(up.addr)
    );
    let (dir, proxy, admin) = write_setup(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    let file = dir.path().join("rules/10-flip.toml");
    let text = version(1);
    let cut = text.find("[[route]]").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    f.write_all(&text.as_bytes()[..cut]).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        f.write_all(&text.as_bytes()[cut..]).unwrap();
    });
    let started = Instant::now();
    let gw = tokio::task::spawn_blocking(move || Gateway::start_in(dir, proxy, admin, &[]))
        .await
        .unwrap();
    writer.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "started before the file was closed"
    );
    let r = reqwest::get(gw.url("/flip")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-version"], "v1");
    assert!(
        gw.logs().contains("the first load waits for its close"),
        "{}",
        gw.logs()
    );
}

/// Where the kernel will not say who has a file open for writing (no file lease: a gateway
/// without CAP_LEASE reading files another user owns, as a non-root pod reads a root-owned
/// mount), a file held open mid-write is still never loaded: the watcher's events, the writer's
/// open and then its close, stand in for the kernel, and the start says so. Root is needed to
/// give the files to another user and to drop CAP_LEASE (`setpriv`); CI runs as root.
#[tokio::test]
async fn without_file_leases_a_file_held_open_mid_write_still_waits_for_its_close() {
    if effective_uid() != 0 {
        eprintln!("skipped: needs root to give the files to another user and drop CAP_LEASE");
        return;
    }
    let up = Upstream::start();
    let config = format!(
        "{}\n[reload]\nwatch = true\ndebounce_ms = 50\npoll_seconds = 1\n",
        standard_config(up.addr)
    );
    let (dir, proxy, admin) = write_setup(
        &config,
        &[("00-base.toml", BASE), ("10-flip.toml", &version(0))],
    );
    let file = dir.path().join("rules/10-flip.toml");
    const NOBODY: u32 = 65534;
    for f in [
        dir.path().join("gateway.toml"),
        dir.path().join("rules/00-base.toml"),
        file.clone(),
    ] {
        std::os::unix::fs::chown(&f, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let gw = tokio::task::spawn_blocking(move || {
        Gateway::start_in_wrapped(
            &[
                "setpriv",
                "--bounding-set",
                "-lease",
                "--inh-caps",
                "-lease",
            ],
            dir,
            proxy,
            admin,
        )
    })
    .await
    .unwrap();
    let logs = gw.logs();
    assert!(
        logs.contains("will not say whether these files are open for writing")
            && logs.contains("10-flip.toml"),
        "{logs}"
    );

    // A complete edit first: it shows the watcher is up (before it, an edit has no event).
    write_atomically_keeping_owner(&file, &version(1), NOBODY);
    gw.wait_generation(2).await;
    assert_eq!(served_version(&up, &gw).await, "v1");

    // Held open mid-write for 40 quiet periods: long enough that the settle rule asks the
    // kernel, which does not answer here, so the events decide.
    hold_half_written(&up, &gw, &file, 2, "v1", 2)
        .await
        .finish();
    gw.wait_generation(3).await;
    assert_eq!(served_version(&up, &gw).await, "v2");
    assert!(!gw.logs().contains(" ERROR "), "{}", gw.logs());
}

/// A writer part-way through version `k` of `file`: the rest of the text and the open file.
struct HalfWritten {
    file: std::fs::File,
    rest: Vec<u8>,
}

impl HalfWritten {
    /// Writes the rest and closes the file.
    fn finish(mut self) {
        self.file.write_all(&self.rest).unwrap();
    }
}

/// Truncates `file` and writes version `k` up to its route (comments only: a valid file without
/// the route), then holds it open for 2 s, 40 quiet periods of the tests' 50 ms: all along,
/// `/flip` is still served `serving` from `generation`, and `/status` comes to say it waits for
/// the file.
async fn hold_half_written(
    up: &Upstream,
    gw: &Gateway,
    file: &Path,
    k: u64,
    serving: &str,
    generation: u64,
) -> HalfWritten {
    let text = version(k);
    let cut = text.find("[[route]]").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .unwrap();
    f.write_all(&text.as_bytes()[..cut]).unwrap();
    let held = Instant::now();
    let mut saw_waiting = false;
    while held.elapsed() < Duration::from_millis(2000) {
        assert_eq!(
            served_version(up, gw).await,
            serving,
            "the partial file went live"
        );
        let s = gw.status().await;
        assert_eq!(s["rules"]["generation"], generation, "{s}");
        if s["rules"]["last_result"] == "waiting" {
            assert!(
                s["rules"]["waiting_for"]
                    .to_string()
                    .contains("10-flip.toml"),
                "{s}"
            );
            saw_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_waiting, "status never said it waits for the file");
    HalfWritten {
        file: f,
        rest: text.as_bytes()[cut..].to_vec(),
    }
}

/// The effective user id, from /proc (no unsafe code for `geteuid`).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Replaces `path` by a rename, the new file owned by `owner` like the one it replaces.
fn write_atomically_keeping_owner(path: &Path, text: &str, owner: u32) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, text).unwrap();
    std::os::unix::fs::chown(&tmp, Some(owner), Some(owner)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The version `/flip` is served with; every answer must carry the file's last line.
async fn served_version(up: &Upstream, gw: &Gateway) -> String {
    let r = reqwest::get(gw.url("/flip")).await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-complete"], "yes",
        "a partial version is in force"
    );
    seen.headers["x-version"].to_str().unwrap().to_string()
}
