//! Tag grammar, defaults, precedence, strategies and diagnostics of the desired model.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::catalog::{Instance, NomadCheck, NomadCheckKind, Service};
use crate::live::LiveBackend;
use crate::model::{Balance, CheckSpec, CheckTiming, MAX_TIMER_MS, Mode};

pub(crate) fn mk_instance(id: &str, addr: &str, port: u16, tags: &[&str]) -> Instance {
    Instance {
        id: id.to_string(),
        job_id: "job".into(),
        alloc_id: format!("alloc-{id}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: addr.to_string(),
        port,
        create_index: 10,
        modify_index: 10,
        nomad_check: None,
    }
}

pub(crate) fn mk_snapshot(services: Vec<(&str, &str, Vec<Instance>)>) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    for (ns, name, instances) in services {
        s.services
            .insert(ServiceKey::new(ns, name), Arc::new(Service { instances }));
    }
    s
}

fn build_one(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![mk_instance("a", "10.0.0.1", 8080, tags)],
    )]);
    build(&snap, &Live::default(), &Policy::default()).expect("build")
}

fn only_backend(d: &Desired) -> &DesiredBackend {
    assert_eq!(d.backends.len(), 1, "{:#?}", d);
    d.backends.values().next().expect("one backend")
}

fn route(kind: MatchKind, key: &str) -> RouteKey {
    RouteKey {
        kind,
        key: key.to_string(),
    }
}

fn reasons(d: &Desired) -> Vec<(Reason, Severity)> {
    d.diagnostics
        .iter()
        .map(|x| (x.reason, x.severity))
        .collect()
}

fn foreign_backend(name: &str, mode: Mode, balance: Option<&str>) -> LiveBackend {
    LiveBackend {
        name: name.into(),
        owned: false,
        mode,
        balance: balance.map(String::from),
        settings: None,
        servers: Default::default(),
    }
}

#[test]
fn only_enabled_services_are_considered() {
    assert!(build_one(&["haproxy.domain=a.example"]).backends.is_empty());
    assert!(
        build_one(&["haproxy.enable=false", "haproxy.domain=a.example"])
            .backends
            .is_empty()
    );
    assert_eq!(
        build_one(&["haproxy.enable=TRUE"]).backends.len(),
        1,
        "case-insensitive"
    );
    assert_eq!(build_one(&["haproxy.enable=True"]).backends.len(), 1);
    let d = build_one(&["haproxy.enable=yes"]);
    assert!(d.backends.is_empty());
    assert_eq!(reasons(&d), vec![(Reason::InvalidTag, Severity::Skipped)]);
}

#[test]
fn defaults_for_a_bare_service() {
    let d = build_one(&["haproxy.enable=true"]);
    let b = only_backend(&d);
    assert_eq!(b.name, "web");
    assert_eq!(b.ownership, Ownership::Owned);
    assert_eq!(
        b.settings,
        BackendSettings {
            mode: Mode::Tcp,
            balance: Balance::Roundrobin,
            check: CheckSpec::Tcp {
                timing: CheckTiming::default()
            },
            maxconn: None,
            timeouts: Default::default(),
            sticky: None,
            tls: None,
        }
    );
    let e = Endpoint::new("10.0.0.1".parse().expect("ip"), 8080);
    assert_eq!(
        b.servers.get(&e),
        Some(&ServerSpec {
            weight: 1,
            failing_checks: false
        })
    );
    assert!(d.routes.is_empty());
    assert!(d.diagnostics.is_empty());
}

#[test]
fn custom_prefix() {
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![mk_instance(
            "a",
            "10.0.0.1",
            80,
            &["lb.enable=true", "lb.domain=x.test", "haproxy.enable=true"],
        )],
    )]);
    let policy = Policy {
        tag_prefix: "lb".into(),
        ..Policy::default()
    };
    let d = build(&snap, &Live::default(), &policy).expect("build");
    assert_eq!(
        d.routes
            .get(&route(MatchKind::Exact, "x.test"))
            .map(String::as_str),
        Some("web")
    );
}

#[test]
fn every_domain_tag_counts_and_matching_is_lower_case() {
    // LESSONS 13: only the last domain tag counted; matching was case-sensitive.
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=A.Example.com",
        "haproxy.domain=b.example.com",
        "haproxy.domain=*.Wild.example.com",
    ]);
    let keys: Vec<_> = d.routes.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            route(MatchKind::Exact, "a.example.com"),
            route(MatchKind::Exact, "b.example.com"),
            route(MatchKind::Suffix, ".wild.example.com"),
        ]
    );
    assert!(d.routes.values().all(|b| b == "web"));
    assert_eq!(
        only_backend(&d).settings.mode,
        Mode::Http,
        "domains imply http"
    );
}

