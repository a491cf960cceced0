//! Tenant isolation (issue 11): no Nomad job can stop, poison or hijack routing for another.
//!
//! - `props`: the isolation property over the pure core (1,000 hostile cases) and real
//!   `haproxy -c` on rendered candidates;
//! - `harness`: the end-to-end lab (binary + Nomad double + real HAProxy with the runtime
//!   driver, or the Data Plane API double) in which each hostile registration is shown to cost
//!   only itself;
//! - `cases`, `regex_keys`, `watch_safety`: one end-to-end test per defect, on both drivers;
//! - `admin_flood`: a hostile client of the admin port (2,000 idle connections).

#[path = "hostile/admin_flood.rs"]
mod admin_flood;
#[path = "hostile/cases.rs"]
mod cases;
#[path = "hostile/corpus.rs"]
mod corpus;
#[path = "hostile/harness.rs"]
mod harness;
#[path = "hostile/props.rs"]
mod props;
#[path = "hostile/regex_keys.rs"]
mod regex_keys;
#[path = "hostile/watch_safety.rs"]
mod watch_safety;
