//! The driver's file handling on the structural path, without HAProxy: `haproxy -c` is replaced
//! by a shell command (the binary is `/bin/sh` and the first "configuration" is the command text,
//! so the call `sh -c -f <command> -f <candidate>` runs it with the candidate as `$1`). Nothing
//! here reaches a socket: every case fails before the reload. The failure kinds and the errors
//! they keep, sockets included, are tested in [`errors`].

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;
use crate::call_metrics::CallMetrics;
use crate::desired::Desired;
use crate::model::{BackendSettings, Balance, CheckSpec, Mode, RouteKey};
use crate::plan::{Action, Op, compile};

struct Files {
    dir: tempfile::TempDir,
    cfg: RuntimeConfig,
}

impl Files {
    /// The fragment and maps created empty; `check` is the shell text standing in for
    /// `haproxy -c`.
    fn new(check: &str) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = RuntimeConfig {
            master_socket: dir.path().join("master.sock"),
            admin_socket: None,
            fragment: dir.path().join("conf.d").join("hnc.cfg"),
            maps_dir: dir.path().join("maps").display().to_string(),
            binary: PathBuf::from("/bin/sh"),
            configs: vec![PathBuf::from(check)],
        };
        RuntimeDriver::new(cfg.clone(), CallMetrics::disabled())
            .ensure_files()
            .expect("create the files");
        Files { dir, cfg }
    }

    fn driver(&self) -> RuntimeDriver {
        RuntimeDriver::new(self.cfg.clone(), CallMetrics::disabled())
    }

    fn exact_map(&self) -> PathBuf {
        PathBuf::from(self.cfg.map_path(MatchKind::Exact))
    }

    /// A file outside the driver's reach that a link points to.
    fn target(&self, text: &str) -> PathBuf {
        let t = self.dir.path().join("precious");
        fs::write(&t, text).expect("write the target");
        t
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Create backend `web` and route `a.test` to it: structural, and the exact map changes.
fn plan() -> Plan {
    let settings = BackendSettings {
        mode: Mode::Http,
        balance: Balance::Roundrobin,
        check: CheckSpec::None,
        maxconn: None,
    };
    Plan {
        ops: vec![
            Op::new(
                Action::CreateBackend {
                    backend: "web".into(),
                    settings,
                },
                "new service",
            ),
            Op::new(
                Action::AddRoute {
                    route: RouteKey {
                        kind: MatchKind::Exact,
                        key: "a.test".into(),
                    },
                    backend: "web".into(),
                },
                "new route",
            ),
        ],
        ..Plan::default()
    }
}

async fn apply(driver: &RuntimeDriver) -> Result<ApplyReport, DriverError> {
    driver
        .apply(&compile(
            plan(),
            &Desired::default(),
            &Live::default(),
            &RuntimeDriver::PROFILE,
        ))
        .await
}

#[tokio::test]
async fn a_failed_restore_is_reported_with_the_check_failure() {
    // The "check" replaces the exact map with a link, then fails: restoring that map must be
    // refused, and the failure must reach the caller next to HAProxy's message.
    let placeholder = Files::new("exit 0");
    let map = placeholder.exact_map();
    let target = placeholder.target("precious\n");
    let check = format!(
        "ln -sfn {} {}; echo '[ALERT] fake check failed' >&2; exit 1",
        target.display(),
        map.display()
    );
    let mut cfg = placeholder.cfg.clone();
    cfg.configs = vec![PathBuf::from(check)];
    let before = fs::read_to_string(&cfg.fragment).expect("fragment");
    let driver = RuntimeDriver::new(cfg.clone(), CallMetrics::disabled());

    let err = apply(&driver).await.expect_err("the check fails");
    let msg = err.to_string();
    assert!(matches!(err, DriverError::Rejected(_)), "{err:?}");
    // Both failures are kept, typed: the check's refusal and the restore's.
    assert!(
        matches!(&err, DriverError::Rejected(crate::haproxy::Cause::Unrestored { failure, .. })
            if matches!(**failure, crate::haproxy::Cause::Message(_))),
        "{err:?}"
    );
    assert!(
        matches!(err.restore_failure().map(|r| &r.first), Some(files::FileError::Symlink { path }) if *path == map),
        "{err:?}"
    );
    assert!(msg.contains("fake check failed"), "{msg}");
    assert!(msg.contains("cannot restore the previous files"), "{msg}");
    assert!(
        msg.contains(&format!("{}: it is a symbolic link", map.display())),
        "{msg}"
    );
    assert_eq!(fs::read_to_string(&target).expect("target"), "precious\n");
    // The fragment was never replaced; no candidate or temporary file is left.
    assert_eq!(fs::read_to_string(&cfg.fragment).expect("fragment"), before);
    let conf_d = cfg.fragment.parent().expect("conf.d");
    assert_eq!(names(conf_d), BTreeSet::from(["hnc.cfg".to_string()]));
    assert!(
        names(Path::new(&cfg.maps_dir))
            .iter()
            .all(|n| !n.starts_with('.')),
        "{:?}",
        names(Path::new(&cfg.maps_dir))
    );
}

#[tokio::test]
async fn a_check_failure_restores_the_maps() {
    let files = Files::new("echo '[ALERT] no' >&2; exit 1");
    let map = files.exact_map();
    let before = fs::read_to_string(&map).expect("map");
    let err = apply(&files.driver()).await.expect_err("the check fails");
    assert!(!err.to_string().contains("restore"), "{err}");
    assert_eq!(fs::read_to_string(&map).expect("map"), before, "restored");
}

#[tokio::test]
async fn a_symlinked_map_is_refused_and_its_target_untouched() {
    let files = Files::new("exit 0");
    let map = files.exact_map();
    let target = files.target("precious\n");
    fs::remove_file(&map).expect("rm");
    symlink(&target, &map).expect("link");
    let err = apply(&files.driver()).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("refusing to write {}", map.display())),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&target).expect("target"), "precious\n");
    assert!(
        fs::symlink_metadata(&map)
            .expect("stat")
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn a_symlinked_fragment_is_refused_and_its_target_untouched() {
    // The check passes; installing the candidate over the link is refused before any reload.
    let files = Files::new("exit 0");
    let fragment = files.cfg.fragment.clone();
    let target = files.target("# hand-made\n");
    fs::remove_file(&fragment).expect("rm");
    symlink(&target, &fragment).expect("link");
    let maps_before: Vec<String> = MatchKind::ALL
        .iter()
        .map(|k| fs::read_to_string(files.cfg.map_path(*k)).expect("map"))
        .collect();
    let err = apply(&files.driver()).await.expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("refusing to write {}", fragment.display())),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&target).expect("target"),
        "# hand-made\n"
    );
    let conf_d = fragment.parent().expect("conf.d");
    assert_eq!(
        names(conf_d),
        BTreeSet::from(["hnc.cfg".to_string()]),
        "no candidate left"
    );
    // The maps written before the refusal were put back.
    let maps_after: Vec<String> = MatchKind::ALL
        .iter()
        .map(|k| fs::read_to_string(files.cfg.map_path(*k)).expect("map"))
        .collect();
    assert_eq!(maps_after, maps_before);
}

#[test]
fn keys_the_cli_refuses_stay_out_of_the_map_files() {
    let files = Files::new("true");
    let driver = files.driver();
    let mut after = crate::plan::Outcome::default();
    for key in [
        "good.example.com",
        "two words",
        "payload<<",
        "semi;colon",
        "#comment",
    ] {
        after.routes.insert(
            RouteKey {
                kind: MatchKind::Exact,
                key: key.to_string(),
            },
            "be".to_string(),
        );
    }
    let maps = driver.render_maps(&after);
    let (_, exact) = maps
        .iter()
        .find(|(p, _)| *p == files.exact_map())
        .expect("the exact map");
    let lines: Vec<&str> = exact.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, vec!["good.example.com be"]);
}

mod errors;
