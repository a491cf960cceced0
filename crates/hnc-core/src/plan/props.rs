//! Property tests of the pure core: relations between runs, not exact outputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::sim::{apply, live_of};
use super::{Action, Plan, diff};
use crate::catalog::{Instance, Service, ServiceKey, Snapshot};
use crate::desired::grammar::{is_safe_regex, is_safe_token};
use crate::desired::{Desired, Policy, build};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{
    AdminState, CheckSpec, Endpoint, MatchKind, Mode, OpState, is_haproxy_name, is_owned_server,
};

const TAG_VOCABULARY: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.enable=TRUE",
    "haproxy.enable=false",
    "haproxy.enable=maybe",
    "haproxy.domain=a.test",
    "haproxy.domain=B.Test",
    "haproxy.domain=*.w.test",
    "haproxy.domain=x y.test",
    "haproxy.domain=a#b",
    "haproxy.domain=^r\\.test$",
    "haproxy.domain=(bad",
    "haproxy.domain.type=prefix",
    "haproxy.domain.type=regex",
    "haproxy.domain.type=suffix",
    "haproxy.check.path=/health",
    "haproxy.check.path=/a b",
    "haproxy.check.path=/x\"y",
    "haproxy.check.method=head",
    "haproxy.check.method=FETCH",
    "haproxy.check.host=h.test",
    "haproxy.check.host=h.test:99999",
    "haproxy.check.type=tcp",
    "haproxy.check.type=none",
    "haproxy.check.disabled=true",
    "haproxy.check.disabled=yes",
    "haproxy.check.interval=3s",
    "haproxy.check.timeout=0s",
    "haproxy.check.rise=5",
    "haproxy.check.fall=0",
    "haproxy.check.expect=200-399",
    "haproxy.balance=leastconn",
    "haproxy.balance=source",
    "haproxy.mode=tcp",
    "haproxy.mode=http",
    "haproxy.maxconn=50",
    "haproxy.weight=7",
    "haproxy.weight=999",
    "haproxy.backend=custom",
    "haproxy.backend=static",
    "haproxy.backend.name=be_custom",
    "haproxy.backend.name=bad name",
    "haproxy.unknown=1",
    "haproxy.check",
    "unrelated",
];

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(TAG_VOCABULARY).prop_map(String::from),
        1 => "haproxy\\.[a-z.]{1,12}=[ -~]{0,12}",
        1 => "haproxy\\.(domain|check\\.path|check\\.host|backend\\.name)=[ -~\\n\\t]{0,16}",
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    (
        "[a-f0-9]{4}",
        proptest::sample::select(vec![
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.3",
            "fd00::1",
            "2001:db8::7",
            "not-an-ip",
        ]),
        proptest::sample::select(vec![80u16, 8080, 9000]),
        proptest::collection::vec(tag(), 0..8),
        1u64..50,
        0u64..20,
    )
        .prop_map(|(id, addr, port, mut tags, create, bump)| {
            // Most instances are enabled, so the interesting paths are exercised.
            if !tags.iter().any(|t| t.starts_with("haproxy.enable")) && create % 4 != 0 {
                tags.push("haproxy.enable=true".into());
            }
            Instance {
                id,
                job_id: "job".into(),
                alloc_id: "alloc".into(),
                node_id: "node".into(),
                datacenter: "dc1".into(),
                tags,
                address: addr.into(),
                port,
                create_index: create,
                modify_index: create + bump,
                nomad_check: None,
            }
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    proptest::collection::btree_map(
        (
            proptest::sample::select(vec!["default", "prod"]),
            proptest::sample::select(vec!["web", "api-svc", "db", "be-custom"]),
        ),
        proptest::collection::vec(instance(), 1..5),
        0..6,
    )
    .prop_map(|services| Snapshot {
        services: services
            .into_iter()
            .map(|((ns, name), instances)| {
                (ServiceKey::new(ns, name), Arc::new(Service { instances }))
            })
            .collect(),
        synced: true,
        stale: None,
        denied: false,
        index: 1,
        check_health: Default::default(),
    })
}

fn live_server() -> impl Strategy<Value = LiveServer> {
    (
        proptest::sample::select(vec![
            "hnc_10.0.0.1_80",
            "hnc_10.0.0.9_8080",
            "hnc_fd00::1_9000",
            "static1",
            "app",
        ]),
        proptest::sample::select(vec![
            AdminState::Ready,
            AdminState::Drain,
            AdminState::Maint,
        ]),
        0u64..3,
        any::<bool>(),
        0u16..10,
        any::<bool>(),
    )
        .prop_map(|(name, admin, sessions, check, weight, started)| {
            let endpoint = name
                .strip_prefix("hnc_")
                .and_then(|rest| rest.rsplit_once('_'))
                .and_then(|(a, p)| Some(Endpoint::new(a.parse().ok()?, p.parse().ok()?)))
                .or_else(|| Some(Endpoint::new("192.0.2.1".parse().ok()?, 80)));
            LiveServer {
                name: name.into(),
                endpoint,
                admin,
                op: OpState::Up,
                check_enabled: check,
                weight,
                sessions,
                drain_started: started.then(|| Instant::now() - Duration::from_secs(3600)),
            }
        })
}

fn live() -> impl Strategy<Value = Live> {
    proptest::collection::btree_map(
        proptest::sample::select(vec![
            "web",
            "api_svc",
            "prod.web",
            "be_custom",
            "be_custom_static",
            "hand",
        ]),
        (
            any::<bool>(),
            proptest::sample::select(vec![Mode::Http, Mode::Tcp]),
            proptest::sample::select(vec![None, Some("roundrobin"), Some("static-rr")]),
            proptest::collection::vec(live_server(), 0..4),
        ),
        0..5,
    )
    .prop_map(|backends| {
        let mut live = Live::default();
        for (name, (owned, mode, balance, servers)) in backends {
            live.backends.insert(
                name.to_string(),
                LiveBackend {
                    name: name.to_string(),
                    owned,
                    mode,
                    balance: balance.map(String::from),
                    settings: None,
                    servers: servers
                        .into_iter()
                        .map(|s| (s.name.clone(), s))
                        .collect::<BTreeMap<_, _>>(),
                },
            );
        }
        live
    })
}

/// Every value that reaches the desired model passes its field's grammar.
fn assert_safe(d: &Desired) {
    for (name, b) in &d.backends {
        assert!(is_haproxy_name(name), "backend name {name:?}");
        for e in b.servers.keys() {
            assert!(
                is_safe_token(&e.server_name()),
                "server name {:?}",
                e.server_name()
            );
        }
        if let CheckSpec::Http {
            method, path, host, ..
        } = &b.settings.check
        {
            assert!(
                is_safe_token(method) && is_safe_token(path),
                "{method:?} {path:?}"
            );
            assert!(host.as_deref().is_none_or(is_safe_token), "{host:?}");
        }
    }
    for (route, backend) in &d.routes {
        let ok = if route.kind == MatchKind::Regex {
            is_safe_regex(&route.key)
        } else {
            is_safe_token(&route.key) && route.key == route.key.to_ascii_lowercase()
        };
        assert!(ok, "route key {route:?}");
        assert!(
            d.backends.contains_key(backend),
            "route to a backend that is not desired"
        );
    }
}

/// No operation targets an object the connector does not own.
fn assert_owned_only(plan: &Plan, live: &Live, desired: &Desired) {
    for op in &plan.ops {
        let backend = op.action.backend().map(str::to_string);
        match &op.action {
            Action::CreateBackend { backend, .. } => assert!(!live.backends.contains_key(backend)),
            Action::UpdateBackend { backend, .. } | Action::DeleteBackend { backend } => {
                assert!(
                    live.backends.get(backend).is_some_and(|b| b.owned),
                    "{op:?} on a backend we do not own"
                );
            }
            Action::AddServer { server, .. } => assert!(is_owned_server(server)),
            Action::ReadyServer { backend, server }
            | Action::EnableCheck {
                backend, server, ..
            }
            | Action::SetWeight {
                backend, server, ..
            }
            | Action::DrainServer { backend, server }
            | Action::MaintServer { backend, server }
            | Action::RemoveServer { backend, server } => {
                assert!(
                    is_owned_server(server),
                    "{op:?} on a server we did not create"
                );
                assert!(
                    live.backends
                        .get(backend)
                        .is_some_and(|b| b.servers.contains_key(server))
                );
            }
            Action::AddRoute { .. }
            | Action::SetRoute { .. }
            | Action::RemoveRoute { .. }
            | Action::InsertRouteRules { .. } => {}
            Action::GrowSlots { .. } | Action::RewriteMap { .. } | Action::ReaddServer { .. } => {
                panic!("the driver-neutral diff never emits {op:?}")
            }
        }
        if let Some(b) = backend
            && !matches!(op.action, Action::AddRoute { .. } | Action::SetRoute { .. })
        {
            assert!(
                !desired.frozen.contains(&b),
                "{op:?} touches frozen backend {b}"
            );
        }
    }
}

fn reversed(snap: &Snapshot) -> Snapshot {
    let mut s = snap.clone();
    for svc in s.services.values_mut() {
        let mut instances = svc.instances.clone();
        instances.reverse();
        for i in &mut instances {
            i.tags.reverse();
        }
        *svc = Arc::new(Service { instances });
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_tags_no_panic_and_only_safe_values(snap in snapshot(), live in live()) {
        if let Ok(d) = build(&snap, &live, &Policy::default()) {
            assert_safe(&d);
        }
        let d = build(&snap, &Live::default(), &Policy::default()).expect("no live backend, no conflict");
        assert_safe(&d);
    }

    #[test]
    fn desired_is_independent_of_input_order(snap in snapshot(), live in live()) {
        let a = build(&snap, &live, &Policy::default());
        let b = build(&reversed(&snap), &live, &Policy::default());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn diff_against_its_own_realisation_is_empty(snap in snapshot()) {
        let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
        let plan = diff(&d, &live_of(&d), Instant::now(), &Policy::default());
        prop_assert!(plan.is_empty(), "{:#?}", plan);
    }

    #[test]
    fn applying_plans_converges_and_never_touches_unowned_objects(snap in snapshot(), start in live()) {
        let policy = Policy::default();
        let now = Instant::now();
        let mut live = start.clone();
        let foreign_before: Vec<(String, Vec<String>)> = foreign_servers(&start);
        let mut last = None;
        for round in 0..3 {
            let d = build(&snap, &live, &policy).expect("use_existing never fails");
            let plan = diff(&d, &live, now, &policy);
            assert_owned_only(&plan, &live, &d);
            if round == 1 {
                // After one application, only the second half of drains can be left: removing
                // servers whose drain began in round 0 (and the routes and backends that waited
                // for them).
                for op in &plan.ops {
                    prop_assert!(
                        matches!(
                            op.action,
                            Action::RemoveServer { .. } | Action::RemoveRoute { .. } | Action::DeleteBackend { .. }
                        ),
                        "round 1 still plans {:?}",
                        op
                    );
                }
            }
            if plan.is_empty() {
                last = Some(plan);
                break;
            }
            apply(&mut live, &plan);
        }
        // One round applies the changes; a second removes what finished draining; then nothing.
        prop_assert!(last.is_some(), "did not converge in 3 rounds");
        // Hand-written servers are all still there, unchanged.
        for (backend, servers) in foreign_before {
            if let Some(b) = live.backends.get(&backend) {
                for s in servers {
                    prop_assert_eq!(b.servers.get(&s), start.backends[&backend].servers.get(&s));
                }
            } else {
                prop_assert!(start.backends[&backend].owned, "a foreign backend vanished");
            }
        }
    }
}

fn foreign_servers(live: &Live) -> Vec<(String, Vec<String>)> {
    live.backends
        .values()
        .map(|b| {
            (
                b.name.clone(),
                b.servers
                    .keys()
                    .filter(|s| !is_owned_server(s))
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

/// Checks a plan compiled for a slot driver against the neutral plan it came from.
fn assert_slots_kept(neutral: &Plan, compiled: &Plan, live: &Live) -> Result<(), TestCaseError> {
    use std::collections::BTreeSet;
    let mut adds: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &neutral.ops {
        if let Action::AddServer { backend, .. } = &op.action {
            *adds.entry(backend).or_default() += 1;
        }
    }
    let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut taken: BTreeSet<(&str, &str)> = BTreeSet::new();
    for op in &compiled.ops {
        match &op.action {
            Action::AddServer {
                backend, server, ..
            } => {
                let free = live.free_slots.get(backend.as_str());
                prop_assert!(
                    free.is_some_and(|f| f.contains(server)),
                    "{server} is not a free slot of {backend}"
                );
                prop_assert!(taken.insert((backend, server)), "two servers in {server}");
                *placed.entry(backend).or_default() += 1;
            }
            Action::GrowSlots { backend, to, slots } => {
                let b = live.backends.get(backend.as_str());
                let free = live.free_slots.get(backend.as_str()).map_or(0, Vec::len);
                prop_assert!(
                    adds.get(backend.as_str()).copied().unwrap_or(0) > free,
                    "{backend} grew with enough free slots"
                );
                for s in slots {
                    prop_assert!(
                        b.is_none_or(|b| !b.servers.contains_key(&s.name))
                            && !live
                                .free_slots
                                .get(backend.as_str())
                                .is_some_and(|f| f.contains(&s.name)),
                        "new slot {} exists already",
                        s.name
                    );
                    prop_assert!(
                        taken.insert((backend, &s.name)),
                        "two servers in {}",
                        s.name
                    );
                    if s.server.is_some() {
                        *placed.entry(backend).or_default() += 1;
                    }
                }
                prop_assert!(*to >= slots.len());
            }
            _ => {}
        }
    }
    prop_assert_eq!(adds, placed, "every add lands in exactly one slot");
    let structural = compiled.has_structural();
    prop_assert_eq!(
        compiled
            .reloads()
            .iter()
            .filter(|r| matches!(r, super::ReloadReason::Structural { .. }))
            .count(),
        usize::from(structural)
    );
    Ok(())
}

/// The profile of a driver that keeps servers in slots (the Data Plane API driver's, with every
/// key addressable).
const SLOTS: super::DriverProfile = super::DriverProfile {
    servers: super::ServerPlacement::Slots,
    enable_check_reloads: true,
    readd_after_reload: false,
    route_addressable: None,
    persists_outcome: false,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Hostile sequences of catalogs (many backends, colliding endpoints, slots full and empty):
    /// compiled for a slot driver, every add lands in exactly one free or new slot, growth only
    /// when the free slots do not suffice, and applying the plans converges.
    #[test]
    fn slot_plans_place_every_server_once_and_converge(snaps in proptest::collection::vec(snapshot(), 1..4)) {
        let policy = Policy::default();
        let now = Instant::now();
        let mut live = Live::default();
        for snap in &snaps {
            let mut converged = false;
            for _ in 0..3 {
                let d = build(snap, &live, &policy).expect("no foreign backend");
                let neutral = diff(&d, &live, now, &policy);
                let compiled = super::compile(neutral.clone(), &d, &live, &SLOTS);
                assert_slots_kept(&neutral, &compiled, &live)?;
                if compiled.is_empty() {
                    converged = true;
                    break;
                }
                apply(&mut live, &compiled);
            }
            prop_assert!(converged, "did not converge in 3 rounds");
        }
    }
}
