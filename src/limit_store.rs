//! Where the counters of `[[route.limit]]`s live: this process (`memory`), or Redis, shared by
//! every replica. On Redis one server-side script applies a request's charges all or none with
//! the server's clock (no replica's clock, no read-then-write race between replicas). When
//! Redis cannot be asked within `rate_limits.timeout_ms`, each limit does what its
//! `on_store_error` says: count in this process at its limit divided by the replicas, allow
//! uncounted, or refuse with 503.
//!
//! Repeat offenders cost no round trip: a key Redis refused is remembered here as "over until
//! T" (T: when the refused cost fits again, from Redis's answer); until then a request with the
//! same limit and at least that cost is refused in process. Budgets only refill with time, so
//! this refuses nothing Redis would have allowed; a smaller cost, or a changed limit, asks
//! Redis. Entries live at most a minute (a limit raised meanwhile is seen within it).

use crate::config::{LimitStoreKind, RateLimitSettings};
use crate::ratelimit::memory::MemoryStore;
use crate::ratelimit::{gcra, Charge, Outcome, StoreFailMode};
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The GCRA step of `ratelimit::gcra` for every key of a request, applied only if all allow.
/// KEYS: the counters; ARGV: limit, window (ms), cost per key. Returns per key: allowed (1/0),
/// remaining, retry after (ms, -1: never), reset (ms), as strings (Lua numbers would be cut to
/// integers on the way out).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out, pending, new_tats, ttls = {}, {}, {}, {}
local all = true
for i = 1, #KEYS do
  local limit = tonumber(ARGV[(i - 1) * 3 + 1])
  local window = tonumber(ARGV[(i - 1) * 3 + 2])
  local cost = tonumber(ARGV[(i - 1) * 3 + 3])
  local key = KEYS[i]
  local interval = window / limit
  local tat = pending[key]
  if not tat then
    local v = redis.call('GET', key)
    if v then tat = tonumber(v) end
  end
  local base = now
  if tat and tat > now then base = tat end
  -- A TAT stored under a longer window (a reload shortened it) counts as a spent window.
  if base > now + window then base = now + window end
  local new_tat = base + cost * interval
  local allow_at = new_tat - window
  if now + interval * 1e-9 >= allow_at then
    pending[key] = new_tat
    new_tats[i] = new_tat
    ttls[i] = new_tat - now
    local remaining = (window - (new_tat - now)) / interval
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = '1'
    out[#out + 1] = string.format('%.6f', remaining)
    out[#out + 1] = '-1'
    out[#out + 1] = string.format('%.3f', new_tat - now)
  else
    all = false
    local remaining = (window - (base - now)) / interval
    if remaining < 0 then remaining = 0 end
    local retry = '-1'
    if cost <= limit then retry = string.format('%.3f', allow_at - now) end
    out[#out + 1] = '0'
    out[#out + 1] = string.format('%.6f', remaining)
    out[#out + 1] = retry
    out[#out + 1] = string.format('%.3f', base - now)
  end
end
if all then
  for i = 1, #KEYS do
    if new_tats[i] then
      redis.call('SET', KEYS[i], string.format('%.3f', new_tats[i]), 'PX', math.ceil(ttls[i]) + 1000)
    end
  end
end
return out
";

/// Counter keys in Redis: a prefix, then the digest of route, limit and key value.
const PREFIX: &str = "claimgate:limit:";

/// What charging a request's limits gave.
#[derive(Debug)]
pub enum Charged {
    Outcomes(Vec<Outcome>),
    /// The store could not be asked and this limit fails closed.
    Unavailable(Arc<str>),
}

pub struct LimitStore {
    /// The counters of `memory`, and of `local` while Redis cannot be asked.
    local: MemoryStore,
    redis: Option<Redis>,
    replicas: f64,
    timeout: Duration,
}

/// A key Redis refused: until when the refused cost cannot fit, and what was known then.
#[derive(Debug, Clone, Copy)]
struct Over {
    until: Instant,
    limit: f64,
    window_ms: u64,
    cost: f64,
    remaining: f64,
    /// Whether waiting helps (a cost over the whole limit never fits).
    retry: bool,
}

/// How long an "over the limit" memory lives at most, and how many keys it holds.
const OVER_TTL: Duration = Duration::from_secs(60);
const OVER_KEYS: u64 = 100_000;

struct Redis {
    client: redis::Client,
    over: moka::sync::Cache<String, Over>,
    conn: ArcSwapOption<ConnectionManager>,
    /// Held while a connection is being made: requests arriving meanwhile wait for it rather
    /// than count on their own (which would let a burst at start past the shared limit).
    connecting: tokio::sync::Mutex<()>,
    /// When the last connection attempt started (ms since the store was made).
    last_attempt_ms: AtomicU64,
    script: redis::Script,
    made: Instant,
    /// Whether the last call failed (a switch is logged once, not per request).
    failing: AtomicBool,
}

/// Fresh connection attempts while Redis is down: at most one per this interval.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

impl LimitStore {
    pub fn new(settings: &RateLimitSettings) -> LimitStore {
        let redis = match (settings.store, &settings.redis_url) {
            (LimitStoreKind::Redis, Some(url)) => match redis::Client::open(url.get_ref().as_str())
            {
                Ok(client) => Some(Redis {
                    client,
                    over: moka::sync::Cache::builder()
                        .max_capacity(OVER_KEYS)
                        .time_to_live(OVER_TTL)
                        .build(),
                    conn: ArcSwapOption::empty(),
                    connecting: tokio::sync::Mutex::new(()),
                    last_attempt_ms: AtomicU64::new(0),
                    script: redis::Script::new(SCRIPT),
                    made: Instant::now(),
                    failing: AtomicBool::new(false),
                }),
                // Checked by the loader; unreachable in practice, and the limits still count.
                Err(e) => {
                    tracing::error!(error = %e, "rate_limits.redis_url: counting in this process");
                    None
                }
            },
            _ => None,
        };
        LimitStore {
            local: MemoryStore::default(),
            redis,
            replicas: f64::from(settings.replicas.max(1)),
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
        }
    }

    /// Charges a request's limits. `now_ms` is the gateway's clock, used by the in-process
    /// counters; Redis uses its own.
    pub async fn charge(&self, charges: &[Charge], now_ms: f64) -> Charged {
        let Some(redis) = &self.redis else {
            return Charged::Outcomes(self.local.charge(charges, now_ms));
        };
        // A limit of zero refuses without asking anyone.
        if charges.iter().any(|c| c.limit <= 0.0) {
            return Charged::Outcomes(crate::ratelimit::memory::decide(charges, now_ms, |_| None));
        }
        if let Some(refused) = redis.known_over(charges) {
            crate::telemetry::LIMIT_LOCAL_REFUSALS.inc();
            return Charged::Outcomes(refused);
        }
        let started = Instant::now();
        let asked = match redis.connection(self.timeout).await {
            Some(mut conn) => {
                tokio::time::timeout(self.timeout, invoke(&redis.script, &mut conn, charges))
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|r| r)
            }
            None => Err("not connected".to_string()),
        };
        crate::telemetry::LIMIT_STORE_SECONDS.observe(started.elapsed().as_secs_f64());
        match asked.and_then(|steps| outcomes(charges, &steps)) {
            Ok(o) => {
                if redis.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limit store answering again: shared counting resumed");
                }
                redis.remember_over(charges, &o, started);
                Charged::Outcomes(o)
            }
            Err(e) => {
                crate::telemetry::LIMIT_STORE_ERRORS.inc();
                if !redis.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limit store unavailable: limits follow their on_store_error");
                }
                self.fallback(charges, now_ms)
            }
        }
    }

    /// Whether the shared store can count within the timeout (always, without one): the
    /// charging script itself, at no cost, on a key of its own that expires in seconds. A
    /// PING would pass on a store that refuses every charge: a read-only replica after a
    /// failover, a store out of memory, a cluster node that owns other keys. A missing
    /// connection is attempted, so a replica kept out of rotation by this still connects.
    pub async fn reachable(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let Some(mut conn) = redis.connection(self.timeout).await else {
            return false;
        };
        let probe = [Charge {
            name: Arc::from("readiness"),
            // Not a digest (those are hex): no counter of a limit is ever this key.
            key: "readiness-probe".to_string(),
            limit: 1.0,
            window_ms: 1000,
            cost: 0.0,
            on_store_error: StoreFailMode::Closed,
        }];
        let counted = invoke(&redis.script, &mut conn, &probe);
        match tokio::time::timeout(self.timeout, counted).await {
            Ok(Ok(fields)) => outcomes(&probe, &fields).is_ok(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "rate limit store cannot count");
                false
            }
            Err(_) => false,
        }
    }

    /// Each limit's `on_store_error`: `closed` refuses the request; `local` counts here at its
    /// share of the limit; `open` passes uncounted.
    fn fallback(&self, charges: &[Charge], now_ms: f64) -> Charged {
        let count = |mode: StoreFailMode| {
            crate::telemetry::LIMIT_STORE_FALLBACKS
                .with_label_values(&[mode.label()])
                .inc();
        };
        if let Some(c) = charges
            .iter()
            .find(|c| c.on_store_error == StoreFailMode::Closed)
        {
            count(StoreFailMode::Closed);
            return Charged::Unavailable(c.name.clone());
        }
        for c in charges {
            count(c.on_store_error);
        }
        let local: Vec<Charge> = charges
            .iter()
            .filter(|c| c.on_store_error == StoreFailMode::Local)
            .map(|c| Charge {
                limit: c.limit / self.replicas,
                ..c.clone()
            })
            .collect();
        let mut counted = self.local.charge(&local, now_ms).into_iter();
        let outcomes = charges
            .iter()
            .map(|c| match c.on_store_error {
                StoreFailMode::Local => counted.next().unwrap_or_else(|| uncounted(c)),
                _ => uncounted(c),
            })
            .collect();
        Charged::Outcomes(outcomes)
    }
}

/// An allowed outcome that was not counted (`open` while the store is down).
fn uncounted(c: &Charge) -> Outcome {
    Outcome {
        name: c.name.clone(),
        limit: c.limit,
        window_ms: c.window_ms,
        cost: c.cost,
        step: gcra::Step {
            allowed: true,
            remaining: c.limit,
            retry_after_ms: None,
            reset_ms: 0.0,
            store: None,
        },
    }
}

impl Redis {
    /// The whole request's outcomes when one of its charges is known to be over its limit.
    fn known_over(&self, charges: &[Charge]) -> Option<Vec<Outcome>> {
        let now = Instant::now();
        let over = charges.iter().find_map(|c| {
            let o = self.over.get(&c.key)?;
            (o.until > now && o.limit == c.limit && o.window_ms == c.window_ms && c.cost >= o.cost)
                .then_some((c, o))
        })?;
        let (spent, o) = over;
        Some(
            charges
                .iter()
                .map(|c| {
                    if c.key == spent.key {
                        Outcome {
                            name: c.name.clone(),
                            limit: c.limit,
                            window_ms: c.window_ms,
                            cost: c.cost,
                            step: gcra::Step {
                                allowed: false,
                                remaining: o.remaining,
                                retry_after_ms: o.retry.then(|| {
                                    o.until.saturating_duration_since(now).as_secs_f64() * 1000.0
                                }),
                                reset_ms: c.window_ms as f64,
                                store: None,
                            },
                        }
                    } else {
                        // Not asked: shown whole, and nothing is spent from it.
                        uncounted(c)
                    }
                })
                .collect(),
        )
    }

    /// Remembers the keys Redis refused, until their refused cost fits. The wait is counted
    /// from `asked`, before the call: Redis measured it from its clock at the call, so the
    /// memory never outlasts the refusal.
    fn remember_over(&self, charges: &[Charge], outcomes: &[Outcome], asked: Instant) {
        for (c, o) in charges.iter().zip(outcomes) {
            if o.step.allowed {
                continue;
            }
            let wait = o
                .step
                .retry_after_ms
                .and_then(|ms| Duration::try_from_secs_f64(ms.max(0.0) / 1000.0).ok())
                .unwrap_or(OVER_TTL);
            self.over.insert(
                c.key.clone(),
                Over {
                    until: asked + wait.min(OVER_TTL),
                    limit: c.limit,
                    window_ms: c.window_ms,
                    cost: c.cost,
                    remaining: o.step.remaining,
                    retry: o.step.retry_after_ms.is_some(),
                },
            );
        }
    }

    /// The connection, or `None` while there is none. A missing one is made by the first
    /// request that needs it (at most once per [`RECONNECT_EVERY`] while Redis is down), and
    /// requests arriving meanwhile wait for that attempt. Once connected, the connection
    /// manager reconnects by itself.
    async fn connection(&self, timeout: Duration) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.load_full() {
            return Some((*c).clone());
        }
        // Waiting for another request's attempt and making one are both bounded by the
        // timeout: a request never waits more than twice it (connection, then the call).
        let connect_timeout = timeout;
        let _attempt = tokio::time::timeout(connect_timeout, self.connecting.lock())
            .await
            .ok()?;
        if let Some(c) = self.conn.load_full() {
            return Some((*c).clone());
        }
        let now = self.made.elapsed().as_millis() as u64;
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RECONNECT_EVERY.as_millis() as u64 {
            return None;
        }
        self.last_attempt_ms.store(now.max(1), Ordering::Relaxed);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(2));
        let made = tokio::time::timeout(
            connect_timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                self.conn.store(Some(Arc::new(c.clone())));
                Some(c)
            }
            _ => None,
        }
    }
}

