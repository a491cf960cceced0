//! The structural path: the fragment and maps rendered from the state the plan leads to
//! ([`Plan::outcome`]), checked with `haproxy -c`, swapped in, HAProxy reloaded through the
//! master CLI and the reload confirmed; the previous files restored on failure. Then the plan's
//! re-adds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{info, warn};

use super::apply::OpOutcome;
use super::files::{self, Candidate};
use super::fragment::{self, FragmentBackend};
use super::socket::{self, RELOAD_TIMEOUT, WorkerRoute};
use super::{POLL, RuntimeDriver, VALIDATE_TIMEOUT, file_error, state};
use crate::haproxy::{ApplyReport, Cause, DriverError, Reload};
use crate::model::{MatchKind, RouteKey};
use crate::plan::{Action, Outcome, Plan, ReloadReason};

impl RuntimeDriver {
    /// Renders the fragment for the state the plan leads to.
    pub(super) fn render_fragment(&self, outcome: &Outcome) -> String {
        for backend in &outcome.unreadable {
            warn!(backend = %backend, "owned backend with unreadable settings left out of the fragment");
        }
        let backends: BTreeMap<String, FragmentBackend> = outcome
            .backends
            .iter()
            .map(|(name, b)| {
                (
                    name.clone(),
                    FragmentBackend {
                        settings: b.settings.clone(),
                        servers: b.servers.clone(),
                    },
                )
            })
            .collect();
        fragment::render(&backends)
    }

    pub(super) fn render_maps(&self, outcome: &Outcome) -> Vec<(PathBuf, String)> {
        // A key the CLI refuses was not applied at run time: it stays out of the files too (and
        // one with whitespace would split a map line).
        let routes: BTreeMap<RouteKey, String> = outcome
            .routes
            .iter()
            .filter(|(k, _)| socket::map_key(&k.key).is_ok())
            .map(|(k, b)| (k.clone(), b.clone()))
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
    pub(super) async fn validate(&self, candidate: &Path) -> Result<(), DriverError> {
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.arg("-c");
        for c in &self.cfg.configs {
            cmd.arg("-f").arg(c);
        }
        cmd.arg("-f").arg(candidate);
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(VALIDATE_TIMEOUT, cmd.output())
            .await
            .map_err(|_| DriverError::Other(Cause::message("haproxy -c timed out")))?
            .map_err(|source| {
                DriverError::Other(Cause::Spawn {
                    binary: self.cfg.binary.clone(),
                    source,
                })
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
        Err(DriverError::Rejected(Cause::Message(format!(
            "haproxy -c refused the candidate configuration: {}",
            message.join("\n")
        ))))
    }

    /// Reloads HAProxy through the master CLI and waits until the new worker serves. Returns
    /// HAProxy's message when the reload failed.
    pub(super) async fn reload(&self) -> Result<(), DriverError> {
        let before = self.show_proc().await?;
        let reply = self.master("reload").await?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        if reply.contains("Success=0") {
            return Err(DriverError::Rejected(Cause::Message(format!(
                "reload failed: {}",
                reply.trim()
            ))));
        }
        // 2.6 answers nothing: the counters tell. 3.0 said Success=1; the same wait finds the
        // new worker.
        let restarted = || {
            DriverError::Unreachable(Cause::message(
                "HAProxy was restarted during the reload (new master process); the next pass observes it afresh",
            ))
        };
        let after = loop {
            if let Ok(p) = self.show_proc().await {
                if p.master_pid != before.master_pid {
                    return Err(restarted());
                }
                if p.failed > before.failed {
                    return Err(DriverError::Rejected(Cause::Message(format!(
                        "reload failed (show proc: {} failed reloads, was {}); see HAProxy's log",
                        p.failed, before.failed
                    ))));
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
                return Err(DriverError::Unreachable(Cause::message(
                    "HAProxy did not report a new worker after the reload",
                )));
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
                    return Err(DriverError::Unreachable(Cause::Message(format!(
                        "the new worker {pid} did not answer on the admin socket"
                    ))));
                }
                if seen < 2 {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        Ok(())
    }

    /// The structural path: render, validate, swap, reload, confirm; restore on failure.
    pub(super) async fn apply_structural(
        &self,
        plan: &Plan,
        outcome: &Outcome,
        report: &mut ApplyReport,
    ) -> Result<(), DriverError> {
        let reason = plan
            .reloads()
            .iter()
            .find(|r| matches!(r, ReloadReason::Structural { .. }))
            .cloned()
            .unwrap_or(ReloadReason::Structural {
                changes: Vec::new(),
            });
        let text = self.render_fragment(outcome);
        let maps = self.render_maps(outcome);
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
                        error.with_restore_failure(r)
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
                info!(reason = %reason, "HAProxy reloaded");
                report.reloads.push(Reload::new(reason));
            }
            Err(e) => {
                self.stats.failed_reloads.fetch_add(1, Ordering::Relaxed);
                self.cli.calls().count("reload", "failed");
                warn!(error = %e, "reload failed");
                return Err(restore("reload failed", e).await);
            }
        }
        // The reload realised the whole file state; what exists only at run time (the plan's
        // re-adds) comes after it.
        for op in &plan.ops {
            let outcome = match &op.action {
                Action::ReaddServer {
                    backend,
                    server,
                    endpoint,
                    weight,
                    check,
                    maxconn,
                    timing,
                } => {
                    self.add_server(
                        backend, server, *endpoint, *weight, *check, *maxconn, *timing, report,
                    )
                    .await?
                }
                _ => OpOutcome::Applied,
            };
            match outcome {
                OpOutcome::Applied => report.applied += 1,
                OpOutcome::Refused(m) => report.refused.push(m),
            }
        }
        Ok(())
    }
}
