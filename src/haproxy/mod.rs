//! HAProxy drivers. A driver reads the live state into the core's [`Live`] model and executes a
//! [`Plan`]; it decides nothing. Two implementations: the Data Plane API and (in its own module)
//! the runtime/master sockets. Each is built with the metric handles
//! ([`crate::call_metrics::CallMetrics`]) its client records every request or command into.

pub mod runtime;

use std::future::Future;

use crate::desired::Desired;
use crate::live::Live;
use crate::plan::Plan;

pub mod dataplane;

/// Why a driver reloaded HAProxy (the `reason` label of `hnc_haproxy_reloads_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadKind {
    /// Backends, check settings, slot growth or frontend rules changed.
    Structural,
    /// A health check had to be re-enabled and the driver has no runtime way to do it.
    EnableCheck,
    /// A change meant for the runtime path fell back to a reload.
    Fallback,
}

impl ReloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Structural => "structural",
            ReloadKind::EnableCheck => "enable_check",
            ReloadKind::Fallback => "fallback",
        }
    }
}

/// One reload a driver caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    pub kind: ReloadKind,
    /// What changed, for people (logs, `/status`).
    pub detail: String,
}

impl Reload {
    pub fn new(kind: ReloadKind, detail: impl Into<String>) -> Reload {
        Reload {
            kind,
            detail: detail.into(),
        }
    }
}

/// What applying a plan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One entry per HAProxy reload the driver caused.
    pub reloads: Vec<Reload>,
    /// Operations executed.
    pub applied: usize,
    /// Requests or socket commands sent.
    pub requests: usize,
    /// Operations refused alone (by the driver before any request, or by HAProxy or its API),
    /// with the reason; every other operation of the plan was applied. The pass then counts as
    /// failed and is retried, and what it did apply (its reloads) is still reported.
    pub refused: Vec<String>,
}

/// A driver failure. Variants are those a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Lost a race with another writer (version conflict, outdated transaction): observe again
    /// and re-plan. Retryable at once.
    #[error("conflict with another writer: {0}")]
    Conflict(String),
    /// HAProxy or its API could not be reached or timed out. Retryable with backoff.
    #[error("HAProxy unreachable: {0}")]
    Unreachable(String),
    /// HAProxy (or the API) refused a change; the message is HAProxy's. Retryable with backoff
    /// (the next pass re-plans from a fresh observation).
    #[error("HAProxy rejected the change: {0}")]
    Rejected(String),
    /// Anything else (bad credentials, unexpected answers).
    #[error("{0}")]
    Other(String),
}

impl DriverError {
    /// A stable label for metrics and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::Conflict(_) => "conflict",
            DriverError::Unreachable(_) => "unreachable",
            DriverError::Rejected(_) => "rejected",
            DriverError::Other(_) => "other",
        }
    }
}

/// The two operations every driver provides.
pub trait Driver: Send + Sync {
    /// A short name for logs and metrics (`dataplane`, `runtime`).
    fn name(&self) -> &'static str;

    /// Reads the live state: every backend (owned or not, so the core sees taken names), the
    /// servers of owned backends and the connector's servers elsewhere, and the route maps.
    fn observe(&self) -> impl Future<Output = Result<Live, DriverError>> + Send;

    /// Executes `plan`, computed from `live` (the last observation) towards `desired`. All
    /// structural operations of one plan go into one transaction or one reload.
    fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        live: &Live,
    ) -> impl Future<Output = Result<ApplyReport, DriverError>> + Send;

    /// Called when a pass was abandoned (shutdown): release anything left open, such as a
    /// Data Plane API transaction.
    fn abandon(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
