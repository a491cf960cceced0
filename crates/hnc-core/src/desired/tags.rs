//! The tag grammar: `<prefix>.<key>=<value>` tags of one registration, parsed into typed values.
//!
//! Keys (prefix `haproxy` by default):
//! `enable`, `backend`, `backend.name`, `domain` (repeatable), `domain.type`, `check.path`,
//! `check.method`, `check.host`, `check.type`, `check.disabled`, `check.interval`,
//! `check.timeout`, `check.rise`, `check.fall`, `check.expect`, `balance`, `mode`, `maxconn`,
//! `weight`, `timeout.server`, `timeout.connect`, `timeout.tunnel`, `sticky`, `sticky.cookie`,
//! `server.ssl`, `server.sni`, `server.verify`, `path` (repeatable), `path.type`, `path.strip`,
//! `redirect.https`.

use std::collections::BTreeMap;

use super::grammar;
use crate::model::{Balance, DEFAULT_STICKY_COOKIE, MatchKind, Mode, Sni, StickyCookie, Timeouts};

/// Every key the grammar knows (for typo reports and documentation).
pub const KEYS: [&str; 31] = [
    "enable",
    "backend",
    "backend.name",
    "domain",
    "domain.type",
    "check.path",
    "check.method",
    "check.host",
    "check.type",
    "check.disabled",
    "check.interval",
    "check.timeout",
    "check.rise",
    "check.fall",
    "check.expect",
    "balance",
    "mode",
    "maxconn",
    "weight",
    "timeout.server",
    "timeout.connect",
    "timeout.tunnel",
    "sticky",
    "sticky.cookie",
    "server.ssl",
    "server.sni",
    "server.verify",
    "path",
    "path.type",
    "path.strip",
    "redirect.https",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The connector creates and owns the backend.
    Dynamic,
    /// The backend exists already; the connector manages only its own servers in it.
    Custom,
    /// The service is ignored.
    Static,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckType {
    Http,
    Tcp,
    None,
}

/// The check-related tags as written (unset = not written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckTags {
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub kind: Option<CheckType>,
    pub disabled: Option<bool>,
    pub interval_ms: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub expect: Option<(u16, u16)>,
}

impl CheckTags {
    /// Whether the tags ask for an HTTP check.
    pub fn wants_http(&self) -> bool {
        self.kind == Some(CheckType::Http)
            || (self.kind.is_none()
                && (self.path.is_some()
                    || self.method.is_some()
                    || self.host.is_some()
                    || self.expect.is_some()))
    }
}

/// The parsed tags of one registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceTags {
    pub enabled: bool,
    pub backend: BackendKind,
    pub backend_name: Option<String>,
    /// Map keys, normalised (lower-case; `*.x` as suffix `.x`), sorted and de-duplicated.
    pub domains: Vec<(MatchKind, String)>,
    pub check: CheckTags,
    pub balance: Option<Balance>,
    pub mode: Option<Mode>,
    pub maxconn: Option<u32>,
    pub weight: Option<u16>,
    /// The backend's timeouts (each within HAProxy's timer range).
    pub timeouts: Timeouts,
    /// Cookie-based sticky sessions (`sticky=cookie`, named by `sticky.cookie`).
    pub sticky: Option<StickyCookie>,
    /// TLS to the servers (`server.ssl=true`, with `server.sni` and `server.verify`).
    pub tls: Option<TlsTags>,
    /// Path routes, sorted and de-duplicated (`path`), on the exact domains or on any host.
    pub paths: Vec<String>,
    /// `path.type=exact`: the paths match whole, not as prefixes.
    pub path_exact: bool,
    /// `path.strip=true`: the matched path prefix is removed before the request is forwarded.
    pub path_strip: bool,
    /// `redirect.https=true`: plain-HTTP requests for the service's exact hosts get a 301 to https.
    pub redirect_https: bool,
    /// Keys under the prefix that the grammar does not know (typos), as written.
    pub unknown: Vec<String>,
}

/// The TLS-to-servers tags as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsTags {
    pub sni: Option<Sni>,
    /// `server.verify=required` (the default) or `none`.
    pub verify: bool,
}

