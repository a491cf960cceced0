//! Configuration: built-in defaults < JSON file (`--config`) < environment < command-line flags.
//!
//! Two layers, as in ripgrep's low/high args: [`layer`] holds what the user wrote and where;
//! [`Config::from_layer`] validates everything in one place and produces the typed [`Config`].
//! The key registry in [`keys`] is the single list of keys, shared by loading, `check-config`
//! and the README table.

pub mod keys;
pub mod layer;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use keys::Key;
pub use layer::{Layer, Raw, Source, Sourced};

/// A configuration problem. Every variant names the key or file and says why; the CLI maps all
/// of them to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `*_file` key names a file that could not be read.
    #[error("cannot read {key} file {}: {source}", path.display())]
    ReadSecretFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON.
    #[error("config file {} is not valid JSON: {message} (line {line}, column {column})", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The config file's top level is not an object.
    #[error("config file {} must hold a JSON object, found {found}", path.display())]
    NotAnObject { path: PathBuf, found: &'static str },
    /// A section such as `nomad` is not an object.
    #[error("config file {}: section `{section}` must be a JSON object, found {found}", path.display())]
    SectionNotObject {
        section: String,
        path: PathBuf,
        found: &'static str,
    },
    /// A key nobody reads: almost always a typo, which must not pass silently.
    #[error("config file {}: unknown key `{key}`{}", path.display(), suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        path: PathBuf,
        suggestion: Option<&'static str>,
    },
    /// A value that does not fit its key.
    #[error("invalid {key} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        origin: Source,
        reason: String,
    },
    /// Several values were invalid; all are reported at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

/// A secret value. It shows as `<redacted>` in `Debug`, `Display` and `check-config`, so it cannot
/// reach a log line or a status page by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it (an auth header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

pub const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A URL as it may be shown (check-config, logs, error messages): any user-info
/// (`http://user:pass@host`) replaced by `<redacted>`, the username too, since a token is often
/// passed as one. Works on text that does not parse as a URL as well (an invalid value echoed
/// in an error); text without user-info comes back unchanged.
pub fn redact_url(text: &str) -> String {
    let (authority, end) = match text.find("://") {
        Some(i) => (
            i + 3,
            text[i + 3..]
                .find(['/', '\\', '?', '#'])
                .map_or(text.len(), |e| i + 3 + e),
        ),
        // Not URL-shaped (`http//u:p@h`): where the user-info would end is a guess, so
        // everything before the last `@` goes.
        None => (0, text.len()),
    };
    // The last `@` ends the user-info, as in the URL standard (a password may hold an `@`).
    match text[authority..end].rfind('@') {
        Some(at) => format!(
            "{}{REDACTED}{}",
            &text[..authority],
            &text[authority + at..]
        ),
        None => text.to_string(),
    }
}

/// The effective, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub nomad: NomadConfig,
    pub haproxy: HaproxyConfig,
    pub reconcile: ReconcileConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
}

/// The converge loop's timing and safety settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileConfig {
    pub resync_interval: Duration,
    pub debounce: Duration,
    pub debounce_max: Duration,
    pub max_delete_ratio: f64,
    /// Real time a mass removal must stand (with a fresh Nomad relist) before it applies.
    pub mass_delete_hold: Duration,
    /// Minimum number of passes reaching the same mass removal, on top of the hold.
    pub mass_delete_confirmations: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NomadConfig {
    /// `http`, `https` or `unix` URL of the Nomad HTTP API.
    pub address: Url,
    pub token: Option<Secret>,
    /// `None`: the agent's own region.
    pub region: Option<String>,
    pub namespaces: Namespaces,
    /// Namespaces never watched, sorted and de-duplicated (applies to `*` and to a list).
    pub namespace_deny: Vec<String>,
    /// Tag prefix: a service is taken when one of its tags is `<prefix>.enable=true`.
    pub tag_prefix: String,
    /// Period of the full consistency check against Nomad. Shorter costs more list requests
    /// (one per interval and scope on an idle cluster); longer lets a change that Nomad reported
    /// with no event (garbage collection) linger up to this long.
    pub resync_interval: Duration,
    pub tls: NomadTls,
}

