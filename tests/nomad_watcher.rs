//! The Nomad watcher against the Nomad double: the catalog follows registrations through the
//! event stream, survives lossy streams, permission errors and index resets, and costs little on
//! an idle cluster (issue 3's acceptance list).
//!
//! Every test runs under Tokio's paused clock: the watcher's timers (backoff, grace, resync,
//! heartbeat watchdog), the double's (heartbeats, blocking waits) and the tests' own sleeps and
//! bounds are virtual, and the clock jumps ahead whenever every task waits. The HTTP between
//! the watcher and the double is real (loopback, `TCP_NODELAY` as Nomad sets it), so no test
//! here sleeps in real time. The machine's decisions alone are tested in
//! `src/nomad/watch/machine_tests/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::support::nomad::{NomadDouble, Options, RESUBSCRIBE, Reg};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::catalog::{NomadCheckKind, ServiceKey, Snapshot, is_enabled};
use haproxy_nomad_connector::config::{Config, Layer, Namespaces, NomadConfig, Secret};
use haproxy_nomad_connector::nomad::{
    Endpoint, NomadClient, NomadError, NomadStats, Tuning, Watcher, WatcherSettings,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

/// The acceptance bound for following an event.
const FOLLOW: Duration = Duration::from_millis(100);
const SETTLE: Duration = Duration::from_secs(5);

fn tuning() -> Tuning {
    Tuning {
        heartbeat_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        stream_stable_after: Duration::from_secs(1),
        explain_grace: Duration::from_millis(200),
        startup_stream_wait: Duration::from_millis(500),
        read_concurrency: 8,
        ..Tuning::default()
    }
}

fn settings(namespaces: Namespaces, resync: Duration) -> WatcherSettings {
    WatcherSettings {
        namespaces,
        namespace_deny: Vec::new(),
        tag_prefix: "haproxy".into(),
        resync_interval: resync,
        gate_on_checks: false,
        tuning: tuning(),
    }
}

fn nomad_config(url: &str, token: Option<&str>) -> NomadConfig {
    let mut c = Config::from_layer(&Layer::default())
        .expect("defaults")
        .nomad;
    c.address = url.parse().expect("url");
    c.token = token.map(Secret::new);
    c
}

fn client(double: &NomadDouble, token: Option<&str>) -> NomadClient {
    NomadClient::with_slack(
        &nomad_config(double.url(), token),
        Arc::new(NomadStats::default()),
        CallMetrics::disabled(),
        Duration::from_secs(2),
    )
    .expect("client")
}

fn start(double: &NomadDouble, token: Option<&str>, settings: WatcherSettings) -> Watcher {
    Watcher::spawn(client(double, token), settings)
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    within: Duration,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let found = match timeout(within, rx.wait_for(|s| pred(s))).await {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    };
    match found {
        Some(s) => s,
        None => panic!(
            "{what}: not within {within:?}; last snapshot: {:#?}",
            *rx.borrow()
        ),
    }
}

fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

/// Instance IDs of one service in the catalog (empty when absent).
fn ids(s: &Snapshot, ns: &str, name: &str) -> Vec<String> {
    s.services
        .get(&key(ns, name))
        .map(|svc| svc.instances.iter().map(|i| i.id.clone()).collect())
        .unwrap_or_default()
}

type View = BTreeMap<ServiceKey, Vec<(String, String, u16, Vec<String>)>>;

fn catalog_view(s: &Snapshot) -> View {
    s.services
        .iter()
        .map(|(k, svc)| {
            let instances = svc
                .instances
                .iter()
                .map(|i| (i.id.clone(), i.address.clone(), i.port, i.tags.clone()))
                .collect();
            (k.clone(), instances)
        })
        .collect()
}

/// What the catalog should hold for the double's current state.
fn nomad_view(double: &NomadDouble) -> View {
    let mut by_service: BTreeMap<ServiceKey, Vec<Reg>> = BTreeMap::new();
    for reg in double.registrations().into_values() {
        by_service
            .entry(key(&reg.namespace, &reg.service_name))
            .or_default()
            .push(reg);
    }
    by_service
        .into_iter()
        .filter(|(_, regs)| {
            is_enabled(regs.iter().flat_map(|r| r.tags.iter().flatten()), "haproxy")
        })
        .map(|(k, mut regs)| {
            regs.sort_by(|a, b| a.id.cmp(&b.id));
            let instances = regs
                .into_iter()
                .map(|r| (r.id, r.address, r.port, r.tags.unwrap_or_default()))
                .collect();
            (k, instances)
        })
        .collect()
}

fn web(alloc: &str, port: u16) -> Reg {
    Reg::new("default", "web", alloc, "10.0.0.5", port)
}

#[tokio::test(start_paused = true)]
async fn follows_register_scale_tag_change_and_deregister_within_100ms() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001)]);
    double.register([Reg::new("default", "plain", "p", "10.0.0.9", 9000).tags(Some(&["other"]))]);
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(30)),
    );
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| s.synced).await;
    assert_eq!(ids(&s, "default", "web"), [web("a", 0).id]);
    assert!(
        !s.services.contains_key(&key("default", "plain")),
        "not enabled"
    );
    assert_eq!(s.stale, None);

    // Register a new service.
    let t = Instant::now();
    double.register([Reg::new("default", "api", "x", "10.0.0.6", 7000)]);
    wait_for(&mut rx, FOLLOW, "register", |s| {
        ids(s, "default", "api").len() == 1
    })
    .await;
    let register_took = t.elapsed();

    // Scale web to three instances.
    double.register([web("b", 20002), web("c", 20003)]);
    wait_for(&mut rx, FOLLOW, "scale up", |s| {
        ids(s, "default", "web").len() == 3
    })
    .await;

    // Change one instance's tags.
    let b = web("b", 0).id;
    double.set_tags(
        &b,
        Some(&["haproxy.enable=true", "haproxy.domain=web.example"]),
    );
    wait_for(&mut rx, FOLLOW, "tag change", |s| {
        s.services[&key("default", "web")]
            .instances
            .iter()
            .any(|i| i.id == b && i.tags.iter().any(|t| t == "haproxy.domain=web.example"))
    })
    .await;

    // Removing the enable tag takes the service out of the catalog.
    let x = Reg::new("default", "api", "x", "", 0).id;
    double.set_tags(&x, Some(&["haproxy.enable=false"]));
    wait_for(&mut rx, FOLLOW, "disable", |s| {
        !s.services.contains_key(&key("default", "api"))
    })
    .await;

    // Scale down, then deregister the last ones.
    double.deregister(&[&web("c", 0).id]);
    wait_for(&mut rx, FOLLOW, "scale down", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    double.deregister(&[&web("a", 0).id, &b]);
    let s = wait_for(&mut rx, FOLLOW, "deregister", |s| s.services.is_empty()).await;
    assert!(s.synced);
    assert_eq!(catalog_view(&s), nomad_view(&double));

    let stats = watcher.stats().snapshot();
    assert!(
        stats
            .events
            .get("ServiceRegistration")
            .copied()
            .unwrap_or(0)
            >= 4,
        "{stats:?}"
    );
    assert!(
        stats
            .events
            .get("ServiceDeregistration")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{stats:?}"
    );
    assert_eq!(stats.streams_connected, 1);
    eprintln!("register followed in {register_took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_events_for_one_service_costs_few_reads() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001)]);
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(30)),
    );
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| s.synced).await;
    sleep(Duration::from_millis(300)).await;
    double.reset_counters();
    const BURST: u16 = 50;
    for n in 0..BURST {
        double.register([web(&format!("burst{n}"), 30000 + n)]);
    }
    wait_for(&mut rx, SETTLE, "burst", |s| {
        ids(s, "default", "web").len() == 1 + BURST as usize
    })
    .await;
    let reads = double.requests("service");
    assert!(
        reads < 10,
        "{BURST} events for one service cost {reads} reads; they should coalesce"
    );
}

