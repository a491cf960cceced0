//! `redirect.https`: the hosts it redirects, its grammar and isolation.

use super::tests::{mk_instance, mk_snapshot};
use super::*;

fn redirects(d: &Desired) -> Vec<(String, String)> {
    d.routes
        .iter()
        .filter(|(k, _)| k.kind == MatchKind::Redirect)
        .map(|(k, v)| (k.key.clone(), v.clone()))
        .collect()
}

#[test]
fn the_hosts_of_the_routes_a_service_wins_are_redirected() {
    let mut a = mk_instance(
        "a",
        "10.0.0.1",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=Shop.test",
            "haproxy.domain=b.test",
            "haproxy.redirect.https=TRUE",
        ],
    );
    a.create_index = 1;
    // Paths on an exact domain redirect that host; the route keys are unchanged.
    let p = mk_instance(
        "p",
        "10.0.0.2",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=api.test",
            "haproxy.path=/v1",
            "haproxy.redirect.https=true",
        ],
    );
    // `redirect.https=false` redirects nothing.
    let c = mk_instance(
        "c",
        "10.0.0.3",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=c.test",
            "haproxy.redirect.https=false",
        ],
    );
    let snap = mk_snapshot(vec![
        ("default", "a", vec![a]),
        ("default", "p", vec![p]),
        ("default", "c", vec![c]),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert!(d.diagnostics.is_empty(), "{:?}", d.diagnostics);
    assert_eq!(
        redirects(&d),
        vec![
            ("api.test".into(), "https".into()),
            ("b.test".into(), "https".into()),
            ("shop.test".into(), "https".into()),
        ]
    );
    assert_eq!(
        d.routes.get(&RouteKey {
            kind: MatchKind::Exact,
            key: "shop.test".into()
        }),
        Some(&"a".to_string())
    );
}

#[test]
fn a_losing_claim_redirects_nothing() {
    let mut old = mk_instance(
        "o",
        "10.0.0.1",
        80,
        &["haproxy.enable=true", "haproxy.domain=x.test"],
    );
    old.create_index = 1;
    let young = mk_instance(
        "y",
        "10.0.0.2",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=x.test",
            "haproxy.redirect.https=true",
        ],
    );
    let snap = mk_snapshot(vec![
        ("default", "old", vec![old]),
        ("default", "young", vec![young]),
    ]);
    let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
    assert!(redirects(&d).is_empty(), "x.test is old's: {:?}", d.routes);
}

#[test]
fn bad_redirect_tags_skip_only_their_service() {
    for (tags, tag, reason) in [
        (
            vec!["haproxy.redirect.https=yes", "haproxy.domain=x.test"],
            "haproxy.redirect.https=yes",
            "true or false",
        ),
        (
            vec!["haproxy.redirect.https=true"],
            "haproxy.redirect.https=true",
            "needs an exact domain",
        ),
        (
            vec!["haproxy.redirect.https=true", "haproxy.domain=*.x.test"],
            "haproxy.redirect.https=true",
            "needs an exact domain",
        ),
        (
            vec!["haproxy.redirect.https=true", "haproxy.path=/a"],
            "haproxy.redirect.https=true",
            "needs an exact domain",
        ),
        (
            vec!["haproxy.redirect.https=true\n", "haproxy.domain=x.test"],
            "haproxy.redirect.https=true\n",
            "true or false",
        ),
    ] {
        let mut all = vec!["haproxy.enable=true"];
        all.extend(tags.iter().copied());
        let bad = mk_instance("bad", "10.0.0.1", 80, &all);
        let good = mk_instance(
            "good",
            "10.0.0.2",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=good.test",
                "haproxy.redirect.https=true",
            ],
        );
        let snap = mk_snapshot(vec![
            ("ns1", "bad", vec![bad]),
            ("default", "good", vec![good]),
        ]);
        let d = build(&snap, &Live::default(), &Policy::default()).expect("build");
        assert_eq!(
            redirects(&d),
            vec![("good.test".to_string(), "https".to_string())],
            "{tag}"
        );
        let diag = d
            .diagnostics
            .iter()
            .find(|x| x.service == "bad")
            .unwrap_or_else(|| panic!("{tag}: {:?}", d.diagnostics));
        assert_eq!(
            (diag.namespace.as_str(), diag.severity, diag.reason),
            ("ns1", Severity::Skipped, Reason::InvalidTag)
        );
        assert_eq!(diag.tag.as_deref(), Some(tag));
        assert!(diag.message.contains(reason), "{tag}: {}", diag.message);
        assert!(d.frozen.contains("ns1.bad"));
    }
}
