#!/usr/bin/env bash
# The linker scripts/build-static.sh gives rustc for the static agent: it links as `cc`
# would, with LLD, and lays out first, together, the functions the idle agent runs
# (the list nodeagent/hot-code.txt, written by scripts/hot-code.py).
#
# Why: the agent's code is a file mapping, and a page fault there brings in up to
# 64-128 KiB around the faulting page (the kernel's fault-around and read-around; the
# latter ignores MADV_RANDOM on executable mappings since Linux 6.16). The few hundred
# functions the idle agent runs (heartbeat, timers, the NATS connection, the stats
# sampler) are scattered over the 4 MiB of code by default, so the windows around them
# keep about 3 MiB resident; laid out together, they keep about 0.5 MiB.
#
# rustc calls it with the arguments of `cc`, plus `--hot-code=LIST` (build-static.sh
# passes it through -C link-arg). LIST holds one function a line, demangled as
# c++filt prints it (with the crate and symbol hashes), `#` lines being comments. Each
# is looked up in the objects being linked: by its full name, else by its name
# without hashes (after a toolchain or dependency update: every instance of that
# name then), else as written (C functions of the C library). The symbol ordering
# file this writes is handed to LLD (--symbol-ordering-file); a function it cannot
# find is left where it was, and how many were found is written to LIST.report.
# Before the list comes nodeagent::memory::hot_code_start and after it
# nodeagent::memory::hot_code_end: the agent leaves the pages between them resident
# when it pages its code out (nodeagent/src/memory.rs).
# Function order changes no behaviour: only where the code sits in the file.
set -euo pipefail

list=
args=()
for a in "$@"; do
    case "$a" in
        --hot-code=*) list=${a#--hot-code=} ;;
        *) args+=("$a") ;;
    esac
done
[ -n "$list" ] || exec "${CC:-cc}" "${args[@]}"

order="$list.order"
objects=()
for a in "${args[@]}"; do
    case "$a" in
        *.o | *.rlib | *.a) [ -f "$a" ] && objects+=("$a") ;;
    esac
done

# One line per function symbol of the objects: mangled TAB demangled (c++filt: with
# the crate and symbol hashes, which `nm -C` leaves out).
symbols() {
    local o
    for o in "${objects[@]}"; do
        paste -d '\t' <(names "$o") <(names "$o" | c++filt)
    done
}
names() {
    nm --defined-only "$1" 2>/dev/null |
        awk 'match($0, /^[0-9a-f]+ [tTwW] /) { print substr($0, RLENGTH + 1) }'
}

symbols | awk -F '\t' -v report="$list.report" '
    function strip(s) {
        gsub(/\[[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]+\]/, "", s)
        sub(/::h[0-9a-f]+$/, "", s)
        return s
    }
    FNR == NR {
        full[$2] = full[$2] $1 "\n"
        bare[strip($2)] = bare[strip($2)] $1 "\n"
        next
    }
    /^#/ || /^[ \t]*$/ { next }
    /^nodeagent::memory::hot_code_(start|end)$/ {
        if ($0 in bare) { printf "%s", bare[$0]; markers++ }
        next
    }
    {
        listed++
        if ($0 in full) { printf "%s", full[$0]; exact++; next }
        s = strip($0)
        if (s in bare) { printf "%s", bare[s]; byname++; next }
        if ($0 !~ /::/) { print $0; plain++; next }
        missing++
    }
    END {
        printf "hot code: %d functions listed: %d found by full name, %d by name without hashes, %d C functions passed as named, %d not found; %s\n",
            listed, exact, byname, plain, missing,
            markers == 2 ? "its bounds marked" : "its bounds not found (the agent then pages it out with the rest)" > report
    }
' - <(echo nodeagent::memory::hot_code_start; cat "$list"; echo nodeagent::memory::hot_code_end) >"$order"

exec "${CC:-cc}" "${args[@]}" -Wl,--symbol-ordering-file="$order" -Wl,--no-warn-symbol-ordering
