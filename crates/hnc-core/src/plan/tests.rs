//! Diff scenarios as narratives: register, scale, drain, drift, hands off what is not ours.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::sim::{apply, live_of};
use super::*;
use crate::catalog::Snapshot;
use crate::desired::tests::{mk_instance, mk_snapshot};
use crate::desired::{Desired, Policy, build};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{AdminState, MatchKind, Mode, OpState};

fn desired(snap: &Snapshot, live: &Live) -> Desired {
    build(snap, live, &Policy::default()).expect("build")
}

fn web(addrs: &[&str], tags: &[&str]) -> Snapshot {
    let instances = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| mk_instance(&format!("i{i}"), a, 8080, tags))
        .collect();
    mk_snapshot(vec![("default", "web", instances)])
}

const TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=web.test",
    "haproxy.check.path=/health",
];

fn names(plan: &Plan) -> Vec<String> {
    plan.ops
        .iter()
        .map(|o| {
            let target = match (&o.action.backend(), o.action.server(), &o.action) {
                (
                    _,
                    _,
                    Action::AddRoute { route, .. }
                    | Action::SetRoute { route, .. }
                    | Action::RemoveRoute { route },
                ) => route.to_string(),
                (Some(b), Some(s), _) => format!("{b}/{s}"),
                (Some(b), None, _) => b.to_string(),
                _ => String::new(),
            };
            format!("{} {target}", o.action.name())
        })
        .collect()
}

fn step(snap: &Snapshot, live: &Live, now: Instant) -> (Desired, Plan) {
    let d = desired(snap, live);
    let p = diff(&d, live, now, &Policy::default());
    (d, p)
}

fn foreign_server(name: &str, addr: &str) -> LiveServer {
    LiveServer {
        name: name.into(),
        endpoint: Some(Endpoint::new(addr.parse().expect("ip"), 80)),
        admin: AdminState::Ready,
        op: OpState::Up,
        check_enabled: false,
        weight: 1,
        sessions: 0,
        drain_started: None,
    }
}

#[test]
fn new_service_one_structural_op_then_runtime_ops_in_order() {
    let now = Instant::now();
    let (_, plan) = step(&web(&["10.0.0.1", "10.0.0.2"], TAGS), &Live::default(), now);
    assert_eq!(
        names(&plan),
        vec![
            "create_backend web",
            "add_server web/hnc_10.0.0.1_8080",
            "add_server web/hnc_10.0.0.2_8080",
            "add_route exact web.test",
        ]
    );
    assert_eq!(
        plan.ops
            .iter()
            .filter(|o| o.kind == OpKind::Structural)
            .count(),
        1
    );
    assert!(plan.ops[1..].iter().all(|o| o.kind == OpKind::Runtime));
    assert!(matches!(
        &plan.ops[1].action,
        Action::AddServer {
            check: true,
            weight: 1,
            ..
        }
    ));
    assert_eq!(plan.ops[0].reason, "new service default/web");
}

#[test]
fn converged_state_has_an_empty_plan() {
    let snap = web(&["10.0.0.1"], TAGS);
    let d = desired(&snap, &Live::default());
    let live = live_of(&d);
    let plan = diff(&d, &live, Instant::now(), &Policy::default());
    assert!(plan.is_empty(), "{plan:#?}");
}

#[test]
fn scaling_up_and_down_is_runtime_only() {
    let t0 = Instant::now();
    let mut live = live_of(&desired(&web(&["10.0.0.1"], TAGS), &Live::default()));
    let (_, plan) = step(&web(&["10.0.0.1", "10.0.0.2"], TAGS), &live, t0);
    assert_eq!(names(&plan), vec!["add_server web/hnc_10.0.0.2_8080"]);
    apply(&mut live, &plan);

    // Scale down: drain first.
    let (_, plan) = step(&web(&["10.0.0.1"], TAGS), &live, t0);
    assert_eq!(names(&plan), vec!["drain_server web/hnc_10.0.0.2_8080"]);
    assert!(!plan.has_structural());
    assert_eq!(plan.ops[0].reason, "instance deregistered");
    apply(&mut live, &plan);

    // Sessions still open: wait.
    let s = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.2_8080"))
        .expect("server");
    s.sessions = 4;
    s.drain_started = Some(t0);
    let (_, plan) = step(
        &web(&["10.0.0.1"], TAGS),
        &live,
        t0 + Duration::from_secs(5),
    );
    assert!(plan.is_empty());
    assert_eq!(plan.pending_drains.len(), 1);
    assert_eq!(plan.pending_drains[0].sessions, 4);
    assert_eq!(plan.pending_drains[0].remaining, Duration::from_secs(25));

    // Drain timeout passed: removed even with sessions.
    let (_, plan) = step(
        &web(&["10.0.0.1"], TAGS),
        &live,
        t0 + Duration::from_secs(30),
    );
    assert_eq!(names(&plan), vec!["remove_server web/hnc_10.0.0.2_8080"]);
    assert!(
        plan.ops[0]
            .reason
            .contains("drain timed out with 4 sessions")
    );

    // No sessions: removed at once.
    live.backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.2_8080"))
        .expect("server")
        .sessions = 0;
    let (_, plan) = step(
        &web(&["10.0.0.1"], TAGS),
        &live,
        t0 + Duration::from_secs(6),
    );
    assert_eq!(names(&plan), vec!["remove_server web/hnc_10.0.0.2_8080"]);
    apply(&mut live, &plan);
    assert!(step(&web(&["10.0.0.1"], TAGS), &live, t0).1.is_empty());
}

