//! The driver-neutral vocabulary of HAProxy objects shared by the desired model, the live model
//! and the plan: endpoints, backend settings, health checks, host routes, names and ownership.
//! Pure data, no I/O.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// The marker that makes a backend the connector's own. Drivers store it where HAProxy keeps it
/// (the backend's `description`), so a restarted connector can tell its objects from hand-written
/// ones by reading live HAProxy alone.
pub const OWNER_MARKER: &str = "managed-by haproxy-nomad-connector";

/// Prefix of every server the connector creates, in its own backends and in custom or adopted
/// ones. Servers without it are never touched.
pub const SERVER_PREFIX: &str = "hnc_";

/// Whether a live server is one the connector created.
pub fn is_owned_server(name: &str) -> bool {
    name.starts_with(SERVER_PREFIX)
}

/// An instance's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Endpoint { addr, port }
    }

    /// The deterministic server name for this endpoint: `hnc_<address>_<port>`. Valid for HAProxy
    /// (letters, digits, `.`, `:`, `_`) and unique per endpoint, so an instance that comes back
    /// finds its server again.
    pub fn server_name(&self) -> String {
        format!("{SERVER_PREFIX}{}_{}", self.addr, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Proxy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// Load-balancing algorithms HAProxy can scale at run time (`add server` needs a dynamic
/// algorithm; CONTRACTS §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    Roundrobin,
    Leastconn,
    First,
    Random,
}

impl Balance {
    pub const ALL: [Balance; 4] = [
        Balance::Roundrobin,
        Balance::Leastconn,
        Balance::First,
        Balance::Random,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
            Balance::First => "first",
            Balance::Random => "random",
        }
    }

    pub fn parse(s: &str) -> Option<Balance> {
        Balance::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// A backend health check, as the connector configures it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckSpec {
    /// No health check: servers are considered up.
    None,
    /// A TCP connect check.
    Tcp { timing: CheckTiming },
    /// An HTTP check. `host` set means `HTTP/1.1` with that Host header; unset, `HTTP/1.0`.
    Http {
        method: String,
        path: String,
        host: Option<String>,
        /// Accepted status range, e.g. (200, 399). `None`: HAProxy's default (2xx and 3xx).
        expect: Option<(u16, u16)>,
        timing: CheckTiming,
    },
}

impl CheckSpec {
    pub fn is_enabled(&self) -> bool {
        !matches!(self, CheckSpec::None)
    }

    pub fn timing(&self) -> Option<&CheckTiming> {
        match self {
            CheckSpec::None => None,
            CheckSpec::Tcp { timing } | CheckSpec::Http { timing, .. } => Some(timing),
        }
    }
}

/// The longest timer the connector sends HAProxy, in milliseconds (24 h). HAProxy refuses timers
/// past 2^31-1 ms (about 24.8 days); tags and job checks are bounded well below that.
pub const MAX_TIMER_MS: u32 = 86_400_000;

/// Check interval, timeout and thresholds. Durations are whole milliseconds (HAProxy's unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CheckTiming {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub rise: u32,
    pub fall: u32,
}

impl Default for CheckTiming {
    /// HAProxy's own defaults: `inter 2s`, `rise 2`, `fall 3`; the timeout defaults to the
    /// interval as HAProxy does when `timeout check` is unset.
    fn default() -> Self {
        CheckTiming {
            interval_ms: 2000,
            timeout_ms: 2000,
            rise: 2,
            fall: 3,
        }
    }
}

impl CheckTiming {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms))
    }
}

/// Settings of a backend the connector owns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendSettings {
    pub mode: Mode,
    pub balance: Balance,
    pub check: CheckSpec,
    /// Per-server connection limit applied to every server of the backend.
    pub maxconn: Option<u32>,
    /// The backend's own timeouts; unset ones are the `defaults` section's.
    pub timeouts: Timeouts,
    /// Cookie-based sticky sessions (HAProxy's dynamic cookies), when set.
    pub sticky: Option<StickyCookie>,
    /// TLS to the servers, when set.
    pub tls: Option<ServerTls>,
}

