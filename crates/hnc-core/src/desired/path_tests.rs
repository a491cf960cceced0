//! Path routes in the desired model: `path`, `path.type`, `path.strip`, their grammar and
//! isolation, the route keys and values they give, and conflicts.

use proptest::prelude::*;

use super::tests::{mk_instance, mk_snapshot};
use super::*;
use crate::model::Mode;

fn build_tags(tags: &[&str]) -> Desired {
    let snap = mk_snapshot(vec![(
        "default",
        "web",
        vec![mk_instance("a", "10.0.0.1", 8080, tags)],
    )]);
    build(&snap, &Live::default(), &Policy::default()).expect("build")
}

fn path(key: &str) -> RouteKey {
    RouteKey {
        kind: MatchKind::Path,
        key: key.to_string(),
    }
}

fn routes(d: &Desired) -> Vec<(String, String, String)> {
    d.routes
        .iter()
        .map(|(k, v)| (k.kind.as_str().to_string(), k.key.clone(), v.clone()))
        .collect()
}

#[test]
fn a_path_alone_routes_every_host_and_makes_the_service_http() {
    let d = build_tags(&["haproxy.enable=true", "haproxy.path=/api"]);
    assert_eq!(
        routes(&d),
        vec![("path".into(), "/api".into(), "web".into())]
    );
    assert_eq!(d.backends["web"].settings.mode, Mode::Http);
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
}

#[test]
fn paths_on_exact_domains_claim_host_and_path_not_the_host_alone() {
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.domain=Shop.test",
        "haproxy.domain=b.test",
        "haproxy.path=/api",
        "haproxy.path=/v2/",
        "haproxy.path=/api",
    ]);
    assert_eq!(
        d.routes.keys().cloned().collect::<Vec<_>>(),
        vec![
            path("b.test/api"),
            path("b.test/v2/"),
            path("shop.test/api"),
            path("shop.test/v2/"),
        ],
        "no exact-host route: the host's other paths stay free for other services"
    );
}

#[test]
fn exact_paths_end_with_the_query_mark_and_strips_ride_in_the_value() {
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.domain=x.test",
        "haproxy.path=/api",
        "haproxy.path.type=exact",
        "haproxy.path.strip=TRUE",
    ]);
    assert_eq!(
        routes(&d),
        vec![("path".into(), "x.test/api?".into(), "web/4".into())]
    );
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.path=/static/",
        "haproxy.path.strip=true",
    ]);
    assert_eq!(
        d.routes.get(&path("/static/")).map(String::as_str),
        Some("web/8")
    );
    let d = build_tags(&[
        "haproxy.enable=true",
        "haproxy.path=/a",
        "haproxy.path.strip=false",
    ]);
    assert_eq!(d.routes.get(&path("/a")).map(String::as_str), Some("web"));
}

#[test]
fn bad_path_tags_skip_only_their_service_naming_tag_value_and_reason() {
    let long = format!("haproxy.path=/{}", "a".repeat(255));
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["haproxy.path=api"],
            "haproxy.path=api",
            "must start with `/`",
        ),
        (
            vec!["haproxy.path=/a?b"],
            "haproxy.path=/a?b",
            "contains `?`",
        ),
        (
            vec!["haproxy.path=/a%2f"],
            "haproxy.path=/a%2f",
            "contains `%`",
        ),
        (vec!["haproxy.path=/a b"], "haproxy.path=/a b", "whitespace"),
        (
            vec!["haproxy.path=/a\u{7}"],
            "haproxy.path=/a\u{7}",
            "control",
        ),
        (
            vec!["haproxy.path=/a\u{202e}"],
            "haproxy.path=/a\u{202e}",
            "contains `\u{202e}`",
        ),
        (vec!["haproxy.path=/é"], "haproxy.path=/é", "contains `é`"),
        (
            vec!["haproxy.path=/x/../y"],
            "haproxy.path=/x/../y",
            "segment",
        ),
        (vec!["haproxy.path=/."], "haproxy.path=/.", "segment"),
        (vec![long.as_str()], long.as_str(), "longer than 255"),
        (vec!["haproxy.path=/a;b"], "haproxy.path=/a;b", "syntax"),
        (vec!["haproxy.path=/a*"], "haproxy.path=/a*", "contains `*`"),
        (
            vec!["haproxy.path=/a", "haproxy.path.strip=maybe"],
            "haproxy.path.strip=maybe",
            "true or false",
        ),
        (
            vec!["haproxy.path=/a", "haproxy.path.type=regex"],
            "haproxy.path.type=regex",
            "prefix or exact",
        ),
        (
            vec!["haproxy.path.strip=true"],
            "haproxy.path.strip=true",
            "applies only with `path`",
        ),
        (
            vec!["haproxy.path.type=exact"],
            "haproxy.path.type=exact",
            "applies only with `path`",
        ),
        (
            vec!["haproxy.path=/a", "haproxy.domain=*.x.test"],
            "haproxy.domain=*.x.test",
            "only with exact domains",
        ),
        (
            vec![
                "haproxy.path=/a",
                "haproxy.domain=x",
                "haproxy.domain.type=prefix",
            ],
            "haproxy.domain.type=prefix",
            "only with exact domains",
        ),
        (
            vec!["haproxy.path=/a", "haproxy.mode=tcp"],
            "haproxy.mode=tcp",
            "path routing (path tags) needs mode http",
        ),
    ];
    for (extra, tag, reason) in cases {
        let mut tags = vec!["haproxy.enable=true"];
        tags.extend(extra.iter().copied());
        let bad = mk_instance("bad", "10.0.0.1", 80, &tags);
        let good = mk_instance(
            "good",
            "10.0.0.2",
            80,
            &["haproxy.enable=true", "haproxy.path=/ok"],
        );
        let snap = mk_snapshot(vec![
            ("ns1", "bad-svc", vec![bad]),
            ("default", "good", vec![good]),
        ]);
        let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
        assert_eq!(
            d.routes.get(&path("/ok")).map(String::as_str),
            Some("good"),
            "{tag}: the other service is served"
        );
        assert!(!d.backends.contains_key("ns1.bad_svc"), "{tag}: skipped");
        assert!(
            d.frozen.contains("ns1.bad_svc"),
            "{tag}: its live objects frozen"
        );
        let diag = d
            .diagnostics
            .iter()
            .find(|x| x.service == "bad-svc")
            .unwrap_or_else(|| panic!("{tag}: no diagnostic in {:?}", d.diagnostics));
        assert_eq!(diag.namespace, "ns1");
        assert_eq!(diag.severity, Severity::Skipped);
        assert_eq!(diag.reason, Reason::InvalidTag);
        assert_eq!(diag.tag.as_deref(), Some(tag), "{:?}", diag);
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
    }
}

