//! Issue 14's per-backend settings with real traffic through real HAProxy (runtime driver; 2.6
//! and 3.0 via `HAPROXY_BIN`) and through the Data Plane API double: timeouts (a websocket
//! outlives the server timeout with `timeout.tunnel`).
//!
//! The runtime tests start their own HAProxy whose `defaults` have short client and server
//! timeouts (1 s), so a backend's own timeouts are what keeps a connection open past them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options as DpOptions};
use crate::support::haproxy::{self, Haproxy};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance as Registration, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::desired::Policy;
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts as CallTimeouts;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, state};
use haproxy_nomad_connector::model::route_rules;
use haproxy_nomad_connector::plan::{Action, ReloadReason, StructuralChange};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;
use serde_json::{Value, json};

/// The main configuration: short default timeouts, the connector's four map rules, a 404 default.
fn main_body(port: u16, maps_dir: &str) -> String {
    let mut rules = String::new();
    for (expr, cond) in route_rules(maps_dir) {
        rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
    }
    format!(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n{rules}    default_backend hand_default\n\n\
         backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n"
    )
}

struct Env {
    lb: Haproxy,
    files: tempfile::TempDir,
    driver: RuntimeDriver,
    port: u16,
    policy: Policy,
    drains: DrainClock,
}

impl Env {
    fn start() -> Env {
        let files = tempfile::Builder::new()
            .prefix("hnc-settings-")
            .tempdir()
            .expect("temp dir");
        let port = haproxy::free_port();
        let cfg = |lb: Option<&Haproxy>| RuntimeConfig {
            master_socket: lb.map(|l| l.master_socket.clone()).unwrap_or_default(),
            admin_socket: lb.map(|l| l.admin_socket.clone()),
            fragment: files.path().join("conf.d").join("hnc.cfg"),
            maps_dir: files.path().join("maps").display().to_string(),
            binary: haproxy::binary(),
            configs: lb.map(|l| vec![l.config.clone()]).unwrap_or_default(),
        };
        RuntimeDriver::new(cfg(None), CallMetrics::disabled())
            .ensure_files()
            .expect("create files");
        let lb = Haproxy::start_with(
            &main_body(port, &cfg(None).maps_dir),
            &[files.path().join("conf.d")],
        );
        let driver = RuntimeDriver::new(cfg(Some(&lb)), CallMetrics::disabled());
        Env {
            lb,
            files,
            driver,
            port,
            policy: Policy::default(),
            drains: DrainClock::default(),
        }
    }

    fn fragment_path(&self) -> PathBuf {
        self.files.path().join("conf.d").join("hnc.cfg")
    }

    async fn pass(&mut self, snap: &Snapshot) -> PassOutcome {
        let out = run_pass(&self.driver, snap, &self.policy, &mut self.drains, true)
            .await
            .unwrap_or_else(|e| panic!("pass failed: {e}\n{}", self.lb.log_text()));
        assert!(
            out.desired.diagnostics.is_empty(),
            "{:?}",
            out.desired.diagnostics
        );
        out
    }

    /// HAProxy's reload counter (`show proc` on the master).
    fn reloads(&self) -> u64 {
        state::proc(&self.lb.master("show proc"))
            .expect("show proc")
            .reloads
    }

    /// Waits until a `GET /` with `host` answers 200.
    async fn wait_up(&self, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = crate::support::http::get(self.port, host, "/") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host} never served\n{}",
                self.lb.admin("show servers state")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn reg(id: &str, port: u16, tags: &[&str]) -> Registration {
    Registration {
        id: id.to_string(),
        job_id: "job".into(),
        alloc_id: format!("alloc-{id}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: "127.0.0.1".into(),
        port,
        create_index: 10,
        modify_index: 10,
        nomad_check: None,
    }
}

fn snapshot(services: Vec<(&str, Vec<Registration>)>) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (name, instances) in services {
        s.services.insert(
            ServiceKey::new("default", name),
            Arc::new(Service { instances }),
        );
    }
    s
}

/// A tiny HTTP/1.1 server: `GET /slow` answers after 1.5 s, a request with `Upgrade` gets
/// `101 Switching Protocols` (with the `Sec-WebSocket-Accept` of RFC 6455's sample key, which
/// [`upgrade`] sends; HAProxy checks it) and then every byte echoed, anything else `200 <name>`.
/// Stops when dropped.
struct UpgradeServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl UpgradeServer {
    fn start(name: &str) -> UpgradeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (s, name) = (stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve_upgrade(stream, &name));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        UpgradeServer { port, stop }
    }
}

