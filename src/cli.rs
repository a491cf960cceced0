//! Command-line interface (clap derive). Flags form the highest-precedence configuration layer.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::keys::Key;
use crate::config::{ConfigError, Layer};

/// The version `--version` and `version` print: the package version, plus the git commit in
/// parentheses when the binary was built from a checkout (`0.1.0 (abc1234)`; see `build.rs`).
pub const VERSION: &str = env!("HNC_VERSION");

/// Keeps HAProxy in step with Nomad's native service discovery.
#[derive(Debug, Parser)]
#[command(name = "haproxy-nomad-connector", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// JSON configuration file. Environment variables and flags override its values.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub flags: ConfigFlags,

    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command line with each configuration flag's help ending in its environment
    /// variables and default, both taken from the key registry (the same text as the README).
    ///
    /// The values are shown, not wired into clap's `env`/`default_value`: those would make every
    /// flag always set and so override the JSON file, breaking the documented precedence
    /// (defaults < file < environment < flags), and would lose the per-source error messages.
    pub fn command_with_registry() -> clap::Command {
        let mut cmd = Cli::command();
        for spec in crate::config::keys::KEYS {
            let Some(flag) = spec.flag else { continue };
            let long = flag.trim_start_matches("--");
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .map(|a| a.get_id().clone());
            if let Some(id) = id {
                let env = spec.env.join(", ");
                let default = spec.default;
                cmd = cmd.mut_arg(id, |a| {
                    let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                    a.help(format!("{help} [env: {env}] [default: {default}]"))
                });
            }
        }
        cmd
    }

    /// Parses the process's arguments (exits with clap's usage error on bad ones).
    pub fn parse_with_registry() -> Cli {
        let matches = Cli::command_with_registry().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keep HAProxy converged with Nomad until SIGTERM or SIGINT (the default).
    Run,
    /// One pass without applying: print what would change. Exit 0 when nothing would, 2 when
    /// changes are pending, 1 on error, 78 on a bad configuration (like `terraform plan
    /// -detailed-exitcode`).
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load and validate the configuration, print it as JSON with secrets redacted.
    /// Exit 0 when valid, 2 when not.
    CheckConfig {
        /// Also connect: Nomad reachable and the token able to list and read services and jobs in
        /// every watched namespace; the HAProxy side as its driver needs it. One line per check;
        /// exit 0 when a `run` has everything it needs, 1 otherwise.
        #[arg(long)]
        connect: bool,
    },
    /// Print the version.
    Version,
}

