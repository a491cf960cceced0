//! Issue 13, item 2: the plan is held to its word. A seeded random sequence of catalog changes
//! (instances added and removed, one and several at a time, weights, domains, check settings,
//! maxconn, whole services, a `backend=custom` service) drives real passes; at every pass the
//! reloads (with their typed reasons) and the operations the compiled plan predicted must equal
//! what the driver reports it did, the reloads must be those HAProxy (or the double) saw, and
//! the next plan from a fresh observation must be empty, or hold only the removals of servers the
//! pass put to drain. Run on the Data Plane API double and on real HAProxy with the runtime driver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::dataplane::{
    BaseConfig, DataplaneDouble, FrontendSpec, Options as DoubleOptions,
};
use crate::support::haproxy::{self, Haproxy};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{Instance, Service, ServiceKey, Snapshot};
use haproxy_nomad_connector::config::RuntimeConfig;
use haproxy_nomad_connector::desired::Policy;
use haproxy_nomad_connector::haproxy::Driver;
use haproxy_nomad_connector::haproxy::dataplane::client::Timeouts;
use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};
use haproxy_nomad_connector::haproxy::runtime::{RuntimeDriver, state};
use haproxy_nomad_connector::live::Live;
use haproxy_nomad_connector::model::{Endpoint, route_rules};
use haproxy_nomad_connector::plan::{Action, Plan, ReloadReason};
use haproxy_nomad_connector::reconcile::pass::{PassOutcome, run_pass};
use hnc_core::drains::DrainClock;

const SEED: u64 = 0x0051_0713;
const STEPS: usize = 200;
/// Services whose backends the connector owns, and one served by a hand-written backend.
const OWNED: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const CUSTOM: &str = "cust";

/// splitmix64: a seeded sequence, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}

#[derive(Clone, Debug)]
struct Svc {
    instances: BTreeSet<u8>,
    weight: u16,
    second_domain: bool,
    /// 0: http check, 1: tcp check, 2: no check.
    check: u8,
    maxconn: bool,
}

impl Svc {
    fn new() -> Svc {
        Svc {
            instances: BTreeSet::new(),
            weight: 1,
            second_domain: false,
            check: 0,
            maxconn: false,
        }
    }
}

/// The catalog as the test changes it.
struct Catalog {
    services: BTreeMap<&'static str, Svc>,
    custom_backend: &'static str,
}

impl Catalog {
    fn names() -> Vec<&'static str> {
        OWNED.iter().copied().chain([CUSTOM]).collect()
    }

    /// One random change; returns what it was, for failure messages.
    fn change(&mut self, rng: &mut Rng) -> String {
        let names = Self::names();
        let name = names[rng.below(names.len())];
        let svc = self.services.entry(name).or_insert_with(Svc::new);
        let what = match rng.below(9) {
            0 | 1 => {
                let i = u8::try_from(rng.below(12)).expect("small");
                svc.instances.insert(i);
                format!("add instance {i}")
            }
            2 => {
                let n = 2 + rng.below(5);
                for _ in 0..n {
                    svc.instances
                        .insert(u8::try_from(rng.below(24)).expect("small"));
                }
                format!("add up to {n} instances")
            }
            3 => match svc
                .instances
                .iter()
                .nth(rng.below(svc.instances.len().max(1)))
            {
                Some(&i) => {
                    svc.instances.remove(&i);
                    format!("remove instance {i}")
                }
                None => "remove an instance (none)".into(),
            },
            4 => {
                svc.weight = u16::try_from(1 + rng.below(5)).expect("small");
                format!("weight {}", svc.weight)
            }
            5 => {
                svc.second_domain = !svc.second_domain;
                format!("second domain {}", svc.second_domain)
            }
            6 => {
                svc.check = u8::try_from(rng.below(3)).expect("small");
                format!("check {}", ["http", "tcp", "none"][usize::from(svc.check)])
            }
            7 => {
                svc.maxconn = !svc.maxconn;
                format!("maxconn {}", svc.maxconn)
            }
            _ => {
                svc.instances.clear();
                "remove the service".into()
            }
        };
        format!("{name}: {what}")
    }

    fn tags(&self, name: &str, svc: &Svc) -> Vec<String> {
        let mut t = vec![
            "haproxy.enable=true".to_string(),
            format!("haproxy.domain={name}.test"),
            format!("haproxy.weight={}", svc.weight),
        ];
        if svc.second_domain {
            t.push(format!("haproxy.domain={name}-two.test"));
        }
        match svc.check {
            0 => t.push("haproxy.check.path=/health".into()),
            1 => t.push("haproxy.check.type=tcp".into()),
            _ => t.push("haproxy.check.disabled=true".into()),
        }
        if svc.maxconn {
            t.push("haproxy.maxconn=50".into());
        }
        if name == CUSTOM {
            t.push("haproxy.backend=custom".into());
            t.push(format!("haproxy.backend.name={}", self.custom_backend));
        }
        t
    }

    fn snapshot(&self) -> Snapshot {
        let services = self
            .services
            .iter()
            .filter(|(_, s)| !s.instances.is_empty())
            .enumerate()
            .map(|(n, (name, svc))| {
                let tags = self.tags(name, svc);
                let instances = svc
                    .instances
                    .iter()
                    .map(|i| Instance {
                        id: format!("{name}-{i}"),
                        job_id: (*name).to_string(),
                        alloc_id: format!("alloc-{name}-{i}"),
                        node_id: "node".into(),
                        datacenter: "dc1".into(),
                        tags: tags.clone(),
                        // Nothing listens there: checks fail fast, which the plan ignores.
                        address: format!("127.0.{}.{}", n + 1, i + 1),
                        port: 9,
                        create_index: 5,
                        modify_index: 5,
                        nomad_check: None,
                    })
                    .collect();
                (
                    ServiceKey::new("default", *name),
                    Arc::new(Service { instances }),
                )
            })
            .collect();
        Snapshot {
            services,
            synced: true,
            stale: None,
            denied: false,
            index: 1,
            check_health: Default::default(),
        }
    }
}

