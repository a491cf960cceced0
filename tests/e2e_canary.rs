//! Canaries end to end: Nomad registers a deployment's canaries with the job's `canary_tags`, so
//! `haproxy.weight=10` there (next to `haproxy.weight=100` in the normal tags) gives the canary
//! its share of real traffic through real HAProxy (runtime driver); promotion re-registers it
//! with the normal tags and every instance takes an equal share, with no reload. The Data Plane
//! API driver does the same as slot writes, with no reload.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::e2e_gating::{World, dp_base, env, runtime};
use crate::support::connector::Connector;
use crate::support::dataplane::{DataplaneDouble, Options as DpOptions};
use crate::support::http::{self, Instance};
use crate::support::nomad::{NomadDouble, Reg};

const WAIT: Duration = Duration::from_secs(20);
const DOMAIN: &str = "gated.example.test";
const REQUESTS: usize = 2_000;
const STABLE: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=gated.example.test",
    "haproxy.check.disabled=true",
    "haproxy.weight=100",
];
/// The job's `canary_tags`: what Nomad registers canaries with instead of `tags`.
const CANARY: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=gated.example.test",
    "haproxy.check.disabled=true",
    "haproxy.weight=10",
    "canary",
];

fn reg(alloc: &str, address: &str, port: u16, tags: &[&str]) -> Reg {
    Reg::new("default", "app", alloc, address, port).tags(Some(tags))
}

/// Requests answered per instance name, out of `n`, sent by 8 clients at once.
fn shares(port: u16, n: usize) -> BTreeMap<String, usize> {
    let clients = 8;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut out: BTreeMap<String, usize> = BTreeMap::new();
                for _ in (c..n).step_by(clients) {
                    let name = match http::get(port, DOMAIN, "/") {
                        Ok((200, body)) => body,
                        Ok((status, _)) => format!("status {status}"),
                        Err(e) => format!("error {e}"),
                    };
                    *out.entry(name).or_insert(0) += 1;
                }
                out
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for t in threads {
        for (name, count) in t.join().expect("client thread") {
            *out.entry(name).or_insert(0) += count;
        }
    }
    out
}

/// `address:port` → user weight of every server of `backend` with an address.
fn weights(w: &World, backend: &str) -> BTreeMap<String, u32> {
    w.lb.admin(&format!("show servers state {backend}"))
        .lines()
        .skip(2)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() > 18 && c[4] != "0.0.0.0" && c[4] != "-")
                .then(|| (format!("{}:{}", c[4], c[18]), c[7].parse().unwrap_or(0)))
        })
        .collect()
}

#[test]
fn a_canary_gets_its_weighted_share_and_promotion_evens_it_out_without_reload() {
    let w = World::start(false);
    let instances: Vec<Instance> = (0..5).map(|i| Instance::start(&format!("i{i}"))).collect();
    let regs = |canary_tags: &[&str]| -> Vec<Reg> {
        (0..5)
            .map(|i| {
                let tags = if i == 4 { canary_tags } else { STABLE };
                reg(&format!("a{i}"), "127.0.0.1", instances[i].port, tags)
            })
            .collect()
    };
    w.nomad.register(regs(CANARY));
    w.wait("4 servers at 100, the canary at 10", WAIT, |w| {
        let mut ws: Vec<u32> = weights(w, "app").into_values().collect();
        ws.sort_unstable();
        ws == [10, 100, 100, 100, 100]
    });
    w.connector.wait_settled();
    let reloads = w.reloads();
    let connector_reloads = w.connector.metrics().sum("hnc_haproxy_reloads_total", &[]);

    let seen = shares(w.port, REQUESTS);
    let canary = seen.get("i4").copied().unwrap_or(0);
    let percent = canary as f64 * 100.0 / REQUESTS as f64;
    println!("canary share: {percent:.2} % of {REQUESTS} ({seen:?})");
    assert!(
        (2.0..=4.0).contains(&percent),
        "the canary served {percent:.2} % ({seen:?})"
    );
    assert_eq!(seen.values().sum::<usize>(), REQUESTS);
    assert_eq!(seen.len(), 5, "only the five instances answer: {seen:?}");

    // Promotion: Nomad re-registers the canary with the normal tags.
    let canary_id = regs(CANARY)[4].id.clone();
    w.nomad.set_tags(&canary_id, Some(STABLE));
    w.wait("every weight at 100", WAIT, |w| {
        weights(w, "app").values().all(|x| *x == 100)
    });
    let seen = shares(w.port, REQUESTS);
    for i in 0..5 {
        let n = seen.get(&format!("i{i}")).copied().unwrap_or(0);
        let percent = n as f64 * 100.0 / REQUESTS as f64;
        assert!(
            (18.0..=22.0).contains(&percent),
            "i{i} served {percent:.2} % after promotion ({seen:?})"
        );
    }
    assert_eq!(
        w.reloads(),
        reloads,
        "weights change at run time: no reload"
    );
    assert_eq!(
        w.connector.metrics().sum("hnc_haproxy_reloads_total", &[]),
        connector_reloads
    );
}

#[test]
fn dataplane_driver_writes_canary_weights_to_slots_without_reload() {
    let rt = runtime();
    let nomad = rt.block_on(NomadDouble::start());
    let dp = rt.block_on(DataplaneDouble::start(dp_base(), DpOptions::fast()));
    let mut env = env(&nomad, false);
    env.extend([
        ("HAPROXY_DATAPLANE_URL", dp.url()),
        ("HAPROXY_USERNAME", dp.user()),
        ("HAPROXY_PASSWORD", dp.password()),
    ]);
    let c = Connector::start(&env);
    let regs = |canary_tags: &[&str]| -> Vec<Reg> {
        (1..=5)
            .map(|i| {
                let tags = if i == 5 { canary_tags } else { STABLE };
                reg(&format!("a{i}"), &format!("10.0.0.{i}"), 8080, tags)
            })
            .collect()
    };
    // Weights of the running HAProxy's servers, by address (what the slot writes set).
    let weights = || -> BTreeMap<String, i64> {
        dp.runtime_snapshot()["backends"]["app"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|s| s["admin_state"] == "ready")
            .map(|s| {
                (
                    format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]),
                    s["weight"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    };
    nomad.register(regs(CANARY));
    c.wait_for("4 slots at 100, the canary's at 10", WAIT, |_| {
        let w = weights();
        w.get("10.0.0.5:8080") == Some(&10)
            && (1..=4).all(|i| w.get(&format!("10.0.0.{i}:8080")) == Some(&100))
    });
    c.wait_settled();
    dp.reset_counters();

    nomad.set_tags(&regs(CANARY)[4].id, Some(STABLE));
    c.wait_for("the canary's slot at 100", WAIT, |_| {
        weights().get("10.0.0.5:8080") == Some(&100)
    });
    let puts: u64 = dp
        .requests()
        .iter()
        .filter(|(route, _)| route.starts_with("PUT ") && route.ends_with("/servers/{name}"))
        .map(|(_, n)| *n)
        .sum();
    assert!(puts >= 1, "a slot write: {:?}", dp.requests());
    assert_eq!(dp.reload_count(), 0, "no reload for a weight change");
}
