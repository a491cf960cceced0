//! Pure translation between the core's model and Data Plane API objects: backend bodies, the
//! `http_checks` list, server slots, and reading settings back. No I/O.
//!
//! Servers live in **slots**: `hnc_slot_<n>` servers written into the configuration with their
//! checks, so filling or emptying one is a `PUT` of address, port, weight and maintenance only,
//! which DPAPI applies through the runtime API with no reload (CONTRACTS §2.5). An empty slot
//! points at [`PLACEHOLDER_ADDRESS`]:[`PLACEHOLDER_PORT`] in maintenance.

use serde_json::{Value, json};

use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, Mode, OWNER_MARKER,
};

pub const PLACEHOLDER_ADDRESS: &str = "127.0.0.1";
pub const PLACEHOLDER_PORT: u16 = 1;
// The slot naming and growth rules are the core's (the slot planner).
pub use crate::plan::slots::{MIN_SLOTS, slot_name, slot_number, slot_target};

/// A backend body for an owned backend. Check parameters sit in `default_server`, so the slots
/// inherit them and a settings change rewrites one object.
pub fn backend_body(name: &str, s: &BackendSettings) -> Value {
    let mut b = json!({
        "name": name,
        "description": OWNER_MARKER,
        "mode": s.mode.as_str(),
        "balance": {"algorithm": s.balance.as_str()},
    });
    let mut default_server =
        json!({"check": if s.check.is_enabled() { "enabled" } else { "disabled" }});
    if let Some(t) = s.check.timing() {
        default_server["inter"] = json!(t.interval_ms);
        default_server["rise"] = json!(t.rise);
        default_server["fall"] = json!(t.fall);
        b["check_timeout"] = json!(t.timeout_ms);
    }
    if let Some(m) = s.maxconn {
        default_server["maxconn"] = json!(m);
    }
    b["default_server"] = default_server;
    if matches!(s.check, CheckSpec::Http { .. }) {
        b["adv_check"] = json!("httpchk");
    }
    b
}

/// The `http_checks` list of an owned backend: the request (with a Host header through a `send`
/// rule, never `httpchk_params.host`) and the accepted statuses.
pub fn http_checks(check: &CheckSpec) -> Value {
    let CheckSpec::Http {
        method,
        path,
        host,
        expect,
        ..
    } = check
    else {
        return json!([]);
    };
    let mut send = json!({"type": "send", "method": method, "uri": path});
    match host {
        Some(h) => {
            send["version"] = json!("HTTP/1.1");
            send["headers"] = json!([{"name": "Host", "fmt": h}]);
        }
        None => send["version"] = json!("HTTP/1.0"),
    }
    let mut list = vec![send];
    if let Some((lo, hi)) = expect {
        let pattern = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        list.push(json!({"type": "expect", "match": "status", "pattern": pattern}));
    }
    Value::Array(list)
}

/// A slot's configuration body. In an owned backend the check comes from `default_server`; in a
/// custom or adopted backend (whose settings are not ours) the slot carries its own check
/// parameters from `own_check`. The same fields are sent on every write, so a fill or release
/// differs only in runtime-capable fields and never reloads.
pub fn slot_body(
    name: &str,
    endpoint: Option<&Endpoint>,
    weight: u16,
    own_check: Option<&BackendSettings>,
) -> Value {
    let (address, port, maintenance) = match endpoint {
        Some(e) => (e.addr.to_string(), e.port, "disabled"),
        None => (PLACEHOLDER_ADDRESS.to_string(), PLACEHOLDER_PORT, "enabled"),
    };
    let mut body = json!({
        "name": name,
        "address": address,
        "port": port,
        "weight": weight,
        "maintenance": maintenance,
    });
    if let Some(s) = own_check {
        body["check"] = json!(if s.check.is_enabled() {
            "enabled"
        } else {
            "disabled"
        });
        if let Some(t) = s.check.timing() {
            body["inter"] = json!(t.interval_ms);
            body["rise"] = json!(t.rise);
            body["fall"] = json!(t.fall);
        }
        if let Some(m) = s.maxconn {
            body["maxconn"] = json!(m);
        }
    }
    body
}

/// A slot as found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// `None` for an empty slot.
    pub endpoint: Option<Endpoint>,
    pub weight: u16,
    /// Carries `check: enabled` itself (slots in backends that are not ours).
    pub check: Option<bool>,
}

/// Reads a configuration server object as a slot, if it is one of ours.
pub fn parse_slot(server: &Value) -> Option<Slot> {
    let name = server.get("name")?.as_str()?;
    slot_number(name)?;
    let address = server.get("address").and_then(Value::as_str).unwrap_or("");
    let port = server
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok());
    let maint = server.get("maintenance").and_then(Value::as_str) == Some("enabled");
    let endpoint = match (address.parse(), port) {
        (Ok(addr), Some(port))
            if !(maint && address == PLACEHOLDER_ADDRESS && port == PLACEHOLDER_PORT) =>
        {
            Some(Endpoint::new(addr, port))
        }
        _ => None,
    };
    Some(Slot {
        name: name.to_string(),
        endpoint,
        weight: server
            .get("weight")
            .and_then(Value::as_u64)
            .and_then(|w| u16::try_from(w).ok())
            .unwrap_or(1),
        check: server
            .get("check")
            .and_then(Value::as_str)
            .map(|c| c == "enabled"),
    })
}

