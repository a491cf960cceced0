//! Router tests with `oneshot` (no socket) and a fake clock, plus one test over TCP.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::status::scrub;
use super::*;
use crate::desired::{Diagnostic, Reason, Severity};
use crate::metrics::expo;
use crate::plan::{OpKind, PendingDrain};
use crate::reconcile::{PassReport, PassResult, PlannedOp};

const RESYNC: Duration = Duration::from_secs(30);

/// A status board, its metrics and a clock the test moves by hand.
struct Fixture {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl Fixture {
    fn new() -> Fixture {
        let start = Instant::now();
        Fixture {
            start,
            offset: Arc::new(Mutex::new(Duration::ZERO)),
            status: Arc::new(Status::new(RESYNC, start)),
            metrics: Arc::new(Metrics::new("9.9.9").expect("metrics")),
        }
    }

    /// The fake time `secs` after the start.
    fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }

    /// Moves the handlers' clock to `secs` after the start.
    fn set_clock(&self, secs: u64) {
        *self.offset.lock().expect("clock") = Duration::from_secs(secs);
    }

    fn state(&self) -> AppState {
        let (start, offset) = (self.start, Arc::clone(&self.offset));
        AppState::new(Arc::clone(&self.metrics), Arc::clone(&self.status))
            .with_clock(move || start + *offset.lock().expect("clock"))
    }

    fn pass(&self, result: PassResult, secs: u64) {
        let mut report = PassReport::new(
            result,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
            Duration::from_millis(25),
        );
        let op = |name, kind| PlannedOp { name, kind };
        report.ops = vec![
            op("add_server", OpKind::Runtime),
            op("create_backend", OpKind::Structural),
            op("add_server", OpKind::Runtime),
        ];
        report.error = (result == PassResult::Error)
            .then(|| "cannot apply the plan: HAProxy unreachable".to_string());
        self.status.record_pass(&report, self.at(secs));
    }

    async fn call(&self, method: Method, path: &str) -> (StatusCode, Response) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let resp = router(self.state()).oneshot(req).await.expect("infallible");
        (resp.status(), resp)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let (code, resp) = self.call(Method::GET, path).await;
        (code, body_text(resp).await)
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (code, resp) = self.call(Method::GET, path).await;
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        let text = body_text(resp).await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        (code, value)
    }
}

async fn body_text(resp: Response) -> String {
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

#[tokio::test]
async fn healthz_follows_the_heartbeat() {
    let f = Fixture::new();
    // Creation counts as a heartbeat: live while starting.
    let (code, body) = f.get_json("/healthz").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["alive"], true);

    f.set_clock(90); // exactly 3 resync intervals: still alive
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);

    f.set_clock(91);
    let (code, body) = f.get_json("/healthz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"alive": false, "seconds_since_heartbeat": 91.0})
    );

    f.status.beat(f.at(91));
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);

    // A pass is a heartbeat too.
    f.set_clock(200);
    assert_eq!(f.get("/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    f.pass(PassResult::Noop, 199);
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn healthz_window_follows_the_resync_interval() {
    let f = Fixture::new();
    f.status.set_resync_interval(Duration::from_secs(5));
    f.set_clock(16);
    assert_eq!(f.get("/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn not_ready_before_the_first_successful_converge() {
    let f = Fixture::new();
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["not_yet_converged"]})
    );

    // A failed first pass adds its own reason.
    f.pass(PassResult::Error, 1);
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["not_yet_converged", "last_pass_failed"]})
    );
}

