//! Backend settings of issue 14 in the plan: a change is an `UpdateBackend` naming the changed
//! field, with its reason and the reload it costs.

use std::time::Instant;

use super::{Action, DriverProfile, ReloadReason, StructuralChange, compile, diff};
use crate::desired::tests::{mk_instance, mk_snapshot};
use crate::desired::{Desired, Policy, build};
use crate::live::{Live, LiveBackend};
use crate::model::Mode;

fn build_tags(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![(
        "apps",
        "chat",
        vec![mk_instance("a", "10.0.0.1", 8080, tags)],
    )]);
    build(&snap, &Live::default(), &Policy::default()).expect("build")
}

#[test]
fn a_timeout_change_is_an_update_naming_the_field_and_costs_one_reload() {
    let before = build_tags(&["haproxy.enable=true", "haproxy.timeout.server=30s"]);
    let after = build_tags(&[
        "haproxy.enable=true",
        "haproxy.timeout.server=30s",
        "haproxy.timeout.tunnel=1h",
    ]);
    let mut live = Live::default();
    live.backends.insert(
        "apps.chat".into(),
        LiveBackend {
            name: "apps.chat".into(),
            owned: true,
            mode: Mode::Tcp,
            balance: None,
            settings: Some(before.backends["apps.chat"].settings.clone()),
            servers: Default::default(),
        },
    );
    let plan = diff(&after, &live, Instant::now(), &Policy::default());
    let update = plan
        .ops
        .iter()
        .find_map(|o| match &o.action {
            Action::UpdateBackend { changed, .. } => Some((changed.clone(), o.reason.clone())),
            _ => None,
        })
        .expect("an update");
    assert_eq!(update.0, vec!["timeout.tunnel".to_string()]);
    assert!(update.1.contains("timeout.tunnel changed"), "{}", update.1);
    let plan = compile(plan, &after, &live, &DriverProfile::NEUTRAL);
    assert_eq!(
        plan.reloads(),
        &[ReloadReason::Structural {
            changes: vec![StructuralChange::UpdateBackend {
                backend: "apps.chat".into(),
                changed: vec!["timeout.tunnel".into()],
            }]
        }]
    );
    // Live equal to desired: the backend is left as it is.
    live.backends.get_mut("apps.chat").expect("live").settings =
        Some(after.backends["apps.chat"].settings.clone());
    let plan = diff(&after, &live, Instant::now(), &Policy::default());
    assert!(
        plan.ops
            .iter()
            .all(|o| !matches!(o.action, Action::UpdateBackend { .. })),
        "{plan:#?}"
    );
}

#[test]
fn turning_stickiness_on_is_an_update_naming_sticky() {
    let before = build_tags(&["haproxy.enable=true", "haproxy.mode=http"]);
    let after = build_tags(&["haproxy.enable=true", "haproxy.sticky=cookie"]);
    let mut live = Live::default();
    live.backends.insert(
        "apps.chat".into(),
        LiveBackend {
            name: "apps.chat".into(),
            owned: true,
            mode: Mode::Http,
            balance: None,
            settings: Some(before.backends["apps.chat"].settings.clone()),
            servers: Default::default(),
        },
    );
    let plan = diff(&after, &live, Instant::now(), &Policy::default());
    let update: Vec<(Vec<String>, String)> = plan
        .ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::UpdateBackend { changed, .. } => Some((changed.clone(), o.reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        update,
        vec![(
            vec!["sticky".to_string()],
            "sticky changed for service apps/chat".to_string()
        )]
    );
}

#[test]
fn plan_text_names_the_new_settings() {
    let snap = mk_snapshot(vec![(
        "apps",
        "chat",
        vec![mk_instance(
            "a",
            "10.0.0.1",
            8080,
            &[
                "haproxy.enable=true",
                "haproxy.timeout.tunnel=1h",
                "haproxy.sticky=cookie",
                "haproxy.server.ssl=true",
                "haproxy.server.sni=auto",
            ],
        )],
    )]);
    let policy = Policy {
        server_ca_file: Some("/ca.pem".into()),
        ..Policy::default()
    };
    let d = build(&snap, &Live::default(), &policy).expect("build");
    assert_eq!(
        super::render::settings(&d.backends["apps.chat"].settings),
        "http, roundrobin, check tcp every 2000ms, timeout tunnel 3600000ms, sticky cookie SERVERID, tls to servers sni from the request verified"
    );
}
