//! What the catalog becomes: relists, hinted reads, denials, index resets.

use super::*;

#[test]
fn a_relist_reads_the_enabled_services_swaps_them_in_and_counts_once_published() {
    let mut h = Harness::new(Namespaces::All);
    h.tick();
    h.feed(vec![Input::StreamUp { scope: "*".into() }]);
    let out = h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(
            7,
            &[
                ("default", &[("web", true), ("plain", false)]),
                ("secret", &[("hidden", true)]),
            ],
        ),
    )])]);
    assert_eq!(
        out,
        [Command::Read {
            keys: vec![key("default", "web")],
            generation: 1
        }],
        "disabled services and denied namespaces are not read"
    );
    let out = h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    let snapshot = published(&out).expect("published");
    assert!(snapshot.synced);
    assert_eq!(snapshot.index, 7);
    assert_eq!(snapshot.stale, None);
    assert!(snapshot.services.contains_key(&key("default", "web")));
    let publish = out.iter().position(|c| matches!(c, Command::Publish(_)));
    let count = out.iter().position(|c| *c == Command::CountRelists(1));
    assert!(
        publish < count && count.is_some(),
        "published, then counted: {out:?}"
    );
    assert!(has(&out, &Command::ForgetJobs { before: 0 }));
    assert!(has(&out, &Command::Stat(Stat::LastError(None))));
}

#[test]
fn events_queued_before_a_tick_cost_one_read_per_service() {
    let mut h = Harness::synced(10, &[("default", "web"), ("default", "api")]);
    let out = h.feed(vec![
        batch("*", 11, vec![event("default", "web")]),
        batch(
            "*",
            12,
            vec![event("default", "web"), event("default", "web")],
        ),
        batch("*", 13, vec![event("default", "api"), event("secret", "x")]),
    ]);
    assert_eq!(
        reads(&out),
        [vec![key("default", "api"), key("default", "web")]],
        "one read per service, none in a denied namespace"
    );
    let events = out
        .iter()
        .filter(|c| matches!(c, Command::Stat(Stat::Event(_))))
        .count();
    assert_eq!(
        events, 4,
        "the duplicate at 12 is dropped, the rest counted"
    );

    // While the read is in flight, new events wait; they are read together once it is done.
    let out = h.feed(vec![
        batch("*", 14, vec![event("default", "web")]),
        batch("*", 15, vec![event("default", "api")]),
    ]);
    assert!(reads(&out).is_empty());
    let out = h.feed(vec![Input::Read(vec![
        read(&key("default", "api")),
        read(&key("default", "web")),
    ])]);
    assert_eq!(
        reads(&out),
        [vec![key("default", "api"), key("default", "web")]]
    );
}

#[test]
fn events_a_relist_covers_cost_no_read() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    // Before the relist: index at or below the last full read.
    assert!(reads(&h.feed(vec![batch("*", 10, vec![event("default", "web")])])).is_empty());
    // During a relist: held, then covered by the relist's index.
    h.feed(vec![Input::RelistRequested]);
    let out = h.feed(vec![batch("*", 11, vec![event("default", "web")])]);
    assert!(reads(&out).is_empty());
    let out = h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(12, &[("default", &[("web", true)])]),
    )])]);
    assert_eq!(
        reads(&out),
        [vec![key("default", "web")]],
        "the relist's own read"
    );
    let out = h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    assert!(reads(&out).is_empty(), "the held event is covered: {out:?}");
}

#[test]
fn an_index_going_backwards_resets_every_index_and_relists() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![batch("*", 12, vec![event("default", "web")])]);
    h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    // The blocking list sent 12 and got 3: a restore.
    let out = h.feed(vec![polled(
        "*",
        12,
        page(3, &[("default", &[("web", true)])]),
    )]);
    assert_eq!(lists(&out).len(), 1, "relisted at once");
    let out = [
        h.feed(vec![Input::Listed(vec![(
            "*".into(),
            page(3, &[("default", &[("web", true)])]),
        )])]),
        h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]),
    ]
    .concat();
    assert_eq!(published(&out).expect("published").index, 3);
    // The stream forgot its resume index: it starts after the new full read.
    h.feed(vec![Input::StreamEnded {
        scope: "*".into(),
        up: true,
        end: StreamEnd::Closed("Nomad closed the stream".into()),
    }]);
    h.advance(MAX * 2);
    assert_eq!(opened(&h.tick()), [("*".into(), 4)]);
    let out = h.feed(vec![batch("*", 4, vec![event("default", "web")])]);
    assert_eq!(
        reads(&out),
        [vec![key("default", "web")]],
        "lower indexes followed"
    );

    // A relist whose index is below the last full read replaces the catalog too.
    h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    h.feed(vec![Input::RelistRequested]);
    let out = h.feed(vec![Input::Listed(vec![("*".into(), page(2, &[]))])]);
    assert_eq!(
        lists(&out),
        [vec!["default".to_string()]],
        "confirmed alone"
    );
    let out = h.feed(vec![Input::Listed(vec![("default".into(), page(2, &[]))])]);
    let snapshot = published(&out).expect("published");
    assert_eq!(snapshot.index, 2);
    assert!(snapshot.services.is_empty());
}

