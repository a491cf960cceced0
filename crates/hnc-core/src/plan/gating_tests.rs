//! Gating on Nomad checks (`nomad.gate_on_checks`) as a narrative: a failing instance is
//! drained, then put in maintenance once drained, never removed for it, and comes back when its
//! checks pass; an instance without check results is never touched.

use std::time::{Duration, Instant};

use super::sim::{apply, live_of};
use super::*;
use crate::catalog::{CheckHealth, Snapshot};
use crate::desired::tests::{mk_instance, mk_snapshot};
use crate::desired::{Policy, build};
use crate::model::AdminState;

const TAGS: &[&str] = &["haproxy.enable=true", "haproxy.domain=web.test"];

fn web(health: &[(&str, CheckHealth)]) -> Snapshot {
    let instances = ["10.0.0.1", "10.0.0.2"]
        .iter()
        .enumerate()
        .map(|(i, a)| mk_instance(&format!("i{i}"), a, 8080, TAGS))
        .collect();
    let mut snap = mk_snapshot(vec![("default", "web", instances)]);
    for (alloc, h) in health {
        snap.check_health
            .entry((*alloc).to_string())
            .or_default()
            .insert("web".into(), *h);
    }
    snap
}

fn plan_for(snap: &Snapshot, live: &crate::live::Live, now: Instant) -> Plan {
    let d = build(snap, live, &Policy::default()).expect("build");
    diff(&d, live, now, &Policy::default())
}

fn ops(plan: &Plan) -> Vec<(String, String)> {
    plan.ops
        .iter()
        .map(|o| (o.action.name().to_string(), o.reason.clone()))
        .collect()
}

#[test]
fn failing_instance_is_drained_then_kept_in_maintenance_then_readied() {
    let t0 = Instant::now();
    let healthy = web(&[("alloc-i0", CheckHealth::Passing)]);
    let d = build(&healthy, &crate::live::Live::default(), &Policy::default()).expect("build");
    let mut live = live_of(&d);
    assert!(plan_for(&healthy, &live, t0).ops.is_empty(), "converged");

    // i0's checks fail: drained, with the reason; i1 (no results) untouched.
    let failing = web(&[("alloc-i0", CheckHealth::Failing)]);
    let plan = plan_for(&failing, &live, t0);
    assert_eq!(
        ops(&plan),
        [(
            "drain_server".to_string(),
            "Nomad checks of instance 10.0.0.1:8080 fail: draining".to_string()
        )]
    );
    assert_eq!(plan.ops[0].action.server(), Some("hnc_10.0.0.1_8080"));
    assert_eq!(plan.ops[0].kind, OpKind::Runtime);
    apply(&mut live, &plan);

    // Still a session: the drain is pending, nothing else happens.
    let server = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.1_8080"))
        .expect("server kept");
    server.sessions = 2;
    server.drain_started = Some(t0);
    let plan = plan_for(&failing, &live, t0 + Duration::from_secs(1));
    assert!(plan.ops.is_empty(), "{:?}", ops(&plan));
    assert_eq!(plan.pending_drains.len(), 1);

    // Drained: maintenance, never removal.
    live.backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.1_8080"))
        .expect("server")
        .sessions = 0;
    let plan = plan_for(&failing, &live, t0 + Duration::from_secs(2));
    assert_eq!(
        ops(&plan),
        [(
            "maint_server".to_string(),
            "Nomad checks of instance 10.0.0.1:8080 fail; drained (0 sessions left)".to_string()
        )]
    );
    apply(&mut live, &plan);
    let s = &live.backends["web"].servers["hnc_10.0.0.1_8080"];
    assert_eq!(s.admin, AdminState::Maint);
    let plan = plan_for(&failing, &live, t0 + Duration::from_secs(60));
    assert!(
        plan.ops.is_empty(),
        "steady while failing: {:?}",
        ops(&plan)
    );

    // Passing again: back in rotation.
    let plan = plan_for(&healthy, &live, t0 + Duration::from_secs(61));
    assert_eq!(
        plan.ops.iter().map(|o| o.action.name()).collect::<Vec<_>>(),
        ["ready_server"]
    );
    apply(&mut live, &plan);
    assert!(plan_for(&healthy, &live, t0).ops.is_empty());
}

#[test]
fn a_new_instance_with_failing_checks_waits_and_a_drain_times_out_into_maintenance() {
    let t0 = Instant::now();
    let failing = web(&[("alloc-i1", CheckHealth::Failing)]);
    let plan = plan_for(&failing, &crate::live::Live::default(), t0);
    let added: Vec<_> = plan
        .ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::AddServer { server, .. } => Some(server.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        ["hnc_10.0.0.1_8080"],
        "the failing instance is not added yet"
    );

    let healthy = web(&[]);
    let d = build(&healthy, &crate::live::Live::default(), &Policy::default()).expect("build");
    let mut live = live_of(&d);
    let s = live
        .backends
        .get_mut("web")
        .and_then(|b| b.servers.get_mut("hnc_10.0.0.2_8080"))
        .expect("server");
    s.admin = AdminState::Drain;
    s.sessions = 5;
    s.drain_started = Some(t0);
    let policy = Policy::default();
    let plan = plan_for(&failing, &live, t0 + policy.drain_timeout);
    assert_eq!(
        plan.ops.iter().map(|o| o.action.name()).collect::<Vec<_>>(),
        ["maint_server"]
    );
    assert!(plan.ops[0].reason.contains("5 sessions left"));
}
