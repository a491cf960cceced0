//! The Data Plane API v3 driver.
//!
//! - observe ([`observe`]): a handful of reads whatever the number of services, into [`Live`]
//!   with the configuration version, the free server slots and the frontend's missing rules.
//! - apply ([`apply`]): executes a plan compiled for [`DataplaneDriver::PROFILE`]: every
//!   structural change in **one transaction** committed with a synchronous reload, then server
//!   changes as slot writes that DPAPI applies through the runtime (no reload), drains through the
//!   runtime server endpoint, and routes as runtime map entries persisted with `force_sync`. The
//!   driver keeps no state between observe and apply: the plan says everything.

mod apply;
pub mod client;
pub mod error;
pub mod objects;
mod observe;
mod preflight;
mod routes;
pub mod segment;

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use reqwest::Method;
use url::Url;

use self::client::{Client, NO_BODY, Timeouts};
use self::error::DataplaneError;
use self::objects::wire;
use super::{ApplyReport, Driver, DriverError};
use crate::call_metrics::CallMetrics;
use crate::config::Secret;
use crate::live::Live;
use crate::model::MatchKind;
use crate::plan::{DriverProfile, Plan, ServerPlacement};

pub use routes::addressable_by_key;

/// Driver settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub address: Url,
    pub username: String,
    pub password: Option<Secret>,
    /// Frontend into which the host-map rules are inserted; `None`: the user wrote them.
    pub frontend: Option<String>,
    /// The directory DPAPI keeps maps in (`--maps-dir`), used in the frontend rules.
    pub maps_dir: String,
    /// How long a request may take, by whether it waits for a reload.
    pub timeouts: Timeouts,
}

pub struct DataplaneDriver {
    client: Client,
    opts: Options,
    /// The transaction being staged, so an abandoned pass can abort it.
    open_transaction: Mutex<Option<String>>,
    /// Whether `/v3/info` has shown a 3.x API (checked once, at the first observation).
    version_checked: AtomicBool,
}

const CONF: [&str; 3] = ["services", "haproxy", "configuration"];
const RUNTIME: [&str; 3] = ["services", "haproxy", "runtime"];

fn seg<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(rest).copied().collect()
}

fn map_name(kind: MatchKind) -> &'static str {
    kind.map_file().trim_end_matches(".map")
}

impl DataplaneDriver {
    /// Servers in configuration slots; `enable health` needs a reload (dataplaneapi#299); keys
    /// `{id}` cannot carry are changed by rewriting their map.
    pub const PROFILE: DriverProfile = DriverProfile {
        servers: ServerPlacement::Slots,
        enable_check_reloads: true,
        readd_after_reload: false,
        route_addressable: Some(addressable_by_key),
        persists_outcome: false,
    };

    /// A driver for the API at `opts.address`; its client records every request in `calls`.
    pub fn new(opts: Options, calls: CallMetrics) -> Result<DataplaneDriver, DriverError> {
        let client = Client::new(
            &opts.address,
            &opts.username,
            opts.password.clone(),
            opts.timeouts,
            calls,
        )?;
        Ok(DataplaneDriver {
            client,
            opts,
            open_transaction: Mutex::new(None),
            version_checked: AtomicBool::new(false),
        })
    }

    /// The API's version from `/v3/info`; an error names what answered when it is not 3.x.
    pub async fn api_version(&self) -> Result<String, DataplaneError> {
        let info = match self
            .client
            .call(Method::GET, "info", &["info"], &[], NO_BODY)
            .await
        {
            Ok(a) => a,
            Err(DataplaneError::NotFound { .. }) => {
                return Err(DataplaneError::Unsupported(format!(
                    "{} has no /v3/info: it is not a Data Plane API v3 (v2 answers under /v2; upgrade to 3.x)",
                    self.opts.address
                )));
            }
            Err(e) => return Err(e),
        };
        let version = info
            .parse::<wire::Info>()?
            .api
            .and_then(|a| a.version)
            .unwrap_or_default();
        let major = version
            .trim_start_matches('v')
            .split(['.', ' '])
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(3) => Ok(version),
            _ => Err(DataplaneError::Unsupported(format!(
                "{} runs Data Plane API `{version}`; the connector needs 3.x",
                self.opts.address
            ))),
        }
    }
}

impl Driver for DataplaneDriver {
    fn name(&self) -> &'static str {
        "dataplane"
    }

    fn profile(&self) -> DriverProfile {
        Self::PROFILE
    }

    async fn observe(&self) -> Result<Live, DriverError> {
        self.observe_inner().await.map_err(DriverError::from)
    }

    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        let report = self.apply_inner(plan).await.map_err(DriverError::from)?;
        for reload in &report.reloads {
            tracing::info!(driver = "dataplane", kind = reload.kind.as_str(), reason = %reload.detail, "HAProxy reload");
        }
        Ok(report)
    }

    async fn abandon(&self) {
        let open = self.open_transaction.lock().ok().and_then(|mut g| g.take());
        if let Some(id) = open {
            tracing::info!(transaction = %id, "aborting the transaction of an abandoned pass");
            self.abort(&id).await;
        }
    }
}
