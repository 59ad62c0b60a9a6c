//! `gateway.toml`: the process-level settings (listeners, upstreams, issuers, rules directory).
//!
//! Paths in the file are relative to the file's own directory, so the gateway can be started
//! from anywhere. Unknown keys are errors: a typo must never silently fall back to a default.

use crate::location::{SourceError, SourceErrors};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerSettings,
    pub listen: Listen,
    #[serde(default)]
    pub limits: Limits,
    pub rules: RulesSettings,
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub reload: ReloadSettings,
    #[serde(default)]
    pub logging: LoggingSettings,
    #[serde(default)]
    pub geo: GeoSettings,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub issuers: BTreeMap<String, Spanned<IssuerConfig>>,
    #[serde(default)]
    pub token_cache: TokenCacheSettings,
    /// External data sources, read by policies as `ext.NAME`.
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<crate::sources::SourceConfig>>,
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
}

/// `[rate_limits]`: where the counters of `[[route.limit]]`s live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `memory` (this process; the default) or `redis` (shared by every replica).
    #[serde(default)]
    pub store: LimitStoreKind,
    /// With `store = "redis"`: e.g. `redis://10.0.0.9:6379/0` (TLS to Redis is not built in:
    /// `rediss://` is refused at load).
    #[serde(default)]
    pub redis_url: Option<Spanned<String>>,
    /// The most one call to the store may take; then the limit's `on_store_error` applies.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
    /// How many replicas share the limits: while the store cannot be asked, a limit in
    /// `local` mode counts in each process at its limit divided by this.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// `/readyz` answers 503 while the shared store does not answer (off by default: limits
    /// have their own `on_store_error`, and a replica that cannot count can still serve).
    #[serde(default)]
    pub ready_requires_store: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            store: LimitStoreKind::Memory,
            redis_url: None,
            timeout_ms: default_store_timeout_ms(),
            replicas: default_replicas(),
            ready_requires_store: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitStoreKind {
    #[default]
    Memory,
    Redis,
}

fn default_store_timeout_ms() -> u64 {
    50
}
fn default_replicas() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds to keep accepting after SIGTERM, with `/readyz` failing, so load balancers
    /// stop sending first (drain.rs).
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// Seconds allowed for in-flight requests to finish once the listeners closed; the process
    /// exits as soon as none is left.
    #[serde(default = "default_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
    /// One work-stealing runtime for all worker threads (Pingora's default), or one runtime
    /// per thread (`false`): fewer cross-thread wake-ups, measured faster on small machines
    /// (`benches/load/run.sh`).
    #[serde(default)]
    pub work_stealing: bool,
    /// Idle upstream connections kept for reuse, across all upstreams (Pingora's default is
    /// 128). HTTP/2 clients multiplex: 32 h2 connections with 10 requests each in flight need
    /// 320 HTTP/1 upstream connections, and a pool smaller than the concurrency closes and
    /// reopens connections on every request.
    #[serde(default = "default_upstream_pool_size")]
    pub upstream_pool_size: usize,
}

fn default_upstream_pool_size() -> usize {
    1024
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: default_threads(),
            grace_period_seconds: default_grace(),
            graceful_shutdown_timeout_seconds: default_shutdown_timeout(),
            work_stealing: false,
            upstream_pool_size: default_upstream_pool_size(),
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
fn default_grace() -> u64 {
    0
}
fn default_shutdown_timeout() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address of the proxy listener, e.g. `0.0.0.0:8080`.
    pub proxy: Spanned<String>,
    /// Address of the admin listener (`/metrics`, `/healthz`); keep it on loopback.
    pub admin: Spanned<String>,
    /// A TLS listener beside the plain one.
    #[serde(default)]
    pub tls: Option<TlsListen>,
    /// HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3) on the plain listener, told apart from
    /// HTTP/1 by the connection preface. On by default; `false` serves HTTP/1 only there.
    #[serde(default = "yes")]
    pub h2c: bool,
}

