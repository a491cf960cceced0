//! Validation of a merged [`Layer`]: one typed reader per kind of value, each recording every
//! problem (with the key and the source of its value) instead of stopping at the first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::keys::Key;
use super::{
    BackendStrategy, ConfigError, Layer, LogFormat, Namespaces, Raw, Source, layer, redact_url,
};

/// Reads each key from the merged layer and records every problem instead of stopping at the
/// first one.
pub(super) struct Validator<'a> {
    pub(super) layer: &'a Layer,
    pub(super) errors: &'a mut Vec<ConfigError>,
}

impl Validator<'_> {
    pub(super) fn fail(&mut self, key: Key, reason: String) {
        self.fail_because(key, reason, None);
    }

    /// As [`Validator::fail`], keeping the error that made the value invalid as the source.
    pub(super) fn fail_because(
        &mut self,
        key: Key,
        reason: String,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) {
        let origin = self
            .layer
            .get(key)
            .map(|s| s.source.clone())
            .unwrap_or(Source::Default);
        self.errors.push(ConfigError::Invalid {
            key: key.json(),
            origin,
            reason,
            source,
        });
    }

    pub(super) fn check(&mut self, key: Key, ok: bool, reason: impl FnOnce() -> String) {
        if !ok {
            self.fail(key, reason());
        }
    }

    /// The text of a key whose value must be a string (file) or any text (env, flag).
    pub(super) fn string(&mut self, key: Key) -> Option<String> {
        let entry = self.layer.get(key)?;
        match &entry.raw {
            Raw::Text(s) => Some(s.clone()),
            Raw::Json(Value::String(s)) => Some(s.clone()),
            Raw::Json(other) => {
                let found = layer::json_kind(other);
                self.fail(key, format!("expected a string, found {found}"));
                None
            }
        }
    }

    pub(super) fn url(&mut self, key: Key, schemes: &[&str]) -> Option<Url> {
        let raw = self.string(key)?;
        // Errors echo the value: never its user-info.
        let text = redact_url(&raw);
        match Url::parse(&raw) {
            Ok(url) if !schemes.contains(&url.scheme()) => {
                let accepted = schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.fail(
                    key,
                    format!(
                        "`{text}` has scheme `{}`; accepted: {accepted}",
                        url.scheme()
                    ),
                );
                None
            }
            Ok(url) if url.scheme() != "unix" && url.host_str().is_none_or(str::is_empty) => {
                self.fail(key, format!("`{text}` has no host"));
                None
            }
            Ok(url) if url.scheme() == "unix" && url.path().len() <= 1 => {
                self.fail(
                    key,
                    format!("`{text}` names no socket path (expected unix:///path/to/socket)"),
                );
                None
            }
            Ok(url) => Some(url),
            Err(e) => {
                let reason = format!("`{text}` is not a valid URL: {e}");
                self.fail_because(key, reason, Some(Box::new(e)));
                None
            }
        }
    }

    /// A file-system path as text: no whitespace or control characters, since it also appears in
    /// HAProxy configuration lines and CLI commands.
    pub(super) fn path(&mut self, key: Key) -> Option<PathBuf> {
        let text = self.string(key)?;
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.fail(
                key,
                format!(
                    "`{text}` contains whitespace or control characters, which HAProxy would split"
                ),
            );
            return None;
        }
        Some(PathBuf::from(text))
    }

    /// A list of texts: a JSON array of strings, or comma-separated text; entries trimmed and
    /// empty ones dropped. `what` names the items in messages.
    pub(super) fn list(&mut self, key: Key, what: &str) -> Option<Vec<String>> {
        let entry = self.layer.get(key)?;
        let items: Vec<String> = match &entry.raw {
            Raw::Text(s) | Raw::Json(Value::String(s)) => {
                s.split(',').map(|p| p.trim().to_string()).collect()
            }
            Raw::Json(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.trim().to_string()),
                        other => {
                            let found = layer::json_kind(other);
                            self.fail(
                                key,
                                format!("expected a list of {what}, found {found} in it"),
                            );
                            return None;
                        }
                    }
                }
                out
            }
            Raw::Json(other) => {
                let found = layer::json_kind(other);
                self.fail(key, format!("expected a list of {what}, found {found}"));
                return None;
            }
        };
        Some(items.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// A list of paths: a JSON array, or comma-separated text.
    pub(super) fn paths(&mut self, key: Key) -> Option<Vec<PathBuf>> {
        let items = self.list(key, "paths")?;
        if items.is_empty() {
            self.fail(key, "no path given".to_string());
            return None;
        }
        if let Some(bad) = items
            .iter()
            .find(|p| p.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.fail(
                key,
                format!("`{bad}` contains whitespace or control characters"),
            );
            return None;
        }
        Some(items.into_iter().map(PathBuf::from).collect())
    }

    pub(super) fn bool(&mut self, key: Key) -> Option<bool> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Bool(b)) => Ok(*b),
            Raw::Json(Value::String(s)) | Raw::Text(s) => {
                parse_bool(s).ok_or_else(|| format!("`{s}` is not a boolean"))
            }
            Raw::Json(other) => Err(format!(
                "expected a boolean, found {}",
                layer::json_kind(other)
            )),
        };
        parsed
            .map_err(|reason| self.fail(key, format!("{reason} (accepted: true, false, 1, 0)")))
            .ok()
    }

    pub(super) fn duration(&mut self, key: Key) -> Option<Duration> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => match n.as_i64() {
                Some(secs) if secs > 0 => Ok(Duration::from_secs(secs.unsigned_abs())),
                Some(secs) => Err(format!("must be greater than zero, got {secs}")),
                None => Err(format!("expected whole seconds, got {n}")),
            },
            Raw::Json(Value::String(s)) | Raw::Text(s) => parse_duration(s),
            Raw::Json(other) => Err(format!(
                "expected seconds or a duration string such as \"30s\", found {}",
                layer::json_kind(other)
            )),
        };
        parsed.map_err(|reason| self.fail(key, reason)).ok()
    }

    /// A share in (0, 1].
    pub(super) fn ratio(&mut self, key: Key) -> Option<f64> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => {
                n.as_f64().ok_or_else(|| format!("`{n}` is not a number"))
            }
            Raw::Json(Value::String(s)) | Raw::Text(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("`{s}` is not a number")),
            Raw::Json(other) => Err(format!(
                "expected a number, found {}",
                layer::json_kind(other)
            )),
        };
        match parsed {
            Ok(r) if r > 0.0 && r <= 1.0 => Some(r),
            Ok(r) => {
                self.fail(
                    key,
                    format!("must be greater than 0 and at most 1, got {r}"),
                );
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    /// A whole number ≥ 1.
    pub(super) fn count(&mut self, key: Key) -> Option<u32> {
        let entry = self.layer.get(key)?;
        let parsed = match &entry.raw {
            Raw::Json(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("`{n}` is not a whole number")),
            Raw::Json(Value::String(s)) | Raw::Text(s) => s
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}` is not a whole number")),
            Raw::Json(other) => Err(format!(
                "expected a number, found {}",
                layer::json_kind(other)
            )),
        };
        match parsed {
            Ok(n) if n >= 1 => Some(n),
            Ok(n) => {
                self.fail(key, format!("must be at least 1, got {n}"));
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    pub(super) fn strategy(&mut self, key: Key) -> Option<BackendStrategy> {
        let text = self.string(key)?;
        match BackendStrategy::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
        {
            Some(s) => Some(s),
            None => {
                let accepted: Vec<_> = BackendStrategy::ALL.iter().map(|s| s.as_str()).collect();
                self.fail(
                    key,
                    format!(
                        "unknown strategy `{text}`; accepted: {}",
                        accepted.join(", ")
                    ),
                );
                None
            }
        }
    }

    pub(super) fn log_format(&mut self, key: Key) -> Option<LogFormat> {
        let text = self.string(key)?;
        match text.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => {
                self.fail(
                    key,
                    format!("unknown log format `{text}`; accepted: text, json"),
                );
                None
            }
        }
    }

    /// A list of namespace names in which `*` makes no sense (a deny-list).
    pub(super) fn namespace_deny(&mut self, key: Key) -> Option<Vec<String>> {
        match self.namespace_items(key)? {
            items if items.iter().any(|n| n == "*") => {
                self.fail(
                    key,
                    "`*` would deny every namespace; list namespace names".to_string(),
                );
                None
            }
            items => {
                if let Some(bad) = items.iter().find(|n| !is_nomad_namespace(n)) {
                    self.fail(
                        key,
                        format!("`{bad}` is not a valid Nomad namespace name (1-128 letters, digits or `-`)"),
                    );
                    return None;
                }
                Some(items)
            }
        }
    }

    /// An `IP:port` listen address (`[::1]:4650` for IPv6); no host names, so what is bound is
    /// exactly what was written.
    pub(super) fn socket_addr(&mut self, key: Key) -> Option<SocketAddr> {
        let text = self.string(key)?;
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.fail(
                    key,
                    format!(
                        "`{text}` is not an IP address and port (for example 0.0.0.0:4650, 127.0.0.1:4650 or [::]:4650)"
                    ),
                );
                None
            }
        }
    }

    pub(super) fn namespaces(&mut self, key: Key) -> Option<Namespaces> {
        let items = self.namespace_items(key)?;
        if items.is_empty() {
            self.fail(key, "no namespace given (use `*` for all)".to_string());
            return None;
        }
        if items.iter().any(|n| n == "*") {
            if items.len() > 1 {
                self.fail(
                    key,
                    "`*` (all namespaces) cannot be combined with named namespaces".to_string(),
                );
                return None;
            }
            return Some(Namespaces::All);
        }
        if let Some(bad) = items.iter().find(|n| !is_nomad_namespace(n)) {
            self.fail(
                key,
                format!(
                    "`{bad}` is not a valid Nomad namespace name (1-128 letters, digits or `-`)"
                ),
            );
            return None;
        }
        Some(Namespaces::List(items))
    }

    /// The names of a namespace-list key, trimmed, sorted and de-duplicated (empty entries
    /// dropped); the callers decide what an empty list or `*` means.
    /// A list of CIDR ranges (`10.0.0.0/8`; a bare address is its own /32 or /128).
    pub(super) fn cidr_list(&mut self, key: Key) -> Option<Vec<ipnet::IpNet>> {
        let items = self.list(key, "CIDR ranges")?;
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            let parsed = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => {
                    self.fail(
                        key,
                        format!(
                            "`{item}` is not a CIDR range (for example 127.0.0.0/8 or fd00::/8)"
                        ),
                    );
                    return None;
                }
            }
        }
        nets.sort();
        nets.dedup();
        Some(nets)
    }

    pub(super) fn namespace_items(&mut self, key: Key) -> Option<Vec<String>> {
        let mut items = self.list(key, "namespace names")?;
        items.sort();
        items.dedup();
        Some(items)
    }

    /// A path that must name a readable file (TLS material is read when the client is built; a
    /// bad path should fail `check-config`, not the first request).
    pub(super) fn readable_path(&mut self, key: Key) -> Option<PathBuf> {
        let path = PathBuf::from(self.string(key)?);
        match std::fs::File::open(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                let reason = format!("cannot read {}: {e}", path.display());
                self.fail_because(key, reason, Some(Box::new(e)));
                None
            }
        }
    }
}

/// `tracing`'s filter parser takes any bare word as a target name, so a typo such as `verbose`
/// would silently disable logging. Require a level, or `target=level` directives.
pub(super) fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level (accepted: off, error, warn, info, debug, trace, or target=level)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Go's `strconv.ParseBool`, which Nomad's own tools use for `NOMAD_SKIP_VERIFY`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Whole seconds (`30`) or a humane duration (`30s`, `5m`, `1h 30m`); must be greater than zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return if secs > 0 {
            Ok(Duration::from_secs(secs.unsigned_abs()))
        } else {
            Err(format!("must be greater than zero, got {secs}"))
        };
    }
    if s.starts_with('-') {
        return Err(format!("must be greater than zero, got `{s}`"));
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("must be greater than zero, got `{s}`")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "`{s}` is not a duration ({e}); use whole seconds or a value such as 30s, 5m, 1h"
        )),
    }
}

/// A tag prefix: the part before `.enable=true`.
pub(super) fn is_tag_prefix(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_nomad_namespace(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
