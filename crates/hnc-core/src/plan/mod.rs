//! The plan: the ordered operations that take live HAProxy to the desired model, each with the
//! reason it exists. Computed by [`diff`] (driver-neutral), made exact for one driver by
//! [`compile`] (slots, reloads, re-adds, map rewrites), rendered by [`render`]; drivers only
//! execute it.

mod compile;
mod diff;
pub mod outcome;
pub mod reload;
pub mod render;
pub mod sim;
pub mod slots;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::model::{BackendSettings, CheckTiming, Endpoint, MatchKind, RouteKey};

pub use compile::{addressable_in_file, compile};
pub use diff::diff;
pub use outcome::{Outcome, OutcomeBackend};
pub use reload::{DriverProfile, ReloadKind, ReloadReason, ServerPlacement, StructuralChange};
pub use slots::{NewSlot, SlotServer};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;

#[cfg(test)]
mod settings_tests;

#[cfg(test)]
mod gating_tests;

#[cfg(test)]
mod canary_tests;

/// Whether an operation changes HAProxy's configuration structure (a reload under some driver)
/// or only its run-time state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Structural,
    Runtime,
}

/// One change to HAProxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    CreateBackend {
        backend: String,
        settings: BackendSettings,
    },
    /// Rewrite an owned backend's managed settings; `changed` names the fields that differ.
    UpdateBackend {
        backend: String,
        settings: BackendSettings,
        changed: Vec<String>,
    },
    DeleteBackend {
        backend: String,
    },
    /// Add a server for `endpoint`, in service (ready, with its check enabled when `check`).
    /// Under a slot driver `server` is the free slot it fills.
    AddServer {
        backend: String,
        server: String,
        endpoint: Endpoint,
        weight: u16,
        check: bool,
        maxconn: Option<u32>,
        /// The check's timing, for a driver that writes it on the server.
        #[serde(skip_serializing_if = "Option::is_none")]
        timing: Option<CheckTiming>,
    },
    /// New server slots (structural), some already filled: the backend grows to `to` slots.
    GrowSlots {
        backend: String,
        to: usize,
        slots: Vec<NewSlot>,
    },
    /// Put a server back in rotation (from drain or maintenance).
    ReadyServer {
        backend: String,
        server: String,
    },
    /// Re-enable a server's health check; `endpoint` and `weight` are the server's (a driver that
    /// rewrites the whole server writes them back).
    EnableCheck {
        backend: String,
        server: String,
        endpoint: Endpoint,
        weight: u16,
    },
    SetWeight {
        backend: String,
        server: String,
        weight: u16,
        /// The server's address (a slot write carries it).
        endpoint: Endpoint,
    },
    /// Take a server out of rotation, letting its sessions finish.
    DrainServer {
        backend: String,
        server: String,
    },
    /// Put a drained server in maintenance, keeping it (its Nomad checks fail:
    /// `nomad.gate_on_checks`); [`Action::ReadyServer`] brings it back.
    MaintServer {
        backend: String,
        server: String,
    },
    /// Remove a drained server (no sessions left, or its drain timed out).
    RemoveServer {
        backend: String,
        server: String,
    },
    AddRoute {
        route: RouteKey,
        backend: String,
    },
    /// Make `route` map to exactly this backend, once (replaces another value or duplicates).
    SetRoute {
        route: RouteKey,
        backend: String,
        /// Entries the key has now: one is replaced in place, several are deleted and added once.
        entries: usize,
    },
    RemoveRoute {
        route: RouteKey,
    },
    /// Insert the connector's host-map `use_backend` rules into the configured frontend (after
    /// its own rules, from position `at`; the frontend's other rules and ACLs are left as they
    /// are), and its path-route `http-request` rules (after the frontend's own, from
    /// `request_at`). `create_maps`: the map files they reference that must be created first
    /// (empty).
    InsertRouteRules {
        frontend: String,
        at: usize,
        rules: Vec<(String, String)>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        request_rules: Vec<crate::path_rules::RequestRule>,
        request_at: usize,
        create_maps: Vec<MatchKind>,
    },
    /// Rewrite one route map whole with `entries` (key, backend): `keys` changed or left and no
    /// request can address them one by one. Reloads.
    RewriteMap {
        map: MatchKind,
        entries: Vec<(String, String)>,
        keys: Vec<String>,
    },
    /// Add again, after this plan's reload, a server the reload drops (it exists only at run
    /// time: the connector's server in a backend it does not own).
    ReaddServer {
        backend: String,
        server: String,
        endpoint: Endpoint,
        weight: u16,
        check: bool,
        maxconn: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timing: Option<CheckTiming>,
    },
}

