#!/usr/bin/env bash
# Runs the whole test suite: unit tests, schema drift check, and the end-to-end tests
# (a real nats-server per test, real agents, real ctl, real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The package test builds a .deb with cargo-deb: installed once per machine (about 95 s
# of CPU), beside the workspace's build, whose single-threaded stretches leave a core
# free, and finished before the tests so that it does not load them.
deb_install=
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing cargo-deb ..." >&2
    cargo install cargo-deb --locked --no-default-features --quiet &
    deb_install=$!
fi
cargo build --workspace --bins
if [ -n "$deb_install" ]; then
    wait "$deb_install" || { echo "test.sh: installing cargo-deb failed" >&2; exit 1; }
fi
cargo test --workspace "$@"
