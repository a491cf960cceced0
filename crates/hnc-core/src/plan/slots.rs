//! The slot planner: where the servers of one backend go when the driver keeps them in
//! configuration **slots** (the Data Plane API driver). Pure: from the slots a backend has (filled
//! and free, as observed) and the servers to add and remove, it decides which free slot each new
//! server fills, when the backend grows (a structural change: new slots are created in the
//! transaction, already filled with the servers that did not fit) and which slots are freed.
//!
//! Rules:
//! - a server goes into a free slot when the free slots suffice; slots freed in the same pass are
//!   not reused (they are freed after the adds, once the old server has drained);
//! - otherwise the backend grows to [`slot_target`] slots: the free slots are filled first, in
//!   slot order, and the servers left over fill the first new slots;
//! - a backend the pass creates has no slots: all its servers go into new slots.

use serde::Serialize;

use crate::live::SlotCarries;
use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, Mode, SERVER_PREFIX,
};

/// Slots a backend starts with at least.
pub const MIN_SLOTS: usize = 4;

/// The name of slot `n` (1-based), zero-padded so names sort in slot order.
pub fn slot_name(n: usize) -> String {
    format!("{SERVER_PREFIX}slot_{n:04}")
}

/// The slot number of a slot name.
pub fn slot_number(name: &str) -> Option<usize> {
    name.strip_prefix(SERVER_PREFIX)?
        .strip_prefix("slot_")?
        .parse()
        .ok()
}

/// Slots to have for `needed` servers when there are `current`: unchanged when they fit;
/// otherwise doubled (at least to the next power of two ≥ `needed`, at least [`MIN_SLOTS`]).
pub fn slot_target(current: usize, needed: usize) -> usize {
    if needed <= current {
        return current;
    }
    needed.next_power_of_two().max(current * 2).max(MIN_SLOTS)
}

/// A server to place: its address and weight (what a slot write carries besides the backend's
/// check settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SlotServer {
    pub endpoint: Endpoint,
    pub weight: u16,
}

/// A slot created by growth, filled or left empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewSlot {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<SlotServer>,
}

/// The slots of one backend as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendSlots<'a> {
    /// Names of the slots holding a server.
    pub filled: Vec<&'a str>,
    /// Names of the empty slots.
    pub free: Vec<&'a str>,
}

impl BackendSlots<'_> {
    /// Slots in all (the highest slot number, when names have gaps).
    fn count(&self) -> usize {
        self.filled
            .iter()
            .chain(&self.free)
            .filter_map(|n| slot_number(n))
            .max()
            .unwrap_or(0)
            .max(self.filled.len() + self.free.len())
    }
}

/// One slot operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotOp {
    /// Create the slots `slots` (structural), so the backend has `to`.
    Grow { to: usize, slots: Vec<NewSlot> },
    /// Write `server` into the free slot `slot` (run time).
    Fill { slot: String, server: SlotServer },
    /// Empty the slot `slot` (run time).
    Free { slot: String },
}

/// The slot operations of one backend: `adds` in the given order, `removes` by slot name.
/// Growth comes first, then fills, then frees.
pub fn plan_slots(have: &BackendSlots<'_>, adds: &[SlotServer], removes: &[&str]) -> Vec<SlotOp> {
    let mut ops = Vec::new();
    let free = &have.free;
    let fit = adds.len().min(free.len());
    if adds.len() > free.len() {
        let current = have.count();
        let to = slot_target(current, have.filled.len() + adds.len());
        let mut left = adds[fit..].iter();
        let slots = (current + 1..=to)
            .map(|n| NewSlot {
                name: slot_name(n),
                server: left.next().copied(),
            })
            .collect();
        ops.push(SlotOp::Grow { to, slots });
    }
    for (slot, server) in free.iter().zip(&adds[..fit]) {
        ops.push(SlotOp::Fill {
            slot: (*slot).to_string(),
            server: *server,
        });
    }
    for slot in removes {
        ops.push(SlotOp::Free {
            slot: (*slot).to_string(),
        });
    }
    ops
}

/// What a slot written with `own` (the settings a slot carries itself, `None` in the
/// connector's own backends) carries: the fields the Data Plane API driver's slot body sets.
pub fn carries(own: Option<&BackendSettings>) -> SlotCarries {
    let Some(s) = own else {
        return SlotCarries::default();
    };
    let timing = s.check.timing();
    SlotCarries {
        check: Some(s.check.is_enabled()),
        inter: timing.map(|t| t.interval_ms),
        rise: timing.map(|t| t.rise),
        fall: timing.map(|t| t.fall),
        maxconn: s.maxconn,
    }
}

