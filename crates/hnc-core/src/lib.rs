//! The pure core of haproxy-nomad-connector: no I/O, no async runtime, no HTTP.
//!
//! Stages, each a module: [`catalog`] (Nomad's registrations as the last reads saw them) →
//! [`desired`] (tags → the desired HAProxy model) → [`plan`] (diff against [`live`], what a driver
//! observed, → ordered operations), over the shared vocabulary in [`model`]. [`guards`] hold back
//! mass deletions; [`drains`] times server drains.

pub mod catalog;
pub mod desired;
pub mod drains;
pub mod guards;
pub mod live;
pub mod model;
pub mod path_rules;
pub mod plan;
