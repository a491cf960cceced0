//! The catalog's data: what the connector knows about Nomad's service registrations. These are
//! the pure core's input; they hold no I/O handles and are cheap to clone (`Arc` per service).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A service is identified by its namespace and name: the same name in two namespaces is two
/// services.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One registration of a service (one allocation's port), as Nomad reports it, plus the health
/// check its job declares for it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Nomad's registration ID (`_nomad-task-<alloc>-<task>-<service>-<port label>`).
    pub id: String,
    pub job_id: String,
    pub alloc_id: String,
    pub node_id: String,
    pub datacenter: String,
    /// Tags as registered (`Tags: null` becomes empty). Untrusted input.
    pub tags: Vec<String>,
    /// An IP address (v4 or v6) as Nomad reports it, unchanged.
    pub address: String,
    pub port: u16,
    pub create_index: u64,
    pub modify_index: u64,
    /// The check declared for this service in its job, when the job declares one.
    pub nomad_check: Option<NomadCheck>,
}

/// A health check as declared in the Nomad job (`service { check { … } }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NomadCheck {
    pub kind: NomadCheckKind,
    pub path: Option<String>,
    pub method: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    /// The `Host` header, when the check sets one.
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NomadCheckKind {
    Http,
    Tcp,
    /// Any other type (`script`, `grpc`, …): the connector falls back to a TCP check.
    Other(String),
}

/// All registrations of one service, sorted by registration ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub instances: Vec<Instance>,
}

/// What Nomad's own service checks say about one allocation
/// (`GET /v1/client/allocation/<alloc_id>/checks`, read only with `nomad.gate_on_checks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckHealth {
    /// No check of the allocation reports `failure` (passing or still pending).
    Passing,
    /// At least one check of the allocation reports `failure`.
    Failing,
}

/// One allocation's check health per service name.
pub type AllocHealth = BTreeMap<String, CheckHealth>;

impl Snapshot {
    /// Whether Nomad's checks of this registration (allocation and service) fail.
    pub fn checks_failing(&self, alloc_id: &str, service: &str) -> bool {
        self.check_health
            .get(alloc_id)
            .and_then(|a| a.get(service))
            .is_some_and(|h| *h == CheckHealth::Failing)
    }
}

/// An immutable view of the catalog, handed to the controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Services whose tags ask for the connector (`<prefix>.enable=true` somewhere), by key.
    pub services: BTreeMap<ServiceKey, Arc<Service>>,
    /// True once the first full list has completed: before that, absence proves nothing.
    pub synced: bool,
    /// Set while the last read failed; the data above is the last good data.
    pub stale: Option<String>,
    /// Among the failures behind `stale`, Nomad refused the token (403): an operator must act.
    pub denied: bool,
    /// Nomad's table-wide service index of the last successful list.
    pub index: u64,
    /// Check health by allocation ID, then service name (an allocation runs the checks of all
    /// its group's services), for the allocations whose checks were read (only with
    /// `nomad.gate_on_checks`); a registration absent here is not gated.
    pub check_health: BTreeMap<String, AllocHealth>,
}
