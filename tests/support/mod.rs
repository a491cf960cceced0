//! Shared test support: a real HAProxy process, tiny HTTP instances, and the Nomad double (the
//! Data Plane API double comes in a later milestone). Each integration-test crate uses a subset.
#![allow(dead_code)]

pub mod connector;
pub mod dataplane;
pub mod haproxy;
pub mod http;
pub mod nomad;
