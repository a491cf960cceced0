//! End to end: the real binary (`run`, `plan`) against the Nomad and Data Plane API doubles.

use std::time::Duration;

use crate::support::connector::{BIN, Connector};
use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options as DpOptions};
use crate::support::expo::Kind;
use crate::support::nomad::{NomadDouble, Reg};
use serde_json::{Value, json};

/// The doubles run on their own runtime's threads, so the test thread can block while it
/// waits (blocking a runtime worker would stall the doubles' tasks).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const MAPS: [&str; 6] = [
    "hnc_exact.map",
    "hnc_prefix.map",
    "hnc_suffix.map",
    "hnc_regex.map",
    "hnc_path.map",
    "hnc_redirect.map",
];
const WAIT: Duration = Duration::from_secs(15);

fn base() -> BaseConfig {
    let mut fe = FrontendSpec::new("http-in")
        .default_backend("legacy")
        .acl(json!({"acl_name": "is_admin", "criterion": "path_beg", "value": "/admin"}))
        .rule(json!({"name": "legacy", "cond": "if", "cond_test": "is_admin METH_GET"}));
    fe = fe.connector_rules("/etc/haproxy/maps");
    let mut b = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    for m in MAPS {
        b = b.map_file(m, "");
    }
    b
}

fn env(
    nomad: &NomadDouble,
    dp: &DataplaneDouble,
    extra: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("NOMAD_ADDR", nomad.url().to_string()),
        ("HAPROXY_DATAPLANE_URL", dp.url()),
        ("HAPROXY_USERNAME", dp.user()),
        ("HAPROXY_PASSWORD", dp.password()),
        ("RECONCILE_RESYNC_INTERVAL", "1s".into()),
        ("NOMAD_RESYNC_INTERVAL", "1s".into()),
        ("RECONCILE_DEBOUNCE", "20ms".into()),
        ("HAPROXY_DRAIN_TIMEOUT_SEC", "5s".into()),
    ];
    for (k, val) in extra {
        let key: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.retain(|(x, _)| *x != key);
        v.push((key, val.to_string()));
    }
    v
}

fn web(alloc: &str, ip: &str, tags: &[&str]) -> Reg {
    Reg::new("default", "web", alloc, ip, 8080).tags(Some(tags))
}

const TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=web.example.com",
    "haproxy.check.path=/health",
];

/// Serving servers of `backend` in the double's runtime: (name, address:port, check enabled).
fn serving(dp: &DataplaneDouble, backend: &str) -> Vec<(String, String, bool)> {
    let rt = dp.runtime_snapshot();
    rt["backends"][backend]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| s["admin_state"] == "ready")
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]),
                s["check_enabled"] == true,
            )
        })
        .collect()
}

fn map_entries(dp: &DataplaneDouble, map: &str) -> Vec<(String, String)> {
    dp.runtime_snapshot()["maps"][map]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e[0].as_str().unwrap_or("").to_string(),
                e[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn register_scale_change_domain_and_deregister_with_drain() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[]));

    nomad.register([web("a1", "10.0.0.1", TAGS), web("a2", "10.0.0.2", TAGS)]);
    c.wait_for("2 serving servers and the route", WAIT, |_| {
        serving(&dp, "web").len() == 2
            && map_entries(&dp, "hnc_exact.map")
                == vec![("web.example.com".to_string(), "web".to_string())]
    });
    assert!(serving(&dp, "web").iter().all(|(_, _, check)| *check));
    c.wait_for("ready", WAIT, |c| {
        c.get("/readyz").is_some_and(|(s, _)| s == 200)
    });

    // Scale up.
    nomad.register([web("a3", "10.0.0.3", TAGS)]);
    c.wait_for("3 serving servers", WAIT, |_| {
        serving(&dp, "web").len() == 3
    });

    // Deregister one: drained, then its slot freed; the route stays.
    dp.reset_counters();
    let leaving = serving(&dp, "web")
        .into_iter()
        .find(|(_, a, _)| a.starts_with("10.0.0.3"))
        .expect("slot")
        .0;
    dp.set_sessions("web", &leaving, 2);
    nomad.deregister(&[&web("a3", "10.0.0.3", TAGS).id]);
    c.wait_for("the server draining", WAIT, |_| {
        dp.runtime_server("web", &leaving)
            .is_some_and(|s| s.admin_state == "drain")
    });
    assert_eq!(
        map_entries(&dp, "hnc_exact.map").len(),
        1,
        "route kept while other instances live"
    );
    dp.set_sessions("web", &leaving, 0);
    c.wait_for("the drained server removed", WAIT, |_| {
        dp.runtime_server("web", &leaving)
            .is_some_and(|s| s.admin_state == "maint")
    });
    assert_eq!(dp.reload_count(), 0, "scaling and draining never reload");

    // Domain change: the new domain routes, the old one is gone.
    let new_tags = [
        "haproxy.enable=true",
        "haproxy.domain=shop.example.com",
        "haproxy.check.path=/health",
    ];
    nomad.set_tags(&web("a1", "10.0.0.1", TAGS).id, Some(&new_tags));
    nomad.set_tags(&web("a2", "10.0.0.2", TAGS).id, Some(&new_tags));
    c.wait_for("the route moved to the new domain", WAIT, |_| {
        map_entries(&dp, "hnc_exact.map")
            == vec![("shop.example.com".to_string(), "web".to_string())]
    });
    assert!(
        dp.validation_failures().is_empty(),
        "{:?}",
        dp.validation_failures()
    );
    assert_eq!(dp.open_transactions(), 0);
}

