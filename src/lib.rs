//! pinstream
pub mod clean;
pub mod config;
