//! The settle rule and the loop that runs it: file events, the periodic poll and SIGHUP all
//! lead to [`ReloadService::settle_and_reload`], which decides when the files may be read and
//! when what was read may go in force.

use super::events::{classify, Edits, Fs};
use super::fence::Fence;
use super::reloader::{Check, Outcome, Reloader};
use super::writers::{self, Writers};
use crate::inputs::Inputs;
use crate::sync::unix_seconds;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::UnboundedReceiver;

/// How many quiet periods an edit may keep a file deleted, or open for writing by the events'
/// account, before the settle rule looks again: a file deleted that long is taken as deleted; a
/// file open that long is asked of the kernel ([`writers`]), and waited for while it stays open
/// (where the kernel will not say: waited for where the watcher reports closes, otherwise taken
/// as closed). This many periods is also how often `/status` and the log say what is waited for.
const MAX_OPEN_PERIODS: u32 = 20;

/// Whether this platform's watcher reports a writer's close (inotify does). Without it, "open
/// for writing" can only be guessed from silence.
const CLOSES_REPORTED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// How long a fence may take to come back through a watcher before the settle rule goes on
/// without it (a watcher that stopped reporting); never shorter than the quiet period.
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many rounds a settling edit may take before the check gives up until the next event or
/// poll.
const MAX_SETTLE_ROUNDS: usize = 100;

/// How a settle ended.
#[derive(Debug, PartialEq, Eq)]
enum Settle {
    /// A check ran to its end (whatever its outcome), or gave up on files that kept changing.
    Done,
    /// A file of the set is still open for writing: nothing was read. The next event (its close)
    /// or poll resumes.
    Waiting,
}

/// The watcher's side of the settle rule: its events and what they say is in progress.
struct Watch {
    rx: UnboundedReceiver<Fs>,
    edits: Edits,
    debounce: Duration,
    fence: Option<Fence>,
    /// A settle ended waiting for a writer: its close must resume it.
    pending: bool,
    /// The current wait for a writer was logged (once per wait).
    warned: bool,
}

impl Watch {
    /// Waits for a quiet period: `debounce` with no event, and no file of the set open for
    /// writing or deleted and not yet written again. Every event restarts the period.
    async fn quiet(&mut self) -> Quiet {
        let mut periods = 0;
        loop {
            match tokio::time::timeout(self.debounce, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.edits.note(&ev);
                }
                Ok(None) => return Quiet::Settled,
                Err(_) if !self.edits.writing().is_empty() => {
                    periods += 1;
                    if periods < MAX_OPEN_PERIODS {
                        continue;
                    }
                    // Long open by the events' account: ask the kernel (a close event may have
                    // been lost, or a writer really holds the file).
                    let files: Vec<PathBuf> = self.edits.writing().iter().cloned().collect();
                    match probe(files).await {
                        Probe::Open(_) => return Quiet::Writing,
                        Probe::Unknown if CLOSES_REPORTED => return Quiet::Writing,
                        Probe::Idle | Probe::Unknown => self.edits.forget_writing(),
                    }
                }
                Err(_) if self.edits.any_removed() && periods < MAX_OPEN_PERIODS => {
                    periods += 1;
                }
                Err(_) => {
                    self.edits.forget_removed();
                    return Quiet::Settled;
                }
            }
        }
    }

    /// Whether no event arrives until the watcher has reported everything queued before now
    /// (a fence; without fences, a whole quiet period), and for at least `at_least`. Called
    /// after a read: a writer that was active when the read ran shows itself here, by its write
    /// or its close.
    async fn stays_quiet(&mut self, at_least: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let fence = self.fence.as_mut().and_then(Fence::set);
        let (until, give_up) = match fence {
            Some(_) => (start + at_least, start + self.debounce.max(FENCE_TIMEOUT)),
            None => {
                let until = start + at_least.max(self.debounce);
                (until, until)
            }
        };
        let mut fenced = fence.is_none();
        loop {
            let deadline = if fenced { until } else { give_up };
            if fenced && tokio::time::Instant::now() >= until {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Fs::Fence(n))) if Some(n) == fence => fenced = true,
                // An earlier fence that came back late.
                Ok(Some(Fs::Fence(_))) => {}
                Ok(Some(ev)) => {
                    tracing::debug!(event = ?ev, "a file event right after the read; reading again once settled");
                    self.edits.note(&ev);
                    return false;
                }
                Ok(None) => {
                    tokio::time::sleep_until(until).await;
                    return true;
                }
                Err(_) if !fenced => {
                    // The watcher does not see the fence directory (it could not watch it, or
                    // stopped): from now on, wait by time.
                    tracing::info!("a reload fence did not come back through the file watcher; after a read, late events are now waited for by time alone");
                    self.fence = None;
                    fenced = true;
                }
                Err(_) => return true,
            }
        }
    }

    fn writing(&self) -> Vec<String> {
        self.edits
            .writing()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }
}