#[tokio::test(start_paused = true)]
async fn stream_cut_longer_than_the_buffer_is_repaired_by_the_relist() {
    let double = NomadDouble::start_with(Options {
        buffer_size: 5,
        ..Options::default()
    })
    .await;
    double.register([web("a", 20001), web("b", 20002)]);
    double.register([Reg::new("default", "api", "x", "10.0.0.6", 7000)]);
    let mut s = settings(Namespaces::All, Duration::from_secs(60));
    // Neither an unexplained index nor the resync may repair anything here: only relists.
    s.tuning.explain_grace = Duration::from_secs(3600);
    let watcher = start(&double, None, s);
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 2
    })
    .await;
    let relists_before = watcher.stats().snapshot().full_relists;

    // Nomad loses its leader: the stream is cut and every read fails.
    double.set_outage(true);
    let s = wait_for(&mut rx, SETTLE, "stale during the outage", |s| {
        s.stale.is_some()
    })
    .await;
    assert_eq!(s.services.len(), 2, "the last good data stays");

    // More changes than the buffer holds, some of them with no event at all.
    for n in 0..8u16 {
        double.register([Reg::new(
            "default",
            &format!("svc{n}"),
            "y",
            "10.0.1.1",
            8000 + n,
        )]);
    }
    double.deregister(&[&web("a", 0).id]);
    double.delete_silently(&[&Reg::new("default", "api", "x", "", 0).id]);
    double.register([web("c", 20003)]);
    double.set_outage(false);

    let expected = nomad_view(&double);
    let s = wait_for(
        &mut rx,
        SETTLE,
        "catalog equals Nomad after reconnect",
        |s| catalog_view(s) == expected && s.stale.is_none(),
    )
    .await;
    assert_eq!(s.services.len(), 9);
    assert!(watcher.stats().snapshot().full_relists > relists_before);
    let deadline = Instant::now() + SETTLE;
    while watcher.stats().snapshot().streams_connected == 0 {
        assert!(Instant::now() < deadline, "the stream did not come back");
        sleep(Duration::from_millis(10)).await;
    }
    assert!(watcher.stats().snapshot().stream_reconnects >= 1);
    // Let the relist that follows this reconnect finish before the next phase.
    sleep(Duration::from_millis(300)).await;

    // A server restart that lost a deletion nobody announced: the relist after the reconnect
    // is what repairs it.
    double.delete_silently(&[&web("b", 0).id]);
    double.restart_with_empty_buffer();
    let expected = nomad_view(&double);
    wait_for(
        &mut rx,
        SETTLE,
        "catalog equals Nomad after the restart",
        |s| catalog_view(s) == expected,
    )
    .await;
    let stats = watcher.stats().snapshot();
    assert!(stats.stream_reconnects >= 2, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn stream_ending_with_error_text_or_going_silent_reconnects() {
    let double = NomadDouble::start_with(Options {
        heartbeat: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    double.register([web("a", 20001)]);
    let mut s = settings(Namespaces::All, Duration::from_secs(30));
    s.tuning.heartbeat_timeout = Duration::from_millis(400);
    let watcher = start(&double, None, s);
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| s.synced).await;

    // Heartbeats every 100 ms keep a 400 ms watchdog quiet.
    sleep(Duration::from_millis(1200)).await;
    assert_eq!(watcher.stats().snapshot().stream_reconnects, 0);

    double.cut_streams_with_error(RESUBSCRIBE);
    let deadline = Instant::now() + SETTLE;
    while watcher.stats().snapshot().stream_reconnects == 0
        || watcher.stats().snapshot().streams_connected == 0
    {
        assert!(
            Instant::now() < deadline,
            "no reconnect after the trailing error text"
        );
        sleep(Duration::from_millis(10)).await;
    }
    double.register([web("b", 20002)]);
    wait_for(&mut rx, FOLLOW * 5, "event after reconnect", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    drop(watcher);

    // A server whose heartbeats stop: the watchdog reconnects.
    let silent = NomadDouble::start_with(Options {
        heartbeat: Duration::from_secs(3600),
        ..Options::default()
    })
    .await;
    let mut s = settings(Namespaces::All, Duration::from_secs(30));
    s.tuning.heartbeat_timeout = Duration::from_millis(300);
    let watcher = start(&silent, None, s);
    sleep(Duration::from_millis(1500)).await;
    let reconnects = watcher.stats().snapshot().stream_reconnects;
    assert!(reconnects >= 2, "watchdog reconnects: {reconnects}");
    assert!(silent.requests("stream") >= 3);
}

#[tokio::test(start_paused = true)]
async fn deletion_as_alloc_updated_at_once_and_silent_deletion_by_the_next_resync() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001), web("b", 20002), web("c", 20003)]);
    let resync = Duration::from_millis(800);
    let mut s = settings(Namespaces::All, resync);
    // Only the resync may catch the silent deletion here.
    s.tuning.explain_grace = Duration::from_secs(3600);
    let watcher = start(&double, None, s);
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        ids(s, "default", "web").len() == 3
    })
    .await;

    double.delete_as_alloc_updated(&[&web("a", 0).id]);
    wait_for(&mut rx, FOLLOW, "AllocationUpdated deletion", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    assert_eq!(
        watcher
            .stats()
            .snapshot()
            .events
            .get("AllocationUpdated")
            .copied(),
        Some(1)
    );

    let relists = watcher.stats().snapshot().full_relists;
    double.delete_silently(&[&web("b", 0).id]);
    let s = wait_for(
        &mut rx,
        resync + Duration::from_millis(400),
        "silent deletion",
        |s| ids(s, "default", "web").len() == 1,
    )
    .await;
    assert_eq!(ids(&s, "default", "web"), [web("c", 0).id]);
    assert_eq!(
        watcher.stats().snapshot().full_relists,
        relists + 1,
        "caught by the resync relist"
    );
}

