//! The runtime-socket driver: HAProxy without the Data Plane API. It owns one configuration
//! fragment (loaded by HAProxy with an extra `-f`) and six route map files (hosts, paths, redirects), and talks to
//! HAProxy through the master CLI (`-S`) and the admin stats socket (or the master's `@1`).
//!
//! What each kind of change does, and how it survives a reload or restart:
//! - **Structural** (create, update or delete an owned backend): the fragment is rendered from the
//!   state the plan leads to, checked with `haproxy -c -f <main…> -f <candidate>`, swapped in
//!   atomically (rename) and HAProxy is reloaded through the master CLI. The reload is confirmed
//!   (3.0: `Success=1`; 2.6: the `show proc` counters and a new worker), and the driver waits until
//!   the new worker answers. A failed check or reload restores the previous files and is reported
//!   as [`DriverError::Rejected`] with HAProxy's message; the controller's backoff decides when to
//!   try again (never a hot loop here). The reload realises the whole file state at once (owned
//!   backends with their servers, maps); afterwards the connector's servers in backends it does not
//!   own (adopted and custom ones, whose hand-written sections it cannot rewrite) are added again
//!   at run time, since a reload drops every server that exists only at run time: the plan lists
//!   these re-adds ([`crate::plan::Action::ReaddServer`]) after its reload.
//! - **Runtime** (servers, weights, drains, checks, routes): admin-socket commands, no reload. The
//!   fragment and the map files are then rewritten (atomically, only when their text changes) so
//!   that a later reload or restart starts from the same state. The fragment lists only servers
//!   in rotation: a draining server is left out, because a reload would otherwise put it back in
//!   service; its sessions finish in the old worker.
//! - Servers in adopted and custom backends exist only at run time. After a restart that the
//!   connector did not cause, the next pass sees them missing and adds them again (within one
//!   resync period); after its own reloads the plan re-adds them at once.
//!
//! The driver decides nothing: it executes a plan compiled for [`RuntimeDriver::PROFILE`], whose
//! [`Plan::outcome`] is the state the files must hold.

mod apply;
pub mod files;
pub mod fragment;
mod observe;
mod preflight;
mod reload;
pub mod socket;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::debug;

use super::{ApplyReport, Cause, Driver, DriverError};
use crate::call_metrics::CallMetrics;
use crate::config::RuntimeConfig;
use crate::live::Live;
use crate::model::MatchKind;
use crate::plan::{DriverProfile, Plan, ServerPlacement};
use files::FileError;
use socket::{Cli, Outcome, WorkerRoute};

/// How long `haproxy -c` may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while waiting for a reload to show.
const POLL: Duration = Duration::from_millis(10);

/// Counters since the driver was created.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    pub reloads: AtomicU64,
    pub failed_reloads: AtomicU64,
    pub failed_validations: AtomicU64,
    pub commands: AtomicU64,
}

pub struct RuntimeDriver {
    cfg: RuntimeConfig,
    cli: Cli,
    stats: RuntimeStats,
}

fn unreachable(e: socket::SocketError) -> DriverError {
    DriverError::Unreachable(Cause::Socket(e))
}

fn file_error(e: FileError) -> DriverError {
    DriverError::Other(Cause::File(e))
}

impl RuntimeDriver {
    /// Servers added at run time; `enable health` at run time; a reload drops the servers in
    /// backends the connector does not own (re-added by the plan); the fragment and maps persist
    /// the state the plan leads to.
    pub const PROFILE: DriverProfile = DriverProfile {
        servers: ServerPlacement::Dynamic,
        enable_check_reloads: false,
        readd_after_reload: true,
        route_addressable: None,
        persists_outcome: true,
    };

    /// A driver for the HAProxy `cfg` describes; every CLI command, reload and failed
    /// validation is recorded in `calls`.
    pub fn new(cfg: RuntimeConfig, calls: CallMetrics) -> RuntimeDriver {
        let route = match &cfg.admin_socket {
            Some(p) => WorkerRoute::Admin(p.clone()),
            None => WorkerRoute::Master(cfg.master_socket.clone()),
        };
        let cli = Cli::new(route, cfg.master_socket.clone(), calls);
        RuntimeDriver {
            cfg,
            cli,
            stats: RuntimeStats::default(),
        }
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// Creates the map files and the fragment when they are missing (empty), so HAProxy can start
    /// with the frontend rules and the extra `-f` in place before the first pass. Blocking: call
    /// it before the Tokio runtime starts, or from `spawn_blocking`.
    pub fn ensure_files(&self) -> Result<(), DriverError> {
        let create_dir = |dir: &Path| {
            std::fs::create_dir_all(dir).map_err(|source| {
                file_error(FileError::Io {
                    action: "create",
                    path: dir.to_path_buf(),
                    source,
                })
            })
        };
        create_dir(Path::new(&self.cfg.maps_dir))?;
        for kind in MatchKind::ALL {
            let path = PathBuf::from(self.cfg.map_path(kind));
            if std::fs::symlink_metadata(&path).is_err() {
                files::write_atomic_blocking(
                    &path,
                    fragment::render_map(kind, &BTreeMap::new()).as_bytes(),
                )
                .map_err(file_error)?;
            }
        }
        if std::fs::symlink_metadata(&self.cfg.fragment).is_err() {
            if let Some(dir) = self.cfg.fragment.parent() {
                create_dir(dir)?;
            }
            files::write_atomic_blocking(
                &self.cfg.fragment,
                fragment::render(&BTreeMap::new()).as_bytes(),
            )
            .map_err(file_error)?;
        }
        Ok(())
    }

    /// One worker command; its raw reply.
    async fn worker(&self, cmd: &str) -> Result<String, DriverError> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        self.cli.worker(cmd).await.map_err(unreachable)
    }

    /// One state-changing worker command, interpreted.
    async fn change(
        &self,
        cmd: &str,
        success: &[&str],
        report: &mut ApplyReport,
    ) -> Result<Outcome, DriverError> {
        report.requests += 1;
        let reply = self.worker(cmd).await?;
        let outcome = socket::outcome(&reply, success);
        debug!(command = cmd, ?outcome, "runtime command");
        Ok(outcome)
    }

    /// One worker `show` command: its text. Every command HAProxy runs is answered at least with
    /// the terminator `\n`; zero bytes mean it did not run, which must not read as "nothing there".
    async fn show(&self, cmd: &str) -> Result<String, DriverError> {
        let reply = self.worker(cmd).await?;
        if reply.is_empty() {
            return Err(DriverError::Other(Cause::Message(format!(
                "no reply from HAProxy to `{cmd}` (the command did not run)"
            ))));
        }
        Ok(reply)
    }

    async fn master(&self, cmd: &str) -> Result<String, DriverError> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        self.cli.master(cmd).await.map_err(unreachable)
    }

    async fn show_proc(&self) -> Result<state::ProcState, DriverError> {
        let text = self.master("show proc").await?;
        state::proc(&text).map_err(|e| DriverError::Other(Cause::Parse(e)))
    }
}

impl Driver for RuntimeDriver {
    fn name(&self) -> &'static str {
        "runtime"
    }

    fn profile(&self) -> DriverProfile {
        Self::PROFILE
    }

    async fn observe(&self) -> Result<Live, DriverError> {
        self.observe_inner().await
    }

    async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        self.apply_plan(plan).await
    }
}

#[cfg(test)]
mod tests;
