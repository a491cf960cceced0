//! Request bodies of the Data Plane API v3.2, as typed Rust written from reading the spec's
//! definitions (`backend`, `cookie`, `server`, `default_server`, `http_check`, `acl`,
//! `backend_switching_rule`, `http_request_rule`, `map_entry`, `runtime_server`,
//! `runtime_add_server`).
//!
//! Only the spec's own fields are modelled, and every struct denies unknown fields: the real API
//! silently drops a field it does not know (or a readOnly one), which hides a misspelt field in
//! the driver, so the double answers 422 instead. Errors follow go-openapi's shapes: a JSON type
//! mismatch is 400, a missing body 422/602, a schema violation 422 with the 6xx code of its kind.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error answer: HTTP status plus the `{"code","message"}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: i64,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: i64::from(status),
            message: message.into(),
        }
    }

    /// A go-openapi validation error: HTTP 422, body code in the 6xx range.
    pub fn schema(code: i64, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 422,
            code,
            message: message.into(),
        }
    }
}

// go-openapi error codes (errors/schema.go: 600 + position in its const block).
pub const INVALID_TYPE: i64 = 601;
pub const REQUIRED: i64 = 602;
pub const PATTERN: i64 = 605;
pub const ENUM: i64 = 606;
pub const MAXIMUM: i64 = 608;
pub const MINIMUM: i64 = 609;
pub const UNALLOWED_PROPERTY: i64 = 616;
pub const READ_ONLY: i64 = 619;

pub const PAT_NAME: &str = r"^[A-Za-z0-9-_.:]+$";
pub const PAT_NO_WS: &str = r"^[^\s]+$";
pub const PAT_URI: &str = r"^[^ ]*$";
pub const PAT_RELOAD_ID: &str = r"^\d{4}-\d{2}-\d{2}-\d+$";
pub const PAT_PATH_PARAM: &str = r#"^[^\r\n<>*;$#&{}"]+$"#;

static RE_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9\-_.:]+$").unwrap());
static RE_NO_WS: LazyLock<Regex> = LazyLock::new(|| Regex::new(PAT_NO_WS).unwrap());
static RE_URI: LazyLock<Regex> = LazyLock::new(|| Regex::new(PAT_URI).unwrap());
pub static RE_RELOAD_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(PAT_RELOAD_ID).unwrap());
pub static RE_PATH_PARAM: LazyLock<Regex> = LazyLock::new(|| Regex::new(PAT_PATH_PARAM).unwrap());

/// Which regex a field must match; carries the spec's source text for the error message.
#[derive(Clone, Copy)]
pub enum Pat {
    Name,
    NoWs,
    Uri,
}

impl Pat {
    fn check(self, s: &str) -> bool {
        match self {
            Pat::Name => RE_NAME.is_match(s),
            Pat::NoWs => RE_NO_WS.is_match(s),
            Pat::Uri => RE_URI.is_match(s),
        }
    }
    fn source(self) -> &'static str {
        match self {
            Pat::Name => PAT_NAME,
            Pat::NoWs => PAT_NO_WS,
            Pat::Uri => PAT_URI,
        }
    }
}

/// Validation of one typed body after serde accepted its shape. `p` is the dotted prefix of the
/// object inside the body ("" at the top, "default_server." below it, …).
pub trait Validate {
    fn validate(&self, p: &str) -> Result<(), ApiError>;
}

impl<T: Validate> Validate for Vec<T> {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        for (i, item) in self.iter().enumerate() {
            item.validate(&format!("{p}{i}."))?;
        }
        Ok(())
    }
}

pub fn check_pattern(p: &str, field: &str, v: Option<&str>, pat: Pat) -> Result<(), ApiError> {
    match v {
        // go-swagger skips validation of zero values of optional strings.
        Some(s) if !s.is_empty() && !pat.check(s) => Err(ApiError::schema(
            PATTERN,
            format!("{p}{field} in body should match '{}'", pat.source()),
        )),
        _ => Ok(()),
    }
}

