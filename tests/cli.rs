//! The binary's command line: `check-config`, `version`, exit codes and secret hygiene.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_haproxy-nomad-connector");
const PREDECESSOR: &str = r#"{"nomad":{"address":"http://localhost:4646","token":"","region":"global"},"haproxy":{"address":"http://localhost:5555","username":"admin","password":"adminpwd","backend_strategy":"use_existing"}}"#;

/// Runs the binary with a clean environment plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the binary")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write file");
    p.display().to_string()
}

#[test]
fn check_config_prints_the_predecessor_file_with_the_password_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "predecessor.json", PREDECESSOR);
    let out = run(&["check-config", "--config", &file], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let effective: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(effective["haproxy"]["password"], "<redacted>");
    assert_eq!(effective["haproxy"]["username"], "admin");
    assert_eq!(effective["haproxy"]["backend_strategy"], "use_existing");
    assert_eq!(effective["nomad"]["address"], "http://localhost:4646/");
    assert_eq!(effective["nomad"]["region"], "global");
    assert!(!stdout.contains("adminpwd") && !stderr.contains("adminpwd"));
}

#[test]
fn a_misspelt_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "typo.json",
        &PREDECESSOR.replace(r#""haproxy":{"address""#, r#""haproxy":{"adress""#),
    );
    let out = run(&["check-config", "--config", &file], &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: config file {file}: unknown key `haproxy.adress` (did you mean `haproxy.address`?)"
        )
    );
}

/// Arguments, environment, expected stderr text.
type Case = (Vec<String>, Vec<(&'static str, &'static str)>, String);

#[test]
fn bad_input_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<Case> = vec![
        (
            vec!["--config".into(), "/nonexistent/c.json".into()],
            vec![],
            "error: cannot read config file /nonexistent/c.json: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["--config".into(), write(dir.path(), "bad.json", "{\"nomad\": {,}}")],
            vec![],
            "is not valid JSON: key must be a string (line 1, column 12)".into(),
        ),
        (
            vec![],
            vec![("HAPROXY_DATAPLANE_URL", "http//x")],
            "error: invalid haproxy.address (from environment variable HAPROXY_DATAPLANE_URL): `http//x` is not a valid URL: relative URL without a base".into(),
        ),
        (
            vec!["--haproxy-backend-strategy".into(), "merge".into()],
            vec![],
            "error: invalid haproxy.backend_strategy (from flag --haproxy-backend-strategy): unknown strategy `merge`; accepted: use_existing, create_new, fail_on_conflict".into(),
        ),
        (
            vec![],
            vec![("HAPROXY_DRAIN_TIMEOUT_SEC", "-3")],
            "error: invalid haproxy.drain_timeout_sec (from environment variable HAPROXY_DRAIN_TIMEOUT_SEC): must be greater than zero, got -3".into(),
        ),
        (
            vec![],
            vec![("NOMAD_TOKEN_FILE", "/nonexistent/token")],
            "error: cannot read nomad.token_file file /nonexistent/token: No such file or directory (os error 2)".into(),
        ),
    ];
    for (args, env, expected) in cases {
        let mut all = vec!["check-config".to_string()];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = run(&refs, &env);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{refs:?}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "{refs:?}: expected `{expected}` in `{stderr}`"
        );
    }
}

#[test]
fn flags_override_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "c.json",
        r#"{"nomad":{"region":"file"},"haproxy":{"username":"file","frontend":"file"}}"#,
    );
    let out = run(
        &[
            "check-config",
            "--config",
            &file,
            "--haproxy-frontend",
            "flag",
        ],
        &[("HAPROXY_USERNAME", "env"), ("HAPROXY_FRONTEND", "env")],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["nomad"]["region"], "file");
    assert_eq!(v["haproxy"]["username"], "env");
    assert_eq!(v["haproxy"]["frontend"], "flag");
}

#[test]
fn secrets_never_appear_in_logs_or_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "nomad-secret-3f9a1c7e";
    let password = "dpapi-secret-b82d4e11";
    // Credentials in URL user-info: both the user and the password part.
    let (url_user, url_password) = ("url-user-5d0c", "url-secret-9e27a0f3");
    let nomad_addr = format!("http://{url_user}:{url_password}@127.0.0.1:4646");
    let dataplane_url = format!("https://{url_user}:{url_password}@127.0.0.1:5555/");
    let pw_file = write(dir.path(), "pw", &format!("{password}\n"));
    for format in ["text", "json"] {
        for env in [
            vec![("NOMAD_TOKEN", token), ("HAPROXY_PASSWORD", password)],
            vec![
                ("NOMAD_TOKEN", token),
                ("HAPROXY_PASSWORD_FILE", pw_file.as_str()),
            ],
            vec![
                ("NOMAD_ADDR", nomad_addr.as_str()),
                ("HAPROXY_DATAPLANE_URL", dataplane_url.as_str()),
                ("HAPROXY_PASSWORD", password),
            ],
        ] {
            let mut env = env.clone();
            env.push(("LOG_LEVEL", "trace"));
            let out = run(&["check-config", "--log-format", format], &env);
            let (stdout, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            // The effective configuration is logged at debug level: prove the log was written.
            assert!(
                stderr.contains("effective configuration"),
                "no debug log in {format}: {stderr}"
            );
            if format == "json" {
                for line in stderr.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                }
            }
            for secret in [token, password, url_user, url_password] {
                assert!(
                    !stdout.contains(secret),
                    "secret in stdout ({format}): {stdout}"
                );
                assert!(
                    !stderr.contains(secret),
                    "secret in logs ({format}): {stderr}"
                );
            }
            assert!(stdout.contains("<redacted>"));
        }
    }
    // An invalid URL value is echoed in the error, without its user-info.
    let out = run(
        &["check-config"],
        &[("NOMAD_ADDR", &format!("ftp://{url_user}:{url_password}@h"))],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`ftp://<redacted>@h` has scheme `ftp`"),
        "{stderr}"
    );
    for secret in [url_user, url_password] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stderr}"
        );
    }
}

