use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::*;

const PREDECESSOR: &str = r#"{"nomad":{"address":"http://localhost:4646","token":"","region":"global"},"haproxy":{"address":"http://localhost:5555","username":"admin","password":"adminpwd","backend_strategy":"use_existing"}}"#;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn file_layer(json: &str) -> Result<Layer, ConfigError> {
    Layer::from_json_text(json, Path::new("test.json"))
}

fn from_file(json: &str) -> Result<Config, ConfigError> {
    Config::from_layer(&file_layer(json)?)
}

fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_layer(&Layer::from_env(env(pairs))?)
}

fn flag_layer(pairs: &[(Key, &str)]) -> Layer {
    Layer::from_flags(pairs.iter().map(|(k, v)| (*k, Some(*v)))).expect("flag layer")
}

fn err(r: Result<Config, ConfigError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults() {
    let c = Config::from_layer(&Layer::default()).expect("defaults are valid");
    assert_eq!(c.nomad.address.as_str(), "http://127.0.0.1:4646/");
    assert_eq!(c.nomad.token, None);
    assert_eq!(c.nomad.region, None);
    assert_eq!(c.nomad.namespaces, Namespaces::All);
    assert!(c.nomad.namespace_deny.is_empty());
    assert_eq!(c.nomad.tag_prefix, "haproxy");
    assert_eq!(c.nomad.resync_interval, Duration::from_secs(60));
    assert_eq!(c.nomad.tls, NomadTls::default());
    assert_eq!(c.haproxy.address.as_str(), "http://127.0.0.1:5555/");
    assert_eq!(c.haproxy.username, "admin");
    assert_eq!(c.haproxy.password, None);
    assert_eq!(c.haproxy.backend_strategy, BackendStrategy::UseExisting);
    assert_eq!(c.haproxy.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.haproxy.frontend, None);
    assert_eq!(c.log.filter, "info");
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn predecessor_file_loads_as_is() {
    let c = from_file(PREDECESSOR).expect("predecessor config loads");
    assert_eq!(c.nomad.address.as_str(), "http://localhost:4646/");
    assert_eq!(c.nomad.token, None, "an empty token means no token");
    assert_eq!(c.nomad.region.as_deref(), Some("global"));
    assert_eq!(c.haproxy.address.as_str(), "http://localhost:5555/");
    assert_eq!(c.haproxy.username, "admin");
    assert_eq!(c.haproxy.password, Some(Secret::new("adminpwd")));
    assert_eq!(c.haproxy.backend_strategy, BackendStrategy::UseExisting);
}

#[test]
fn every_file_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, "pem").expect("write");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").expect("write");
    let json = serde_json::json!({
        "nomad": {"address": "https://nomad.example:4646", "token_file": token_file, "region": "eu",
                  "namespaces": ["prod", "default", "prod"], "ca_cert": pem, "client_cert": pem,
                  "client_key": pem, "tls_server_name": "server.global.nomad", "skip_verify": true},
        "haproxy": {"address": "https://lb:5555", "username": "ops", "password": "pw",
                    "backend_strategy": "fail_on_conflict", "drain_timeout_sec": 45, "frontend": "fe_http"},
        "log": {"level": "debug", "format": "json"}
    });
    let c = from_file(&json.to_string()).expect("valid");
    assert_eq!(c.nomad.address.as_str(), "https://nomad.example:4646/");
    assert_eq!(c.nomad.token, Some(Secret::new("file-token")));
    assert_eq!(c.nomad.region.as_deref(), Some("eu"));
    assert_eq!(
        c.nomad.namespaces,
        Namespaces::List(vec!["default".into(), "prod".into()])
    );
    assert_eq!(c.nomad.tls.ca_cert.as_deref(), Some(pem.as_path()));
    assert_eq!(c.nomad.tls.client_cert.as_deref(), Some(pem.as_path()));
    assert_eq!(c.nomad.tls.client_key.as_deref(), Some(pem.as_path()));
    assert_eq!(
        c.nomad.tls.server_name.as_deref(),
        Some("server.global.nomad")
    );
    assert!(c.nomad.tls.skip_verify);
    assert_eq!(c.haproxy.address.as_str(), "https://lb:5555/");
    assert_eq!(c.haproxy.username, "ops");
    assert_eq!(c.haproxy.password, Some(Secret::new("pw")));
    assert_eq!(c.haproxy.backend_strategy, BackendStrategy::FailOnConflict);
    assert_eq!(c.haproxy.drain_timeout, Duration::from_secs(45));
    assert_eq!(c.haproxy.frontend.as_deref(), Some("fe_http"));
    assert_eq!(c.log.filter, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn every_env_var() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("c.pem");
    std::fs::write(&pem, "pem").expect("write");
    let pem = pem.display().to_string();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n\n").expect("write");
    let pw = pw.display().to_string();
    let c = from_env(&[
        ("NOMAD_ADDR", "unix:///secrets/api.sock"),
        ("NOMAD_TOKEN", "tok"),
        ("NOMAD_REGION", "us"),
        ("NOMAD_NAMESPACE", "a, b"),
        ("NOMAD_CACERT", &pem),
        ("NOMAD_CLIENT_CERT", &pem),
        ("NOMAD_CLIENT_KEY", &pem),
        ("NOMAD_TLS_SERVER_NAME", "n"),
        ("NOMAD_SKIP_VERIFY", "1"),
        ("HAPROXY_DATAPLANE_URL", "http://dp:5555"),
        ("HAPROXY_USERNAME", "u"),
        ("HAPROXY_PASSWORD_FILE", &pw),
        ("HAPROXY_BACKEND_STRATEGY", "create_new"),
        ("HAPROXY_DRAIN_TIMEOUT_SEC", "2m"),
        ("HAPROXY_FRONTEND", "main"),
        ("LOG_LEVEL", "warn"),
        ("LOG_FORMAT", "json"),
    ])
    .expect("valid");
    assert_eq!(c.nomad.address.scheme(), "unix");
    assert_eq!(c.nomad.address.path(), "/secrets/api.sock");
    assert_eq!(c.nomad.token, Some(Secret::new("tok")));
    assert_eq!(c.nomad.region.as_deref(), Some("us"));
    assert_eq!(
        c.nomad.namespaces,
        Namespaces::List(vec!["a".into(), "b".into()])
    );
    assert!(
        c.nomad.tls.ca_cert.is_some()
            && c.nomad.tls.client_cert.is_some()
            && c.nomad.tls.client_key.is_some()
    );
    assert_eq!(c.nomad.tls.server_name.as_deref(), Some("n"));
    assert!(c.nomad.tls.skip_verify);
    assert_eq!(c.haproxy.address.as_str(), "http://dp:5555/");
    assert_eq!(c.haproxy.username, "u");
    assert_eq!(c.haproxy.password, Some(Secret::new("from-file")));
    assert_eq!(c.haproxy.backend_strategy, BackendStrategy::CreateNew);
    assert_eq!(c.haproxy.drain_timeout, Duration::from_secs(120));
    assert_eq!(c.haproxy.frontend.as_deref(), Some("main"));
    assert_eq!(c.log.filter, "warn");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn empty_env_vars_count_as_unset() {
    let c = from_env(&[("NOMAD_TOKEN", ""), ("NOMAD_ADDR", "")]).expect("valid");
    assert_eq!(c.nomad.token, None);
    assert_eq!(c.nomad.address.as_str(), "http://127.0.0.1:4646/");
}

#[test]
fn nomad_token_file_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("t");
    std::fs::write(&f, "secret-token\n").expect("write");
    let c = from_env(&[("NOMAD_TOKEN_FILE", &f.display().to_string())]).expect("valid");
    assert_eq!(c.nomad.token, Some(Secret::new("secret-token")));
}

#[test]
fn every_flag() {
    let layer = flag_layer(&[
        (Key::NomadAddress, "http://n:1"),
        (Key::NomadRegion, "r"),
        (Key::NomadNamespaces, "*"),
        (Key::NomadNamespaceDeny, "kube-system,ops"),
        (Key::NomadTagPrefix, "lb"),
        (Key::NomadResyncInterval, "2m"),
        (Key::NomadTlsServerName, "s"),
        (Key::NomadSkipVerify, "false"),
        (Key::HaproxyAddress, "http://h:2"),
        (Key::HaproxyUsername, "x"),
        (Key::HaproxyBackendStrategy, "create_new"),
        (Key::HaproxyDrainTimeout, "90"),
        (Key::HaproxyFrontend, "f"),
        (Key::LogLevel, "haproxy_nomad_connector=trace,warn"),
        (Key::LogFormat, "text"),
    ]);
    let c = Config::from_layer(&layer).expect("valid");
    assert_eq!(c.nomad.address.as_str(), "http://n:1/");
    assert_eq!(c.nomad.region.as_deref(), Some("r"));
    assert_eq!(c.nomad.namespaces, Namespaces::All);
    assert_eq!(c.nomad.namespace_deny, vec!["kube-system", "ops"]);
    assert_eq!(c.nomad.tag_prefix, "lb");
    assert_eq!(c.nomad.resync_interval, Duration::from_secs(120));
    assert_eq!(c.nomad.tls.server_name.as_deref(), Some("s"));
    assert!(!c.nomad.tls.skip_verify);
    assert_eq!(c.haproxy.address.as_str(), "http://h:2/");
    assert_eq!(c.haproxy.username, "x");
    assert_eq!(c.haproxy.backend_strategy, BackendStrategy::CreateNew);
    assert_eq!(c.haproxy.drain_timeout, Duration::from_secs(90));
    assert_eq!(c.haproxy.frontend.as_deref(), Some("f"));
    assert_eq!(c.log.filter, "haproxy_nomad_connector=trace,warn");
}

#[test]
fn precedence_default_file_env_flag() {
    let file = file_layer(r#"{"haproxy":{"backend_strategy":"create_new","username":"file","frontend":"from_file"},"log":{"level":"debug"}}"#)
        .expect("file");
    let environment = Layer::from_env(env(&[
        ("HAPROXY_USERNAME", "env"),
        ("HAPROXY_FRONTEND", "from_env"),
    ]))
    .expect("env");
    let flags = flag_layer(&[(Key::HaproxyFrontend, "from_flag")]);

    // default < file
    let c = Config::from_layer(&file.clone()).expect("valid");
    assert_eq!(
        c.haproxy.drain_timeout,
        Duration::from_secs(30),
        "default where nothing sets it"
    );
    assert_eq!(
        c.haproxy.backend_strategy,
        BackendStrategy::CreateNew,
        "file over default"
    );

    // file < env < flag
    let c = Config::from_layer(&file.merged(environment).merged(flags)).expect("valid");
    assert_eq!(
        c.haproxy.backend_strategy,
        BackendStrategy::CreateNew,
        "file value survives where env is silent"
    );
    assert_eq!(c.haproxy.username, "env", "env over file");
    assert_eq!(
        c.haproxy.frontend.as_deref(),
        Some("from_flag"),
        "flag over env and file"
    );
    assert_eq!(c.log.filter, "debug");
}

#[test]
fn load_reads_file_env_and_flags_in_order() {
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    f.write_all(br#"{"nomad":{"region":"file","address":"http://file:4646"},"haproxy":{"username":"file"}}"#)
        .expect("write");
    let c = Config::load(
        Some(f.path()),
        env(&[("NOMAD_REGION", "env"), ("HAPROXY_USERNAME", "env")]),
        flag_layer(&[(Key::NomadRegion, "flag")]),
    )
    .expect("valid");
    assert_eq!(c.nomad.region.as_deref(), Some("flag"));
    assert_eq!(c.haproxy.username, "env");
    assert_eq!(c.nomad.address.as_str(), "http://file:4646/");
}

#[test]
fn rust_log_wins_over_log_level_but_not_over_the_flag() {
    let c = from_env(&[("LOG_LEVEL", "warn"), ("RUST_LOG", "debug")]).expect("valid");
    assert_eq!(c.log.filter, "debug");
    let environment =
        Layer::from_env(env(&[("LOG_LEVEL", "warn"), ("RUST_LOG", "debug")])).expect("env");
    let c = Config::from_layer(&environment.merged(flag_layer(&[(Key::LogLevel, "error")])))
        .expect("valid");
    assert_eq!(c.log.filter, "error");
}

#[test]
fn unknown_json_key_is_named_with_a_suggestion() {
    let e = err(from_file(r#"{"haproxy":{"adress":"http://x:5555"}}"#));
    assert_eq!(
        e,
        "config file test.json: unknown key `haproxy.adress` (did you mean `haproxy.address`?)"
    );
    let e = err(from_file(r#"{"nomda":{}}"#));
    assert!(e.contains("unknown key `nomda`"), "{e}");
    let e = err(from_file(r#"{"nomad":{"address":"http://x"},"extra":1}"#));
    assert_eq!(e, "config file test.json: unknown key `extra`");
}

#[test]
fn invalid_json_reports_line_and_column() {
    let e = err(from_file("{\n  \"nomad\": {\"address\": \"x\",}\n}"));
    assert!(
        e.starts_with("config file test.json is not valid JSON: "),
        "{e}"
    );
    assert_eq!(
        e,
        "config file test.json is not valid JSON: trailing comma (line 2, column 28)"
    );
    let e = err(from_file("[1]"));
    assert_eq!(
        e,
        "config file test.json must hold a JSON object, found an array"
    );
    let e = err(from_file(r#"{"nomad": "x"}"#));
    assert_eq!(
        e,
        "config file test.json: section `nomad` must be a JSON object, found a string"
    );
}

#[test]
fn unreadable_config_file_names_path_and_os_error() {
    let e = Layer::from_file(Path::new("/nonexistent/conf.json")).expect_err("missing file");
    assert_eq!(
        e.to_string(),
        "cannot read config file /nonexistent/conf.json: No such file or directory (os error 2)"
    );
}

#[test]
fn unreadable_secret_file_names_key_path_and_os_error() {
    let e =
        Layer::from_env(env(&[("HAPROXY_PASSWORD_FILE", "/nonexistent/pw")])).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "cannot read haproxy.password_file file /nonexistent/pw: No such file or directory (os error 2)"
    );
}

#[test]
fn secret_and_its_file_in_one_source_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("t");
    std::fs::write(&f, "x").expect("write");
    let e = Layer::from_env(env(&[
        ("NOMAD_TOKEN", "a"),
        ("NOMAD_TOKEN_FILE", &f.display().to_string()),
    ]))
    .expect_err("conflict");
    assert_eq!(
        e.to_string(),
        "invalid nomad.token_file (from environment variable NOMAD_TOKEN_FILE): set either nomad.token or nomad.token_file, not both"
    );
}

#[test]
fn malformed_urls() {
    let e = err(from_env(&[(
        "HAPROXY_DATAPLANE_URL",
        "http//missing-colon",
    )]));
    assert_eq!(
        e,
        "invalid haproxy.address (from environment variable HAPROXY_DATAPLANE_URL): `http//missing-colon` is not a valid URL: relative URL without a base"
    );
    let e = err(from_file(r#"{"haproxy":{"address":"localhost:5555"}}"#));
    assert_eq!(
        e,
        "invalid haproxy.address (from config file test.json): `localhost:5555` has scheme `localhost`; accepted: http://, https://"
    );
    let e = err(from_env(&[("NOMAD_ADDR", "ftp://nomad")]));
    assert!(
        e.contains("has scheme `ftp`; accepted: http://, https://, unix://"),
        "{e}"
    );
    let e = err(from_env(&[("NOMAD_ADDR", "unix://")]));
    assert!(e.contains("names no socket path"), "{e}");
}

#[test]
fn unknown_strategy_lists_accepted_values() {
    let e = err(from_file(r#"{"haproxy":{"backend_strategy":"replace"}}"#));
    assert_eq!(
        e,
        "invalid haproxy.backend_strategy (from config file test.json): unknown strategy `replace`; accepted: use_existing, create_new, fail_on_conflict"
    );
}

#[test]
fn durations_accept_seconds_and_humane_strings() {
    for (input, secs) in [("30", 30), ("30s", 30), ("5m", 300), ("1h 30m", 5400)] {
        let c = from_env(&[("HAPROXY_DRAIN_TIMEOUT_SEC", input)]).expect(input);
        assert_eq!(
            c.haproxy.drain_timeout,
            Duration::from_secs(secs),
            "{input}"
        );
    }
    let c = from_file(r#"{"haproxy":{"drain_timeout_sec":"250ms"}}"#).expect("valid");
    assert_eq!(c.haproxy.drain_timeout, Duration::from_millis(250));
}

#[test]
fn negative_or_zero_durations_are_rejected() {
    let e = err(from_file(r#"{"haproxy":{"drain_timeout_sec":-5}}"#));
    assert_eq!(
        e,
        "invalid haproxy.drain_timeout_sec (from config file test.json): must be greater than zero, got -5"
    );
    let e = err(from_file(r#"{"haproxy":{"drain_timeout_sec":0}}"#));
    assert!(e.ends_with("must be greater than zero, got 0"), "{e}");
    let e = err(from_env(&[("HAPROXY_DRAIN_TIMEOUT_SEC", "0s")]));
    assert_eq!(
        e,
        "invalid haproxy.drain_timeout_sec (from environment variable HAPROXY_DRAIN_TIMEOUT_SEC): must be greater than zero, got `0s`"
    );
    let e = err(from_env(&[("HAPROXY_DRAIN_TIMEOUT_SEC", "-1m")]));
    assert!(e.ends_with("must be greater than zero, got `-1m`"), "{e}");
    let e = err(from_env(&[("HAPROXY_DRAIN_TIMEOUT_SEC", "soon")]));
    assert!(e.contains("`soon` is not a duration"), "{e}");
    let e = err(from_file(r#"{"haproxy":{"drain_timeout_sec":1.5}}"#));
    assert!(e.ends_with("expected whole seconds, got 1.5"), "{e}");
}

#[test]
fn other_bad_values() {
    let e = err(from_env(&[("NOMAD_SKIP_VERIFY", "yes")]));
    assert_eq!(
        e,
        "invalid nomad.skip_verify (from environment variable NOMAD_SKIP_VERIFY): `yes` is not a boolean (accepted: true, false, 1, 0)"
    );
    let e = err(from_file(r#"{"haproxy":{"frontend":"my frontend"}}"#));
    assert!(
        e.contains("`my frontend` is not a valid HAProxy section name"),
        "{e}"
    );
    let e = err(from_env(&[("LOG_FORMAT", "xml")]));
    assert!(
        e.ends_with("unknown log format `xml`; accepted: text, json"),
        "{e}"
    );
    let e = err(from_env(&[("LOG_LEVEL", "verbose")]));
    assert_eq!(
        e,
        "invalid log.level (from environment variable LOG_LEVEL): `verbose` is not a log level or filter directive: `verbose` is not a level (accepted: off, error, warn, info, debug, trace, or target=level)"
    );
    let e = err(from_env(&[("RUST_LOG", "hyper=loud,info")]));
    assert!(e.contains("`hyper=loud` is not a level"), "{e}");
    let e = err(from_env(&[("NOMAD_NAMESPACE", "*,prod")]));
    assert!(
        e.ends_with("`*` (all namespaces) cannot be combined with named namespaces"),
        "{e}"
    );
    let e = err(from_env(&[("NOMAD_NAMESPACE", "bad_name")]));
    assert!(
        e.contains("`bad_name` is not a valid Nomad namespace name"),
        "{e}"
    );
    let e = err(from_env(&[("NOMAD_CACERT", "/nonexistent/ca.pem")]));
    assert_eq!(
        e,
        "invalid nomad.ca_cert (from environment variable NOMAD_CACERT): cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
    );
    let e = err(from_file(r#"{"nomad":{"token":42}}"#));
    assert_eq!(
        e,
        "invalid nomad.token (from config file test.json): expected a string, found a number"
    );
    let e = err(from_env(&[("HAPROXY_USERNAME", "a:b")]));
    assert!(
        e.ends_with("a Basic-auth user name cannot contain `:`"),
        "{e}"
    );
}

#[test]
fn client_cert_without_key_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("c.pem");
    std::fs::write(&pem, "pem").expect("write");
    let e = err(from_env(&[(
        "NOMAD_CLIENT_CERT",
        &pem.display().to_string(),
    )]));
    assert!(
        e.ends_with("mutual TLS needs nomad.client_key as well"),
        "{e}"
    );
}

#[test]
fn all_invalid_values_are_reported_together() {
    let e = err(from_file(
        r#"{"haproxy":{"backend_strategy":"x","drain_timeout_sec":0},"log":{"format":"y"}}"#,
    ));
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn redacted_json_hides_secrets_and_round_trips() {
    let c = from_file(PREDECESSOR).expect("valid");
    let out = c.to_redacted_json();
    assert_eq!(out["haproxy"]["password"], "<redacted>");
    assert_eq!(out["nomad"]["token"], serde_json::Value::Null);
    assert!(!out.to_string().contains("adminpwd"));
    assert_eq!(format!("{:?}", c.haproxy.password), "Some(<redacted>)");
    // Every key printed is a known key, so the output can be read back (without its secrets).
    let mut without_secrets = out.clone();
    without_secrets["haproxy"]
        .as_object_mut()
        .expect("object")
        .remove("password");
    let again = from_file(&without_secrets.to_string()).expect("round trip");
    assert_eq!(again.haproxy.drain_timeout, c.haproxy.drain_timeout);
    assert_eq!(again.nomad.address, c.nomad.address);
}

#[test]
fn readme_documents_every_key() {
    let readme = include_str!("../../README.md");
    for spec in keys::KEYS {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", spec.json)))
            .unwrap_or_else(|| panic!("README has no table row for `{}`", spec.json));
        for var in spec.env {
            assert!(
                row.contains(&format!("`{var}`")),
                "README row for {} lacks {var}",
                spec.json
            );
        }
        if let Some(flag) = spec.flag {
            assert!(
                row.contains(&format!("`{flag}`")),
                "README row for {} lacks {flag}",
                spec.json
            );
        }
        assert!(
            row.contains(spec.default),
            "README row for {} lacks its default {}",
            spec.json,
            spec.default
        );
    }
}

#[test]
fn watcher_keys_from_file_and_env() {
    let c = from_file(
        r#"{"nomad":{"namespaces":["prod","staging"],"namespace_deny":["staging"],"tag_prefix":"edge.lb","resync_interval":15}}"#,
    )
    .expect("valid");
    assert_eq!(
        c.nomad.namespaces,
        Namespaces::List(vec!["prod".into(), "staging".into()])
    );
    assert_eq!(c.nomad.namespace_deny, vec!["staging"]);
    assert_eq!(c.nomad.tag_prefix, "edge.lb");
    assert_eq!(c.nomad.resync_interval, Duration::from_secs(15));

    let c = from_env(&[
        ("NOMAD_NAMESPACE_DENY", " b, a ,a"),
        ("HAPROXY_TAG_PREFIX", "traefik"),
        ("NOMAD_RESYNC_INTERVAL", "90s"),
    ])
    .expect("valid");
    assert_eq!(c.nomad.namespace_deny, vec!["a", "b"]);
    assert_eq!(c.nomad.tag_prefix, "traefik");
    assert_eq!(c.nomad.resync_interval, Duration::from_secs(90));
    let out = c.to_redacted_json();
    assert_eq!(
        out["nomad"]["namespace_deny"],
        serde_json::json!(["a", "b"])
    );
    assert_eq!(out["nomad"]["tag_prefix"], "traefik");
    assert_eq!(out["nomad"]["resync_interval"], "1m 30s");
    let again = from_file(&out.to_string()).expect("round trip");
    assert_eq!(again.nomad.resync_interval, c.nomad.resync_interval);
    assert_eq!(again.nomad.namespace_deny, c.nomad.namespace_deny);
}

#[test]
fn bad_watcher_keys() {
    let e = err(from_env(&[("NOMAD_NAMESPACE_DENY", "*")]));
    assert_eq!(
        e,
        "invalid nomad.namespace_deny (from environment variable NOMAD_NAMESPACE_DENY): `*` would deny every namespace; list namespace names"
    );
    let e = err(from_env(&[("NOMAD_NAMESPACE_DENY", "a_b")]));
    assert!(
        e.contains("`a_b` is not a valid Nomad namespace name"),
        "{e}"
    );
    let e = err(from_env(&[
        ("NOMAD_NAMESPACE", "prod"),
        ("NOMAD_NAMESPACE_DENY", "prod,dev"),
    ]));
    assert!(
        e.ends_with("denies every namespace of nomad.namespaces (prod): nothing would be watched"),
        "{e}"
    );
    for bad in ["has space", "ends.", "a=b"] {
        let e = err(from_env(&[("HAPROXY_TAG_PREFIX", bad)]));
        assert!(e.contains("is not a valid tag prefix"), "{bad}: {e}");
    }
    let e = err(from_env(&[("NOMAD_RESYNC_INTERVAL", "0s")]));
    assert!(e.starts_with("invalid nomad.resync_interval"), "{e}");
}

#[test]
fn reconcile_keys() {
    let c = Config::from_layer(&Layer::default()).expect("defaults");
    assert_eq!(
        c.reconcile,
        ReconcileConfig {
            resync_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(50),
            debounce_max: Duration::from_millis(500),
            max_delete_ratio: 0.5,
            mass_delete_hold: Duration::from_secs(60),
            mass_delete_confirmations: 3,
        }
    );
    let c = from_file(
        r#"{"reconcile":{"resync_interval":"10s","debounce":"20ms","debounce_max":"1s","max_delete_ratio":0.25,"mass_delete_confirmations":5}}"#,
    )
    .expect("valid");
    assert_eq!(c.reconcile.resync_interval, Duration::from_secs(10));
    assert_eq!(c.reconcile.debounce, Duration::from_millis(20));
    assert_eq!(c.reconcile.debounce_max, Duration::from_secs(1));
    assert_eq!(c.reconcile.max_delete_ratio, 0.25);
    assert_eq!(c.reconcile.mass_delete_confirmations, 5);
    let c = from_env(&[
        ("RECONCILE_MAX_DELETE_RATIO", "1"),
        ("RECONCILE_MASS_DELETE_CONFIRMATIONS", "1"),
    ])
    .expect("valid");
    assert_eq!(c.reconcile.max_delete_ratio, 1.0);
    assert_eq!(c.reconcile.mass_delete_confirmations, 1);
    let c = from_env(&[("RECONCILE_MASS_DELETE_HOLD", "1s")]).expect("valid");
    assert_eq!(c.reconcile.mass_delete_hold, Duration::from_secs(1));
    let c = from_file(r#"{"reconcile":{"mass_delete_hold":"5m"}}"#).expect("valid");
    assert_eq!(c.reconcile.mass_delete_hold, Duration::from_secs(300));
    let e = err(from_env(&[("RECONCILE_MASS_DELETE_HOLD", "0s")]));
    assert!(e.starts_with("invalid reconcile.mass_delete_hold"), "{e}");
    let e = err(from_env(&[("RECONCILE_MAX_DELETE_RATIO", "0")]));
    assert_eq!(
        e,
        "invalid reconcile.max_delete_ratio (from environment variable RECONCILE_MAX_DELETE_RATIO): must be greater than 0 and at most 1, got 0"
    );
    let e = err(from_env(&[("RECONCILE_MAX_DELETE_RATIO", "half")]));
    assert!(e.ends_with("`half` is not a number"), "{e}");
    let e = err(from_env(&[("RECONCILE_MASS_DELETE_CONFIRMATIONS", "0")]));
    assert!(e.ends_with("must be at least 1, got 0"), "{e}");
    let e = err(from_env(&[
        ("RECONCILE_DEBOUNCE", "1s"),
        ("RECONCILE_DEBOUNCE_MAX", "100ms"),
    ]));
    assert!(
        e.ends_with("must not be shorter than reconcile.debounce (1s)"),
        "{e}"
    );
    let e = err(from_env(&[("RECONCILE_RESYNC_INTERVAL", "0s")]));
    assert!(e.contains("must be greater than zero"), "{e}");
}

#[test]
fn http_listen_defaults_and_comes_from_every_source() {
    let addr = |s: &str| -> std::net::SocketAddr { s.parse().expect("test address") };
    let c = Config::from_layer(&Layer::default()).expect("defaults");
    assert_eq!(c.http.listen, addr("0.0.0.0:4650"));
    assert_eq!(c.to_redacted_json()["http"]["listen"], "0.0.0.0:4650");

    let c = from_file(r#"{"http":{"listen":"127.0.0.1:9000"}}"#).expect("valid");
    assert_eq!(c.http.listen, addr("127.0.0.1:9000"));
    let c = from_env(&[("HTTP_LISTEN", "[::1]:4650")]).expect("valid");
    assert_eq!(c.http.listen, addr("[::1]:4650"));
    assert_eq!(c.to_redacted_json()["http"]["listen"], "[::1]:4650");
    let c = Config::from_layer(&flag_layer(&[(Key::HttpListen, "127.0.0.1:0")])).expect("valid");
    assert_eq!(c.http.listen, addr("127.0.0.1:0"), "port 0: any free port");
}

#[test]
fn http_listen_must_be_an_ip_address_and_port() {
    let e = err(from_env(&[("HTTP_LISTEN", "localhost:4650")]));
    assert_eq!(
        e,
        "invalid http.listen (from environment variable HTTP_LISTEN): `localhost:4650` is not an IP address and port (for example 0.0.0.0:4650, 127.0.0.1:4650 or [::]:4650)"
    );
    let e = err(Config::from_layer(&flag_layer(&[(
        Key::HttpListen,
        "127.0.0.1",
    )])));
    assert!(
        e.starts_with("invalid http.listen (from flag --http-listen): `127.0.0.1` is not"),
        "{e}"
    );
    let e = err(from_file(r#"{"http":{"listen":"0.0.0.0:70000"}}"#));
    assert!(
        e.contains("`0.0.0.0:70000` is not an IP address and port"),
        "{e}"
    );
    let e = err(from_file(r#"{"http":{"listen":4650}}"#));
    assert_eq!(
        e,
        "invalid http.listen (from config file test.json): expected a string, found a number"
    );
}

#[test]
fn runtime_driver_keys() {
    let c = Config::from_layer(&Layer::default()).expect("defaults are valid");
    assert_eq!(c.haproxy.driver, DriverKind::Dataplane);
    let r = &c.haproxy.runtime;
    assert_eq!(r.master_socket, PathBuf::from("/run/haproxy-master.sock"));
    assert_eq!(r.admin_socket, None);
    assert_eq!(
        r.fragment,
        PathBuf::from("/etc/haproxy/conf.d/haproxy-nomad-connector.cfg")
    );
    assert_eq!(r.maps_dir, "/etc/haproxy/maps");
    assert_eq!(r.binary, PathBuf::from("haproxy"));
    assert_eq!(r.configs, vec![PathBuf::from("/etc/haproxy/haproxy.cfg")]);

    let c = from_file(
        r#"{"haproxy":{"driver":"runtime","master_socket":"/m.sock","admin_socket":"/a.sock",
            "fragment":"/d/f.cfg","maps_dir":"/maps","binary":"/bin/hx","config":["/a.cfg","/b.cfg"]}}"#,
    )
    .expect("valid");
    assert_eq!(c.haproxy.driver, DriverKind::Runtime);
    let r = &c.haproxy.runtime;
    assert_eq!(r.admin_socket, Some(PathBuf::from("/a.sock")));
    assert_eq!(
        r.configs,
        vec![PathBuf::from("/a.cfg"), PathBuf::from("/b.cfg")]
    );
    let json = c.to_redacted_json();
    assert_eq!(json["haproxy"]["driver"], "runtime");
    assert_eq!(
        json["haproxy"]["config"],
        serde_json::json!(["/a.cfg", "/b.cfg"])
    );

    let c = from_env(&[
        ("HAPROXY_DRIVER", "runtime"),
        ("HAPROXY_CONFIG", "/x.cfg, /y.cfg"),
        ("HAPROXY_MAPS_DIR", "/m"),
    ])
    .expect("valid");
    assert_eq!(
        c.haproxy.runtime.configs,
        vec![PathBuf::from("/x.cfg"), PathBuf::from("/y.cfg")]
    );
    assert_eq!(c.haproxy.runtime.maps_dir, "/m");

    let e = err(from_env(&[
        ("HAPROXY_DRIVER", "socket"),
        ("HAPROXY_MAPS_DIR", "/my maps"),
    ]));
    assert!(
        e.contains("haproxy.driver") && e.contains("accepted: dataplane, runtime"),
        "{e}"
    );
    assert!(
        e.contains("haproxy.maps_dir") && e.contains("whitespace"),
        "{e}"
    );
}

#[test]
fn url_user_info_is_redacted_wherever_a_url_is_shown() {
    assert_eq!(
        redact_url("http://user:pa%40ss@nomad.test:4646/v1?x=1"),
        "http://<redacted>@nomad.test:4646/v1?x=1"
    );
    assert_eq!(redact_url("https://tok@h/"), "https://<redacted>@h/");
    // The last `@` of the authority ends the user-info; one in the path is not user-info.
    assert_eq!(redact_url("http://u:p@x@h/a@b"), "http://<redacted>@h/a@b");
    assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
    assert_eq!(
        redact_url("unix:///run/nomad.sock"),
        "unix:///run/nomad.sock"
    );
    assert_eq!(redact_url("http//u:p@h/x"), "<redacted>@h/x");
    assert_eq!(redact_url("localhost:4646"), "localhost:4646");

    // check-config's document.
    let c = from_env(&[
        ("NOMAD_ADDR", "http://nomad-user:nomad-pw-1@nomad.test:4646"),
        (
            "HAPROXY_DATAPLANE_URL",
            "https://dp-user:dp-pw-2@lb.test:5555",
        ),
    ])
    .expect("valid");
    let shown = c.to_redacted_json().to_string();
    for secret in ["nomad-user", "nomad-pw-1", "dp-user", "dp-pw-2"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let v = c.to_redacted_json();
    assert_eq!(v["nomad"]["address"], "http://<redacted>@nomad.test:4646/");
    assert_eq!(v["haproxy"]["address"], "https://<redacted>@lb.test:5555/");
    // The URL itself keeps its credentials for the client.
    assert_eq!(c.nomad.address.password(), Some("nomad-pw-1"));

    // Errors that echo a URL value.
    for (value, expected) in [
        ("ftp://u:pw-3@h", "`ftp://<redacted>@h` has scheme `ftp`"),
        ("http//u:pw-3@h", "`<redacted>@h` is not a valid URL"),
    ] {
        let e = err(from_env(&[("NOMAD_ADDR", value)]));
        assert!(e.contains(expected), "{e}");
        assert!(!e.contains("pw-3"), "{e}");
    }
}

/// The first error of type `T` in `e`'s source chain (below `e`).
fn source_of<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        next = s.source();
    }
    None
}

#[test]
fn errors_keep_the_error_that_said_so_as_their_source() {
    // Invalid JSON: the parser's error, at the position the text names.
    let e = from_file("{\n  \"nomad\": {\"address\": \"x\",}\n}").expect_err("invalid JSON");
    let json = source_of::<serde_json::Error>(&e).expect("serde_json's error");
    assert_eq!((json.line(), json.column()), (2, 28));
    assert_eq!(
        e.to_string(),
        "config file test.json is not valid JSON: trailing comma (line 2, column 28)"
    );

    // A URL the parser refuses.
    let e = from_env(&[("HAPROXY_DATAPLANE_URL", "http//missing-colon")]).expect_err("bad URL");
    assert_eq!(
        source_of::<url::ParseError>(&e),
        Some(&url::ParseError::RelativeUrlWithoutBase)
    );
    assert_eq!(
        e.to_string(),
        "invalid haproxy.address (from environment variable HAPROXY_DATAPLANE_URL): `http//missing-colon` is not a valid URL: relative URL without a base"
    );

    // A file that cannot be read.
    let e = from_env(&[("NOMAD_CACERT", "/nonexistent/ca.pem")]).expect_err("unreadable");
    let io = source_of::<std::io::Error>(&e).expect("the io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "invalid nomad.ca_cert (from environment variable NOMAD_CACERT): cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
    );

    // A value that is wrong by rule alone has no source.
    let e = from_env(&[("NOMAD_NAMESPACE", "bad_name")]).expect_err("bad name");
    assert!(
        matches!(e, ConfigError::Invalid { source: None, .. }),
        "{e:?}"
    );
}

/// The README's configuration table is the one generated from the key declarations; with
/// `HNC_BLESS=1` the test rewrites the README's section instead.
#[test]
fn readme_configuration_table_is_generated_from_the_declarations() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let expected = readme::table();
    let current = readme::section(&readme).unwrap_or_else(|| {
        panic!(
            "README.md has no `{}` ... `{}` section",
            readme::BEGIN,
            readme::END
        )
    });
    if current == expected {
        return;
    }
    if std::env::var_os("HNC_BLESS").is_some_and(|v| v == "1") {
        let blessed = readme::with_table(&readme, &expected).expect("markers found above");
        std::fs::write(&path, blessed).expect("rewrite README.md");
        return;
    }
    panic!(
        "README.md's configuration table differs from the key declarations \
         (run with HNC_BLESS=1 to rewrite it). Expected between the markers:\n{expected}"
    );
}

#[test]
fn the_readme_table_has_one_row_per_key_with_every_column() {
    let table = readme::table();
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), keys::KEYS.len());
    for (row, spec) in rows.iter().zip(keys::KEYS) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 5, "{row}");
        assert_eq!(cells[0], format!("`{}`", spec.json));
        for var in spec.env {
            assert!(cells[1].contains(&format!("`{var}`")), "{row}");
        }
        assert_eq!(
            cells[2],
            spec.flag.map_or("—".to_string(), |f| format!("`{f}`"))
        );
        assert_eq!(cells[3], spec.default);
        assert_eq!(cells[4], spec.doc);
    }
    // Splicing replaces exactly the section between the markers.
    let doc = format!("intro\n{}\nold\n{}\nrest\n", readme::BEGIN, readme::END);
    let spliced = readme::with_table(&doc, "new\n").expect("markers");
    assert_eq!(
        spliced,
        format!("intro\n{}\nnew\n{}\nrest\n", readme::BEGIN, readme::END)
    );
    assert_eq!(readme::section(&spliced), Some("new\n"));
    assert_eq!(readme::with_table("no markers", "x"), None);
}

/// Every key, set to a valid value, is read back as the type its declared kind yields (a key
/// read as another type would be reported as a registry mistake). Keys with a default value are
/// read in every configuration; this sets the others.
#[test]
fn every_key_is_read_as_its_declared_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("c.pem");
    std::fs::write(&pem, "pem").expect("write");
    let json = serde_json::json!({
        "nomad": {"token": "t", "region": "eu", "namespace_deny": ["ops"], "ca_cert": pem,
                  "client_cert": pem, "client_key": pem, "tls_server_name": "s"},
        "haproxy": {"password": "pw", "frontend": "fe", "deny_address_ranges": ["10.0.0.0/8"],
                    "admin_socket": "/a.sock", "server_ca_file": "/etc/haproxy/ca.pem",
                    "default_domain": "{service}.apps.test"}
    });
    let c = from_file(&json.to_string()).expect("valid");
    assert_eq!(c.nomad.token, Some(Secret::new("t")));
    assert_eq!(c.nomad.namespace_deny, vec!["ops".to_string()]);
    assert_eq!(c.haproxy.deny_address_ranges.len(), 1);
    assert_eq!(
        c.haproxy.server_ca_file.as_deref(),
        Some("/etc/haproxy/ca.pem")
    );
    assert_eq!(
        c.haproxy.default_domain.as_deref(),
        Some("{service}.apps.test")
    );
    assert_eq!(
        c.haproxy.runtime.admin_socket,
        Some(PathBuf::from("/a.sock"))
    );
    // Every key without a default is set above (the secret files resolve into their secrets).
    for spec in keys::KEYS.iter().filter(|s| s.default_value().is_none()) {
        let (section, name) = spec.json.split_once('.').expect("dotted");
        let set = json[section].get(name).is_some()
            || keys::secret_files().any(|(file, _)| file == spec.key);
        assert!(set, "{} is not exercised", spec.json);
    }
}

/// A choice key accepts exactly the names of the Rust values it is read as.
#[test]
fn every_choice_names_exactly_the_values_it_is_read_as() {
    use kind::Named;
    fn names<T: Named>() -> Vec<&'static str> {
        T::ALL.iter().map(|v| v.name()).collect()
    }
    let accepted = |key: Key| match key.spec().kind {
        keys::Kind::Choice { accepted, .. } => accepted.to_vec(),
        other => panic!("{} is {other:?}", key.json()),
    };
    assert_eq!(
        accepted(Key::HaproxyBackendStrategy),
        names::<BackendStrategy>()
    );
    assert_eq!(accepted(Key::HaproxyDriver), names::<DriverKind>());
    assert_eq!(accepted(Key::LogFormat), names::<LogFormat>());
    let choices = keys::KEYS
        .iter()
        .filter(|s| matches!(s.kind, keys::Kind::Choice { .. }))
        .count();
    assert_eq!(choices, 3, "a new choice key needs its line above");
}

/// Each rule between keys: it fails when the values it relates disagree, names the key to fix,
/// and stays silent when either value is invalid or unset (that key's own error suffices).
#[test]
fn cross_key_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("c.pem");
    std::fs::write(&pem, "pem").expect("write");
    let pem = pem.display().to_string();

    // nomad.namespace_deny must leave a listed namespace to watch.
    let e = err(from_env(&[
        ("NOMAD_NAMESPACE", "prod"),
        ("NOMAD_NAMESPACE_DENY", "prod"),
    ]));
    assert_eq!(
        e,
        "invalid nomad.namespace_deny (from environment variable NOMAD_NAMESPACE_DENY): denies every namespace of nomad.namespaces (prod): nothing would be watched"
    );
    from_env(&[("NOMAD_NAMESPACE_DENY", "prod")]).expect("`*` still watches the others");
    from_env(&[
        ("NOMAD_NAMESPACE", "prod,dev"),
        ("NOMAD_NAMESPACE_DENY", "prod"),
    ])
    .expect("dev is still watched");

    // Mutual TLS needs the certificate and the key, either way round.
    let e = err(from_env(&[("NOMAD_CLIENT_KEY", &pem)]));
    assert_eq!(
        e,
        "invalid nomad.client_key (from environment variable NOMAD_CLIENT_KEY): mutual TLS needs nomad.client_cert as well"
    );
    let e = err(from_env(&[("NOMAD_CLIENT_CERT", &pem)]));
    assert!(
        e.ends_with("mutual TLS needs nomad.client_key as well"),
        "{e}"
    );
    from_env(&[("NOMAD_CLIENT_CERT", &pem), ("NOMAD_CLIENT_KEY", &pem)]).expect("both given");

    // reconcile.debounce_max is never shorter than reconcile.debounce.
    let e = err(from_env(&[
        ("RECONCILE_DEBOUNCE", "1s"),
        ("RECONCILE_DEBOUNCE_MAX", "100ms"),
    ]));
    assert_eq!(
        e,
        "invalid reconcile.debounce_max (from environment variable RECONCILE_DEBOUNCE_MAX): must not be shorter than reconcile.debounce (1s)"
    );
    from_env(&[
        ("RECONCILE_DEBOUNCE", "1s"),
        ("RECONCILE_DEBOUNCE_MAX", "1s"),
    ])
    .expect("equal");
    // The default debounce_max (500ms) against a longer debounce: the rule holds defaults too.
    let e = err(from_env(&[("RECONCILE_DEBOUNCE", "2s")]));
    assert!(
        e.starts_with("invalid reconcile.debounce_max (from built-in default)"),
        "{e}"
    );

    // An invalid value on one side reports only its own error.
    let e = err(from_env(&[
        ("NOMAD_NAMESPACE", "prod"),
        ("NOMAD_NAMESPACE_DENY", "prod,a_b"),
    ]));
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("`a_b` is not a valid Nomad namespace name"),
        "{e}"
    );
    let e = err(from_env(&[
        ("NOMAD_CLIENT_CERT", &pem),
        ("NOMAD_CLIENT_KEY", "/nonexistent/key.pem"),
    ]));
    assert!(e.contains("cannot read /nonexistent/key.pem"), "{e}");
    let e = err(from_env(&[
        ("RECONCILE_DEBOUNCE", "soon"),
        ("RECONCILE_DEBOUNCE_MAX", "1ms"),
    ]));
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// Bounds come from the declaration: a ratio's and a count's messages name the declared ones.
#[test]
fn declared_bounds_are_the_bounds_checked() {
    match Key::ReconcileMaxDeleteRatio.spec().kind {
        keys::Kind::Ratio { above, at_most } => {
            assert_eq!((above, at_most), (0.0, 1.0));
        }
        other => panic!("{other:?}"),
    }
    let e = err(from_env(&[("RECONCILE_MAX_DELETE_RATIO", "1.5")]));
    assert!(
        e.ends_with("must be greater than 0 and at most 1, got 1.5"),
        "{e}"
    );
    match Key::ReconcileMassDeleteConfirmations.spec().kind {
        keys::Kind::Count { min } => assert_eq!(min, 1),
        other => panic!("{other:?}"),
    }
    let e = err(from_file(
        r#"{"reconcile":{"mass_delete_confirmations":0}}"#,
    ));
    assert!(e.ends_with("must be at least 1, got 0"), "{e}");
    let e = err(from_env(&[("HAPROXY_FRAGMENT", "/etc/haproxy/..")]));
    assert!(e.ends_with("`/etc/haproxy/..` names no file"), "{e}");
}
