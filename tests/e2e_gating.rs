//! Gating on Nomad's own checks (`nomad.gate_on_checks`), end to end: the real binary, the Nomad
//! double answering `/v1/client/allocation/<id>/checks` as Nomad does, and
//! - real HAProxy through the runtime driver with real traffic (HAProxy's own check disabled,
//!   so only Nomad's verdict takes an instance out): a failing instance stops getting requests
//!   within one check interval plus one pass, is drained then put in maintenance (never deleted),
//!   and takes requests again when its checks pass, with no reload;
//! - the Data Plane API driver against its double: the same states as runtime writes, no reload.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::connector::Connector;
use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options as DpOptions};
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use crate::support::nomad::{NomadDouble, Reg};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::CheckHealth;
use haproxy_nomad_connector::config::{Config, Layer, Secret};
use haproxy_nomad_connector::model::route_rules;
use haproxy_nomad_connector::nomad::{NomadClient, NomadStats};

const WAIT: Duration = Duration::from_secs(20);
const DOMAIN: &str = "gated.example.test";
/// The Nomad check interval the job declares.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// One pass: the check poll (the resync interval, 1 s here) and the reconcile pass after it.
const PASS: Duration = Duration::from_secs(2);
const TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=gated.example.test",
    "haproxy.check.disabled=true",
];
const MAPS: [&str; 4] = [
    "hnc_exact.map",
    "hnc_prefix.map",
    "hnc_suffix.map",
    "hnc_regex.map",
];

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The job `app-job` declares an HTTP check for the service `app`, every second.
fn put_checked_job(nomad: &NomadDouble) {
    nomad.put_job(
        "default",
        "app-job",
        json!({"TaskGroups": [{"Name": "app", "Services": [{"Name": "app", "Provider": "nomad",
            "Checks": [{"Name": "alive", "Type": "http", "Path": "/health", "Method": "GET",
                        "Interval": 1_000_000_000u64, "Timeout": 500_000_000u64}]}]}]}),
    );
}

pub(crate) fn env(nomad: &NomadDouble, gate: bool) -> Vec<(&'static str, String)> {
    vec![
        ("NOMAD_ADDR", nomad.url().to_string()),
        ("NOMAD_GATE_ON_CHECKS", gate.to_string()),
        ("HAPROXY_DRAIN_TIMEOUT_SEC", "5s".into()),
        ("RECONCILE_RESYNC_INTERVAL", "1s".into()),
        ("NOMAD_RESYNC_INTERVAL", "1s".into()),
        ("RECONCILE_DEBOUNCE", "20ms".into()),
    ]
}

/// Real HAProxy (runtime driver), the Nomad double and the connector; also used by
/// [`crate::e2e_canary`].
pub(crate) struct World {
    _rt: tokio::runtime::Runtime,
    pub(crate) nomad: NomadDouble,
    pub(crate) lb: Haproxy,
    pub(crate) connector: Connector,
    pub(crate) port: u16,
    _files: tempfile::TempDir,
}

impl World {
    /// `gate`: `nomad.gate_on_checks`.
    pub(crate) fn start(gate: bool) -> World {
        let rt = runtime();
        let nomad = rt.block_on(NomadDouble::start());
        let files = tempfile::tempdir().expect("tempdir");
        let maps = files.path().join("maps");
        let confd = files.path().join("conf.d");
        std::fs::create_dir_all(&maps).expect("maps dir");
        std::fs::create_dir_all(&confd).expect("conf.d");
        for kind in MAPS {
            std::fs::write(maps.join(kind), "").expect("map file");
        }
        let maps_dir = maps.display().to_string();
        let port = haproxy::free_port();
        let mut rules = String::new();
        for (expr, cond) in route_rules(&maps_dir) {
            rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
        }
        let body = format!(
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n{rules}    default_backend hand_default\n\n\
             backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n"
        );
        let lb = Haproxy::start_with(&body, std::slice::from_ref(&confd));
        let mut env = env(&nomad, gate);
        env.extend([
            ("HAPROXY_DRIVER", "runtime".to_string()),
            (
                "HAPROXY_MASTER_SOCKET",
                lb.master_socket.display().to_string(),
            ),
            (
                "HAPROXY_ADMIN_SOCKET",
                lb.admin_socket.display().to_string(),
            ),
            (
                "HAPROXY_FRAGMENT",
                confd.join("hnc.cfg").display().to_string(),
            ),
            ("HAPROXY_MAPS_DIR", maps_dir),
            ("HAPROXY_BINARY", lb.bin.display().to_string()),
            ("HAPROXY_CONFIG", lb.config.display().to_string()),
        ]);
        let connector = Connector::start(&env);
        World {
            _rt: rt,
            nomad,
            lb,
            connector,
            port,
            _files: files,
        }
    }

