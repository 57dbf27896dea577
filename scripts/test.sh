#!/usr/bin/env bash
# Runs the whole test suite: unit tests, schema drift check, and the end-to-end tests
# (a real nats-server per test, real agents, real ctl, real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace "$@"
