//! Shared test support: a real HAProxy process, tiny HTTP instances, and (in later milestones)
//! the Nomad and Data Plane API doubles. Each integration-test crate uses a subset.
#![allow(dead_code)]

pub mod dataplane;
pub mod haproxy;
pub mod http;
