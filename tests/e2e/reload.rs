//! Hot reload through the real binary: every way files change on disk, bad edits, SIGHUP, and
//! reloads under load.

use super::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const SET_A: &str = r#"
[[route]]
name = "flip"
path = "/flip"
auth = "none"
  [route.forward]
  "x-set" = "'A'"
"#;

const SET_B: &str = r#"
[[route]]
name = "flip"
path = "/flip"
auth = "none"
  [[route.rule]]
  name = "set-b"
  deny_if = "true"
  message = "B"
"#;

fn config(upstream: std::net::SocketAddr, reload: &str) -> String {
    format!("{}\n[reload]\n{reload}\n", standard_config(upstream))
}

/// "A" or "B" by the gateway's answer; anything else is a failure.
async fn which(gw: &Gateway) -> Result<char, String> {
    let r = client()
        .get(gw.url("/flip"))
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    match r.status().as_u16() {
        200 => Ok('A'),
        403 => {
            let b: Value = r.json().await.map_err(|e| e.to_string())?;
            if b["message"] == "B" {
                Ok('B')
            } else {
                Err(format!("unexpected 403 body {b}"))
            }
        }
        s => Err(format!(
            "unexpected status {s}: {}",
            r.text().await.unwrap_or_default()
        )),
    }
}

/// Waits until the gateway answers with `set`; returns how long that took.
async fn until(gw: &Gateway, set: char, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        if which(gw).await == Ok(set) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: set {set} never took effect"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn edits_take_effect_however_the_file_changes() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "poll_seconds = 0\ndebounce_ms = 50"),
        &[("flip.toml", SET_A)],
    );
    let file = gw.dir().join("rules/flip.toml");
    assert_eq!(which(&gw).await, Ok('A'));
    assert_eq!(up.last().headers["x-set"], "A");

    std::fs::write(&file, SET_B).unwrap();
    let t_edit = until(&gw, 'B', "edit in place").await;

    write_atomically(&file, SET_A);
    let t_rename = until(&gw, 'A', "atomic rename").await;

    // Deleting the only file would leave no route: refused, the old set stays.
    std::fs::remove_file(&file).unwrap();
    let start = Instant::now();
    loop {
        let s = gw.status().await;
        if s["rules"]["last_result"] == "refused" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "deletion not refused: {s}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(which(&gw).await, Ok('A'));
    std::fs::write(&file, SET_B).unwrap();
    let t_recreate = until(&gw, 'B', "delete and recreate").await;

    // The new set serves a moment before /status records the reload: wait for the record.
    let start = Instant::now();
    let s = loop {
        let s = gw.status().await;
        if s["rules"]["last_result"] == "success" || start.elapsed() > Duration::from_secs(5) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(s["rules"]["last_result"], "success", "{s}");
    assert!(s["rules"]["generation"].as_u64().unwrap() >= 4, "{s}");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "claimgate_rules_reload_total", &[("result", "refused")]),
        Some(1.0),
        "{m}"
    );
    eprintln!(
        "reload latency: edit in place {t_edit:?}, atomic rename {t_rename:?}, delete+recreate {t_recreate:?}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_style_symlink_swaps_take_effect() {
    use std::os::unix::fs::symlink;
    let up = Upstream::start();
    let (dir, proxy, admin) =
        write_setup(&config(up.addr, "poll_seconds = 0\ndebounce_ms = 100"), &[]);
    let rules = dir.path().join("rules");
    // Kubernetes layout: rules/flip.toml -> ..data/flip.toml, ..data -> ..2026_01_01_a
    std::fs::create_dir(rules.join("..2026_01_01_a")).unwrap();
    std::fs::write(rules.join("..2026_01_01_a/flip.toml"), SET_A).unwrap();
    symlink("..2026_01_01_a", rules.join("..data")).unwrap();
    symlink("..data/flip.toml", rules.join("flip.toml")).unwrap();
    let gw = Gateway::start_in(dir, proxy, admin, &[]);
    assert_eq!(which(&gw).await, Ok('A'));

    // What the kubelet does: a new timestamped directory, a new ..data link renamed over,
    // and the old directory removed.
    let mut times = Vec::new();
    let mut old = "..2026_01_01_a".to_string();
    for (i, (set, text)) in [('B', SET_B), ('A', SET_A), ('B', SET_B)]
        .into_iter()
        .enumerate()
    {
        let ts = format!("..2026_01_01_{i}");
        std::fs::create_dir(rules.join(&ts)).unwrap();
        std::fs::write(rules.join(&ts).join("flip.toml"), text).unwrap();
        symlink(&ts, rules.join("..data_tmp")).unwrap();
        std::fs::rename(rules.join("..data_tmp"), rules.join("..data")).unwrap();
        std::fs::remove_dir_all(rules.join(&old)).unwrap();
        old = ts;
        times.push(until(&gw, set, "configmap swap").await);
    }
    eprintln!("reload latency: configmap swaps {times:?}");
    // The old directory never comes back: a swap is not held for the 20 quiet periods (2 s
    // here) a deleted file of the set is waited for.
    assert!(
        times.iter().all(|t| *t < Duration::from_millis(1500)),
        "{times:?}"
    );
}

