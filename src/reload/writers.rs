//! Whether anyone has a file open for writing, asked of the kernel. File events cannot always
//! tell: a writer stalled inside `open(O_TRUNC)` has already emptied the file while its event is
//! not yet queued (the kernel queues it when the truncation returns), and a read in that stall
//! sees an empty file that no event contradicts. The kernel's own count of writers can: a read
//! lease (`F_SETLEASE`, `F_RDLCK`) is refused with `EAGAIN` while the file is open for writing
//! by any process, and the count is taken when the writer's open starts, before it truncates.
//! The lease is released at once; it is a question, not a lock.

use crate::inputs::Inputs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the kernel says about a file's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writers {
    /// Open for writing by some process now.
    Open,
    /// Nobody has it open for writing now.
    None,
    /// The kernel would not say: no lease allowed here (another owner without `CAP_LEASE`,
    /// a file system without leases, leases disabled), or not Linux.
    Unknown,
}

/// Asks the kernel whether `path` is open for writing. A missing file has no writers.
pub(super) fn of(path: &Path) -> Writers {
    let file = match crate::set_file::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Writers::None,
        Err(_) => return Writers::Unknown,
    };
    lease::probe(&file)
}

/// The files of the set at `config` open for writing now, and those the kernel would not say
/// about.
fn writers_in_set(config: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut open, mut unknown) = (Vec::new(), Vec::new());
    for f in Inputs::find(config).inputs.files() {
        match of(f) {
            Writers::Open => open.push(f.to_path_buf()),
            Writers::Unknown => unknown.push(f.to_path_buf()),
            Writers::None => {}
        }
    }
    (open, unknown)
}

/// Before the first load: waits, at most `max`, while a file of the set is open for writing, so
/// that a gateway started in the middle of an edit does not begin with half a file. The files
/// still open after `max`.
///
/// Where the kernel will not say (the usual case in a container that runs as a user other than
/// the files' owner, such as a Kubernetes ConfigMap mounted into a non-root pod), this is said
/// once, at info level: such files are not waited for here, and a reload waits for their
/// writers by file events alone (a writer's close, which inotify reports). A ConfigMap is
/// swapped in whole by a symlink and is never seen half-written; a file edited in place is.
pub fn wait_before_first_load(config: &Path, max: Duration) -> Result<(), Vec<PathBuf>> {
    let deadline = Instant::now() + max;
    let mut told = false;
    let (mut open, unknown) = writers_in_set(config);
    if !unknown.is_empty() {
        tracing::info!(
            files = ?unknown,
            "the kernel will not say whether these files are open for writing (no file lease: \
             they belong to another user and the process lacks CAP_LEASE, or their file system \
             has no leases); they are not waited for at start, and reloads wait for their \
             writers by file events alone"
        );
    }
    loop {
        if open.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(open);
        }
        if !told {
            tracing::warn!(
                files = ?open,
                "a file of the set is open for writing; the first load waits for its close (at most {} s)",
                max.as_secs()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
        open = writers_in_set(config).0;
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod lease {
    use super::Writers;
    use std::os::fd::AsRawFd;

    /// `F_SETSIG` from Linux's `<fcntl.h>` (the same on every architecture); the `libc` crate
    /// does not export it.
    const F_SETSIG: libc::c_int = 10;

    pub(super) fn probe(file: &std::fs::File) -> Writers {
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is a file descriptor owned by `file`, open for the duration of these
        // calls; F_SETSIG and F_SETLEASE take an integer argument and touch no memory of ours.
        unsafe {
            // A writer opening the file in the microseconds the lease is held breaks it, and
            // the kernel then signals the holder: SIGIO by default, which would end the
            // process. SIGURG is ignored unless handled, and nothing here handles it.
            if libc::fcntl(fd, F_SETSIG, libc::SIGURG) == -1 {
                return Writers::Unknown;
            }
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == -1 {
                return match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) => Writers::Open,
                    _ => Writers::Unknown,
                };
            }
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
        }
        Writers::None
    }
}

#[cfg(not(target_os = "linux"))]
mod lease {
    use super::Writers;

    pub(super) fn probe(_file: &std::fs::File) -> Writers {
        Writers::Unknown
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_is_open_for_writing_exactly_while_a_writer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let unknown = of(&path) == Writers::Unknown;
        if unknown {
            // Leases need the file's owner or CAP_LEASE; the test creates the file, so only a
            // file system without leases gets here. Say so rather than pass silently.
            panic!("this file system refuses leases: the probe cannot be tested here");
        }
        assert_eq!(of(&path), Writers::None);
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(of(&path), Writers::Open);
        w.write_all(b"b = 2\n").unwrap();
        // Readers do not count.
        let _r = std::fs::File::open(&path).unwrap();
        assert_eq!(of(&path), Writers::Open);
        drop(w);
        assert_eq!(of(&path), Writers::None);
        assert_eq!(of(&dir.path().join("missing.toml")), Writers::None);
    }

    /// The start's wait, with a short bound in place of the gateway's 30 s: a file held open
    /// for the whole bound is named (and the gateway then refuses to start); one closed
    /// during the wait is loaded at its close, not at the bound.
    #[test]
    fn the_first_load_refuses_a_file_held_open_past_the_bound_and_waits_for_one_closed_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, "[listen]\n").unwrap();
        assert_eq!(wait_before_first_load(&config, Duration::ZERO), Ok(()));

        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .unwrap();
        let started = Instant::now();
        assert_eq!(
            wait_before_first_load(&config, Duration::from_millis(300)),
            Err(vec![config.clone()])
        );
        assert!(started.elapsed() >= Duration::from_millis(300));

        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(writer);
        });
        let started = Instant::now();
        assert_eq!(
            wait_before_first_load(&config, Duration::from_secs(10)),
            Ok(())
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        closer.join().unwrap();
    }
}
