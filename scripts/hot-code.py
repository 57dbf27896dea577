#!/usr/bin/env python3
"""Writes nodeagent/hot-code.txt: the functions the idle agent runs, which
scripts/link-hot.sh lays out together in the static agent (see there for why).

Usage (as root, on a host with nothing else of value running: it sets the read-ahead of
the disk holding the binary to 0 for its run and restores it, and drops the page cache):
    sudo scripts/hot-code.py [BINARY]
BINARY defaults to the static agent (scripts/build-static.sh builds it). Environment:
START=8 (seconds each agent runs before the measure), WINDOW=65 (seconds of each
measure: the agent's slowest periodic work, its own page-out, runs once a minute),
NATS=nats-server.

How: it runs two agents from BINARY against a local nats-server, one idle with 10
watchers and one with 100 processes and stats at 1 s (the two agents bench/weight.sh
reads), and after START pages their code out (process_madvise MADV_PAGEOUT) and drops
the page cache. With read-ahead at 0, each page of code the agents then run is read
alone, so after WINDOW the pages present in their code mappings (/proc/PID/pagemap)
are exactly the pages they ran. The functions on those pages are candidates; each gets
a uprobe (tracefs), and the list is the functions hit during a second WINDOW (with
those uprobes cannot probe), and those on the stacks of the agents' threads at its
end (gdb: loops entered before the probes, such as the runtime's workers), named as
c++filt prints them. Functions already listed stay, in their order, while the binary
has them (FRESH=1 starts over); new ones follow in address order.
"""

import ctypes
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(ROOT, "nodeagent", "hot-code.txt")
TRACE = "/sys/kernel/tracing"
START = float(os.environ.get("START", "8"))
WINDOW = float(os.environ.get("WINDOW", "65"))
MARKER = "86400125"
HEADER = """\
# The functions the idle agent runs (heartbeats, timers, the NATS connection, the
# stats sampler), one a line as c++filt prints them: scripts/link-hot.sh lays them
# out first and together in the static agent, so that the pages they keep resident
# are few. Written by scripts/hot-code.py (run it again after large changes: the
# build prints how many of these it found).
"""


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def segments(binary):
    """(vaddr, offset, size) of the executable LOAD segments."""
    out = []
    for line in run("readelf", "-lW", binary).splitlines():
        f = line.split()
        if f and f[0] == "LOAD" and "E" in f[6:-1]:
            out.append((int(f[2], 16), int(f[1], 16), int(f[4], 16)))
    return out


