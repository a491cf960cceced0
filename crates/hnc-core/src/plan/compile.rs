//! `compile(plan, desired, live, profile)`: the driver-neutral plan of [`super::diff`] (after the
//! guards) made exact for one driver. Pure. It
//! - places new servers in slots for a slot driver ([`super::slots`]): an add takes a free slot
//!   (the plan's server name is the slot's), or the backend grows with a structural
//!   [`Action::GrowSlots`] that creates the new slots already filled;
//! - replaces the route changes a driver cannot address one key at a time by a whole-map
//!   [`Action::RewriteMap`];
//! - marks the slot writes the API can only apply with a reload (what a slot carries itself
//!   changes), which the driver then makes with a synchronous reload at their place;
//! - adds, after a reload, the servers the reload drops ([`Action::ReaddServer`]);
//! - lists the reloads executing the plan costs, with their typed reasons ([`Plan::reloads`]);
//! - carries the configuration version seen and, for a driver that persists it, the state the
//!   plan leads to ([`Plan::outcome`]).

use std::collections::{BTreeMap, BTreeSet};

use super::outcome::{apply, outcome};
use super::reload::{DriverProfile, ReloadReason, ServerPlacement, StructuralChange};
use super::slots::{
    BackendSlots, SlotOp, SlotServer, carries, plan_slots, settings_carrying, slot_number,
};
use super::{Action, Op, OpKind, Plan};
use crate::desired::{Desired, Ownership};
use crate::live::Live;
use crate::model::{AdminState, MatchKind, is_owned_server};

/// Whether `key` can stand in a map file line as it is (no whitespace or line end splits it).
pub fn addressable_in_file(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('#')
        && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The plan `plan` (computed from `live` towards `desired`) as `profile`'s driver executes it.
pub fn compile(mut plan: Plan, desired: &Desired, live: &Live, profile: &DriverProfile) -> Plan {
    plan.version = live.version;
    let mut fallbacks = BTreeSet::new();
    if profile.servers == ServerPlacement::Slots {
        place_in_slots(&mut plan, desired, live);
        fallbacks = slot_writes_that_reload(&mut plan, live);
    }
    if let Some(addressable) = profile.route_addressable {
        rewrite_maps(&mut plan, desired, addressable);
    }
    // The ops added go to their phase; the others keep their order (a stable sort by phase).
    plan.ops.sort_by_key(|o| o.action.phase());
    if profile.readd_after_reload && plan.has_structural() {
        readd(&mut plan, desired, live);
    }
    plan.reloads = Some(reloads(&plan, profile, &fallbacks));
    if profile.persists_outcome {
        plan.outcome = Some(outcome(live, &plan, desired));
    }
    plan
}

fn place_in_slots(plan: &mut Plan, desired: &Desired, live: &Live) {
    let deleted: BTreeSet<String> = plan
        .ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::DeleteBackend { backend } => Some(backend.clone()),
            _ => None,
        })
        .collect();
    // A deleted backend takes its servers with it.
    plan.ops.retain(
        |o| !matches!(&o.action, Action::RemoveServer { backend, .. } if deleted.contains(backend)),
    );
    // Adds per backend, in plan order.
    let mut adds: BTreeMap<String, Vec<SlotServer>> = BTreeMap::new();
    for op in &plan.ops {
        if let Action::AddServer {
            backend,
            endpoint,
            weight,
            ..
        } = &op.action
        {
            adds.entry(backend.clone()).or_default().push(SlotServer {
                endpoint: *endpoint,
                weight: *weight,
            });
        }
    }
    // Per backend: the slot each add fills (`None`: it goes into a new slot).
    let mut fills: BTreeMap<String, std::vec::IntoIter<Option<String>>> = BTreeMap::new();
    let mut grown = Vec::new();
    for (backend, list) in &adds {
        let filled: Vec<&str> = live
            .backends
            .get(backend)
            .into_iter()
            .flat_map(|b| b.servers.keys())
            .map(String::as_str)
            .filter(|n| slot_number(n).is_some())
            .collect();
        let free: Vec<&str> = live
            .free_slots
            .get(backend)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let have = BackendSlots { filled, free };
        let mut slots: Vec<Option<String>> = Vec::with_capacity(list.len());
        for op in plan_slots(&have, list, &[]) {
            match op {
                SlotOp::Grow { to, slots: new } => {
                    let placed = new.iter().filter(|s| s.server.is_some()).count();
                    grown.push(Op::new(
                        Action::GrowSlots {
                            backend: backend.clone(),
                            to,
                            slots: new,
                        },
                        if live.backends.contains_key(backend) {
                            format!(
                                "{placed} new servers do not fit the {} free slots",
                                have.free.len()
                            )
                        } else {
                            format!("the slots of a new backend, {placed} filled")
                        },
                    ));
                }
                SlotOp::Fill { slot, .. } => slots.push(Some(slot)),
                SlotOp::Free { .. } => {}
            }
        }
        slots.resize(list.len(), None);
        fills.insert(backend.clone(), slots.into_iter());
    }
    plan.ops.retain_mut(|o| {
        let Action::AddServer {
            backend, server, ..
        } = &mut o.action
        else {
            return true;
        };
        match fills.get_mut(backend.as_str()).and_then(Iterator::next) {
            Some(Some(slot)) => {
                *server = slot;
                true
            }
            // Placed in a new slot by the growth.
            _ => false,
        }
    });
    plan.ops.extend(grown);
    for op in &plan.ops {
        if op.action.server().is_none() && !matches!(op.action, Action::GrowSlots { .. }) {
            continue;
        }
        let Some(backend) = op.action.backend() else {
            continue;
        };
        if let Some(d) = desired
            .backends
            .get(backend)
            .filter(|d| d.ownership != Ownership::Owned)
        {
            plan.own_settings
                .insert(backend.to_string(), d.settings.clone());
        }
    }
}

