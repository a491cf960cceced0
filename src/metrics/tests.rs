use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::expo::{self, Family, Kind};
use super::*;
use crate::desired::{Diagnostic, Reason, Severity};
use crate::plan::{Action, Op, Plan};

fn mk_metrics() -> Metrics {
    Metrics::new("1.2.3").expect("metrics register")
}

/// The report of a pass that ended at `at` with `result` after `duration`, and did nothing.
fn mk_report(result: PassResult, duration: Duration, at: SystemTime) -> PassReport {
    PassReport::new(result, at, duration)
}

/// The report of a successful pass that applied `plan`.
fn mk_applied(plan: &Plan) -> PassReport {
    let mut r = mk_report(PassResult::Success, Duration::from_millis(1), UNIX_EPOCH);
    r.ops = plan
        .ops
        .iter()
        .map(|op| PlannedOp {
            name: op.action.name(),
            kind: op.kind,
        })
        .collect();
    r
}

fn scrape(m: &Metrics) -> BTreeMap<String, Family> {
    let text = m.try_render().expect("renders");
    expo::parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"))
}

fn mk_diag(service: &str, severity: Severity, reason: Reason) -> Diagnostic {
    Diagnostic {
        namespace: "default".into(),
        service: service.into(),
        severity,
        reason,
        tag: None,
        value: None,
        message: "test".into(),
    }
}

/// Touches every series once so vector families have a child to render.
fn touch_everything(m: &Metrics) {
    m.record_pass(&mk_report(
        PassResult::Success,
        Duration::from_millis(12),
        UNIX_EPOCH,
    ));
    m.observe_event_to_applied(Duration::from_millis(40));
    m.record_pass(&mk_applied(&Plan {
        ops: vec![Op::new(
            Action::DeleteBackend {
                backend: "b".into(),
            },
            "gone",
        )],
        pending_drains: vec![],
        ..Plan::default()
    }));
    m.record_reloads(&["backend created"]);
    m.haproxy_calls("dataplane")
        .record("backends", "200", Duration::from_millis(3));
    m.nomad_calls()
        .record("list", "200", Duration::from_millis(30));
    m.driver_requests
        .with_label_values(&["/v3/services/haproxy/transactions", "201"])
        .inc();
    m.nomad_requests
        .with_label_values(&["/v1/services", "200"])
        .inc();
    m.nomad_stream_reconnects.inc();
    m.nomad_events
        .with_label_values(&["ServiceRegistration"])
        .inc();
    m.set_catalog(2, 5);
    m.set_desired(2, 5);
    m.drift_repairs.with_label_values(&["server"]).inc();
    m.set_diagnostics(&[mk_diag("a", Severity::Skipped, Reason::InvalidTag)]);
}

#[test]
fn every_series_is_exported_with_its_type_and_help() {
    let m = mk_metrics();
    touch_everything(&m);
    let families = scrape(&m);
    let expected = [
        ("hnc_passes_total", Kind::Counter),
        ("hnc_pass_duration_seconds", Kind::Histogram),
        ("hnc_event_to_applied_seconds", Kind::Histogram),
        ("hnc_plan_operations_total", Kind::Counter),
        ("hnc_haproxy_reloads_total", Kind::Counter),
        ("hnc_driver_requests_total", Kind::Counter),
        ("hnc_haproxy_request_duration_seconds", Kind::Histogram),
        ("hnc_nomad_requests_total", Kind::Counter),
        ("hnc_nomad_request_duration_seconds", Kind::Histogram),
        ("hnc_nomad_stream_reconnects_total", Kind::Counter),
        ("hnc_nomad_events_total", Kind::Counter),
        ("hnc_catalog_services", Kind::Gauge),
        ("hnc_catalog_instances", Kind::Gauge),
        ("hnc_desired_backends", Kind::Gauge),
        ("hnc_desired_servers", Kind::Gauge),
        ("hnc_drift_repairs_total", Kind::Counter),
        ("hnc_skipped_services", Kind::Gauge),
        ("hnc_conflicts", Kind::Gauge),
        ("hnc_mass_delete_held_total", Kind::Counter),
        ("hnc_last_successful_pass_timestamp_seconds", Kind::Gauge),
        ("hnc_build_info", Kind::Gauge),
    ];
    for (name, kind) in expected {
        let f = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(f.kind, kind, "{name}");
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
        assert!(!f.samples.is_empty(), "{name} has no sample");
    }
    // Nothing else, and the naming conventions hold for all of it.
    assert_eq!(families.len(), expected.len(), "{:?}", families.keys());
    for (name, f) in &families {
        assert!(name.starts_with("hnc_"), "{name}");
        assert_eq!(name.ends_with("_total"), f.kind == Kind::Counter, "{name}");
    }
    assert_eq!(
        families["hnc_build_info"].value("hnc_build_info", &[("version", "1.2.3")]),
        Some(1.0)
    );
}

