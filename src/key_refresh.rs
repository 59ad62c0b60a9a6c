//! The background service that refreshes fetched key sets when they are due: the shell's side
//! of [`crate::auth::remote`], which itself knows nothing of Pingora.

use crate::auth::remote::RemoteRegistry;
use std::sync::Arc;
use std::time::Duration;

/// Refreshes every fetched key set when it is due, until shutdown.
pub struct KeyRefreshService {
    pub registry: Arc<RemoteRegistry>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for KeyRefreshService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    for r in self.registry.all() {
                        if r.is_due() {
                            // Errors are logged and counted inside; the last good keys stay.
                            let _ = r.refresh().await;
                        }
                    }
                }
            }
        }
    }
}
