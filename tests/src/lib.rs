//! The end-to-end harness: a real `nats-server` per test, real `nodeagent` processes,
//! the real `ctl` binary, facts about real processes from /proc, and the committed JSON
//! Schemas to check replies against. Everything it starts is stopped on drop, also when
//! a test panics; every wait is a bounded poll.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

pub mod agent;
pub mod bins;
pub mod events;
pub mod mark;
pub mod nats;
pub mod netns;
pub mod procs;
pub mod rawnats;
pub mod schema;
pub mod sniff;
pub mod tmux;
pub mod wait;
pub mod web;

pub use agent::Agent;
pub use bins::{
    bin, ctl, ctl_json, ctl_json_output, ctl_json_output_url, ctl_ok, ctl_ok_url, ctl_url,
    member_states, nodeagent, parse_table, spawn_ctl, wait_all_alive, wait_all_know_each_other,
    CtlLines, CtlOutput, KillOnDrop,
};
pub use events::Events;
pub use mark::MarkGuard;
pub use nats::{free_port, NatsServer};
pub use netns::NetNs;
pub use procs::{
    children_pids, cmdline, count_processes_with_cmdline, cwd, env_var, environ, group_members,
    ids, is_alive, pgrp_of, pids_with_cmdline, pids_with_environ, start_secs, unique_secs,
    KillGroupOnDrop,
};
pub use schema::{validate, validate_reply};
pub use sniff::{Sniffer, Subscription};
pub use wait::{bound, slack, timed, wait_for, wait_until, wait_until_async};
