//! The double's two models: the configuration file (what DPAPI reads and writes, versioned) and
//! the running HAProxy (servers with admin/op state and checks, loaded maps), plus the checks
//! `haproxy -c` would make on a candidate file.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::schema::{
    Acl, AdminState, Algorithm, Backend, BackendSwitchingRule, DefaultServer, HashMethod,
    HttpCheck, HttpRequestRule, Mode, OperationalState, Server, Toggle, to_json,
};

/// Where map files live (DPAPI's `--maps-dir` default).
pub const MAPS_DIR: &str = "/etc/haproxy/maps";

/// One backend section: its own fields plus its children.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendModel {
    /// The section's fields; `servers`/`http_check_list` are always `None` here.
    pub base: Backend,
    pub servers: Vec<Server>,
    pub http_checks: Vec<HttpCheck>,
}

impl BackendModel {
    pub fn new(mut base: Backend) -> BackendModel {
        let servers = base
            .servers
            .take()
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        let http_checks = base.http_check_list.take().unwrap_or_default();
        BackendModel {
            base,
            servers,
            http_checks,
        }
    }

    pub fn name(&self) -> &str {
        &self.base.name
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The JSON answer; with `full_section`, `servers` is a map keyed by name and the child lists
    /// are arrays (both omitted when empty, like go's omitempty).
    pub fn to_json(&self, full_section: bool) -> Value {
        let mut v = to_json(&self.base);
        if full_section {
            let obj = v.as_object_mut().expect("object");
            if !self.servers.is_empty() {
                let servers: serde_json::Map<String, Value> = self
                    .servers
                    .iter()
                    .map(|s| (s.name.clone(), to_json(s)))
                    .collect();
                obj.insert("servers".into(), Value::Object(servers));
            }
            if !self.http_checks.is_empty() {
                obj.insert("http_check_list".into(), to_json(&self.http_checks));
            }
        }
        v
    }
}

/// One frontend section, as far as the connector reads and edits it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontendModel {
    pub name: String,
    pub mode: Option<Mode>,
    pub default_backend: Option<String>,
    pub acls: Vec<Acl>,
    pub rules: Vec<BackendSwitchingRule>,
    pub requests: Vec<HttpRequestRule>,
}

impl FrontendModel {
    pub fn to_json(&self, full_section: bool) -> Value {
        let mut v = json!({ "name": self.name });
        let obj = v.as_object_mut().expect("object");
        if let Some(m) = self.mode {
            obj.insert("mode".into(), json!(m.as_str()));
        }
        if let Some(d) = &self.default_backend {
            obj.insert("default_backend".into(), json!(d));
        }
        if full_section {
            if !self.acls.is_empty() {
                obj.insert("acl_list".into(), to_json(&self.acls));
            }
            if !self.rules.is_empty() {
                obj.insert("backend_switching_rule_list".into(), to_json(&self.rules));
            }
            if !self.requests.is_empty() {
                obj.insert("http_request_rule_list".into(), to_json(&self.requests));
            }
        }
        v
    }
}

/// The configuration file: its `# _version` and the sections the double models.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigModel {
    pub version: i64,
    pub defaults_default_server: Option<DefaultServer>,
    pub backends: Vec<BackendModel>,
    pub frontends: Vec<FrontendModel>,
}

impl ConfigModel {
    pub fn backend(&self, name: &str) -> Option<&BackendModel> {
        self.backends.iter().find(|b| b.name() == name)
    }

    pub fn backend_mut(&mut self, name: &str) -> Option<&mut BackendModel> {
        self.backends.iter_mut().find(|b| b.name() == name)
    }

    pub fn frontend(&self, name: &str) -> Option<&FrontendModel> {
        self.frontends.iter().find(|f| f.name == name)
    }

    pub fn frontend_mut(&mut self, name: &str) -> Option<&mut FrontendModel> {
        self.frontends.iter_mut().find(|f| f.name == name)
    }

    /// Whether `add server` is impossible in this backend because of a `default_server` line in
    /// the defaults section or in the backend (DPAPI then always reloads).
    pub fn has_default_server(&self, backend: &str) -> bool {
        self.defaults_default_server.is_some()
            || self
                .backend(backend)
                .is_some_and(|b| b.base.default_server.is_some())
    }

    /// Whether a check runs for this server after a reload (its own `check`, else the
    /// backend's `default-server`, else the defaults section's).
    pub fn check_enabled(&self, backend: &BackendModel, server: &Server) -> bool {
        let own = server.check;
        let from_backend = backend.base.default_server.as_ref().and_then(|d| d.check);
        let from_defaults = self.defaults_default_server.as_ref().and_then(|d| d.check);
        own.or(from_backend).or(from_defaults) == Some(Toggle::Enabled)
    }