#[tokio::test(start_paused = true)]
async fn permission_denied_keeps_the_last_good_data_marks_stale_and_names_namespace() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["default", "prod"]);
    double.register([web("a", 20001)]);
    double.register([Reg::new("prod", "web", "p", "10.0.2.1", 20001)]);
    let watcher = start(
        &double,
        Some("t"),
        settings(
            Namespaces::List(vec!["default".into(), "prod".into()]),
            Duration::from_secs(30),
        ),
    );
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 2
    })
    .await;
    let before = catalog_view(&s);

    // The token loses read-job on prod; then prod/web changes: its read (and prod's list) fail.
    double.deny_namespace("prod", true);
    double.set_tags(
        &Reg::new("prod", "web", "p", "", 0).id,
        Some(&["haproxy.enable=true", "new"]),
    );
    let s = wait_for(&mut rx, SETTLE, "stale", |s| s.stale.is_some()).await;
    let error = s.stale.clone().unwrap_or_default();
    assert!(error.contains("namespace `prod`"), "{error}");
    assert!(error.contains("`read-job`"), "{error}");
    assert!(error.contains("403 Permission denied"), "{error}");
    assert_eq!(
        catalog_view(&s),
        before,
        "last good data kept, nothing emptied"
    );
    let stats = watcher.stats().snapshot();
    let denied: u64 = stats
        .requests
        .iter()
        .filter(|((_, status), _)| status == "403")
        .map(|(_, n)| n)
        .sum();
    assert!(denied >= 1, "{stats:?}");
    assert!(stats.last_error.is_some());

    // Meanwhile default keeps working.
    double.register([web("b", 20002)]);
    wait_for(&mut rx, SETTLE, "default still followed", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;

    // Access comes back: the retry relist clears the mark and picks up the change.
    double.deny_namespace("prod", false);
    let expected = nomad_view(&double);
    wait_for(&mut rx, SETTLE, "recovered", |s| {
        s.stale.is_none() && catalog_view(s) == expected
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn list_permission_denied_is_an_error_naming_the_namespace() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["default"]);
    let client = client(&double, Some("t"));
    let e = client.list_services("prod", None).await.expect_err("403");
    assert!(
        matches!(&e, NomadError::PermissionDenied { namespace, status: 403, .. } if namespace == "prod"),
        "{e:?}"
    );
    assert!(e.to_string().contains("`read-job`"), "{e}");
    let e = client.read_service("prod", "web").await.expect_err("403");
    assert!(e.is_permission_denied(), "{e}");
    // An unknown token is denied too; with `*`, a token reading nothing gets `[]` at index 0.
    let nobody = client_for_token(&double, "unknown");
    assert!(
        nobody
            .list_services("default", None)
            .await
            .expect_err("403")
            .is_permission_denied()
    );
    let all = nobody.list_services("*", None).await.expect("200");
    assert_eq!((all.index, all.data.len()), (0, 0));
    let stats = client.stats().snapshot();
    assert_eq!(
        stats.requests.get(&(Endpoint::List, "403".to_string())),
        Some(&1)
    );
}

fn client_for_token(double: &NomadDouble, token: &str) -> NomadClient {
    client(double, Some(token))
}

#[tokio::test(start_paused = true)]
async fn a_token_that_can_read_nothing_any_more_is_suspicious_not_all_gone() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["*"]);
    double.register([web("a", 20001)]);
    let watcher = start(
        &double,
        Some("t"),
        settings(Namespaces::All, Duration::from_millis(500)),
    );
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 1
    })
    .await;
    double.grant("t", &["nothing-here"]);
    double.register([web("b", 20002)]);
    let s = wait_for(&mut rx, SETTLE, "stale", |s| s.stale.is_some()).await;
    assert!(
        !s.services.is_empty(),
        "never emptied on `[]` at index 0: {s:?}"
    );
    assert!(
        s.stale.as_deref().unwrap_or_default().contains("read-job"),
        "{s:?}"
    );
}

