//! Reading, building and swapping in a new set: [`Reloader::check`] reads and builds without
//! touching what is in force; [`Reloader::commit`] swaps it in, or reports its error, only if the
//! files on disk are still exactly what was read. The settle rule around them is in `service`.

use super::status::{ReloadStatus, StatusView};
use crate::auth::remote::RemoteRegistry;
use crate::config::Config;
use crate::engine::Snapshot;
use crate::inputs::Inputs;
use crate::load::Loaded;
use crate::location::SourceErrors;
use crate::sync::{lock, unix_seconds};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

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
    /// The files changed while or just after they were read: nothing was applied; try again
    /// after a quiet period.
    Unsettled,
}

/// A set read and built, not yet in force.
pub(super) struct Candidate {
    trigger: &'static str,
    inputs: Inputs,
    hash: String,
    built: Result<Snapshot, SourceErrors>,
    attempt: u64,
    millis: u64,
}

impl Candidate {
    /// The files read.
    pub(super) fn files(&self) -> Vec<PathBuf> {
        self.inputs.files().map(Path::to_path_buf).collect()
    }
}

/// What a check found on disk.
pub(super) enum Check {
    /// Nothing to commit: the outcome is final.
    Done(Outcome),
    /// A new set, read while nobody wrote; to be committed once it proves stable.
    Read(Box<Candidate>),
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
    /// Serialises checks and commits from the watcher, the poll and SIGHUP.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(initial: Loaded, metrics: Arc<Metrics>, remote: Arc<RemoteRegistry>) -> Reloader {
        let Loaded {
            snapshot: initial,
            inputs,
            hash,
        } = initial;
        remote.publish(&initial.issuers.remotes());
        let now = SystemTime::now();
        let started_with = initial.config.clone();
        metrics.reload.generation.set(1);
        metrics.reload.last_success.set(unix_seconds(now) as f64);
        count_key_loads(&metrics, &initial);
        Reloader {
            config_path: inputs.config.clone(),
            started_with,
            state: Arc::new(ArcSwap::from_pointee(initial)),
            status: Arc::new(ReloadStatus::first(StatusView {
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
                waiting_for: Vec::new(),
            })),
            metrics,
            remote,
            inputs: Mutex::new(inputs),
            failed_hash: Mutex::new(None),
            busy: Mutex::new(()),
        }
    }

    pub(super) fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Reads and builds the set on disk if its content differs from the set in force. `force`
    /// builds even when the hash is the same as a failed attempt's (SIGHUP: the operator asked).
    /// Nothing in force changes here.
    pub(super) fn check(&self, trigger: &'static str, force: bool) -> Check {
        let _guard = lock(&self.busy);
        self.metrics
            .reload
            .checks
            .with_label_values(&[trigger])
            .inc();
        let attempt = unix_seconds(SystemTime::now());
        // A check runs only once no file of the set is open for writing.
        self.status.update(|v| v.waiting_for.clear());
        let found = Inputs::find(&self.config_path);
        let hash = found.inputs.content_hash();
        let current = self.status.view().content_hash;
        if hash == current && !force {
            self.unchanged(attempt);
            return Check::Done(Outcome::Unchanged);
        }
        if !force && lock(&self.failed_hash).as_deref() == Some(hash.as_str()) {
            return Check::Done(Outcome::Failed);
        }
        let started = Instant::now();
        let built = crate::load::build_found(&found, &self.remote);
        let millis = started.elapsed().as_millis() as u64;
        // Accept the read only if nobody wrote while it ran: the same files, each with the
        // identity it had before, and the same content hash.
        if !self.on_disk(&found.inputs, &hash) {
            self.unsettled(trigger, attempt);
            return Check::Done(Outcome::Unsettled);
        }
        tracing::debug!(trigger, hash = %hash, identities = ?found.inputs.identities(), "read a new set");
        Check::Read(Box::new(Candidate {
            trigger,
            inputs: found.inputs,
            hash,
            built,
            attempt,
            millis,
        }))
    }

    /// Puts a checked set in force, or records why it cannot be, if the files on disk are still
    /// exactly what was read (otherwise `Unsettled`, and nothing changes).
    pub(super) fn commit(&self, c: Candidate) -> Outcome {
        let _guard = lock(&self.busy);
        let Candidate {
            trigger,
            inputs,
            hash,
            built,
            attempt,
            millis,
        } = c;
        if !self.on_disk(&inputs, &hash) {
            self.unsettled(trigger, attempt);
            return Outcome::Unsettled;
        }
        let snapshot = match built {
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
        // The TLS listener stays bound until a restart: without `[listen.tls]` in the new set,
        // it keeps the certificates in force rather than failing every handshake.
        let mut snapshot = snapshot;
        if self.started_with.tls_addr.is_some() && snapshot.tls.is_none() {
            snapshot.tls = self.state.load().tls.clone();
        }
        let routes = snapshot.policy.routes.len();
        count_key_loads(&self.metrics, &snapshot);
        self.remote.publish(&snapshot.issuers.remotes());
        self.state.store(Arc::new(snapshot));
        *lock(&self.inputs) = inputs;
        let generation = self.status.next_generation();
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

    /// Whether the files on disk are `inputs` (the same files, each with the same identity) with
    /// the content `hash`.
    fn on_disk(&self, inputs: &Inputs, hash: &str) -> bool {
        let now = Inputs::find(&self.config_path).inputs;
        now == *inputs && now.content_hash() == hash
    }

    pub(super) fn unsettled(&self, trigger: &'static str, attempt: u64) {
        tracing::debug!(
            trigger,
            "the files changed while or just after they were read; waiting for them to settle"
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
    }

    /// A file of the set is open for writing: nothing is read until it is closed.
    pub(super) fn waiting(&self, files: Vec<String>) {
        self.metrics
            .reload
            .results
            .with_label_values(&["waiting"])
            .inc();
        self.status.update(|v| {
            v.last_result = "waiting";
            v.last_attempt_at = unix_seconds(SystemTime::now());
            v.disk_matches_running = false;
            v.waiting_for = files;
        });
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
    pub(super) fn watch_plan(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let inputs = lock(&self.inputs);
        let files = inputs.files().map(Path::to_path_buf).collect();
        (inputs.watch_dirs(), files)
    }

    /// Whether the files on disk differ from the set in force and from the last failed set.
    pub(super) fn disk_differs(&self) -> bool {
        let hash = Inputs::find(&self.config_path).inputs.content_hash();
        hash != self.status.view().content_hash
            && lock(&self.failed_hash).as_deref() != Some(hash.as_str())
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