/// Which Nomad namespaces to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace the token can read (`namespace=*`).
    All,
    /// Exactly these, sorted and de-duplicated.
    List(Vec<String>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NomadTls {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub skip_verify: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HaproxyConfig {
    /// Data Plane API base URL.
    pub address: Url,
    pub username: String,
    pub password: Option<Secret>,
    pub backend_strategy: BackendStrategy,
    pub drain_timeout: Duration,
    pub frontend: Option<String>,
    /// Whether regex domains are served.
    pub allow_regex_domains: bool,
    /// Extra server-address ranges to refuse, sorted and de-duplicated.
    pub deny_address_ranges: Vec<ipnet::IpNet>,
    pub driver: DriverKind,
    /// Where the runtime driver finds HAProxy and its files (used when `driver` is `runtime`).
    pub runtime: crate::haproxy::runtime::RuntimeConfig,
}

/// Which HAProxy driver the connector uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// The Data Plane API.
    Dataplane,
    /// The master and admin sockets plus an owned config fragment.
    Runtime,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Dataplane => "dataplane",
            DriverKind::Runtime => "runtime",
        }
    }
}

/// What to do with a dynamic service whose backend name already exists and is not ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStrategy {
    /// Adopt a compatible backend and manage only its servers.
    UseExisting,
    /// Skip the service with a diagnostic.
    CreateNew,
    /// Fail the whole pass.
    FailOnConflict,
}

impl BackendStrategy {
    pub const ALL: [BackendStrategy; 3] = [
        BackendStrategy::UseExisting,
        BackendStrategy::CreateNew,
        BackendStrategy::FailOnConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendStrategy::UseExisting => "use_existing",
            BackendStrategy::CreateNew => "create_new",
            BackendStrategy::FailOnConflict => "fail_on_conflict",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter directive (a plain level is one).
    pub filter: String,
    pub format: LogFormat,
}

/// The admin HTTP server (`/healthz`, `/readyz`, `/status`, `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Default `0.0.0.0:4650`: reachable by Nomad checks and Prometheus from outside the
    /// allocation; nothing served is secret. Use `127.0.0.1:4650` to keep it local.
    pub listen: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

const DEFAULT_NOMAD_ADDRESS: &str = "http://127.0.0.1:4646";
const DEFAULT_HAPROXY_ADDRESS: &str = "http://127.0.0.1:5555";
const DEFAULT_HAPROXY_USERNAME: &str = "admin";
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TAG_PREFIX: &str = "haproxy";
const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_LOG_FILTER: &str = "info";
/// Outside Prometheus's exporter range (9100-9999, fully allocated) and Nomad's dynamic port
/// range (20000-32000); next to Nomad's own 4646-4648.
const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 4650);
const DEFAULT_MASTER_SOCKET: &str = "/run/haproxy-master.sock";
const DEFAULT_FRAGMENT: &str = "/etc/haproxy/conf.d/haproxy-nomad-connector.cfg";
const DEFAULT_MAPS_DIR: &str = "/etc/haproxy/maps";
const DEFAULT_HAPROXY_BINARY: &str = "haproxy";
const DEFAULT_HAPROXY_CONFIG: &str = "/etc/haproxy/haproxy.cfg";