#[tokio::test]
async fn bad_edits_never_take_effect() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "poll_seconds = 0\ndebounce_ms = 50"),
        &[("flip.toml", SET_A)],
    );
    let file = gw.dir().join("rules/flip.toml");
    let bad = [
        ("[[route]\nname = \"flip\"", "flip.toml:1:"),
        ("[[route]]\nname = \"flip\"\npath = \"/flip\"\nauth = \"none\"\ncolour = 1\n", "flip.toml:5:1: unknown field `colour`"),
        ("[[route]]\nname = \"flip\"\npath = \"/flip\"\nauth = \"none\"\n[[route.rule]]\nname = \"r\"\nallow_if = \"1 +\"\n", "flip.toml:7:"),
        ("[[route]]\nname = \"flip\"\npath = \"/flip\"\nissuers = [\"nobody\"]\n", "flip.toml:4:12: unknown issuer `nobody`"),
    ];
    for (n, (text, expected)) in bad.iter().enumerate() {
        write_atomically(&file, text);
        let start = Instant::now();
        let status = loop {
            let s = gw.status().await;
            let err = s["rules"]["last_error"].as_str().unwrap_or("").to_string();
            if s["rules"]["last_result"] == "error" && err.contains(expected) {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "bad edit {n} not reported: {s}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let errors = metric_value(
            &gw.metrics().await,
            "claimgate_rules_reload_total",
            &[("result", "error")],
        );
        assert_eq!(
            errors,
            Some((n + 1) as f64),
            "one error counted per bad edit"
        );
        assert_eq!(which(&gw).await, Ok('A'), "bad edit {n} changed behaviour");
        assert_eq!(status["rules"]["generation"], 1);
    }
    // A good edit after the bad ones is applied.
    write_atomically(&file, SET_B);
    until(&gw, 'B', "good edit after bad ones").await;
    assert!(gw.logs().contains("reload failed"));
}

#[tokio::test]
async fn sighup_reloads() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "watch = false\npoll_seconds = 0"),
        &[("flip.toml", SET_A)],
    );
    std::fs::write(gw.dir().join("rules/flip.toml"), SET_B).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        which(&gw).await,
        Ok('A'),
        "no watcher, no poll: nothing may change yet"
    );
    let ok = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gw.pid().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    until(&gw, 'B', "SIGHUP").await;
}

