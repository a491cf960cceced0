//! What the world sends: a fixed catalog of healthy services, and generators of hostile
//! registrations (arbitrary Unicode and control characters, bidi marks, NUL, 100 KB values,
//! PCRE2-only, Rust-only and catastrophic regexes, durations from 0 to years, any address, any
//! port, names that collide with existing backends).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use haproxy_nomad_connector::catalog::{
    Instance, NomadCheck, NomadCheckKind, Service, ServiceKey, Snapshot,
};
use haproxy_nomad_connector::desired::tags::KEYS;
use haproxy_nomad_connector::live::{Live, LiveBackend, LiveServer};
use haproxy_nomad_connector::model::{AdminState, Mode, OpState};
use proptest::prelude::*;

pub fn instance(id: &str, address: &str, port: u16, tags: &[&str], create: u64) -> Instance {
    Instance {
        id: id.to_string(),
        job_id: format!("job-{id}"),
        alloc_id: format!("alloc-{id}"),
        node_id: "node".into(),
        datacenter: "dc1".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: address.to_string(),
        port,
        create_index: create,
        modify_index: create,
        nomad_check: None,
    }
}

const WEB: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=web.test",
    "haproxy.check.path=/health",
];
const API: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=api.test",
    "haproxy.domain=*.api.test",
];
const DB: &[&str] = &["haproxy.enable=true", "haproxy.mode=tcp"];
const SHOP: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.backend=custom",
    "haproxy.backend.name=hand_custom",
    "haproxy.domain=shop.test",
];
const FRESH: &[&str] = &[
    "haproxy.enable=true",
    "haproxy.domain=^fresh[0-9]+\\.test$",
    "haproxy.domain.type=regex",
];

/// The healthy services: (key, instances). Their registrations are the oldest.
pub fn healthy() -> Vec<(ServiceKey, Vec<Instance>)> {
    vec![
        (
            ServiceKey::new("default", "web"),
            vec![
                instance("web1", "10.1.0.1", 8080, WEB, 1),
                instance("web2", "10.1.0.2", 8080, WEB, 1),
                instance("web3", "10.1.0.3", 8080, WEB, 2),
            ],
        ),
        (
            ServiceKey::new("default", "web-api"),
            vec![
                instance("api1", "10.2.0.1", 9000, API, 3),
                instance("api2", "fd00::2", 9000, API, 3),
            ],
        ),
        (
            ServiceKey::new("prod", "db"),
            vec![instance("db1", "10.3.0.1", 5432, DB, 4)],
        ),
        (
            ServiceKey::new("default", "shop"),
            vec![instance("shop1", "10.4.0.1", 80, SHOP, 5)],
        ),
        (
            ServiceKey::new("default", "fresh"),
            vec![instance("fresh1", "10.5.0.1", 80, FRESH, 6)],
        ),
    ]
}

/// The backend names the healthy services own or manage servers in.
pub const HEALTHY_BACKENDS: [&str; 5] = ["web", "web_api", "prod.db", "hand_custom", "fresh"];

/// A snapshot of `services`.
pub fn snapshot(services: impl IntoIterator<Item = (ServiceKey, Vec<Instance>)>) -> Snapshot {
    let mut map: BTreeMap<ServiceKey, Vec<Instance>> = BTreeMap::new();
    for (key, instances) in services {
        map.entry(key).or_default().extend(instances);
    }
    Snapshot {
        services: map
            .into_iter()
            .map(|(k, mut instances)| {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                (k, Arc::new(Service { instances }))
            })
            .collect(),
        synced: true,
        ..Snapshot::default()
    }
}

fn server(name: &str, endpoint: &str) -> (String, LiveServer) {
    let endpoint: std::net::SocketAddr = endpoint.parse().expect("endpoint");
    (
        name.to_string(),
        LiveServer {
            name: name.to_string(),
            endpoint: Some(haproxy_nomad_connector::model::Endpoint::new(
                endpoint.ip(),
                endpoint.port(),
            )),
            admin: AdminState::Ready,
            op: OpState::Up,
            check_enabled: false,
            weight: 1,
            sessions: 0,
            drain_started: None,
        },
    )
}

