//! What `/status` says about loading: the set in force, the last check's result, and what the
//! gateway waits for.

use crate::sync::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What `/status` shows about loading.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusView {
    pub generation: u64,
    pub content_hash: String,
    /// Unix time of the load in force.
    pub loaded_at: u64,
    pub load_millis: u64,
    /// `success`, `unchanged` (the files equal the set in force), `error`, `refused`,
    /// `unsettled` (the files changed while or just after they were read; tried again), or
    /// `waiting` (a file of the set is still open for writing; see `waiting_for`).
    pub last_result: &'static str,
    pub last_attempt_at: u64,
    /// Why the files on disk are not in force; `None` once they are (again).
    pub last_error: Option<String>,
    /// When an error was last seen, kept after it is cleared.
    pub last_error_at: Option<u64>,
    /// Whether the files on disk, at the last check, are the set in force.
    pub disk_matches_running: bool,
    pub restart_needed: Vec<String>,
    /// Files of the set written and not yet closed: nothing is loaded until they are.
    pub waiting_for: Vec<String>,
}

#[derive(Debug)]
pub struct ReloadStatus {
    generation: AtomicU64,
    view: Mutex<StatusView>,
}

impl ReloadStatus {
    /// The status of the first load, as generation 1.
    pub(super) fn first(view: StatusView) -> ReloadStatus {
        ReloadStatus {
            generation: AtomicU64::new(1),
            view: Mutex::new(view),
        }
    }

    pub fn view(&self) -> StatusView {
        lock(&self.view).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Counts a new snapshot in force; its generation.
    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut lock(&self.view));
    }
}
