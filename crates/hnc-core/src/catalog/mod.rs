//! The service catalog (the kube-runtime "store"): Nomad's registrations, as the last reads saw
//! them.

mod model;
mod store;

pub use model::{
    AllocHealth, CheckHealth, Instance, NomadCheck, NomadCheckKind, Service, ServiceKey, Snapshot,
};
pub use store::{Applied, Store, is_enabled};