/// Live HAProxy before the pass: the healthy services as they were a moment ago (web had
/// 10.1.0.9 instead of 10.1.0.3; `fresh` did not exist yet), plus hand-written backends.
pub fn live_before(realised: Live) -> Live {
    let mut live = realised;
    if let Some(web) = live.backends.get_mut("web") {
        let (_, gone) = web
            .servers
            .pop_last()
            .expect("web has servers in the realised state");
        let mut leaving = gone.clone();
        leaving.name = "hnc_10.1.0.9_8080".into();
        leaving.endpoint = Some(haproxy_nomad_connector::model::Endpoint::new(
            [10, 1, 0, 9].into(),
            8080,
        ));
        web.servers.insert(leaving.name.clone(), leaving);
    }
    live.backends.remove("fresh");
    live.routes.retain(|_, backends| backends != &["fresh"]);
    for (name, servers) in [
        ("hand_written", vec![server("static1", "127.0.0.1:9")]),
        ("hand_custom", vec![server("static2", "127.0.0.1:10")]),
    ] {
        let entry = live
            .backends
            .entry(name.to_string())
            .or_insert_with(|| LiveBackend {
                name: name.to_string(),
                owned: false,
                mode: Mode::Http,
                balance: Some("roundrobin".into()),
                settings: None,
                servers: BTreeMap::new(),
            });
        entry.servers.extend(servers);
    }
    live
}

/// A corpus of regexes: PCRE2-only (valid in HAProxy), Rust-only (invalid there), catastrophic,
/// and tricky for CLIs and URLs.
pub const REGEXES: &[&str] = &[
    "^(?<=x)y$",
    "(?u)x",
    "(?U)x",
    "^(a+)+$",
    "^(a|aa)*$",
    "(x+x+)+y",
    "\\d+\\d+",
    "^api\\.ex\\.com$",
    "^[a-z]+\\.test$",
    "(unclosed",
    ".",
    "..",
    "^a<<",
    "a\\",
    "\\Qa.b\\E",
    "(?R)",
    "(a)\\1",
    "^\\x{41}+$",
    "[[:alpha:]]+",
    "^é+$",
];

/// Durations as tags: 0 to years, overflowing ones included.
pub const DURATIONS: &[&str] = &[
    "0ms",
    "9ms",
    "10ms",
    "24h",
    "24h1ms",
    "600h",
    "25d",
    "100y",
    "1ns",
    "18446744073709551615s",
    "5",
    "-1s",
];

/// Any text, weighted towards what breaks parsers: control characters, bidi marks, NUL,
/// multi-byte characters at byte offsets where slicing would panic, syntax characters.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.*^$()+?{}\\[\\]|\\\\<>;#'\" \\-]{0,24}",
        2 => "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{200f}\\u{feff}é\u{1F600}a-z.]{0,24}",
        2 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        1 => Just("a".repeat(100_000)),
        1 => Just(format!("{}é", "0".repeat(14))),
    ]
}

/// One tag of a hostile registration.
fn hostile_tag() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (proptest::sample::select(&KEYS[..]), nasty_text()).prop_map(|(k, v)| format!("haproxy.{k}={v}")),
        2 => proptest::sample::select(REGEXES).prop_map(|r| format!("haproxy.domain={r}")),
        1 => Just("haproxy.domain.type=regex".to_string()),
        1 => Just("haproxy.domain.type=prefix".to_string()),
        2 => (proptest::sample::select(&["check.interval", "check.timeout", "timeout.server", "timeout.connect", "timeout.tunnel"][..]), proptest::sample::select(DURATIONS))
            .prop_map(|(k, d)| format!("haproxy.{k}={d}")),
        1 => proptest::sample::select(&[
            "haproxy.domain=web.test",
            "haproxy.domain=*.api.test",
            "haproxy.domain=shop.test",
            "haproxy.backend=custom",
            "haproxy.backend.name=web",
            "haproxy.backend.name=hand_custom",
            "haproxy.backend.name=web_api",
            "haproxy.weight=0",
            "haproxy.maxconn=1",
            "haproxy.path=/api",
            "haproxy.path.strip=true",
            "haproxy.path.type=exact",
        ][..]).prop_map(String::from),
        1 => nasty_text(),
        1 => nasty_text().prop_map(|v| format!("haproxy.{v}=1")),
    ]
    // `backend=static` opts a service out: it is not hostile, only absent.
    .prop_filter("static opts out", |t| !t.eq_ignore_ascii_case("haproxy.backend=static"))
}

/// What makes a hostile registration certainly earn a diagnostic.
#[derive(Clone, Debug)]
pub enum Poison {
    Tag(String),
    Address(String),
    Port0,
    JobCheck(Duration),
}