pub fn check_required(p: &str, field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::schema(
            REQUIRED,
            format!("{p}{field} in body is required"),
        ));
    }
    Ok(())
}

pub fn check_range(
    p: &str,
    field: &str,
    v: Option<i64>,
    min: i64,
    max: i64,
) -> Result<(), ApiError> {
    match v {
        Some(n) if n < min => Err(ApiError::schema(
            MINIMUM,
            format!("{p}{field} in body should be greater than or equal to {min}"),
        )),
        Some(n) if n > max => Err(ApiError::schema(
            MAXIMUM,
            format!("{p}{field} in body should be less than or equal to {max}"),
        )),
        _ => Ok(()),
    }
}

/// A string enum of the spec. Serde rejects other strings ("unknown variant", mapped to 422/606)
/// and other JSON types ("invalid type", mapped to 400).
macro_rules! str_enum {
    ($name:ident { $($var:ident = $s:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name { $( #[serde(rename = $s)] $var ),+ }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $( $name::$var => $s ),+ } }
        }
    };
}

str_enum!(Toggle { Enabled = "enabled", Disabled = "disabled" });
str_enum!(Mode { Http = "http", Tcp = "tcp", Log = "log" });
str_enum!(Algorithm {
    First = "first", Hash = "hash", Hdr = "hdr", Leastconn = "leastconn", Random = "random",
    RdpCookie = "rdp-cookie", Roundrobin = "roundrobin", Source = "source", StaticRr = "static-rr",
    Uri = "uri", UrlParam = "url_param",
});
str_enum!(HashMethod { MapBased = "map-based", Consistent = "consistent" });
str_enum!(HashFunction { Sdbm = "sdbm", Djb2 = "djb2", Wt6 = "wt6", Crc32 = "crc32", None = "none" });
str_enum!(HashModifier { Avalanche = "avalanche" });
str_enum!(AdvCheck {
    Httpchk = "httpchk", LdapCheck = "ldap-check", MysqlCheck = "mysql-check",
    PgsqlCheck = "pgsql-check", RedisCheck = "redis-check", Smtpchk = "smtpchk",
    SslHelloChk = "ssl-hello-chk", TcpCheck = "tcp-check",
});
str_enum!(HttpMethod {
    Head = "HEAD", Put = "PUT", Post = "POST", Get = "GET", Trace = "TRACE", Patch = "PATCH",
    Delete = "DELETE", Connect = "CONNECT", Options = "OPTIONS",
});
str_enum!(HttpConnectionMode {
    Httpclose = "httpclose", HttpServerClose = "http-server-close", HttpKeepAlive = "http-keep-alive",
});
str_enum!(HttpReuse { Aggressive = "aggressive", Always = "always", Never = "never", Safe = "safe" });
str_enum!(Observe { Layer4 = "layer4", Layer7 = "layer7" });
str_enum!(OnError {
    Fastinter = "fastinter", FailCheck = "fail-check", SuddenDeath = "sudden-death",
    MarkDown = "mark-down",
});
str_enum!(OnMarkedDown { ShutdownSessions = "shutdown-sessions" });
str_enum!(OnMarkedUp { ShutdownBackupSessions = "shutdown-backup-sessions" });
str_enum!(Verify { None = "none", Required = "required" });
str_enum!(InitState { FullyUp = "fully-up", Up = "up", Down = "down", FullyDown = "fully-down" });
str_enum!(ResolvePrefer { Ipv4 = "ipv4", Ipv6 = "ipv6" });
str_enum!(CheckType {
    Comment = "comment", Connect = "connect", DisableOn404 = "disable-on-404", Expect = "expect",
    Send = "send", SendState = "send-state", SetVar = "set-var", SetVarFmt = "set-var-fmt",
    UnsetVar = "unset-var",
});
str_enum!(ExpectMatch {
    Status = "status", Rstatus = "rstatus", Hdr = "hdr", Fhdr = "fhdr", String = "string",
    Rstring = "rstring",
});
str_enum!(OkStatus { L7ok = "L7OK", L7okc = "L7OKC", L6ok = "L6OK", L4ok = "L4OK" });
str_enum!(ErrorStatus {
    L7okc = "L7OKC", L7rsp = "L7RSP", L7sts = "L7STS", L6rsp = "L6RSP", L4con = "L4CON",
});
str_enum!(ToutStatus { L7tout = "L7TOUT", L6tout = "L6TOUT", L4tout = "L4TOUT" });
str_enum!(Cond { If = "if", Unless = "unless" });
str_enum!(AdminState { Ready = "ready", Maint = "maint", Drain = "drain" });
str_enum!(OperationalState { Up = "up", Down = "down", Stopping = "stopping" });

/// `metadata`: an object whose values are objects.
pub type Metadata = BTreeMap<String, Map<String, Value>>;

/// Defines a struct holding the `server_params` fields that `runtime_add_server` shares, plus the
/// fields given in braces, and a `validate_params` method for the shared ones.
macro_rules! server_params_struct {
    ($(#[$m:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($extra)*
            #[serde(rename = "agent-addr")] pub agent_addr: Option<String>,
            #[serde(rename = "agent-check")] pub agent_check: Option<Toggle>,
            #[serde(rename = "agent-inter")] pub agent_inter: Option<i64>,
            #[serde(rename = "agent-port")] pub agent_port: Option<i64>,
            #[serde(rename = "agent-send")] pub agent_send: Option<String>,
            pub alpn: Option<String>,
            pub backup: Option<Toggle>,
            pub check: Option<Toggle>,
            #[serde(rename = "check-sni")] pub check_sni: Option<String>,
            #[serde(rename = "check-ssl")] pub check_ssl: Option<Toggle>,
            pub check_alpn: Option<String>,
            pub check_proto: Option<String>,
            pub downinter: Option<i64>,
            pub fall: Option<i64>,
            pub fastinter: Option<i64>,
            pub health_check_address: Option<String>,
            pub health_check_port: Option<i64>,
            pub inter: Option<i64>,
            pub maintenance: Option<Toggle>,
            pub maxconn: Option<i64>,
            pub maxqueue: Option<i64>,
            pub minconn: Option<i64>,
            pub observe: Option<Observe>,
            #[serde(rename = "on-error")] pub on_error: Option<OnError>,
            #[serde(rename = "on-marked-down")] pub on_marked_down: Option<OnMarkedDown>,
            #[serde(rename = "on-marked-up")] pub on_marked_up: Option<OnMarkedUp>,
            pub pool_low_conn: Option<i64>,
            pub pool_max_conn: Option<i64>,
            pub pool_purge_delay: Option<i64>,
            pub proto: Option<String>,
            pub rise: Option<i64>,
            #[serde(rename = "send-proxy")] pub send_proxy: Option<Toggle>,
            #[serde(rename = "send-proxy-v2")] pub send_proxy_v2: Option<Toggle>,
            pub slowstart: Option<i64>,
            pub sni: Option<String>,
            pub ssl: Option<Toggle>,
            pub ssl_cafile: Option<String>,
            pub ssl_certificate: Option<String>,
            pub track: Option<String>,
            pub verify: Option<Verify>,
            pub verifyhost: Option<String>,
            pub weight: Option<i64>,
        }

        impl $name {
            fn validate_params(&self, p: &str) -> Result<(), ApiError> {
                check_pattern(p, "agent-addr", self.agent_addr.as_deref(), Pat::NoWs)?;
                check_range(p, "agent-port", self.agent_port, 1, 65535)?;
                check_pattern(p, "alpn", self.alpn.as_deref(), Pat::NoWs)?;
                check_pattern(p, "check-sni", self.check_sni.as_deref(), Pat::NoWs)?;
                check_pattern(p, "check_alpn", self.check_alpn.as_deref(), Pat::NoWs)?;
                check_pattern(p, "check_proto", self.check_proto.as_deref(), Pat::NoWs)?;
                check_pattern(p, "health_check_address", self.health_check_address.as_deref(), Pat::NoWs)?;
                check_range(p, "health_check_port", self.health_check_port, 1, 65535)?;
                check_pattern(p, "proto", self.proto.as_deref(), Pat::NoWs)?;
                check_pattern(p, "sni", self.sni.as_deref(), Pat::NoWs)?;
                check_pattern(p, "ssl_cafile", self.ssl_cafile.as_deref(), Pat::NoWs)?;
                check_pattern(p, "ssl_certificate", self.ssl_certificate.as_deref(), Pat::NoWs)?;
                Ok(())
            }
        }
    };
}

server_params_struct!(
    /// `server` (= `server_params` + name/address/port/id/metadata).
    Server {
        pub name: String,
        pub address: String,
        pub port: Option<i64>,
        pub id: Option<i64>,
        pub metadata: Option<Metadata>,
        #[serde(rename = "init-addr")] pub init_addr: Option<String>,
        #[serde(rename = "init-state")] pub init_state: Option<InitState>,
        pub resolvers: Option<String>,
        #[serde(rename = "resolve-prefer")] pub resolve_prefer: Option<ResolvePrefer>,
        pub cookie: Option<String>,
    }
);

server_params_struct!(
    /// `default_server` (= `server_params`).
    DefaultServer {
        #[serde(rename = "init-addr")] pub init_addr: Option<String>,
        #[serde(rename = "init-state")] pub init_state: Option<InitState>,
        pub resolvers: Option<String>,
        #[serde(rename = "resolve-prefer")] pub resolve_prefer: Option<ResolvePrefer>,
        pub cookie: Option<String>,
    }
);

server_params_struct!(
    /// `runtime_add_server`. The spec marks name/address/port readOnly, yet the handler requires
    /// `name` and sends `address:port`, so they are accepted here; `id` (readOnly) is rejected.
    RuntimeAddServer {
        pub name: Option<String>,
        pub address: Option<String>,
        pub port: Option<i64>,
    }
);

impl Validate for Server {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_required(p, "name", &self.name)?;
        check_pattern(p, "name", Some(&self.name), Pat::NoWs)?;
        check_required(p, "address", &self.address)?;
        check_pattern(p, "address", Some(&self.address), Pat::NoWs)?;
        check_range(p, "port", self.port, 1, 65535)?;
        check_pattern(p, "init-addr", self.init_addr.as_deref(), Pat::NoWs)?;
        check_pattern(p, "resolvers", self.resolvers.as_deref(), Pat::NoWs)?;
        check_pattern(p, "cookie", self.cookie.as_deref(), Pat::NoWs)?;
        self.validate_params(p)
    }
}

impl Validate for DefaultServer {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_pattern(p, "init-addr", self.init_addr.as_deref(), Pat::NoWs)?;
        check_pattern(p, "resolvers", self.resolvers.as_deref(), Pat::NoWs)?;
        check_pattern(p, "cookie", self.cookie.as_deref(), Pat::NoWs)?;
        self.validate_params(p)
    }
}

impl Validate for RuntimeAddServer {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_pattern(p, "address", self.address.as_deref(), Pat::NoWs)?;
        check_range(p, "port", self.port, 1, 65535)?;
        self.validate_params(p)
    }
}

