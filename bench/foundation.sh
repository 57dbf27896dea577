#!/usr/bin/env bash
# Benchmarks the foundation, and Circus and supervisord beside it in the same run:
#
#   idle RSS      the manager process's VmRSS with 10 watchers of one `sleep` each, after
#                 the processes are up and it has idled for a moment;
#   CLI wall      one control command as a whole process, start to exit (median, p95):
#                 `ctl --node N numprocesses w1`, `circusctl numprocesses w1`,
#                 `supervisorctl status`; measured with hyperfine (installed with apt-get
#                 when missing) or, failing that, a loop around `date +%s%N`;
#   respawn       from SIGKILL of a child to its replacement existing as a new child of
#                 the manager (median, p95): bench/respawn.py spins on
#                 /proc/sys/kernel/ns_last_pid and reads /proc/PID/stat of the new pids
#                 only; the victim is the oldest child, so no manager counts the kill
#                 as a failed start and backs off; kills are spaced randomly so that a
#                 manager restarting on a periodic tick is sampled at every phase.
#
# Usage: bench/foundation.sh
#   RUNS=50     CLI runs per tool         KILLS=20   respawns measured for nodeagent
#   PEER_KILLS=5  respawns measured for Circus and supervisord (each takes ~1-5 s there)
#   PEERS=0     skip Circus and supervisord (installed with pip into BENCH_VENV,
#               default target/bench-venv, when missing)
#   BASELINE=DIR  also measure the nodeagent and ctl in DIR (the release directory of
#               another build, say an earlier commit's) in the same run, first, and add
#               its column and the ratio of this build to it
# Everything it starts is stopped on exit (trap EXIT), also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-50}
KILLS=${KILLS:-20}
PEER_KILLS=${PEER_KILLS:-5}
PEERS=${PEERS:-1}
VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
WORK=$(mktemp -d /tmp/bench-foundation.XXXXXX)
MANAGERS=() # pids to stop gracefully, then kill, with their children
OTHERS=()   # pids to kill
MARKER=86400123 # `sleep $MARKER`: counts only the benchmark's own processes

log() { printf '[%3ss] %s\n' "$SECONDS" "$*" >&2; }

