//! The Data Plane API driver against the DPAPI double, with exact request, commit and reload
//! counts.

use std::sync::Arc;
use std::time::Duration;

use crate::support::dataplane::{
    BaseConfig, DataplaneDouble, FrontendSpec, Options as DoubleOptions,
};
use crate::support::expo;
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::desired::{Desired, Policy};
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts;
use haproxy_nomad_connector::haproxy::dataplane::error::DataplaneError;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::{ApplyReport, Driver, DriverError};
use haproxy_nomad_connector::live::Live;
use haproxy_nomad_connector::metrics::Metrics;
use haproxy_nomad_connector::model::{MatchKind, RouteKey};
use haproxy_nomad_connector::plan::{Action, DriverProfile, Op, Plan, compile};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;
use serde_json::{Value, json};

const MAPS: &str = "/etc/haproxy/maps";
const MAPS_FILES: [&str; 6] = [
    "hnc_exact.map",
    "hnc_prefix.map",
    "hnc_suffix.map",
    "hnc_regex.map",
    "hnc_path.map",
    "hnc_redirect.map",
];

fn instance(id: &str, addr: &str, port: u16, tags: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        job_id: "job".into(),
        alloc_id: format!("alloc-{id}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: addr.into(),
        port,
        create_index: 5,
        modify_index: 5,
        nomad_check: None,
    }
}

fn snapshot(services: Vec<(&str, Vec<Instance>)>) -> Snapshot {
    Snapshot {
        services: services
            .into_iter()
            .map(|(name, instances)| {
                (
                    ServiceKey::new("default", name),
                    Arc::new(Service { instances }),
                )
            })
            .collect(),
        synced: true,
        stale: None,
        denied: false,
        index: 1,
        check_health: Default::default(),
    }
}

const WEB_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=shop.example.com",
    "haproxy.domain=www.example.com",
    "haproxy.check.path=/health",
    "haproxy.check.host=health.internal",
];

fn web(n: usize) -> Snapshot {
    let instances = (0..n)
        .map(|i| {
            instance(
                &format!("w{i}"),
                &format!("10.0.1.{}", i + 1),
                8080,
                WEB_TAGS,
            )
        })
        .collect();
    snapshot(vec![("web", instances)])
}

/// A base configuration with hand-written objects the connector must never change: a frontend
/// with map lookups and multi-condition rules (plus the connector's request and map rules, written by
/// the user), a hand-written backend, and a custom backend with a static server.
fn base() -> BaseConfig {
    let mut fe = FrontendSpec::new("http-in")
        .default_backend("legacy")
        .acl(json!({"acl_name": "is_admin", "criterion": "path_beg", "value": "/admin"}))
        .rule(json!({"name": "%[req.hdr(host),lower,map(/etc/haproxy/maps/hosts.map)]", "cond": "if",
                     "cond_test": "{ req.hdr(host),lower,map(/etc/haproxy/maps/hosts.map) -m found }"}))
        .rule(json!({"name": "legacy", "cond": "if", "cond_test": "is_admin METH_GET"}));
    fe = fe.connector_rules(MAPS);
    let mut b = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "connect_timeout": 4000, "server_timeout": 45000,
                        "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .backend(json!({"name": "be_custom", "mode": "http", "balance": {"algorithm": "roundrobin"},
                        "servers": {"static1": {"name": "static1", "address": "192.0.2.20", "port": 80, "weight": 10}}}))
        .frontend(fe)
        .map_file("hosts.map", "old.example.com legacy\n");
    for f in MAPS_FILES {
        b = b.map_file(f, "");
    }
    b
}

