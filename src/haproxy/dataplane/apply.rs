//! Executing a plan: every structural operation (backends, check rules, slot growth, the
//! frontend's host-map rules) in **one transaction** started from the plan's configuration
//! version and committed with a synchronous reload; then, in plan order, slot writes that DPAPI
//! applies through the runtime (no reload), drains through the runtime server endpoint, routes as
//! runtime map entries persisted with `force_sync`, health checks re-enabled and maps rewritten
//! whole with a reload each, as the plan says. A failure aborts the open transaction; a lost race
//! is reported as a conflict so the pass re-observes and re-plans.

use reqwest::Method;

use super::client::{Answer, NO_BODY};
use super::error::DataplaneError;
use super::objects::wire::{
    self, BackendSwitchingRule, Cond, ConfigBody, MapEntry, MapEntryValue, RuntimeServer,
    Transaction,
};
use super::objects::{backend_body, http_checks, request_rule_body, slot_body};
use super::routes::{RouteArgs, map_file_text, route_args, route_refusal};
use super::{CONF, DataplaneDriver, RUNTIME, map_name, seg};
use crate::haproxy::{ApplyReport, Reload};
use crate::model::{CheckSpec, MatchKind, RouteKey};
use crate::plan::{Action, Plan, ReloadReason};

/// One request of the transaction: method, endpoint label, path under the configuration, body.
type Staged = (Method, &'static str, Vec<String>, Option<ConfigBody>);

fn no_version() -> DataplaneError {
    DataplaneError::Protocol(
        "the plan carries no configuration version: compile it from an observation".into(),
    )
}

impl DataplaneDriver {
    pub(super) async fn apply_inner(&self, plan: &Plan) -> Result<ApplyReport, DataplaneError> {
        let mut version = plan.version;
        let mut report = ApplyReport::default();
        let before = self.client.total_requests();

        // Structural part: one transaction, slot growth last.
        let mut staged: Vec<Staged> = Vec::new();
        let mut create_maps: Vec<MatchKind> = Vec::new();
        for op in &plan.ops {
            match &op.action {
                Action::CreateBackend { backend, settings } => {
                    staged.push((
                        Method::POST,
                        "backends",
                        vec!["backends".into()],
                        Some(ConfigBody::Backend(Box::new(backend_body(
                            backend, settings,
                        )))),
                    ));
                    if matches!(settings.check, CheckSpec::Http { .. }) {
                        staged.push((
                            Method::PUT,
                            "http_checks",
                            vec!["backends".into(), backend.clone(), "http_checks".into()],
                            Some(ConfigBody::HttpChecks(http_checks(&settings.check))),
                        ));
                    }
                }
                Action::UpdateBackend {
                    backend, settings, ..
                } => {
                    staged.push((
                        Method::PUT,
                        "backends",
                        vec!["backends".into(), backend.clone()],
                        Some(ConfigBody::Backend(Box::new(backend_body(
                            backend, settings,
                        )))),
                    ));
                    staged.push((
                        Method::PUT,
                        "http_checks",
                        vec!["backends".into(), backend.clone(), "http_checks".into()],
                        Some(ConfigBody::HttpChecks(http_checks(&settings.check))),
                    ));
                }
                Action::DeleteBackend { backend } => staged.push((
                    Method::DELETE,
                    "backends",
                    vec!["backends".into(), backend.clone()],
                    None,
                )),
                Action::InsertRouteRules {
                    frontend,
                    at,
                    rules,
                    request_rules,
                    request_at,
                    create_maps: maps,
                } => {
                    for (i, rule) in request_rules.iter().enumerate() {
                        staged.push((
                            Method::POST,
                            "http_request_rules",
                            vec![
                                "frontends".into(),
                                frontend.clone(),
                                "http_request_rules".into(),
                                (request_at + i).to_string(),
                            ],
                            Some(ConfigBody::HttpRequestRule(request_rule_body(rule))),
                        ));
                    }
                    for (i, (name, cond)) in rules.iter().enumerate() {
                        staged.push((
                            Method::POST,
                            "backend_switching_rules",
                            vec![
                                "frontends".into(),
                                frontend.clone(),
                                "backend_switching_rules".into(),
                                (at + i).to_string(),
                            ],
                            Some(ConfigBody::BackendSwitchingRule(BackendSwitchingRule {
                                name: name.clone(),
                                cond: Some(Cond::If),
                                cond_test: Some(cond.clone()),
                                metadata: None,
                            })),
                        ));
                    }
                    create_maps.extend(maps);
                }
                _ => {}
            }
        }
        for op in &plan.ops {
            if let Action::GrowSlots { backend, slots, .. } = &op.action {
                for slot in slots {
                    staged.push((
                        Method::POST,
                        "servers",
                        vec!["backends".into(), backend.clone(), "servers".into()],
                        Some(ConfigBody::Server(slot_body(
                            &slot.name,
                            slot.server.as_ref().map(|s| &s.endpoint),
                            slot.server.map_or(1, |s| s.weight),
                            plan.own_settings.get(backend),
                        ))),
                    ));
                }
            }
        }
        // Map files the rules about to be inserted reference, created empty through the storage
        // API (no reload: the transaction's commit loads them).
        for kind in create_maps {
            self.create_map_file(kind).await?;
        }
        if !staged.is_empty() {
            let from = version.ok_or_else(no_version)?;
            version = Some(self.transaction(from, &staged).await?);
            let reason = plan
                .reloads()
                .iter()
                .find(|r| matches!(r, ReloadReason::Structural { .. }))
                .cloned()
                .unwrap_or(ReloadReason::Structural {
                    changes: Vec::new(),
                });
            report.reloads.push(Reload::new(reason));
        }

        // Run-time part, in plan order. An operation whose key no request can carry is refused
        // alone (reported at the end); the others go on.
        let mut refused: Vec<String> = Vec::new();
        for op in &plan.ops {
            match &op.action {
                Action::AddServer {
                    backend,
                    server,
                    endpoint,
                    weight,
                    ..
                }
                | Action::SetWeight {
                    backend,
                    server,
                    endpoint,
                    weight,
                } => {
                    let body = slot_body(
                        server,
                        Some(endpoint),
                        *weight,
                        plan.slot_own(backend, server),
                    );
                    let v = version.ok_or_else(no_version)?;
                    version = Some(
                        self.put_server(plan, v, backend, server, &body, &mut report)
                            .await?,
                    );
                }
                Action::RemoveServer { backend, server } => {
                    let body = slot_body(server, None, 1, plan.slot_own(backend, server));
                    let v = version.ok_or_else(no_version)?;
                    version = Some(
                        self.put_server(plan, v, backend, server, &body, &mut report)
                            .await?,
                    );
                }
                Action::ReadyServer { backend, server } => {
                    self.runtime_state(backend, server, wire::AdminState::Ready)
                        .await?
                }
                Action::DrainServer { backend, server } => {
                    self.runtime_state(backend, server, wire::AdminState::Drain)
                        .await?
                }
                Action::MaintServer { backend, server } => {
                    self.runtime_state(backend, server, wire::AdminState::Maint)
                        .await?
                }
                Action::EnableCheck {
                    backend,
                    server,
                    endpoint,
                    weight,
                } => {
                    // DPAPI cannot run `enable health` (dataplaneapi#299); a reload rebuilds the
                    // server from the configuration, where its check is enabled.
                    let body = slot_body(
                        server,
                        Some(endpoint),
                        *weight,
                        plan.slot_own(backend, server),
                    );
                    let v = version.ok_or_else(no_version)?;
                    let a = self
                        .client
                        .call(
                            Method::PUT,
                            "servers",
                            &seg(&CONF, &["backends", backend, "servers", server]),
                            &[("version", v.to_string()), ("force_reload", "true".into())],
                            Some(&body),
                        )
                        .await?;
                    version = Some(a.version.unwrap_or(v + 1));
                    report.reloads.push(Reload::new(ReloadReason::EnableCheck {
                        backend: backend.clone(),
                        server: server.clone(),
                    }));
                }
                Action::AddRoute { route, backend } => match route_args(route, backend, false) {
                    Ok(args) => {
                        // HAProxy refusing one entry (a pattern its PCRE2 rejects) costs that
                        // route only: drains and removals later in the plan still run.
                        if let Err(e) = self.add_route(route, &args).await {
                            refused.push(route_refusal(route, e)?);
                            continue;
                        }
                    }
                    Err(m) => {
                        tracing::warn!(driver = "dataplane", "{m}");
                        refused.push(m);
                        continue;
                    }
                },
                Action::SetRoute {
                    route,
                    backend,
                    entries,
                } => {
                    let args = match route_args(route, backend, true) {
                        Ok(a) => a,
                        Err(m) => {
                            tracing::warn!(driver = "dataplane", "{m}");
                            refused.push(m);
                            continue;
                        }
                    };
                    let done = if *entries == 1 {
                        self.client
                            .call(
                                Method::PUT,
                                "map_entries",
                                &seg(
                                    &RUNTIME,
                                    &["maps", map_name(route.kind), "entries", &args.key],
                                ),
                                &[("force_sync", "true".into())],
                                Some(&MapEntryValue {
                                    value: args.value.clone(),
                                }),
                            )
                            .await
                            .map(|_| ())
                    } else {
                        match self.remove_route(route, &args.key).await {
                            Ok(()) => self.add_route(route, &args).await,
                            Err(e) => Err(e),
                        }
                    };
                    if let Err(e) = done {
                        refused.push(route_refusal(route, e)?);
                        continue;
                    }
                }
                Action::RemoveRoute { route } => match route_args(route, "", true) {
                    Ok(args) => {
                        if let Err(e) = self.remove_route(route, &args.key).await {
                            refused.push(route_refusal(route, e)?);
                            continue;
                        }
                    }
                    Err(m) => {
                        tracing::warn!(driver = "dataplane", "{m}");
                        refused.push(m);
                        continue;
                    }
                },
                Action::RewriteMap { map, entries, .. } => {
                    let text = map_file_text(*map, entries);
                    self.client
                        .call_text(
                            Method::PUT,
                            "storage_maps",
                            &["services", "haproxy", "storage", "maps", map.map_file()],
                            &[("force_reload", "true".into())],
                            text,
                        )
                        .await?;
                    report
                        .reloads
                        .push(Reload::new(ReloadReason::MapRewrite { map: *map }));
                }
                Action::ReaddServer {
                    backend, server, ..
                } => {
                    // Slots live in the configuration: a reload never drops them.
                    refused.push(format!(
                        "re-add {backend}/{server}: not an operation of this driver"
                    ));
                    continue;
                }
                Action::CreateBackend { .. }
                | Action::UpdateBackend { .. }
                | Action::DeleteBackend { .. }
                | Action::GrowSlots { .. }
                | Action::InsertRouteRules { .. } => {}
            }
            report.applied += 1;
        }
        report.requests =
            usize::try_from(self.client.total_requests() - before).unwrap_or(usize::MAX);
        report.refused = refused;
        Ok(report)
    }

    /// Runs `staged` in one transaction started from `version` and commits it with a synchronous
    /// reload; aborts the transaction on any failure. Returns the new version.
    pub(super) async fn transaction(
        &self,
        version: i64,
        staged: &[Staged],
    ) -> Result<i64, DataplaneError> {
        let start = self
            .client
            .call(
                Method::POST,
                "transactions",
                &["services", "haproxy", "transactions"],
                &[("version", version.to_string())],
                NO_BODY,
            )
            .await?;
        let id = start
            .parse::<Transaction>()?
            .id
            .ok_or_else(|| DataplaneError::Protocol("transaction without id".into()))?;
        if let Ok(mut g) = self.open_transaction.lock() {
            *g = Some(id.clone());
        }
        let result: Result<Answer, DataplaneError> = async {
            for (method, endpoint, rest, body) in staged {
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                self.client
                    .call(
                        method.clone(),
                        endpoint,
                        &seg(&CONF, &rest),
                        &[("transaction_id", id.clone())],
                        body.as_ref(),
                    )
                    .await?;
            }
            self.client
                .call(
                    Method::PUT,
                    "transactions",
                    &["services", "haproxy", "transactions", &id],
                    &[("force_reload", "true".into())],
                    NO_BODY,
                )
                .await
        }
        .await;
        if let Ok(mut g) = self.open_transaction.lock() {
            *g = None;
        }
        match result {
            Ok(commit) => Ok(commit.version.unwrap_or(version + 1)),
            Err(e) => {
                // Never leave a transaction open (the API refuses new ones at 20).
                self.abort(&id).await;
                Err(e)
            }
        }
    }

    pub(super) async fn abort(&self, id: &str) {
        if let Err(abort) = self
            .client
            .call(
                Method::DELETE,
                "transactions",
                &["services", "haproxy", "transactions", id],
                &[],
                NO_BODY,
            )
            .await
            && !matches!(abort, DataplaneError::NotFound { .. })
        {
            tracing::warn!(transaction = %id, error = %abort, "could not abort the transaction");
        }
    }

    /// Writes a slot. The plan says when the write cannot be applied at run time: it is then
    /// made with a synchronous reload, at its place in the plan (before the drains, which a later
    /// reload would undo).
    pub(super) async fn put_server(
        &self,
        plan: &Plan,
        version: i64,
        backend: &str,
        server: &str,
        body: &wire::Server,
        report: &mut ApplyReport,
    ) -> Result<i64, DataplaneError> {
        let fallback = ReloadReason::RuntimeFallback {
            backend: backend.to_string(),
            server: server.to_string(),
        };
        let planned = plan.reloads().contains(&fallback);
        let mut query = vec![("version", version.to_string())];
        if planned {
            query.push(("force_reload", "true".into()));
        }
        let a = self
            .client
            .call(
                Method::PUT,
                "servers",
                &seg(&CONF, &["backends", backend, "servers", server]),
                &query,
                Some(body),
            )
            .await?;
        if planned {
            report.reloads.push(Reload::new(fallback));
        } else if a.status == 202 {
            // DPAPI could not use the runtime path and scheduled a reload.
            report
                .reloads
                .push(Reload::new(ReloadReason::RuntimeFallback {
                    backend: backend.to_string(),
                    server: server.to_string(),
                }));
        }
        Ok(a.version.unwrap_or(version + 1))
    }

    pub(super) async fn runtime_state(
        &self,
        backend: &str,
        server: &str,
        state: wire::AdminState,
    ) -> Result<(), DataplaneError> {
        self.client
            .call(
                Method::PUT,
                "runtime_servers",
                &seg(&RUNTIME, &["backends", backend, "servers", server]),
                &[],
                Some(&RuntimeServer {
                    admin_state: Some(state),
                    operational_state: None,
                }),
            )
            .await
            .map(|_| ())
    }

    /// Creates an empty map file in DPAPI's storage; one that exists already is left as it is.
    pub(super) async fn create_map_file(&self, kind: MatchKind) -> Result<(), DataplaneError> {
        let text = map_file_text(kind, &[]);
        match self
            .client
            .upload(
                "storage_maps",
                &["services", "haproxy", "storage", "maps"],
                "file_upload",
                kind.map_file(),
                text,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    driver = "dataplane",
                    map = kind.map_file(),
                    "map file created"
                );
                Ok(())
            }
            Err(DataplaneError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn add_route(
        &self,
        route: &RouteKey,
        args: &RouteArgs,
    ) -> Result<(), DataplaneError> {
        self.client
            .call(
                Method::POST,
                "map_entries",
                &seg(&RUNTIME, &["maps", map_name(route.kind), "entries"]),
                &[("force_sync", "true".into())],
                Some(&MapEntry {
                    id: None,
                    key: Some(args.key.clone()),
                    value: Some(args.value.clone()),
                }),
            )
            .await
            .map(|_| ())
    }

    /// Deletes the entries of `route`; `key` is the escaped key ([`route_args`]).
    pub(super) async fn remove_route(
        &self,
        route: &RouteKey,
        key: &str,
    ) -> Result<(), DataplaneError> {
        match self
            .client
            .call(
                Method::DELETE,
                "map_entries",
                &seg(&RUNTIME, &["maps", map_name(route.kind), "entries", key]),
                &[("force_sync", "true".into())],
                NO_BODY,
            )
            .await
        {
            Ok(_) | Err(DataplaneError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
