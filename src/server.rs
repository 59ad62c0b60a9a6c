//! Assembles the Pingora server from a loaded configuration.

use crate::admin::AdminApp;
use crate::auth::remote::RemoteRegistry;
use crate::echo::EchoApp;
use crate::key_refresh::KeyRefreshService;
use crate::location::SourceErrors;
use crate::proxy::{ClaimgateProxy, Clock};
use crate::reload::{ReloadService, Reloader};
use crate::telemetry::Metrics;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(SourceErrors),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server: {0}")]
    Server(String),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("{} still open for writing after {} s: not starting with a file being written (close it, or write a temporary file and rename it into place)", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), FIRST_LOAD_WAIT.as_secs())]
    BeingWritten(Vec<std::path::PathBuf>),
}

impl StartError {
    fn being_written(files: Vec<std::path::PathBuf>) -> StartError {
        StartError::BeingWritten(files)
    }
}

/// How long the first load waits for a file of the set that is open for writing.
const FIRST_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a stop may take beyond the grace period and the shutdown timeout before the watchdog
/// ends the process.
pub const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// After SIGTERM or SIGINT the process ends within `grace + timeout +` [`STOP_MARGIN`] (SIGINT:
/// `timeout +` the margin), even if a runtime never finishes: Pingora waits for its runtimes
/// without a bound, and one was seen spinning in its accept loop. Exit status 1 then.
fn stop_watchdog(grace_seconds: u64, timeout_seconds: u64) {
    use tokio::signal::unix::{signal, SignalKind};
    let spawned = std::thread::Builder::new()
        .name("claimgate stop watchdog".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                let graceful = tokio::select! {
                    _ = term.recv() => true,
                    _ = int.recv() => false,
                };
                let grace = if graceful { grace_seconds } else { 0 };
                let bound = std::time::Duration::from_secs(grace + timeout_seconds) + STOP_MARGIN;
                tokio::time::sleep(bound).await;
                tracing::error!(
                    bound_seconds = bound.as_secs(),
                    "the shutdown did not finish within its bound; exiting now"
                );
                std::process::exit(1);
            });
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no stop watchdog: a shutdown that hangs is not ended");
    }
}