enum Quiet {
    Settled,
    Writing,
}

/// What the kernel says about the writers of some files.
enum Probe {
    /// These are open for writing.
    Open(Vec<PathBuf>),
    /// None is.
    Idle,
    /// None is as far as the kernel would say, but it would not say for every file.
    Unknown,
}

/// Asks the kernel about the writers of `files` (off the async threads: it opens each file).
async fn probe(files: Vec<PathBuf>) -> Probe {
    tokio::task::spawn_blocking(move || {
        let mut unknown = false;
        let mut open = Vec::new();
        for f in files {
            match writers::of(&f) {
                Writers::Open => open.push(f),
                Writers::None => {}
                Writers::Unknown => unknown = true,
            }
        }
        match (open.is_empty(), unknown) {
            (false, _) => Probe::Open(open),
            (true, false) => Probe::Idle,
            (true, true) => Probe::Unknown,
        }
    })
    .await
    .unwrap_or(Probe::Unknown)
}

/// Runs the watcher, the poll and the SIGHUP handler until shutdown.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

/// The identity (device, inode) of each directory as its path resolves now.
fn dir_identities(dirs: &[PathBuf]) -> Vec<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    dirs.iter()
        .map(|d| std::fs::metadata(d).ok().map(|m| (m.dev(), m.ino())))
        .collect()
}