impl Drop for UpgradeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_upgrade(stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut upgrade = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.to_ascii_lowercase().starts_with("upgrade:") {
                upgrade = true;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        if upgrade {
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            let mut buf = [0u8; 256];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if path == "/slow" {
            std::thread::sleep(Duration::from_millis(1500));
        }
        let body = if path == "/health" { "ok" } else { name };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Opens a websocket-style upgrade through HAProxy with `host`; returns the connection after the
/// `101`.
fn upgrade(port: u16, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /socket HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("send upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "{host}: upgrade answer cut short ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{host}: {head}");
    s
}

/// Sends `msg` on an upgraded connection and reads it back; `Err` when the connection is closed.
fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    let mut n = 0;
    while n < msg.len() {
        match s.read(&mut got[n..])? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            k => n += k,
        }
    }
    Ok(got)
}

const WS_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=ws.example.test",
    "haproxy.timeout.server=5s",
    "haproxy.timeout.tunnel=30s",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
];

const PLAIN_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=plain.example.test",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_server_timeout_with_timeout_tunnel() {
    let mut env = Env::start();
    let server = UpgradeServer::start("ws0");
    let snap = |ws_tags: &[&str]| {
        snapshot(vec![
            ("ws", vec![reg("ws0", server.port, ws_tags)]),
            ("plain", vec![reg("plain0", server.port, PLAIN_TAGS)]),
        ])
    };

    // Two new backends, one with timeouts: one reload, as planned and as reported.
    let before = env.reloads();
    let out = env.pass(&snap(WS_TAGS)).await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(env.reloads(), before + 1);
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    let ws_section = text
        .split("\nbackend ")
        .find(|s| s.starts_with("ws\n"))
        .expect("ws backend");
    assert!(ws_section.contains("    timeout server 5000ms\n"), "{text}");
    assert!(
        ws_section.contains("    timeout tunnel 30000ms\n"),
        "{text}"
    );
    let plain_section = text
        .split("\nbackend ")
        .find(|s| s.starts_with("plain\n"))
        .expect("plain backend");
    for t in ["server", "connect", "tunnel"] {
        assert!(!plain_section.contains(&format!("timeout {t}")), "{text}");
    }
    // Read back as applied: the next pass plans nothing.
    let again = env.pass(&snap(WS_TAGS)).await;
    assert!(again.plan.is_empty(), "{:#?}", again.plan);
    assert_eq!(env.reloads(), before + 1);

    env.wait_up("ws.example.test").await;
    env.wait_up("plain.example.test").await;

    // A websocket idle for longer than the default client and server timeouts (1 s) stays open
    // on the backend with `timeout tunnel 30s`; on the one without, HAProxy closes it.
    let mut ws = upgrade(env.port, "ws.example.test");
    let mut plain = upgrade(env.port, "plain.example.test");
    assert_eq!(echo(&mut ws, b"hello").expect("echo"), b"hello");
    assert_eq!(echo(&mut plain, b"hello").expect("echo"), b"hello");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        echo(&mut ws, b"still here").expect("the tunnel outlives timeout server"),
        b"still here"
    );
    assert!(
        echo(&mut plain, b"gone?").is_err(),
        "without timeout.tunnel the idle websocket is closed after the default timeouts"
    );

    // `timeout.server=5s` lets a slow answer (1.5 s) through; the default (1 s) gives 504.
    let port = env.port;
    let slow = |host: &str| crate::support::http::get(port, host, "/slow").expect("request");
    assert_eq!(slow("ws.example.test"), (200, "ws0".to_string()));
    assert_eq!(slow("plain.example.test").0, 504);

    // Adding a timeout to a live backend: an update naming the field, one reload.
    let mut tags = WS_TAGS.to_vec();
    tags.push("haproxy.timeout.connect=3s");
    let before = env.reloads();
    let out = env.pass(&snap(&tags)).await;
    let update: Vec<&Action> = out
        .plan
        .ops
        .iter()
        .map(|o| &o.action)
        .filter(|a| matches!(a, Action::UpdateBackend { .. }))
        .collect();
    assert!(
        matches!(update.as_slice(), [Action::UpdateBackend { backend, changed, .. }]
            if backend == "ws" && changed == &["timeout.connect".to_string()]),
        "{:#?}",
        out.plan
    );
    assert_eq!(
        out.plan.reloads(),
        &[ReloadReason::Structural {
            changes: vec![StructuralChange::UpdateBackend {
                backend: "ws".into(),
                changed: vec!["timeout.connect".into()],
            }]
        }]
    );
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(env.reloads(), before + 1);
    assert!(env.pass(&snap(&tags)).await.plan.is_empty());
    env.wait_up("ws.example.test").await;
    assert_eq!(slow("ws.example.test"), (200, "ws0".to_string()));
}

