//! When things happen: start, resync, grace, backoffs, reconnects, shutdown.

use std::time::Instant;

use super::*;

#[test]
fn the_first_tick_opens_every_scope_and_the_first_relist_waits_for_the_streams() {
    let mut h = Harness::new(Namespaces::List(vec![
        "a".into(),
        "secret".into(),
        "b".into(),
    ]));
    let out = h.tick();
    assert_eq!(
        polls(&out),
        [("a".into(), 0), ("b".into(), 0)],
        "denied namespaces are not scopes"
    );
    assert_eq!(opened(&out), [("a".into(), 0), ("b".into(), 0)]);
    assert!(lists(&out).is_empty());
    assert!(
        out.iter()
            .all(|c| !matches!(c, Command::Stat(Stat::Reconnect))),
        "a first connect is no reconnect"
    );
    assert_eq!(h.m.wake_at(), Some(h.now + STARTUP));

    // The first stream to subscribe starts the relist at once: one relist serves both.
    h.advance(10 * MS);
    let out = h.feed(vec![Input::StreamUp { scope: "a".into() }]);
    assert_eq!(lists(&out), [vec!["a".to_string(), "b".to_string()]]);
    assert!(has(&out, &Command::ConsumeRelistRequests));
    assert!(has(&out, &Command::Stat(Stat::FullRelist)));
    assert!(has(&out, &Command::Stat(Stat::StreamUp)));

    // Without any stream, the relist starts after the startup wait.
    let mut h = Harness::new(Namespaces::All);
    h.tick();
    h.advance(STARTUP - MS);
    assert!(lists(&h.tick()).is_empty());
    h.advance(MS);
    assert_eq!(lists(&h.tick()), [vec!["*".to_string()]]);
}

#[test]
fn the_resync_relists_only_when_the_index_moved_since_the_last_full_read() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    assert_eq!(h.m.wake_at(), Some(h.now + RESYNC));
    h.advance(RESYNC);
    assert!(lists(&h.tick()).is_empty(), "idle: no relist");
    assert_eq!(h.m.wake_at(), Some(h.now + RESYNC), "the next interval");

    // The index moves, with the events that explain it: no relist before the resync.
    h.feed(vec![batch("*", 11, vec![event("default", "web")])]);
    h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    let out = h.feed(vec![polled(
        "*",
        10,
        page(11, &[("default", &[("web", true)])]),
    )]);
    assert!(lists(&out).is_empty());
    assert_eq!(polls(&out), [("*".into(), 11)]);
    h.advance(RESYNC - MS);
    assert!(lists(&h.tick()).is_empty());
    h.advance(MS);
    assert_eq!(lists(&h.tick()), [vec!["*".to_string()]]);
}

#[test]
fn an_index_move_no_event_explains_relists_after_the_grace() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![polled(
        "*",
        10,
        page(12, &[("default", &[("web", true)])]),
    )]);
    assert_eq!(h.m.wake_at(), Some(h.now + GRACE));
    // A later move inside the grace keeps the first deadline.
    h.advance(GRACE / 2);
    h.feed(vec![polled(
        "*",
        12,
        page(13, &[("default", &[("web", true)])]),
    )]);
    h.advance(GRACE / 2 - MS);
    assert!(lists(&h.tick()).is_empty());
    h.advance(MS);
    assert_eq!(lists(&h.tick()), [vec!["*".to_string()]]);

    // Events that arrive within the grace explain the move: no relist.
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![polled(
        "*",
        10,
        page(12, &[("default", &[("web", true)])]),
    )]);
    h.feed(vec![batch("*", 12, vec![event("default", "web")])]);
    h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    h.advance(GRACE);
    assert!(lists(&h.tick()).is_empty());
}

#[test]
fn relist_failures_back_off_growing_to_the_maximum_and_a_clean_relist_resets_it() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![Input::RelistRequested]);
    let mut base = MIN;
    for _ in 0..6 {
        let out = h.feed(vec![Input::Listed(vec![("*".into(), Err(outage()))])]);
        let snapshot = published(&out).unwrap_or_else(|| h.m.snapshot());
        assert!(
            snapshot
                .stale
                .as_deref()
                .is_some_and(|s| s.contains("No cluster leader"))
        );
        assert!(!snapshot.denied);
        assert!(
            snapshot.services.contains_key(&key("default", "web")),
            "kept"
        );
        assert!(!out.iter().any(|c| matches!(c, Command::CountRelists(_))));
        let delay = h.m.wake_at().expect("a retry") - h.now;
        assert!(
            delay >= base && delay < base * 2,
            "{delay:?} for base {base:?}"
        );
        h.advance(delay);
        assert_eq!(lists(&h.tick()).len(), 1, "retried");
        base = (base * 2).min(MAX);
    }
    let out = h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(11, &[("default", &[("web", true)])]),
    )])]);
    let out = [
        out,
        h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]),
    ]
    .concat();
    assert_eq!(published(&out).expect("published").stale, None);
    assert!(has(&out, &Command::CountRelists(2)));
    h.feed(vec![Input::RelistRequested]);
    h.feed(vec![Input::Listed(vec![("*".into(), Err(outage()))])]);
    let delay = h.m.wake_at().expect("a retry") - h.now;
    assert!(delay >= MIN && delay < MIN * 2, "reset: {delay:?}");
}