#[test]
fn drift_and_lost_events_are_repaired() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[]));
    nomad.register([web("a1", "10.0.0.1", TAGS), web("a2", "10.0.0.2", TAGS)]);
    c.wait_for("2 serving", WAIT, |_| serving(&dp, "web").len() == 2);
    c.wait_settled();

    // The Data Plane API (and HAProxy) restarted from the base configuration.
    dp.reset_to_base();
    c.wait_for(
        "the backend recreated within one resync",
        Duration::from_secs(5),
        |_| serving(&dp, "web").len() == 2 && map_entries(&dp, "hnc_exact.map").len() == 1,
    );
    c.wait_for("drift counted", WAIT, |c| {
        c.metrics().sum("hnc_drift_repairs_total", &[]) >= 1.0
    });

    // Nomad restarted with an empty event buffer, and an instance deleted with no event.
    nomad.restart_with_empty_buffer();
    nomad.delete_silently(&[&web("a2", "10.0.0.2", TAGS).id]);
    c.wait_for("the silently deleted instance drained away", WAIT, |_| {
        serving(&dp, "web").len() == 1
    });
}

#[test]
fn nomad_outage_and_denial_delete_nothing_and_make_it_unready() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    nomad.enable_acl();
    nomad.grant("good-token", &["*"]);
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[("NOMAD_TOKEN", "good-token")]));
    nomad.register([web("a1", "10.0.0.1", TAGS), web("a2", "10.0.0.2", TAGS)]);
    c.wait_for("converged and ready", WAIT, |c| {
        serving(&dp, "web").len() == 2 && c.get("/readyz").is_some_and(|(s, _)| s == 200)
    });

    nomad.set_outage(true);
    c.wait_for("not ready: Nomad unreachable", WAIT, |c| {
        c.get("/readyz")
            .is_some_and(|(s, b)| s == 503 && b.contains("nomad"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        serving(&dp, "web").len(),
        2,
        "nothing deleted while Nomad is unreachable"
    );
    nomad.set_outage(false);
    c.wait_for("ready again", WAIT, |c| {
        c.get("/readyz").is_some_and(|(s, _)| s == 200)
    });

    nomad.deny_token("good-token");
    c.wait_for("not ready: Nomad denied", WAIT, |c| {
        c.get("/readyz")
            .is_some_and(|(s, b)| s == 503 && b.contains("nomad_denied"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        serving(&dp, "web").len(),
        2,
        "nothing deleted while the token is refused"
    );
    let (_, status) = c.get("/status").expect("status");
    assert!(
        !status.contains("good-token"),
        "the token never shows: {status}"
    );
}

#[test]
fn everything_gone_is_held_until_confirmed_then_applied() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(
        &nomad,
        &dp,
        &[
            ("RECONCILE_MASS_DELETE_CONFIRMATIONS", "3"),
            ("RECONCILE_MASS_DELETE_HOLD", "3s"),
        ],
    ));
    let regs: Vec<Reg> = (1..=4)
        .map(|i| web(&format!("a{i}"), &format!("10.0.0.{i}"), TAGS))
        .collect();
    let ids: Vec<String> = regs.iter().map(|r| r.id.clone()).collect();
    nomad.register(regs);
    c.wait_for("4 serving", WAIT, |_| serving(&dp, "web").len() == 4);

    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    nomad.deregister(&ids);
    c.wait_for("a held pass", WAIT, |c| {
        c.metrics().sum("hnc_mass_delete_held_total", &[]) >= 1.0
    });
    let first_held = std::time::Instant::now();
    assert_eq!(serving(&dp, "web").len(), 4, "held: still serving");
    c.wait_for("not ready while held", WAIT, |c| {
        c.get("/readyz")
            .is_some_and(|(s, b)| s == 503 && b.contains("mass_delete"))
    });
    // Confirmations span real time, not the debounce pace: three passes 500 ms apart are
    // not enough.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        serving(&dp, "web").len(),
        4,
        "still held halfway through the hold"
    );
    c.wait_for("applied after the hold", WAIT, |_| {
        serving(&dp, "web").is_empty()
    });
    let took = first_held.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "applied {took:?} after the first held pass; the hold is 3s"
    );
    let held = c.metrics().sum("hnc_mass_delete_held_total", &[]);
    assert!(held >= 2.0, "held for at least two passes, got {held}");
    assert!(
        c.log_text()
            .contains("asking Nomad for a fresh full relist"),
        "the hold asked for a relist"
    );
}

#[test]
fn sigterm_mid_pass_exits_0_within_10s_with_no_open_transaction() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));

    // A pass that finishes within the grace period: it completes, then the process exits.
    dp.set_commit_delay(Duration::from_secs(2));
    let mut c = Connector::start(&env(&nomad, &dp, &[]));
    nomad.register([web("a1", "10.0.0.1", TAGS)]);
    c.wait_for("a transaction open (the pass is mid-commit)", WAIT, |_| {
        dp.open_transactions() == 1
    });
    let (code, took) = c.terminate(Duration::from_secs(12));
    assert_eq!(code, Some(0), "log:\n{}", c.log_text());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(dp.commit_count(), 1, "the pass was allowed to finish");
    assert_eq!(dp.open_transactions(), 0);

    // A pass that cannot finish within the 10 s grace: abandoned, its transaction aborted.
    dp.reset_to_base();
    dp.set_commit_delay(Duration::from_secs(30));
    let mut c = Connector::start(&env(&nomad, &dp, &[]));
    c.wait_for("a transaction open (the pass is mid-commit)", WAIT, |_| {
        dp.open_transactions() == 1
    });
    let (code, took) = c.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", c.log_text());
    assert!(took < Duration::from_secs(11), "took {took:?}");
    assert!(c.log_text().contains("abandoning it"), "{}", c.log_text());
    assert_eq!(
        dp.open_transactions(),
        0,
        "the abandoned pass's transaction was aborted"
    );
}

