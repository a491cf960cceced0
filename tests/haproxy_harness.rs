//! The real-HAProxy harness, proven against the binary under test (2.6 and 3.0 in CI).

use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};

fn config(frontend_port: u16) -> String {
    format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{frontend_port}\n    default_backend be\n\n\
         backend be\n    balance roundrobin\n"
    )
}

#[test]
fn binary_is_the_expected_version() {
    let bin = haproxy::binary();
    let line = haproxy::version_line(&bin);
    println!("testing against {} ({line})", bin.display());
    assert!(
        line.starts_with("HAProxy version "),
        "unexpected `haproxy -v`: {line}"
    );
    // CI states which version each run must exercise, so a wrong binary cannot pass silently.
    if let Ok(expected) = std::env::var("EXPECT_HAPROXY_VERSION") {
        assert!(
            line.starts_with(&format!("HAProxy version {expected}.")),
            "expected HAProxy {expected}, got: {line}"
        );
    }
}

#[test]
fn starts_answers_on_both_sockets_and_routes_through_a_runtime_server() {
    let port = haproxy::free_port();
    let instance = Instance::start("instance-a");
    let mut lb = Haproxy::start(&config(port));

    // Admin socket: show info.
    let version = lb.version();
    assert!(
        !version.is_empty(),
        "show info has no Version:\n{}",
        lb.admin("show info")
    );

    // Master socket: show proc lists the master and one worker; `@1` reaches the worker.
    let proc = lb.master("show proc");
    assert!(proc.contains("master"), "{proc}");
    assert!(proc.contains("worker"), "{proc}");
    assert!(
        lb.master("@1 show info")
            .contains(&format!("Version: {version}"))
    );

    // No server yet: HAProxy answers 503.
    let (status, _) = http::get(port, "any.test", "/").expect("request through HAProxy");
    assert_eq!(status, 503);

    // Add a server at runtime: starts in maintenance with checks disabled (CONTRACTS §3.2).
    assert_eq!(
        lb.admin(&format!(
            "add server be/s1 127.0.0.1:{} check",
            instance.port
        )),
        "New server registered."
    );
    assert_eq!(lb.admin("enable health be/s1"), "");
    assert_eq!(lb.admin("set server be/s1 state ready"), "");
    let state = lb.admin("show servers state be");
    let line = state
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some("s1"))
        .unwrap_or_else(|| panic!("s1 missing from show servers state:\n{state}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[6], "0", "admin state ready: {line}");
    let check_state: u32 = cols[13].parse().expect("srv_check_state");
    assert_ne!(check_state & 0x04, 0, "health check enabled: {line}");

    let (status, body) = http::get(port, "any.test", "/").expect("request through HAProxy");
    assert_eq!(
        (status, body.as_str()),
        (200, "instance-a"),
        "{}",
        lb.log_text()
    );
    assert!(instance.requests.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // Stop: no process of this HAProxy is left.
    let dir = lb.dir.path().display().to_string();
    let pid = lb.pid();
    lb.stop();
    let left = haproxy::processes_mentioning(&dir);
    assert!(
        left.is_empty(),
        "HAProxy (master {pid}) left processes behind: {left:?}"
    );
}

#[test]
fn dropping_the_harness_leaves_no_process() {
    let port = haproxy::free_port();
    let lb = Haproxy::start(&config(port));
    let dir = lb.dir.path().display().to_string();
    assert!(
        !haproxy::processes_mentioning(&dir).is_empty(),
        "HAProxy should be running"
    );
    drop(lb);
    assert!(
        haproxy::processes_mentioning(&dir).is_empty(),
        "processes left after drop"
    );
}

#[test]
fn a_missing_binary_fails_with_install_instructions() {
    // Re-run the version test in a child with no usable HAProxy: it must fail, not skip.
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "haproxy_harness::binary_is_the_expected_version",
            "--nocapture",
        ])
        .env("HAPROXY_BIN", "/nonexistent/haproxy")
        .output()
        .expect("run child test");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the test passed without HAProxy:\n{text}"
    );
    assert!(
        text.contains("running 1 test"),
        "the child ran no test:\n{text}"
    );
    assert!(text.contains("HAProxy is required by this test"), "{text}");
    assert!(text.contains("apt-get install haproxy"), "{text}");
}