fn driver(dp: &DataplaneDouble, frontend: Option<&str>) -> DataplaneDriver {
    DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: frontend.map(String::from),
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

async fn pass<D: Driver>(d: &D, snap: &Snapshot, drains: &mut DrainClock) -> PassOutcome {
    run_pass(d, snap, &Policy::default(), drains, true)
        .await
        .unwrap_or_else(|e| panic!("pass failed: {e}"))
}

/// Passes until nothing is left to do (drains finish at once: the double reports no sessions).
async fn converge<D: Driver>(d: &D, snap: &Snapshot, drains: &mut DrainClock) -> Vec<PassOutcome> {
    let mut out = Vec::new();
    for _ in 0..5 {
        let o = pass(d, snap, drains).await;
        let done = o.plan.is_empty();
        out.push(o);
        if done {
            return out;
        }
    }
    panic!(
        "no convergence in 5 passes: {:#?}",
        out.last().map(|o| &o.plan)
    );
}

fn hand_written(config: &Value) -> Value {
    let backends: Vec<Value> = config["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["name"] == "legacy" || b["name"] == "be_custom")
        .map(|b| {
            let mut b = b.clone();
            // Servers the connector added to the custom backend are its own; compare the rest.
            if let Some(servers) = b.get_mut("servers").and_then(Value::as_object_mut) {
                servers.retain(|name, _| !name.starts_with("hnc_"));
            }
            b
        })
        .collect();
    json!({"backends": backends, "frontends": config["frontends"]})
}

fn serving_slots(dp: &DataplaneDouble, backend: &str) -> Vec<(String, bool, String)> {
    let rt = dp.runtime_snapshot();
    let servers = rt["backends"][backend]
        .as_array()
        .cloned()
        .unwrap_or_default();
    servers
        .iter()
        .filter(|s| s["admin_state"] == "ready")
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let view = dp.runtime_server(backend, &name).expect("server");
            (
                name,
                view.check_enabled,
                format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]),
            )
        })
        .collect()
}

/// The client records every request through the handles the driver was built with: counted in
/// `hnc_driver_requests_total{endpoint,status}` and timed in
/// `hnc_haproxy_request_duration_seconds{driver,endpoint,status}`, one of each per request the
/// API received.
#[tokio::test]
async fn every_request_is_counted_and_timed_by_endpoint_and_status() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let metrics = Metrics::new("test").expect("metrics");
    let d = DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: None,
            maps_dir: MAPS.into(),
            timeouts: Timeouts::default(),
        },
        metrics.haproxy_calls("dataplane"),
    )
    .expect("driver");
    let mut drains = DrainClock::default();
    converge(&d, &web(2), &mut drains).await;

    let text = metrics.try_render().expect("render");
    let f = expo::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let durations = &f["hnc_haproxy_request_duration_seconds"];
    let timed = |endpoint: &str, status: &str| {
        durations
            .value(
                "hnc_haproxy_request_duration_seconds_count",
                &[
                    ("driver", "dataplane"),
                    ("endpoint", endpoint),
                    ("status", status),
                ],
            )
            .unwrap_or(0.0)
    };
    let counted = |endpoint: &str, status: &str| {
        f["hnc_driver_requests_total"]
            .value(
                "hnc_driver_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            )
            .unwrap_or(0.0)
    };
    assert!(timed("backends", "200") >= 1.0, "{text}");
    assert!(timed("transactions", "201") >= 1.0, "{text}");
    for sample in durations
        .samples
        .iter()
        .filter(|s| s.name == "hnc_haproxy_request_duration_seconds_count")
    {
        let label = |k: &str| sample.labels.get(k).map_or("", String::as_str);
        assert_eq!(label("driver"), "dataplane");
        assert_eq!(
            counted(label("endpoint"), label("status")),
            sample.value,
            "counted and timed alike: {:?}",
            sample.labels
        );
    }
    let all_timed: f64 = durations
        .samples
        .iter()
        .filter(|s| s.name == "hnc_haproxy_request_duration_seconds_count")
        .map(|s| s.value)
        .sum();
    assert_eq!(all_timed, dp.total_requests() as f64, "{:?}", dp.requests());
}

#[tokio::test]
async fn a_new_service_costs_one_commit_and_one_reload() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let before = dp.config_snapshot();
    let mut drains = DrainClock::default();
    let outcomes = converge(&d, &web(3), &mut drains).await;
    dp.wait_reloads_idle().await;

    assert_eq!(dp.commit_count(), 1, "one transaction");
    assert_eq!(dp.reload_count(), 1, "one reload: {:?}", dp.reloads());
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    assert_eq!(dp.open_transactions(), 0);
    assert_eq!(
        outcomes[0].report.as_ref().map(|r| r.reloads.len()),
        Some(1)
    );
    assert_eq!(outcomes.len(), 2, "the second pass finds nothing to do");

    // Check rules: a send rule with the Host header, no httpchk_params.host.
    let cfg = dp.config_snapshot();
    let web = cfg["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "web")
        .expect("web backend");
    assert_eq!(web["description"], "managed-by haproxy-nomad-connector");
    assert_eq!(web["adv_check"], "httpchk");
    assert!(web.get("httpchk_params").is_none());
    let checks = web["http_check_list"].as_array().expect("checks");
    assert_eq!(checks[0]["type"], "send");
    assert_eq!(
        checks[0]["headers"][0],
        json!({"name": "Host", "fmt": "health.internal"})
    );

    // Routes from the map, persisted.
    let exact = dp.map_file("hnc_exact.map").expect("map file");
    assert!(exact.contains("shop.example.com web"), "{exact}");
    assert!(exact.contains("www.example.com web"), "{exact}");

    // Three serving servers, each with its check enabled.
    let serving = serving_slots(&dp, "web");
    assert_eq!(serving.len(), 3, "{serving:?}");
    assert!(serving.iter().all(|(_, check, _)| *check), "{serving:?}");

    // Hand-written objects unchanged.
    assert_eq!(hand_written(&before), hand_written(&cfg));
}

