#!/usr/bin/env bash
# Cluster benchmark: N agents (default 50) on one machine and one nats-server.
# Prints a table: `ctl --all` against `ctl --node` wall time (whole process, median and
# p95 of R runs), and failure-detection times: SIGKILL (the server's disconnect event
# marks the member failed at once) and SIGSTOP (the connection stays open: missed
# heartbeats make it suspect after 3 heartbeats, failed after failed_after).
#
#   bench/cluster.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
N=${1:-50}
R=${2:-20}
cargo build --release --workspace --bins -q
BIN="$PWD/target/release"
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export NATS_URL="nats://127.0.0.1:$PORT"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

sed "s/^listen: .*/listen: 127.0.0.1:$PORT/" nats.conf > "$WORK/nats.conf"
nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done

for i in $(seq 1 "$N"); do
    cat > "$WORK/n$i.toml" <<EOT
[agent]
name = "n$i"
tags = { rack = "r$((i % 5))" }
heartbeat = "500ms"
failed_after = "3s"
stats_interval = "0s"
log_dir = "$WORK/logs/n$i"
[nats]
servers = ["$NATS_URL"]
system_events_account = "CLUSTER"
[watcher.w]
cmd = "sleep"
args = ["100000"]
stdout = "discard"
stderr = "discard"
EOT
    "$BIN/nodeagent" -c "$WORK/n$i.toml" >"$WORK/n$i.log" 2>&1 & pids+=($!)
done
alive() { "$BIN/ctl" members --status alive --json 2>/dev/null | grep -o '"state":"alive"' | wc -l; }
for _ in $(seq 300); do [ "$(alive)" -ge "$N" ] && break; sleep 0.1; done
echo "agents alive: $(alive) of $N"

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
stats() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.95+0.999)]; printf "%d %d\n", m, p}'; }
measure() {
    for _ in $(seq "$R"); do
        t=$(date +%s%N)
        "$BIN/ctl" "$@" >/dev/null || echo "ctl $* failed with exit code $?" >&2
        ms "$t"
    done | stats
}
# The first call right after a mass start meets every agent still busy with the
# others' join announcements; it is shown on a line of its own.
t=$(date +%s%N); "$BIN/ctl" --all numwatchers >/dev/null || echo "first ctl --all failed" >&2
first_ms=$(ms "$t")
read -r all_med all_p95 < <(measure --all numwatchers)
read -r one_med one_p95 < <(measure --node n1 numwatchers)
read -r tag_med tag_p95 < <(measure --tag rack=r1 numwatchers)

# SIGKILL: the server closes the connection and tells the other agents at once.
victim=${pids[2]}
# Reaped at once with stderr closed, so bash does not report the kill.
t=$(date +%s%N); { kill -9 "$victim"; wait "$victim"; } 2>/dev/null || true
for _ in $(seq 2000); do
    "$BIN/ctl" members --name n2 --json | grep -q '"state":"failed"' && break
done
kill_ms=$(ms "$t")

# SIGSTOP: the connection stays open; only missed heartbeats tell.
victim=${pids[3]}
t=$(date +%s%N); kill -STOP "$victim"; suspect_ms=""
for _ in $(seq 4000); do
    out=$("$BIN/ctl" members --name n3 --json)
    if [ -z "$suspect_ms" ] && echo "$out" | grep -q '"state":"suspect"'; then suspect_ms=$(ms "$t"); fi
    echo "$out" | grep -q '"state":"failed"' && break
    sleep 0.02
done
stop_ms=$(ms "$t")
kill -CONT "$victim"

printf '\n%-44s %10s %10s\n' "measure ($N agents, $R runs)" "median ms" "p95 ms"
printf '%-44s %10s %10s\n' "ctl --all numwatchers (whole process)" "$all_med" "$all_p95"
printf '%-44s %10s\n' "first ctl --all right after the mass start" "$first_ms"
printf '%-44s %10s %10s\n' "ctl --tag rack=r1 numwatchers" "$tag_med" "$tag_p95"
printf '%-44s %10s %10s\n' "ctl --node n1 numwatchers" "$one_med" "$one_p95"
printf '%-44s %10s\n' "ratio --all / --node (median)" "$(awk "BEGIN {printf \"%.2f\", $all_med / ($one_med > 0 ? $one_med : 1)}")"
printf '%-44s %10s\n' "SIGKILL -> failed (disconnect event)" "$kill_ms"
printf '%-44s %10s\n' "SIGSTOP -> suspect (3 x 500ms heartbeats)" "${suspect_ms:-n/a}"
printf '%-44s %10s\n' "SIGSTOP -> failed (failed_after 3s)" "$stop_ms"
printf '%-44s %10s\n' "Serf on a LAN, for comparison (its docs)" "~4000-5000"