    /// `address:port` → admin state bits (`srv_admin_state`: 0x01 maintenance, 0x08 drain) of
    /// every server of `backend` with an address, per `show servers state`.
    pub(crate) fn admin_states(&self, backend: &str) -> BTreeMap<String, u32> {
        self.lb
            .admin(&format!("show servers state {backend}"))
            .lines()
            .skip(2)
            .filter_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c.len() > 18 && c[4] != "0.0.0.0" && c[4] != "-").then(|| {
                    (
                        format!("{}:{}", c[4], c[18]),
                        c[6].parse().unwrap_or(u32::MAX),
                    )
                })
            })
            .collect()
    }

    /// The master's reload counter (`show proc`).
    pub(crate) fn reloads(&self) -> u64 {
        self.lb
            .master("show proc")
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .expect("master line in show proc")
    }

    pub(crate) fn wait(&self, what: &str, within: Duration, mut cond: impl FnMut(&World) -> bool) {
        let deadline = Instant::now() + within;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out ({within:?}) waiting for {what}\nconnector log:\n{}\nHAProxy log:\n{}",
                self.connector.log_text(),
                self.lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Names answering `n` requests.
fn answers(port: u16, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match http::get(port, DOMAIN, "/") {
            Ok((200, body)) => body,
            Ok((status, _)) => format!("status {status}"),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

#[test]
fn a_failing_instance_stops_getting_traffic_and_comes_back_without_reload() {
    let w = World::start(true);
    put_checked_job(&w.nomad);
    let instances: Vec<Instance> = (0..3).map(|i| Instance::start(&format!("i{i}"))).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", instances[i].port);
    // i0 and i1 belong to the checked job; i2's job declares no check (never gated, never read).
    w.nomad.register([
        Reg::new("default", "app", "a0", "127.0.0.1", instances[0].port).tags(Some(TAGS)),
        Reg::new("default", "app", "a1", "127.0.0.1", instances[1].port).tags(Some(TAGS)),
        Reg::new("default", "app", "a2", "127.0.0.1", instances[2].port)
            .tags(Some(TAGS))
            .job("plain-job"),
    ]);
    w.nomad.set_check("a0", "app", "alive", "success");
    w.nomad.set_check("a1", "app", "alive", "success");
    w.wait("3 ready servers", WAIT, |w| {
        let s = w.admin_states("app");
        s.len() == 3 && s.values().all(|a| *a == 0)
    });
    let all: std::collections::BTreeSet<String> = answers(w.port, 30).into_iter().collect();
    assert_eq!(all, ["i0", "i1", "i2"].map(String::from).into());
    w.connector.wait_settled();
    let reloads = w.reloads();
    let connector_reloads = w.connector.metrics().sum("hnc_haproxy_reloads_total", &[]);

    // i1's Nomad check fails (HAProxy's own check is disabled: only Nomad's verdict counts).
    w.nomad.set_check("a1", "app", "alive", "failure");
    let failed_at = Instant::now();
    w.wait(
        "no request to i1",
        CHECK_INTERVAL + PASS + Duration::from_secs(2),
        |w| answers(w.port, 6).iter().all(|a| a != "i1"),
    );
    let took = failed_at.elapsed();
    // Drained, then in maintenance once drained; the server is kept.
    w.wait("i1 in maintenance", WAIT, |w| {
        w.admin_states("app")
            .get(&addr(1))
            .is_some_and(|a| a & 0x01 != 0)
    });
    let states = w.admin_states("app");
    assert_eq!(
        states.len(),
        3,
        "never deleted for failing checks: {states:?}"
    );
    assert_eq!(states[&addr(0)], 0);
    assert_eq!(states[&addr(2)], 0, "no check declared: unaffected");
    let seen = answers(w.port, 60);
    assert!(seen.iter().all(|a| a == "i0" || a == "i2"), "{seen:?}");
    assert!(
        took <= CHECK_INTERVAL + PASS + Duration::from_secs(2),
        "traffic stopped after {took:?}"
    );

    // Passing again: back in rotation.
    w.nomad.set_check("a1", "app", "alive", "success");
    w.wait("i1 ready again", WAIT, |w| {
        w.admin_states("app").get(&addr(1)) == Some(&0)
    });
    w.wait("i1 answers again", WAIT, |w| {
        answers(w.port, 12).iter().any(|a| a == "i1")
    });
    assert_eq!(w.reloads(), reloads, "gating is run-time only: no reload");
    assert_eq!(
        w.connector.metrics().sum("hnc_haproxy_reloads_total", &[]),
        connector_reloads,
        "the connector caused no reload"
    );
    assert!(w.nomad.requests("checks") > 0);
}

pub(crate) fn dp_base() -> BaseConfig {
    let mut fe = FrontendSpec::new("http-in").default_backend("legacy");
    for (name, cond) in route_rules("/etc/haproxy/maps") {
        fe = fe.rule(json!({"name": name, "cond": "if", "cond_test": cond}));
    }
    let mut b = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    for m in MAPS {
        b = b.map_file(m, "");
    }
    b
}

#[test]
fn dataplane_driver_drains_then_maintains_a_failing_instance_without_reload() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(dp_base(), DpOptions::fast()));
    put_checked_job(&nomad);
    let mut env = env(&nomad, true);
    env.extend([
        ("HAPROXY_DATAPLANE_URL", dp.url()),
        ("HAPROXY_USERNAME", dp.user()),
        ("HAPROXY_PASSWORD", dp.password()),
    ]);
    let c = Connector::start(&env);
    nomad.register([
        Reg::new("default", "app", "a0", "10.0.0.1", 8080).tags(Some(TAGS)),
        Reg::new("default", "app", "a1", "10.0.0.2", 8080).tags(Some(TAGS)),
    ]);
    nomad.set_check("a0", "app", "alive", "success");
    nomad.set_check("a1", "app", "alive", "pending");
    let state = |addr: &str| -> Option<String> {
        dp.runtime_snapshot()["backends"]["app"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .find(|s| format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]) == addr)
            .and_then(|s| s["admin_state"].as_str().map(str::to_string))
    };
    c.wait_for("2 ready servers", WAIT, |_| {
        state("10.0.0.1:8080").as_deref() == Some("ready")
            && state("10.0.0.2:8080").as_deref() == Some("ready")
    });
    // Let the creation's reload settle, then count from here.
    c.wait_settled();
    let reloads = dp.reload_count();

    nomad.set_check("a1", "app", "alive", "failure");
    c.wait_for("a1 in maintenance", WAIT, |_| {
        state("10.0.0.2:8080").as_deref() == Some("maint")
    });
    let commands = dp.runtime_commands();
    assert!(
        commands.iter().any(|c| c.contains("state drain")),
        "drained first: {commands:?}"
    );
    assert_eq!(state("10.0.0.1:8080").as_deref(), Some("ready"));

    nomad.set_check("a1", "app", "alive", "success");
    c.wait_for("a1 ready again", WAIT, |_| {
        state("10.0.0.2:8080").as_deref() == Some("ready")
    });
    assert_eq!(dp.reload_count(), reloads, "no reload for gating");
}