#[test]
fn a_namespace_missing_from_the_star_list_is_read_alone_and_kept_when_denied() {
    let mut h = Harness::synced(10, &[("default", "web"), ("prod", "api")]);
    h.feed(vec![Input::RelistRequested]);
    let out = h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(11, &[("default", &[("web", true)])]),
    )])]);
    assert_eq!(
        out,
        [Command::List {
            scopes: vec!["prod".into()]
        }],
        "confirm first"
    );
    let out = h.feed(vec![Input::Listed(vec![(
        "prod".into(),
        Err(denied("prod")),
    )])]);
    assert_eq!(reads(&out), [vec![key("default", "web")]]);
    let out = h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    let snapshot = published(&out).expect("published");
    assert!(snapshot.services.contains_key(&key("prod", "api")), "kept");
    let stale = snapshot.stale.clone().unwrap_or_default();
    assert!(
        stale.contains("namespace `prod`") && stale.contains("`read-job`"),
        "{stale}"
    );
    assert!(snapshot.denied);
    assert!(
        !out.iter().any(|c| matches!(c, Command::CountRelists(_))),
        "not clean"
    );
}

#[test]
fn a_namespace_confirmed_empty_is_removed() {
    let mut h = Harness::synced(10, &[("default", "web"), ("prod", "api")]);
    h.feed(vec![Input::RelistRequested]);
    h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(11, &[("default", &[("web", true)])]),
    )])]);
    let out = h.feed(vec![Input::Listed(vec![("prod".into(), page(11, &[]))])]);
    let out = [
        out,
        h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]),
    ]
    .concat();
    let snapshot = published(&out).expect("published");
    assert!(!snapshot.services.contains_key(&key("prod", "api")));
    assert_eq!(snapshot.stale, None);
    assert!(has(&out, &Command::CountRelists(2)));
}

#[test]
fn acl_denials_keep_the_data_and_mark_the_catalog_stale_and_denied() {
    // The blocking list is refused.
    let mut h = Harness::synced(10, &[("default", "web")]);
    let out = h.feed(vec![polled("*", 10, Err(denied("default")))]);
    let snapshot = published(&out).expect("published");
    assert!(snapshot.denied && snapshot.stale.is_some());
    assert_eq!(snapshot.services.len(), 1);
    // The list works again: a relist clears the mark.
    let out = h.feed(vec![polled(
        "*",
        10,
        page(10, &[("default", &[("web", true)])]),
    )]);
    assert_eq!(lists(&out).len(), 1);

    // `[]` at index 0 after data: the token reads nothing any more, not "all gone".
    let mut h = Harness::synced(10, &[("default", "web")]);
    let out = h.feed(vec![polled("*", 10, page(0, &[]))]);
    let snapshot = published(&out).expect("published");
    assert!(snapshot.denied);
    assert!(
        snapshot
            .stale
            .as_deref()
            .is_some_and(|s| s.contains("read-job"))
    );
    assert_eq!(snapshot.services.len(), 1);
    h.feed(vec![Input::RelistRequested]);
    let out = h.feed(vec![Input::Listed(vec![("*".into(), page(0, &[]))])]);
    let snapshot = published(&out).unwrap_or_else(|| h.m.snapshot());
    assert_eq!(snapshot.services.len(), 1, "a relist keeps it too");
    assert!(snapshot.denied);
    assert!(!out.iter().any(|c| matches!(c, Command::CountRelists(_))));

    // A refused service read.
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![batch("*", 11, vec![event("default", "web")])]);
    let out = h.feed(vec![Input::Read(vec![(
        key("default", "web"),
        Err(denied("default")),
    )])]);
    let snapshot = published(&out).expect("published");
    assert!(snapshot.denied);
    assert_eq!(snapshot.services.len(), 1);
    let delay = h.m.wake_at().expect("a relist") - h.now;
    assert!(
        delay >= MIN && delay < MIN * 2,
        "the relist backs off: {delay:?}"
    );
}

#[test]
fn relist_requests_are_served_by_the_next_relist_and_one_during_a_relist_gets_another() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    let out = h.feed(vec![Input::RelistRequested, Input::RelistRequested]);
    assert_eq!(lists(&out).len(), 1, "two requests, one relist");
    let out = h.feed(vec![Input::RelistRequested]);
    assert!(lists(&out).is_empty(), "one at a time");
    h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(10, &[("default", &[("web", true)])]),
    )])]);
    let out = h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    assert!(has(&out, &Command::CountRelists(2)));
    assert_eq!(
        lists(&out).len(),
        1,
        "the request made during it starts another"
    );
}
