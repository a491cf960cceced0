//! The files the runtime driver owns, rendered deterministically: the configuration fragment
//! (every owned backend with its settings and servers) and the route map files (hosts, paths, redirects). Pure:
//! text in, text out.
//!
//! Each backend in the fragment carries a machine-readable comment, `# hnc-settings …`, holding
//! the settings exactly as the connector's model has them; [`parse`] reads it back, so the live
//! model's settings equal what was rendered. Every value in it passed the tag grammar (no
//! whitespace, `#` or quotes), so `key=value` tokens split unambiguously.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, MatchKind, Mode, OWNER_MARKER,
    RouteKey, ServerTls, Sni, StickyCookie, Timeouts, dynamic_cookie_key,
};

/// The first line of every fragment.
pub const HEADER: &str = "# Managed by haproxy-nomad-connector (runtime driver). Rewritten on every change: edits are lost.";
const SETTINGS_TAG: &str = "# hnc-settings";

/// One owned backend as it goes into the fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragmentBackend {
    pub settings: BackendSettings,
    /// Server name → (endpoint, weight), servers in rotation only.
    pub servers: BTreeMap<String, (Endpoint, u16)>,
}

/// Renders the fragment: backends sorted by name, servers sorted by name.
pub fn render(backends: &BTreeMap<String, FragmentBackend>) -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    out.push('\n');
    for (name, b) in backends {
        let s = &b.settings;
        let _ = writeln!(out, "\nbackend {name}");
        let _ = writeln!(out, "    {}", settings_line(s));
        let _ = writeln!(out, "    description {OWNER_MARKER}");
        let _ = writeln!(out, "    mode {}", s.mode.as_str());
        let _ = writeln!(out, "    balance {}", s.balance.as_str());
        match &s.check {
            CheckSpec::None => {}
            CheckSpec::Tcp { .. } => {}
            CheckSpec::Http {
                method,
                path,
                host,
                expect,
                ..
            } => {
                out.push_str("    option httpchk\n");
                let _ = write!(out, "    http-check send meth {method} uri {path}");
                if let Some(h) = host {
                    let _ = write!(out, " ver HTTP/1.1 hdr Host {h}");
                }
                out.push('\n');
                if let Some((lo, hi)) = expect {
                    let _ = writeln!(out, "    http-check expect status {lo}-{hi}");
                }
            }
        }
        for (name, ms) in s.timeouts.entries() {
            if let Some(ms) = ms {
                let _ = writeln!(out, "    timeout {name} {ms}ms");
            }
        }
        if let Some(c) = &s.sticky {
            let _ = writeln!(out, "    cookie {} insert indirect nocache dynamic", c.name);
            let _ = writeln!(out, "    dynamic-cookie-key {}", dynamic_cookie_key(name));
        }
        let mut default_server = String::new();
        if let Some(t) = s.check.timing() {
            let _ = writeln!(out, "    timeout check {}ms", t.timeout_ms);
            let _ = write!(
                default_server,
                " inter {}ms fall {} rise {}",
                t.interval_ms, t.fall, t.rise
            );
        }
        if let Some(m) = s.maxconn {
            let _ = write!(default_server, " maxconn {m}");
        }
        if let Some(t) = &s.tls {
            for k in t.server_keywords(s.check.is_enabled()) {
                let _ = write!(default_server, " {k}");
            }
        }
        if !default_server.is_empty() {
            let _ = writeln!(out, "    default-server{default_server}");
        }
        for (server, (endpoint, weight)) in &b.servers {
            let check = if s.check.is_enabled() { " check" } else { "" };
            let _ = writeln!(out, "    server {server} {endpoint}{check} weight {weight}");
        }
    }
    out
}

