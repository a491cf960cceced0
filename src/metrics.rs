//! Prometheus metrics: one [`Metrics`] value holding every series, registered against its own
//! [`Registry`] (never the process-global default, so each test builds a fresh one), rendered in
//! the text exposition format by [`Metrics::render`].
//!
//! Names follow Prometheus conventions: prefix `hnc_`, base units (`_seconds`), `_total` on
//! counters, and labels with small fixed value sets (operation names, result codes, reason
//! codes); never a service, server or host name.
//!
//! A finished pass is recorded from its [`PassReport`] by [`Metrics::record_pass`]. The clients
//! that talk to HAProxy and Nomad get their [`CallMetrics`] handles from here when they are built
//! ([`Metrics::haproxy_calls`], [`Metrics::nomad_calls`]) and record each call, its status and
//! duration, themselves. Counts that another component keeps as its own cumulative atomics (the
//! Nomad watcher's event and reconnect counters) are copied in at scrape time with
//! [`Metrics::sync_counter`], which adds only the difference since the last call.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::call_metrics::CallMetrics;
use crate::desired::{Diagnostic, Reason, Severity};
use crate::plan::OpKind;
use crate::reconcile::{PassReport, PassResult, PlannedOp};

/// Buckets for durations from about a millisecond to tens of seconds (1-2.5-5 steps).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One request or command: sub-millisecond socket commands up to Nomad's five-minute blocking
/// queries.
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 330.0,
];

/// A pass may include retries and a reload wait, so its histogram reaches a minute.
const PASS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `kind` label of `hnc_plan_operations_total`.
pub fn op_kind_label(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Structural => "structural",
        OpKind::Runtime => "runtime",
    }
}

/// Every series the connector exports. Handles are public so the loop can update them; see the
/// README's metrics table for meanings.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `hnc_passes_total{result}`: passes by [`PassResult`].
    pub passes: IntCounterVec,
    /// `hnc_pass_duration_seconds`: wall time of each pass, observe to apply.
    pub pass_duration: Histogram,
    /// `hnc_event_to_applied_seconds`: from the Nomad event (or catalog change) that made a
    /// change necessary to the end of the pass that applied it.
    pub event_to_applied: Histogram,
    /// `hnc_plan_operations_total{op,kind}`: operations applied.
    pub plan_operations: IntCounterVec,
    /// `hnc_haproxy_reloads_total{reason}`: HAProxy reloads caused by the connector.
    pub haproxy_reloads: IntCounterVec,
    /// `hnc_driver_requests_total{endpoint,status}`: requests (or socket commands) to HAProxy.
    pub driver_requests: IntCounterVec,
    /// `hnc_haproxy_request_duration_seconds{driver,endpoint,status}`: duration of each request
    /// or socket command to HAProxy.
    pub haproxy_request_duration: HistogramVec,
    /// `hnc_nomad_requests_total{endpoint,status}`: requests to the Nomad API.
    pub nomad_requests: IntCounterVec,
    /// `hnc_nomad_request_duration_seconds{endpoint,status}`: duration of each Nomad request (to
    /// the response headers for the event stream).
    pub nomad_request_duration: HistogramVec,
    /// `hnc_nomad_stream_reconnects_total`: event stream (re)connections after the first.
    pub nomad_stream_reconnects: IntCounter,
    /// `hnc_nomad_events_total{type}`: events received from the stream, by Nomad event type.
    pub nomad_events: IntCounterVec,
    /// `hnc_catalog_services`: services in the catalog that ask for the connector.
    pub catalog_services: IntGauge,
    /// `hnc_catalog_instances`: their registrations (instances).
    pub catalog_instances: IntGauge,
    /// `hnc_desired_backends`: backends in the last desired model.
    pub desired_backends: IntGauge,
    /// `hnc_desired_servers`: servers in the last desired model.
    pub desired_servers: IntGauge,
    /// `hnc_drift_repairs_total{kind}`: owned objects found changed or missing in live HAProxy
    /// although the catalog had not changed, and repaired.
    pub drift_repairs: IntCounterVec,
    /// `hnc_skipped_services{reason}`: services currently skipped, by reason code.
    pub skipped_services: IntGaugeVec,
    /// `hnc_conflicts`: services currently in a backend-name or domain conflict.
    pub conflicts: IntGauge,
    /// `hnc_mass_delete_held_total`: passes held back by the mass-delete guard.
    pub mass_delete_held: IntCounter,
    /// `hnc_last_successful_pass_timestamp_seconds`: Unix time of the last successful pass.
    pub last_successful_pass: Gauge,
    /// `hnc_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// Last cumulative value seen by [`Metrics::sync_counter`], per series.
    synced: Mutex<HashMap<(String, Vec<String>), u64>>,
    /// Skip reasons seen so far: they stay exported (at 0) once gone, so a series does not
    /// vanish between scrapes.
    skip_reasons_seen: Mutex<BTreeSet<Reason>>,
}

