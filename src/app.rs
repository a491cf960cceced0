//! Wiring: the `run` and `plan` commands put the watcher, the controller, a driver and the admin
//! HTTP server together.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::call_metrics::CallMetrics;
use crate::catalog::Snapshot;
use crate::config::{Config, DriverKind};
use crate::desired::Policy;
use crate::haproxy::dataplane::client::Timeouts as DataplaneTimeouts;
use crate::haproxy::dataplane::{DataplaneDriver, Options as DataplaneOptions};
use crate::haproxy::runtime::RuntimeDriver;
use crate::haproxy::{ApplyReport, Driver, DriverError};
use crate::http::{self, AppState, Condition, HttpError, NomadState, Status};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::nomad::{NomadClient, NomadError, NomadStats, Watcher, WatcherSettings};
use crate::plan::{DriverProfile, Plan, render};
use crate::reconcile::PassReport;
use crate::reconcile::controller::{Controller, Relists, Settings};
use crate::reconcile::pass::{PassError, run_pass};
use hnc_core::drains::DrainClock;

/// Why `run` or `plan` stopped. Each keeps the error that caused it as its source.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The HAProxy driver cannot be built from the configuration.
    #[error("cannot start: {0}")]
    Driver(#[source] DriverError),
    /// The Nomad client cannot be built from the configuration.
    #[error("cannot start: {0}")]
    NomadClient(#[source] NomadError),
    /// The metrics registry refused a metric.
    #[error("cannot start: {0}")]
    Metrics(#[source] prometheus::Error),
    /// The admin HTTP server cannot listen.
    #[error("cannot start: {0}")]
    Listen(#[source] HttpError),
    /// No usable list of services from Nomad (the watcher's own words).
    #[error("Nomad: {0}")]
    Nomad(String),
    /// The pass of `plan` failed.
    #[error("{0}")]
    Pass(#[source] PassError),
    /// The plan cannot be rendered as JSON.
    #[error("{0}")]
    Render(#[source] serde_json::Error),
    /// The plan cannot be written out.
    #[error("cannot write the plan: {0}")]
    Write(#[source] std::io::Error),
}

/// A driver shared with its owner (tests keep a handle on the driver the controller runs).
impl<T: Driver> Driver for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    async fn observe(&self) -> Result<Live, DriverError> {
        (**self).observe().await
    }
    fn profile(&self) -> DriverProfile {
        (**self).profile()
    }
    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        (**self).apply(plan).await
    }
    async fn abandon(&self) {
        (**self).abandon().await;
    }
}

/// The one line an operator reads first: what runs, against what. Addresses come from the
/// redacted configuration, so no credential can reach the log.
fn log_start(config: &Config) {
    use crate::config::{Namespaces, redact_url};
    let haproxy = match config.haproxy.driver {
        DriverKind::Dataplane => redact_url(config.haproxy.address.as_str()),
        DriverKind::Runtime => format!(
            "master socket {}",
            config.haproxy.runtime.master_socket.display()
        ),
    };
    let namespaces = match &config.nomad.namespaces {
        Namespaces::All => "*".to_string(),
        Namespaces::List(list) => list.join(","),
    };
    tracing::info!(
        version = %crate::cli::VERSION,
        driver = %config.haproxy.driver.as_str(),
        nomad = %redact_url(config.nomad.address.as_str()),
        namespaces = %namespaces,
        haproxy = %haproxy,
        "starting"
    );
}

fn policy(config: &Config) -> Policy {
    Policy {
        tag_prefix: config.nomad.tag_prefix.clone(),
        backend_strategy: config.haproxy.backend_strategy,
        drain_timeout: config.haproxy.drain_timeout,
        allow_regex_domains: config.haproxy.allow_regex_domains,
        denied_ranges: config.haproxy.deny_address_ranges.clone(),
        server_ca_file: config.haproxy.server_ca_file.clone(),
        default_domain: config.haproxy.default_domain.clone(),
    }
}

fn settings(config: &Config) -> Settings {
    Settings {
        policy: policy(config),
        debounce: config.reconcile.debounce,
        debounce_max: config.reconcile.debounce_max,
        resync: config.reconcile.resync_interval,
        max_delete_ratio: config.reconcile.max_delete_ratio,
        mass_delete_hold: config.reconcile.mass_delete_hold,
        mass_delete_confirmations: config.reconcile.mass_delete_confirmations,
        ..Settings::default()
    }
}

fn dataplane(config: &Config, calls: CallMetrics) -> Result<DataplaneDriver, AppError> {
    DataplaneDriver::new(
        DataplaneOptions {
            address: config.haproxy.address.clone(),
            username: config.haproxy.username.clone(),
            password: config.haproxy.password.clone(),
            frontend: config.haproxy.frontend.clone(),
            maps_dir: config.haproxy.runtime.maps_dir.clone(),
            timeouts: DataplaneTimeouts::default(),
        },
        calls,
    )
    .map_err(AppError::Driver)
}

/// The driver `haproxy.driver` names.
pub enum AnyDriver {
    Dataplane(Box<DataplaneDriver>),
    Runtime(Box<RuntimeDriver>),
}

impl AnyDriver {
    /// The configured driver, its client recording every request or command in `calls`.
    pub fn from_config(config: &Config, calls: CallMetrics) -> Result<AnyDriver, AppError> {
        Ok(match config.haproxy.driver {
            DriverKind::Dataplane => AnyDriver::Dataplane(Box::new(dataplane(config, calls)?)),
            DriverKind::Runtime => AnyDriver::Runtime(Box::new(RuntimeDriver::new(
                config.haproxy.runtime.clone(),
                calls,
            ))),
        })
    }
}

impl Driver for AnyDriver {
    fn name(&self) -> &'static str {
        match self {
            AnyDriver::Dataplane(d) => d.name(),
            AnyDriver::Runtime(d) => d.name(),
        }
    }
    async fn observe(&self) -> Result<Live, DriverError> {
        match self {
            AnyDriver::Dataplane(d) => d.observe().await,
            AnyDriver::Runtime(d) => d.observe().await,
        }
    }
    fn profile(&self) -> DriverProfile {
        match self {
            AnyDriver::Dataplane(d) => d.profile(),
            AnyDriver::Runtime(d) => d.profile(),
        }
    }
    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        match self {
            AnyDriver::Dataplane(d) => d.apply(plan).await,
            AnyDriver::Runtime(d) => d.apply(plan).await,
        }
    }
    async fn abandon(&self) {
        match self {
            AnyDriver::Dataplane(d) => d.abandon().await,
            AnyDriver::Runtime(d) => d.abandon().await,
        }
    }
}

/// A watcher whose Nomad client records its requests in `calls`.
fn watcher(config: &Config, calls: CallMetrics) -> Result<Watcher, AppError> {
    let stats = Arc::new(NomadStats::default());
    let client = NomadClient::new(&config.nomad, stats, calls).map_err(AppError::NomadClient)?;
    Ok(Watcher::spawn(
        client,
        WatcherSettings::from_config(&config.nomad),
    ))
}

/// `run`: serves until `shutdown` turns true. Returns when the loop, the watcher and the HTTP
/// server have stopped.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")).map_err(AppError::Metrics)?);
    let status = Arc::new(Status::new(
        config.reconcile.resync_interval,
        Instant::now(),
    ));
    let listener = http::bind(config.http.listen)
        .await
        .map_err(AppError::Listen)?;
    let driver_kind = config.haproxy.driver.as_str();
    let driver = AnyDriver::from_config(&config, metrics.haproxy_calls(driver_kind))?;
    status.set_driver_name(driver.name());
    log_start(&config);
    let watcher = watcher(&config, metrics.nomad_calls())?;
    let nomad_stats = watcher.stats();

    let scrape_stats = nomad_stats.clone();
    let state = AppState::new(metrics.clone(), status.clone()).on_scrape(move |m| {
        sync_watcher_counters(m, &scrape_stats);
    });
    let mut http_stop = shutdown.clone();
    let server = tokio::spawn(http::serve(listener, state, async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));

    let catalog = watcher.snapshot();
    let requester = watcher.relist_requester();
    let relists = Relists::new(watcher.relists(), move || requester.request());
    let controller = Controller::new(driver, catalog.clone(), relists, settings(&config));
    let on_pass = report_pass(
        metrics.clone(),
        status.clone(),
        nomad_stats.clone(),
        catalog.clone(),
    );
    let status_on_stop = status.clone();
    let mut stop_watch = shutdown.clone();
    let controller_task = tokio::spawn(controller.run(shutdown.clone(), on_pass));
    let _ = stop_watch.wait_for(|s| *s).await;
    status_on_stop.begin_shutdown();
    tracing::info!("shutting down");
    if let Err(e) = controller_task.await {
        tracing::error!(error = %e, "the reconcile loop ended abnormally");
    }
    watcher.shutdown().await;
    let _ = shutdown.changed().await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "admin HTTP server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// What the loop does with each pass's report: metrics and the status board record it, and the
/// board's Nomad side is refreshed from the watcher.
fn report_pass(
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    stats: Arc<NomadStats>,
    catalog: watch::Receiver<Arc<Snapshot>>,
) -> impl FnMut(&PassReport) + Send + 'static {
    move |report: &PassReport| {
        metrics.record_pass(report);
        status.record_pass(report, Instant::now());
        publish_nomad(&status, &stats, &catalog.borrow());
    }
}

/// The Nomad side of the status board, from the watcher's counters and the catalog it
/// publishes (refreshed after every pass).
fn publish_nomad(st: &Status, stats: &NomadStats, snapshot: &Snapshot) {
    let n = stats.snapshot();
    let denied = snapshot.denied;
    st.set_condition(Condition::NomadDenied, denied);
    st.set_condition(
        Condition::NomadUnreachable,
        !denied && (!snapshot.synced || snapshot.stale.is_some()),
    );
    st.set_nomad(NomadState {
        connected: n.streams_connected > 0,
        synced: snapshot.synced,
        last_index: n.last_index,
        reconnects: n.stream_reconnects,
        last_error: snapshot.stale.clone().or(n.last_error),
    });
}

/// Copies the watcher's own cumulative counts (events, reconnects) into the registry. Requests
/// are not among them: the clients record those themselves.
fn sync_watcher_counters(m: &Metrics, stats: &NomadStats) {
    let n = stats.snapshot();
    for (kind, count) in &n.events {
        m.sync_counter(&m.nomad_events, &[kind], *count);
    }
    m.sync_single_counter(&m.nomad_stream_reconnects, n.stream_reconnects);
}

/// What `plan` found.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanExit {
    /// Nothing to do (exit 0).
    Clean,
    /// Changes pending (exit 2).
    Changes,
}

