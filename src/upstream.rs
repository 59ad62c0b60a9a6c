//! Named upstream pools from `gateway.toml`: addresses used round-robin and their timeouts.
//! Plain data; the proxy turns a pick into a connection.

use crate::config::Config;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub addresses: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    next: AtomicUsize,
}

impl Pool {
    /// The next address, round-robin.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addresses[i % self.addresses.len()]
    }
}

#[derive(Debug, Default)]
pub struct Upstreams {
    pools: HashMap<Arc<str>, Pool>,
}

impl Upstreams {
    /// Builds the pools. `Config` has already checked that every address resolves.
    pub fn from_config(config: &Config) -> Upstreams {
        let mut pools = HashMap::new();
        for (name, up) in &config.raw.upstreams {
            let up = up.get_ref();
            let addresses: Vec<SocketAddr> = up
                .addresses
                .iter()
                .filter_map(|a| a.get_ref().to_socket_addrs().ok()?.next())
                .collect();
            let name: Arc<str> = Arc::from(name.as_str());
            pools.insert(
                name.clone(),
                Pool {
                    name,
                    addresses,
                    tls: up.tls,
                    sni: up.sni.clone(),
                    connect_timeout: Duration::from_millis(up.connect_timeout_ms),
                    read_timeout: Duration::from_millis(up.read_timeout_ms),
                    idle_timeout: Duration::from_millis(up.idle_timeout_ms),
                    next: AtomicUsize::new(0),
                },
            );
        }
        Upstreams { pools }
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name).filter(|p| !p.addresses.is_empty())
    }
}
