//! The plan: the ordered operations that take live HAProxy to the desired model, each with the
//! reason it exists. Computed by [`diff`], rendered by [`render`]; drivers only execute it.

mod diff;
pub mod render;
pub mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::model::{BackendSettings, Endpoint, RouteKey};

pub use diff::diff;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;

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
    AddServer {
        backend: String,
        server: String,
        endpoint: Endpoint,
        weight: u16,
        check: bool,
        maxconn: Option<u32>,
    },
    /// Put a server back in rotation (from drain or maintenance).
    ReadyServer {
        backend: String,
        server: String,
    },
    EnableCheck {
        backend: String,
        server: String,
    },
    SetWeight {
        backend: String,
        server: String,
        weight: u16,
    },
    /// Take a server out of rotation, letting its sessions finish.
    DrainServer {
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
    },
    RemoveRoute {
        route: RouteKey,
    },
    /// Insert the connector's host-map `use_backend` rules into the configured frontend (after
    /// its own rules; the frontend's other rules and ACLs are left as they are).
    InsertRouteRules,
}

impl Action {
    pub fn kind(&self) -> OpKind {
        match self {
            Action::CreateBackend { .. }
            | Action::UpdateBackend { .. }
            | Action::DeleteBackend { .. } => OpKind::Structural,
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
            Action::ReadyServer { .. } => "ready_server",
            Action::EnableCheck { .. } => "enable_check",
            Action::SetWeight { .. } => "set_weight",
            Action::DrainServer { .. } => "drain_server",
            Action::RemoveServer { .. } => "remove_server",
            Action::AddRoute { .. } => "add_route",
            Action::SetRoute { .. } => "set_route",
            Action::RemoveRoute { .. } => "remove_route",
            Action::InsertRouteRules => "insert_route_rules",
        }
    }

    /// The backend the operation touches (a route's target for route operations).
    pub fn backend(&self) -> Option<&str> {
        match self {
            Action::CreateBackend { backend, .. }
            | Action::UpdateBackend { backend, .. }
            | Action::DeleteBackend { backend }
            | Action::AddServer { backend, .. }
            | Action::ReadyServer { backend, .. }
            | Action::EnableCheck { backend, .. }
            | Action::SetWeight { backend, .. }
            | Action::DrainServer { backend, .. }
            | Action::RemoveServer { backend, .. }
            | Action::AddRoute { backend, .. }
            | Action::SetRoute { backend, .. } => Some(backend),
            Action::RemoveRoute { .. } | Action::InsertRouteRules => None,
        }
    }

    /// The server the operation touches, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            Action::AddServer { server, .. }
            | Action::ReadyServer { server, .. }
            | Action::EnableCheck { server, .. }
            | Action::SetWeight { server, .. }
            | Action::DrainServer { server, .. }
            | Action::RemoveServer { server, .. } => Some(server),
            _ => None,
        }
    }

    /// Execution order: structure first, then servers, routes to new servers, drains, and removals
    /// last, so a route never points to a backend that is not there yet or already gone.
    fn phase(&self) -> u8 {
        match self {
            Action::CreateBackend { .. } => 0,
            Action::UpdateBackend { .. } | Action::InsertRouteRules => 1,
            Action::AddServer { .. } => 2,
            Action::ReadyServer { .. } | Action::EnableCheck { .. } | Action::SetWeight { .. } => 3,
            Action::AddRoute { .. } | Action::SetRoute { .. } => 4,
            Action::DrainServer { .. } => 5,
            Action::RemoveRoute { .. } => 6,
            Action::RemoveServer { .. } => 7,
            Action::DeleteBackend { .. } => 8,
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
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
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
