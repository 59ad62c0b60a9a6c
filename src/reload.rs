//! Hot reload: watch -> settle -> load everything -> validate -> swap. A bad change never
//! replaces a good set; a half-written one is never loaded; a request keeps the snapshot it
//! started with.
//!
//! Files are watched through their directories, so editors' atomic renames and Kubernetes
//! ConfigMap `..data` symlink swaps are seen. Only content events count (create, write, remove,
//! rename; never access or open: the gateway's own reads would wake it forever), and only on
//! the files of the set. An event only means "maybe changed": after it, the watcher waits for a
//! quiet period (`reload.debounce_ms` with no further event), then reads every file of the set
//! and keeps the read only if every file's identity (size, modification time, inode) and the
//! content hash are the same before and after it; otherwise it waits and tries again. A file
//! deleted and written again within the quiet period is one edit. The periodic poll and SIGHUP
//! obey the same rule.

use crate::auth::remote::RemoteRegistry;
use crate::config::Config;
use crate::engine::Snapshot;
use crate::inputs::Inputs;
use crate::load::Loaded;
use crate::sync::{lock, unix_seconds};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
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
    /// `success`, `unchanged` (the files equal the set in force), `error`, `refused`, or
    /// `unsettled` (the files kept changing while read; tried again).
    pub last_result: &'static str,
    pub last_attempt_at: u64,
    /// Why the files on disk are not in force; `None` once they are (again).
    pub last_error: Option<String>,
    /// When an error was last seen, kept after it is cleared.
    pub last_error_at: Option<u64>,
    /// Whether the files on disk, at the last check, are the set in force.
    pub disk_matches_running: bool,
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

/// Settings that only take effect at start: changing them is logged, never silently ignored.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if running.proxy_addr != new.proxy_addr {
        v.push("listen.proxy".to_string());
    }
    if running.admin_addr != new.admin_addr {
        v.push("listen.admin".to_string());
    }
    if running.tls_addr != new.tls_addr {
        v.push("listen.tls.address".to_string());
    }
    let (a, b) = (&running.raw.server, &new.raw.server);
    if a.threads != b.threads
        || a.grace_period_seconds != b.grace_period_seconds
        || a.graceful_shutdown_timeout_seconds != b.graceful_shutdown_timeout_seconds
        || a.work_stealing != b.work_stealing
        || a.upstream_pool_size != b.upstream_pool_size
    {
        v.push("server".to_string());
    }
    if running.raw.reload != new.raw.reload {
        v.push("reload".to_string());
    }
    if running.raw.rate_limits != new.raw.rate_limits {
        v.push("rate_limits".to_string());
    }
    v
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Outcome {
    Unchanged,
    Applied,
    Failed,
    Refused,
    /// The files changed while they were read: nothing was applied; try again after a quiet
    /// period.
    Unsettled,
}

