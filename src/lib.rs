//! haproxy-nomad-connector: keeps HAProxy in step with Nomad's native service discovery.
//!
//! The pure core (no I/O) is its own crate, `hnc_core`, re-exported here under the same names:
//! [`catalog`], [`desired`] (tags → desired model), [`live`] (what a driver observed), [`plan`]
//! (diff → ordered plan), over the shared vocabulary in [`model`]. This crate adds the I/O: the
//! Nomad watcher ([`nomad`]), the HAProxy drivers ([`haproxy`]), the loop ([`reconcile`]) and the
//! admin endpoints ([`http`]).

pub use hnc_core::{catalog, desired, live, model, path_rules, plan};

pub mod app;
pub mod call_metrics;
pub mod cli;
pub mod config;
pub mod haproxy;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nomad;
pub mod preflight;
pub mod reconcile;
