//! Pure translation between the core's model and Data Plane API objects ([`wire`]): backend
//! bodies, the `http_checks` list, server slots, and reading settings back. No I/O.
//!
//! Servers live in **slots**: `hnc_slot_<n>` servers written into the configuration with their
//! checks, so filling or emptying one is a `PUT` of address, port, weight and maintenance only,
//! which DPAPI applies through the runtime API with no reload (CONTRACTS §2.5). An empty slot
//! points at [`PLACEHOLDER_ADDRESS`]:[`PLACEHOLDER_PORT`] in maintenance.

pub mod wire;

use self::wire::{
    AdvCheck, Backend, Balance as WireBalance, Cookie, CookieType, DefaultServer, ExpectMatch,
    HttpCheck, HttpCheckType, ProxyMode, ReturnHeader, Server, Toggle, Verify,
};
use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, Mode, OWNER_MARKER, ServerTls, Sni,
    StickyCookie, Timeouts, dynamic_cookie_key,
};

pub const PLACEHOLDER_ADDRESS: &str = "127.0.0.1";
pub const PLACEHOLDER_PORT: u16 = 1;
// The slot naming and growth rules are the core's (the slot planner).
pub use crate::plan::slots::{MIN_SLOTS, slot_name, slot_number, slot_target};

/// A backend body for an owned backend. Check parameters sit in `default_server`, so the slots
/// inherit them and a settings change rewrites one object.
pub fn backend_body(name: &str, s: &BackendSettings) -> Backend {
    let timing = s.check.timing();
    Backend {
        name: name.to_string(),
        description: Some(OWNER_MARKER.to_string()),
        mode: Some(match s.mode {
            Mode::Http => ProxyMode::Http,
            Mode::Tcp => ProxyMode::Tcp,
        }),
        balance: Some(WireBalance {
            algorithm: s.balance.as_str().to_string(),
        }),
        adv_check: matches!(s.check, CheckSpec::Http { .. }).then_some(AdvCheck::Httpchk),
        check_timeout: timing.map(|t| i64::from(t.timeout_ms)),
        server_timeout: s.timeouts.server_ms.map(i64::from),
        connect_timeout: s.timeouts.connect_ms.map(i64::from),
        tunnel_timeout: s.timeouts.tunnel_ms.map(i64::from),
        cookie: s.sticky.as_ref().map(|c| Cookie {
            name: c.name.clone(),
            kind: Some(CookieType::Insert),
            indirect: Some(true),
            nocache: Some(true),
            dynamic: Some(true),
        }),
        dynamic_cookie_key: s.sticky.as_ref().map(|_| dynamic_cookie_key(name)),
        default_server: Some(DefaultServer {
            check: Some(Toggle::from_bool(s.check.is_enabled())),
            inter: timing.map(|t| i64::from(t.interval_ms)),
            rise: timing.map(|t| i64::from(t.rise)),
            fall: timing.map(|t| i64::from(t.fall)),
            maxconn: s.maxconn.map(i64::from),
            ssl: s.tls.as_ref().map(|_| Toggle::Enabled),
            verify: s.tls.as_ref().map(|t| {
                if t.ca_file.is_some() {
                    Verify::Required
                } else {
                    Verify::None
                }
            }),
            ssl_cafile: s.tls.as_ref().and_then(|t| t.ca_file.clone()),
            sni: s
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_ref().map(Sni::expression)),
            check_ssl: s
                .tls
                .as_ref()
                .filter(|_| s.check.is_enabled())
                .map(|_| Toggle::Enabled),
            check_sni: match s.tls.as_ref().and_then(|t| t.sni.as_ref()) {
                Some(Sni::Host(h)) if s.check.is_enabled() => Some(h.clone()),
                _ => None,
            },
        }),
        servers: None,
        http_check_list: None,
    }
}

