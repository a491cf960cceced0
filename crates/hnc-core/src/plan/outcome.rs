//! The state a plan leads to. [`apply`] gives the live state a fresh observation would show after
//! a driver executed the plan; [`outcome`] the part of it a driver persists (the runtime driver's
//! fragment and map files: the owned backends with their servers in rotation, and the routes).
//! Pure; drivers and tests use the same functions.

use std::collections::BTreeMap;

use super::slots::slot_number;
use super::{Action, Plan};
use crate::desired::Desired;
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{AdminState, BackendSettings, Endpoint, OpState, RouteKey, is_owned_server};

/// An owned backend as persisted: its settings and its servers in rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeBackend {
    pub settings: BackendSettings,
    /// Server name → (address, weight).
    pub servers: BTreeMap<String, (Endpoint, u16)>,
}

/// What a driver that persists its state writes after a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The connector's backends.
    pub backends: BTreeMap<String, OutcomeBackend>,
    /// Every route with the backend it maps to (the first, when HAProxy holds duplicates).
    pub routes: BTreeMap<RouteKey, String>,
    /// The connector's backends left out: their settings could be neither read back nor found
    /// in the desired model (the driver logs them).
    pub unreadable: Vec<String>,
}

/// The persisted state after `plan` is applied to `live`. An owned backend whose settings could
/// not be read back takes the desired ones; one with neither is left out (and named).
/// Only servers in rotation are kept: a reload would put a draining one back in service.
pub fn outcome(live: &Live, plan: &Plan, desired: &Desired) -> Outcome {
    let mut after = live.clone();
    apply(&mut after, plan);
    let mut backends = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (name, b) in after.backends.iter().filter(|(_, b)| b.owned) {
        let Some(settings) = b
            .settings
            .clone()
            .or_else(|| desired.backends.get(name).map(|d| d.settings.clone()))
        else {
            unreadable.push(name.clone());
            continue;
        };
        let servers = b
            .servers
            .values()
            .filter(|s| is_owned_server(&s.name) && s.admin == AdminState::Ready)
            .filter_map(|s| s.endpoint.map(|e| (s.name.clone(), (e, s.weight))))
            .collect();
        backends.insert(name.clone(), OutcomeBackend { settings, servers });
    }
    let routes = after
        .routes
        .iter()
        .filter_map(|(k, v)| v.first().map(|b| (k.clone(), b.clone())))
        .collect();
    Outcome {
        backends,
        routes,
        unreadable,
    }
}

fn server(name: &str, endpoint: Endpoint, weight: u16, check: bool) -> LiveServer {
    LiveServer {
        name: name.to_string(),
        endpoint: Some(endpoint),
        admin: AdminState::Ready,
        op: OpState::Up,
        check_enabled: check,
        weight,
        sessions: 0,
        drain_started: None,
    }
}

/// Applies `plan` to `live` as a perfect driver would: the live state observed afterwards.
pub fn apply(live: &mut Live, plan: &Plan) {
    for op in &plan.ops {
        match &op.action {
            Action::CreateBackend { backend, settings } => {
                live.backends.insert(
                    backend.clone(),
                    LiveBackend {
                        name: backend.clone(),
                        owned: true,
                        mode: settings.mode,
                        balance: Some(settings.balance.as_str().to_string()),
                        settings: Some(settings.clone()),
                        servers: BTreeMap::new(),
                    },
                );
            }
            Action::UpdateBackend {
                backend, settings, ..
            } => {
                if let Some(b) = live.backends.get_mut(backend) {
                    b.mode = settings.mode;
                    b.balance = Some(settings.balance.as_str().to_string());
                    b.settings = Some(settings.clone());
                }
            }
            Action::DeleteBackend { backend } => {
                live.backends.remove(backend);
                live.free_slots.remove(backend);
            }
            Action::GrowSlots { backend, slots, .. } => {
                let check = check_of(live, plan, backend);
                for slot in slots {
                    match slot.server {
                        Some(s) => {
                            if let Some(b) = live.backends.get_mut(backend) {
                                b.servers.insert(
                                    slot.name.clone(),
                                    server(&slot.name, s.endpoint, s.weight, check),
                                );
                            }
                        }
                        None => live
                            .free_slots
                            .entry(backend.clone())
                            .or_default()
                            .push(slot.name.clone()),
                    }
                }
            }
            Action::AddServer {
                backend,
                server: name,
                endpoint,
                weight,
                check,
                ..
            }
            | Action::ReaddServer {
                backend,
                server: name,
                endpoint,
                weight,
                check,
                ..
            } => {
                if let Some(free) = live.free_slots.get_mut(backend) {
                    free.retain(|s| s != name);
                }
                if let Some(b) = live.backends.get_mut(backend) {
                    b.servers
                        .insert(name.clone(), server(name, *endpoint, *weight, *check));
                }
            }
            Action::ReadyServer { backend, server } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.admin = AdminState::Ready;
                    s.drain_started = None;
                }
            }
            Action::EnableCheck {
                backend, server, ..
            } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.check_enabled = true;
                }
            }
            Action::SetWeight {
                backend,
                server,
                weight,
                ..
            } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.weight = *weight;
                }
            }
            Action::DrainServer { backend, server } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.admin = AdminState::Drain;
                }
            }
            Action::MaintServer { backend, server } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.admin = AdminState::Maint;
                }
            }
            Action::RemoveServer { backend, server } => {
                if let Some(b) = live.backends.get_mut(backend) {
                    b.servers.remove(server);
                    if slot_number(server).is_some() {
                        // An emptied slot stays, free.
                        let free = live.free_slots.entry(backend.clone()).or_default();
                        if !free.contains(server) {
                            free.push(server.clone());
                            free.sort_by_key(|s| slot_number(s));
                        }
                    }
                }
            }
            Action::AddRoute { route, backend } => {
                live.routes
                    .entry(route.clone())
                    .or_default()
                    .push(backend.clone());
            }
            Action::SetRoute { route, backend, .. } => {
                live.routes.insert(route.clone(), vec![backend.clone()]);
            }
            Action::RemoveRoute { route } => {
                live.routes.remove(route);
            }
            Action::RewriteMap { map, entries, .. } => {
                live.routes.retain(|k, _| k.kind != *map);
                for (key, backend) in entries {
                    live.routes.insert(
                        RouteKey {
                            kind: *map,
                            key: key.clone(),
                        },
                        vec![backend.clone()],
                    );
                }
            }
            Action::InsertRouteRules { .. } => {
                live.route_rules_missing = false;
                live.frontend = None;
            }
        }
    }
}

/// Whether the servers of a slot created in `backend` have their check enabled: the backend's
/// check setting (its own settings, or those the plan writes the slots with).
fn check_of(live: &Live, plan: &Plan, backend: &str) -> bool {
    plan.own_settings
        .get(backend)
        .or_else(|| live.backends.get(backend)?.settings.as_ref())
        .or_else(|| {
            plan.ops.iter().find_map(|o| match &o.action {
                Action::CreateBackend {
                    backend: b,
                    settings,
                } if b == backend => Some(settings),
                _ => None,
            })
        })
        .is_some_and(|s| s.check.is_enabled())
}

fn server_mut<'a>(live: &'a mut Live, backend: &str, server: &str) -> Option<&'a mut LiveServer> {
    live.backends.get_mut(backend)?.servers.get_mut(server)
}
