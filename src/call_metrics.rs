//! Metric handles a client records its own calls into (linkerd's policy controller records its
//! patch calls the same way: every call counted by outcome, and its duration observed).
//!
//! [`crate::metrics::Metrics`] creates the series and hands each client a [`CallMetrics`] when the
//! client is built: the Data Plane API client and the runtime socket client record into
//! `hnc_driver_requests_total` and `hnc_haproxy_request_duration_seconds{driver,…}`, the Nomad
//! client into `hnc_nomad_requests_total` and `hnc_nomad_request_duration_seconds`. A client
//! built outside the `run` command (`plan`, `check-config`, tests) gets [`CallMetrics::disabled`].
//!
//! This module knows prometheus handles only, nothing of the connector, so the clients that use it
//! do not depend on the metrics registry (or on what it depends on).

use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec};

/// `status` label of a call that got no answer within its timeout.
pub const STATUS_TIMEOUT: &str = "timeout";
/// `status` label of a call that got no answer for another reason (refused, reset, TLS).
pub const STATUS_ERROR: &str = "error";

/// Handles on one client's series: a request counter `{endpoint,status}` and a duration
/// histogram `{[driver,]endpoint,status}`. Cheap to clone (the handles are shared).
#[derive(Clone, Debug, Default)]
pub struct CallMetrics {
    series: Option<Series>,
}

#[derive(Clone, Debug)]
struct Series {
    requests: IntCounterVec,
    durations: HistogramVec,
    /// The label value put before `endpoint` and `status` on the histogram (the driver name);
    /// `None` when the histogram has only those two.
    scope: Option<&'static str>,
}

impl CallMetrics {
    /// Handles recording into `requests` (labels `endpoint`, `status`) and `durations` (labels
    /// `driver`, `endpoint`, `status` when `scope` is given, else `endpoint`, `status`).
    pub fn new(
        requests: IntCounterVec,
        durations: HistogramVec,
        scope: Option<&'static str>,
    ) -> CallMetrics {
        CallMetrics {
            series: Some(Series {
                requests,
                durations,
                scope,
            }),
        }
    }

    /// Handles that record nothing.
    pub fn disabled() -> CallMetrics {
        CallMetrics { series: None }
    }

    /// Counts one call to `endpoint` that ended with `status`, and observes its duration.
    pub fn record(&self, endpoint: &str, status: &str, elapsed: Duration) {
        self.count(endpoint, status);
        self.observe(endpoint, status, elapsed);
    }

    /// Counts one call (or one event such as a reload) without a duration.
    pub fn count(&self, endpoint: &str, status: &str) {
        let Some(s) = &self.series else { return };
        match s.requests.get_metric_with_label_values(&[endpoint, status]) {
            Ok(c) => c.inc(),
            Err(e) => tracing::error!(error = %e, "cannot count a call (metric definition bug)"),
        }
    }

    /// Observes one call's duration without counting it (the runtime driver counts socket
    /// commands under one documented label pair and times them by command).
    pub fn observe(&self, endpoint: &str, status: &str, elapsed: Duration) {
        let Some(s) = &self.series else { return };
        let h = match s.scope {
            Some(scope) => s
                .durations
                .get_metric_with_label_values(&[scope, endpoint, status]),
            None => s
                .durations
                .get_metric_with_label_values(&[endpoint, status]),
        };
        match h {
            Ok(h) => h.observe(elapsed.as_secs_f64()),
            Err(e) => tracing::error!(error = %e, "cannot time a call (metric definition bug)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, Opts};

    use super::*;

    fn vecs(labels: &[&str]) -> (IntCounterVec, HistogramVec) {
        let requests =
            IntCounterVec::new(Opts::new("t_total", "t"), &["endpoint", "status"]).expect("c");
        let durations = HistogramVec::new(HistogramOpts::new("t_seconds", "t"), labels).expect("h");
        (requests, durations)
    }

    #[test]
    fn a_call_is_counted_and_timed_under_its_labels() {
        let (requests, durations) = vecs(&["driver", "endpoint", "status"]);
        let calls = CallMetrics::new(requests.clone(), durations.clone(), Some("runtime"));
        calls.record("show_proc", "ok", Duration::from_millis(3));
        calls.count("reload", "ok");
        assert_eq!(requests.with_label_values(&["show_proc", "ok"]).get(), 1);
        assert_eq!(requests.with_label_values(&["reload", "ok"]).get(), 1);
        let h = durations.with_label_values(&["runtime", "show_proc", "ok"]);
        assert_eq!(h.get_sample_count(), 1);
        assert!((h.get_sample_sum() - 0.003).abs() < 1e-9);
    }

    #[test]
    fn wrong_arity_and_disabled_handles_record_nothing_and_never_panic() {
        let (requests, durations) = vecs(&["endpoint", "status"]);
        // A scope on a two-label histogram is a definition bug: logged, not a panic.
        let calls = CallMetrics::new(requests.clone(), durations, Some("x"));
        calls.record("list", "200", Duration::from_millis(1));
        assert_eq!(requests.with_label_values(&["list", "200"]).get(), 1);
        CallMetrics::disabled().record("list", "200", Duration::from_millis(1));
    }
}
