//! The Data Plane API v3 objects the driver reads and writes, as serde types written from the
//! definitions of the v3.2 specification (`info`, `backend`, `balance`, `default_server`,
//! `server`, `http_check`, `return_header`, `native_stats`, `map_entry`, `map`, `transaction`,
//! `backend_switching_rule`, `runtime_server`, `error`).
//!
//! Only the fields the connector uses are modelled. Every type tolerates fields it does not know
//! (a newer API adds some; `full_section` answers carry many child lists), fields the spec does
//! not require are `Option` (an absent or `null` field reads as `None`) and are left out of a
//! written body when `None`, so a body carries exactly what the connector sets. Integers are
//! `i64` (the spec's `integer` without a format is Go's `int64`); where the spec lists the
//! values of a string, the type is an enum, except where HAProxy shows more than the spec lists
//! (the native-stats `status`, e.g. `DRAIN`, `UP 1/3`) or where the value comes from the user
//! (`balance.algorithm`, the check's HTTP method), which stay strings the API validates.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::haproxy::dataplane::error::DataplaneError;

/// Reads `text`, the body of a success answer from `endpoint`, as `T`. A body of another shape is
/// [`DataplaneError::Decode`], naming the endpoint and the path of the offending field.
pub fn decode<T: DeserializeOwned>(
    endpoint: &'static str,
    text: &str,
) -> Result<T, DataplaneError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| DataplaneError::Decode {
        endpoint,
        path: e.path().to_string(),
        source: e.into_inner(),
    })?;
    // Trailing characters after the value are as wrong as a wrong shape.
    de.end().map_err(|source| DataplaneError::Decode {
        endpoint,
        path: ".".to_string(),
        source,
    })?;
    Ok(value)
}

/// `enabled` / `disabled`, the spec's on/off enum (`check`, `maintenance`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    Enabled,
    Disabled,
}

impl Toggle {
    pub fn from_bool(on: bool) -> Toggle {
        if on {
            Toggle::Enabled
        } else {
            Toggle::Disabled
        }
    }

    pub fn is_enabled(self) -> bool {
        self == Toggle::Enabled
    }
}

/// `backend_base.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Http,
    Tcp,
    Log,
}

/// `backend_base.adv_check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvCheck {
    Httpchk,
    LdapCheck,
    MysqlCheck,
    PgsqlCheck,
    RedisCheck,
    Smtpchk,
    SslHelloChk,
    TcpCheck,
}

/// `GET /v3/info`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub api: Option<InfoApi>,
}

/// `info.api`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct InfoApi {
    /// `v3.2.1 45a3288.dev`.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub build_date: Option<String>,
}

/// `balance` (`algorithm` is required).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub algorithm: String,
}

/// `default_server` (the spec's `server_params`): the fields the connector sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Toggle>,
    /// TLS to the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_cafile: Option<String>,
    /// A sample expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(rename = "check-ssl", default, skip_serializing_if = "Option::is_none")]
    pub check_ssl: Option<Toggle>,
    #[serde(rename = "check-sni", default, skip_serializing_if = "Option::is_none")]
    pub check_sni: Option<String>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<i64>,
}

/// `server` (`name` and `address` are required): a configuration server, read from a
/// `full_section` backend and written as a slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Toggle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<i64>,
}

/// `http_check.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpCheckType {
    Comment,
    Connect,
    DisableOn404,
    Expect,
    Send,
    SendState,
    SetVar,
    SetVarFmt,
    UnsetVar,
}

/// `http_check.match`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectMatch {
    Status,
    Rstatus,
    Hdr,
    Fhdr,
    String,
    Rstring,
}

/// `return_header` (both fields required).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnHeader {
    pub name: String,
    pub fmt: String,
}

/// `http_check` (`type` is required): one rule of a backend's `http_checks` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    #[serde(rename = "type")]
    pub kind: HttpCheckType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<ReturnHeader>>,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub match_: Option<ExpectMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

impl HttpCheck {
    /// A rule of `kind` with no other field set.
    pub fn new(kind: HttpCheckType) -> HttpCheck {
        HttpCheck {
            kind,
            method: None,
            uri: None,
            version: None,
            headers: None,
            match_: None,
            pattern: None,
        }
    }
}