/// Slot writes that change what the slot carries itself (its check settings, in a backend not
/// the connector's, changed since it was written): the API applies them with a reload. A freed
/// slot keeps what it carries (no reload: it is rewritten when it is filled again).
fn slot_writes_that_reload(plan: &mut Plan, live: &Live) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut kept = BTreeMap::new();
    for op in &plan.ops {
        let (backend, server) = match &op.action {
            Action::AddServer {
                backend, server, ..
            }
            | Action::SetWeight {
                backend, server, ..
            }
            | Action::RemoveServer { backend, server } => (backend, server),
            _ => continue,
        };
        let now = live
            .slot_carries
            .get(backend)
            .and_then(|m| m.get(server))
            .copied()
            .unwrap_or_default();
        let key = (backend.clone(), server.clone());
        let own = if matches!(op.action, Action::RemoveServer { .. }) {
            let keep = settings_carrying(&now);
            kept.insert(key.clone(), keep.clone());
            keep
        } else {
            plan.own_settings.get(backend).cloned()
        };
        if carries(own.as_ref()) != now {
            out.insert(key);
        }
    }
    plan.slot_settings = kept;
    out
}

fn rewrite_maps(plan: &mut Plan, desired: &Desired, addressable: fn(&str) -> bool) {
    let mut keys: BTreeMap<MatchKind, Vec<String>> = BTreeMap::new();
    plan.ops.retain(|o| {
        let route = match &o.action {
            // A key no file line can hold either is refused by the driver.
            Action::SetRoute { route, .. } if addressable_in_file(&route.key) => route,
            Action::RemoveRoute { route } => route,
            _ => return true,
        };
        if addressable(&route.key) {
            return true;
        }
        keys.entry(route.kind).or_default().push(route.key.clone());
        false
    });
    for (map, keys) in keys {
        let entries: Vec<(String, String)> = desired
            .routes
            .iter()
            .filter(|(r, _)| r.kind == map && addressable_in_file(&r.key))
            .map(|(r, b)| (r.key.clone(), b.clone()))
            .collect();
        let reason = format!(
            "no request can address {}: the map is written whole",
            keys.join(", ")
        );
        plan.ops
            .push(Op::new(Action::RewriteMap { map, entries, keys }, reason));
    }
}

