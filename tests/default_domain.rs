//! Issue 14, feature 2: `haproxy.default_domain`. The configuration key is read and checked;
//! services without routes of their own are served at the rendered host through real HAProxy
//! (runtime driver, 2.6 and 3.0) and through the Data Plane API double, and a rendering that is
//! no host name is a diagnostic for that service alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::dataplane::{
    BaseConfig, DataplaneDouble, FrontendSpec, Options as DoubleOptions,
};
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance as Registration, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::{Config, Layer, RuntimeConfig};
use haproxy_nomad_connector::desired::{Policy, Reason};
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::runtime::RuntimeDriver;
use haproxy_nomad_connector::path_rules::frontend_lines;
use haproxy_nomad_connector::reconcile::pass::run_pass;
use hnc_core::drains::DrainClock;

const TEMPLATE: &str = "{service}.{namespace}.apps.test";

fn snapshot(services: &[(&str, &str, u16, &[&str])]) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (ns, name, port, tags) in services {
        s.services.insert(
            ServiceKey::new(*ns, *name),
            Arc::new(Service {
                instances: vec![Registration {
                    id: format!("{ns}-{name}"),
                    job_id: "job".into(),
                    alloc_id: format!("alloc-{name}"),
                    node_id: "node".into(),
                    datacenter: "dc1".into(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    address: "127.0.0.1".into(),
                    port: *port,
                    create_index: 10,
                    modify_index: 10,
                    nomad_check: None,
                }],
            }),
        );
    }
    s
}

fn policy() -> Policy {
    Policy {
        default_domain: Some(TEMPLATE.into()),
        ..Policy::default()
    }
}

async fn converge(driver: &impl Driver, snap: &Snapshot) {
    let mut drains = DrainClock::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run_pass(driver, snap, &policy(), &mut drains, true)
            .await
            .unwrap_or_else(|e| panic!("pass failed: {e}"));
        assert!(
            out.desired.diagnostics.is_empty(),
            "{:?}",
            out.desired.diagnostics
        );
        if out.plan.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "no convergence");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_key_is_read_from_the_environment_and_checked() {
    let load = |v: &str| {
        let layer = Layer::from_env(|k| (k == "HAPROXY_DEFAULT_DOMAIN").then(|| v.to_string()))
            .expect("layer");
        Config::from_layer(&layer)
    };
    let c = load(TEMPLATE).expect("valid template");
    assert_eq!(c.haproxy.default_domain.as_deref(), Some(TEMPLATE));
    for bad in [
        "{svc}.apps.test",
        "apps.test",
        "{service}.apps test",
        "{service}.apps.test:80",
    ] {
        let e = load(bad).expect_err(bad).to_string();
        assert!(e.contains("haproxy.default_domain"), "{bad}: {e}");
    }
    let unset = Config::from_layer(&Layer::default()).expect("defaults");
    assert_eq!(unset.haproxy.default_domain, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_driver_serves_services_at_the_rendered_host() {
    let files = tempfile::Builder::new()
        .prefix("hnc-default-")
        .tempdir()
        .expect("temp dir");
    let maps_dir = files.path().join("maps").display().to_string();
    let fragment = files.path().join("conf.d").join("hnc.cfg");
    let cfg = |lb: Option<&Haproxy>| RuntimeConfig {
        master_socket: lb.map(|l| l.master_socket.clone()).unwrap_or_default(),
        admin_socket: lb.map(|l| l.admin_socket.clone()),
        fragment: fragment.clone(),
        maps_dir: maps_dir.clone(),
        binary: haproxy::binary(),
        configs: lb.map(|l| vec![l.config.clone()]).unwrap_or_default(),
    };
    RuntimeDriver::new(cfg(None), CallMetrics::disabled())
        .ensure_files()
        .expect("create files");
    let rules: String = frontend_lines(&maps_dir)
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect();
    let port = haproxy::free_port();
    let body = format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n{rules}    default_backend hand_default\n\n\
         backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n"
    );
    let lb = Haproxy::start_with(&body, &[files.path().join("conf.d")]);
    let driver = RuntimeDriver::new(cfg(Some(&lb)), CallMetrics::disabled());
    let cart = Instance::start("cart");
    let web = Instance::start("web");
    let own = Instance::start("own");
    let snap = snapshot(&[
        ("shop", "cart", cart.port, &["haproxy.enable=true"]),
        ("default", "Web", web.port, &["haproxy.enable=true"]),
        (
            "default",
            "own",
            own.port,
            &["haproxy.enable=true", "haproxy.domain=own.test"],
        ),
    ]);
    converge(&driver, &snap).await;
    let want = [
        ("cart.shop.apps.test", "cart"),
        ("web.default.apps.test", "web"),
        ("own.test", "own"),
        ("own.default.apps.test", "status 404"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<String> = want
            .iter()
            .map(|(h, _)| match http::get(port, h, "/") {
                Ok((200, b)) => b,
                Ok((s, _)) => format!("status {s}"),
                Err(e) => format!("error {e}"),
            })
            .collect();
        if got.iter().zip(&want).all(|(g, (_, w))| g == w) {
            break;
        }
        assert!(Instant::now() < deadline, "want {want:?}, got {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_driver_writes_the_rendered_host_and_reports_bad_renderings() {
    let base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http",
                        "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(FrontendSpec::new("http-in").default_backend("legacy"));
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    let driver = DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: Some("http-in".into()),
            maps_dir: "/etc/haproxy/maps".into(),
            timeouts: Timeouts {
                call: Duration::from_secs(5),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver");
    converge(
        &driver,
        &snapshot(&[("shop", "cart", 8080, &["haproxy.enable=true"])]),
    )
    .await;
    assert_eq!(
        dp.runtime_snapshot()["maps"]["hnc_exact.map"],
        json!([["cart.shop.apps.test", "shop.cart"]])
    );
    // A namespace whose rendering is no host name: a diagnostic for that service; the other is
    // still routed and nothing else changes.
    let snap = snapshot(&[
        ("shop", "cart", 8080, &["haproxy.enable=true"]),
        ("tëam", "x", 8081, &["haproxy.enable=true"]),
    ]);
    let mut drains = DrainClock::default();
    let out = run_pass(&driver, &snap, &policy(), &mut drains, false)
        .await
        .expect("plan");
    let diags: Vec<(&str, Reason)> = out
        .desired
        .diagnostics
        .iter()
        .map(|d| (d.namespace.as_str(), d.reason))
        .collect();
    assert!(
        diags.contains(&("tëam", Reason::InvalidDefaultDomain)),
        "{diags:?}"
    );
    assert!(
        out.desired
            .routes
            .keys()
            .all(|r| r.key == "cart.shop.apps.test"),
        "{:?}",
        out.desired.routes
    );
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

#[test]
fn readme_documents_the_key_and_an_example() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n### Default host rule\n")
        .nth(1)
        .expect("Routing has a Default host rule sub-section");
    assert!(section.contains("\"default_domain\": \"{service}.{namespace}.apps.example.com\""));
}