/// TLS from HAProxy to every server of a backend (`ssl`), health checks included (`check-ssl`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServerTls {
    /// The SNI sent, if any.
    pub sni: Option<Sni>,
    /// `verify required` against this CA file; `None`: `verify none`.
    pub ca_file: Option<String>,
}

/// The server name sent in the TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sni {
    /// A fixed host name (also the health check's SNI).
    Host(String),
    /// The request's Host header, without its port.
    Auto,
}

/// HAProxy's sample expression for [`Sni::Auto`].
pub const AUTO_SNI: &str = "req.hdr(host),field(1,:)";

impl Sni {
    /// The `sni` argument as HAProxy takes it: a sample expression (a fixed host is a string).
    pub fn expression(&self) -> String {
        match self {
            Sni::Host(h) => format!("str({h})"),
            Sni::Auto => AUTO_SNI.to_string(),
        }
    }

    /// Reads [`Sni::expression`] back.
    pub fn parse_expression(e: &str) -> Option<Sni> {
        if e == AUTO_SNI {
            return Some(Sni::Auto);
        }
        let host = e.strip_prefix("str(")?.strip_suffix(')')?;
        (!host.is_empty()).then(|| Sni::Host(host.to_string()))
    }
}

impl ServerTls {
    /// The server keywords, in order: `ssl verify … [ca-file …] [sni …]`, then with a health
    /// check `check-ssl [check-sni …]`.
    pub fn server_keywords(&self, check: bool) -> Vec<String> {
        let mut out = vec!["ssl".to_string(), "verify".to_string()];
        match &self.ca_file {
            Some(ca) => out.extend(["required".into(), "ca-file".into(), ca.clone()]),
            None => out.push("none".into()),
        }
        if let Some(sni) = &self.sni {
            out.extend(["sni".into(), sni.expression()]);
        }
        if check {
            out.push("check-ssl".into());
            if let Some(Sni::Host(h)) = &self.sni {
                out.extend(["check-sni".into(), h.clone()]);
            }
        }
        out
    }
}

/// Sticky sessions by a cookie HAProxy inserts (`cookie <name> insert indirect nocache dynamic`):
/// each server's value is a hash of its address and port under the backend's
/// [`dynamic_cookie_key`], so a server added at run time gets one without a reload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct StickyCookie {
    /// The cookie's name (an RFC 6265 token).
    pub name: String,
}

/// The cookie name `haproxy.sticky=cookie` uses without `haproxy.sticky.cookie`.
pub const DEFAULT_STICKY_COOKIE: &str = "SERVERID";

/// The `dynamic-cookie-key` of a sticky backend. Derived from the backend's name so it is the
/// same after every reload and restart (clients keep their servers); it is not a secret: it only
/// spreads the servers' cookie values.
pub fn dynamic_cookie_key(backend: &str) -> String {
    format!("hnc-{backend}")
}

/// A backend's `timeout server`, `timeout connect` and `timeout tunnel`, in whole milliseconds
/// within HAProxy's timer range (at most [`MAX_TIMER_MS`]); `None`: not set on the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Timeouts {
    pub server_ms: Option<u32>,
    pub connect_ms: Option<u32>,
    /// Inactivity timeout of a tunnel (a websocket after its upgrade, CONNECT, …): it replaces the
    /// client and server timeouts once the connection is one.
    pub tunnel_ms: Option<u32>,
}

impl Timeouts {
    /// Each timeout as (HAProxy's keyword after `timeout`, value).
    pub fn entries(&self) -> [(&'static str, Option<u32>); 3] {
        [
            ("server", self.server_ms),
            ("connect", self.connect_ms),
            ("tunnel", self.tunnel_ms),
        ]
    }
}

/// How a route is matched. Each kind has its own map. Path routes (host and path, or path alone;
/// see the `path_rules` module) are looked up first, then hosts: exact, prefix, suffix, regex; the
/// first hit wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Regex,
    /// A path prefix, with the exact host it applies to or alone (keys `host/path`, `/path`).
    Path,
    /// Not a route: an exact host whose plain-HTTP requests are redirected to https (value
    /// `https`), looked up before any route.
    Redirect,
}

