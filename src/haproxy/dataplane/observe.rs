//! Observation: one `full_section` read of all backends (with their servers and slots), one
//! native-stats read for run-time state and sessions, the route maps, and (with
//! `haproxy.frontend`) the frontend's rules and the map files in storage: the same handful of
//! requests whatever the number of services. Everything the core needs to plan goes into [`Live`]:
//! the configuration version, the free slots and what each slot carries itself, the frontend's
//! missing rules.

use std::collections::BTreeMap;

use reqwest::Method;

use super::client::NO_BODY;
use super::error::DataplaneError;
use super::objects::wire::{
    self, BackendSwitchingRule, MapEntry, NativeStats, ProxyMode, StorageMap, Toggle,
};
use super::objects::{parse_settings, parse_slot, request_rule_body, server_port, server_weight};
use super::{CONF, DataplaneDriver, RUNTIME, map_name, seg};
use crate::live::{FrontendRules, Live, LiveBackend, LiveServer, SlotCarries};
use crate::model::{
    AdminState, Endpoint, MatchKind, Mode, OWNER_MARKER, OpState, RouteKey, route_rules,
};
use crate::path_rules::request_rules;
use crate::plan::slots::slot_number;

impl DataplaneDriver {
    pub(super) async fn observe_inner(&self) -> Result<Live, DataplaneError> {
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

        let mut live = Live {
            version: Some(version),
            ..Live::default()
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
            let mut free = Vec::new();
            if let Some(map) = &b.servers {
                for (sname, sv) in map {
                    let (status, sessions) = runtime
                        .get(&(name.to_string(), sname.clone()))
                        .cloned()
                        .unwrap_or_default();
                    let (admin, op) = runtime_state(&status);
                    if let Some(slot) = parse_slot(sv) {
                        let carried = slot_carries(sv);
                        if carried != SlotCarries::default() {
                            live.slot_carries
                                .entry(name.to_string())
                                .or_default()
                                .insert(slot.name.clone(), carried);
                        }
                        let Some(endpoint) = slot.endpoint else {
                            free.push(slot.name);
                            continue;
                        };
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
            free.sort_by_key(|s| slot_number(s));
            if !free.is_empty() {
                live.free_slots.insert(name.to_string(), free);
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
            let requests = self
                .client
                .call(
                    Method::GET,
                    "http_request_rules",
                    &seg(&CONF, &["frontends", fe, "http_request_rules"]),
                    &[],
                    NO_BODY,
                )
                .await?;
            let requests: Vec<wire::HttpRequestRule> = requests.parse()?;
            let mut frontend = FrontendRules {
                frontend: fe.clone(),
                count: existing.len(),
                missing: route_rules(&self.opts.maps_dir)
                    .into_iter()
                    .filter(|(name, _)| !existing.contains(&name.as_str()))
                    .collect(),
                missing_maps: Vec::new(),
                request_count: requests.len(),
                // A rule is the connector's when every field it writes is equal.
                missing_requests: request_rules(&self.opts.maps_dir)
                    .into_iter()
                    .filter(|r| !requests.contains(&request_rule_body(r)))
                    .collect(),
            };
            live.route_rules_missing =
                !frontend.missing.is_empty() || !frontend.missing_requests.is_empty();
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
                frontend.missing_maps = MatchKind::ALL
                    .into_iter()
                    .filter(|k| !names.contains(&k.map_file()))
                    .collect();
            }
            live.frontend = Some(frontend);
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
                // A frontend written before path routes existed: host routes still work; path
                // routes are refused until the README's rules are added.
                Err(DataplaneError::NotFound { message })
                    if matches!(kind, MatchKind::Path | MatchKind::Redirect) =>
                {
                    tracing::warn!(map = kind.map_file(), error = %message, "path or redirect map not loaded by HAProxy; add the frontend rules from the README or set haproxy.frontend");
                    continue;
                }
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
        Ok(live)
    }
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

/// What a slot object carries itself (the fields [`super::objects::slot_body`] writes from its
/// own settings).
fn slot_carries(server: &wire::Server) -> SlotCarries {
    let u32_of = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok());
    SlotCarries {
        check: server.check.map(|c| c == Toggle::Enabled),
        inter: u32_of(server.inter),
        rise: u32_of(server.rise),
        fall: u32_of(server.fall),
        maxconn: u32_of(server.maxconn),
    }
}
