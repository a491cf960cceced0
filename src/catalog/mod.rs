//! The service catalog (the kube-runtime "store"): Nomad's registrations, as the last reads saw
//! them.

mod model;

pub use model::{Instance, NomadCheck, NomadCheckKind, Service, ServiceKey, Snapshot};