impl Action {
    pub fn kind(&self) -> OpKind {
        match self {
            Action::CreateBackend { .. }
            | Action::UpdateBackend { .. }
            | Action::DeleteBackend { .. }
            | Action::GrowSlots { .. } => OpKind::Structural,
            _ => OpKind::Runtime,
        }
    }

    /// A stable name (a metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Action::CreateBackend { .. } => "create_backend",
            Action::UpdateBackend { .. } => "update_backend",
            Action::DeleteBackend { .. } => "delete_backend",
            Action::AddServer { .. } => "add_server",
            Action::GrowSlots { .. } => "grow_slots",
            Action::ReadyServer { .. } => "ready_server",
            Action::EnableCheck { .. } => "enable_check",
            Action::SetWeight { .. } => "set_weight",
            Action::DrainServer { .. } => "drain_server",
            Action::MaintServer { .. } => "maint_server",
            Action::RemoveServer { .. } => "remove_server",
            Action::AddRoute { .. } => "add_route",
            Action::SetRoute { .. } => "set_route",
            Action::RemoveRoute { .. } => "remove_route",
            Action::InsertRouteRules { .. } => "insert_route_rules",
            Action::RewriteMap { .. } => "rewrite_map",
            Action::ReaddServer { .. } => "readd_server",
        }
    }

    /// The backend the operation touches (a route's target for route operations).
    pub fn backend(&self) -> Option<&str> {
        match self {
            Action::CreateBackend { backend, .. }
            | Action::UpdateBackend { backend, .. }
            | Action::DeleteBackend { backend }
            | Action::AddServer { backend, .. }
            | Action::GrowSlots { backend, .. }
            | Action::ReaddServer { backend, .. }
            | Action::ReadyServer { backend, .. }
            | Action::EnableCheck { backend, .. }
            | Action::SetWeight { backend, .. }
            | Action::DrainServer { backend, .. }
            | Action::MaintServer { backend, .. }
            | Action::RemoveServer { backend, .. }
            | Action::AddRoute { backend, .. }
            | Action::SetRoute { backend, .. } => Some(backend),
            Action::RemoveRoute { .. }
            | Action::InsertRouteRules { .. }
            | Action::RewriteMap { .. } => None,
        }
    }

    /// The server the operation touches, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            Action::AddServer { server, .. }
            | Action::ReaddServer { server, .. }
            | Action::ReadyServer { server, .. }
            | Action::EnableCheck { server, .. }
            | Action::SetWeight { server, .. }
            | Action::DrainServer { server, .. }
            | Action::MaintServer { server, .. }
            | Action::RemoveServer { server, .. } => Some(server),
            _ => None,
        }
    }

    /// Execution order: structure first, then servers, routes to new servers, drains, and removals
    /// last, so a route never points to a backend that is not there yet or already gone; re-adds
    /// after the reload close the plan.
    fn phase(&self) -> u8 {
        match self {
            Action::CreateBackend { .. } => 0,
            Action::UpdateBackend { .. } | Action::InsertRouteRules { .. } => 1,
            Action::GrowSlots { .. } | Action::AddServer { .. } => 2,
            Action::ReadyServer { .. } | Action::EnableCheck { .. } | Action::SetWeight { .. } => 3,
            // A map rewritten whole reloads: before the drains, which a reload would undo.
            Action::AddRoute { .. } | Action::SetRoute { .. } | Action::RewriteMap { .. } => 4,
            Action::DrainServer { .. } | Action::MaintServer { .. } => 5,
            Action::RemoveRoute { .. } => 6,
            Action::RemoveServer { .. } => 7,
            Action::DeleteBackend { .. } => 8,
            Action::ReaddServer { .. } => 9,
        }
    }
}