pub struct Reloader {
    config_path: PathBuf,
    /// The configuration the process started with (listeners, threads).
    started_with: Arc<Config>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub status: Arc<ReloadStatus>,
    metrics: Arc<Metrics>,
    remote: Arc<RemoteRegistry>,
    /// What the snapshot in force was read from: the files to watch.
    inputs: Mutex<Inputs>,
    /// Hash of the last content that failed, so a poll does not log the same error forever.
    failed_hash: Mutex<Option<String>>,
    /// Serialises reloads from the watcher, the poll and SIGHUP.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(initial: Loaded, metrics: Arc<Metrics>, remote: Arc<RemoteRegistry>) -> Reloader {
        let Loaded {
            snapshot: initial,
            inputs,
        } = initial;
        let hash = inputs.content_hash();
        let now = SystemTime::now();
        let started_with = initial.config.clone();
        metrics.reload.generation.set(1);
        metrics.reload.last_success.set(unix_seconds(now) as f64);
        count_key_loads(&metrics, &initial);
        Reloader {
            config_path: inputs.config.clone(),
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
                    last_error_at: None,
                    disk_matches_running: true,
                    restart_needed: Vec::new(),
                }),
            }),
            metrics,
            remote,
            inputs: Mutex::new(inputs),
            failed_hash: Mutex::new(None),
            busy: Mutex::new(()),
        }
    }

    /// Loads and swaps in a new snapshot if the content changed. `force` reloads even when the
    /// hash is the same as a failed attempt's (SIGHUP: the operator asked).
    pub fn reload(&self, trigger: &'static str, force: bool) -> Outcome {
        let _guard = lock(&self.busy);
        self.metrics
            .reload
            .checks
            .with_label_values(&[trigger])
            .inc();
        let attempt = unix_seconds(SystemTime::now());
        let found = Inputs::find(&self.config_path);
        let hash = found.inputs.content_hash();
        let current = self.status.view().content_hash;
        if hash == current && !force {
            self.unchanged(attempt);
            return Outcome::Unchanged;
        }
        if !force && lock(&self.failed_hash).as_deref() == Some(hash.as_str()) {
            return Outcome::Failed;
        }
        let started = Instant::now();
        let loaded = crate::load::build_found(&found, &self.remote);
        // Accept the read only if nobody wrote while it ran: the same files, each with the
        // identity it had before, and the same content hash.
        let again = Inputs::find(&self.config_path).inputs;
        if again != found.inputs || again.content_hash() != hash {
            tracing::debug!(
                trigger,
                "the files changed while they were read; waiting for them to settle"
            );
            self.metrics
                .reload
                .results
                .with_label_values(&["unsettled"])
                .inc();
            self.status.update(|v| {
                v.last_result = "unsettled";
                v.last_attempt_at = attempt;
                v.disk_matches_running = false;
            });
            return Outcome::Unsettled;
        }
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
        *lock(&self.inputs) = found.inputs;
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
            v.disk_matches_running = true;
            v.restart_needed = restart;
        });
        *lock(&self.failed_hash) = None;
        self.metrics
            .reload
            .results
            .with_label_values(&["success"])
            .inc();
        self.metrics.reload.generation.set(generation as i64);
        self.metrics.reload.last_success.set(attempt as f64);
        tracing::info!(trigger, generation, routes, hash = %hash, load_ms = millis, "rules reloaded");
        Outcome::Applied
    }

    fn fail(&self, hash: &str, result: &'static str, message: String, attempt: u64) {
        *lock(&self.failed_hash) = Some(hash.to_string());
        self.metrics
            .reload
            .results
            .with_label_values(&[result])
            .inc();
        self.status.update(|v| {
            v.last_result = result;
            v.last_attempt_at = attempt;
            v.last_error = Some(message);
            v.last_error_at = Some(attempt);
            v.disk_matches_running = false;
        });
    }

    /// The directories and files to watch for the set in force.
    fn watch_plan(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        watch_plan(&lock(&self.inputs))
    }

    /// A check that never loads: when the files on disk are the set in force, says so.
    pub fn confirm_unchanged(&self, trigger: &'static str) {
        let _guard = lock(&self.busy);
        self.metrics
            .reload
            .checks
            .with_label_values(&[trigger])
            .inc();
        if Inputs::find(&self.config_path).inputs.content_hash() == self.status.view().content_hash
        {
            self.unchanged(unix_seconds(SystemTime::now()));
        }
    }

    /// The files on disk are the set in force (again): whatever failed before no longer stands.
    fn unchanged(&self, attempt: u64) {
        *lock(&self.failed_hash) = None;
        self.metrics
            .reload
            .results
            .with_label_values(&["unchanged"])
            .inc();
        self.status.update(|v| {
            if v.last_error.take().is_some() {
                tracing::info!(
                    "the files on disk are the rules in force again; the last error is cleared"
                );
            }
            v.last_result = "unchanged";
            v.last_attempt_at = attempt;
            v.disk_matches_running = true;
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
    metrics.declare_routes(&snapshot.policy);
    metrics.declare_certificates(snapshot.tls.as_deref());
}

/// Whether a file-system event can change the set: a content event (create, write, remove,
/// rename) on a file of the set, a `.toml` file of the rules directory, or a ConfigMap's `..`
/// entries. Access and open events never count: reading the set (the gateway's own reads, or
/// anyone's `cat`) must not start a reload check.
fn counts(event: &notify::Event, files: &[PathBuf], rules_dir: &Path) -> bool {
    use notify::event::{EventKind, ModifyKind};
    let content = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
    );
    content
        && event.paths.iter().any(|p| {
            files.iter().any(|f| f == p)
                || (p.parent() == Some(rules_dir) && p.extension().is_some_and(|x| x == "toml"))
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".."))
                || p == rules_dir
        })
}

