//! The one account of a finished pass: what it saw, planned, applied, refused and reloaded, how it
//! ended and how long it took. The controller builds a [`PassReport`] after every pass; metrics
//! (`Metrics::record_pass`) and the status board (`Status::record_pass`) each record from it, and
//! nothing else describes a pass.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::pass::{PassError, PassOutcome};
use crate::catalog::Snapshot;
use crate::desired::Diagnostic;
use crate::haproxy::{Cause, DriverError, Reload};
use crate::plan::{OpKind, PendingDrain};
use hnc_core::guards::Verdict;

/// How a reconcile pass ended (the `result` label of `hnc_passes_total`, and `/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassResult {
    /// Changes were applied.
    Success,
    /// Nothing to do: live HAProxy already matched.
    Noop,
    /// The pass failed (observe, build or apply error, or operations refused).
    Error,
    /// The plan would delete too many owned servers and is held back by the mass-delete guard.
    Held,
}

impl PassResult {
    pub const ALL: [PassResult; 4] = [
        PassResult::Success,
        PassResult::Noop,
        PassResult::Error,
        PassResult::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PassResult::Success => "success",
            PassResult::Noop => "noop",
            PassResult::Error => "error",
            PassResult::Held => "held",
        }
    }

    /// Whether the pass counts as successful (HAProxy matches what was decided).
    pub fn is_success(self) -> bool {
        matches!(self, PassResult::Success | PassResult::Noop)
    }
}

/// One planned operation, as reports count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedOp {
    /// The operation's name (`add_server`, `create_backend`, …).
    pub name: &'static str,
    pub kind: OpKind,
}

/// What one pass saw, planned, applied, refused and reloaded; its result and timings.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    // How it ended.
    pub result: PassResult,
    /// The error, for a failed pass.
    pub error: Option<String>,
    /// `observe`, `apply` or `conflict` when the pass failed.
    pub error_kind: Option<&'static str>,
    /// The pass failed because HAProxy could not be reached.
    pub haproxy_unreachable: bool,

    // Timings.
    /// Wall-clock time the pass ended.
    pub finished_at: SystemTime,
    /// Wall time of the pass, observe to the end of apply (re-plans included).
    pub duration: Duration,
    /// Observe-plan-apply rounds (1 unless a lost race forced re-planning).
    pub attempts: u32,
    /// Time from the first catalog change this pass covers to its successful application.
    pub change_to_applied: Option<Duration>,

    // What it saw.
    pub catalog_services: usize,
    pub catalog_instances: usize,
    pub desired_backends: usize,
    pub desired_servers: usize,
    pub diagnostics: Vec<Diagnostic>,

    // What it planned (after the guards) and held back.
    pub ops: Vec<PlannedOp>,
    pub pending_drains: Vec<PendingDrain>,
    /// Removals held back because the catalog was not complete or not current.
    pub held_untrusted: usize,
    /// The mass-delete guard's verdict, when it held removals back.
    pub held_mass_delete: Option<Verdict>,
    /// The pass ran with no catalog change since the last successful one: whatever it changed
    /// had drifted in HAProxy.
    pub drift: bool,

    // What the driver did.
    /// Operations the driver executed.
    pub applied: usize,
    /// Requests or socket commands the driver sent to apply.
    pub requests: usize,
    /// Operations refused alone, with the reason (the pass then failed).
    pub refused: Vec<String>,
    /// One entry per HAProxy reload the pass caused.
    pub reloads: Vec<Reload>,
}

impl PassReport {
    /// The report of a pass that ended at `finished_at` with `result` after `duration`, and saw,
    /// planned and did nothing (the other fields are for the caller to fill in).
    pub fn new(result: PassResult, finished_at: SystemTime, duration: Duration) -> PassReport {
        PassReport {
            result,
            error: None,
            error_kind: None,
            haproxy_unreachable: false,
            finished_at,
            duration,
            attempts: 0,
            change_to_applied: None,
            catalog_services: 0,
            catalog_instances: 0,
            desired_backends: 0,
            desired_servers: 0,
            diagnostics: Vec::new(),
            ops: Vec::new(),
            pending_drains: Vec::new(),
            held_untrusted: 0,
            held_mass_delete: None,
            drift: false,
            applied: 0,
            requests: 0,
            refused: Vec::new(),
            reloads: Vec::new(),
        }
    }

