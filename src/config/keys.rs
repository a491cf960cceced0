//! The registry of every configuration key, declared once in `keys!`: its JSON path,
//! environment variables, command-line flag (name, value name and short help), the kind of value
//! it holds (type, bounds, rule: [`Kind`]), default and meaning. Everything else is generated from
//! that one declaration: the [`Key`] enum and [`KEYS`], the clap flags and their `--help` text
//! (`crate::cli`), the flag layer, the built-in defaults layer that validation starts from
//! ([`super::Layer::defaults`]), the parsing and checking of every value (`super::validate`),
//! `check-config` and the README's configuration table ([`super::readme`]).

pub use super::kind::{Kind, TextRule};

/// Whether a key's documented default is a value or only a description of what happens when
/// the key is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultIs {
    /// The default text is the value itself: it is parsed and validated like a value from any
    /// other source (as the lowest layer), so the documented and the effective default cannot
    /// differ.
    Value,
    /// The key stays unset (`(none)`, `(system roots)`...): the text only says what that means.
    Absent,
}

/// How a key is documented and where it may be set.
#[derive(Debug)]
pub struct KeySpec {
    pub key: Key,
    /// Dotted path in the JSON file, e.g. `nomad.address`.
    pub json: &'static str,
    /// Environment variables, highest precedence first.
    pub env: &'static [&'static str],
    /// Long command-line flag, if any. Secrets have none so they never show in process lists.
    pub flag: Option<&'static str>,
    /// The flag's value name in `--help` (e.g. `DURATION`); empty without a flag.
    pub value_name: &'static str,
    /// The flag's short help in `--help`, before its environment variables and default; empty
    /// without a flag.
    pub flag_help: &'static str,
    /// The default, as documented (README, `--help`) and, for [`DefaultIs::Value`], as used.
    pub default: &'static str,
    /// Whether [`KeySpec::default`] is the value used when no source sets the key.
    pub default_is: DefaultIs,
    /// The type, bounds and rule of the value; validation is derived from it.
    pub kind: Kind,
    /// What the key means (one sentence for the README table).
    pub doc: &'static str,
}

impl KeySpec {
    /// The default value used when no source sets the key; `None` when the key then stays unset.
    pub fn default_value(&self) -> Option<&'static str> {
        match self.default_is {
            DefaultIs::Value => Some(self.default),
            DefaultIs::Absent => None,
        }
    }
}