/// Issue 11, item 4: with `namespaces=*`, Nomad silently leaves out a namespace the token can
/// no longer read. The watcher confirms with a read of that namespace alone; the 403 keeps its
/// services and marks the catalog stale, while other namespaces still follow Nomad.
#[tokio::test(start_paused = true)]
async fn losing_read_on_one_namespace_under_star_removes_nothing() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["default", "prod"]);
    double.register([web("a", 20001)]);
    double.register([
        Reg::new("prod", "api", "p1", "10.0.2.1", 20001),
        Reg::new("prod", "api", "p2", "10.0.2.2", 20001),
    ]);
    let watcher = start(
        &double,
        Some("t"),
        settings(Namespaces::All, Duration::from_millis(500)),
    );
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 2 && s.stale.is_none()
    })
    .await;
    let prod_before = s.services[&key("prod", "api")].clone();

    // The token loses read-job on prod; then default changes, so a relist runs (the `*`
    // stream is refused now, so the blocking list's index move is what triggers it).
    double.deny_namespace("prod", true);
    double.register([web("b", 20002)]);
    let s = wait_for(&mut rx, SETTLE, "default's new registration applied", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    assert_eq!(
        s.services.get(&key("prod", "api")),
        Some(&prod_before),
        "prod kept as it was"
    );
    let s = wait_for(&mut rx, SETTLE, "stale", |s| s.stale.is_some()).await;
    let error = s.stale.clone().unwrap_or_default();
    assert!(error.contains("namespace `prod`"), "{error}");
    assert!(error.contains("`read-job`"), "{error}");
    assert!(s.denied, "a denial, for readiness");
    assert_eq!(
        s.services.get(&key("prod", "api")),
        Some(&prod_before),
        "prod kept while stale"
    );

    // More relists (resync) keep it that way: every relist confirms again.
    double.register([web("c", 20003)]);
    let s = wait_for(&mut rx, SETTLE, "default still followed", |s| {
        ids(s, "default", "web").len() == 3
    })
    .await;
    assert!(s.stale.is_some());
    assert_eq!(s.services.get(&key("prod", "api")), Some(&prod_before));

    // Access comes back: the mark clears and the catalog equals Nomad again.
    double.deny_namespace("prod", false);
    double.register([web("d", 20004)]);
    let expected = nomad_view(&double);
    wait_for(&mut rx, SETTLE, "recovered", |s| {
        s.stale.is_none() && catalog_view(s) == expected
    })
    .await;
}

