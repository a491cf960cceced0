//! End to end with the runtime-socket driver: the real binary (`run`, `haproxy.driver=runtime`),
//! the Nomad double, real HAProxy started by the harness (2.6 and 3.0 in CI) and small HTTP
//! instances, with real traffic through HAProxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::connector::Connector;
use crate::support::haproxy::{self, Haproxy};
use crate::support::http::{self, Instance};
use crate::support::nomad::{NomadDouble, Reg};
use haproxy_nomad_connector::model::route_rules;

const WAIT: Duration = Duration::from_secs(20);
const DOMAIN: &str = "app.example.test";
const TAGS: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=app.example.test",
    "haproxy.check.path=/health",
    "haproxy.check.interval=200ms",
    "haproxy.check.rise=1",
    "haproxy.check.fall=1",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

struct World {
    _rt: tokio::runtime::Runtime,
    nomad: NomadDouble,
    lb: Haproxy,
    connector: Connector,
    port: u16,
    _files: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let rt = runtime();
        let nomad = rt.block_on(NomadDouble::start());
        let files = tempfile::tempdir().expect("tempdir");
        let maps = files.path().join("maps");
        let confd = files.path().join("conf.d");
        std::fs::create_dir_all(&maps).expect("maps dir");
        std::fs::create_dir_all(&confd).expect("conf.d");
        for kind in [
            "hnc_exact.map",
            "hnc_prefix.map",
            "hnc_suffix.map",
            "hnc_regex.map",
            "hnc_path.map",
            "hnc_redirect.map",
        ] {
            std::fs::write(maps.join(kind), "").expect("map file");
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
        let env: Vec<(&str, String)> = vec![
            ("NOMAD_ADDR", nomad.url().to_string()),
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
            ("HAPROXY_DRAIN_TIMEOUT_SEC", "10s".into()),
            ("RECONCILE_RESYNC_INTERVAL", "1s".into()),
            ("NOMAD_RESYNC_INTERVAL", "1s".into()),
            ("RECONCILE_DEBOUNCE", "20ms".into()),
        ];
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

    /// Serving servers of `backend` per `show servers state`: address:port of those ready and up.
    fn serving(&self, backend: &str) -> Vec<String> {
        let state = self.lb.admin(&format!("show servers state {backend}"));
        state
            .lines()
            .skip(2)
            .filter_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c.len() > 18 && c[5] == "2" && c[6] == "0").then(|| format!("{}:{}", c[4], c[18]))
            })
            .collect()
    }

    /// Check-state bits of every ready server of `backend` (0x04: enabled).
    fn checks_enabled(&self, backend: &str) -> bool {
        let state = self.lb.admin(&format!("show servers state {backend}"));
        state.lines().skip(2).all(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            c.len() < 14 || c[6] != "0" || c[13].parse::<u32>().is_ok_and(|b| b & 0x04 != 0)
        })
    }

    /// The master's reload counter (`show proc`).
    fn reloads(&self) -> u64 {
        self.lb
            .master("show proc")
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("master"))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no master line in show proc:\n{}",
                    self.lb.master("show proc")
                )
            })
    }

    fn fragment(&self) -> std::path::PathBuf {
        self._files.path().join("conf.d").join("hnc.cfg")
    }

    fn wait(&self, what: &str, mut cond: impl FnMut(&World) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nconnector log:\n{}\nHAProxy log:\n{}",
                self.connector.log_text(),
                self.lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn reg(alloc: &str, instance: &Instance) -> Reg {
    Reg::new("default", "app", alloc, "127.0.0.1", instance.port).tags(Some(TAGS))
}

/// Names answering `n` requests for `host`.
fn answers(port: u16, host: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match http::get(port, host, "/") {
            Ok((200, body)) => body,
            Ok((status, _)) => format!("status {status}"),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

#[test]
fn routes_by_host_and_scales_without_reloads() {
    let w = World::start();
    let instances: Vec<Instance> = (0..10).map(|i| Instance::start(&format!("i{i}"))).collect();
    w.nomad.register(
        instances[..3]
            .iter()
            .enumerate()
            .map(|(i, inst)| reg(&format!("a{i}"), inst)),
    );
    w.wait("3 serving", |w| w.serving("app").len() == 3);

    // Any case, with and without a port: all three answer; other hosts do not reach them.
    for host in [DOMAIN, "APP.Example.TEST", "app.example.test:8080"] {
        let seen: std::collections::BTreeSet<String> =
            answers(w.port, host, 12).into_iter().collect();
        assert_eq!(
            seen,
            ["i0", "i1", "i2"].iter().map(|s| s.to_string()).collect(),
            "host {host}"
        );
    }
    assert!(
        answers(w.port, "other.example.test", 3)
            .iter()
            .all(|a| a == "status 404")
    );

    // 3 → 10 → 3, one at a time: no reload; every serving server's check is enabled.
    let reloads = w.reloads();
    for n in 4..=10 {
        w.nomad
            .register([reg(&format!("a{}", n - 1), &instances[n - 1])]);
        w.wait("one more serving", |w| w.serving("app").len() == n);
        assert!(
            w.checks_enabled("app"),
            "{}",
            w.lb.admin("show servers state app")
        );
        let name = format!("i{}", n - 1);
        let deadline = Instant::now() + WAIT;
        while !answers(w.port, DOMAIN, 2 * n).contains(&name) {
            assert!(Instant::now() < deadline, "traffic never reached {name}");
        }
    }
    for n in (3..10).rev() {
        let id = reg(&format!("a{n}"), &instances[n]).id;
        w.nomad.deregister(&[&id]);
        w.wait("one fewer serving", |w| w.serving("app").len() == n);
    }
    let reloads_during_scaling = w.reloads() - reloads;
    println!("reloads while scaling 3 -> 10 -> 3: {reloads_during_scaling}");
    assert_eq!(reloads_during_scaling, 0);
}

#[test]
fn rolling_deploy_under_load_fails_no_request() {
    let w = World::start();
    let old: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&format!("old{i}")))
        .collect();
    let new: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&format!("new{i}")))
        .collect();
    w.nomad.register(
        old.iter()
            .enumerate()
            .map(|(i, inst)| reg(&format!("o{i}"), inst)),
    );
    w.wait("3 serving", |w| w.serving("app").len() == 3);

    // A bounded load loop: 20 requests/s until stopped (at most 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, port) = (stop.clone(), ok.clone(), failed.clone(), w.port);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                match http::get(port, DOMAIN, "/") {
                    Ok((200, body)) if body.starts_with("old") || body.starts_with("new") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut old = old;
    for (i, n) in new.iter().enumerate() {
        w.nomad.register([reg(&format!("n{i}"), n)]);
        let addr = format!("127.0.0.1:{}", n.port);
        w.wait("the new instance serving", |w| {
            w.serving("app").contains(&addr)
        });
        let leaving = &old[0];
        let gone = format!("127.0.0.1:{}", leaving.port);
        w.nomad.deregister(&[&reg(&format!("o{i}"), leaving).id]);
        w.wait("the old instance drained and removed", |w| {
            !w.lb
                .admin("show servers state app")
                .contains(&format!(" {} ", leaving.port))
                && !w.serving("app").contains(&gone)
        });
        // Only now does the old instance stop.
        old.remove(0);
    }
    // Keep the load on the new instances for a while too (at least 3 s of load in all).
    w.wait("at least 60 requests through the deploy", |_| {
        ok.load(Ordering::Relaxed) >= 60
    });
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load loop");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling deploy under load: {ok} requests succeeded, {failed} failed");
    assert!(ok >= 60, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0);
}