/// `balance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balance {
    pub algorithm: Algorithm,
    pub hash_expression: Option<String>,
    pub hdr_name: Option<String>,
    pub hdr_use_domain_only: Option<bool>,
    pub random_draws: Option<i64>,
    pub url_param: Option<String>,
}

/// `hash_type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashType {
    pub method: Option<HashMethod>,
    pub function: Option<HashFunction>,
    pub modifier: Option<HashModifier>,
}

/// `httpchk_params`. `host` is in the schema, but HAProxy refuses the 4th argument it produces
/// on the `option httpchk` line: the double fails that at commit/reload validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpchkParams {
    pub method: Option<HttpMethod>,
    pub uri: Option<String>,
    pub version: Option<String>,
    pub host: Option<String>,
}

/// `backend` (= `backend_base` + the child lists used with `full_section=true`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub mode: Option<Mode>,
    pub description: Option<String>,
    pub balance: Option<Balance>,
    pub hash_type: Option<HashType>,
    pub adv_check: Option<AdvCheck>,
    pub httpchk_params: Option<HttpchkParams>,
    pub check_timeout: Option<i64>,
    pub connect_timeout: Option<i64>,
    pub server_timeout: Option<i64>,
    pub queue_timeout: Option<i64>,
    pub tunnel_timeout: Option<i64>,
    pub tarpit_timeout: Option<i64>,
    pub server_fin_timeout: Option<i64>,
    pub http_request_timeout: Option<i64>,
    pub http_keep_alive_timeout: Option<i64>,
    pub retries: Option<i64>,
    pub fullconn: Option<i64>,
    pub id: Option<i64>,
    pub disabled: Option<bool>,
    pub enabled: Option<bool>,
    pub from: Option<String>,
    pub abortonclose: Option<Toggle>,
    pub allbackups: Option<Toggle>,
    pub log_health_checks: Option<Toggle>,
    pub http_connection_mode: Option<HttpConnectionMode>,
    pub http_reuse: Option<HttpReuse>,
    pub cookie: Option<Cookie>,
    pub dynamic_cookie_key: Option<String>,
    pub default_server: Option<DefaultServer>,
    pub metadata: Option<Metadata>,
    /// Child list: only read or replaced with `full_section=true`; never stored in this struct.
    #[serde(skip_serializing)]
    pub servers: Option<BTreeMap<String, Server>>,
    #[serde(skip_serializing)]
    pub http_check_list: Option<Vec<HttpCheck>>,
}

