//! One reconcile pass. It never sees why it runs: it takes the catalog snapshot and the policy,
//! observes HAProxy, plans, applies the guards and (unless asked only to plan) applies. A lost
//! race with another writer (a version conflict) re-observes and re-plans, a bounded number of
//! times.

use std::time::Instant;

use crate::catalog::Snapshot;
use crate::desired::{BuildError, Desired, Policy, build};
use crate::haproxy::{ApplyReport, Driver, DriverError};
use crate::live::Live;
use crate::plan::{Plan, compile, diff};
use hnc_core::drains::DrainClock;
use hnc_core::guards::{MassDeleteGuard, Verdict, hold_removals};

/// How many times a pass re-plans after losing a race before it reports the conflict.
pub const MAX_CONFLICT_RETRIES: u32 = 3;

/// What a pass computed and did.
#[derive(Debug)]
pub struct PassOutcome {
    pub desired: Desired,
    pub live: Live,
    /// The plan as applied (after the guards).
    pub plan: Plan,
    /// `None` when the pass only planned, or there was nothing to do.
    pub report: Option<ApplyReport>,
    /// Attempts made (1 unless conflicts forced re-planning).
    pub attempts: u32,
    /// Removals held back because the catalog is not complete or not current.
    pub held_untrusted: usize,
    /// The mass-delete guard's verdict, when it held removals back.
    pub held_mass_delete: Option<Verdict>,
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

impl PassError {
    /// Whether HAProxy (or its API) could not be reached, as opposed to refusing a change.
    pub fn haproxy_unreachable(&self) -> bool {
        matches!(
            self,
            PassError::Observe(DriverError::Unreachable(_))
                | PassError::Apply(DriverError::Unreachable(_))
        )
    }

    /// A stable label (metrics, readiness reasons).
    pub fn kind(&self) -> &'static str {
        match self {
            PassError::Observe(_) => "observe",
            PassError::Build(_) => "conflict",
            PassError::Apply(_) => "apply",
        }
    }
}

/// Runs one pass with `driver`, with the untrusted-catalog guard only. `apply` false computes
/// the plan only.
pub async fn run_pass<D: Driver>(
    driver: &D,
    snapshot: &Snapshot,
    policy: &Policy,
    drains: &mut DrainClock,
    apply: bool,
) -> Result<PassOutcome, PassError> {
    run_guarded_pass(driver, snapshot, policy, drains, None, apply).await
}

/// The mass-delete guard and what it needs to know besides the plan: how many full Nomad
/// relists have completed so far, and the time of the pass (the caller's clock).
pub struct MassCheck<'a> {
    pub guard: &'a mut MassDeleteGuard,
    pub relists: u64,
    pub now: Instant,
}

/// Runs one pass with both guards: removals are held while the catalog is not synced or is
/// stale, and mass removals go through `mass` when given.
pub async fn run_guarded_pass<D: Driver>(
    driver: &D,
    snapshot: &Snapshot,
    policy: &Policy,
    drains: &mut DrainClock,
    mut mass: Option<MassCheck<'_>>,
    apply: bool,
) -> Result<PassOutcome, PassError> {
    let mut attempts = 0;
    // The mass-delete guard counts passes, not attempts: it is consulted once per pass.
    let mut mass_verdict: Option<Verdict> = None;
    loop {
        attempts += 1;
        let mut live = driver.observe().await.map_err(PassError::Observe)?;
        let now = Instant::now();
        drains.stamp(&mut live, now);
        let desired = build(snapshot, &live, policy)?;
        let mut plan = diff(&desired, &live, now, policy);
        let held_untrusted = if snapshot.synced && snapshot.stale.is_none() {
            0
        } else {
            hold_removals(&mut plan)
        };
        let held_mass_delete = match (mass.as_mut(), &mass_verdict) {
            (Some(m), None) if apply => {
                let v = m.guard.check(&mut plan, &live, m.now, m.relists);
                mass_verdict = Some(v.clone());
                (v != Verdict::Proceed).then_some(v)
            }
            (_, Some(held @ Verdict::Held { .. })) => {
                hold_removals(&mut plan);
                Some(held.clone())
            }
            _ => None,
        };
        // Made exact for the driver (slots, reloads, re-adds) once the guards have spoken.
        let plan = compile(plan, &desired, &live, &driver.profile());
        if !apply || plan.is_empty() {
            return Ok(PassOutcome {
                desired,
                live,
                plan,
                report: None,
                attempts,
                held_untrusted,
                held_mass_delete,
            });
        }
        match driver.apply(&plan).await {
            Ok(report) => {
                return Ok(PassOutcome {
                    desired,
                    live,
                    plan,
                    report: Some(report),
                    attempts,
                    held_untrusted,
                    held_mass_delete,
                });
            }
            Err(DriverError::Conflict(why)) if attempts <= MAX_CONFLICT_RETRIES => {
                tracing::info!(attempt = attempts, reason = %why, "lost a race with another writer; re-planning");
            }
            Err(e) => return Err(PassError::Apply(e)),
        }
    }
}
