//! What kind of value each key holds, declared with the key in [`super::keys`]: its type, its
//! bounds and the rule its text must follow. [`super::validate`] parses and checks every key from
//! its kind in one place; [`Config::from_layer`](super::Config::from_layer) then reads the typed
//! values back with [`FromParsed`], restating no parser or bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::keys::Key;
use super::validate::check_log_filter;
use super::{BackendStrategy, DriverKind, LogFormat, Namespaces, Secret};
use crate::model::is_haproxy_name;

/// The type and bounds of a key's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// Text (a string in the file) that must follow `rule`.
    Text(TextRule),
    /// Text held as a [`Secret`]: never logged or printed.
    Secret,
    /// A file whose content (trailing whitespace trimmed) is the value of the secret key `of`;
    /// resolved into that key while each source is read ([`super::Layer`]).
    SecretFile { of: Key },
    /// A URL with one of `schemes`; `http(s)` needs a host, `unix` a socket path.
    Url { schemes: &'static [&'static str] },
    /// A file-system path with no whitespace or control characters (it also appears in HAProxy
    /// configuration lines and CLI commands); with `names_file`, its last part must be a file
    /// name (not `/` or `..`).
    Path { names_file: bool },
    /// A path that must name a file readable now (TLS material): a bad path fails
    /// `check-config`, not the first request.
    ReadableFile,
    /// A non-empty list of [`Kind::Path`]s: a JSON array, or comma-separated text.
    Paths,
    /// `true`/`false`, or Go's `strconv.ParseBool` spellings as text.
    Bool,
    /// Whole seconds or a humane duration (`30s`, `5m`), greater than zero.
    Duration,
    /// A number greater than `above` and at most `at_most`.
    Ratio { above: f64, at_most: f64 },
    /// A whole number of at least `min`.
    Count { min: u32 },
    /// One of `accepted`; `what` names the value in messages (`unknown strategy ...`).
    Choice {
        what: &'static str,
        accepted: &'static [&'static str],
    },
    /// Nomad namespaces to watch: `*`, or a non-empty list of names (sorted, de-duplicated).
    Namespaces,
    /// Nomad namespace names to deny (`*` refused), sorted and de-duplicated; may be empty.
    NamespaceDeny,
    /// CIDR ranges (a bare address is its own /32 or /128), sorted and de-duplicated.
    Cidrs,
    /// An `IP:port` listen address (no host names: what is bound is what was written).
    SocketAddr,
}

/// A rule that a [`Kind::Text`] value must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextRule {
    /// Any text.
    Any,
    /// A Nomad region: no whitespace or control characters.
    Region,
    /// A tag prefix: 1-64 letters, digits, `-`, `_` or `.`, not ending in `.`.
    TagPrefix,
    /// A Basic-auth user name: no `:`.
    BasicAuthUser,
    /// An HAProxy section name.
    HaproxyName,
    /// A log level or `tracing` filter directive.
    LogFilter,
    /// An absolute path on the HAProxy host, written into HAProxy's configuration and CLI
    /// commands: no whitespace, control characters or HAProxy syntax (`#`, `;`, quotes, `\\`…).
    HaproxyFilePath,
    /// A host-name template with `{service}` (`haproxy.default_domain`).
    HostTemplate,
}

impl TextRule {
    /// Checks `text`; the reason it is refused otherwise.
    pub(super) fn check(self, text: &str) -> Result<(), String> {
        let ok = match self {
            TextRule::Any => true,
            TextRule::Region => !text.chars().any(|c| c.is_whitespace() || c.is_control()),
            TextRule::TagPrefix => is_tag_prefix(text),
            TextRule::BasicAuthUser => !text.contains(':'),
            TextRule::HaproxyName => is_haproxy_name(text),
            TextRule::HaproxyFilePath => {
                text.starts_with('/') && hnc_core::desired::grammar::is_safe_token(text)
            }
            TextRule::HostTemplate => {
                return crate::desired::default_domain::check_template(text);
            }
            TextRule::LogFilter => {
                return check_log_filter(text)
                    .map_err(|e| format!("`{text}` is not a log level or filter directive: {e}"));
            }
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            TextRule::Region => {
                "a region name cannot contain whitespace or control characters".to_string()
            }
            TextRule::TagPrefix => format!(
                "`{text}` is not a valid tag prefix (1-64 letters, digits, `-`, `_` or `.`, not ending in `.`)"
            ),
            TextRule::BasicAuthUser => "a Basic-auth user name cannot contain `:`".to_string(),
            TextRule::HaproxyName => format!(
                "`{text}` is not a valid HAProxy section name (allowed: letters, digits, `-`, `_`, `.`, `:`)"
            ),
            TextRule::HaproxyFilePath => {
                format!("`{text}` is not an absolute path without whitespace or HAProxy syntax")
            }
            TextRule::Any | TextRule::LogFilter | TextRule::HostTemplate => String::new(),
        })
    }
}

/// A tag prefix: the part before `.enable=true`.
fn is_tag_prefix(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A key's value once parsed and checked against its [`Kind`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Parsed {
    Text(String),
    Secret(Secret),
    Url(Url),
    Path(PathBuf),
    Paths(Vec<PathBuf>),
    Bool(bool),
    Duration(Duration),
    Ratio(f64),
    Count(u32),
    /// The accepted name that was given.
    Choice(&'static str),
    Namespaces(Namespaces),
    Names(Vec<String>),
    Cidrs(Vec<ipnet::IpNet>),
    SocketAddr(SocketAddr),
}

/// A Rust type a parsed value can be read as; `None` when the key's kind yields another type (a
/// registry mistake, reported as such by the reader).
pub(super) trait FromParsed: Sized {
    fn from_parsed(parsed: &Parsed) -> Option<Self>;
}

macro_rules! from_parsed {
    ($($ty:ty => $variant:ident),+ $(,)?) => {$(
        impl FromParsed for $ty {
            fn from_parsed(parsed: &Parsed) -> Option<Self> {
                match parsed {
                    Parsed::$variant(v) => Some(v.clone()),
                    _ => None,
                }
            }
        }
    )+};
}

from_parsed! {
    String => Text,
    Secret => Secret,
    Url => Url,
    PathBuf => Path,
    Vec<PathBuf> => Paths,
    bool => Bool,
    Duration => Duration,
    f64 => Ratio,
    u32 => Count,
    Namespaces => Namespaces,
    Vec<String> => Names,
    Vec<ipnet::IpNet> => Cidrs,
    SocketAddr => SocketAddr,
}

/// A closed set of named values, read from a [`Kind::Choice`] key.
pub(super) trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
}

impl<T: Named> FromParsed for T {
    fn from_parsed(parsed: &Parsed) -> Option<Self> {
        match parsed {
            Parsed::Choice(name) => T::ALL.iter().copied().find(|v| v.name() == *name),
            _ => None,
        }
    }
}

impl Named for BackendStrategy {
    const ALL: &'static [Self] = &BackendStrategy::ALL;
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for DriverKind {
    const ALL: &'static [Self] = &[DriverKind::Dataplane, DriverKind::Runtime];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for LogFormat {
    const ALL: &'static [Self] = &[LogFormat::Text, LogFormat::Json];
    fn name(self) -> &'static str {
        self.as_str()
    }
}
