//! Why a plan reloads HAProxy, and what a driver can do without a reload (its profile). Pure.

use std::fmt;

use serde::Serialize;

use crate::model::MatchKind;

/// Where a driver keeps the connector's servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerPlacement {
    /// Pre-created configuration slots filled and emptied at run time; more slots is a
    /// structural change (the Data Plane API driver).
    Slots,
    /// Servers added and deleted at run time (`add server`, the runtime driver).
    Dynamic,
}

/// What a driver does with a reload and without one: the core plans for it. A plain value, each
/// driver exposes its own (the application's `Driver::profile`).
#[derive(Clone, Copy, Debug)]
pub struct DriverProfile {
    pub servers: ServerPlacement,
    /// Re-enabling a server's health check takes a reload (DPAPI cannot run `enable health`).
    pub enable_check_reloads: bool,
    /// A reload drops the servers that exist only at run time (the connector's servers in backends
    /// it does not own): they are added again after it, as operations of the plan.
    pub readd_after_reload: bool,
    /// Whether a route key can be addressed one entry at a time (changed or removed by key);
    /// `None`: every key can. The maps holding keys that cannot are rewritten whole, with a reload.
    pub route_addressable: Option<fn(&str) -> bool>,
    /// The driver persists the state the plan leads to in files (the runtime driver's fragment
    /// and maps): the plan carries that state ([`super::Outcome`]).
    pub persists_outcome: bool,
}

impl DriverProfile {
    /// A driver that can do everything at run time but structure (the model the plain
    /// [`super::diff`] assumes); used by tests.
    pub const NEUTRAL: DriverProfile = DriverProfile {
        servers: ServerPlacement::Dynamic,
        enable_check_reloads: false,
        readd_after_reload: false,
        route_addressable: None,
        persists_outcome: false,
    };
}

/// One structural change carried by a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum StructuralChange {
    CreateBackend {
        backend: String,
    },
    UpdateBackend {
        backend: String,
        changed: Vec<String>,
    },
    DeleteBackend {
        backend: String,
    },
    /// New server slots (DPAPI): the backend grows to `to` slots.
    SlotGrowth {
        backend: String,
        to: usize,
    },
    /// The host-map rules inserted into the frontend.
    RouteRules {
        frontend: String,
    },
}

impl fmt::Display for StructuralChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StructuralChange::CreateBackend { backend } => write!(f, "create backend {backend}"),
            StructuralChange::UpdateBackend { backend, changed } => {
                write!(f, "update backend {backend} ({})", changed.join(", "))
            }
            StructuralChange::DeleteBackend { backend } => write!(f, "delete backend {backend}"),
            StructuralChange::SlotGrowth { backend, to } => {
                write!(f, "grow {backend} to {to} server slots")
            }
            StructuralChange::RouteRules { frontend } => {
                write!(f, "insert host-map rules into frontend {frontend}")
            }
        }
    }
}

/// Why a plan reloads HAProxy: one value per reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ReloadReason {
    /// Every structural change of the pass, in one transaction or one fragment reload.
    Structural { changes: Vec<StructuralChange> },
    /// A server's health check re-enabled through its configuration (no run-time way).
    EnableCheck { backend: String, server: String },
    /// A route map rewritten whole: a key the API cannot address changed or left.
    MapRewrite { map: MatchKind },
    /// A server slot write the API cannot apply at run time (what the slot carries itself, its
    /// check settings in a backend not the connector's, changes), so it reloads.
    RuntimeFallback { backend: String, server: String },
}

/// The label of `hnc_haproxy_reloads_total{reason}` a reload is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadKind {
    /// Backends, check settings, slot growth or frontend rules changed.
    Structural,
    /// A health check had to be re-enabled and the driver has no runtime way to do it.
    EnableCheck,
    /// A change meant for the runtime path fell back to a reload.
    Fallback,
}

impl ReloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Structural => "structural",
            ReloadKind::EnableCheck => "enable_check",
            ReloadKind::Fallback => "fallback",
        }
    }
}

impl ReloadReason {
    pub fn kind(&self) -> ReloadKind {
        match self {
            ReloadReason::Structural { .. } => ReloadKind::Structural,
            ReloadReason::EnableCheck { .. } => ReloadKind::EnableCheck,
            ReloadReason::MapRewrite { .. } | ReloadReason::RuntimeFallback { .. } => {
                ReloadKind::Fallback
            }
        }
    }
}

impl fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadReason::Structural { changes } => {
                let parts: Vec<String> = changes.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join("; "))
            }
            ReloadReason::EnableCheck { backend, server } => {
                write!(f, "re-enable the health check of {backend}/{server}")
            }
            ReloadReason::MapRewrite { map } => write!(
                f,
                "rewrite {}: a route key the API cannot address by URL changed or left",
                map.map_file()
            ),
            ReloadReason::RuntimeFallback { backend, server } => {
                write!(f, "server {backend}/{server} written with a reload")
            }
        }
    }
}
