//! Unit tests of the translation and of reading answer shapes.

use serde_json::{Value, json};

use super::wire::{self, decode};
use super::*;
use crate::haproxy::dataplane::error::DataplaneError;

/// The JSON a body is sent as.
fn sent<T: serde::Serialize>(body: &T) -> Value {
    serde_json::to_value(body).expect("serialisable")
}

fn http_settings(host: Option<&str>, expect: Option<(u16, u16)>) -> BackendSettings {
    BackendSettings {
        mode: Mode::Http,
        balance: Balance::Leastconn,
        check: CheckSpec::Http {
            method: "GET".into(),
            path: "/health".into(),
            host: host.map(String::from),
            expect,
            timing: CheckTiming {
                interval_ms: 1000,
                timeout_ms: 500,
                rise: 2,
                fall: 3,
            },
        },
        maxconn: Some(10),
        timeouts: Default::default(),
        sticky: None,
        tls: None,
    }
}

#[test]
fn settings_round_trip_through_the_api_objects() {
    for s in [
        http_settings(Some("a.test"), Some((200, 399))),
        http_settings(None, None),
        http_settings(None, Some((204, 204))),
        BackendSettings {
            mode: Mode::Tcp,
            balance: Balance::Roundrobin,
            check: CheckSpec::Tcp {
                timing: CheckTiming::default(),
            },
            maxconn: None,
            timeouts: Default::default(),
            sticky: None,
            tls: None,
        },
        BackendSettings {
            mode: Mode::Tcp,
            balance: Balance::First,
            check: CheckSpec::None,
            maxconn: None,
            timeouts: Default::default(),
            sticky: None,
            tls: None,
        },
        BackendSettings {
            mode: Mode::Http,
            balance: Balance::Random,
            check: CheckSpec::None,
            maxconn: None,
            timeouts: crate::model::Timeouts {
                server_ms: Some(30_000),
                connect_ms: Some(10),
                tunnel_ms: Some(crate::model::MAX_TIMER_MS),
            },
            sticky: Some(crate::model::StickyCookie {
                name: "app_srv".into(),
            }),
            tls: Some(crate::model::ServerTls {
                sni: Some(crate::model::Sni::Auto),
                ca_file: Some("/etc/haproxy/ca.pem".into()),
            }),
        },
        BackendSettings {
            mode: Mode::Http,
            balance: Balance::Roundrobin,
            check: CheckSpec::Tcp {
                timing: CheckTiming::default(),
            },
            maxconn: None,
            timeouts: Default::default(),
            sticky: None,
            tls: Some(crate::model::ServerTls {
                sni: Some(crate::model::Sni::Host("api.internal".into())),
                ca_file: None,
            }),
        },
    ] {
        let mut b = backend_body("web", &s);
        b.http_check_list = Some(http_checks(&s.check));
        assert_eq!(parse_settings(&b), Some(s.clone()), "{b:?}");
        // And through the JSON the API stores and answers.
        let answered: wire::Backend = decode("backends", &sent(&b).to_string()).expect("decode");
        assert_eq!(parse_settings(&answered), Some(s.clone()), "{b:?}");
    }
}

#[test]
fn host_header_goes_through_a_send_rule() {
    let s = http_settings(Some("a.test"), None);
    let b = sent(&backend_body("web", &s));
    assert!(
        b.get("httpchk_params").is_none(),
        "httpchk_params.host makes HAProxy reject the config"
    );
    assert_eq!(b["adv_check"], "httpchk");
    assert_eq!(b["description"], OWNER_MARKER);
    let checks = sent(&http_checks(&s.check));
    assert_eq!(
        checks,
        json!([{"type": "send", "method": "GET", "uri": "/health", "version": "HTTP/1.1",
                "headers": [{"name": "Host", "fmt": "a.test"}]}])
    );
}

