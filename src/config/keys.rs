//! The registry of every configuration key: its JSON path, environment variables, flag, default
//! and meaning. Loading, `check-config` output and the README table are all checked against it,
//! so a key cannot exist in one place and be missing from another.

/// One configuration key. The order here is the order of the README table and of `check-config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    NomadAddress,
    NomadToken,
    NomadTokenFile,
    NomadRegion,
    NomadNamespaces,
    NomadNamespaceDeny,
    NomadTagPrefix,
    NomadResyncInterval,
    NomadCaCert,
    NomadClientCert,
    NomadClientKey,
    NomadTlsServerName,
    NomadSkipVerify,
    HaproxyAddress,
    HaproxyUsername,
    HaproxyPassword,
    HaproxyPasswordFile,
    HaproxyBackendStrategy,
    HaproxyDrainTimeout,
    HaproxyFrontend,
    HaproxyAllowRegexDomains,
    HaproxyDenyAddressRanges,
    ReconcileResyncInterval,
    ReconcileDebounce,
    ReconcileDebounceMax,
    ReconcileMaxDeleteRatio,
    ReconcileMassDeleteConfirmations,
    HaproxyDriver,
    HaproxyMasterSocket,
    HaproxyAdminSocket,
    HaproxyFragment,
    HaproxyMapsDir,
    HaproxyBinary,
    HaproxyConfig,
    LogLevel,
    LogFormat,
    HttpListen,
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
    /// The default, as documented.
    pub default: &'static str,
    /// What the key means (one sentence for the README table).
    pub doc: &'static str,
}