/// Where the reloads are counted independently of the driver.
enum Witness<'a> {
    Double(&'a DataplaneDouble),
    Haproxy(&'a Haproxy),
}

impl Witness<'_> {
    async fn reloads(&self) -> usize {
        match self {
            Witness::Double(dp) => {
                dp.wait_reloads_idle().await;
                dp.reload_count()
            }
            Witness::Haproxy(lb) => {
                let proc = state::proc(&lb.master("show proc")).expect("show proc");
                usize::try_from(proc.reloads).expect("count")
            }
        }
    }
}

/// Drain follow-ups: what a plan may still hold after a pass that put servers to drain.
fn drain_follow_up(plan: &Plan) -> bool {
    plan.ops.iter().all(|o| {
        matches!(
            o.action,
            Action::RemoveServer { .. }
                | Action::DeleteBackend { .. }
                | Action::RemoveRoute { .. }
                | Action::ReaddServer { .. }
        )
    })
}

/// The servers the plan added are in HAProxy under the names the plan gave them.
fn names_are_those_written(plan: &Plan, live: &Live, context: &str) {
    let mut written: Vec<(&str, &str, Endpoint)> = Vec::new();
    for op in &plan.ops {
        match &op.action {
            Action::AddServer {
                backend,
                server,
                endpoint,
                ..
            }
            | Action::ReaddServer {
                backend,
                server,
                endpoint,
                ..
            } => written.push((backend, server, *endpoint)),
            Action::GrowSlots { backend, slots, .. } => {
                for slot in slots {
                    if let Some(s) = slot.server {
                        written.push((backend, &slot.name, s.endpoint));
                    }
                }
            }
            _ => {}
        }
    }
    for (backend, server, endpoint) in written {
        let seen = live
            .backends
            .get(backend)
            .and_then(|b| b.servers.get(server))
            .and_then(|s| s.endpoint);
        assert_eq!(
            seen,
            Some(endpoint),
            "{context}: {backend}/{server} is not where the plan put {endpoint}"
        );
    }
}

/// Checks one applied pass against its plan.
fn held_to_its_word(o: &PassOutcome, seen_reloads: usize, context: &str) {
    let report = o
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("{context}: a plan with operations was not applied"));
    assert_eq!(o.attempts, 1, "{context}: no other writer, no conflict");
    assert!(
        report.refused.is_empty(),
        "{context}: refused {:?}\n{:#?}",
        report.refused,
        o.plan
    );
    let did: Vec<&ReloadReason> = report.reloads.iter().map(|r| &r.reason).collect();
    let said: Vec<&ReloadReason> = o.plan.reloads().iter().collect();
    assert_eq!(did, said, "{context}: reloads\n{:#?}", o.plan);
    assert_eq!(
        seen_reloads,
        said.len(),
        "{context}: reloads HAProxy saw\n{:#?}",
        o.plan
    );
    for r in &report.reloads {
        assert_eq!(r.kind, r.reason.kind(), "{context}");
    }
    assert_eq!(
        report.applied,
        o.plan.ops.len(),
        "{context}: operations\n{:#?}",
        o.plan
    );
}