#[test]
fn slots() {
    assert_eq!(slot_name(3), "hnc_slot_0003");
    assert_eq!(slot_number("hnc_slot_0003"), Some(3));
    assert_eq!(slot_number("hnc_10.0.0.1_80"), None);
    assert_eq!(slot_target(0, 3), 4);
    assert_eq!(slot_target(4, 4), 4);
    assert_eq!(slot_target(4, 5), 8);
    assert_eq!(slot_target(8, 9), 16);
    assert_eq!(slot_target(8, 40), 64);
    let e = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
    let filled = slot_body("hnc_slot_0001", Some(&e), 3, None);
    assert_eq!(
        parse_slot(&filled),
        Some(Slot {
            name: "hnc_slot_0001".into(),
            endpoint: Some(e),
            weight: 3,
            check: None
        })
    );
    let empty = slot_body("hnc_slot_0002", None, 1, None);
    assert_eq!(parse_slot(&empty).and_then(|s| s.endpoint), None);
    assert_eq!(
        parse_slot(
            &serde_json::from_value(json!({"name": "static1", "address": "10.0.0.9"}))
                .expect("server")
        ),
        None
    );
    // A filled and an empty slot differ only in runtime-capable fields.
    let keys = |v: &wire::Server| {
        sent(v)
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(keys(&filled), keys(&empty));
    let own = http_settings(None, None);
    assert_eq!(
        keys(&slot_body("x", Some(&e), 1, Some(&own))),
        keys(&slot_body("x", None, 1, Some(&own)))
    );
}

// Answers as the API sends them (the spec's definitions, with fields the connector does not model
// and fields a newer API may add): each must read, and its modelled fields must come out right.

#[test]
fn info_reads_with_its_system_block() {
    let info: wire::Info = decode(
        "info",
        r#"{"api":{"version":"v3.2.1 45a3288","build_date":"2025-06-01T10:00:00.000Z",
            "future":"x"},
           "system":{"hostname":"lb1","os_string":"Linux 6.1","cpu_info":{"model":"x","num_cpus":4},
             "mem_info":{"total_memory":1,"free_memory":1,"dataplaneapi_memory":1},
             "time":1700000000,"uptime":null}}"#,
    )
    .expect("info");
    let api = info.api.expect("api");
    assert_eq!(api.version.as_deref(), Some("v3.2.1 45a3288"));
    assert_eq!(
        decode::<wire::Info>("info", "{}").expect("empty info"),
        wire::Info::default()
    );
}

#[test]
fn a_full_section_backend_reads_with_child_lists_it_does_not_model() {
    let list: Vec<wire::Backend> = decode(
        "backends",
        r#"[{"name":"web","mode":"http","description":"managed-by=haproxy-nomad-connector",
             "balance":{"algorithm":"leastconn","hash_expression":null},
             "adv_check":"httpchk","check_timeout":500,"connect_timeout":5000,"retries":3,
             "http_connection_mode":"http-keep-alive","id":7,
             "default_server":{"check":"enabled","inter":1000,"rise":2,"fall":3,"maxconn":10,
               "init-addr":"last,libc,none","resolvers":"dns"},
             "servers":{
               "hnc_slot_0001":{"name":"hnc_slot_0001","address":"10.0.0.5","port":8080,
                 "weight":3,"maintenance":"disabled","id":1,"init-addr":"none","ssl":"disabled"},
               "hnc_slot_0002":{"name":"hnc_slot_0002","address":"127.0.0.1","port":1,
                 "weight":1,"maintenance":"enabled"}},
             "server_templates":{},
             "http_check_list":[
               {"type":"send","method":"GET","uri":"/health","version":"HTTP/1.1",
                "headers":[{"name":"Host","fmt":"a.test"}],"body":""},
               {"type":"expect","match":"status","pattern":"200-399","exclamation_mark":false}],
             "acl_list":[{"acl_name":"a","criterion":"path","value":"/"}],
             "tcp_check_rule_list":[],"log_target_list":null},
            {"name":"static","mode":"tcp",
             "servers":{"s1":{"name":"s1","address":"10.1.0.1","port":80,"check":"enabled",
               "weight":300,"agent-check":"disabled"}}},
            {"name":"bare"}]"#,
    )
    .expect("backends");
    assert_eq!(list.len(), 3);
    let web = &list[0];
    // `connect_timeout` is the backend's own `timeout connect`, read as set.
    let mut want = http_settings(Some("a.test"), Some((200, 399)));
    want.timeouts.connect_ms = Some(5000);
    assert_eq!(parse_settings(web), Some(want));
    let servers = web.servers.as_ref().expect("servers");
    let e = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
    assert_eq!(
        parse_slot(&servers["hnc_slot_0001"]),
        Some(Slot {
            name: "hnc_slot_0001".into(),
            endpoint: Some(e),
            weight: 3,
            check: None
        })
    );
    assert_eq!(
        parse_slot(&servers["hnc_slot_0002"]).map(|s| s.endpoint),
        Some(None)
    );
    let s1 = &list[1].servers.as_ref().expect("servers")["s1"];
    assert_eq!(parse_slot(s1), None, "not a slot");
    assert_eq!(s1.check, Some(wire::Toggle::Enabled));
    assert_eq!(server_weight(s1), 300);
    assert_eq!(list[1].mode, Some(wire::ProxyMode::Tcp));
    assert_eq!(parse_settings(&list[2]), None);
}