#[test]
fn an_instance_that_returns_while_draining_is_ready_again() {
    // LESSONS 11: a re-registered instance stayed drained and was then deleted by a stale timer.
    let t0 = Instant::now();
    let snap = web(&["10.0.0.1", "10.0.0.2"], TAGS);
    let mut live = live_of(&desired(&snap, &Live::default()));
    let s = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.2_8080"))
        .expect("server");
    s.admin = AdminState::Drain;
    s.sessions = 2;
    s.drain_started = Some(t0);
    let (_, plan) = step(&snap, &live, t0 + Duration::from_secs(60));
    assert_eq!(names(&plan), vec!["ready_server web/hnc_10.0.0.2_8080"]);
    assert_eq!(
        plan.ops[0].reason,
        "instance 10.0.0.2:8080 registered again while draining"
    );
}

#[test]
fn drift_is_repaired() {
    let snap = web(&["10.0.0.1"], TAGS);
    let mut live = live_of(&desired(&snap, &Live::default()));
    {
        let s = live
            .backends
            .get_mut("web")
            .and_then(|b| b.servers.get_mut("hnc_10.0.0.1_8080"))
            .expect("server");
        s.admin = AdminState::Maint;
        s.check_enabled = false;
        s.weight = 9;
    }
    live.routes.clear();
    let (_, plan) = step(&snap, &live, Instant::now());
    assert_eq!(
        names(&plan),
        vec![
            "ready_server web/hnc_10.0.0.1_8080",
            "enable_check web/hnc_10.0.0.1_8080",
            "set_weight web/hnc_10.0.0.1_8080",
            "add_route exact web.test",
        ]
    );
    assert!(plan.ops[0].reason.starts_with("drift:"));

    // HAProxy restarted from its base config: everything owned is gone and comes back.
    let (_, plan) = step(&snap, &Live::default(), Instant::now());
    assert_eq!(plan.summary().get("create_backend"), Some(&1));
}

#[test]
fn changed_settings_update_the_backend_with_a_reason() {
    let mut live = live_of(&desired(&web(&["10.0.0.1"], TAGS), &Live::default()));
    let tags = [
        "haproxy.enable=true",
        "haproxy.domain=web.test",
        "haproxy.check.path=/ready",
        "haproxy.balance=leastconn",
    ];
    let (_, plan) = step(&web(&["10.0.0.1"], &tags), &live, Instant::now());
    assert_eq!(names(&plan), vec!["update_backend web"]);
    assert!(
        matches!(&plan.ops[0].action, Action::UpdateBackend { changed, .. } if changed == &["balance", "check"])
    );
    assert_eq!(
        plan.ops[0].reason,
        "balance, check changed for service default/web"
    );
    assert_eq!(plan.ops[0].kind, OpKind::Structural);
    // Settings that cannot be read back are rewritten.
    live.backends.get_mut("web").expect("web").settings = None;
    let (_, plan) = step(&web(&["10.0.0.1"], TAGS), &live, Instant::now());
    assert_eq!(names(&plan), vec!["update_backend web"]);
}