impl Config {
    /// Loads the configuration from all sources: an optional JSON file, the environment (through
    /// `env`), and the command-line flag layer.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: Layer,
    ) -> Result<Config, ConfigError> {
        let file_layer = match file {
            Some(path) => Layer::from_file(path)?,
            None => Layer::default(),
        };
        let merged = file_layer.merged(Layer::from_env(env)?).merged(flags);
        Config::from_layer(&merged)
    }

    /// Validates a merged layer; keys it does not set take their defaults. All invalid values are
    /// reported together.
    pub fn from_layer(layer: &Layer) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut v = Validator {
            layer,
            errors: &mut errors,
        };

        let nomad_address = v
            .url(Key::NomadAddress, &["http", "https", "unix"])
            .unwrap_or_else(|| Url::parse(DEFAULT_NOMAD_ADDRESS).expect("default URL parses"));
        let token = v.string(Key::NomadToken).map(Secret::new);
        let region = v.string(Key::NomadRegion);
        if let Some(r) = &region {
            v.check(
                Key::NomadRegion,
                !r.chars().any(|c| c.is_whitespace() || c.is_control()),
                || "a region name cannot contain whitespace or control characters".to_string(),
            );
        }
        let namespaces = v
            .namespaces(Key::NomadNamespaces)
            .unwrap_or(Namespaces::All);
        let namespace_deny = v
            .namespace_deny(Key::NomadNamespaceDeny)
            .unwrap_or_default();
        if let Namespaces::List(list) = &namespaces {
            if list.iter().all(|n| namespace_deny.contains(n)) {
                v.fail(
                    Key::NomadNamespaceDeny,
                    format!(
                        "denies every namespace of {} ({}): nothing would be watched",
                        Key::NomadNamespaces.json(),
                        list.join(", ")
                    ),
                );
            }
        }
        let tag_prefix = v
            .string(Key::NomadTagPrefix)
            .unwrap_or_else(|| DEFAULT_TAG_PREFIX.to_string());
        v.check(Key::NomadTagPrefix, is_tag_prefix(&tag_prefix), || {
            format!("`{tag_prefix}` is not a valid tag prefix (1-64 letters, digits, `-`, `_` or `.`, not ending in `.`)")
        });
        let resync_interval = v
            .duration(Key::NomadResyncInterval)
            .unwrap_or(DEFAULT_RESYNC_INTERVAL);
        let tls = NomadTls {
            ca_cert: v.readable_path(Key::NomadCaCert),
            client_cert: v.readable_path(Key::NomadClientCert),
            client_key: v.readable_path(Key::NomadClientKey),
            server_name: v.string(Key::NomadTlsServerName),
            skip_verify: v.bool(Key::NomadSkipVerify).unwrap_or(false),
        };
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            let (set, missing) = if tls.client_cert.is_some() {
                (Key::NomadClientCert, Key::NomadClientKey)
            } else {
                (Key::NomadClientKey, Key::NomadClientCert)
            };
            v.fail(set, format!("mutual TLS needs {} as well", missing.json()));
        }

        let haproxy_address = v
            .url(Key::HaproxyAddress, &["http", "https"])
            .unwrap_or_else(|| Url::parse(DEFAULT_HAPROXY_ADDRESS).expect("default URL parses"));
        let username = v
            .string(Key::HaproxyUsername)
            .unwrap_or_else(|| DEFAULT_HAPROXY_USERNAME.to_string());
        v.check(Key::HaproxyUsername, !username.contains(':'), || {
            "a Basic-auth user name cannot contain `:`".to_string()
        });
        let password = v.string(Key::HaproxyPassword).map(Secret::new);
        let backend_strategy = v
            .strategy(Key::HaproxyBackendStrategy)
            .unwrap_or(BackendStrategy::UseExisting);
        let drain_timeout = v
            .duration(Key::HaproxyDrainTimeout)
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        let frontend = v.string(Key::HaproxyFrontend);
        let allow_regex_domains = v.bool(Key::HaproxyAllowRegexDomains).unwrap_or(true);
        let deny_address_ranges = v
            .cidr_list(Key::HaproxyDenyAddressRanges)
            .unwrap_or_default();
        if let Some(name) = &frontend {
            v.check(Key::HaproxyFrontend, is_haproxy_name(name), || {
                format!("`{name}` is not a valid HAProxy section name (allowed: letters, digits, `-`, `_`, `.`, `:`)")
            });
        }

        let reconcile = ReconcileConfig {
            resync_interval: v
                .duration(Key::ReconcileResyncInterval)
                .unwrap_or(Duration::from_secs(30)),
            debounce: v
                .duration(Key::ReconcileDebounce)
                .unwrap_or(Duration::from_millis(50)),
            debounce_max: v
                .duration(Key::ReconcileDebounceMax)
                .unwrap_or(Duration::from_millis(500)),
            max_delete_ratio: v.ratio(Key::ReconcileMaxDeleteRatio).unwrap_or(0.5),
            mass_delete_hold: v
                .duration(Key::ReconcileMassDeleteHold)
                .unwrap_or(Duration::from_secs(60)),
            mass_delete_confirmations: v.count(Key::ReconcileMassDeleteConfirmations).unwrap_or(3),
        };
        if reconcile.debounce_max < reconcile.debounce {
            v.fail(
                Key::ReconcileDebounceMax,
                format!(
                    "must not be shorter than reconcile.debounce ({})",
                    humantime::format_duration(reconcile.debounce)
                ),
            );
        }

        let driver = match v.string(Key::HaproxyDriver).as_deref() {
            None | Some("dataplane") => DriverKind::Dataplane,
            Some("runtime") => DriverKind::Runtime,
            Some(other) => {
                v.fail(
                    Key::HaproxyDriver,
                    format!("unknown driver `{other}`; accepted: dataplane, runtime"),
                );
                DriverKind::Dataplane
            }
        };
        let runtime = crate::haproxy::runtime::RuntimeConfig {
            master_socket: v
                .path(Key::HaproxyMasterSocket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MASTER_SOCKET)),
            admin_socket: v.path(Key::HaproxyAdminSocket),
            fragment: v
                .path(Key::HaproxyFragment)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_FRAGMENT)),
            maps_dir: v
                .path(Key::HaproxyMapsDir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| DEFAULT_MAPS_DIR.to_string()),
            binary: v
                .path(Key::HaproxyBinary)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HAPROXY_BINARY)),
            configs: v
                .paths(Key::HaproxyConfig)
                .unwrap_or_else(|| vec![PathBuf::from(DEFAULT_HAPROXY_CONFIG)]),
        };
        if runtime.fragment.file_name().is_none() {
            v.fail(
                Key::HaproxyFragment,
                format!("`{}` names no file", runtime.fragment.display()),
            );
        }

        let filter = v
            .string(Key::LogLevel)
            .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string());
        if let Err(e) = check_log_filter(&filter) {
            v.fail(
                Key::LogLevel,
                format!("`{filter}` is not a log level or filter directive: {e}"),
            );
        }
        let format = v.log_format(Key::LogFormat).unwrap_or(LogFormat::Text);

        let listen = v
            .socket_addr(Key::HttpListen)
            .unwrap_or(DEFAULT_HTTP_LISTEN);

        match errors.len() {
            0 => Ok(Config {
                nomad: NomadConfig {
                    address: nomad_address,
                    token,
                    region,
                    namespaces,
                    namespace_deny,
                    tag_prefix,
                    resync_interval,
                    tls,
                },
                haproxy: HaproxyConfig {
                    address: haproxy_address,
                    username,
                    password,
                    backend_strategy,
                    drain_timeout,
                    frontend,
                    allow_regex_domains,
                    deny_address_ranges,
                    driver,
                    runtime,
                },
                reconcile,
                log: LogConfig { filter, format },
                http: HttpConfig { listen },
            }),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }

    /// The effective configuration as JSON, in the file's own shape, with secrets redacted.
    pub fn to_redacted_json(&self) -> Value {
        let secret = |s: &Option<Secret>| match s {
            Some(_) => json!(REDACTED),
            None => Value::Null,
        };
        let path = |p: &Option<PathBuf>| match p {
            Some(p) => json!(p.display().to_string()),
            None => Value::Null,
        };
        let namespaces = match &self.nomad.namespaces {
            Namespaces::All => json!(["*"]),
            Namespaces::List(list) => json!(list),
        };
        json!({
            "nomad": {
                "address": redact_url(self.nomad.address.as_str()),
                "token": secret(&self.nomad.token),
                "region": self.nomad.region,
                "namespaces": namespaces,
                "namespace_deny": self.nomad.namespace_deny,
                "tag_prefix": self.nomad.tag_prefix,
                "resync_interval": humantime::format_duration(self.nomad.resync_interval).to_string(),
                "ca_cert": path(&self.nomad.tls.ca_cert),
                "client_cert": path(&self.nomad.tls.client_cert),
                "client_key": path(&self.nomad.tls.client_key),
                "tls_server_name": self.nomad.tls.server_name,
                "skip_verify": self.nomad.tls.skip_verify,
            },
            "haproxy": {
                "address": redact_url(self.haproxy.address.as_str()),
                "username": self.haproxy.username,
                "password": secret(&self.haproxy.password),
                "backend_strategy": self.haproxy.backend_strategy.as_str(),
                "drain_timeout_sec": humantime::format_duration(self.haproxy.drain_timeout).to_string(),
                "frontend": self.haproxy.frontend,
                "allow_regex_domains": self.haproxy.allow_regex_domains,
                "deny_address_ranges": self.haproxy.deny_address_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "driver": self.haproxy.driver.as_str(),
                "master_socket": self.haproxy.runtime.master_socket.display().to_string(),
                "admin_socket": path(&self.haproxy.runtime.admin_socket),
                "fragment": self.haproxy.runtime.fragment.display().to_string(),
                "maps_dir": self.haproxy.runtime.maps_dir,
                "binary": self.haproxy.runtime.binary.display().to_string(),
                "config": self.haproxy.runtime.configs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            },
            "reconcile": {
                "resync_interval": humantime::format_duration(self.reconcile.resync_interval).to_string(),
                "debounce": humantime::format_duration(self.reconcile.debounce).to_string(),
                "debounce_max": humantime::format_duration(self.reconcile.debounce_max).to_string(),
                "max_delete_ratio": self.reconcile.max_delete_ratio,
                "mass_delete_hold": humantime::format_duration(self.reconcile.mass_delete_hold).to_string(),
                "mass_delete_confirmations": self.reconcile.mass_delete_confirmations,
            },
            "log": {
                "level": self.log.filter,
                "format": self.log.format.as_str(),
            },
            "http": {
                "listen": self.http.listen.to_string(),
            },
        })
    }
}