#[tokio::test]
async fn scaling_one_at_a_time_reloads_only_to_grow_slots() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    converge(&d, &web(3), &mut drains).await;
    dp.wait_reloads_idle().await;
    let after_create = dp.reload_count();

    for n in 4..=10 {
        converge(&d, &web(n), &mut drains).await;
        dp.wait_reloads_idle().await;
        let serving = serving_slots(&dp, "web");
        assert_eq!(serving.len(), n, "{serving:?}");
        assert!(
            serving.iter().all(|(_, check, _)| *check),
            "check disabled on a serving slot: {serving:?}"
        );
    }
    let growth = dp.reload_count() - after_create;
    println!("reloads: create {after_create}, growth 3→10 {growth}");
    assert!(
        growth <= 2,
        "slot growth cost {growth} reloads: {:?}",
        dp.reloads()
    );
    let at_ten = dp.reload_count();

    for n in (3..10).rev() {
        converge(&d, &web(n), &mut drains).await;
        dp.wait_reloads_idle().await;
        assert_eq!(serving_slots(&dp, "web").len(), n);
    }
    assert_eq!(
        dp.reload_count(),
        at_ten,
        "scaling down never reloads: {:?}",
        dp.reloads()
    );
    println!("reloads 10→3: {}", dp.reload_count() - at_ten);
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    assert_eq!(dp.open_transactions(), 0);
}

#[tokio::test]
async fn drain_waits_for_sessions_then_frees_the_slot() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    converge(&d, &web(2), &mut drains).await;
    dp.wait_reloads_idle().await;
    let leaving = serving_slots(&dp, "web")
        .into_iter()
        .find(|(_, _, addr)| addr.starts_with("10.0.1.2:"))
        .map(|(name, _, _)| name)
        .expect("slot of 10.0.1.2");
    dp.set_sessions("web", &leaving, 3);

    let o = pass(&d, &web(1), &mut drains).await;
    assert_eq!(o.plan.summary().get("drain_server"), Some(&1));
    assert_eq!(
        dp.runtime_server("web", &leaving)
            .expect("server")
            .admin_state,
        "drain"
    );
    let o = pass(&d, &web(1), &mut drains).await;
    assert!(o.plan.is_empty(), "sessions still open: wait");
    assert_eq!(o.plan.pending_drains.len(), 1);

    dp.set_sessions("web", &leaving, 0);
    let o = pass(&d, &web(1), &mut drains).await;
    assert_eq!(o.plan.summary().get("remove_server"), Some(&1));
    assert_eq!(
        dp.runtime_server("web", &leaving)
            .expect("server")
            .admin_state,
        "maint"
    );
}

#[tokio::test]
async fn custom_backend_gets_only_our_servers_and_hand_written_objects_stay() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let before = dp.config_snapshot();
    let tags = [
        "haproxy.enable=true",
        "haproxy.backend=custom",
        "haproxy.backend.name=be_custom",
    ];
    let snap = snapshot(vec![
        (
            "legacy-app",
            vec![
                instance("l1", "10.0.2.1", 80, &tags),
                instance("l2", "10.0.2.2", 80, &tags),
            ],
        ),
        ("web", vec![instance("w", "10.0.1.1", 8080, WEB_TAGS)]),
    ]);
    let mut drains = DrainClock::default();
    converge(&d, &snap, &mut drains).await;
    // Everything deregistered: our servers leave, the custom backend and its static server stay.
    converge(&d, &snapshot(vec![]), &mut drains).await;
    dp.wait_reloads_idle().await;
    let after = dp.config_snapshot();
    assert_eq!(hand_written(&before), hand_written(&after));
    let custom = after["backends"]
        .as_array()
        .expect("b")
        .iter()
        .find(|b| b["name"] == "be_custom")
        .expect("custom");
    assert_eq!(
        custom["servers"]["static1"],
        before["backends"][1]["servers"]["static1"]
    );
    assert!(
        after["backends"]
            .as_array()
            .expect("b")
            .iter()
            .all(|b| b["name"] != "web"),
        "the owned backend is deleted"
    );
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    let rt = dp.runtime_snapshot();
    let custom_rt = rt["backends"]["be_custom"].as_array().expect("servers");
    assert!(
        custom_rt
            .iter()
            .all(|s| s["name"] == "static1" || s["admin_state"] == "maint"),
        "{custom_rt:?}"
    );
}

