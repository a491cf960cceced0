//! The end-to-end lab for isolation tests: the real connector binary, the Nomad double, and
//! either real HAProxy with the runtime driver (real traffic through it) or the Data Plane API
//! double. A healthy service `healthy` (domain `healthy.test`) runs with two instances before the
//! hostile registrations arrive; [`Lab::prove_isolated`] then shows that it still gains, drains
//! and loses instances and that a brand-new service still gets routed.
//!
//! Writing a case: start a lab per driver ([`both_drivers!`]), register the hostile
//! registrations with `lab.nomad.register(…)` (use [`Lab::address`] for addresses that serve
//! traffic), then call `lab.prove_isolated(&["<hostile service>", …])`: it waits for a diagnostic
//! naming each listed service in `/status` and runs the healthy lifecycle. A new case file
//! `tests/hostile/<topic>.rs` is declared in `tests/hostile.rs` with
//! `#[path = "hostile/<topic>.rs"] mod <topic>;` and starts with
//! `use super::harness::{Driver, Lab}; use crate::both_drivers;`.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use haproxy_nomad_connector::model::route_rules;
use serde_json::{Value, json};

use crate::support::connector::Connector;
use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options as DpOptions};
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use crate::support::nomad::{NomadDouble, Reg};

pub const WAIT: Duration = Duration::from_secs(20);
pub const HEALTHY_TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=healthy.test",
    "haproxy.check.path=/health",
    "haproxy.check.interval=200ms",
    "haproxy.check.rise=1",
    "haproxy.check.fall=1",
];
const NEWCOMER_TAGS: &[&str] = &["haproxy.enable=true", "haproxy.domain=newcomer.test"];
const MAPS: [&str; 6] = [
    "hnc_exact.map",
    "hnc_prefix.map",
    "hnc_suffix.map",
    "hnc_regex.map",
    "hnc_path.map",
    "hnc_redirect.map",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Runtime,
    Dataplane,
}

pub enum Side {
    Runtime {
        lb: Haproxy,
        /// The frontend's port.
        port: u16,
        files: tempfile::TempDir,
        /// Real instances: 0–2 for `healthy`, 3 for the newcomer.
        instances: Vec<Instance>,
    },
    Dataplane {
        dp: DataplaneDouble,
    },
}

pub struct Lab {
    pub driver: Driver,
    pub nomad: NomadDouble,
    pub connector: Connector,
    pub side: Side,
    _rt: tokio::runtime::Runtime,
}

/// Defines `mod $name { fn runtime(); fn dataplane(); }`, each running `$body(lab)` on a lab with
/// that driver.
#[macro_export]
macro_rules! both_drivers {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn runtime() {
                let lab = Lab::start(Driver::Runtime, &[]);
                ($body)(&lab);
            }
            #[test]
            fn dataplane() {
                let lab = Lab::start(Driver::Dataplane, &[]);
                ($body)(&lab);
            }
        }
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn common_env() -> Vec<(&'static str, String)> {
    vec![
        ("HAPROXY_DRAIN_TIMEOUT_SEC", "2s".into()),
        ("RECONCILE_RESYNC_INTERVAL", "1s".into()),
        ("NOMAD_RESYNC_INTERVAL", "1s".into()),
        ("RECONCILE_DEBOUNCE", "20ms".into()),
    ]
}

fn merge(
    mut env: Vec<(&'static str, String)>,
    extra: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        let key: &'static str = Box::leak(k.to_string().into_boxed_str());
        env.retain(|(x, _)| *x != key);
        env.push((key, v.to_string()));
    }
    env
}

impl Lab {
    /// Starts the lab and the healthy service with two instances, routed.
    pub fn start(driver: Driver, extra_env: &[(&str, &str)]) -> Lab {
        Lab::start_with_nomad_userinfo(driver, extra_env, None)
    }

