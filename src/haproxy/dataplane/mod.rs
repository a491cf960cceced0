//! The Data Plane API v3 driver.
//!
//! - observe: one `full_section` read of all backends, one native-stats read for run-time state
//!   and sessions, the four route maps, and (with `haproxy.frontend`) the frontend's rules: the
//!   same handful of requests whatever the number of services.
//! - apply: every structural change of a pass (backends, check rules, slot growth, the
//!   frontend's host-map rules) in **one transaction**, committed with a synchronous reload;
//!   then server changes as slot writes that DPAPI applies through the runtime (no reload), drains
//!   through the runtime server endpoint, and routes as runtime map entries persisted with
//!   `force_sync`. A failure aborts the open transaction; a lost race is reported as a conflict so
//!   the pass re-observes and re-plans.

pub mod client;
pub mod error;
pub mod objects;
mod preflight;
pub mod segment;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use reqwest::Method;
use url::Url;

use self::client::{Answer, Client, NO_BODY, Timeouts};
use self::error::DataplaneError;
use self::objects::wire::{
    self, BackendSwitchingRule, Cond, ConfigBody, MapEntry, MapEntryValue, NativeStats, ProxyMode,
    RuntimeServer, StorageMap, Toggle, Transaction,
};
use self::objects::{
    Slot, backend_body, http_checks, parse_settings, parse_slot, server_port, server_weight,
    slot_body, slot_name, slot_number, slot_target,
};
use self::segment::url_segment;
use super::runtime::socket;
use super::{ApplyReport, Driver, DriverError, Reload, ReloadKind};
use crate::call_metrics::CallMetrics;
use crate::config::Secret;
use crate::desired::{Desired, Ownership};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{
    AdminState, BackendSettings, Endpoint, MatchKind, Mode, OWNER_MARKER, OpState, RouteKey,
    is_owned_server, route_rules,
};
use crate::plan::{Action, Plan};

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

/// What observe learnt beyond the core's model, needed to apply.
#[derive(Clone, Debug, Default)]
struct Observed {
    version: i64,
    /// Slots by backend, in slot order.
    slots: BTreeMap<String, Vec<Slot>>,
    /// The frontend's rule count and which of the connector's rules are missing.
    frontend_rules: usize,
    missing_rules: Vec<(String, String)>,
    /// The connector's map files absent from DPAPI's storage (looked up while rules are missing).
    missing_maps: Vec<MatchKind>,
}

pub struct DataplaneDriver {
    client: Client,
    opts: Options,
    observed: Mutex<Observed>,
    /// The transaction being staged, so an abandoned pass can abort it.
    open_transaction: Mutex<Option<String>>,
    /// Whether `/v3/info` has shown a 3.x API (checked once, at the first observation).
    version_checked: std::sync::atomic::AtomicBool,
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
            observed: Mutex::new(Observed::default()),
            open_transaction: Mutex::new(None),
            version_checked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn remember(&self, o: Observed) {
        if let Ok(mut g) = self.observed.lock() {
            *g = o;
        }
    }

