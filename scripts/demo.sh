#!/usr/bin/env bash
# The demo: starts nats-server with nats.conf, two agents from examples/, and shows ctl
# controlling them. Everything it starts is stopped when it ends (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --workspace --bins
BIN="$PWD/target/debug"
export NATS_URL="nats://127.0.0.1:4222"
WORK="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "something already listens on 127.0.0.1:4222; stop it (or its nats-server) and run the demo again" >&2
    exit 1
fi
nats-server -c nats.conf >"$WORK/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.05; done

rm -rf state/first state/second
"$BIN/nodeagent" --config examples/first.toml >"$WORK/first.log" 2>&1 & pids+=($!)
"$BIN/nodeagent" --config examples/second.toml >"$WORK/second.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
    [ "$("$BIN/ctl" members --status alive --json 2>/dev/null | grep -o '"name"' | wc -l)" -ge 2 ] && break
    sleep 0.1
done

run() {
    echo
    echo "\$ ctl $*"
    "$BIN/ctl" "$@" || echo "(exit code $?)"
}
run members
run --node second status
run --node second incr dummy
run --node second list dummy
run --all status
run --tag role=web numprocesses web
run --service jobs numprocesses worker 5
run --tag role=worker list worker
run --node first logs web -l 4
run --node first restart web --rolling
run --node first signal dummy HUP
run --node nosuch status
run --all quit
sleep 0.5
echo
echo "demo done; agent logs were in $WORK"