/// `plan`: one pass without applying, printed for people or as JSON.
pub async fn plan(config: Config, json: bool, out: &mut impl Write) -> Result<PlanExit, AppError> {
    let driver = AnyDriver::from_config(&config, CallMetrics::disabled())?;
    let watcher = watcher(&config, CallMetrics::disabled())?;
    let mut rx = watcher.snapshot();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|s| s.synced || s.stale.is_some()),
    )
    .await;
    let snapshot = match waited {
        Ok(Ok(s)) => s.clone(),
        Ok(Err(_)) => return Err(AppError::Nomad("the watcher stopped".into())),
        Err(_) => {
            watcher.shutdown().await;
            return Err(AppError::Nomad(
                "no complete list of services from Nomad within 30 s".into(),
            ));
        }
    };
    watcher.shutdown().await;
    if let Some(err) = &snapshot.stale {
        return Err(AppError::Nomad(err.clone()));
    }
    let mut drains = DrainClock::default();
    let outcome = run_pass(&driver, &snapshot, &policy(&config), &mut drains, false)
        .await
        .map_err(AppError::Pass)?;
    let text = if json {
        let mut v = render::json(&outcome.plan, &outcome.desired.diagnostics);
        v["held_removals"] = serde_json::json!(outcome.held_untrusted);
        serde_json::to_string_pretty(&v).map_err(AppError::Render)? + "\n"
    } else {
        render::human(&outcome.plan, &outcome.desired.diagnostics)
    };
    out.write_all(text.as_bytes()).map_err(AppError::Write)?;
    Ok(if outcome.plan.is_empty() {
        PlanExit::Clean
    } else {
        PlanExit::Changes
    })
}

#[cfg(test)]
mod tests;