#[test]
fn native_stats_read_servers_and_skip_nothing_they_do_not_need() {
    let stats: wire::NativeStats = decode(
        "stats",
        r#"{"runtimeAPI":"/run/haproxy.sock","stats":[
            {"type":"frontend","name":"fe","stats":{"scur":4,"status":"OPEN","req_tot":9}},
            {"type":"backend","name":"web","stats":{"status":"UP","scur":2}},
            {"type":"server","name":"hnc_slot_0001","backend_name":"web",
             "stats":{"status":"DRAIN","scur":2,"check_status":"L7OK","weight":3,"lastchg":12}},
            {"type":"server","name":"s2","backend_name":"web","stats":{"status":"no check"}}]}"#,
    )
    .expect("stats");
    let list = stats.stats.expect("stats");
    assert_eq!(list.len(), 4);
    assert_eq!(list[2].kind, Some(wire::NativeStatType::Server));
    assert_eq!(list[2].backend_name.as_deref(), Some("web"));
    let inner = list[2].stats.as_ref().expect("inner");
    assert_eq!(inner.status.as_deref(), Some("DRAIN"));
    assert_eq!(inner.scur, Some(2));
    assert_eq!(list[3].stats.as_ref().and_then(|s| s.scur), None);
    // `stats` is left out when there is nothing to show.
    let empty: wire::NativeStats =
        decode("stats", r#"{"runtimeAPI":"/run/haproxy.sock"}"#).expect("empty");
    assert_eq!(empty.stats, None);
}

#[test]
fn maps_rules_and_transactions_read() {
    let entries: Vec<wire::MapEntry> = decode(
        "map_entries",
        r#"[{"id":"0x55d1","key":"api.example.com","value":"web"},{"id":"0x55d2","key":"x"}]"#,
    )
    .expect("entries");
    assert_eq!(entries[0].key.as_deref(), Some("api.example.com"));
    assert_eq!(entries[0].value.as_deref(), Some("web"));
    assert_eq!(entries[1].value, None);

    let stored: Vec<wire::StorageMap> = decode(
        "storage_maps",
        r#"[{"id":"host_exact.map","file":"/etc/haproxy/maps/host_exact.map",
             "storage_name":"host_exact.map","description":"managed","size":12,"mtime":1}]"#,
    )
    .expect("maps");
    assert_eq!(stored[0].storage_name.as_deref(), Some("host_exact.map"));
    assert_eq!(
        stored[0].file.as_deref(),
        Some("/etc/haproxy/maps/host_exact.map")
    );

    let rules: Vec<wire::BackendSwitchingRule> = decode(
        "backend_switching_rules",
        r#"[{"name":"%[req.hdr(host),lower,map(/etc/haproxy/maps/host_exact.map)]",
             "cond":"if","cond_test":"{ req.hdr(host),lower,map(/x) -m found }",
             "metadata":{"owner":{"v":"x"}}},
            {"name":"static"}]"#,
    )
    .expect("rules");
    assert_eq!(rules[1].name, "static");
    assert_eq!(rules[0].cond, Some(wire::Cond::If));

    let t: wire::Transaction = decode(
        "transactions",
        r#"{"id":"273e3385-2d0c-4fb1-aa27-93cbb31ff203","_version":7,"status":"in_progress",
            "extra":true}"#,
    )
    .expect("transaction");
    assert_eq!(
        t.id.as_deref(),
        Some("273e3385-2d0c-4fb1-aa27-93cbb31ff203")
    );
    assert_eq!(t.version, Some(7));
    assert_eq!(t.status, Some(wire::TransactionStatus::InProgress));

    let e: wire::ApiError =
        decode("backends", r#"{"code":404,"message":"missing object"}"#).expect("error");
    assert_eq!(e.message.as_deref(), Some("missing object"));
}

