//! The property that holds isolation together, over the pure core: a fixed catalog of healthy
//! services plus N hostile registrations. No panic; the plan's operations for the healthy
//! services are identical with and without the hostile ones; every hostile registration gets a
//! diagnostic naming its service; nothing unsafe reaches the model. Then a sample rendered as the
//! runtime driver would and checked by real `haproxy -c`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use haproxy_nomad_connector::catalog::{Instance, ServiceKey};
use haproxy_nomad_connector::desired::grammar::{is_safe_regex, is_safe_token};
use haproxy_nomad_connector::desired::{Desired, Ownership, Policy, build};
use haproxy_nomad_connector::haproxy::runtime::fragment::{self, FragmentBackend};
use haproxy_nomad_connector::live::Live;
use haproxy_nomad_connector::model::{MAX_TIMER_MS, MatchKind, RouteKey, route_rules};
use haproxy_nomad_connector::plan::sim::live_of;
use haproxy_nomad_connector::plan::{Action, Op, Plan, diff};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::corpus::{self, HEALTHY_BACKENDS};

fn healthy_routes(d: &Desired) -> BTreeSet<RouteKey> {
    d.routes.keys().cloned().collect()
}

/// The live state the pass starts from (the same with and without hostile registrations).
fn start_live() -> Live {
    let policy = Policy::default();
    let d = build(
        &corpus::snapshot(corpus::healthy()),
        &Live::default(),
        &policy,
    )
    .expect("healthy");
    corpus::live_before(live_of(&d))
}

/// Whether `op` touches one of the healthy services' objects.
fn touches_healthy(op: &Op, healthy_routes: &BTreeSet<RouteKey>) -> bool {
    match &op.action {
        Action::AddRoute { route, .. }
        | Action::SetRoute { route, .. }
        | Action::RemoveRoute { route } => healthy_routes.contains(route),
        Action::InsertRouteRules { .. } => true,
        other => other
            .backend()
            .is_some_and(|b| HEALTHY_BACKENDS.contains(&b)),
    }
}

fn plan_for(hostile: &[(ServiceKey, Instance)], live: &Live, now: Instant) -> (Desired, Plan) {
    let policy = Policy::default();
    let snap = corpus::snapshot(
        corpus::healthy()
            .into_iter()
            .chain(hostile.iter().map(|(k, i)| (k.clone(), vec![i.clone()]))),
    );
    let d = build(&snap, live, &policy).expect("use_existing never fails the build");
    let plan = diff(&d, live, now, &policy);
    (d, plan)
}

fn check_isolation(hostile: &[(ServiceKey, Instance)]) -> Result<(), TestCaseError> {
    let live = start_live();
    let now = Instant::now();
    let (clean_desired, clean) = plan_for(&[], &live, now);
    prop_assert!(!clean.is_empty(), "the healthy pass must have work to do");
    let routes = healthy_routes(&clean_desired);
    let (d, plan) = plan_for(hostile, &live, now);

    // The healthy services' operations are exactly the same, in the same order.
    let healthy_ops: Vec<&Op> = plan
        .ops
        .iter()
        .filter(|o| touches_healthy(o, &routes))
        .collect();
    let clean_ops: Vec<&Op> = clean.ops.iter().collect();
    prop_assert_eq!(healthy_ops, clean_ops);
    // And their desired objects too.
    for name in HEALTHY_BACKENDS {
        prop_assert_eq!(
            d.backends.get(name),
            clean_desired.backends.get(name),
            "backend {}",
            name
        );
        prop_assert!(!d.frozen.contains(name), "{} frozen", name);
    }
    for (route, backend) in &clean_desired.routes {
        prop_assert_eq!(d.routes.get(route), Some(backend));
    }

    // Every hostile registration is named by a diagnostic.
    for (key, inst) in hostile {
        prop_assert!(
            d.diagnostics
                .iter()
                .any(|x| x.namespace == key.namespace && x.service == key.name),
            "no diagnostic for {} ({:?})\n{:#?}",
            key,
            inst,
            d.diagnostics
        );
    }

    // Nothing unsafe reaches the model.
    assert_safe(&d)?;
    Ok(())
}

