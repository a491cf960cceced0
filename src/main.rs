use std::process::ExitCode;

use clap::Parser;

use haproxy_nomad_connector::app::{self, PlanExit};
use haproxy_nomad_connector::call_metrics::CallMetrics;
use haproxy_nomad_connector::cli::{Cli, Command};
use haproxy_nomad_connector::config::{Config, DriverKind};
use haproxy_nomad_connector::haproxy::runtime::RuntimeDriver;
use haproxy_nomad_connector::logging;
use haproxy_nomad_connector::preflight;
use tokio::sync::watch;

/// A configuration error of `run` or `plan` (sysexits' `EX_CONFIG`): its own code, so a
/// supervisor or a script can tell it from `plan`'s "changes pending" (2) and from a failure to
/// start (1).
const EXIT_CONFIG: u8 = 78;
/// `check-config` on an invalid configuration (its documented code since the first release).
const EXIT_INVALID: u8 = 2;
/// `plan`: changes pending.
const EXIT_CHANGES: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let config_error = if matches!(command, Command::CheckConfig { .. }) {
        EXIT_INVALID
    } else {
        EXIT_CONFIG
    };
    if let Command::Version = command {
        println!(
            "{} {}",
            env!("CARGO_PKG_NAME"),
            haproxy_nomad_connector::cli::VERSION
        );
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
            return ExitCode::from(config_error);
        }
    };
    if let Err(e) = logging::init(&config.log) {
        eprintln!("error: cannot start logging: {e}");
        return ExitCode::from(config_error);
    }
    let effective = config.to_redacted_json();
    tracing::debug!(config = %effective, "effective configuration");
    match command {
        Command::CheckConfig { connect: false } => {
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
        Command::CheckConfig { connect: true } => {
            let runtime = match async_runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let results = runtime.block_on(preflight::run(&config));
            let mut problems = 0;
            for r in &results {
                match r {
                    Ok(line) => println!("ok    {line}"),
                    Err(line) => {
                        problems += 1;
                        println!("FAIL  {line}");
                    }
                }
            }
            if problems == 0 {
                println!("everything `run` needs is there");
                ExitCode::SUCCESS
            } else {
                println!("{problems} problem(s)");
                ExitCode::FAILURE
            }
        }
        Command::Version => ExitCode::SUCCESS,
        Command::Run => {
            // The runtime driver's map files and fragment must exist for HAProxy to start with
            // the frontend rules and the extra `-f`: created empty before anything else runs.
            if config.haproxy.driver == DriverKind::Runtime
                && let Err(e) =
                    RuntimeDriver::new(config.haproxy.runtime.clone(), CallMetrics::disabled())
                        .ensure_files()
            {
                tracing::error!(error = %e, "cannot create the runtime driver's files");
                eprintln!("error: cannot create the runtime driver's files: {e}");
                return ExitCode::FAILURE;
            }
            let runtime = match async_runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let result = runtime.block_on(async {
                let (stop, stopped) = watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = stop.send(true);
                });
                app::run(config, stopped).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "stopped");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plan { json } => {
            let runtime = match async_runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            let mut out = std::io::stdout();
            match runtime.block_on(app::plan(config, json, &mut out)) {
                Ok(PlanExit::Clean) => ExitCode::SUCCESS,
                Ok(PlanExit::Changes) => ExitCode::from(EXIT_CHANGES),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The Tokio runtime of `run`, `plan` and `check-config --connect`.
fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
