//! Load with many distinct tokens: a steady stream of users, each sending a few requests with
//! its own token over a minute, at a fixed request rate, against a running gateway. Reports
//! per interval the latency (from when each request was due), the token cache's hit ratio,
//! the gateway's mean decision time and its slow decisions and upstream answers (from its
//! metrics), its resident memory and CPU, and this client's own CPU; then the steady state.
//!
//! `benches/load/many-tokens.sh` starts the gateway and an upstream and runs this twice: with
//! one token repeated (the baseline) and with the token population.

// A command-line report: its output is the point.
#![allow(clippy::print_stdout)]

mod gateway_metrics;
mod pacer;
mod probe;
mod schedule;
mod stats;
mod tokens;

use bytes::Bytes;
use clap::Parser;
use gateway_metrics::{scrape, Counters, SLOW_DECISION, SLOW_UPSTREAM};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use schedule::{Interleave, Pattern, Slot};
use stats::{rss_mib, CpuTicks, Latencies};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokens::{Minter, Tokens};

#[derive(Parser, Debug)]
struct Args {
    /// Gateway address, host:port.
    #[arg(long)]
    gateway: String,
    /// Request path.
    #[arg(long)]
    path: String,
    /// The gateway's admin address (its /metrics is read each interval).
    #[arg(long)]
    admin: String,
    /// The gateway's process id (its resident memory is read from /proc).
    #[arg(long)]
    pid: u32,
    /// Distinct tokens, each used `uses` times: the run sends tokens × uses requests.
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    #[arg(long, default_value_t = 10)]
    uses: u64,
    /// Seconds over which one token's uses are spread.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Requests per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Connections (kept alive).
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// One token for every request, for `seconds` (the baseline).
    #[arg(long)]
    single: bool,
    /// Length of a `--single` run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 10)]
    report: u64,
    /// Seconds left out of the steady state at the start (default: one window).
    #[arg(long)]
    warmup: Option<u64>,
    /// After the warm-up, every Nth report interval carries one repeated token instead of the
    /// population (0: never): a baseline under the same host and process state as the
    /// population, seconds apart (see `schedule::Interleave`).
    #[arg(long, default_value_t = 0)]
    interleave: u64,
    /// Release requests every this many microseconds, from a thread of its own (see
    /// `pacer.rs`); 0: with tokio's timer, which releases every request due within a
    /// millisecond at once.
    #[arg(long, default_value_t = 0)]
    pace_us: u64,
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// Signing key (PEM; the secret itself for HS256).
    #[arg(long)]
    key: std::path::PathBuf,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    iss: String,
    #[arg(long, default_value = "api")]
    aud: String,
    /// Further claims, a JSON object.
    #[arg(long, default_value = "{}")]
    claims: String,
}

/// What the connections share (one thread: no locks).
struct Shared {
    /// Releases requests finer than tokio's timer, when `--pace-us` is given.
    pacer: Option<Arc<pacer::Pacer>>,
    pattern: Pattern,
    interleave: Interleave,
    single: bool,
    total: u64,
    /// The index of the repeated token of the interleaved blocks.
    reference: u64,
    next: Cell<u64>,
    started: Instant,
    tokens: RefCell<Tokens>,
    interval: RefCell<Latencies>,
    /// The interleaved blocks' requests of this interval.
    interval_reference: RefCell<Latencies>,
    /// The population's requests of this interval that carried a token's first use (the
    /// gateway checks its signature), also counted in `interval`.
    interval_first: RefCell<Latencies>,
    failures: Cell<u64>,
    /// When the last answer came.
    finished: Cell<Instant>,
    errors: RefCell<Vec<String>>,
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&rt, run(args)) {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("token_churn: {msg}");
    std::process::exit(1)
}

