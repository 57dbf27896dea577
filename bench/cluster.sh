#!/usr/bin/env bash
# Cluster benchmark: N agents (default 50) on one machine and one nats-server.
# Prints a table: `ctl --all` against `ctl --node` wall time (whole process, median and
# p95 of R runs), and failure-detection times: SIGKILL (the server's disconnect event
# marks the member failed at once) and SIGSTOP (the connection stays open: missed
# heartbeats make it suspect after 3 heartbeats, failed after failed_after).
# A state never seen, or a ctl run that failed, is reported as a failure (and the script
# exits 1), never as a time; with fewer agents alive than asked it stops before measuring.
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
up=$(alive)
echo "agents alive: $up of $N"
if [ "$up" -lt "$N" ]; then
    echo "bench/cluster.sh: only $up of $N agents are alive; not measuring a smaller cluster" >&2
    echo "the ends of the agents' logs:" >&2
    tail -n 2 "$WORK"/n*.log | tail -n 40 >&2
    exit 1
fi
failures=0

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
stats() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.95+0.999)]; printf "%d %d\n", m, p}'; }
# Median and p95 of the runs that succeeded, then how many failed: "MED P95 FAILED".
measure() {
    local bad=0 t
    for _ in $(seq "$R"); do
        t=$(date +%s%N)
        if "$BIN/ctl" "$@" >/dev/null; then
            ms "$t" >>"$WORK/times"
        else
            echo "ctl $* failed with exit code $?" >&2
            bad=$((bad + 1))
        fi
    done
    read -r med p95 < <(stats <"$WORK/times" 2>/dev/null || echo "0 0")
    rm -f "$WORK/times"
    echo "${med:-0} ${p95:-0} $bad"
}
# A cell: the time, or FAILED when some runs failed or the state was never seen.
cell() { if [ "$2" -gt 0 ]; then echo "FAILED($2/$R)"; else echo "$1"; fi; }
# The first call right after a mass start meets every agent still busy with the
# others' join announcements; it is shown on a line of its own.
t=$(date +%s%N)
if "$BIN/ctl" --all numwatchers >/dev/null; then first_ms=$(ms "$t"); else first_ms="FAILED"; fi
read -r all_med all_p95 all_bad < <(measure --all numwatchers)
read -r one_med one_p95 one_bad < <(measure --node n1 numwatchers)
read -r tag_med tag_p95 tag_bad < <(measure --tag rack=r1 numwatchers)
failures=$((failures + all_bad + one_bad + tag_bad))
[ "$first_ms" = FAILED ] && failures=$((failures + 1))

# SIGKILL: the server closes the connection and tells the other agents at once.
victim=${pids[2]}
# Reaped at once with stderr closed, so bash does not report the kill.
t=$(date +%s%N); { kill -9 "$victim"; wait "$victim"; } 2>/dev/null || true
kill_ms="FAILED(never seen failed in 30s)"
while [ "$(ms "$t")" -lt 30000 ]; do
    if "$BIN/ctl" members --name n2 --json | grep -q '"state":"failed"'; then kill_ms=$(ms "$t"); break; fi
    sleep 0.005
done

# SIGSTOP: the connection stays open; only missed heartbeats tell.
victim=${pids[3]}
t=$(date +%s%N); kill -STOP "$victim"; suspect_ms=""; stop_ms="FAILED(never seen failed in 30s)"
while [ "$(ms "$t")" -lt 30000 ]; do
    out=$("$BIN/ctl" members --name n3 --json || true)
    if [ -z "$suspect_ms" ] && echo "$out" | grep -q '"state":"suspect"'; then suspect_ms=$(ms "$t"); fi
    if echo "$out" | grep -q '"state":"failed"'; then stop_ms=$(ms "$t"); break; fi
    sleep 0.02
done
kill -CONT "$victim"
suspect_ms=${suspect_ms:-"FAILED(never seen suspect)"}
for v in "$kill_ms" "$suspect_ms" "$stop_ms"; do
    case "$v" in FAILED*) failures=$((failures + 1)) ;; esac
done

printf '\n%-44s %10s %10s\n' "measure ($N agents, $R runs)" "median ms" "p95 ms"
printf '%-44s %10s %10s\n' "ctl --all numwatchers (whole process)" "$(cell "$all_med" "$all_bad")" "$all_p95"
printf '%-44s %10s\n' "first ctl --all right after the mass start" "$first_ms"
printf '%-44s %10s %10s\n' "ctl --tag rack=r1 numwatchers" "$(cell "$tag_med" "$tag_bad")" "$tag_p95"
printf '%-44s %10s %10s\n' "ctl --node n1 numwatchers" "$(cell "$one_med" "$one_bad")" "$one_p95"
printf '%-44s %10s\n' "ratio --all / --node (median)" "$(awk "BEGIN {printf \"%.2f\", $all_med / ($one_med > 0 ? $one_med : 1)}")"
printf '%-44s %10s\n' "SIGKILL -> failed (disconnect event)" "$kill_ms"
printf '%-44s %10s\n' "SIGSTOP -> suspect (3 x 500ms heartbeats)" "$suspect_ms"
printf '%-44s %10s\n' "SIGSTOP -> failed (failed_after 3s)" "$stop_ms"
printf '%-44s %10s\n' "Serf on a LAN, for comparison (its docs)" "~4000-5000"
if [ "$failures" -gt 0 ]; then
    echo "bench/cluster.sh: $failures measure(s) failed; the table shows FAILED where" >&2
    exit 1
fi
