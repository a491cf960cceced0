//! Issue 14, feature 1: path routes (`haproxy.path`, `haproxy.path.type`, `haproxy.path.strip`).
//! Real traffic through real HAProxy (runtime driver, the frontend rules of the README), and the
//! Data Plane API driver against the double (which inserts the same rules itself). Adding,
//! moving and removing a path route costs no reload: asserted on the compiled plan, on the
//! driver's report and on HAProxy's (or the double's) own reload counter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::dataplane::{
    BaseConfig, DataplaneDouble, FrontendSpec, Options as DoubleOptions,
};
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance as Registration, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::desired::Policy;
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts;
use haproxy_nomad_connector::haproxy::dataplane::objects::request_rule_body;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, state};
use haproxy_nomad_connector::model::MatchKind;
use haproxy_nomad_connector::path_rules::{frontend_lines, request_rules};
use haproxy_nomad_connector::plan::{Action, render};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;

fn reg(id: &str, port: u16, create: u64, tags: &[&str]) -> Registration {
    Registration {
        id: id.to_string(),
        job_id: "job".into(),
        alloc_id: format!("alloc-{id}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: "127.0.0.1".into(),
        port,
        create_index: create,
        modify_index: create,
        nomad_check: None,
    }
}

/// The services of one step, as (name, tags); each has one instance, the echo server of its name.
type Step = Vec<(&'static str, Vec<&'static str>)>;

const E: &str = "haproxy.enable=true";

/// `site` owns the host x.test; `api` its `/api` prefix (stripped); `exact` exactly `/api` on
/// x.test; `any` the prefix `/static` on every host; `v2` starts on its own host.
fn start_step() -> Step {
    vec![
        ("site", vec![E, "haproxy.domain=x.test"]),
        (
            "api",
            vec![
                E,
                "haproxy.domain=x.test",
                "haproxy.path=/api",
                "haproxy.path.strip=true",
            ],
        ),
        (
            "exact",
            vec![
                E,
                "haproxy.domain=x.test",
                "haproxy.path=/api",
                "haproxy.path.type=exact",
            ],
        ),
        ("any", vec![E, "haproxy.path=/static"]),
        ("v2", vec![E, "haproxy.domain=v2.test"]),
    ]
}

/// The route changes, each (what, step, the one route op it must plan).
fn route_steps() -> Vec<(&'static str, Step, &'static str)> {
    let mut add = start_step();
    add[4].1 = vec![E, "haproxy.domain=x.test", "haproxy.path=/api/v2"];
    // Moved: v2 lets go of /api/v2 (its host route comes back) and api claims it, stripped.
    let mut moved = start_step();
    moved[1].1.push("haproxy.path=/api/v2");
    let removed = start_step();
    vec![
        ("add", add, "add_route"),
        ("move", moved, "set_route"),
        ("remove", removed, "remove_route"),
    ]
}

fn snapshot(step: &Step, ports: &[(String, u16)]) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (i, (name, tags)) in step.iter().enumerate() {
        let port = ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect("instance");
        s.services.insert(
            ServiceKey::new("default", *name),
            Arc::new(Service {
                instances: vec![reg(name, port, 10 + i as u64, tags)],
            }),
        );
    }
    s
}