#[test]
fn a_service_that_leaves_drains_then_loses_route_servers_and_backend() {
    // LESSONS 10: the route must stay until the drain has finished.
    let t0 = Instant::now();
    let mut live = live_of(&desired(&web(&["10.0.0.1"], TAGS), &Live::default()));
    let gone = mk_snapshot(vec![]);
    let (_, plan) = step(&gone, &live, t0);
    assert_eq!(
        names(&plan),
        vec!["drain_server web/hnc_10.0.0.1_8080"],
        "route kept while draining"
    );
    apply(&mut live, &plan);
    let s = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.1_8080"))
        .expect("server");
    s.sessions = 1;
    s.drain_started = Some(t0);
    let (_, plan) = step(&gone, &live, t0 + Duration::from_secs(1));
    assert!(plan.is_empty(), "{:?}", names(&plan));
    live.backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.1_8080"))
        .expect("server")
        .sessions = 0;
    let (_, plan) = step(&gone, &live, t0 + Duration::from_secs(2));
    assert_eq!(
        names(&plan),
        vec![
            "remove_route exact web.test",
            "remove_server web/hnc_10.0.0.1_8080",
            "delete_backend web"
        ]
    );
    apply(&mut live, &plan);
    assert_eq!(live, Live::default());
}

#[test]
fn a_route_stays_while_any_instance_is_desired() {
    // LESSONS 10: a canary's deregistration removed the rule while other instances were up.
    let mut live = live_of(&desired(
        &web(&["10.0.0.1", "10.0.0.2"], TAGS),
        &Live::default(),
    ));
    let (_, plan) = step(&web(&["10.0.0.1"], TAGS), &live, Instant::now());
    assert!(
        plan.ops
            .iter()
            .all(|o| !matches!(o.action, Action::RemoveRoute { .. }))
    );
    apply(&mut live, &plan);
    assert_eq!(live.routes.len(), 1);
}

#[test]
fn domains_move_and_duplicates_collapse() {
    let a = mk_instance(
        "a",
        "10.0.0.1",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.mode=http",
            "haproxy.domain=x.test",
        ],
    );
    let b = mk_instance(
        "b",
        "10.0.0.2",
        80,
        &["haproxy.enable=true", "haproxy.mode=http"],
    );
    let snap = mk_snapshot(vec![
        ("default", "a", vec![a.clone()]),
        ("default", "b", vec![b.clone()]),
    ]);
    let mut live = live_of(&desired(&snap, &Live::default()));
    // Move x.test from a to b.
    let mut a2 = a;
    a2.tags = vec!["haproxy.enable=true".into(), "haproxy.mode=http".into()];
    let mut b2 = b;
    b2.tags.push("haproxy.domain=x.test".into());
    let moved = mk_snapshot(vec![("default", "a", vec![a2]), ("default", "b", vec![b2])]);
    let (_, plan) = step(&moved, &live, Instant::now());
    assert_eq!(names(&plan), vec!["set_route exact x.test"]);
    assert_eq!(plan.ops[0].reason, "exact x.test moves from a to b");
    // Duplicate entries for one key: collapsed to one.
    let key = RouteKey {
        kind: MatchKind::Exact,
        key: "x.test".into(),
    };
    live.routes.insert(key, vec!["a".into(), "a".into()]);
    let (_, plan) = step(&snap, &live, Instant::now());
    assert_eq!(names(&plan), vec!["set_route exact x.test"]);
}

#[test]
fn hand_written_objects_are_never_touched() {
    let mut live = Live::default();
    // A hand-written backend with a static server.
    live.backends.insert(
        "be_static".into(),
        LiveBackend {
            name: "be_static".into(),
            owned: false,
            mode: Mode::Http,
            balance: None,
            settings: None,
            servers: [("app1".to_string(), foreign_server("app1", "192.0.2.1"))].into(),
        },
    );
    // A custom backend with a static server and one of ours that is no longer desired.
    let mut ours = foreign_server("hnc_10.9.9.9_80", "10.9.9.9");
    ours.endpoint = Some(Endpoint::new("10.9.9.9".parse().expect("ip"), 80));
    live.backends.insert(
        "be_custom".into(),
        LiveBackend {
            name: "be_custom".into(),
            owned: false,
            mode: Mode::Http,
            balance: Some("roundrobin".into()),
            settings: None,
            servers: [
                (
                    "static1".to_string(),
                    foreign_server("static1", "192.0.2.2"),
                ),
                ("hnc_10.9.9.9_80".to_string(), ours),
            ]
            .into(),
        },
    );
    let snap = mk_snapshot(vec![(
        "default",
        "legacy",
        vec![mk_instance(
            "l",
            "10.0.0.7",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.backend=custom",
                "haproxy.backend.name=be_custom",
            ],
        )],
    )]);
    let (_, plan) = step(&snap, &live, Instant::now());
    assert_eq!(
        names(&plan),
        vec![
            "add_server be_custom/hnc_10.0.0.7_80",
            "drain_server be_custom/hnc_10.9.9.9_80"
        ]
    );
    // Nothing desired at all: our server leaves, the backends stay.
    let (_, plan) = step(&mk_snapshot(vec![]), &live, Instant::now());
    assert_eq!(names(&plan), vec!["drain_server be_custom/hnc_10.9.9.9_80"]);
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(o.action, Action::DeleteBackend { .. }))
    );
}

