//! Everything that talks to Nomad: the HTTP client, the event stream's framing and resume rules,
//! and the watcher that keeps the catalog in step.
//!
//! For the controller: build a [`NomadClient`] from the configuration, start a [`Watcher`], and
//! read the catalog from [`Watcher::snapshot`]:
//!
//! ```no_run
//! # async fn example(config: haproxy_nomad_connector::config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use haproxy_nomad_connector::call_metrics::CallMetrics;
//! use haproxy_nomad_connector::nomad::{NomadClient, NomadStats, Watcher, WatcherSettings};
//! let stats = std::sync::Arc::new(NomadStats::default());
//! let client = NomadClient::new(&config.nomad, stats, CallMetrics::disabled())?;
//! let watcher = Watcher::spawn(client, WatcherSettings::from_config(&config.nomad));
//! let mut catalog = watcher.snapshot();
//! catalog.wait_for(|s| s.synced).await?;
//! # Ok(()) }
//! ```

mod client;
mod stats;
pub mod stream;
mod watch;
pub mod wire;

pub use client::{
    Blocking, DEFAULT_REQUEST_SLACK, Indexed, MAX_BLOCKING_WAIT, NomadClient, NomadError,
    SetupError,
};
pub use stats::{Endpoint, NomadStats, StatsSnapshot};
pub use watch::{RelistRequester, Tuning, Watcher, WatcherSettings};