/// Why a tag was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagError {
    /// The whole tag as written.
    pub tag: String,
    pub value: String,
    pub reason: String,
}

/// Parses the prefixed tags of one registration. The first invalid tag rejects the registration.
pub fn parse(tags: &[String], prefix: &str) -> Result<InstanceTags, TagError> {
    let lead = format!("{prefix}.");
    // key → values, in tag order; keys are matched case-sensitively (values are checked below).
    let mut values: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for tag in tags {
        let Some(rest) = tag.strip_prefix(&lead) else {
            continue;
        };
        let Some((key, value)) = rest.split_once('=') else {
            return Err(TagError {
                tag: tag.clone(),
                value: String::new(),
                reason: format!("expected `{prefix}.<key>=<value>`"),
            });
        };
        match KEYS.iter().find(|k| **k == key) {
            Some(known) => values.entry(known).or_default().push((tag.as_str(), value)),
            None => unknown.push(tag.clone()),
        }
    }

    // Tag order carries no meaning: process each key's values in a fixed order, so the same tag
    // set always gives the same result and the same error.
    for list in values.values_mut() {
        list.sort();
    }
    let mut p = Parser { values: &values };
    let enabled = p.single("enable", grammar::boolean)?.unwrap_or(false);
    let backend = p
        .single("backend", |v| match v {
            "dynamic" => Ok(BackendKind::Dynamic),
            "custom" => Ok(BackendKind::Custom),
            "static" => Ok(BackendKind::Static),
            _ => Err("expected dynamic, custom or static".to_string()),
        })?
        .unwrap_or(BackendKind::Dynamic);
    let backend_name = p.single("backend.name", grammar::section_name)?;
    let domain_kind = p
        .single("domain.type", grammar::match_kind)?
        .unwrap_or(MatchKind::Exact);
    let mut domains = Vec::new();
    for (tag, value) in values.get("domain").map(Vec::as_slice).unwrap_or_default() {
        domains.push(
            grammar::domain(value, domain_kind).map_err(|reason| TagError {
                tag: (*tag).to_string(),
                value: (*value).to_string(),
                reason,
            })?,
        );
    }
    domains.sort();
    domains.dedup();
    let check = CheckTags {
        path: p.single("check.path", grammar::path)?,
        method: p.single("check.method", grammar::method)?,
        host: p.single("check.host", grammar::host_header)?,
        kind: p.single("check.type", |v| match v {
            "http" => Ok(CheckType::Http),
            "tcp" => Ok(CheckType::Tcp),
            "none" => Ok(CheckType::None),
            _ => Err("expected http, tcp or none".to_string()),
        })?,
        disabled: p.single("check.disabled", grammar::boolean)?,
        interval_ms: p.single("check.interval", grammar::duration_ms)?,
        timeout_ms: p.single("check.timeout", grammar::duration_ms)?,
        rise: p.single("check.rise", |v| grammar::number(v, 1, 1000))?,
        fall: p.single("check.fall", |v| grammar::number(v, 1, 1000))?,
        expect: p.single("check.expect", grammar::status_range)?,
    };
    if check.kind == Some(CheckType::Tcp) && check.wants_http_fields() {
        let (tag, value) = check_http_field_tag(&values);
        return Err(TagError {
            tag,
            value,
            reason: "HTTP check settings conflict with check.type=tcp".into(),
        });
    }
    let parsed = InstanceTags {
        enabled,
        backend,
        backend_name,
        domains,
        check,
        balance: p.single("balance", grammar::balance)?,
        mode: p.single("mode", grammar::mode)?,
        maxconn: p.single("maxconn", |v| grammar::number(v, 1, 1_000_000))?,
        weight: p
            .single("weight", |v| grammar::number(v, 0, 256))?
            .map(|w| u16::try_from(w).unwrap_or(256)),
        timeouts: Timeouts {
            server_ms: p.single("timeout.server", grammar::duration_ms)?,
            connect_ms: p.single("timeout.connect", grammar::duration_ms)?,
            tunnel_ms: p.single("timeout.tunnel", grammar::duration_ms)?,
        },
        sticky: sticky(&mut p, &values)?,
        tls: tls(&mut p, &values)?,
        paths: Vec::new(),
        path_exact: false,
        path_strip: false,
        redirect_https: false,
        unknown,
    };
    if parsed.mode == Some(Mode::Tcp) && parsed.sticky.is_some() {
        let (tag, value) = first_of(&values, "mode");
        return Err(TagError {
            tag,
            value,
            reason: "sticky cookies need mode http".into(),
        });
    }
    let mut parsed = path_tags(parsed, &values, &mut p)?;
    parsed.redirect_https = p
        .single("redirect.https", grammar::boolean)?
        .unwrap_or(false);
    if parsed.redirect_https && !parsed.domains.iter().any(|(k, _)| *k == MatchKind::Exact) {
        let (tag, value) = first_of(&values, "redirect.https");
        return Err(TagError {
            tag,
            value,
            reason: "redirect.https needs an exact domain (the hosts it redirects)".into(),
        });
    }
    if parsed.mode == Some(Mode::Tcp) && !(parsed.domains.is_empty() && parsed.paths.is_empty()) {
        let (tag, value) = values
            .get("mode")
            .and_then(|v| v.first())
            .map(|(t, v)| ((*t).to_string(), (*v).to_string()))
            .unwrap_or_default();
        return Err(TagError {
            tag,
            value,
            reason: if parsed.domains.is_empty() {
                "path routing (path tags) needs mode http".into()
            } else {
                "host routing (domain tags) needs mode http".into()
            },
        });
    }
    Ok(parsed)
}