#[test]
fn a_fresh_registry_exports_build_info_and_zero_passes() {
    let families = scrape(&mk_metrics());
    let passes = &families["hnc_passes_total"];
    for result in ["success", "noop", "error", "held"] {
        assert_eq!(
            passes.value("hnc_passes_total", &[("result", result)]),
            Some(0.0),
            "{result}"
        );
    }
    assert_eq!(
        families["hnc_last_successful_pass_timestamp_seconds"]
            .value("hnc_last_successful_pass_timestamp_seconds", &[]),
        Some(0.0)
    );
    assert!(families.contains_key("hnc_build_info"));
}

#[test]
fn each_metrics_value_owns_its_registry() {
    // With the process-global registry the second one would fail as a duplicate.
    let a = mk_metrics();
    let b = mk_metrics();
    a.conflicts.set(3);
    assert_eq!(b.conflicts.get(), 0);
    assert!(
        prometheus::gather()
            .iter()
            .all(|f| !f.name().starts_with("hnc_"))
    );
}

#[test]
fn record_pass_counts_times_and_stamps_success() {
    let m = mk_metrics();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.record_pass(&mk_report(
        PassResult::Success,
        Duration::from_millis(30),
        at,
    ));
    m.record_pass(&mk_report(
        PassResult::Noop,
        Duration::from_millis(2),
        at + Duration::from_secs(30),
    ));
    m.record_pass(&mk_report(
        PassResult::Error,
        Duration::from_secs(3),
        at + Duration::from_secs(60),
    ));
    let f = scrape(&m);
    let passes = &f["hnc_passes_total"];
    assert_eq!(
        passes.value("hnc_passes_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        passes.value("hnc_passes_total", &[("result", "noop")]),
        Some(1.0)
    );
    assert_eq!(
        passes.value("hnc_passes_total", &[("result", "error")]),
        Some(1.0)
    );
    assert_eq!(
        passes.value("hnc_passes_total", &[("result", "held")]),
        Some(0.0)
    );
    let d = &f["hnc_pass_duration_seconds"];
    assert_eq!(d.value("hnc_pass_duration_seconds_count", &[]), Some(3.0));
    assert_eq!(
        d.value("hnc_pass_duration_seconds_bucket", &[("le", "0.05")]),
        Some(2.0)
    );
    // The error pass did not move the timestamp.
    assert_eq!(
        f["hnc_last_successful_pass_timestamp_seconds"]
            .value("hnc_last_successful_pass_timestamp_seconds", &[]),
        Some(1_700_000_030.0)
    );
}

#[test]
fn a_held_pass_counts_as_a_held_mass_delete() {
    let m = mk_metrics();
    let held = mk_report(PassResult::Held, Duration::from_millis(5), UNIX_EPOCH);
    m.record_pass(&held);
    m.record_pass(&held);
    assert_eq!(m.mass_delete_held.get(), 2);
    assert_eq!(m.passes.with_label_values(&["held"]).get(), 2);
    assert_eq!(m.last_successful_pass.get(), 0.0);
}

#[test]
fn event_to_applied_buckets_span_a_millisecond_to_ten_seconds() {
    let m = mk_metrics();
    for ms in [1, 3, 40, 900, 9_000, 20_000] {
        m.observe_event_to_applied(Duration::from_millis(ms));
    }
    let f = scrape(&m);
    let h = &f["hnc_event_to_applied_seconds"];
    let les: Vec<&str> = h
        .samples
        .iter()
        .filter_map(|s| s.labels.get("le").map(String::as_str))
        .collect();
    assert_eq!(les.first(), Some(&"0.001"));
    assert!(les.contains(&"10"), "{les:?}");
    assert_eq!(les.last(), Some(&"+Inf"));
    let bucket = |le| h.value("hnc_event_to_applied_seconds_bucket", &[("le", le)]);
    assert_eq!(bucket("0.001"), Some(1.0));
    assert_eq!(bucket("0.005"), Some(2.0));
    assert_eq!(bucket("1"), Some(4.0));
    assert_eq!(bucket("10"), Some(5.0));
    assert_eq!(bucket("+Inf"), Some(6.0));
}

#[test]
fn applied_plans_are_counted_by_operation_and_kind() {
    let m = mk_metrics();
    let op = |action| Op::new(action, "test");
    let plan = Plan {
        ops: vec![
            op(Action::DrainServer {
                backend: "b".into(),
                server: "s1".into(),
            }),
            op(Action::DrainServer {
                backend: "b".into(),
                server: "s2".into(),
            }),
            op(Action::DeleteBackend {
                backend: "c".into(),
            }),
        ],
        pending_drains: vec![],
        ..Plan::default()
    };
    m.record_pass(&mk_applied(&plan));
    m.record_pass(&mk_applied(&plan));
    let f = scrape(&m);
    let ops = &f["hnc_plan_operations_total"];
    assert_eq!(
        ops.value(
            "hnc_plan_operations_total",
            &[("op", "drain_server"), ("kind", "runtime")]
        ),
        Some(4.0)
    );
    assert_eq!(
        ops.value(
            "hnc_plan_operations_total",
            &[("op", "delete_backend"), ("kind", "structural")]
        ),
        Some(2.0)
    );
    assert_eq!(ops.samples.len(), 2, "nothing else: {:?}", ops.samples);
}

#[test]
fn reloads_are_counted_by_reason() {
    let m = mk_metrics();
    m.record_reloads(&["backend created", "backend created", "backend deleted"]);
    assert_eq!(
        m.haproxy_reloads
            .with_label_values(&["backend created"])
            .get(),
        2
    );
    assert_eq!(
        m.haproxy_reloads
            .with_label_values(&["backend deleted"])
            .get(),
        1
    );
}

#[test]
fn diagnostics_set_skipped_services_and_conflicts() {
    let m = mk_metrics();
    m.set_diagnostics(&[
        // Two skipped diagnostics for one service and reason count once.
        mk_diag("a", Severity::Skipped, Reason::InvalidTag),
        mk_diag("a", Severity::Skipped, Reason::InvalidTag),
        mk_diag("b", Severity::Skipped, Reason::InvalidTag),
        // A warning is not a skip.
        mk_diag("c", Severity::Warning, Reason::UnknownTag),
        // A domain conflict: the winner (warning) and the loser (skipped) are both in conflict.
        mk_diag("d", Severity::Warning, Reason::DomainConflict),
        mk_diag("e", Severity::Skipped, Reason::DomainConflict),
        mk_diag("e", Severity::Skipped, Reason::BackendNameConflict),
    ]);
    let f = scrape(&m);
    let skipped = &f["hnc_skipped_services"];
    let n = |reason| skipped.value("hnc_skipped_services", &[("reason", reason)]);
    assert_eq!(n("invalid_tag"), Some(2.0));
    assert_eq!(n("domain_conflict"), Some(1.0));
    assert_eq!(n("backend_name_conflict"), Some(1.0));
    assert_eq!(n("unknown_tag"), None);
    assert_eq!(skipped.samples.len(), 3);
    assert_eq!(f["hnc_conflicts"].value("hnc_conflicts", &[]), Some(2.0));

    // Everything fixed: the series stay, at zero.
    m.set_diagnostics(&[]);
    let f = scrape(&m);
    let skipped = &f["hnc_skipped_services"];
    for reason in ["invalid_tag", "domain_conflict", "backend_name_conflict"] {
        assert_eq!(
            skipped.value("hnc_skipped_services", &[("reason", reason)]),
            Some(0.0),
            "{reason}"
        );
    }
    assert_eq!(f["hnc_conflicts"].value("hnc_conflicts", &[]), Some(0.0));
}

#[test]
fn sync_counter_adds_the_difference_and_survives_a_source_restart() {
    let m = mk_metrics();
    let labels = ["/v1/services", "200"];
    m.sync_counter(&m.nomad_requests, &labels, 5);
    assert_eq!(m.nomad_requests.with_label_values(&labels).get(), 5);
    m.sync_counter(&m.nomad_requests, &labels, 5);
    assert_eq!(m.nomad_requests.with_label_values(&labels).get(), 5);
    m.sync_counter(&m.nomad_requests, &labels, 8);
    assert_eq!(m.nomad_requests.with_label_values(&labels).get(), 8);
    // Another series of the same vector is tracked separately.
    m.sync_counter(&m.nomad_requests, &["/v1/services", "500"], 2);
    assert_eq!(
        m.nomad_requests
            .with_label_values(&["/v1/services", "500"])
            .get(),
        2
    );
    // The source restarted from zero and counted 3 since: the counter never goes down.
    m.sync_counter(&m.nomad_requests, &labels, 3);
    assert_eq!(m.nomad_requests.with_label_values(&labels).get(), 11);
    m.sync_counter(&m.nomad_requests, &labels, 4);
    assert_eq!(m.nomad_requests.with_label_values(&labels).get(), 12);

    m.sync_single_counter(&m.nomad_stream_reconnects, 2);
    m.sync_single_counter(&m.nomad_stream_reconnects, 7);
    assert_eq!(m.nomad_stream_reconnects.get(), 7);
    // The same labels on another vector are another series.
    m.sync_counter(&m.driver_requests, &labels, 1);
    assert_eq!(m.driver_requests.with_label_values(&labels).get(), 1);
}

#[test]
fn label_values_are_escaped_in_the_text() {
    let m = mk_metrics();
    m.record_reloads(&["quote \" backslash \\ newline \n end"]);
    let f = scrape(&m);
    assert_eq!(
        f["hnc_haproxy_reloads_total"].value(
            "hnc_haproxy_reloads_total",
            &[("reason", "quote \" backslash \\ newline \n end")]
        ),
        Some(1.0)
    );
}

#[test]
fn the_dashboard_queries_only_documented_series() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../dashboards/haproxy-nomad-connector.json"
    ))
    .expect("dashboard JSON");
    // The README's metrics reference lists every series the registry defines.
    let readme = include_str!("../../README.md");
    let documented: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `hnc_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let names = regex::Regex::new(r"hnc_[a-z_]+").expect("regex");
    let mut seen = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for m in names.find_iter(expr) {
                let name = m.as_str();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    documented.iter().any(|d| format!("hnc_{d}") == family),
                    "the dashboard queries {name}, which the README's metrics reference does not list"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 14, "the dashboard queries {seen} series");
}

#[test]
fn the_readme_documents_exactly_the_exported_series() {
    let m = Metrics::new("test").expect("metrics");
    // Labelled families only appear once a series exists: create one in each.
    m.plan_operations
        .with_label_values(&["add_server", "runtime"])
        .inc();
    m.haproxy_reloads.with_label_values(&["structural"]).inc();
    m.driver_requests
        .with_label_values(&["backends", "200"])
        .inc();
    m.haproxy_request_duration
        .with_label_values(&["runtime", "show_proc", "answered"])
        .observe(0.001);
    m.nomad_requests.with_label_values(&["list", "200"]).inc();
    m.nomad_request_duration
        .with_label_values(&["list", "200"])
        .observe(0.1);
    m.nomad_events
        .with_label_values(&["ServiceRegistration"])
        .inc();
    m.drift_repairs.with_label_values(&["add_server"]).inc();
    m.skipped_services
        .with_label_values(&["invalid_tag"])
        .set(1);
    let mut exported: Vec<String> = m
        .registry()
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    exported.sort();
    let readme = include_str!("../../README.md");
    let mut documented: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `hnc_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("hnc_{n}"))
        .collect();
    documented.sort();
    assert_eq!(documented, exported);
}