/// Declares every key once; generates the [`Key`] enum and the [`KEYS`] table.
///
/// Per key: `Variant { json, env: [..], flag: "--name" <VALUE_NAME> "short help", kind,
/// default: Value("text") | Absent("text"), doc }`, with `flag` left out for keys that have none;
/// `kind` is a [`Kind`] written without its `Kind::` (and a [`TextRule`] without `TextRule::`).
macro_rules! keys {
    ($(
        $(#[$attr:meta])*
        $key:ident {
            json: $json:literal,
            env: [$($env:literal),+ $(,)?],
            $(flag: $flag:literal <$value_name:ident> $flag_help:literal,)?
            kind: $kind:expr,
            default: $default_is:ident($default:literal),
            doc: $doc:literal $(,)?
        }
    ),+ $(,)?) => {
        /// One configuration key. The order here is the order of the README table, of
        /// `check-config` and of the flags in `--help`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Key {
            $($(#[$attr])* $key,)+
        }

        /// Every key, in documentation order.
        pub const KEYS: &[KeySpec] = &[$(
            KeySpec {
                key: Key::$key,
                json: $json,
                env: &[$($env),+],
                flag: keys!(@some $($flag)?),
                value_name: keys!(@text $(stringify!($value_name))?),
                flag_help: keys!(@text $($flag_help)?),
                default: $default,
                default_is: DefaultIs::$default_is,
                kind: {
                    #[allow(unused_imports)]
                    use {Kind::*, TextRule::*};
                    $kind
                },
                doc: $doc,
            },
        )+];
    };
    (@some) => { None };
    (@some $v:expr) => { Some($v) };
    (@text) => { "" };
    (@text $v:expr) => { $v };
}

keys! {
    NomadAddress {
        json: "nomad.address",
        env: ["NOMAD_ADDR"],
        flag: "--nomad-address" <URL> "Nomad HTTP API address (http://, https:// or unix://)",
        kind: Url { schemes: &["http", "https", "unix"] },
        default: Value("http://127.0.0.1:4646"),
        doc: "Nomad HTTP API address: `http://`, `https://` or `unix://` (e.g. the Task API socket).",
    },
    NomadToken {
        json: "nomad.token",
        env: ["NOMAD_TOKEN"],
        kind: Secret,
        default: Absent("(none)"),
        doc: "Nomad ACL token, sent as `X-Nomad-Token`. Secret: never logged or printed.",
    },
    NomadTokenFile {
        json: "nomad.token_file",
        env: ["NOMAD_TOKEN_FILE"],
        flag: "--nomad-token-file" <PATH> "File holding the Nomad ACL token",
        kind: SecretFile { of: Key::NomadToken },
        default: Absent("(none)"),
        doc: "Read the Nomad token from this file (trailing whitespace trimmed). Exclusive with `nomad.token` in the same source.",
    },
    NomadRegion {
        json: "nomad.region",
        env: ["NOMAD_REGION"],
        flag: "--nomad-region" <REGION> "Nomad region",
        kind: Text(Region),
        default: Absent("(the agent's region)"),
        doc: "Nomad region to query.",
    },
    NomadNamespaces {
        json: "nomad.namespaces",
        env: ["NOMAD_NAMESPACE"],
        flag: "--nomad-namespaces" <LIST> "Namespaces to watch: `*` or a comma-separated list",
        kind: Namespaces,
        default: Value("*"),
        doc: "Namespaces to watch: `*` for all, or a list (JSON array, or comma-separated in the environment and flag).",
    },
    NomadNamespaceDeny {
        json: "nomad.namespace_deny",
        env: ["NOMAD_NAMESPACE_DENY"],
        flag: "--nomad-namespace-deny" <LIST> "Namespaces never to watch: a comma-separated list",
        kind: NamespaceDeny,
        default: Absent("(none)"),
        doc: "Namespaces never to watch, even when `nomad.namespaces` is `*` (JSON array, or comma-separated in the environment and flag).",
    },
    NomadTagPrefix {
        json: "nomad.tag_prefix",
        env: ["HAPROXY_TAG_PREFIX"],
        flag: "--tag-prefix" <PREFIX> "Tag prefix (`<prefix>.enable=true` selects a service)",
        kind: Text(TagPrefix),
        default: Value("haproxy"),
        doc: "Prefix of the service tags the connector reads; only services tagged `<prefix>.enable=true` (value case-insensitive) are taken.",
    },
    NomadResyncInterval {
        json: "nomad.resync_interval",
        env: ["NOMAD_RESYNC_INTERVAL"],
        flag: "--nomad-resync-interval" <DURATION> "Full resync interval: whole seconds or a duration such as 60s",
        kind: Duration,
        default: Value("60s"),
        doc: "How often the whole catalog is checked against Nomad: the wait of the blocking list query (at most 300 s is sent) and the period of the full re-read when the index moved. Integer seconds or a duration.",
    },
    NomadGateOnChecks {
        json: "nomad.gate_on_checks",
        env: ["NOMAD_GATE_ON_CHECKS"],
        flag: "--nomad-gate-on-checks" <BOOL> "Take instances whose Nomad checks fail out of rotation (true/false)",
        kind: Bool,
        default: Value("false"),
        doc: "Read the results of Nomad's own service checks (`GET /v1/client/allocation/<id>/checks`, needs `read-job`) for the registrations whose job declares a check, and put an instance whose checks fail in `drain`, then `maint` (never deleted for it) until they pass. Costs up to 256 reads per check poll, 8 at a time (see \"Gating on Nomad checks\").",
    },
    NomadCaCert {
        json: "nomad.ca_cert",
        env: ["NOMAD_CACERT"],
        flag: "--nomad-ca-cert" <PATH> "CA certificate (PEM) for Nomad's HTTPS",
        kind: ReadableFile,
        default: Absent("(system roots)"),
        doc: "PEM file of the CA that signed Nomad's HTTPS certificate.",
    },
    NomadClientCert {
        json: "nomad.client_cert",
        env: ["NOMAD_CLIENT_CERT"],
        flag: "--nomad-client-cert" <PATH> "Client certificate (PEM) for mutual TLS with Nomad",
        kind: ReadableFile,
        default: Absent("(none)"),
        doc: "PEM client certificate for mutual TLS (needs `nomad.client_key`).",
    },
    NomadClientKey {
        json: "nomad.client_key",
        env: ["NOMAD_CLIENT_KEY"],
        flag: "--nomad-client-key" <PATH> "Client key (PEM) for mutual TLS with Nomad",
        kind: ReadableFile,
        default: Absent("(none)"),
        doc: "PEM private key for mutual TLS (needs `nomad.client_cert`).",
    },
    NomadTlsServerName {
        json: "nomad.tls_server_name",
        env: ["NOMAD_TLS_SERVER_NAME"],
        flag: "--nomad-tls-server-name" <NAME> "Server name to verify Nomad's certificate against",
        kind: Text(Any),
        default: Absent("(host of `nomad.address`)"),
        doc: "Server name to verify Nomad's certificate against.",
    },
    NomadSkipVerify {
        json: "nomad.skip_verify",
        env: ["NOMAD_SKIP_VERIFY"],
        flag: "--nomad-skip-verify" <BOOL> "Skip verification of Nomad's certificate (true/false)",
        kind: Bool,
        default: Value("false"),
        doc: "Do not verify Nomad's TLS certificate (testing only).",
    },
    HaproxyAddress {
        json: "haproxy.address",
        env: ["HAPROXY_DATAPLANE_URL"],
        flag: "--haproxy-address" <URL> "Data Plane API base URL",
        kind: Url { schemes: &["http", "https"] },
        default: Value("http://127.0.0.1:5555"),
        doc: "HAProxy Data Plane API base URL (`http://` or `https://`).",
    },
    HaproxyUsername {
        json: "haproxy.username",
        env: ["HAPROXY_USERNAME"],
        flag: "--haproxy-username" <USER> "Data Plane API user",
        kind: Text(BasicAuthUser),
        default: Value("admin"),
        doc: "Data Plane API Basic-auth user.",
    },
    HaproxyPassword {
        json: "haproxy.password",
        env: ["HAPROXY_PASSWORD"],
        kind: Secret,
        default: Absent("(none)"),
        doc: "Data Plane API Basic-auth password. Secret: never logged or printed.",
    },
    HaproxyPasswordFile {
        json: "haproxy.password_file",
        env: ["HAPROXY_PASSWORD_FILE"],
        flag: "--haproxy-password-file" <PATH> "File holding the Data Plane API password",
        kind: SecretFile { of: Key::HaproxyPassword },
        default: Absent("(none)"),
        doc: "Read the Data Plane API password from this file (trailing whitespace trimmed). Exclusive with `haproxy.password` in the same source.",
    },
    HaproxyBackendStrategy {
        json: "haproxy.backend_strategy",
        env: ["HAPROXY_BACKEND_STRATEGY"],
        flag: "--haproxy-backend-strategy" <STRATEGY> "use_existing, create_new or fail_on_conflict",
        kind: Choice { what: "strategy", accepted: &["use_existing", "create_new", "fail_on_conflict"] },
        default: Value("use_existing"),
        doc: "What to do when a service's backend name exists but is not ours: `use_existing`, `create_new` or `fail_on_conflict`.",
    },
    HaproxyDrainTimeout {
        json: "haproxy.drain_timeout_sec",
        env: ["HAPROXY_DRAIN_TIMEOUT_SEC"],
        flag: "--haproxy-drain-timeout" <DURATION> "Drain timeout: whole seconds or a duration such as 30s",
        kind: Duration,
        default: Value("30s"),
        doc: "How long a removed instance drains before it is removed even with open sessions. Integer seconds or a duration such as `45s`, `2m`.",
    },
    HaproxyFrontend {
        json: "haproxy.frontend",
        env: ["HAPROXY_FRONTEND"],
        flag: "--haproxy-frontend" <NAME> "Frontend that receives the connector's host-map rule",
        kind: Text(HaproxyName),
        default: Absent("(none)"),
        doc: "Frontend into which the connector inserts its route-map rules (`http-request` rules for https redirects and path routes, and five `use_backend` rules) (and for which it creates its map files through the Data Plane API). Unset: you add the rules and the map files yourself.",
    },
    HaproxyDefaultDomain {
        json: "haproxy.default_domain",
        env: ["HAPROXY_DEFAULT_DOMAIN"],
        flag: "--haproxy-default-domain" <TEMPLATE> "Host template for services without domain tags, e.g. {service}.{namespace}.apps.example.com",
        kind: Text(HostTemplate),
        default: Absent("(none)"),
        doc: "Host-name template (`{service}` required, `{namespace}`) that gives every enabled service without `domain` or `path` tags (and not `mode=tcp`) an exact host route, like Traefik's `defaultRule`, e.g. `{service}.{namespace}.apps.example.com`; such a service is then HTTP. A name that renders invalid is an `invalid_default_domain` diagnostic for that service, served without the route. Unset: no default route. See \"Routing\".",
    },
    HaproxyAllowRegexDomains {
        json: "haproxy.allow_regex_domains",
        env: ["HAPROXY_ALLOW_REGEX_DOMAINS"],
        flag: "--haproxy-allow-regex-domains" <BOOL> "Serve regex domains (true/false)",
        kind: Bool,
        default: Value("true"),
        doc: "Serve `domain.type=regex` routes. `false`: services asking for one are skipped with a diagnostic (regexes are always checked with PCRE2 and refused when they could backtrack without bound).",
    },
    HaproxyDenyAddressRanges {
        json: "haproxy.deny_address_ranges",
        env: ["HAPROXY_DENY_ADDRESS_RANGES"],
        flag: "--haproxy-deny-address-ranges" <CIDRS> "CIDR ranges no server address may be in (comma-separated)",
        kind: Cidrs,
        default: Absent("(none)"),
        doc: "CIDR ranges no server address may be in, on top of the always-denied link-local, unspecified, multicast and broadcast addresses (JSON array, or comma-separated in the environment and flag), e.g. `127.0.0.0/8,10.0.0.0/8`.",
    },
    HaproxyServerCaFile {
        json: "haproxy.server_ca_file",
        env: ["HAPROXY_SERVER_CA_FILE"],
        flag: "--haproxy-server-ca-file" <PATH> "CA file (PEM, on the HAProxy host) to verify servers' certificates",
        kind: Text(HaproxyFilePath),
        default: Absent("(none)"),
        doc: "CA file, as a path on the HAProxy host, that HAProxy verifies servers' certificates with for services tagged `haproxy.server.ssl=true` (`verify required ca-file …`). Unset: such services need `haproxy.server.verify=none`, else they are skipped with a diagnostic.",
    },
    ReconcileResyncInterval {
        json: "reconcile.resync_interval",
        env: ["RECONCILE_RESYNC_INTERVAL"],
        flag: "--resync-interval" <DURATION> "Full reconcile interval (repairs drift), e.g. 30s",
        kind: Duration,
        default: Value("30s"),
        doc: "Full pass against live HAProxy even when Nomad is quiet: how fast drift (restarts, manual edits) is repaired.",
    },
    ReconcileDebounce {
        json: "reconcile.debounce",
        env: ["RECONCILE_DEBOUNCE"],
        flag: "--debounce" <DURATION> "Quiet period after a catalog change, e.g. 50ms",
        kind: Duration,
        default: Value("50ms"),
        doc: "Quiet period after a catalog change before a pass starts (bursts cost one pass).",
    },
    ReconcileDebounceMax {
        json: "reconcile.debounce_max",
        env: ["RECONCILE_DEBOUNCE_MAX"],
        flag: "--debounce-max" <DURATION> "Longest delay of a pass under a steady stream of changes, e.g. 500ms",
        kind: Duration,
        default: Value("500ms"),
        doc: "Longest a steady stream of changes can delay a pass.",
    },
    ReconcileMaxDeleteRatio {
        json: "reconcile.max_delete_ratio",
        env: ["RECONCILE_MAX_DELETE_RATIO"],
        flag: "--max-delete-ratio" <RATIO> "Share of serving servers above which removals need confirmation (0-1]",
        kind: Ratio { above: 0.0, at_most: 1.0 },
        default: Value("0.5"),
        doc: "A pass that would take out more than this share of the connector's serving servers is held until confirmed (0 < ratio ≤ 1).",
    },
    ReconcileMassDeleteHold {
        json: "reconcile.mass_delete_hold",
        env: ["RECONCILE_MASS_DELETE_HOLD"],
        flag: "--mass-delete-hold" <DURATION> "Real time a mass removal must stand (with a fresh Nomad relist) before it applies, e.g. 60s",
        kind: Duration,
        default: Value("60s"),
        doc: "Real time a mass removal must be planned unchanged before it is applied, after one more full Nomad relist that completes once this time is up.",
    },
    ReconcileMassDeleteConfirmations {
        json: "reconcile.mass_delete_confirmations",
        env: ["RECONCILE_MASS_DELETE_CONFIRMATIONS"],
        flag: "--mass-delete-confirmations" <N> "Minimum number of passes confirming a mass removal (on top of the hold)",
        kind: Count { min: 1 },
        default: Value("3"),
        doc: "Minimum number of consecutive passes that must reach the same mass removal, on top of `reconcile.mass_delete_hold`.",
    },
    HaproxyDriver {
        json: "haproxy.driver",
        env: ["HAPROXY_DRIVER"],
        flag: "--haproxy-driver" <DRIVER> "HAProxy driver: dataplane or runtime",
        kind: Choice { what: "driver", accepted: &["dataplane", "runtime"] },
        default: Value("dataplane"),
        doc: "How HAProxy is driven: `dataplane` (the Data Plane API) or `runtime` (its master and admin sockets plus a config fragment; see \"Runtime driver\").",
    },
    HaproxyMasterSocket {
        json: "haproxy.master_socket",
        env: ["HAPROXY_MASTER_SOCKET"],
        flag: "--haproxy-master-socket" <PATH> "Runtime driver: HAProxy master CLI socket",
        kind: Path { names_file: false },
        default: Value("/run/haproxy-master.sock"),
        doc: "Runtime driver: HAProxy's master CLI socket (`haproxy -W -S <path>`), used for `reload` and `show proc`.",
    },
    HaproxyAdminSocket {
        json: "haproxy.admin_socket",
        env: ["HAPROXY_ADMIN_SOCKET"],
        flag: "--haproxy-admin-socket" <PATH> "Runtime driver: HAProxy admin stats socket",
        kind: Path { names_file: false },
        default: Absent("(none: through the master with `@1`)"),
        doc: "Runtime driver: the admin stats socket (`stats socket <path> level admin`). Unset: worker commands go through the master CLI.",
    },
    HaproxyFragment {
        json: "haproxy.fragment",
        env: ["HAPROXY_FRAGMENT"],
        flag: "--haproxy-fragment" <PATH> "Runtime driver: the config fragment the connector owns",
        kind: Path { names_file: true },
        default: Value("/etc/haproxy/conf.d/haproxy-nomad-connector.cfg"),
        doc: "Runtime driver: the config file the connector owns and rewrites (its backends and servers), loaded by HAProxy with an extra `-f` (the file or its directory).",
    },
    HaproxyMapsDir {
        json: "haproxy.maps_dir",
        env: ["HAPROXY_MAPS_DIR"],
        flag: "--haproxy-maps-dir" <DIR> "Directory of the host-route maps (both drivers)",
        kind: Path { names_file: false },
        default: Value("/etc/haproxy/maps"),
        doc: "Directory of the host-route map files, written exactly as in the frontend rules (runtime driver: where it writes them; Data Plane API driver: its `--maps-dir`).",
    },
    HaproxyBinary {
        json: "haproxy.binary",
        env: ["HAPROXY_BINARY"],
        flag: "--haproxy-binary" <PATH> "Runtime driver: HAProxy binary for `haproxy -c`",
        kind: Path { names_file: false },
        default: Value("haproxy"),
        doc: "Runtime driver: the HAProxy binary used to check candidate configurations (`haproxy -c`).",
    },
    HaproxyConfig {
        json: "haproxy.config",
        env: ["HAPROXY_CONFIG"],
        flag: "--haproxy-config" <PATHS> "Runtime driver: HAProxy's other config files, comma-separated",
        kind: Paths,
        default: Value("/etc/haproxy/haproxy.cfg"),
        doc: "Runtime driver: the config files HAProxy loads besides the fragment, in order (JSON array, or comma-separated in the environment and flag); checked together with each candidate fragment.",
    },
    LogLevel {
        json: "log.level",
        env: ["RUST_LOG", "LOG_LEVEL"],
        flag: "--log-level" <FILTER> "Log level or tracing filter directive",
        kind: Text(LogFilter),
        default: Value("info"),
        doc: "Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing` filter directive. `RUST_LOG` wins over `LOG_LEVEL`.",
    },
    LogFormat {
        json: "log.format",
        env: ["LOG_FORMAT"],
        flag: "--log-format" <FORMAT> "Log format: text or json",
        kind: Choice { what: "log format", accepted: &["text", "json"] },
        default: Value("text"),
        doc: "Log output format on stderr: `text` or `json`.",
    },
    // Port 4650: outside Prometheus's exporter range (9100-9999, fully allocated) and Nomad's
    // dynamic port range (20000-32000); next to Nomad's own 4646-4648. All interfaces, so Nomad
    // checks and Prometheus reach it from outside the allocation; nothing served is secret.
    HttpListen {
        json: "http.listen",
        env: ["HTTP_LISTEN"],
        flag: "--http-listen" <ADDR> "Listen address (IP:port) of the health, readiness, status and metrics server",
        kind: SocketAddr,
        default: Value("0.0.0.0:4650"),
        doc: "Address (IP:port) of the HTTP server for `/healthz`, `/readyz`, `/status` and `/metrics` (see [Endpoints](#endpoints)). Port 0 picks a free port (logged).",
    },
}

impl Key {
    /// The registry entry of this key.
    pub fn spec(self) -> &'static KeySpec {
        KEYS.iter()
            .find(|s| s.key == self)
            .expect("every Key variant has a KeySpec (checked by a unit test)")
    }

    /// The dotted JSON path, used in every message about the key.
    pub fn json(self) -> &'static str {
        self.spec().json
    }
}

/// The keys naming a file that holds a secret, each with the secret key it sets
/// ([`Kind::SecretFile`]).
pub fn secret_files() -> impl Iterator<Item = (Key, Key)> {
    KEYS.iter().filter_map(|s| match s.kind {
        Kind::SecretFile { of } => Some((s.key, of)),
        _ => None,
    })
}

/// The key whose JSON path is `path`, if any.
pub fn by_json(path: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.json == path)
}

/// Sections (JSON objects) that may appear in the file.
pub fn is_section(path: &str) -> bool {
    KEYS.iter().any(|s| {
        s.json.len() > path.len()
            && s.json.starts_with(path)
            && s.json[path.len()..].starts_with('.')
    })
}

/// The known key or section closest to `unknown` (typo help), when close enough to be useful.
pub fn suggest(unknown: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|s| (edit_distance(unknown, s.json), s.json))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