impl Validate for Backend {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_required(p, "name", &self.name)?;
        check_pattern(p, "name", Some(&self.name), Pat::Name)?;
        check_pattern(p, "from", self.from.as_deref(), Pat::Name)?;
        if let Some(b) = &self.balance {
            check_pattern(
                &format!("{p}balance."),
                "url_param",
                b.url_param.as_deref(),
                Pat::NoWs,
            )?;
        }
        if let Some(h) = &self.httpchk_params {
            check_pattern(
                &format!("{p}httpchk_params."),
                "uri",
                h.uri.as_deref(),
                Pat::Uri,
            )?;
        }
        if let Some(d) = &self.default_server {
            d.validate(&format!("{p}default_server."))?;
        }
        if let Some(servers) = &self.servers {
            for (k, s) in servers {
                s.validate(&format!("{p}servers.{k}."))?;
            }
        }
        if let Some(checks) = &self.http_check_list {
            checks.validate(&format!("{p}http_check_list."))?;
        }
        if let Some(c) = &self.cookie {
            c.validate(&format!("{p}cookie."))?;
        }
        check_pattern(
            p,
            "dynamic_cookie_key",
            self.dynamic_cookie_key.as_deref(),
            Pat::NoWs,
        )?;
        Ok(())
    }
}

str_enum!(CookieType { Rewrite = "rewrite", Insert = "insert", Prefix = "prefix" });