/// The machine-readable settings comment.
pub fn settings_line(s: &BackendSettings) -> String {
    let mut line = format!(
        "{SETTINGS_TAG} mode={} balance={}",
        s.mode.as_str(),
        s.balance.as_str()
    );
    let timing = |line: &mut String, t: &CheckTiming| {
        let _ = write!(
            line,
            " inter={} timeout={} rise={} fall={}",
            t.interval_ms, t.timeout_ms, t.rise, t.fall
        );
    };
    match &s.check {
        CheckSpec::None => line.push_str(" check=none"),
        CheckSpec::Tcp { timing: t } => {
            line.push_str(" check=tcp");
            timing(&mut line, t);
        }
        CheckSpec::Http {
            method,
            path,
            host,
            expect,
            timing: t,
        } => {
            let _ = write!(
                line,
                " check=http method={method} path={path} host={} expect={}",
                host.as_deref().unwrap_or(""),
                expect
                    .map(|(lo, hi)| format!("{lo}-{hi}"))
                    .unwrap_or_default()
            );
            timing(&mut line, t);
        }
    }
    let _ = write!(
        line,
        " maxconn={}",
        s.maxconn.map(|m| m.to_string()).unwrap_or_default()
    );
    for (name, ms) in s.timeouts.entries() {
        if let Some(ms) = ms {
            let _ = write!(line, " timeout.{name}={ms}");
        }
    }
    if let Some(c) = &s.sticky {
        let _ = write!(line, " sticky.cookie={}", c.name);
    }
    if let Some(t) = &s.tls {
        let _ = write!(
            line,
            " tls.sni={} tls.ca={}",
            t.sni.as_ref().map(Sni::expression).unwrap_or_default(),
            t.ca_file.as_deref().unwrap_or("")
        );
    }
    line
}

/// Reads a settings comment back; `None` when it is not one or is malformed.
pub fn parse_settings_line(line: &str) -> Option<BackendSettings> {
    let rest = line.trim().strip_prefix(SETTINGS_TAG)?;
    let mut kv = BTreeMap::new();
    for token in rest.split_whitespace() {
        let (k, v) = token.split_once('=')?;
        kv.insert(k, v);
    }
    let get = |k: &str| kv.get(k).copied();
    let num = |k: &str| get(k)?.parse::<u32>().ok();
    let mode = match get("mode")? {
        "http" => Mode::Http,
        "tcp" => Mode::Tcp,
        _ => return None,
    };
    let balance = Balance::parse(get("balance")?)?;
    let timing = || {
        Some(CheckTiming {
            interval_ms: num("inter")?,
            timeout_ms: num("timeout")?,
            rise: num("rise")?,
            fall: num("fall")?,
        })
    };
    let check = match get("check")? {
        "none" => CheckSpec::None,
        "tcp" => CheckSpec::Tcp { timing: timing()? },
        "http" => CheckSpec::Http {
            method: get("method")?.to_string(),
            path: get("path")?.to_string(),
            host: get("host").filter(|h| !h.is_empty()).map(str::to_string),
            expect: match get("expect")? {
                "" => None,
                e => {
                    let (lo, hi) = e.split_once('-')?;
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                }
            },
            timing: timing()?,
        },
        _ => return None,
    };
    let maxconn = match get("maxconn")? {
        "" => None,
        m => Some(m.parse().ok()?),
    };
    // Absent: not set (a fragment written before timeouts existed reads the same).
    let timeout = |k: &str| -> Option<Option<u32>> {
        match get(k) {
            None => Some(None),
            Some(v) => Some(Some(v.parse().ok()?)),
        }
    };
    let timeouts = Timeouts {
        server_ms: timeout("timeout.server")?,
        connect_ms: timeout("timeout.connect")?,
        tunnel_ms: timeout("timeout.tunnel")?,
    };
    let sticky = get("sticky.cookie").map(|n| StickyCookie {
        name: n.to_string(),
    });
    let tls = match (get("tls.sni"), get("tls.ca")) {
        (None, None) => None,
        (Some(sni), Some(ca)) => Some(ServerTls {
            sni: match sni {
                "" => None,
                e => Some(Sni::parse_expression(e)?),
            },
            ca_file: (!ca.is_empty()).then(|| ca.to_string()),
        }),
        _ => return None,
    };
    Some(BackendSettings {
        mode,
        balance,
        check,
        maxconn,
        timeouts,
        sticky,
        tls,
    })
}

/// The backends a fragment declares, with their settings (`None` when the settings comment is
/// missing or unreadable: the core then rewrites the backend).
pub fn parse(text: &str) -> BTreeMap<String, Option<BackendSettings>> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("backend ") {
            let name = name.trim().to_string();
            out.insert(name.clone(), None);
            current = Some(name);
        } else if !line.starts_with(' ')
            && !line.starts_with('\t')
            && !t.is_empty()
            && !t.starts_with('#')
        {
            // Another section keyword: the connector never writes one, but stay correct.
            current = None;
        } else if let (Some(name), Some(settings)) = (&current, parse_settings_line(t)) {
            out.insert(name.clone(), Some(settings));
        }
    }
    out
}