#[test]
fn domain_types() {
    // LESSONS 13: prefix matching was documented but never implemented.
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=api.",
        "haproxy.domain.type=prefix",
    ]);
    assert!(d.routes.contains_key(&route(MatchKind::Prefix, "api.")));
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=.example.org",
        "haproxy.domain.type=suffix",
    ]);
    assert!(
        d.routes
            .contains_key(&route(MatchKind::Suffix, ".example.org"))
    );
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=^api-[0-9]+\\.example\\.org$",
        "haproxy.domain.type=regex",
    ]);
    assert!(
        d.routes
            .contains_key(&route(MatchKind::Regex, "^api-[0-9]+\\.example\\.org$"))
    );
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=a.test",
        "haproxy.domain.type=glob",
    ]);
    assert!(d.backends.is_empty());
    assert!(
        d.diagnostics[0]
            .message
            .starts_with("expected exact, prefix, suffix or regex")
    );
}

#[test]
fn a_domain_with_a_port_is_rejected() {
    let d = build_one(&["haproxy.enable=true", "haproxy.domain=a.test:443"]);
    assert!(d.backends.is_empty());
    assert!(
        d.diagnostics[0].message.contains("must not contain a port"),
        "{:?}",
        d.diagnostics
    );
}

#[test]
fn regex_domain_never_becomes_a_check_host_header() {
    // LESSONS 13: regex domains were sent verbatim as the Host header of health checks.
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=^a\\.test$",
        "haproxy.domain.type=regex",
        "haproxy.check.path=/health",
    ]);
    match &only_backend(&d).settings.check {
        CheckSpec::Http { host, .. } => assert_eq!(host, &None),
        other => panic!("expected http check, got {other:?}"),
    }
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=*.a.test",
        "haproxy.check.path=/health",
    ]);
    match &only_backend(&d).settings.check {
        CheckSpec::Http { host, .. } => assert_eq!(host, &None, "suffix domains are not hosts"),
        other => panic!("expected http check, got {other:?}"),
    }
}

#[test]
fn exact_domain_is_the_check_host_only_when_the_http_check_sets_none() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=b.test",
        "haproxy.domain=a.test",
        "haproxy.check.path=/health",
    ]);
    match &only_backend(&d).settings.check {
        CheckSpec::Http { host, .. } => assert_eq!(
            host.as_deref(),
            Some("a.test"),
            "first exact domain, sorted"
        ),
        other => panic!("{other:?}"),
    }
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=a.test",
        "haproxy.check.path=/health",
        "haproxy.check.host=internal.test:8080",
    ]);
    match &only_backend(&d).settings.check {
        CheckSpec::Http { host, .. } => assert_eq!(host.as_deref(), Some("internal.test:8080")),
        other => panic!("{other:?}"),
    }
    // No HTTP check asked for: a domain does not create one.
    let d = build_one(&["haproxy.enable=true", "haproxy.domain=a.test"]);
    assert!(matches!(
        only_backend(&d).settings.check,
        CheckSpec::Tcp { .. }
    ));
}

#[test]
fn every_check_tag() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.path=/healthz?full=1",
        "haproxy.check.method=head",
        "haproxy.check.host=svc.internal",
        "haproxy.check.interval=5s",
        "haproxy.check.timeout=1500ms",
        "haproxy.check.rise=3",
        "haproxy.check.fall=4",
        "haproxy.check.expect=200-299",
    ]);
    let b = only_backend(&d);
    assert_eq!(
        b.settings.check,
        CheckSpec::Http {
            method: "HEAD".into(),
            path: "/healthz?full=1".into(),
            host: Some("svc.internal".into()),
            expect: Some((200, 299)),
            timing: CheckTiming {
                interval_ms: 5000,
                timeout_ms: 1500,
                rise: 3,
                fall: 4
            },
        }
    );
    assert_eq!(
        b.settings.mode,
        Mode::Http,
        "an explicit http check implies http mode"
    );
    let d = build_one(&["haproxy.enable=true", "haproxy.check.type=http"]);
    assert!(
        matches!(&only_backend(&d).settings.check, CheckSpec::Http { path, method, .. } if path == "/" && method == "GET")
    );
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.type=tcp",
        "haproxy.check.interval=10s",
    ]);
    assert_eq!(
        only_backend(&d).settings.check,
        CheckSpec::Tcp {
            timing: CheckTiming {
                interval_ms: 10_000,
                timeout_ms: 10_000,
                rise: 2,
                fall: 3
            }
        }
    );
    let d = build_one(&["haproxy.enable=true", "haproxy.check.type=none"]);
    assert_eq!(only_backend(&d).settings.check, CheckSpec::None);
}

