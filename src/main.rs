use std::process::ExitCode;

use clap::Parser;
use haproxy_nomad_connector::cli::{Cli, Command};
use haproxy_nomad_connector::config::Config;
use haproxy_nomad_connector::logging;

/// Configuration errors and bad usage exit with 2, like clap's own usage errors.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match cli
        .flags
        .layer()
        .and_then(|flags| Config::load(cli.config.as_deref(), |k| std::env::var(k).ok(), flags))
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = logging::init(&config.log) {
        eprintln!("error: cannot start logging: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let effective = config.to_redacted_json();
    tracing::debug!(config = %effective, "effective configuration");
    match cli.command {
        Command::CheckConfig => {
            match serde_json::to_string_pretty(&effective) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("error: cannot render configuration: {e}");
                    return ExitCode::FAILURE;
                }
            }
            tracing::info!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Version => ExitCode::SUCCESS,
    }
}