// ---------------------------------------------------------------------------------------------
// The Data Plane API driver against the double.

const MAPS: &str = "/etc/haproxy/maps";

fn dp_base() -> BaseConfig {
    let mut fe = FrontendSpec::new("http-in");
    for (name, cond) in route_rules(MAPS) {
        fe = fe.rule(json!({"name": name, "cond": "if", "cond_test": cond}));
    }
    let mut b = BaseConfig::new().frontend(fe);
    for f in [
        "hnc_exact.map",
        "hnc_prefix.map",
        "hnc_suffix.map",
        "hnc_regex.map",
    ] {
        b = b.map_file(f, "");
    }
    b
}

fn dp_driver(dp: &DataplaneDouble) -> DataplaneDriver {
    DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: None,
            maps_dir: MAPS.into(),
            timeouts: CallTimeouts {
                call: Duration::from_secs(5),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver")
}

async fn dp_pass<D: Driver>(d: &D, snap: &Snapshot, drains: &mut DrainClock) -> PassOutcome {
    let out = run_pass(d, snap, &Policy::default(), drains, true)
        .await
        .unwrap_or_else(|e| panic!("pass failed: {e}"));
    assert!(
        out.desired.diagnostics.is_empty(),
        "{:?}",
        out.desired.diagnostics
    );
    out
}

fn dp_backend(dp: &DataplaneDouble, name: &str) -> Value {
    dp.config_snapshot()["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name}"))
}

fn dp_snap(tags: &[&str]) -> Snapshot {
    snapshot(vec![(
        "ws",
        vec![reg("ws0", 8080, tags), {
            let mut r = reg("ws1", 8080, tags);
            r.address = "127.0.0.2".into();
            r
        }],
    )])
}

#[tokio::test]
async fn dataplane_timeouts_are_backend_fields_read_back_without_flapping() {
    let dp = DataplaneDouble::start(dp_base(), DpOptions::fast()).await;
    let d = dp_driver(&dp);
    let mut drains = DrainClock::default();
    let out = dp_pass(&d, &dp_snap(WS_TAGS), &mut drains).await;
    dp.wait_reloads_idle().await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(dp.reload_count(), 1, "{:?}", dp.reloads());
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    let b = dp_backend(&dp, "ws");
    assert_eq!(b["server_timeout"], 5000);
    assert_eq!(b["tunnel_timeout"], 30000);
    assert!(b.get("connect_timeout").is_none(), "{b}");
    assert!(
        dp_pass(&d, &dp_snap(WS_TAGS), &mut drains)
            .await
            .plan
            .is_empty()
    );

    // A changed timeout: one update naming it, one reload; then nothing.
    let tags: Vec<&str> = WS_TAGS
        .iter()
        .map(|t| {
            if t.starts_with("haproxy.timeout.tunnel=") {
                "haproxy.timeout.tunnel=1h"
            } else {
                t
            }
        })
        .collect();
    let out = dp_pass(&d, &dp_snap(&tags), &mut drains).await;
    dp.wait_reloads_idle().await;
    let changed: Vec<Vec<String>> = out
        .plan
        .ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::UpdateBackend { changed, .. } => Some(changed.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(changed, vec![vec!["timeout.tunnel".to_string()]]);
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(dp.reload_count(), 2, "{:?}", dp.reloads());
    assert_eq!(dp_backend(&dp, "ws")["tunnel_timeout"], 3_600_000);
    assert!(
        dp_pass(&d, &dp_snap(&tags), &mut drains)
            .await
            .plan
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Sticky sessions.

/// A `GET /` with `host` and, when given, the cookie `name=value`; returns (status, body, the
/// value of the `Set-Cookie` for `name`, if any).
fn get_cookie(
    port: u16,
    host: &str,
    name: &str,
    cookie: Option<&str>,
) -> (u16, String, Option<String>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let header = cookie.map_or(String::new(), |v| format!("Cookie: {name}={v}\r\n"));
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\n{header}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let set = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        let v = v.trim().strip_prefix(&format!("{name}="))?;
        Some(v.split(';').next().unwrap_or("").to_string())
    });
    (status, body.to_string(), set)
}

const STICKY_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=shop.example.test",
    "haproxy.sticky=cookie",
    "haproxy.sticky.cookie=shop_srv",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
    "haproxy.check.fall=1",
];