/// The first value written for `key`, as (tag, value).
fn first_of(values: &BTreeMap<&str, Vec<(&str, &str)>>, key: &str) -> (String, String) {
    values
        .get(key)
        .and_then(|v| v.first())
        .map(|(t, v)| ((*t).to_string(), (*v).to_string()))
        .unwrap_or_default()
}

/// `path` (repeatable), `path.type` and `path.strip`, checked against the domains they combine with.
fn path_tags(
    mut parsed: InstanceTags,
    values: &BTreeMap<&str, Vec<(&str, &str)>>,
    p: &mut Parser<'_>,
) -> Result<InstanceTags, TagError> {
    for (tag, value) in values.get("path").map(Vec::as_slice).unwrap_or_default() {
        parsed
            .paths
            .push(grammar::route_path(value).map_err(|reason| TagError {
                tag: (*tag).to_string(),
                value: (*value).to_string(),
                reason,
            })?);
    }
    parsed.paths.sort();
    parsed.paths.dedup();
    parsed.path_exact = p
        .single("path.type", |v| match v {
            "prefix" => Ok(false),
            "exact" => Ok(true),
            _ => Err("expected prefix or exact".to_string()),
        })?
        .unwrap_or(false);
    parsed.path_strip = p.single("path.strip", grammar::boolean)?.unwrap_or(false);
    if parsed.paths.is_empty() {
        for key in ["path.type", "path.strip"] {
            if values.contains_key(key) {
                let (tag, value) = first_of(values, key);
                return Err(TagError {
                    tag,
                    value,
                    reason: format!("`{key}` applies only with `path`"),
                });
            }
        }
    } else if parsed.domains.iter().any(|(k, _)| *k != MatchKind::Exact) {
        let (tag, value) = match first_of(values, "domain.type") {
            (t, v) if !t.is_empty() => (t, v),
            _ => first_of(values, "domain"),
        };
        return Err(TagError {
            tag,
            value,
            reason: "path routes combine only with exact domains".into(),
        });
    }
    Ok(parsed)
}

impl InstanceTags {
    /// The route keys this registration claims: its domains; with paths, each path on each exact
    /// domain (the domain alone is then not claimed), or on any host without domains.
    pub fn routes(&self) -> Vec<(MatchKind, String)> {
        if self.paths.is_empty() {
            return self.domains.clone();
        }
        let hosts: Vec<Option<&str>> = if self.domains.is_empty() {
            vec![None]
        } else {
            self.domains.iter().map(|(_, d)| Some(d.as_str())).collect()
        };
        hosts
            .iter()
            .flat_map(|h| {
                self.paths.iter().map(move |p| {
                    (
                        MatchKind::Path,
                        crate::path_rules::path_key(*h, p, self.path_exact),
                    )
                })
            })
            .collect()
    }