/// `[listen.tls]`: a listener that terminates TLS 1.2 and 1.3 (HTTP/1.1 by ALPN).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    /// e.g. `0.0.0.0:8443`.
    pub address: Spanned<String>,
    /// Certificate chains with their keys; a client's SNI picks the one whose names match, the
    /// first is served otherwise.
    pub certificates: Vec<Spanned<CertificateFiles>>,
    /// PEM CA bundle client certificates are verified against; without it, none is asked for.
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// With `client_ca`: `required` (a handshake without a valid client certificate fails) or
    /// `optional` (a client may present none; one it presents must be valid).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// A PEM certificate chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest bearer token accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Largest request header section (names and values), in bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most request header fields; more gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Deepest nesting of arrays and objects in a token's claims; deeper gets 401.
    #[serde(default = "default_max_claims_depth")]
    pub max_claims_depth: usize,
    /// Largest decoded claims (the token's JSON payload), in bytes; larger gets 401. Lets an
    /// operator accept large token headers (`max_token_bytes`) while keeping claims small.
    #[serde(default = "default_max_claims_bytes")]
    pub max_claims_bytes: usize,
    /// How long the client may take to send each part of a body the rules read; then 408.
    #[serde(default = "default_client_body_timeout_ms")]
    pub client_body_timeout_ms: u64,
    /// How long a client may take to send a whole request head, counted from its first byte;
    /// then 408 and the connection closes. Pingora's own timeout is per read, which a client
    /// sending a byte at a time never trips (slowloris).
    #[serde(default = "default_request_head_timeout_ms")]
    pub request_head_timeout_ms: u64,
    /// A WebSocket (any upgraded connection) with no data either way for this long is closed;
    /// 0: never.
    #[serde(default = "default_websocket_idle_timeout_ms")]
    pub websocket_idle_timeout_ms: u64,
    /// The longest a WebSocket may stay open; 0: no limit of its own.
    #[serde(default)]
    pub websocket_max_lifetime_ms: u64,
    /// Close a WebSocket when the token that opened it expires: the decision was made on that
    /// token, and holds no longer than it does.
    #[serde(default = "yes")]
    pub websocket_ends_with_token: bool,
    /// The most evaluation steps any one expression may take on inputs within these limits,
    /// judged when the rules load (an expression over it does not load).
    #[serde(default = "default_max_eval_steps")]
    pub max_eval_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: default_max_token_bytes(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_claims_depth: default_max_claims_depth(),
            max_claims_bytes: default_max_claims_bytes(),
            client_body_timeout_ms: default_client_body_timeout_ms(),
            request_head_timeout_ms: default_request_head_timeout_ms(),
            websocket_idle_timeout_ms: default_websocket_idle_timeout_ms(),
            websocket_max_lifetime_ms: 0,
            websocket_ends_with_token: true,
            max_eval_steps: default_max_eval_steps(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_claims_depth() -> usize {
    16
}
fn default_max_headers() -> usize {
    100
}
fn default_client_body_timeout_ms() -> u64 {
    10_000
}
fn default_websocket_idle_timeout_ms() -> u64 {
    300_000
}
fn default_request_head_timeout_ms() -> u64 {
    10_000
}
fn default_max_claims_bytes() -> usize {
    8 * 1024
}
/// The default of `limits.max_eval_steps`: about 10-50 ms of the interpreter at its slowest
/// (measured 1-5 M steps/s), while one pass over the largest body list fits many times. Here,
/// with the setting, so the configuration depends on nothing of the policy loader (which
/// depends on it).
pub const DEFAULT_MAX_EVAL_STEPS: u64 = 1_000_000;

fn default_max_eval_steps() -> u64 {
    DEFAULT_MAX_EVAL_STEPS
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

/// The verified-token cache.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Tokens kept at most (least recently used go first).
    #[serde(default = "default_token_cache_entries")]
    pub max_entries: u64,
    /// An entry lives until the token's `exp` (plus leeway), and never longer than this.
    #[serde(default = "default_token_cache_ttl")]
    pub max_ttl_seconds: u64,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        TokenCacheSettings {
            enabled: true,
            max_entries: default_token_cache_entries(),
            max_ttl_seconds: default_token_cache_ttl(),
        }
    }
}

fn default_token_cache_entries() -> u64 {
    10_000
}
fn default_token_cache_ttl() -> u64 {
    3600
}

/// The decision log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    /// How the token's `sub` appears in decision logs.
    #[serde(default)]
    pub subject: SubjectLogging,
    /// Share of allowed requests that also get a decision line (0.0 to 1.0). Denials and audit
    /// would-be denials are always logged.
    #[serde(default)]
    pub allow_sample_rate: f64,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        LoggingSettings {
            subject: SubjectLogging::Plain,
            allow_sample_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubjectLogging {
    /// The `sub` as it is.
    #[default]
    Plain,
    /// A SHA-256 prefix of the `sub`: correlatable, not readable.
    Hash,
    /// No subject.
    Omit,
}

/// Live reload of `rules/`, keys and this file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReloadSettings {
    /// Watch the files (through their directories) and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Quiet time after the last change event before reloading.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Also compare a content hash this often, in case an event was missed; 0 turns it off.
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
    /// Accept a reload that leaves no route at all (every request then gets the unmatched action).
    #[serde(default)]
    pub allow_empty: bool,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            watch: true,
            debounce_ms: default_debounce_ms(),
            poll_seconds: default_poll_seconds(),
            allow_empty: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    150
}
fn default_poll_seconds() -> u64 {
    5
}

/// Which peers are proxies whose `X-Forwarded-For` (and edge country header) is believed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// IP addresses or CIDR blocks, e.g. `["10.0.0.0/8", "127.0.0.1"]`.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Headers removed from every request before it goes upstream, on every route (identity
    /// headers an upstream trusts that the gateway does not set itself). The headers routes
    /// set with `forward`, and `geo.country_header` from peers that are not trusted proxies,
    /// are removed without being listed here.
    #[serde(default)]
    pub strip_headers: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSettings {
    /// A MaxMind/GeoLite2 country (or city) database.
    pub mmdb: Option<Spanned<PathBuf>>,
    /// A country header set by a trusted edge, e.g. `CF-IPCountry`; believed only from
    /// `network.trusted_proxies`.
    pub country_header: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSettings {
    /// Directory holding the policy files (`*.toml`), relative to this file.
    pub dir: PathBuf,
}

/// What happens to a request that matches no route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unmatched {
    #[serde(default)]
    pub action: UnmatchedAction,
    /// Status of the denial when `action = "deny"`.
    #[serde(default = "default_unmatched_status")]
    pub status: u16,
    /// Upstream for `action = "allow"`.
    pub upstream: Option<Spanned<String>>,
    /// Token handling for `action = "allow"`.
    #[serde(default)]
    pub auth: AuthMode,
}

impl Default for Unmatched {
    fn default() -> Self {
        Unmatched {
            action: UnmatchedAction::Deny,
            status: default_unmatched_status(),
            upstream: None,
            auth: AuthMode::Required,
        }
    }
}

fn default_unmatched_status() -> u16 {
    404
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedAction {
    #[default]
    Deny,
    Allow,
}

/// Whether a route needs a token.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is required (the default).
    #[default]
    Required,
    /// A token is verified when present; requests without one proceed with empty claims.
    Optional,
    /// The token is not looked at.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` addresses, used round-robin.
    pub addresses: Vec<Spanned<String>>,
    /// The upstream of routes that do not name one.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub tls: bool,
    /// The HTTP version spoken to the upstream: `http1` (the default), `h2` (HTTP/2 only:
    /// prior knowledge on plain connections, ALPN `h2` over TLS; what gRPC services need), or
    /// `auto` (TLS only: ALPN offers `h2` then `http/1.1` and the upstream picks).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// SNI and the name the upstream's certificate must carry (required with `tls`).
    #[serde(default)]
    pub sni: String,
    /// PEM CA bundle the upstream's certificate is verified against, instead of the system's
    /// trust roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key presented to the upstream (upstream mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Send request header names as the client spelled them. Off, names reach the upstream in
    /// lowercase (as HTTP/2 and HAProxy send them; `Host`, `Content-Length` and a few others
    /// keep their usual spelling), which saves a second header map per request. For servers
    /// that read header names case-sensitively, which HTTP does not allow.
    #[serde(default)]
    pub preserve_header_case: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
    Auto,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value tokens of this issuer carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer, e.g. `["RS256"]`.
    pub algorithms: Vec<Spanned<String>>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Certificate-bound tokens (RFC 8705 §3): a token of this issuer is accepted only on a TLS
    /// connection whose client certificate's SHA-256 thumbprint equals its `cnf["x5t#S256"]`.
    #[serde(default)]
    pub certificate_bound: bool,
    /// Accepted values of the token's `typ` header, e.g. `["at+jwt"]` to accept only RFC 9068
    /// access tokens (an ID token, `JWT`, is then refused). Empty (the default): any `typ`, or
    /// none.
    #[serde(default)]
    pub types: Vec<String>,
    /// Where the verification keys come from.
    pub keys: Vec<Spanned<KeySource>>,
    /// PEM CA bundle that the server of an https `jwks_url` / `discovery_url` (and its
    /// `jwks_uri`) must chain to, instead of the system's trust roots: an identity provider
    /// behind a private CA. Read again on every reload; a new bundle is used from the next
    /// fetch, which is then due at once.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Refresh interval for `jwks_url` / `discovery_url` keys, unless the response's
    /// `Cache-Control: max-age` says otherwise (then kept within the min and max below).
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    #[serde(default = "default_min_refresh")]
    pub min_refresh_seconds: u64,
    #[serde(default = "default_max_refresh")]
    pub max_refresh_seconds: u64,
    /// At most one refetch per this many seconds when tokens name unknown key ids.
    #[serde(default = "default_kid_cooldown")]
    pub unknown_kid_cooldown_seconds: u64,
    /// Fetched keys are used this long after the last successful fetch, then rejected.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    #[serde(default = "default_fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    #[serde(default = "default_max_jwks_bytes")]
    pub max_jwks_bytes: usize,
}

fn default_refresh() -> u64 {
    300
}
fn default_min_refresh() -> u64 {
    30
}
fn default_max_refresh() -> u64 {
    86_400
}
fn default_kid_cooldown() -> u64 {
    30
}
fn default_max_staleness() -> u64 {
    86_400
}
fn default_fetch_timeout_ms() -> u64 {
    5_000
}
fn default_max_jwks_bytes() -> usize {
    1024 * 1024
}

fn default_leeway() -> u64 {
    30
}

/// One source of verification keys, as `gateway.toml` writes it: a table with exactly one of
/// the source fields, and optionally `kid`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawKeySource")]
pub struct KeySource {
    pub kind: KeyKind,
    /// Key id for a PEM key or a secret; tokens naming another `kid` do not use it.
    pub kid: Option<String>,
    /// The one algorithm a PEM key or a secret is used with (RFC 8725 §3.1); keys of a JWKS
    /// name their own.
    pub alg: Option<String>,
}

/// Where keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A public key (or certificate) in PEM: RSA, EC P-256/P-384 or Ed25519.
    PemFile(PathBuf),
    /// A JSON Web Key Set document on disk.
    JwksFile(PathBuf),
    /// A JWKS URL, fetched and refreshed.
    JwksUrl(String),
    /// An OIDC discovery URL (`.../.well-known/openid-configuration`); its `issuer` must equal
    /// this issuer's `issuer`, its `jwks_uri` is fetched and refreshed.
    DiscoveryUrl(String),
    /// Name of an environment variable holding an HMAC secret.
    SecretEnv(String),
    /// A file holding an HMAC secret (trailing newline ignored).
    SecretFile(PathBuf),
}

