#!/usr/bin/env bash
# Many distinct tokens: TOKENS users (1 000 000 by default) arrive at a steady rate, each sends
# USES requests (10) with its own token (ES256; ALG=HS256 below) spread over WINDOW seconds
# (60), at RATE requests per second (8 000: the one worker 15-60 % busy on the hosts measured;
# at 12 000 it was ~94 % busy on the slowest and any stall drained slowly) over 32 kept-alive
# connections. The gateway (release build, one worker thread
# on core 1, [token_cache] max_entries = ENTRIES) forwards to nginx; the load generator shares
# core 0 with nginx and signs every token before its clock starts (signing in the request loop
# put the client's own work into the tail). First a baseline of one token repeated at the same
# rate for BASELINE seconds, then the population. Reports per 10 s: latency (from when each
# request was due), the cache's hit ratio, the gateway's mean decision and upstream times and
# how many of its decisions and upstream answers were slow (from its metrics: a tail the client
# sees that the gateway's decisions do not was spent elsewhere), the gateway's resident memory
# and CPU, the
# load generator's own CPU, and the CPU time the hypervisor stole from this VM; then the steady
# state and the peak resident memory; last, the baseline once more (a drifting host shows as two
# baselines that disagree). A column times a chase of dependent loads through 64 MiB on
# the load generator's core (examples/token_churn/probe.rs): a gateway whose decisions slow down
# while it stays flat changed itself; both slowing together is the host. After the population's
# warm-up, every INTERLEAVE-th interval (4th; 0 for none) carries the one repeated token instead,
# the population pausing: a baseline under the same host and process state, seconds from the
# population's intervals it is compared with (two baselines minutes apart differed 1.6x in one
# run). Writes benches/load/results-many-tokens.md.
#
#   bash benches/load/many-tokens.sh
#   TOKENS=300000 RATE=12000 ENTRIES=10000 bash benches/load/many-tokens.sh
#   ALG=HS256 bash benches/load/many-tokens.sh   # new tokens whose check costs ~0.3 µs, not ~35
#   CG_BIN=/path/to/other/claimgate bash benches/load/many-tokens.sh   # another build, as is
#   TARGET_PATH=/open bash benches/load/many-tokens.sh   # a route without authentication
#   PACE_US=100 bash benches/load/many-tokens.sh   # requests released every 100 µs, not per ms
#
# PACE_US: tokio's timer ticks once a millisecond, so by default the RATE/1000 requests due in a
# millisecond leave together and meet the gateway as a burst, each one's latency including its
# place in the burst (results-many-tokens-bursts.md). With PACE_US the load generator releases
# them from a thread of its own every PACE_US microseconds (sleeping on the kernel's
# high-resolution timers, not spinning: core 0 is nginx's too), as independent clients arrive.
#
# ALG=HS256 keeps everything else (the cache, its churn, the claims) and makes a new token's
# signature nearly free: what the many-token tail owes to signature checks on the one worker is
# the difference between the two.
#
# Needs nginx (nginx-light) and cmake (for the build); installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# shellcheck source=common.sh
. "$ROOT/benches/load/common.sh"
TOKENS=${TOKENS:-1000000}
USES=${USES:-10}
WINDOW=${WINDOW:-60}
RATE=${RATE:-8000}
ENTRIES=${ENTRIES:-100000}
ALG=${ALG:-ES256}
BASELINE=${BASELINE:-60}
INTERLEAVE=${INTERLEAVE:-4}
PACE_US=${PACE_US:-0}
TARGET_PATH=${TARGET_PATH:-/api/accounts/acc-1/transfer}
OUT=${OUT:-$ROOT/benches/load/results-many-tokens.md}

command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || {
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null
}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# The gateway by itself, as users build it; the example (dev-dependencies) in a second command
# (see run.sh).
# Removed first: a criterion run may have left its own build there (see run.sh).
# CG_BIN=<a claimgate binary>: measure that build instead (an A/B across commits, one run each).
if [ -z "${CG_BIN:-}" ]; then
  rm -f target/release/claimgate
  cargo build --release --locked --bin claimgate
  CG_BIN=target/release/claimgate
fi
cargo build --release --locked --example token_churn
W=$(mktemp -d)
cp "$CG_BIN" "$W/claimgate"; cp target/release/examples/token_churn "$W/token_churn"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
KEYS=$ROOT/tests/fixtures/keys
case $ALG in
  ES256)
    KEYSPEC="{ pem_file = \"$KEYS/ec256-public.pem\", kid = \"ec1\" }"
    SIGNING=(--key "$KEYS/ec256-private.pem" --kid ec1) ;;
  HS256)
    # The gateway reads the secret from its environment, the load generator from a file.
    export BENCH_HS_SECRET=bench-secret-for-hmac-keys-0123456789abcdef
    printf %s "$BENCH_HS_SECRET" > "$W/hs.secret"
    KEYSPEC='{ secret_env = "BENCH_HS_SECRET", kid = "hs1", alg = "HS256" }'
    SIGNING=(--key "$W/hs.secret" --kid hs1) ;;
  *) echo "ALG is ES256 or HS256" >&2; exit 1 ;;
