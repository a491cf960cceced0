//! The bodies the Data Plane API driver writes, built by its own builders
//! (`haproxy::dataplane::objects`), validate against the spec's definitions as the double checks
//! them (`support::dataplane::schema`: every field a property of the definition, types, enums,
//! patterns, required fields, readOnly fields refused), for every shape of settings the core can
//! produce.

use haproxy_nomad_connector::haproxy::dataplane::objects::wire::{
    self, AdminState, BackendSwitchingRule, Cond, ConfigBody, MapEntry, MapEntryValue,
    RuntimeServer,
};
use haproxy_nomad_connector::haproxy::dataplane::objects::{
    backend_body, http_checks, slot_body, slot_name,
};
use haproxy_nomad_connector::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, MAX_TIMER_MS, Mode, ServerTls, Sni,
    StickyCookie, Timeouts, route_rules,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::support::dataplane::schema::{self, Validate, parse_body};

/// `body` as the API receives it, parsed and validated as the definition `T`.
fn valid<T, B>(what: &str, body: &B) -> T
where
    T: DeserializeOwned + Validate + 'static,
    B: Serialize,
{
    let bytes = serde_json::to_vec(body).expect("serialisable");
    parse_body::<T>(Some("application/json"), &bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: {} refused by the spec: {e:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn timing() -> CheckTiming {
    CheckTiming {
        interval_ms: 2000,
        timeout_ms: 1000,
        rise: 2,
        fall: 3,
    }
}

/// Every kind of settings: each check kind, with and without Host, expected statuses, maxconn and
/// timeouts, in both modes and with every balance algorithm.
fn all_settings() -> Vec<BackendSettings> {
    let mut checks = vec![CheckSpec::None, CheckSpec::Tcp { timing: timing() }];
    for host in [None, Some("api.example.com".to_string())] {
        for expect in [None, Some((200, 200)), Some((200, 399))] {
            for method in ["GET", "HEAD", "OPTIONS"] {
                checks.push(CheckSpec::Http {
                    method: method.into(),
                    path: "/health?full=1".into(),
                    host: host.clone(),
                    expect,
                    timing: timing(),
                });
            }
        }
    }
    let mut out = Vec::new();
    for check in checks {
        for (i, balance) in Balance::ALL.into_iter().enumerate() {
            let mode = if matches!(check, CheckSpec::Http { .. }) || i % 2 == 0 {
                Mode::Http
            } else {
                Mode::Tcp
            };
            out.push(BackendSettings {
                mode,
                balance,
                check: check.clone(),
                maxconn: (i % 2 == 1).then_some(100),
                timeouts: if i % 2 == 0 {
                    Timeouts::default()
                } else {
                    Timeouts {
                        server_ms: Some(30_000),
                        connect_ms: Some(10),
                        tunnel_ms: Some(MAX_TIMER_MS),
                    }
                },
                sticky: (mode == Mode::Http && i % 2 == 1).then(|| StickyCookie {
                    name: "app_srv".into(),
                }),
                tls: match i % 3 {
                    0 => None,
                    1 => Some(ServerTls {
                        sni: Some(Sni::Auto),
                        ca_file: Some("/etc/haproxy/ca.pem".into()),
                    }),
                    _ => Some(ServerTls {
                        sni: Some(Sni::Host("api.internal".into())),
                        ca_file: None,
                    }),
                },
            });
        }
    }
    out
}

#[test]
fn backend_and_http_check_bodies_validate_against_the_spec() {
    for s in all_settings() {
        let body = backend_body("svc_web-1.a:b", &s);
        let got: schema::Backend = valid("backend", &body);
        assert_eq!(got.name, "svc_web-1.a:b");
        assert!(got.httpchk_params.is_none(), "{s:?}");
        valid::<schema::Backend, _>("staged backend", &ConfigBody::Backend(Box::new(body)));

        let checks = http_checks(&s.check);
        let got: Vec<schema::HttpCheck> = valid("http_checks", &checks);
        assert_eq!(got.len(), checks.len());
        valid::<Vec<schema::HttpCheck>, _>("staged http_checks", &ConfigBody::HttpChecks(checks));
    }
    // The check is not vacuous: a field the definition does not have is refused.
    let mut wrong = serde_json::to_value(backend_body("web", &all_settings()[0])).expect("json");
    wrong["chek_timeout"] = 1.into();
    let bytes = serde_json::to_vec(&wrong).expect("json");
    assert_eq!(
        parse_body::<schema::Backend>(Some("application/json"), &bytes)
            .expect_err("unknown field")
            .code,
        schema::UNALLOWED_PROPERTY
    );
}

#[test]
fn slot_bodies_validate_against_the_spec() {
    let endpoints = [
        Endpoint::new("10.0.0.5".parse().expect("ip"), 8080),
        Endpoint::new("2001:db8::1".parse().expect("ip"), 1),
        Endpoint::new("192.0.2.1".parse().expect("ip"), 65535),
    ];
    for own in [None]
        .into_iter()
        .chain(all_settings().iter().map(Some).collect::<Vec<_>>())
    {
        for (n, endpoint) in [None]
            .into_iter()
            .chain(endpoints.iter().map(Some))
            .enumerate()
        {
            for weight in [0, 1, 256] {
                let body = slot_body(&slot_name(n + 1), endpoint, weight, own);
                let got: schema::Server = valid("server", &body);
                assert_eq!(got.weight, Some(i64::from(weight)));
                valid::<schema::Server, _>("staged server", &ConfigBody::Server(body));
            }
        }
    }
}

#[test]
fn rule_map_entry_and_runtime_server_bodies_validate_against_the_spec() {
    for (name, cond) in route_rules("/etc/haproxy/maps") {
        let rule = BackendSwitchingRule {
            name,
            cond: Some(Cond::If),
            cond_test: Some(cond),
            metadata: None,
        };
        valid::<schema::BackendSwitchingRule, _>("rule", &rule);
        valid::<schema::BackendSwitchingRule, _>(
            "staged rule",
            &ConfigBody::BackendSwitchingRule(rule),
        );
    }
    for rule in haproxy_nomad_connector::path_rules::request_rules("/etc/haproxy/maps") {
        let body = haproxy_nomad_connector::haproxy::dataplane::objects::request_rule_body(&rule);
        valid::<schema::HttpRequestRule, _>("request rule", &body);
        valid::<schema::HttpRequestRule, _>(
            "staged request rule",
            &ConfigBody::HttpRequestRule(body),
        );
    }
    let entry = MapEntry {
        id: None,
        key: Some(r"^api\\.example\\.com$".into()),
        value: Some("web".into()),
    };
    valid::<schema::MapEntry, _>("map entry", &entry);
    valid::<schema::MapEntryValue, _>(
        "map entry value",
        &MapEntryValue {
            value: "web".into(),
        },
    );
    for state in [AdminState::Ready, AdminState::Drain, AdminState::Maint] {
        valid::<schema::RuntimeServerPut, _>(
            "runtime server",
            &RuntimeServer {
                admin_state: Some(state),
                operational_state: None,
            },
        );
    }
    // A readOnly field would be refused (the double answers 619 as go-openapi does): the types
    // do not even have one to set, except `map_entry.id`, which the driver leaves out.
    let with_id = MapEntry {
        id: Some("0x1".into()),
        ..entry
    };
    let bytes = serde_json::to_vec(&with_id).expect("json");
    assert_eq!(
        parse_body::<schema::MapEntry>(Some("application/json"), &bytes)
            .expect_err("readOnly id")
            .code,
        schema::READ_ONLY
    );
}

#[test]
fn the_double_s_stored_objects_read_as_the_driver_s_types() {
    // What the double answers for a backend read with `full_section=true` (every field of the
    // definitions it models, most of which the driver does not) reads as `wire::Backend`.
    let stored = schema::Backend {
        name: "web".into(),
        mode: Some(schema::Mode::Http),
        description: Some("x".into()),
        balance: Some(schema::Balance {
            algorithm: schema::Algorithm::Leastconn,
            hash_expression: None,
            hdr_name: None,
            hdr_use_domain_only: Some(true),
            random_draws: Some(2),
            url_param: None,
        }),
        adv_check: Some(schema::AdvCheck::Httpchk),
        check_timeout: Some(1000),
        connect_timeout: Some(4000),
        retries: Some(3),
        http_connection_mode: Some(schema::HttpConnectionMode::HttpKeepAlive),
        default_server: Some(schema::DefaultServer {
            check: Some(schema::Toggle::Enabled),
            inter: Some(2000),
            init_addr: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answered = schema::to_json(&stored);
    let read: wire::Backend = wire::decode("backends", &answered.to_string()).expect("backend");
    assert_eq!(read.name, "web");
    assert_eq!(read.mode, Some(wire::ProxyMode::Http));
    assert_eq!(read.check_timeout, Some(1000));
    assert_eq!(
        read.default_server.and_then(|d| d.inter),
        Some(2000),
        "{answered}"
    );
}

/// A server answering every request with the fixed answer of its path (200, JSON, a
/// `Configuration-Version`), or 404; one request per connection.
async fn fixed_answers(answers: Vec<(&'static str, &'static str)>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let (status, body) = answers.iter().find(|(p, _)| *p == path).map_or(
                    ("404 Not Found", r#"{"code":404,"message":"no"}"#),
                    |(_, b)| ("200 OK", *b),
                );
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConfiguration-Version: 3\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// An answer of another shape than the spec's fails the observation with an error naming the
/// endpoint and the field, and nothing panics.
#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_a_typed_error_naming_endpoint_and_field() {
    use haproxy_nomad_connector::haproxy::Driver;
    use haproxy_nomad_connector::haproxy::dataplane::{DataplaneDriver, Options};

    let info = r#"{"api":{"version":"v3.2.1 abc"},"system":{}}"#;
    for (backends, stats, want) in [
        (
            r#"[{"name":"web","servers":{"s1":{"name":"s1","address":"10.0.0.1","port":"80"}}}]"#,
            r#"{"stats":[]}"#,
            ["(backends)", "`[0].servers.s1.port`", "invalid type"],
        ),
        (
            r#"{"name":"web"}"#,
            r#"{"stats":[]}"#,
            ["(backends)", "`.`", "expected a sequence"],
        ),
        (
            "[]",
            r#"{"stats":[{"name":"s1","backend_name":"web","stats":{"scur":"2"}}]}"#,
            ["(stats)", "`stats[0].stats.scur`", "invalid type"],
        ),
    ] {
        let base = fixed_answers(vec![
            ("/v3/info", info),
            ("/v3/services/haproxy/configuration/backends", backends),
            ("/v3/services/haproxy/stats/native", stats),
        ])
        .await;
        let d = DataplaneDriver::new(
            Options {
                address: base.parse().expect("url"),
                username: "admin".into(),
                password: None,
                frontend: None,
                maps_dir: "/etc/haproxy/maps".into(),
                timeouts: haproxy_nomad_connector::haproxy::dataplane::client::Timeouts {
                    call: std::time::Duration::from_secs(5),
                    reload: std::time::Duration::from_secs(5),
                },
            },
            haproxy_nomad_connector::call_metrics::CallMetrics::disabled(),
        )
        .expect("driver");
        let e = d.observe().await.expect_err("wrong shape");
        let text = e.to_string();
        for w in want {
            assert!(text.contains(w), "{w:?} not in {text}");
        }
        assert_eq!(e.kind(), "other", "{text}");
    }
}