/// The `http_checks` list of an owned backend: the request (with a Host header through a `send`
/// rule, never `httpchk_params.host`) and the accepted statuses.
pub fn http_checks(check: &CheckSpec) -> Vec<HttpCheck> {
    let CheckSpec::Http {
        method,
        path,
        host,
        expect,
        ..
    } = check
    else {
        return Vec::new();
    };
    let mut send = HttpCheck::new(HttpCheckType::Send);
    send.method = Some(method.clone());
    send.uri = Some(path.clone());
    match host {
        Some(h) => {
            send.version = Some("HTTP/1.1".to_string());
            send.headers = Some(vec![ReturnHeader {
                name: "Host".to_string(),
                fmt: h.clone(),
            }]);
        }
        None => send.version = Some("HTTP/1.0".to_string()),
    }
    let mut list = vec![send];
    if let Some((lo, hi)) = expect {
        let pattern = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        let mut rule = HttpCheck::new(HttpCheckType::Expect);
        rule.match_ = Some(ExpectMatch::Status);
        rule.pattern = Some(pattern);
        list.push(rule);
    }
    list
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
) -> Server {
    let (address, port, maintenance) = match endpoint {
        Some(e) => (e.addr.to_string(), e.port, Toggle::Disabled),
        None => (
            PLACEHOLDER_ADDRESS.to_string(),
            PLACEHOLDER_PORT,
            Toggle::Enabled,
        ),
    };
    let timing = own_check.and_then(|s| s.check.timing());
    Server {
        name: name.to_string(),
        address,
        port: Some(i64::from(port)),
        weight: Some(i64::from(weight)),
        maintenance: Some(maintenance),
        check: own_check.map(|s| Toggle::from_bool(s.check.is_enabled())),
        inter: timing.map(|t| i64::from(t.interval_ms)),
        rise: timing.map(|t| i64::from(t.rise)),
        fall: timing.map(|t| i64::from(t.fall)),
        maxconn: own_check.and_then(|s| s.maxconn).map(i64::from),
    }
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

/// A server's weight as the core holds it (1 when absent or out of range).
pub fn server_weight(server: &Server) -> u16 {
    server
        .weight
        .and_then(|w| u16::try_from(w).ok())
        .unwrap_or(1)
}

/// A server's port, when it is one.
pub fn server_port(server: &Server) -> Option<u16> {
    server.port.and_then(|p| u16::try_from(p).ok())
}

/// Reads a configuration server object as a slot, if it is one of ours.
pub fn parse_slot(server: &Server) -> Option<Slot> {
    slot_number(&server.name)?;
    let address = server.address.as_str();
    let port = server_port(server);
    let maint = server.maintenance == Some(Toggle::Enabled);
    let endpoint = match (address.parse(), port) {
        (Ok(addr), Some(port))
            if !(maint && address == PLACEHOLDER_ADDRESS && port == PLACEHOLDER_PORT) =>
        {
            Some(Endpoint::new(addr, port))
        }
        _ => None,
    };
    Some(Slot {
        name: server.name.clone(),
        endpoint,
        weight: server_weight(server),
        check: server.check.map(Toggle::is_enabled),
    })
}

/// An owned backend's settings read back from its configuration (`full_section=true` object).
/// `None` when they are not in the shape the connector writes (they will be rewritten).
pub fn parse_settings(b: &Backend) -> Option<BackendSettings> {
    let mode = match b.mode? {
        ProxyMode::Http => Mode::Http,
        ProxyMode::Tcp => Mode::Tcp,
        ProxyMode::Log => return None,
    };
    let balance = Balance::parse(&b.balance.as_ref()?.algorithm)?;
    let ds = b.default_server.as_ref()?;
    let u32_of = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
    let maxconn = u32_of(ds.maxconn);
    let check = if ds.check != Some(Toggle::Enabled) {
        CheckSpec::None
    } else {
        let timing = CheckTiming {
            interval_ms: u32_of(ds.inter)?,
            timeout_ms: u32_of(b.check_timeout)?,
            rise: u32_of(ds.rise)?,
            fall: u32_of(ds.fall)?,
        };
        if b.adv_check == Some(AdvCheck::Httpchk) {
            let list = b.http_check_list.as_ref()?;
            let send = list.iter().find(|r| r.kind == HttpCheckType::Send)?;
            let host = send
                .headers
                .iter()
                .flatten()
                .find(|x| x.name == "Host")
                .map(|x| x.fmt.clone());
            let expect = match list.iter().find(|r| r.kind == HttpCheckType::Expect) {
                None => None,
                Some(e) => {
                    let p = e.pattern.as_deref()?;
                    let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                    Some((lo.parse().ok()?, hi.parse().ok()?))
                }
            };
            CheckSpec::Http {
                method: send.method.clone()?,
                path: send.uri.clone()?,
                host,
                expect,
                timing,
            }
        } else {
            CheckSpec::Tcp { timing }
        }
    };
    let tls = match ds.ssl {
        Some(Toggle::Enabled) => Some(ServerTls {
            sni: match ds.sni.as_deref() {
                None => None,
                Some(e) => Some(Sni::parse_expression(e)?),
            },
            ca_file: match ds.verify {
                Some(Verify::Required) => Some(ds.ssl_cafile.clone()?),
                Some(Verify::None) => None,
                None => return None,
            },
        }),
        _ => None,
    };
    Some(BackendSettings {
        mode,
        balance,
        check,
        maxconn,
        tls,
        timeouts: Timeouts {
            server_ms: u32_of(b.server_timeout),
            connect_ms: u32_of(b.connect_timeout),
            tunnel_ms: u32_of(b.tunnel_timeout),
        },
        sticky: match &b.cookie {
            None => None,
            // Only the shape the connector writes reads as sticky; another is rewritten.
            Some(c)
                if c.kind == Some(CookieType::Insert)
                    && c.indirect == Some(true)
                    && c.nocache == Some(true)
                    && c.dynamic == Some(true)
                    && b.dynamic_cookie_key.as_deref()
                        == Some(dynamic_cookie_key(&b.name).as_str()) =>
            {
                Some(StickyCookie {
                    name: c.name.clone(),
                })
            }
            Some(_) => return None,
        },
    })
}

#[cfg(test)]
mod tests;

/// The Data Plane API object of one of the connector's `http-request` rules.
pub fn request_rule_body(rule: &crate::path_rules::RequestRule) -> wire::HttpRequestRule {
    use crate::path_rules::RequestAction;
    let mut body = wire::HttpRequestRule {
        kind: String::new(),
        var_scope: None,
        var_name: None,
        var_expr: None,
        path_fmt: None,
        redir_type: None,
        redir_value: None,
        redir_code: None,
        cond: rule.cond.as_ref().map(|_| wire::Cond::If),
        cond_test: rule.cond.clone(),
    };
    match &rule.action {
        RequestAction::SetVar { scope, name, expr } => {
            body.kind = "set-var".into();
            body.var_scope = Some(scope.clone());
            body.var_name = Some(name.clone());
            body.var_expr = Some(expr.clone());
        }
        RequestAction::SetPath { fmt } => {
            body.kind = "set-path".into();
            body.path_fmt = Some(fmt.clone());
        }
        RequestAction::RedirectScheme { scheme, code } => {
            body.kind = "redirect".into();
            body.redir_type = Some("scheme".into());
            body.redir_value = Some(scheme.clone());
            body.redir_code = Some(i64::from(*code));
        }
    }
    body
}
