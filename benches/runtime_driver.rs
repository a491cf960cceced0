//! The runtime driver against real HAProxy (`HAPROXY_BIN`): latency from "a snapshot with one
//! more instance" to that server being in rotation (`show servers state`: ready and up), through a
//! whole reconcile pass (observe, desired, diff, apply with its file rewrite), p50/p99 over
//! `HNC_BENCH_EVENTS` events (default 200). In the same run, the floor: the same socket commands
//! (`add server`, `enable health`, `set server … state ready`, then the same poll) sent directly.
//!
//! `cargo bench --bench runtime_driver` runs the full measurement; without `--bench` (as
//! `cargo test --all-targets` runs it) a 5-event smoke run checks that it works.
//!
//! Then the full path: the connector itself (`app::run`, default settings: 50 ms debounce)
//! watching the Nomad double, from a registration at the double to the server in rotation.

#[path = "../tests/support/haproxy.rs"]
#[allow(dead_code)]
mod haproxy;
#[path = "../tests/support/nomad.rs"]
#[allow(dead_code)]
mod nomad;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haproxy_nomad_connector::app;
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::config::{Config, Layer};
use haproxy_nomad_connector::desired::Policy;
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, socket, state};
use haproxy_nomad_connector::model::{AdminState, OpState, route_rules};
use haproxy_nomad_connector::reconcile::pass::run_pass;
use hnc_core::drains::DrainClock;

const TIMEOUT: Duration = Duration::from_secs(10);

fn registration(i: usize, port: u16) -> Instance {
    Instance {
        id: format!("r{i}"),
        job_id: "job".into(),
        alloc_id: format!("alloc-{i}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: vec!["haproxy.enable=true".into()],
        address: "127.0.0.1".into(),
        port,
        create_index: 10,
        modify_index: 10,
        nomad_check: None,
    }
}

fn snapshot(instances: Vec<Instance>) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    s.services.insert(
        ServiceKey::new("default", "bench"),
        Arc::new(Service { instances }),
    );
    s
}