/// An owned backend's settings read back from its configuration (`full_section=true` object).
/// `None` when they are not in the shape the connector writes (they will be rewritten).
pub fn parse_settings(b: &Value) -> Option<BackendSettings> {
    let mode = match b.get("mode").and_then(Value::as_str)? {
        "http" => Mode::Http,
        "tcp" => Mode::Tcp,
        _ => return None,
    };
    let balance = Balance::parse(b.get("balance")?.get("algorithm")?.as_str()?)?;
    let ds = b.get("default_server")?;
    let u32_of = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    let maxconn = u32_of(ds, "maxconn");
    let check = if ds.get("check").and_then(Value::as_str) != Some("enabled") {
        CheckSpec::None
    } else {
        let timing = CheckTiming {
            interval_ms: u32_of(ds, "inter")?,
            timeout_ms: u32_of(b, "check_timeout")?,
            rise: u32_of(ds, "rise")?,
            fall: u32_of(ds, "fall")?,
        };
        if b.get("adv_check").and_then(Value::as_str) == Some("httpchk") {
            let list = b.get("http_check_list").and_then(Value::as_array)?;
            let send = list
                .iter()
                .find(|r| r.get("type").and_then(Value::as_str) == Some("send"))?;
            let host = send
                .get("headers")
                .and_then(Value::as_array)
                .and_then(|h| {
                    h.iter()
                        .find(|x| x.get("name").and_then(Value::as_str) == Some("Host"))
                })
                .and_then(|x| x.get("fmt").and_then(Value::as_str))
                .map(str::to_string);
            let expect = match list
                .iter()
                .find(|r| r.get("type").and_then(Value::as_str) == Some("expect"))
            {
                None => None,
                Some(e) => {
                    let p = e.get("pattern").and_then(Value::as_str)?;
                    let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                }
            };
            CheckSpec::Http {
                method: send.get("method").and_then(Value::as_str)?.to_string(),
                path: send.get("uri").and_then(Value::as_str)?.to_string(),
                host,
                expect,
                timing,
            }
        } else {
            CheckSpec::Tcp { timing }
        }
    };
    Some(BackendSettings {
        mode,
        balance,
        check,
        maxconn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_settings(host: Option<&str>, expect: Option<(u16, u16)>) -> BackendSettings {
        BackendSettings {
            mode: Mode::Http,
            balance: Balance::Leastconn,
            check: CheckSpec::Http {
                method: "GET".into(),
                path: "/health".into(),
                host: host.map(String::from),
                expect,
                timing: CheckTiming {
                    interval_ms: 1000,
                    timeout_ms: 500,
                    rise: 2,
                    fall: 3,
                },
            },
            maxconn: Some(10),
        }
    }

    #[test]
    fn settings_round_trip_through_the_api_objects() {
        for s in [
            http_settings(Some("a.test"), Some((200, 399))),
            http_settings(None, None),
            http_settings(None, Some((204, 204))),
            BackendSettings {
                mode: Mode::Tcp,
                balance: Balance::Roundrobin,
                check: CheckSpec::Tcp {
                    timing: CheckTiming::default(),
                },
                maxconn: None,
            },
            BackendSettings {
                mode: Mode::Tcp,
                balance: Balance::First,
                check: CheckSpec::None,
                maxconn: None,
            },
        ] {
            let mut b = backend_body("web", &s);
            b["http_check_list"] = http_checks(&s.check);
            assert_eq!(parse_settings(&b), Some(s.clone()), "{b}");
        }
    }

    #[test]
    fn host_header_goes_through_a_send_rule() {
        let s = http_settings(Some("a.test"), None);
        let b = backend_body("web", &s);
        assert!(
            b.get("httpchk_params").is_none(),
            "httpchk_params.host makes HAProxy reject the config"
        );
        assert_eq!(b["adv_check"], "httpchk");
        assert_eq!(b["description"], OWNER_MARKER);
        let checks = http_checks(&s.check);
        assert_eq!(
            checks,
            json!([{"type": "send", "method": "GET", "uri": "/health", "version": "HTTP/1.1",
                    "headers": [{"name": "Host", "fmt": "a.test"}]}])
        );
    }

    #[test]
    fn slots() {
        assert_eq!(slot_name(3), "hnc_slot_0003");
        assert_eq!(slot_number("hnc_slot_0003"), Some(3));
        assert_eq!(slot_number("hnc_10.0.0.1_80"), None);
        assert_eq!(slot_target(0, 3), 4);
        assert_eq!(slot_target(4, 4), 4);
        assert_eq!(slot_target(4, 5), 8);
        assert_eq!(slot_target(8, 9), 16);
        assert_eq!(slot_target(8, 40), 64);
        let e = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
        let filled = slot_body("hnc_slot_0001", Some(&e), 3, None);
        assert_eq!(
            parse_slot(&filled),
            Some(Slot {
                name: "hnc_slot_0001".into(),
                endpoint: Some(e),
                weight: 3,
                check: None
            })
        );
        let empty = slot_body("hnc_slot_0002", None, 1, None);
        assert_eq!(parse_slot(&empty).and_then(|s| s.endpoint), None);
        assert_eq!(
            parse_slot(&json!({"name": "static1", "address": "10.0.0.9"})),
            None
        );
        // A filled and an empty slot differ only in runtime-capable fields.
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
        assert_eq!(keys(&filled), keys(&empty));
        let own = http_settings(None, None);
        assert_eq!(
            keys(&slot_body("x", Some(&e), 1, Some(&own))),
            keys(&slot_body("x", None, 1, Some(&own)))
        );
    }
}
