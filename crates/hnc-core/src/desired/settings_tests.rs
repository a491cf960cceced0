//! Backend settings tags of issue 14: timeouts (`timeout.server`, `timeout.connect`,
//! `timeout.tunnel`), sticky sessions (`sticky`, `sticky.cookie`) and TLS to servers
//! (`server.ssl`, `server.sni`, `server.verify`). Grammar, isolation of a bad value and disagreement (the plan side is in
//! `plan::settings_tests`).

use proptest::prelude::*;

use super::tests::{mk_instance, mk_snapshot};
use super::*;
use crate::live::LiveBackend;
use crate::model::{
    DEFAULT_STICKY_COOKIE, MAX_TIMER_MS, Mode, ServerTls, Sni, StickyCookie, Timeouts,
};

fn build_tags(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![(
        "apps",
        "chat",
        vec![mk_instance("a", "10.0.0.1", 8080, tags)],
    )]);
    build(&snap, &Live::default(), &Policy::default()).expect("build")
}

fn with_healthy_neighbour(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![
        (
            "apps",
            "chat",
            vec![mk_instance("a", "10.0.0.1", 8080, tags)],
        ),
        (
            "apps",
            "shop",
            vec![mk_instance(
                "b",
                "10.0.0.2",
                8080,
                &["haproxy.enable=true", "haproxy.timeout.server=5s"],
            )],
        ),
    ]);
    build(&snap, &Live::default(), &Policy::default()).expect("build")
}

#[test]
fn timeouts_are_read_in_milliseconds() {
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.domain=chat.test",
        "haproxy.timeout.server=45s",
        "haproxy.timeout.connect=500ms",
        "haproxy.timeout.tunnel=1h",
    ]);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    assert_eq!(
        d.backends["apps.chat"].settings.timeouts,
        Timeouts {
            server_ms: Some(45_000),
            connect_ms: Some(500),
            tunnel_ms: Some(3_600_000),
        }
    );
    // Unset: nothing on the backend (the `defaults` section's values apply).
    let d = build_tags(&["haproxy.enable=true"]);
    assert_eq!(
        d.backends["apps.chat"].settings.timeouts,
        Timeouts::default()
    );
}

#[test]
fn a_bad_timeout_skips_only_its_registration_with_namespace_service_tag_and_reason() {
    for (tag, reason) in [
        ("haproxy.timeout.server=30", "needs a unit"),
        ("haproxy.timeout.server=0s", "between 10ms and 24h"),
        ("haproxy.timeout.tunnel=600h", "between 10ms and 24h"),
        ("haproxy.timeout.tunnel=25d", "between 10ms and 24h"),
        ("haproxy.timeout.connect=1ns", "between 10ms and 24h"),
        (
            "haproxy.timeout.connect=10500us",
            "whole number of milliseconds",
        ),
        ("haproxy.timeout.connect=5 s", "contains whitespace"),
        ("haproxy.timeout.server=5s\ntimeout", "contains whitespace"),
        ("haproxy.timeout.server=5s#", "contains `#`"),
        ("haproxy.timeout.tunnel=\u{202e}5s", "is not a duration"),
        ("haproxy.timeout.tunnel=-1s", "is not a duration"),
        (
            "haproxy.timeout.server=18446744073709551615s",
            "between 10ms and 24h",
        ),
    ] {
        let d = with_healthy_neighbour(&["haproxy.enable=true", tag]);
        assert!(!d.backends.contains_key("apps.chat"), "{tag} should skip");
        assert!(d.frozen.contains("apps.chat"), "{tag}: live objects frozen");
        assert_eq!(
            d.backends["apps.shop"].settings.timeouts.server_ms,
            Some(5000),
            "{tag}: the neighbour is served"
        );
        assert_eq!(d.diagnostics.len(), 1, "{tag}: {:?}", d.diagnostics);
        let diag = &d.diagnostics[0];
        assert_eq!(
            (diag.namespace.as_str(), diag.service.as_str()),
            ("apps", "chat")
        );
        assert_eq!(diag.tag.as_deref(), Some(tag));
        assert_eq!(diag.reason, Reason::InvalidTag);
        assert_eq!(diag.severity, Severity::Skipped);
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
    }
    // Repeated with different values is a conflict, with the same value harmless.
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.timeout.tunnel=1h",
        "haproxy.timeout.tunnel=2h",
    ]);
    assert!(d.backends.is_empty());
    assert!(d.diagnostics[0].message.contains("more than once"));
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.timeout.tunnel=1h",
        "haproxy.timeout.tunnel=60m",
    ]);
    assert_eq!(
        d.backends["apps.chat"].settings.timeouts.tunnel_ms,
        Some(3_600_000)
    );
}