#[tokio::test]
async fn ready_after_a_successful_pass() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 2);
    f.set_clock(3);
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, json!({"ready": true}));

    // A noop pass (nothing to do) also counts as a success.
    let g = Fixture::new();
    g.pass(PassResult::Noop, 0);
    assert_eq!(g.get("/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn conditions_make_it_not_ready_until_cleared() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 0);
    f.status.set_condition(Condition::NomadDenied, true);
    f.status.set_condition(Condition::HaproxyUnreachable, true);
    f.status.set_condition(Condition::NomadUnreachable, true);
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["nomad_unreachable", "nomad_denied", "haproxy_unreachable"]})
    );

    f.status.set_condition(Condition::NomadDenied, false);
    f.status.set_condition(Condition::NomadUnreachable, false);
    let (_, body) = f.get_json("/readyz").await;
    assert_eq!(body["reasons"], json!(["haproxy_unreachable"]));

    f.status.set_condition(Condition::HaproxyUnreachable, false);
    assert_eq!(f.get("/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_failed_or_held_pass_is_a_reason_until_the_next_success() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 0);
    f.pass(PassResult::Error, 30);
    f.set_clock(31);
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reasons"], json!(["last_pass_failed"]));

    f.pass(PassResult::Held, 60);
    f.set_clock(61);
    let (_, body) = f.get_json("/readyz").await;
    assert_eq!(body["reasons"], json!(["mass_delete_held"]));

    f.pass(PassResult::Success, 90);
    f.set_clock(91);
    assert_eq!(f.get("/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn not_ready_when_the_last_success_is_stale() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 10);
    f.set_clock(100); // 90 s = 3 resync intervals: still fresh
    assert_eq!(f.get("/readyz").await.0, StatusCode::OK);

    f.set_clock(101);
    f.status.beat(f.at(101)); // alive, but nothing has succeeded for too long
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["last_success_stale"]})
    );
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_turns_false_when_shutdown_starts() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 0);
    assert_eq!(f.get("/readyz").await.0, StatusCode::OK);
    f.status.begin_shutdown();
    let (code, body) = f.get_json("/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"ready": false, "reasons": ["shutting_down"]}));
    // A pass finishing during shutdown does not make it ready again.
    f.pass(PassResult::Success, 1);
    assert_eq!(f.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Liveness is unaffected.
    assert_eq!(f.get("/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let f = Fixture::new();
    f.metrics.record_pass(&PassReport::new(
        PassResult::Success,
        UNIX_EPOCH,
        Duration::from_millis(40),
    ));
    f.metrics.set_catalog(3, 7);
    let (code, resp) = f.call(Method::GET, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    let text = body_text(resp).await;
    let families = expo::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        families["hnc_passes_total"].value("hnc_passes_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        families["hnc_catalog_instances"].value("hnc_catalog_instances", &[]),
        Some(7.0)
    );
    assert_eq!(
        families["hnc_build_info"].value("hnc_build_info", &[("version", "9.9.9")]),
        Some(1.0)
    );
    assert_eq!(
        families["hnc_pass_duration_seconds"].kind,
        expo::Kind::Histogram
    );
}

#[tokio::test]
async fn the_scrape_hook_copies_external_counts_in_before_each_render() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let f = Fixture::new();
    let requests = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&requests);
    let state = f.state().on_scrape(move |m| {
        m.sync_counter(
            &m.nomad_requests,
            &["/v1/services", "200"],
            seen.load(Ordering::Relaxed),
        );
    });
    let scrape = || async {
        let req = Request::get("/metrics")
            .body(Body::empty())
            .expect("request");
        let resp = router(state.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let text = body_text(resp).await;
        let families = expo::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        families["hnc_nomad_requests_total"].value(
            "hnc_nomad_requests_total",
            &[("endpoint", "/v1/services"), ("status", "200")],
        )
    };
    requests.store(3, Ordering::Relaxed);
    assert_eq!(scrape().await, Some(3.0));
    assert_eq!(scrape().await, Some(3.0), "no double counting");
    requests.store(10, Ordering::Relaxed);
    assert_eq!(scrape().await, Some(10.0));
}

fn mk_diag() -> Diagnostic {
    Diagnostic {
        namespace: "prod".into(),
        service: "api".into(),
        severity: Severity::Skipped,
        reason: Reason::InvalidTag,
        tag: Some("haproxy.check.path=x y".into()),
        value: Some("x y".into()),
        message: "not a path".into(),
    }
}

#[tokio::test]
async fn status_reports_pass_diagnostics_drains_nomad_and_driver() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 5);
    f.pass(PassResult::Error, 35);
    f.status.set_diagnostics(vec![mk_diag()]);
    f.status.set_pending_drains(vec![PendingDrain {
        backend: "api".into(),
        server: "srv_10_0_0_1_8080".into(),
        sessions: 3,
        remaining: Duration::from_millis(12_500),
    }]);
    f.status.set_nomad(NomadState {
        connected: true,
        synced: true,
        last_index: 4242,
        reconnects: 1,
        last_error: None,
    });
    f.status.set_driver(DriverState {
        name: "dataplane".into(),
        last_error: Some("HAProxy unreachable: connection refused".into()),
        reloads: 4,
        recent_reload_reasons: vec!["backend api created".into()],
    });
    f.set_clock(40);
    let (code, s) = f.get_json("/status").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "/status answers 200 even when not ready"
    );
    assert_eq!(s["ready"], false);
    assert_eq!(s["reasons"], json!(["last_pass_failed"]));
    assert_eq!(s["alive"], true);
    assert_eq!(s["resync_interval_seconds"], 30.0);
    assert_eq!(
        s["last_pass"],
        json!({
            "at": "2023-11-14T22:13:55.000Z",
            "at_unix": 1_700_000_035.0,
            "duration_ms": 25.0,
            "result": "error",
            "plan": {"add_server": 2, "create_backend": 1},
            "error": "cannot apply the plan: HAProxy unreachable",
        })
    );
    assert_eq!(
        s["last_success"],
        json!({"at": "2023-11-14T22:13:25.000Z", "at_unix": 1_700_000_005.0, "seconds_ago": 35.0})
    );
    assert_eq!(
        s["passes"],
        json!({"success": 1, "noop": 0, "error": 1, "held": 0})
    );
    assert_eq!(
        s["diagnostics"],
        json!([{
            "namespace": "prod", "service": "api", "severity": "skipped", "reason": "invalid_tag",
            "tag": "haproxy.check.path=x y", "value": "x y", "message": "not a path",
        }])
    );
    assert_eq!(
        s["pending_drains"],
        json!([{"backend": "api", "server": "srv_10_0_0_1_8080", "sessions": 3, "remaining": 12.5}])
    );
    assert_eq!(
        s["nomad"],
        json!({"connected": true, "synced": true, "last_index": 4242, "reconnects": 1, "last_error": null})
    );
    assert_eq!(
        s["driver"],
        json!({"name": "dataplane", "last_error": "HAProxy unreachable: connection refused",
               "reloads": 4, "recent_reload_reasons": ["backend api created"]})
    );
}

