//! Command-line interface: clap derive for the commands, clap's builder API for the configuration
//! flags, which are generated from the key registry. Flags form the highest-precedence
//! configuration layer.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use crate::config::keys::{self, Key, KeySpec};
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
/// the environment or a `*_file` key), built with clap's builder API from the key registry
/// ([`keys::KEYS`]): name, value name, help, environment variables and default all come from the
/// key's one declaration. See the README's configuration table.
///
/// The environment variables and default are shown in the help text, not wired into clap's
/// `env`/`default_value`: those would make every flag always set and so override the JSON file,
/// breaking the documented precedence (defaults < file < environment < flags), and would lose
/// the per-source error messages. Flags hold only what was given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigFlags {
    /// The flags given, in registry order, with their values as written.
    values: Vec<(Key, String)>,
}

impl ConfigFlags {
    /// The flags as a configuration layer.
    pub fn layer(&self) -> Result<Layer, ConfigError> {
        Layer::from_flags(self.values.iter().map(|(k, v)| (*k, Some(v.as_str()))))
    }
}

/// The clap argument of a key with a flag: its id is the key's JSON path.
fn flag_arg(spec: &'static KeySpec, long: &'static str) -> Arg {
    let env = spec.env.join(", ");
    Arg::new(spec.json)
        .long(long.trim_start_matches("--"))
        .value_name(spec.value_name)
        .help(format!(
            "{} [env: {env}] [default: {}]",
            spec.flag_help, spec.default
        ))
        .value_parser(clap::value_parser!(String))
        .action(ArgAction::Set)
        .global(true)
}

impl Args for ConfigFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for spec in keys::KEYS {
            if let Some(long) = spec.flag {
                cmd = cmd.arg(flag_arg(spec, long));
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = ConfigFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for spec in keys::KEYS.iter().filter(|s| s.flag.is_some()) {
            let value = matches
                .try_get_one::<String>(spec.json)
                .map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e))?;
            if let Some(value) = value {
                self.values.retain(|(k, _)| *k != spec.key);
                self.values.push((spec.key, value.clone()));
            }
        }
        self.values.sort_by_key(|(k, _)| *k);
        Ok(())
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

    #[test]
    fn each_flag_is_built_from_its_key_declaration() {
        let cmd = Cli::command();
        for spec in KEYS {
            let Some(flag) = spec.flag else { continue };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.trim_start_matches("--")))
                .unwrap_or_else(|| panic!("no clap argument for {flag}"));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert_eq!(
                help,
                format!(
                    "{} [env: {}] [default: {}]",
                    spec.flag_help,
                    spec.env.join(", "),
                    spec.default
                ),
                "{flag}"
            );
            let names: Vec<&str> = arg
                .get_value_names()
                .unwrap_or_default()
                .iter()
                .map(|n| n.as_str())
                .collect();
            assert_eq!(names, [spec.value_name], "{flag}");
            assert!(arg.is_global_set(), "{flag}");
            // Shown in the help only: clap's own default would set every flag always and
            // override the file (defaults < file < env < flags).
            assert!(arg.get_default_values().is_empty(), "{flag}");
        }
    }

    #[test]
    fn flags_not_given_set_nothing_and_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["x", "check-config"]).expect("parses");
        assert_eq!(cli.flags.layer().expect("layer"), Layer::default());
        let cli = Cli::try_parse_from(["x", "check-config", "--debounce", "1s", "--connect"])
            .expect("parses");
        let layer = cli.flags.layer().expect("layer");
        let entry = layer
            .get(Key::ReconcileDebounce)
            .expect("--debounce sets its key");
        assert_eq!(entry.raw, crate::config::Raw::Text("1s".to_string()));
        assert_eq!(entry.source, crate::config::Source::Flag("--debounce"));
    }
}
