#!/usr/bin/env bash
# Load benchmark: claimgate against nginx direct, a plain Pingora passthrough and HAProxy (plain and
# with jwt_verify + equivalent claim checks), in ONE run, in alternating rounds, so the ratios are
# comparable even on a shared, noisy machine. Absolute numbers are not: compare within one run.
#
#   bash benches/load/run.sh              # 3 rounds of 8 s per target, 32 connections
#   ROUNDS=5 DURATION=10 CONNS=64 bash benches/load/run.sh
#   TARGETS="pingora-passthrough claimgate-es256-cache" bash benches/load/run.sh
#   TARGETS=tls bash benches/load/run.sh   # the TLS and HTTP/2 targets only (see below)
#   TARGETS=limits bash benches/load/run.sh  # shared rate limits on Redis (see below)
#   STEAL_MAX=5 bash benches/load/run.sh   # keep rounds with up to 5 % of CPU time stolen by the
#                                         # hypervisor (default 2: a round above is left out)
#   CG_ALT=/path/to/other/claimgate TARGETS=alt bash benches/load/run.sh
#                                         # A/B: a second claimgate binary (another build profile,
#                                         # another commit) beside this one, in the same rounds
#   CG_ALT=/path/to/other/claimgate TARGETS=alt-close bash benches/load/run.sh
#                                         # the same A/B with a new connection per request, plain
#                                         # and TLS (what closing a connection costs)
#
# Limits: three ES256 routes that differ only in a `[[route.limit]]` on Redis (redis-server on
# core 0 with the load generator): none (`claimgate-limit-base`), a budget never reached (every
# request a round trip to Redis: `claimgate-limit-miss`), and a budget spent by the first request
# (every later one refused in process, 429: `claimgate-limit-hit`).
#
# TLS: claimgate and HAProxy terminate TLS with the same ECDSA P-256 certificate (made here with
# openssl). `*-tls-handshake` sends `Connection: close`, so every request is a new connection and
# a full TLS 1.3 handshake (wrk resumes no sessions): its req/s is handshakes/s. `*-tls-open` is
# keep-alive over TLS. HTTP/2: h2load drives claimgate's plain listener with h2c (prior
# knowledge, H2_STREAMS requests in flight per connection) and, for the comparison, with
# HTTP/1.1 keep-alive from the same tool.
#
# Pinning (2 cores): the load generator (wrk) and the upstream (nginx) share core 0; the proxy
# under test runs on core 1, one worker thread each (claimgate, the Pingora passthrough, HAProxy).
# Installs nginx-light, wrk, haproxy and python3 from Debian when missing (needs root or sudo).
# Writes the table to benches/load/results.md (OUT=... to change).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=common.sh
. "$ROOT/benches/load/common.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
OUT=${OUT:-$ROOT/benches/load/results.md}
ALL_TARGETS="nginx-direct pingora-passthrough pingora-passthrough-bearer pingora-passthrough-mimalloc haproxy-passthrough haproxy-jwt-rs256 haproxy-jwt-es256 \
claimgate-open claimgate-es256-cache claimgate-rs256-cache claimgate-es256-nocache claimgate-rs256-nocache \
claimgate-eddsa-nocache claimgate-hs256-nocache claimgate-body-1k claimgate-es256-cache-reloading \
claimgate-tls-open haproxy-tls-passthrough claimgate-tls-handshake haproxy-tls-handshake claimgate-h1-open claimgate-h2-open"
LIMIT_TARGETS="claimgate-limit-base claimgate-limit-miss claimgate-limit-hit"
TLS_TARGETS="claimgate-open claimgate-tls-open haproxy-tls-passthrough claimgate-tls-handshake haproxy-tls-handshake claimgate-h1-open claimgate-h2-open"
TARGETS=${TARGETS:-$ALL_TARGETS}
[ "$TARGETS" = tls ] && TARGETS=$TLS_TARGETS
[ "$TARGETS" = limits ] && TARGETS=$LIMIT_TARGETS
ALT_TARGETS="pingora-passthrough pingora-passthrough-bearer claimgate-open claimgate-alt-open claimgate-es256-cache claimgate-alt-es256-cache \
claimgate-es256-nocache claimgate-alt-es256-nocache"
[ "$TARGETS" = alt ] && TARGETS=$ALT_TARGETS
ALT_CLOSE_TARGETS="claimgate-close claimgate-alt-close claimgate-tls-handshake claimgate-alt-tls-handshake haproxy-tls-handshake"
[ "$TARGETS" = alt-close ] && TARGETS=$ALT_CLOSE_TARGETS
case " $TARGETS " in *" claimgate-alt-"*) [ -x "${CG_ALT:-}" ] || { echo "the alt targets need CG_ALT=<binary>" >&2; exit 2; } ;; esac
H2_STREAMS=${H2_STREAMS:-10}

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# The gateway is built by itself, as users build it (README, Dockerfile); the examples, which
# bring the dev-dependencies and their features into the graph, in a second command. (Measured:
# built together, the gateway counted 105 500 instead of 105 300 instructions per cached
# request under callgrind, no real difference; this keeps the measured binary the users' one.)
# A previous run's criterion floor left its own build (no LTO) at target/release/claimgate, and
# cargo does not put the release build back there while that build is up to date: removed, it is.
rm -f target/release/claimgate
cargo build --release --locked --bin claimgate
cargo build --release --locked --example passthrough --example passthrough_mimalloc
CG=$ROOT/target/release/claimgate
PT=$ROOT/target/release/examples/passthrough
PTMI=$ROOT/target/release/examples/passthrough_mimalloc