#[test]
fn metrics_are_prometheus_text_with_the_key_series() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[]));
    nomad.register([web("a1", "10.0.0.1", TAGS)]);
    c.wait_for("serving", WAIT, |_| serving(&dp, "web").len() == 1);
    c.wait_settled();
    let m = c.metrics();
    for (name, kind) in [
        ("hnc_passes_total", Kind::Counter),
        ("hnc_pass_duration_seconds", Kind::Histogram),
        ("hnc_event_to_applied_seconds", Kind::Histogram),
        ("hnc_plan_operations_total", Kind::Counter),
        ("hnc_haproxy_reloads_total", Kind::Counter),
        ("hnc_driver_requests_total", Kind::Counter),
        ("hnc_nomad_requests_total", Kind::Counter),
        ("hnc_nomad_stream_reconnects_total", Kind::Counter),
        ("hnc_catalog_services", Kind::Gauge),
        ("hnc_catalog_instances", Kind::Gauge),
        ("hnc_desired_backends", Kind::Gauge),
        ("hnc_desired_servers", Kind::Gauge),
        ("hnc_last_successful_pass_timestamp_seconds", Kind::Gauge),
        ("hnc_build_info", Kind::Gauge),
    ] {
        assert_eq!(m.kind(name), Some(kind), "{name}");
    }
    assert!(m.sum("hnc_passes_total", &[("result", "success")]) >= 1.0);
    assert_eq!(
        m.sum(
            "hnc_plan_operations_total",
            &[("op", "create_backend"), ("kind", "structural")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("hnc_haproxy_reloads_total", &[("reason", "structural")]),
        1.0
    );
    assert!(
        m.sum(
            "hnc_driver_requests_total",
            &[("endpoint", "backends"), ("status", "200")]
        ) >= 1.0
    );
    assert!(m.sum("hnc_nomad_requests_total", &[("endpoint", "list")]) >= 1.0);
    assert_eq!(m.sum("hnc_catalog_services", &[]), 1.0);
    assert_eq!(m.sum("hnc_desired_servers", &[]), 1.0);
    assert!(m.sum("hnc_event_to_applied_seconds_count", &[]) >= 1.0);
    assert!(m.sum("hnc_last_successful_pass_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(
        m.sum("hnc_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
}

/// The running connector builds its clients with handles from its registry: after a pass,
/// `/metrics` times the Data Plane API and Nomad requests by endpoint and status (the driver's
/// by driver too), and counts them as many times as it times them.
#[test]
fn request_durations_are_exported_by_driver_endpoint_and_status() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[]));
    nomad.register([web("a1", "10.0.0.1", TAGS)]);
    c.wait_for("serving", WAIT, |_| serving(&dp, "web").len() == 1);
    c.wait_settled();
    let m = c.metrics();
    assert_eq!(
        m.kind("hnc_haproxy_request_duration_seconds"),
        Some(Kind::Histogram)
    );
    assert_eq!(
        m.kind("hnc_nomad_request_duration_seconds"),
        Some(Kind::Histogram)
    );
    let driver = [
        ("driver", "dataplane"),
        ("endpoint", "backends"),
        ("status", "200"),
    ];
    assert!(m.sum("hnc_haproxy_request_duration_seconds_count", &driver) >= 1.0);
    assert!(
        m.sum(
            "hnc_haproxy_request_duration_seconds_count",
            &[
                ("driver", "dataplane"),
                ("endpoint", "transactions"),
                ("status", "201")
            ]
        ) >= 1.0
    );
    let list = [("endpoint", "list"), ("status", "200")];
    assert!(m.sum("hnc_nomad_request_duration_seconds_count", &list) >= 1.0);
    assert!(
        m.sum(
            "hnc_nomad_request_duration_seconds_count",
            &[("endpoint", "stream"), ("status", "200")]
        ) >= 1.0
    );
    // One recording path: the counters move with the histograms (read from one scrape).
    assert_eq!(
        m.sum("hnc_driver_requests_total", &driver[1..]),
        m.sum("hnc_haproxy_request_duration_seconds_count", &driver)
    );
    assert_eq!(
        m.sum("hnc_nomad_requests_total", &list),
        m.sum("hnc_nomad_request_duration_seconds_count", &list)
    );
}

#[test]
fn event_to_applied_latency_and_idle_pass_cost() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let c = Connector::start(&env(&nomad, &dp, &[("RECONCILE_RESYNC_INTERVAL", "2s")]));
    nomad.register([web("a0", "10.0.0.250", TAGS)]);
    c.wait_for("serving", WAIT, |_| serving(&dp, "web").len() == 1);
    // 200 registrations, one at a time, each waited for.
    for i in 1..=200u32 {
        let ip = format!("10.1.{}.{}", i / 200, i % 200 + 1);
        nomad.register([web(&format!("r{i}"), &ip, TAGS)]);
        c.wait_for("the instance serving", WAIT, |_| {
            serving(&dp, "web").len() == i as usize + 1
        });
    }
    let m = c.metrics();
    let p50 = m
        .histogram_quantile("hnc_event_to_applied_seconds", 0.5)
        .expect("p50");
    let p99 = m
        .histogram_quantile("hnc_event_to_applied_seconds", 0.99)
        .expect("p99");
    println!(
        "event-to-applied over {} passes: p50 <= {p50}s, p99 <= {p99}s",
        m.sum("hnc_event_to_applied_seconds_count", &[])
    );
    assert!(p99 <= 1.0, "p99 {p99}s");

    // An idle resync pass: count the Data Plane API requests of one quiet interval.
    c.wait_settled();
    let before = c.metrics().sum("hnc_passes_total", &[]);
    dp.reset_counters();
    c.wait_for("one more pass", WAIT, |c| {
        c.metrics().sum("hnc_passes_total", &[]) >= before + 1.0
    });
    let requests = dp.total_requests();
    println!("Data Plane API requests in one idle pass: {requests}");
    // full_section, native stats and the six maps (hnc_path.map and hnc_redirect.map are new).
    assert!(requests <= 8, "{:?}", dp.requests());
}