/// Built in code: Pingora only reads thread counts and timeouts given at construction. The
/// grace period is spent before Pingora hears of the stop (drain.rs); Pingora's own "grace
/// period" is the time requests in flight get after its listeners close, and its runtimes then
/// get a second to let go.
fn server_conf(settings: &crate::config::ServerSettings) -> ServerConf {
    ServerConf {
        threads: settings.threads.max(1),
        grace_period_seconds: Some(settings.graceful_shutdown_timeout_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: settings.work_stealing,
        upstream_keepalive_pool_size: settings.upstream_pool_size.max(1),
        // Every timeout of a second or more on tokio's timer wheel rather than Pingora's
        // "fast" timer, which keeps each one (every upstream read, every pooled connection's
        // idle wait: several per request) in a per-thread map of 10 ms buckets until its
        // deadline, even when cancelled at once. Measured in situ: see README, Performance.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}

/// What stops the server: SIGTERM through the drain, SIGINT at once.
fn run_args(drain: Arc<crate::drain::Drain>, settings: &crate::config::ServerSettings) -> RunArgs {
    RunArgs {
        shutdown_signal: Box::new(crate::drain::DrainSignal {
            drain,
            settings: crate::drain::DrainSettings {
                grace: Duration::from_secs(settings.grace_period_seconds),
                timeout: Duration::from_secs(settings.graceful_shutdown_timeout_seconds),
            },
        }),
    }
}

/// The built-in echo upstream: its address and, optionally, its demo data directory.
pub type EchoOptions = Option<(SocketAddr, Option<std::path::PathBuf>)>;

/// Runs the gateway until the process is signalled. `echo` also serves the built-in echo upstream
/// on that address.
pub fn run(config_path: &Path, echo: EchoOptions, clock: Clock) -> Result<(), StartError> {
    crate::crypto::self_test()?;
    let metrics = Arc::new(Metrics::new()?);
    let remote = Arc::new(RemoteRegistry::new(Some(metrics.clone())));
    crate::reload::wait_before_first_load(config_path, FIRST_LOAD_WAIT)
        .map_err(StartError::being_written)?;
    let loaded = crate::load::load(config_path, &remote).map_err(StartError::Invalid)?;
    crate::load::initial_key_fetch(&loaded.snapshot);
    let snapshot = &loaded.snapshot;
    let settings = snapshot.config.raw.server.clone();
    let proxy_addr = snapshot.config.proxy_addr;
    let admin_addr = snapshot.config.admin_addr;
    let tls_addr = snapshot.config.tls_addr;
    let limits = Arc::new(crate::limit_store::LimitStore::new(
        &snapshot.config.raw.rate_limits,
    ));
    tracing::info!(
        routes = snapshot.policy.routes.len(),
        issuers = snapshot.issuers.len(),
        proxy = %proxy_addr,
        admin = %admin_addr,
        "claimgate starting"
    );
    if let Clock::Fixed(t) = clock {
        tracing::warn!(
            fixed_now = %chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339(),
            "the clock is FIXED: token expiry and time rules use this instant, not the real time"
        );
    }
    let reloader = Arc::new(Reloader::new(loaded, metrics.clone(), remote.clone()));
    let drain = crate::drain::Drain::new();
    let state = reloader.state.clone();

    let conf = server_conf(&settings);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy_app = pingora::proxy::http_proxy(
        &server.configuration,
        ClaimgateProxy {
            state: state.clone(),
            metrics: metrics.clone(),
            clock,
            sources: crate::sources::SourceFetcher::new(Some(metrics.clone()))
                .map_err(|e| StartError::Server(format!("the HTTP client of `[sources]`: {e}")))?,
            limits: limits.clone(),
            drain: drain.clone(),
        },
    );
    // h2c is decided per connection by the head wrapper (and `listen.h2c`); Pingora only has to
    // accept the connections it is handed as h2c. An h2 connection on which no request is in
    // flight closes after the same minute an idle HTTP/1 keepalive connection gets.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    options.h2_idle_timeout = Some(std::time::Duration::from_secs(60));
    proxy_app.server_options = Some(options);
    let mut proxy = Service::new(
        "claimgate proxy".to_string(),
        crate::head_timeout::HeadTimeoutApp {
            inner: Arc::new(proxy_app),
            state: state.clone(),
            metrics: metrics.clone(),
            drain: drain.clone(),
        },
    );
    proxy.add_tcp(&proxy_addr.to_string());
    if let Some(addr) = tls_addr {
        let settings = crate::tls_listener::settings(state.clone()).map_err(StartError::Server)?;
        proxy.add_tls_with_settings(&addr.to_string(), None, settings);
    }
    server.add_service(proxy);

    let mut admin = Service::new(
        "claimgate admin".to_string(),
        AdminApp {
            state,
            metrics,
            status: reloader.status.clone(),
            started: SystemTime::now(),
            limits: limits.clone(),
            drain: drain.clone(),
        },
    );
    admin.add_tcp(&admin_addr.to_string());
    server.add_service(admin);
    server.add_service(background_service(
        "claimgate reload",
        ReloadService { reloader },
    ));
    server.add_service(background_service(
        "claimgate key refresh",
        KeyRefreshService { registry: remote },
    ));

    stop_watchdog(
        settings.grace_period_seconds,
        settings.graceful_shutdown_timeout_seconds,
    );
    if let Some((addr, data)) = echo {
        let mut svc = Service::new("claimgate echo upstream".to_string(), EchoApp { data });
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
        tracing::info!(echo = %addr, "built-in echo upstream listening");
    }
    server.run(run_args(drain, &settings));
    Ok(())
}