#[test]
fn instances_disagreeing_on_timeouts_keep_the_live_value() {
    let mut old = mk_instance(
        "v1",
        "10.0.0.1",
        80,
        &["haproxy.enable=true", "haproxy.timeout.tunnel=1h"],
    );
    old.modify_index = 10;
    let mut new = mk_instance(
        "v2",
        "10.0.0.2",
        80,
        &["haproxy.enable=true", "haproxy.timeout.tunnel=2h"],
    );
    new.modify_index = 20;
    let snap = mk_snapshot(vec![("apps", "chat", vec![old, new])]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(
        d.backends["apps.chat"].settings.timeouts.tunnel_ms,
        Some(7_200_000)
    );
    assert!(d.diagnostics[0].message.contains("disagree on timeouts"));

    let mut live_settings = d.backends["apps.chat"].settings.clone();
    live_settings.timeouts.tunnel_ms = Some(3_600_000);
    let mut live = Live::default();
    live.backends.insert(
        "apps.chat".into(),
        LiveBackend {
            name: "apps.chat".into(),
            owned: true,
            mode: Mode::Tcp,
            balance: None,
            settings: Some(live_settings.clone()),
            servers: Default::default(),
        },
    );
    let d = build(&snap, &live, &Policy::default()).expect("build");
    assert_eq!(d.backends["apps.chat"].settings, live_settings);
}

#[test]
fn sticky_cookie_tags() {
    let d = build_tags(&["haproxy.enable=true", "haproxy.sticky=cookie"]);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    let s = &d.backends["apps.chat"].settings;
    assert_eq!(
        s.sticky,
        Some(StickyCookie {
            name: DEFAULT_STICKY_COOKIE.into()
        })
    );
    // A sticky cookie is HTTP: it implies mode http.
    assert_eq!(s.mode, Mode::Http);
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.sticky=cookie",
        "haproxy.sticky.cookie=shop_srv",
    ]);
    assert_eq!(
        d.backends["apps.chat"].settings.sticky,
        Some(StickyCookie {
            name: "shop_srv".into()
        })
    );
    assert_eq!(
        build_tags(&["haproxy.enable=true"]).backends["apps.chat"]
            .settings
            .sticky,
        None
    );
}

#[test]
fn a_bad_sticky_tag_skips_only_its_registration_with_namespace_service_tag_and_reason() {
    for (tags, tag, reason) in [
        (
            &["haproxy.sticky=source"][..],
            "haproxy.sticky=source",
            "expected cookie",
        ),
        (
            &["haproxy.sticky=Cookie"][..],
            "haproxy.sticky=Cookie",
            "expected cookie",
        ),
        (
            &["haproxy.sticky.cookie=srv"][..],
            "haproxy.sticky.cookie=srv",
            "needs sticky=cookie",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=a b"][..],
            "haproxy.sticky.cookie=a b",
            "contains whitespace",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=a;b"][..],
            "haproxy.sticky.cookie=a;b",
            "contains `;`",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=a=b"][..],
            "haproxy.sticky.cookie=a=b",
            "contains `=`",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=a,b"][..],
            "haproxy.sticky.cookie=a,b",
            "contains `,`",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=sess\u{e9}"][..],
            "haproxy.sticky.cookie=sess\u{e9}",
            "contains `\u{e9}`",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie=\u{7f}"][..],
            "haproxy.sticky.cookie=\u{7f}",
            "control character",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.sticky.cookie="][..],
            "haproxy.sticky.cookie=",
            "is empty",
        ),
        (
            &["haproxy.sticky=cookie", "haproxy.mode=tcp"][..],
            "haproxy.mode=tcp",
            "need mode http",
        ),
    ] {
        let mut all = vec!["haproxy.enable=true"];
        all.extend_from_slice(tags);
        let d = with_healthy_neighbour(&all);
        assert!(!d.backends.contains_key("apps.chat"), "{tag} should skip");
        assert!(
            d.backends.contains_key("apps.shop"),
            "{tag}: neighbour served"
        );
        assert_eq!(d.diagnostics.len(), 1, "{tag}: {:?}", d.diagnostics);
        let diag = &d.diagnostics[0];
        assert_eq!(
            (diag.namespace.as_str(), diag.service.as_str()),
            ("apps", "chat")
        );
        assert_eq!(diag.tag.as_deref(), Some(tag));
        assert_eq!(diag.reason, Reason::InvalidTag);
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
    }
    let long = format!("haproxy.sticky.cookie={}", "a".repeat(65));
    let d = build_tags(&["haproxy.enable=true", "haproxy.sticky=cookie", &long]);
    assert!(d.diagnostics[0].message.contains("longer than 64"));
}