impl Metrics {
    /// Builds every series against a new, owned registry. `version` is the `hnc_build_info` label.
    pub fn new(version: &str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let passes = counter_vec(
            r,
            "hnc_passes_total",
            "Reconcile passes by result (success, noop, error, held).",
            &["result"],
        )?;
        let pass_duration = histogram(
            r,
            "hnc_pass_duration_seconds",
            "Duration of a reconcile pass, from observing HAProxy to the end of apply.",
            PASS_BUCKETS,
        )?;
        let event_to_applied = histogram(
            r,
            "hnc_event_to_applied_seconds",
            "Time from the catalog change that made a change necessary to the end of the pass that applied it.",
            LATENCY_BUCKETS,
        )?;
        let plan_operations = counter_vec(
            r,
            "hnc_plan_operations_total",
            "Plan operations applied, by operation and kind (structural or runtime).",
            &["op", "kind"],
        )?;
        let haproxy_reloads = counter_vec(
            r,
            "hnc_haproxy_reloads_total",
            "HAProxy reloads caused by the connector, by reason.",
            &["reason"],
        )?;
        let driver_requests = counter_vec(
            r,
            "hnc_driver_requests_total",
            "Requests or commands sent to HAProxy by the driver, by endpoint and status.",
            &["endpoint", "status"],
        )?;
        let haproxy_request_duration = histogram_vec(
            r,
            "hnc_haproxy_request_duration_seconds",
            "Duration of requests or commands sent to HAProxy, by driver, endpoint and status (or error, timeout).",
            &["driver", "endpoint", "status"],
        )?;
        let nomad_requests = counter_vec(
            r,
            "hnc_nomad_requests_total",
            "Requests to the Nomad HTTP API, by endpoint and status.",
            &["endpoint", "status"],
        )?;
        let nomad_request_duration = histogram_vec(
            r,
            "hnc_nomad_request_duration_seconds",
            "Duration of requests to the Nomad HTTP API (to the response headers for the event stream), by endpoint and status (or error, timeout).",
            &["endpoint", "status"],
        )?;
        let nomad_stream_reconnects = counter(
            r,
            "hnc_nomad_stream_reconnects_total",
            "Reconnections of the Nomad event stream after the first connection.",
        )?;
        let nomad_events = counter_vec(
            r,
            "hnc_nomad_events_total",
            "Events received from the Nomad event stream, by type.",
            &["type"],
        )?;
        let catalog_services = gauge(
            r,
            "hnc_catalog_services",
            "Services in the catalog that ask for the connector.",
        )?;
        let catalog_instances = gauge(
            r,
            "hnc_catalog_instances",
            "Registrations (instances) of the services in the catalog.",
        )?;
        let desired_backends = gauge(
            r,
            "hnc_desired_backends",
            "Backends in the last desired model.",
        )?;
        let desired_servers = gauge(
            r,
            "hnc_desired_servers",
            "Servers in the last desired model.",
        )?;
        let drift_repairs = counter_vec(
            r,
            "hnc_drift_repairs_total",
            "Owned objects found changed or missing in live HAProxy while the catalog was unchanged, and repaired, by kind.",
            &["kind"],
        )?;
        let skipped_services = gauge_vec(
            r,
            "hnc_skipped_services",
            "Services currently not served as tagged, by reason.",
            &["reason"],
        )?;
        let conflicts = gauge(
            r,
            "hnc_conflicts",
            "Services currently in a backend-name or domain conflict.",
        )?;
        let mass_delete_held = counter(
            r,
            "hnc_mass_delete_held_total",
            "Passes held back by the mass-delete guard.",
        )?;
        let last_successful_pass = Gauge::new(
            "hnc_last_successful_pass_timestamp_seconds",
            "Unix time of the last successful reconcile pass (0 before the first).",
        )?;
        r.register(Box::new(last_successful_pass.clone()))?;
        let build_info = gauge_vec(
            r,
            "hnc_build_info",
            "Build information; the value is always 1.",
            &["version"],
        )?;
        build_info.with_label_values(&[version]).set(1);
        for result in PassResult::ALL {
            passes.with_label_values(&[result.as_str()]);
        }
        Ok(Metrics {
            registry,
            passes,
            pass_duration,
            event_to_applied,
            plan_operations,
            haproxy_reloads,
            driver_requests,
            haproxy_request_duration,
            nomad_requests,
            nomad_request_duration,
            nomad_stream_reconnects,
            nomad_events,
            catalog_services,
            catalog_instances,
            desired_backends,
            desired_servers,
            drift_repairs,
            skipped_services,
            conflicts,
            mass_delete_held,
            last_successful_pass,
            build_info,
            synced: Mutex::new(HashMap::new()),
            skip_reasons_seen: Mutex::new(BTreeSet::new()),
        })
    }

