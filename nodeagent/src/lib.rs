//! `nodeagent`: supervises the processes of one machine and answers commands that
//! arrive over NATS. The binary in `main.rs` only parses arguments, installs signal
//! handlers and calls [`agent::run`]. The modules use each other one way only;
//! ARCHITECTURE.md at the top of the repository draws the graph, and the tests in
//! `module_graph` check it.

pub mod agent;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod fatal;
pub mod groups;
pub mod handoff;
pub mod identity;
pub mod keepers;
pub mod logs;
pub mod memberloop;
pub mod membership;
pub mod memory;
pub mod probe;
pub mod process;
pub mod relay;
pub mod sockets;
pub mod state;
pub mod stats;
pub mod statsloop;
pub mod supervisor;
pub mod sysevents;
pub mod systemd;
pub mod transport;
pub mod upgrade;

#[cfg(test)]
mod module_graph;