fn with_ca(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![(
        "apps",
        "chat",
        vec![mk_instance("a", "10.0.0.1", 8080, tags)],
    )]);
    let policy = Policy {
        server_ca_file: Some("/etc/haproxy/ca.pem".into()),
        ..Policy::default()
    };
    build(&snap, &Live::default(), &policy).expect("build")
}

#[test]
fn tls_to_servers_tags() {
    let d = with_ca(&["haproxy.enable=true", "haproxy.server.ssl=true"]);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    assert_eq!(
        d.backends["apps.chat"].settings.tls,
        Some(ServerTls {
            sni: None,
            ca_file: Some("/etc/haproxy/ca.pem".into())
        })
    );
    let d = with_ca(&[
        "haproxy.enable=true",
        "haproxy.server.ssl=true",
        "haproxy.server.sni=auto",
        "haproxy.server.verify=none",
    ]);
    assert_eq!(
        d.backends["apps.chat"].settings.tls,
        Some(ServerTls {
            sni: Some(Sni::Auto),
            ca_file: None
        })
    );
    let d = with_ca(&[
        "haproxy.enable=true",
        "haproxy.server.ssl=true",
        "haproxy.server.sni=API.Internal",
    ]);
    assert_eq!(
        d.backends["apps.chat"]
            .settings
            .tls
            .as_ref()
            .and_then(|t| t.sni.clone()),
        Some(Sni::Host("api.internal".into()))
    );
    // Off: nothing.
    let d = with_ca(&["haproxy.enable=true", "haproxy.server.ssl=false"]);
    assert_eq!(d.backends["apps.chat"].settings.tls, None);
    // Verifying needs the CA file of the configuration.
    let d = with_healthy_neighbour(&["haproxy.enable=true", "haproxy.server.ssl=true"]);
    assert!(!d.backends.contains_key("apps.chat"));
    assert!(d.frozen.contains("apps.chat"));
    assert_eq!(d.diagnostics.len(), 1);
    assert_eq!(
        d.diagnostics[0].tag.as_deref(),
        Some("haproxy.server.ssl=true")
    );
    assert!(d.diagnostics[0].message.contains("haproxy.server_ca_file"));
    let d = with_healthy_neighbour(&[
        "haproxy.enable=true",
        "haproxy.server.ssl=true",
        "haproxy.server.verify=none",
    ]);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
}

#[test]
fn a_bad_tls_tag_skips_only_its_registration_with_namespace_service_tag_and_reason() {
    for (tags, tag, reason) in [
        (
            &["haproxy.server.ssl=yes"][..],
            "haproxy.server.ssl=yes",
            "expected true or false",
        ),
        (
            &["haproxy.server.sni=auto"][..],
            "haproxy.server.sni=auto",
            "needs server.ssl=true",
        ),
        (
            &["haproxy.server.ssl=false", "haproxy.server.verify=none"][..],
            "haproxy.server.verify=none",
            "needs server.ssl=true",
        ),
        (
            &["haproxy.server.ssl=true", "haproxy.server.verify=optional"][..],
            "haproxy.server.verify=optional",
            "expected required or none",
        ),
        (
            &["haproxy.server.ssl=true", "haproxy.server.sni=a b"][..],
            "haproxy.server.sni=a b",
            "contains whitespace",
        ),
        (
            &["haproxy.server.ssl=true", "haproxy.server.sni=a)b"][..],
            "haproxy.server.sni=a)b",
            "contains `)`",
        ),
        (
            &["haproxy.server.ssl=true", "haproxy.server.sni=a.test:443"][..],
            "haproxy.server.sni=a.test:443",
            "must not contain a port",
        ),
        (
            &["haproxy.server.ssl=true", "haproxy.server.sni=\u{202e}x"][..],
            "haproxy.server.sni=\u{202e}x",
            "contains",
        ),
    ] {
        let mut all = vec!["haproxy.enable=true", "haproxy.server.verify=none"];
        if tags.iter().any(|t| t.starts_with("haproxy.server.verify=")) {
            all.pop();
        }
        all.extend_from_slice(tags);
        let d = with_healthy_neighbour(&all);
        assert!(!d.backends.contains_key("apps.chat"), "{tag} should skip");
        assert!(
            d.backends.contains_key("apps.shop"),
            "{tag}: neighbour served"
        );
        assert_eq!(d.diagnostics.len(), 1, "{tag}: {:?}", d.diagnostics);
        let diag = &d.diagnostics[0];
        assert_eq!(
            (diag.namespace.as_str(), diag.service.as_str()),
            ("apps", "chat")
        );
        assert_eq!(diag.tag.as_deref(), Some(tag));
        assert_eq!(diag.reason, Reason::InvalidTag);
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
    }
}