#[test]
fn manual_maintenance_is_repaired() {
    let w = World::start();
    let a = Instance::start("a");
    w.nomad.register([reg("a", &a)]);
    w.wait("serving", |w| w.serving("app").len() == 1);
    let state = w.lb.admin("show servers state app");
    let server = state
        .lines()
        .skip(2)
        .find_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("a server");
    assert_eq!(
        w.lb.admin(&format!("set server app/{server} state maint")),
        ""
    );
    w.wait("repaired within one resync", |w| {
        w.serving("app").len() == 1
    });
    w.wait("drift counted", |w| {
        w.connector.metrics().sum("hnc_drift_repairs_total", &[]) >= 1.0
    });
}

#[test]
fn a_failing_health_check_takes_an_instance_out_and_back() {
    let w = World::start();
    let (a, b) = (Instance::start("a"), Instance::start("b"));
    w.nomad.register([reg("a", &a), reg("b", &b)]);
    w.wait("2 serving", |w| w.serving("app").len() == 2);
    b.set_healthy(false);
    w.wait("b out of rotation", |w| w.serving("app").len() == 1);
    assert!(
        answers(w.port, DOMAIN, 10).iter().all(|x| x == "a"),
        "traffic only to a"
    );
    b.set_healthy(true);
    w.wait("b back", |w| w.serving("app").len() == 2);
    let deadline = Instant::now() + WAIT;
    while !answers(w.port, DOMAIN, 10).contains(&"b".to_string()) {
        assert!(Instant::now() < deadline, "traffic never came back to b");
    }
}