impl MatchKind {
    /// Every kind: one map file each.
    pub const ALL: [MatchKind; 6] = [
        MatchKind::Exact,
        MatchKind::Prefix,
        MatchKind::Suffix,
        MatchKind::Regex,
        MatchKind::Path,
        MatchKind::Redirect,
    ];

    /// The kinds that match the host alone, in lookup order (`domain.type`).
    pub const HOSTS: [MatchKind; 4] = [
        MatchKind::Exact,
        MatchKind::Prefix,
        MatchKind::Suffix,
        MatchKind::Regex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Prefix => "prefix",
            MatchKind::Suffix => "suffix",
            MatchKind::Regex => "regex",
            MatchKind::Path => "path",
            MatchKind::Redirect => "redirect",
        }
    }

    /// A host match kind by name (`domain.type`); `path` is not one.
    pub fn parse(s: &str) -> Option<MatchKind> {
        MatchKind::HOSTS.into_iter().find(|k| k.as_str() == s)
    }
}

/// One host-route map entry's key: the map (by match kind) and the key within it. Keys are
/// lower-case; the frontend lower-cases the Host header and strips its port before the lookup.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RouteKey {
    pub kind: MatchKind,
    pub key: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.key)
    }
}

/// A server's administrative state (`set server … state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

/// A server's operational state as HAProxy's checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    Up,
    Down,
    Starting,
    Stopping,
}

/// HAProxy's name grammar for sections (`^[A-Za-z0-9_.:-]+$`).
pub fn is_haproxy_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

impl MatchKind {
    /// The map file holding this kind's routes (in the maps directory).
    pub fn map_file(self) -> &'static str {
        match self {
            MatchKind::Exact => "hnc_exact.map",
            MatchKind::Prefix => "hnc_prefix.map",
            MatchKind::Suffix => "hnc_suffix.map",
            MatchKind::Regex => "hnc_regex.map",
            MatchKind::Path => "hnc_path.map",
            MatchKind::Redirect => "hnc_redirect.map",
        }
    }

    /// HAProxy's converter for this kind of lookup.
    pub fn converter(self) -> &'static str {
        match self {
            MatchKind::Exact => "map_str",
            MatchKind::Prefix => "map_beg",
            MatchKind::Suffix => "map_end",
            MatchKind::Regex => "map_reg",
            MatchKind::Path => "map_beg",
            MatchKind::Redirect => "map_str",
        }
    }
}

/// The sample expression that looks the request's host (lower-cased, port stripped) up in the
/// map of `kind` under `maps_dir`.
pub fn host_lookup(kind: MatchKind, maps_dir: &str) -> String {
    format!(
        "req.hdr(host),lower,field(1,:),{}({}/{})",
        kind.converter(),
        maps_dir.trim_end_matches('/'),
        kind.map_file()
    )
}

/// The variable into which the frontend's request rules (module `path_rules`) put the matched
/// path route's map value: `<backend>` or `<backend>/<bytes to strip>`.
pub const PATH_ROUTE_VAR: &str = "txn.hnc_route";

/// The frontend rules that route by the connector's maps, in lookup order (the path route the
/// request rules of `path_rules::request_rules` found, then exact, prefix, suffix and regex
/// hosts; the first hit wins), as `(backend expression, condition)` pairs:
/// `use_backend <expression> if <condition>`.
pub fn route_rules(maps_dir: &str) -> Vec<(String, String)> {
    let path_route = (
        format!("%[var({PATH_ROUTE_VAR}),field(1,/)]"),
        format!("{{ var({PATH_ROUTE_VAR}) -m found }}"),
    );
    std::iter::once(path_route)
        .chain(MatchKind::HOSTS.iter().map(|k| {
            let lookup = host_lookup(*k, maps_dir);
            (format!("%[{lookup}]"), format!("{{ {lookup} -m found }}"))
        }))
        .collect()
}
