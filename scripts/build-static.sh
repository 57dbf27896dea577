#!/usr/bin/env bash
# Builds the agent as one static executable, linked with musl libc
# (x86_64-unknown-linux-musl, release profile), and prints its path:
# target/x86_64-unknown-linux-musl/release/nodeagent. It needs no shared library at
# all (no libc, ld.so or libgcc_s), so it runs on any x86_64 Linux. ctl is not built
# here: it stays the usual glibc build (cargo build --release --bins).
# The idle agent's code is laid out together (scripts/link-hot.sh): see below.
# Installs what it needs when missing: the Rust target (rustup target add) and musl-gcc
# (apt-get install musl-tools: ring compiles C for the target).
# Limits of the static agent: user and group names (uid, gid) are looked up in
# /etc/passwd and /etc/group only (musl has no NSS: no LDAP, no sssd, no systemd-homed);
# host names are resolved from /etc/hosts and DNS (no NSS modules such as mdns or
# myhostname). Use numeric ids and addresses where those matter.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
[ "$(uname -m)" = x86_64 ] ||
    { echo "build-static.sh: only x86_64 is set up (this machine is $(uname -m))" >&2; exit 2; }
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "adding the Rust target $target (rustup)..." >&2
    rustup target add "$target" >&2
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
    echo "installing musl-tools (apt-get)..." >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -qq musl-tools >&2 ||
        { "${sudo[@]}" apt-get update -qq >&2 && "${sudo[@]}" apt-get install -y -qq musl-tools >&2; }
fi
# The functions the idle agent runs are laid out first and together
# (scripts/link-hot.sh, with the list nodeagent/hot-code.txt), linked by LLD, which
# the Rust toolchain ships. Without it, the usual link.
host=$(rustc -vV | sed -n 's/^host: //p')
gccld="$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
link=()
list=
if [ -x "$gccld/ld.lld" ] && [ -f nodeagent/hot-code.txt ]; then
    mkdir -p target/hot-code
    # Named by its content: cargo links again when the list changes.
    list="$PWD/target/hot-code/$(sha256sum nodeagent/hot-code.txt | cut -c1-16).txt"
    cp nodeagent/hot-code.txt "$list"
    link=(-C "linker=$PWD/scripts/link-hot.sh" -C link-arg=-fuse-ld=lld
        -C "link-arg=-B$gccld" -C "link-arg=--hot-code=$list")
else
    echo "build-static.sh: no LLD in the Rust toolchain ($gccld): linked without the hot-code layout" >&2
fi
cargo rustc --release --target "$target" -p nodeagent --bin nodeagent -- "${link[@]}" >&2
if [ -n "$list" ] && [ -f "$list.report" ]; then
    cat "$list.report" >&2
fi
echo "target/$target/release/nodeagent"
