//! Safety guards between the plan and its application. Pure.
//!
//! - Until the catalog has completed its first full sync, and while it is stale after a Nomad
//!   error, nothing owned is deleted: absence proves nothing then.
//! - A plan that would take out more than `max_delete_ratio` of the connector's servers is held
//!   until the same answer has stood for `mass_delete_hold` of real time, across at least
//!   `mass_delete_confirmations` passes and a fresh full Nomad relist completed after the hold.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::live::Live;
use crate::model::{AdminState, is_owned_server};
use crate::plan::{Action, Plan};

/// Whether an operation deletes or takes out of service something the connector owns.
pub fn is_removal(a: &Action) -> bool {
    matches!(
        a,
        Action::DrainServer { .. }
            | Action::MaintServer { .. }
            | Action::RemoveServer { .. }
            | Action::RemoveRoute { .. }
            | Action::DeleteBackend { .. }
    )
}

/// Drops every removal from `plan`; returns how many were held back.
pub fn hold_removals(plan: &mut Plan) -> usize {
    let before = plan.ops.len();
    plan.ops.retain(|o| !is_removal(&o.action));
    before - plan.ops.len()
}

/// The mass-delete guard's memory across passes.
///
/// A mass removal (more than `max_ratio` of the connector's serving servers) proceeds only when
/// the same set of servers has been planned out of service continuously, in every pass, for at
/// least `hold` of real time, in at least `min_passes` passes, and at least one full Nomad
/// relist has completed after the hold's time was up. Time and the relist count are inputs, so
/// the guard stays pure.
#[derive(Clone, Debug)]
pub struct MassDeleteGuard {
    pub max_ratio: f64,
    /// `reconcile.mass_delete_hold`.
    pub hold: Duration,
    /// `reconcile.mass_delete_confirmations`: a minimum count of passes on top of the hold.
    pub min_passes: u32,
    pending: Option<Pending>,
}

/// A mass removal being held.
#[derive(Clone, Debug)]
struct Pending {
    leaving: BTreeSet<(String, String)>,
    since: Instant,
    /// Completed relists at the first pass after the hold's time was up: the confirming relist
    /// must complete after that, so it sees Nomad as it is at the end of the hold.
    relists_at_expiry: Option<u64>,
    passes: u32,
}

/// What the guard decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Below the threshold, or confirmed: apply as planned.
    Proceed,
    /// Removals held back this pass.
    Held {
        /// Serving servers the plan would take out of service.
        servers: usize,
        /// The connector's serving servers.
        owned: usize,
        /// Consecutive passes that reached this same set, this one included.
        seen: u32,
        /// The minimum number of such passes (`reconcile.mass_delete_confirmations`).
        needed: u32,
        /// How long this set has been seen.
        held_for: Duration,
        /// `reconcile.mass_delete_hold`.
        hold: Duration,
        /// Whether a full Nomad relist has completed since the hold's time was up.
        relisted: bool,
        /// When the hold's time is up (the controller wakes then).
        until: Instant,
    },
}

impl MassDeleteGuard {
    pub fn new(max_ratio: f64, hold: Duration, min_passes: u32) -> Self {
        MassDeleteGuard {
            max_ratio,
            hold,
            min_passes,
            pending: None,
        }
    }

    /// Whether a mass removal is being held (the controller then re-checks when a relist
    /// completes).
    pub fn is_holding(&self) -> bool {
        self.pending.is_some()
    }

