#!/usr/bin/env bash
# Runs the whole test suite: unit tests, schema drift check, and the end-to-end tests
# (a real nats-server per test, real agents, real ctl, real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The package test builds a .deb with cargo-deb: installed once per machine (about two
# minutes on two cores), before the tests so that it does not load them.
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "installing cargo-deb ..." >&2
    cargo install cargo-deb --locked --no-default-features --quiet
fi
cargo build --workspace --bins
cargo test --workspace "$@"
