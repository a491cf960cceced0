//! Safety guards between the plan and its application. Pure.
//!
//! - Until the catalog has completed its first full sync, and while it is stale after a Nomad
//!   error, nothing owned is deleted: absence proves nothing then.
//! - A plan that would take out more than `max_delete_ratio` of the connector's servers is held
//!   until the same answer has come `confirmations` passes in a row.

use std::collections::BTreeSet;

use crate::live::Live;
use crate::model::{AdminState, is_owned_server};
use crate::plan::{Action, Plan};

/// Whether an operation deletes or takes out of service something the connector owns.
pub fn is_removal(a: &Action) -> bool {
    matches!(
        a,
        Action::DrainServer { .. }
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
#[derive(Clone, Debug)]
pub struct MassDeleteGuard {
    pub max_ratio: f64,
    pub confirmations: u32,
    last: Option<BTreeSet<(String, String)>>,
    seen: u32,
}

/// What the guard decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Below the threshold, or confirmed: apply as planned.
    Proceed,
    /// Held back this pass; `seen` of `needed` consecutive passes so far.
    Held {
        servers: usize,
        owned: usize,
        seen: u32,
        needed: u32,
    },
}

impl MassDeleteGuard {
    pub fn new(max_ratio: f64, confirmations: u32) -> Self {
        MassDeleteGuard {
            max_ratio,
            confirmations,
            last: None,
            seen: 0,
        }
    }

    /// Looks at the servers `plan` would take out of service (drains of serving servers and
    /// removals of servers that were not draining yet) against the connector's serving servers
    /// in `live`. When too many, removals are dropped from `plan` unless the same set has been
    /// seen `confirmations` passes in a row (this one included).
    pub fn check(&mut self, plan: &mut Plan, live: &Live) -> Verdict {
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
            self.last = None;
            self.seen = 0;
            return Verdict::Proceed;
        }
        if self.last.as_ref() == Some(&leaving) {
            self.seen += 1;
        } else {
            self.last = Some(leaving.clone());
            self.seen = 1;
        }
        if self.seen >= self.confirmations {
            self.last = None;
            self.seen = 0;
            return Verdict::Proceed;
        }
        hold_removals(plan);
        Verdict::Held {
            servers: leaving.len(),
            owned,
            seen: self.seen,
            needed: self.confirmations,
        }
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
        }
    }

    #[test]
    fn small_removals_proceed() {
        let mut g = MassDeleteGuard::new(0.5, 3);
        let mut p = drains(5);
        assert_eq!(g.check(&mut p, &live(10)), Verdict::Proceed);
        assert_eq!(p.ops.len(), 5);
    }

    #[test]
    fn mass_removal_is_held_until_confirmed() {
        let mut g = MassDeleteGuard::new(0.5, 3);
        for seen in 1..=2 {
            let mut p = drains(10);
            assert_eq!(
                g.check(&mut p, &live(10)),
                Verdict::Held {
                    servers: 10,
                    owned: 10,
                    seen,
                    needed: 3
                }
            );
            assert!(p.ops.is_empty());
        }
        let mut p = drains(10);
        assert_eq!(g.check(&mut p, &live(10)), Verdict::Proceed);
        assert_eq!(p.ops.len(), 10);
    }

    #[test]
    fn a_different_answer_restarts_the_count() {
        let mut g = MassDeleteGuard::new(0.5, 2);
        assert!(matches!(
            g.check(&mut drains(10), &live(10)),
            Verdict::Held { seen: 1, .. }
        ));
        assert!(matches!(
            g.check(&mut drains(9), &live(10)),
            Verdict::Held { seen: 1, .. }
        ));
        assert_eq!(g.check(&mut drains(9), &live(10)), Verdict::Proceed);
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