fn shop(instances: &[&crate::support::http::Instance]) -> Snapshot {
    snapshot(vec![(
        "shop",
        instances
            .iter()
            .map(|i| reg(&i.name, i.port, STICKY_TAGS))
            .collect(),
    )])
}

/// Passes until one plans nothing; returns the reloads the driver reported.
async fn converge(env: &mut Env, snap: &Snapshot) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reloads = 0;
    loop {
        let out = env.pass(snap).await;
        if out.plan.is_empty() && out.plan.pending_drains.is_empty() {
            return reloads;
        }
        reloads += out.report.map_or(0, |r| r.reloads.len());
        assert!(Instant::now() < deadline, "no convergence: {:#?}", out.plan);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests without a cookie until one reaches `want`; returns the cookie HAProxy set with it.
async fn cookie_for(env: &Env, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body, set) = get_cookie(env.port, "shop.example.test", "shop_srv", None);
        if status == 200 && body == want {
            let value = set.unwrap_or_else(|| panic!("{want} answered without a cookie"));
            assert!(
                !value.is_empty(),
                "{want} has no dynamic cookie (HAProxy cleared it)"
            );
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {want}\n{}",
            env.lb.admin("show servers state shop")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeping_its_cookie_stays_on_its_instance_until_it_is_drained() {
    use crate::support::http::Instance;
    let mut env = Env::start();
    let inst: Vec<Instance> = (0..4).map(|i| Instance::start(&format!("s{i}"))).collect();
    let three: Vec<&Instance> = inst.iter().take(3).collect();

    // A new sticky backend: one reload, planned and reported.
    let before = env.reloads();
    let out = env.pass(&shop(&three)).await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    assert!(
        text.contains(
            "    cookie shop_srv insert indirect nocache dynamic\n    dynamic-cookie-key hnc-shop\n"
        ),
        "{text}"
    );
    assert!(env.pass(&shop(&three)).await.plan.is_empty());
    assert_eq!(env.reloads(), before + 1);

    // Each of the three gets its own cookie, and a client keeping one stays there.
    let mut cookies = Vec::new();
    for i in &three {
        cookies.push(cookie_for(&env, &i.name).await);
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), 3, "one cookie per instance: {cookies:?}");
    let c1 = cookie_for(&env, "s1").await;
    for _ in 0..100 {
        let (status, body, _) = get_cookie(env.port, "shop.example.test", "shop_srv", Some(&c1));
        assert_eq!((status, body.as_str()), (200, "s1"));
    }

    // A fourth instance is added at run time, with no reload, and gets a cookie of its own
    // (HAProxy 2.6 needs the backend's dynamic cookies enabled again for it).
    let four: Vec<&Instance> = inst.iter().collect();
    let out = env.pass(&shop(&four)).await;
    assert!(
        out.plan
            .ops
            .iter()
            .any(|o| matches!(o.action, Action::AddServer { .. })),
        "{:#?}",
        out.plan
    );
    assert!(out.plan.reloads().is_empty(), "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(0));
    let c3 = cookie_for(&env, "s3").await;
    assert!(!cookies.contains(&c3), "{c3} is another instance's");
    for _ in 0..100 {
        let (status, body, _) = get_cookie(env.port, "shop.example.test", "shop_srv", Some(&c3));
        assert_eq!((status, body.as_str()), (200, "s3"));
    }

    // s3 leaves: drained and removed, still without a reload; the client with its cookie moves
    // to another instance and gets that one's cookie.
    let rest: Vec<&Instance> = inst.iter().take(3).collect();
    assert_eq!(converge(&mut env, &shop(&rest)).await, 0);
    assert_eq!(env.reloads(), before + 1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body, set) = get_cookie(env.port, "shop.example.test", "shop_srv", Some(&c3));
        assert_eq!(status, 200);
        assert_ne!(body, "s3");
        let set = set.expect("a new cookie for the new instance");
        assert!(cookies.contains(&set), "{set} is not a serving instance's");
        seen.insert(body);
    }
    assert!(!seen.is_empty());
    // And the client that kept s1's cookie was never disturbed.
    for _ in 0..10 {
        let (_, body, _) = get_cookie(env.port, "shop.example.test", "shop_srv", Some(&c1));
        assert_eq!(body, "s1");
    }
}

#[tokio::test]
async fn dataplane_sticky_backends_carry_a_dynamic_cookie_and_fill_slots_without_a_reload() {
    let dp = DataplaneDouble::start(dp_base(), DpOptions::fast()).await;
    let d = dp_driver(&dp);
    let mut drains = DrainClock::default();
    let one = dp_snap(STICKY_TAGS);
    let out = dp_pass(&d, &one, &mut drains).await;
    dp.wait_reloads_idle().await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(dp.reload_count(), 1, "{:?}", dp.reloads());
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    let b = dp_backend(&dp, "ws");
    assert_eq!(
        b["cookie"],
        json!({"name": "shop_srv", "type": "insert", "indirect": true, "nocache": true, "dynamic": true})
    );
    assert_eq!(b["dynamic_cookie_key"], "hnc-ws");
    assert_eq!(b["mode"], "http");
    assert!(dp_pass(&d, &one, &mut drains).await.plan.is_empty());

    // A third instance fills a free slot: no reload (its cookie is computed from its address).
    let mut three = one.clone();
    let key = ServiceKey::new("default", "ws");
    let mut instances = three.services[&key].instances.clone();
    let mut r = reg("ws2", 8080, STICKY_TAGS);
    r.address = "127.0.0.3".into();
    instances.push(r);
    three.services.insert(key, Arc::new(Service { instances }));
    let out = dp_pass(&d, &three, &mut drains).await;
    dp.wait_reloads_idle().await;
    assert!(out.plan.reloads().is_empty(), "{:#?}", out.plan.reloads());
    assert_eq!(dp.reload_count(), 1, "{:?}", dp.reloads());
    assert!(dp_pass(&d, &three, &mut drains).await.plan.is_empty());
}

// ---------------------------------------------------------------------------------------------
// TLS to servers.

/// A test CA and a server configuration whose certificate (signed by it) names
/// `app.example.test` and `api.internal`; the CA's PEM is written to `dir/ca.pem`.
fn test_pki(dir: &std::path::Path) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hnc test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![
        "app.example.test".to_string(),
        "api.internal".to_string(),
    ])
    .expect("params")
    .signed_by(&key, &issuer)
    .expect("cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
        )
        .expect("server config");
    Arc::new(cfg)
}

