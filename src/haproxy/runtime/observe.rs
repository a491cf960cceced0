//! Observation: `show backend`, `show servers state`, `show stat`, the fragment on disk (which
//! backends are the connector's, with their settings) and `show map` of the six route maps.

use std::collections::BTreeMap;

use tracing::warn;

use super::{RuntimeDriver, file_error, files, fragment, socket, state};
use crate::haproxy::{Cause, DriverError};
use crate::live::{Live, LiveBackend, LiveServer};
use crate::model::{BackendSettings, MatchKind, Mode, RouteKey};

impl RuntimeDriver {
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

    pub(super) async fn observe_inner(&self) -> Result<Live, DriverError> {
        let parse = |e: state::ParseError| DriverError::Other(Cause::Parse(e));
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
            let arg = socket::cli_arg(&file).map_err(|source| {
                DriverError::Other(Cause::MapFile {
                    file: file.clone(),
                    source,
                })
            })?;
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
}
