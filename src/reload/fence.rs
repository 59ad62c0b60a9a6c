//! A fence through the file watcher's queue. After a read, the settle rule must know that every
//! event already queued before the read ended has been seen: a writer that paused mid-file just
//! as the read ran shows itself only by such an event, and a busy machine may deliver it late.
//! Waiting a fixed time is a guess; a fence is exact. The gateway creates a file in a private
//! directory the watcher also watches; the kernel queues its event behind every earlier one
//! (one queue per watcher, in order), so once it arrives, all earlier events have.

use std::path::{Path, PathBuf};

pub(super) struct Fence {
    dir: tempfile::TempDir,
    last: u64,
}

impl Fence {
    /// A private directory for fences; `None` where none can be made (a read-only file system
    /// without a writable temporary directory): then the settle rule waits by time alone.
    pub(super) fn new() -> Option<Fence> {
        match tempfile::Builder::new()
            .prefix("claimgate-reload-")
            .tempdir()
        {
            Ok(dir) => Some(Fence { dir, last: 0 }),
            Err(e) => {
                tracing::info!(
                    error = %e,
                    "no private temporary directory for reload fences; after a read, late file events are waited for by time alone"
                );
                None
            }
        }
    }

    pub(super) fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Sets a fence; its number, which the watcher reports as [`number`] once every event
    /// queued before it has been reported.
    pub(super) fn set(&mut self) -> Option<u64> {
        self.last += 1;
        let path = self.dir.path().join(self.last.to_string());
        std::fs::File::create(&path).ok()?;
        // Only the creation is the fence; the removal's event is ignored.
        let _ = std::fs::remove_file(&path);
        Some(self.last)
    }
}

/// The fence a created file in the fence directory `dir` stands for.
pub(super) fn number(dir: &Path, created: &Path) -> Option<u64> {
    if created.parent() != Some(dir) {
        return None;
    }
    created.file_name()?.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_numbered_files_of_their_own_directory() {
        let mut f = Fence::new().unwrap();
        assert_eq!(f.set(), Some(1));
        assert_eq!(f.set(), Some(2));
        let dir = f.dir();
        assert_eq!(number(&dir, &dir.join("2")), Some(2));
        assert_eq!(number(&dir, &dir.join("x")), None);
        assert_eq!(number(&dir, Path::new("/elsewhere/2")), None);
        // Set fences leave nothing behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