impl KeySource {
    /// The file the keys are read from, for sources on disk.
    pub fn file(&self) -> Option<&Path> {
        match &self.kind {
            KeyKind::PemFile(p) | KeyKind::JwksFile(p) | KeyKind::SecretFile(p) => Some(p),
            KeyKind::JwksUrl(_) | KeyKind::DiscoveryUrl(_) | KeyKind::SecretEnv(_) => None,
        }
    }
}

/// The table form of [`KeySource`]; converted, with its checks, by `TryFrom`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySource {
    pem_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    discovery_url: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    kid: Option<String>,
    alg: Option<String>,
}

impl TryFrom<RawKeySource> for KeySource {
    type Error = String;

    fn try_from(r: RawKeySource) -> Result<Self, String> {
        let url = |u: String| {
            if u.starts_with("http://") || u.starts_with("https://") {
                Ok(u)
            } else {
                Err(format!("`{u}` is not an http(s) URL"))
            }
        };
        let mut kinds = Vec::new();
        kinds.extend(r.pem_file.map(KeyKind::PemFile));
        kinds.extend(r.jwks_file.map(KeyKind::JwksFile));
        kinds.extend(r.jwks_url.map(url).transpose()?.map(KeyKind::JwksUrl));
        kinds.extend(
            r.discovery_url
                .map(url)
                .transpose()?
                .map(KeyKind::DiscoveryUrl),
        );
        kinds.extend(r.secret_env.map(KeyKind::SecretEnv));
        kinds.extend(r.secret_file.map(KeyKind::SecretFile));
        match (kinds.pop(), kinds.is_empty()) {
            (Some(KeyKind::JwksFile(_) | KeyKind::JwksUrl(_) | KeyKind::DiscoveryUrl(_)), true)
                if r.alg.is_some() =>
            {
                Err("`alg` is for `pem_file` and secrets; the keys of a JWKS name their own `alg`".into())
            }
            (Some(kind), true) => Ok(KeySource {
                kind,
                kid: r.kid,
                alg: r.alg,
            }),
            _ => Err("a key needs exactly one of `pem_file`, `jwks_file`, `jwks_url`, `discovery_url`, `secret_env`, `secret_file`".into()),
        }
    }
}