    /// Snapshot for tests: everything the double keeps in the file.
    pub fn to_json(&self) -> Value {
        json!({
            "version": self.version,
            "defaults": {
                "default_server": self.defaults_default_server.as_ref().map(to_json),
            },
            "backends": self.backends.iter().map(|b| b.to_json(true)).collect::<Vec<_>>(),
            "frontends": self.frontends.iter().map(|f| f.to_json(true)).collect::<Vec<_>>(),
        })
    }

    /// The fatal errors `haproxy -c` would report for this file, for the checks the double
    /// knows. `Err` carries HAProxy-like output.
    pub fn haproxy_check(&self, storage: &BTreeMap<String, String>) -> Result<(), String> {
        let mut alerts = Vec::new();
        // Pattern files the frontends reference must exist (`map()` loads them at start).
        for f in &self.frontends {
            let text: String = f
                .rules
                .iter()
                .map(|r| format!("{} {}\n", r.name, r.cond_test.as_deref().unwrap_or("")))
                .chain(
                    f.acls
                        .iter()
                        .map(|a| format!("{} {}\n", a.criterion, a.value.as_deref().unwrap_or(""))),
                )
                .chain(f.requests.iter().map(request_rule_text))
                .collect();
            let prefix = format!("{MAPS_DIR}/");
            for (i, _) in text.match_indices(&prefix) {
                let name: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| !matches!(c, ')' | ',' | ']' | '}') && !c.is_whitespace())
                    .collect();
                let Some(content) = storage.get(&name) else {
                    alerts.push(format!(
                        "parsing [frontend {}] : failed to open pattern file <{prefix}{name}>.",
                        f.name
                    ));
                    continue;
                };
                // A map read with `map_reg` compiles every key with PCRE2 as it loads (no UTF
                // mode): one pattern it rejects fails the whole configuration.
                let regex_map = text[..i].ends_with("map_reg(");
                if regex_map {
                    for (key, _) in parse_map_file(content) {
                        if let Err(e) = pcre2::bytes::RegexBuilder::new().utf(false).build(&key) {
                            alerts.push(format!(
                                "parsing [frontend {}] : failed to parse pattern file <{prefix}{name}>: regex '{key}' is invalid ({e}).",
                                f.name
                            ));
                        }
                    }
                }
            }
        }
        for b in &self.backends {
            if let Some(h) = &b.base.httpchk_params
                && let Some(host) = h.host.as_deref().filter(|h| !h.is_empty())
            {
                alerts.push(format!(
                        "parsing [backend {}] : 'option httpchk' cannot handle unexpected argument '{host}'.",
                        b.name()
                    ));
            }
            // HAProxy's timers are at most 2^31-1 ms (CONTRACTS §5: `inter 600h` is refused with
            // "timer overflow", and the whole configuration with it).
            for (what, v) in [
                ("timeout check", b.base.check_timeout),
                ("timeout connect", b.base.connect_timeout),
                ("timeout server", b.base.server_timeout),
                ("timeout queue", b.base.queue_timeout),
                ("timeout tunnel", b.base.tunnel_timeout),
            ] {
                if let Some(v) = v.filter(|v| *v > MAX_TIMER_MS) {
                    alerts.push(format!(
                        "parsing [backend {}] : timer overflow in argument <{v}> to '{what}', maximum value is 2147483647 ms (~24.8 days).",
                        b.name()
                    ));
                }
            }
            for s in &b.servers {
                for (what, v) in [
                    ("inter", s.inter),
                    ("fastinter", s.fastinter),
                    ("downinter", s.downinter),
                ] {
                    if let Some(v) = v.filter(|v| *v > MAX_TIMER_MS) {
                        alerts.push(format!(
                            "parsing [backend {}] : 'server {}' : timer overflow in argument <{v}> to <{what}> of server {}, maximum value is 2147483647 ms (~24.8 days).",
                            b.name(),
                            s.name,
                            s.name
                        ));
                    }
                }
                if let Some(w) = s.weight.filter(|w| !(0..=256).contains(w)) {
                    alerts.push(format!(
                        "parsing [backend {}] : 'server {}' : weight of server is not within 0 and 256 (got {w}).",
                        b.name(),
                        s.name
                    ));
                }
            }
        }
        for f in &self.frontends {
            if let Some(d) = &f.default_backend
                && self.backend(d).is_none()
            {
                alerts.push(format!(
                    "Proxy '{}': unable to find required default_backend: '{d}'.",
                    f.name
                ));
            }
            let acl_names: Vec<&str> = f.acls.iter().map(|a| a.acl_name.as_str()).collect();
            for r in &f.rules {
                if !r.name.contains('%') && self.backend(&r.name).is_none() {
                    alerts.push(format!(
                        "Proxy '{}': unable to find required use_backend: '{}'.",
                        f.name, r.name
                    ));
                }
                let test = r.cond_test.as_deref().unwrap_or("");
                if r.cond.is_some() && test.trim().is_empty() {
                    alerts.push(format!(
                        "parsing [frontend {}] : error detected while parsing switching rule : missing condition.",
                        f.name
                    ));
                }
                for acl in acl_references(test) {
                    if !acl_names.contains(&acl) && !PREDEFINED_ACLS.contains(&acl) {
                        alerts.push(format!(
                            "parsing [frontend {}] : error detected while parsing switching rule : no such ACL : '{acl}'.",
                            f.name
                        ));
                    }
                }
            }
        }
        if alerts.is_empty() {
            Ok(())
        } else {
            let mut out: Vec<String> = alerts
                .into_iter()
                .map(|a| format!("[ALERT]    (1) : config : {a}"))
                .collect();
            out.push("[ALERT]    (1) : config : Fatal errors found in configuration.".to_string());
            Err(out.join("\n"))
        }
    }

    /// Every map file (storage name) the configuration references, i.e. that HAProxy loads.
    pub fn referenced_maps(&self, storage: &BTreeMap<String, String>) -> Vec<String> {
        let mut text = String::new();
        for f in &self.frontends {
            for a in &f.acls {
                text.push_str(&a.criterion);
                text.push(' ');
                text.push_str(a.value.as_deref().unwrap_or(""));
                text.push('\n');
            }
            for r in &f.rules {
                text.push_str(&r.name);
                text.push(' ');
                text.push_str(r.cond_test.as_deref().unwrap_or(""));
                text.push('\n');
            }
            for r in &f.requests {
                text.push_str(&request_rule_text(r));
            }
        }
        storage
            .keys()
            .filter(|name| text.contains(&format!("{MAPS_DIR}/{name}")))
            .cloned()
            .collect()
    }
}