    fn recall(&self) -> Observed {
        self.observed.lock().map(|g| g.clone()).unwrap_or_default()
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

    async fn observe_inner(&self) -> Result<Live, DataplaneError> {
        if !self
            .version_checked
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let version = self.api_version().await?;
            tracing::info!(driver = "dataplane", version = %version, "Data Plane API version");
            self.version_checked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let backends = self
            .client
            .call(
                Method::GET,
                "backends",
                &seg(&CONF, &["backends"]),
                &[("full_section", "true".into())],
                NO_BODY,
            )
            .await?;
        let version = backends
            .version
            .ok_or_else(|| DataplaneError::Protocol("no Configuration-Version header".into()))?;
        let list: Vec<wire::Backend> = backends.parse()?;

        let stats = self
            .client
            .call(
                Method::GET,
                "stats",
                &["services", "haproxy", "stats", "native"],
                &[("type", "server".into())],
                NO_BODY,
            )
            .await?;
        // (backend, server) → (status, sessions)
        let mut runtime: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
        // One `native_stats` object (the spec's 200 schema); `stats` is omitted when empty.
        let stats: NativeStats = stats.parse()?;
        for st in stats.stats.into_iter().flatten() {
            let (Some(b), Some(s)) = (st.backend_name, st.name) else {
                continue;
            };
            let inner = st.stats.unwrap_or_default();
            let status = inner.status.unwrap_or_default();
            let scur = inner.scur.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            runtime.insert((b, s), (status, scur));
        }

        let mut live = Live::default();
        let mut observed = Observed {
            version,
            ..Observed::default()
        };
        for b in &list {
            let name = b.name.as_str();
            let owned = b.description.as_deref() == Some(OWNER_MARKER);
            let mode = match b.mode {
                Some(ProxyMode::Tcp) => Mode::Tcp,
                // Unset: inherited from `defaults`, which DPAPI does not show here; http is the
                // common case for a backend a service would be routed to.
                _ => Mode::Http,
            };
            let balance = b.balance.as_ref().map(|x| x.algorithm.clone());
            let default_check =
                b.default_server.as_ref().and_then(|d| d.check) == Some(Toggle::Enabled);
            let mut servers = BTreeMap::new();
            let mut slots = Vec::new();
            if let Some(map) = &b.servers {
                for (sname, sv) in map {
                    let (status, sessions) = runtime
                        .get(&(name.to_string(), sname.clone()))
                        .cloned()
                        .unwrap_or_default();
                    let (admin, op) = runtime_state(&status);
                    if let Some(slot) = parse_slot(sv) {
                        if let Some(endpoint) = slot.endpoint {
                            servers.insert(
                                sname.clone(),
                                LiveServer {
                                    name: sname.clone(),
                                    endpoint: Some(endpoint),
                                    admin,
                                    op,
                                    check_enabled: slot.check.unwrap_or(default_check)
                                        && status != "no check",
                                    weight: slot.weight,
                                    sessions,
                                    drain_started: None,
                                },
                            );
                        }
                        slots.push(slot);
                    } else {
                        let endpoint = match (sv.address.parse().ok(), server_port(sv)) {
                            (Some(a), Some(p)) => Some(Endpoint::new(a, p)),
                            _ => None,
                        };
                        servers.insert(
                            sname.clone(),
                            LiveServer {
                                name: sname.clone(),
                                endpoint,
                                admin,
                                op,
                                check_enabled: sv.check == Some(Toggle::Enabled),
                                weight: server_weight(sv),
                                sessions,
                                drain_started: None,
                            },
                        );
                    }
                }
            }
            slots.sort_by_key(|s| slot_number(&s.name));
            if !slots.is_empty() {
                observed.slots.insert(name.to_string(), slots);
            }
            live.backends.insert(
                name.to_string(),
                LiveBackend {
                    name: name.to_string(),
                    owned,
                    mode,
                    balance,
                    settings: if owned { parse_settings(b) } else { None },
                    servers,
                },
            );
        }

        // The frontend's host-map rules, when the connector manages them.
        let mut maps_may_be_unloaded = false;
        if let Some(fe) = &self.opts.frontend {
            let rules = self
                .client
                .call(
                    Method::GET,
                    "backend_switching_rules",
                    &seg(&CONF, &["frontends", fe, "backend_switching_rules"]),
                    &[],
                    NO_BODY,
                )
                .await?;
            let rules: Vec<BackendSwitchingRule> = rules.parse()?;
            let existing: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
            observed.frontend_rules = existing.len();
            observed.missing_rules = route_rules(&self.opts.maps_dir)
                .into_iter()
                .filter(|(name, _)| !existing.contains(&name.as_str()))
                .collect();
            live.route_rules_missing = !observed.missing_rules.is_empty();
            maps_may_be_unloaded = live.route_rules_missing;
            if live.route_rules_missing {
                // The rules are about to be inserted: the map files they reference must exist
                // (HAProxy refuses a configuration naming a missing pattern file).
                let stored = self
                    .client
                    .call(
                        Method::GET,
                        "storage_maps",
                        &["services", "haproxy", "storage", "maps"],
                        &[],
                        NO_BODY,
                    )
                    .await?;
                let stored: Vec<StorageMap> = stored.parse()?;
                let names: Vec<&str> = stored
                    .iter()
                    .filter_map(|m| m.storage_name.as_deref())
                    .collect();
                observed.missing_maps = MatchKind::ALL
                    .into_iter()
                    .filter(|k| !names.contains(&k.map_file()))
                    .collect();
            }
        }

        for kind in MatchKind::ALL {
            let entries = self
                .client
                .call(
                    Method::GET,
                    "map_entries",
                    &seg(&RUNTIME, &["maps", map_name(kind), "entries"]),
                    &[],
                    NO_BODY,
                )
                .await;
            let entries = match entries {
                Ok(a) => a,
                // Not loaded yet: the rules that reference it arrive with this pass's commit.
                Err(DataplaneError::NotFound { .. }) if maps_may_be_unloaded => continue,
                Err(DataplaneError::NotFound { message }) => {
                    return Err(DataplaneError::Invalid {
                        status: 404,
                        message: format!(
                            "map {} is not loaded by HAProxy ({message}): reference the connector's maps from your frontend (see README) or set haproxy.frontend",
                            kind.map_file()
                        ),
                    });
                }
                Err(e) => return Err(e),
            };
            for e in entries.parse::<Vec<MapEntry>>()? {
                if let (Some(key), Some(v)) = (e.key, e.value) {
                    live.routes
                        .entry(RouteKey { kind, key })
                        .or_default()
                        .push(v);
                }
            }
        }
        self.remember(observed);
        Ok(live)
    }

    async fn apply_inner(
        &self,
        plan: &Plan,
        desired: &Desired,
        live: &Live,
    ) -> Result<ApplyReport, DataplaneError> {
        let observed = self.recall();
        let mut version = observed.version;
        let mut report = ApplyReport::default();
        let before = self.client.total_requests();

        // Servers to add, per backend, in plan order.
        let mut adds: BTreeMap<&str, Vec<(Endpoint, u16)>> = BTreeMap::new();
        for op in &plan.ops {
            if let Action::AddServer {
                backend,
                endpoint,
                weight,
                ..
            } = &op.action
            {
                adds.entry(backend.as_str())
                    .or_default()
                    .push((*endpoint, *weight));
            }
        }
        // Slots per backend after this pass's structural changes, and the adds each free slot gets.
        let mut slots: BTreeMap<String, Vec<Slot>> = observed.slots.clone();
        let created: BTreeSet<&str> = plan
            .ops
            .iter()
            .filter_map(|o| match &o.action {
                Action::CreateBackend { backend, .. } => Some(backend.as_str()),
                _ => None,
            })
            .collect();
        let deleted: BTreeSet<&str> = plan
            .ops
            .iter()
            .filter_map(|o| match &o.action {
                Action::DeleteBackend { backend } => Some(backend.as_str()),
                _ => None,
            })
            .collect();

        // Structural part: one transaction.
        let mut staged: Vec<(Method, &'static str, Vec<String>, Option<ConfigBody>)> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        // Adds placed in new slots inside the transaction (not to be written again after it).
        let mut placed: BTreeSet<(String, Endpoint)> = BTreeSet::new();
        for op in &plan.ops {
            match &op.action {
                Action::CreateBackend { backend, settings } => {
                    staged.push((
                        Method::POST,
                        "backends",
                        vec!["backends".into()],
                        Some(ConfigBody::Backend(backend_body(backend, settings))),
                    ));
                    if matches!(settings.check, crate::model::CheckSpec::Http { .. }) {
                        staged.push((
                            Method::PUT,
                            "http_checks",
                            vec!["backends".into(), backend.clone(), "http_checks".into()],
                            Some(ConfigBody::HttpChecks(http_checks(&settings.check))),
                        ));
                    }
                    reasons.push(format!("create backend {backend}"));
                }
                Action::UpdateBackend {
                    backend,
                    settings,
                    changed,
                } => {
                    staged.push((
                        Method::PUT,
                        "backends",
                        vec!["backends".into(), backend.clone()],
                        Some(ConfigBody::Backend(backend_body(backend, settings))),
                    ));
                    staged.push((
                        Method::PUT,
                        "http_checks",
                        vec!["backends".into(), backend.clone(), "http_checks".into()],
                        Some(ConfigBody::HttpChecks(http_checks(&settings.check))),
                    ));
                    reasons.push(format!("update backend {backend} ({})", changed.join(", ")));
                }
                Action::DeleteBackend { backend } => {
                    staged.push((
                        Method::DELETE,
                        "backends",
                        vec!["backends".into(), backend.clone()],
                        None,
                    ));
                    slots.remove(backend);
                    reasons.push(format!("delete backend {backend}"));
                }
                Action::InsertRouteRules => {
                    let fe = self.opts.frontend.clone().unwrap_or_default();
                    for (i, (name, cond)) in observed.missing_rules.iter().enumerate() {
                        staged.push((
                            Method::POST,
                            "backend_switching_rules",
                            vec![
                                "frontends".into(),
                                fe.clone(),
                                "backend_switching_rules".into(),
                                (observed.frontend_rules + i).to_string(),
                            ],
                            Some(ConfigBody::BackendSwitchingRule(BackendSwitchingRule {
                                name: name.clone(),
                                cond: Some(Cond::If),
                                cond_test: Some(cond.clone()),
                                metadata: None,
                            })),
                        ));
                    }
                    reasons.push(format!("insert host-map rules into frontend {fe}"));
                }
                _ => {}
            }
        }
        // Slot growth: where the adds do not fit the free slots, new slots are created in the
        // transaction, already filled.
        for (backend, list) in &adds {
            if deleted.contains(backend) {
                continue;
            }
            let Some(d) = desired.backends.get(*backend) else {
                continue;
            };
            let own_check = (d.ownership != Ownership::Owned).then_some(&d.settings);
            let current = slots.entry((*backend).to_string()).or_default();
            let free = current.iter().filter(|s| s.endpoint.is_none()).count();
            if list.len() <= free && !created.contains(backend) {
                continue;
            }
            let filled = current.len() - free;
            let target = slot_target(current.len(), filled + list.len());
            let overflow = list.len().saturating_sub(free);
            let mut pending = list[list.len() - overflow..].iter();
            for n in current.len() + 1..=target {
                let name = slot_name(n);
                let fill = pending.next();
                staged.push((
                    Method::POST,
                    "servers",
                    vec!["backends".into(), (*backend).to_string(), "servers".into()],
                    Some(ConfigBody::Server(slot_body(
                        &name,
                        fill.map(|(e, _)| e),
                        fill.map_or(1, |(_, w)| *w),
                        own_check,
                    ))),
                ));
                if let Some((e, _)) = fill {
                    placed.insert(((*backend).to_string(), *e));
                }
                current.push(Slot {
                    name,
                    endpoint: fill.map(|(e, _)| *e),
                    weight: fill.map_or(1, |(_, w)| *w),
                    check: own_check.map(|s| s.check.is_enabled()),
                });
            }
            if !created.contains(backend) {
                reasons.push(format!("grow {backend} to {target} server slots"));
            }
        }

        // Map files the rules about to be inserted reference, created empty through the storage
        // API (no reload: the transaction's commit loads them).
        if plan
            .ops
            .iter()
            .any(|o| matches!(o.action, Action::InsertRouteRules))
        {
            for kind in &observed.missing_maps {
                self.create_map_file(*kind).await?;
            }
        }
        if !staged.is_empty() {
            version = self.transaction(version, &staged).await?;
            report
                .reloads
                .push(Reload::new(ReloadKind::Structural, reasons.join("; ")));
        }

        // Run-time part, in plan order. An operation whose key no request can carry is refused
        // alone (reported at the end); the others go on.
        let mut refused: Vec<String> = Vec::new();
        // Maps whose entries must be replaced through their file (keys `{id}` cannot carry).
        let mut rewrite: std::collections::BTreeSet<MatchKind> = std::collections::BTreeSet::new();
        for op in &plan.ops {
            match &op.action {
                Action::AddServer {
                    backend,
                    endpoint,
                    weight,
                    ..
                } => {
                    if placed.contains(&(backend.clone(), *endpoint)) {
                        continue;
                    }
                    let own = own_check(desired, backend);
                    let current = slots.entry(backend.clone()).or_default();
                    let Some(slot) = current.iter_mut().find(|s| s.endpoint.is_none()) else {
                        return Err(DataplaneError::Protocol(format!(
                            "no free server slot left in {backend}"
                        )));
                    };
                    slot.endpoint = Some(*endpoint);
                    let body = slot_body(&slot.name, Some(endpoint), *weight, own);
                    let name = slot.name.clone();
                    version = self
                        .put_server(version, backend, &name, &body, &mut report)
                        .await?;
                }
                Action::SetWeight {
                    backend,
                    server,
                    weight,
                } => {
                    let endpoint = live_endpoint(live, backend, server)?;
                    let body = slot_body(
                        server,
                        Some(&endpoint),
                        *weight,
                        own_check(desired, backend),
                    );
                    version = self
                        .put_server(version, backend, server, &body, &mut report)
                        .await?;
                }
                Action::RemoveServer { backend, server } => {
                    if deleted.contains(backend.as_str()) {
                        continue;
                    }
                    let body = slot_body(server, None, 1, own_check(desired, backend));
                    version = self
                        .put_server(version, backend, server, &body, &mut report)
                        .await?;
                    if let Some(s) = slots
                        .get_mut(backend)
                        .and_then(|l| l.iter_mut().find(|s| &s.name == server))
                    {
                        s.endpoint = None;
                    }
                }
                Action::ReadyServer { backend, server } => {
                    self.runtime_state(backend, server, wire::AdminState::Ready)
                        .await?
                }
                Action::DrainServer { backend, server } => {
                    self.runtime_state(backend, server, wire::AdminState::Drain)
                        .await?
                }
                Action::EnableCheck { backend, server } => {
                    // DPAPI cannot run `enable health` (dataplaneapi#299); a reload rebuilds the
                    // server from the configuration, where its check is enabled.
                    let endpoint = live_endpoint(live, backend, server)?;
                    let weight = live
                        .backends
                        .get(backend)
                        .and_then(|b| b.servers.get(server))
                        .map_or(1, |s| s.weight);
                    let body =
                        slot_body(server, Some(&endpoint), weight, own_check(desired, backend));
                    let a = self
                        .client
                        .call(
                            Method::PUT,
                            "servers",
                            &seg(&CONF, &["backends", backend, "servers", server]),
                            &[
                                ("version", version.to_string()),
                                ("force_reload", "true".into()),
                            ],
                            Some(&body),
                        )
                        .await?;
                    version = a.version.unwrap_or(version + 1);
                    report.reloads.push(Reload::new(
                        ReloadKind::EnableCheck,
                        format!("re-enable the health check of {backend}/{server}"),
                    ));
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
                Action::SetRoute { route, backend } => {
                    let args = match route_args(route, backend, true) {
                        Ok(a) => a,
                        Err(_) if addressable_in_file(&route.key) => {
                            // `{id}` cannot carry this key (`$`, `*`, `{`… are outside the
                            // spec's pattern): rewrite that map's file instead, below.
                            rewrite.insert(route.kind);
                            continue;
                        }
                        Err(m) => {
                            tracing::warn!(driver = "dataplane", "{m}");
                            refused.push(m);
                            continue;
                        }
                    };
                    let current = live.routes.get(route).map_or(0, Vec::len);
                    let done = if current == 1 {
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
                    Err(_) => {
                        // `{id}` cannot carry this key: write the map without it (any live key
                        // can go that way, even one no request could name).
                        rewrite.insert(route.kind);
                        continue;
                    }
                },
                Action::CreateBackend { .. }
                | Action::UpdateBackend { .. }
                | Action::DeleteBackend { .. }
                | Action::InsertRouteRules => {}
            }
            report.applied += 1;
        }
        for kind in rewrite {
            let text = map_file_text(kind, &desired.routes);
            self.client
                .call_text(
                    Method::PUT,
                    "storage_maps",
                    &["services", "haproxy", "storage", "maps", kind.map_file()],
                    &[("force_reload", "true".into())],
                    text,
                )
                .await?;
            report.applied += 1;
            report.reloads.push(Reload::new(
                ReloadKind::Fallback,
                format!(
                    "rewrite {}: a route key the API cannot address by URL changed or left",
                    kind.map_file()
                ),
            ));
        }
        if let Ok(mut g) = self.observed.lock() {
            g.version = version;
            g.slots = slots;
        }
        report.requests =
            usize::try_from(self.client.total_requests() - before).unwrap_or(usize::MAX);
        report.refused = refused;
        Ok(report)
    }

    /// Runs `staged` in one transaction started from `version` and commits it with a synchronous
    /// reload; aborts the transaction on any failure. Returns the new version.
    async fn transaction(
        &self,
        version: i64,
        staged: &[(Method, &'static str, Vec<String>, Option<ConfigBody>)],
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

    async fn abort(&self, id: &str) {
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

    async fn put_server(
        &self,
        version: i64,
        backend: &str,
        server: &str,
        body: &wire::Server,
        report: &mut ApplyReport,
    ) -> Result<i64, DataplaneError> {
        let a = self
            .client
            .call(
                Method::PUT,
                "servers",
                &seg(&CONF, &["backends", backend, "servers", server]),
                &[("version", version.to_string())],
                Some(body),
            )
            .await?;
        if a.status == 202 {
            // DPAPI could not use the runtime path and scheduled a reload.
            report.reloads.push(Reload::new(
                ReloadKind::Fallback,
                format!("server {backend}/{server} written with a reload"),
            ));
        }
        Ok(a.version.unwrap_or(version + 1))
    }

    async fn runtime_state(
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
    async fn create_map_file(&self, kind: MatchKind) -> Result<(), DataplaneError> {
        let text = map_file_text(kind, &BTreeMap::new());
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

    async fn add_route(&self, route: &RouteKey, args: &RouteArgs) -> Result<(), DataplaneError> {
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
    async fn remove_route(&self, route: &RouteKey, key: &str) -> Result<(), DataplaneError> {
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

/// A route's key and value as sent to the API.
///
/// DPAPI passes both unescaped into HAProxy's CLI (`add map <file> <key> <value>`, and for
/// `/entries/{id}` `set map`/`del map <file> <id>`, client-native), and the CLI removes a
/// backslash before any character: `^api\.ex\.com$` would be stored as `^api.ex.com$`, observed
/// different from the desired key, and re-planned every pass. So both are escaped for the CLI
/// ([`socket::map_key`], [`socket::cli_arg`]), in the body and in the `{id}` segment alike, and
/// what HAProxy stores (and `GET …/entries` returns) is the desired key.
#[derive(Debug)]
struct RouteArgs {
    key: String,
    value: String,
}

/// The escaped key and value of `route`, or the refusal message (logged) when they cannot be
/// carried: by HAProxy's CLI, or (with `by_key`, for requests that address the entry by key) by a
/// URL path segment the API accepts.
fn route_args(route: &RouteKey, backend: &str, by_key: bool) -> Result<RouteArgs, String> {
    // No log here: the caller decides whether this is a refusal or a map rewrite.
    let refuse = |e: &dyn std::fmt::Display| format!("route {route}: not sent: {e}");
    let key = socket::map_key(&route.key).map_err(|e| refuse(&e))?;
    let value = if backend.is_empty() {
        String::new()
    } else {
        socket::cli_arg(backend).map_err(|e| refuse(&e))?
    };
    if by_key {
        url_segment(&key).map_err(|e| refuse(&e))?;
    }
    Ok(RouteArgs { key, value })
}

/// A route operation HAProxy or the API refused: its message for the pass's report, or the error
/// itself when it is not about that one entry (the API unreachable, credentials, a timeout),
/// which ends the pass.
fn route_refusal(route: &RouteKey, e: DataplaneError) -> Result<String, DataplaneError> {
    match e {
        DataplaneError::Invalid { .. }
        | DataplaneError::NotFound { .. }
        | DataplaneError::Conflict { .. }
        | DataplaneError::Server { .. }
        | DataplaneError::Segment(_) => {
            tracing::warn!(route = %route, error = %e, "route refused");
            Ok(format!("route {route}: {e}"))
        }
        other => Err(other),
    }
}

/// Whether `key` can stand in a map file line as it is (no whitespace or line end splits it).
fn addressable_in_file(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('#')
        && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The map file of one kind holding exactly the desired routes of that kind, rendered as the
/// runtime driver renders its own (a map file is read as it is: no CLI unescaping applies).
fn map_file_text(kind: MatchKind, routes: &BTreeMap<RouteKey, String>) -> String {
    let fit: BTreeMap<RouteKey, String> = routes
        .iter()
        .filter(|(r, _)| addressable_in_file(&r.key))
        .map(|(r, b)| (r.clone(), b.clone()))
        .collect();
    crate::haproxy::runtime::fragment::render_map(kind, &fit)
}

/// The settings a slot carries itself: only in backends that are not the connector's.
fn own_check<'a>(desired: &'a Desired, backend: &str) -> Option<&'a BackendSettings> {
    desired
        .backends
        .get(backend)
        .filter(|d| d.ownership != Ownership::Owned)
        .map(|d| &d.settings)
}

fn live_endpoint(live: &Live, backend: &str, server: &str) -> Result<Endpoint, DataplaneError> {
    live.backends
        .get(backend)
        .and_then(|b| b.servers.get(server))
        .and_then(|s| s.endpoint)
        .filter(|_| is_owned_server(server))
        .ok_or_else(|| {
            DataplaneError::Protocol(format!("server {backend}/{server} is not a filled slot"))
        })
}

/// Admin and operational state from a native-stats `status`.
fn runtime_state(status: &str) -> (AdminState, OpState) {
    if status.starts_with("MAINT") {
        (AdminState::Maint, OpState::Down)
    } else if status.starts_with("DRAIN") {
        (AdminState::Drain, OpState::Up)
    } else if status.starts_with("DOWN") {
        (AdminState::Ready, OpState::Down)
    } else if status == "NOLB" {
        (AdminState::Ready, OpState::Stopping)
    } else {
        (AdminState::Ready, OpState::Up)
    }
}

impl Driver for DataplaneDriver {
    fn name(&self) -> &'static str {
        "dataplane"
    }

    async fn observe(&self) -> Result<Live, DriverError> {
        self.observe_inner().await.map_err(DriverError::from)
    }

    async fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        live: &Live,
    ) -> Result<ApplyReport, DriverError> {
        let report = self
            .apply_inner(plan, desired, live)
            .await
            .map_err(DriverError::from)?;
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
