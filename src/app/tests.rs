//! The loop's reporting wiring: one pass's report drives both the metrics and the status board.

use std::collections::BTreeMap;

use axum::body::{Body, to_bytes};
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::desired::{Desired, Diagnostic, Reason, Severity};
use crate::haproxy::{Cause, Reload};
use crate::metrics::expo::{self, Family};
use crate::plan::{Action, Op, ReloadReason, StructuralChange};
use crate::reconcile::pass::{PassError, PassOutcome};

/// GETs `path` from the admin router over `metrics` and `status`.
async fn get(metrics: &Arc<Metrics>, status: &Arc<Status>, path: &str) -> String {
    let state = AppState::new(metrics.clone(), status.clone());
    let req = Request::get(path).body(Body::empty()).expect("request");
    let resp = http::router(state).oneshot(req).await.expect("infallible");
    let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

async fn scrape(metrics: &Arc<Metrics>, status: &Arc<Status>) -> BTreeMap<String, Family> {
    let text = get(metrics, status, "/metrics").await;
    expo::parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"))
}

async fn status_doc(metrics: &Arc<Metrics>, status: &Arc<Status>) -> Value {
    serde_json::from_str(&get(metrics, status, "/status").await).expect("JSON")
}

/// A pass that applied a backend removal and a drain, caused one reload and skipped one service.
fn applied_outcome() -> PassOutcome {
    let desired = Desired {
        diagnostics: vec![Diagnostic {
            namespace: "default".into(),
            service: "bad".into(),
            severity: Severity::Skipped,
            reason: Reason::InvalidTag,
            tag: Some("haproxy.weight=x".into()),
            value: Some("x".into()),
            message: "not a number".into(),
        }],
        ..Desired::default()
    };
    let plan = Plan {
        ops: vec![
            Op::new(
                Action::DeleteBackend {
                    backend: "old".into(),
                },
                "gone",
            ),
            Op::new(
                Action::DrainServer {
                    backend: "web".into(),
                    server: "hnc_10.0.0.1_80".into(),
                },
                "deregistered",
            ),
        ],
        pending_drains: vec![],
        ..Plan::default()
    };
    PassOutcome {
        desired,
        live: Live::default(),
        plan,
        report: Some(ApplyReport {
            reloads: vec![Reload::new(ReloadReason::Structural {
                changes: vec![StructuralChange::DeleteBackend {
                    backend: "old".into(),
                }],
            })],
            applied: 2,
            requests: 4,
            refused: vec![],
        }),
        attempts: 1,
        held_untrusted: 0,
        held_mass_delete: None,
    }
}

#[tokio::test]
async fn one_pass_report_drives_the_metrics_and_the_status_board() {
    let metrics = Arc::new(Metrics::new("test").expect("metrics"));
    let status = Arc::new(Status::new(Duration::from_secs(30), Instant::now()));
    status.set_driver_name("dataplane");
    let snapshot = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    let (_tx, catalog) = watch::channel(Arc::new(snapshot.clone()));
    let mut on_pass = report_pass(
        metrics.clone(),
        status.clone(),
        Arc::new(NomadStats::default()),
        catalog,
    );

    // A successful pass.
    let started = tokio::time::Instant::now();
    let report = PassReport::from_outcome(&snapshot, Ok(applied_outcome()), started, false, None);
    on_pass(&report);

    let m = scrape(&metrics, &status).await;
    let value = |family: &str, labels: &[(&str, &str)]| m[family].value(family, labels);
    assert_eq!(
        value("hnc_passes_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            "hnc_plan_operations_total",
            &[("op", "delete_backend"), ("kind", "structural")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "hnc_plan_operations_total",
            &[("op", "drain_server"), ("kind", "runtime")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("hnc_haproxy_reloads_total", &[("reason", "structural")]),
        Some(1.0)
    );
    assert_eq!(
        value("hnc_skipped_services", &[("reason", "invalid_tag")]),
        Some(1.0)
    );
    assert!(value("hnc_last_successful_pass_timestamp_seconds", &[]).is_some_and(|t| t > 1.7e9));
    let s = status_doc(&metrics, &status).await;
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["last_pass"]["result"], "success");
    assert_eq!(
        s["last_pass"]["plan"],
        json!({"delete_backend": 1, "drain_server": 1})
    );
    assert_eq!(
        s["driver"],
        json!({"name": "dataplane", "last_error": null, "reloads": 1,
               "recent_reload_reasons": ["delete backend old"]})
    );
    assert_eq!(s["diagnostics"][0]["service"], "bad");
    assert_eq!(
        s["passes"],
        json!({"success": 1, "noop": 0, "error": 0, "held": 0})
    );

    // HAProxy unreachable: both sides record the failure from the same report; the model of the
    // last good pass stays on the board.
    let failed = PassReport::from_outcome(
        &snapshot,
        Err(PassError::Observe(DriverError::Unreachable(
            Cause::message("connection refused"),
        ))),
        tokio::time::Instant::now(),
        false,
        None,
    );
    on_pass(&failed);
    let m = scrape(&metrics, &status).await;
    assert_eq!(
        m["hnc_passes_total"].value("hnc_passes_total", &[("result", "error")]),
        Some(1.0)
    );
    assert_eq!(
        m["hnc_plan_operations_total"].value(
            "hnc_plan_operations_total",
            &[("op", "drain_server"), ("kind", "runtime")]
        ),
        Some(1.0),
        "a failed pass applies nothing"
    );
    let s = status_doc(&metrics, &status).await;
    assert_eq!(s["ready"], false);
    assert_eq!(
        s["reasons"],
        json!(["haproxy_unreachable", "last_pass_failed"])
    );
    assert_eq!(s["last_pass"]["result"], "error");
    assert_eq!(
        s["driver"]["last_error"],
        "cannot observe HAProxy: HAProxy unreachable: connection refused"
    );
    assert_eq!(s["driver"]["reloads"], 1);
    assert_eq!(s["diagnostics"][0]["service"], "bad");
}

#[tokio::test]
async fn a_taken_listen_address_stops_run_keeping_the_bind_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut config = Config::from_layer(&crate::config::Layer::default()).expect("defaults");
    config.http.listen = addr;
    let (_stop, stopped) = watch::channel(false);
    let e = run(config, stopped).await.expect_err("address in use");
    assert!(
        matches!(&e, AppError::Listen(HttpError::Bind { addr: a, .. }) if *a == addr),
        "{e:?}"
    );
    let io = std::error::Error::source(&e)
        .and_then(|s| s.source())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error below the bind error");
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(
        e.to_string(),
        format!("cannot start: cannot listen on {addr} (http.listen): {io}")
    );
}
