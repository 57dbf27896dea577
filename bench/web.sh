#!/usr/bin/env bash
# What `ctl web` costs with a big cluster: a local nats-server, `ctl web` (release
# build), one page's live stream held open (curl on /api/stream, as a browser's
# EventSource), and cli/examples/web_load.rs publishing what NODES agents publish every
# second (an announcement and a stats message each, 5 watchers x 2 processes per node,
# a few events). No real agent runs.
#
# After a warm-up it measures, over SECONDS seconds: ctl web's CPU (utime+stime from
# /proc, as % of one core), its RSS (VmRSS, peak and last), the size of the `update`
# events the page received (one a second: mean and max bytes), the snapshot a page gets
# on connecting, and one /metrics scrape (bytes and time).
#
#   bench/web.sh [NODES] [SECONDS]        defaults: 100 nodes, 60 s
#   BUILD=0 bench/web.sh                  use the release binaries already built
# Everything it starts is stopped on exit (trap EXIT), also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
NODES=${1:-100}
SECS=${2:-60}
WARMUP=10
command -v curl >/dev/null || { echo "bench/web.sh needs curl" >&2; exit 1; }
[ "${BUILD:-1}" = 0 ] || cargo build --release -q -p ctl --bins --examples
BIN="$PWD/target/release"
WORK="$(mktemp -d /tmp/bench-web.XXXXXX)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NPORT=$(free_port)
WPORT=$(free_port)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

nats-server -a 127.0.0.1 -p "$NPORT" >"$WORK/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.05; done
URL="nats://127.0.0.1:$NPORT"

"$BIN/ctl" -s "$URL" web --listen "127.0.0.1:$WPORT" >"$WORK/web.log" 2>&1 & WEB=$!; pids+=($WEB)
for _ in $(seq 100); do grep -q "serving the dashboard" "$WORK/web.log" && break; sleep 0.05; done
grep -q "serving the dashboard" "$WORK/web.log" || { cat "$WORK/web.log" >&2; exit 1; }

"$BIN/examples/web_load" "$URL" "$NODES" $((WARMUP + SECS + 5)) 2>"$WORK/load.log" & pids+=($!)
sleep "$WARMUP"

# One page listening for the whole measurement.
curl -sN "http://127.0.0.1:$WPORT/api/stream" >"$WORK/stream.txt" & pids+=($!)

ticks() { awk '{print $14 + $15}' "/proc/$WEB/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$WEB/status"; }
HZ=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N); peak=0
for _ in $(seq "$SECS"); do
    sleep 1
    r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
done
t1=$(ticks); s1=$(date +%s.%N); last=$(rss_kib)
cpu=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$HZ" 'BEGIN {printf "%.1f", (b - a) / hz / (e - s) * 100}')

m0=$(date +%s%N)
curl -s -o "$WORK/metrics.txt" "http://127.0.0.1:$WPORT/metrics"
m1=$(date +%s%N)
curl -s -o "$WORK/state.json" "http://127.0.0.1:$WPORT/api/state"

# The data line of each `update` event, in bytes.
read -r n mean max < <(awk '/^event: update/ {u=1; next} u && /^data: / {n++; b=length($0)-6; s+=b; if (b>m) m=b; u=0} END {printf "%d %.0f %d\n", n, (n ? s/n : 0), m}' "$WORK/stream.txt")

echo
echo "ctl web with $NODES nodes ($((NODES * 10)) processes), stats and announcements every second, one page listening:"
printf '  %-34s %s\n' "CPU over ${SECS}s (% of one core)" "$cpu"
printf '  %-34s %s MiB peak, %s MiB last\n' "RSS" "$((peak / 1024))" "$((last / 1024))"
printf '  %-34s %s updates, mean %s bytes, max %s bytes\n' "SSE update (once a second)" "$n" "$mean" "$max"
printf '  %-34s %s bytes\n' "snapshot for a new page" "$(wc -c <"$WORK/state.json")"
printf '  %-34s %s bytes, %s series, %s ms\n' "/metrics scrape" "$(wc -c <"$WORK/metrics.txt")" "$(grep -vc '^#' "$WORK/metrics.txt")" "$(((m1 - m0) / 1000000))"
cat "$WORK/load.log" >&2 || true