/// `backend` (`name` is required). Written without its child lists; read with
/// `full_section=true`, which adds `servers` (a map keyed by server name) and `http_check_list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ProxyMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adv_check: Option<AdvCheck>,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_timeout: Option<i64>,
    /// `timeout server`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timeout: Option<i64>,
    /// `timeout connect`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<i64>,
    /// `timeout tunnel`, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_timeout: Option<i64>,
    /// Cookie persistence (`cookie <name> …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_cookie_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<DefaultServer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<BTreeMap<String, Server>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_check_list: Option<Vec<HttpCheck>>,
}

/// `server_params.verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    None,
    Required,
}

/// `cookie.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieType {
    Rewrite,
    Insert,
    Prefix,
}

/// `cookie` (`name` is required): the fields the connector sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cookie {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CookieType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nocache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<bool>,
}

/// `native_stat.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeStatType {
    Backend,
    Server,
    Frontend,
}

/// `GET /v3/services/haproxy/stats/native`: one `native_stats` object; `stats` is left out when
/// there is nothing to show.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NativeStats {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(rename = "runtimeAPI", default)]
    pub runtime_api: Option<String>,
    #[serde(default)]
    pub stats: Option<Vec<NativeStat>>,
}

/// `native_stat`: the statistics of one frontend, backend or server.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NativeStat {
    #[serde(rename = "type", default)]
    pub kind: Option<NativeStatType>,
    #[serde(default)]
    pub name: Option<String>,
    /// Set on servers.
    #[serde(default)]
    pub backend_name: Option<String>,
    #[serde(default)]
    pub stats: Option<NativeStatStats>,
}

/// `native_stat_stats`: the counters the connector reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NativeStatStats {
    /// `UP`, `DOWN`, `NOLB`, `MAINT`, `no check` in the spec; HAProxy also shows `DRAIN`,
    /// transitions (`UP 1/3`) and `MAINT (via …)`, so a string.
    #[serde(default)]
    pub status: Option<String>,
    /// Current sessions.
    #[serde(default)]
    pub scur: Option<i64>,
}

/// `map_entry`: read from `GET …/runtime/maps/{name}/entries`, written by `POST` of the same
/// (`id` is readOnly, never written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The body of `PUT …/runtime/maps/{parent_name}/entries/{id}` (`value` is required).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntryValue {
    pub value: String,
}

/// `map`: one file of `GET /v3/services/haproxy/storage/maps`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StorageMap {
    #[serde(default)]
    pub id: Option<String>,
    /// The file's path on DPAPI's host.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub storage_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub size: Option<i64>,
}

/// `transaction.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    Failed,
    Outdated,
    InProgress,
    Success,
}

/// `transaction`: the answer to starting (and committing) one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Transaction {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "_version", default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub status: Option<TransactionStatus>,
}

/// `backend_switching_rule.cond`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cond {
    If,
    Unless,
}

/// `backend_switching_rule` (`name` is required): a frontend's `use_backend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSwitchingRule {
    /// The backend, or a format expression (`%[…]`) naming it.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cond_test: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, Map<String, Value>>>,
}

/// `http_request_rule` (`type` is required): a frontend's `http-request` rule. Only the fields
/// of the types the connector writes (`set-var`, `set-path`, `redirect`) are typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestRule {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var_expr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_fmt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redir_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redir_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redir_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cond: Option<Cond>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cond_test: Option<String>,
}

/// `runtime_server.admin_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Maint,
    Drain,
}

/// `runtime_server.operational_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationalState {
    Up,
    Down,
    Stopping,
}

/// `runtime_server` as written by `PUT …/runtime/backends/{parent_name}/servers/{name}`: only its
/// two writable fields (the others are readOnly).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operational_state: Option<OperationalState>,
}

/// `error`: the body of every failure answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A configuration write staged in a transaction: one of the objects above (or a list of them),
/// serialised as that object itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ConfigBody {
    /// Boxed: a backend body is much larger than the others.
    Backend(Box<Backend>),
    HttpChecks(Vec<HttpCheck>),
    Server(Server),
    BackendSwitchingRule(BackendSwitchingRule),
    HttpRequestRule(HttpRequestRule),
}