/// HAProxy's section-name grammar.
pub fn is_haproxy_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Reads each key from the merged layer and records every problem instead of stopping at the
/// first one.
struct Validator<'a> {
    layer: &'a Layer,
    errors: &'a mut Vec<ConfigError>,
}

impl Validator<'_> {
    fn fail(&mut self, key: Key, reason: String) {
        let source = self
            .layer
            .get(key)
            .map(|s| s.source.clone())
            .unwrap_or(Source::Default);
        self.errors.push(ConfigError::Invalid {
            key: key.json(),
            origin: source,
            reason,
        });
    }

    fn check(&mut self, key: Key, ok: bool, reason: impl FnOnce() -> String) {
        if !ok {
            self.fail(key, reason());
        }
    }

    /// The text of a key whose value must be a string (file) or any text (env, flag).
    fn string(&mut self, key: Key) -> Option<String> {
        let entry = self.layer.get(key)?;
        match &entry.raw {
            Raw::Text(s) => Some(s.clone()),
            Raw::Json(Value::String(s)) => Some(s.clone()),
            Raw::Json(other) => {
                let found = layer::json_kind(other);
                self.fail(key, format!("expected a string, found {found}"));
                None
            }
        }
    }

    fn url(&mut self, key: Key, schemes: &[&str]) -> Option<Url> {
        let raw = self.string(key)?;
        // Errors echo the value: never its user-info.
        let text = redact_url(&raw);
        match Url::parse(&raw) {
            Ok(url) if !schemes.contains(&url.scheme()) => {
                let accepted = schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.fail(
                    key,
                    format!(
                        "`{text}` has scheme `{}`; accepted: {accepted}",
                        url.scheme()
                    ),
                );
                None
            }
            Ok(url) if url.scheme() != "unix" && url.host_str().is_none_or(str::is_empty) => {
                self.fail(key, format!("`{text}` has no host"));
                None
            }
            Ok(url) if url.scheme() == "unix" && url.path().len() <= 1 => {
                self.fail(
                    key,
                    format!("`{text}` names no socket path (expected unix:///path/to/socket)"),
                );
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                self.fail(key, format!("`{text}` is not a valid URL: {e}"));
                None
            }
        }
    }

    /// A file-system path as text: no whitespace or control characters, since it also appears in
    /// HAProxy configuration lines and CLI commands.
    fn path(&mut self, key: Key) -> Option<PathBuf> {
        let text = self.string(key)?;
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.fail(
                key,
                format!(
                    "`{text}` contains whitespace or control characters, which HAProxy would split"
                ),
            );
            return None;
        }
        Some(PathBuf::from(text))
    }

    /// A list of texts: a JSON array of strings, or comma-separated text; entries trimmed and
    /// empty ones dropped. `what` names the items in messages.
    fn list(&mut self, key: Key, what: &str) -> Option<Vec<String>> {
        let entry = self.layer.get(key)?;
        let items: Vec<String> = match &entry.raw {
            Raw::Text(s) | Raw::Json(Value::String(s)) => {
                s.split(',').map(|p| p.trim().to_string()).collect()
            }
            Raw::Json(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.trim().to_string()),
                        other => {
                            let found = layer::json_kind(other);
                            self.fail(
                                key,
                                format!("expected a list of {what}, found {found} in it"),
                            );
                            return None;
                        }
                    }
                }
                out
            }
            Raw::Json(other) => {
                let found = layer::json_kind(other);
                self.fail(key, format!("expected a list of {what}, found {found}"));
                return None;
            }
        };
        Some(items.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// A list of paths: a JSON array, or comma-separated text.
    fn paths(&mut self, key: Key) -> Option<Vec<PathBuf>> {
        let items = self.list(key, "paths")?;
        if items.is_empty() {
            self.fail(key, "no path given".to_string());
            return None;
        }
        if let Some(bad) = items
            .iter()
            .find(|p| p.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.fail(
                key,
                format!("`{bad}` contains whitespace or control characters"),
            );
            return None;
        }
        Some(items.into_iter().map(PathBuf::from).collect())
    }

    fn bool(&mut self, key: Key) -> Option<bool> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Bool(b)) => Ok(*b),
            Raw::Json(Value::String(s)) | Raw::Text(s) => {
                parse_bool(s).ok_or_else(|| format!("`{s}` is not a boolean"))
            }
            Raw::Json(other) => Err(format!(
                "expected a boolean, found {}",
                layer::json_kind(other)
            )),
        };
        parsed
            .map_err(|reason| self.fail(key, format!("{reason} (accepted: true, false, 1, 0)")))
            .ok()
    }

    fn duration(&mut self, key: Key) -> Option<Duration> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => match n.as_i64() {
                Some(secs) if secs > 0 => Ok(Duration::from_secs(secs.unsigned_abs())),
                Some(secs) => Err(format!("must be greater than zero, got {secs}")),
                None => Err(format!("expected whole seconds, got {n}")),
            },
            Raw::Json(Value::String(s)) | Raw::Text(s) => parse_duration(s),
            Raw::Json(other) => Err(format!(
                "expected seconds or a duration string such as \"30s\", found {}",
                layer::json_kind(other)
            )),
        };
        parsed.map_err(|reason| self.fail(key, reason)).ok()
    }

    /// A share in (0, 1].
    fn ratio(&mut self, key: Key) -> Option<f64> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => {
                n.as_f64().ok_or_else(|| format!("`{n}` is not a number"))
            }
            Raw::Json(Value::String(s)) | Raw::Text(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("`{s}` is not a number")),
            Raw::Json(other) => Err(format!(
                "expected a number, found {}",
                layer::json_kind(other)
            )),
        };
        match parsed {
            Ok(r) if r > 0.0 && r <= 1.0 => Some(r),
            Ok(r) => {
                self.fail(
                    key,
                    format!("must be greater than 0 and at most 1, got {r}"),
                );
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    /// A whole number ≥ 1.
    fn count(&mut self, key: Key) -> Option<u32> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("`{n}` is not a whole number")),
            Raw::Json(Value::String(s)) | Raw::Text(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}` is not a whole number")),
            Raw::Json(other) => Err(format!(
                "expected a number, found {}",
                layer::json_kind(other)
            )),
        };
        match parsed {
            Ok(n) if n >= 1 => Some(n),
            Ok(n) => {
                self.fail(key, format!("must be at least 1, got {n}"));
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    fn strategy(&mut self, key: Key) -> Option<BackendStrategy> {
        let text = self.string(key)?;
        match BackendStrategy::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
        {
            Some(s) => Some(s),
            None => {
                let accepted: Vec<_> = BackendStrategy::ALL.iter().map(|s| s.as_str()).collect();
                self.fail(
                    key,
                    format!(
                        "unknown strategy `{text}`; accepted: {}",
                        accepted.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn log_format(&mut self, key: Key) -> Option<LogFormat> {
        let text = self.string(key)?;
        match text.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => {
                self.fail(
                    key,
                    format!("unknown log format `{text}`; accepted: text, json"),
                );
                None
            }
        }
    }

    /// A list of namespace names in which `*` makes no sense (a deny-list).
    fn namespace_deny(&mut self, key: Key) -> Option<Vec<String>> {
        match self.namespace_items(key)? {
            items if items.iter().any(|n| n == "*") => {
                self.fail(
                    key,
                    "`*` would deny every namespace; list namespace names".to_string(),
                );
                None
            }
            items => {
                if let Some(bad) = items.iter().find(|n| !is_nomad_namespace(n)) {
                    self.fail(
                        key,
                        format!("`{bad}` is not a valid Nomad namespace name (1-128 letters, digits or `-`)"),
                    );
                    return None;
                }
                Some(items)
            }
        }
    }

    /// An `IP:port` listen address (`[::1]:4650` for IPv6); no host names, so what is bound is
    /// exactly what was written.
    fn socket_addr(&mut self, key: Key) -> Option<SocketAddr> {
        let text = self.string(key)?;
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.fail(
                    key,
                    format!(
                        "`{text}` is not an IP address and port (for example 0.0.0.0:4650, 127.0.0.1:4650 or [::]:4650)"
                    ),
                );
                None
            }
        }
    }

    fn namespaces(&mut self, key: Key) -> Option<Namespaces> {
        let items = self.namespace_items(key)?;
        if items.is_empty() {
            self.fail(key, "no namespace given (use `*` for all)".to_string());
            return None;
        }
        if items.iter().any(|n| n == "*") {
            if items.len() > 1 {
                self.fail(
                    key,
                    "`*` (all namespaces) cannot be combined with named namespaces".to_string(),
                );
                return None;
            }
            return Some(Namespaces::All);
        }
        if let Some(bad) = items.iter().find(|n| !is_nomad_namespace(n)) {
            self.fail(
                key,
                format!(
                    "`{bad}` is not a valid Nomad namespace name (1-128 letters, digits or `-`)"
                ),
            );
            return None;
        }
        Some(Namespaces::List(items))
    }

    /// The names of a namespace-list key, trimmed, sorted and de-duplicated (empty entries
    /// dropped); the callers decide what an empty list or `*` means.
    /// A list of CIDR ranges (`10.0.0.0/8`; a bare address is its own /32 or /128).
    fn cidr_list(&mut self, key: Key) -> Option<Vec<ipnet::IpNet>> {
        let items = self.list(key, "CIDR ranges")?;
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            let parsed = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => {
                    self.fail(
                        key,
                        format!(
                            "`{item}` is not a CIDR range (for example 127.0.0.0/8 or fd00::/8)"
                        ),
                    );
                    return None;
                }
            }
        }
        nets.sort();
        nets.dedup();
        Some(nets)
    }

    fn namespace_items(&mut self, key: Key) -> Option<Vec<String>> {
        let mut items = self.list(key, "namespace names")?;
        items.sort();
        items.dedup();
        Some(items)
    }

    /// A path that must name a readable file (TLS material is read when the client is built; a
    /// bad path should fail `check-config`, not the first request).
    fn readable_path(&mut self, key: Key) -> Option<PathBuf> {
        let path = PathBuf::from(self.string(key)?);
        match std::fs::File::open(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                self.fail(key, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }
}

/// `tracing`'s filter parser takes any bare word as a target name, so a typo such as `verbose`
/// would silently disable logging. Require a level, or `target=level` directives.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level (accepted: off, error, warn, info, debug, trace, or target=level)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Go's `strconv.ParseBool`, which Nomad's own tools use for `NOMAD_SKIP_VERIFY`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Whole seconds (`30`) or a humane duration (`30s`, `5m`, `1h 30m`); must be greater than zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return if secs > 0 {
            Ok(Duration::from_secs(secs.unsigned_abs()))
        } else {
            Err(format!("must be greater than zero, got {secs}"))
        };
    }
    if s.starts_with('-') {
        return Err(format!("must be greater than zero, got `{s}`"));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("must be greater than zero, got `{s}`")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "`{s}` is not a duration ({e}); use whole seconds or a value such as 30s, 5m, 1h"
        )),
    }
}

/// A tag prefix: the part before `.enable=true`.
fn is_tag_prefix(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_nomad_namespace(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests;
