#!/usr/bin/env bash
# Benchmarks the foundation, and Circus and supervisord beside it in the same run:
#
#   idle RSS      the manager process's VmRSS with 10 watchers of one `sleep` each, after
#                 the processes are up and it has idled for SETTLE seconds;
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
# and, with one watcher of HUNDRED (100) processes and stats on, each manager started
# afresh:
#
#   RSS           the manager's VmRSS plus that of its helper processes (circusd-stats);
#   idle CPU      utime+stime (/proc/PID/stat) of the manager and its helpers over
#                 IDLE_SECS, as a percentage of one core;
#   stop          a graceful stop of the watcher, from the command to the last child gone;
#   scale         1 -> HUNDRED+1 processes, from the command to all of them running
#                 (exec'd); bench/scale.py polls the manager's children. Both are
#                 repeated SCALE_RUNS times (median, and the spread min-max).
#
# Usage: bench/foundation.sh
#   AGENT=static  the agent measured: the static musl build (scripts/build-static.sh,
#               built with the rest; the glibc one when it cannot be built), or
#               AGENT=gnu the glibc release build; ctl is the glibc release build
#   SETTLE=10   seconds every manager idles, its processes up, before its RSS is read
#               (the agent pages its start-up code out 2 s after start-up and its
#               periodic work brings part of it back within a second: a reading
#               before 3 s shows that passing low, not the steady size)
#   RUNS=50     CLI runs per tool         KILLS=20   respawns measured for nodeagent
#   PEER_KILLS=5  respawns measured for Circus and supervisord (each takes ~1-5 s there)
#   PEERS=0     skip Circus, supervisord and PM2 (Circus and supervisord are installed
#               with pip into BENCH_VENV, default target/bench-venv, and PM2 with npm into
#               BENCH_PM2, default target/bench-pm2, when missing; PM2_HOME is in the
#               benchmark's temp dir, and its daemon is killed at exit)
#   HUNDRED=100 processes of the one-watcher rows   IDLE_SECS=30   SCALE_RUNS=3
#   BASELINE=DIR  also measure the nodeagent and ctl in DIR (the release directory of
#               another build, say an earlier commit's) in the same run, first, and add
#               its column and the ratio of this build to it (the 10-watcher rows)
# Everything it starts is stopped on exit (trap EXIT), also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-50}
KILLS=${KILLS:-20}
PEER_KILLS=${PEER_KILLS:-5}
PEERS=${PEERS:-1}
VENV=${BENCH_VENV:-$ROOT/target/bench-venv}
PM2_PREFIX=${BENCH_PM2:-$ROOT/target/bench-pm2}
HUNDRED=${HUNDRED:-100}
IDLE_SECS=${IDLE_SECS:-30}
SCALE_RUNS=${SCALE_RUNS:-3}
SETTLE=${SETTLE:-10}
WORK=$(mktemp -d /tmp/bench-foundation.XXXXXX)
MARKER=86400123 # `sleep $MARKER`: counts only the benchmark's own processes
log() { printf '[%3ss] %s\n' "$SECONDS" "$*" >&2; }