#[test]
fn frozen_services_keep_their_live_objects() {
    let mut live = live_of(&desired(&web(&["10.0.0.1"], TAGS), &Live::default()));
    // The service now carries an invalid tag: skipped, and its live objects stay as they are.
    let bad = web(
        &["10.0.0.1", "10.0.0.2"],
        &[
            "haproxy.enable=true",
            "haproxy.domain=web.test",
            "haproxy.check.path=/a b",
        ],
    );
    let (d, plan) = step(&bad, &live, Instant::now());
    assert!(d.frozen.contains("web"));
    assert!(plan.is_empty(), "{:?}", names(&plan));
    live.backends.get_mut("web").expect("web").servers.clear();
    assert!(step(&bad, &live, Instant::now()).1.is_empty());
}

#[test]
fn rendering() {
    let (d, plan) = step(&web(&["10.0.0.1"], TAGS), &Live::default(), Instant::now());
    let text = render::human(&plan, &d.diagnostics);
    assert_eq!(
        text,
        "Plan: 3 operations (1 structural, 2 runtime)\n\
         \x20 + create backend web (http, roundrobin, check http GET /health Host web.test every 2000ms)    # new service default/web\n\
         \x20 + add server web/hnc_10.0.0.1_8080 10.0.0.1:8080 weight 1 with check    # instance 10.0.0.1:8080 of default/web registered\n\
         \x20 + route exact web.test → web    # exact web.test → web\n"
    );
    let json = render::json(&plan, &d.diagnostics);
    assert_eq!(json["changes"], true);
    assert_eq!(json["summary"]["add_server"], 1);
    assert_eq!(json["ops"][0]["op"], "create_backend");
    assert_eq!(json["ops"][0]["kind"], "structural");
    assert_eq!(json["ops"][0]["settings"]["check"]["type"], "http");
    assert_eq!(json["ops"][1]["endpoint"]["addr"], "10.0.0.1");
    assert_eq!(json["ops"][2]["route"]["kind"], "exact");
    let empty = render::human(&Plan::default(), &[]);
    assert_eq!(empty, "No changes: HAProxy matches the desired state.\n");
}

/// A custom backend `be_custom` (hand-written, dynamic balance) as the runtime driver sees it.
fn custom_live() -> Live {
    let mut live = Live::default();
    live.backends.insert(
        "be_custom".into(),
        LiveBackend {
            name: "be_custom".into(),
            owned: false,
            mode: Mode::Http,
            balance: Some("roundrobin".into()),
            settings: None,
            servers: BTreeMap::new(),
        },
    );
    live
}

const CUSTOM_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=c.test",
    "haproxy.backend=custom",
    "haproxy.backend.name=be_custom",
];

#[test]
fn a_runtime_reload_is_followed_by_the_readds_it_costs() {
    let profile = DriverProfile {
        servers: ServerPlacement::Dynamic,
        enable_check_reloads: false,
        readd_after_reload: true,
        route_addressable: None,
        persists_outcome: true,
    };
    let mut live = custom_live();
    let custom = mk_snapshot(vec![(
        "default",
        "c",
        vec![mk_instance("c0", "10.0.0.5", 80, CUSTOM_TAGS)],
    )]);
    let d = desired(&custom, &live);
    let plan = compile(
        diff(&d, &live, Instant::now(), &Policy::default()),
        &d,
        &live,
        &profile,
    );
    // Nothing structural: no reload, no re-add.
    assert_eq!(
        names(&plan),
        vec![
            "add_server be_custom/hnc_10.0.0.5_80",
            "add_route exact c.test"
        ]
    );
    assert_eq!(plan.reloads(), &[]);
    apply(&mut live, &plan);
    // A new owned service: one reload, and the custom backend's server comes back after it.
    let mut both = custom.clone();
    both.services.extend(web(&["10.0.0.1"], TAGS).services);
    let d = desired(&both, &live);
    let plan = compile(
        diff(&d, &live, Instant::now(), &Policy::default()),
        &d,
        &live,
        &profile,
    );
    assert_eq!(
        names(&plan).last().map(String::as_str),
        Some("readd_server be_custom/hnc_10.0.0.5_80")
    );
    assert_eq!(
        plan.reloads(),
        &[ReloadReason::Structural {
            changes: vec![StructuralChange::CreateBackend {
                backend: "web".into()
            }]
        }]
    );
    let outcome = plan
        .outcome
        .as_ref()
        .expect("the runtime driver persists the outcome");
    assert_eq!(outcome.backends["web"].servers.len(), 1);
    assert!(
        !outcome.backends.contains_key("be_custom"),
        "not the connector's backend"
    );
    let text = render::human(&plan, &[]);
    assert!(
        text.contains("Reloads: 1\n  structural: create backend web\n"),
        "{text}"
    );
    let json = render::json(&plan, &[]);
    assert_eq!(json["reload_count"], 1);
    assert_eq!(json["reloads"][0]["reason"], "structural");
}