fn assert_safe(d: &Desired) -> Result<(), TestCaseError> {
    for b in d.backends.values() {
        if let Some(t) = b.settings.check.timing() {
            prop_assert!(t.interval_ms <= MAX_TIMER_MS && t.timeout_ms <= MAX_TIMER_MS);
            prop_assert!(t.interval_ms >= 10 && t.timeout_ms >= 10);
        }
        for (name, ms) in b.settings.timeouts.entries() {
            if let Some(ms) = ms {
                prop_assert!((10..=MAX_TIMER_MS).contains(&ms), "timeout {} {}", name, ms);
            }
        }
        for e in b.servers.keys() {
            prop_assert!(
                haproxy_nomad_connector::desired::always_denied(e.addr).is_none(),
                "{} routed",
                e
            );
            prop_assert!(e.port != 0);
        }
    }
    for route in d.routes.keys() {
        prop_assert!(route.key != "." && route.key != "..");
        prop_assert!(!route.key.ends_with("<<"));
        prop_assert!(route.key.is_ascii(), "{:?}", route.key);
        // The grammar's own notion of a value safe anywhere in HAProxy's syntax.
        if route.kind == MatchKind::Regex {
            prop_assert!(is_safe_regex(&route.key), "{:?}", route.key);
            prop_assert!(
                pcre2::bytes::RegexBuilder::new().build(&route.key).is_ok(),
                "{} does not compile with PCRE2",
                route.key
            );
        } else {
            prop_assert!(is_safe_token(&route.key), "{:?}", route.key);
        }
    }
    Ok(())
}

/// Cases for the pure property (1,000 in CI).
const CASES: u32 = 1000;

#[test]
fn hostile_registrations_change_nothing_for_healthy_services() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&corpus::hostiles(6), |hostile| check_isolation(&hostile))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Renders what the runtime driver would write for `d` and runs `haproxy -c` on it.
fn haproxy_accepts(d: &Desired, dir: &std::path::Path) -> Result<(), String> {
    let maps = dir.join("maps");
    std::fs::create_dir_all(&maps).map_err(|e| e.to_string())?;
    let maps_dir = maps.display().to_string();
    for kind in MatchKind::ALL {
        std::fs::write(
            maps.join(kind.map_file()),
            fragment::render_map(kind, &d.routes),
        )
        .map_err(|e| e.to_string())?;
    }
    let backends: BTreeMap<String, FragmentBackend> = d
        .backends
        .iter()
        .filter(|(_, b)| b.ownership == Ownership::Owned)
        .map(|(name, b)| {
            (
                name.clone(),
                FragmentBackend {
                    settings: b.settings.clone(),
                    servers: b
                        .servers
                        .iter()
                        .map(|(e, s)| (e.server_name(), (*e, s.weight)))
                        .collect(),
                },
            )
        })
        .collect();
    let mut rules = String::new();
    for (expr, cond) in route_rules(&maps_dir) {
        rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
    }
    let base = format!(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:18080\n{rules}    default_backend hand_written\n\n\
         backend hand_written\n    server static1 127.0.0.1:9\n\n\
         backend hand_custom\n    server static2 127.0.0.1:10\n"
    );
    let base_path = dir.join("base.cfg");
    let fragment_path = dir.join("hnc.cfg");
    std::fs::write(&base_path, base).map_err(|e| e.to_string())?;
    std::fs::write(&fragment_path, fragment::render(&backends)).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(crate::support::haproxy::binary())
        .arg("-c")
        .arg("-f")
        .arg(&base_path)
        .arg("-f")
        .arg(&fragment_path)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_candidate_that_reaches_haproxy_is_accepted_by_haproxy() {
    let bin = crate::support::haproxy::binary();
    println!("{}", crate::support::haproxy::version_line(&bin));
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let live = start_live();
    runner
        .run(&corpus::hostiles(6), |hostile| {
            let (d, _) = plan_for(&hostile, &live, Instant::now());
            let dir = tempfile::tempdir().expect("tempdir");
            if let Err(e) = haproxy_accepts(&d, dir.path()) {
                return Err(TestCaseError::fail(format!(
                    "haproxy -c rejected the candidate: {e}"
                )));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // And one candidate holding every regex of the corpus that the grammar accepts, with the
    // longest timers a tag or a job check can give.
    let accepted: Vec<(ServiceKey, Instance)> = corpus::REGEXES
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let tags = [
                "haproxy.enable=true".to_string(),
                format!("haproxy.domain={r}"),
                "haproxy.domain.type=regex".into(),
                "haproxy.check.interval=24h".into(),
            ];
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            (
                ServiceKey::new("corpus", format!("r{i}")),
                corpus::instance(&format!("r{i}"), "10.8.0.1", 80, &tags, 50),
            )
        })
        .collect();
    let (d, _) = plan_for(&accepted, &live, Instant::now());
    assert!(
        d.routes.keys().any(|r| r.key == "^api\\.ex\\.com$"),
        "the corpus has accepted regexes"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    haproxy_accepts(&d, dir.path()).expect("haproxy -c accepts the corpus");
}