/// One `value` of `cookie.attr` / `cookie.domain`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieValue {
    pub value: Option<String>,
}

/// `cookie` (`name` is required).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cookie {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Option<CookieType>,
    pub attr: Option<Vec<CookieValue>>,
    pub domain: Option<Vec<CookieValue>>,
    pub dynamic: Option<bool>,
    pub httponly: Option<bool>,
    pub indirect: Option<bool>,
    pub maxidle: Option<i64>,
    pub maxlife: Option<i64>,
    pub nocache: Option<bool>,
    pub postonly: Option<bool>,
    pub preserve: Option<bool>,
    pub secure: Option<bool>,
}

impl Validate for Cookie {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_required(p, "name", &self.name)?;
        check_pattern(p, "name", Some(&self.name), Pat::NoWs)?;
        for (list, what) in [(&self.attr, "attr"), (&self.domain, "domain")] {
            for v in list.iter().flatten() {
                check_pattern(
                    &format!("{p}{what}."),
                    "value",
                    v.value.as_deref(),
                    Pat::NoWs,
                )?;
            }
        }
        Ok(())
    }
}

/// `return_header`: both fields required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnHeader {
    pub name: String,
    pub fmt: String,
}

/// `http_check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub method: Option<HttpMethod>,
    pub uri: Option<String>,
    pub uri_log_format: Option<String>,
    pub version: Option<String>,
    pub headers: Option<Vec<ReturnHeader>>,
    pub body: Option<String>,
    pub body_log_format: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<ExpectMatch>,
    pub pattern: Option<String>,
    pub exclamation_mark: Option<bool>,
    pub min_recv: Option<i64>,
    pub ok_status: Option<OkStatus>,
    pub error_status: Option<ErrorStatus>,
    pub tout_status: Option<ToutStatus>,
    pub on_success: Option<String>,
    pub on_error: Option<String>,
    #[serde(rename = "status-code")]
    pub status_code: Option<String>,
    pub addr: Option<String>,
    pub port: Option<i64>,
    pub port_string: Option<String>,
    pub default: Option<bool>,
    pub ssl: Option<bool>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub linger: Option<bool>,
    pub send_proxy: Option<bool>,
    pub via_socks4: Option<bool>,
    pub proto: Option<String>,
    pub check_comment: Option<String>,
    pub var_name: Option<String>,
    pub var_scope: Option<String>,
    pub var_expr: Option<String>,
    pub var_format: Option<String>,
    pub metadata: Option<Metadata>,
}