/// Polls `show servers state <backend>` until `server` is ready and up.
async fn wait_in_rotation(admin: &std::path::Path, backend: &str, server: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = socket::command(admin, &format!("show servers state {backend}"), TIMEOUT)
            .await
            .expect("show servers state");
        // "Can't find backend." until the backend exists: keep polling.
        let ready = state::servers_state(&text).is_ok_and(|list| {
            list.iter()
                .any(|s| s.server == server && s.admin == AdminState::Ready && s.op == OpState::Up)
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{backend}/{server} not in rotation"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.50), percentile(&v, 0.99));
    println!(
        "{name:<34} n={:<4} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let events: usize = if full {
        std::env::var("HNC_BENCH_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    } else {
        5
    };
    let files = tempfile::tempdir().expect("temp dir");
    let maps_dir = files.path().join("maps").display().to_string();
    let mut rules = String::new();
    for (expr, cond) in route_rules(&maps_dir) {
        rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
    }
    let port = haproxy::free_port();
    let body = format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    mode http\n    bind 127.0.0.1:{port}\n{rules}\n\
         backend floor\n    mode tcp\n    balance roundrobin\n"
    );
    let mut cfg = RuntimeConfig {
        master_socket: Default::default(),
        admin_socket: None,
        fragment: files.path().join("conf.d").join("hnc.cfg"),
        maps_dir,
        binary: haproxy::binary(),
        configs: Vec::new(),
    };
    RuntimeDriver::new(cfg.clone(), CallMetrics::disabled())
        .ensure_files()
        .expect("files");
    let lb = haproxy::Haproxy::start_with(&body, &[files.path().join("conf.d")]);
    cfg.master_socket = lb.master_socket.clone();
    cfg.admin_socket = Some(lb.admin_socket.clone());
    cfg.configs = vec![lb.config.clone()];
    let driver = RuntimeDriver::new(cfg, CallMetrics::disabled());
    println!(
        "runtime driver bench against {} ({events} events)",
        haproxy::version_line(&lb.bin)
    );

    // Listeners the TCP checks connect to (never accepted: the backlog completes the handshake).
    let listeners: Vec<TcpListener> = (0..events * 2 + 1)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let policy = Policy::default();
        let mut drains = DrainClock::default();
        // The backend exists first (one reload), as in steady state.
        let mut instances = vec![registration(0, ports[0])];
        run_pass(&driver, &snapshot(instances.clone()), &policy, &mut drains, true)
            .await
            .expect("initial pass");

        let mut through_driver = Vec::with_capacity(events);
        let mut floor = Vec::with_capacity(events);
        for i in 1..=events {
            // Through the driver: one more registration, one pass, then in rotation.
            let port = ports[i];
            instances.push(registration(i, port));
            let snap = snapshot(instances.clone());
            let server = format!("hnc_127.0.0.1_{port}");
            let t0 = Instant::now();
            let out = run_pass(&driver, &snap, &policy, &mut drains, true)
                .await
                .expect("pass");
            wait_in_rotation(&lb.admin_socket, "bench", &server).await;
            through_driver.push(t0.elapsed());
            assert_eq!(out.plan.ops.len(), 1, "{:#?}", out.plan);
            assert!(out.report.is_some_and(|r| r.reloads.is_empty()));

            // The floor: the same commands, sent directly.
            let port = ports[events + i];
            let server = format!("s{i}");
            let t0 = Instant::now();
            // `add server` answers a message; the others answer an empty line on success.
            for (cmd, success) in [
                (
                    format!(
                        "add server floor/{server} 127.0.0.1:{port} check inter 2000ms fall 3 rise 2 weight 1"
                    ),
                    &["New server registered."][..],
                ),
                (format!("enable health floor/{server}"), &[][..]),
                (format!("set server floor/{server} state ready"), &[][..]),
            ] {
                let reply = socket::command(&lb.admin_socket, &cmd, TIMEOUT)
                    .await
                    .expect("floor command");
                assert!(
                    matches!(socket::outcome(&reply, success), socket::Outcome::Done),
                    "{cmd}: {reply:?}"
                );
            }
            wait_in_rotation(&lb.admin_socket, "floor", &server).await;
            floor.push(t0.elapsed());
        }
        let (d50, d99) = summary("snapshot → in rotation (driver)", through_driver);
        let (f50, f99) = summary("same commands sent directly (floor)", floor);
        println!(
            "ratio driver/floor: p50 {:.1}x, p99 {:.1}x; target p99 <= 100 ms: {}",
            d50.as_secs_f64() / f50.as_secs_f64(),
            d99.as_secs_f64() / f99.as_secs_f64(),
            if d99 <= Duration::from_millis(100) {
                "met"
            } else {
                "NOT met"
            }
        );
        let reloads = state::proc(&lb.master("show proc"))
            .expect("show proc")
            .reloads;
        println!("reloads during the run: {reloads} (the initial backend creation only)");
        assert_eq!(reloads, 1);

        // The full path: a registration at the Nomad double → the running connector → in rotation.
        let double = nomad::NomadDouble::start().await;
        let vars: std::collections::HashMap<&str, String> = [
            ("NOMAD_ADDR", double.url().to_string()),
            ("HAPROXY_DRIVER", "runtime".to_string()),
            ("HAPROXY_MASTER_SOCKET", lb.master_socket.display().to_string()),
            ("HAPROXY_ADMIN_SOCKET", lb.admin_socket.display().to_string()),
            ("HAPROXY_FRAGMENT", files.path().join("conf.d").join("hnc.cfg").display().to_string()),
            ("HAPROXY_MAPS_DIR", files.path().join("maps").display().to_string()),
            ("HAPROXY_BINARY", lb.bin.display().to_string()),
            ("HAPROXY_CONFIG", lb.config.display().to_string()),
            ("HTTP_LISTEN", format!("127.0.0.1:{}", haproxy::free_port())),
            ("LOG_LEVEL", "warn".to_string()),
            ("RECONCILE_DEBOUNCE", std::env::var("HNC_BENCH_DEBOUNCE").unwrap_or_else(|_| "50ms".into())),
        ]
        .into_iter()
        .collect();
        let config = Config::load(None, |k| vars.get(k).cloned(), Layer::default()).expect("config");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let connector = tokio::spawn(app::run(config, stopped));
        let listeners2: Vec<TcpListener> = (0..=events)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let mut full = Vec::with_capacity(events);
        let reg = |i: usize, port: u16| {
            nomad::Reg::new("default", "e2e", &format!("e{i}"), "127.0.0.1", port).tags(Some(&["haproxy.enable=true"]))
        };
        let first = listeners2[0].local_addr().expect("addr").port();
        double.register([reg(0, first)]);
        wait_in_rotation(&lb.admin_socket, "e2e", &format!("hnc_127.0.0.1_{first}")).await;
        for (i, l) in listeners2.iter().enumerate().skip(1) {
            let port = l.local_addr().expect("addr").port();
            let t0 = Instant::now();
            double.register([reg(i, port)]);
            wait_in_rotation(&lb.admin_socket, "e2e", &format!("hnc_127.0.0.1_{port}")).await;
            full.push(t0.elapsed());
        }
        let (e50, e99) = summary("Nomad event → in rotation (connector)", full);
        println!(
            "ratio connector/floor: p50 {:.1}x, p99 {:.1}x; target p99 <= 100 ms: {}",
            e50.as_secs_f64() / f50.as_secs_f64(),
            e99.as_secs_f64() / f99.as_secs_f64(),
            if e99 <= Duration::from_millis(100) { "met" } else { "NOT met" }
        );
        let _ = stop.send(true);
        let _ = connector.await;
    });
}
