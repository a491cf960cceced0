//! Wiring: the `run` and `plan` commands put the watcher, the controller, a driver and the admin
//! HTTP server together.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::catalog::Snapshot;
use crate::config::{Config, DriverKind};
use crate::desired::Policy;
use crate::haproxy::dataplane::{DataplaneDriver, Options as DataplaneOptions};
use crate::haproxy::runtime::RuntimeDriver;
use crate::haproxy::{ApplyReport, Driver, DriverError};
use crate::http::{self, AppState, Condition, DriverState, NomadState, Status};
use crate::live::Live;
use crate::metrics::{Metrics, PassResult, op_kind_label};
use crate::nomad::{NomadClient, NomadStats, Watcher, WatcherSettings};
use crate::plan::{DriverProfile, Plan, render};
use crate::reconcile::controller::{Controller, PassRecord, Relists, Settings};
use crate::reconcile::drains::DrainClock;
use crate::reconcile::pass::run_pass;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot start: {0}")]
    Setup(String),
    #[error("Nomad: {0}")]
    Nomad(String),
    #[error("{0}")]
    Pass(String),
}

/// A driver shared between the controller and the metrics scrape.
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
    fn request_counts(&self) -> Vec<(String, String, u64)> {
        (**self).request_counts()
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

fn dataplane(config: &Config) -> Result<DataplaneDriver, AppError> {
    DataplaneDriver::new(DataplaneOptions {
        address: config.haproxy.address.clone(),
        username: config.haproxy.username.clone(),
        password: config.haproxy.password.clone(),
        frontend: config.haproxy.frontend.clone(),
        maps_dir: config.haproxy.runtime.maps_dir.clone(),
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| AppError::Setup(e.to_string()))
}

/// The driver `haproxy.driver` names.
pub enum AnyDriver {
    Dataplane(Box<DataplaneDriver>),
    Runtime(Box<RuntimeDriver>),
}

impl AnyDriver {
    pub fn from_config(config: &Config) -> Result<AnyDriver, AppError> {
        Ok(match config.haproxy.driver {
            DriverKind::Dataplane => AnyDriver::Dataplane(Box::new(dataplane(config)?)),
            DriverKind::Runtime => {
                AnyDriver::Runtime(Box::new(RuntimeDriver::new(config.haproxy.runtime.clone())))
            }
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
    fn request_counts(&self) -> Vec<(String, String, u64)> {
        match self {
            AnyDriver::Dataplane(d) => d.request_counts(),
            AnyDriver::Runtime(d) => d.request_counts(),
        }
    }
}

fn watcher(config: &Config) -> Result<Watcher, AppError> {
    let stats = Arc::new(NomadStats::default());
    let client =
        NomadClient::new(&config.nomad, stats).map_err(|e| AppError::Setup(e.to_string()))?;
    Ok(Watcher::spawn(
        client,
        WatcherSettings::from_config(&config.nomad),
    ))
}

/// `run`: serves until `shutdown` turns true. Returns when the loop, the watcher and the HTTP
/// server have stopped.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    let metrics = Arc::new(
        Metrics::new(env!("CARGO_PKG_VERSION")).map_err(|e| AppError::Setup(e.to_string()))?,
    );
    let status = Arc::new(Status::new(
        config.reconcile.resync_interval,
        Instant::now(),
    ));
    let listener = http::bind(config.http.listen)
        .await
        .map_err(|e| AppError::Setup(e.to_string()))?;
    let driver = Arc::new(AnyDriver::from_config(&config)?);
    log_start(&config);
    let watcher = watcher(&config)?;
    let nomad_stats = watcher.stats();

    let scrape_stats = nomad_stats.clone();
    let scrape_driver = driver.clone();
    let state = AppState::new(metrics.clone(), status.clone()).on_scrape(move |m| {
        sync_external_counters(m, &scrape_stats, scrape_driver.as_ref());
    });
    let mut http_stop = shutdown.clone();
    let server = tokio::spawn(http::serve(listener, state, async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));

    let catalog = watcher.snapshot();
    let requester = watcher.relist_requester();
    let relists = Relists::new(watcher.relists(), move || requester.request());
    let controller = Controller::new(driver.clone(), catalog.clone(), relists, settings(&config));
    let (m, st, stats, cat) = (
        metrics.clone(),
        status.clone(),
        nomad_stats.clone(),
        catalog.clone(),
    );
    let driver_name = driver.name();
    let mut reload_total = 0u64;
    let mut recent: Vec<String> = Vec::new();
    let on_pass = move |r: &PassRecord| {
        reload_total += r.reloads.len() as u64;
        recent.extend(r.reloads.iter().map(|x| x.detail.clone()));
        let excess = recent.len().saturating_sub(10);
        recent.drain(..excess);
        record(
            &m,
            &st,
            &stats,
            &cat.borrow(),
            r,
            driver_name,
            reload_total,
            &recent,
        );
    };
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

#[allow(clippy::too_many_arguments)]
fn record(
    m: &Metrics,
    st: &Status,
    stats: &NomadStats,
    snapshot: &Snapshot,
    r: &PassRecord,
    driver: &str,
    reloads: u64,
    recent: &[String],
) {
    m.record_pass(r.result, r.duration, r.finished_at);
    if r.result != PassResult::Error {
        for (name, kind) in &r.ops {
            m.plan_operations
                .with_label_values(&[name, op_kind_label(*kind)])
                .inc();
            if r.drift {
                m.drift_repairs.with_label_values(&[name]).inc();
            }
        }
        if let Some(latency) = r.change_to_applied {
            m.observe_event_to_applied(latency);
        }
        m.set_desired(r.desired_backends, r.desired_servers);
        m.set_diagnostics(&r.diagnostics);
        st.set_diagnostics(r.diagnostics.clone());
        st.set_pending_drains(r.pending_drains.clone());
    }
    for reload in &r.reloads {
        m.haproxy_reloads
            .with_label_values(&[reload.kind.as_str()])
            .inc();
    }
    m.set_catalog(r.catalog_services, r.catalog_instances);

    let mut summary = std::collections::BTreeMap::new();
    for (name, _) in &r.ops {
        *summary.entry(*name).or_default() += 1;
    }
    st.record_pass(
        http::PassRecord {
            at: r.finished_at,
            duration: r.duration,
            result: r.result,
            summary,
            error: r.error.clone(),
        },
        Instant::now(),
    );
    st.set_condition(Condition::HaproxyUnreachable, r.haproxy_unreachable);
    st.set_driver(DriverState {
        name: driver.to_string(),
        last_error: r.error.clone(),
        reloads,
        recent_reload_reasons: recent.to_vec(),
    });
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

/// Copies counts kept outside the registry (the watcher's, the driver's) into it.
fn sync_external_counters(m: &Metrics, stats: &NomadStats, driver: &impl Driver) {
    let n = stats.snapshot();
    for ((endpoint, status), count) in &n.requests {
        m.sync_counter(&m.nomad_requests, &[endpoint.as_str(), status], *count);
    }
    for (kind, count) in &n.events {
        m.sync_counter(&m.nomad_events, &[kind], *count);
    }
    m.sync_single_counter(&m.nomad_stream_reconnects, n.stream_reconnects);
    for (endpoint, status, count) in driver.request_counts() {
        m.sync_counter(&m.driver_requests, &[&endpoint, &status], count);
    }
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
    let driver = AnyDriver::from_config(&config)?;
    let watcher = watcher(&config)?;
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
        .map_err(|e| AppError::Pass(e.to_string()))?;
    let text = if json {
        let mut v = render::json(&outcome.plan, &outcome.desired.diagnostics);
        v["held_removals"] = serde_json::json!(outcome.held_untrusted);
        serde_json::to_string_pretty(&v).map_err(|e| AppError::Pass(e.to_string()))? + "\n"
    } else {
        render::human(&outcome.plan, &outcome.desired.diagnostics)
    };
    out.write_all(text.as_bytes())
        .map_err(|e| AppError::Pass(format!("cannot write the plan: {e}")))?;
    Ok(if outcome.plan.is_empty() {
        PlanExit::Clean
    } else {
        PlanExit::Changes
    })
}
