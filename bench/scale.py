#!/usr/bin/env python3
"""Time from a control command to the moment a process manager runs TARGET children.

Starts COMMAND (without waiting for it), then polls the manager's children until
exactly TARGET of them run a program whose command line contains MARKER, and prints
the elapsed time in nanoseconds. A child counts once it has exec'd (its command line
is the program's, not the manager's) and is not a zombie; a scale up is done when all
new ones run, a stop (TARGET 0) when the last one is gone. The children are read from
/proc/PID/task/*/children (every thread of the manager), so no scan of all of /proc.
Then it waits for COMMAND to exit (at most TIMEOUT seconds) so that the next step
starts from a settled manager.

Without COMMAND it only waits until TARGET children run (and prints the time).

usage: scale.py MANAGER_PID MARKER TARGET TIMEOUT_SECONDS [COMMAND...]
"""
import os
import subprocess
import sys
import time


def children(manager):
    out = set()
    try:
        tasks = os.listdir(f"/proc/{manager}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{manager}/task/{t}/children") as f:
                out.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def running(pid, marker):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        if stat[stat.rindex(b")") + 2:][:1] == b"Z":
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker in f.read()
    except (OSError, ValueError):
        return False


def count(manager, marker, seen):
    """Children that run MARKER; `seen` remembers pids already checked as running."""
    kids = children(manager)
    n = 0
    for pid in kids:
        if pid in seen or running(pid, marker):
            seen.add(pid)
            n += 1
    seen.intersection_update(kids)
    return n


def main():
    manager, marker, target, timeout = sys.argv[1:5]
    manager, target, timeout = int(manager), int(target), float(timeout)
    marker = marker.encode()
    seen = set()
    t0 = time.monotonic_ns()
    cmd = None
    if sys.argv[5:]:
        cmd = subprocess.Popen(sys.argv[5:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + int(timeout * 1e9)
    while True:
        n = count(manager, marker, seen)
        now = time.monotonic_ns()
        if n == target:
            break
        if now > deadline:
            if cmd:
                cmd.kill()
            sys.exit(f"scale.py: {n} children run after {timeout} s, not {target}")
        time.sleep(0.0005)
    print(now - t0)
    if cmd is None:
        return
    try:
        cmd.wait(timeout)
    except subprocess.TimeoutExpired:
        cmd.kill()


if __name__ == "__main__":
    main()