#[test]
fn path_conflicts_oldest_wins_and_both_are_reported() {
    let mut a = mk_instance(
        "a",
        "10.0.0.1",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=x.test",
            "haproxy.path=/api",
        ],
    );
    a.create_index = 3;
    let b = mk_instance(
        "b",
        "10.0.0.2",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=X.test",
            "haproxy.path=/api",
            "haproxy.path=/b",
            "haproxy.path.strip=true",
        ],
    );
    // A shorter or longer prefix on the same host is no conflict: the longest wins per request.
    let c = mk_instance(
        "c",
        "10.0.0.3",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=x.test",
            "haproxy.path=/api/v2",
        ],
    );
    let snap = mk_snapshot(vec![
        ("default", "b-svc", vec![b]),
        ("default", "a-svc", vec![a]),
        ("default", "c-svc", vec![c]),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(
        routes(&d),
        vec![
            ("path".into(), "x.test/api".into(), "a_svc".into()),
            ("path".into(), "x.test/api/v2".into(), "c_svc".into()),
            ("path".into(), "x.test/b".into(), "b_svc/2".into()),
        ]
    );
    let conflicts: Vec<_> = d
        .diagnostics
        .iter()
        .filter(|x| x.reason == Reason::DomainConflict)
        .map(|x| (x.service.as_str(), x.severity, x.message.as_str()))
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!(
        (conflicts[0].0, conflicts[0].1),
        ("a-svc", Severity::Warning)
    );
    assert_eq!(
        (conflicts[1].0, conflicts[1].1),
        ("b-svc", Severity::Skipped)
    );
    assert!(
        conflicts[1]
            .2
            .contains("path route `x.test/api` is claimed by default/a-svc, default/b-svc"),
        "{}",
        conflicts[1].2
    );
}

proptest! {
    /// Any value of `path`, `path.type` or `path.strip` either gives safe route keys and values
    /// or skips only its service with a diagnostic naming the tag; never a panic.
    #[test]
    fn hostile_path_values_are_safe_or_skipped(
        value in prop_oneof![
            any::<String>(),
            "/[a-z0-9./?%#;*& \\x00-\\x1f\u{202e}é]{0,300}",
            Just(format!("/{}", "a".repeat(100_000))),
        ],
        key in prop::sample::select(&["path", "path.type", "path.strip"][..]),
    ) {
        let tag = format!("haproxy.{key}={value}");
        let d = build_tags(&["haproxy.enable=true", "haproxy.path=/base", &tag]);
        for (route, target) in &d.routes {
            prop_assert!(grammar::is_safe_token(&route.key), "{route}");
            prop_assert!(route.key.starts_with('/'));
            prop_assert!(route.key.len() <= crate::path_rules::MAX_PATH_LEN + 1);
            prop_assert!(!route.key.trim_end_matches('?').contains('?'));
            prop_assert!(crate::model::is_haproxy_name(crate::path_rules::route_backend(target)));
        }
        if d.backends.is_empty() {
            let diag = d.diagnostics.iter().find(|x| x.reason == Reason::InvalidTag);
            prop_assert!(diag.is_some_and(|x| x.tag.as_deref() == Some(tag.as_str())), "{:?}", d.diagnostics);
        }
    }
}