/// The other half of item 4: a namespace that is really empty (every registration gone, the
/// token still valid) is removed, even when no event announced it.
#[tokio::test(start_paused = true)]
async fn a_namespace_that_really_emptied_under_star_is_removed() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["default", "prod"]);
    double.register([web("a", 20001)]);
    double.register([
        Reg::new("prod", "api", "p1", "10.0.2.1", 20001),
        Reg::new("prod", "api", "p2", "10.0.2.2", 20001),
    ]);
    let watcher = start(
        &double,
        Some("t"),
        settings(Namespaces::All, Duration::from_millis(500)),
    );
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 2 && s.stale.is_none()
    })
    .await;
    let lists_before = double.requests("list");
    // Garbage collection: no event, only the index moves (CONTRACTS §1.5).
    let p1 = Reg::new("prod", "api", "p1", "", 0).id;
    let p2 = Reg::new("prod", "api", "p2", "", 0).id;
    double.delete_silently(&[&p1, &p2]);
    let s = wait_for(&mut rx, SETTLE, "prod removed", |s| {
        !s.services.contains_key(&key("prod", "api"))
    })
    .await;
    assert!(
        s.stale.is_none(),
        "a confirmed removal, not an error: {s:?}"
    );
    assert_eq!(catalog_view(&s), nomad_view(&double));
    assert!(
        double.requests("list") > lists_before,
        "confirmed by a list request"
    );
}