/// An operation and why it is needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Op {
    #[serde(flatten)]
    pub action: Action,
    pub kind: OpKind,
    pub reason: String,
}

impl Op {
    pub fn new(action: Action, reason: impl Into<String>) -> Op {
        let kind = action.kind();
        Op {
            action,
            kind,
            reason: reason.into(),
        }
    }
}

/// A server waiting for its sessions to end before it is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingDrain {
    pub backend: String,
    pub server: String,
    pub sessions: u64,
    /// Time left before it is removed regardless of sessions.
    #[serde(serialize_with = "serialize_secs")]
    pub remaining: Duration,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub pending_drains: Vec<PendingDrain>,
    /// The reloads executing the plan costs, in order, once [`compile`]d for a driver (`None`
    /// for the driver-neutral plan of [`diff`], which cannot know them); the driver reports one
    /// [`ReloadReason`] per reload it caused, and these are they.
    pub reloads: Option<Vec<ReloadReason>>,
    /// The configuration version the plan was computed from (the Data Plane API's optimistic
    /// concurrency token: the transaction starts from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Settings of the backends not owned by the connector whose servers the plan writes: under a
    /// slot driver each slot carries them itself (check and maxconn).
    #[serde(skip)]
    pub own_settings: BTreeMap<String, BackendSettings>,
    /// For slots freed in such backends once no service is left there: the settings they carry,
    /// by (backend, slot), written back so the write needs no reload.
    #[serde(skip)]
    pub slot_settings: BTreeMap<(String, String), Option<BackendSettings>>,
    /// The state the plan leads to, for a driver that persists it ([`DriverProfile::persists_outcome`]).
    #[serde(skip)]
    pub outcome: Option<Outcome>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The reloads the plan costs (none known before [`compile`]).
    pub fn reloads(&self) -> &[ReloadReason] {
        self.reloads.as_deref().unwrap_or_default()
    }

    /// The settings a slot write to `server` of `backend` carries itself ([`Plan::own_settings`],
    /// [`Plan::slot_settings`]); `None` in the connector's own backends.
    pub fn slot_own(&self, backend: &str, server: &str) -> Option<&BackendSettings> {
        match self
            .slot_settings
            .get(&(backend.to_string(), server.to_string()))
        {
            Some(kept) => kept.as_ref(),
            None => self.own_settings.get(backend),
        }
    }

    /// Whether any operation is structural.
    pub fn has_structural(&self) -> bool {
        self.ops.iter().any(|o| o.kind == OpKind::Structural)
    }

    /// Operation counts by name.
    pub fn summary(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for op in &self.ops {
            *m.entry(op.action.name()).or_default() += 1;
        }
        m
    }

    fn sort(&mut self) {
        self.ops.sort_by(|a, b| {
            (
                a.action.phase(),
                a.action.backend(),
                a.action.server(),
                route_of(&a.action),
            )
                .cmp(&(
                    b.action.phase(),
                    b.action.backend(),
                    b.action.server(),
                    route_of(&b.action),
                ))
        });
        self.pending_drains
            .sort_by(|a, b| (&a.backend, &a.server).cmp(&(&b.backend, &b.server)));
    }
}

fn route_of(a: &Action) -> Option<&RouteKey> {
    match a {
        Action::AddRoute { route, .. }
        | Action::SetRoute { route, .. }
        | Action::RemoveRoute { route } => Some(route),
        _ => None,
    }
}