/// Runs the script for `charges`: per charge, (allowed, remaining, retry after, reset).
async fn invoke(
    script: &redis::Script,
    conn: &mut ConnectionManager,
    charges: &[Charge],
) -> Result<Vec<String>, String> {
    let mut call = script.prepare_invoke();
    for c in charges {
        call.key(format!("{PREFIX}{}", c.key));
    }
    for c in charges {
        call.arg(c.limit).arg(c.window_ms).arg(c.cost);
    }
    call.invoke_async(conn).await.map_err(|e| e.to_string())
}

/// The script's answer as outcomes.
fn outcomes(charges: &[Charge], fields: &[String]) -> Result<Vec<Outcome>, String> {
    if fields.len() != charges.len() * 4 {
        return Err(format!("the script answered {} fields", fields.len()));
    }
    let num = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number"))
    };
    charges
        .iter()
        .zip(fields.chunks(4))
        .map(|(c, f)| {
            let retry = num(&f[2])?;
            Ok(Outcome {
                name: c.name.clone(),
                limit: c.limit,
                window_ms: c.window_ms,
                cost: c.cost,
                step: gcra::Step {
                    allowed: f[0] == "1",
                    remaining: num(&f[1])?,
                    retry_after_ms: (retry >= 0.0).then_some(retry),
                    reset_ms: num(&f[3])?,
                    store: None,
                },
            })
        })
        .collect()
}
