//! Configuration: built-in defaults < JSON file (`--config`) < environment < command-line flags.
//!
//! Two layers, as in ripgrep's low/high args: [`layer`] holds what the user wrote and where;
//! [`Config::from_layer`] validates everything in one place and produces the typed [`Config`].
//! Every key is declared once, in [`keys`]: the flags, the environment lookup, the file's key
//! names, the built-in defaults ([`Layer::defaults`], validated like any other layer), the
//! parsing and checking of each value (from its declared kind, in `validate`) and the README's
//! configuration table ([`readme::table`], kept in step by a test) all come from that
//! declaration. Only the rules between keys are written out, in `cross_key_rules`.

pub mod keys;
mod kind;
pub mod layer;
pub mod readme;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use url::Url;

use crate::desired::BackendStrategy;
use crate::model::MatchKind;
use keys::Key;
pub use layer::{Layer, Raw, Source, Sourced};
use validate::Validator;

/// A configuration problem. Every variant names the key or file and says why; the CLI exits with
/// 78 (`run`, `plan`) or 2 (`check-config`).
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
    /// The config file is not valid JSON. `message` is the parser's, without its position.
    #[error("config file {} is not valid JSON: {message} (line {line}, column {column})", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        #[source]
        source: serde_json::Error,
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
    /// A value that does not fit its key. `source` is the error that said so, when one did (a
    /// URL parser, a file that cannot be read); `reason` already quotes it.
    #[error("invalid {key} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        origin: Source,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
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
    /// Read Nomad's check results and take instances whose checks fail out of rotation. Off by
    /// default: it costs one request per checked allocation and poll.
    pub gate_on_checks: bool,
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
    /// Host-name template for services without routes of their own (`haproxy.default_domain`).
    pub default_domain: Option<String>,
    /// Whether regex domains are served.
    pub allow_regex_domains: bool,
    /// Extra server-address ranges to refuse, sorted and de-duplicated.
    pub deny_address_ranges: Vec<ipnet::IpNet>,
    /// The CA file (on the HAProxy host) servers' certificates are verified with.
    pub server_ca_file: Option<String>,
    pub driver: DriverKind,
    /// Where the runtime driver finds HAProxy and its files (used when `driver` is `runtime`).
    pub runtime: RuntimeConfig,
}

/// Where the runtime driver finds HAProxy and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Master CLI socket (`haproxy -W -S <path>`).
    pub master_socket: PathBuf,
    /// Admin stats socket (`stats socket <path> level admin`); `None`: worker commands go through
    /// the master CLI with `@1`.
    pub admin_socket: Option<PathBuf>,
    /// The fragment file the connector owns.
    pub fragment: PathBuf,
    /// The directory of the host maps, exactly as the frontend rules name it.
    pub maps_dir: String,
    /// HAProxy binary used for `haproxy -c`.
    pub binary: PathBuf,
    /// The configuration files HAProxy loads besides the fragment, in order.
    pub configs: Vec<PathBuf>,
}

impl RuntimeConfig {
    /// The map file of `kind`, as HAProxy knows it (the path written in the frontend rules).
    pub fn map_path(&self, kind: MatchKind) -> String {
        format!(
            "{}/{}",
            self.maps_dir.trim_end_matches('/'),
            kind.map_file()
        )
    }
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