/// The map file of one kind: a header comment, then `key value` lines sorted by key.
pub fn render_map(kind: MatchKind, routes: &BTreeMap<RouteKey, String>) -> String {
    let mut out = format!(
        "# Managed by haproxy-nomad-connector: {} host routes. Rewritten on every change.\n",
        kind.as_str()
    );
    for (route, backend) in routes.iter().filter(|(r, _)| r.kind == kind) {
        let _ = writeln!(out, "{} {backend}", route.key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn http_settings() -> BackendSettings {
        BackendSettings {
            mode: Mode::Http,
            balance: Balance::Leastconn,
            check: CheckSpec::Http {
                method: "GET".into(),
                path: "/health".into(),
                host: Some("api.example.test".into()),
                expect: Some((200, 299)),
                timing: CheckTiming {
                    interval_ms: 100,
                    timeout_ms: 50,
                    rise: 1,
                    fall: 2,
                },
            },
            maxconn: Some(20),
            timeouts: Default::default(),
            sticky: None,
            tls: None,
        }
    }

    fn sample() -> BTreeMap<String, FragmentBackend> {
        let e = |p| Endpoint::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
        let mut b = BTreeMap::new();
        b.insert(
            "web".to_string(),
            FragmentBackend {
                settings: http_settings(),
                servers: [
                    (e(9002).server_name(), (e(9002), 3)),
                    (e(9001).server_name(), (e(9001), 1)),
                ]
                .into(),
            },
        );
        b.insert(
            "db".to_string(),
            FragmentBackend {
                settings: BackendSettings {
                    mode: Mode::Tcp,
                    balance: Balance::Roundrobin,
                    check: CheckSpec::Tcp {
                        timing: CheckTiming::default(),
                    },
                    maxconn: None,
                    timeouts: Default::default(),
                    sticky: None,
                    tls: None,
                },
                servers: BTreeMap::new(),
            },
        );
        b.insert(
            "plain".to_string(),
            FragmentBackend {
                settings: BackendSettings {
                    mode: Mode::Http,
                    balance: Balance::Random,
                    check: CheckSpec::None,
                    maxconn: None,
                    timeouts: Default::default(),
                    sticky: None,
                    tls: None,
                },
                servers: [(e(1).server_name(), (e(1), 1))].into(),
            },
        );
        b
    }

    #[test]
    fn render_is_deterministic_and_exact() {
        let text = render(&sample());
        assert_eq!(text, render(&sample()));
        let expected = format!(
            "{HEADER}\n\
\n\
backend db\n    \
# hnc-settings mode=tcp balance=roundrobin check=tcp inter=2000 timeout=2000 rise=2 fall=3 maxconn=\n    \
description managed-by haproxy-nomad-connector\n    \
mode tcp\n    \
balance roundrobin\n    \
timeout check 2000ms\n    \
default-server inter 2000ms fall 3 rise 2\n\
\n\
backend plain\n    \
# hnc-settings mode=http balance=random check=none maxconn=\n    \
description managed-by haproxy-nomad-connector\n    \
mode http\n    \
balance random\n    \
server hnc_127.0.0.1_1 127.0.0.1:1 weight 1\n\
\n\
backend web\n    \
# hnc-settings mode=http balance=leastconn check=http method=GET path=/health host=api.example.test expect=200-299 inter=100 timeout=50 rise=1 fall=2 maxconn=20\n    \
description managed-by haproxy-nomad-connector\n    \
mode http\n    \
balance leastconn\n    \
option httpchk\n    \
http-check send meth GET uri /health ver HTTP/1.1 hdr Host api.example.test\n    \
http-check expect status 200-299\n    \
timeout check 50ms\n    \
default-server inter 100ms fall 2 rise 1 maxconn 20\n    \
server hnc_127.0.0.1_9001 127.0.0.1:9001 check weight 1\n    \
server hnc_127.0.0.1_9002 127.0.0.1:9002 check weight 3\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn settings_round_trip_through_the_fragment() {
        let sample = sample();
        let parsed = parse(&render(&sample));
        let want: BTreeMap<String, Option<BackendSettings>> = sample
            .iter()
            .map(|(n, b)| (n.clone(), Some(b.settings.clone())))
            .collect();
        assert_eq!(parsed, want);
        // No host, no expect.
        let mut s = http_settings();
        if let CheckSpec::Http { host, expect, .. } = &mut s.check {
            *host = None;
            *expect = None;
        }
        s.maxconn = None;
        assert_eq!(parse_settings_line(&settings_line(&s)), Some(s));
    }

    #[test]
    fn timeouts_render_as_backend_timeouts_and_round_trip() {
        let mut s = http_settings();
        s.timeouts = Timeouts {
            server_ms: Some(30_000),
            connect_ms: None,
            tunnel_ms: Some(3_600_000),
        };
        let backends: BTreeMap<String, FragmentBackend> = [(
            "ws".to_string(),
            FragmentBackend {
                settings: s.clone(),
                servers: BTreeMap::new(),
            },
        )]
        .into();
        let text = render(&backends);
        assert!(text.contains("\n    timeout server 30000ms\n"), "{text}");
        assert!(text.contains("\n    timeout tunnel 3600000ms\n"), "{text}");
        assert!(!text.contains("timeout connect"), "{text}");
        assert!(
            text.contains(" timeout.server=30000 timeout.tunnel=3600000\n"),
            "{text}"
        );
        assert_eq!(parse(&text).get("ws"), Some(&Some(s)));
        // A settings line without timeouts (as written before they existed) reads as unset.
        let old = "# hnc-settings mode=tcp balance=roundrobin check=none maxconn=";
        assert_eq!(
            parse_settings_line(old).map(|s| s.timeouts),
            Some(Timeouts::default())
        );
        assert_eq!(
            parse_settings_line(&format!("{old} timeout.server=x")),
            None
        );
    }

    #[test]
    fn a_sticky_backend_has_a_dynamic_cookie_and_round_trips() {
        let mut s = http_settings();
        s.sticky = Some(StickyCookie {
            name: "app_srv".into(),
        });
        let backends: BTreeMap<String, FragmentBackend> = [(
            "default.shop".to_string(),
            FragmentBackend {
                settings: s.clone(),
                servers: BTreeMap::new(),
            },
        )]
        .into();
        let text = render(&backends);
        assert!(
            text.contains("\n    cookie app_srv insert indirect nocache dynamic\n    dynamic-cookie-key hnc-default.shop\n"),
            "{text}"
        );
        assert!(text.contains(" sticky.cookie=app_srv\n"), "{text}");
        assert_eq!(parse(&text).get("default.shop"), Some(&Some(s)));
    }

    #[test]
    fn tls_to_servers_is_on_the_default_server_and_round_trips() {
        for tls in [
            ServerTls {
                sni: Some(Sni::Auto),
                ca_file: Some("/etc/haproxy/ca.pem".into()),
            },
            ServerTls {
                sni: Some(Sni::Host("api.internal".into())),
                ca_file: None,
            },
            ServerTls {
                sni: None,
                ca_file: None,
            },
        ] {
            let mut s = http_settings();
            s.tls = Some(tls.clone());
            let backends: BTreeMap<String, FragmentBackend> = [(
                "api".to_string(),
                FragmentBackend {
                    settings: s.clone(),
                    servers: BTreeMap::new(),
                },
            )]
            .into();
            let text = render(&backends);
            let keywords = tls.server_keywords(true).join(" ");
            assert!(
                text.contains(&format!(" maxconn 20 {keywords}\n")),
                "{text}"
            );
            assert_eq!(parse(&text).get("api"), Some(&Some(s)), "{text}");
        }
        let s = {
            let mut s = http_settings();
            s.tls = Some(ServerTls {
                sni: Some(Sni::Auto),
                ca_file: Some("/ca.pem".into()),
            });
            s
        };
        let text = render(
            &[(
                "api".to_string(),
                FragmentBackend {
                    settings: s,
                    servers: BTreeMap::new(),
                },
            )]
            .into(),
        );
        assert!(
            text.contains(
                " ssl verify required ca-file /ca.pem sni req.hdr(host),field(1,:) check-ssl\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn unreadable_settings_are_none() {
        let parsed = parse("backend a\n    # hnc-settings mode=udp\nbackend b\n    mode http\n");
        assert_eq!(parsed.get("a"), Some(&None));
        assert_eq!(parsed.get("b"), Some(&None));
        assert!(parse("").is_empty());
    }

    #[test]
    fn map_files_are_sorted_per_kind() {
        let routes: BTreeMap<RouteKey, String> = [
            (
                RouteKey {
                    kind: MatchKind::Exact,
                    key: "b.test".into(),
                },
                "web".to_string(),
            ),
            (
                RouteKey {
                    kind: MatchKind::Exact,
                    key: "a.test".into(),
                },
                "api".to_string(),
            ),
            (
                RouteKey {
                    kind: MatchKind::Regex,
                    key: r"^x\.test$".into(),
                },
                "web".to_string(),
            ),
        ]
        .into();
        let exact = render_map(MatchKind::Exact, &routes);
        assert!(exact.ends_with("a.test api\nb.test web\n"), "{exact}");
        assert!(render_map(MatchKind::Regex, &routes).ends_with("^x\\.test$ web\n"));
        assert_eq!(render_map(MatchKind::Prefix, &routes).lines().count(), 1);
    }
}
