//! The live HAProxy state, as a driver observed it, in driver-neutral terms. Drivers fill it; the
//! pure core reads it. Hand-written objects appear here too (so the core can see names it must
//! not take), marked as not owned.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::model::{AdminState, BackendSettings, Endpoint, OpState, RouteKey};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub backends: BTreeMap<String, LiveBackend>,
    /// Entries of the connector's host maps: key → backends (more than one when HAProxy holds a
    /// duplicate key; only the first would match).
    pub routes: BTreeMap<RouteKey, Vec<String>>,
    /// The driver manages the frontend's host-map rules (`haproxy.frontend` is set) and they are
    /// not all there.
    pub route_rules_missing: bool,
    /// The configuration version seen (Data Plane API): the optimistic concurrency token the
    /// plan's transaction starts from. `None` for a driver without one.
    pub version: Option<i64>,
    /// Empty server slots by backend, in slot order (Data Plane API driver; the filled ones are
    /// servers of [`LiveBackend::servers`] named after their slot).
    pub free_slots: BTreeMap<String, Vec<String>>,
    /// The frontend the connector inserts its host-map rules into, as seen (when it manages them).
    pub frontend: Option<FrontendRules>,
    /// What slots carry themselves, by backend and slot (Data Plane API driver; slots carrying
    /// nothing, those of the connector's own backends, are left out).
    pub slot_carries: BTreeMap<String, BTreeMap<String, SlotCarries>>,
}

/// The fields a server slot carries itself besides address, port, weight and maintenance: check
/// settings and maxconn, written on slots of backends whose settings are not the connector's.
/// A slot write that changes one of them cannot be applied at run time (the API reloads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCarries {
    pub check: Option<bool>,
    pub inter: Option<u32>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub maxconn: Option<u32>,
}

/// The configured frontend's `use_backend` rules, as far as the connector's own are concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendRules {
    pub frontend: String,
    /// Rules the frontend has (the connector's go after them).
    pub count: usize,
    /// The connector's rules missing: (name, condition).
    pub missing: Vec<(String, String)>,
    /// The connector's map files absent from the API's storage (looked up while rules are missing).
    pub missing_maps: Vec<crate::model::MatchKind>,
    /// `http-request` rules the frontend has (the connector's go after them).
    pub request_count: usize,
    /// The connector's `http-request` rules (path routes) missing, in order.
    pub missing_requests: Vec<crate::path_rules::RequestRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveBackend {
    pub name: String,
    /// Carries the connector's ownership marker.
    pub owned: bool,
    /// The backend's proxy mode.
    pub mode: crate::model::Mode,
    /// The raw balance algorithm (`roundrobin`, `static-rr`, `source`, …); `None` means HAProxy's
    /// default, roundrobin.
    pub balance: Option<String>,
    /// For an owned backend, its settings in the connector's terms; `None` when they could not be
    /// read back (treated as different from any desired value, so they are rewritten).
    pub settings: Option<BackendSettings>,
    /// All servers by name, hand-written ones included.
    pub servers: BTreeMap<String, LiveServer>,
}

impl LiveBackend {
    /// Whether servers can be added at run time: a dynamic balance algorithm (CONTRACTS §3.2).
    pub fn supports_dynamic_servers(&self) -> bool {
        matches!(
            self.balance.as_deref(),
            None | Some("roundrobin" | "leastconn" | "first" | "random")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveServer {
    pub name: String,
    /// `None` for a server whose address is not an IP (never one of ours).
    pub endpoint: Option<Endpoint>,
    pub admin: AdminState,
    pub op: OpState,
    /// Whether a health check is configured and enabled on the server.
    pub check_enabled: bool,
    pub weight: u16,
    /// Current sessions (`scur`).
    pub sessions: u64,
    /// When the connector first saw this server draining (kept by the controller across passes;
    /// `None` means "not known", and the drain timeout counts from now).
    #[serde(skip)]
    pub drain_started: Option<Instant>,
}
