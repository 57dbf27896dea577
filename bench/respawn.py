#!/usr/bin/env python3
"""Respawn latency of a process manager: the time from SIGKILL of one of its children to
the moment its replacement exists (a new child of the manager, not a zombie).

Method: read /proc/sys/kernel/ns_last_pid just before the kill; after it, spin on
ns_last_pid and look only at the pids allocated since, reading /proc/PID/stat for the
parent pid. One small file read per loop turn, so the resolution is a few microseconds;
no need to scan all of /proc. The victim each time is the oldest child whose command
line contains MARKER, so that it has run long enough not to count as a failed start
(managers back off after those). Between kills it pauses for a random time in
[MIN, MAX] seconds: managers that restart on a periodic tick would otherwise be
measured at one phase of their tick only.

usage: respawn.py MANAGER_PID MARKER KILLS [MIN:MAX pause seconds] [TIMEOUT_SECONDS]
prints one latency in nanoseconds per line.
"""
import os
import random
import signal
import sys
import time


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(b")") + 2:].split()
    # state, ppid, ... starttime is field 22 (index 19 after the comm)
    return rest[0], int(rest[1]), int(rest[19])


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(manager, marker):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        s = stat(int(name))
        if s and s[1] == manager and s[0] != b"Z" and marker in cmdline(int(name)):
            out.append((s[2], int(name)))
    return sorted(out)


def last_pid():
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())


def one(manager, marker, timeout):
    kids = children(manager, marker)
    if not kids:
        sys.exit(f"respawn.py: manager {manager} has no child matching {marker!r}")
    victim = kids[0][1]
    before = {pid for _, pid in kids}
    start_pid = last_pid()
    t0 = time.perf_counter_ns()
    os.kill(victim, signal.SIGKILL)
    seen = start_pid
    pending = []
    deadline = t0 + int(timeout * 1e9)
    while True:
        cur = last_pid()
        if cur != seen:
            # pids wrap around at pid_max; fine for a benchmark of a few seconds
            pending.extend(range(seen + 1, cur + 1) if cur > seen else [cur])
            seen = cur
        still = []
        for pid in pending:
            s = stat(pid)
            if s is None:
                # allocated but not visible yet, or already gone: look again a few times
                still.append(pid)
                continue
            if s[1] == manager and s[0] != b"Z" and pid not in before:
                return time.perf_counter_ns() - t0
        pending = still[-64:]
        if time.perf_counter_ns() > deadline:
            sys.exit(f"respawn.py: no new child of {manager} within {timeout}s")


def main():
    manager, marker, kills = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    lo, _, hi = (sys.argv[4] if len(sys.argv) > 4 else "0.2:0.4").partition(":")
    lo, hi = float(lo), float(hi or lo)
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    for _ in range(kills):
        print(one(manager, marker, timeout), flush=True)
        time.sleep(random.uniform(lo, hi))


if __name__ == "__main__":
    main()