    /// The bytes a route's path prefix takes, to strip, for the keys of [`InstanceTags::routes`]
    /// that strip.
    pub fn strips(&self) -> Vec<(String, usize)> {
        if !self.path_strip {
            return Vec::new();
        }
        let hosts: Vec<Option<&str>> = if self.domains.is_empty() {
            vec![None]
        } else {
            self.domains.iter().map(|(_, d)| Some(d.as_str())).collect()
        };
        hosts
            .iter()
            .flat_map(|h| {
                self.paths
                    .iter()
                    .map(move |p| (crate::path_rules::path_key(*h, p, self.path_exact), p.len()))
            })
            .collect()
    }
}

impl CheckTags {
    fn wants_http_fields(&self) -> bool {
        self.path.is_some() || self.method.is_some() || self.host.is_some() || self.expect.is_some()
    }
}

/// `sticky` and `sticky.cookie`: a cookie name only with `sticky=cookie`.
fn sticky(
    p: &mut Parser<'_>,
    values: &BTreeMap<&str, Vec<(&str, &str)>>,
) -> Result<Option<StickyCookie>, TagError> {
    let on = p
        .single("sticky", |v| match v {
            "cookie" => Ok(()),
            _ => Err("expected cookie".to_string()),
        })?
        .is_some();
    let name = p.single("sticky.cookie", grammar::cookie_name)?;
    match (on, name) {
        (true, name) => Ok(Some(StickyCookie {
            name: name.unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string()),
        })),
        (false, None) => Ok(None),
        (false, Some(_)) => {
            let (tag, value) = first_of(values, "sticky.cookie");
            Err(TagError {
                tag,
                value,
                reason: "sticky.cookie needs sticky=cookie".into(),
            })
        }
    }
}

/// `server.ssl`, `server.sni` and `server.verify`: the last two only with `server.ssl=true`.
fn tls(
    p: &mut Parser<'_>,
    values: &BTreeMap<&str, Vec<(&str, &str)>>,
) -> Result<Option<TlsTags>, TagError> {
    let on = p.single("server.ssl", grammar::boolean)?.unwrap_or(false);
    let sni = p.single("server.sni", |v| match v {
        "auto" => Ok(Sni::Auto),
        h => grammar::host(h).map(Sni::Host),
    })?;
    let verify = p.single("server.verify", |v| match v {
        "required" => Ok(true),
        "none" => Ok(false),
        _ => Err("expected required or none".to_string()),
    })?;
    if on {
        return Ok(Some(TlsTags {
            sni,
            verify: verify.unwrap_or(true),
        }));
    }
    if let Some(key) = ["server.sni", "server.verify"]
        .into_iter()
        .find(|k| values.contains_key(k))
    {
        let (tag, value) = first_of(values, key);
        return Err(TagError {
            tag,
            value,
            reason: format!("{key} needs server.ssl=true"),
        });
    }
    Ok(None)
}

fn check_http_field_tag(values: &BTreeMap<&str, Vec<(&str, &str)>>) -> (String, String) {
    ["check.path", "check.method", "check.host", "check.expect"]
        .iter()
        .find_map(|k| values.get(k).and_then(|v| v.first()))
        .map(|(t, v)| ((*t).to_string(), (*v).to_string()))
        .unwrap_or_default()
}

struct Parser<'a> {
    values: &'a BTreeMap<&'a str, Vec<(&'a str, &'a str)>>,
}

impl Parser<'_> {
    /// A single-valued key: parsed with `f`; repeated with different values is an error.
    fn single<T: PartialEq>(
        &mut self,
        key: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, TagError> {
        let Some(list) = self.values.get(key) else {
            return Ok(None);
        };
        let mut result: Option<T> = None;
        for (tag, value) in list {
            let parsed = f(value).map_err(|reason| TagError {
                tag: (*tag).to_string(),
                value: (*value).to_string(),
                reason,
            })?;
            match &result {
                Some(prev) if *prev != parsed => {
                    return Err(TagError {
                        tag: (*tag).to_string(),
                        value: (*value).to_string(),
                        reason: format!("`{key}` is set more than once with different values"),
                    });
                }
                _ => result = Some(parsed),
            }
        }
        Ok(result)
    }
}
