//! Hot reload: watch -> load everything -> validate -> swap. A bad change never replaces a good
//! set; a request keeps the snapshot it started with.
//!
//! Files are watched through their directories, so editors' atomic renames and Kubernetes
//! ConfigMap `..data` symlink swaps are seen; any event only means "maybe changed": a content
//! hash decides. SIGHUP and a periodic hash poll back the watcher up.

use crate::auth::remote::RemoteRegistry;
use crate::config::Config;
use crate::engine::Snapshot;
use crate::location::SourceErrors;
use crate::sync::{lock, unix_seconds};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What `/status` shows about loading.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusView {
    pub generation: u64,
    pub content_hash: String,
    /// Unix time of the load in force.
    pub loaded_at: u64,
    pub load_millis: u64,
    pub last_result: &'static str,
    pub last_attempt_at: u64,
    pub last_error: Option<String>,
    pub restart_needed: Vec<String>,
}

#[derive(Debug)]
pub struct ReloadStatus {
    generation: AtomicU64,
    view: Mutex<StatusView>,
}

impl ReloadStatus {
    pub fn view(&self) -> StatusView {
        lock(&self.view).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut lock(&self.view));
    }
}

/// Hash of everything a snapshot is built from: the configuration, every rules file and every
/// key file (the geo database by size and modification time: it can be large).
pub fn content_hash(config_path: &Path) -> String {
    let mut h = Sha256::new();
    let add_file = |h: &mut Sha256, p: &Path| {
        h.update(p.to_string_lossy().as_bytes());
        match std::fs::read(p) {
            Ok(b) => h.update(&b),
            Err(_) => h.update(b"\0missing"),
        }
    };
    add_file(&mut h, config_path);
    if let Ok(config) = Config::load(config_path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&config.rules_dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
        files.sort();
        for f in &files {
            add_file(&mut h, f);
        }
        for p in key_files(&config) {
            add_file(&mut h, &p);
        }
        if let Some(m) = &config.raw.geo.mmdb {
            let p = config.resolve(m.get_ref());
            if let Ok(meta) = std::fs::metadata(&p) {
                h.update(meta.len().to_le_bytes());
                if let Ok(t) = meta.modified() {
                    h.update(unix_seconds(t).to_le_bytes());
                }
            }
        }
    }
    hex::encode(&h.finalize()[..16])
}

fn key_files(config: &Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for iss in config.raw.issuers.values() {
        for k in &iss.get_ref().keys {
            let k = k.get_ref();
            for p in [&k.pem_file, &k.jwks_file, &k.secret_file]
                .into_iter()
                .flatten()
            {
                out.push(config.resolve(p));
            }
        }
    }
    out
}

