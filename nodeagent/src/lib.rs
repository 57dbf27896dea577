//! placeholder
pub mod logs;
