//! haproxy-nomad-connector: keeps HAProxy in step with Nomad's native service discovery.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod logging;
pub mod nomad;