/// What `--version` must print: the name, the package version and, when this test runs in a git
/// checkout (as the build did), ` (<short commit>)`.
fn expected_version() -> String {
    let base = format!("haproxy-nomad-connector {}", env!("CARGO_PKG_VERSION"));
    if let Some(commit) = option_env!("HNC_GIT_COMMIT").filter(|c| !c.trim().is_empty()) {
        return format!("{base} ({})", commit.trim());
    }
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match git {
        Ok(out) if out.status.success() => {
            format!("{base} ({})", String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => base,
    }
}

#[test]
fn version_prints_name_version_and_commit() {
    let want = expected_version();
    for args in [&["version"][..], &["--version"][..]] {
        let out = run(args, &[]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert_eq!(stdout.trim(), want, "{args:?}");
    }
}

#[test]
fn every_deploy_file_the_readme_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let deploy = readme
        .split("\n## Deploy\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Deploy section");
    let paths = regex::Regex::new(r"(?:deploy/|scripts/|examples/)[A-Za-z0-9_./-]*[A-Za-z0-9_/]|Dockerfile|docker-compose\.dev\.yml")
        .expect("regex");
    let mut named = 0;
    for m in paths.find_iter(deploy) {
        let path = root.join(m.as_str());
        assert!(
            path.exists(),
            "README's Deploy section names {}, which does not exist",
            m.as_str()
        );
        named += 1;
    }
    assert!(
        named >= 10,
        "only {named} paths found in the Deploy section"
    );
    // And every shipped deployment file is named there or in deploy/README.md.
    let index = std::fs::read_to_string(root.join("deploy/README.md")).expect("deploy/README.md");
    for entry in std::fs::read_dir(root.join("deploy")).expect("deploy/") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        if name == "README.md" {
            continue;
        }
        assert!(
            deploy.contains(&format!("deploy/{name}")) || index.contains(&format!("`{name}`")),
            "deploy/{name} is described neither in the README's Deploy section nor in deploy/README.md"
        );
    }
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = run(&["serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("unrecognized subcommand 'serve'"),
        "{stderr}"
    );
}

#[test]
fn the_example_configurations_are_valid() {
    for file in [
        "examples/predecessor.json",
        "examples/dataplane.json",
        "examples/runtime.json",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = run(&["check-config", "--config", &path], &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
    }
}

#[test]
fn configuration_errors_of_run_and_plan_have_their_own_exit_code() {
    // `plan` uses 2 for "changes pending": a bad configuration must not look like that.
    for command in ["run", "plan"] {
        let out = run(&[command], &[("HAPROXY_DRAIN_TIMEOUT_SEC", "-3")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(78), "{command}: {stderr}");
        assert!(stderr.contains("haproxy.drain_timeout_sec"), "{stderr}");
    }
    // `check-config` keeps its documented 2.
    let out = run(&["check-config"], &[("HAPROXY_DRAIN_TIMEOUT_SEC", "-3")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_shows_each_flags_environment_variable_and_default() {
    let out = run(&["--help"], &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    let flat = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "[env: NOMAD_ADDR] [default: http://127.0.0.1:4646]",
        "[env: HAPROXY_DRAIN_TIMEOUT_SEC] [default: 30s]",
        "[env: HAPROXY_ALLOW_REGEX_DOMAINS] [default: true]",
    ] {
        assert!(
            flat.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let out = run(&["check-config"], &[("LOG_LEVEL", "info")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr.contains("configuration is valid"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape in {stderr:?}");
}

#[test]
fn run_logs_one_start_line_with_version_driver_nomad_namespaces_and_haproxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("NOMAD_ADDR", "http://ops:s3cr3t-pw@127.0.0.1:1")
        .env("HAPROXY_DATAPLANE_URL", "http://127.0.0.1:1")
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("LOG_LEVEL", "info")
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("start");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("starting")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no start line in:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let version = format!("version={}", env!("CARGO_PKG_VERSION"));
    for expected in [
        version.as_str(),
        "driver=dataplane",
        "127.0.0.1:1",
        "namespaces=",
        "haproxy=http://127.0.0.1:1",
    ] {
        assert!(line.contains(expected), "{expected} not in {line}");
    }
    assert!(!line.contains("s3cr3t-pw"), "credential in {line}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.lines().filter(|l| l.contains(" starting")).count(),
        1,
        "{text}"
    );
}

#[test]
fn run_with_the_runtime_driver_creates_its_missing_files_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let maps = dir.path().join("maps");
    let fragment = dir.path().join("conf.d").join("hnc.cfg");
    let mut child = Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("HAPROXY_DRIVER", "runtime")
        .env("HAPROXY_MASTER_SOCKET", dir.path().join("none.sock"))
        .env("HAPROXY_MAPS_DIR", &maps)
        .env("HAPROXY_FRAGMENT", &fragment)
        .env("NOMAD_ADDR", "http://127.0.0.1:1")
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let files: Vec<std::path::PathBuf> = [
        "hnc_exact.map",
        "hnc_prefix.map",
        "hnc_suffix.map",
        "hnc_regex.map",
        "hnc_path.map",
        "hnc_redirect.map",
    ]
    .iter()
    .map(|f| maps.join(f))
    .chain([fragment.clone()])
    .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !files.iter().all(|f| f.exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "missing: {:?}",
            files.iter().filter(|f| !f.exists()).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.trim().is_empty()),
            "{} is not empty: {text}",
            f.display()
        );
    }
}