#[test]
fn check_disabled_is_a_real_boolean() {
    // The predecessor treated any value starting with "t" (or a prefix match) as true.
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.disabled=true",
        "haproxy.check.path=/h",
    ]);
    assert_eq!(only_backend(&d).settings.check, CheckSpec::None);
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.disabled=false",
        "haproxy.check.path=/h",
    ]);
    assert!(matches!(
        only_backend(&d).settings.check,
        CheckSpec::Http { .. }
    ));
    for bad in [
        "haproxy.check.disabled=t",
        "haproxy.check.disabled=truely",
        "haproxy.check.disabled=1",
    ] {
        let d = build_one(&["haproxy.enable=true", bad]);
        assert!(d.backends.is_empty(), "{bad}");
        assert_eq!(d.diagnostics[0].tag.as_deref(), Some(bad));
        assert!(
            d.diagnostics[0]
                .message
                .starts_with("expected true or false")
        );
    }
}

#[test]
fn tcp_check_type_with_http_settings_is_rejected() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.type=tcp",
        "haproxy.check.path=/h",
    ]);
    assert!(d.backends.is_empty());
    assert!(
        d.diagnostics[0]
            .message
            .contains("conflict with check.type=tcp")
    );
}

fn nomad_check(kind: NomadCheckKind, path: Option<&str>, host: Option<&str>) -> NomadCheck {
    NomadCheck {
        kind,
        path: path.map(String::from),
        method: Some("GET".into()),
        interval: Some(Duration::from_secs(7)),
        timeout: Some(Duration::from_secs(3)),
        host: host.map(String::from),
    }
}

fn build_with_nomad_check(tags: &[&str], check: NomadCheck) -> Desired {
    let mut inst = mk_instance("a", "10.0.0.1", 80, tags);
    inst.nomad_check = Some(check);
    build(
        &mk_snapshot(vec![("default", "web", vec![inst])]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build")
}

#[test]
fn check_precedence_tags_then_nomad_job_then_tcp() {
    let timing = CheckTiming {
        interval_ms: 7000,
        timeout_ms: 3000,
        rise: 2,
        fall: 3,
    };
    // Nomad http check, no tags.
    let d = build_with_nomad_check(
        &["haproxy.enable=true"],
        nomad_check(NomadCheckKind::Http, Some("/ready"), Some("h.internal")),
    );
    assert_eq!(
        only_backend(&d).settings.check,
        CheckSpec::Http {
            method: "GET".into(),
            path: "/ready".into(),
            host: Some("h.internal".into()),
            expect: None,
            timing
        }
    );
    assert_eq!(
        only_backend(&d).settings.mode,
        Mode::Tcp,
        "a job's check alone does not switch the mode"
    );
    // Tags win over the job.
    let d = build_with_nomad_check(
        &[
            "haproxy.enable=true",
            "haproxy.check.path=/tagged",
            "haproxy.check.interval=1s",
        ],
        nomad_check(NomadCheckKind::Http, Some("/ready"), None),
    );
    match &only_backend(&d).settings.check {
        CheckSpec::Http { path, timing, .. } => {
            assert_eq!(path, "/tagged");
            assert_eq!(timing.interval_ms, 1000);
            assert_eq!(timing.timeout_ms, 3000, "the job's timeout still applies");
        }
        other => panic!("{other:?}"),
    }
    // Nomad tcp and other kinds → TCP.
    let d = build_with_nomad_check(
        &["haproxy.enable=true"],
        nomad_check(NomadCheckKind::Tcp, None, None),
    );
    assert_eq!(only_backend(&d).settings.check, CheckSpec::Tcp { timing });
    let d = build_with_nomad_check(
        &["haproxy.enable=true"],
        nomad_check(NomadCheckKind::Other("script".into()), None, None),
    );
    assert_eq!(only_backend(&d).settings.check, CheckSpec::Tcp { timing });
    // A job check with an unsafe path is not used as is.
    let d = build_with_nomad_check(
        &["haproxy.enable=true"],
        nomad_check(NomadCheckKind::Http, Some("/a b"), None),
    );
    assert_eq!(only_backend(&d).settings.check, CheckSpec::Tcp { timing });
    assert_eq!(reasons(&d), vec![(Reason::InvalidTag, Severity::Warning)]);
}

#[test]
fn balance_mode_maxconn_weight() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.balance=leastconn",
        "haproxy.mode=http",
        "haproxy.maxconn=100",
        "haproxy.weight=50",
    ]);
    let b = only_backend(&d);
    assert_eq!(b.settings.balance, Balance::Leastconn);
    assert_eq!(b.settings.mode, Mode::Http);
    assert_eq!(b.settings.maxconn, Some(100));
    assert_eq!(b.servers.values().next().map(|s| s.weight), Some(50));

    let d = build_one(&["haproxy.enable=true", "haproxy.balance=source"]);
    assert!(d.backends.is_empty());
    assert!(
        d.diagnostics[0]
            .message
            .contains("cannot add or remove servers without a reload")
    );
    let d = build_one(&["haproxy.enable=true", "haproxy.balance=fastest"]);
    assert!(d.diagnostics[0].message.starts_with("unknown algorithm"));
    let d = build_one(&["haproxy.enable=true", "haproxy.weight=300"]);
    assert!(d.diagnostics[0].message.contains("between 0 and 256"));
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.mode=tcp",
        "haproxy.domain=a.test",
    ]);
    assert!(d.diagnostics[0].message.contains("needs mode http"));
}