    /// The report of a pass over `snapshot` started at `started`. `drift`: no catalog change
    /// since the last successful pass; `change`: when the first change this pass covers arrived.
    /// Logs the operations applied and a held mass removal.
    pub fn from_outcome(
        snapshot: &Snapshot,
        outcome: Result<PassOutcome, PassError>,
        started: Instant,
        drift: bool,
        change: Option<Instant>,
    ) -> PassReport {
        let mut r = PassReport::new(PassResult::Error, SystemTime::now(), started.elapsed());
        r.catalog_services = snapshot.services.len();
        r.catalog_instances = snapshot.services.values().map(|s| s.instances.len()).sum();
        let o = match outcome {
            Err(e) => {
                r.error_kind = Some(e.kind());
                r.haproxy_unreachable = e.haproxy_unreachable();
                r.error = Some(e.to_string());
                return r;
            }
            Ok(o) => o,
        };
        r.attempts = o.attempts;
        r.desired_backends = o.desired.backends.len();
        r.desired_servers = o.desired.backends.values().map(|b| b.servers.len()).sum();
        r.diagnostics = o.desired.diagnostics;
        r.pending_drains = o.plan.pending_drains.clone();
        r.held_untrusted = o.held_untrusted;
        r.held_mass_delete = o.held_mass_delete;
        r.ops = o
            .plan
            .ops
            .iter()
            .map(|op| PlannedOp {
                name: op.action.name(),
                kind: op.kind,
            })
            .collect();
        if let Some(applied) = o.report {
            r.applied = applied.applied;
            r.requests = applied.requests;
            r.refused = applied.refused;
            r.reloads = applied.reloads;
        }
        r.drift = drift && !r.ops.is_empty();
        r.change_to_applied = change.filter(|_| r.refused.is_empty()).map(|c| c.elapsed());
        r.result = if !r.refused.is_empty() {
            // Refused operations fail the pass (retried with backoff); the rest was applied,
            // and its reloads are reported.
            let e = PassError::Apply(DriverError::Rejected(Cause::Message(r.refused.join("; "))));
            r.error_kind = Some(e.kind());
            r.error = Some(e.to_string());
            PassResult::Error
        } else if r.held_mass_delete.is_some() {
            PassResult::Held
        } else if r.ops.is_empty() {
            PassResult::Noop
        } else {
            PassResult::Success
        };
        for op in &o.plan.ops {
            tracing::info!(
                op = op.action.name(),
                backend = op.action.backend().unwrap_or(""),
                server = op.action.server().unwrap_or(""),
                reason = %op.reason,
                "applied"
            );
        }
        if let Some(Verdict::Held {
            servers,
            owned,
            seen,
            needed,
            held_for,
            hold,
            relisted,
            ..
        }) = &r.held_mass_delete
        {
            tracing::warn!(
                servers,
                owned,
                passes = seen,
                min_passes = needed,
                held_for = ?held_for,
                hold = ?hold,
                relisted,
                "mass removal held back until it has stood for the hold across a fresh Nomad relist"
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::ApplyReport;
    use crate::live::Live;
    use crate::plan::{Plan, ReloadReason, StructuralChange};

    /// A pass whose driver refused some operations alone is a failed pass (retried), and what
    /// it did apply, its reloads included, is still reported.
    #[test]
    fn refused_operations_fail_the_pass_and_keep_its_reloads() {
        let report = ApplyReport {
            reloads: vec![Reload::new(ReloadReason::Structural {
                changes: vec![StructuralChange::CreateBackend {
                    backend: "web".into(),
                }],
            })],
            applied: 2,
            requests: 5,
            refused: vec!["route regex (?u)x: refused".into()],
        };
        let outcome = PassOutcome {
            desired: crate::desired::Desired::default(),
            live: Live::default(),
            plan: Plan::default(),
            report: Some(report),
            attempts: 1,
            held_untrusted: 0,
            held_mass_delete: None,
        };
        let started = Instant::now();
        let r = PassReport::from_outcome(
            &Snapshot::default(),
            Ok(outcome),
            started,
            false,
            Some(started),
        );
        assert_eq!(r.result, PassResult::Error);
        assert_eq!(r.error_kind, Some("apply"));
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("(?u)x")),
            "{:?}",
            r.error
        );
        assert_eq!(r.reloads.len(), 1, "the reload that happened is recorded");
        assert_eq!(r.change_to_applied, None, "the change is not applied yet");
        assert_eq!((r.applied, r.requests, r.attempts), (2, 5, 1));
        assert_eq!(r.refused, vec!["route regex (?u)x: refused".to_string()]);
    }
}