. bench/lib.sh
stop_all() {
    if [ -n "${PM2:-}" ] && [ -d "$WORK/pm2" ]; then
        [ -f "$WORK/pm2/pm2.pid" ] && OTHERS+=($(cat "$WORK/pm2/pm2.pid"))
        PM2_HOME=$WORK/pm2 timeout 20 "$PM2" kill >/dev/null 2>&1 || true
    fi
    stop_processes
    rm -rf "$WORK"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

count_children() { # PID MARKER -> how many children run `sleep MARKER`
    local n=0 c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        grep -qa "$2" "/proc/$c/cmdline" 2>/dev/null && n=$((n + 1))
    done
    echo "$n"
}
has_children() { [ "$(count_children "$1" "$2")" -ge "$3" ]; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
rss_sum() { # PID... -> the sum of their VmRSS in KiB
    local p t=0
    for p in "$@"; do t=$((t + $(rss_kib "$p"))); done
    echo "$t"
}
cpu_ticks() { # PID... -> the sum of their utime+stime in clock ticks
    local p t=0
    for p in "$@"; do
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# hundred TAG MANAGER_PID [HELPER_PID...]: the one-watcher rows of one manager, whose
# watcher w1 is starting HUNDRED processes. Its commands are in the arrays STOP_CMD
# (stop w1), ONE_CMD (then one process of w1 running; may name a function), UP_CMD
# (scale to HUNDRED+1) and BACK_CMD (back to HUNDRED). Sets ${TAG}_RSS100 (KiB),
# ${TAG}_CPU (% of one core), ${TAG}_STOP and ${TAG}_SCALE (ms: "median min max").
hundred() {
    local tag=$1 mgr=$2 r t0 t1
    shift 2
    python3 bench/scale.py "$mgr" "$MARKER" "$HUNDRED" 120 >/dev/null ||
        { log "$tag: $HUNDRED children did not all start"; exit 1; }
    sleep "$SETTLE"
    printf -v "${tag}_RSS100" '%s' "$(rss_sum "$mgr" "$@")"
    t0=$(cpu_ticks "$mgr" "$@")
    sleep "$IDLE_SECS"
    t1=$(cpu_ticks "$mgr" "$@")
    printf -v "${tag}_CPU" '%s' "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$IDLE_SECS" \
        'BEGIN {printf "%.2f", d / hz / s * 100}')"
    : >"$WORK/${tag}_stop.ns"
    : >"$WORK/${tag}_scale.ns"
    for r in $(seq 1 "$SCALE_RUNS"); do
        python3 bench/scale.py "$mgr" "$MARKER" 0 60 "${STOP_CMD[@]}" >>"$WORK/${tag}_stop.ns"
        "${ONE_CMD[@]}" >/dev/null 2>&1
        python3 bench/scale.py "$mgr" "$MARKER" 1 60 >/dev/null
        python3 bench/scale.py "$mgr" "$MARKER" $((HUNDRED + 1)) 60 "${UP_CMD[@]}" \
            >>"$WORK/${tag}_scale.ns"
        python3 bench/scale.py "$mgr" "$MARKER" "$HUNDRED" 60 "${BACK_CMD[@]}" >/dev/null
    done
    printf -v "${tag}_STOP" '%s' "$(spread "$WORK/${tag}_stop.ns")"
    printf -v "${tag}_SCALE" '%s' "$(spread "$WORK/${tag}_scale.ns")"
}

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

# spread FILE: "median min max" in ms of nanosecond values, one per line.
spread() {
    python3 - "$1" <<'EOF'
import statistics, sys
v = [float(x) / 1e6 for x in open(sys.argv[1]) if x.strip()]
print(f"{statistics.median(v):.1f} {min(v):.1f} {max(v):.1f}" if v else "- - -")
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
PM2=""
if [ "$PEERS" = 1 ]; then
    if ! [ -x "$PM2_PREFIX/node_modules/.bin/pm2" ] && command -v npm >/dev/null; then
        log "installing pm2 into $PM2_PREFIX (npm)..."
        npm install -s --prefix "$PM2_PREFIX" pm2 >/dev/null 2>&1 || true
    fi
    if [ -x "$PM2_PREFIX/node_modules/.bin/pm2" ]; then
        PM2=$PM2_PREFIX/node_modules/.bin/pm2
    else
        log "pm2 unavailable (needs node and npm): comparing without it"
    fi
fi

log "building (release)..."
cargo build --release --bins -q
[ "${AGENT:-static}" = static ] && log "building the static agent (scripts/build-static.sh)..."
agent_bindir "$WORK/bin"
BIN=$WORK/bin

WATCHERS=$(seq 1 10)

# ---------------------------------------------------------------- nodeagent
# measure_agent TAG BINDIR: the idle RSS, CLI wall and respawn of BINDIR's nodeagent
# (driven by BINDIR's ctl), into ${TAG}_RSS, ${TAG}_CLI_MED, ... ; the agent is then
# stopped, so that the next one runs alone on the server, as each peer does.
measure_agent() {
    local tag=$1 bin=$2 port url agent med p95
    log "nodeagent ($bin)..."
    port=$(free_port)
    "$NATS_SERVER" -a 127.0.0.1 -p "$port" -l "$WORK/nats-$tag.log" &
    OTHERS+=($!)
    wait_for 10 "nats-server" grep -q "Server is ready" "$WORK/nats-$tag.log"
    url=nats://127.0.0.1:$port
    if [ "$tag" = A ]; then URL=$url; fi # this build's nats-server, also for the rows of HUNDRED
    agent_idle_config bench "$WORK/state-$tag" "$url" "$MARKER" >"$WORK/node-$tag.toml"
    "$bin/nodeagent" -c "$WORK/node-$tag.toml" 2>"$WORK/agent-$tag.log" &
    agent=$!
    MANAGERS+=("$agent")
    wait_for 20 "the agent's ping" "$bin/ctl" -s "$url" --node bench ping
    wait_for 20 "10 agent children" has_children "$agent" "$MARKER" 10
    sleep "$SETTLE" # idle
    printf -v "${tag}_RSS" '%s' "$(rss_kib "$agent")"
    wall "${tag}_cli" "$bin/ctl" -s "$url" --node bench numprocesses w1
    python3 bench/respawn.py "$agent" "$MARKER" "$KILLS" 0.2:0.4 >"$WORK/${tag}_respawn.ns"
    read -r med p95 <<<"$(stats "$WORK/${tag}_cli.ns")"
    printf -v "${tag}_CLI_MED" '%s' "$med"
    printf -v "${tag}_CLI_P95" '%s' "$p95"
    read -r med p95 <<<"$(stats "$WORK/${tag}_respawn.ns")"
    printf -v "${tag}_RSP_MED" '%s' "$med"
    printf -v "${tag}_RSP_P95" '%s' "$p95"
    kill -TERM "$agent" 2>/dev/null || true
    wait "$agent" 2>/dev/null || true
}
B_RSS=- B_CLI_MED=- B_CLI_P95=- B_RSP_MED=- B_RSP_P95=-
if [ -n "${BASELINE:-}" ]; then
    measure_agent B "$(cd "$BASELINE" && pwd)"
fi
measure_agent A "$BIN"

C_RSS=- C_CLI_MED=- C_CLI_P95=- C_RSP_MED=- C_RSP_P95=-
S_RSS=- S_CLI_MED=- S_CLI_P95=- S_RSP_MED=- S_RSP_P95=-
P_RSS=- P_CLI_MED=- P_CLI_P95=- P_RSP_MED=- P_RSP_P95=-
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
    sleep "$SETTLE"
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
    sleep "$SETTLE"
    S_RSS=$(rss_kib "$SUPERVISORD")
    wall supervisor_cli "$VENV/bin/supervisorctl" -c "$WORK/supervisord.conf" status
    python3 bench/respawn.py "$SUPERVISORD" "$MARKER" "$PEER_KILLS" 0.2:1.2 >"$WORK/supervisor_respawn.ns"
    read -r S_CLI_MED S_CLI_P95 <<<"$(stats "$WORK/supervisor_cli.ns")"
    read -r S_RSP_MED S_RSP_P95 <<<"$(stats "$WORK/supervisor_respawn.ns")"
fi

# ---------------------------------------------------------------- pm2
# pm2_apps N: an ecosystem file of one app w1 of N instances, or (N = 0) of the 10 apps
# w1..w10 of one instance each; `sleep` is run directly (interpreter none, fork mode).
pm2_apps() {
    python3 - "$1" "$MARKER" <<'EOF'
import json, sys
n, marker = int(sys.argv[1]), sys.argv[2]
app = lambda name, k: {"name": name, "script": "sleep", "args": marker,
                       "interpreter": "none", "exec_mode": "fork", "instances": k}
apps = [app("w1", n)] if n else [app(f"w{i}", 1) for i in range(1, 11)]
print(json.dumps({"apps": apps}))
EOF
}
PM2C=()
pm2_daemon() { # starts the daemon with the apps of FILE; prints its pid
    "${PM2C[@]}" start "$1" >/dev/null 2>&1
    cat "$WORK/pm2/pm2.pid"
}
if [ -n "$PM2" ]; then
    log "pm2..."
    mkdir -p "$WORK/pm2"
    PM2C=(env PM2_HOME="$WORK/pm2" "$PM2")
    pm2_apps 0 >"$WORK/pm2-10.json"
    PM2D=$(pm2_daemon "$WORK/pm2-10.json")
    wait_for 30 "10 pm2 children" has_children "$PM2D" "$MARKER" 10
    sleep "$SETTLE"
    P_RSS=$(rss_kib "$PM2D")
    wall pm2_cli "${PM2C[@]}" pid w1
    python3 bench/respawn.py "$PM2D" "$MARKER" "$PEER_KILLS" 0.2:1.2 >"$WORK/pm2_respawn.ns"
    read -r P_CLI_MED P_CLI_P95 <<<"$(stats "$WORK/pm2_cli.ns")"
    read -r P_RSP_MED P_RSP_P95 <<<"$(stats "$WORK/pm2_respawn.ns")"
    "${PM2C[@]}" kill >/dev/null 2>&1
fi

# ---------------------------------------------------------------- one watcher of HUNDRED
A_RSS100=- A_CPU=- A_STOP="- - -" A_SCALE="- - -"
C_RSS100=- C_CPU=- C_STOP="- - -" C_SCALE="- - -"
S_RSS100=- S_CPU=- S_STOP="- - -" S_SCALE="- - -"
P_RSS100=- P_CPU=- P_STOP="- - -" P_SCALE="- - -"

log "nodeagent, one watcher of $HUNDRED..."
agent_hundred_config bench100 "$WORK/state100" "$URL" "$MARKER" "$HUNDRED" >"$WORK/node100.toml"
"$BIN/nodeagent" -c "$WORK/node100.toml" 2>"$WORK/agent100.log" &
AGENT100=$!
MANAGERS+=("$AGENT100")
CTL100=("$BIN/ctl" -s "$URL" --node bench100)
wait_for 20 "the agent's ping" "${CTL100[@]}" ping
agent_one() { "${CTL100[@]}" numprocesses w1 1 && "${CTL100[@]}" start w1; }
STOP_CMD=("${CTL100[@]}" stop w1)
ONE_CMD=(agent_one)
UP_CMD=("${CTL100[@]}" numprocesses w1 $((HUNDRED + 1)))
BACK_CMD=("${CTL100[@]}" numprocesses w1 "$HUNDRED")
hundred A "$AGENT100"

if [ "$PEERS" = 1 ]; then
    log "circus, one watcher of $HUNDRED (with circusd-stats)..."
    P1=$(free_port) P2=$(free_port) P3=$(free_port)
    {
        printf '[circus]\nendpoint = tcp://127.0.0.1:%s\npubsub_endpoint = tcp://127.0.0.1:%s\n' "$P1" "$P2"
        printf 'stats_endpoint = tcp://127.0.0.1:%s\nstatsd = True\n\n' "$P3"
        printf '[watcher:w1]\ncmd = sleep %s\nnumprocesses = %s\ngraceful_timeout = 1\n' "$MARKER" "$HUNDRED"
    } >"$WORK/circus100.ini"
    "$VENV/bin/circusd" "$WORK/circus100.ini" >"$WORK/circusd100.log" 2>&1 &
    CIRCUSD100=$!
    MANAGERS+=("$CIRCUSD100")
    CC=("$VENV/bin/circusctl" --endpoint "tcp://127.0.0.1:$P1")
    wait_for 30 "circusd" "${CC[@]}" status
    # circusd runs its stats process as `python -c "from circus import stats; ..."`.
    wait_for 30 "circusd-stats" pgrep -P "$CIRCUSD100" -f "circus import stats"
    CSTATS=$(pgrep -P "$CIRCUSD100" -f "circus import stats" | head -1)
    circus_one() { "${CC[@]}" set w1 numprocesses 1 && "${CC[@]}" start w1; }
    STOP_CMD=("${CC[@]}" stop w1)
    ONE_CMD=(circus_one)
    UP_CMD=("${CC[@]}" incr w1 "$HUNDRED")
    BACK_CMD=("${CC[@]}" decr w1 1)
    hundred C "$CIRCUSD100" "$CSTATS"

    log "supervisord, one program of $HUNDRED..."
    {
        printf '[unix_http_server]\nfile = %s/supervisor100.sock\n\n' "$WORK"
        printf '[supervisord]\nnodaemon = true\nlogfile = %s/supervisord100.log\npidfile = %s/supervisord100.pid\n\n' "$WORK" "$WORK"
        printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n'
        printf '[supervisorctl]\nserverurl = unix://%s/supervisor100.sock\n\n' "$WORK"
        printf '[program:w1]\ncommand = sleep %s\nnumprocs = %s\nprocess_name = %%(program_name)s_%%(process_num)d\n' "$MARKER" $((HUNDRED + 1))
        printf 'autostart = false\nstopwaitsecs = 1\n'
    } >"$WORK/supervisord100.conf"
    "$VENV/bin/supervisord" -c "$WORK/supervisord100.conf" >/dev/null 2>&1 &
    SUPERVISORD100=$!
    MANAGERS+=("$SUPERVISORD100")
    SC=("$VENV/bin/supervisorctl" -c "$WORK/supervisord100.conf")
    wait_for 30 "supervisorctl" "${SC[@]}" pid
    # numprocs is fixed at start: HUNDRED+1 are defined, HUNDRED started.
    "${SC[@]}" start $(seq -f "w1:w1_%g" 0 $((HUNDRED - 1))) >/dev/null
    STOP_CMD=("${SC[@]}" stop "w1:*")
    ONE_CMD=("${SC[@]}" start w1:w1_0)
    UP_CMD=("${SC[@]}" start "w1:*")
    BACK_CMD=("${SC[@]}" stop "w1:w1_$HUNDRED")
    hundred S "$SUPERVISORD100"
fi

if [ -n "$PM2" ]; then
    log "pm2, one app of $HUNDRED instances..."
    pm2_apps "$HUNDRED" >"$WORK/pm2-100.json"
    PM2D=$(pm2_daemon "$WORK/pm2-100.json")
    pm2_one() { "${PM2C[@]}" scale w1 1 && "${PM2C[@]}" start w1; }
    STOP_CMD=("${PM2C[@]}" stop w1)
    ONE_CMD=(pm2_one)
    UP_CMD=("${PM2C[@]}" scale w1 $((HUNDRED + 1)))
    BACK_CMD=("${PM2C[@]}" scale w1 "$HUNDRED")
    hundred P "$PM2D"
fi

# ---------------------------------------------------------------- table
mib() { [ "$1" = - ] && echo - || awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# best A C S P: "value tool ratio" of the lowest peer value, ratio = that / A.
best() {
    awk -v a="$1" -v c="$2" -v s="$3" -v p="$4" 'BEGIN {
        n = split("circus supervisord pm2", name); v[1] = c; v[2] = s; v[3] = p
        for (i = 1; i <= n; i++) if (v[i] != "-" && v[i] != "" && (w == "" || v[i] + 0 < b + 0)) { b = v[i]; w = name[i] }
        if (w == "") { print "- - -"; exit }
        r = (a == "-" || a + 0 == 0) ? "-" : sprintf("%.1fx", b / a)
        print b, w, r
    }'
}
vs() { # agent / baseline
    if [ "$1" = - ] || [ "$2" = - ] || [ -z "$2" ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; fi
}
row() { # LABEL A C S P BEST RATIO [BASELINE AGENT/BASELINE]
    printf '%-40s %10s %10s %12s %10s %22s %10s' "${@:1:7}"
    if [ -n "${BASELINE:-}" ]; then printf ' %10s %14s' "${8:-}" "${9:-}"; fi
    printf '\n'
}
line() { # LABEL A C S P [B]: B, this build's baseline figure, "-" or absent when none
    local b w r base=${6:--}
    read -r b w r <<<"$(best "$2" "$3" "$4" "$5")"
    if [ "$w" = - ]; then
        row "$1" "$2" "$3" "$4" "$5" - - "$base" "$(vs "$2" "$base")"
    else
        row "$1" "$2" "$3" "$4" "$5" "$b ($w)" "$r" "$base" "$(vs "$2" "$base")"
    fi
}
plain() { row "$@" "" "" "" ""; } # LABEL A C S P, without a best peer or a baseline
first() { echo "${1%% *}"; }
range() { local a b c; read -r a b c <<<"$1"; [ "$b" = - ] && echo - || echo "$b-$c"; }
echo
echo "foundation benchmark: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ); RUNS=$RUNS KILLS=$KILLS/$PEER_KILLS HUNDRED=$HUNDRED IDLE_SECS=$IDLE_SECS SCALE_RUNS=$SCALE_RUNS SETTLE=$SETTLE${HYPERFINE:+, hyperfine}"
echo "nodeagent: $AGENT_BUILD; ctl: glibc (release)"
row "" nodeagent circus supervisord pm2 "best peer" "best/agent" baseline "agent/baseline"
line "idle RSS, 10 watchers (MiB)" "$(mib "$A_RSS")" "$(mib "$C_RSS")" "$(mib "$S_RSS")" "$(mib "$P_RSS")" "$(mib "$B_RSS")"
line "CLI wall, median (ms)" "$A_CLI_MED" "$C_CLI_MED" "$S_CLI_MED" "$P_CLI_MED" "$B_CLI_MED"
line "CLI wall, p95 (ms)" "$A_CLI_P95" "$C_CLI_P95" "$S_CLI_P95" "$P_CLI_P95" "$B_CLI_P95"
line "respawn, median (ms)" "$A_RSP_MED" "$C_RSP_MED" "$S_RSP_MED" "$P_RSP_MED" "$B_RSP_MED"
line "respawn, p95 (ms)" "$A_RSP_P95" "$C_RSP_P95" "$S_RSP_P95" "$P_RSP_P95" "$B_RSP_P95"
line "RSS, 1 watcher x $HUNDRED, stats on (MiB)" "$(mib "$A_RSS100")" "$(mib "$C_RSS100")" "$(mib "$S_RSS100")" "$(mib "$P_RSS100")"
line "idle CPU, $HUNDRED procs, ${IDLE_SECS}s (% core)" "$A_CPU" "$C_CPU" "$S_CPU" "$P_CPU"
line "scale 1 -> $((HUNDRED + 1)), median (ms)" "$(first "$A_SCALE")" "$(first "$C_SCALE")" "$(first "$S_SCALE")" "$(first "$P_SCALE")"
plain "  min-max of $SCALE_RUNS" "$(range "$A_SCALE")" "$(range "$C_SCALE")" "$(range "$S_SCALE")" "$(range "$P_SCALE")"
line "graceful stop of $HUNDRED, median (ms)" "$(first "$A_STOP")" "$(first "$C_STOP")" "$(first "$S_STOP")" "$(first "$P_STOP")"
plain "  min-max of $SCALE_RUNS" "$(range "$A_STOP")" "$(range "$C_STOP")" "$(range "$S_STOP")" "$(range "$P_STOP")"
echo "best/agent: the best peer's figure over the agent's (above 1: the agent is ahead)"
if [ -n "${BASELINE:-}" ]; then
    echo "baseline: the nodeagent and ctl in $BASELINE, measured first in this run (the first five rows)"
fi
echo "CLI: ctl --node bench numprocesses w1 | circusctl numprocesses w1 | supervisorctl status | pm2 pid w1"
echo "idle RSS: the manager process alone (circusd with statsd = False: no circusd-stats process;"
echo "pm2: its daemon, God); 1 watcher x $HUNDRED: nodeagent stats_interval = 1s; circusd plus its"
echo "circusd-stats process (statsd = True); supervisord has no stats; the pm2 daemon samples"
echo "its processes itself. Output: nodeagent, supervisord and pm2 capture it to files, Circus"
echo "discards it by default"
echo "respawn: Circus restarts dead processes on its check_delay tick (5 s by default),"
echo "supervisord on its 1 s event-loop tick; nodeagent awaits each child's exit"
echo "scale: from the command to all processes exec'd (ctl numprocesses | circusctl incr |"
echo "supervisorctl start 'w1:*' of $((HUNDRED + 1)) defined | pm2 scale); stop: from the command"
echo "to the last child gone (ctl stop | circusctl stop | supervisorctl stop 'w1:*' | pm2 stop)"
