//! Issue 11, item 8: a regex route with backslashes. DPAPI passes map keys unescaped to
//! HAProxy's CLI, which drops every backslash, so `^rx\.api\.test$` was stored as
//! `^rx.api.test$`, observed different from the desired key and re-applied on every pass. Through
//! either driver the key must be stored exactly, match only what it says, and cost no further
//! pass.

use std::time::Duration;

use serde_json::json;

use super::harness::{Driver, Lab, Side};
use crate::both_drivers;
use crate::support::nomad::Reg;

const REGEX: &str = r"^rx\.api\.test$";

fn stored_exactly(lab: &Lab) -> bool {
    match &lab.side {
        Side::Dataplane { dp } => {
            dp.runtime_snapshot()["maps"]["hnc_regex.map"] == json!([[REGEX, "rx"]])
        }
        Side::Runtime { lb, files, .. } => {
            let map = files.path().join("maps").join("hnc_regex.map");
            let shown = lb.admin(&format!("show map {}", map.display()));
            shown
                .lines()
                .any(|l| l.split_whitespace().skip(1).eq([REGEX, "rx"]))
        }
    }
}

both_drivers!(
    a_regex_key_with_backslashes_is_stored_exactly_and_stays_put,
    |lab: &Lab| {
        let (addr, port) = lab.address(3);
        let rx = Reg::new("default", "rx", "r0", &addr, port).tags(Some(&[
            "haproxy.enable=true",
            "haproxy.domain.type=regex",
            "haproxy.domain=^rx\\.api\\.test$",
        ]));
        lab.nomad.register([rx.clone()]);
        lab.wait("the regex route stored exactly", stored_exactly);
        if lab.driver == Driver::Runtime {
            // The escaped dots match only dots.
            lab.wait("rx.api.test routed", |l| l.routed("rx.api.test", "rx"));
            assert!(!lab.routed("rxxapi.test", "rx"));
            assert!(!lab.routed("rx.apixtest", "rx"));
        }
        let passes = |l: &Lab, result: &str| {
            l.connector
                .metrics()
                .sum("hnc_passes_total", &[("result", result)])
        };
        // Two quiet passes after the route showed: the pass that applied it is recorded by then.
        let quiet = passes(lab, "noop");
        lab.wait("two quiet passes", |l| passes(l, "noop") >= quiet + 2.0);
        let applying = |l: &Lab| passes(l, "success");
        let before = applying(lab);
        // Several resync periods (1 s in the lab): every pass finds nothing to do.
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(applying(lab), before, "the regex route was re-applied");
        assert!(stored_exactly(lab));
        assert!(
            lab.diagnostics_of("rx").is_empty(),
            "{:?}",
            lab.diagnostics_of("rx")
        );
        lab.prove_isolated(&[]);
        assert!(stored_exactly(lab));
        // And it leaves when its service does (DPAPI's `{id}` cannot name a key with `$`: the
        // map is rewritten through the storage API).
        lab.nomad.deregister(&[&rx.id]);
        lab.wait("the regex route removed", |l| match &l.side {
            Side::Dataplane { dp } => dp.runtime_snapshot()["maps"]["hnc_regex.map"] == json!([]),
            Side::Runtime { .. } => !l.map_text("hnc_regex.map").contains(REGEX),
        });
        let log = lab.connector.log_text();
        assert!(!log.contains("not sent"), "{log}");
    }
);
