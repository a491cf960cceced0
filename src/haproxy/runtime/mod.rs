//! The runtime-socket driver: HAProxy without the Data Plane API. It owns one configuration
//! fragment (loaded by HAProxy with an extra `-f`) and four host-route map files, and talks to
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
//!   at run time, since a reload drops every server that exists only at run time.
//! - **Runtime** (servers, weights, drains, checks, routes): admin-socket commands, no reload. The
//!   fragment and the map files are then rewritten (atomically, only when their text changes) so
//!   that a later reload or restart starts from the same state. The fragment lists only servers
//!   in rotation: a draining server is left out, because a reload would otherwise put it back in
//!   service; its sessions finish in the old worker.
//! - Servers in adopted and custom backends exist only at run time. After a restart that the
//!   connector did not cause, the next pass sees them missing and adds them again (within one
//!   resync period); after its own reloads the driver re-adds them at once.

pub mod files;
pub mod fragment;
mod preflight;
pub mod socket;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{ApplyReport, Driver, DriverError, Reload, ReloadKind};
use crate::call_metrics::CallMetrics;
use crate::config::RuntimeConfig;
use crate::desired::{Desired, Ownership};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{
    AdminState, BackendSettings, CheckSpec, Endpoint, MatchKind, Mode, RouteKey, is_owned_server,
};
use crate::plan::{Action, Plan, sim};
use files::{Candidate, FileError, RestoreError};
use fragment::FragmentBackend;
use socket::{Cli, Outcome, RELOAD_TIMEOUT, WorkerRoute};

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
    DriverError::Unreachable(e.to_string())
}

fn file_error(e: FileError) -> DriverError {
    DriverError::Other(e.to_string())
}

/// `error` (a failed check or reload) with the failure to restore the previous files added.
fn with_restore_failure(error: DriverError, restore: &RestoreError) -> DriverError {
    let add = |m: String| format!("{m}; {restore}");
    match error {
        DriverError::Conflict(m) => DriverError::Conflict(add(m)),
        DriverError::Unreachable(m) => DriverError::Unreachable(add(m)),
        DriverError::Rejected(m) => DriverError::Rejected(add(m)),
        DriverError::Other(m) => DriverError::Other(add(m)),
    }
}