esac
UP=127.0.0.1:18280

mkdir -p "$W/rules"
bench_nginx "$NGINX" "$W" "$UP"
bench_transfer_route '"ec"' > "$W/rules/bench.toml"
# A route without authentication, for TARGET_PATH=/open: the same load with no token work in the
# gateway (what the client, nginx and the host contribute to a difference between the two loads).
printf '[[route]]\nname = "open"\npath = "/open"\nauth = "none"\n' >> "$W/rules/bench.toml"
cat > "$W/gateway.toml" <<CFG
[server]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
[listen]
proxy = "127.0.0.1:18282"
admin = "127.0.0.1:18292"
[rules]
dir = "rules"
[reload]
watch = false
poll_seconds = 0
[token_cache]
enabled = true
max_entries = $ENTRIES
[upstreams.main]
addresses = ["$UP"]
[issuers.ec]
issuer = "https://ec.bench"
audiences = ["api"]
algorithms = ["$ALG"]
keys = [$KEYSPEC]
CFG
# The listeners use SO_REUSEPORT: a gateway left over from another run would silently share the
# ports (and the load). Refuse to start beside one.
for port in 18280 18282 18292; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    [ $port = 18280 ] && [ -f "$W/nginx.pid" ] && continue
    echo "port $port is in use: stop what listens there first" >&2; exit 1
  fi
done
cd "$W"
# taskset execs the gateway: $! is the gateway's own pid (its memory is read from /proc).
RUST_LOG=warn taskset -c 1 "$W/claimgate" run --config "$W/gateway.toml" 2>"$W/gateway.log" &
GW=$!
PIDS+=($GW)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/18282) 2>/dev/null && break
  sleep 0.1