fn checks_client(nomad: &NomadDouble, token: Option<&str>) -> NomadClient {
    let mut config = Config::from_layer(&Layer::default())
        .expect("defaults")
        .nomad;
    config.address = nomad.url().parse().expect("url");
    config.token = token.map(Secret::new);
    NomadClient::with_slack(
        &config,
        std::sync::Arc::new(NomadStats::default()),
        CallMetrics::disabled(),
        Duration::from_secs(2),
    )
    .expect("client")
}

/// The endpoint as Nomad answers it: results per service, `null` without results, 404 for an
/// unknown allocation, and `read-job` in the allocation's own namespace (403 without it).
#[tokio::test]
async fn alloc_checks_follow_nomads_shape_and_acl() {
    let nomad = NomadDouble::start().await;
    nomad.add_namespace("prod");
    nomad.register([
        Reg::new("default", "app", "a0", "10.0.0.1", 80),
        Reg::new("prod", "app", "p0", "10.0.0.2", 80),
    ]);
    nomad.set_check("a0", "app", "alive", "success");
    nomad.set_check("a0", "app", "ready", "failure");
    nomad.set_check("a0", "other", "alive", "pending");
    let open = checks_client(&nomad, None);
    let health = open
        .alloc_checks("default", "a0")
        .await
        .expect("read")
        .expect("known allocation");
    assert_eq!(health.get("app"), Some(&CheckHealth::Failing));
    assert_eq!(health.get("other"), Some(&CheckHealth::Passing));
    assert_eq!(
        open.alloc_checks("prod", "p0").await.expect("read"),
        Some(Default::default()),
        "no results yet: null"
    );
    assert_eq!(
        open.alloc_checks("default", "gone").await.expect("read"),
        None
    );

    nomad.enable_acl();
    nomad.grant("default-only", &["default"]);
    let limited = checks_client(&nomad, Some("default-only"));
    assert!(limited.alloc_checks("default", "a0").await.is_ok());
    // The allocation's namespace decides, whatever the query says.
    for ns in ["prod", "default"] {
        let err = limited.alloc_checks(ns, "p0").await.expect_err("denied");
        assert!(err.is_permission_denied(), "{err}");
    }
    let err = checks_client(&nomad, Some("unknown"))
        .alloc_checks("default", "a0")
        .await
        .expect_err("unknown token");
    assert!(err.is_permission_denied(), "{err}");
    assert_eq!(nomad.requests("checks"), 7);
}