/// The relist count the mass-delete guard waits on: bumped after each error-free full relist
/// (once its catalog is published), not after a failed one; and a relist can be asked for.
#[tokio::test(start_paused = true)]
async fn clean_relists_are_counted_and_can_be_requested() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001)]);
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(30)),
    );
    let mut relists = watcher.relists();
    timeout(SETTLE, relists.wait_for(|n| *n >= 1))
        .await
        .expect("a first relist within the bound")
        .expect("watcher running");
    assert!(
        watcher.snapshot().borrow().synced,
        "the catalog is published before the count moves"
    );
    let counted = *relists.borrow_and_update();
    let started = watcher.stats().snapshot().full_relists;

    // Asked for: one more full relist, counted.
    double.register([web("b", 20002)]);
    watcher.relist_requester().request();
    timeout(SETTLE, relists.wait_for(|n| *n > counted))
        .await
        .expect("the requested relist")
        .expect("watcher running");
    assert!(watcher.stats().snapshot().full_relists > started);
    assert_eq!(ids(&watcher.snapshot().borrow(), "default", "web").len(), 2);

    // A relist that fails is not counted.
    let counted = *relists.borrow_and_update();
    let started = watcher.stats().snapshot().full_relists;
    double.set_outage(true);
    watcher.relist_requester().request();
    let deadline = Instant::now() + SETTLE;
    while watcher.stats().snapshot().full_relists == started {
        assert!(Instant::now() < deadline, "the requested relist never ran");
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(200)).await;
    assert_eq!(*relists.borrow(), counted, "a failed relist does not count");
    assert!(watcher.snapshot().borrow().stale.is_some());
}

