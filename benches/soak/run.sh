#!/usr/bin/env bash
# Soak test (not in CI): the repository's gateway (release build, built-in echo upstream and demo
# data) under 10 minutes of mixed valid and invalid traffic, with a policy reload every 2 seconds.
# Reports RSS at start and end, requests by status class, and any 5xx or crash.
#
#   bash benches/soak/run.sh                 # 600 s
#   SOAK_SECONDS=120 bash benches/soak/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECONDS_TOTAL=${SOAK_SECONDS:-600}
command -v wrk >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq wrk >/dev/null; }

cargo build --release --locked --bin claimgate
CG=$ROOT/target/release/claimgate
W=$(mktemp -d)
cleanup() { [ -n "${GW:-}" ] && kill "$GW" 2>/dev/null || true; [ -n "${RL:-}" ] && kill "$RL" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

cp -r "$ROOT/rules" "$W/rules"
sed -e "s#127.0.0.1:8080#127.0.0.1:18280#; s#127.0.0.1:9901#127.0.0.1:18290#; s#127.0.0.1:9000#127.0.0.1:18200#g" \
    -e "s#\"dev/#\"$ROOT/dev/#g" "$ROOT/gateway.toml" > "$W/gateway.toml"
RUST_LOG=warn "$CG" run --config "$W/gateway.toml" --echo-upstream 127.0.0.1:18200 \
  --echo-data "$ROOT/dev/demo-data" 2>"$W/gateway.log" &
GW=$!
for _ in $(seq 1 100); do curl -sf localhost:18290/readyz >/dev/null && break; sleep 0.1; done

mint() { local ttl=$1; shift; "$CG" token --key "$ROOT/dev/keys/es256-private.pem" --alg ES256 \
  --kid dev-es256 --iss https://dev.claimgate.local --aud claimgate-demo --ttl "$ttl" "$@"; }
GOOD=$(mint 86400 --sub alice --claims '{"permissions":["transfer","reports:read"],"geoCompliance":{"isAllowed":true}}')
BROKE=$(mint 86400 --sub bob)
EXPIRED=$(mint 1 --sub alice); sleep 2
TAMPERED="${GOOD%?}A"

cat > "$W/mix.lua" <<LUA
local reqs = {
  wrk.format("GET", "/api/profile", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/api/reports/7", { Authorization = "Bearer $GOOD" }),
  wrk.format("POST", "/api/transfer", { Authorization = "Bearer $GOOD", ["Content-Type"] = "application/json" }, '{"amount": 10}'),
  wrk.format("POST", "/api/transfer", { Authorization = "Bearer $GOOD", ["Content-Type"] = "application/json" }, '{"amount": 99999}'),
  wrk.format("POST", "/api/transfer", { Authorization = "Bearer $GOOD", ["Content-Type"] = "application/json" }, '{"amount": '),
  wrk.format("GET", "/api/game/play", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/api/game/play", { Authorization = "Bearer $BROKE" }),
  wrk.format("GET", "/api/files/large/x", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/api/profile", { Authorization = "Bearer $EXPIRED" }),
  wrk.format("GET", "/api/profile", { Authorization = "Bearer $TAMPERED" }),
  wrk.format("GET", "/api/profile", { Authorization = "Bearer not.a.jwt" }),
  wrk.format("GET", "/api/profile"),
  wrk.format("GET", "/api/./profile", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/api/%2e%2e/admin", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/nope", { Authorization = "Bearer $GOOD" }),
  wrk.format("GET", "/health"),
}
local i = 0
request = function()
  i = i + 1
  return reqs[(i % #reqs) + 1]
end
LUA

rss() { awk '/VmRSS/ {print $2}' /proc/$GW/status; }
# Warm up, then take the starting RSS.
wrk -t1 -c16 -d5s -s "$W/mix.lua" http://127.0.0.1:18280 >/dev/null
RSS_START=$(rss)
(while sleep 2; do
   echo "# touched $(date +%s)" >> "$W/rules/10-demo.toml"
   kill -HUP "$GW" 2>/dev/null || exit 0
 done) &
RL=$!
OUT=$(wrk -t1 -c32 -d"${SECONDS_TOTAL}s" --timeout 5s -s "$W/mix.lua" http://127.0.0.1:18280)
kill "$RL" 2>/dev/null || true
ALIVE=yes; kill -0 "$GW" 2>/dev/null || ALIVE=no
RSS_END=$( [ "$ALIVE" = yes ] && rss || echo "-")
FINAL=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $GOOD" localhost:18280/api/profile || true)
METRICS=$(curl -s localhost:18290/metrics)
RELOADS=$(echo "$METRICS" | awk '/^claimgate_rules_reload_total\{result="success"\}/ {print $2}')
echo "$OUT"
echo
echo "soak: ${SECONDS_TOTAL}s mixed traffic, a reload every 2 s (successful reloads: ${RELOADS:-?})"
echo "RSS start: ${RSS_START} KiB, end: ${RSS_END} KiB"
echo "gateway alive at the end: $ALIVE; a valid request afterwards: $FINAL"
echo "panics in the log: $(grep -c -i panic "$W/gateway.log" || true)"
echo "decisions: $(echo "$METRICS" | awk '/^claimgate_requests_total/ {split($1, a, "decision=\""); split(a[2], b, "\""); n[b[1]] += $2} END {for (k in n) printf "%s %d  ", k, n[k]}')"
echo "denials by reason: $(echo "$METRICS" | awk '/^claimgate_denials_total/ {split($1, a, "reason=\""); split(a[2], b, "\""); n[b[1]] += $2} END {for (k in n) printf "%s %d  ", k, n[k]}')"
echo "upstream responses by class: $(echo "$METRICS" | awk '/^claimgate_upstream_responses_total/ {split($1, a, "class=\""); split(a[2], b, "\""); n[b[1]] += $2} END {for (k in n) printf "%s %d  ", k, n[k]}')"
echo "gateway 5xx (source_unavailable denials): $(echo "$METRICS" | awk '/^claimgate_denials_total.*reason="source_unavailable"/ {n += $2} END {print n + 0}')"
