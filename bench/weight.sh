#!/usr/bin/env bash
# The agent alone, quickly: its VmRSS (and the anonymous and file-backed parts, from
# /proc/PID/status) idle with 10 watchers of `sleep`, then with one watcher of
# HUNDRED processes and stats at 1 s (and its idle CPU), and the scale 1 -> HUNDRED+1 and
# graceful stop of HUNDRED (median and min-max of SCALE_RUNS), as bench/foundation.sh
# measures them. Idle with 10 watchers, it also times the first `ctl status` after
# start-up (the code it runs may have to be read back into memory: see
# nodeagent/src/memory.rs) against the median of the next CTL_RUNS, with the agent's
# major page faults during each, then the respawn of KILLS children (bench/respawn.py).
#
# Usage: bench/weight.sh [BINDIR]
#   BINDIR: a directory with nodeagent and ctl (built by the caller). Without it, the
#   static musl agent (scripts/build-static.sh, built when missing or stale) with
#   target/release/ctl; AGENT=gnu: target/release's glibc agent (see bench/lib.sh)
#   SETTLE=3  seconds idle before each RSS reading   SCALE_RUNS=5   HUNDRED=100
#   (the agent pages its start-up code out 2 s after it serves commands, and its
#   periodic work brings part of it back within a second: keep SETTLE at 3 or more to
#   read the steady size, not the moment of the page-out)
#   IDLE_SECS=10  the window of the idle CPU reading (HUNDRED processes, stats at 1 s)
#   KILLS=20  respawns measured (10 watchers)
# Everything it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SETTLE=${SETTLE:-3}
SCALE_RUNS=${SCALE_RUNS:-5}
HUNDRED=${HUNDRED:-100}
IDLE_SECS=${IDLE_SECS:-10}
CTL_RUNS=${CTL_RUNS:-10}
KILLS=${KILLS:-20}
WORK=$(mktemp -d /tmp/bench-weight.XXXXXX)
MARKER=86400124
. bench/lib.sh
trap 'stop_processes; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

if [ -n "${1:-}" ]; then
    BIN=$(cd "$1" && pwd)
    AGENT_BUILD=$BIN
else
    agent_bindir "$WORK/bin"
    BIN=$WORK/bin
fi
echo "agent: $AGENT_BUILD, $(readlink -f "$BIN/nodeagent"); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# mem PID: "VmRSS anon file threads" (MiB, MiB, MiB, count)
mem() {
    awk '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} /^Threads:/ {t = $2}
        END {printf "%.2f %.2f %.2f %d", r / 1024, a / 1024, f / 1024, t}' "/proc/$1/status"
}
spread() {
    python3 -c 'import statistics, sys
v = [float(x) / 1e6 for x in open(sys.argv[1]) if x.strip()]
print(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")' "$1"
}

NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
PORT=$(free_port)
"$NATS" -a 127.0.0.1 -p "$PORT" -l "$WORK/nats.log" &
OTHERS+=($!)
wait_for 10 nats-server grep -q "Server is ready" "$WORK/nats.log"
URL=nats://127.0.0.1:$PORT

agent_idle_config w10 "$WORK/s10" "$URL" "$MARKER" >"$WORK/w10.toml"
"$BIN/nodeagent" -c "$WORK/w10.toml" 2>"$WORK/w10.log" &
A=$!
MANAGERS+=($A)
wait_for 20 "the agent's ping" "$BIN/ctl" -s "$URL" --node w10 ping
wait_for 20 "10 children" python3 bench/scale.py "$A" "$MARKER" 10 1
sleep "$SETTLE"
echo "idle, 10 watchers:        VmRSS anon file threads = $(mem "$A")"
majflt() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $10}'; }
# ctl_ms PID CTL...: the wall time of one command (ms), then the agent's major faults in it
ctl_ms() {
    local pid=$1 f0 t0 t1
    shift
    f0=$(majflt "$pid")
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    echo "$(((t1 - t0) / 1000)) $(($(majflt "$pid") - f0))"
}
read -r first first_faults < <(ctl_ms "$A" "$BIN/ctl" -s "$URL" --node w10 status)
: >"$WORK/ctl.us"
faults=0
for _ in $(seq 1 "$CTL_RUNS"); do
    read -r us f < <(ctl_ms "$A" "$BIN/ctl" -s "$URL" --node w10 status)
    echo "$us" >>"$WORK/ctl.us"
    faults=$((faults + f))
done
echo "first ctl status (ms):    $(awk -v u="$first" 'BEGIN {printf "%.2f", u / 1000}'), agent major faults $first_faults; the next $CTL_RUNS: median $(sort -n "$WORK/ctl.us" | awk '{v[NR] = $1} END {printf "%.2f", v[int((NR + 1) / 2)] / 1000}'), major faults $faults"
python3 bench/respawn.py "$A" "$MARKER" "$KILLS" 0.2:0.4 >"$WORK/respawn.ns"
echo "respawn (ms):             $(python3 -c 'import statistics, sys
v = sorted(float(x) / 1e6 for x in open(sys.argv[1]) if x.strip())
print(f"median {statistics.median(v):.2f}, p95 {v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]:.2f}, of {len(v)}")' "$WORK/respawn.ns")"
kill -TERM "$A"
wait "$A" 2>/dev/null || true

agent_hundred_config w100 "$WORK/s100" "$URL" "$MARKER" "$HUNDRED" >"$WORK/w100.toml"
"$BIN/nodeagent" -c "$WORK/w100.toml" 2>"$WORK/w100.log" &
A=$!
MANAGERS+=($A)
CTL=("$BIN/ctl" -s "$URL" --node w100)
wait_for 20 "the agent's ping" "${CTL[@]}" ping
python3 bench/scale.py "$A" "$MARKER" "$HUNDRED" 60 >/dev/null
sleep "$SETTLE"
echo "1 x $HUNDRED, stats 1 s:      VmRSS anon file threads = $(mem "$A")"
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
t0=$(ticks "$A")
sleep "$IDLE_SECS"
t1=$(ticks "$A")
echo "idle CPU over ${IDLE_SECS}s:      $(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v s="$IDLE_SECS" 'BEGIN {printf "%.2f", d / hz / s * 100}') % of a core"
: >"$WORK/stop.ns"
: >"$WORK/scale.ns"
for _ in $(seq 1 "$SCALE_RUNS"); do
    python3 bench/scale.py "$A" "$MARKER" 0 60 "${CTL[@]}" stop w1 >>"$WORK/stop.ns"
    "${CTL[@]}" numprocesses w1 1 >/dev/null && "${CTL[@]}" start w1 >/dev/null
    python3 bench/scale.py "$A" "$MARKER" 1 60 >/dev/null
    python3 bench/scale.py "$A" "$MARKER" $((HUNDRED + 1)) 60 "${CTL[@]}" numprocesses w1 $((HUNDRED + 1)) >>"$WORK/scale.ns"
    python3 bench/scale.py "$A" "$MARKER" "$HUNDRED" 60 "${CTL[@]}" numprocesses w1 "$HUNDRED" >/dev/null
done
echo "scale 1 -> $((HUNDRED + 1)) (ms):       $(spread "$WORK/scale.ns")"
echo "graceful stop of $HUNDRED (ms):   $(spread "$WORK/stop.ns")"
echo "after the runs:           VmRSS anon file threads = $(mem "$A")"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