/// The longest timer HAProxy accepts, in milliseconds.
const MAX_TIMER_MS: i64 = 2_147_483_647;

/// ACLs HAProxy defines itself.
const PREDEFINED_ACLS: &[&str] = &[
    "FALSE",
    "HTTP",
    "HTTP_1.0",
    "HTTP_1.1",
    "HTTP_2.0",
    "HTTP_3.0",
    "HTTP_CONTENT",
    "HTTP_URL_ABS",
    "HTTP_URL_SLASH",
    "HTTP_URL_STAR",
    "LOCALHOST",
    "METH_CONNECT",
    "METH_DELETE",
    "METH_GET",
    "METH_HEAD",
    "METH_OPTIONS",
    "METH_POST",
    "METH_PUT",
    "METH_TRACE",
    "RDP_COOKIE",
    "REQ_CONTENT",
    "TRUE",
    "WAIT_END",
];

/// The named ACLs a condition uses (anonymous `{ … }` ACLs and operators skipped).
fn acl_references(cond_test: &str) -> Vec<&str> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for tok in cond_test.split_whitespace() {
        match tok {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            "or" | "||" | "!" => {}
            t => {
                let name = t.trim_start_matches('!');
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// A server as the running HAProxy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RtServer {
    pub id: u32,
    pub name: String,
    pub address: String,
    pub port: Option<i64>,
    pub admin: AdminState,
    pub op: OperationalState,
    /// A health check is configured and enabled (after `add server … check` it is configured but
    /// disabled, and DPAPI has no way to run `enable health`).
    pub check_enabled: bool,
    pub weight: i64,
    pub sessions: u32,
    /// Present in the configuration at the last reload (not added through the runtime).
    pub from_config: bool,
}

impl RtServer {
    pub fn to_api_json(&self) -> Value {
        let mut v = json!({
            "id": self.id.to_string(),
            "name": self.name,
            "address": self.address,
            "admin_state": self.admin.as_str(),
            "operational_state": self.op.as_str(),
        });
        if let Some(p) = self.port {
            v["port"] = json!(p);
        }
        v
    }

    pub fn to_snapshot_json(&self) -> Value {
        let mut v = self.to_api_json();
        v["check_enabled"] = json!(self.check_enabled);
        v["weight"] = json!(self.weight);
        v["sessions"] = json!(self.sessions);
        v["from_config"] = json!(self.from_config);
        v
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RtBackend {
    pub servers: Vec<RtServer>,
    pub next_id: u32,
    /// The balance algorithm allows dynamic servers (`add server`).
    pub dynamic: bool,
}

impl RtBackend {
    pub fn server(&self, name: &str) -> Option<&RtServer> {
        self.servers.iter().find(|s| s.name == name)
    }
    pub fn server_mut(&mut self, name: &str) -> Option<&mut RtServer> {
        self.servers.iter_mut().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RtMapEntry {
    pub id: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RtMap {
    pub id: u32,
    pub entries: Vec<RtMapEntry>,
}

/// The running HAProxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    pub backends: BTreeMap<String, RtBackend>,
    /// Loaded maps by storage name (`hosts.map`).
    pub maps: BTreeMap<String, RtMap>,
    pub next_entry_id: u64,
}

impl Runtime {
    /// A fresh HAProxy process started from `cfg`: config servers come up ready (or MAINT when
    /// `maintenance: enabled`) with their checks as configured; maps hold their files' contents.
    pub fn from_config(cfg: &ConfigModel, storage: &BTreeMap<String, String>) -> Runtime {
        let mut rt = Runtime::default();
        for b in &cfg.backends {
            let mut next_id = 1u32;
            let mut servers = Vec::new();
            for s in &b.servers {
                let id = s.id.and_then(|i| u32::try_from(i).ok()).unwrap_or(next_id);
                next_id = next_id.max(id) + 1;
                let maint = s.maintenance == Some(Toggle::Enabled);
                servers.push(RtServer {
                    id,
                    name: s.name.clone(),
                    address: s.address.clone(),
                    port: s.port,
                    admin: if maint {
                        AdminState::Maint
                    } else {
                        AdminState::Ready
                    },
                    op: if maint {
                        OperationalState::Down
                    } else {
                        OperationalState::Up
                    },
                    check_enabled: cfg.check_enabled(b, s),
                    weight: s.weight.unwrap_or(1),
                    sessions: 0,
                    from_config: true,
                });
            }
            let dynamic = match b.base.balance.as_ref().map(|x| x.algorithm) {
                None
                | Some(Algorithm::Roundrobin)
                | Some(Algorithm::Leastconn)
                | Some(Algorithm::First)
                | Some(Algorithm::Random) => true,
                Some(Algorithm::StaticRr) => false,
                Some(_) => {
                    b.base.hash_type.as_ref().and_then(|h| h.method) == Some(HashMethod::Consistent)
                }
            };
            rt.backends.insert(
                b.name().to_string(),
                RtBackend {
                    servers,
                    next_id,
                    dynamic,
                },
            );
        }
        for (i, name) in cfg.referenced_maps(storage).into_iter().enumerate() {
            let entries = parse_map_file(&storage[&name])
                .into_iter()
                .map(|(key, value)| {
                    rt.next_entry_id += 1;
                    RtMapEntry {
                        id: format!("0x{:012x}", 0x5500_0000_0000u64 + rt.next_entry_id),
                        key,
                        value,
                    }
                })
                .collect();
            rt.maps.insert(
                name,
                RtMap {
                    id: u32::try_from(i).unwrap_or(0) + 1,
                    entries,
                },
            );
        }
        rt
    }

    pub fn new_entry_id(&mut self) -> String {
        self.next_entry_id += 1;
        format!("0x{:012x}", 0x5500_0000_0000u64 + self.next_entry_id)
    }

    pub fn to_json(&self) -> Value {
        let backends: serde_json::Map<String, Value> = self
            .backends
            .iter()
            .map(|(n, b)| {
                (
                    n.clone(),
                    Value::Array(b.servers.iter().map(RtServer::to_snapshot_json).collect()),
                )
            })
            .collect();
        let maps: serde_json::Map<String, Value> = self
            .maps
            .iter()
            .map(|(n, m)| {
                (
                    n.clone(),
                    Value::Array(m.entries.iter().map(|e| json!([e.key, e.value])).collect()),
                )
            })
            .collect();
        json!({ "backends": backends, "maps": maps })
    }
}

/// `key value` lines; `#` comments and blank lines skipped.
pub fn parse_map_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

pub fn render_map_file(entries: &[RtMapEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{} {}\n", e.key, e.value))
        .collect()
}

/// The expressions of an `http-request` rule, where map files are referenced.
fn request_rule_text(r: &HttpRequestRule) -> String {
    [&r.var_expr, &r.path_fmt, &r.redir_value, &r.cond_test]
        .iter()
        .filter_map(|v| v.as_deref())
        .map(|v| format!("{v}\n"))
        .collect()
}
