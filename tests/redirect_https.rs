//! Issue 14, feature 7: `haproxy.redirect.https`. Real HAProxy (runtime driver, the README's
//! frontend rules) answers plain-HTTP requests for the service's hosts with a 301 to https, other
//! hosts are routed as before; turning it on and off costs no reload, on real HAProxy and with the
//! Data Plane API driver against the double (which inserts the redirect rule itself).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::dataplane::{
    BaseConfig, DataplaneDouble, FrontendSpec, Options as DoubleOptions,
};
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::Instance;
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance as Registration, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::desired::Policy;
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, state};
use haproxy_nomad_connector::model::MatchKind;
use haproxy_nomad_connector::path_rules::frontend_lines;
use haproxy_nomad_connector::plan::{Action, render};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;

const MAPS: &str = "/etc/haproxy/maps";

fn snapshot(redirect: bool, ports: (u16, u16)) -> Snapshot {
    let mut shop = vec![
        "haproxy.enable=true",
        "haproxy.domain=shop.test",
        "haproxy.path=/app",
    ];
    let mut shop_root = vec!["haproxy.enable=true", "haproxy.domain=shop.test"];
    if redirect {
        shop.push("haproxy.redirect.https=true");
        shop_root.push("haproxy.redirect.https=true");
    }
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (i, (name, tags, port)) in [
        ("shop", shop, ports.0),
        ("shop-root", shop_root, ports.0),
        (
            "plain",
            vec!["haproxy.enable=true", "haproxy.domain=plain.test"],
            ports.1,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        s.services.insert(
            ServiceKey::new("default", name),
            Arc::new(Service {
                instances: vec![Registration {
                    id: name.into(),
                    job_id: "job".into(),
                    alloc_id: format!("alloc-{name}"),
                    node_id: "node".into(),
                    datacenter: "dc1".into(),
                    tags: tags.iter().map(|t| t.to_string()).collect(),
                    address: "127.0.0.1".into(),
                    port,
                    create_index: 10 + i as u64,
                    modify_index: 10 + i as u64,
                    nomad_check: None,
                }],
            }),
        );
    }
    s
}

async fn converge(driver: &impl Driver, snap: &Snapshot) -> Vec<PassOutcome> {
    let mut drains = DrainClock::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut outs = Vec::new();
    loop {
        let out = run_pass(driver, snap, &Policy::default(), &mut drains, true)
            .await
            .unwrap_or_else(|e| panic!("pass failed: {e}"));
        assert!(
            out.desired.diagnostics.is_empty(),
            "{:?}",
            out.desired.diagnostics
        );
        if let Some(r) = &out.report {
            assert!(r.refused.is_empty(), "refused: {:?}", r.refused);
        }
        let done = out.plan.is_empty();
        outs.push(out);
        if done {
            return outs;
        }
        assert!(Instant::now() < deadline, "no convergence within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Turns the redirect on or off: one pass of redirect-map operations only, no reload.
async fn toggle(driver: &impl Driver, snap: &Snapshot, on: bool) {
    let outs = converge(driver, snap).await;
    assert_eq!(outs.len(), 2, "one pass, then an empty plan");
    let plan = &outs[0].plan;
    let want = if on { "add_route" } else { "remove_route" };
    assert!(
        !plan.ops.is_empty()
            && plan.ops.iter().all(|o| o.action.name() == want
                && matches!(&o.action, Action::AddRoute { route, .. }
                    | Action::RemoveRoute { route } if route.kind == MatchKind::Redirect)),
        "{:#?}",
        plan.ops
    );
    let text = render::human(plan, &[]);
    let line = if on {
        "redirect http://shop.test/ to https (301)"
    } else {
        "stop redirecting http://shop.test/ to https"
    };
    assert!(text.contains(line), "{text}");
    assert_eq!(plan.reloads(), &[], "the plan costs no reload");
    let report = outs[0].report.as_ref().expect("applied");
    assert!(report.reloads.is_empty(), "{:?}", report.reloads);
}

/// A plain-HTTP GET: (status, Location header, body).
fn get(port: u16, host: &str, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, location, body.to_string())
}

async fn wait_for(port: u16, want: &[(&str, &str, (u16, &str, &str))]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<(u16, String, String)> =
            want.iter().map(|(h, t, _)| get(port, h, t)).collect();
        let ok = got
            .iter()
            .zip(want)
            .all(|(g, (_, _, w))| g.0 == w.0 && g.1 == w.1 && g.2 == w.2);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "want {want:?}\n got {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_driver_redirects_plain_http_for_the_service_hosts_without_reloads() {
    let files = tempfile::Builder::new()
        .prefix("hnc-redirect-")
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
    let reloads = || state::proc(&lb.master("show proc")).expect("proc").reloads;
    let shop = Instance::start_echo("shop");
    let plain = Instance::start_echo("plain");
    let ports = (shop.port, plain.port);

    converge(&driver, &snapshot(false, ports)).await;
    let served = [
        ("shop.test", "/a?b=1", (200, "", "shop /a?b=1")),
        ("shop.test", "/app/x", (200, "", "shop /app/x")),
        ("plain.test", "/a", (200, "", "plain /a")),
    ];
    wait_for(port, &served).await;

    let before = reloads();
    toggle(&driver, &snapshot(true, ports), true).await;
    wait_for(
        port,
        &[
            ("shop.test", "/a?b=1", (301, "https://shop.test/a?b=1", "")),
            (
                "SHOP.test:8080",
                "/app/x",
                (301, "https://SHOP.test:8080/app/x", ""),
            ),
            ("plain.test", "/a", (200, "", "plain /a")),
        ],
    )
    .await;
    let map = std::fs::read_to_string(files.path().join("maps").join("hnc_redirect.map"))
        .expect("redirect map");
    assert!(map.contains("\nshop.test https\n"), "{map}");

    toggle(&driver, &snapshot(false, ports), false).await;
    wait_for(port, &served).await;
    assert_eq!(reloads(), before, "HAProxy reloaded for a redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_driver_inserts_the_redirect_rule_and_toggles_it_without_reloads() {
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
            maps_dir: MAPS.into(),
            timeouts: Timeouts {
                call: Duration::from_secs(5),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver");
    let ports = (8080, 8081);
    converge(&driver, &snapshot(false, ports)).await;
    dp.wait_reloads_idle().await;
    let first = &dp.config_snapshot()["frontends"][0]["http_request_rule_list"][0];
    assert_eq!(
        first,
        &json!({"type": "redirect", "redir_type": "scheme", "redir_value": "https", "redir_code": 301,
                "cond": "if", "cond_test": format!("!{{ ssl_fc }} {{ req.hdr(host),lower,field(1,:),map_str({MAPS}/hnc_redirect.map) -m found }}")}),
    );
    let redirect_map = || dp.runtime_snapshot()["maps"]["hnc_redirect.map"].clone();
    assert_eq!(redirect_map(), json!([]));
    let before = dp.reload_count();
    toggle(&driver, &snapshot(true, ports), true).await;
    assert_eq!(redirect_map(), json!([["shop.test", "https"]]));
    toggle(&driver, &snapshot(false, ports), false).await;
    assert_eq!(redirect_map(), Value::Array(Vec::new()));
    dp.wait_reloads_idle().await;
    assert_eq!(dp.reload_count(), before, "the API reloaded for a redirect");
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

#[test]
fn readme_documents_the_redirect_tag_and_example() {
    let readme = include_str!("../README.md");
    assert!(readme.contains("| `haproxy.redirect.https` |"));
    let section = readme
        .split("\n### Redirect to HTTPS\n")
        .nth(1)
        .expect("Routing has a Redirect to HTTPS sub-section");
    assert!(section.contains("\"haproxy.redirect.https=true\""));
}