/// The directories to watch: the config file's, the rules directory and its parent, and those
/// of key files and the geo database.
fn watch_dirs(config: &Config) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let parent = |p: &Path| {
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    dirs.push(parent(&config.path));
    dirs.push(config.rules_dir.clone());
    dirs.push(parent(&config.rules_dir));
    for k in key_files(config) {
        dirs.push(parent(&k));
    }
    if let Some(m) = &config.raw.geo.mmdb {
        dirs.push(parent(&config.resolve(m.get_ref())));
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Settings that only take effect at start: changing them is logged, never silently ignored.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if running.proxy_addr != new.proxy_addr {
        v.push("listen.proxy".to_string());
    }
    if running.admin_addr != new.admin_addr {
        v.push("listen.admin".to_string());
    }
    let (a, b) = (&running.raw.server, &new.raw.server);
    if a.threads != b.threads
        || a.grace_period_seconds != b.grace_period_seconds
        || a.graceful_shutdown_timeout_seconds != b.graceful_shutdown_timeout_seconds
        || a.work_stealing != b.work_stealing
    {
        v.push("server".to_string());
    }
    if running.raw.reload != new.raw.reload {
        v.push("reload".to_string());
    }
    v
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Applied,
    Failed,
    Refused,
}

pub struct Reloader {
    config_path: PathBuf,
    /// The configuration the process started with (listeners, threads).
    started_with: Arc<Config>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub status: Arc<ReloadStatus>,
    metrics: Arc<Metrics>,
    remote: Arc<RemoteRegistry>,
    /// Hash of the last content that failed, so a poll does not log the same error forever.
    failed_hash: Mutex<Option<String>>,
    /// Serialises reloads from the watcher, the poll and SIGHUP.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(
        config_path: &Path,
        initial: Snapshot,
        metrics: Arc<Metrics>,
        remote: Arc<RemoteRegistry>,
    ) -> Reloader {
        let hash = content_hash(config_path);
        let now = SystemTime::now();
        let started_with = initial.config.clone();
        metrics.rules_generation.set(1);
        metrics.last_reload_success.set(unix_seconds(now) as f64);
        count_key_loads(&metrics, &initial);
        Reloader {
            config_path: config_path.to_path_buf(),
            started_with,
            state: Arc::new(ArcSwap::from_pointee(initial)),
            status: Arc::new(ReloadStatus {
                generation: AtomicU64::new(1),
                view: Mutex::new(StatusView {
                    generation: 1,
                    content_hash: hash,
                    loaded_at: unix_seconds(now),
                    load_millis: 0,
                    last_result: "success",
                    last_attempt_at: unix_seconds(now),
                    last_error: None,
                    restart_needed: Vec::new(),
                }),
            }),
            metrics,
            remote,
            failed_hash: Mutex::new(None),
            busy: Mutex::new(()),
        }
    }

    /// Loads and swaps in a new snapshot if the content changed. `force` reloads even when the
    /// hash is the same as a failed attempt's (SIGHUP: the operator asked).
    pub fn reload(&self, trigger: &str, force: bool) -> Outcome {
        let _guard = lock(&self.busy);
        let hash = content_hash(&self.config_path);
        let current = self.status.view().content_hash;
        if hash == current && !force {
            return Outcome::Unchanged;
        }
        if !force && lock(&self.failed_hash).as_deref() == Some(hash.as_str()) {
            return Outcome::Unchanged;
        }
        let started = Instant::now();
        let attempt = unix_seconds(SystemTime::now());
        let loaded = Config::load(&self.config_path)
            .and_then(|c| Snapshot::load(Arc::new(c), &self.remote).map_err(SourceErrors));
        let snapshot = match loaded {
            Ok(s) => s,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(trigger, error = %e, "reload failed; the previous rules stay in force");
                }
                self.fail(&hash, "error", errors.to_string(), attempt);
                return Outcome::Failed;
            }
        };
        if snapshot.policy.routes.is_empty() && !snapshot.config.raw.reload.allow_empty {
            let msg = "the new rules have no route at all; refused (set `reload.allow_empty = true` to allow)";
            tracing::error!(trigger, "{msg}");
            self.fail(&hash, "refused", msg.to_string(), attempt);
            return Outcome::Refused;
        }
        let restart = restart_only_changes(&self.started_with, &snapshot.config);
        for setting in &restart {
            tracing::warn!(setting = %setting, "this setting changed but takes effect only after a restart");
        }
        let routes = snapshot.policy.routes.len();
        count_key_loads(&self.metrics, &snapshot);
        self.remote.retain(&snapshot.issuers.remotes());
        self.state.store(Arc::new(snapshot));
        let generation = self.status.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let millis = started.elapsed().as_millis() as u64;
        self.status.update(|v| {
            v.generation = generation;
            v.content_hash = hash.clone();
            v.loaded_at = attempt;
            v.load_millis = millis;
            v.last_result = "success";
            v.last_attempt_at = attempt;
            v.last_error = None;
            v.restart_needed = restart;
        });
        *lock(&self.failed_hash) = None;
        self.metrics.reloads.with_label_values(&["success"]).inc();
        self.metrics.rules_generation.set(generation as i64);
        self.metrics.last_reload_success.set(attempt as f64);
        tracing::info!(trigger, generation, routes, hash = %hash, load_ms = millis, "rules reloaded");
        Outcome::Applied
    }

    fn fail(&self, hash: &str, result: &'static str, message: String, attempt: u64) {
        *lock(&self.failed_hash) = Some(hash.to_string());
        self.metrics.reloads.with_label_values(&[result]).inc();
        self.status.update(|v| {
            v.last_result = result;
            v.last_attempt_at = attempt;
            v.last_error = Some(message);
        });
    }
}

fn count_key_loads(metrics: &Metrics, snapshot: &Snapshot) {
    // Fetched keys count their own fetches; this counts keys loaded from files and secrets.
    for issuer in snapshot.issuers.iter().filter(|i| i.remote.is_empty()) {
        metrics
            .key_loads
            .with_label_values(&[&issuer.name, "success"])
            .inc();
    }
    let sources: Vec<&str> = snapshot.sources.iter().map(|s| &*s.name).collect();
    metrics.declare_sources(&sources);
}

/// Runs the watcher, the poll and the SIGHUP handler until shutdown.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

impl ReloadService {
    fn watcher(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        let config = self.reloader.state.load().config.clone();
        let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the poll and SIGHUP");
                return None;
            }
        };
        for dir in watch_dirs(&config) {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory");
            }
        }
        Some(w)
    }

    async fn reload(&self, trigger: &'static str, force: bool) {
        let r = self.reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload(trigger, force)).await;
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let settings = self.reloader.state.load().config.raw.reload.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = if settings.watch {
            self.watcher(tx.clone())
        } else {
            None
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP");
                None
            }
        };
        let poll_every = Duration::from_secs(settings.poll_seconds.max(1));
        let mut poll =
            tokio::time::interval_at(tokio::time::Instant::now() + poll_every, poll_every);
        let debounce = Duration::from_millis(settings.debounce_ms);
        loop {
            let generation = self.reloader.status.generation();
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = rx.recv() => {
                    // Let a burst of events (an editor's save, a ConfigMap swap) settle first.
                    tokio::time::sleep(debounce).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("watch", false).await;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    self.reload("sighup", true).await;
                }
                _ = poll.tick(), if settings.poll_seconds > 0 => {
                    self.reload("poll", false).await;
                }
            }
            // New files may live in new directories: watch what the new snapshot names.
            if settings.watch && self.reloader.status.generation() != generation {
                drop(watcher.take());
                watcher = self.watcher(tx.clone());
            }
        }
    }
}