/// One flag per configuration key that may be set on the command line (secrets have none: use
/// the environment or a `*_file` key). See the README's configuration table.
#[derive(Debug, Default, Args)]
pub struct ConfigFlags {
    /// Nomad HTTP API address (http://, https:// or unix://).
    #[arg(long, global = true, value_name = "URL")]
    pub nomad_address: Option<String>,
    /// File holding the Nomad ACL token.
    #[arg(long, global = true, value_name = "PATH")]
    pub nomad_token_file: Option<String>,
    /// Nomad region.
    #[arg(long, global = true, value_name = "REGION")]
    pub nomad_region: Option<String>,
    /// Namespaces to watch: `*` or a comma-separated list.
    #[arg(long, global = true, value_name = "LIST")]
    pub nomad_namespaces: Option<String>,
    /// Namespaces never to watch: a comma-separated list.
    #[arg(long, global = true, value_name = "LIST")]
    pub nomad_namespace_deny: Option<String>,
    /// Tag prefix (`<prefix>.enable=true` selects a service).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub tag_prefix: Option<String>,
    /// Full resync interval: whole seconds or a duration such as 60s.
    #[arg(long, global = true, value_name = "DURATION")]
    pub nomad_resync_interval: Option<String>,
    /// CA certificate (PEM) for Nomad's HTTPS.
    #[arg(long, global = true, value_name = "PATH")]
    pub nomad_ca_cert: Option<String>,
    /// Client certificate (PEM) for mutual TLS with Nomad.
    #[arg(long, global = true, value_name = "PATH")]
    pub nomad_client_cert: Option<String>,
    /// Client key (PEM) for mutual TLS with Nomad.
    #[arg(long, global = true, value_name = "PATH")]
    pub nomad_client_key: Option<String>,
    /// Server name to verify Nomad's certificate against.
    #[arg(long, global = true, value_name = "NAME")]
    pub nomad_tls_server_name: Option<String>,
    /// Skip verification of Nomad's certificate (true/false).
    #[arg(long, global = true, value_name = "BOOL")]
    pub nomad_skip_verify: Option<String>,
    /// Data Plane API base URL.
    #[arg(long, global = true, value_name = "URL")]
    pub haproxy_address: Option<String>,
    /// Data Plane API user.
    #[arg(long, global = true, value_name = "USER")]
    pub haproxy_username: Option<String>,
    /// File holding the Data Plane API password.
    #[arg(long, global = true, value_name = "PATH")]
    pub haproxy_password_file: Option<String>,
    /// use_existing, create_new or fail_on_conflict.
    #[arg(long, global = true, value_name = "STRATEGY")]
    pub haproxy_backend_strategy: Option<String>,
    /// Drain timeout: whole seconds or a duration such as 30s.
    #[arg(long, global = true, value_name = "DURATION")]
    pub haproxy_drain_timeout: Option<String>,
    /// Frontend that receives the connector's host-map rule.
    #[arg(long, global = true, value_name = "NAME")]
    pub haproxy_frontend: Option<String>,
    /// Serve regex domains (true/false).
    #[arg(long, global = true, value_name = "BOOL")]
    pub haproxy_allow_regex_domains: Option<String>,
    /// CIDR ranges no server address may be in (comma-separated).
    #[arg(long, global = true, value_name = "CIDRS")]
    pub haproxy_deny_address_ranges: Option<String>,
    /// Full reconcile interval (repairs drift), e.g. 30s.
    #[arg(long, global = true, value_name = "DURATION")]
    pub resync_interval: Option<String>,
    /// Quiet period after a catalog change, e.g. 50ms.
    #[arg(long, global = true, value_name = "DURATION")]
    pub debounce: Option<String>,
    /// Longest delay of a pass under a steady stream of changes, e.g. 500ms.
    #[arg(long, global = true, value_name = "DURATION")]
    pub debounce_max: Option<String>,
    /// Share of serving servers above which removals need confirmation (0-1].
    #[arg(long, global = true, value_name = "RATIO")]
    pub max_delete_ratio: Option<String>,
    /// Real time a mass removal must stand (with a fresh Nomad relist) before it applies, e.g. 60s.
    #[arg(long, global = true, value_name = "DURATION")]
    pub mass_delete_hold: Option<String>,
    /// Minimum number of passes confirming a mass removal (on top of the hold).
    #[arg(long, global = true, value_name = "N")]
    pub mass_delete_confirmations: Option<String>,
    /// HAProxy driver: dataplane or runtime.
    #[arg(long, global = true, value_name = "DRIVER")]
    pub haproxy_driver: Option<String>,
    /// Runtime driver: HAProxy master CLI socket.
    #[arg(long, global = true, value_name = "PATH")]
    pub haproxy_master_socket: Option<String>,
    /// Runtime driver: HAProxy admin stats socket.
    #[arg(long, global = true, value_name = "PATH")]
    pub haproxy_admin_socket: Option<String>,
    /// Runtime driver: the config fragment the connector owns.
    #[arg(long, global = true, value_name = "PATH")]
    pub haproxy_fragment: Option<String>,
    /// Runtime driver: directory of the host-route maps.
    #[arg(long, global = true, value_name = "DIR")]
    pub haproxy_maps_dir: Option<String>,
    /// Runtime driver: HAProxy binary for `haproxy -c`.
    #[arg(long, global = true, value_name = "PATH")]
    pub haproxy_binary: Option<String>,
    /// Runtime driver: HAProxy's other config files, comma-separated.
    #[arg(long, global = true, value_name = "PATHS")]
    pub haproxy_config: Option<String>,
    /// Log level or tracing filter directive.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Listen address (IP:port) of the health, readiness, status and metrics server.
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

impl ConfigFlags {
    /// The flags as a configuration layer. Destructured field by field, so a new flag that is not
    /// wired to a key fails to compile.
    pub fn layer(&self) -> Result<Layer, ConfigError> {
        let ConfigFlags {
            nomad_address,
            nomad_token_file,
            nomad_region,
            nomad_namespaces,
            nomad_namespace_deny,
            tag_prefix,
            nomad_resync_interval,
            nomad_ca_cert,
            nomad_client_cert,
            nomad_client_key,
            nomad_tls_server_name,
            nomad_skip_verify,
            haproxy_address,
            haproxy_username,
            haproxy_password_file,
            haproxy_backend_strategy,
            haproxy_drain_timeout,
            haproxy_frontend,
            haproxy_allow_regex_domains,
            haproxy_deny_address_ranges,
            resync_interval,
            debounce,
            debounce_max,
            max_delete_ratio,
            mass_delete_hold,
            mass_delete_confirmations,
            haproxy_driver,
            haproxy_master_socket,
            haproxy_admin_socket,
            haproxy_fragment,
            haproxy_maps_dir,
            haproxy_binary,
            haproxy_config,
            log_level,
            log_format,
            http_listen,
        } = self;
        Layer::from_flags([
            (Key::NomadAddress, nomad_address.as_deref()),
            (Key::NomadTokenFile, nomad_token_file.as_deref()),
            (Key::NomadRegion, nomad_region.as_deref()),
            (Key::NomadNamespaces, nomad_namespaces.as_deref()),
            (Key::NomadNamespaceDeny, nomad_namespace_deny.as_deref()),
            (Key::NomadTagPrefix, tag_prefix.as_deref()),
            (Key::NomadResyncInterval, nomad_resync_interval.as_deref()),
            (Key::NomadCaCert, nomad_ca_cert.as_deref()),
            (Key::NomadClientCert, nomad_client_cert.as_deref()),
            (Key::NomadClientKey, nomad_client_key.as_deref()),
            (Key::NomadTlsServerName, nomad_tls_server_name.as_deref()),
            (Key::NomadSkipVerify, nomad_skip_verify.as_deref()),
            (Key::HaproxyAddress, haproxy_address.as_deref()),
            (Key::HaproxyUsername, haproxy_username.as_deref()),
            (Key::HaproxyPasswordFile, haproxy_password_file.as_deref()),
            (
                Key::HaproxyBackendStrategy,
                haproxy_backend_strategy.as_deref(),
            ),
            (Key::HaproxyDrainTimeout, haproxy_drain_timeout.as_deref()),
            (Key::HaproxyFrontend, haproxy_frontend.as_deref()),
            (
                Key::HaproxyAllowRegexDomains,
                haproxy_allow_regex_domains.as_deref(),
            ),
            (
                Key::HaproxyDenyAddressRanges,
                haproxy_deny_address_ranges.as_deref(),
            ),
            (Key::ReconcileResyncInterval, resync_interval.as_deref()),
            (Key::ReconcileDebounce, debounce.as_deref()),
            (Key::ReconcileDebounceMax, debounce_max.as_deref()),
            (Key::ReconcileMaxDeleteRatio, max_delete_ratio.as_deref()),
            (Key::ReconcileMassDeleteHold, mass_delete_hold.as_deref()),
            (
                Key::ReconcileMassDeleteConfirmations,
                mass_delete_confirmations.as_deref(),
            ),
            (Key::HaproxyDriver, haproxy_driver.as_deref()),
            (Key::HaproxyMasterSocket, haproxy_master_socket.as_deref()),
            (Key::HaproxyAdminSocket, haproxy_admin_socket.as_deref()),
            (Key::HaproxyFragment, haproxy_fragment.as_deref()),
            (Key::HaproxyMapsDir, haproxy_maps_dir.as_deref()),
            (Key::HaproxyBinary, haproxy_binary.as_deref()),
            (Key::HaproxyConfig, haproxy_config.as_deref()),
            (Key::LogLevel, log_level.as_deref()),
            (Key::LogFormat, log_format.as_deref()),
            (Key::HttpListen, http_listen.as_deref()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::KEYS;
    use clap::CommandFactory;

    #[test]
    fn every_documented_flag_exists_and_every_flag_is_documented() {
        let cmd = Cli::command();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|f| f != "--config" && f != "--help" && f != "--version")
            .collect();
        for spec in KEYS {
            if let Some(flag) = spec.flag {
                assert!(
                    flags.iter().any(|f| f == flag),
                    "{} documents {flag}, which clap lacks",
                    spec.json
                );
            }
        }
        for flag in &flags {
            assert!(
                KEYS.iter().any(|s| s.flag == Some(flag.as_str())),
                "clap has {flag}, which no key documents"
            );
        }
        cmd.debug_assert();
    }

    #[test]
    fn each_flag_sets_the_key_it_documents() {
        for spec in KEYS.iter().filter(|s| s.flag.is_some()) {
            let flag = spec.flag.unwrap_or_default();
            // Secret files must exist to be read; the rest are stored as text.
            let file = tempfile::NamedTempFile::new().expect("temp file");
            let value = file.path().display().to_string();
            let cli = Cli::try_parse_from(["x", flag, &value, "version"]).expect("parses");
            let layer = cli.flags.layer().expect("layer");
            let target = match spec.key {
                Key::NomadTokenFile => Key::NomadToken,
                Key::HaproxyPasswordFile => Key::HaproxyPassword,
                k => k,
            };
            assert!(
                layer.get(target).is_some(),
                "{flag} did not set {}",
                spec.json
            );
        }
    }
}