    /// The registry, for callers that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every series in the text exposition format (`text/plain; version=0.0.4`).
    pub fn try_render(&self) -> Result<String, prometheus::Error> {
        let mut out = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    /// [`Metrics::try_render`], logging a failure (which would be a bug in a metric definition)
    /// and returning an empty text then.
    pub fn render(&self) -> String {
        self.try_render().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot encode metrics");
            String::new()
        })
    }

    /// The `content-type` of the rendered text: `text/plain; version=0.0.4`.
    pub fn content_type(&self) -> &'static str {
        prometheus::TEXT_FORMAT
    }

    /// Handles for the client of driver `driver` (`dataplane`, `runtime`): its requests in
    /// `hnc_driver_requests_total`, their durations in `hnc_haproxy_request_duration_seconds`.
    pub fn haproxy_calls(&self, driver: &'static str) -> CallMetrics {
        CallMetrics::new(
            self.driver_requests.clone(),
            self.haproxy_request_duration.clone(),
            Some(driver),
        )
    }

    /// Handles for the Nomad client: `hnc_nomad_requests_total` and
    /// `hnc_nomad_request_duration_seconds`.
    pub fn nomad_calls(&self) -> CallMetrics {
        CallMetrics::new(
            self.nomad_requests.clone(),
            self.nomad_request_duration.clone(),
            None,
        )
    }

    /// Records a finished pass from its report: its result and duration (a successful one,
    /// `success` or `noop`, also sets the last-success timestamp, a `held` one also counts in
    /// `hnc_mass_delete_held_total`), its reloads and the catalog it saw; unless it failed, also
    /// the operations it applied (as drift repairs too when it ran with no catalog change), the
    /// event-to-applied latency, the desired model's size and the diagnostics.
    pub fn record_pass(&self, report: &PassReport) {
        let result = report.result;
        self.passes.with_label_values(&[result.as_str()]).inc();
        self.pass_duration.observe(report.duration.as_secs_f64());
        match result {
            PassResult::Success | PassResult::Noop => {
                let secs = report
                    .finished_at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.last_successful_pass.set(secs);
            }
            PassResult::Held => self.mass_delete_held.inc(),
            PassResult::Error => {}
        }
        if result != PassResult::Error {
            self.record_operations(&report.ops, report.drift);
            if let Some(latency) = report.change_to_applied {
                self.observe_event_to_applied(latency);
            }
            self.set_desired(report.desired_backends, report.desired_servers);
            self.set_diagnostics(&report.diagnostics);
        }
        let reasons: Vec<&str> = report.reloads.iter().map(|r| r.kind.as_str()).collect();
        self.record_reloads(&reasons);
        self.set_catalog(report.catalog_services, report.catalog_instances);
    }

    /// Counts applied operations by name and kind, and as drift repairs when `drift`.
    fn record_operations(&self, ops: &[PlannedOp], drift: bool) {
        for op in ops {
            self.plan_operations
                .with_label_values(&[op.name, op_kind_label(op.kind)])
                .inc();
            if drift {
                self.drift_repairs.with_label_values(&[op.name]).inc();
            }
        }
    }

    /// Counts reloads, one per reason string (as in `ApplyReport::reloads`).
    pub fn record_reloads<S: AsRef<str>>(&self, reasons: &[S]) {
        for reason in reasons {
            self.haproxy_reloads
                .with_label_values(&[reason.as_ref()])
                .inc();
        }
    }

    /// Observes one event-to-applied latency.
    pub fn observe_event_to_applied(&self, latency: Duration) {
        self.event_to_applied.observe(latency.as_secs_f64());
    }

    /// Sets the catalog gauges.
    pub fn set_catalog(&self, services: usize, instances: usize) {
        self.catalog_services.set(to_i64(services));
        self.catalog_instances.set(to_i64(instances));
    }

    /// Sets the desired-model gauges.
    pub fn set_desired(&self, backends: usize, servers: usize) {
        self.desired_backends.set(to_i64(backends));
        self.desired_servers.set(to_i64(servers));
    }

    /// Sets `hnc_skipped_services` and `hnc_conflicts` from the current diagnostics. A service
    /// counts once per reason however many diagnostics it has; reasons seen before and absent now
    /// read 0.
    pub fn set_diagnostics(&self, diagnostics: &[Diagnostic]) {
        let mut skipped: HashMap<Reason, BTreeSet<(&str, &str)>> = HashMap::new();
        let mut conflicted: BTreeSet<(&str, &str)> = BTreeSet::new();
        for d in diagnostics {
            let service = (d.namespace.as_str(), d.service.as_str());
            if d.severity == Severity::Skipped {
                skipped.entry(d.reason).or_default().insert(service);
            }
            if matches!(
                d.reason,
                Reason::BackendNameConflict | Reason::DomainConflict
            ) {
                conflicted.insert(service);
            }
        }
        let mut seen = self
            .skip_reasons_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.extend(skipped.keys().copied());
        for reason in seen.iter() {
            let n = skipped.get(reason).map_or(0, BTreeSet::len);
            self.skipped_services
                .with_label_values(&[reason.as_str()])
                .set(to_i64(n));
        }
        self.conflicts.set(to_i64(conflicted.len()));
    }

    /// Brings the series `labels` of `counter` up to `cumulative`, a count kept elsewhere that
    /// only grows (for example the watcher's event counters): adds the difference since the
    /// last call. A smaller value than last time means the source restarted from zero; then the
    /// whole value is added. Only use it for series that nothing else increments.
    pub fn sync_counter(&self, counter: &IntCounterVec, labels: &[&str], cumulative: u64) {
        let delta = self.delta(counter.desc(), labels, cumulative);
        if delta > 0 {
            counter.with_label_values(labels).inc_by(delta);
        }
    }

    /// [`Metrics::sync_counter`] for a counter without labels.
    pub fn sync_single_counter(&self, counter: &IntCounter, cumulative: u64) {
        let delta = self.delta(counter.desc(), &[], cumulative);
        if delta > 0 {
            counter.inc_by(delta);
        }
    }

    fn delta(&self, desc: Vec<&prometheus::core::Desc>, labels: &[&str], cumulative: u64) -> u64 {
        let name = desc.first().map(|d| d.fq_name.clone()).unwrap_or_default();
        let key = (name, labels.iter().map(|l| (*l).to_string()).collect());
        let mut synced = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = synced.insert(key, cumulative).unwrap_or(0);
        if cumulative >= last {
            cumulative - last
        } else {
            cumulative
        }
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(CALL_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

// The strict exposition parser the tests check `render` with lives with the test support (the
// integration tests parse `/metrics` with it too); the library never parses its own output.
#[cfg(test)]
#[path = "../tests/support/expo.rs"]
pub(crate) mod expo;

#[cfg(test)]
mod tests;
