//! Validation of a merged [`Layer`], derived from each key's declared [`Kind`]: one generic
//! [`Validator::parse`] turns every key's raw value into a checked [`Parsed`] value, recording
//! every problem (with the key and the source of its value) instead of stopping at the first;
//! [`Validator::get`] hands the typed values to [`super::Config::from_layer`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::keys::{KEYS, Key, KeySpec};
use super::kind::{FromParsed, Kind, Parsed};
use super::{ConfigError, Layer, Namespaces, Raw, Source, layer, redact_url};

/// The checked values of a merged layer, and every problem found on the way.
pub(super) struct Validator<'a> {
    layer: &'a Layer,
    errors: Vec<ConfigError>,
    values: BTreeMap<Key, Parsed>,
}

impl<'a> Validator<'a> {
    /// Parses and checks every key `layer` sets against its declared kind, in registry order.
    pub(super) fn new(layer: &'a Layer) -> Self {
        let mut v = Validator {
            layer,
            errors: Vec::new(),
            values: BTreeMap::new(),
        };
        for spec in KEYS {
            if let Some(parsed) = v.parse(spec) {
                v.values.insert(spec.key, parsed);
            }
        }
        v
    }

    /// The checked value of `key` as a `T`; `None` when the key is unset or its value was
    /// invalid (an error is recorded then). Reading a key as another type than its kind yields
    /// is a registry mistake and recorded as one.
    pub(super) fn get<T: FromParsed>(&mut self, key: Key) -> Option<T> {
        let parsed = self.values.get(&key)?;
        let value = T::from_parsed(parsed);
        if value.is_none() {
            self.errors.push(ConfigError::Invalid {
                key: key.json(),
                origin: Source::Default,
                reason: format!(
                    "the key registry declares it as {:?}, but it is read as {}",
                    key.spec().kind,
                    std::any::type_name::<T>()
                ),
                source: None,
            });
        }
        value
    }

    /// Every problem found, in the order found.
    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    /// The one place a raw value becomes a checked value: by the key's declared kind.
    fn parse(&mut self, spec: &KeySpec) -> Option<Parsed> {
        let key = spec.key;
        match spec.kind {
            Kind::Text(rule) => {
                let text = self.string(key)?;
                match rule.check(&text) {
                    Ok(()) => Some(Parsed::Text(text)),
                    Err(reason) => {
                        self.fail(key, reason);
                        None
                    }
                }
            }
            Kind::Secret => self
                .string(key)
                .map(|s| Parsed::Secret(super::Secret::new(s))),
            // Resolved into the secret key while each source is read.
            Kind::SecretFile { .. } => None,
            Kind::Url { schemes } => self.url(key, schemes).map(Parsed::Url),
            Kind::Path { names_file } => {
                let path = self.path(key)?;
                if names_file && path.file_name().is_none() {
                    self.fail(key, format!("`{}` names no file", path.display()));
                    return None;
                }
                Some(Parsed::Path(path))
            }
            Kind::ReadableFile => self.readable_path(key).map(Parsed::Path),
            Kind::Paths => self.paths(key).map(Parsed::Paths),
            Kind::Bool => self.bool(key).map(Parsed::Bool),
            Kind::Duration => self.duration(key).map(Parsed::Duration),
            Kind::Ratio { above, at_most } => self.ratio(key, above, at_most).map(Parsed::Ratio),
            Kind::Count { min } => self.count(key, min).map(Parsed::Count),
            Kind::Choice { what, accepted } => self.choice(key, what, accepted).map(Parsed::Choice),
            Kind::Namespaces => self.namespaces(key).map(Parsed::Namespaces),
            Kind::NamespaceDeny => self.namespace_deny(key).map(Parsed::Names),
            Kind::Cidrs => self.cidr_list(key).map(Parsed::Cidrs),
            Kind::SocketAddr => self.socket_addr(key).map(Parsed::SocketAddr),
        }
    }

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

    /// The text of a key whose value must be a string (file) or any text (env, flag).
    fn string(&mut self, key: Key) -> Option<String> {
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

    fn url(&mut self, key: Key, schemes: &[&str]) -> Option<Url> {
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
    fn path(&mut self, key: Key) -> Option<PathBuf> {
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
    fn list(&mut self, key: Key, what: &str) -> Option<Vec<String>> {
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
    fn paths(&mut self, key: Key) -> Option<Vec<PathBuf>> {
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

    fn bool(&mut self, key: Key) -> Option<bool> {
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

    fn duration(&mut self, key: Key) -> Option<Duration> {
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

    /// A number in (`above`, `at_most`].
    fn ratio(&mut self, key: Key, above: f64, at_most: f64) -> Option<f64> {
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
            Ok(r) if r > above && r <= at_most => Some(r),
            Ok(r) => {
                self.fail(
                    key,
                    format!("must be greater than {above} and at most {at_most}, got {r}"),
                );
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    /// A whole number ≥ `min`.
    fn count(&mut self, key: Key, min: u32) -> Option<u32> {
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
            Ok(n) if n >= min => Some(n),
            Ok(n) => {
                self.fail(key, format!("must be at least {min}, got {n}"));
                None
            }
            Err(reason) => {
                self.fail(key, reason);
                None
            }
        }
    }

    /// One of `accepted`; `what` names the value in messages.
    fn choice(
        &mut self,
        key: Key,
        what: &str,
        accepted: &'static [&'static str],
    ) -> Option<&'static str> {
        let text = self.string(key)?;
        match accepted.iter().find(|a| **a == text) {
            Some(name) => Some(name),
            None => {
                self.fail(
                    key,
                    format!("unknown {what} `{text}`; accepted: {}", accepted.join(", ")),
                );
                None
            }
        }
    }

    /// A list of namespace names in which `*` makes no sense (a deny-list).
    fn namespace_deny(&mut self, key: Key) -> Option<Vec<String>> {
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
    fn socket_addr(&mut self, key: Key) -> Option<SocketAddr> {
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

    fn namespaces(&mut self, key: Key) -> Option<Namespaces> {
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

    /// A list of CIDR ranges (`10.0.0.0/8`; a bare address is its own /32 or /128).
    fn cidr_list(&mut self, key: Key) -> Option<Vec<ipnet::IpNet>> {
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

    /// The names of a namespace-list key, trimmed, sorted and de-duplicated (empty entries
    /// dropped); the callers decide what an empty list or `*` means.
    fn namespace_items(&mut self, key: Key) -> Option<Vec<String>> {
        let mut items = self.list(key, "namespace names")?;
        items.sort();
        items.dedup();
        Some(items)
    }

    /// A path that must name a readable file (TLS material is read when the client is built; a
    /// bad path should fail `check-config`, not the first request).
    fn readable_path(&mut self, key: Key) -> Option<PathBuf> {
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

fn is_nomad_namespace(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
