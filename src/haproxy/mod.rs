//! HAProxy drivers. A driver reads the live state into the core's [`Live`] model and executes a
//! [`Plan`]; it decides nothing. Two implementations: the Data Plane API and (in its own module)
//! the runtime/master sockets. Each is built with the metric handles
//! ([`crate::call_metrics::CallMetrics`]) its client records every request or command into.

pub mod runtime;

use std::future::Future;

use crate::live::Live;
use crate::plan::Plan;

pub mod dataplane;
mod error;

pub use error::{Cause, DriverError};

pub use crate::plan::ReloadKind;
use crate::plan::{DriverProfile, ReloadReason};

/// One reload a driver caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    /// The `reason` label of `hnc_haproxy_reloads_total`.
    pub kind: ReloadKind,
    /// What changed, for people (logs, `/status`).
    pub detail: String,
    /// Why, typed: one of the plan's [`Plan::reloads`] (or an unplanned fallback).
    pub reason: ReloadReason,
}

impl Reload {
    pub fn new(reason: ReloadReason) -> Reload {
        Reload {
            kind: reason.kind(),
            detail: reason.to_string(),
            reason,
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

/// The two operations every driver provides.
pub trait Driver: Send + Sync {
    /// A short name for logs and metrics (`dataplane`, `runtime`).
    fn name(&self) -> &'static str;

    /// Reads the live state: every backend (owned or not, so the core sees taken names), the
    /// servers of owned backends and the connector's servers elsewhere, and the route maps.
    fn observe(&self) -> impl Future<Output = Result<Live, DriverError>> + Send;

    /// What the driver does with and without a reload: the core compiles plans for it
    /// ([`crate::plan::compile`]).
    fn profile(&self) -> DriverProfile;

    /// Executes `plan`, compiled for this driver's [`Driver::profile`] from its last observation:
    /// the plan alone says what to do. All structural operations go into one transaction or one
    /// reload, and the reloads it causes are those of [`Plan::reloads`].
    fn apply(&self, plan: &Plan) -> impl Future<Output = Result<ApplyReport, DriverError>> + Send;

    /// Called when a pass was abandoned (shutdown): release anything left open, such as a
    /// Data Plane API transaction.
    fn abandon(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
