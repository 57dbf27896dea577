#!/usr/bin/env bash
# Membership at scale: one nats-server (with its monitoring port), the membership
# simulator playing N virtual members (tests/sim, `membersim`) and three real agents
# (a, b, c), for each N. Prints one table row per N:
#   - how many members a `ctl members` lists alive once all should be (N + 3);
#   - CPU% and RSS of agent a and agent b, and the messages per second the server
#     delivers to each (its /connz out_msgs);
#   - the server's CPU% and the messages it delivers per second (its /varz out_msgs);
#   - the cluster-wide deliveries per second if every member were a real agent
#     (N times what one agent receives, or, with keepers, the keepers' share plus the
#     ordinary agents' share);
#   - the wall time of a whole `ctl members` and `ctl --all ping` process (median);
#   - the time from a virtual member's silence, and from agent c's SIGKILL, to `failed`.
# The server keeps its default max_payload (1 MB) unless MAX_PAYLOAD is set (e.g. 8MB).
# The agents use heartbeat 1s and failed_after 5s. Agents a and c start first; b starts
# once they are alive. With KEEPERS=2 (the agents' `keepers` key, and the simulated
# members read the keepers feed), a and c keep the table and b, which ranks after both,
# is an ordinary agent; c's SIGKILL then also shows a keeper being replaced.
#
#   bench/scale.sh [N ...]        (default: 100 1000 5000 10000)
#   RUNS=5 WINDOW=10 bench/scale.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/setup.sh ]; then source scripts/setup.sh; fi
NS=("$@")
[ ${#NS[@]} -eq 0 ] && NS=(100 1000 5000 10000)
if [ -z "${NO_BUILD:-}" ] && [ -z "${BIN:-}" ]; then
    cargo build --release -q -p nodeagent -p ctl -p e2e --bin nodeagent --bin ctl --bin membersim
fi
export BIN="${BIN:-$PWD/target/release}" ROOT="$PWD"
export RUNS=${RUNS:-5} WINDOW=${WINDOW:-10}
exec python3 - "${NS[@]}" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN, ROOT = os.environ["BIN"], os.environ["ROOT"]
RUNS, WINDOW = int(os.environ["RUNS"]), float(os.environ["WINDOW"])
TICK = os.sysconf("SC_CLK_TCK")
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(args, log, env=None):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    procs.append(p)
    return p

def stop_all():
    for p in procs:
        if p.poll() is None:
            try: os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError: pass
    for p in procs:
        try: p.wait(timeout=10)
        except Exception: pass
    procs.clear()

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
    return 0

def mon(port, path):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10))

def conn_out(port):
    """Messages delivered so far to each named connection."""
    c = mon(port, "connz?limit=10000")
    return {x.get("name", ""): x.get("out_msgs", 0) for x in c.get("connections", [])}

def ctl(env, *args, timeout=60):
    t = time.monotonic()
    r = subprocess.run([f"{BIN}/ctl", *args], env=env, capture_output=True, timeout=timeout)
    return time.monotonic() - t, r

def alive_count(env):
    _, r = ctl(env, "members", "--status", "alive", "--json")
    if r.returncode != 0: return 0
    n = 0
    for line in r.stdout.decode().splitlines():
        try: n += len(json.loads(line).get("members", []))
        except ValueError: pass
    return n

