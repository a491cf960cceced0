//! A pure in-memory stand-in for HAProxy: the live state that exactly realises a desired model,
//! and the effect of a plan on a live state. Used by property tests and benchmarks to check the
//! core against itself (diff after apply is empty); it is not a driver. The effect of a plan is
//! the core's [`super::outcome`], which drivers use too.

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
                        // A server whose Nomad checks fail is realised in maintenance.
                        admin: if spec.failing_checks {
                            AdminState::Maint
                        } else {
                            AdminState::Ready
                        },
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

/// Applies `plan` to `live` as a perfect driver would (the core's own [`super::outcome::apply`]).
pub use super::outcome::apply;
