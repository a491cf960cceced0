//! The one integration-test binary (`cargo test --test it`). Every file `tests/<name>.rs` is a
//! module of it, so the shared support in `tests/support/` (the Nomad and Data Plane API doubles,
//! the HAProxy harness, the connector process) is compiled and linked once rather than once per
//! file. A test's name starts with its file's: `cargo test --test it e2e_runtime::`.
//!
//! The tests of all files run as threads of one process: a test must not change the process's
//! environment, working directory or signal handling, and process limits are raised only through
//! [`support::limits`]. `Cargo.toml` sets `autotests = false`, so a new file must be declared
//! here ([`every_test_file_is_a_module_of_this_binary`] fails until it is).

mod support;

mod admin_server;
mod architecture;
mod cli;
mod dataplane_double;
mod dataplane_driver;
mod dataplane_objects;
mod default_domain;
mod e2e_canary;
mod e2e_dataplane;
mod e2e_gating;
mod e2e_runtime;
mod haproxy_harness;
mod hostile;
mod nomad_client;
mod nomad_double;
mod nomad_tls;
mod nomad_watcher;
mod path_routing;
mod plan_word;
mod preflight;
mod redirect_https;
mod routing_settings;
mod runtime_driver;

/// With `autotests = false` Cargo builds no other test binary, so a `tests/*.rs` file missing
/// from the list above would silently never run.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let root = std::fs::read_to_string(dir.join("it.rs")).expect("tests/it.rs");
    let declared: Vec<&str> = root
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .filter(|name| name != "it")
        .collect();
    files.sort();
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !declared.contains(&f.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/{{{}}}.rs not declared in tests/it.rs (declared: {declared:?})",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
}
