//! Route keys and values as the Data Plane API carries them, and whole map files.

use std::collections::BTreeMap;

use super::error::DataplaneError;
use super::segment::url_segment;
use crate::haproxy::runtime::socket;
use crate::model::{MatchKind, RouteKey};
use crate::plan::addressable_in_file;

/// Whether a route key can be changed or removed by key (`{id}` in the URL): the others' maps
/// are rewritten whole (the driver's [`crate::plan::DriverProfile::route_addressable`]).
pub fn addressable_by_key(key: &str) -> bool {
    socket::map_key(key).is_ok_and(|k| url_segment(&k).is_ok())
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
pub(super) struct RouteArgs {
    pub key: String,
    pub value: String,
}

/// The escaped key and value of `route`, or the refusal message (logged) when they cannot be
/// carried: by HAProxy's CLI, or (with `by_key`, for requests that address the entry by key) by a
/// URL path segment the API accepts.
pub(super) fn route_args(
    route: &RouteKey,
    backend: &str,
    by_key: bool,
) -> Result<RouteArgs, String> {
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
pub(super) fn route_refusal(route: &RouteKey, e: DataplaneError) -> Result<String, DataplaneError> {
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

/// The map file of one kind holding exactly `entries` (key, backend) that a file line can hold, rendered as the
/// runtime driver renders its own (a map file is read as it is: no CLI unescaping applies).
pub(super) fn map_file_text(kind: MatchKind, entries: &[(String, String)]) -> String {
    let fit: BTreeMap<RouteKey, String> = entries
        .iter()
        .filter(|(k, _)| addressable_in_file(k))
        .map(|(k, b)| {
            (
                RouteKey {
                    kind,
                    key: k.clone(),
                },
                b.clone(),
            )
        })
        .collect();
    crate::haproxy::runtime::fragment::render_map(kind, &fit)
}
