//! `check-config --connect` for the Data Plane API driver: what a `run` needs of the API, checked
//! once, each result a line (`Ok`: what was found; `Err`: the problem and what to do).

use reqwest::Method;

use super::client::NO_BODY;
use super::error::DataplaneError;
use super::objects::wire::StorageMap;
use super::{CONF, DataplaneDriver, seg};
use crate::model::MatchKind;

impl DataplaneDriver {
    /// Reachability, credentials, version, the frontend, the map files.
    pub async fn preflight(&self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        let address = &self.opts.address;
        // Credentials and reachability: the configuration version needs both.
        match self
            .client
            .call(
                Method::GET,
                "version",
                &seg(&CONF, &["version"]),
                &[],
                NO_BODY,
            )
            .await
        {
            Ok(_) => out.push(Ok(format!(
                "Data Plane API {address}: reachable, credentials accepted"
            ))),
            Err(DataplaneError::Unauthorized { message }) => {
                out.push(Err(format!(
                    "Data Plane API {address}: credentials refused ({message}); check haproxy.username and haproxy.password"
                )));
                return out;
            }
            Err(e @ (DataplaneError::Timeout { .. } | DataplaneError::Transport { .. })) => {
                out.push(Err(format!("Data Plane API {address}: {e}")));
                return out;
            }
            // A 2.x API has no /v3: the version check below says so.
            Err(DataplaneError::NotFound { .. }) => {}
            Err(e) => out.push(Err(format!("Data Plane API {address}: {e}"))),
        }
        match self.api_version().await {
            Ok(v) => out.push(Ok(format!("Data Plane API version {v}"))),
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
        if let Some(fe) = &self.opts.frontend {
            match self
                .client
                .call(
                    Method::GET,
                    "frontends",
                    &seg(&CONF, &["frontends", fe]),
                    &[],
                    NO_BODY,
                )
                .await
            {
                Ok(_) => out.push(Ok(format!("frontend `{fe}` exists"))),
                Err(DataplaneError::NotFound { .. }) => out.push(Err(format!(
                    "frontend `{fe}` (haproxy.frontend) does not exist in HAProxy's configuration"
                ))),
                Err(e) => out.push(Err(format!("frontend `{fe}`: {e}"))),
            }
        }
        match self
            .client
            .call(
                Method::GET,
                "storage_maps",
                &["services", "haproxy", "storage", "maps"],
                &[],
                NO_BODY,
            )
            .await
            .and_then(|a| a.parse::<Vec<StorageMap>>())
        {
            Ok(stored) => {
                let names: Vec<&str> = stored
                    .iter()
                    .filter_map(|m| m.storage_name.as_deref())
                    .collect();
                let missing: Vec<&str> = MatchKind::ALL
                    .iter()
                    .map(|k| k.map_file())
                    .filter(|f| !names.contains(f))
                    .collect();
                // The rules name `<haproxy.maps_dir>/<file>`: a DPAPI keeping its maps elsewhere
                // (`--maps-dir`) would create files HAProxy never reads.
                let elsewhere: Vec<String> = stored
                    .iter()
                    .filter_map(|m| m.file.as_deref())
                    .filter(|f| {
                        MatchKind::ALL
                            .iter()
                            .any(|k| f.ends_with(&format!("/{}", k.map_file())))
                    })
                    .filter(|f| {
                        std::path::Path::new(f).parent()
                            != Some(std::path::Path::new(&self.opts.maps_dir))
                    })
                    .map(str::to_string)
                    .collect();
                if !elsewhere.is_empty() {
                    out.push(Err(format!(
                        "the Data Plane API keeps the map files in another directory ({}) than haproxy.maps_dir ({}): set haproxy.maps_dir to DPAPI's --maps-dir",
                        elsewhere.join(", "),
                        self.opts.maps_dir
                    )));
                } else if missing.is_empty() {
                    out.push(Ok("the map files exist".into()));
                } else if self.opts.frontend.is_some() {
                    out.push(Ok(format!(
                        "map files {} are missing and will be created by the first pass",
                        missing.join(", ")
                    )));
                } else {
                    out.push(Err(format!(
                        "map files {} are missing: create them empty in DPAPI's maps directory, or set haproxy.frontend and the connector creates them",
                        missing.join(", ")
                    )));
                }
            }
            Err(e) => out.push(Err(format!("map files: {e}"))),
        }
        out
    }
}