async fn run(args: Args) -> Result<(), String> {
    let alg: jsonwebtoken::Algorithm = args.alg.parse().map_err(|_| "unknown --alg")?;
    let key = std::fs::read(&args.key).map_err(|e| format!("{}: {e}", args.key.display()))?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&args.claims).map_err(|e| format!("--claims: {e}"))?;
    let minter = Minter::new(
        alg,
        &key,
        args.kid.clone(),
        args.iss.clone(),
        args.aud.clone(),
        claims,
    )?;
    let pattern = Pattern {
        rate: args.rate,
        uses: args.uses,
        window: args.window,
    };
    let warmup = Duration::from_secs(args.warmup.unwrap_or(if args.single {
        args.report
    } else {
        args.window
    }));
    let interleave = if args.single || args.interleave < 2 {
        Interleave::off()
    } else {
        let report = args.report.max(1);
        Interleave {
            block: args.rate * report,
            warm: warmup.as_secs().div_ceil(report),
            every: args.interleave,
        }
    };
    let total = if args.single {
        args.rate * args.seconds
    } else {
        interleave.requests(args.tokens * args.uses)
    };
    // Every token is signed before the clock starts (see tokens.rs); the reference token,
    // when there is one, last.
    let minted = if args.single {
        1
    } else {
        args.tokens + u64::from(interleave.every > 0)
    };
    let tokens = Tokens::mint(&minter, minted)?;
    // Built before the clock starts too: shuffling its 64 MiB takes about a second.
    let memory_ns = start_probe(args.report);
    let started = Instant::now() + Duration::from_millis(200);
    let pacer = (args.pace_us > 0).then(|| {
        pacer::Pacer::start(
            started,
            step(args.rate),
            Duration::from_micros(args.pace_us),
            total,
        )
    });
    let shared = Rc::new(Shared {
        pattern,
        interleave,
        single: args.single,
        total,
        reference: args.tokens,
        next: Cell::new(0),
        started,
        pacer,
        tokens: RefCell::new(tokens),
        interval: RefCell::new(Latencies::default()),
        interval_reference: RefCell::new(Latencies::default()),
        interval_first: RefCell::new(Latencies::default()),
        failures: Cell::new(0),
        finished: Cell::new(Instant::now()),
        errors: RefCell::new(Vec::new()),
    });
    let (rss0, _) = rss_mib(args.pid).ok_or("the gateway's /proc status is unreadable")?;
    let counts0 = scrape(&args.admin).await?;
    print_heading(&args, &pattern, total, rss0);

    let mut conns = Vec::new();
    for _ in 0..args.conns {
        let s = shared.clone();
        let gw = args.gateway.clone();
        let path = args.path.clone();
        conns.push(tokio::task::spawn_local(async move {
            connection(s, gw, path).await
        }));
    }
    let steady = report(&args, &shared, &conns, warmup, counts0, rss0, &memory_ns).await?;
    for c in conns {
        c.await.map_err(|e| e.to_string())??;
    }
    print_summary(&args, &shared, steady, warmup, rss0);
    for e in shared.errors.borrow().iter().take(5) {
        eprintln!("error: {e}");
    }
    if shared.failures.get() > 0 {
        return Err(format!(
            "{} requests were not answered 200",
            shared.failures.get()
        ));
    }
    Ok(())
}

/// The host's memory speed (see `probe.rs`), measured every `every` seconds on a thread of its
/// own: the latest value, in nanoseconds per load as `f64` bits; 0 until the first.
fn start_probe(every: u64) -> Arc<AtomicU64> {
    let latest = Arc::new(AtomicU64::new(0));
    let out = latest.clone();
    let mut p = probe::Probe::new(0x9e37_79b9_7f4a_7c15);
    std::thread::spawn(move || loop {
        out.store(p.ns_per_load().to_bits(), Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(every.max(1)));
    });
    latest
}