def functions(binary):
    """[(vaddr, size, mangled, demangled)] of the code symbols."""
    rows = []
    for line in run("nm", "--defined-only", "-S", binary).splitlines():
        m = re.match(r"^([0-9a-f]+) ([0-9a-f]+) [tTwW] (.+)$", line)
        if m and int(m.group(2), 16) > 0:
            rows.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    dem = subprocess.run(["c++filt"], input="".join(r[2] + "\n" for r in rows),
                         check=True, capture_output=True, text=True).stdout.split("\n")
    return [(a, s, n, d) for (a, s, n), d in zip(rows, dem)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readahead_file(binary):
    dev = os.stat(binary).st_dev
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for q in (f"{base}/queue/read_ahead_kb", f"{base}/../queue/read_ahead_kb"):
        if os.path.exists(q):
            return q
    sys.exit(f"hot-code.py: no read_ahead_kb for the disk of {binary} ({base})")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")


def exe_ranges(pid, binary, executable_only):
    out = []
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and f[5] == binary and "w" not in f[1]:
            if executable_only and "x" not in f[1]:
                continue
            a, b = (int(x, 16) for x in f[0].split("-"))
            out.append((a, b, int(f[2], 16)))
    return out


def page_out(pid, binary):
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        sys.exit(f"hot-code.py: pidfd_open({pid}): errno {ctypes.get_errno()}")

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    for a, b, _ in exe_ranges(pid, binary, False):
        io = Iovec(a, b - a)
        if libc.syscall(440, pidfd, ctypes.byref(io), 1, 21, 0) < 0:  # MADV_PAGEOUT
            sys.exit(f"hot-code.py: process_madvise: errno {ctypes.get_errno()}")
    os.close(pidfd)


def present_offsets(pid, binary):
    """File offsets of the code pages present in the process."""
    out = set()
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for a, b, off in exe_ranges(pid, binary, True):
            for va in range(a, b, 4096):
                pm.seek(va // 4096 * 8)
                if struct.unpack("<Q", pm.read(8))[0] >> 63:
                    out.add(va - a + off)
    return out


GDB_FRAMES = """
import gdb
for t in gdb.selected_inferior().threads():
    t.switch()
    f = gdb.newest_frame()
    while f is not None:
        print("pc", hex(f.pc()))
        f = f.older()
"""


def stack_offsets(pid, binary):
    """File offsets of the code in the frames of every thread of the process: the
    functions entered before the probes (main, the runtime's worker and thread loops)
    that run on while they are on the stack. One look with gdb (the process stops for
    it); the return addresses are taken one byte back, inside the call."""
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "python" + GDB_FRAMES],
                         capture_output=True, text=True, check=False).stdout
    ranges = exe_ranges(pid, binary, True)
    offsets = set()
    for k, line in enumerate(l for l in out.splitlines() if l.startswith("pc ")):
        pc = int(line.split()[1], 16)
        for a, b, off in ranges:
            if a <= pc < b:
                offsets.add(pc - a + off - (1 if k else 0))
    return offsets


def uprobe_hits(binaries, probes, secs):
    """Indexes of `probes` ((file offset, ...)) hit in any of `binaries` (copies of
    one file) during `secs`."""
    with open(f"{TRACE}/uprobe_events", "w"):
        pass
    fd = os.open(f"{TRACE}/uprobe_events", os.O_WRONLY | os.O_APPEND)
    events = [(f"f{i}_{k}", b, p[0]) for i, p in enumerate(probes)
              for k, b in enumerate(binaries)]
    for name, b, off in events:
        os.write(fd, f"p:hotcode/{name} {b}:0x{off:x}\n".encode())
    os.close(fd)
    try:
        refused = set()
        for name, _, _ in events:
            try:
                with open(f"{TRACE}/events/hotcode/{name}/enable", "w") as f:
                    f.write("1")
            except OSError:
                # An instruction uprobes cannot replace (assembly such as memcpy): the
                # function is listed, as its page ran.
                refused.add(int(name[1:].split("_")[0]))
        if refused:
            print(f"{len(refused)} functions could not be probed; listed as their pages ran",
                  file=sys.stderr)
        time.sleep(secs)
        hits = set(refused)
        for line in open(f"{TRACE}/uprobe_profile"):
            f = line.split()
            if len(f) >= 3 and f[1].startswith("f") and int(f[2]) > 0:
                hits.add(int(f[1][1:].split("_")[0]))
        return hits
    finally:
        with open(f"{TRACE}/events/hotcode/enable", "w") as f:
            f.write("0")
        with open(f"{TRACE}/uprobe_events", "w"):
            pass