    /// Looks at the servers `plan` would take out of service (drains of serving servers and
    /// removals of servers that were not draining yet) against the connector's serving servers
    /// in `live`. When too many, removals are dropped from `plan` unless the same set has been
    /// seen continuously for `hold` (up to `now`), in `min_passes` passes (this one included),
    /// and the count of completed full Nomad relists (`relists`) has moved since the hold's time
    /// was up (a relist early in the hold confirms nothing about its end). A different set
    /// starts the hold again.
    pub fn check(&mut self, plan: &mut Plan, live: &Live, now: Instant, relists: u64) -> Verdict {
        let owned = live
            .backends
            .values()
            .flat_map(|b| b.servers.values())
            .filter(|s| is_owned_server(&s.name) && s.admin == AdminState::Ready)
            .count();
        let leaving: BTreeSet<(String, String)> = plan
            .ops
            .iter()
            .filter_map(|o| match &o.action {
                Action::DrainServer { backend, server } => Some((backend.clone(), server.clone())),
                Action::RemoveServer { backend, server } => live
                    .backends
                    .get(backend)
                    .and_then(|b| b.servers.get(server))
                    .filter(|s| s.admin == AdminState::Ready)
                    .map(|_| (backend.clone(), server.clone())),
                _ => None,
            })
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let too_many = owned > 0 && leaving.len() as f64 > self.max_ratio * owned as f64;
        if !too_many {
            self.pending = None;
            return Verdict::Proceed;
        }
        let mut pending = match self.pending.take() {
            Some(mut p) if p.leaving == leaving => {
                p.passes = p.passes.saturating_add(1);
                p
            }
            _ => Pending {
                leaving,
                since: now,
                relists_at_expiry: None,
                passes: 1,
            },
        };
        let held_for = now.saturating_duration_since(pending.since);
        let expired = held_for >= self.hold;
        if expired && pending.relists_at_expiry.is_none() {
            pending.relists_at_expiry = Some(relists);
        }
        let relisted = pending.relists_at_expiry.is_some_and(|r| relists > r);
        if expired && relisted && pending.passes >= self.min_passes {
            return Verdict::Proceed;
        }
        let verdict = Verdict::Held {
            servers: pending.leaving.len(),
            owned,
            seen: pending.passes,
            needed: self.min_passes,
            held_for,
            hold: self.hold,
            relisted,
            until: pending.since + self.hold,
        };
        self.pending = Some(pending);
        hold_removals(plan);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{LiveBackend, LiveServer};
    use crate::model::{Mode, OpState};
    use crate::plan::Op;

    fn live(n: usize) -> Live {
        let servers = (0..n)
            .map(|i| {
                let name = format!("hnc_10.0.0.{i}_80");
                (
                    name.clone(),
                    LiveServer {
                        name,
                        endpoint: None,
                        admin: AdminState::Ready,
                        op: OpState::Up,
                        check_enabled: true,
                        weight: 1,
                        sessions: 0,
                        drain_started: None,
                    },
                )
            })
            .collect();
        let mut l = Live::default();
        l.backends.insert(
            "web".into(),
            LiveBackend {
                name: "web".into(),
                owned: true,
                mode: Mode::Http,
                balance: None,
                settings: None,
                servers,
            },
        );
        l
    }

    fn drains(n: usize) -> Plan {
        Plan {
            ops: (0..n)
                .map(|i| {
                    Op::new(
                        Action::DrainServer {
                            backend: "web".into(),
                            server: format!("hnc_10.0.0.{i}_80"),
                        },
                        "gone",
                    )
                })
                .collect(),
            pending_drains: vec![],
            ..Plan::default()
        }
    }

    const HOLD: Duration = Duration::from_secs(60);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn taking_a_server_out_for_failing_checks_is_a_removal() {
        // Drain and maintenance for failing Nomad checks fall under the same guards as drains.
        assert!(is_removal(&Action::MaintServer {
            backend: "web".into(),
            server: "x".into()
        }));
    }

    #[test]
    fn small_removals_proceed() {
        let mut g = MassDeleteGuard::new(0.5, HOLD, 3);
        let mut p = drains(5);
        assert_eq!(
            g.check(&mut p, &live(10), Instant::now(), 0),
            Verdict::Proceed
        );
        assert_eq!(p.ops.len(), 5);
        assert!(!g.is_holding());
    }

    #[test]
    fn held_while_the_hold_has_not_elapsed_even_after_relists_and_passes() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 3);
        // Passes at debounce pace and several relists: still under the hold.
        for (i, secs) in [0, 1, 2, 3, 59].into_iter().enumerate() {
            let mut p = drains(10);
            let v = g.check(&mut p, &live(10), at(t0, secs), 5 + i as u64);
            assert!(
                matches!(
                    v,
                    Verdict::Held {
                        servers: 10,
                        owned: 10,
                        hold: HOLD,
                        ..
                    }
                ),
                "{v:?}"
            );
            assert!(p.ops.is_empty(), "removals dropped");
            if let Verdict::Held {
                held_for,
                until,
                seen,
                ..
            } = v
            {
                assert_eq!(held_for, Duration::from_secs(secs));
                assert_eq!(until, at(t0, 60));
                assert_eq!(seen, i as u32 + 1);
            }
        }
        assert!(g.is_holding());
    }

    #[test]
    fn held_after_the_hold_until_a_relist_completes_then_proceeds() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 3);
        for secs in [0, 30] {
            assert!(matches!(
                g.check(&mut drains(10), &live(10), at(t0, secs), 7),
                Verdict::Held {
                    relisted: false,
                    ..
                }
            ));
        }
        // Time is up, passes are enough, but no relist since the set was first seen.
        let mut p = drains(10);
        assert!(matches!(
            g.check(&mut p, &live(10), at(t0, 61), 7),
            Verdict::Held {
                relisted: false,
                seen: 3,
                ..
            }
        ));
        assert!(p.ops.is_empty());
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 300), 7),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        // A relist completed: the removal proceeds, with its removals intact.
        let mut p = drains(10);
        assert_eq!(g.check(&mut p, &live(10), at(t0, 301), 8), Verdict::Proceed);
        assert_eq!(p.ops.len(), 10);
    }

    #[test]
    fn a_relist_early_in_the_hold_confirms_nothing() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 3);
        assert!(matches!(
            g.check(&mut drains(10), &live(10), t0, 0),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        // A relist two seconds in says nothing about Nomad at the end of the hold.
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 2), 1),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        // Time is up: still held until a relist completes after it.
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 60), 1),
            Verdict::Held {
                relisted: false,
                seen: 3,
                ..
            }
        ));
        assert_eq!(
            g.check(&mut drains(10), &live(10), at(t0, 61), 2),
            Verdict::Proceed
        );
    }

    #[test]
    fn confirmations_remain_a_minimum_count_of_passes() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 4);
        assert!(matches!(
            g.check(&mut drains(10), &live(10), t0, 0),
            Verdict::Held { .. }
        ));
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 61), 0),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        // Hold elapsed and a relist done after it, but only the third pass.
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 62), 1),
            Verdict::Held {
                seen: 3,
                needed: 4,
                relisted: true,
                ..
            }
        ));
        assert_eq!(
            g.check(&mut drains(10), &live(10), at(t0, 63), 1),
            Verdict::Proceed
        );
    }

    #[test]
    fn a_different_set_restarts_the_hold() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 1);
        assert!(matches!(
            g.check(&mut drains(10), &live(10), t0, 0),
            Verdict::Held { .. }
        ));
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 50), 1),
            Verdict::Held { .. }
        ));
        // Another set at 55 s: the clock and the relist requirement start again.
        let v = g.check(&mut drains(9), &live(10), at(t0, 55), 1);
        assert!(
            matches!(v, Verdict::Held { seen: 1, relisted: false, held_for, until, .. }
                if held_for.is_zero() && until == at(t0, 115)),
            "{v:?}"
        );
        // The first set's hold would have ended at 60 s: it counts for nothing now.
        assert!(matches!(
            g.check(&mut drains(9), &live(10), at(t0, 114), 2),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        assert!(matches!(
            g.check(&mut drains(9), &live(10), at(t0, 115), 2),
            Verdict::Held {
                relisted: false,
                ..
            }
        ));
        assert_eq!(
            g.check(&mut drains(9), &live(10), at(t0, 116), 3),
            Verdict::Proceed
        );
    }

    #[test]
    fn a_pass_below_the_threshold_ends_the_hold() {
        let t0 = Instant::now();
        let mut g = MassDeleteGuard::new(0.5, HOLD, 1);
        g.check(&mut drains(10), &live(10), t0, 0);
        // Nomad recovered for one pass: the hold is over, not paused.
        assert_eq!(
            g.check(&mut drains(1), &live(10), at(t0, 30), 1),
            Verdict::Proceed
        );
        assert!(!g.is_holding());
        assert!(matches!(
            g.check(&mut drains(10), &live(10), at(t0, 61), 2),
            Verdict::Held { held_for, relisted: false, .. } if held_for.is_zero()
        ));
    }

    #[test]
    fn hold_removals_keeps_additions() {
        let mut p = drains(2);
        p.ops.push(Op::new(
            Action::AddRoute {
                route: crate::model::RouteKey {
                    kind: crate::model::MatchKind::Exact,
                    key: "a.test".into(),
                },
                backend: "web".into(),
            },
            "new",
        ));
        assert_eq!(hold_removals(&mut p), 2);
        assert_eq!(p.ops.len(), 1);
    }
}
