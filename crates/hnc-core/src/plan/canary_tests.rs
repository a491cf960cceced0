//! Canaries: Nomad puts a deployment's `canary_tags` on its canary registrations, so
//! `haproxy.weight=N` there gives canaries their share of traffic next to the old version, and
//! promotion (the canaries re-registered with the normal tags) is a weight change at run time.

use std::time::Instant;

use super::sim::live_of;
use super::*;
use crate::catalog::Snapshot;
use crate::desired::tests::{mk_instance, mk_snapshot};
use crate::desired::{Policy, Severity, build};

const STABLE: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=web.test",
    "haproxy.weight=100",
];
const CANARY: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=web.test",
    "haproxy.weight=10",
    "canary",
];

/// Four stable instances and, when `canary` is set, a fifth registered with the canary tags.
fn deployment(canary: bool) -> Snapshot {
    let mut instances: Vec<_> = (1..=4)
        .map(|i| mk_instance(&format!("s{i}"), &format!("10.0.0.{i}"), 8080, STABLE))
        .collect();
    let tags = if canary { CANARY } else { STABLE };
    instances.push(mk_instance("c1", "10.0.0.5", 8080, tags));
    mk_snapshot(vec![("default", "web", instances)])
}

#[test]
fn canary_tags_set_the_canary_weight_and_promotion_is_a_weight_change_without_reload() {
    let snap = deployment(true);
    let d = build(&snap, &Default::default(), &Policy::default()).expect("build");
    assert!(
        d.diagnostics
            .iter()
            .all(|x| x.severity != Severity::Skipped),
        "{:?}",
        d.diagnostics
    );
    let weights: Vec<u16> = d.backends["web"]
        .servers
        .values()
        .map(|s| s.weight)
        .collect();
    assert_eq!(weights, [100, 100, 100, 100, 10]);
    let live = live_of(&d);

    // Promotion: the canary is re-registered with the normal tags.
    let promoted = deployment(false);
    let d2 = build(&promoted, &live, &Policy::default()).expect("build");
    let plan = diff(&d2, &live, Instant::now(), &Policy::default());
    assert_eq!(plan.ops.len(), 1, "{:?}", plan.ops);
    assert!(matches!(
        &plan.ops[0].action,
        Action::SetWeight { server, weight: 100, .. } if server == "hnc_10.0.0.5_8080"
    ));
    assert_eq!(plan.ops[0].kind, OpKind::Runtime);
    assert_eq!(plan.ops[0].reason, "weight 10 → 100");
    let compiled = compile(plan, &d2, &live, &DriverProfile::NEUTRAL);
    assert_eq!(compiled.reloads, Some(Vec::new()), "no reload");
}