done
cd "$ROOT"
CLAIMS='{"account":"acc-1","permissions":["read","transfer"],"scope":"read transfer","features":{"maxTransactionAmount":5000}}'
churn() {
  taskset -c 0 "$W/token_churn" --gateway 127.0.0.1:18282 --path "$TARGET_PATH" \
    --admin 127.0.0.1:18292 --pid "$GW" --rate "$RATE" --alg "$ALG" "${SIGNING[@]}" \
    --iss https://ec.bench --claims "$CLAIMS" --pace-us "$PACE_US" "$@"
}
{
  echo "# Many distinct tokens ($(date -u +%Y-%m-%d), $(uname -m), $(nproc) CPUs)"
  echo
  echo "\`bash benches/load/many-tokens.sh\`: $ALG tokens, route with 3 rules and 2 forwarded headers,"
  echo "gateway release build with one worker thread on core 1, \`[token_cache] max_entries = $ENTRIES\`;"
  echo "load generator and nginx on core 0, every token signed before the clock starts. Latency is"
  echo "measured from when each request was due."
  echo
  echo "## Baseline: one token repeated, $RATE req/s for $BASELINE s"
  echo
  churn --single --seconds "$BASELINE" | tee "$W/single.txt" | grep --line-buffered -v '^RESULT' 
  echo
  echo "## $TOKENS tokens × $USES uses over $WINDOW s, $RATE req/s$( [ "$INTERLEAVE" -ge 2 ] && echo " (one interval in $INTERLEAVE: one token)")"
  echo
  churn --tokens "$TOKENS" --uses "$USES" --window "$WINDOW" --interleave "$INTERLEAVE" | tee "$W/many.txt" | grep --line-buffered -v '^RESULT' 
  echo
  # The same baseline once more, right after: a host whose speed drifted over the long run
  # shows as two baselines that disagree (the verdict stays against the first, as specified).
  echo "## Baseline again, after the population: one token repeated, $RATE req/s for $BASELINE s"
  echo
  churn --single --seconds "$BASELINE" | tee "$W/after.txt" | grep --line-buffered -v '^RESULT' 
  echo
  python3 - "$W/single.txt" "$W/many.txt" "$ENTRIES" "$W/after.txt" "$INTERLEAVE" <<'PY'
import re, sys
def result(path):
    line = [l for l in open(path) if l.startswith("RESULT")][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
single, many, entries = result(sys.argv[1]), result(sys.argv[2]), int(sys.argv[3])
print(f"p99 at steady state, many tokens / one token before the population: {many['p99_ms']:.3f} / "
      f"{single['p99_ms']:.3f} ms = {many['p99_ms'] / single['p99_ms']:.2f}x (goal <= 1.5)")
# The same comparison against the one-token intervals interleaved with the population: the same
# host, process and minutes, so what differs is only which tokens the requests carry.
if 'p99_one_ms' in many:
    print(f"p99 at steady state, many tokens / one token interleaved in the same run: "
          f"{many['p99_ms']:.3f} / {many['p99_one_ms']:.3f} ms = "
          f"{many['p99_ms'] / many['p99_one_ms']:.2f}x (goal <= 1.5)")
grown = many['hwm_mib'] - single['rss0_mib']
# With more distinct tokens than max_entries the cache ends full: the growth is per entry.
print(f"peak resident memory {many['hwm_mib']:.1f} MiB: {grown:.1f} MiB above the idle gateway, "
      f"{grown * 1024 * 1024 / entries:.0f} bytes per entry of a full cache (max_entries = {entries})")
# Steal is CPU time the hypervisor gave to another guest: the gateway stalls without being busy.
# A run with much of it measured the host, not the gateway.
steal = max(single.get('steal_max', 0), many.get('steal_max', 0))
print(f"most CPU time stolen in one steady-state interval: {steal:.1f} %"
      + (" (over 2 %: the host interfered; the latency ratio is not a clean measurement)" if steal > 2 else ""))
# A diagnostic beside the verdict above, never instead of it: the median of the per-interval p99s
# over whole steady-state intervals (the first, warm-up, and the last, partial, are left out),
# all of them and only those in which the hypervisor stole at most 1 % of the CPU time.
def table(path):
    rows = []
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            rows.append(cells)
    return rows[1:-1]
def load(c):
    return c[15] if len(c) >= 16 else "one"
def intervals(path, kind=None):
    return [(float(c[3]), float(c[9])) for c in table(path) if kind is None or load(c) == kind]
def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")
# Where the tail is: the share of requests the gateway itself decided slowly, and the share whose
# upstream answered slowly (nginx shares core 0 with the load generator). A p99 is the slowest
# 1 %: a stage slow for more than 1 % of requests sets it, one slow for far fewer cannot.
def gateway(path):
    pat = (r"the gateway's decisions at steady state: (\d+) \(mean ([\d.]+) µs\), (\d+) slower than "
           r"([\d.]+) ms; upstream answers slower than ([\d.]+) ms: (\d+)")
    for line in open(path):
        m = re.match(pat, line)
        if m:
            return m
    return None
g1, gm = gateway(sys.argv[1]), gateway(sys.argv[2])
if g1 and gm:
    share = lambda m, i: 100.0 * int(m.group(i)) / max(int(m.group(1)), 1)
    print(f"decisions slower than {gm.group(4)} ms: many tokens {share(gm, 3):.3f} % of requests "
          f"(mean decision {gm.group(2)} µs), one token {share(g1, 3):.3f} % ({g1.group(2)} µs); "
          f"upstream answers slower than {gm.group(5)} ms: many tokens {share(gm, 6):.2f} %, "
          f"one token {share(g1, 6):.2f} %"
          + (" (the many-token counts include the interleaved one-token intervals)"
             if 'p99_one_ms' in many else ""))
after = result(sys.argv[4])
print(f"p99 of one token after the population: {after['p99_ms']:.3f} ms (before it: {single['p99_ms']:.3f} ms); "
      f"many tokens / that baseline: {many['p99_ms'] / after['p99_ms']:.2f}x")
# Host or gateway: the load generator's memory probe (ns per dependent load, column 15)
# beside the gateway's mean decision (column 11), early and late in the population.
def drift(path, kind=None):
    return [(float(c[10]), float(c[14])) for c in table(path)
            if len(c) >= 15 and (kind is None or load(c) == kind)]
d = drift(sys.argv[2], "many")
if len(d) >= 6:
    k = max(len(d) // 4, 1)
    early, late = d[:k], d[-k:]
    print(f"many tokens, first / last quarter of the intervals: mean decision "
          f"{median([r[0] for r in early]):.1f} / {median([r[0] for r in late]):.1f} µs, "
          f"host memory probe {median([r[1] for r in early]):.0f} / {median([r[1] for r in late]):.0f} ns per load "
          f"(one token before / after: {median([r[1] for r in drift(sys.argv[1])]):.0f} / "
          f"{median([r[1] for r in drift(sys.argv[4])]):.0f} ns)")
# Per cycle: each one-token interval against the median p99 of the population's intervals just
# before it (at most INTERLEAVE - 1, none from the warm-up, which no one-token interval precedes).
ratios, recent = [], []
for c in table(sys.argv[2]):
    if load(c) == "one":
        if recent:
            ratios.append(median(recent) / float(c[3]))
        recent = []
    else:
        recent = (recent + [float(c[3])])[-max(int(sys.argv[5]) - 1, 1):]
if ratios:
    print(f"per cycle, median p99 of the population's intervals / the next one-token interval's: "
          f"median {median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} cycles")
for label, quiet in (("all intervals", 100.0), ("intervals with steal <= 1 %", 1.0)):
    a = [p99 for p99, st in intervals(sys.argv[1]) if st <= quiet]
    b = [p99 for p99, st in intervals(sys.argv[2], "many") if st <= quiet]
    print(f"median interval p99, {label}: many tokens {median(b):.3f} ms ({len(b)} intervals), "
          f"one token {median(a):.3f} ms ({len(a)}): {median(b) / median(a):.2f}x")
PY
} | tee "$OUT"
