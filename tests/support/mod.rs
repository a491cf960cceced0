//! Shared test support, compiled once into the test binary `it` (see `tests/it.rs`): the
//! connector binary as a process, a real HAProxy process, tiny HTTP instances, the Nomad and Data
//! Plane API doubles, a strict Prometheus text parser and the process limits the tests share.

// The doubles expose the whole of their server's controls and state (cutting Nomad's event
// streams, forcing a health-check verdict, a base configuration's version…), not only what
// today's tests call.
#![allow(dead_code)]

pub mod connector;
pub mod dataplane;
pub mod expo;
pub mod haproxy;
pub mod http;
pub mod limits;
pub mod nomad;