/// Settings that, written on a slot, make it carry `c` again ([`carries`] of them is `c`), for a
/// slot freed in a backend no longer desired: only the fields a slot carries matter (mode and
/// balance are placeholders). `None` for a slot carrying nothing.
pub fn settings_carrying(c: &SlotCarries) -> Option<BackendSettings> {
    let check_enabled = c.check?;
    let check = match (check_enabled, c.inter, c.rise, c.fall) {
        (true, Some(interval_ms), Some(rise), Some(fall)) => CheckSpec::Tcp {
            timing: CheckTiming {
                interval_ms,
                timeout_ms: interval_ms,
                rise,
                fall,
            },
        },
        _ => CheckSpec::None,
    };
    let s = BackendSettings {
        mode: Mode::Http,
        balance: Balance::Roundrobin,
        check,
        maxconn: c.maxconn,
        timeouts: Default::default(),
        sticky: None,
        tls: None,
    };
    (carries(Some(&s)) == *c).then_some(s)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn growth_rule() {
        assert_eq!(slot_name(3), "hnc_slot_0003");
        assert_eq!(slot_number("hnc_slot_0003"), Some(3));
        assert_eq!(slot_number("hnc_10.0.0.1_80"), None);
        assert_eq!(slot_target(0, 3), 4);
        assert_eq!(slot_target(4, 4), 4);
        assert_eq!(slot_target(4, 5), 8);
        assert_eq!(slot_target(8, 9), 16);
        assert_eq!(slot_target(8, 40), 64);
    }

    #[test]
    fn a_new_backend_gets_its_servers_in_new_slots() {
        let e = |i: u8| SlotServer {
            endpoint: Endpoint::new(format!("10.0.0.{i}").parse().expect("ip"), 80),
            weight: 1,
        };
        let ops = plan_slots(&BackendSlots::default(), &[e(1), e(2)], &[]);
        assert_eq!(
            ops,
            vec![SlotOp::Grow {
                to: 4,
                slots: vec![
                    NewSlot {
                        name: slot_name(1),
                        server: Some(e(1))
                    },
                    NewSlot {
                        name: slot_name(2),
                        server: Some(e(2))
                    },
                    NewSlot {
                        name: slot_name(3),
                        server: None
                    },
                    NewSlot {
                        name: slot_name(4),
                        server: None
                    },
                ]
            }]
        );
    }

    /// Hostile inputs: slot lists full, empty or with gaps, colliding endpoints, many adds.
    fn case() -> impl Strategy<Value = (Vec<bool>, Vec<(u8, u16)>, Vec<usize>)> {
        (
            prop::collection::vec(any::<bool>(), 0..40),
            prop::collection::vec((0u8..6, 1u16..4), 0..70),
            prop::collection::vec(0usize..40, 0..10),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn slots_are_never_shared_and_grow_only_when_needed((layout, adds, removes) in case()) {
            let names: Vec<String> = (1..=layout.len()).map(slot_name).collect();
            let have = BackendSlots {
                filled: names.iter().zip(&layout).filter(|(_, f)| **f).map(|(n, _)| n.as_str()).collect(),
                free: names.iter().zip(&layout).filter(|(_, f)| !**f).map(|(n, _)| n.as_str()).collect(),
            };
            let adds: Vec<SlotServer> = adds.iter().map(|(a, w)| SlotServer {
                endpoint: Endpoint::new(format!("10.0.0.{a}").parse().expect("ip"), 80),
                weight: *w,
            }).collect();
            // Removals name filled slots only (a slot holds the server being removed).
            let removes: Vec<&str> = removes.iter().filter_map(|i| have.filled.get(*i).copied())
                .collect::<BTreeSet<_>>().into_iter().collect();
            let ops = plan_slots(&have, &adds, &removes);

            let mut taken: BTreeSet<String> = have.filled.iter().map(|s| s.to_string()).collect();
            let existing: BTreeSet<String> = names.iter().cloned().collect();
            let mut placed = Vec::new();
            let mut grown = 0;
            for op in &ops {
                match op {
                    SlotOp::Grow { to, slots } => {
                        grown += 1;
                        prop_assert!(adds.len() > have.free.len(), "grew with enough free slots");
                        prop_assert!(have.free.iter().all(|f| ops.iter().any(|o| matches!(o, SlotOp::Fill { slot, .. } if slot == f))),
                            "grew before using every free slot");
                        prop_assert_eq!(*to, layout.len() + slots.len());
                        prop_assert!(*to >= have.filled.len() + adds.len());
                        for s in slots {
                            prop_assert!(!existing.contains(&s.name), "a new slot reuses {}", s.name);
                            if let Some(server) = s.server {
                                prop_assert!(taken.insert(s.name.clone()), "two servers in {}", s.name);
                                placed.push(server);
                            }
                        }
                    }
                    SlotOp::Fill { slot, server } => {
                        prop_assert!(have.free.contains(&slot.as_str()), "filled {} which was not free", slot);
                        prop_assert!(taken.insert(slot.clone()), "two servers in {}", slot);
                        placed.push(*server);
                    }
                    SlotOp::Free { slot } => prop_assert!(removes.contains(&slot.as_str())),
                }
            }
            prop_assert!(grown <= 1);
            // Every add lands in exactly one slot, in order (free slots first).
            let mut want = adds.clone();
            let mut got = placed.clone();
            want.sort();
            got.sort();
            prop_assert_eq!(want, got);
            prop_assert_eq!(ops.iter().filter(|o| matches!(o, SlotOp::Free { .. })).count(), removes.len());
        }
    }
}
