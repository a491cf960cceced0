//! One end-to-end test per defect of issue 11, on both drivers: the hostile registration is in
//! place and the healthy service still gains, drains and loses instances while a brand-new
//! service is routed (see [`Lab::prove_isolated`]).

use serde_json::json;

use super::harness::{Driver, Lab, Side};
use crate::both_drivers;
use crate::support::nomad::Reg;

fn reg(service: &str, alloc: &str, address: &str, port: u16, tags: &[&str]) -> Reg {
    Reg::new("default", service, alloc, address, port).tags(Some(tags))
}

// 1. A non-ASCII tag (`t[..15]` cut `é` in half and panicked every pass).
both_drivers!(non_ascii_tag_panics_nothing, |lab: &Lab| {
    lab.nomad.register([
        reg(
            "tenant-a",
            "a1",
            "10.9.0.1",
            80,
            &[
                "00000000000000é",
                "haproxy.enable=true",
                "haproxy.domain=é.test",
            ],
        ),
        reg(
            "tenant-b",
            "b1",
            "10.9.0.2",
            80,
            &["haproxy.enable=true", "\u{202e}\u{0}haproxy.ünknown=\u{7}"],
        ),
    ]);
    lab.prove_isolated(&["tenant-a"]);
});

// 2. Regexes PCRE2 refuses, and catastrophic ones: refused before they reach a map.
both_drivers!(regexes_pcre2_refuses_never_reach_haproxy, |lab: &Lab| {
    lab.nomad.register([
        reg(
            "rust-only",
            "r1",
            "10.9.0.1",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=(?u)x",
                "haproxy.domain.type=regex",
            ],
        ),
        reg(
            "catastrophic",
            "c1",
            "10.9.0.2",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=^(a+)+$",
                "haproxy.domain.type=regex",
            ],
        ),
    ]);
    lab.prove_isolated(&["rust-only", "catastrophic"]);
    let regex_map = lab.map_text("hnc_regex.map");
    assert!(!regex_map.contains("(?u)x"), "{regex_map}");
    assert!(!regex_map.contains("(a+)+"), "{regex_map}");
    lab.assert_haproxy_accepts_its_files();
});

// 3. A skipped registration naming someone else's backend must not freeze it.
both_drivers!(
    a_skipped_registration_cannot_freeze_another_backend,
    |lab: &Lab| {
        lab.nomad.register([reg(
            "squatter",
            "s1",
            "evil.example",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.backend=custom",
                "haproxy.backend.name=healthy",
            ],
        )]);
        lab.prove_isolated(&["squatter"]);
    }
);

// 6. Timers beyond HAProxy's range, from a tag and from the job's check.
both_drivers!(timers_beyond_haproxys_range_are_bounded, |lab: &Lab| {
    lab.nomad.put_job(
        "default",
        "slow-job",
        json!({"TaskGroups": [{"Name": "g", "Services": [{"Name": "slow", "Provider": "nomad",
            "Checks": [{"Type": "http", "Path": "/", "Method": "GET",
                        "Interval": 600u64 * 3600 * 1_000_000_000, "Timeout": 1_000_000_000u64}]}]}]}),
    );
    lab.nomad.register([
        reg(
            "slow-tag",
            "t1",
            "10.9.0.1",
            80,
            &["haproxy.enable=true", "haproxy.check.interval=600h"],
        ),
        reg("slow", "j1", "10.9.0.2", 80, &["haproxy.enable=true"]).job("slow-job"),
    ]);
    lab.prove_isolated(&["slow-tag", "slow"]);
    // The job's check is served with the interval cut to 24 h.
    lab.wait("the slow service served", |l| l.serving("slow").len() == 1);
    assert!(
        lab.diagnostics_of("slow").iter().any(|d| d["message"]
            .as_str()
            .unwrap_or("")
            .contains("exceeds HAProxy's range")),
        "{:?}",
        lab.diagnostics_of("slow")
    );
});

// 7 and 9. Route keys a URL cannot carry (`.`, `..`), and keys HAProxy's CLI would read as the
// start of a payload (`<<`).
both_drivers!(dot_segments_and_payload_markers_are_refused, |lab: &Lab| {
    lab.nomad.register([
        reg(
            "dot",
            "d1",
            "10.9.0.1",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=.",
                "haproxy.domain.type=prefix",
            ],
        ),
        reg(
            "dotdot",
            "d2",
            "10.9.0.2",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=..",
                "haproxy.domain.type=regex",
            ],
        ),
        reg(
            "payload",
            "p1",
            "10.9.0.3",
            80,
            &[
                "haproxy.enable=true",
                "haproxy.domain=^a<<",
                "haproxy.domain.type=regex",
            ],
        ),
    ]);
    lab.prove_isolated(&["dot", "dotdot", "payload"]);
});

