//! The runtime-socket driver against real HAProxy (2.6 and 3.0 in CI, `HAPROXY_BIN`), with real
//! HTTP traffic through HAProxy to small instances that answer with their own name. Each test
//! starts its own HAProxy with a hand-written main config (the map rules from
//! `model::route_rules`, a hand-written backend), empty maps and an empty fragment directory, and
//! drives `reconcile::pass::run_pass` with hand-built catalog snapshots.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::expo;
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance as Registration, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::desired::{Desired, Policy};
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::runtime::socket::{self, Outcome};
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, state};
use haproxy_nomad_connector::metrics::Metrics;
use haproxy_nomad_connector::model::{MatchKind, RouteKey, route_rules};
use haproxy_nomad_connector::path_rules::frontend_lines;
use haproxy_nomad_connector::plan::{Action, Op, OpKind, Plan, compile};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;

/// The main configuration: the frontend with a hand-written rule first, then the connector's four
/// map rules; a hand-written default backend, a hand-written backend with a static server, and an
/// empty hand-written backend for a `backend=custom` service.
fn main_body(port: u16, maps_dir: &str, hand_port: u16) -> String {
    let mut rules = String::new();
    for (expr, cond) in route_rules(maps_dir) {
        rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
    }
    format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    use_backend hand_written if {{ req.hdr(host),lower,field(1,:) -m str hand.test }}\n    \
         use_backend hand_custom if {{ req.hdr(host),lower,field(1,:) -m str custom.test }}\n{rules}    default_backend hand_default\n\n\
         backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n\n\
         backend hand_written\n    balance roundrobin\n    server static1 127.0.0.1:{hand_port}\n\n\
         backend hand_custom\n    balance roundrobin\n"
    )
}

struct Env {
    lb: Haproxy,
    files: tempfile::TempDir,
    driver: RuntimeDriver,
    port: u16,
    hand: Instance,
    policy: Policy,
    drains: DrainClock,
}

impl Env {
    fn start() -> Env {
        let files = tempfile::Builder::new()
            .prefix("hnc-runtime-")
            .tempdir()
            .expect("temp dir");
        let hand = Instance::start("hand");
        let port = haproxy::free_port();
        let (lb, driver) = Self::boot(&files, port, hand.port);
        Env {
            lb,
            files,
            driver,
            port,
            hand,
            policy: Policy {
                drain_timeout: Duration::from_secs(20),
                ..Policy::default()
            },
            drains: DrainClock::default(),
        }
    }

    fn cfg(files: &tempfile::TempDir, lb: Option<&Haproxy>) -> RuntimeConfig {
        RuntimeConfig {
            master_socket: lb.map(|l| l.master_socket.clone()).unwrap_or_default(),
            admin_socket: lb.map(|l| l.admin_socket.clone()),
            fragment: files.path().join("conf.d").join("hnc.cfg"),
            maps_dir: files.path().join("maps").display().to_string(),
            binary: haproxy::binary(),
            configs: lb.map(|l| vec![l.config.clone()]).unwrap_or_default(),
        }
    }

    fn boot(files: &tempfile::TempDir, port: u16, hand_port: u16) -> (Haproxy, RuntimeDriver) {
        let cfg = Self::cfg(files, None);
        RuntimeDriver::new(cfg.clone(), CallMetrics::disabled())
            .ensure_files()
            .expect("create files");
        let lb = Haproxy::start_with(
            &main_body(port, &cfg.maps_dir, hand_port),
            &[files.path().join("conf.d")],
        );
        let driver = RuntimeDriver::new(Self::cfg(files, Some(&lb)), CallMetrics::disabled());
        (lb, driver)
    }

