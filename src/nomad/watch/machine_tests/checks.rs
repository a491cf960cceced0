//! The check-results poll (`nomad.gate_on_checks`): when it runs, what it reads, what a failed
//! read does.

use super::*;
use crate::catalog::{AllocHealth, CheckHealth, NomadCheck, NomadCheckKind};
use crate::nomad::watch::machine::ChecksResult;

fn checked(alloc: &str, port: u16, check: bool) -> Instance {
    let mut inst = service(alloc).instances.remove(0);
    inst.id = format!("_nomad-task-{alloc}-group-web-web-http");
    inst.port = port;
    inst.nomad_check = check.then(|| NomadCheck {
        kind: NomadCheckKind::Http,
        path: Some("/health".into()),
        method: None,
        interval: Some(Duration::from_secs(1)),
        timeout: None,
        host: None,
    });
    inst
}

fn health(service: &str, h: CheckHealth) -> ChecksResult {
    Ok(Some(AllocHealth::from([(service.to_string(), h)])))
}

fn read_checks(commands: &[Command]) -> Vec<Vec<String>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::ReadChecks { allocs } => Some(allocs.iter().map(|(_, a)| a.clone()).collect()),
            _ => None,
        })
        .collect()
}

/// A gating machine synced with `web` (allocations a1, a2 checked, a3 not) and `api` (b1
/// checked); returns it with the commands of the sync's last step.
fn gated() -> (Harness, Vec<Command>) {
    let mut s = settings(Namespaces::All);
    s.gate_on_checks = true;
    let now = Instant::now();
    let mut h = Harness {
        m: Machine::new(s, now, 7),
        now,
    };
    h.tick();
    h.step(Input::StreamUp { scope: "*".into() });
    h.tick();
    let out = h.feed(vec![Input::Listed(vec![(
        "*".into(),
        page(5, &[("default", &[("web", true), ("api", true)])]),
    )])]);
    assert_eq!(reads(&out).len(), 1);
    let web = Service {
        instances: vec![
            checked("a1", 1, true),
            checked("a2", 2, true),
            checked("a3", 3, false),
        ],
    };
    let api = Service {
        instances: vec![checked("b1", 4, true)],
    };
    let out = h.feed(vec![Input::Read(vec![
        (key("default", "api"), Ok(Some(api))),
        (key("default", "web"), Ok(Some(web))),
    ])]);
    (h, out)
}

#[test]
fn a_poll_reads_checked_allocations_only_bounded_and_round_robin() {
    let (mut h, out) = gated();
    assert!(published(&out).expect("synced").synced);
    // Due at once after the sync; at most `check_reads_max` (2) allocations, a3 has no check.
    assert_eq!(read_checks(&out), [vec!["a1", "a2"]]);
    let out = h.feed(vec![Input::ChecksRead(vec![
        ("a2".into(), Ok(None)),
        ("a1".into(), health("web", CheckHealth::Failing)),
    ])]);
    let snap = published(&out).expect("health changed: published");
    assert!(snap.checks_failing("a1", "web"));
    assert!(!snap.checks_failing("a2", "web"));
    assert!(!snap.checks_failing("a3", "web"));

    // Not again before the poll period.
    assert!(read_checks(&h.tick()).is_empty());
    assert!(h.m.wake_at().is_some_and(|at| at <= h.now + CHECK_POLL));
    h.advance(CHECK_POLL);
    let out = h.tick();
    assert_eq!(
        read_checks(&out),
        [vec!["b1", "a1"]],
        "goes on where it stopped"
    );

    // A denied read keeps a1's last health; b1 passing is news.
    let out = h.feed(vec![Input::ChecksRead(vec![
        ("b1".into(), health("api", CheckHealth::Passing)),
        ("a1".into(), Err(denied("default"))),
    ])]);
    let snap = published(&out).expect("published");
    assert!(snap.checks_failing("a1", "web"), "an error never un-gates");
    assert_eq!(
        snap.check_health.get("b1").and_then(|a| a.get("api")),
        Some(&CheckHealth::Passing)
    );

    // The same answer again: nothing to publish.
    h.advance(CHECK_POLL);
    let out = h.tick();
    assert_eq!(read_checks(&out), [vec!["a2", "b1"]]);
    let out = h.feed(vec![Input::ChecksRead(vec![
        ("a2".into(), Ok(None)),
        ("b1".into(), health("api", CheckHealth::Passing)),
    ])]);
    assert!(published(&out).is_none(), "{out:?}");
}

#[test]
fn gating_off_never_reads_checks() {
    let mut h = Harness::synced(3, &[("default", "web")]);
    for _ in 0..3 {
        h.advance(CHECK_POLL);
        assert!(read_checks(&h.tick()).is_empty());
    }
}