impl ReloadService {
    fn watcher(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<Fs>,
        fences: Option<PathBuf>,
    ) -> Option<notify::RecommendedWatcher> {
        let (mut dirs, files) = self.reloader.watch_plan();
        let rules_dir = self.reloader.state.load().config.rules_dir.clone();
        dirs.extend(fences.clone());
        let mut w = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let classified = res
                .ok()
                .and_then(|e| classify(&e, &files, &rules_dir, fences.as_deref()));
            if let Some(ev) = classified {
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

    /// Waits for the set to settle, then reloads: a quiet period with no file of the set still
    /// open for writing, then a read that must itself be stable ([`Reloader::check`]), then
    /// a second quiet period with no event at all, then the swap if the files are still what
    /// was read ([`Reloader::commit`]); repeated while the files keep changing. Without events
    /// to go by (the poll), the first quiet period also needs every file's identity unchanged
    /// across it.
    async fn settle_and_reload(&self, trigger: &'static str, force: bool, w: &mut Watch) -> Settle {
        let by_identity = trigger == "poll";
        for _ in 0..MAX_SETTLE_ROUNDS {
            // `None` inside: the files could not be looked at; then nothing is compared.
            let before = if by_identity {
                Some(self.identities().await)
            } else {
                None
            };
            if let Quiet::Writing = w.quiet().await {
                let files = w.writing();
                if !w.warned {
                    tracing::warn!(
                        files = %files.join(", "),
                        "a file of the set has been open for writing for {} quiet periods; the rules in force stay until it is closed",
                        MAX_OPEN_PERIODS
                    );
                    w.warned = true;
                }
                self.reloader.waiting(files);
                w.pending = true;
                return Settle::Waiting;
            }
            w.pending = false;
            w.warned = false;
            if let Some(before) = before {
                if self.identities().await != before {
                    continue;
                }
            }
            let candidate = match self.check(trigger, force).await {
                Check::Done(Outcome::Unsettled) => continue,
                Check::Done(_) => return Settle::Done,
                Check::Read(c) => c,
            };
            // A writer may be mid-file with no event yet to show for it. The kernel knows;
            // where it will not say, a whole quiet period after the read must pass.
            let at_least = match probe(candidate.files()).await {
                Probe::Open(files) => {
                    tracing::debug!(
                        ?files,
                        "read a set with files open for writing; waiting for their close"
                    );
                    for f in files {
                        w.edits.open_for_writing(f);
                    }
                    self.reloader
                        .unsettled(trigger, unix_seconds(SystemTime::now()));
                    continue;
                }
                Probe::Idle => Duration::ZERO,
                Probe::Unknown => w.debounce,
            };
            if !w.stays_quiet(at_least).await {
                self.reloader
                    .unsettled(trigger, unix_seconds(SystemTime::now()));
                continue;
            }
            if self.commit(*candidate).await != Outcome::Unsettled {
                return Settle::Done;
            }
        }
        tracing::warn!(
            trigger,
            "the files kept changing; the rules in force stay until they settle"
        );
        Settle::Done
    }

    /// The inputs on disk now, with their identities.
    async fn identities(&self) -> Option<Inputs> {
        let path = self.reloader.config_path().to_path_buf();
        tokio::task::spawn_blocking(move || Inputs::find(&path).inputs)
            .await
            .ok()
    }

    /// Whether the files on disk differ from the set in force and from the last failed set.
    async fn disk_changed(&self) -> bool {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || r.disk_differs())
            .await
            .unwrap_or(false)
    }

    async fn check(&self, trigger: &'static str, force: bool) -> Check {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || r.check(trigger, force))
            .await
            .unwrap_or(Check::Done(Outcome::Failed))
    }

    async fn commit(&self, c: super::reloader::Candidate) -> Outcome {
        let r = self.reloader.clone();
        tokio::task::spawn_blocking(move || r.commit(c))
            .await
            .unwrap_or(Outcome::Failed)
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let settings = self.reloader.state.load().config.raw.reload.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Fs>();
        let fence = if settings.watch { Fence::new() } else { None };
        let fences = fence.as_ref().map(Fence::dir);
        let mut w = Watch {
            rx,
            edits: Edits::default(),
            debounce: Duration::from_millis(settings.debounce_ms),
            fence,
            pending: false,
            warned: false,
        };
        let mut watcher = if settings.watch {
            self.watcher(tx.clone(), fences.clone())
        } else {
            None
        };
        if watcher.is_none() {
            w.fence = None;
        }
        let mut watching = self.reloader.watch_plan();
        let mut watched = dir_identities(&watching.0);
        // A change made between the first load and the watcher's start has no event: compare.
        if watcher.is_some() && self.disk_changed().await {
            self.settle_and_reload("watch", false, &mut w).await;
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
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(ev) = w.rx.recv() => {
                    // A close resumes a settle that waited for it.
                    if w.edits.note(&ev) || w.pending {
                        self.settle_and_reload("watch", false, &mut w).await;
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    self.settle_and_reload("sighup", true, &mut w).await;
                }
                _ = poll.tick(), if settings.poll_seconds > 0 => {
                    // A missed event: the poll obeys the same settle rule as the watcher.
                    if w.pending || self.disk_changed().await {
                        self.settle_and_reload("poll", false, &mut w).await;
                    } else {
                        // Nothing to load; this still tells `/status` when the files on disk
                        // are the set in force again. It never loads: only a settled read may.
                        let r = self.reloader.clone();
                        let _ = tokio::task::spawn_blocking(move || r.confirm_unchanged("poll")).await;
                    }
                }
            }
            // New files may live in new directories: watch what the new snapshot names. And a
            // watched directory that was replaced, re-created or reached through a swapped
            // symlink (`mv rules.new rules`) is another directory: its watch was dropped with
            // the old one, and in-place edits in it would go unseen. Only when either changed,
            // and the new watcher starts before the old one stops, so no event falls between.
            //
            // An edit made in a new directory before its watch started made no event: once
            // watched, the files on disk are compared with the set in force, and read if they
            // differ (a few rounds at most: a set read then may name other directories).
            if settings.watch {
                for _ in 0..3 {
                    let plan = self.reloader.watch_plan();
                    let ids = dir_identities(&plan.0);
                    if plan == watching && ids == watched {
                        break;
                    }
                    tracing::debug!(dirs = ?plan.0, "watching the set's directories anew");
                    let next = self.watcher(tx.clone(), fences.clone());
                    drop(std::mem::replace(&mut watcher, next));
                    watching = plan;
                    watched = ids;
                    if !self.disk_changed().await {
                        break;
                    }
                    self.settle_and_reload("watch", false, &mut w).await;
                }
            }
        }
    }
}