    /// Stops HAProxy and starts it again from the same files.
    fn restart(&mut self) {
        self.lb.stop();
        let (lb, driver) = Self::boot(&self.files, self.port, self.hand.port);
        self.lb = lb;
        self.driver = driver;
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

    /// Passes until one plans nothing; returns the reloads caused.
    async fn converge(&mut self, snap: &Snapshot) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut reloads = 0;
        loop {
            let out = self.pass(snap).await;
            if out.plan.is_empty() && out.plan.pending_drains.is_empty() {
                return reloads;
            }
            reloads += out.report.map_or(0, |r| r.reloads.len());
            assert!(
                Instant::now() < deadline,
                "no convergence within 20 s; last plan: {:#?}",
                out.plan
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn reloads(&self) -> u64 {
        state::proc(&self.lb.master("show proc"))
            .expect("show proc")
            .reloads
    }

    /// Bodies seen over `n` requests with `host`.
    fn bodies(&self, host: &str, n: usize) -> Vec<(u16, String)> {
        (0..n)
            .map(|_| http::get(self.port, host, "/").expect("request through HAProxy"))
            .collect()
    }

    /// Waits until requests with `host` reach exactly the instances `names`.
    async fn wait_serving(&self, host: &str, names: &[&str]) {
        let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Round robin: 3 rounds over the wanted set see every member.
            let got: BTreeSet<String> = self
                .bodies(host, want.len().max(1) * 3)
                .into_iter()
                .map(|(s, b)| if s == 200 { b } else { format!("status {s}") })
                .collect();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {host}: want {want:?}, last saw {got:?}\n{}",
                self.lb.admin("show servers state")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Servers of `backend` as (name, srv_admin_state, srv_check_state) from the socket.
    fn servers(&self, backend: &str) -> Vec<state::ServerState> {
        state::servers_state(&self.lb.admin(&format!("show servers state {backend}")))
            .expect("show servers state")
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

const WEB_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=api.example.test",
    "haproxy.check.path=/health",
    "haproxy.check.interval=100ms",
    "haproxy.check.rise=1",
    "haproxy.check.fall=1",
];

fn web(instances: &[&Instance]) -> Vec<Registration> {
    instances
        .iter()
        .map(|i| reg(&i.name, i.port, WEB_TAGS))
        .collect()
}

fn names(instances: &[&Instance]) -> Vec<String> {
    instances.iter().map(|i| i.name.clone()).collect()
}

fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_are_routed_by_host_in_any_case_and_with_a_port() {
    let mut env = Env::start();
    let inst: Vec<Instance> = (0..3).map(|i| Instance::start(&format!("a{i}"))).collect();
    let all: Vec<&Instance> = inst.iter().collect();
    let snap = snapshot(vec![("web", web(&all))]);
    let reloads = env.converge(&snap).await;
    assert_eq!(reloads, 1, "one reload for the new backend");
    let n = names(&all);
    for host in [
        "api.example.test",
        "API.Example.TEST",
        "api.example.test:8080",
        "Api.Example.Test:443",
    ] {
        env.wait_serving(host, &refs(&n)).await;
    }
    for host in ["other.test", "api.example.test.evil", "xapi.example.test"] {
        for (status, body) in env.bodies(host, 3) {
            assert_eq!((status, body.as_str()), (404, "nobody"), "host {host}");
        }
    }
    // The fragment names the backend with its marker; the hand-written ones are not in it.
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    assert!(text.contains("backend web\n"), "{text}");
    assert!(text.contains("description managed-by haproxy-nomad-connector"));
    assert!(!text.contains("hand_"));
    // A second pass plans nothing: observe reads back exactly what was applied.
    let again = env.pass(&snap).await;
    assert!(again.plan.is_empty(), "{:#?}", again.plan);
    let live = &again.live.backends["web"];
    assert!(live.owned);
    assert_eq!(
        live.settings.as_ref(),
        Some(&again.desired.backends["web"].settings)
    );
}

/// The driver records every socket command through the handles it was built with: counted under
/// the documented `socket_command`/`sent` (and `reload`/`ok`), and timed by driver, command and
/// outcome in `hnc_haproxy_request_duration_seconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_commands_and_the_reload_are_counted_and_timed_by_command() {
    let mut env = Env::start();
    let metrics = Metrics::new("test").expect("metrics");
    env.driver = RuntimeDriver::new(
        env.driver.config().clone(),
        metrics.haproxy_calls("runtime"),
    );
    let a = Instance::start("a0");
    let snap = snapshot(vec![("web", web(&[&a]))]);
    assert_eq!(
        env.converge(&snap).await,
        1,
        "one reload for the new backend"
    );

    let text = metrics.try_render().expect("render");
    let f = expo::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let timed = |endpoint: &str| {
        f["hnc_haproxy_request_duration_seconds"]
            .value(
                "hnc_haproxy_request_duration_seconds_count",
                &[
                    ("driver", "runtime"),
                    ("endpoint", endpoint),
                    ("status", "answered"),
                ],
            )
            .unwrap_or(0.0)
    };
    for endpoint in ["show_servers", "show_backend", "show_proc", "reload"] {
        assert!(timed(endpoint) >= 1.0, "{endpoint} not timed:\n{text}");
    }
    assert_eq!(timed("reload"), 1.0);
    let counted = |endpoint: &str, status: &str| {
        f["hnc_driver_requests_total"]
            .value(
                "hnc_driver_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            )
            .unwrap_or(0.0)
    };
    assert_eq!(counted("reload", "ok"), 1.0);
    // Every command is counted once and timed once.
    let all_timed: f64 = f["hnc_haproxy_request_duration_seconds"]
        .samples
        .iter()
        .filter(|s| s.name == "hnc_haproxy_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(counted("socket_command", "sent"), all_timed);
    let endpoints: BTreeSet<&str> = f["hnc_haproxy_request_duration_seconds"]
        .samples
        .iter()
        .filter_map(|s| s.labels.get("endpoint").map(String::as_str))
        .collect();
    assert!(!endpoints.contains("other"), "{endpoints:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_ten_to_three_needs_no_reload() {
    let mut env = Env::start();
    let inst: Vec<Instance> = (0..10).map(|i| Instance::start(&format!("s{i}"))).collect();
    let first: Vec<&Instance> = inst.iter().take(3).collect();
    env.converge(&snapshot(vec![("web", web(&first))])).await;
    let reloads_after_create = env.reloads();
    assert_eq!(reloads_after_create, 1);

    let check_all_enabled = |env: &Env, n: usize| {
        let servers = env.servers("web");
        let serving: Vec<_> = servers
            .iter()
            .filter(|s| s.admin == haproxy_nomad_connector::model::AdminState::Ready)
            .collect();
        assert_eq!(serving.len(), n, "{servers:#?}");
        for s in serving {
            assert!(s.check_enabled, "check not enabled on {}", s.server);
        }
    };
    // Up one at a time.
    for k in 4..=10 {
        let now: Vec<&Instance> = inst.iter().take(k).collect();
        let out = env.pass(&snapshot(vec![("web", web(&now))])).await;
        assert!(!out.plan.has_structural(), "{:#?}", out.plan);
        env.wait_serving("api.example.test", &refs(&names(&now)))
            .await;
        check_all_enabled(&env, k);
    }
    // Down one at a time: drain, then removal once the server has no sessions.
    for k in (3..10).rev() {
        let now: Vec<&Instance> = inst.iter().take(k).collect();
        let snap = snapshot(vec![("web", web(&now))]);
        env.converge(&snap).await;
        env.wait_serving("api.example.test", &refs(&names(&now)))
            .await;
        check_all_enabled(&env, k);
        assert_eq!(env.servers("web").len(), k, "removed servers are gone");
    }
    let reloads = env.reloads();
    println!(
        "scaling 3 → 10 → 3: {} reloads after the initial create",
        reloads - reloads_after_create
    );
    assert_eq!(reloads, reloads_after_create, "scaling caused a reload");
    assert_eq!(env.driver.stats().reloads.load(Ordering::Relaxed), 1);
    // The fragment follows the runtime changes (for the next reload or restart).
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    assert_eq!(text.matches("\n    server hnc_").count(), 3, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_an_instance_out_and_back() {
    let mut env = Env::start();
    let inst: Vec<Instance> = (0..3).map(|i| Instance::start(&format!("h{i}"))).collect();
    let all: Vec<&Instance> = inst.iter().collect();
    env.converge(&snapshot(vec![("web", web(&all))])).await;
    env.wait_serving("api.example.test", &["h0", "h1", "h2"])
        .await;
    inst[1].set_healthy(false);
    env.wait_serving("api.example.test", &["h0", "h2"]).await;
    inst[1].set_healthy(true);
    env.wait_serving("api.example.test", &["h0", "h1", "h2"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_fails_no_request() {
    let mut env = Env::start();
    let old: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&format!("old{i}")))
        .collect();
    let new: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&format!("new{i}")))
        .collect();
    let olds: Vec<&Instance> = old.iter().collect();
    env.converge(&snapshot(vec![("web", web(&olds))])).await;
    env.wait_serving("api.example.test", &["old0", "old1", "old2"])
        .await;
    let reloads_before = env.reloads();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = env.port;
    let started = Instant::now();
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let (begin, mut sent) = (Instant::now(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                match http::get(port, "api.example.test", "/") {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{other:?}"));
                    }
                }
                // Paced at 20 requests/s (a slow request does not shift the schedule).
                sent += 1;
                let next = begin + Duration::from_millis(50) * sent;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            failures
        })
    };
    // Replace one instance at a time: register the new one, deregister the old one (drain, then
    // removal once its sessions are gone).
    for i in 0..3 {
        let mut now: Vec<&Instance> = old.iter().skip(i).collect();
        now.extend(new.iter().take(i + 1));
        env.pass(&snapshot(vec![("web", web(&now))])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now: Vec<&Instance> = old
            .iter()
            .skip(i + 1)
            .chain(new.iter().take(i + 1))
            .collect();
        env.converge(&snapshot(vec![("web", web(&now))])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.wait_serving("api.example.test", &["new0", "new1", "new2"])
        .await;
    // Keep the load on for at least 3 s in all.
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling deploy: {ok} requests succeeded, {failed} failed");
    // About 60 requests at 20/s over 3 s; a loaded machine may fall behind the schedule.
    assert!(ok >= 30, "the load loop ran ({ok} requests)");
    assert_eq!(failed, 0, "failed requests: {failures:?}");
    assert_eq!(env.reloads(), reloads_before, "the deploy caused a reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_suffix_and_regex_routes_and_a_domain_moves_without_reload() {
    let mut env = Env::start();
    let a = Instance::start("svc-a");
    let s = Instance::start("svc-s");
    let r = Instance::start("svc-r");
    let a_tags = |moved: bool| {
        let mut t = vec!["haproxy.enable=true", "haproxy.domain=a.test"];
        if moved {
            t.push("haproxy.domain=moved.test");
        }
        t
    };
    let s_tags = |moved: bool| {
        let mut t = vec!["haproxy.enable=true", "haproxy.domain=*.wild.test"];
        if moved {
            t.push("haproxy.domain=moved.test");
        }
        t
    };
    let r_tags = [
        "haproxy.enable=true",
        "haproxy.domain.type=regex",
        r"haproxy.domain=^r[0-9]+\.rx\.test$",
    ];
    let snap = |moved_to_s: bool| {
        snapshot(vec![
            ("svc-a", vec![reg("a", a.port, &a_tags(!moved_to_s))]),
            ("svc-s", vec![reg("s", s.port, &s_tags(moved_to_s))]),
            ("svc-r", vec![reg("r", r.port, &r_tags)]),
        ])
    };
    env.converge(&snap(false)).await;
    env.wait_serving("a.test", &["svc-a"]).await;
    env.wait_serving("moved.test", &["svc-a"]).await;
    env.wait_serving("x.wild.test", &["svc-s"]).await;
    env.wait_serving("deep.x.Wild.Test:80", &["svc-s"]).await;
    env.wait_serving("r42.rx.test", &["svc-r"]).await;
    // The regex's `\.` survived the CLI and the map file: `.` matches only a dot.
    for host in ["r42xrx.test", "wild.test", "r.rx.test"] {
        assert_eq!(env.bodies(host, 1)[0].0, 404, "host {host}");
    }
    let regex_map = std::fs::read_to_string(
        env.files
            .path()
            .join("maps")
            .join(MatchKind::Regex.map_file()),
    )
    .expect("regex map");
    assert!(
        regex_map.contains("^r[0-9]+\\.rx\\.test$ svc_r\n"),
        "{regex_map}"
    );

    let reloads = env.reloads();
    let out = env.pass(&snap(true)).await;
    let actions: Vec<&Action> = out.plan.ops.iter().map(|o| &o.action).collect();
    assert!(
        matches!(actions.as_slice(), [Action::SetRoute { backend, .. }] if backend == "svc_s"),
        "{actions:#?}"
    );
    env.wait_serving("moved.test", &["svc-s"]).await;
    assert_eq!(env.reloads(), reloads, "moving a domain reloaded HAProxy");
    let exact = std::fs::read_to_string(
        env.files
            .path()
            .join("maps")
            .join(MatchKind::Exact.map_file()),
    )
    .expect("exact map");
    assert!(exact.contains("moved.test svc_s\n"), "{exact}");
    // Persisted: after a restart from the files the move holds.
    env.restart();
    env.wait_serving("moved.test", &["svc-s"]).await;
    env.wait_serving("r7.rx.test", &["svc-r"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_hand_edits_and_hand_written_backends() {
    let mut env = Env::start();
    let inst: Vec<Instance> = (0..2).map(|i| Instance::start(&format!("r{i}"))).collect();
    let custom = Instance::start("custom");
    let all: Vec<&Instance> = inst.iter().collect();
    let custom_tags = [
        "haproxy.enable=true",
        "haproxy.backend=custom",
        "haproxy.backend.name=hand_custom",
    ];
    let snap = snapshot(vec![
        ("web", web(&all)),
        ("extra", vec![reg("c", custom.port, &custom_tags)]),
    ]);
    env.converge(&snap).await;
    env.wait_serving("api.example.test", &["r0", "r1"]).await;
    env.wait_serving("custom.test", &["custom"]).await;
    let hand_before = env.lb.admin("show servers state hand_written");

    // Killed and restarted from its files: the owned backend, its servers and the routes are
    // back before any pass. The custom backend's server lived only at run time.
    env.restart();
    env.wait_serving("api.example.test", &["r0", "r1"]).await;
    let out = env.pass(&snap).await;
    let actions: Vec<&str> = out.plan.ops.iter().map(|o| o.action.name()).collect();
    assert_eq!(actions, vec!["add_server"], "{:#?}", out.plan);
    assert_eq!(out.plan.ops[0].action.backend(), Some("hand_custom"));
    env.wait_serving("custom.test", &["custom"]).await;

    // Restarted with the fragment emptied: the host's rule names a backend that does not exist,
    // so the request falls through to the default backend. The next pass recreates the backend
    // (one reload) and puts the custom server back after that reload.
    std::fs::write(env.fragment_path(), "").expect("empty fragment");
    env.restart();
    assert_eq!(
        env.bodies("api.example.test", 1)[0],
        (404, "nobody".to_string())
    );
    let out = env.pass(&snap).await;
    assert!(out.plan.has_structural());
    assert_eq!(out.report.as_ref().map(|r| r.reloads.len()), Some(1));
    env.wait_serving("api.example.test", &["r0", "r1"]).await;
    env.wait_serving("custom.test", &["custom"]).await;
    assert!(env.pass(&snap).await.plan.is_empty());

    // A server put in maintenance by hand is repaired by the next pass.
    let victim = env.servers("web")[0].server.clone();
    assert_eq!(
        env.lb
            .admin(&format!("set server web/{victim} state maint")),
        ""
    );
    env.wait_serving(
        "api.example.test",
        &[&inst[1 - index_of(&victim, &inst)].name],
    )
    .await;
    let out = env.pass(&snap).await;
    assert!(
        out.plan
            .ops
            .iter()
            .all(|o| o.kind == OpKind::Runtime && matches!(o.action, Action::ReadyServer { .. })),
        "{:#?}",
        out.plan
    );
    env.wait_serving("api.example.test", &["r0", "r1"]).await;

    // The hand-written backend: same servers, same state, still serving.
    env.wait_serving("hand.test", &["hand"]).await;
    let strip = |s: &str| -> Vec<String> {
        // Drop ids and the time-since-change column; compare names, address, states, weights.
        s.lines()
            .skip(2)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {} {} {}", f[3], f[4], f[5], f[6], f[7])
            })
            .collect()
    };
    assert_eq!(
        strip(&env.lb.admin("show servers state hand_written")),
        strip(&hand_before)
    );
    let text = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    assert!(!text.contains("hand_"), "{text}");
}

fn index_of(server: &str, inst: &[Instance]) -> usize {
    inst.iter()
        .position(|i| server.ends_with(&format!("_{}", i.port)))
        .expect("server of an instance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_candidate_restores_the_fragment_and_reports_haproxy_message() {
    let mut env = Env::start();
    let a = Instance::start("a");
    // The core only plans valid settings, so make `haproxy -c` fail through the configuration
    // it checks alongside the candidate: an extra file with a bad balance algorithm.
    let snap = snapshot(vec![("web", web(&[&a]))]);
    let broken = env.files.path().join("broken.cfg");
    std::fs::write(&broken, "backend broken\n    balance no-such-algorithm\n").expect("write");
    let mut cfg = env.driver.config().clone();
    cfg.configs.push(broken);
    let bad = RuntimeDriver::new(cfg, CallMetrics::disabled());
    let before = std::fs::read_to_string(env.fragment_path()).expect("fragment");
    let err = run_pass(&bad, &snap, &env.policy, &mut env.drains, true)
        .await
        .expect_err("validation must fail");
    let msg = err.to_string();
    assert!(msg.contains("broken.cfg:2"), "{msg}");
    assert!(!msg.contains("[NOTICE]"), "{msg}");
    assert_eq!(bad.stats().failed_validations.load(Ordering::Relaxed), 1);
    assert_eq!(
        std::fs::read_to_string(env.fragment_path()).expect("fragment"),
        before,
        "fragment restored"
    );
    assert_eq!(env.reloads(), 0);
    // The good driver converges afterwards.
    env.converge(&snap).await;
    env.wait_serving("api.example.test", &["a"]).await;
}

#[test]
fn dev_stack_config_has_the_generated_rules_and_passes_haproxy_check() {
    // deploy/dev/haproxy.cfg is the development stack's HAProxy (docker-compose.dev.yml), whose
    // Data Plane API keeps its maps in /usr/local/etc/haproxy/maps.
    let text = include_str!("../deploy/dev/haproxy.cfg");
    // Request rules and use_backend rules, as one block in order.
    let block: String = frontend_lines("/usr/local/etc/haproxy/maps")
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect();
    assert!(
        text.contains(&block),
        "deploy/dev/haproxy.cfg lacks the rules block:\n{block}"
    );
    // The shipped empty maps must be those the rules name.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/maps");
    for kind in MatchKind::ALL {
        let map = shipped.join(kind.map_file());
        let body = std::fs::read_to_string(&map)
            .unwrap_or_else(|e| panic!("{} is missing: {e}", map.display()));
        assert!(body.is_empty(), "{} must ship empty", map.display());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        text.replace(
            "/usr/local/etc/haproxy/maps",
            &shipped.display().to_string(),
        ),
    )
    .expect("write cfg");
    let out = std::process::Command::new(haproxy::binary())
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c refused deploy/dev/haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deploy_example_config_is_valid_and_has_the_generated_rules() {
    let text = include_str!("../deploy/haproxy-runtime.cfg");
    let readme = include_str!("../README.md");
    let block: String = frontend_lines("/etc/haproxy/maps")
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect();
    assert!(
        text.contains(&block),
        "deploy config lacks the rules block:\n{block}"
    );
    assert!(
        readme.contains(&block),
        "README lacks the rules block:\n{block}"
    );
    // `haproxy -c` with the maps in a temp directory (they must exist) and the fragment beside.
    let dir = tempfile::tempdir().expect("temp dir");
    let maps = dir.path().join("maps");
    std::fs::create_dir_all(&maps).expect("maps dir");
    for kind in MatchKind::ALL {
        std::fs::write(maps.join(kind.map_file()), "").expect("map");
    }
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        text.replace("/etc/haproxy/maps", &maps.display().to_string()),
    )
    .expect("write cfg");
    let fragment = dir.path().join("conf.d");
    std::fs::create_dir_all(&fragment).expect("conf.d");
    std::fs::write(fragment.join("hnc.cfg"), "").expect("fragment");
    let out = std::process::Command::new(haproxy::binary())
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .arg("-f")
        .arg(&fragment)
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c refused deploy/haproxy-runtime.cfg:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plan of route additions, as the planner would emit them.
fn route_plan(routes: &[(MatchKind, &str, &str)]) -> Plan {
    Plan {
        ops: routes
            .iter()
            .map(|(kind, key, backend)| {
                Op::new(
                    Action::AddRoute {
                        route: RouteKey {
                            kind: *kind,
                            key: key.to_string(),
                        },
                        backend: backend.to_string(),
                    },
                    "test",
                )
            })
            .collect(),
        ..Plan::default()
    }
}

/// Item 9: a key ending in `<<` would put HAProxy 2.6's CLI into payload mode (the command never
/// runs, the reply is empty). The driver refuses it before sending; the other operations of the
/// same pass are applied, and a regex key with backslashes is stored exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_key_is_refused_alone_and_a_regex_key_is_stored_exactly() {
    let env = Env::start();
    let live = env.driver.observe().await.expect("observe");
    let regex = r"^api\.ex\.com$";
    let plan = route_plan(&[
        (MatchKind::Exact, "before.test", "hand_written"),
        (MatchKind::Exact, "bad.test<<", "hand_written"),
        (MatchKind::Regex, regex, "hand_written"),
        (MatchKind::Exact, "semi;colon.test", "hand_written"),
        (MatchKind::Exact, "after.test", "hand_written"),
    ]);
    let report = env
        .driver
        .apply(&compile(
            plan,
            &Desired::default(),
            &live,
            &RuntimeDriver::PROFILE,
        ))
        .await
        .expect("the pass is applied, the refused keys reported in it");
    assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
    let message = report.refused.join("; ");
    assert!(
        message.contains("bad.test<<") && message.contains("payload mode"),
        "{message}"
    );
    assert!(message.contains("semi;colon.test"), "{message}");
    assert!(
        !message.contains("before.test") && !message.contains("after.test"),
        "{message}"
    );

    let cfg = env.driver.config();
    let exact = state::map_entries(
        &env.lb
            .admin(&format!("show map {}", cfg.map_path(MatchKind::Exact))),
    )
    .expect("show map");
    let keys: Vec<&str> = exact.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["before.test", "after.test"], "{exact:?}");
    let stored = state::map_entries(
        &env.lb
            .admin(&format!("show map {}", cfg.map_path(MatchKind::Regex))),
    )
    .expect("show map");
    assert_eq!(stored, [(regex.to_string(), "hand_written".to_string())]);

    // Read back by the driver: the observed key equals the desired one, so nothing is re-planned.
    let live = env.driver.observe().await.expect("observe");
    let route = RouteKey {
        kind: MatchKind::Regex,
        key: regex.to_string(),
    };
    assert_eq!(
        live.routes.get(&route),
        Some(&vec!["hand_written".to_string()])
    );
    // HAProxy matches with the escaped dots: only the exact host is routed.
    assert_eq!(env.bodies("api.ex.com", 1)[0], (200, "hand".to_string()));
    assert_eq!(env.bodies("apixex.com", 1)[0].0, 404);
    assert_eq!(env.bodies("before.test", 1)[0], (200, "hand".to_string()));
}

/// HAProxy ends every command it ran with a newline; a command that never ran (payload mode)
/// answers zero bytes, which `outcome` never takes as success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_ran_answers_nothing_and_is_not_a_success() {
    let env = Env::start();
    let file = env.driver.config().map_path(MatchKind::Exact);
    let admin = env.lb.admin_socket.clone();
    let timeout = Duration::from_secs(10);
    // Commands that answer nothing on success still send the terminator.
    for cmd in [
        format!("add map {file} ok.test hand_written"),
        format!("set map {file} ok.test hand_default"),
        format!("del map {file} ok.test"),
        "set server hand_written/static1 weight 2".to_string(),
        "set server hand_written/static1 state ready".to_string(),
    ] {
        let reply = socket::command(&admin, &cmd, timeout).await.expect("reply");
        assert_eq!(reply, "\n", "{cmd}");
        assert_eq!(socket::outcome(&reply, &[]), Outcome::Done, "{cmd}");
    }
    // A line ending in ` <<` starts a payload on 2.6 and 3.0: the command does not run.
    let cmd = format!("add map {file} never.test hand_written <<");
    let reply = socket::command(&admin, &cmd, timeout).await.expect("reply");
    assert_eq!(reply, "", "{cmd}");
    assert_eq!(socket::outcome(&reply, &[]), Outcome::NoReply);
    // `add server` must answer text: its success message is required.
    let reply = socket::command(&admin, "add server hand_custom/dyn1 127.0.0.1:9", timeout)
        .await
        .expect("reply");
    assert_eq!(
        socket::outcome(&reply, &["New server registered."]),
        Outcome::Done,
        "{reply:?}"
    );
    assert_eq!(
        socket::outcome("\n", &["New server registered."]),
        Outcome::NoReply
    );
}