def main():
    if os.geteuid() != 0:
        sys.exit("hot-code.py: run it as root (tracefs, drop_caches, read_ahead_kb)")
    if len(sys.argv) > 1:
        binary = os.path.abspath(sys.argv[1])
    else:
        binary = os.path.join(ROOT, run(os.path.join(ROOT, "scripts/build-static.sh")).strip())
    if not os.path.exists(f"{TRACE}/uprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACE], check=False)
    work = tempfile.mkdtemp(prefix="hot-code.")
    # One copy of the binary for each agent: the kernel pages out only the pages one
    # process maps. Their functions are at the same offsets.
    copies = {name: os.path.join(work, f"nodeagent-{name}") for name in ("idle", "hundred")}
    for c in copies.values():
        run("cp", binary, c)
    copy = copies["idle"]
    ra = readahead_file(copy)
    ra_before = open(ra).read().strip()
    procs = []
    try:
        with open(ra, "w") as f:
            f.write("0")
        drop_caches()
        port = free_port()
        nats = os.environ.get("NATS", "nats-server")
        procs.append(subprocess.Popen([nats, "-a", "127.0.0.1", "-p", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        url = f"nats://127.0.0.1:{port}"
        configs = {
            "idle": "".join(f'[watcher.w{i}]\ncmd = "sleep"\nargs = ["{MARKER}"]\n\n'
                            for i in range(1, 11)),
            "hundred": f'[watcher.w1]\ncmd = "sleep"\nargs = ["{MARKER}"]\nnumprocesses = 100\n',
        }
        agents = []
        for name, watchers in configs.items():
            state = os.path.join(work, name)
            os.mkdir(state)
            conf = os.path.join(work, f"{name}.toml")
            with open(conf, "w") as f:
                f.write(f'[agent]\nname = "{name}"\nstate_dir = "{state}"\n'
                        f'stats_interval = "1s"\n\n[nats]\nservers = ["{url}"]\n\n{watchers}')
            p = subprocess.Popen([copies[name], "--config", conf], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(work, f"{name}.log"), "w"))
            procs.append(p)
            agents.append((p, copies[name]))
        time.sleep(START)
        for p, exe in agents:
            if p.poll() is not None:
                sys.exit(f"hot-code.py: an agent exited (logs in {work})")
            page_out(p.pid, exe)
        drop_caches()
        time.sleep(WINDOW)
        offsets = set()
        for p, exe in agents:
            offsets |= present_offsets(p.pid, exe)

        segs = segments(copy)

        def file_offset(va):
            for v, o, size in segs:
                if v <= va < v + size:
                    return va - v + o
            return None

        pages = {o // 4096 for o in offsets}
        # (vaddr, size, mangled, demangled, file offset) of every function, once: nm
        # and c++filt over the whole binary take seconds.
        funcs = [(a, s, n, d, file_offset(a)) for a, s, n, d in sorted(functions(copy))]
        candidates = []
        seen = set()
        for a, s, n, d, off in funcs:
            if off is None or off in seen:
                continue
            if any(p in pages for p in range(off // 4096, (off + s - 1) // 4096 + 1)):
                seen.add(off)
                candidates.append((off, a, d))
        print(f"{len(pages)} code pages ran, {len(candidates)} functions on them; probing...",
              file=sys.stderr)
        hit = uprobe_hits(list(copies.values()), candidates, WINDOW)
        on_stacks = set()
        for p, exe in agents:
            on_stacks |= stack_offsets(p.pid, exe)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["pkill", "-f", MARKER], check=False)
        with open(ra, "w") as f:
            f.write(ra_before)
    # Aliases (one address, several names) were probed once: list every name.
    hot_addrs = {candidates[i][1] for i in hit}
    for a, s, n, d, off in funcs:
        if off is not None and any(off <= o < off + s for o in on_stacks):
            hot_addrs.add(a)
    names = [d for a, s, n, d, off in funcs if a in hot_addrs]
    old = []
    if os.path.exists(LIST) and os.environ.get("FRESH") != "1":
        old = [l.rstrip("\n") for l in open(LIST) if l.strip() and not l.startswith("#")]
    # The functions listed before stay (a function that runs once a minute may miss a
    # window) while the binary still has them; FRESH=1 starts the list over.
    present = {d for a, s, n, d, off in funcs}
    ordered = [n for n in old if n in present]
    kept = set(ordered)
    new = [n for n in dict.fromkeys(names) if n not in kept]
    ordered += new
    with open(LIST, "w") as f:
        f.write(HEADER)
        f.write("".join(n + "\n" for n in ordered))
    print(f"{LIST}: {len(ordered)} functions ({len(hit)} of {len(candidates)} candidates hit; "
          f"{len(new)} new, {len(old) - len(kept)} gone from the binary)", file=sys.stderr)
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
