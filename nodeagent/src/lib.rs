//! placeholder
pub mod membership;
pub mod sysevents;
