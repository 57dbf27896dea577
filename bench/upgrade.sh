#!/usr/bin/env bash
# Times the hot upgrade: from the `upgrade` request to the agent answering `ping` with
# its new boot, as `ctl --node N upgrade --rolling` measures and prints it ("upgraded in
# X s"), over RUNS upgrades of one agent that runs WATCHERS watchers of 2 processes
# each (one of them printing a line every 5 ms, so that its pipe carries output across
# the exec). The agent runs from a copy of the binary, replaced before each upgrade by
# a fresh copy (a new inode, as a package upgrade leaves it). Prints p50, p90 and max,
# and checks that every process kept its pid.
#
# Usage: bench/upgrade.sh        RUNS=20  WATCHERS=5  PROFILE=release (or debug)
# Everything it starts is stopped on exit (trap EXIT), also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-20}
WATCHERS=${WATCHERS:-5}
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
    cargo build --release --workspace --bins -q
else
    cargo build --workspace --bins -q
fi
BIN="$ROOT/target/$PROFILE"
WORK=$(mktemp -d /tmp/bench-upgrade.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="nats://127.0.0.1:$PORT"
nats-server -a 127.0.0.1 -p "$PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)

mkdir -p "$WORK/bin"
cp "$BIN/nodeagent" "$WORK/bin/nodeagent"
{
    printf '[agent]\nname = "bench"\nstate_dir = "%s/state"\n\n[nats]\nservers = ["%s"]\n\n' "$WORK" "$URL"
    printf '[watcher.talk]\ncmd = "sh"\nargs = ["-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.005; done"]\nnumprocesses = 2\n\n'
    for i in $(seq 2 "$WATCHERS"); do
        printf '[watcher.w%d]\ncmd = "sleep"\nargs = ["86400"]\nnumprocesses = 2\n\n' "$i"
    done
} >"$WORK/node.toml"
"$WORK/bin/nodeagent" --config "$WORK/node.toml" >"$WORK/agent.log" 2>&1 &
AGENT=$!
PIDS+=($AGENT)

ctl() { "$BIN/ctl" -s "$URL" --node bench "$@"; }
for _ in $(seq 1 100); do ctl --timeout 1s ping >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
before=$(ps -o pid= --ppid "$AGENT" | sort | tr '\n' ' ')

TIMES=()
for i in $(seq 1 "$RUNS"); do
    cp "$BIN/nodeagent" "$WORK/bin/nodeagent.new"
    mv "$WORK/bin/nodeagent.new" "$WORK/bin/nodeagent"
    line=$(ctl --timeout 20s upgrade --rolling | grep 'upgraded in')
    t=$(sed -E 's/.*upgraded in ([0-9.]+)s.*/\1/' <<<"$line")
    TIMES+=("$t")
    printf '[%2d/%d] %ss\n' "$i" "$RUNS" "$t" >&2
done

after=$(ps -o pid= --ppid "$AGENT" | sort | tr '\n' ' ')
[ "$before" = "$after" ] || { echo "the processes changed: $before -> $after" >&2; exit 1; }
[ "$(ctl ping --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')" = "$AGENT" ] \
    || { echo "the agent's pid changed" >&2; exit 1; }

printf '%s\n' "${TIMES[@]}" | sort -n | awk -v runs="$RUNS" -v procs="$((WATCHERS * 2))" '
    { t[NR] = $1 }
    END {
        p50 = t[int((NR + 1) / 2)]; p90 = t[int(NR * 0.9 + 0.999)]; max = t[NR]
        printf "upgrade, request to ping answered by the new boot (%d runs, %d processes kept):\n", runs, procs
        printf "  p50 %.0f ms   p90 %.0f ms   max %.0f ms\n", p50 * 1000, p90 * 1000, max * 1000
    }'