/// An HTTPS instance: `/health` answers `ok`, anything else `<name> sni=<the SNI it received>`;
/// one request per connection. Stops when the test's runtime ends.
async fn https_instance(name: &str, tls: Arc<tokio_rustls::rustls::ServerConfig>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let sni = s.get_ref().1.server_name().unwrap_or("-").to_string();
                let body = if path == "/health" {
                    "ok".to_string()
                } else {
                    format!("{name} sni={sni}")
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

const TLS_AUTO_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=app.example.test",
    "haproxy.server.ssl=true",
    "haproxy.server.sni=auto",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
];

const TLS_FIXED_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=internal.example.test",
    "haproxy.server.ssl=true",
    "haproxy.server.sni=api.internal",
    "haproxy.server.verify=none",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
];

/// Waits until a `GET /` with `host` answers 200 with `body`.
async fn wait_body(env: &Env, host: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = crate::support::http::get(env.port, host, "/");
        if matches!(&got, Ok((200, b)) if b == body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: want {body:?}, last {got:?}\n{}",
            env.lb.admin("show servers state")
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_reached_over_verified_tls_with_the_request_s_or_a_fixed_sni() {
    let mut env = Env::start();
    let pki = test_pki(env.files.path());
    env.policy.server_ca_file = Some(env.files.path().join("ca.pem").display().to_string());
    let p0 = https_instance("t0", pki.clone()).await;
    let p1 = https_instance("t1", pki.clone()).await;
    let q0 = https_instance("i0", pki.clone()).await;
    let snap = |app: &[u16]| {
        snapshot(vec![
            (
                "app",
                app.iter()
                    .enumerate()
                    .map(|(i, p)| reg(&format!("t{i}"), *p, TLS_AUTO_TAGS))
                    .collect(),
            ),
            ("internal", vec![reg("i0", q0, TLS_FIXED_TAGS)]),
        ])
    };

    // Two new backends with TLS: one reload, planned and reported.
    let before = env.reloads();
    let out = env.pass(&snap(&[p0])).await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(env.reloads(), before + 1);
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    let ca = env.policy.server_ca_file.clone().expect("ca");
    assert!(
        text.contains(&format!(
            " ssl verify required ca-file {ca} sni req.hdr(host),field(1,:) check-ssl\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(" ssl verify none sni str(api.internal) check-ssl check-sni api.internal\n"),
        "{text}"
    );
    assert!(env.pass(&snap(&[p0])).await.plan.is_empty());

    // HTTPS to the servers (their health checks too: a plain check would mark them down), with
    // the request's host as SNI (and the certificate verified against it), or the fixed one.
    wait_body(&env, "app.example.test", "t0 sni=app.example.test").await;
    wait_body(&env, "APP.example.test:8443", "t0 sni=app.example.test").await;
    wait_body(&env, "internal.example.test", "i0 sni=api.internal").await;

    // A server added at run time carries TLS too, with no reload.
    let out = env.pass(&snap(&[p0, p1])).await;
    assert!(out.plan.reloads().is_empty(), "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(0));
    wait_body(&env, "app.example.test", "t1 sni=app.example.test").await;
    assert_eq!(env.reloads(), before + 1);
    assert!(env.pass(&snap(&[p0, p1])).await.plan.is_empty());
}

#[tokio::test]
async fn dataplane_tls_to_servers_is_on_the_default_server_and_read_back() {
    let dp = DataplaneDouble::start(dp_base(), DpOptions::fast()).await;
    let d = dp_driver(&dp);
    let mut drains = DrainClock::default();
    let policy = Policy {
        server_ca_file: Some("/etc/haproxy/ca.pem".into()),
        ..Policy::default()
    };
    let snap = dp_snap(TLS_AUTO_TAGS);
    let out = run_pass(&d, &snap, &policy, &mut drains, true)
        .await
        .expect("pass");
    assert!(
        out.desired.diagnostics.is_empty(),
        "{:?}",
        out.desired.diagnostics
    );
    dp.wait_reloads_idle().await;
    assert_eq!(out.plan.reloads().len(), 1, "{:#?}", out.plan.reloads());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    assert_eq!(dp.reload_count(), 1, "{:?}", dp.reloads());
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    let ds = &dp_backend(&dp, "ws")["default_server"];
    assert_eq!(ds["ssl"], "enabled");
    assert_eq!(ds["verify"], "required");
    assert_eq!(ds["ssl_cafile"], "/etc/haproxy/ca.pem");
    assert_eq!(ds["sni"], "req.hdr(host),field(1,:)");
    assert_eq!(ds["check-ssl"], "enabled");
    let again = run_pass(&d, &snap, &policy, &mut drains, true)
        .await
        .expect("pass");
    assert!(again.plan.is_empty(), "{:#?}", again.plan);

    // Without a CA file the service is skipped with a diagnostic naming the tag; its backend
    // is left as it is.
    let out = run_pass(&d, &snap, &Policy::default(), &mut drains, true)
        .await
        .expect("pass");
    assert!(out.plan.is_empty(), "{:#?}", out.plan);
    let diag = &out.desired.diagnostics[0];
    assert_eq!(diag.tag.as_deref(), Some("haproxy.server.ssl=true"));
    assert!(
        diag.message.contains("haproxy.server_ca_file"),
        "{}",
        diag.message
    );
}

/// `haproxy.server_ca_file` is an absolute path HAProxy can take as one word; anything else is a
/// configuration error naming the key.
#[test]
fn the_server_ca_file_is_an_absolute_path_without_syntax() {
    use haproxy_nomad_connector::config::{Config, Layer};
    let load = |v: &str| {
        let v = v.to_string();
        Config::load(
            None,
            |k| (k == "HAPROXY_SERVER_CA_FILE").then(|| v.clone()),
            Layer::default(),
        )
    };
    let ok = load("/etc/haproxy/ca.pem").expect("valid");
    assert_eq!(
        ok.haproxy.server_ca_file.as_deref(),
        Some("/etc/haproxy/ca.pem")
    );
    for bad in [
        "ca.pem",
        "/etc/ca file.pem",
        "/etc/ca.pem;x",
        "/etc/#ca.pem",
    ] {
        let e = load(bad).expect_err(bad).to_string();
        assert!(e.contains("haproxy.server_ca_file"), "{bad}: {e}");
    }
}