/// The loaded `gateway.toml`, with relative paths already resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The file's text, kept for error locations found after parsing.
    pub source: String,
    pub raw: RawConfig,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The TLS listener's address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    pub rules_dir: PathBuf,
    /// Each upstream's addresses, resolved once when the file was checked: the pools use
    /// these, so a name that stops resolving between the check and the pools' build cannot
    /// leave a pool short or empty.
    pub upstream_addresses: std::collections::HashMap<String, Vec<SocketAddr>>,
}

impl Config {
    /// Reads and validates the file. Every error found is returned, each with its location.
    pub fn load(path: &Path) -> Result<Config, SourceErrors> {
        let source = crate::set_file::read_to_string(path).map_err(|e| {
            SourceErrors(vec![SourceError::whole_file(
                path,
                format!("cannot read the file: {e}"),
            )])
        })?;
        Self::from_str(path, source)
    }

    /// Parses `source` as if it were the contents of `path`.
    pub fn from_str(path: &Path, source: String) -> Result<Config, SourceErrors> {
        let raw: RawConfig = toml::from_str(&source)
            .map_err(|e| SourceErrors(vec![SourceError::from_toml(path, &source, &e)]))?;
        let mut check = Checks {
            path,
            source: &source,
            errors: Vec::new(),
        };
        let proxy_addr = check.addr(&raw.listen.proxy);
        let admin_addr = check.addr(&raw.listen.admin);
        let tls_addr = raw.listen.tls.as_ref().map(|t| {
            if t.certificates.is_empty() {
                let e = check.at(
                    t.address.span(),
                    "a TLS listener needs `certificates`".into(),
                );
                check.errors.push(e);
            }
            check.addr(&t.address)
        });
        if raw.limits.max_token_bytes < 16 {
            check.setting(
                "limits",
                "max_token_bytes",
                "`limits.max_token_bytes` must be at least 16",
            );
        }
        // Every token has claims, and a claim is at least one level deep: 0 refuses them all.
        if raw.limits.max_claims_depth == 0 {
            check.setting(
                "limits",
                "max_claims_depth",
                "`limits.max_claims_depth` must be at least 1",
            );
        }
        let upstream_addresses = check.upstreams(&raw);
        check.sources(&raw);
        check.settings(&raw);
        check.issuers(&raw);
        let errors = check.errors;
        let (Some(proxy_addr), Some(admin_addr), true) =
            (proxy_addr, admin_addr, errors.is_empty())
        else {
            return Err(SourceErrors(errors));
        };
        let tls_addr = tls_addr.flatten();
        let base = path.parent().unwrap_or(Path::new("."));
        let rules_dir = base.join(&raw.rules.dir);
        Ok(Config {
            path: path.to_path_buf(),
            source,
            raw,
            proxy_addr,
            admin_addr,
            tls_addr,
            rules_dir,
            upstream_addresses,
        })
    }

