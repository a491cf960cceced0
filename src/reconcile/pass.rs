//! One reconcile pass. It never sees why it runs: it takes the catalog snapshot and the policy,
//! observes HAProxy, plans and (unless asked only to plan) applies. A lost race with another
//! writer (a version conflict) re-observes and re-plans, a bounded number of times.

use std::time::Instant;

use super::drains::DrainClock;
use crate::catalog::Snapshot;
use crate::desired::{BuildError, Desired, Policy, build};
use crate::haproxy::{ApplyReport, Driver, DriverError};
use crate::live::Live;
use crate::plan::{Plan, diff};

/// How many times a pass re-plans after losing a race before it reports the conflict.
pub const MAX_CONFLICT_RETRIES: u32 = 3;

/// What a pass computed and did.
#[derive(Debug)]
pub struct PassOutcome {
    pub desired: Desired,
    pub live: Live,
    pub plan: Plan,
    /// `None` when the pass only planned.
    pub report: Option<ApplyReport>,
    /// Attempts made (1 unless conflicts forced re-planning).
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot observe HAProxy: {0}")]
    Observe(#[source] DriverError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot apply the plan: {0}")]
    Apply(#[source] DriverError),
}

/// Runs one pass with `driver`. `apply` false computes the plan only.
pub async fn run_pass<D: Driver>(
    driver: &D,
    snapshot: &Snapshot,
    policy: &Policy,
    drains: &mut DrainClock,
    apply: bool,
) -> Result<PassOutcome, PassError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut live = driver.observe().await.map_err(PassError::Observe)?;
        let now = Instant::now();
        drains.stamp(&mut live, now);
        let desired = build(snapshot, &live, policy)?;
        let plan = diff(&desired, &live, now, policy);
        if !apply || plan.is_empty() {
            return Ok(PassOutcome {
                desired,
                live,
                plan,
                report: None,
                attempts,
            });
        }
        match driver.apply(&plan, &desired, &live).await {
            Ok(report) => {
                return Ok(PassOutcome {
                    desired,
                    live,
                    plan,
                    report: Some(report),
                    attempts,
                });
            }
            Err(DriverError::Conflict(why)) if attempts <= MAX_CONFLICT_RETRIES => {
                tracing::info!(attempt = attempts, reason = %why, "lost a race with another writer; re-planning");
            }
            Err(e) => return Err(PassError::Apply(e)),
        }
    }
}