    /// [`Lab::start`], with `user:password@` in the Nomad address the connector is given.
    pub fn start_with_nomad_userinfo(
        driver: Driver,
        extra_env: &[(&str, &str)],
        userinfo: Option<&str>,
    ) -> Lab {
        let rt = runtime();
        let nomad = rt.block_on(NomadDouble::start());
        let (side, env) = match driver {
            Driver::Runtime => {
                let files = tempfile::tempdir().expect("tempdir");
                let maps = files.path().join("maps");
                let confd = files.path().join("conf.d");
                std::fs::create_dir_all(&maps).expect("maps dir");
                std::fs::create_dir_all(&confd).expect("conf.d");
                for m in MAPS {
                    std::fs::write(maps.join(m), "").expect("map file");
                }
                let maps_dir = maps.display().to_string();
                let port = haproxy::free_port();
                let mut rules = String::new();
                for (expr, cond) in route_rules(&maps_dir) {
                    rules.push_str(&format!("    use_backend {expr} if {cond}\n"));
                }
                let body = format!(
                    "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n    retries 3\n    option redispatch\n\n\
                     frontend fe\n    bind 127.0.0.1:{port}\n{rules}    default_backend hand_default\n\n\
                     backend hand_default\n    http-request return status 404 content-type text/plain string nobody\n\n\
                     backend hand_written\n    balance roundrobin\n    server static1 127.0.0.1:9 weight 7\n"
                );
                let lb = Haproxy::start_with(&body, std::slice::from_ref(&confd));
                let mut env = common_env();
                env.extend([
                    ("NOMAD_ADDR", nomad_addr(&nomad, userinfo)),
                    ("HAPROXY_DRIVER", "runtime".into()),
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
                let instances = ["h0", "h1", "h2", "n0"]
                    .iter()
                    .map(|n| Instance::start(n))
                    .collect();
                (
                    Side::Runtime {
                        lb,
                        port,
                        files,
                        instances,
                    },
                    env,
                )
            }
            Driver::Dataplane => {
                let dp = rt.block_on(DataplaneDouble::start(dataplane_base(), DpOptions::fast()));
                let mut env = common_env();
                env.extend([
                    ("NOMAD_ADDR", nomad_addr(&nomad, userinfo)),
                    ("HAPROXY_DATAPLANE_URL", dp.url()),
                    ("HAPROXY_USERNAME", dp.user()),
                    ("HAPROXY_PASSWORD", dp.password()),
                ]);
                (Side::Dataplane { dp }, env)
            }
        };
        let connector = Connector::start(&merge(env, extra_env));
        let lab = Lab {
            driver,
            nomad,
            connector,
            side,
            _rt: rt,
        };
        lab.nomad.register([lab.healthy(0), lab.healthy(1)]);
        lab.wait("the healthy service routed with 2 instances", |l| {
            l.serving("healthy").len() == 2 && l.routed("healthy.test", "healthy")
        });
        lab.connector.wait_settled();
        lab
    }

    /// An address for instance `i` of the lab (real HTTP instances with the runtime driver:
    /// 0–2 are `healthy`'s, 3 the newcomer's).
    pub fn address(&self, i: usize) -> (String, u16) {
        match &self.side {
            Side::Runtime { instances, .. } => ("127.0.0.1".into(), instances[i].port),
            Side::Dataplane { .. } => (format!("10.0.0.{}", i + 1), 8080),
        }
    }

    /// Registration `i` of the healthy service.
    pub fn healthy(&self, i: usize) -> Reg {
        let (addr, port) = self.address(i);
        Reg::new("default", "healthy", &format!("h{i}"), &addr, port).tags(Some(HEALTHY_TAGS))
    }

    pub fn newcomer(&self) -> Reg {
        let (addr, port) = self.address(3);
        Reg::new("default", "newcomer", "n0", &addr, port).tags(Some(NEWCOMER_TAGS))
    }

    /// `address:port` of the servers in rotation (ready) in `backend`.
    pub fn serving(&self, backend: &str) -> Vec<String> {
        self.servers(backend, true)
    }

    /// `address:port` of the servers present in `backend` (ready or draining, not removed).
    pub fn present(&self, backend: &str) -> Vec<String> {
        self.servers(backend, false)
    }

    fn servers(&self, backend: &str, ready_only: bool) -> Vec<String> {
        match &self.side {
            Side::Runtime { lb, .. } => {
                let state = lb.admin(&format!("show servers state {backend}"));
                state
                    .lines()
                    .skip(2)
                    .filter_map(|l| {
                        let c: Vec<&str> = l.split_whitespace().collect();
                        if c.len() <= 18 {
                            return None;
                        }
                        // srv_admin_state: 0 ready, 8 drain (hnc never leaves maint servers).
                        let ready = c[6] == "0" && c[5] == "2";
                        let kept = c[6] == "0" || c[6] == "8";
                        (if ready_only { ready } else { kept })
                            .then(|| format!("{}:{}", c[4], c[18]))
                    })
                    .collect()
            }
            Side::Dataplane { dp } => dp.runtime_snapshot()["backends"][backend]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|s| {
                    let state = s["admin_state"].as_str().unwrap_or("");
                    if ready_only {
                        state == "ready"
                    } else {
                        state == "ready" || state == "drain"
                    }
                })
                .map(|s| format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]))
                .collect(),
        }
    }

    /// Whether `host` reaches `backend`: real traffic with the runtime driver (the instance's
    /// name is in the answer), the exact map entry with the Data Plane API double.
    pub fn routed(&self, host: &str, backend: &str) -> bool {
        match &self.side {
            Side::Runtime { port, .. } => match http::get(*port, host, "/") {
                Ok((200, body)) => match backend {
                    "healthy" => body.starts_with('h'),
                    "newcomer" => body == "n0",
                    _ => true,
                },
                _ => false,
            },
            Side::Dataplane { dp } => dp.runtime_snapshot()["maps"]["hnc_exact.map"]
                .as_array()
                .is_some_and(|entries| entries.iter().any(|e| e[0] == host && e[1] == backend)),
        }
    }

    /// The current diagnostics in `/status`.
    pub fn diagnostics(&self) -> Vec<Value> {
        let Some((200, body)) = self.connector.get("/status") else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["diagnostics"].as_array().cloned().unwrap_or_default()
    }

    /// The diagnostics naming `service` (any namespace).
    pub fn diagnostics_of(&self, service: &str) -> Vec<Value> {
        self.diagnostics()
            .into_iter()
            .filter(|d| d["service"] == service)
            .collect()
    }

    pub fn wait(&self, what: &str, mut cond: impl FnMut(&Lab) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            if Instant::now() >= deadline {
                let extra = match &self.side {
                    Side::Runtime { lb, .. } => format!("HAProxy log:\n{}", lb.log_text()),
                    Side::Dataplane { dp } => format!(
                        "DPAPI validation failures: {:?}\nruntime: {}",
                        dp.validation_failures(),
                        dp.runtime_snapshot()
                    ),
                };
                panic!(
                    "[{:?}] timed out waiting for {what}\nconnector log:\n{}\n{extra}",
                    self.driver,
                    self.connector.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// With the hostile registrations in place: each service in `hostile` has a diagnostic, and
    /// the healthy service still gains, drains and loses instances while a brand-new service
    /// gets routed. Also checks that the connector never panicked, that the Data Plane API saw
    /// only valid requests and that, with the runtime driver, HAProxy accepts its configuration.
    pub fn prove_isolated(&self, hostile: &[&str]) {
        for service in hostile {
            self.wait(&format!("a diagnostic naming {service}"), |l| {
                !l.diagnostics_of(service).is_empty()
            });
        }
        // Gains an instance.
        self.nomad.register([self.healthy(2)]);
        self.wait("the healthy service gains its third instance", |l| {
            l.serving("healthy").len() == 3
        });
        // Drains and loses one.
        let (addr, port) = self.address(0);
        let gone = format!("{addr}:{port}");
        self.nomad.deregister(&[&self.healthy(0).id]);
        self.wait("the healthy service drains and loses an instance", |l| {
            !l.present("healthy").contains(&gone) && l.serving("healthy").len() == 2
        });
        // A brand-new service is routed.
        self.nomad.register([self.newcomer()]);
        self.wait("a brand-new service routed", |l| {
            l.serving("newcomer").len() == 1 && l.routed("newcomer.test", "newcomer")
        });
        assert!(self.routed("healthy.test", "healthy"));
        let log = self.connector.log_text();
        assert!(!log.contains("panicked"), "the connector panicked:\n{log}");
        match &self.side {
            Side::Dataplane { dp } => {
                assert!(
                    dp.validation_failures().is_empty(),
                    "{:?}",
                    dp.validation_failures()
                );
                assert_eq!(dp.open_transactions(), 0);
            }
            Side::Runtime { .. } => self.assert_haproxy_accepts_its_files(),
        }
    }

    /// Runtime driver: `haproxy -c` on the main configuration plus the fragment (and so the maps)
    /// as they are on disk now: a restart from the files would work.
    pub fn assert_haproxy_accepts_its_files(&self) {
        let Side::Runtime { lb, files, .. } = &self.side else {
            return;
        };
        let out = std::process::Command::new(&lb.bin)
            .arg("-c")
            .arg("-f")
            .arg(&lb.config)
            .arg("-f")
            .arg(files.path().join("conf.d"))
            .output()
            .expect("run haproxy -c");
        assert!(
            out.status.success(),
            "haproxy -c refuses the files on disk:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runtime driver: the text of map file `name` on disk; DPAPI: the double's runtime entries.
    pub fn map_text(&self, name: &str) -> String {
        match &self.side {
            Side::Runtime { files, .. } => {
                std::fs::read_to_string(files.path().join("maps").join(name)).unwrap_or_default()
            }
            Side::Dataplane { dp } => dp.runtime_snapshot()["maps"][name].to_string(),
        }
    }
}

fn nomad_addr(nomad: &NomadDouble, userinfo: Option<&str>) -> String {
    match userinfo {
        Some(u) => nomad.url().replacen("://", &format!("://{u}@"), 1),
        None => nomad.url().to_string(),
    }
}

fn dataplane_base() -> BaseConfig {
    let mut fe = FrontendSpec::new("http-in").default_backend("legacy");
    fe = fe.connector_rules("/etc/haproxy/maps");
    let mut b = BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http", "servers": {"app1": {"name": "app1", "address": "192.0.2.10", "port": 80}}}))
        .frontend(fe);
    for m in MAPS {
        b = b.map_file(m, "");
    }
    b
}