W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
# Private copies of the binaries under test: the criterion floor below builds with the bench
# profile into the same target/release, which replaces the release binaries there (a run once
# measured that build instead of the LTO one).
cp "$CG" "$W/claimgate"; cp "$PT" "$W/passthrough"; cp "$PTMI" "$W/passthrough_mimalloc"
CG=$W/claimgate; PT=$W/passthrough; PTMI=$W/passthrough_mimalloc
# An A/B of a binary against itself measures nothing; it happens when the other commit was built
# into this target directory (cargo then takes that build for this checkout's).
if [ -n "${CG_ALT:-}" ] && cmp -s "$CG" "$CG_ALT"; then
  echo "CG_ALT is the very binary this checkout built: build the other commit with its own CARGO_TARGET_DIR" >&2
  exit 2
fi

# The floor under an uncached request, measured on the proxy's core: the criterion medians of the
# bare signature checks (`verify_primitive/<alg>`) and of the policy's own work: on a token
# decided before (`decide_3_rules/<alg>/cache_on`: its rules and headers remembered) and on a
# token verified but never decided on (`<alg>/new_token`: rules and headers evaluated, as an
# uncached request must). `<alg>/cache_off` (the core's whole uncached decision) is kept beside
# the gateway's own decision timer. Measured
# twice, before the rounds and after them, each with the share of CPU time the hypervisor stole
# meanwhile: interference only ever adds time, so the limit ratios use the lower median of each
# bench, and both measurements are printed. SKIP_FLOOR=1 skips it (the limit table says n/a).
FLOOR=$W/floor.tsv
: > "$FLOOR"
# All CPU time of the machine and the part the hypervisor stole (gave to another guest): on this
# kind of virtual machine stolen ticks are charged to whichever process was running, so a round
# with much steal measures the host as well as the proxy.
machine_ticks() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $9; exit}' /proc/stat; }
# The load generator's core (core 0: wrk or h2load, and nginx): busy and all ticks. A target whose
# generator core is saturated measures the generator, not the proxy.
gen_core_ticks() { awk '/^cpu0 /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9; exit}' /proc/stat; }
measure_floor() { # label
  local s0 s1
  s0=$(machine_ticks)
  taskset -c 1 cargo bench --locked --bench decision -- --warm-up-time 1 --measurement-time 4 \
    --noplot '^(verify_primitive/|decide_3_rules/)' > "$W/criterion-$1.log" 2>&1
  s1=$(machine_ticks)
  python3 - "$ROOT/target/criterion" "$1" "$s0" "$s1" >> "$FLOOR" <<'PYFLOOR'
import json, sys, os
root, label = sys.argv[1], sys.argv[2]
(m0, t0), (m1, t1) = sys.argv[3].split(), sys.argv[4].split()
steal = 100 * (int(t1) - int(t0)) / max(1, int(m1) - int(m0))
def median_us(*parts):
    path = os.path.join(root, *parts, "new", "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] / 1000.0
for alg in ("rs256", "es256", "eddsa", "hs256"):
    print(f"{label}\t{alg}\t{median_us('verify_primitive', alg):.3f}\t"
          f"{median_us('decide_3_rules', f'{alg}_cache_on'):.3f}\t"
          f"{median_us('decide_3_rules', f'{alg}_new_token'):.3f}\t"
          f"{median_us('decide_3_rules', f'{alg}_cache_off'):.3f}\t{steal:.1f}")
PYFLOOR
  grep "^$1" "$FLOOR" | sed 's/^/floor (when, alg, verify µs, decision µs: cached token, new token, uncached; steal %): /'
}
[ "${SKIP_FLOOR:-}" = 1 ] || measure_floor before

KEYS=$ROOT/tests/fixtures/keys
# The HS256 issuer's secret (gateway_config reads it from the environment).
export BENCH_HS_SECRET=bench-secret-for-hmac-keys-0123456789abcdef
UP=127.0.0.1:18080

# --- upstream: nginx, a tiny fixed answer, keepalive for the proxies' pooled connections
bench_nginx "$NGINX" "$W" "$UP"

# --- claimgate: one process with the token cache, one without
mkdir -p "$W/rules"
{ bench_transfer_route '"rs", "ec", "ed", "hs"'; cat <<'EOF'; } > "$W/rules/bench.toml"
[[route]]
name = "body"
path = "/api/body"
methods = ["POST"]
issuers = ["ec"]

  [[route.rule]]
  name = "amount-within-limit"
  allow_if = "double(body.amount) <= double(claims.features.maxTransactionAmount)"

[[route]]
name = "open"
path = "/open"
auth = "none"

[[route]]
name = "limit-base"
path = "/lim/base"
issuers = ["ec"]

[[route]]
name = "limit-miss"
path = "/lim/miss"
issuers = ["ec"]
  [[route.limit]]
  name = "never-reached"
  key = "claims.sub"
  limit = "1000000000000"
  window = "1h"

[[route]]
name = "limit-hit"
path = "/lim/hit"
issuers = ["ec"]
  [[route.limit]]
  name = "spent"
  key = "claims.sub"
  limit = "1"
  window = "24h"
EOF
# The benchmark's TLS certificate: ECDSA P-256, for claimgate and HAProxy alike.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/tls-key.pem" -out "$W/tls-cert.pem" 2>/dev/null
cat "$W/tls-cert.pem" "$W/tls-key.pem" > "$W/tls-haproxy.pem"

gateway_config() { # proxy-port admin-port cache [tls-port]
  cat <<EOF
[server]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
[listen]
proxy = "127.0.0.1:$1"
admin = "127.0.0.1:$2"
[rules]
dir = "rules"
[reload]
watch = false
poll_seconds = 0
[token_cache]
enabled = $3
[upstreams.main]
addresses = ["$UP"]
[issuers.rs]
issuer = "https://rs.bench"
audiences = ["api"]
algorithms = ["RS256"]
keys = [{ pem_file = "$KEYS/rsa-public.pem", kid = "rs1", alg = "RS256" }]
[issuers.ec]
issuer = "https://ec.bench"
audiences = ["api"]
algorithms = ["ES256"]
keys = [{ pem_file = "$KEYS/ec256-public.pem", kid = "ec1" }]
[issuers.ed]
issuer = "https://ed.bench"
audiences = ["api"]
algorithms = ["EdDSA"]
keys = [{ pem_file = "$KEYS/ed25519-public.pem", kid = "ed1" }]
[issuers.hs]
issuer = "https://hs.bench"
audiences = ["api"]
algorithms = ["HS256"]
keys = [{ secret_env = "BENCH_HS_SECRET", kid = "hs1", alg = "HS256" }]
EOF
  if [ -n "${5:-}" ]; then
    printf '[rate_limits]\nstore = "redis"\nredis_url = "redis://127.0.0.1:%s/"\n' "$5"
  fi
  if [ -n "${4:-}" ]; then
    printf '[listen.tls]\naddress = "127.0.0.1:%s"\ncertificates = [{ cert = "%s", key = "%s" }]\n' \
      "$4" "$W/tls-cert.pem" "$W/tls-key.pem"
  fi
}
REDIS_PORT=18179
taskset -c 0 redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$W" \
  >"$W/redis.log" 2>&1 & PIDS+=($!)
gateway_config 18082 18092 true 18089 $REDIS_PORT > "$W/cache-on.toml"
gateway_config 18083 18093 false > "$W/cache-off.toml"
RUST_LOG=warn taskset -c 1 "$CG" run --config "$W/cache-on.toml" 2>"$W/cg-on.log" & PIDS+=($!); CG_ON=$!
RUST_LOG=warn taskset -c 1 "$CG" run --config "$W/cache-off.toml" 2>"$W/cg-off.log" & PIDS+=($!); CG_OFF=$!
if [ -n "${CG_ALT:-}" ]; then
  gateway_config 18094 18096 true 18098 > "$W/alt-on.toml"
  gateway_config 18095 18097 false > "$W/alt-off.toml"
  RUST_LOG=warn taskset -c 1 "$CG_ALT" run --config "$W/alt-on.toml" 2>"$W/alt-on.log" & PIDS+=($!); ALT_ON=$!
  RUST_LOG=warn taskset -c 1 "$CG_ALT" run --config "$W/alt-off.toml" 2>"$W/alt-off.log" & PIDS+=($!); ALT_OFF=$!
fi
taskset -c 1 "$PT" 127.0.0.1:18081 "$UP" 1 2>"$W/pt.log" & PIDS+=($!); PT_PID=$!
taskset -c 1 "$PTMI" 127.0.0.1:18087 "$UP" 1 2>"$W/ptmi.log" & PIDS+=($!); PTMI_PID=$!

CLAIMS='{"account":"acc-1","permissions":["read","transfer"],"scope":"read transfer","features":{"maxTransactionAmount":5000},"max":5000}'
RS_TOKEN=$("$CG" token --alg RS256 --key "$KEYS/rsa-private.pem" --kid rs1 --iss https://rs.bench --aud api --sub user-1 --ttl 86400 --claims "$CLAIMS")
ED_TOKEN=$("$CG" token --alg EdDSA --key "$KEYS/ed25519-private.pem" --kid ed1 --iss https://ed.bench --aud api --sub user-1 --ttl 86400 --claims "$CLAIMS")
HS_TOKEN=$("$CG" token --alg HS256 --secret-env BENCH_HS_SECRET --kid hs1 --iss https://hs.bench --aud api --sub user-1 --ttl 86400 --claims "$CLAIMS")
ES_TOKEN=$("$CG" token --alg ES256 --key "$KEYS/ec256-private.pem" --kid ec1 --iss https://ec.bench --aud api --sub user-1 --ttl 86400 --claims "$CLAIMS")

# --- HAProxy: passthrough, and jwt_verify with checks equivalent to the claimgate route:
# alg pinned, signature, iss, aud, exp, the `transfer` scope, the account in the path, a limit > 0.
haproxy_jwt() { # name port alg pem iss
  cat <<EOF
frontend $1
  bind 127.0.0.1:$2
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny status 401 unless { var(txn.alg) -m str $3 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$4") -m int 1 }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $5 }
  http-request deny status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str api }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny status 403 unless { var(txn.bearer),jwt_payload_query('\$.scope') -m sub transfer }
  http-request set-var(txn.account) var(txn.bearer),jwt_payload_query('\$.account')
  http-request deny status 403 unless { path,field(4,/),strcmp(txn.account) eq 0 }
  http-request deny status 403 unless { var(txn.bearer),jwt_payload_query('\$.max','int') -m int gt 0 }
  http-request set-header x-user-id %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend up
EOF
}
cat > "$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
backend up
  server nginx $UP
frontend plain
  bind 127.0.0.1:18086
  default_backend up
frontend tls
  bind 127.0.0.1:18088 ssl crt $W/tls-haproxy.pem alpn h2,http/1.1
  default_backend up
$(haproxy_jwt jwt_rs 18084 RS256 "$KEYS/rsa-public.pem" https://rs.bench)
$(haproxy_jwt jwt_es 18085 ES256 "$KEYS/ec256-public.pem" https://ec.bench)
EOF
taskset -c 1 "$HAPROXY" -f "$W/haproxy.cfg" -db 2>"$W/haproxy.log" & PIDS+=($!); HA_PID=$!

BODY=$(python3 -c 'import json; print(json.dumps({"amount": 100, "memo": "x" * 990}))')
cat > "$W/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
EOF

# The process under test, whose CPU time per request is measured (user and system time from
# /proc: steadier than req/s on a shared machine, and it shows where a proxy spends).
proxy_pid() {
  case $1 in
    nginx-direct) pgrep -P "$(cat "$W/nginx.pid")" | head -1 ;;
    pingora-passthrough|pingora-passthrough-bearer) echo "$PT_PID" ;;
    pingora-passthrough-mimalloc) echo "$PTMI_PID" ;;
    haproxy-*) echo "$HA_PID" ;;
    claimgate-alt-*nocache) echo "$ALT_OFF" ;;
    claimgate-alt-*) echo "$ALT_ON" ;;
    claimgate-*nocache) echo "$CG_OFF" ;;
    claimgate-tls-*) echo "$CG_ON" ;;
    claimgate-*) echo "$CG_ON" ;;
  esac
}
# utime + stime of a process and its threads, in clock ticks ("user sys"); the fields are
# counted after the command name, which may contain spaces.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
# The gateway's own account of its decisions on the measured route: the sum and count of
# `claimgate_decision_duration_seconds` (token verification + policy, timed inside the proxy
# under this load). Per round, sum/count is the mean decision time there, beside criterion's.
admin_of() {
  case $1 in
    claimgate-alt-*nocache) echo 18097 ;;
    claimgate-alt-*) echo 18096 ;;
    claimgate-*nocache) echo 18093 ;;
    claimgate-*) echo 18092 ;;
  esac
}
decision_totals() { # target -> "sum count" for the transfer route, or nothing
  local port; port=$(admin_of "$1")
  [ -n "$port" ] || return 0
  curl -s "http://127.0.0.1:$port/metrics" \
    | awk '/^claimgate_decision_duration_seconds_(sum|count)\{route="transfer"\}/ {printf "%s ", $2}'
}
TICK=$(getconf CLK_TCK)

