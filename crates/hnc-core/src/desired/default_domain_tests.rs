//! `haproxy.default_domain`: which services get the default host route, and bad renderings.

use super::tests::{mk_instance, mk_snapshot};
use super::*;
use crate::model::Mode;

fn policy(template: &str) -> Policy {
    Policy {
        default_domain: Some(template.into()),
        ..Policy::default()
    }
}

fn exact(key: &str) -> RouteKey {
    RouteKey {
        kind: MatchKind::Exact,
        key: key.into(),
    }
}

#[test]
fn services_without_routes_get_the_rendered_host() {
    let snap = mk_snapshot(vec![
        (
            "default",
            "web",
            vec![mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"])],
        ),
        (
            "shop",
            "Cart",
            vec![mk_instance("b", "10.0.0.2", 80, &["haproxy.enable=true"])],
        ),
        // Own routes win: a domain or a path tag, and mode=tcp opts out.
        (
            "default",
            "own",
            vec![mk_instance(
                "c",
                "10.0.0.3",
                80,
                &["haproxy.enable=true", "haproxy.domain=own.test"],
            )],
        ),
        (
            "default",
            "paths",
            vec![mk_instance(
                "d",
                "10.0.0.4",
                80,
                &["haproxy.enable=true", "haproxy.path=/p"],
            )],
        ),
        (
            "default",
            "db",
            vec![mk_instance(
                "e",
                "10.0.0.5",
                5432,
                &["haproxy.enable=true", "haproxy.mode=tcp"],
            )],
        ),
        (
            "default",
            "off",
            vec![mk_instance("f", "10.0.0.6", 80, &["haproxy.enable=false"])],
        ),
    ]);
    let d = build(
        &snap,
        &Live::default(),
        &policy("{service}.{namespace}.apps.example.com"),
    )
    .expect("build");
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    let keys: Vec<String> = d.routes.keys().map(ToString::to_string).collect();
    assert_eq!(
        keys,
        vec![
            "exact cart.shop.apps.example.com",
            "exact own.test",
            "exact web.default.apps.example.com",
            "path /p",
        ]
    );
    assert_eq!(
        d.routes.get(&exact("web.default.apps.example.com")),
        Some(&"web".to_string())
    );
    assert_eq!(d.backends["web"].settings.mode, Mode::Http);
    assert_eq!(d.backends["db"].settings.mode, Mode::Tcp);
    // Without the setting, nothing changes.
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert_eq!(d.routes.len(), 2);
    assert_eq!(d.backends["web"].settings.mode, Mode::Tcp);
}

#[test]
fn a_rendering_that_is_no_host_name_is_a_diagnostic_for_that_service_only() {
    let snap = mk_snapshot(vec![
        (
            "default",
            "web",
            vec![mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"])],
        ),
        (
            "team_x",
            "web",
            vec![mk_instance("b", "10.0.0.2", 80, &["haproxy.enable=true"])],
        ),
    ]);
    // `.` and `..` namespaces cannot exist in Nomad; a `*` or a space in a name can only come
    // from a hostile catalog.
    let d = build(
        &snap,
        &Live::default(),
        &policy("{service}.{namespace}.test."),
    )
    .expect("build");
    assert!(d.routes.is_empty(), "{:?}", d.routes);
    assert_eq!(d.backends.len(), 2, "the services are still served");
    let reasons: Vec<(&str, Reason, Severity)> = d
        .diagnostics
        .iter()
        .map(|x| (x.namespace.as_str(), x.reason, x.severity))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("default", Reason::InvalidDefaultDomain, Severity::Warning),
            ("team_x", Reason::InvalidDefaultDomain, Severity::Warning),
        ]
    );
    assert!(
        d.diagnostics[0]
            .message
            .contains("`web.default.test.` an exact domain cannot start or end with `.`"),
        "{}",
        d.diagnostics[0].message
    );
    let snap = mk_snapshot(vec![
        (
            "default",
            "web",
            vec![mk_instance("a", "10.0.0.1", 80, &["haproxy.enable=true"])],
        ),
        (
            "default",
            "bad name\u{0}",
            vec![mk_instance("b", "10.0.0.2", 80, &["haproxy.enable=true"])],
        ),
    ]);
    let d = build(&snap, &Live::default(), &policy("{service}.apps.test")).expect("build");
    assert_eq!(
        d.routes.get(&exact("web.apps.test")),
        Some(&"web".to_string())
    );
    assert!(
        d.diagnostics
            .iter()
            .any(|x| x.service == "bad name\u{0}" && x.reason == Reason::InvalidDefaultDomain),
        "{:?}",
        d.diagnostics
    );
}

proptest::proptest! {
    /// Any service name and namespace: the rendering is a safe, lower-case host name or an
    /// error, never a panic.
    #[test]
    fn any_name_renders_safely_or_not_at_all(
        ns in proptest::prelude::any::<String>(),
        name in "[a-zA-Z0-9_.* \\x00-\\x1f\u{202e}é-]{0,70}",
    ) {
        let key = crate::catalog::ServiceKey::new(ns.as_str(), name.as_str());
        if let Ok(host) = super::default_domain::render(TEMPLATE, &key) {
            proptest::prop_assert!(grammar::is_safe_token(&host), "{host:?}");
            proptest::prop_assert_eq!(host.to_ascii_lowercase(), host.clone());
            proptest::prop_assert!(!host.contains(':') && !host.starts_with('.'));
        }
    }
}

const TEMPLATE: &str = "{service}.{namespace}.apps.example.com";

#[test]
fn templates_are_checked() {
    use super::default_domain::check_template;
    assert!(check_template("{service}.{namespace}.apps.example.com").is_ok());
    assert!(check_template("{service}.apps.example.com").is_ok());
    assert!(check_template("apps.example.com").is_err());
    assert!(check_template("{svc}.example.com").is_err());
    assert!(check_template("{service}.ex ample.com").is_err());
    assert!(check_template("{service}.example.com:80").is_err());
    assert!(check_template("*.{service}.example.com").is_err());
    assert!(check_template("").is_err());
}
