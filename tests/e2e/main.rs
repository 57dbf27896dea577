//! The one end-to-end test binary. Each test starts its own nats-server and agents, so
//! tests run in parallel without sharing anything. Build the binaries first:
//! `cargo build --workspace --bins && cargo test -p e2e`.

mod auth;
mod cluster;
mod deploy;
mod deps;
mod files;
mod flags;
mod foundation;
mod guards;
mod harness;
mod hooks;
mod hostile;
mod keys;
mod logins;
mod membership;
mod micro;
mod nats_outage;
mod observe;
mod package;
mod partition;
mod probes;
mod robust;
mod security;
mod sockets;
mod surge;
mod upgrade;
mod web;
