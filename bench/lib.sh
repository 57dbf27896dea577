# Helpers shared by the benchmarks (sourced: `. bench/lib.sh`, from the repository root).
#
#   MANAGERS   pids to stop gracefully (SIGTERM, up to 10 s), then kill, with their
#              children as they were at the SIGTERM
#   OTHERS     pids to kill (nats-server, helpers)
#   stop_processes   does both; the caller's EXIT trap calls it
#   free_port        a free TCP port on 127.0.0.1
#   wait_for SECONDS WHAT COMMAND...   polls COMMAND every 50 ms; exits 1 after SECONDS
#   agent_bindir DIR   makes DIR hold the agent the benchmark measures and the release
#              ctl (links), and sets AGENT_BUILD to what it is: with AGENT=static (the
#              default) the static musl agent (scripts/build-static.sh builds it when
#              it is missing or stale), falling back to the glibc one when it cannot be
#              built; with AGENT=gnu the glibc release agent (target/release)
#   agent_idle_config NAME STATE_DIR URL MARKER   the agent config of the idle rows:
#              10 watchers of one `sleep MARKER` each
#   agent_hundred_config NAME STATE_DIR URL MARKER N   the agent config of the rows of
#              N processes: one watcher of N `sleep MARKER`, stats at 1 s

MANAGERS=()
OTHERS=()

stop_processes() {
    local p alive kids=()
    for p in ${MANAGERS[@]+"${MANAGERS[@]}"}; do
        kids+=($(ps -o pid= --ppid "$p" 2>/dev/null || true))
        kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 1 100); do
        alive=0
        for p in ${MANAGERS[@]+"${MANAGERS[@]}"}; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in ${MANAGERS[@]+"${MANAGERS[@]}"} ${kids[@]+"${kids[@]}"} ${OTHERS[@]+"${OTHERS[@]}"}; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    local secs=$1 what=$2
    shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$end" ]; then
            echo "timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.05
    done
}

agent_bindir() {
    local dir=$1 agent=target/release/nodeagent
    AGENT_BUILD="glibc (release)"
    case "${AGENT:-static}" in
        static)
            if scripts/build-static.sh >"$dir.build.log" 2>&1; then
                agent=$(tail -n 1 "$dir.build.log")
                AGENT_BUILD="static musl (release)"
            else
                echo "the static agent could not be built (scripts/build-static.sh:" \
                    "$(tail -n 1 "$dir.build.log")): measuring the glibc one" >&2
            fi
            rm -f "$dir.build.log"
            ;;
        gnu) ;;
        *) echo "AGENT must be static or gnu, not '$AGENT'" >&2; exit 2 ;;
    esac
    [ -x "$agent" ] && [ -x target/release/ctl ] ||
        { echo "$agent or target/release/ctl is missing: cargo build --release --bins" >&2; exit 1; }
    mkdir -p "$dir"
    ln -sf "$PWD/$agent" "$dir/nodeagent"
    ln -sf "$PWD/target/release/ctl" "$dir/ctl"
}

agent_idle_config() {
    local i
    printf '[agent]\nname = "%s"\nstate_dir = "%s"\n\n[nats]\nservers = ["%s"]\n\n' "$1" "$2" "$3"
    for i in $(seq 1 10); do printf '[watcher.w%s]\ncmd = "sleep"\nargs = ["%s"]\n\n' "$i" "$4"; done
}

agent_hundred_config() {
    printf '[agent]\nname = "%s"\nstate_dir = "%s"\nstats_interval = "1s"\n\n' "$1" "$2"
    printf '[nats]\nservers = ["%s"]\n\n' "$3"
    printf '[watcher.w1]\ncmd = "sleep"\nargs = ["%s"]\nnumprocesses = %s\n' "$4" "$5"
}