impl RuntimeDriver {
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
            return Err(DriverError::Other(format!(
                "no reply from HAProxy to `{cmd}` (the command did not run)"
            )));
        }
        Ok(reply)
    }

    async fn master(&self, cmd: &str) -> Result<String, DriverError> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        self.cli.master(cmd).await.map_err(unreachable)
    }

    async fn show_proc(&self) -> Result<state::ProcState, DriverError> {
        let text = self.master("show proc").await?;
        state::proc(&text).map_err(|e| DriverError::Other(e.to_string()))
    }

    /// Reads the fragment on disk: the record of which backends are the connector's.
    async fn read_fragment(
        &self,
    ) -> Result<BTreeMap<String, Option<BackendSettings>>, DriverError> {
        Ok(files::read_optional(&self.cfg.fragment)
            .await
            .map_err(file_error)?
            .map(|text| fragment::parse(&text))
            .unwrap_or_default())
    }

    /// Renders the fragment for the state `after` (the live state once the plan is applied).
    fn render_fragment(&self, after: &Live, desired: &Desired) -> String {
        let mut backends = BTreeMap::new();
        for (name, b) in after.backends.iter().filter(|(_, b)| b.owned) {
            let Some(settings) = b
                .settings
                .clone()
                .or_else(|| desired.backends.get(name).map(|d| d.settings.clone()))
            else {
                warn!(backend = %name, "owned backend with unreadable settings left out of the fragment");
                continue;
            };
            let servers = b
                .servers
                .values()
                .filter(|s| is_owned_server(&s.name) && s.admin == AdminState::Ready)
                .filter_map(|s| s.endpoint.map(|e| (s.name.clone(), (e, s.weight))))
                .collect();
            backends.insert(name.clone(), FragmentBackend { settings, servers });
        }
        fragment::render(&backends)
    }

    fn render_maps(&self, after: &Live) -> Vec<(PathBuf, String)> {
        // A key the CLI refuses was not applied at run time: it stays out of the files too (and
        // one with whitespace would split a map line).
        let routes: BTreeMap<RouteKey, String> = after
            .routes
            .iter()
            .filter(|(k, _)| socket::map_key(&k.key).is_ok())
            .filter_map(|(k, v)| v.first().map(|b| (k.clone(), b.clone())))
            .collect();
        MatchKind::ALL
            .iter()
            .map(|k| {
                (
                    PathBuf::from(self.cfg.map_path(*k)),
                    fragment::render_map(*k, &routes),
                )
            })
            .collect()
    }

    /// Runs `haproxy -c` over the main configuration and `candidate`.
    async fn validate(&self, candidate: &Path) -> Result<(), DriverError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.arg("-c");
        for c in &self.cfg.configs {
            cmd.arg("-f").arg(c);
        }
        cmd.arg("-f").arg(candidate);
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(VALIDATE_TIMEOUT, cmd.output())
            .await
            .map_err(|_| DriverError::Other("haproxy -c timed out".into()))?
            .map_err(|e| {
                DriverError::Other(format!("cannot run {} -c: {e}", self.cfg.binary.display()))
            })?;
        if out.status.success() {
            return Ok(());
        }
        self.stats
            .failed_validations
            .fetch_add(1, Ordering::Relaxed);
        self.cli.calls().count("validation", "failed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // HAProxy's alerts and warnings; its NOTICE lines (version, path) say nothing here.
        let message: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("[NOTICE]"))
            .collect();
        Err(DriverError::Rejected(format!(
            "haproxy -c refused the candidate configuration: {}",
            message.join("\n")
        )))
    }

    /// Reloads HAProxy through the master CLI and waits until the new worker serves. Returns
    /// HAProxy's message when the reload failed.
    async fn reload(&self) -> Result<(), DriverError> {
        let before = self.show_proc().await?;
        let reply = self.master("reload").await?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        if reply.contains("Success=0") {
            return Err(DriverError::Rejected(format!(
                "reload failed: {}",
                reply.trim()
            )));
        }
        // 2.6 answers nothing: the counters tell. 3.0 said Success=1; the same wait finds the
        // new worker.
        let restarted = || {
            DriverError::Unreachable(
                "HAProxy was restarted during the reload (new master process); the next pass observes it afresh"
                    .into(),
            )
        };
        let after = loop {
            if let Ok(p) = self.show_proc().await {
                if p.master_pid != before.master_pid {
                    return Err(restarted());
                }
                if p.failed > before.failed {
                    return Err(DriverError::Rejected(format!(
                        "reload failed (show proc: {} failed reloads, was {}); see HAProxy's log",
                        p.failed, before.failed
                    )));
                }
                let new_worker = p
                    .workers
                    .iter()
                    .any(|w| !before.workers.contains(w) && !before.old_workers.contains(w));
                if p.reloads > before.reloads && new_worker {
                    break p;
                }
            }
            if Instant::now() > deadline {
                return Err(DriverError::Unreachable(
                    "HAProxy did not report a new worker after the reload".into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let Some(pid) = after
            .workers
            .iter()
            .copied()
            .find(|w| !before.workers.contains(w))
        else {
            return Ok(());
        };
        if let WorkerRoute::Admin(_) = self.cli.route() {
            // The old worker may still hold the admin socket for a moment: wait until the new
            // one answers, twice in a row.
            let mut seen = 0;
            while seen < 2 {
                let answer = self.worker("show info").await.ok();
                if answer.as_deref().and_then(state::info_pid) == Some(pid) {
                    seen += 1;
                } else {
                    seen = 0;
                }
                if seen == 0
                    && let Ok(p) = self.show_proc().await
                    && p.master_pid != before.master_pid
                {
                    return Err(restarted());
                }
                if Instant::now() > deadline {
                    return Err(DriverError::Unreachable(format!(
                        "the new worker {pid} did not answer on the admin socket"
                    )));
                }
                if seen < 2 {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        Ok(())
    }

    /// The structural path: render, validate, swap, reload, confirm; restore on failure.
    async fn apply_structural(
        &self,
        plan: &Plan,
        desired: &Desired,
        after: &Live,
        report: &mut ApplyReport,
    ) -> Result<(), DriverError> {
        let reasons: Vec<String> = plan
            .ops
            .iter()
            .filter(|o| o.kind == crate::plan::OpKind::Structural)
            .map(|o| {
                format!(
                    "{} {}: {}",
                    o.action.name(),
                    o.action.backend().unwrap_or(""),
                    o.reason
                )
            })
            .collect();
        let text = self.render_fragment(after, desired);
        let maps = self.render_maps(after);
        let mut previous = Vec::new();
        for path in std::iter::once(&self.cfg.fragment).chain(maps.iter().map(|(p, _)| p)) {
            if let Some(old) = files::read_optional(path).await.map_err(file_error)? {
                previous.push((path.clone(), old));
            }
        }
        // Puts the previous files back; a failure to do so is added to `error` (and logged).
        let restore = |why: &'static str, error: DriverError| {
            let previous = previous.clone();
            async move {
                warn!(reason = why, "restoring the previous fragment and maps");
                match files::restore(previous).await {
                    Ok(()) => error,
                    Err(r) => {
                        tracing::error!(reason = why, error = %r, "cannot restore the previous fragment and maps; the files on disk no longer match what HAProxy runs");
                        with_restore_failure(error, &r)
                    }
                }
            }
        };
        // Maps first: `haproxy -c` loads them too (a regex HAProxy cannot compile fails here).
        for (path, content) in &maps {
            if let Err(e) = files::write_if_changed(path, content.clone()).await {
                return Err(restore("writing a map failed", file_error(e)).await);
            }
        }
        let candidate = match Candidate::create(&self.cfg.fragment, text).await {
            Ok(c) => c,
            Err(e) => return Err(restore("writing the candidate failed", file_error(e)).await),
        };
        if let Err(e) = self.validate(candidate.path()).await {
            warn!(error = %e, "candidate configuration rejected");
            if let Err(d) = candidate.discard().await {
                warn!(error = %d, "cannot remove the rejected candidate");
            }
            return Err(restore("validation failed", e).await);
        }
        if let Err(e) = candidate.install(&self.cfg.fragment).await {
            return Err(restore("installing the fragment failed", file_error(e)).await);
        }
        report.requests += 2;
        match self.reload().await {
            Ok(()) => {
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                self.cli.calls().count("reload", "ok");
                info!(reasons = ?reasons, "HAProxy reloaded");
                report
                    .reloads
                    .push(Reload::new(ReloadKind::Structural, reasons.join("; ")));
            }
            Err(e) => {
                self.stats.failed_reloads.fetch_add(1, Ordering::Relaxed);
                self.cli.calls().count("reload", "failed");
                warn!(error = %e, "reload failed");
                return Err(restore("reload failed", e).await);
            }
        }
        // A reload drops the connector's run-time servers in backends it does not own.
        let mut refused = Vec::new();
        for (name, d) in &desired.backends {
            if d.ownership == Ownership::Owned {
                continue;
            }
            let Some(b) = after.backends.get(name) else {
                continue;
            };
            for s in b.servers.values() {
                if !is_owned_server(&s.name) || s.admin != AdminState::Ready {
                    continue;
                }
                let Some(endpoint) = s.endpoint else { continue };
                let check = d.settings.check.is_enabled();
                if let OpOutcome::Refused(m) = self
                    .add_server(
                        name,
                        &s.name,
                        endpoint,
                        s.weight,
                        check,
                        d.settings.maxconn,
                        &d.settings.check,
                        report,
                    )
                    .await?
                {
                    refused.push(m);
                }
            }
        }
        report.applied += plan.ops.len();
        report.refused.extend(refused);
        Ok(())
    }

    /// `add server` (+ `enable health`) + `set server … state ready`. A refusal carries its
    /// message (the next pass retries).
    #[allow(clippy::too_many_arguments)]
    async fn add_server(
        &self,
        backend: &str,
        server: &str,
        endpoint: Endpoint,
        weight: u16,
        check: bool,
        maxconn: Option<u32>,
        spec: &CheckSpec,
        report: &mut ApplyReport,
    ) -> Result<OpOutcome, DriverError> {
        let target = match args(
            "add_server",
            backend,
            server,
            [Arg::Plain(&format!("{backend}/{server}"))],
        ) {
            Ok([t]) => t,
            Err(m) => return Ok(OpOutcome::Refused(m)),
        };
        let mut cmd = format!("add server {target} {endpoint}");
        if check {
            cmd.push_str(" check");
            if let Some(t) = spec.timing() {
                cmd.push_str(&format!(
                    " inter {}ms fall {} rise {}",
                    t.interval_ms, t.fall, t.rise
                ));
            }
        }
        cmd.push_str(&format!(" weight {weight}"));
        if let Some(m) = maxconn {
            cmd.push_str(&format!(" maxconn {m}"));
        }
        let mut steps: Vec<(String, &[&str])> = vec![(cmd, &["New server registered."])];
        if check {
            steps.push((format!("enable health {target}"), &[]));
        }
        steps.push((format!("set server {target} state ready"), &[]));
        for (cmd, success) in &steps {
            if let Some(m) = self.change(cmd, success, report).await?.failure(cmd) {
                warn!(backend, object = server, op = "add_server", message = %m, "HAProxy refused");
                return Ok(OpOutcome::Refused(m));
            }
        }
        info!(backend, server, op = "add_server", %endpoint, weight, check, "server added");
        Ok(OpOutcome::Applied)
    }

    /// One runtime operation. [`OpOutcome::Refused`] is a refusal: by HAProxy, or by the driver
    /// before sending anything when an argument cannot be carried by the CLI (see
    /// [`socket::cli_arg`]).
    async fn apply_runtime_op(
        &self,
        action: &Action,
        live: &Live,
        desired: &Desired,
        report: &mut ApplyReport,
    ) -> Result<OpOutcome, DriverError> {
        macro_rules! args {
            ($op:expr, $backend:expr, $object:expr, [$($arg:expr),+]) => {
                match args($op, $backend, $object, [$($arg),+]) {
                    Ok(a) => a,
                    Err(m) => return Ok(OpOutcome::Refused(m)),
                }
            };
        }
        match action {
            Action::AddServer {
                backend,
                server,
                endpoint,
                weight,
                check,
                maxconn,
            } => {
                let spec = desired
                    .backends
                    .get(backend)
                    .map(|d| d.settings.check.clone())
                    .unwrap_or(CheckSpec::None);
                self.add_server(
                    backend, server, *endpoint, *weight, *check, *maxconn, &spec, report,
                )
                .await
            }
            Action::ReadyServer { backend, server } => {
                let [t] = args!(
                    "ready_server",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let cmd = format!("set server {t} state ready");
                self.refusal(&cmd, &[], report, "ready_server", backend, server)
                    .await
            }
            Action::EnableCheck { backend, server } => {
                let [t] = args!(
                    "enable_check",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let cmd = format!("enable health {t}");
                self.refusal(&cmd, &[], report, "enable_check", backend, server)
                    .await
            }
            Action::SetWeight {
                backend,
                server,
                weight,
            } => {
                let [t] = args!(
                    "set_weight",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let cmd = format!("set server {t} weight {weight}");
                self.refusal(&cmd, &[], report, "set_weight", backend, server)
                    .await
            }
            Action::DrainServer { backend, server } => {
                let [t] = args!(
                    "drain_server",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let cmd = format!("set server {t} state drain");
                self.refusal(&cmd, &[], report, "drain_server", backend, server)
                    .await
            }
            Action::RemoveServer { backend, server } => {
                let [t] = args!(
                    "remove_server",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let maint = format!("set server {t} state maint");
                if let OpOutcome::Refused(m) = self
                    .refusal(&maint, &[], report, "remove_server", backend, server)
                    .await?
                {
                    return Ok(OpOutcome::Refused(m));
                }
                let del = format!("del server {t}");
                match self.change(&del, &["Server deleted."], report).await? {
                    Outcome::Done => {
                        info!(backend = %backend, server = %server, op = "remove_server", "server deleted");
                        Ok(OpOutcome::Applied)
                    }
                    Outcome::Refused(m) if m.contains("still has connections") => {
                        // The diff asks for removal when sessions are gone or the drain timed
                        // out: close what is left, try once more, else the next pass retries.
                        let shut = format!("shutdown sessions server {t}");
                        let _ = self.change(&shut, &[], report).await?;
                        match self.change(&del, &["Server deleted."], report).await? {
                            Outcome::Done => Ok(OpOutcome::Applied),
                            Outcome::Refused(m) => {
                                info!(backend = %backend, server = %server, op = "remove_server", reason = %m, "server still busy; left for the next pass");
                                Ok(OpOutcome::Applied)
                            }
                            other => {
                                Ok(OpOutcome::Refused(other.failure(&del).unwrap_or_default()))
                            }
                        }
                    }
                    other => Ok(OpOutcome::Refused(other.failure(&del).unwrap_or_default())),
                }
            }
            Action::AddRoute { route, backend } => {
                let [file, key, value] = args!(
                    "add_route",
                    backend,
                    &route.key,
                    [
                        Arg::Plain(&self.cfg.map_path(route.kind)),
                        Arg::MapKey(&route.key),
                        Arg::Plain(backend)
                    ]
                );
                let cmd = format!("add map {file} {key} {value}");
                self.refusal(&cmd, &[], report, "add_route", backend, &route.key)
                    .await
            }
            Action::SetRoute { route, backend } => {
                let [file, key, value] = args!(
                    "set_route",
                    backend,
                    &route.key,
                    [
                        Arg::Plain(&self.cfg.map_path(route.kind)),
                        Arg::MapKey(&route.key),
                        Arg::Plain(backend)
                    ]
                );
                if live.routes.get(route).is_some_and(|v| v.len() == 1) {
                    let cmd = format!("set map {file} {key} {value}");
                    self.refusal(&cmd, &[], report, "set_route", backend, &route.key)
                        .await
                } else {
                    let del = format!("del map {file} {key}");
                    if let OpOutcome::Refused(m) = self
                        .refusal(&del, &[], report, "set_route", backend, &route.key)
                        .await?
                    {
                        return Ok(OpOutcome::Refused(m));
                    }
                    let add = format!("add map {file} {key} {value}");
                    self.refusal(&add, &[], report, "set_route", backend, &route.key)
                        .await
                }
            }
            Action::RemoveRoute { route } => {
                let [file, key] = args!(
                    "remove_route",
                    "",
                    &route.key,
                    [
                        Arg::Plain(&self.cfg.map_path(route.kind)),
                        Arg::MapKey(&route.key)
                    ]
                );
                let cmd = format!("del map {file} {key}");
                self.refusal(&cmd, &[], report, "remove_route", "", &route.key)
                    .await
            }
            // This driver never reports the rules missing: the frontend is the user's file.
            Action::InsertRouteRules => Ok(OpOutcome::Applied),
            Action::CreateBackend { backend, .. }
            | Action::UpdateBackend { backend, .. }
            | Action::DeleteBackend { backend } => Err(DriverError::Other(format!(
                "structural operation on {backend} outside a reload"
            ))),
        }
    }

    async fn refusal(
        &self,
        cmd: &str,
        success: &[&str],
        report: &mut ApplyReport,
        op: &'static str,
        backend: &str,
        object: &str,
    ) -> Result<OpOutcome, DriverError> {
        let outcome = self.change(cmd, success, report).await?;
        match outcome.failure(cmd) {
            None => {
                info!(backend, object, op, "applied");
                Ok(OpOutcome::Applied)
            }
            Some(m) => {
                warn!(backend, object, op, message = %m, "HAProxy refused");
                Ok(OpOutcome::Refused(m))
            }
        }
    }
}

/// What became of one runtime operation that HAProxy (or the driver, before sending) can refuse
/// without failing the pass. Failures that end the pass are the `Err` around it.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
enum OpOutcome {
    Applied,
    /// Refused: the message for the pass's report; the next pass retries.
    Refused(String),
}

/// One variable argument of a CLI command.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Plain(&'a str),
    /// A map key: also read back from `show map` and written to map files.
    MapKey(&'a str),
}

/// The escaped arguments, or the refusal message (logged) when one cannot be carried by the CLI:
/// the command is then never sent.
fn args<const N: usize>(
    op: &'static str,
    backend: &str,
    object: &str,
    args: [Arg<'_>; N],
) -> Result<[String; N], String> {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, arg) in out.iter_mut().zip(args) {
        let escaped = match arg {
            Arg::Plain(a) => socket::cli_arg(a),
            Arg::MapKey(k) => socket::map_key(k),
        };
        match escaped {
            Ok(e) => *slot = e,
            Err(e) => {
                warn!(backend, object, op, error = %e, "operation refused before reaching HAProxy");
                return Err(format!("{op} {object}: not sent: {e}"));
            }
        }
    }
    Ok(out)
}

impl Driver for RuntimeDriver {
    fn name(&self) -> &'static str {
        "runtime"
    }

    async fn observe(&self) -> Result<Live, DriverError> {
        let parse = |e: state::ParseError| DriverError::Other(e.to_string());
        let names = state::backends(&self.show("show backend").await?).map_err(parse)?;
        let servers =
            state::servers_state(&self.show("show servers state").await?).map_err(parse)?;
        let stat = state::stat(&self.show("show stat").await?).map_err(parse)?;
        let ours = self.read_fragment().await?;
        let sessions = state::sessions(&stat);
        let proxies: BTreeMap<&str, &state::StatRow> = stat
            .iter()
            .filter(|r| r.name == "BACKEND")
            .map(|r| (r.proxy.as_str(), r))
            .collect();

        let mut live = Live::default();
        for name in names {
            let row = proxies.get(name.as_str());
            let settings = ours.get(&name).cloned().flatten();
            let owned = ours.contains_key(&name);
            let mode = match (&settings, row.map(|r| r.mode.as_str())) {
                (Some(s), _) => s.mode,
                (None, Some("tcp")) => Mode::Tcp,
                _ => Mode::Http,
            };
            let balance = row
                .map(|r| r.algo.clone())
                .filter(|a| !a.is_empty())
                .or_else(|| settings.as_ref().map(|s| s.balance.as_str().to_string()));
            live.backends.insert(
                name.clone(),
                LiveBackend {
                    name,
                    owned,
                    mode,
                    balance,
                    settings,
                    servers: BTreeMap::new(),
                },
            );
        }
        for s in servers {
            let Some(b) = live.backends.get_mut(&s.backend) else {
                continue;
            };
            let sessions = sessions
                .get(&(s.backend.clone(), s.server.clone()))
                .copied()
                .unwrap_or(0);
            b.servers.insert(
                s.server.clone(),
                LiveServer {
                    name: s.server,
                    endpoint: s.endpoint,
                    admin: s.admin,
                    op: s.op,
                    check_enabled: s.check_enabled,
                    weight: s.weight,
                    sessions,
                    drain_started: None,
                },
            );
        }
        for kind in MatchKind::ALL {
            let file = self.cfg.map_path(kind);
            let arg = socket::cli_arg(&file)
                .map_err(|e| DriverError::Other(format!("map file {file}: {e}")))?;
            let reply = self.show(&format!("show map {arg}")).await?;
            match state::map_entries(&reply) {
                Ok(entries) => {
                    for (key, backend) in entries {
                        live.routes
                            .entry(RouteKey { kind, key })
                            .or_default()
                            .push(backend);
                    }
                }
                Err(e) => {
                    // The frontend does not reference this map: routes of this kind cannot be
                    // served (their `add map` will be refused with HAProxy's message).
                    warn!(map = %file, error = %e, "host map not loaded by HAProxy; add the frontend rules from the README");
                }
            }
        }
        Ok(live)
    }

    async fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        live: &Live,
    ) -> Result<ApplyReport, DriverError> {
        let mut report = ApplyReport::default();
        let mut after = live.clone();
        sim::apply(&mut after, plan);
        if plan.has_structural() {
            self.apply_structural(plan, desired, &after, &mut report)
                .await?;
            return Ok(report);
        }
        let mut refused = Vec::new();
        let mut touched_routes = false;
        for op in &plan.ops {
            touched_routes |= matches!(
                op.action,
                Action::AddRoute { .. } | Action::SetRoute { .. } | Action::RemoveRoute { .. }
            );
            match self
                .apply_runtime_op(&op.action, live, desired, &mut report)
                .await?
            {
                OpOutcome::Applied => report.applied += 1,
                OpOutcome::Refused(m) => refused.push(m),
            }
        }
        // Persist for the next reload or restart.
        let text = self.render_fragment(&after, desired);
        files::write_if_changed(&self.cfg.fragment, text)
            .await
            .map_err(file_error)?;
        if touched_routes {
            for (path, content) in self.render_maps(&after) {
                files::write_if_changed(&path, content)
                    .await
                    .map_err(file_error)?;
            }
        }
        report.refused.extend(refused);
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
