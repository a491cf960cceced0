//! Observation: one `full_section` read of all backends (with their servers and slots), one
//! native-stats read for run-time state and sessions, the four route maps, and (with
//! `haproxy.frontend`) the frontend's rules and the map files in storage: the same handful of
//! requests whatever the number of services. Everything the core needs to plan goes into [`Live`]:
//! the configuration version, the free slots and what each slot carries itself, the frontend's
//! missing rules.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::Value;

use super::error::DataplaneError;
use super::objects::{parse_settings, parse_slot};
use super::{CONF, DataplaneDriver, RUNTIME, map_name, seg};
use crate::live::{FrontendRules, Live, LiveBackend, LiveServer, SlotCarries};
use crate::model::{
    AdminState, Endpoint, MatchKind, Mode, OWNER_MARKER, OpState, RouteKey, route_rules,
};
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
                None,
            )
            .await?;
        let version = backends
            .version
            .ok_or_else(|| DataplaneError::Protocol("no Configuration-Version header".into()))?;
        let list = backends
            .body
            .as_array()
            .ok_or_else(|| DataplaneError::Protocol("backends: expected an array".into()))?;

        let stats = self
            .client
            .call(
                Method::GET,
                "stats",
                &["services", "haproxy", "stats", "native"],
                &[("type", "server".into())],
                None,
            )
            .await?;
        // (backend, server) → (status, sessions)
        let mut runtime: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
        // One `native_stats` object (the spec's 200 schema); `stats` is omitted when empty.
        if !stats.body.is_object() {
            return Err(DataplaneError::Protocol(
                "stats/native: expected an object".into(),
            ));
        }
        for st in stats
            .body
            .get("stats")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(b), Some(s)) = (
                st.get("backend_name").and_then(Value::as_str),
                st.get("name").and_then(Value::as_str),
            ) else {
                continue;
            };
            let inner = st.get("stats");
            let status = inner
                .and_then(|x| x.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let scur = inner
                .and_then(|x| x.get("scur"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            runtime.insert((b.to_string(), s.to_string()), (status, scur));
        }

        let mut live = Live {
            version: Some(version),
            ..Live::default()
        };
        for b in list {
            let Some(name) = b.get("name").and_then(Value::as_str) else {
                continue;
            };
            let owned = b.get("description").and_then(Value::as_str) == Some(OWNER_MARKER);
            let mode = match b.get("mode").and_then(Value::as_str) {
                Some("tcp") => Mode::Tcp,
                // Unset: inherited from `defaults`, which DPAPI does not show here; http is the
                // common case for a backend a service would be routed to.
                _ => Mode::Http,
            };
            let balance = b
                .get("balance")
                .and_then(|x| x.get("algorithm"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let default_check = b
                .get("default_server")
                .and_then(|d| d.get("check"))
                .and_then(Value::as_str)
                == Some("enabled");
            let mut servers = BTreeMap::new();
            let mut free = Vec::new();
            if let Some(map) = b.get("servers").and_then(Value::as_object) {
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
                        let endpoint = match (
                            sv.get("address")
                                .and_then(Value::as_str)
                                .and_then(|a| a.parse().ok()),
                            sv.get("port")
                                .and_then(Value::as_u64)
                                .and_then(|p| u16::try_from(p).ok()),
                        ) {
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
                                check_enabled: sv.get("check").and_then(Value::as_str)
                                    == Some("enabled"),
                                weight: sv
                                    .get("weight")
                                    .and_then(Value::as_u64)
                                    .and_then(|w| u16::try_from(w).ok())
                                    .unwrap_or(1),
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
                    None,
                )
                .await?;
            let existing: Vec<&str> = rules
                .body
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("name").and_then(Value::as_str))
                .collect();
            let mut frontend = FrontendRules {
                frontend: fe.clone(),
                count: existing.len(),
                missing: route_rules(&self.opts.maps_dir)
                    .into_iter()
                    .filter(|(name, _)| !existing.contains(&name.as_str()))
                    .collect(),
                missing_maps: Vec::new(),
            };
            live.route_rules_missing = !frontend.missing.is_empty();
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
                        None,
                    )
                    .await?;
                let names: Vec<&str> = stored
                    .body
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.get("storage_name").and_then(Value::as_str))
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
                    None,
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
            for e in entries.body.as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (
                    e.get("key").and_then(Value::as_str),
                    e.get("value").and_then(Value::as_str),
                ) {
                    live.routes
                        .entry(RouteKey {
                            kind,
                            key: k.to_string(),
                        })
                        .or_default()
                        .push(v.to_string());
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
fn slot_carries(server: &Value) -> SlotCarries {
    let u32_of = |k: &str| {
        server
            .get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    SlotCarries {
        check: server
            .get("check")
            .and_then(Value::as_str)
            .map(|c| c == "enabled"),
        inter: u32_of("inter"),
        rise: u32_of("rise"),
        fall: u32_of("fall"),
        maxconn: u32_of("maxconn"),
    }
}