/// The whole sequence against one driver.
async fn run<D: Driver>(driver: &D, witness: Witness<'_>, custom_backend: &'static str) {
    let policy = Policy::default();
    let mut drains = DrainClock::default();
    let mut rng = Rng(SEED);
    let mut catalog = Catalog {
        services: BTreeMap::new(),
        custom_backend,
    };
    let (mut passes, mut reloads, mut ops) = (0, 0, 0);
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for step in 0..STEPS {
        let change = catalog.change(&mut rng);
        let snap = catalog.snapshot();
        let mut converged = false;
        for round in 0..4 {
            let context = format!("step {step} ({change}), pass {round}, seed {SEED:#x}");
            let before = witness.reloads().await;
            let o = run_pass(driver, &snap, &policy, &mut drains, true)
                .await
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            if o.plan.is_empty() {
                converged = true;
                break;
            }
            let seen = witness.reloads().await - before;
            held_to_its_word(&o, seen, &context);
            passes += 1;
            reloads += seen;
            ops += o.plan.ops.len();
            for op in &o.plan.ops {
                *kinds.entry(op.action.name()).or_default() += 1;
            }
            // A fresh observation: nothing left to do, but the removals of drained servers.
            let next = run_pass(driver, &snap, &policy, &mut drains, false)
                .await
                .unwrap_or_else(|e| panic!("{context}, next plan: {e}"));
            names_are_those_written(&o.plan, &next.live, &context);
            let drained = o
                .plan
                .ops
                .iter()
                .any(|op| matches!(op.action, Action::DrainServer { .. }));
            if drained {
                assert!(
                    drain_follow_up(&next.plan),
                    "{context}: after drains, the next plan holds more than their removals\n{:#?}\nafter {}",
                    next.plan,
                    haproxy_nomad_connector::plan::render::human(&o.plan, &[])
                );
            } else {
                assert!(
                    next.plan.is_empty(),
                    "{context}: the next plan is not empty\n{:#?}",
                    next.plan
                );
            }
        }
        assert!(
            converged,
            "step {step} ({change}): no convergence in 4 passes"
        );
    }
    eprintln!("{passes} passes, {reloads} reloads, {ops} operations: {kinds:?}");
    // The sequence exercised what it is meant to.
    for k in [
        "create_backend",
        "update_backend",
        "delete_backend",
        "add_server",
        "set_weight",
        "drain_server",
        "remove_server",
        "add_route",
        "remove_route",
    ] {
        assert!(kinds.contains_key(k), "{k} never planned: {kinds:?}");
    }
    assert!(reloads > 0);
}

const MAPS: &str = "/etc/haproxy/maps";

#[tokio::test]
async fn dataplane_double_does_what_the_plan_says() {
    let mut fe = FrontendSpec::new("http-in").default_backend("legacy");
    fe = fe.connector_rules(MAPS);
    let mut base = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http",
                        "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .backend(json!({"name": "be_custom", "mode": "http", "balance": {"algorithm": "roundrobin"},
                        "servers": {"static1": {"name": "static1", "address": "192.0.2.20", "port": 80}}}))
        .frontend(fe);
    for kind in haproxy_nomad_connector::model::MatchKind::ALL {
        base = base.map_file(kind.map_file(), "");
    }
    let dp = DataplaneDouble::start(base, DoubleOptions::fast()).await;
    let driver = DataplaneDriver::new(
        Options {
            address: dp.url().parse().expect("url"),
            username: dp.user(),
            password: Some(haproxy_nomad_connector::config::Secret::new(dp.password())),
            frontend: None,
            maps_dir: MAPS.into(),
            timeouts: Timeouts {
                call: Duration::from_secs(5),
                reload: Duration::from_secs(5),
            },
        },
        CallMetrics::disabled(),
    )
    .expect("driver");
    run(&driver, Witness::Double(&dp), "be_custom").await;
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    assert_eq!(dp.open_transactions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_driver_on_real_haproxy_does_what_the_plan_says() {
    let files = tempfile::Builder::new()
        .prefix("hnc-word-")
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
    let mut rules = String::new();
    for (expr, cond) in route_rules(&maps_dir) {
        rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
    }
    let port = haproxy::free_port();
    let body = format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n{rules}    default_backend hand_default\n\n\
         backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n\n\
         backend hand_custom\n    balance roundrobin\n"
    );
    let lb = Haproxy::start_with(&body, &[files.path().join("conf.d")]);
    let driver = RuntimeDriver::new(cfg(Some(&lb)), CallMetrics::disabled());
    run(&driver, Witness::Haproxy(&lb), "hand_custom").await;
}