/// What the watcher reports of the set.
#[derive(Debug)]
enum Fs {
    /// A content event: starts (or prolongs) a settle. `written`: a file whose data changed,
    /// open for writing until it is closed; `removed`: files gone, perhaps about to be written
    /// again (delete-then-recreate), so in flux until written and closed.
    Changed {
        written: Option<PathBuf>,
        removed: Vec<PathBuf>,
    },
    /// A file of the set was closed after writing: its writer is done with it.
    Closed(PathBuf),
}

/// Turns a file-system event into what the settle rule needs, if anything.
fn classify(event: &notify::Event, files: &[PathBuf], rules_dir: &Path) -> Option<Fs> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let relevant = |p: &PathBuf| {
        files.iter().any(|f| f == p)
            || (p.parent() == Some(rules_dir) && p.extension().is_some_and(|x| x == "toml"))
    };
    if let EventKind::Access(AccessKind::Close(AccessMode::Write)) = event.kind {
        return event
            .paths
            .iter()
            .find(|p| relevant(p))
            .cloned()
            .map(Fs::Closed);
    }
    if !counts(event, files, rules_dir) {
        return None;
    }
    let written = match event.kind {
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
            event.paths.iter().find(|p| relevant(p)).cloned()
        }
        _ => None,
    };
    let removed = match event.kind {
        EventKind::Remove(_) => event.paths.clone(),
        _ => Vec::new(),
    };
    Some(Fs::Changed { written, removed })
}

/// Files written and not yet closed, or deleted and not yet written again: an edit still in
/// progress.
#[derive(Default)]
struct OpenWrites(std::collections::HashSet<PathBuf>);

impl OpenWrites {
    /// Records `ev`; whether it is a content change.
    fn note(&mut self, ev: &Fs) -> bool {
        match ev {
            Fs::Changed { written, removed } => {
                if let Some(p) = written {
                    self.0.insert(p.clone());
                }
                for p in removed {
                    self.0.insert(p.clone());
                }
                true
            }
            Fs::Closed(p) => {
                self.0.remove(p);
                false
            }
        }
    }
}

/// How many quiet periods an edit may keep a file open for writing, or deleted, before a check
/// goes ahead anyway (a file really deleted, a platform that reports no close, a writer that
/// never closes).
const MAX_OPEN_PERIODS: u32 = 20;

/// What a watcher watches: directories and the files of the set.
fn watch_plan(inputs: &Inputs) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let files = inputs.files().map(Path::to_path_buf).collect();
    (inputs.watch_dirs(), files)
}

/// How many quiet periods a settling edit may take before the check gives up until the next
/// event or poll.
const MAX_SETTLE_ROUNDS: usize = 100;

/// Runs the watcher, the poll and the SIGHUP handler until shutdown.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

