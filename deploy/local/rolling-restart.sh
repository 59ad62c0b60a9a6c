#!/usr/bin/env bash
# Several gateway replicas behind HAProxy on loopback, under steady load, restarted one at a time
# as a rolling update does: SIGTERM one replica, wait for it to exit, start its successor on the
# same ports, wait until HAProxy sees it UP, go on to the next. Prints the requests sent, answered
# 200 and failed. HAProxy checks /readyz every 200 ms and retries nothing, so a request a replica
# drops is counted as failed rather than hidden by a second try.
#
#   deploy/local/rolling-restart.sh            (needs haproxy, wrk and curl from Debian; builds
#                                               the release binary if missing)
# Settings (environment): REPLICAS=3 ROUNDS=2 CONNECTIONS=32 GRACE=2 (grace_period_seconds)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
REPLICAS=${REPLICAS:-3}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-32}
GRACE=${GRACE:-2}
for tool in haproxy wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install $tool)" >&2; exit 2; }
done
binary=$repo/target/release/claimgate
[ -x "$binary" ] || cargo build --release --locked --bin claimgate

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The demo gateway.toml and rules/, on this run's ports, with absolute paths to the repository.
config() { # proxy admin tls echo grace
  sed -e "s#127.0.0.1:8080#127.0.0.1:$1#" -e "s#127.0.0.1:9901#127.0.0.1:$2#" \
      -e "s#127.0.0.1:8443#127.0.0.1:$3#" -e "s#127.0.0.1:9000#127.0.0.1:$4#g" \
      -e "s#^grace_period_seconds = .*#grace_period_seconds = $5#" \
      -e "s#\"dev/#\"$repo/dev/#g" -e "s#^dir = \"rules\"#dir = \"$repo/rules\"#" \
      gateway.toml
}

# The upstream: the built-in echo server, in a process of its own that is never restarted.
echo_port=$(free_port)
config "$(free_port)" "$(free_port)" "$(free_port)" "$echo_port" 0 > "$work/upstream.toml"
"$binary" run --config "$work/upstream.toml" --echo-upstream "127.0.0.1:$echo_port" \
  --echo-data "$repo/dev/demo-data" 2>"$work/upstream.log" &
pids+=($!)

declare -a proxy admin pid
start_replica() { # index
  local i=$1
  "$binary" run --config "$work/r$i.toml" 2>>"$work/r$i.log" &
  pid[$i]=$!
  pids+=($!)
  for _ in $(seq 1 200); do
    curl -fso /dev/null "http://127.0.0.1:${admin[$i]}/readyz" && return 0
    sleep 0.05
  done
  echo "replica $i did not become ready:" >&2; tail -5 "$work/r$i.log" >&2; exit 1
}
for i in $(seq 0 $((REPLICAS - 1))); do
  proxy[$i]=$(free_port); admin[$i]=$(free_port)
  config "${proxy[$i]}" "${admin[$i]}" "$(free_port)" "$echo_port" "$GRACE" > "$work/r$i.toml"
  start_replica "$i"
done

front=$(free_port); stats=$(free_port)
{
  printf 'global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n'
  printf 'listen stats\n  bind 127.0.0.1:%s\n  stats enable\n  stats uri /stats\n' "$stats"
  printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend gateways\n' "$front"
  printf 'backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n'
  printf '  default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 2\n'
  for i in $(seq 0 $((REPLICAS - 1))); do
    printf '  server r%s 127.0.0.1:%s check port %s\n' "$i" "${proxy[$i]}" "${admin[$i]}"
  done
} > "$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
pids+=($!)
up() { curl -fs "http://127.0.0.1:$stats/stats;csv" | awk -F, -v s="$1" '$1=="gateways" && $2==s {print $18}'; }
wait_up() { for _ in $(seq 1 300); do [ "$(up "r$1")" = "UP" ] && return 0; sleep 0.05; done; echo "r$1 never UP" >&2; exit 1; }
for i in $(seq 0 $((REPLICAS - 1))); do wait_up "$i"; done

token=$("$binary" token --key dev/keys/es256-private.pem --alg ES256 --kid dev-es256 \
  --iss https://dev.claimgate.local --aud claimgate-demo --sub alice --ttl 3600)
# One restart takes the grace period, the drain, a start and two health checks: ~GRACE + 1 s.
duration=$(( (GRACE + 2) * REPLICAS * ROUNDS + 4 ))
wrk -t2 -c"$CONNECTIONS" -d"${duration}s" --timeout 5s -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$front/api/profile" > "$work/wrk.txt" &
load=$!
sleep 2
echo "load: $CONNECTIONS keep-alive connections for ${duration}s through HAProxy to $REPLICAS replicas (grace ${GRACE}s)"
for round in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((REPLICAS - 1))); do
    t0=$(date +%s.%N)
    kill -TERM "${pid[$i]}"
    status=0; wait "${pid[$i]}" || status=$?
    t1=$(date +%s.%N)
    start_replica "$i"
    wait_up "$i"
    t2=$(date +%s.%N)
    printf 'round %s replica %s: stopped in %.2fs (exit %s), successor UP after %.2fs\n' \
      "$round" "$i" "$(awk "BEGIN{print $t1 - $t0}")" "$status" "$(awk "BEGIN{print $t2 - $t1}")"
  done
done
wait "$load"

answered=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
non2xx=$(awk -F: '/Non-2xx/ {gsub(/ /,"",$2); print $2}' "$work/wrk.txt"); non2xx=${non2xx:-0}
errors=$(awk '/Socket errors/ {gsub(/,/,""); print $4+$6+$8+$10}' "$work/wrk.txt"); errors=${errors:-0}
ok=$((answered - non2xx)); failed=$((non2xx + errors)); sent=$((ok + failed))
grep -E "Latency|Req/Sec|requests in|Socket errors|Non-2xx" "$work/wrk.txt" | sed 's/^/  wrk: /'
echo "sent $sent, answered 200 $ok, failed $failed"
grep -h " ERROR " "$work"/r*.log && echo "(ERROR lines above)" || true
[ "$failed" -eq 0 ]
