//! A hostile client of the admin port (issue 11, item 11): 2,000 idle connections to the
//! connector's HTTP server cost only themselves. The connector runs with 1,024 open files (the
//! usual soft limit of a service), so holding every connection would exhaust it; instead
//! `/readyz`, `/metrics` and `/healthz` keep answering at once, and the connector keeps its Nomad
//! and HAProxy connections: the healthy service still gains, drains and loses instances and a
//! new service is routed.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::harness::{Driver, Lab};
use crate::both_drivers;
use crate::support::limits::{raise_open_files, set_open_files_of};

const IDLE: usize = 2_000;
/// How quickly a probe must be answered while the idle connections are open.
const PROMPT: Duration = Duration::from_secs(2);
/// The connector's open-file limit for the test.
const CONNECTOR_FILES: u64 = 1_024;

both_drivers!(idle_admin_connections_cost_only_themselves, |lab: &Lab| {
    let pid = libc::pid_t::try_from(lab.connector.pid()).expect("pid");
    set_open_files_of(pid, CONNECTOR_FILES);
    // This process holds the client ends.
    raise_open_files(IDLE as u64 + 1_024);
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let stream = TcpStream::connect(("127.0.0.1", lab.connector.port))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(stream);
    }
    for path in ["/readyz", "/metrics", "/healthz", "/readyz"] {
        let started = Instant::now();
        let answer = lab.connector.get(path);
        let took = started.elapsed();
        let (code, body) = answer.unwrap_or_else(|| {
            panic!(
                "{path} not answered with {IDLE} idle connections open; connector log:\n{}",
                lab.connector.log_text()
            )
        });
        assert_eq!(code, 200, "{path}: {body}");
        assert!(took < PROMPT, "{path} took {took:?}");
    }
    // The connector's own connections are unaffected.
    lab.prove_isolated(&[]);
    let log = lab.connector.log_text();
    assert!(
        !log.contains("Too many open files"),
        "the connector ran out of file descriptors:\n{log}"
    );
    drop(idle);
});