#[test]
fn a_slot_driver_fills_free_slots_grows_when_full_and_rewrites_maps_it_cannot_address() {
    let profile = DriverProfile {
        servers: ServerPlacement::Slots,
        enable_check_reloads: true,
        readd_after_reload: false,
        route_addressable: Some(|k| !k.contains('$')),
        persists_outcome: false,
    };
    let snap = web(&["10.0.0.1", "10.0.0.2"], TAGS);
    let d = desired(&snap, &Live::default());
    let plan = compile(
        diff(&d, &Live::default(), Instant::now(), &Policy::default()),
        &d,
        &Live::default(),
        &profile,
    );
    // A new backend: its servers go into the slots created with it, in the one transaction.
    assert_eq!(
        names(&plan),
        vec![
            "create_backend web",
            "grow_slots web",
            "add_route exact web.test"
        ]
    );
    assert_eq!(
        plan.reloads(),
        &[ReloadReason::Structural {
            changes: vec![StructuralChange::CreateBackend {
                backend: "web".into()
            }]
        }]
    );
    let mut live = Live::default();
    apply(&mut live, &plan);
    assert_eq!(live.free_slots["web"], ["hnc_slot_0003", "hnc_slot_0004"]);
    // Two more fit the free slots (run time); a third more grows the backend (structural).
    let snap = web(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], TAGS);
    let d = desired(&snap, &live);
    let plan = compile(
        diff(&d, &live, Instant::now(), &Policy::default()),
        &d,
        &live,
        &profile,
    );
    assert_eq!(
        names(&plan),
        vec![
            "add_server web/hnc_slot_0003",
            "add_server web/hnc_slot_0004"
        ]
    );
    assert_eq!(plan.reloads(), &[]);
    apply(&mut live, &plan);
    let snap = web(
        &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"],
        TAGS,
    );
    let d = desired(&snap, &live);
    let plan = compile(
        diff(&d, &live, Instant::now(), &Policy::default()),
        &d,
        &live,
        &profile,
    );
    assert_eq!(names(&plan), vec!["grow_slots web"]);
    assert_eq!(
        plan.reloads(),
        &[ReloadReason::Structural {
            changes: vec![StructuralChange::SlotGrowth {
                backend: "web".into(),
                to: 8
            }]
        }]
    );
    apply(&mut live, &plan);
    // A regex route the API cannot address leaves: its map is rewritten whole, with a reload.
    let key = RouteKey {
        kind: MatchKind::Regex,
        key: r"^old\.ex$".into(),
    };
    live.routes.insert(key, vec!["web".into()]);
    // And a server whose check was disabled by hand: re-enabled with a reload.
    if let Some(s) = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_slot_0001"))
    {
        s.check_enabled = false;
    }
    let plan = compile(
        diff(&d, &live, Instant::now(), &Policy::default()),
        &d,
        &live,
        &profile,
    );
    assert_eq!(
        names(&plan),
        vec!["enable_check web/hnc_slot_0001", "rewrite_map "]
    );
    assert_eq!(
        plan.reloads(),
        &[
            ReloadReason::EnableCheck {
                backend: "web".into(),
                server: "hnc_slot_0001".into()
            },
            ReloadReason::MapRewrite {
                map: MatchKind::Regex
            }
        ]
    );
    apply(&mut live, &plan);
    assert!(diff(&d, &live, Instant::now(), &Policy::default()).is_empty());
}
