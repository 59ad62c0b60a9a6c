#!/usr/bin/env bash
# Logs under load: the repository's gateway (release build, built-in echo upstream) serves at
# least REQUESTS requests from wrk; then the log is read. Every request must succeed, no line may
# be at ERROR, and the busiest second must stay under the line budget (200 a second plus
# decision lines, which this traffic does not produce: every request is allowed).
#
#   bash benches/logs/run.sh                     # 1 000 000 requests, 64 connections
#   REQUESTS=200000 CONNS=32 bash benches/logs/run.sh
#
# Installs wrk from Debian when missing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
REQUESTS=${REQUESTS:-1000000}
CONNS=${CONNS:-64}
if ! command -v wrk >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bin claimgate
W=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:18480/' -e 's/127.0.0.1:9901/127.0.0.1:18481/' \
  -e 's/127.0.0.1:9000/127.0.0.1:18482/' \
  -e "s#dir = \"rules\"#dir = \"$ROOT/rules\"#" -e "s#dev/#$ROOT/dev/#g" gateway.toml > "$W/gateway.toml"
"$ROOT/target/release/claimgate" run --config "$W/gateway.toml" --log-format json \
  --echo-upstream 127.0.0.1:18482 2> "$W/log" &
PID=$!
for _ in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:18480/health 2>/dev/null && break; sleep 0.1; done

# wrk runs for a duration: find the rate first, then run long enough for REQUESTS.
RATE=$(wrk -t2 -c"$CONNS" -d3s http://127.0.0.1:18480/health | awk '/Requests\/sec/ {print int($2)}')
SECS=$(( REQUESTS * 11 / 10 / (RATE > 0 ? RATE : 1) + 2 ))
echo "about $RATE requests/s: running ${SECS}s"
wrk -t2 -c"$CONNS" -d"${SECS}s" http://127.0.0.1:18480/health | tee "$W/wrk.txt"
TOTAL=$(awk '/requests in/ {print $1}' "$W/wrk.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$W/wrk.txt"); NON2XX=${NON2XX:-0}
ERRORS=$(awk '/Socket errors/ {print}' "$W/wrk.txt")
sleep 1
curl -fsS http://127.0.0.1:18481/metrics | grep -E '^claimgate_proxy_events_total' || true
LINES=$(wc -l < "$W/log")
ERROR_LINES=$(grep -c '"level":"ERROR"' "$W/log" || true)
BUSIEST=$(cut -c15-33 "$W/log" | sort | uniq -c | sort -rn | head -1 | awk '{print $1}')
echo "requests: $TOTAL (warm-up not counted), non-2xx: $NON2XX, ${ERRORS:-no socket errors}"
echo "log lines: $LINES, ERROR lines: $ERROR_LINES, busiest second: ${BUSIEST:-0} lines"
grep '"level":"ERROR"' "$W/log" | head -5 || true
[ "$TOTAL" -ge "$REQUESTS" ] && [ "$NON2XX" -eq 0 ] && [ "$ERROR_LINES" -eq 0 ] && [ "${BUSIEST:-0}" -le 200 ]