#[tokio::test(start_paused = true)]
async fn same_name_in_two_namespaces_null_tags_and_ipv6() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001)]);
    double.register([Reg::new("prod", "web", "v6", "2001:db8::7", 20001)]);
    double.register([
        Reg::new("default", "mixed", "m1", "10.0.0.8", 8080),
        Reg::new("default", "mixed", "m2", "10.0.0.9", 8080).tags(None),
    ]);
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(30)),
    );
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 3
    })
    .await;
    assert_eq!(ids(&s, "default", "web"), [web("a", 0).id]);
    let prod = &s.services[&key("prod", "web")];
    assert_eq!(prod.instances.len(), 1);
    assert_eq!(prod.instances[0].address, "2001:db8::7");
    let mixed = &s.services[&key("default", "mixed")];
    let null_tagged = mixed
        .instances
        .iter()
        .find(|i| i.alloc_id == "m2")
        .expect("the instance without tags is kept");
    assert!(null_tagged.tags.is_empty());
    assert_eq!(catalog_view(&s), nomad_view(&double));

    // An event in one namespace touches only that namespace's entry.
    double.register([Reg::new("prod", "web", "v6b", "2001:db8::8", 20001)]);
    let s = wait_for(&mut rx, FOLLOW, "prod scale", |s| {
        ids(s, "prod", "web").len() == 2
    })
    .await;
    assert_eq!(ids(&s, "default", "web").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn index_moving_backwards_resets_and_relists() {
    // Indexes from 1, so the restore below can go back to 2.
    let double = NomadDouble::start_with(crate::support::nomad::Options {
        first_raft_index: 0,
        ..crate::support::nomad::Options::default()
    })
    .await;
    for n in 0..5u16 {
        double.register([web(&format!("w{n}"), 20000 + n)]);
    }
    let mut s = settings(Namespaces::All, Duration::from_secs(60));
    s.tuning.explain_grace = Duration::from_secs(3600);
    let watcher = start(&double, None, s);
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && ids(s, "default", "web").len() == 5
    })
    .await;
    assert_eq!(rx.borrow().index, 5);
    let relists = watcher.stats().snapshot().full_relists;

    // A snapshot restore to index 2 with only two instances.
    let kept: Vec<Reg> = double.registrations().into_values().take(2).collect();
    double.restore_snapshot(2, kept);
    let s = wait_for(&mut rx, SETTLE, "relisted after the restore", |s| {
        s.index == 2 && ids(s, "default", "web").len() == 2
    })
    .await;
    assert_eq!(catalog_view(&s), nomad_view(&double));
    assert!(watcher.stats().snapshot().full_relists > relists);

    // The stream resumes from the new, lower index: the next change is followed at once.
    double.register([web("after", 21000)]);
    assert_eq!(double.table_index(), 3);
    wait_for(&mut rx, FOLLOW * 5, "event after the restore", |s| {
        ids(s, "default", "web").len() == 3
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn idle_cluster_costs_at_most_one_list_per_interval_and_no_reads() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001), web("b", 20002)]);
    double.register([Reg::new("prod", "api", "x", "10.0.0.6", 7000)]);
    let interval = Duration::from_millis(400);
    let watcher = start(&double, None, settings(Namespaces::All, interval));
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 2
    })
    .await;
    sleep(interval).await;
    // Start counting right after a blocking list went out.
    let lists = double.requests("list");
    let deadline = Instant::now() + interval * 3;
    while double.requests("list") == lists {
        assert!(Instant::now() < deadline, "the blocking list stopped");
        sleep(Duration::from_millis(5)).await;
    }
    double.reset_counters();
    sleep(interval * 5).await;
    let (lists, reads, jobs) = (
        double.requests("list"),
        double.requests("service"),
        double.requests("job"),
    );
    assert!(lists <= 5, "{lists} list requests in 5 intervals");
    assert!(lists >= 3, "the blocking list is alive: {lists}");
    assert_eq!(
        (reads, jobs),
        (0, 0),
        "no per-service reads on an idle cluster"
    );
    assert_eq!(double.requests("stream"), 0, "the stream stayed up");
    drop(watcher);
}

#[tokio::test(start_paused = true)]
async fn checks_come_from_the_job_and_are_cached() {
    let double = NomadDouble::start().await;
    double.put_job(
        "default",
        "web-job",
        json!({"TaskGroups": [{"Name": "g", "Services": [{"Name": "web", "Provider": "nomad",
            "Checks": [{"Type": "http", "Path": "/health", "Method": "GET",
                        "Interval": 5_000_000_000u64, "Timeout": 1_000_000_000u64,
                        "Header": {"Host": ["web.example"]}}]}]}]}),
    );
    double.register([web("a", 20001), web("b", 20002)]);
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(30)),
    );
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && !s.services.is_empty()
    })
    .await;
    for instance in &s.services[&key("default", "web")].instances {
        let check = instance.nomad_check.as_ref().expect("check from the job");
        assert_eq!(check.kind, NomadCheckKind::Http);
        assert_eq!(check.path.as_deref(), Some("/health"));
        assert_eq!(check.host.as_deref(), Some("web.example"));
        assert_eq!(check.interval, Some(Duration::from_secs(5)));
    }
    let jobs = double.requests("job");
    assert_eq!(jobs, 1, "one job read for two instances");
    // A new registration of the job makes the cache re-check the job once.
    double.register([web("c", 20003)]);
    wait_for(&mut rx, FOLLOW * 5, "scale", |s| {
        ids(s, "default", "web").len() == 3
    })
    .await;
    assert_eq!(double.requests("job"), jobs + 1);
}

