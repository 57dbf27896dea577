#!/usr/bin/env bash
# Load benchmark: one agent (release build) on a nats-server of its own; several
# clients send a mix of reads (status, list, numprocesses) and writes (incr/decr
# keeping the count bounded, set priority) to cluster.<node>.cmd at a fixed total rate,
# then print a table: requests sent, lost replies (must be 0), error replies,
# p50/p99/max latency, the agent's RSS at start and end and its CPU.
#
#   bench/load.sh [--secs 60] [--rate 1000] [--clients 4] [--mix all|reads|writes|resize|set]
#
# --mix sends only one part of the mix (the writes are resize: incr and decr, and
# set), to tell which one costs what.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=60 RATE=1000 CLIENTS=4 MIX=all
while [ $# -gt 0 ]; do
    case "$1" in
        --secs) SECS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --mix) MIX=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "load.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
source scripts/setup.sh
cargo build --release -p nodeagent -p ctl --bins -q
cargo bench -p nodeagent --bench load --no-run -q
BIN="$PWD/target/release"
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="nats://127.0.0.1:$PORT"
pids=()
cleanup() {
    # The agent first (it stops its processes on TERM), then the server.
    for ((i=${#pids[@]}-1; i>=0; i--)); do
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

nats-server -a 127.0.0.1 -p "$PORT" >"$WORK/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done

cat > "$WORK/load.toml" <<EOT
[agent]
name = "load"
stats_interval = "1s"
state_dir = "$WORK/state"
log_dir = "$WORK/logs"
[nats]
servers = ["$URL"]
[watcher.load]
cmd = "sleep"
args = ["100000"]
numprocesses = 8
stdout = "discard"
stderr = "discard"
EOT
"$BIN/nodeagent" -c "$WORK/load.toml" >"$WORK/agent.log" 2>&1 & agent=$!; pids+=($agent)
for _ in $(seq 200); do
    "$BIN/ctl" -s "$URL" --node load --timeout 1s ping >/dev/null 2>&1 && break
    sleep 0.05
done
"$BIN/ctl" -s "$URL" --node load ping >/dev/null || { cat "$WORK/agent.log" >&2; exit 1; }

status=0
cargo bench -p nodeagent --bench load -q -- --url "$URL" --node load --pid "$agent" \
    --rate "$RATE" --secs "$SECS" --clients "$CLIENTS" --mix "$MIX" || status=$?
kill -0 "$agent" 2>/dev/null || { echo "load.sh: the agent died" >&2; cat "$WORK/agent.log" >&2; exit 1; }
echo "processes of watcher load after the run: $("$BIN/ctl" -s "$URL" --node load numprocesses load)"
exit $status