    /// A path from the file, resolved against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(p)
    }

    /// The upstream of routes that name none: the one marked `default`, or the only one.
    pub fn default_upstream(&self) -> Option<&str> {
        let ups = &self.raw.upstreams;
        ups.iter()
            .find(|(_, u)| u.get_ref().default)
            .map(|(n, _)| n.as_str())
            .or_else(|| {
                (ups.len() == 1)
                    .then(|| ups.keys().next().map(String::as_str))
                    .flatten()
            })
    }

    /// An error located at `span` of this file.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> SourceError {
        SourceError::at_offset(&self.path, &self.source, span.start, message)
    }
}

/// The checks `gateway.toml` must pass beyond its syntax; every error is kept.
/// Where `key = ...` is written in `[table]` (its first character), else where `[table]` is,
/// else the file's start.
fn setting_offset(source: &str, table: &str, key: &str) -> usize {
    let header = format!("[{table}]");
    let (mut offset, mut in_table, mut table_at) = (0, false, None);
    for line in source.split_inclusive('\n') {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        let code = text.split('#').next().unwrap_or("").trim_end();
        if code.starts_with('[') {
            in_table = code == header;
            if in_table && table_at.is_none() {
                table_at = Some(offset + indent);
            }
        } else if in_table
            && code
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return offset + indent;
        }
        offset += line.len();
    }
    table_at.unwrap_or(0)
}