#[test]
fn an_answer_of_the_wrong_shape_names_the_endpoint_and_the_field() {
    let err = decode::<Vec<wire::Backend>>(
        "backends",
        r#"[{"name":"web"},{"name":"api","servers":{"s1":{"name":"s1","address":"a","port":"80"}}}]"#,
    )
    .expect_err("port is a string");
    let text = err.to_string();
    match &err {
        DataplaneError::Decode { endpoint, path, .. } => {
            assert_eq!(*endpoint, "backends");
            assert_eq!(path, "[1].servers.s1.port");
        }
        other => panic!("not a decode error: {other:?}"),
    }
    assert!(
        text.contains("backends") && text.contains("[1].servers.s1.port"),
        "{text}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the serde error is kept"
    );

    for (body, path) in [
        (r#"{"stats":[]}"#, "."),
        ("", "."),
        ("[] trailing", "."),
        (r#"[{"mode":"http"}]"#, "[0]"),
    ] {
        match decode::<Vec<wire::Backend>>("backends", body) {
            Err(DataplaneError::Decode { path: p, .. }) => assert_eq!(p, path, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }
    // A spec enum holds to its values.
    assert!(matches!(
        decode::<wire::NativeStats>("stats", r#"{"stats":[{"type":"listener"}]}"#),
        Err(DataplaneError::Decode { ref path, .. }) if path == "stats[0].type"
    ));
}

#[test]
fn written_bodies_carry_only_what_the_connector_sets() {
    let s = http_settings(None, Some((200, 200)));
    assert_eq!(
        sent(&backend_body("web", &s)),
        json!({"name": "web", "description": OWNER_MARKER, "mode": "http",
               "balance": {"algorithm": "leastconn"}, "adv_check": "httpchk",
               "check_timeout": 500,
               "default_server": {"check": "enabled", "inter": 1000, "rise": 2, "fall": 3,
                                  "maxconn": 10}})
    );
    assert_eq!(
        sent(&http_checks(&s.check)),
        json!([{"type": "send", "method": "GET", "uri": "/health", "version": "HTTP/1.0"},
               {"type": "expect", "match": "status", "pattern": "200"}])
    );
    let tcp = BackendSettings {
        mode: Mode::Tcp,
        balance: Balance::Roundrobin,
        check: CheckSpec::None,
        maxconn: None,
        timeouts: Default::default(),
        sticky: None,
        tls: None,
    };
    assert_eq!(
        sent(&backend_body("db", &tcp)),
        json!({"name": "db", "description": OWNER_MARKER, "mode": "tcp",
               "balance": {"algorithm": "roundrobin"},
               "default_server": {"check": "disabled"}})
    );
    assert_eq!(sent(&http_checks(&tcp.check)), json!([]));
    assert_eq!(
        sent(&slot_body("hnc_slot_0002", None, 1, Some(&s))),
        json!({"name": "hnc_slot_0002", "address": PLACEHOLDER_ADDRESS, "port": PLACEHOLDER_PORT,
               "weight": 1, "maintenance": "enabled", "check": "enabled", "inter": 1000,
               "rise": 2, "fall": 3, "maxconn": 10})
    );
    // A staged body is sent as the object itself.
    let rule = wire::BackendSwitchingRule {
        name: "web".into(),
        cond: Some(wire::Cond::If),
        cond_test: Some("{ always_true }".into()),
        metadata: None,
    };
    assert_eq!(
        sent(&wire::ConfigBody::BackendSwitchingRule(rule.clone())),
        sent(&rule)
    );
    assert_eq!(
        sent(&wire::ConfigBody::HttpChecks(http_checks(&s.check))),
        sent(&http_checks(&s.check))
    );
    assert_eq!(
        sent(&wire::RuntimeServer {
            admin_state: Some(wire::AdminState::Drain),
            operational_state: None
        }),
        json!({"admin_state": "drain"})
    );
}