/// A driver whose first observation is followed by a foreign write, so its commit loses the race.
struct Racing<'a> {
    inner: DataplaneDriver,
    dp: &'a DataplaneDouble,
    races: std::sync::atomic::AtomicU32,
}

impl Driver for Racing<'_> {
    fn name(&self) -> &'static str {
        "racing"
    }
    async fn observe(&self) -> Result<Live, DriverError> {
        let live = self.inner.observe().await;
        if self.races.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.races.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.dp.bump_version_foreign();
        }
        live
    }
    fn profile(&self) -> DriverProfile {
        self.inner.profile()
    }
    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        self.inner.apply(plan).await
    }
}

#[tokio::test]
async fn a_foreign_write_between_observe_and_commit_is_retried() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let racing = Racing {
        inner: driver(&dp, None),
        dp: &dp,
        races: std::sync::atomic::AtomicU32::new(2),
    };
    let mut drains = DrainClock::default();
    let o = pass(&racing, &web(3), &mut drains).await;
    assert_eq!(o.attempts, 3, "two lost races, then success");
    assert_eq!(dp.commit_count(), 1);
    assert_eq!(
        dp.open_transactions(),
        0,
        "aborted transactions are not left open"
    );
    let o = pass(&racing, &web(3), &mut drains).await;
    assert!(o.plan.is_empty());

    // Races on every attempt: the pass gives up with a conflict, leaving nothing open.
    racing.races.store(10, std::sync::atomic::Ordering::SeqCst);
    let e = run_pass(&racing, &web(5), &Policy::default(), &mut drains, true)
        .await
        .expect_err("too many conflicts");
    assert!(e.to_string().contains("conflict"), "{e}");
    assert_eq!(dp.open_transactions(), 0);
}

#[tokio::test]
async fn a_rejected_commit_aborts_and_leaves_no_transaction_open() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    dp.fail_next_reload();
    let mut drains = DrainClock::default();
    let e = run_pass(&d, &web(2), &Policy::default(), &mut drains, true)
        .await
        .expect_err("reload fails");
    assert!(e.to_string().contains("Reload failed"), "{e}");
    assert_eq!(dp.open_transactions(), 0);
    // The next pass starts from a fresh observation and converges.
    converge(&d, &web(2), &mut drains).await;
    assert_eq!(serving_slots(&dp, "web").len(), 2);
}

#[tokio::test]
async fn a_restarted_dataplane_gets_everything_back() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    let snap = web(3);
    converge(&d, &snap, &mut drains).await;
    dp.wait_reloads_idle().await;
    dp.reset_to_base();
    let o = pass(&d, &snap, &mut drains).await;
    assert_eq!(
        o.plan.summary().get("create_backend"),
        Some(&1),
        "{:?}",
        o.plan.summary()
    );
    converge(&d, &snap, &mut drains).await;
    dp.wait_reloads_idle().await;
    assert_eq!(serving_slots(&dp, "web").len(), 3);
    assert!(
        dp.map_file("hnc_exact.map")
            .expect("map")
            .contains("shop.example.com web")
    );
}

#[tokio::test]
async fn with_a_frontend_configured_the_rules_are_inserted_once() {
    // No connector rules in the frontend yet.
    let fe = FrontendSpec::new("http-in")
        .default_backend("legacy")
        .acl(json!({"acl_name": "is_admin", "criterion": "path_beg", "value": "/admin"}))
        .rule(json!({"name": "legacy", "cond": "if", "cond_test": "is_admin METH_GET"}));
    let mut base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    for f in MAPS_FILES {
        base = base.map_file(f, "");
    }
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    let d = driver(&dp, Some("http-in"));
    let mut drains = DrainClock::default();
    converge(&d, &web(1), &mut drains).await;
    converge(&d, &web(2), &mut drains).await;
    dp.wait_reloads_idle().await;
    let cfg = dp.config_snapshot();
    let rules = cfg["frontends"][0]["backend_switching_rule_list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        rules.len(),
        6,
        "the user's rule plus the five map rules: {rules:?}"
    );
    assert_eq!(
        rules[0]["name"], "legacy",
        "the user's rule stays first and unchanged"
    );
    assert_eq!(dp.commit_count(), 1, "rules and backend in one transaction");
    assert!(
        dp.map_file("hnc_exact.map")
            .expect("map")
            .contains("shop.example.com web")
    );
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

#[tokio::test]
async fn an_idle_pass_reads_a_fixed_handful_of_endpoints() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    converge(&d, &web(10), &mut drains).await;
    dp.reset_counters();
    let o = pass(&d, &web(10), &mut drains).await;
    assert!(o.plan.is_empty());
    // backends (full_section) + native stats + six maps.
    assert_eq!(dp.total_requests(), 8, "{:?}", dp.requests());
}