fn poison() -> impl Strategy<Value = Poison> {
    prop_oneof![
        proptest::sample::select(
            &[
                "haproxy.domain=(?u)x",
                "haproxy.check.interval=600h",
                "haproxy.check.timeout=100y",
                "haproxy.timeout.tunnel=600h",
                "haproxy.timeout.server=25d",
                "haproxy.timeout.connect=5",
                "haproxy.sticky.cookie=a=b",
                "haproxy.sticky=source",
                "haproxy.server.sni=auto",
                "haproxy.server.verify=maybe",
                "haproxy.domain=^a<<",
                "haproxy.domain=\u{0}",
                "haproxy.domain=00000000000000é",
                "haproxy.check.path=/a\u{202e}b",
                "haproxy.backend=custom\nhaproxy.backend.name=web",
                "haproxy.enable=maybe",
                "haproxy.\u{202e}x=1",
                "haproxy.path=api",
                "haproxy.path=/a?b",
                "haproxy.path=/a/../b",
                "haproxy.path.strip=sometimes",
                "haproxy.path=/a\u{0}b",
                "haproxy.path=/a%20b",
                "haproxy.redirect.https=maybe",
                "haproxy.server.sni=a b",
            ][..]
        )
        .prop_map(|t| Poison::Tag(t.to_string())),
        Just(Poison::Tag(format!(
            "haproxy.domain={}",
            "a".repeat(100_000)
        ))),
        Just(Poison::Tag(format!(
            "haproxy.path=/{}",
            "a".repeat(100_000)
        ))),
        proptest::sample::select(
            &[
                "169.254.169.254",
                "::ffff:169.254.169.254",
                "0.0.0.0",
                "::",
                "fe80::1",
                "224.0.0.1",
                "255.255.255.255",
                "evil.example",
                "",
                "10.0.0.1\nbackend x",
            ][..]
        )
        .prop_map(|a| Poison::Address(a.to_string())),
        Just(Poison::Port0),
        (86_401u64..(100 * 365 * 86_400)).prop_map(|s| Poison::JobCheck(Duration::from_secs(s))),
    ]
}

/// A hostile registration: its service key (never a healthy one) and the instance.
pub fn hostile(n: usize) -> impl Strategy<Value = (ServiceKey, Instance)> {
    (
        proptest::sample::select(&["default", "prod", "evil"][..]),
        prop_oneof![
            3 => proptest::sample::select(&["web_api", "web-api2", "hand_custom", "hand_written", "x", "evil"][..]).prop_map(String::from),
            1 => nasty_text().prop_map(|s| s.chars().take(30).collect()),
        ],
        proptest::collection::vec(hostile_tag(), 0..5),
        poison(),
        prop_oneof![
            proptest::sample::select(&["10.9.0.1", "10.1.0.1", "fd00::9", "127.0.0.1"][..]).prop_map(String::from),
            nasty_text(),
        ],
        1u16..=65535,
        proptest::option::of((0u64..(10 * 365 * 86_400), 0u64..(10 * 365 * 86_400))),
    )
        .prop_map(move |(ns, name, mut tags, poison, address, port, check)| {
            let mut key = ServiceKey::new(ns, name);
            if healthy().iter().any(|(k, _)| *k == key) {
                key.name.push_str("-h");
            }
            tags.insert(0, "haproxy.enable=true".into());
            let mut inst = instance(&format!("hostile{n}"), &address, port, &[], 100 + n as u64);
            inst.tags = tags;
            if let Some((interval, timeout)) = check {
                inst.nomad_check = Some(NomadCheck {
                    kind: NomadCheckKind::Http,
                    path: Some("/".into()),
                    method: None,
                    interval: Some(Duration::from_secs(interval)),
                    timeout: Some(Duration::from_secs(timeout)),
                    host: None,
                });
            }
            match poison {
                Poison::Tag(t) => inst.tags.extend(t.split('\n').map(String::from)),
                Poison::Address(a) => inst.address = a,
                Poison::Port0 => inst.port = 0,
                Poison::JobCheck(d) => {
                    inst.tags.retain(|t| !t.starts_with("haproxy.check"));
                    inst.nomad_check = Some(NomadCheck {
                        kind: NomadCheckKind::Http,
                        path: Some("/".into()),
                        method: None,
                        interval: Some(d),
                        timeout: None,
                        host: None,
                    });
                }
            }
            (key, inst)
        })
}

/// Between 1 and `max` hostile registrations.
pub fn hostiles(max: usize) -> impl Strategy<Value = Vec<(ServiceKey, Instance)>> {
    proptest::collection::vec(0..1000usize, 1..=max).prop_flat_map(|ns| {
        ns.into_iter()
            .enumerate()
            .map(|(i, _)| hostile(i))
            .collect::<Vec<_>>()
    })
}