def wait_failed(env, name, limit=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        _, r = ctl(env, "members", "--name", name, "--status", "failed", "--json", timeout=10)
        if r.returncode == 0 and '"state":"failed"' in r.stdout.decode():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None

def run(n, work):
    port, mport = free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"
    env = dict(os.environ, NATS_URL=url)
    conf = open(f"{ROOT}/nats.conf").read()
    conf = "\n".join(l for l in conf.splitlines() if not l.startswith("listen:"))
    conf = f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mport}\n" + conf
    if os.environ.get("MAX_PAYLOAD"):
        conf = f"max_payload: {os.environ['MAX_PAYLOAD']}\n" + conf
    open(f"{work}/nats.conf", "w").write(conf)
    nats = start(["nats-server", "-c", f"{work}/nats.conf"], f"{work}/nats.log")
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1", port), 0.1).close(); break
        except OSError: time.sleep(0.05)
    keepers = os.environ.get("KEEPERS")
    sim_args = [f"{BIN}/membersim", "--server", url, "--members", str(n), "--heartbeat-ms", "1000"]
    if keepers: sim_args.append("--keepers-feed")
    sim = start(sim_args, f"{work}/sim.log")
    agents = {}
    def agent(name):
        extra = f"keepers = {keepers}\n" if keepers else ""
        open(f"{work}/{name}.toml", "w").write(
            f'[agent]\nname = "{name}"\nheartbeat = "1s"\nfailed_after = "5s"\n'
            f'stats_interval = "0s"\nlog_dir = "{work}/logs/{name}"\n'
            f'state_dir = "{work}/state/{name}"\n{extra}'
            f'[nats]\nservers = ["{url}"]\nsystem_events_account = "CLUSTER"\n'
            f'[watcher.w]\ncmd = "sleep"\nargs = ["100000"]\nstdout = "discard"\nstderr = "discard"\n')
        agents[name] = start([f"{BIN}/nodeagent", "-c", f"{work}/{name}.toml"], f"{work}/{name}.log")
    agent("a"); agent("c")
    t0 = time.monotonic()
    while alive_count(env) < 2 and time.monotonic() - t0 < 60: time.sleep(0.2)
    time.sleep(2)
    agent("b")
    while alive_count(env) < n + 3 and time.monotonic() - t0 < 180: time.sleep(0.5)
    up = alive_count(env)
    if up < n + 3:
        print(f"only {up} of {n + 3} members alive; see {work}", file=sys.stderr)
    time.sleep(3)
    pids = {"a": agents["a"].pid, "b": agents["b"].pid, "nats": nats.pid, "sim": sim.pid}
    c0 = {k: cpu_ticks(p) for k, p in pids.items()}
    v0, o0, w0 = mon(mport, "varz"), conn_out(mport), time.monotonic()
    time.sleep(WINDOW)
    c1 = {k: cpu_ticks(p) for k, p in pids.items()}
    v1, o1, w1 = mon(mport, "varz"), conn_out(mport), time.monotonic()
    dt = w1 - w0
    row = {"N": n, "alive": up}
    for k in pids: row[f"cpu_{k}"] = 100.0 * (c1[k] - c0[k]) / TICK / dt
    for k in ("a", "b"): row[f"rss_{k}"] = rss_kib(pids[k]) / 1024
    row["srv_out"] = (v1["out_msgs"] - v0["out_msgs"]) / dt
    for k in ("a", "b"): row[f"in_{k}"] = (o1.get(k, 0) - o0.get(k, 0)) / dt
    # Every member a real agent: the keepers receive what a receives, the rest what b does.
    k = int(keepers) if keepers else n + 3
    row["cluster"] = min(k, n + 3) * row["in_a"] + max(0, n + 3 - k) * row["in_b"]
    mem, ping = [], []
    for _ in range(RUNS):
        t, r = ctl(env, "members")
        mem.append(t if r.returncode == 0 else float("inf"))
        t, r = ctl(env, "--all", "ping")
        ping.append(t if r.returncode == 0 else float("inf"))
        if r.returncode != 0:
            print(f"ctl --all ping: exit {r.returncode}: {r.stderr.decode()[-300:]}", file=sys.stderr)
    row["members_s"], row["ping_s"] = statistics.median(mem), statistics.median(ping)
    subprocess.run([f"{BIN}/membersim", "--server", url, "--silence", "v00007"], capture_output=True)
    row["silence_s"] = wait_failed(env, "v00007")
    agents["c"].send_signal(signal.SIGKILL)
    row["kill_s"] = wait_failed(env, "c")
    stop_all()
    return row

def fmt(v, spec):
    if v is None: return "never"
    if v == float("inf"): return "fail"
    return format(v, spec)

rows = []
print("| N | alive seen | agent a CPU% | a RSS MiB | a msgs/s in | agent b CPU% | b RSS MiB | b msgs/s in "
      "| nats CPU% | nats out msgs/s | sim CPU% | cluster deliveries/s if all real "
      "| ctl members s | ctl --all ping s | silence→failed s | SIGKILL→failed s |")
print("|" + "---|" * 16)
for n in map(int, sys.argv[1:]):
    with tempfile.TemporaryDirectory() as work:
        try:
            r = run(n, work)
        finally:
            stop_all()
    print(f"| {n} | {r['alive']} | {r['cpu_a']:.1f} | {r['rss_a']:.1f} | {r['in_a']:.0f} | {r['cpu_b']:.1f} "
          f"| {r['rss_b']:.1f} | {r['in_b']:.0f} | {r['cpu_nats']:.1f} | {r['srv_out']:.0f} "
          f"| {r['cpu_sim']:.1f} | {r['cluster']:.3g} | {fmt(r['members_s'], '.3f')} "
          f"| {fmt(r['ping_s'], '.3f')} | {fmt(r['silence_s'], '.2f')} | {fmt(r['kill_s'], '.2f')} |",
          flush=True)
PY