PATH_T=/api/accounts/acc-1/transfer
# name -> "url|token|script|tool": tool is wrk (keep-alive, the default), close (wrk, a new
# connection per request), h2 or h1 (h2load).
target() {
  case $1 in
    claimgate-tls-open) echo "https://127.0.0.1:18089/open|||wrk" ;;
    haproxy-tls-passthrough) echo "https://127.0.0.1:18088$PATH_T|||wrk" ;;
    claimgate-tls-handshake) echo "https://127.0.0.1:18089/open|||close" ;;
    claimgate-alt-tls-handshake) echo "https://127.0.0.1:18098/open|||close" ;;
    claimgate-close) echo "http://127.0.0.1:18082/open|||close" ;;
    claimgate-alt-close) echo "http://127.0.0.1:18094/open|||close" ;;
    haproxy-tls-handshake) echo "https://127.0.0.1:18088$PATH_T|||close" ;;
    claimgate-h1-open) echo "http://127.0.0.1:18082/open|||h1" ;;
    claimgate-h2-open) echo "http://127.0.0.1:18082/open|||h2" ;;
    claimgate-limit-base) echo "http://127.0.0.1:18082/lim/base|$ES_TOKEN|" ;;
    claimgate-limit-miss) echo "http://127.0.0.1:18082/lim/miss|$ES_TOKEN|" ;;
    claimgate-limit-hit) echo "http://127.0.0.1:18082/lim/hit|$ES_TOKEN|" ;;
    nginx-direct) echo "http://$UP$PATH_T||" ;;
    pingora-passthrough) echo "http://127.0.0.1:18081$PATH_T||" ;;
    # The cached target's exact request (same path, same ES256 token): what a bare Pingora
    # costs to forward it, Authorization header included.
    pingora-passthrough-bearer) echo "http://127.0.0.1:18081$PATH_T|$ES_TOKEN|" ;;
    pingora-passthrough-mimalloc) echo "http://127.0.0.1:18087$PATH_T||" ;;
    haproxy-passthrough) echo "http://127.0.0.1:18086$PATH_T||" ;;
    haproxy-jwt-rs256) echo "http://127.0.0.1:18084$PATH_T|$RS_TOKEN|" ;;
    haproxy-jwt-es256) echo "http://127.0.0.1:18085$PATH_T|$ES_TOKEN|" ;;
    claimgate-open) echo "http://127.0.0.1:18082/open||" ;;
    claimgate-alt-open) echo "http://127.0.0.1:18094/open||" ;;
    claimgate-alt-es256-cache) echo "http://127.0.0.1:18094$PATH_T|$ES_TOKEN|" ;;
    claimgate-alt-es256-nocache) echo "http://127.0.0.1:18095$PATH_T|$ES_TOKEN|" ;;
    claimgate-alt-rs256-nocache) echo "http://127.0.0.1:18095$PATH_T|$RS_TOKEN|" ;;
    claimgate-alt-eddsa-nocache) echo "http://127.0.0.1:18095$PATH_T|$ED_TOKEN|" ;;
    claimgate-alt-hs256-nocache) echo "http://127.0.0.1:18095$PATH_T|$HS_TOKEN|" ;;
    claimgate-es256-cache|claimgate-es256-cache-reloading) echo "http://127.0.0.1:18082$PATH_T|$ES_TOKEN|" ;;
    claimgate-rs256-cache) echo "http://127.0.0.1:18082$PATH_T|$RS_TOKEN|" ;;
    claimgate-es256-nocache) echo "http://127.0.0.1:18083$PATH_T|$ES_TOKEN|" ;;
    claimgate-rs256-nocache) echo "http://127.0.0.1:18083$PATH_T|$RS_TOKEN|" ;;
    claimgate-eddsa-nocache) echo "http://127.0.0.1:18083$PATH_T|$ED_TOKEN|" ;;
    claimgate-hs256-nocache) echo "http://127.0.0.1:18083$PATH_T|$HS_TOKEN|" ;;
    claimgate-body-1k) echo "http://127.0.0.1:18082/api/body|$ES_TOKEN|$W/post.lua" ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
}