/// The connector's servers in backends it does not own exist only at run time: a reload drops
/// them, so they are added again after it, as the plan leaves them.
fn readd(plan: &mut Plan, desired: &Desired, live: &Live) {
    let mut after = live.clone();
    apply(&mut after, plan);
    for (name, d) in &desired.backends {
        if d.ownership == Ownership::Owned {
            continue;
        }
        let Some(b) = after.backends.get(name) else {
            continue;
        };
        for s in b.servers.values() {
            if !is_owned_server(&s.name) || s.admin != AdminState::Ready {
                continue;
            }
            let Some(endpoint) = s.endpoint else { continue };
            plan.ops.push(Op::new(
                Action::ReaddServer {
                    backend: name.clone(),
                    server: s.name.clone(),
                    endpoint,
                    weight: s.weight,
                    check: d.settings.check.is_enabled(),
                    maxconn: d.settings.maxconn,
                    timing: d.settings.check.timing().copied(),
                },
                "re-add after the reload (it exists only at run time)",
            ));
        }
    }
}

/// The reloads of `plan` under `profile`, in execution order: the structural one (all structural
/// changes at once), then one per health check re-enabled through the configuration, then one
/// per map rewritten whole.
fn reloads(
    plan: &Plan,
    profile: &DriverProfile,
    fallbacks: &BTreeSet<(String, String)>,
) -> Vec<ReloadReason> {
    let created: BTreeSet<&str> = plan
        .ops
        .iter()
        .filter_map(|o| match &o.action {
            Action::CreateBackend { backend, .. } => Some(backend.as_str()),
            _ => None,
        })
        .collect();
    let mut changes = Vec::new();
    let mut growth = Vec::new();
    for op in &plan.ops {
        match &op.action {
            Action::CreateBackend { backend, .. } => {
                changes.push(StructuralChange::CreateBackend {
                    backend: backend.clone(),
                })
            }
            Action::UpdateBackend {
                backend, changed, ..
            } => changes.push(StructuralChange::UpdateBackend {
                backend: backend.clone(),
                changed: changed.clone(),
            }),
            Action::DeleteBackend { backend } => changes.push(StructuralChange::DeleteBackend {
                backend: backend.clone(),
            }),
            Action::InsertRouteRules { frontend, .. } => {
                changes.push(StructuralChange::RouteRules {
                    frontend: frontend.clone(),
                })
            }
            // The slots of a new backend are part of its creation.
            Action::GrowSlots { backend, to, .. } if !created.contains(backend.as_str()) => growth
                .push(StructuralChange::SlotGrowth {
                    backend: backend.clone(),
                    to: *to,
                }),
            _ => {}
        }
    }
    changes.extend(growth);
    let structural = plan.ops.iter().any(|o| {
        o.kind == OpKind::Structural || matches!(o.action, Action::InsertRouteRules { .. })
    });
    let mut out = Vec::new();
    if structural {
        out.push(ReloadReason::Structural { changes });
    }
    for op in &plan.ops {
        match &op.action {
            Action::EnableCheck {
                backend, server, ..
            } if profile.enable_check_reloads => out.push(ReloadReason::EnableCheck {
                backend: backend.clone(),
                server: server.clone(),
            }),
            Action::RewriteMap { map, .. } => out.push(ReloadReason::MapRewrite { map: *map }),
            Action::AddServer {
                backend, server, ..
            }
            | Action::SetWeight {
                backend, server, ..
            }
            | Action::RemoveServer { backend, server }
                if fallbacks.contains(&(backend.clone(), server.clone())) =>
            {
                out.push(ReloadReason::RuntimeFallback {
                    backend: backend.clone(),
                    server: server.clone(),
                })
            }
            _ => {}
        }
    }
    out
}