#[test]
fn invalid_values_skip_the_service_with_namespace_service_tag_value_and_reason() {
    for (tag, reason) in [
        ("haproxy.check.path=/a b", "contains whitespace"),
        ("haproxy.check.path=/a#b", "contains `#`"),
        ("haproxy.check.path=health", "must start with `/`"),
        ("haproxy.check.path=/x\"y", "contains `\"`"),
        ("haproxy.domain=a.test\nbackend evil", "contains whitespace"),
        ("haproxy.domain=a;b", "contains `;`"),
        ("haproxy.check.method=FETCH", "unknown method"),
        ("haproxy.check.interval=5", "needs a unit"),
        ("haproxy.check.interval=0s", "between 10ms and 24h"),
        ("haproxy.check.rise=0", "between 1 and 1000"),
        ("haproxy.check.expect=200-100", "is empty"),
        ("haproxy.check.expect=700", "not an HTTP status"),
        ("haproxy.maxconn=-1", "whole number"),
        (
            "haproxy.backend=shared",
            "expected dynamic, custom or static",
        ),
        ("haproxy.check.host=a b", "contains whitespace"),
        ("haproxy.check", "expected `haproxy.<key>=<value>`"),
    ] {
        let d = build_one(&["haproxy.enable=true", tag]);
        assert!(d.backends.is_empty(), "{tag} should skip the service");
        assert_eq!(d.diagnostics.len(), 1, "{tag}: {:?}", d.diagnostics);
        let diag = &d.diagnostics[0];
        assert_eq!(
            (diag.namespace.as_str(), diag.service.as_str()),
            ("default", "web")
        );
        assert_eq!(diag.tag.as_deref(), Some(tag));
        assert_eq!(diag.reason, Reason::InvalidTag);
        assert_eq!(diag.severity, Severity::Skipped);
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
        assert!(
            diag.to_string()
                .starts_with(&format!("default/web: tag `{tag}`: "))
        );
    }
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.domain=(unclosed",
        "haproxy.domain.type=regex",
    ]);
    assert!(
        d.diagnostics[0]
            .message
            .contains("not a valid regular expression")
    );
}

#[test]
fn an_invalid_service_does_not_affect_others_and_its_live_objects_are_frozen() {
    let snap = mk_snapshot(vec![
        (
            "default",
            "bad",
            vec![mk_instance(
                "b",
                "10.0.0.2",
                80,
                &["haproxy.enable=true", "haproxy.check.path=/ x"],
            )],
        ),
        (
            "default",
            "good",
            vec![mk_instance(
                "g",
                "10.0.0.3",
                80,
                &["haproxy.enable=true", "haproxy.domain=g.test"],
            )],
        ),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(d.backends.keys().collect::<Vec<_>>(), vec!["good"]);
    assert!(d.frozen.contains("bad"));
    assert_eq!(d.routes.len(), 1);
}

#[test]
fn repeated_single_tags_must_agree() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.path=/a",
        "haproxy.check.path=/a",
    ]);
    assert_eq!(d.backends.len(), 1);
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.check.path=/a",
        "haproxy.check.path=/b",
    ]);
    assert!(d.diagnostics[0].message.contains("set more than once"));
}

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let d = build_one(&[
        "haproxy.enable=true",
        "haproxy.chek.path=/h",
        "other.tag=1",
        "plain",
    ]);
    assert_eq!(d.backends.len(), 1);
    assert_eq!(reasons(&d), vec![(Reason::UnknownTag, Severity::Warning)]);
    assert_eq!(
        d.diagnostics[0].tag.as_deref(),
        Some("haproxy.chek.path=/h")
    );
}

#[test]
fn backend_names() {
    assert_eq!(
        backend_name(&ServiceKey::new("default", "api-service")),
        "api_service"
    );
    assert_eq!(
        backend_name(&ServiceKey::new("prod", "api-service")),
        "prod.api_service"
    );
    assert_ne!(
        backend_name(&ServiceKey::new("prod", "x")),
        backend_name(&ServiceKey::new("default", "prod-x"))
    );
}