impl Validate for HttpCheck {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_pattern(p, "addr", self.addr.as_deref(), Pat::NoWs)?;
        check_pattern(p, "alpn", self.alpn.as_deref(), Pat::NoWs)?;
        check_range(p, "port", self.port, 1, 65535)?;
        check_pattern(p, "var_name", self.var_name.as_deref(), Pat::NoWs)?;
        check_pattern(p, "var_scope", self.var_scope.as_deref(), Pat::NoWs)?;
        // x-dependency "required": the fields a rule of this type cannot be written without.
        let need = |field: &str, v: &Option<String>| match v.as_deref() {
            Some(s) if !s.is_empty() => Ok(()),
            _ => check_required(p, field, ""),
        };
        match self.kind {
            CheckType::Expect => {
                if self.match_.is_none() {
                    check_required(p, "match", "")?;
                }
                need("pattern", &self.pattern)?;
            }
            CheckType::SetVar => {
                need("var_name", &self.var_name)?;
                need("var_scope", &self.var_scope)?;
                need("var_expr", &self.var_expr)?;
            }
            CheckType::SetVarFmt => {
                need("var_name", &self.var_name)?;
                need("var_scope", &self.var_scope)?;
                need("var_format", &self.var_format)?;
            }
            CheckType::UnsetVar => {
                need("var_name", &self.var_name)?;
                need("var_scope", &self.var_scope)?;
            }
            _ => {}
        }
        if let Some(headers) = &self.headers {
            for (i, h) in headers.iter().enumerate() {
                check_required(&format!("{p}headers.{i}."), "name", &h.name)?;
            }
        }
        Ok(())
    }
}

/// `backend_switching_rule` (v3: no `index` in the body, the position is the index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSwitchingRule {
    pub name: String,
    pub cond: Option<Cond>,
    pub cond_test: Option<String>,
    pub metadata: Option<Metadata>,
}

impl Validate for BackendSwitchingRule {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_required(p, "name", &self.name)?;
        check_pattern(p, "name", Some(&self.name), Pat::NoWs)
    }
}

/// `http_request_rule`: the fields of the rule types the connector writes (`set-var`,
/// `set-path`; the spec's other properties belong to other types and are refused here, so a
/// misspelt field still fails), with the spec's `x-dependency` requirements for those types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestRule {
    #[serde(rename = "type")]
    pub kind: HttpRequestRuleType,
    pub var_scope: Option<String>,
    pub var_name: Option<String>,
    pub var_expr: Option<String>,
    pub path_fmt: Option<String>,
    pub path_match: Option<String>,
    pub redir_type: Option<RedirType>,
    pub redir_value: Option<String>,
    pub redir_code: Option<i64>,
    pub cond: Option<Cond>,
    pub cond_test: Option<String>,
    pub metadata: Option<Metadata>,
}

