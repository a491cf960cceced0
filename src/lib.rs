//! haproxy-nomad-connector: keeps HAProxy in step with Nomad's native service discovery.
//!
//! The pure core (no I/O): [`desired`] (tags → desired model), [`live`] (what a driver observed),
//! [`plan`] (diff → ordered plan), over the shared vocabulary in [`model`].

pub mod app;
pub mod call_metrics;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod desired;
pub mod haproxy;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod nomad;
pub mod plan;
pub mod preflight;
pub mod reconcile;
