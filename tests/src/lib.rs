//! harness
pub mod tmux;
