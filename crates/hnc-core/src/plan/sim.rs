//! A pure in-memory stand-in for HAProxy: the live state that exactly realises a desired model,
//! and the effect of a plan on a live state. Used by property tests and benchmarks to check the
//! core against itself (diff after apply is empty); it is not a driver.

use std::collections::BTreeMap;

use super::{Action, Plan};
use crate::desired::{Desired, Ownership};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{AdminState, OpState};

/// The live state in which `desired` is fully applied. Adopted and custom backends appear as
/// foreign backends holding only the connector's servers.
pub fn live_of(desired: &Desired) -> Live {
    let mut live = Live::default();
    for (name, b) in &desired.backends {
        let servers = b
            .servers
            .iter()
            .map(|(e, spec)| {
                let server = e.server_name();
                (
                    server.clone(),
                    LiveServer {
                        name: server,
                        endpoint: Some(*e),
                        admin: AdminState::Ready,
                        op: OpState::Up,
                        check_enabled: b.settings.check.is_enabled(),
                        weight: spec.weight,
                        sessions: 0,
                        drain_started: None,
                    },
                )
            })
            .collect();
        let owned = b.ownership == Ownership::Owned;
        live.backends.insert(
            name.clone(),
            LiveBackend {
                name: name.clone(),
                owned,
                mode: b.settings.mode,
                balance: Some(b.settings.balance.as_str().to_string()),
                settings: owned.then(|| b.settings.clone()),
                servers,
            },
        );
    }
    live.routes = desired
        .routes
        .iter()
        .map(|(k, b)| (k.clone(), vec![b.clone()]))
        .collect();
    live
}

/// Applies `plan` to `live` as a perfect driver would.
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
            }
            Action::AddServer {
                backend,
                server,
                endpoint,
                weight,
                check,
                ..
            } => {
                if let Some(b) = live.backends.get_mut(backend) {
                    b.servers.insert(
                        server.clone(),
                        LiveServer {
                            name: server.clone(),
                            endpoint: Some(*endpoint),
                            admin: AdminState::Ready,
                            op: OpState::Up,
                            check_enabled: *check,
                            weight: *weight,
                            sessions: 0,
                            drain_started: None,
                        },
                    );
                }
            }
            Action::ReadyServer { backend, server } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.admin = AdminState::Ready;
                    s.drain_started = None;
                }
            }
            Action::EnableCheck { backend, server } => {
                if let Some(s) = server_mut(live, backend, server) {
                    s.check_enabled = true;
                }
            }
            Action::SetWeight {
                backend,
                server,
                weight,
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
            Action::RemoveServer { backend, server } => {
                if let Some(b) = live.backends.get_mut(backend) {
                    b.servers.remove(server);
                }
            }
            Action::AddRoute { route, backend } => {
                live.routes
                    .entry(route.clone())
                    .or_default()
                    .push(backend.clone());
            }
            Action::SetRoute { route, backend } => {
                live.routes.insert(route.clone(), vec![backend.clone()]);
            }
            Action::RemoveRoute { route } => {
                live.routes.remove(route);
            }
            Action::InsertRouteRules => live.route_rules_missing = false,
        }
    }
}

fn server_mut<'a>(live: &'a mut Live, backend: &str, server: &str) -> Option<&'a mut LiveServer> {
    live.backends.get_mut(backend)?.servers.get_mut(server)
}