# Wait for every listener, then check that each target answers 200 (a 401 would measure denials).
ports="18080 18081 18082 18083 18084 18085 18086 18087 18088 18089 18179"
[ -n "${CG_ALT:-}" ] && ports="$ports 18094 18095 18098"
for port in $ports; do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done
for t in $TARGETS; do
  IFS='|' read -r url tok script tool <<<"$(target "$t")"
  args=(-s -k -o /dev/null -w '%{http_code}')
  [ "$tool" = h2 ] && args+=(--http2-prior-knowledge)
  [ -n "$tok" ] && args+=(-H "Authorization: Bearer $tok")
  [ -n "$script" ] && args+=(-X POST -H 'Content-Type: application/json' --data "$BODY")
  code=$(curl "${args[@]}" "$url" || true)
  # The spent budget answers 429 from its second request on: that is what it measures.
  [ "$code" = 200 ] || { [ "$t" = claimgate-limit-hit ] && [ "$code" = 429 ]; } \
    || { echo "target $t answers $code, not 200" >&2; cat "$W"/*.log >&2; exit 1; }
done

accepts() { curl -s "http://$UP/nginx_status" | awk 'NR==3 {print $1}'; }

RESULTS=$W/results.tsv
: > "$RESULTS"
echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS targets: $TARGETS"
for round in $(seq 1 "$ROUNDS"); do
  # Every other round runs the targets in reverse order: a target that runs second in a pair
  # was measured ahead of the first in every round (an A/B of two builds came out 0.973x one
  # way round and 1.000x the other), so each pair's order alternates.
  order=$TARGETS
  if [ $((round % 2)) -eq 0 ]; then
    order=$(printf '%s\n' $TARGETS | tac | tr '\n' ' ')
  fi
  for t in $order; do
    IFS='|' read -r url tok script tool <<<"$(target "$t")"
    case ${tool:-wrk} in
      h1|h2)
        # h2load: the same connection count; h2 keeps H2_STREAMS requests in flight on each.
        args=(-t1 -c"$CONNS" -D"$DURATION")
        if [ "$tool" = h1 ]; then args+=(--h1 -m1); else args+=(-m"$H2_STREAMS"); fi
        gen=(h2load) ;;
      *)
        args=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)
        [ "$tool" = close ] && args+=(-H "Connection: close")
        gen=(wrk) ;;
    esac
    [ -n "$tok" ] && args+=(-H "Authorization: Bearer $tok")
    [ -n "$script" ] && args+=(-s "$script")
    reloader=""
    if [ "$t" = claimgate-es256-cache-reloading ]; then
      (while sleep 1; do kill -HUP "$CG_ON" 2>/dev/null || exit 0; done) & reloader=$!
    fi
    before=$(accepts)
    pid=$(proxy_pid "$t")
    dec0=$(decision_totals "$t")
    st0=$(machine_ticks)
    g0=$(gen_core_ticks)
    cpu0=$(cpu_ticks "$pid")
    out=$(taskset -c 0 "${gen[@]}" "${args[@]}" "$url")
    cpu1=$(cpu_ticks "$pid")
    g1=$(gen_core_ticks)
    st1=$(machine_ticks)
    dec1=$(decision_totals "$t")
    after=$(accepts)
    [ -n "$reloader" ] && kill "$reloader" 2>/dev/null || true
    echo "$out" | python3 -c '
import re, sys
t, rnd, conns = sys.argv[1], sys.argv[2], sys.argv[3]
(u0, s0), (u1, s1), tick = sys.argv[4].split(), sys.argv[5].split(), float(sys.argv[6])
d0, d1 = sys.argv[7].split(), sys.argv[8].split()
(m0, t0), (m1, t1) = sys.argv[9].split(), sys.argv[10].split()
steal = f"{100 * (int(t1) - int(t0)) / max(1, int(m1) - int(m0)):.1f}"
(gb0, ga0), (gb1, ga1) = sys.argv[11].split(), sys.argv[12].split()
gen_busy = f"{100 * (int(gb1) - int(gb0)) / max(1, int(ga1) - int(ga0)):.0f}"
decision = ""
if len(d0) == 2 and len(d1) == 2 and float(d1[1]) > float(d0[1]):
    decision = f"{(float(d1[0]) - float(d0[0])) / (float(d1[1]) - float(d0[1])) * 1e6:.2f}"
text = sys.stdin.read()
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
if "req/s" in text and "Requests/sec" not in text:
    # h2load: no percentiles; the mean time per request stands in for p50, p99 is not given.
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    n = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    ok = int(re.search(r"status codes: (\d+) 2xx", text).group(1))
    p50 = ms(re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text).group(1))
    p99 = float("nan")
    nerr, nsock = str(n - ok), ""
else:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    nerr = errs.group(1) if errs else "0"
    nsock = sock.group(1) if sock else ""
    n = int(re.search(r"(\d+) requests in", text).group(1))
user = (int(u1) - int(u0)) / tick / n * 1e6
system = (int(s1) - int(s0)) / tick / n * 1e6
print("\t".join([t, rnd, f"{rps:.0f}", f"{p50:.3f}", f"{p99:.3f}", conns, nerr, f"{user:.1f}", f"{system:.1f}", decision, steal, gen_busy, nsock]))
' "$t" "$round" "$((after - before - 1))" "$cpu0" "$cpu1" "$TICK" "$dec0" "$dec1" "$st0" "$st1" "$g0" "$g1" | tee -a "$RESULTS"
  done
done

[ "${SKIP_FLOOR:-}" = 1 ] || measure_floor after

# Rounds in which the hypervisor stole more than STEAL_MAX % of the CPU time are left out of
# the medians and ratios (and listed).
python3 - "$RESULTS" "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$FLOOR" "${STEAL_MAX:-2}" <<'EOF'
import statistics, sys, datetime, platform, os
all_rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out, rounds, duration, conns = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
steal_max = float(sys.argv[7])
rows = [r for r in all_rows if float(r[10]) <= steal_max]
excluded = [f"{r[0]} round {r[1]} ({r[10]} %)" for r in all_rows if float(r[10]) > steal_max]
floors = {}
for line in open(sys.argv[6]):
    when, alg, verify, decide, fresh_, off_, steal = line.split()
    floors.setdefault(alg, []).append((when, float(verify), float(decide), float(fresh_), float(off_), float(steal)))
# Interference only adds time: the lower median of each bench is the floor.
floor = {alg: (min(m[1] for m in ms), min(m[2] for m in ms)) for alg, ms in floors.items()}
fresh = {alg: min(m[3] for m in ms) for alg, ms in floors.items()}
uncached = {alg: min(m[4] for m in ms) for alg, ms in floors.items()}
by = {}
for name, rnd, rps, p50, p99, upc, errs, user, system, _decision, _steal, _gen, *sock in rows:
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(upc), int(errs),
                                    "".join(sock), float(user), float(system)))
med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
           statistics.median(r[2] for r in v), max(r[3] for r in v), sum(r[4] for r in v),
           "; ".join(sorted({r[5] for r in v if r[5]})),
           statistics.median(r[6] for r in v), statistics.median(r[7] for r in v))
       for k, v in by.items()}
per_round = {}
for name, rnd, rps, *_ in rows:
    per_round.setdefault(name, {})[rnd] = float(rps)
def ratio(a, b):
    # Paired by round: targets of one round ran seconds apart, so the machine's drift over the
    # run cancels out; the median of the per-round ratios is what the table shows.
    if a not in per_round or b not in per_round:
        return "n/a"
    pairs = [per_round[a][r] / per_round[b][r] for r in per_round[a] if per_round[b].get(r)]
    return f"{statistics.median(pairs):.2f}x" if pairs else "n/a"
lines = [
    f"# Load benchmark ({datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs)",
    "",
    f"`bash benches/load/run.sh`: {rounds} alternating rounds (targets in reverse order every other round) of {duration} s, {conns} connections, wrk and nginx",
    "on core 0, the proxy under test on core 1 with one worker thread. Medians over the rounds;",
    "ratios are the median of per-round ratios (targets of one round run seconds apart).",
    "`upstream conns` is the most connections nginx accepted in one round (pooling: close to the",
    "proxy's connection count, not growing with requests). `CPU µs/req` is the process under",
    "test's user + system CPU time per request (nginx's worker for nginx-direct).",
    "",
    "| target | req/s | p50 ms | p99 ms | upstream conns | non-2xx | CPU µs/req (user + sys) | vs Pingora passthrough | vs HAProxy passthrough |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for name in by:
    rps, p50, p99, upc, errs, sock, user, system = med[name]
    lines.append(f"| {name} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {upc} | {errs}{' (' + sock + ')' if sock else ''} | "
                 f"{user + system:.1f} ({user:.1f} + {system:.1f}) | "
                 f"{ratio(name, 'pingora-passthrough')} | {ratio(name, 'haproxy-passthrough')} |")
lines += [
    "",
    "Ratios the targets are judged by:",
    "",
    "| comparison | ratio |",
    "| --- | ---: |",
    f"| claimgate ES256 cache warm / Pingora passthrough | {ratio('claimgate-es256-cache', 'pingora-passthrough')} |",
    f"| claimgate ES256 cache warm / Pingora passthrough sent the same request | {ratio('claimgate-es256-cache', 'pingora-passthrough-bearer')} |",
    f"| claimgate ES256 cache warm / Pingora passthrough with mimalloc | {ratio('claimgate-es256-cache', 'pingora-passthrough-mimalloc')} |",
    f"| claimgate open route / Pingora passthrough with mimalloc | {ratio('claimgate-open', 'pingora-passthrough-mimalloc')} |",
    f"| claimgate RS256 no cache / HAProxy jwt_verify RS256 | {ratio('claimgate-rs256-nocache', 'haproxy-jwt-rs256')} |",
    f"| claimgate ES256 no cache / HAProxy jwt_verify ES256 | {ratio('claimgate-es256-nocache', 'haproxy-jwt-es256')} |",
    f"| claimgate open route / HAProxy passthrough | {ratio('claimgate-open', 'haproxy-passthrough')} |",
    f"| claimgate ES256 cache warm / HAProxy passthrough | {ratio('claimgate-es256-cache', 'haproxy-passthrough')} |",
    f"| Pingora passthrough / HAProxy passthrough | {ratio('pingora-passthrough', 'haproxy-passthrough')} |",
    f"| Pingora passthrough with mimalloc / plain Pingora passthrough | {ratio('pingora-passthrough-mimalloc', 'pingora-passthrough')} |",
]
lines += [
    f"| limited route, Redis asked every request / same route without a limit | {ratio('claimgate-limit-miss', 'claimgate-limit-base')} |",
    f"| limited route, over the limit (refused in process) / same route without a limit | {ratio('claimgate-limit-hit', 'claimgate-limit-base')} |",
    f"| claimgate TLS handshakes/s / HAProxy TLS handshakes/s (goal >= 1.2) | {ratio('claimgate-tls-handshake', 'haproxy-tls-handshake')} |",
    f"| claimgate TLS keep-alive / claimgate plain keep-alive (goal >= 0.85) | {ratio('claimgate-tls-open', 'claimgate-open')} |",
    f"| claimgate TLS keep-alive / HAProxy TLS keep-alive | {ratio('claimgate-tls-open', 'haproxy-tls-passthrough')} |",
    f"| claimgate h2 multiplexed / claimgate h1 keep-alive (both h2load) | {ratio('claimgate-h2-open', 'claimgate-h1-open')} |",
]
if "claimgate-es256-cache" in med and "claimgate-es256-cache-reloading" in med:
    lines.append(f"| p99 with a reload every second / p99 without | "
                 f"{med['claimgate-es256-cache-reloading'][2] / med['claimgate-es256-cache'][2]:.2f}x |")
def cpu_ratio(a, b):
    if a not in med or b not in med:
        return "n/a"
    return f"{(med[a][6] + med[a][7]) / (med[b][6] + med[b][7]):.2f}x"
lines += [
    "",
    "CPU time per request (user + system, medians), the steadier view of the same costs:",
    "",
    "| comparison | ratio |",
    "| --- | ---: |",
    f"| claimgate ES256 cache warm / Pingora passthrough | {cpu_ratio('claimgate-es256-cache', 'pingora-passthrough')} |",
    f"| claimgate ES256 cache warm / Pingora passthrough sent the same request | {cpu_ratio('claimgate-es256-cache', 'pingora-passthrough-bearer')} |",
    f"| claimgate open route / Pingora passthrough | {cpu_ratio('claimgate-open', 'pingora-passthrough')} |",
    f"| claimgate RS256 no cache / HAProxy jwt_verify RS256 | {cpu_ratio('claimgate-rs256-nocache', 'haproxy-jwt-rs256')} |",
    f"| claimgate ES256 no cache / HAProxy jwt_verify ES256 | {cpu_ratio('claimgate-es256-nocache', 'haproxy-jwt-es256')} |",
    f"| Pingora passthrough / HAProxy passthrough | {cpu_ratio('pingora-passthrough', 'haproxy-passthrough')} |",
    f"| limited route, Redis asked every request / without a limit | {cpu_ratio('claimgate-limit-miss', 'claimgate-limit-base')} |",
    f"| limited route, refused in process / without a limit | {cpu_ratio('claimgate-limit-hit', 'claimgate-limit-base')} |",
    f"| claimgate TLS handshake / HAProxy TLS handshake | {cpu_ratio('claimgate-tls-handshake', 'haproxy-tls-handshake')} |",
    f"| claimgate TLS keep-alive / claimgate plain keep-alive | {cpu_ratio('claimgate-tls-open', 'claimgate-open')} |",
    f"| claimgate h2 multiplexed / claimgate h1 keep-alive | {cpu_ratio('claimgate-h2-open', 'claimgate-h1-open')} |",
]
# The limit: what a request costs beyond the open route, against the work it cannot avoid.
cpu_round = {}
decision_round = {}
steals = [float(r[10]) for r in all_rows]
busy = {}
for name, rnd, rps, p50, p99, upc, errs, user, system, decision, steal, gen, *sock in rows:
    # The proxy's core: its CPU per request times its requests per second.
    busy.setdefault(name, []).append((float(gen), (float(user) + float(system)) * float(rps) / 1e4))
    cpu_round.setdefault(name, {})[rnd] = float(user) + float(system)
    if decision:
        decision_round.setdefault(name, {})[rnd] = float(decision)
def spread(values, fmt):
    # Every paired round may have been left out for steal: say so rather than fail the report.
    values = sorted(values)
    if not values:
        return "n/a"
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}–{fmt(values[-1])})"
lines += [
    "",
    "The limit ratios. Uncached: CPU per request above the open route's (paired by round), against",
    "the criterion medians measured on the proxy's core in this run: the bare signature check with",
    "the key parsed once (`verify_primitive`), plus the policy's own decision on a token it has",
    "decided before (`decide_3_rules/<alg>/cache_on`, rules and headers remembered) or on a new",
    "token (`<alg>/new_token`, verified but rules and headers evaluated for the first time, as an",
    "uncached request must). Goal: the last column ≤ 1.15. Cached: CPU per request and req/s",
    "against the plain Pingora passthrough (goals ≤ 1.05 and ≥ 0.95), sent the path alone and",
    "sent the cached target's exact request (`pingora-passthrough-bearer`, the same token in its",
    "Authorization header). Medians, with the range over the rounds.",
    "",
    "| target | CPU µs/req above open | verify µs | decision µs (cached / new token) | / verify | / (verify + cached decision) | / (verify + new-token decision) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for alg in ("rs256", "es256", "eddsa", "hs256"):
    t = f"claimgate-{alg}-nocache"
    if t not in cpu_round or "claimgate-open" not in cpu_round or alg not in floor:
        continue
    over = [cpu_round[t][r] - cpu_round["claimgate-open"][r] for r in cpu_round[t] if r in cpu_round["claimgate-open"]]
    verify, decide = floor[alg]
    f1 = lambda v: f"{v:.1f}"
    f2 = lambda v: f"{v:.2f}"
    lines.append(f"| {t} | {spread(over, f1)} | {verify:.2f} | {decide:.2f} / {fresh[alg]:.2f} | "
                 f"{spread([o / verify for o in over], f2)} | {spread([o / (verify + decide) for o in over], f2)} | "
                 f"{spread([o / (verify + fresh[alg]) for o in over], f2)} |")
# The cached goal against both passthroughs: the bare one is sent the path only; the bearer one
# the cached target's exact request (its ~430-byte Authorization header parsed and forwarded).
for t, base in (("claimgate-es256-cache", "pingora-passthrough"),
                ("claimgate-es256-cache", "pingora-passthrough-bearer"),
                ("claimgate-open", "pingora-passthrough")):
    if t in cpu_round and base in cpu_round:
        cpu = [cpu_round[t][r] / cpu_round[base][r] for r in cpu_round[t] if r in cpu_round[base]]
        rps = [per_round[t][r] / per_round[base][r] for r in per_round[t] if r in per_round[base]]
        f2 = lambda v: f"{v:.2f}x"
        lines.append(f"| {t} / {base}: CPU per request {spread(cpu, f2)}, req/s {spread(rps, f2)} | | | | | | |")
# Where an uncached request's extra CPU goes: inside the decision, as the gateway times it under
# this load, or outside it. The decision timer is wall time on the one pinned worker: CPU time
# unless the thread was interrupted or the hypervisor stole the core.
inside = [t for t in (f"claimgate-{a}-nocache" for a in ("rs256", "es256", "eddsa", "hs256"))
          if t in decision_round and t in cpu_round and "claimgate-open" in cpu_round]
if inside:
    lines += [
        "",
        "Inside and outside the decision: the gateway's own mean decision time on the measured route",
        "(`claimgate_decision_duration_seconds`, sum / count per round) against criterion's verify +",
        "new-token decision and the core's whole uncached decision (`<alg>/cache_off`), and the CPU",
        "above the open route that is not inside the decision.",
        "",
        "| target | CPU µs/req above open | decision in the gateway µs | criterion verify + new-token decision µs | criterion uncached decision µs | in the gateway / verify + new-token decision | above open, outside the decision µs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    f1 = lambda v: f"{v:.1f}"
    f2 = lambda v: f"{v:.2f}"
    for t in inside:
        alg = t.split("-")[1]
        rounds_ = [r for r in decision_round[t] if r in cpu_round[t] and r in cpu_round["claimgate-open"]]
        over = [cpu_round[t][r] - cpu_round["claimgate-open"][r] for r in rounds_]
        dec = [decision_round[t][r] for r in rounds_]
        crit = floor[alg][0] + fresh[alg] if alg in floor else float("nan")
        lines.append(f"| {t} | {spread(over, f1)} | {spread(dec, f1)} | {crit:.2f} | {uncached.get(alg, float('nan')):.2f} | "
                     f"{spread([d / crit for d in dec], f2)} | "
                     f"{spread([cpu_round[t][r] - cpu_round['claimgate-open'][r] - decision_round[t][r] for r in rounds_], f1)} |")
    if "claimgate-es256-cache" in decision_round:
        lines.append(f"| claimgate-es256-cache | | {spread(list(decision_round['claimgate-es256-cache'].values()), f1)} | "
                     f"{floor['es256'][1] if 'es256' in floor else float('nan'):.2f} (cached decision only) | | | |")
if steals:
    steals.sort()
    lines += ["", "Which core bounds each target (medians over its rounds, % busy): the load generator's",
              "(core 0: the generator and nginx) and the process under test's (its CPU per request times",
              "its requests per second). A generator core near 100 % means the target measured the",
              "generator: compare such targets by CPU per request, not by req/s.", "",
              "| target | generator core busy % | process under test % of a core |", "| --- | ---: | ---: |"]
    for name, v in busy.items():
        lines.append(f"| {name} | {statistics.median(g for g, _ in v):.0f} | {statistics.median(p for _, p in v):.0f} |")
    lines += ["", f"CPU time stolen by the hypervisor per target and round: median {steals[len(steals) // 2]:.1f} %, "
              f"largest {steals[-1]:.1f} %. Left out of every median and ratio above (over {steal_max:g} %): "
              + (", ".join(excluded) if excluded else "none") + "."]
if floors:
    lines += ["", "Criterion floor, before and after the rounds (verify µs / decision µs on a cached token, a new token, uncached; steal meanwhile); the lower is used: "
              + "; ".join(f"{alg} " + ", ".join(f"{w} {v:.2f} / {d:.2f}, {fr:.2f}, {of:.2f} ({st:.1f} %)" for w, v, d, fr, of, st in ms)
                          for alg, ms in floors.items()) + "."]
if any(k.startswith("claimgate-alt-") for k in cpu_round):
    lines += ["", "A/B: the CG_ALT binary against this one, same rounds (CPU per request, req/s):", "",
              "| target | CPU alt / this | req/s alt / this |", "| --- | ---: | ---: |"]
    for t in ("open", "es256-cache", "es256-nocache", "rs256-nocache", "eddsa-nocache", "hs256-nocache", "close", "tls-handshake"):
        a_, b_ = f"claimgate-alt-{t}", f"claimgate-{t}"
        if a_ in cpu_round and b_ in cpu_round:
            cpu = [cpu_round[a_][r] / cpu_round[b_][r] for r in cpu_round[a_] if r in cpu_round[b_]]
            rps = [per_round[a_][r] / per_round[b_][r] for r in per_round[a_] if r in per_round[b_]]
            f2 = lambda v: f"{v:.3f}x"
            lines.append(f"| {t} | {spread(cpu, f2)} | {spread(rps, f2)} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"\nwritten to {out}")
EOF
# The floor's `cargo bench` left its own build (no LTO, ~7 % more instructions per request) at
# target/release/claimgate: the release build is put back, so that nothing measured afterwards
# is the wrong binary.
if [ "${SKIP_FLOOR:-}" != 1 ]; then
  rm -f target/release/claimgate
  cargo build --release --locked --bin claimgate
fi