#[test]
fn streams_reconnect_with_backoff_from_where_they_left_off_and_each_connect_relists() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![batch("*", 12, vec![event("default", "web")])]);
    h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    let mut base = MIN;
    for round in 0..5 {
        h.advance(10 * MS);
        let out = h.feed(vec![Input::StreamEnded {
            scope: "*".into(),
            up: round == 0,
            end: StreamEnd::Closed("Nomad closed the stream".into()),
        }]);
        assert_eq!(has(&out, &Command::Stat(Stat::StreamDown)), round == 0);
        let delay = h.m.wake_at().expect("a reconnect") - h.now;
        assert!(
            delay >= base && delay < base * 2,
            "{delay:?} for base {base:?}"
        );
        h.advance(delay);
        let out = h.tick();
        assert!(has(&out, &Command::Stat(Stat::Reconnect)));
        assert_eq!(
            opened(&out),
            [("*".into(), 13)],
            "resumes after the last batch"
        );
        base = (base * 2).min(MAX);
    }
    // Subscribed again: a full relist (Nomad may have skipped ahead).
    let out = h.feed(vec![Input::StreamUp { scope: "*".into() }]);
    assert_eq!(lists(&out).len(), 1);
    // A connection that lived long enough resets the backoff.
    h.advance(STABLE);
    h.feed(vec![Input::StreamEnded {
        scope: "*".into(),
        up: true,
        end: StreamEnd::Closed("no data for 5s (heartbeats stopped)".into()),
    }]);
    let delay = h.m.wake_at().expect("a reconnect") - h.now;
    assert!(delay >= MIN && delay < MIN * 2, "reset: {delay:?}");
}

#[test]
fn a_stream_the_token_may_not_open_reports_the_error_and_retries() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    let out = h.feed(vec![Input::StreamEnded {
        scope: "*".into(),
        up: false,
        end: StreamEnd::Failed(denied("*")),
    }]);
    assert!(
        !has(&out, &Command::Stat(Stat::StreamDown)),
        "it never subscribed"
    );
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Stat(Stat::LastError(Some(e))) if e.contains("read-job")
    )));
    assert!(lists(&out).is_empty(), "only a subscription relists");
}

#[test]
fn the_blocking_list_follows_the_index_and_retries_failures_with_backoff() {
    let mut h = Harness::new(Namespaces::All);
    let out = h.tick();
    assert!(out.iter().any(|c| matches!(
        c,
        Command::Poll { wait, .. } if *wait == RESYNC
    )));
    let out = h.feed(vec![polled("*", 0, page(0, &[]))]);
    assert_eq!(polls(&out), [("*".into(), 1)], "floored at 1: no spin");
    let out = h.feed(vec![polled("*", 1, page(12, &[]))]);
    assert_eq!(polls(&out), [("*".into(), 12)]);
    assert!(has(&out, &Command::Stat(Stat::LastIndex(12))));
    let mut base = MIN;
    for _ in 0..3 {
        let out = h.feed(vec![polled("*", 12, Err(outage()))]);
        assert!(polls(&out).is_empty(), "not at once");
        let at = h.m.scopes.first().and_then(|s| s.poll_at).expect("a retry");
        let delay = at - h.now;
        assert!(
            delay >= base && delay < base * 2,
            "{delay:?} for base {base:?}"
        );
        h.now = at;
        assert_eq!(polls(&h.tick()), [("*".into(), 12)]);
        base *= 2;
    }
}

#[test]
fn shutdown_waits_for_the_work_in_flight_and_opens_nothing_more() {
    let mut h = Harness::synced(10, &[("default", "web")]);
    assert_eq!(h.step(Input::Shutdown), [Command::Stop], "idle: at once");

    let mut h = Harness::synced(10, &[("default", "web")]);
    h.feed(vec![Input::RelistRequested]);
    h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(11, &[("default", &[("web", true)])]),
    )])]);
    assert!(
        h.feed(vec![Input::Shutdown]).is_empty(),
        "the reads are in flight"
    );
    assert_eq!(h.m.wake_at(), None);
    let out = h.feed(vec![polled("*", 10, page(11, &[]))]);
    assert!(polls(&out).is_empty());
    let out = h.feed(vec![Input::Read(vec![read(&key("default", "web"))])]);
    let stop = out.iter().position(|c| *c == Command::Stop).expect("stops");
    let publish = out.iter().position(|c| matches!(c, Command::Publish(_)));
    assert!(
        publish.is_some_and(|p| p < stop),
        "the store is published whole first"
    );
}

#[test]
fn the_retry_schedule_is_a_function_of_the_seed() {
    let delays = |seed| {
        let mut m = Machine::new(settings(Namespaces::All), Instant::now(), seed);
        (0..8)
            .filter_map(|_| m.backoff().next())
            .collect::<Vec<_>>()
    };
    assert_eq!(delays(1), delays(1));
    assert_ne!(delays(1), delays(2));
}