#[test]
fn same_name_in_two_namespaces_is_two_backends() {
    let snap = mk_snapshot(vec![
        (
            "default",
            "web",
            vec![mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"])],
        ),
        (
            "prod",
            "web",
            vec![mk_instance("b", "10.0.0.2", 80, &["haproxy.enable=true"])],
        ),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(
        d.backends.keys().collect::<Vec<_>>(),
        vec!["prod.web", "web"]
    );
}

#[test]
fn backend_name_conflict_oldest_wins_both_reported() {
    let mut old = mk_instance(
        "o",
        "10.0.0.1",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.backend=custom",
            "haproxy.backend.name=shared",
        ],
    );
    old.create_index = 5;
    let new = mk_instance(
        "n",
        "10.0.0.2",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.backend=custom",
            "haproxy.backend.name=shared",
        ],
    );
    let snap = mk_snapshot(vec![
        ("default", "zeta", vec![old]),
        ("default", "alpha", vec![new]),
    ]);
    let mut live = Live::default();
    live.backends
        .insert("shared".into(), foreign_backend("shared", Mode::Http, None));
    let d = build(&snap, &live, &Policy::default()).expect("build");
    let b = only_backend(&d);
    assert_eq!(
        b.service,
        ServiceKey::new("default", "zeta"),
        "older registration wins"
    );
    assert_eq!(b.ownership, Ownership::Custom);
    let conflicts: Vec<_> = d
        .diagnostics
        .iter()
        .filter(|x| x.reason == Reason::BackendNameConflict)
        .map(|x| (x.service.as_str(), x.severity))
        .collect();
    assert_eq!(
        conflicts,
        vec![("alpha", Severity::Skipped), ("zeta", Severity::Warning)]
    );
}

#[test]
fn domain_conflict_oldest_wins_both_reported() {
    let mut a = mk_instance(
        "a",
        "10.0.0.1",
        80,
        &["haproxy.enable=true", "haproxy.domain=shop.test"],
    );
    a.create_index = 3;
    let b = mk_instance(
        "b",
        "10.0.0.2",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=SHOP.test",
            "haproxy.domain=b.test",
        ],
    );
    let snap = mk_snapshot(vec![
        ("default", "b-svc", vec![b]),
        ("default", "a-svc", vec![a]),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(
        d.routes
            .get(&route(MatchKind::Exact, "shop.test"))
            .map(String::as_str),
        Some("a_svc")
    );
    assert_eq!(
        d.routes
            .get(&route(MatchKind::Exact, "b.test"))
            .map(String::as_str),
        Some("b_svc")
    );
    assert_eq!(
        d.backends.len(),
        2,
        "the loser keeps its other routes and its backend"
    );
    let conflicts: Vec<_> = d
        .diagnostics
        .iter()
        .filter(|x| x.reason == Reason::DomainConflict)
        .map(|x| (x.service.as_str(), x.severity))
        .collect();
    assert_eq!(
        conflicts,
        vec![("a-svc", Severity::Warning), ("b-svc", Severity::Skipped)]
    );
}

#[test]
fn custom_backend_exists_or_is_a_diagnostic() {
    let snap = mk_snapshot(vec![
        (
            "default",
            "legacy",
            vec![mk_instance(
                "l",
                "10.0.0.1",
                80,
                &[
                    "haproxy.enable=true",
                    "haproxy.backend=custom",
                    "haproxy.backend.name=be_legacy",
                ],
            )],
        ),
        (
            "default",
            "other",
            vec![mk_instance("o", "10.0.0.2", 80, &["haproxy.enable=true"])],
        ),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(
        d.backends.keys().collect::<Vec<_>>(),
        vec!["other"],
        "others unaffected"
    );
    assert_eq!(
        reasons(&d),
        vec![(Reason::MissingCustomBackend, Severity::Skipped)]
    );

    let mut live = Live::default();
    live.backends.insert(
        "be_legacy".into(),
        foreign_backend("be_legacy", Mode::Http, Some("static-rr")),
    );
    let d = build(&snap, &live, &Policy::default()).expect("build");
    assert_eq!(d.backends["be_legacy"].ownership, Ownership::Custom);
    // Custom without backend.name uses the service's own backend name.
    let snap = mk_snapshot(vec![(
        "default",
        "my-app",
        vec![mk_instance(
            "l",
            "10.0.0.1",
            80,
            &["haproxy.enable=true", "haproxy.backend=custom"],
        )],
    )]);
    live.backends
        .insert("my_app".into(), foreign_backend("my_app", Mode::Tcp, None));
    let d = build(&snap, &live, &Policy::default()).expect("build");
    assert_eq!(d.backends["my_app"].ownership, Ownership::Custom);
}

#[test]
fn static_services_are_ignored() {
    let d = build_one(&["haproxy.enable=true", "haproxy.backend=static"]);
    assert!(d.backends.is_empty() && d.diagnostics.is_empty() && d.frozen.is_empty());
}

#[test]
fn strategies_for_an_existing_unowned_backend() {
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![mk_instance(
            "a",
            "10.0.0.1",
            80,
            &["haproxy.enable=true", "haproxy.domain=w.test"],
        )],
    )]);
    let mut live = Live::default();
    live.backends.insert(
        "web".into(),
        foreign_backend("web", Mode::Http, Some("leastconn")),
    );

    // use_existing: compatible → adopted.
    let d = build(&snap, &live, &Policy::default()).expect("build");
    assert_eq!(d.backends["web"].ownership, Ownership::Adopted);

    // use_existing: incompatible → diagnostic naming the incompatibility, frozen.
    let mut bad = live.clone();
    bad.backends.insert(
        "web".into(),
        foreign_backend("web", Mode::Tcp, Some("source")),
    );
    let d = build(&snap, &bad, &Policy::default()).expect("build");
    assert!(d.backends.is_empty());
    assert!(d.frozen.contains("web"));
    let msg = &d.diagnostics[0].message;
    assert!(
        msg.contains("balance algorithm `source` cannot take servers at run time"),
        "{msg}"
    );
    assert!(
        msg.contains("its mode is tcp but the service needs http"),
        "{msg}"
    );

    // create_new: skipped with a diagnostic.
    let policy = Policy {
        backend_strategy: BackendStrategy::CreateNew,
        ..Policy::default()
    };
    let d = build(&snap, &live, &policy).expect("build");
    assert!(d.backends.is_empty());
    assert_eq!(
        reasons(&d),
        vec![(Reason::BackendExists, Severity::Skipped)]
    );

    // fail_on_conflict: the whole pass fails.
    let policy = Policy {
        backend_strategy: BackendStrategy::FailOnConflict,
        ..Policy::default()
    };
    let e = build(&snap, &live, &policy).expect_err("fails");
    assert_eq!(
        e.to_string(),
        "service default/web: backend `web` already exists and is not managed by the connector (backend_strategy=fail_on_conflict); nothing is applied"
    );

    // An owned backend is ours under every strategy.
    let mut owned = live.clone();
    owned.backends.get_mut("web").expect("web").owned = true;
    assert_eq!(
        build(&snap, &owned, &policy).expect("build").backends["web"].ownership,
        Ownership::Owned
    );
}

#[test]
fn disagreement_keeps_the_live_value_of_an_existing_backend() {
    let mut v1 = mk_instance(
        "v1",
        "10.0.0.1",
        80,
        &["haproxy.enable=true", "haproxy.check.path=/old"],
    );
    v1.modify_index = 10;
    let mut v2 = mk_instance(
        "v2",
        "10.0.0.2",
        80,
        &["haproxy.enable=true", "haproxy.check.path=/new"],
    );
    v2.modify_index = 20;
    let snap = mk_snapshot(vec![("default", "web", vec![v1.clone(), v2.clone()])]);

    // New backend: the newest instance's value.
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert!(
        matches!(&d.backends["web"].settings.check, CheckSpec::Http { path, .. } if path == "/new")
    );
    assert_eq!(reasons(&d), vec![(Reason::Disagreement, Severity::Warning)]);
    assert!(d.diagnostics[0].message.contains("newest instance"));

    // Existing backend: keeps its live value until all agree.
    let live_settings = build(
        &mk_snapshot(vec![("default", "web", vec![v1.clone()])]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build")
    .backends["web"]
        .settings
        .clone();
    let mut live = Live::default();
    live.backends.insert(
        "web".into(),
        LiveBackend {
            name: "web".into(),
            owned: true,
            mode: Mode::Http,
            balance: None,
            settings: Some(live_settings.clone()),
            servers: Default::default(),
        },
    );
    let d = build(&snap, &live, &Policy::default()).expect("build");
    assert_eq!(d.backends["web"].settings, live_settings);
    assert!(
        d.diagnostics[0]
            .message
            .contains("keeping the live value until they agree")
    );

    // All agree: the new value.
    let mut v1b = v1;
    v1b.tags = v2.tags.clone();
    let d = build(
        &mk_snapshot(vec![("default", "web", vec![v1b, v2])]),
        &live,
        &Policy::default(),
    )
    .expect("build");
    assert!(
        matches!(&d.backends["web"].settings.check, CheckSpec::Http { path, .. } if path == "/new")
    );
    assert!(d.diagnostics.is_empty());
}

#[test]
fn instances_disagreeing_on_the_backend_kind_freeze_the_service() {
    let a = mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"]);
    let b = mk_instance(
        "b",
        "10.0.0.2",
        80,
        &["haproxy.enable=true", "haproxy.backend=custom"],
    );
    let d = build(
        &mk_snapshot(vec![("default", "web", vec![a, b])]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build");
    assert!(d.backends.is_empty());
    assert!(d.frozen.contains("web"));
    assert_eq!(reasons(&d), vec![(Reason::Disagreement, Severity::Skipped)]);
}

#[test]
fn addresses_ipv6_duplicates_and_bad_addresses() {
    let d = build(
        &mk_snapshot(vec![(
            "default",
            "web",
            vec![
                mk_instance(
                    "a",
                    "2001:db8::5",
                    8080,
                    &["haproxy.enable=true", "haproxy.weight=3"],
                ),
                mk_instance(
                    "b",
                    "2001:db8::5",
                    8080,
                    &["haproxy.enable=true", "haproxy.weight=7"],
                ),
            ],
        )]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build");
    let b = only_backend(&d);
    assert_eq!(b.servers.len(), 1);
    let (e, s) = b.servers.iter().next().expect("server");
    assert_eq!(e.to_string(), "[2001:db8::5]:8080");
    assert_eq!(e.server_name(), "hnc_2001:db8::5_8080");
    assert_eq!(s.weight, 7);

    let d = build(
        &mk_snapshot(vec![(
            "default",
            "web",
            vec![mk_instance(
                "a",
                "web.internal",
                80,
                &["haproxy.enable=true"],
            )],
        )]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build");
    assert!(d.backends.is_empty());
    assert_eq!(
        reasons(&d),
        vec![(Reason::InvalidAddress, Severity::Skipped)]
    );
}

#[test]
fn instances_without_enable_are_not_endpoints() {
    let d = build(
        &mk_snapshot(vec![(
            "default",
            "web",
            vec![
                mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"]),
                mk_instance("b", "10.0.0.2", 80, &[]),
                mk_instance("c", "10.0.0.3", 80, &["haproxy.enable=false"]),
            ],
        )]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build");
    assert_eq!(only_backend(&d).servers.len(), 1);
}

#[test]
fn domains_are_the_union_across_instances() {
    let d = build(
        &mk_snapshot(vec![(
            "default",
            "web",
            vec![
                mk_instance(
                    "v1",
                    "10.0.0.1",
                    80,
                    &["haproxy.enable=true", "haproxy.domain=old.test"],
                ),
                mk_instance(
                    "v2",
                    "10.0.0.2",
                    80,
                    &["haproxy.enable=true", "haproxy.domain=new.test"],
                ),
            ],
        )]),
        &Live::default(),
        &Policy::default(),
    )
    .expect("build");
    assert_eq!(
        d.routes.len(),
        2,
        "a rolling deploy keeps the old domain while old instances live"
    );
}

#[test]
fn repeated_registration_ids_do_not_make_the_result_order_dependent() {
    // Found by proptest: two registrations sharing an ID, one with a bad address.
    let a = mk_instance(
        "00a0",
        "10.0.0.1",
        80,
        &["haproxy.enable=true", "haproxy.weight=2"],
    );
    let b = mk_instance("00a0", "not-an-ip", 8080, &["haproxy.enable=true"]);
    let c = mk_instance(
        "00a0",
        "10.0.0.2",
        9000,
        &["haproxy.enable=true", "haproxy.balance=first"],
    );
    for set in [vec![a.clone(), c.clone()], vec![a, b, c]] {
        let mut reversed = set.clone();
        reversed.reverse();
        let one = build(
            &mk_snapshot(vec![("default", "web", set)]),
            &Live::default(),
            &Policy::default(),
        );
        let two = build(
            &mk_snapshot(vec![("default", "web", reversed)]),
            &Live::default(),
            &Policy::default(),
        );
        assert_eq!(one, two);
    }
}

// ---- Tenant isolation (issue 11): each defect as a unit test of the pure core ----

#[test]
fn a_non_ascii_tag_never_panics() {
    // `t[..15]` on this tag cut `é` in half and panicked the whole build.
    for tags in [
        &["00000000000000é"][..],
        &["haproxy.enable=true", "00000000000000é"],
        &["haproxy.enablé=true"],
        &["haproxy.enable=trué"],
        &["\u{202e}haproxy.enable=true"],
        &["haproxy.enable=true", "haproxy.domain=é.test"],
        &["haproxy.enable=true", "haproxy.domain=\0"],
    ] {
        let _ = build_one(tags);
    }
}

#[test]
fn regexes_are_checked_by_pcre2_not_by_rust() {
    let regex = |value: &str| {
        build_one(&[
            "haproxy.enable=true",
            &format!("haproxy.domain={value}"),
            "haproxy.domain.type=regex",
        ])
    };
    // Rust's regex accepts `(?u)x`; HAProxy's PCRE2 refuses it.
    let d = regex("(?u)x");
    assert!(d.backends.is_empty());
    assert!(d.diagnostics[0].message.contains("PCRE2"), "{:?}", d);
    // PCRE2-only syntax is accepted.
    let d = regex("^(?<=x)y$");
    assert_eq!(d.backends.len(), 1, "{:?}", d.diagnostics);
    // Catastrophic backtracking is refused with the reason.
    let d = regex("^(a+)+$");
    assert!(d.backends.is_empty());
    assert!(
        d.diagnostics[0].message.contains("nested repetition"),
        "{}",
        d.diagnostics[0].message
    );
    // Too long.
    let d = regex(&format!("^{}$", "a".repeat(600)));
    assert!(d.diagnostics[0].message.contains("longer than 512"));
}

#[test]
fn regex_domains_can_be_disabled() {
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![mk_instance(
            "a",
            "10.0.0.1",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=^a\\.test$",
                "haproxy.domain.type=regex",
            ],
        )],
    )]);
    let policy = Policy {
        allow_regex_domains: false,
        ..Policy::default()
    };
    let d = build(&snap, &Live::default(), &policy).expect("build");
    assert!(d.backends.is_empty());
    assert_eq!(
        reasons(&d),
        vec![(Reason::RegexDomainsDisabled, Severity::Skipped)]
    );
    assert_eq!(
        d.diagnostics[0].tag.as_deref(),
        Some("haproxy.domain.type=regex")
    );
    assert!(d.frozen.contains("web"));
}

#[test]
fn dot_segments_and_payload_markers_are_not_route_keys() {
    for (domain, kind) in [
        (".", "prefix"),
        ("..", "suffix"),
        ("*..", "exact"),
        (".", "regex"),
        ("..", "regex"),
        ("^a<<", "regex"),
    ] {
        let d = build_one(&[
            "haproxy.enable=true",
            &format!("haproxy.domain={domain}"),
            &format!("haproxy.domain.type={kind}"),
        ]);
        assert!(d.backends.is_empty(), "{domain} ({kind}) must be refused");
        assert_eq!(d.diagnostics[0].reason, Reason::InvalidTag);
    }
}

#[test]
fn a_skipped_registration_cannot_freeze_another_services_backend() {
    // `hostile` has a host-name address (skipped) and names `victim`'s backend.
    let mut hostile = mk_instance(
        "h",
        "evil.example",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.backend=custom",
            "haproxy.backend.name=victim",
        ],
    );
    hostile.create_index = 1;
    let snap = mk_snapshot(vec![
        ("default", "hostile", vec![hostile]),
        (
            "default",
            "victim",
            vec![mk_instance(
                "v",
                "10.0.0.3",
                80,
                &["haproxy.enable=true", "haproxy.domain=v.test"],
            )],
        ),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert!(d.backends.contains_key("victim"));
    assert!(!d.frozen.contains("victim"), "{:?}", d.frozen);
    assert!(d.frozen.contains("hostile"));
    assert!(
        d.diagnostics
            .iter()
            .any(|x| x.service == "hostile" && x.reason == Reason::InvalidAddress)
    );
}

#[test]
fn job_check_timers_are_bounded_to_24h() {
    let mut check = nomad_check(NomadCheckKind::Http, Some("/h"), None);
    check.interval = Some(Duration::from_secs(600 * 3600));
    check.timeout = Some(Duration::from_secs(365 * 86_400));
    let d = build_with_nomad_check(&["haproxy.enable=true"], check);
    let b = only_backend(&d);
    let timing = b.settings.check.timing().expect("a check");
    assert_eq!(timing.interval_ms, MAX_TIMER_MS);
    assert_eq!(timing.timeout_ms, MAX_TIMER_MS);
    assert!(
        d.diagnostics
            .iter()
            .any(|x| x.severity == Severity::Warning
                && x.message.contains("exceeds HAProxy's range")),
        "{:?}",
        d.diagnostics
    );
    // Tags are refused outright past 24 h.
    let d = build_one(&["haproxy.enable=true", "haproxy.check.interval=600h"]);
    assert!(d.backends.is_empty());
    assert!(d.diagnostics[0].message.contains("between 10ms and 24h"));
}

#[test]
fn denied_addresses_cost_only_their_instance() {
    let tags = &["haproxy.enable=true", "haproxy.domain=w.test"];
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![
            mk_instance("ok", "10.0.0.1", 80, tags),
            mk_instance("meta", "169.254.169.254", 80, tags),
            mk_instance("mapped", "::ffff:169.254.169.254", 80, tags),
            mk_instance("any", "0.0.0.0", 80, tags),
            mk_instance("any6", "::", 80, tags),
            mk_instance("ll6", "fe80::1", 80, tags),
            mk_instance("mc", "224.0.0.1", 80, tags),
            mk_instance("bc", "255.255.255.255", 80, tags),
            mk_instance("lo", "127.0.0.1", 80, tags),
        ],
    )]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    let b = only_backend(&d);
    let served: Vec<String> = b.servers.keys().map(|e| e.addr.to_string()).collect();
    assert_eq!(served, vec!["10.0.0.1", "127.0.0.1"]);
    let denied: Vec<&str> = d
        .diagnostics
        .iter()
        .filter(|x| x.reason == Reason::DeniedAddress)
        .map(|x| x.message.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        denied,
        vec!["any", "any6", "bc", "ll6", "mapped", "mc", "meta"]
    );
    // Operators add ranges; loopback can be denied too.
    let policy = Policy {
        denied_ranges: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..Policy::default()
    };
    let d = build(&snap, &Live::default(), &policy).expect("build");
    let served: Vec<String> = only_backend(&d)
        .servers
        .keys()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(served, vec!["10.0.0.1"]);
}