#[tokio::test(start_paused = true)]
async fn works_over_a_unix_socket() {
    let double = NomadDouble::start_unix(Options::default()).await;
    assert!(double.url().starts_with("unix:///"));
    double.register([web("a", 20001)]);
    let c = client(&double, None);
    assert_eq!(c.leader().await.expect("leader"), "127.0.0.1:4647");
    let watcher = Watcher::spawn(c, settings(Namespaces::All, Duration::from_secs(30)));
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        s.synced && s.services.len() == 1
    })
    .await;
    double.register([web("b", 20002)]);
    wait_for(&mut rx, FOLLOW, "event over the socket", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn namespace_deny_list_hides_namespaces() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001)]);
    double.register([Reg::new("secret", "web", "s", "10.9.9.9", 1)]);
    let mut s = settings(Namespaces::All, Duration::from_secs(30));
    s.namespace_deny = vec!["secret".into()];
    let watcher = start(&double, None, s);
    let mut rx = watcher.snapshot();
    let s = wait_for(&mut rx, SETTLE, "first sync", |s| s.synced).await;
    assert_eq!(
        s.services.keys().cloned().collect::<Vec<_>>(),
        [key("default", "web")]
    );
    double.reset_counters();
    double.register([Reg::new("secret", "web", "s2", "10.9.9.8", 2)]);
    double.register([web("b", 20002)]);
    wait_for(&mut rx, FOLLOW * 5, "default followed", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    assert!(!rx.borrow().services.contains_key(&key("secret", "web")));
    assert_eq!(
        double.requests("service"),
        1,
        "the denied namespace is never read"
    );
}

/// Under the paused clock the watcher's timers can be pinned: an index move no event explains
/// (a deletion Nomad did not announce) is relisted when the explain grace is up, not before, and
/// not later than the grace plus the relist's own (instant, virtual) requests.
#[tokio::test(start_paused = true)]
async fn an_unexplained_index_move_is_relisted_when_the_grace_is_up() {
    let double = NomadDouble::start().await;
    double.register([web("a", 20001), web("b", 20002)]);
    // Neither the resync nor anything else may repair it here.
    let watcher = start(
        &double,
        None,
        settings(Namespaces::All, Duration::from_secs(60)),
    );
    let mut rx = watcher.snapshot();
    wait_for(&mut rx, SETTLE, "first sync", |s| {
        ids(s, "default", "web").len() == 2
    })
    .await;
    // Let the relist of the first connect and the first blocking list settle.
    sleep(Duration::from_secs(1)).await;
    let relists = watcher.stats().snapshot().full_relists;

    let grace = tuning().explain_grace;
    let t = Instant::now();
    double.delete_silently(&[&web("b", 0).id]);
    sleep(grace - Duration::from_millis(10)).await;
    assert_eq!(
        ids(&rx.borrow(), "default", "web").len(),
        2,
        "not before the grace is up"
    );
    assert_eq!(watcher.stats().snapshot().full_relists, relists);
    wait_for(
        &mut rx,
        Duration::from_millis(50),
        "relisted after the grace",
        |s| ids(s, "default", "web").len() == 1,
    )
    .await;
    assert!(t.elapsed() >= grace, "{:?}", t.elapsed());
    assert_eq!(watcher.stats().snapshot().full_relists, relists + 1);
}
