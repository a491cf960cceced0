//! `check-config --connect` (issue 12, item 6): one run of the binary against the doubles (and
//! real HAProxy for the runtime driver), one line per check, exit 0 only when `run` has
//! everything it needs.

use std::process::Command;

use crate::support::connector::BIN;
use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options as DpOptions};
use crate::support::haproxy::Haproxy;
use crate::support::nomad::{NomadDouble, Reg};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn base() -> BaseConfig {
    BaseConfig::new()
        .backend(json!({"name": "legacy", "mode": "http"}))
        .frontend(FrontendSpec::new("http-in").default_backend("legacy"))
}

/// Runs `check-config --connect` with `env`: (exit code, stdout).
fn connect(env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["check-config", "--connect"]).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the binary");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct World {
    _rt: tokio::runtime::Runtime,
    nomad: NomadDouble,
    dp: DataplaneDouble,
}

impl World {
    fn start(opts: DpOptions) -> World {
        let rt = runtime();
        let nomad = rt.block_on(NomadDouble::start());
        let dp = rt.block_on(DataplaneDouble::start(base(), opts));
        nomad.register([Reg::new("default", "web", "a1", "10.0.0.1", 80)]);
        World { _rt: rt, nomad, dp }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("NOMAD_ADDR", self.nomad.url().to_string()),
            ("HAPROXY_DATAPLANE_URL", self.dp.url()),
            ("HAPROXY_USERNAME", self.dp.user()),
            ("HAPROXY_PASSWORD", self.dp.password()),
            ("HAPROXY_FRONTEND", "http-in".into()),
        ];
        for (k, val) in extra {
            let key: &'static str = Box::leak(k.to_string().into_boxed_str());
            v.retain(|(x, _)| *x != key);
            v.push((key, val.to_string()));
        }
        v
    }
}

#[test]
fn everything_in_place_exits_0_and_says_what_it_checked() {
    let w = World::start(DpOptions::fast());
    let (code, out) = connect(&w.env(&[]));
    assert_eq!(code, Some(0), "{out}");
    for expected in [
        "reachable, a leader is elected",
        "namespace `default`: services listed and read, job `web-job` read",
        "credentials accepted",
        "Data Plane API version v3.2.1",
        "frontend `http-in` exists",
        "will be created by the first pass",
        "everything `run` needs is there",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert!(
        !out.contains(&w.dp.password()),
        "the password was printed:\n{out}"
    );
}

#[test]
fn a_token_without_read_job_on_one_namespace_is_named() {
    let w = World::start(DpOptions::fast());
    w.nomad.add_namespace("team-b");
    w.nomad
        .register([Reg::new("team-b", "api", "b1", "10.0.0.2", 80)]);
    w.nomad.enable_acl();
    w.nomad.grant("limited", &["default"]);
    let (code, out) = connect(&w.env(&[
        ("NOMAD_TOKEN", "limited"),
        ("NOMAD_NAMESPACE", "default,team-b"),
    ]));
    assert_eq!(code, Some(1), "{out}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{out}");
    assert!(fails[0].contains("namespace `team-b`"), "{out}");
    assert!(fails[0].contains("read-job on namespace team-b"), "{out}");
    assert!(out.contains("ok    namespace `default`"), "{out}");
    assert!(!out.contains("limited"), "the token was printed:\n{out}");
}

#[test]
fn a_wrong_data_plane_api_password_is_named() {
    let w = World::start(DpOptions::fast());
    let (code, out) = connect(&w.env(&[("HAPROXY_PASSWORD", "not-the-password")]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  Data Plane API"), "{out}");
    assert!(out.contains("credentials refused"), "{out}");
    assert!(!out.contains("not-the-password"), "{out}");
}

#[test]
fn a_missing_frontend_is_named() {
    let w = World::start(DpOptions::fast());
    let (code, out) = connect(&w.env(&[("HAPROXY_FRONTEND", "nope")]));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  frontend `nope` (haproxy.frontend) does not exist"),
        "{out}"
    );
}

#[test]
fn a_data_plane_api_2x_is_named() {
    let w = World::start(DpOptions {
        api_version: None,
        ..DpOptions::fast()
    });
    let (code, out) = connect(&w.env(&[]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a Data Plane API v3"), "{out}");
    let w = World::start(DpOptions {
        api_version: Some("v2.9.3 0a1b2c".into()),
        ..DpOptions::fast()
    });
    let (code, out) = connect(&w.env(&[]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the connector needs 3.x"), "{out}");
}

#[test]
fn map_files_in_another_directory_than_haproxy_maps_dir_are_named() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let mut b = base();
    for m in [
        "hnc_exact.map",
        "hnc_prefix.map",
        "hnc_suffix.map",
        "hnc_regex.map",
        "hnc_path.map",
        "hnc_redirect.map",
    ] {
        b = b.map_file(m, "");
    }
    let dp = rt.block_on(DataplaneDouble::start(b, DpOptions::fast()));
    let w = World { _rt: rt, nomad, dp };
    let (code, out) = connect(&w.env(&[]));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the map files exist"), "{out}");
    let (code, out) = connect(&w.env(&[("HAPROXY_MAPS_DIR", "/srv/other-maps")]));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("another directory") && out.contains("/srv/other-maps"),
        "{out}"
    );
}

#[test]
fn nomad_unreachable_is_named() {
    let w = World::start(DpOptions::fast());
    let port = crate::support::haproxy::free_port();
    let (code, out) = connect(&w.env(&[("NOMAD_ADDR", &format!("http://127.0.0.1:{port}"))]));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  Nomad http://127.0.0.1"), "{out}");
}

#[test]
fn runtime_driver_sockets_and_haproxy_check() {
    let w = World::start(DpOptions::fast());
    let dir = tempfile::tempdir().expect("tempdir");
    let confd = dir.path().join("conf.d");
    std::fs::create_dir_all(&confd).expect("conf.d");
    let lb = Haproxy::start_with(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n",
        std::slice::from_ref(&confd),
    );
    let fragment = confd.join("hnc.cfg");
    std::fs::write(&fragment, "# empty\n").expect("fragment");
    let env = w.env(&[
        ("HAPROXY_DRIVER", "runtime"),
        (
            "HAPROXY_MASTER_SOCKET",
            &lb.master_socket.display().to_string(),
        ),
        (
            "HAPROXY_ADMIN_SOCKET",
            &lb.admin_socket.display().to_string(),
        ),
        ("HAPROXY_FRAGMENT", &fragment.display().to_string()),
        ("HAPROXY_MAPS_DIR", &dir.path().display().to_string()),
        ("HAPROXY_BINARY", &lb.bin.display().to_string()),
        ("HAPROXY_CONFIG", &lb.config.display().to_string()),
    ]);
    let (code, out) = connect(&env);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("master socket"), "{out}");
    assert!(
        out.contains("haproxy -c accepts the configuration"),
        "{out}"
    );
    // A fragment HAProxy refuses is a problem.
    std::fs::write(&fragment, "backend broken\n    balance nonsense\n").expect("fragment");
    let (code, out) = connect(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("haproxy -c refused"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{out}"
    );
}