// 10. Addresses no job may route public traffic to.
both_drivers!(denied_addresses_are_never_routed, |lab: &Lab| {
    let tags = ["haproxy.enable=true", "haproxy.domain=meta.test"];
    lab.nomad.register([
        reg("metadata", "m1", "169.254.169.254", 80, &tags),
        reg("metadata", "m2", "::ffff:169.254.169.254", 80, &tags),
        reg("nowhere", "z1", "0.0.0.0", 80, &["haproxy.enable=true"]),
    ]);
    lab.prove_isolated(&["metadata", "nowhere"]);
    assert!(lab.present("metadata").is_empty());
    assert!(lab.present("nowhere").is_empty());
    for d in lab.diagnostics_of("metadata") {
        assert_eq!(d["reason"], "denied_address", "{d}");
    }
});

// All of them at once, plus a flood of garbage: one pass never fails for the others.
both_drivers!(all_hostile_registrations_at_once, |lab: &Lab| {
    let mut regs = Vec::new();
    for (i, tags) in [
        vec![
            "haproxy.enable=true",
            "haproxy.domain=(?u)x",
            "haproxy.domain.type=regex",
        ],
        vec!["haproxy.enable=true", "haproxy.check.timeout=100y"],
        vec![
            "haproxy.enable=true",
            "haproxy.domain=.",
            "haproxy.domain.type=suffix",
        ],
        vec!["haproxy.enable=true", "haproxy.domain=healthy.test"],
        vec![
            "haproxy.enable=true",
            "haproxy.backend=custom",
            "haproxy.backend.name=hand_written\u{0}",
        ],
        vec![
            "haproxy.enable=true",
            "haproxy.maxconn=99999999999999999999",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        regs.push(reg(
            &format!("garbage-{i}"),
            &format!("g{i}"),
            "10.9.1.1",
            80,
            &tags,
        ));
    }
    let huge = format!("haproxy.domain={}", "a".repeat(100_000));
    regs.push(reg(
        "huge",
        "hg",
        "10.9.1.2",
        80,
        &["haproxy.enable=true", &huge],
    ));
    lab.nomad.register(regs);
    lab.prove_isolated(&[
        "garbage-0",
        "garbage-1",
        "garbage-2",
        "garbage-3",
        "garbage-4",
        "garbage-5",
        "huge",
    ]);
});

// 12. Files: the runtime driver's writes once followed symlinks at predictable names (a
// `.hnc.cfg.candidate`, `.<map>.tmp` planted by anyone who can write the directory redirected the
// connector's writes). Names are random and created exclusively now: planted links are never
// followed, and the connector keeps reconciling.
#[test]
fn planted_links_at_the_old_temporary_names_are_never_followed() {
    let lab = Lab::start(Driver::Runtime, &[]);
    let Side::Runtime { files, .. } = &lab.side else {
        unreachable!("runtime lab")
    };
    let outside = tempfile::tempdir().expect("tempdir");
    let mut precious = Vec::new();
    for (i, link) in [
        files.path().join("conf.d").join(".hnc.cfg.candidate"),
        files.path().join("conf.d").join(".hnc.cfg.tmp"),
        files.path().join("maps").join(".hnc_exact.map.tmp"),
        files.path().join("maps").join(".hnc_regex.map.tmp"),
    ]
    .iter()
    .enumerate()
    {
        let target = outside.path().join(format!("precious{i}"));
        std::fs::write(&target, "do not touch\n").expect("target");
        std::os::unix::fs::symlink(&target, link).expect("plant the link");
        precious.push(target);
    }
    lab.nomad.register([reg(
        "tenant",
        "t1",
        "10.9.0.1",
        80,
        &[
            "haproxy.enable=true",
            "haproxy.domain=(?u)x",
            "haproxy.domain.type=regex",
        ],
    )]);
    // The newcomer's backend and route make the driver write the fragment and the exact map.
    lab.prove_isolated(&["tenant"]);
    for p in &precious {
        assert_eq!(
            std::fs::read_to_string(p).expect("read"),
            "do not touch\n",
            "{} was written through a planted link",
            p.display()
        );
    }
}

// 13. Credentials in a URL (`http://user:pass@…`) never reach the log (at debug level, where the
// effective configuration is printed) or `/status`.
mod url_credentials {
    use super::*;

    fn credentials_stay_secret(driver: Driver) {
        let lab = Lab::start_with_nomad_userinfo(driver, &[], Some("ops:s3cr3t-nomad-pw"));
        lab.nomad.register([reg(
            "tenant",
            "t1",
            "169.254.169.254",
            80,
            &["haproxy.enable=true"],
        )]);
        lab.prove_isolated(&["tenant"]);
        let log = lab.connector.log_text();
        assert!(
            log.contains("effective configuration"),
            "debug config line: {log}"
        );
        assert!(
            !log.contains("s3cr3t-nomad-pw"),
            "credential in the log:\n{log}"
        );
        let (_, status) = lab.connector.get("/status").expect("status");
        assert!(
            !status.contains("s3cr3t-nomad-pw"),
            "credential in /status: {status}"
        );
    }

    #[test]
    fn runtime() {
        credentials_stay_secret(Driver::Runtime);
    }

    #[test]
    fn dataplane() {
        credentials_stay_secret(Driver::Dataplane);
    }
}