struct Checks<'a> {
    path: &'a Path,
    source: &'a str,
    errors: Vec<SourceError>,
}

impl Checks<'_> {
    fn at(&self, span: std::ops::Range<usize>, msg: String) -> SourceError {
        SourceError::at_offset(self.path, self.source, span.start, msg)
    }

    /// An error at `key` of `[table]` as written (or at the table's header, when the key is
    /// left to its default), for settings whose values are checked after parsing.
    fn setting(&mut self, table: &str, key: &str, msg: &str) {
        let at = setting_offset(self.source, table, key);
        self.errors.push(SourceError::at_offset(
            self.path,
            self.source,
            at,
            msg.to_string(),
        ));
    }

    fn addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match parse_addr(s) {
            Ok(a) => Some(a),
            Err(m) => {
                self.errors.push(self.at(s.span(), m));
                None
            }
        }
    }

    fn upstreams(&mut self, raw: &RawConfig) -> std::collections::HashMap<String, Vec<SocketAddr>> {
        let mut resolved = std::collections::HashMap::new();
        for (name, up) in &raw.upstreams {
            if up.get_ref().addresses.is_empty() {
                self.errors
                    .push(self.at(up.span(), format!("upstream `{name}` has no addresses")));
            }
            let addresses: Vec<SocketAddr> = up
                .get_ref()
                .addresses
                .iter()
                .filter_map(|a| self.addr(a))
                .collect();
            resolved.insert(name.clone(), addresses);
            let u = up.get_ref();
            // Without SNI, Pingora skips certificate verification altogether.
            if u.tls && u.sni.is_empty() {
                self.errors.push(self.at(
                    up.span(),
                    format!("upstream `{name}`: `tls = true` needs `sni`, the name its certificate must carry"),
                ));
            }
            if u.protocol == UpstreamProtocol::Auto && !u.tls {
                self.errors.push(self.at(
                    up.span(),
                    format!("upstream `{name}`: `protocol = \"auto\"` is negotiated by TLS (ALPN) and needs `tls = true`; a plain upstream is `http1` or `h2`"),
                ));
            }
            let tls_files =
                u.ca_file.is_some() || u.client_cert.is_some() || u.client_key.is_some();
            if tls_files && !u.tls {
                self.errors.push(self.at(
                    up.span(),
                    format!("upstream `{name}`: `ca_file`, `client_cert` and `client_key` need `tls = true`"),
                ));
            }
            if u.client_cert.is_some() != u.client_key.is_some() {
                self.errors.push(self.at(
                    up.span(),
                    format!("upstream `{name}`: `client_cert` and `client_key` go together"),
                ));
            }
        }
        resolved
    }

    fn rate_limits(&mut self, r: &RateLimitSettings) {
        match (&r.store, &r.redis_url) {
            (LimitStoreKind::Redis, None) => self.setting(
                "rate_limits",
                "store",
                "`rate_limits.store = \"redis\"` needs `rate_limits.redis_url`",
            ),
            (LimitStoreKind::Redis, Some(url)) => {
                if let Err(e) = redis::Client::open(url.get_ref().as_str()) {
                    self.errors.push(self.at(
                        url.span(),
                        format!("`rate_limits.redis_url` is not a Redis URL ({e})"),
                    ));
                }
            }
            (LimitStoreKind::Memory, Some(url)) => self.errors.push(self.at(
                url.span(),
                "`rate_limits.redis_url` is set but `rate_limits.store` is not `redis`".to_string(),
            )),
            (LimitStoreKind::Memory, None) => {}
        }
        if r.replicas == 0 {
            self.setting(
                "rate_limits",
                "replicas",
                "`rate_limits.replicas` must be at least 1",
            );
        }
        if !(1..=10_000).contains(&r.timeout_ms) {
            self.setting(
                "rate_limits",
                "timeout_ms",
                "`rate_limits.timeout_ms` must be 1..10000",
            );
        }
    }

    fn sources(&mut self, raw: &RawConfig) {
        for (name, src) in &raw.sources {
            let ident = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                self.errors.push(self.at(
                        src.span(),
                        format!("source `{name}`: a source name is letters, digits and `_`, so policies can read it as `ext.{name}`"),
                    ));
            }
        }
    }

    /// Trusted proxies, the default upstream, the unmatched action, logging.
    fn settings(&mut self, raw: &RawConfig) {
        self.rate_limits(&raw.rate_limits);
        for t in &raw.network.trusted_proxies {
            if let Err(e) = crate::geo::parse_network(t.get_ref()) {
                self.errors.push(self.at(t.span(), e.to_string()));
            }
        }
        let defaults: Vec<_> = raw
            .upstreams
            .iter()
            .filter(|(_, u)| u.get_ref().default)
            .collect();
        if defaults.len() > 1 {
            self.errors.push(self.at(
                defaults[1].1.span(),
                format!(
                    "upstream `{}`: only one upstream can be the default",
                    defaults[1].0
                ),
            ));
        }
        if raw.unmatched.action == UnmatchedAction::Allow {
            match &raw.unmatched.upstream {
                None if raw.upstreams.len() != 1 => self.setting(
                    "unmatched",
                    "action",
                    "`unmatched.action = \"allow\"` needs `unmatched.upstream`",
                ),
                Some(u) if !raw.upstreams.contains_key(u.get_ref()) => self
                    .errors
                    .push(self.at(u.span(), format!("unknown upstream `{}`", u.get_ref()))),
                _ => {}
            }
        }
        if !(0.0..=1.0).contains(&raw.logging.allow_sample_rate) {
            self.setting(
                "logging",
                "allow_sample_rate",
                "`logging.allow_sample_rate` must be between 0.0 and 1.0",
            );
        }
        if !(100..=599).contains(&raw.unmatched.status) {
            self.setting(
                "unmatched",
                "status",
                "`unmatched.status` must be an HTTP status code",
            );
        }
    }

    fn issuers(&mut self, raw: &RawConfig) {
        for (name, iss) in &raw.issuers {
            let i = iss.get_ref();
            if i.audiences.is_empty() {
                self.errors.push(self.at(
                    iss.span(),
                    format!("issuer `{name}` needs at least one entry in `audiences`"),
                ));
            }
            if i.algorithms.is_empty() {
                self.errors.push(self.at(
                    iss.span(),
                    format!("issuer `{name}` needs at least one entry in `algorithms`"),
                ));
            }
            if i.keys.is_empty() {
                self.errors.push(self.at(
                    iss.span(),
                    format!("issuer `{name}` needs at least one entry in `keys`"),
                ));
            }
        }
    }
}