str_enum!(RedirType { Location = "location", Prefix = "prefix", Scheme = "scheme" });

str_enum!(HttpRequestRuleType {
    AddAcl = "add-acl", AddHeader = "add-header", Allow = "allow", Auth = "auth", CacheUse = "cache-use", Capture = "capture", DelAcl = "del-acl", DelHeader = "del-header", DelMap = "del-map", Deny = "deny", DisableL7Retry = "disable-l7-retry", DoResolve = "do-resolve", EarlyHint = "early-hint", Lua = "lua", NormalizeUri = "normalize-uri", Pause = "pause", Redirect = "redirect", Reject = "reject", ReplaceHeader = "replace-header", ReplacePath = "replace-path", ReplacePathq = "replace-pathq", ReplaceUri = "replace-uri", ReplaceValue = "replace-value", Return = "return", ScAddGpc = "sc-add-gpc", ScIncGpc = "sc-inc-gpc", ScIncGpc0 = "sc-inc-gpc0", ScIncGpc1 = "sc-inc-gpc1", ScSetGpt = "sc-set-gpt", ScSetGpt0 = "sc-set-gpt0", SendSpoeGroup = "send-spoe-group", SetBcMark = "set-bc-mark", SetBcTos = "set-bc-tos", SetDst = "set-dst", SetDstPort = "set-dst-port", SetFcMark = "set-fc-mark", SetFcTos = "set-fc-tos", SetHeader = "set-header", SetLogLevel = "set-log-level", SetMap = "set-map", SetMark = "set-mark", SetMethod = "set-method", SetNice = "set-nice", SetPath = "set-path", SetPathq = "set-pathq", SetPriorityClass = "set-priority-class", SetPriorityOffset = "set-priority-offset", SetQuery = "set-query", SetSrc = "set-src", SetSrcPort = "set-src-port", SetTimeout = "set-timeout", SetTos = "set-tos", SetUri = "set-uri", SetVar = "set-var", SetVarFmt = "set-var-fmt", SilentDrop = "silent-drop", StrictMode = "strict-mode", Tarpit = "tarpit", TrackSc = "track-sc", UnsetVar = "unset-var", UseService = "use-service", WaitForBody = "wait-for-body", WaitForHandshake = "wait-for-handshake", SetBandwidthLimit = "set-bandwidth-limit", SetRetries = "set-retries", DoLog = "do-log"
});

impl Validate for HttpRequestRule {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_pattern(p, "var_scope", self.var_scope.as_deref(), Pat::NoWs)?;
        check_pattern(p, "var_name", self.var_name.as_deref(), Pat::NoWs)?;
        check_pattern(p, "path_fmt", self.path_fmt.as_deref(), Pat::NoWs)?;
        check_pattern(p, "path_match", self.path_match.as_deref(), Pat::NoWs)?;
        check_pattern(p, "redir_value", self.redir_value.as_deref(), Pat::NoWs)?;
        if let Some(code) = self.redir_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            return Err(ApiError::schema(
                ENUM,
                format!("{p}redir_code in body should be one of [301 302 303 307 308]"),
            ));
        }
        let need = |field: &str, v: &Option<String>| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(ApiError::schema(
                REQUIRED,
                format!("{p}{field} in body is required"),
            )),
        };
        match self.kind {
            HttpRequestRuleType::SetVar => {
                need("var_scope", &self.var_scope)?;
                need("var_name", &self.var_name)?;
                need("var_expr", &self.var_expr)
            }
            HttpRequestRuleType::SetPath => need("path_fmt", &self.path_fmt),
            HttpRequestRuleType::Redirect => {
                if self.redir_type.is_none() {
                    return Err(ApiError::schema(
                        REQUIRED,
                        format!("{p}redir_type in body is required"),
                    ));
                }
                need("redir_value", &self.redir_value)
            }
            _ => Ok(()),
        }
    }
}

/// `acl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    pub acl_name: String,
    pub criterion: String,
    pub value: Option<String>,
    pub metadata: Option<Metadata>,
}