/// Entries of one map in the double's running HAProxy, as (key, value).
fn map_entries(dp: &DataplaneDouble, file: &str) -> Vec<(String, String)> {
    dp.runtime_snapshot()["maps"][file]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap_or_default().to_string(),
                e[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Item 8: DPAPI passes a map key unescaped to HAProxy's CLI, which drops backslashes. The driver
/// escapes it, so the stored key is the desired one and the route does not flap.
#[tokio::test]
async fn a_regex_route_is_stored_exactly_and_stays_stable_for_ten_passes() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    let regex = r"^api\.ex\.com$";
    let tags = [
        "haproxy.enable=true",
        "haproxy.domain.type=regex",
        "haproxy.domain=^api\\.ex\\.com$",
    ];
    let snap = snapshot(vec![("api", vec![instance("a1", "10.0.3.1", 8080, &tags)])]);
    converge(&d, &snap, &mut drains).await;
    assert_eq!(
        map_entries(&dp, "hnc_regex.map"),
        [(regex.to_string(), "api".to_string())]
    );
    // Persisted with force_sync, exactly.
    assert_eq!(
        dp.map_file("hnc_regex.map").as_deref(),
        Some("^api\\.ex\\.com$ api\n")
    );
    let commands = dp.runtime_commands();
    let requests = dp.requests();
    for n in 0..10 {
        let o = pass(&d, &snap, &mut drains).await;
        assert!(o.plan.is_empty(), "pass {n}: {:#?}", o.plan);
    }
    assert_eq!(
        dp.runtime_commands(),
        commands,
        "no map operation after convergence"
    );
    let writes = |r: &std::collections::BTreeMap<String, u64>| -> u64 {
        r.iter()
            .filter(|(k, _)| k.contains("/entries") && !k.starts_with("GET"))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(
        writes(&dp.requests()),
        writes(&requests),
        "{:?}",
        dp.requests()
    );
    assert_eq!(
        map_entries(&dp, "hnc_regex.map"),
        [(regex.to_string(), "api".to_string())]
    );
}

fn route_op(action: Action) -> Op {
    Op::new(action, "test")
}

fn route(kind: MatchKind, key: &str) -> RouteKey {
    RouteKey {
        kind,
        key: key.to_string(),
    }
}

/// Item 7: keys no URL segment can carry (`.`, `..`: URL normalisation removes them, and the
/// DELETE would reach the collection) never become a request: their maps are rewritten instead;
/// a key HAProxy's CLI cannot carry fails its own operation only; the others of the same pass
/// are applied.
#[tokio::test]
async fn a_key_no_request_can_carry_fails_only_its_own_operation() {
    let base = base().map_file("hnc_exact.map", "keep.example.com legacy\n");
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let live = d.observe().await.expect("observe");
    dp.reset_counters();
    let plan = Plan {
        ops: vec![
            route_op(Action::RemoveRoute {
                route: route(MatchKind::Exact, ".."),
            }),
            route_op(Action::AddRoute {
                route: route(MatchKind::Exact, "first.example.com"),
                backend: "legacy".into(),
            }),
            route_op(Action::RemoveRoute {
                route: route(MatchKind::Exact, "."),
            }),
            route_op(Action::SetRoute {
                route: route(MatchKind::Exact, "keep.example.com<<"),
                backend: "legacy".into(),
                entries: 0,
            }),
            route_op(Action::AddRoute {
                route: route(MatchKind::Exact, "semi;colon.example.com"),
                backend: "legacy".into(),
            }),
            // The API's `{id}` pattern refuses `$`: such an entry cannot be addressed by key,
            // so the regex map is rewritten through the storage API instead.
            route_op(Action::RemoveRoute {
                route: route(MatchKind::Regex, r"^old\.ex$"),
            }),
            route_op(Action::AddRoute {
                route: route(MatchKind::Exact, "second.example.com"),
                backend: "legacy".into(),
            }),
        ],
        ..Plan::default()
    };
    // What the pass wants of the maps (what the core would have built; every desired key
    // passed the tag grammar).
    let mut desired = Desired::default();
    for key in [
        "keep.example.com",
        "first.example.com",
        "second.example.com",
    ] {
        desired
            .routes
            .insert(route(MatchKind::Exact, key), "legacy".to_string());
    }
    let report = d
        .apply(&compile(plan, &desired, &live, &d.profile()))
        .await
        .expect("the pass is applied, the refused operation reported in it");
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    let message = report.refused.join("; ");
    // An add whose key HAProxy's CLI cannot carry is refused alone, with the reason.
    assert!(message.contains("semi;colon.example.com"), "{message}");
    // Removals and changes of keys no `{id}` can name (dot segments, `<<`, `$`) never reach a
    // URL: their maps are rewritten from the desired routes through the storage API.
    for part in ["..", "keep.example.com<<", "old", "first.example.com"] {
        assert!(!message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(
        map_entries(&dp, "hnc_exact.map"),
        [
            ("first.example.com".to_string(), "legacy".to_string()),
            ("keep.example.com".to_string(), "legacy".to_string()),
            ("second.example.com".to_string(), "legacy".to_string()),
        ]
    );
    assert!(map_entries(&dp, "hnc_regex.map").is_empty());
    // The two adds, and one rewrite per map: no DELETE, nothing on a collection.
    let requests = dp.requests();
    assert_eq!(
        requests.get("POST /v3/services/haproxy/runtime/maps/{parent_name}/entries"),
        Some(&2),
        "{requests:?}"
    );
    assert_eq!(
        requests.get("PUT /v3/services/haproxy/storage/maps/{name}"),
        Some(&2),
        "{requests:?}"
    );
    assert_eq!(requests.values().sum::<u64>(), 4, "{requests:?}");
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

/// A regex route whose key the API's `{id}` cannot carry (`$`) is moved and removed by rewriting
/// its map through the storage API (one reload each), never refused, and stays put afterwards.
#[tokio::test]
async fn a_regex_route_with_a_dollar_moves_and_leaves_through_its_map_file() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();
    let regex = r"^api\.ex\.com$";
    let tags = [
        "haproxy.enable=true",
        "haproxy.domain.type=regex",
        "haproxy.domain=^api\\.ex\\.com$",
    ];
    let plain = ["haproxy.enable=true", "haproxy.domain=other.example.com"];
    let first = snapshot(vec![
        ("api", vec![instance("a1", "10.0.3.1", 8080, &tags)]),
        ("web", vec![instance("w1", "10.0.3.2", 8080, &plain)]),
    ]);
    converge(&d, &first, &mut drains).await;
    assert_eq!(
        map_entries(&dp, "hnc_regex.map"),
        [(regex.to_string(), "api".to_string())]
    );
    // The regex moves from api to web (api keeps serving, in http mode).
    let moved_tags = tags;
    let second = snapshot(vec![
        (
            "api",
            vec![instance(
                "a1",
                "10.0.3.1",
                8080,
                &["haproxy.enable=true", "haproxy.mode=http"],
            )],
        ),
        ("web", vec![instance("w1", "10.0.3.2", 8080, &moved_tags)]),
    ]);
    let reloads = dp.reload_count();
    converge(&d, &second, &mut drains).await;
    assert_eq!(
        map_entries(&dp, "hnc_regex.map"),
        [(regex.to_string(), "web".to_string())]
    );
    assert_eq!(dp.reload_count(), reloads + 1, "one reload for the rewrite");
    // Then it leaves.
    let third = snapshot(vec![
        (
            "api",
            vec![instance(
                "a1",
                "10.0.3.1",
                8080,
                &["haproxy.enable=true", "haproxy.mode=http"],
            )],
        ),
        ("web", vec![instance("w1", "10.0.3.2", 8080, &plain)]),
    ]);
    converge(&d, &third, &mut drains).await;
    assert!(map_entries(&dp, "hnc_regex.map").is_empty());
    assert_eq!(dp.reload_count(), reloads + 2);
    for n in 0..5 {
        let o = pass(&d, &third, &mut drains).await;
        assert!(o.plan.is_empty(), "pass {n}: {:#?}", o.plan);
    }
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

/// Issue 12, item 5: no hand-made HAProxy state. Starting with no map files and no rules, the
/// first pass creates the six map files through the storage API, inserts the rules and the
/// backend in one transaction (one reload), and the route works.
#[tokio::test]
async fn with_no_map_files_the_first_pass_creates_them_and_routes_with_one_reload() {
    let fe = FrontendSpec::new("http-in").default_backend("legacy");
    let base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    assert!(dp.map_file("hnc_exact.map").is_none());
    let d = driver(&dp, Some("http-in"));
    let mut drains = DrainClock::default();
    let first = pass(&d, &web(2), &mut drains).await;
    assert!(first.report.is_some());
    dp.wait_reloads_idle().await;
    for f in MAPS_FILES {
        assert!(dp.map_file(f).is_some(), "{f} created");
    }
    assert_eq!(dp.commit_count(), 1, "rules and backend in one transaction");
    assert_eq!(dp.reload_count(), 1, "one reload");
    assert!(
        map_entries(&dp, "hnc_exact.map")
            .contains(&("shop.example.com".to_string(), "web".to_string())),
        "{:?}",
        map_entries(&dp, "hnc_exact.map")
    );
    let requests = dp.requests();
    assert_eq!(
        requests.get("POST /v3/services/haproxy/storage/maps"),
        Some(&6),
        "{requests:?}"
    );
    // Converged: the next pass has nothing to do and creates nothing.
    dp.reset_counters();
    let o = pass(&d, &web(2), &mut drains).await;
    assert!(o.plan.is_empty(), "{:#?}", o.plan);
    assert_eq!(
        dp.request_count("POST /v3/services/haproxy/storage/maps"),
        0
    );
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
}

/// Issue 12, item 5: a Data Plane API that is not 3.x is named as such at the first observation.
#[tokio::test]
async fn a_data_plane_api_that_is_not_3x_is_named_clearly() {
    for (version, expected) in [
        (None, "not a Data Plane API v3"),
        (
            Some("v2.9.1 abc"),
            "runs Data Plane API `v2.9.1 abc`; the connector needs 3.x",
        ),
    ] {
        let dp = DataplaneDouble::start(
            base(),
            DoubleOptions {
                api_version: version.map(String::from),
                ..DoubleOptions::fast()
            },
        )
        .await;
        let e = driver(&dp, None).observe().await.expect_err("not 3.x");
        assert!(e.to_string().contains(expected), "{e}");
    }
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    driver(&dp, None).observe().await.expect("3.x is fine");
}

/// Issue 11, item 2 (defence in depth): when HAProxy refuses one map entry (a pattern its PCRE2
/// rejects), that route is reported and the rest of the pass still runs.
#[tokio::test]
async fn a_map_entry_haproxy_refuses_costs_only_its_route() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let live = d.observe().await.expect("observe");
    let plan = Plan {
        ops: vec![
            route_op(Action::AddRoute {
                route: route(MatchKind::Regex, "(?u)x"),
                backend: "legacy".into(),
            }),
            route_op(Action::AddRoute {
                route: route(MatchKind::Exact, "after.example.com"),
                backend: "legacy".into(),
            }),
        ],
        ..Plan::default()
    };
    let report = d
        .apply(&compile(plan, &Desired::default(), &live, &d.profile()))
        .await
        .expect("the pass is applied, the refused route reported in it");
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert!(
        report.refused[0].contains("route regex (?u)x"),
        "{:?}",
        report.refused
    );
    assert!(map_entries(&dp, "hnc_regex.map").is_empty());
    assert_eq!(
        map_entries(&dp, "hnc_exact.map"),
        [("after.example.com".to_string(), "legacy".to_string())]
    );
}

/// The double reloads from the files as HAProxy does: a storage map rewritten with a pattern
/// PCRE2 rejects fails the forced reload, and the running maps stay as they were.
#[tokio::test]
async fn a_regex_map_file_haproxy_cannot_compile_fails_the_reload() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let resp = reqwest::Client::new()
        .put(dp.v3("/services/haproxy/storage/maps/hnc_regex.map?force_reload=true"))
        .basic_auth(dp.user(), Some(dp.password()))
        .header("Content-Type", "text/plain")
        .body("(?u)x legacy\n")
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Reload failed"), "{body}");
    assert!(body.contains("(?u)x"), "{body}");
    assert!(map_entries(&dp, "hnc_regex.map").is_empty());
    // A pattern PCRE2 compiles reloads fine.
    let resp = reqwest::Client::new()
        .put(dp.v3("/services/haproxy/storage/maps/hnc_regex.map?force_reload=true"))
        .basic_auth(dp.user(), Some(dp.password()))
        .header("Content-Type", "text/plain")
        .body("^a\\.example$ legacy\n")
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    assert_eq!(
        map_entries(&dp, "hnc_regex.map"),
        [("^a\\.example$".to_string(), "legacy".to_string())]
    );
}

/// The first error of type `T` in `e`'s source chain (below `e`).
fn source_of<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        next = s.source();
    }
    None
}

/// A driver for `address` with a short per-call timeout.
fn driver_at(address: &str, password: &str) -> DataplaneDriver {
    DataplaneDriver::new(
        Options {
            address: address.parse().expect("url"),
            username: "admin".into(),
            password: Some(haproxy_nomad_connector::config::Secret::new(password)),
            frontend: None,
            maps_dir: MAPS.into(),
            timeouts: Timeouts {
                call: Duration::from_millis(300),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver")
}

#[tokio::test]
async fn an_unreachable_api_keeps_the_timeout_or_transport_error_down_to_reqwest() {
    // A listener that accepts and never answers: the call times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let err = driver_at(&format!("http://{addr}"), "pw")
        .observe()
        .await
        .expect_err("times out");
    hold.abort();
    assert_eq!(err.kind(), "unreachable");
    let api = source_of::<DataplaneError>(&err).expect("the API error is the source");
    assert!(matches!(api, DataplaneError::Timeout { .. }), "{api:?}");
    let http = source_of::<reqwest::Error>(&err).expect("then reqwest's error");
    assert!(http.is_timeout(), "{http:?}");
    assert!(
        err.to_string()
            .starts_with("HAProxy unreachable: request timed out: "),
        "{err}"
    );
    assert_eq!(err.to_string(), format!("HAProxy unreachable: {api}"));

    // Nothing listening: refused, down to the io::Error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = driver_at(&format!("http://127.0.0.1:{port}"), "pw")
        .observe()
        .await
        .expect_err("refused");
    let api = source_of::<DataplaneError>(&err).expect("the API error is the source");
    assert!(matches!(api, DataplaneError::Transport { .. }), "{api:?}");
    assert!(source_of::<reqwest::Error>(&err).is_some_and(|e| e.is_connect()));
    let io = source_of::<std::io::Error>(&err).expect("down to the io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        err.to_string()
            .starts_with("HAProxy unreachable: cannot reach the Data Plane API: "),
        "{err}"
    );
}

#[tokio::test]
async fn conflicts_refusals_and_bad_credentials_keep_the_api_error() {
    let dp = DataplaneDouble::start(base(), DoubleOptions::fast()).await;
    let d = driver(&dp, None);
    let mut drains = DrainClock::default();

    // Conflict: another writer changed the configuration after the observation.
    let o = run_pass(&d, &web(2), &Policy::default(), &mut drains, false)
        .await
        .expect("plan");
    dp.bump_version_foreign();
    let err = d.apply(&o.plan).await.expect_err("version mismatch");
    assert_eq!(err.kind(), "conflict");
    let api = source_of::<DataplaneError>(&err).expect("the API error is the source");
    let DataplaneError::Conflict { message } = api else {
        panic!("not a 409 conflict: {api:?}")
    };
    assert!(message.starts_with("version mismatch"), "{message}");
    assert_eq!(
        err.to_string(),
        format!("conflict with another writer: conflict (409): {message}")
    );
    assert_eq!(dp.open_transactions(), 0);

    // Rejected: HAProxy refuses the reload.
    let o = run_pass(&d, &web(2), &Policy::default(), &mut drains, false)
        .await
        .expect("plan");
    dp.fail_next_reload();
    let err = d.apply(&o.plan).await.expect_err("reload fails");
    assert_eq!(err.kind(), "rejected");
    let api = source_of::<DataplaneError>(&err).expect("the API error is the source");
    assert!(
        matches!(api, DataplaneError::Invalid { status: 400, message } if message.starts_with("Reload failed")),
        "{api:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("HAProxy rejected the change: {api}")
    );
    assert!(
        err.to_string()
            .starts_with("HAProxy rejected the change: rejected (400): Reload failed"),
        "{err}"
    );

    // Other: bad credentials.
    let err = driver_at(&dp.url(), "wrong")
        .observe()
        .await
        .expect_err("401");
    assert_eq!(err.kind(), "other");
    let api = source_of::<DataplaneError>(&err).expect("the API error is the source");
    assert!(
        matches!(api, DataplaneError::Unauthorized { .. }),
        "{api:?}"
    );
    assert_eq!(
        err.to_string(),
        "the Data Plane API refused the credentials (401): unauthenticated for invalid credentials; check haproxy.username and haproxy.password"
    );
}