#[tokio::test]
async fn status_before_any_pass() {
    let f = Fixture::new();
    let (code, s) = f.get_json("/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["ready"], false);
    assert_eq!(s["reasons"], json!(["not_yet_converged"]));
    assert_eq!(s["last_pass"], Value::Null);
    assert_eq!(s["last_success"], Value::Null);
    assert_eq!(s["diagnostics"], json!([]));
    assert_eq!(s["pending_drains"], json!([]));
}

/// Every key of a JSON document, at any depth.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn status_shows_no_secrets() {
    let f = Fixture::new();
    let mut report = PassReport::new(PassResult::Error, UNIX_EPOCH, Duration::ZERO);
    report.error = Some(
        "error sending request for url (http://admin:hunter2@lb:5555/v3/info): Authorization: Basic YWRtaW46aHVudGVyMg=="
            .into(),
    );
    f.status.record_pass(&report, f.at(0));
    f.status.set_nomad(NomadState {
        last_error: Some(
            "GET https://nomad.example:4646/v1/services?token=7a4ef0b4-secret-uuid: 403 (X-Nomad-Token: 7a4ef0b4-secret-uuid)".into(),
        ),
        ..NomadState::default()
    });
    f.status.set_driver(DriverState {
        name: "dataplane".into(),
        last_error: Some("password=hunter2 rejected; Bearer abc.def.ghi".into()),
        ..DriverState::default()
    });
    let (_, s) = f.get_json("/status").await;
    let text = s.to_string();
    for secret in [
        "hunter2",
        "YWRtaW46aHVudGVyMg",
        "7a4ef0b4-secret-uuid",
        "abc.def.ghi",
        "admin:",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // The useful part of each message survives.
    assert!(text.contains("http://<redacted>@lb:5555/v3/info"), "{text}");
    assert!(text.contains("403"), "{text}");
    // No field is named like a secret.
    let mut all = Vec::new();
    keys(&s, &mut all);
    for k in all {
        let k = k.to_ascii_lowercase();
        for bad in [
            "token",
            "password",
            "secret",
            "auth",
            "credential",
            "url",
            "address",
        ] {
            assert!(!k.contains(bad), "field `{k}` in /status");
        }
    }
}

#[test]
fn scrub_keeps_plain_text_and_removes_credentials() {
    assert_eq!(scrub("connection refused"), "connection refused");
    assert_eq!(
        scrub("http://lb:5555/v3 timed out"),
        "http://lb:5555/v3 timed out"
    );
    assert_eq!(
        scrub("https://u:p@h/x and unix://a@b"),
        "https://<redacted>@h/x and unix://<redacted>@b"
    );
    // A password holding `@` is redacted whole, up to the authority's last `@`.
    assert_eq!(
        scrub("http://u:p@ss@h:1/x failed"),
        "http://<redacted>@h:1/x failed"
    );
    assert_eq!(scrub("?token=abc&x=1"), "?token=<redacted>&x=1");
    assert_eq!(scrub("NOMAD_TOKEN: abc def"), "NOMAD_TOKEN: <redacted> def");
    assert_eq!(scrub("basic Zm9vOmJhcg=="), "basic <redacted>");
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let f = Fixture::new();
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        let (get_code, _) = f.call(Method::GET, path).await;
        let (code, resp) = f.call(Method::HEAD, path).await;
        assert_eq!(code, get_code, "{path}");
        assert_eq!(body_text(resp).await, "", "{path}");
    }
}

