//! Hot reload: watch -> settle -> read and build -> confirm -> swap. A bad change never
//! replaces a good set; a half-written one is never loaded; a request keeps the snapshot it
//! started with.
//!
//! Files are watched through their directories, so editors' atomic renames and Kubernetes
//! ConfigMap `..data` symlink swaps are seen. Only content events count (create, write, remove,
//! rename; never access or open: the gateway's own reads would wake it forever), and only on
//! the files of the set. An event only means "maybe changed". The settle rule
//! ([`service`]): a quiet period (`reload.debounce_ms` with no further event) with no file of
//! the set still open for writing; then a read of every file of the set, kept only if every
//! file's identity (size, modification time, inode) and the content hash are the same before and
//! after it; then the kernel is asked whether any file of the set is open for writing
//! ([`writers`]); then no event at all may arrive until the watcher has reported everything
//! queued before that moment ([`fence`]); then, the files still as read, the swap. The last two
//! steps exist because a read cannot tell a writer that paused mid-file from one that finished:
//! only the kernel's count of writers can, or the writer's own events, which a busy machine may
//! deliver after the read. A file deleted and written again within the quiet period is one
//! edit. The periodic poll and SIGHUP obey the same rule.

mod events;
mod fence;
mod reloader;
mod service;
mod status;
mod writers;

pub use reloader::{Outcome, Reloader};
pub use service::ReloadService;
pub use status::{ReloadStatus, StatusView};
pub use writers::wait_before_first_load;