/// Runs passes until one plans nothing; returns every pass's outcome.
async fn converge(
    driver: &impl Driver,
    snap: &Snapshot,
    drains: &mut DrainClock,
) -> Vec<PassOutcome> {
    let policy = Policy::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut outs = Vec::new();
    loop {
        let out = run_pass(driver, snap, &policy, drains, true)
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

/// One route step: exactly one pass that plans the route operations and no reload, applies them
/// with no reload, then an empty plan.
async fn route_step(
    driver: &impl Driver,
    snap: &Snapshot,
    drains: &mut DrainClock,
    what: &str,
    op: &str,
) {
    let outs = converge(driver, snap, drains).await;
    assert_eq!(outs.len(), 2, "{what}: one pass then an empty plan");
    let plan = &outs[0].plan;
    assert!(
        plan.ops.iter().any(|o| o.action.name() == op
            && matches!(&o.action, Action::AddRoute { route, .. }
                | Action::SetRoute { route, .. }
                | Action::RemoveRoute { route } if route.kind == MatchKind::Path)),
        "{what}: no path {op} in {:#?}",
        plan.ops
    );
    assert!(
        plan.ops
            .iter()
            .all(|o| matches!(o.action.name(), "add_route" | "set_route" | "remove_route")),
        "{what}: only route operations: {:#?}",
        plan.ops
    );
    assert_eq!(plan.reloads(), &[], "{what}: the plan costs no reload");
    // `plan` names each route operation with its reason.
    let text = render::human(plan, &[]);
    assert!(text.contains("route path x.test/api/v2"), "{what}: {text}");
    for op in &plan.ops {
        assert!(
            text.contains(&op.reason),
            "{what}: {text} lacks {}",
            op.reason
        );
    }
    let report = outs[0].report.as_ref().expect("applied");
    assert!(report.reloads.is_empty(), "{what}: {:?}", report.reloads);
}

fn get(port: u16, host: &str, path: &str) -> String {
    match http::get(port, host, path) {
        Ok((200, body)) => body,
        Ok((status, body)) => format!("status {status} {body}"),
        Err(e) => format!("error {e}"),
    }
}

/// Waits until every (host, path) reaches its expected body.
async fn wait_traffic(port: u16, want: &[(&str, &str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<String> = want.iter().map(|(h, p, _)| get(port, h, p)).collect();
        let wanted: Vec<&str> = want.iter().map(|(_, _, b)| *b).collect();
        if got == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "traffic: want {wanted:?}\n got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Instances named after the services, answering `<name> <path>`.
fn instances() -> (Vec<Instance>, Vec<(String, u16)>) {
    let inst: Vec<Instance> = ["site", "api", "exact", "any", "v2"]
        .iter()
        .map(|n| Instance::start_echo(n))
        .collect();
    let ports = inst.iter().map(|i| (i.name.clone(), i.port)).collect();
    (inst, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_driver_routes_by_path_on_real_haproxy_and_moves_routes_without_reloads() {
    let files = tempfile::Builder::new()
        .prefix("hnc-path-")
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
    // Exactly the lines the README tells users to paste.
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
    let master_reloads = || {
        state::proc(&lb.master("show proc"))
            .expect("show proc")
            .reloads
    };
    let (_inst, ports) = instances();
    let mut drains = DrainClock::default();

    converge(&driver, &snapshot(&start_step(), &ports), &mut drains).await;
    let base = [
        ("x.test", "/", "site /"),
        ("x.test", "/other", "site /other"),
        // Host+path wins over the host alone; the prefix is stripped, the query kept.
        ("x.test", "/api/users?q=1", "api /users?q=1"),
        ("X.Test:8080", "/api/users", "api /users"),
        ("x.test", "/apiary", "api /ary"),
        // The exact path wins over the prefix it equals (and is not stripped: not tagged).
        ("x.test", "/api", "exact /api"),
        ("x.test", "/api?x=1", "exact /api?x=1"),
        // A path alone serves every host no host route claims; the host route wins otherwise.
        ("other.test", "/static/a.css", "any /static/a.css"),
        ("x.test", "/static/a.css", "site /static/a.css"),
        ("other.test", "/", "status 404 nobody"),
        ("v2.test", "/api/v2/z", "v2 /api/v2/z"),
    ];
    wait_traffic(port, &base).await;

    let before = master_reloads();
    for (what, step, op) in route_steps() {
        route_step(&driver, &snapshot(&step, &ports), &mut drains, what, op).await;
        let traffic: Vec<(&str, &str, &str)> = match what {
            // The longer prefix wins over /api, unstripped (v2 does not strip).
            "add" => vec![
                ("x.test", "/api/v2/z", "v2 /api/v2/z"),
                ("x.test", "/api/v1", "api /v1"),
                ("v2.test", "/", "status 404 nobody"),
            ],
            // Now api's, stripped of its 7 bytes; v2 has its host back.
            "move" => vec![
                ("x.test", "/api/v2/z", "api /z"),
                ("x.test", "/api/v2", "api /"),
                ("v2.test", "/", "v2 /"),
            ],
            _ => vec![
                ("x.test", "/api/v2/z", "api /v2/z"),
                ("x.test", "/api", "exact /api"),
            ],
        };
        wait_traffic(port, &traffic).await;
        // The map file on disk holds the routes too (a reload or restart keeps them).
        let map = std::fs::read_to_string(files.path().join("maps").join("hnc_path.map"))
            .expect("path map");
        assert!(map.contains("x.test/api api/4\n"), "{what}: {map}");
    }
    assert_eq!(
        master_reloads(),
        before,
        "HAProxy reloaded for a path route change"
    );
    wait_traffic(port, &base).await;
}

fn dataplane_driver(dp: &DataplaneDouble, frontend: Option<&str>) -> DataplaneDriver {
    DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: frontend.map(str::to_string),
            maps_dir: MAPS.into(),
            timeouts: Timeouts {
                call: Duration::from_secs(5),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver")
}

const MAPS: &str = "/etc/haproxy/maps";

fn path_map(dp: &DataplaneDouble) -> Value {
    dp.runtime_snapshot()["maps"]["hnc_path.map"].clone()
}

async fn dataplane_route_steps(dp: &DataplaneDouble, driver: &DataplaneDriver) {
    let (_inst, ports) = instances();
    let mut drains = DrainClock::default();
    converge(driver, &snapshot(&start_step(), &ports), &mut drains).await;
    dp.wait_reloads_idle().await;
    assert_eq!(
        path_map(dp),
        json!([
            ["/static", "any"],
            ["x.test/api", "api/4"],
            ["x.test/api?", "exact"]
        ]),
    );
    let before = dp.reload_count();
    for (what, step, op) in route_steps() {
        route_step(driver, &snapshot(&step, &ports), &mut drains, what, op).await;
        let want = match what {
            "add" => json!([
                ["/static", "any"],
                ["x.test/api", "api/4"],
                ["x.test/api/v2", "v2"],
                ["x.test/api?", "exact"]
            ]),
            "move" => json!([
                ["/static", "any"],
                ["x.test/api", "api/4"],
                ["x.test/api/v2", "api/7"],
                ["x.test/api?", "exact"]
            ]),
            _ => json!([
                ["/static", "any"],
                ["x.test/api", "api/4"],
                ["x.test/api?", "exact"]
            ]),
        };
        let mut got = path_map(dp).as_array().cloned().unwrap_or_default();
        got.sort_by_key(|e| e[0].as_str().unwrap_or_default().to_string());
        assert_eq!(Value::Array(got), want, "{what}");
    }
    dp.wait_reloads_idle().await;
    assert_eq!(
        dp.reload_count(),
        before,
        "the API reloaded for a path route"
    );
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_driver_inserts_the_path_rules_and_moves_routes_without_reloads() {
    // The frontend has only the user's own rules: the connector inserts its request rules and
    // use_backend rules after them, and creates the map files.
    let fe = FrontendSpec::new("http-in")
        .default_backend("legacy")
        .request_rule(
            json!({"type": "set-var", "var_scope": "txn", "var_name": "mine", "var_expr": "src"}),
        )
        .rule(json!({"name": "legacy", "cond": "if", "cond_test": "{ path_beg /legacy }"}));
    let base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http",
                        "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    let driver = dataplane_driver(&dp, Some("http-in"));
    dataplane_route_steps(&dp, &driver).await;
    let cfg = dp.config_snapshot();
    let requests = cfg["frontends"][0]["http_request_rule_list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut want =
        vec![json!({"type": "set-var", "var_scope": "txn", "var_name": "mine", "var_expr": "src"})];
    want.extend(
        request_rules(MAPS)
            .iter()
            .map(|r| serde_json::to_value(request_rule_body(r)).expect("json")),
    );
    let strip_nulls = |v: &Value| -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        }
    };
    assert_eq!(
        requests.iter().map(strip_nulls).collect::<Vec<_>>(),
        want,
        "the user's request rule first, then the connector's, in order"
    );
    let rules = cfg["frontends"][0]["backend_switching_rule_list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rules.len(), 6, "{rules:?}");
    assert_eq!(rules[0]["name"], "legacy");
    assert_eq!(rules[1]["name"], "%[var(txn.hnc_route),field(1,/)]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_driver_with_user_written_rules_moves_path_routes_without_reloads() {
    let mut base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http",
                        "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(
            FrontendSpec::new("http-in")
                .default_backend("legacy")
                .connector_rules(MAPS),
        );
    for kind in MatchKind::ALL {
        base = base.map_file(kind.map_file(), "");
    }
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    dataplane_route_steps(&dp, &dataplane_driver(&dp, None)).await;
}

#[test]
fn readme_documents_the_path_tags_and_a_routing_example() {
    let readme = include_str!("../README.md");
    for tag in ["haproxy.path", "haproxy.path.type", "haproxy.path.strip"] {
        assert!(
            readme.contains(&format!("| `{tag}` |")),
            "README tag table lacks {tag}"
        );
    }
    let routing = readme
        .split("\n## Routing\n")
        .nth(1)
        .expect("README has a Routing section");
    let path = routing
        .split("\n### Path routing\n")
        .nth(1)
        .expect("Routing has a Path routing sub-section");
    assert!(
        path.contains("\"haproxy.path=/api/orders\""),
        "an example job stanza"
    );
}