stop_all() {
    local p kids=()
    for p in "${MANAGERS[@]}"; do
        kids+=($(ps -o pid= --ppid "$p" 2>/dev/null || true))
        kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${MANAGERS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${MANAGERS[@]}" "${kids[@]}" "${OTHERS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 50 ms.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then
            log "timed out waiting for $what"
            exit 1
        fi
        sleep 0.05
    done
}

count_children() { # PID MARKER -> how many children run `sleep MARKER`
    local n=0 c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        grep -qa "$2" "/proc/$c/cmdline" 2>/dev/null && n=$((n + 1))
    done
    echo "$n"
}
has_children() { [ "$(count_children "$1" "$2")" -ge "$3" ]; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# stats FILE: "median p95" in ms of nanosecond values, one per line.
stats() {
    python3 - "$1" <<'EOF'
import sys
v = sorted(float(x) for x in open(sys.argv[1]) if x.strip())
if not v:
    print("nan nan"); sys.exit()
def q(p):
    i = (len(v) - 1) * p
    lo = int(i); hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)
print(f"{q(0.5) / 1e6:.2f} {q(0.95) / 1e6:.2f}")
EOF
}

# wall NAME COMMAND...: RUNS timed runs of COMMAND into $WORK/NAME.ns
HYPERFINE=""
wall() {
    local name=$1
    shift
    if [ -n "$HYPERFINE" ]; then
        local cmd
        cmd=$(printf '%q ' "$@")
        hyperfine -N --style none --warmup 3 --runs "$RUNS" \
            --export-json "$WORK/$name.json" "$cmd" >/dev/null
        python3 -c 'import json,sys; [print(int(t*1e9)) for t in json.load(open(sys.argv[1]))["results"][0]["times"]]' \
            "$WORK/$name.json" >"$WORK/$name.ns"
    else
        local i t0 t1
        for i in 1 2 3; do "$@" >/dev/null; done
        : >"$WORK/$name.ns"
        for i in $(seq 1 "$RUNS"); do
            t0=$(date +%s%N)
            "$@" >/dev/null
            t1=$(date +%s%N)
            echo $((t1 - t0)) >>"$WORK/$name.ns"
        done
    fi
}

# ---------------------------------------------------------------- tools
if ! command -v hyperfine >/dev/null; then
    log "installing hyperfine (apt-get)..."
    (apt-get install -y -qq hyperfine >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq hyperfine >/dev/null 2>&1; }) || true
fi
command -v hyperfine >/dev/null && HYPERFINE=1 || log "hyperfine unavailable: timing with date +%s%N"
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS_SERVER" ] || { log "install nats-server: apt-get install -y nats-server"; exit 1; }
if [ "$PEERS" = 1 ] && ! [ -x "$VENV/bin/circusd" -a -x "$VENV/bin/supervisord" ]; then
    log "installing circus and supervisor into $VENV (pip)..."
    (python3 -m venv "$VENV" && "$VENV/bin/pip" install -q circus supervisor) >/dev/null 2>&1 ||
        { log "pip install failed: comparing without Circus and supervisord"; PEERS=0; }
fi

log "building (release)..."
cargo build --release --bins -q
BIN=$ROOT/target/release

WATCHERS=$(seq 1 10)

# ---------------------------------------------------------------- nodeagent
# measure_agent TAG BINDIR: the idle RSS, CLI wall and respawn of BINDIR's nodeagent
# (driven by BINDIR's ctl), into ${TAG}_RSS, ${TAG}_CLI_MED, ... ; the agent is left
# running (stopped on exit) unless a baseline follows.
measure_agent() {
    local tag=$1 bin=$2 port url agent med p95
    log "nodeagent ($bin)..."
    port=$(free_port)
    "$NATS_SERVER" -a 127.0.0.1 -p "$port" -l "$WORK/nats-$tag.log" &
    OTHERS+=($!)
    wait_for 10 "nats-server" grep -q "Server is ready" "$WORK/nats-$tag.log"
    url=nats://127.0.0.1:$port
    {
        printf '[agent]\nname = "bench"\nstate_dir = "%s/state-%s"\n\n[nats]\nservers = ["%s"]\n\n' "$WORK" "$tag" "$url"
        for i in $WATCHERS; do printf '[watcher.w%s]\ncmd = "sleep"\nargs = ["%s"]\n\n' "$i" "$MARKER"; done
    } >"$WORK/node-$tag.toml"
    "$bin/nodeagent" -c "$WORK/node-$tag.toml" 2>"$WORK/agent-$tag.log" &
    agent=$!
    MANAGERS+=("$agent")
    wait_for 20 "the agent's ping" "$bin/ctl" -s "$url" --node bench ping
    wait_for 20 "10 agent children" has_children "$agent" "$MARKER" 10
    sleep 2 # idle
    printf -v "${tag}_RSS" '%s' "$(rss_kib "$agent")"
    wall "${tag}_cli" "$bin/ctl" -s "$url" --node bench numprocesses w1
    python3 bench/respawn.py "$agent" "$MARKER" "$KILLS" 0.2:0.4 >"$WORK/${tag}_respawn.ns"
    read -r med p95 <<<"$(stats "$WORK/${tag}_cli.ns")"
    printf -v "${tag}_CLI_MED" '%s' "$med"
    printf -v "${tag}_CLI_P95" '%s' "$p95"
    read -r med p95 <<<"$(stats "$WORK/${tag}_respawn.ns")"
    printf -v "${tag}_RSP_MED" '%s' "$med"
    printf -v "${tag}_RSP_P95" '%s' "$p95"
    if [ "$tag" = B ]; then
        # Out of the way of the next one.
        kill -TERM "$agent" 2>/dev/null || true
        wait "$agent" 2>/dev/null || true
    fi
}
B_RSS=- B_CLI_MED=- B_CLI_P95=- B_RSP_MED=- B_RSP_P95=-
if [ -n "${BASELINE:-}" ]; then
    measure_agent B "$(cd "$BASELINE" && pwd)"
fi
measure_agent A "$BIN"

C_RSS=- C_CLI_MED=- C_CLI_P95=- C_RSP_MED=- C_RSP_P95=-
S_RSS=- S_CLI_MED=- S_CLI_P95=- S_RSP_MED=- S_RSP_P95=-
if [ "$PEERS" = 1 ]; then
    # ------------------------------------------------------------ circus
    log "circus..."
    P1=$(free_port) P2=$(free_port) P3=$(free_port)
    {
        printf '[circus]\nendpoint = tcp://127.0.0.1:%s\npubsub_endpoint = tcp://127.0.0.1:%s\n' "$P1" "$P2"
        printf 'stats_endpoint = tcp://127.0.0.1:%s\nstatsd = False\n\n' "$P3"
        for i in $WATCHERS; do
            printf '[watcher:w%s]\ncmd = sleep %s\nnumprocesses = 1\ngraceful_timeout = 1\n\n' "$i" "$MARKER"
        done
    } >"$WORK/circus.ini"
    "$VENV/bin/circusd" "$WORK/circus.ini" >"$WORK/circusd.log" 2>&1 &
    CIRCUSD=$!
    MANAGERS+=("$CIRCUSD")
    wait_for 30 "circusd" "$VENV/bin/circusctl" --endpoint "tcp://127.0.0.1:$P1" status
    wait_for 30 "10 circus children" has_children "$CIRCUSD" "$MARKER" 10
    sleep 2
    C_RSS=$(rss_kib "$CIRCUSD")
    wall circus_cli "$VENV/bin/circusctl" --endpoint "tcp://127.0.0.1:$P1" numprocesses w1
    python3 bench/respawn.py "$CIRCUSD" "$MARKER" "$PEER_KILLS" 0.2:5.2 >"$WORK/circus_respawn.ns"
    read -r C_CLI_MED C_CLI_P95 <<<"$(stats "$WORK/circus_cli.ns")"
    read -r C_RSP_MED C_RSP_P95 <<<"$(stats "$WORK/circus_respawn.ns")"

    # ------------------------------------------------------------ supervisord
    log "supervisord..."
    {
        printf '[unix_http_server]\nfile = %s/supervisor.sock\n\n' "$WORK"
        printf '[supervisord]\nnodaemon = true\nlogfile = %s/supervisord.log\npidfile = %s/supervisord.pid\n\n' "$WORK" "$WORK"
        printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n'
        printf '[supervisorctl]\nserverurl = unix://%s/supervisor.sock\n\n' "$WORK"
        for i in $WATCHERS; do
            printf '[program:w%s]\ncommand = sleep %s\nstopwaitsecs = 1\n\n' "$i" "$MARKER"
        done
    } >"$WORK/supervisord.conf"
    "$VENV/bin/supervisord" -c "$WORK/supervisord.conf" >/dev/null 2>&1 &
    SUPERVISORD=$!
    MANAGERS+=("$SUPERVISORD")
    wait_for 30 "10 supervisord children" has_children "$SUPERVISORD" "$MARKER" 10
    wait_for 30 "supervisorctl" "$VENV/bin/supervisorctl" -c "$WORK/supervisord.conf" status
    sleep 2
    S_RSS=$(rss_kib "$SUPERVISORD")
    wall supervisor_cli "$VENV/bin/supervisorctl" -c "$WORK/supervisord.conf" status
    python3 bench/respawn.py "$SUPERVISORD" "$MARKER" "$PEER_KILLS" 0.2:1.2 >"$WORK/supervisor_respawn.ns"
    read -r S_CLI_MED S_CLI_P95 <<<"$(stats "$WORK/supervisor_cli.ns")"
    read -r S_RSP_MED S_RSP_P95 <<<"$(stats "$WORK/supervisor_respawn.ns")"
fi

# ---------------------------------------------------------------- table
mib() { [ "$1" = - ] && echo - || awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
ratio() { # peer / agent
    if [ "$1" = - ] || [ "$2" = - ]; then echo -; else awk -v p="$1" -v a="$2" 'BEGIN {printf "%.1fx", p / a}'; fi
}
vs() { # agent / baseline
    if [ "$2" = - ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; fi
}
row() {
    printf '%-30s %10s %10s %12s %14s %18s' "${@:1:6}"
    if [ -n "${BASELINE:-}" ]; then printf ' %10s %16s' "${@:7:2}"; fi
    printf '\n'
}
echo
echo "foundation benchmark: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); RUNS=$RUNS KILLS=$KILLS/$PEER_KILLS${HYPERFINE:+, hyperfine}"
row "" nodeagent circus supervisord "circus/agent" "supervisord/agent" baseline "agent/baseline"
row "idle RSS, 10 watchers (MiB)" "$(mib "$A_RSS")" "$(mib "$C_RSS")" "$(mib "$S_RSS")" \
    "$(ratio "$C_RSS" "$A_RSS")" "$(ratio "$S_RSS" "$A_RSS")" "$(mib "$B_RSS")" "$(vs "$A_RSS" "$B_RSS")"
row "CLI wall, median (ms)" "$A_CLI_MED" "$C_CLI_MED" "$S_CLI_MED" \
    "$(ratio "$C_CLI_MED" "$A_CLI_MED")" "$(ratio "$S_CLI_MED" "$A_CLI_MED")" \
    "$B_CLI_MED" "$(vs "$A_CLI_MED" "$B_CLI_MED")"
row "CLI wall, p95 (ms)" "$A_CLI_P95" "$C_CLI_P95" "$S_CLI_P95" \
    "$(ratio "$C_CLI_P95" "$A_CLI_P95")" "$(ratio "$S_CLI_P95" "$A_CLI_P95")" \
    "$B_CLI_P95" "$(vs "$A_CLI_P95" "$B_CLI_P95")"
row "respawn, median (ms)" "$A_RSP_MED" "$C_RSP_MED" "$S_RSP_MED" \
    "$(ratio "$C_RSP_MED" "$A_RSP_MED")" "$(ratio "$S_RSP_MED" "$A_RSP_MED")" \
    "$B_RSP_MED" "$(vs "$A_RSP_MED" "$B_RSP_MED")"
row "respawn, p95 (ms)" "$A_RSP_P95" "$C_RSP_P95" "$S_RSP_P95" \
    "$(ratio "$C_RSP_P95" "$A_RSP_P95")" "$(ratio "$S_RSP_P95" "$A_RSP_P95")" \
    "$B_RSP_P95" "$(vs "$A_RSP_P95" "$B_RSP_P95")"
if [ -n "${BASELINE:-}" ]; then
    echo "baseline: the nodeagent and ctl in $BASELINE, measured first in this run"
fi
echo "CLI: ctl --node bench numprocesses w1 | circusctl numprocesses w1 | supervisorctl status"
echo "RSS: the manager process alone (circusd with statsd = False: no circusd-stats process)"
echo "respawn: Circus restarts dead processes on its check_delay tick (5 s by default),"
echo "supervisord on its 1 s event-loop tick; nodeagent awaits each child's exit"
