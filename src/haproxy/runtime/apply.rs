//! The run-time path: each operation of a plan without structure as admin-socket commands (no
//! reload), then the fragment and maps rewritten from the state the plan leads to
//! ([`Plan::outcome`]) so a later reload or restart starts from it.

use tracing::{info, warn};

use super::socket::{self, Outcome};
use super::{RuntimeDriver, file_error, files};
use crate::haproxy::{ApplyReport, Cause, DriverError};
use crate::model::{BackendSettings, CheckTiming, Endpoint};
use crate::plan::{Action, Outcome as PlanOutcome, Plan};

impl RuntimeDriver {
    /// Executes `plan`: through a reload when it has structure, else command by command.
    pub(super) async fn apply_plan(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
        let mut report = ApplyReport::default();
        let Some(outcome) = &plan.outcome else {
            return Err(DriverError::Other(Cause::message(
                "the plan carries no outcome: compile it for this driver's profile",
            )));
        };
        if plan.has_structural() {
            self.apply_structural(plan, outcome, &mut report).await?;
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
                .apply_runtime_op(&op.action, outcome, &mut report)
                .await?
            {
                OpOutcome::Applied => report.applied += 1,
                OpOutcome::Refused(m) => refused.push(m),
            }
        }
        // Persist for the next reload or restart.
        let text = self.render_fragment(outcome);
        files::write_if_changed(&self.cfg.fragment, text)
            .await
            .map_err(file_error)?;
        if touched_routes {
            for (path, content) in self.render_maps(outcome) {
                files::write_if_changed(&path, content)
                    .await
                    .map_err(file_error)?;
            }
        }
        report.refused.extend(refused);
        Ok(report)
    }

    /// message (the next pass retries).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn add_server(
        &self,
        backend: &str,
        server: &str,
        endpoint: Endpoint,
        weight: u16,
        check: bool,
        maxconn: Option<u32>,
        timing: Option<CheckTiming>,
        owned: Option<&BackendSettings>,
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
            if let Some(t) = timing {
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
        // A server added at run time inherits nothing from `default-server`: TLS to it is
        // written on the command (every word escaped for the CLI).
        if let Some(tls) = owned.and_then(|s| s.tls.as_ref()) {
            for k in tls.server_keywords(check) {
                match socket::cli_arg(&k) {
                    Ok(k) => {
                        cmd.push(' ');
                        cmd.push_str(&k);
                    }
                    Err(e) => {
                        warn!(backend, object = server, op = "add_server", error = %e, "operation refused before reaching HAProxy");
                        return Ok(OpOutcome::Refused(format!(
                            "add_server {server}: not sent: {e}"
                        )));
                    }
                }
            }
        }
        let mut steps: Vec<(String, &[&str])> = vec![(cmd, &["New server registered."])];
        if check {
            steps.push((format!("enable health {target}"), &[]));
        }
        if owned.is_some_and(|s| s.sticky.is_some()) {
            // HAProxy 2.6 gives a server added at run time no dynamic cookie; enabling the
            // backend's dynamic cookies again computes it (3.0 does so itself; harmless there).
            let [b] = match args("add_server", backend, server, [Arg::Plain(backend)]) {
                Ok(a) => a,
                Err(m) => return Ok(OpOutcome::Refused(m)),
            };
            steps.push((format!("enable dynamic-cookie backend {b}"), &[]));
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

    /// One runtime operation. `Ok(OpOutcome::Refused(message))` is a refusal: by HAProxy, or by the driver before
    /// sending anything when an argument cannot be carried by the CLI (see [`socket::cli_arg`]).
    pub(super) async fn apply_runtime_op(
        &self,
        action: &Action,
        outcome: &PlanOutcome,
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
                timing,
            } => {
                let owned = outcome.backends.get(backend).map(|b| &b.settings);
                self.add_server(
                    backend, server, *endpoint, *weight, *check, *maxconn, *timing, owned, report,
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
            Action::EnableCheck {
                backend, server, ..
            } => {
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
                ..
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
            Action::MaintServer { backend, server } => {
                let [t] = args!(
                    "maint_server",
                    backend,
                    server,
                    [Arg::Plain(&format!("{backend}/{server}"))]
                );
                let cmd = format!("set server {t} state maint");
                self.refusal(&cmd, &[], report, "maint_server", backend, server)
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
            Action::SetRoute {
                route,
                backend,
                entries,
            } => {
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
                if *entries == 1 {
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
            Action::InsertRouteRules { .. } => Ok(OpOutcome::Applied),
            // Only after a reload, which this plan does not have.
            Action::ReaddServer {
                backend, server, ..
            } => Ok(OpOutcome::Refused(format!(
                "re-add {backend}/{server}: the plan has no reload to re-add after"
            ))),
            Action::RewriteMap { map, .. } => Ok(OpOutcome::Refused(format!(
                "rewrite {}: not an operation of this driver (every key goes through the CLI)",
                map.map_file()
            ))),
            Action::CreateBackend { backend, .. }
            | Action::UpdateBackend { backend, .. }
            | Action::DeleteBackend { backend }
            | Action::GrowSlots { backend, .. } => Err(DriverError::Other(Cause::Message(
                format!("structural operation on {backend} outside a reload"),
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
pub(super) enum OpOutcome {
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