/// What the run is, before its table.
fn print_heading(args: &Args, pattern: &Pattern, total: u64, rss0: f64) {
    println!(
        "{} requests at {} req/s over {} connections; {}",
        total,
        args.rate,
        args.conns,
        if args.single {
            "one token".to_string()
        } else {
            format!(
                "{} tokens × {} uses over {} s (working set {} tokens){}",
                args.tokens,
                args.uses,
                args.window,
                pattern.working_set(),
                if args.interleave >= 2 {
                    format!(
                        "; one interval in {} after the warm-up carries one repeated token instead (load \"one\"), the population pausing",
                        args.interleave
                    )
                } else {
                    String::new()
                }
            )
        }
    );
    println!(
        "requests released {}",
        if args.pace_us > 0 {
            format!("every {} µs by a pacing thread", args.pace_us)
        } else {
            "by tokio's millisecond timer".to_string()
        }
    );
    println!("gateway resident memory before: {rss0:.1} MiB\n");
    println!(
        "| s | req/s | p50 ms | p99 ms | p99.9 ms | cache hit ratio | live tokens | RSS MiB | gateway CPU % | steal % | decision µs (mean) | decisions > {} ms | upstream > {} ms | client CPU % | host memory ns/load | load | upstream µs (mean) |",
        ms(SLOW_DECISION),
        ms(SLOW_UPSTREAM)
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
}

/// The totals and the steady state, after the table.
fn print_summary(args: &Args, shared: &Shared, steady: Steady, warmup: Duration, rss0: f64) {
    let total = shared.total;
    let (rss, hwm) = rss_mib(args.pid).unwrap_or((0.0, 0.0));
    let elapsed = shared
        .finished
        .get()
        .duration_since(shared.started)
        .as_secs_f64();
    let Steady {
        latencies: mut steady,
        mut reference,
        mut first_uses,
        counts,
        peak_rss,
        steal_max,
    } = steady;
    println!();
    println!(
        "sent {} requests in {:.1} s ({:.0} req/s); not 200: {}; tokens used: {}",
        total,
        elapsed,
        total as f64 / elapsed,
        shared.failures.get(),
        shared.tokens.borrow().used()
    );
    println!(
        "steady state (after {} s): {} requests, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, cache hit ratio {}",
        warmup.as_secs(),
        steady.len(),
        steady.quantile_ms(0.5),
        steady.quantile_ms(0.99),
        steady.quantile_ms(0.999),
        ratio(counts.cache_hits, counts.cache_misses)
    );
    if first_uses.len() > 0 {
        // Where the population's tail is: in the requests whose token is new to the gateway
        // (each waits for its own signature check), or in all of them alike.
        println!(
            "of which a token's first use: {} requests, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
            first_uses.len(),
            first_uses.quantile_ms(0.5),
            first_uses.quantile_ms(0.99),
            first_uses.quantile_ms(0.999)
        );
    }
    if reference.len() > 0 {
        println!(
            "interleaved blocks of one repeated token (one interval in {}) at steady state: {} requests, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
            args.interleave,
            reference.len(),
            reference.quantile_ms(0.5),
            reference.quantile_ms(0.99),
            reference.quantile_ms(0.999)
        );
    }
    println!(
        "the gateway's decisions at steady state: {} (mean {:.1} µs), {} slower than {} ms; upstream answers slower than {} ms: {}",
        counts.decisions,
        counts.mean_decision_us(),
        counts.slow_decisions,
        ms(SLOW_DECISION),
        ms(SLOW_UPSTREAM),
        counts.slow_upstream
    );
    println!(
        "gateway resident memory: before {rss0:.1} MiB, largest sampled {peak_rss:.1} MiB, now {rss:.1} MiB, peak (VmHWM) {hwm:.1} MiB"
    );
    println!(
        "most CPU time stolen by the hypervisor in one steady-state interval: {steal_max:.1} %"
    );
    println!(
        "RESULT p99_ms={:.3} hwm_mib={:.1} rss0_mib={:.1} steal_max={:.1}{}",
        steady.quantile_ms(0.99),
        hwm,
        rss0,
        steal_max,
        if reference.len() > 0 {
            format!(" p99_one_ms={:.3}", reference.quantile_ms(0.99))
        } else {
            String::new()
        }
    );
}

/// What the steady state measured.
struct Steady {
    /// The population's requests (all of them in a run without interleaving).
    latencies: Latencies,
    /// The interleaved blocks' requests.
    reference: Latencies,
    /// The population's requests that carried a token's first use.
    first_uses: Latencies,
    /// The gateway's counters over the steady state.
    counts: Counters,
    peak_rss: f64,
    /// The largest share of CPU time stolen by the hypervisor in one steady-state interval.
    steal_max: f64,
}

/// Prints a line per interval until every connection is done; returns the steady state.
async fn report(
    args: &Args,
    shared: &Shared,
    conns: &[tokio::task::JoinHandle<Result<(), String>>],
    warmup: Duration,
    counts0: Counters,
    rss0: f64,
    memory_ns: &AtomicU64,
) -> Result<Steady, String> {
    let total = shared.total;
    let mut steady = Latencies::default();
    let mut steady_reference = Latencies::default();
    let mut steady_first = Latencies::default();
    let mut last = (Instant::now(), 0u64, counts0);
    // Intervals are counted from the first report's start; `warmup` is a whole number of them.
    let mut interval = 0u64;
    let mut peak_rss = rss0;
    let mut steady_counts = None;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut ticks = CpuTicks::read(args.pid).unwrap_or_default();
    // This client's own CPU: it shares a core with the upstream, and a busy client is late with
    // its requests (latency counts from when each was due, so its lateness shows as latency).
    let me = std::process::id();
    let mut my_ticks = CpuTicks::read(me).unwrap_or_default();
    let mut steal_max = 0f64;
    loop {
        // On the schedule's own clock, so an interval is one block of requests (an interleaved
        // block is one row of the table).
        let tick = shared.started + Duration::from_secs(args.report.max(1) * (interval + 1));
        tokio::time::sleep_until(tick.into()).await;
        let done = conns.iter().all(|c| c.is_finished());
        let mut lat = std::mem::take(&mut *shared.interval.borrow_mut());
        let mut lat_reference = std::mem::take(&mut *shared.interval_reference.borrow_mut());
        let lat_first = std::mem::take(&mut *shared.interval_first.borrow_mut());
        // A row shows the kind of request most of its interval carried (the few answered
        // after their block ended count in the next row, and in their own kind's totals).
        let reference_row = lat_reference.len() > lat.len();
        let load = if shared.single || reference_row {
            "one"
        } else {
            "many"
        };
        let shown = if reference_row {
            &mut lat_reference
        } else {
            &mut lat
        };
        let now = Instant::now();
        let sent = shared.next.get().min(total);
        let counts = scrape(&args.admin).await?;
        let delta = counts.since(&last.2);
        let (rss, _) = rss_mib(args.pid).unwrap_or((0.0, 0.0));
        peak_rss = peak_rss.max(rss);
        let now_ticks = CpuTicks::read(args.pid).unwrap_or_default();
        let (busy, steal) = now_ticks.since(&ticks, cpus);
        ticks = now_ticks;
        let now_mine = CpuTicks::read(me).unwrap_or_default();
        let (client_busy, _) = now_mine.since(&my_ticks, cpus);
        my_ticks = now_mine;
        let elapsed = now.duration_since(shared.started).as_secs_f64();
        println!(
            "| {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} | {:.0} | {} | {:.0} |",
            elapsed,
            (sent - last.1) as f64 / now.duration_since(last.0).as_secs_f64(),
            shown.quantile_ms(0.5),
            shown.quantile_ms(0.99),
            shown.quantile_ms(0.999),
            ratio(delta.cache_hits, delta.cache_misses),
            shared.tokens.borrow().live(),
            rss,
            busy,
            steal,
            delta.mean_decision_us(),
            delta.slow_decisions,
            delta.slow_upstream,
            client_busy,
            f64::from_bits(memory_ns.load(Ordering::Relaxed)),
            load,
            delta.mean_upstream_us()
        );
        // Only whole intervals after the warm-up count as the steady state.
        if interval * args.report >= warmup.as_secs() {
            if steady_counts.is_none() {
                steady_counts = Some(last.2);
            }
            steady.extend(&lat);
            steady_reference.extend(&lat_reference);
            steady_first.extend(&lat_first);
            steal_max = steal_max.max(steal);
        }
        last = (now, sent, counts);
        interval += 1;
        if done {
            break;
        }
    }
    Ok(Steady {
        latencies: steady,
        reference: steady_reference,
        first_uses: steady_first,
        counts: last.2.since(&steady_counts.unwrap_or(counts0)),
        peak_rss,
        steal_max,
    })
}

/// A bound in seconds (as the metrics spell it) in milliseconds.
fn ms(seconds: &str) -> f64 {
    seconds.parse::<f64>().map_or(0.0, |s| s * 1000.0)
}

fn ratio(hit: u64, miss: u64) -> String {
    if hit + miss == 0 {
        return "n/a".into();
    }
    format!("{:.3}", hit as f64 / (hit + miss) as f64)
}

/// The time between two requests' due times.
fn step(rate: u64) -> Duration {
    Duration::from_nanos(1_000_000_000 / rate.max(1))
}

/// One kept-alive connection sending the requests it takes from the shared schedule.
async fn connection(s: Rc<Shared>, gateway: String, path: String) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(&gateway)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(conn);
    let step = step(s.pattern.rate);
    loop {
        let i = s.next.get();
        if i >= s.total {
            return Ok(());
        }
        s.next.set(i + 1);
        let due = s.started + step * (i as u32);
        // Measured from when the request was due, unless this connection was idle and the
        // timer woke it late (its millisecond tick is the client's delay, not the gateway's).
        let from = if Instant::now() < due {
            match &s.pacer {
                Some(p) => p.until(i).await,
                None => tokio::time::sleep_until(due.into()).await,
            }
            Instant::now()
        } else {
            due
        };
        let slot = s.interleave.at(i);
        let (bearer, first_use) = match slot {
            _ if s.single => (s.tokens.borrow_mut().take(0, 0, u64::MAX)?, false),
            Slot::Reference => (s.tokens.borrow_mut().take(s.reference, 0, u64::MAX)?, false),
            Slot::Population(p) => {
                let (n, round) = s.pattern.token_of(p);
                let first = s.tokens.borrow().is_new(n);
                (s.tokens.borrow_mut().take(n, round, s.pattern.uses)?, first)
            }
        };
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, gateway.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let into = match slot {
            Slot::Reference => &s.interval_reference,
            Slot::Population(_) => &s.interval,
        };
        let us = from.elapsed().as_micros() as u64;
        into.borrow_mut().record(us);
        if first_use {
            s.interval_first.borrow_mut().record(us);
        }
        s.finished.set(Instant::now());
        if status != http::StatusCode::OK {
            s.failures.set(s.failures.get() + 1);
            let mut errors = s.errors.borrow_mut();
            if errors.len() < 5 {
                errors.push(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
        }
    }
}