fn parse_addr(s: &Spanned<String>) -> Result<SocketAddr, String> {
    let v = s.get_ref();
    use std::net::ToSocketAddrs;
    v.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| format!("`{v}` is not a `host:port` address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
proxy = "127.0.0.1:8080"
admin = "127.0.0.1:9901"

[rules]
dir = "rules"
"#;

    #[test]
    fn minimal_config_loads() {
        let c = Config::from_str(Path::new("/etc/cg/gateway.toml"), MINIMAL.into()).unwrap();
        assert_eq!(c.rules_dir, Path::new("/etc/cg/rules"));
        assert_eq!(c.raw.limits.max_token_bytes, 8192);
        assert_eq!(c.raw.unmatched.action, UnmatchedAction::Deny);
    }

    #[test]
    fn unknown_key_is_located() {
        let src = format!("{MINIMAL}\n[limits]\nmax_tokn_bytes = 5\n");
        let err = Config::from_str(Path::new("g.toml"), src).unwrap_err();
        let e = &err.0[0];
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("max_tokn_bytes"), "{e}");
    }

    #[test]
    fn limits_that_would_refuse_every_token_do_not_load() {
        for (key, value) in [("max_claims_depth", 0), ("max_token_bytes", 15)] {
            let src = format!("{MINIMAL}\n[limits]\n# why\n  {key} = {value}\n");
            let err = Config::from_str(Path::new("g.toml"), src).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("`limits.{key}` must be at least")),
                "{err}"
            );
            // At the setting as written.
            assert_eq!((err.0[0].line, err.0[0].column), (11, 3), "{err}");
        }
        // At the key the error is about (`action`), since `upstream` is not written.
        let src = format!("{MINIMAL}\n[unmatched]\naction = \"allow\"\n");
        let err = Config::from_str(Path::new("g.toml"), src).unwrap_err();
        assert_eq!((err.0[0].line, err.0[0].column), (10, 1), "{err}");
        assert_eq!(setting_offset("[a]\nk = 1\n[b]\n", "b", "k"), 10);
        assert_eq!(setting_offset("x = 1\n", "b", "k"), 0);
    }

    #[test]
    fn bad_address_is_located() {
        let src = MINIMAL.replace("127.0.0.1:8080", "nowhere");
        let err = Config::from_str(Path::new("g.toml"), src).unwrap_err();
        assert_eq!((err.0[0].line, err.0[0].column), (3, 9), "{}", err);
    }
}