impl ReloadService {
    fn watcher(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<Fs>,
    ) -> Option<notify::RecommendedWatcher> {
        let (dirs, files) = self.reloader.watch_plan();
        let rules_dir = self.reloader.state.load().config.rules_dir.clone();
        let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Some(ev) = res.ok().and_then(|e| classify(&e, &files, &rules_dir)) {
                let _ = tx.send(ev);
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; relying on the poll and SIGHUP");
                return None;
            }
        };
        for dir in dirs {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory");
            }
        }
        Some(w)
    }

    /// Waits for the set to settle, then reloads: a quiet period of `debounce` with no content
    /// event and no file of the set still open for writing, then a read that must itself be
    /// stable ([`Reloader::reload`]); repeated while the files keep changing. Without events
    /// to go by (the poll), the quiet period also needs every file's identity unchanged across
    /// it.
    async fn settle_and_reload(
        &self,
        trigger: &'static str,
        force: bool,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Fs>,
        open: &mut OpenWrites,
        debounce: Duration,
    ) {
        let by_identity = trigger == "poll";
        for _ in 0..MAX_SETTLE_ROUNDS {
            // `None` inside: the files could not be looked at; then nothing is compared.
            let before = if by_identity {
                Some(self.identities().await)
            } else {
                None
            };
            // Every event restarts the quiet period; a writer that has not closed its file
            // (it paused mid-write) prolongs it.
            let mut open_periods = 0;
            loop {
                match tokio::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(ev)) => {
                        open.note(&ev);
                    }
                    Ok(None) => break,
                    Err(_) if !open.0.is_empty() && open_periods < MAX_OPEN_PERIODS => {
                        open_periods += 1;
                    }
                    Err(_) => break,
                }
            }
            open.0.clear();
            if let Some(before) = before {
                if self.identities().await != before {
                    continue;
                }
            }
            if self.reload(trigger, force).await != Outcome::Unsettled {
                return;
            }
        }
        tracing::warn!(
            trigger,
            "the files kept changing; the rules in force stay until they settle"
        );
    }

    /// The inputs on disk now, with their identities.
    async fn identities(&self) -> Option<Inputs> {
        let path = self.reloader.config_path.clone();
        tokio::task::spawn_blocking(move || Inputs::find(&path).inputs)
            .await
            .ok()
    }

    /// Whether the files on disk differ from the set in force and from the last failed set.
    async fn disk_changed(&self) -> bool {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || {
            let hash = Inputs::find(&r.config_path).inputs.content_hash();
            hash != r.status.view().content_hash
                && lock(&r.failed_hash).as_deref() != Some(hash.as_str())
        })
        .await
        .unwrap_or(false)
    }

    async fn reload(&self, trigger: &'static str, force: bool) -> Outcome {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || r.reload(trigger, force))
            .await
            .unwrap_or(Outcome::Failed)
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let settings = self.reloader.state.load().config.raw.reload.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Fs>();
        let mut open = OpenWrites::default();
        let debounce = Duration::from_millis(settings.debounce_ms);
        let mut watcher = if settings.watch {
            self.watcher(tx.clone())
        } else {
            None
        };
        let mut watching = self.reloader.watch_plan();
        // A change made between the first load and the watcher's start has no event: compare.
        if watcher.is_some() && self.disk_changed().await {
            self.settle_and_reload("watch", false, &mut rx, &mut open, debounce)
                .await;
        }
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
        loop {
            let generation = self.reloader.status.generation();
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(ev) = rx.recv() => {
                    if open.note(&ev) {
                        self.settle_and_reload("watch", false, &mut rx, &mut open, debounce).await;
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    self.settle_and_reload("sighup", true, &mut rx, &mut open, debounce).await;
                }
                _ = poll.tick(), if settings.poll_seconds > 0 => {
                    // A missed event: the poll obeys the same settle rule as the watcher.
                    if self.disk_changed().await {
                        self.settle_and_reload("poll", false, &mut rx, &mut open, debounce).await;
                    } else {
                        // Nothing to load; this still tells `/status` when the files on disk
                        // are the set in force again. It never loads: only a settled read may.
                        let r = self.reloader.clone();
                        let _ = tokio::task::spawn_blocking(move || r.confirm_unchanged("poll")).await;
                    }
                }
            }
            // New files may live in new directories: watch what the new snapshot names. Only
            // when that changed, and the new watcher starts before the old one stops, so no
            // event falls between them.
            if settings.watch && self.reloader.status.generation() != generation {
                let plan = self.reloader.watch_plan();
                if plan != watching {
                    let next = self.watcher(tx.clone());
                    drop(std::mem::replace(&mut watcher, next));
                    watching = plan;
                }
            }
        }
    }
}