/// Every key, in documentation order.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: Key::NomadAddress,
        json: "nomad.address",
        env: &["NOMAD_ADDR"],
        flag: Some("--nomad-address"),
        default: "http://127.0.0.1:4646",
        doc: "Nomad HTTP API address: `http://`, `https://` or `unix://` (e.g. the Task API socket).",
    },
    KeySpec {
        key: Key::NomadToken,
        json: "nomad.token",
        env: &["NOMAD_TOKEN"],
        flag: None,
        default: "(none)",
        doc: "Nomad ACL token, sent as `X-Nomad-Token`. Secret: never logged or printed.",
    },
    KeySpec {
        key: Key::NomadTokenFile,
        json: "nomad.token_file",
        env: &["NOMAD_TOKEN_FILE"],
        flag: Some("--nomad-token-file"),
        default: "(none)",
        doc: "Read the Nomad token from this file (trailing whitespace trimmed). Exclusive with `nomad.token` in the same source.",
    },
    KeySpec {
        key: Key::NomadRegion,
        json: "nomad.region",
        env: &["NOMAD_REGION"],
        flag: Some("--nomad-region"),
        default: "(the agent's region)",
        doc: "Nomad region to query.",
    },
    KeySpec {
        key: Key::NomadNamespaces,
        json: "nomad.namespaces",
        env: &["NOMAD_NAMESPACE"],
        flag: Some("--nomad-namespaces"),
        default: "*",
        doc: "Namespaces to watch: `*` for all, or a list (JSON array, or comma-separated in the environment and flag).",
    },
    KeySpec {
        key: Key::NomadNamespaceDeny,
        json: "nomad.namespace_deny",
        env: &["NOMAD_NAMESPACE_DENY"],
        flag: Some("--nomad-namespace-deny"),
        default: "(none)",
        doc: "Namespaces never to watch, even when `nomad.namespaces` is `*` (JSON array, or comma-separated in the environment and flag).",
    },
    KeySpec {
        key: Key::NomadTagPrefix,
        json: "nomad.tag_prefix",
        env: &["HAPROXY_TAG_PREFIX"],
        flag: Some("--tag-prefix"),
        default: "haproxy",
        doc: "Prefix of the service tags the connector reads; only services tagged `<prefix>.enable=true` (value case-insensitive) are taken.",
    },
    KeySpec {
        key: Key::NomadResyncInterval,
        json: "nomad.resync_interval",
        env: &["NOMAD_RESYNC_INTERVAL"],
        flag: Some("--nomad-resync-interval"),
        default: "60s",
        doc: "How often the whole catalog is checked against Nomad: the wait of the blocking list query (at most 300 s is sent) and the period of the full re-read when the index moved. Integer seconds or a duration.",
    },
    KeySpec {
        key: Key::NomadCaCert,
        json: "nomad.ca_cert",
        env: &["NOMAD_CACERT"],
        flag: Some("--nomad-ca-cert"),
        default: "(system roots)",
        doc: "PEM file of the CA that signed Nomad's HTTPS certificate.",
    },
    KeySpec {
        key: Key::NomadClientCert,
        json: "nomad.client_cert",
        env: &["NOMAD_CLIENT_CERT"],
        flag: Some("--nomad-client-cert"),
        default: "(none)",
        doc: "PEM client certificate for mutual TLS (needs `nomad.client_key`).",
    },
    KeySpec {
        key: Key::NomadClientKey,
        json: "nomad.client_key",
        env: &["NOMAD_CLIENT_KEY"],
        flag: Some("--nomad-client-key"),
        default: "(none)",
        doc: "PEM private key for mutual TLS (needs `nomad.client_cert`).",
    },
    KeySpec {
        key: Key::NomadTlsServerName,
        json: "nomad.tls_server_name",
        env: &["NOMAD_TLS_SERVER_NAME"],
        flag: Some("--nomad-tls-server-name"),
        default: "(host of `nomad.address`)",
        doc: "Server name to verify Nomad's certificate against.",
    },
    KeySpec {
        key: Key::NomadSkipVerify,
        json: "nomad.skip_verify",
        env: &["NOMAD_SKIP_VERIFY"],
        flag: Some("--nomad-skip-verify"),
        default: "false",
        doc: "Do not verify Nomad's TLS certificate (testing only).",
    },
    KeySpec {
        key: Key::HaproxyAddress,
        json: "haproxy.address",
        env: &["HAPROXY_DATAPLANE_URL"],
        flag: Some("--haproxy-address"),
        default: "http://127.0.0.1:5555",
        doc: "HAProxy Data Plane API base URL (`http://` or `https://`).",
    },
    KeySpec {
        key: Key::HaproxyUsername,
        json: "haproxy.username",
        env: &["HAPROXY_USERNAME"],
        flag: Some("--haproxy-username"),
        default: "admin",
        doc: "Data Plane API Basic-auth user.",
    },
    KeySpec {
        key: Key::HaproxyPassword,
        json: "haproxy.password",
        env: &["HAPROXY_PASSWORD"],
        flag: None,
        default: "(none)",
        doc: "Data Plane API Basic-auth password. Secret: never logged or printed.",
    },
    KeySpec {
        key: Key::HaproxyPasswordFile,
        json: "haproxy.password_file",
        env: &["HAPROXY_PASSWORD_FILE"],
        flag: Some("--haproxy-password-file"),
        default: "(none)",
        doc: "Read the Data Plane API password from this file (trailing whitespace trimmed). Exclusive with `haproxy.password` in the same source.",
    },
    KeySpec {
        key: Key::HaproxyBackendStrategy,
        json: "haproxy.backend_strategy",
        env: &["HAPROXY_BACKEND_STRATEGY"],
        flag: Some("--haproxy-backend-strategy"),
        default: "use_existing",
        doc: "What to do when a service's backend name exists but is not ours: `use_existing`, `create_new` or `fail_on_conflict`.",
    },
    KeySpec {
        key: Key::HaproxyDrainTimeout,
        json: "haproxy.drain_timeout_sec",
        env: &["HAPROXY_DRAIN_TIMEOUT_SEC"],
        flag: Some("--haproxy-drain-timeout"),
        default: "30s",
        doc: "How long a removed instance drains before it is removed even with open sessions. Integer seconds or a duration such as `45s`, `2m`.",
    },
    KeySpec {
        key: Key::HaproxyFrontend,
        json: "haproxy.frontend",
        env: &["HAPROXY_FRONTEND"],
        flag: Some("--haproxy-frontend"),
        default: "(none)",
        doc: "Frontend into which the connector inserts its one host-map `use_backend` rule. Unset: you add the rule yourself.",
    },
    KeySpec {
        key: Key::HaproxyAllowRegexDomains,
        json: "haproxy.allow_regex_domains",
        env: &["HAPROXY_ALLOW_REGEX_DOMAINS"],
        flag: Some("--haproxy-allow-regex-domains"),
        default: "true",
        doc: "Serve `domain.type=regex` routes. `false`: services asking for one are skipped with a diagnostic (regexes are always checked with PCRE2 and refused when they could backtrack without bound).",
    },
    KeySpec {
        key: Key::HaproxyDenyAddressRanges,
        json: "haproxy.deny_address_ranges",
        env: &["HAPROXY_DENY_ADDRESS_RANGES"],
        flag: Some("--haproxy-deny-address-ranges"),
        default: "(none)",
        doc: "CIDR ranges no server address may be in, on top of the always-denied link-local, unspecified, multicast and broadcast addresses (JSON array, or comma-separated in the environment and flag), e.g. `127.0.0.0/8,10.0.0.0/8`.",
    },
    KeySpec {
        key: Key::ReconcileResyncInterval,
        json: "reconcile.resync_interval",
        env: &["RECONCILE_RESYNC_INTERVAL"],
        flag: Some("--resync-interval"),
        default: "30s",
        doc: "Full pass against live HAProxy even when Nomad is quiet: how fast drift (restarts, manual edits) is repaired.",
    },
    KeySpec {
        key: Key::ReconcileDebounce,
        json: "reconcile.debounce",
        env: &["RECONCILE_DEBOUNCE"],
        flag: Some("--debounce"),
        default: "50ms",
        doc: "Quiet period after a catalog change before a pass starts (bursts cost one pass).",
    },
    KeySpec {
        key: Key::ReconcileDebounceMax,
        json: "reconcile.debounce_max",
        env: &["RECONCILE_DEBOUNCE_MAX"],
        flag: Some("--debounce-max"),
        default: "500ms",
        doc: "Longest a steady stream of changes can delay a pass.",
    },
    KeySpec {
        key: Key::ReconcileMaxDeleteRatio,
        json: "reconcile.max_delete_ratio",
        env: &["RECONCILE_MAX_DELETE_RATIO"],
        flag: Some("--max-delete-ratio"),
        default: "0.5",
        doc: "A pass that would take out more than this share of the connector's serving servers is held until confirmed (0 < ratio ≤ 1).",
    },
    KeySpec {
        key: Key::ReconcileMassDeleteConfirmations,
        json: "reconcile.mass_delete_confirmations",
        env: &["RECONCILE_MASS_DELETE_CONFIRMATIONS"],
        flag: Some("--mass-delete-confirmations"),
        default: "3",
        doc: "Consecutive passes that must reach the same mass removal before it is applied.",
    },
    KeySpec {
        key: Key::HaproxyDriver,
        json: "haproxy.driver",
        env: &["HAPROXY_DRIVER"],
        flag: Some("--haproxy-driver"),
        default: "dataplane",
        doc: "How HAProxy is driven: `dataplane` (the Data Plane API) or `runtime` (its master and admin sockets plus a config fragment; see \"Runtime driver\").",
    },
    KeySpec {
        key: Key::HaproxyMasterSocket,
        json: "haproxy.master_socket",
        env: &["HAPROXY_MASTER_SOCKET"],
        flag: Some("--haproxy-master-socket"),
        default: "/run/haproxy-master.sock",
        doc: "Runtime driver: HAProxy's master CLI socket (`haproxy -W -S <path>`), used for `reload` and `show proc`.",
    },
    KeySpec {
        key: Key::HaproxyAdminSocket,
        json: "haproxy.admin_socket",
        env: &["HAPROXY_ADMIN_SOCKET"],
        flag: Some("--haproxy-admin-socket"),
        default: "(none: through the master with `@1`)",
        doc: "Runtime driver: the admin stats socket (`stats socket <path> level admin`). Unset: worker commands go through the master CLI.",
    },
    KeySpec {
        key: Key::HaproxyFragment,
        json: "haproxy.fragment",
        env: &["HAPROXY_FRAGMENT"],
        flag: Some("--haproxy-fragment"),
        default: "/etc/haproxy/conf.d/haproxy-nomad-connector.cfg",
        doc: "Runtime driver: the config file the connector owns and rewrites (its backends and servers), loaded by HAProxy with an extra `-f` (the file or its directory).",
    },
    KeySpec {
        key: Key::HaproxyMapsDir,
        json: "haproxy.maps_dir",
        env: &["HAPROXY_MAPS_DIR"],
        flag: Some("--haproxy-maps-dir"),
        default: "/etc/haproxy/maps",
        doc: "Directory of the host-route map files, written exactly as in the frontend rules (runtime driver: where it writes them; Data Plane API driver: its `--maps-dir`).",
    },
    KeySpec {
        key: Key::HaproxyBinary,
        json: "haproxy.binary",
        env: &["HAPROXY_BINARY"],
        flag: Some("--haproxy-binary"),
        default: "haproxy",
        doc: "Runtime driver: the HAProxy binary used to check candidate configurations (`haproxy -c`).",
    },
    KeySpec {
        key: Key::HaproxyConfig,
        json: "haproxy.config",
        env: &["HAPROXY_CONFIG"],
        flag: Some("--haproxy-config"),
        default: "/etc/haproxy/haproxy.cfg",
        doc: "Runtime driver: the config files HAProxy loads besides the fragment, in order (JSON array, or comma-separated in the environment and flag); checked together with each candidate fragment.",
    },
    KeySpec {
        key: Key::LogLevel,
        json: "log.level",
        env: &["RUST_LOG", "LOG_LEVEL"],
        flag: Some("--log-level"),
        default: "info",
        doc: "Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing` filter directive. `RUST_LOG` wins over `LOG_LEVEL`.",
    },
    KeySpec {
        key: Key::LogFormat,
        json: "log.format",
        env: &["LOG_FORMAT"],
        flag: Some("--log-format"),
        default: "text",
        doc: "Log output format on stderr: `text` or `json`.",
    },
    KeySpec {
        key: Key::HttpListen,
        json: "http.listen",
        env: &["HTTP_LISTEN"],
        flag: Some("--http-listen"),
        default: "0.0.0.0:4650",
        doc: "Address (IP:port) of the HTTP server for `/healthz`, `/readyz`, `/status` and `/metrics`. Port 0 picks a free port (logged).",
    },
];

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
mod tests {
    use super::*;

    #[test]
    fn every_key_has_exactly_one_spec() {
        for spec in KEYS {
            assert_eq!(
                KEYS.iter().filter(|s| s.key == spec.key).count(),
                1,
                "{:?}",
                spec.key
            );
            assert_eq!(
                KEYS.iter().filter(|s| s.json == spec.json).count(),
                1,
                "{}",
                spec.json
            );
        }
    }

    #[test]
    fn sections_and_suggestions() {
        assert!(is_section("nomad"));
        assert!(is_section("haproxy"));
        assert!(is_section("log"));
        assert!(is_section("http"));
        assert!(!is_section("nomad.address"));
        assert!(!is_section("noma"));
        assert_eq!(suggest("haproxy.adress"), Some("haproxy.address"));
        assert_eq!(suggest("nomad.tokn"), Some("nomad.token"));
        assert_eq!(suggest("completely.different"), None);
    }
}