impl Validate for Acl {
    fn validate(&self, p: &str) -> Result<(), ApiError> {
        check_required(p, "acl_name", &self.acl_name)?;
        check_pattern(p, "acl_name", Some(&self.acl_name), Pat::NoWs)?;
        check_required(p, "criterion", &self.criterion)?;
        check_pattern(p, "criterion", Some(&self.criterion), Pat::NoWs)
    }
}

/// `map_entry` as a request body (`id` is readOnly and rejected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub key: Option<String>,
    pub value: Option<String>,
}

impl Validate for MapEntry {
    fn validate(&self, _p: &str) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Body of `PUT /runtime/maps/{parent_name}/entries/{id}`: `{"value"}`, required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntryValue {
    pub value: String,
}

impl Validate for MapEntryValue {
    fn validate(&self, _p: &str) -> Result<(), ApiError> {
        Ok(())
    }
}

/// `runtime_server` as a PUT body: only the two writable fields exist (the others are readOnly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeServerPut {
    pub admin_state: Option<AdminState>,
    pub operational_state: Option<OperationalState>,
}

impl Validate for RuntimeServerPut {
    fn validate(&self, _p: &str) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Top-level readOnly properties per definition, answered 619 like go-openapi's ReadOnly error
/// (the real server accepts and ignores them).
pub fn read_only_fields<T: 'static>() -> &'static [&'static str] {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    if t == TypeId::of::<MapEntry>() {
        &["id"]
    } else if t == TypeId::of::<RuntimeServerPut>() {
        &["address", "id", "name", "port"]
    } else if t == TypeId::of::<RuntimeAddServer>() {
        &["id"]
    } else {
        &[]
    }
}

/// Parses and validates a JSON request body into `T`, with the real API's status codes.
pub fn parse_body<T>(content_type: Option<&str>, body: &[u8]) -> Result<T, ApiError>
where
    T: DeserializeOwned + Validate + 'static,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::schema(REQUIRED, "data in body is required"));
    }
    let ct = content_type.unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" {
        return Err(ApiError::new(
            415,
            format!("unsupported media type {ct:?}, only [application/json] are allowed"),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            format!("parsing data body from \"\" failed, because {e}"),
        )
    })?;
    if let Value::Object(obj) = &value {
        for f in read_only_fields::<T>() {
            if obj.contains_key(*f) {
                return Err(ApiError::schema(
                    READ_ONLY,
                    format!("{f} in body is readOnly"),
                ));
            }
        }
    }
    let typed: T = serde_path_to_error::deserialize(value).map_err(classify)?;
    typed.validate("")?;
    Ok(typed)
}

/// Maps a serde error to the class of error the real API answers for the same body.
fn classify(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    let prefix = if path == "." || path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or("");
        // serde_path_to_error's path already ends with the unknown field.
        let full = if path.ends_with(field) {
            path.clone()
        } else {
            format!("{prefix}{field}")
        };
        ApiError::schema(
            UNALLOWED_PROPERTY,
            format!(
                "unknown field `{full}` in body: not a property of the spec's definition \
                 (the real API would silently drop it)"
            ),
        )
    } else if let Some(rest) = inner.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or("");
        ApiError::schema(REQUIRED, format!("{prefix}{field} in body is required"))
    } else if inner.starts_with("unknown variant") {
        let allowed = inner
            .split("expected ")
            .nth(1)
            .unwrap_or("")
            .trim_start_matches("one of ")
            .replace(['`', ','], "");
        ApiError::schema(ENUM, format!("{path} in body should be one of [{allowed}]"))
    } else {
        // "invalid type: …", "invalid value: …", overflow: go's json decoder fails → 400.
        ApiError::new(
            400,
            format!("parsing data body from \"\" failed, because {path}: {inner}"),
        )
    }
}

/// Turns a stored object into its JSON answer, dropping absent (null) fields like go's omitempty.
pub fn to_json<T: Serialize>(v: &T) -> Value {
    strip_nulls(serde_json::to_value(v).expect("serializable"))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
