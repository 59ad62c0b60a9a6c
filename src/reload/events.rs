//! What the file watcher reports, reduced to what the settle rule needs: which files of the set
//! changed, which are still open for writing, which were deleted and may come back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
pub(super) enum Fs {
    /// A content event: starts (or prolongs) a settle. `written`: a file whose data changed,
    /// open for writing until it is closed; `removed`: files gone, perhaps about to be written
    /// again (delete-then-recreate), so in flux until written and closed.
    Changed {
        written: Option<PathBuf>,
        removed: Vec<PathBuf>,
    },
    /// A file of the set was closed after writing: its writer is done with it.
    Closed(PathBuf),
    /// The watcher lost events (its queue overflowed): which files are open is unknown, and
    /// anything may have changed.
    Lost,
    /// A fence set by the gateway ([`super::fence`]): every event queued before it was reported.
    Fence(u64),
}

/// Turns a file-system event into what the settle rule needs, if anything.
pub(super) fn classify(
    event: &notify::Event,
    files: &[PathBuf],
    rules_dir: &Path,
    fences: Option<&Path>,
) -> Option<Fs> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    if event.need_rescan() {
        return Some(Fs::Lost);
    }
    if let (Some(dir), EventKind::Create(_)) = (fences, event.kind) {
        if let Some(n) = event
            .paths
            .iter()
            .find_map(|p| super::fence::number(dir, p))
        {
            return Some(Fs::Fence(n));
        }
    }
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
    // Only a file of the set may be written again (delete-then-recreate). A ConfigMap's old
    // `..<timestamp>` directory, removed after each swap, never comes back: waiting for it
    // held every ConfigMap update for the whole wait.
    let removed = match event.kind {
        EventKind::Remove(_) => event
            .paths
            .iter()
            .filter(|p| relevant(p))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    Some(Fs::Changed { written, removed })
}

/// Edits in progress: files written and not yet closed, files deleted and not yet written again.
#[derive(Default, Debug)]
pub(super) struct Edits {
    writing: BTreeSet<PathBuf>,
    removed: BTreeSet<PathBuf>,
}

impl Edits {
    /// Records `ev`; whether anything may have changed (a close changes nothing by itself).
    pub(super) fn note(&mut self, ev: &Fs) -> bool {
        match ev {
            Fs::Changed { written, removed } => {
                if let Some(p) = written {
                    self.removed.remove(p);
                    self.writing.insert(p.clone());
                }
                self.removed.extend(removed.iter().cloned());
                true
            }
            Fs::Closed(p) => {
                self.writing.remove(p);
                self.removed.remove(p);
                false
            }
            Fs::Fence(_) => false,
            Fs::Lost => {
                // The close that would end a write may be among the lost events: waiting for it
                // could wait forever. The checks after the read still guard the set.
                self.writing.clear();
                true
            }
        }
    }

    /// Records a file the kernel says is open for writing, whatever the events said.
    pub(super) fn open_for_writing(&mut self, path: PathBuf) {
        self.writing.insert(path);
    }

    /// Files written and not yet closed.
    pub(super) fn writing(&self) -> &BTreeSet<PathBuf> {
        &self.writing
    }

    pub(super) fn any_removed(&self) -> bool {
        !self.removed.is_empty()
    }

    /// Takes the deleted files as deleted (they did not come back in time).
    pub(super) fn forget_removed(&mut self) {
        self.removed.clear();
    }

    /// Gives up on the writers (a platform whose watcher reports no closes).
    pub(super) fn forget_writing(&mut self) {
        self.writing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(p: &str) -> Fs {
        Fs::Changed {
            written: Some(PathBuf::from(p)),
            removed: Vec::new(),
        }
    }

    #[test]
    fn a_file_is_open_for_writing_from_its_first_write_to_its_close() {
        let mut e = Edits::default();
        assert!(e.note(&written("/r/a.toml")));
        assert!(e.note(&written("/r/b.toml")));
        assert!(!e.note(&Fs::Closed(PathBuf::from("/r/a.toml"))));
        assert_eq!(
            e.writing().iter().collect::<Vec<_>>(),
            [&PathBuf::from("/r/b.toml")]
        );
        e.note(&Fs::Closed(PathBuf::from("/r/b.toml")));
        assert!(e.writing().is_empty());
    }

    #[test]
    fn a_deleted_file_is_in_flux_until_written_and_closed() {
        let mut e = Edits::default();
        e.note(&Fs::Changed {
            written: None,
            removed: vec![PathBuf::from("/r/a.toml")],
        });
        assert!(e.any_removed());
        e.note(&written("/r/a.toml"));
        assert!(!e.any_removed());
        assert!(!e.writing().is_empty());
        e.note(&Fs::Closed(PathBuf::from("/r/a.toml")));
        assert!(!e.any_removed() && e.writing().is_empty());
    }

    #[test]
    fn a_configmaps_old_directory_removed_is_a_change_not_a_file_in_flux() {
        use notify::event::{EventKind, RemoveKind};
        let rules = Path::new("/cm/rules");
        let files = [PathBuf::from("/cm/rules/a.toml")];
        let remove = |p: &str| {
            notify::Event::new(EventKind::Remove(RemoveKind::Any)).add_path(PathBuf::from(p))
        };
        let old_dir = classify(
            &remove("/cm/rules/..2026_12_05_01_02_03.1"),
            &files,
            rules,
            None,
        );
        let Some(Fs::Changed {
            written: None,
            removed,
        }) = old_dir
        else {
            panic!("{old_dir:?}");
        };
        assert!(removed.is_empty());
        let file = classify(&remove("/cm/rules/a.toml"), &files, rules, None);
        let Some(Fs::Changed { removed, .. }) = file else {
            panic!("{file:?}");
        };
        assert_eq!(removed, vec![PathBuf::from("/cm/rules/a.toml")]);
    }

    #[test]
    fn lost_events_forget_the_writers_and_count_as_a_change() {
        let mut e = Edits::default();
        e.note(&written("/r/a.toml"));
        assert!(e.note(&Fs::Lost));
        assert!(e.writing().is_empty());
    }
}
