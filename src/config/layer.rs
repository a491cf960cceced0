//! The raw layer: what the user wrote, in which source, before any validation.
//!
//! Each source (JSON file, environment, flags) is turned into a [`Layer`]; layers are merged in
//! precedence order and the result is validated once, in [`super::Config::from_layer`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::ConfigError;
use super::keys::{self, Key};

/// Where a value came from; every message about a value names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
    /// A secret read from `file`, named by the `*_file` key set in `via`.
    SecretFile {
        file: PathBuf,
        via: Box<Source>,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(fl) => write!(f, "flag {fl}"),
            Source::SecretFile { file, via } => {
                write!(f, "file {} (named by {via})", file.display())
            }
        }
    }
}

/// A value as written: typed JSON from the file, or text from the environment or a flag.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Json(serde_json::Value),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sourced {
    pub raw: Raw,
    pub source: Source,
}

/// One source's settings, keyed by configuration key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layer {
    values: BTreeMap<Key, Sourced>,
}

impl Layer {
    pub fn get(&self, key: Key) -> Option<&Sourced> {
        self.values.get(&key)
    }

    pub fn set(&mut self, key: Key, raw: Raw, source: Source) {
        self.values.insert(key, Sourced { raw, source });
    }

    /// `higher` wins wherever it sets a key.
    pub fn merged(mut self, higher: Layer) -> Layer {
        self.values.extend(higher.values);
        self
    }

    /// The built-in defaults: every key whose registry default is a value, as text from
    /// [`Source::Default`]. The lowest layer; validated like any other, so the default that is
    /// documented (README, `--help`) is the default that is used.
    pub fn defaults() -> Layer {
        let mut layer = Layer::default();
        for spec in keys::KEYS {
            if let Some(value) = spec.default_value() {
                layer.set(spec.key, Raw::Text(value.to_string()), Source::Default);
            }
        }
        layer
    }

    /// A layer from the JSON configuration file at `path`.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Layer::from_json_text(&text, path)
    }

    /// A layer from JSON text; `path` is only used in messages.
    pub fn from_json_text(text: &str, path: &Path) -> Result<Layer, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ConfigError::Json {
                path: path.to_path_buf(),
                line: source.line(),
                column: source.column(),
                message: strip_position(&source.to_string()),
                source,
            })?;
        let mut layer = Layer::default();
        match value {
            serde_json::Value::Object(map) => walk(&mut layer, "", map, path)?,
            other => {
                return Err(ConfigError::NotAnObject {
                    path: path.to_path_buf(),
                    found: json_kind(&other),
                });
            }
        }
        layer.resolve_secret_files()
    }

    /// A layer from environment variables, looked up through `lookup` (so tests need not touch
    /// the process environment). Empty variables count as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        for spec in keys::KEYS {
            // The first variable in the list that is set wins (e.g. RUST_LOG over LOG_LEVEL).
            if let Some((var, value)) = spec
                .env
                .iter()
                .find_map(|var| lookup(var).filter(|v| !v.is_empty()).map(|v| (*var, v)))
            {
                layer.set(spec.key, Raw::Text(value), Source::Env(var));
            }
        }
        layer.resolve_secret_files()
    }

    /// A layer from command-line flags: pairs of key and the flag's value, if given.
    pub fn from_flags<'a>(
        flags: impl IntoIterator<Item = (Key, Option<&'a str>)>,
    ) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        for (key, value) in flags {
            let Some(value) = value else { continue };
            let flag = key
                .spec()
                .flag
                .expect("only keys with a flag are passed from the command line");
            layer.set(key, Raw::Text(value.to_string()), Source::Flag(flag));
        }
        layer.resolve_secret_files()
    }

    /// Replaces `*_file` keys by the secret read from the file they name. Setting both the secret
    /// and its file in one source is ambiguous and rejected.
    fn resolve_secret_files(mut self) -> Result<Layer, ConfigError> {
        for (file_key, secret_key) in keys::secret_files() {
            let Some(file_entry) = self.values.remove(&file_key) else {
                continue;
            };
            if self.values.contains_key(&secret_key) {
                return Err(ConfigError::Invalid {
                    key: file_key.json(),
                    origin: file_entry.source,
                    reason: format!(
                        "set either {} or {}, not both",
                        secret_key.json(),
                        file_key.json()
                    ),
                    source: None,
                });
            }
            let path = match &file_entry.raw {
                Raw::Text(s) => PathBuf::from(s),
                Raw::Json(serde_json::Value::String(s)) => PathBuf::from(s),
                Raw::Json(other) => {
                    return Err(ConfigError::Invalid {
                        key: file_key.json(),
                        origin: file_entry.source,
                        reason: format!(
                            "expected a file path (string), found {}",
                            json_kind(other)
                        ),
                        source: None,
                    });
                }
            };
            let secret =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadSecretFile {
                    key: file_key.json(),
                    path: path.clone(),
                    source,
                })?;
            self.set(
                secret_key,
                Raw::Text(secret.trim_end().to_string()),
                Source::SecretFile {
                    file: path,
                    via: Box::new(file_entry.source),
                },
            );
        }
        Ok(self)
    }
}

fn walk(
    layer: &mut Layer,
    prefix: &str,
    map: serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<(), ConfigError> {
    for (name, value) in map {
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some(spec) = keys::by_json(&full) {
            // An empty string or null means "not set", as the predecessor's `"token": ""` does.
            let unset = value.is_null() || value.as_str().is_some_and(str::is_empty);
            if !unset {
                layer.set(spec.key, Raw::Json(value), Source::File(path.to_path_buf()));
            }
        } else if keys::is_section(&full) {
            match value {
                serde_json::Value::Object(inner) => walk(layer, &full, inner, path)?,
                other => {
                    return Err(ConfigError::SectionNotObject {
                        section: full,
                        path: path.to_path_buf(),
                        found: json_kind(&other),
                    });
                }
            }
        } else {
            return Err(ConfigError::UnknownKey {
                key: full.clone(),
                path: path.to_path_buf(),
                suggestion: keys::suggest(&full),
            });
        }
    }
    Ok(())
}

pub(super) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