    /// Validates a merged layer; keys it does not set take their registry defaults (the lowest
    /// layer, [`Layer::defaults`], validated like any other value). Every key is parsed and
    /// checked from its declared [`keys::Kind`] (`Validator`); the rules between keys follow
    /// (`cross_key_rules`). All invalid values are reported together.
    pub fn from_layer(layer: &Layer) -> Result<Config, ConfigError> {
        let layer = &Layer::defaults().merged(layer.clone());
        let mut v = Validator::new(layer);
        cross_key_rules(&mut v);

        // Keys with a default value are always set, so a `None` below means the value was
        // invalid and an error has been recorded.
        let config = (|| {
            Some(Config {
                nomad: NomadConfig {
                    address: v.get(Key::NomadAddress)?,
                    token: v.get(Key::NomadToken),
                    region: v.get(Key::NomadRegion),
                    namespaces: v.get(Key::NomadNamespaces)?,
                    namespace_deny: v.get(Key::NomadNamespaceDeny).unwrap_or_default(),
                    tag_prefix: v.get(Key::NomadTagPrefix)?,
                    resync_interval: v.get(Key::NomadResyncInterval)?,
                    gate_on_checks: v.get(Key::NomadGateOnChecks)?,
                    tls: NomadTls {
                        ca_cert: v.get(Key::NomadCaCert),
                        client_cert: v.get(Key::NomadClientCert),
                        client_key: v.get(Key::NomadClientKey),
                        server_name: v.get(Key::NomadTlsServerName),
                        skip_verify: v.get(Key::NomadSkipVerify)?,
                    },
                },
                haproxy: HaproxyConfig {
                    address: v.get(Key::HaproxyAddress)?,
                    username: v.get(Key::HaproxyUsername)?,
                    password: v.get(Key::HaproxyPassword),
                    backend_strategy: v.get(Key::HaproxyBackendStrategy)?,
                    drain_timeout: v.get(Key::HaproxyDrainTimeout)?,
                    frontend: v.get(Key::HaproxyFrontend),
                    default_domain: v.get(Key::HaproxyDefaultDomain),
                    allow_regex_domains: v.get(Key::HaproxyAllowRegexDomains)?,
                    deny_address_ranges: v.get(Key::HaproxyDenyAddressRanges).unwrap_or_default(),
                    server_ca_file: v.get(Key::HaproxyServerCaFile),
                    driver: v.get(Key::HaproxyDriver)?,
                    runtime: RuntimeConfig {
                        master_socket: v.get(Key::HaproxyMasterSocket)?,
                        admin_socket: v.get(Key::HaproxyAdminSocket),
                        fragment: v.get(Key::HaproxyFragment)?,
                        maps_dir: v.get::<PathBuf>(Key::HaproxyMapsDir)?.display().to_string(),
                        binary: v.get(Key::HaproxyBinary)?,
                        configs: v.get(Key::HaproxyConfig)?,
                    },
                },
                reconcile: ReconcileConfig {
                    resync_interval: v.get(Key::ReconcileResyncInterval)?,
                    debounce: v.get(Key::ReconcileDebounce)?,
                    debounce_max: v.get(Key::ReconcileDebounceMax)?,
                    max_delete_ratio: v.get(Key::ReconcileMaxDeleteRatio)?,
                    mass_delete_hold: v.get(Key::ReconcileMassDeleteHold)?,
                    mass_delete_confirmations: v.get(Key::ReconcileMassDeleteConfirmations)?,
                },
                log: LogConfig {
                    filter: v.get(Key::LogLevel)?,
                    format: v.get(Key::LogFormat)?,
                },
                http: HttpConfig {
                    listen: v.get(Key::HttpListen)?,
                },
            })
        })();
        let mut errors = v.into_errors();
        match (config, errors.len()) {
            (Some(config), 0) => Ok(config),
            // Only a registry mistake gets here: a required key declared `Absent`
            // (`the_documented_default_is_the_default_used` guards against it).
            (None, 0) => Err(ConfigError::Invalid {
                key: "(key registry)",
                origin: Source::Default,
                reason: "a required key has no default value in the key registry".to_string(),
                source: None,
            }),
            (_, 1) => Err(errors.remove(0)),
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
                "gate_on_checks": self.nomad.gate_on_checks,
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
                "default_domain": self.haproxy.default_domain,
                "allow_regex_domains": self.haproxy.allow_regex_domains,
                "deny_address_ranges": self.haproxy.deny_address_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "server_ca_file": self.haproxy.server_ca_file,
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

/// The rules between keys, each checked only when the values it relates are valid; every other
/// check is derived from the keys' declared kinds.
fn cross_key_rules(v: &mut Validator) {
    // A deny-list covering every listed namespace leaves nothing to watch.
    if let (Some(Namespaces::List(list)), Some(deny)) = (
        v.get::<Namespaces>(Key::NomadNamespaces),
        v.get::<Vec<String>>(Key::NomadNamespaceDeny),
    ) && list.iter().all(|n| deny.contains(n))
    {
        v.fail(
            Key::NomadNamespaceDeny,
            format!(
                "denies every namespace of {} ({}): nothing would be watched",
                Key::NomadNamespaces.json(),
                list.join(", ")
            ),
        );
    }

    // Mutual TLS needs both the client certificate and its key.
    let client_cert = v.get::<PathBuf>(Key::NomadClientCert).is_some();
    let client_key = v.get::<PathBuf>(Key::NomadClientKey).is_some();
    if client_cert != client_key {
        let (set, missing) = if client_cert {
            (Key::NomadClientCert, Key::NomadClientKey)
        } else {
            (Key::NomadClientKey, Key::NomadClientCert)
        };
        v.fail(set, format!("mutual TLS needs {} as well", missing.json()));
    }

    // A pass is never delayed less than the quiet period it waits for.
    if let (Some(debounce), Some(debounce_max)) = (
        v.get::<Duration>(Key::ReconcileDebounce),
        v.get::<Duration>(Key::ReconcileDebounceMax),
    ) && debounce_max < debounce
    {
        v.fail(
            Key::ReconcileDebounceMax,
            format!(
                "must not be shorter than {} ({})",
                Key::ReconcileDebounce.json(),
                humantime::format_duration(debounce)
            ),
        );
    }
}

#[cfg(test)]
mod tests;