fn plan_cmd(
    nomad: &NomadDouble,
    dp_url: &str,
    user: &str,
    password: &str,
    json: bool,
) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("plan").env_clear();
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .env("NOMAD_ADDR", nomad.url())
        .env("HAPROXY_DATAPLANE_URL", dp_url)
        .env("HAPROXY_USERNAME", user)
        .env("HAPROXY_PASSWORD", password)
        .output()
        .expect("run plan");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn plan_exit_codes() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let (code, out, err) = plan_cmd(&nomad, &dp.url(), &dp.user(), &dp.password(), false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("No changes"), "{out}");

    nomad.register([web("a1", "10.0.0.1", TAGS)]);
    let (code, out, err) = plan_cmd(&nomad, &dp.url(), &dp.user(), &dp.password(), false);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("+ create backend web"), "{out}");
    // The plan is computed for the driver: the server goes into a slot created with its backend,
    // and the pass will cost exactly one reload, for that reason.
    assert!(
        out.contains("+ grow backend web to 4 server slots (+4, filled: hnc_slot_0001 10.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("Reloads: 1\n  structural: create backend web\n"),
        "{out}"
    );
    let (code, out, _) = plan_cmd(&nomad, &dp.url(), &dp.user(), &dp.password(), true);
    assert_eq!(code, Some(2));
    let v: Value = serde_json::from_str(&out).expect("JSON plan");
    assert_eq!(v["changes"], true);
    assert_eq!(v["summary"]["create_backend"], 1);
    assert_eq!(v["reload_count"], 1, "{v:#}");
    assert_eq!(v["reloads"][0]["reason"], "structural", "{v:#}");
    assert_eq!(
        v["reloads"][0]["changes"][0],
        serde_json::json!({"change": "create_backend", "backend": "web"}),
        "{v:#}"
    );
    assert_eq!(dp.commit_count(), 0, "plan applies nothing");

    let dead = format!("http://127.0.0.1:{}", crate::support::haproxy::free_port());
    let (code, _, err) = plan_cmd(&nomad, &dead, "admin", "x", false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot observe HAProxy"), "{err}");
}

#[test]
fn an_unreachable_dataplane_api_makes_it_unready_with_that_reason() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(base(), DpOptions::fast()));
    let dead = format!("http://127.0.0.1:{}", crate::support::haproxy::free_port());
    let c = Connector::start(&env(&nomad, &dp, &[("HAPROXY_DATAPLANE_URL", &dead)]));
    c.wait_for("not ready: HAProxy unreachable", WAIT, |c| {
        c.get("/readyz")
            .is_some_and(|(s, b)| s == 503 && b.contains("haproxy_unreachable"))
    });
    // Wrong credentials are refused, not unreachable.
    let c2 = Connector::start(&env(&nomad, &dp, &[("HAPROXY_PASSWORD", "wrong")]));
    c2.wait_for("a failed pass", WAIT, |c| {
        c.get("/readyz")
            .is_some_and(|(s, b)| s == 503 && b.contains("last_pass_failed"))
    });
    let (_, body) = c2.get("/readyz").expect("readyz");
    assert!(!body.contains("haproxy_unreachable"), "{body}");
}