#[tokio::test]
async fn no_request_fails_while_policies_flip() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "poll_seconds = 1\ndebounce_ms = 20"),
        &[("flip.toml", SET_A)],
    );
    let file = gw.dir().join("rules/flip.toml");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            let mut flips = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_atomically(&file, if flips % 2 == 0 { SET_B } else { SET_A });
                flips += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            flips
        })
    };
    let gw = std::sync::Arc::new(gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut seen, mut failures) = (0u32, [0u32; 2], Vec::new());
            while Instant::now() < deadline {
                match which(&gw).await {
                    Ok(c) => seen[(c == 'B') as usize] += 1,
                    Err(e) => failures.push(e),
                }
                n += 1;
            }
            (n, seen, failures)
        }));
    }
    let (mut total, mut seen, mut failures) = (0, [0; 2], Vec::new());
    for t in tasks {
        let (n, s, f) = t.await.unwrap();
        total += n;
        seen[0] += s[0];
        seen[1] += s[1];
        failures.extend(f);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    let generation = gw.status().await["rules"]["generation"].as_u64().unwrap();
    eprintln!(
        "under load: {total} requests, {} answered by set A, {} by set B, {flips} flips, generation {generation}",
        seen[0], seen[1]
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(total >= 2000, "only {total} requests in 10 s");
    assert!(seen[0] > 0 && seen[1] > 0, "both sets must have answered");
    assert!(
        generation > 20,
        "policies did not flip often enough: generation {generation}"
    );
}

#[tokio::test]
async fn gateway_toml_changes_reload_live_or_are_reported_as_restart_only() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "poll_seconds = 0\ndebounce_ms = 50"),
        &[("flip.toml", SET_A)],
    );
    let path = gw.dir().join("gateway.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let unmatched = |c: String| async move {
        let r = client()
            .get(format!("http://{c}/nowhere"))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(unmatched(gw.proxy.to_string()).await, 404);

    // A live setting: the unmatched status.
    write_atomically(
        &path,
        &format!("{original}\n[unmatched]\naction = \"deny\"\nstatus = 403\n"),
    );
    let start = Instant::now();
    while unmatched(gw.proxy.to_string()).await != 403 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "unmatched status did not reload"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A restart-only setting: applied nowhere, reported everywhere.
    let moved = original.replace(&format!("127.0.0.1:{}", gw.admin.port()), "127.0.0.1:1");
    assert_ne!(moved, original);
    write_atomically(&path, &moved);
    let start = Instant::now();
    loop {
        let s = gw.status().await;
        if s["rules"]["restart_needed"] == serde_json::json!(["listen.admin"]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "restart-only change not reported: {s}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gw
        .wait_log("takes effect only after a restart")
        .contains("listen.admin"));
    // The unmatched status from the file in force is back to 404, served on the old listener.
    assert_eq!(unmatched(gw.proxy.to_string()).await, 404);
}

/// An edit made while the gateway starts (here: while it waits for an identity provider that
/// never answers) takes effect once it runs: the set in force is the one it read, not the one
/// on disk when it finished starting.
#[tokio::test]
async fn an_edit_made_while_the_gateway_starts_is_not_lost() {
    let up = Upstream::start();
    // Accepts connections (the kernel's backlog) and never answers: the startup key fetch
    // waits for its whole timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!(
        "[issuers.slow]\nissuer = \"https://slow.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\nfetch_timeout_ms = 2000\nkeys = [{{ jwks_url = \"http://{}/jwks\" }}]\n",
        silent.local_addr().unwrap()
    );
    let text =
        config(up.addr, "poll_seconds = 0").replace("[reload]", &format!("{issuer}\n[reload]"));
    let (dir, proxy, admin) = write_setup(&text, &[("flip.toml", SET_A)]);
    let rules = dir.path().join("rules/flip.toml");
    let started = Instant::now();
    let editor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        write_atomically(&rules, SET_B);
    });
    let gw = Gateway::start_in(dir, proxy, admin, &[]);
    editor.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the gateway started before the edit; the test proves nothing"
    );
    until(&gw, 'B', "an edit made during startup").await;
    drop(silent);
}

/// A rules directory replaced by another (`mv rules.new rules`, a re-created directory) is
/// watched anew: an in-place edit in the new one takes effect without any poll.
#[tokio::test]
async fn a_replaced_rules_directory_is_watched_anew() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &config(up.addr, "poll_seconds = 0\ndebounce_ms = 50"),
        &[("flip.toml", SET_A)],
    );
    let rules = gw.dir().join("rules");
    let next = gw.dir().join("rules.new");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("flip.toml"), SET_B).unwrap();
    std::fs::rename(&rules, gw.dir().join("rules.old")).unwrap();
    std::fs::rename(&next, &rules).unwrap();
    until(&gw, 'B', "the replaced directory").await;
    // In place, in the new directory: only a watch on it sees this.
    std::fs::write(rules.join("flip.toml"), SET_A).unwrap();
    until(&gw, 'A', "an edit inside the replaced directory").await;
}

/// A FIFO (or a device) named as a file of the set is refused, not read: reading one would
/// block the reload loop, and every later reload, for good.
#[tokio::test]
async fn a_fifo_named_in_the_set_is_refused_and_reloads_go_on() {
    let up = Upstream::start();
    let text = config(up.addr, "poll_seconds = 1\ndebounce_ms = 50");
    let gw = Gateway::start(&text, &[("flip.toml", SET_A)]);
    let fifo = gw.dir().join("key.pem");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let with_fifo = text.replace(
        "[reload]",
        &format!(
            "[issuers.fifo]\nissuer = \"https://fifo.test\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\nkeys = [{{ pem_file = \"{}\" }}]\n\n[reload]",
            fifo.display()
        ),
    );
    let path = gw.dir().join("gateway.toml");
    let in_force = std::fs::read_to_string(&path).unwrap();
    write_atomically(
        &path,
        &with_fifo
            .replace("{proxy}", &gw.proxy.port().to_string())
            .replace("{admin}", &gw.admin.port().to_string()),
    );
    let start = Instant::now();
    loop {
        let s = gw.status().await;
        if s["rules"]["last_result"] == "error" {
            let e = s["rules"]["last_error"].as_str().unwrap_or("");
            assert!(
                e.contains("key.pem") && e.contains("not a regular file"),
                "{e}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "never refused: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(which(&gw).await, Ok('A'));
    write_atomically(&path, &in_force);
    write_atomically(&gw.dir().join("rules/flip.toml"), SET_B);
    until(&gw, 'B', "a reload after the FIFO").await;
}