#[test]
fn several_domains_suffix_and_regex_and_a_domain_moved_without_reload() {
    let w = World::start();
    let (a, b) = (Instance::start("svc-a"), Instance::start("svc-b"));
    let a_tags = [
        "haproxy.enable=true",
        "haproxy.domain=a.example.test",
        "haproxy.domain=shared.example.test",
        "haproxy.domain=*.wild.example.test",
    ];
    let b_tags = [
        "haproxy.enable=true",
        "haproxy.domain=^b[0-9]+\\.example\\.test$",
        "haproxy.domain.type=regex",
    ];
    let ra = Reg::new("default", "svc-a", "a", "127.0.0.1", a.port).tags(Some(&a_tags));
    let rb = Reg::new("default", "svc-b", "b", "127.0.0.1", b.port).tags(Some(&b_tags));
    w.nomad.register([ra.clone(), rb.clone()]);
    w.wait("both serving", |w| {
        w.serving("svc_a").len() == 1 && w.serving("svc_b").len() == 1
    });
    let one = |host: &str| answers(w.port, host, 1).remove(0);
    assert_eq!(one("a.example.test"), "svc-a");
    assert_eq!(one("shared.example.test"), "svc-a");
    assert_eq!(one("x.wild.example.test"), "svc-a");
    assert_eq!(one("B42.example.test"), "svc-b");
    assert_eq!(one("bx.example.test"), "status 404");

    // shared.example.test moves from svc-a to svc-b: a map change, no reload.
    let reloads = w.reloads();
    let a_tags: Vec<&str> = a_tags
        .iter()
        .copied()
        .filter(|t| !t.contains("shared"))
        .collect();
    w.nomad.set_tags(&ra.id, Some(&a_tags));
    let mut b_moved: Vec<&str> = vec!["haproxy.enable=true", "haproxy.domain=shared.example.test"];
    w.nomad.set_tags(&rb.id, Some(&b_moved));
    b_moved.clear();
    let deadline = Instant::now() + WAIT;
    while one("shared.example.test") != "svc-b" {
        assert!(
            Instant::now() < deadline,
            "the domain never moved\n{}",
            w.connector.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(one("a.example.test"), "svc-a");
    assert_eq!(w.reloads(), reloads, "moving a domain does not reload");
}

#[test]
fn restarts_from_files_keep_state_and_a_lost_fragment_is_repaired() {
    let mut w = World::start();
    let instances: Vec<Instance> = (0..3).map(|i| Instance::start(&format!("i{i}"))).collect();
    w.nomad.register(
        instances
            .iter()
            .enumerate()
            .map(|(i, inst)| reg(&format!("a{i}"), inst)),
    );
    w.wait("3 serving", |w| w.serving("app").len() == 3);
    w.connector.wait_settled();
    let hand = w.lb.admin("show servers state hand_written");

    // Killed and restarted from its files: everything is back at once, before any pass.
    w.lb.restart();
    w.wait("3 serving right after the restart", |w| {
        w.serving("app").len() == 3
    });
    assert_eq!(answers(w.port, DOMAIN, 3).len(), 3);
    assert!(
        answers(w.port, DOMAIN, 6)
            .iter()
            .all(|x| x.starts_with('i'))
    );

    // Restarted with the fragment gone: repaired within one resync (1 s here).
    std::fs::write(w.fragment(), "").expect("empty the fragment");
    w.lb.restart();
    assert!(
        w.serving("app").is_empty(),
        "the backend is gone with its fragment"
    );
    let t = Instant::now();
    w.wait("repaired", |w| w.serving("app").len() == 3);
    println!("fragment lost: repaired in {:?}", t.elapsed());
    assert!(
        answers(w.port, DOMAIN, 6)
            .iter()
            .all(|x| x.starts_with('i'))
    );

    // The hand-written backend is untouched throughout.
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .skip(2)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                format!("{} {} {} {}", c[3], c[4], c[6], c[7])
            })
            .collect()
    };
    assert_eq!(
        strip(&hand),
        strip(&w.lb.admin("show servers state hand_written"))
    );
}