#[tokio::test]
async fn other_methods_are_not_allowed() {
    let f = Fixture::new();
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let (code, resp) = f.call(method.clone(), path).await;
            assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let allow = resp.headers()[header::ALLOW].to_str().expect("ascii");
            assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
        }
    }
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let f = Fixture::new();
    for path in ["/", "/health", "/healthz/", "/metrics/x", "/status.json"] {
        let (code, body) = f.get(path).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, "not found\n");
    }
    assert_eq!(f.call(Method::POST, "/nope").await.0, StatusCode::NOT_FOUND);
}

/// Sends one HTTP/1.1 request over TCP and returns the whole response.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn serves_over_tcp_and_shuts_down_gracefully() {
    let f = Fixture::new();
    f.pass(PassResult::Success, 0);
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, f.state(), async {
        let _ = stopped.await;
    }));

    let response = raw_get(addr, "/readyz").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("{\"ready\":true}"), "{response}");
    let response = raw_get(addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.contains("hnc_build_info{version=\"9.9.9\"} 1"),
        "{response}"
    );

    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after the shutdown signal")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_forever_for_a_stalled_client() {
    let f = Fixture::new();
    let listener = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_secs(2);
    let server = tokio::spawn(serve_with_grace(
        listener,
        f.state(),
        async {
            let _ = stopped.await;
        },
        grace,
    ));
    // A client that sends half a request and then nothing.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tokio::task::yield_now().await;

    let asked = tokio::time::Instant::now();
    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(grace * 2, server)
        .await
        .expect("serve returns after the grace period")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
    assert!(asked.elapsed() >= grace, "waited the grace period first");
    drop(stalled);
}

#[tokio::test]
async fn bind_names_the_address_on_failure() {
    let taken = bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let e = bind(addr).await.expect_err("port in use");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on {addr} (http.listen): ")),
        "{e}"
    );
}