proptest! {
    /// Any SNI value: a host name safe in HAProxy's syntax, `auto`, or only that service skipped.
    #[test]
    fn any_sni_is_a_safe_host_or_skips_only_its_service(
        value in prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\\u{7f}\\u{202e} #;'\"(),:a-zA-Z0-9._-]{0,40}",
            Just("a".repeat(300)),
        ],
    ) {
        let tag = format!("haproxy.server.sni={value}");
        let d = with_healthy_neighbour(&[
            "haproxy.enable=true",
            "haproxy.server.ssl=true",
            "haproxy.server.verify=none",
            &tag,
        ]);
        prop_assert!(d.backends.contains_key("apps.shop"));
        match d.backends.get("apps.chat") {
            Some(b) => match b.settings.tls.as_ref().and_then(|t| t.sni.as_ref()) {
                Some(Sni::Host(h)) => {
                    prop_assert!(grammar::is_safe_token(h), "{:?}", h);
                    prop_assert!(h.len() <= 253 && h.is_ascii());
                    prop_assert!(!h.contains(['(', ')', ',', ':']));
                }
                Some(Sni::Auto) => prop_assert_eq!(value.as_str(), "auto"),
                None => prop_assert!(false, "ssl without its sni"),
            },
            None => {
                prop_assert_eq!(d.diagnostics.len(), 1);
                prop_assert_eq!(d.diagnostics[0].tag.as_deref(), Some(tag.as_str()));
            }
        }
    }
}

proptest! {
    /// Any cookie name: a token safe in HAProxy's syntax, or only that service skipped.
    #[test]
    fn any_cookie_name_is_a_safe_token_or_skips_only_its_service(
        value in prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\\u{7f}\\u{202e} #;'\"=,a-zA-Z0-9_!|~-]{0,70}",
        ],
    ) {
        let tag = format!("haproxy.sticky.cookie={value}");
        let d = with_healthy_neighbour(&["haproxy.enable=true", "haproxy.sticky=cookie", &tag]);
        prop_assert!(d.backends.contains_key("apps.shop"));
        match d.backends.get("apps.chat") {
            Some(b) => {
                let name = &b.settings.sticky.as_ref().expect("sticky").name;
                prop_assert!(grammar::is_safe_token(name), "{:?}", name);
                prop_assert!(name.len() <= 64 && name.is_ascii());
                prop_assert!(!name.contains(['=', ',', ';']));
            }
            None => {
                prop_assert_eq!(d.diagnostics.len(), 1);
                prop_assert_eq!(d.diagnostics[0].tag.as_deref(), Some(tag.as_str()));
            }
        }
    }
}

proptest! {
    /// Any value of a timeout tag: either a timer HAProxy accepts, or only that service skipped
    /// with a diagnostic naming it and its tag.
    #[test]
    fn any_timeout_value_is_in_range_or_skips_only_its_service(
        key in prop::sample::select(&["timeout.server", "timeout.connect", "timeout.tunnel"][..]),
        value in prop_oneof![
            any::<String>(),
            "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|y)?",
            "[\\x00-\\x1f\\u{7f}\\u{202e} #;'\"0-9smh]{0,12}",
        ],
    ) {
        let tag = format!("haproxy.{key}={value}");
        let d = with_healthy_neighbour(&["haproxy.enable=true", &tag]);
        prop_assert!(d.backends.contains_key("apps.shop"));
        match d.backends.get("apps.chat") {
            Some(b) => {
                for (_, ms) in b.settings.timeouts.entries() {
                    if let Some(ms) = ms {
                        prop_assert!((10..=MAX_TIMER_MS).contains(&ms), "{}", ms);
                    }
                }
                prop_assert!(d.diagnostics.is_empty());
            }
            None => {
                prop_assert_eq!(d.diagnostics.len(), 1);
                let diag = &d.diagnostics[0];
                prop_assert_eq!(diag.service.as_str(), "chat");
                prop_assert_eq!(diag.namespace.as_str(), "apps");
                prop_assert_eq!(diag.tag.as_deref(), Some(tag.as_str()));
            }
        }
    }
}
