//! The desired HAProxy model: a pure function of the catalog snapshot, the policy and the live
//! state (the live state only decides adoption and keeps settings stable while instances
//! disagree). No I/O.

mod candidate;
pub mod default_domain;
mod gating;
pub mod grammar;
pub mod host_regex;
pub mod tags;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{ServiceKey, Snapshot};
use crate::live::Live;
use crate::model::{BackendSettings, Endpoint, MatchKind, RouteKey};
use candidate::{Candidate, candidate};
use tags::BackendKind;

/// What to do with a dynamic service whose backend name already exists and is not ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendStrategy {
    /// Adopt a compatible backend and manage only its servers.
    UseExisting,
    /// Skip the service with a diagnostic.
    CreateNew,
    /// Fail the whole pass.
    FailOnConflict,
}

impl BackendStrategy {
    pub const ALL: [BackendStrategy; 3] = [
        BackendStrategy::UseExisting,
        BackendStrategy::CreateNew,
        BackendStrategy::FailOnConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendStrategy::UseExisting => "use_existing",
            BackendStrategy::CreateNew => "create_new",
            BackendStrategy::FailOnConflict => "fail_on_conflict",
        }
    }
}

/// The parts of the configuration the core needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Tag prefix, `haproxy` by default.
    pub tag_prefix: String,
    pub backend_strategy: BackendStrategy,
    pub drain_timeout: Duration,
    /// Whether `domain.type=regex` is served (`haproxy.allow_regex_domains`).
    pub allow_regex_domains: bool,
    /// Server addresses no registration may use, on top of those [`always_denied`] refuses
    /// (`haproxy.deny_address_ranges`).
    pub denied_ranges: Vec<ipnet::IpNet>,
    /// The CA file HAProxy verifies servers' certificates with (`haproxy.server_ca_file`).
    pub server_ca_file: Option<String>,
    /// The host-name template that gives services without `domain` or `path` tags a host route
    /// (`haproxy.default_domain`, e.g. `{service}.{namespace}.apps.example.com`).
    pub default_domain: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tag_prefix: "haproxy".into(),
            backend_strategy: BackendStrategy::UseExisting,
            drain_timeout: Duration::from_secs(30),
            allow_regex_domains: true,
            denied_ranges: Vec::new(),
            server_ca_file: None,
            default_domain: None,
        }
    }
}

/// Why a server address is refused whatever the configuration: no job may send public traffic
/// to the cloud metadata service (link-local), nowhere (unspecified), or to many hosts at once.
pub fn always_denied(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("an unspecified address"),
        IpAddr::V4(a) if a.is_link_local() => {
            Some("a link-local address (169.254.0.0/16, where cloud metadata services live)")
        }
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("an unspecified address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("a link-local address (fe80::/10)"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

impl Policy {
    /// Why `addr` may not be a server address, if it may not.
    pub fn address_denied(&self, addr: IpAddr) -> Option<String> {
        if let Some(why) = always_denied(addr) {
            return Some(why.to_string());
        }
        self.denied_ranges
            .iter()
            .find(|net| net.contains(&addr))
            .map(|net| format!("in {net}, which haproxy.deny_address_ranges denies"))
    }
}

/// Who owns a backend the connector manages servers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// Created and owned by the connector: settings and servers are managed.
    Owned,
    /// A pre-existing, compatible backend adopted under `use_existing`: only our servers.
    Adopted,
    /// A `backend=custom` backend: only our servers.
    Custom,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredBackend {
    pub name: String,
    pub service: ServiceKey,
    pub ownership: Ownership,
    /// Enforced for owned backends. For adopted and custom ones, only `check` (whether servers
    /// get `check`) and `maxconn` apply to the servers the connector adds.
    pub settings: BackendSettings,
    pub servers: BTreeMap<Endpoint, ServerSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ServerSpec {
    pub weight: u16,
    /// Nomad's checks of every registration at this endpoint fail (`nomad.gate_on_checks`):
    /// the server is kept but taken out of rotation (drain, then maintenance).
    pub failing_checks: bool,
}

/// The default server weight (HAProxy's).
pub const DEFAULT_WEIGHT: u16 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub backends: BTreeMap<String, DesiredBackend>,
    pub routes: BTreeMap<RouteKey, String>,
    /// Backends of services that were skipped (invalid tags, disagreement on the backend kind, an
    /// incompatible existing backend): what is live there stays exactly as it is.
    pub frozen: BTreeSet<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Reported; the service is served.
    Warning,
    /// The service (or one of its routes) is not served as tagged.
    Skipped,
}

/// A problem with one service, for logs, `/status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub namespace: String,
    pub service: String,
    pub severity: Severity,
    /// A stable reason code (a metric label).
    pub reason: Reason,
    /// The tag concerned, as written, if any.
    pub tag: Option<String>,
    /// The value concerned, if any.
    pub value: Option<String>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidTag,
    UnknownTag,
    InvalidAddress,
    DeniedAddress,
    RegexDomainsDisabled,
    BackendNameConflict,
    DomainConflict,
    MissingCustomBackend,
    IncompatibleBackend,
    BackendExists,
    Disagreement,
    InvalidDefaultDomain,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidTag => "invalid_tag",
            Reason::UnknownTag => "unknown_tag",
            Reason::InvalidAddress => "invalid_address",
            Reason::DeniedAddress => "denied_address",
            Reason::RegexDomainsDisabled => "regex_domains_disabled",
            Reason::BackendNameConflict => "backend_name_conflict",
            Reason::DomainConflict => "domain_conflict",
            Reason::MissingCustomBackend => "missing_custom_backend",
            Reason::IncompatibleBackend => "incompatible_backend",
            Reason::BackendExists => "backend_exists",
            Reason::Disagreement => "disagreement",
            Reason::InvalidDefaultDomain => "invalid_default_domain",
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: ", self.namespace, self.service)?;
        if let Some(tag) = &self.tag {
            write!(f, "tag `{tag}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A pass that must not apply anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// `backend_strategy=fail_on_conflict` and a dynamic service's backend name is taken by a
    /// backend the connector does not own.
    #[error(
        "service {service}: backend `{backend}` already exists and is not managed by the connector (backend_strategy=fail_on_conflict); nothing is applied"
    )]
    BackendConflict {
        service: ServiceKey,
        backend: String,
    },
}

/// The backend name of a dynamic service: the predecessor's name in the default namespace
/// (`api-service` → `api_service`), `<namespace>.<name>` elsewhere. Nomad names hold no `.`, so
/// names from different namespaces cannot meet.
pub fn backend_name(key: &ServiceKey) -> String {
    let name = key.name.replace('-', "_");
    if key.namespace == "default" {
        name
    } else {
        format!("{}.{name}", key.namespace)
    }
}

/// A domain claimed by a service: (domain, the service's age, its index among the accepted).
type Claim<'a> = (&'a (MatchKind, String), &'a (u64, ServiceKey), usize);

/// Builds the desired model.
pub fn build(snapshot: &Snapshot, live: &Live, policy: &Policy) -> Result<Desired, BuildError> {
    let mut desired = Desired::default();
    let mut candidates = Vec::new();
    for (key, service) in &snapshot.services {
        if let Some(mut c) = candidate(key, &service.instances, policy, &mut desired) {
            gating::mark_failing(&mut c.servers, key, &service.instances, snapshot);
            candidates.push(c);
        }
    }

    // Backend-name conflicts: the oldest registration wins; all are reported.
    // Sorted by name, then age: each run of one name is a group, its first the winner.
    candidates.sort_by(|a, b| a.backend.cmp(&b.backend).then_with(|| a.age.cmp(&b.age)));
    let mut winners: Vec<Candidate> = Vec::with_capacity(candidates.len());
    let mut rest = candidates.into_iter().peekable();
    while let Some(first) = rest.next() {
        let mut losers = Vec::new();
        while let Some(next) = rest.next_if(|n| n.backend == first.backend) {
            losers.push(next);
        }
        if !losers.is_empty() {
            let name = &first.backend;
            let keys: Vec<String> = std::iter::once(&first)
                .chain(&losers)
                .map(|c| c.key.to_string())
                .collect();
            for (i, c) in std::iter::once(&first).chain(&losers).enumerate() {
                let (severity, outcome) = if i == 0 {
                    (Severity::Warning, "kept (oldest registration)")
                } else {
                    (Severity::Skipped, "skipped")
                };
                desired.diagnostics.push(diag(
                    &c.key,
                    severity,
                    Reason::BackendNameConflict,
                    None,
                    format!(
                        "services {} all map to backend `{name}`; {outcome}",
                        keys.join(", ")
                    ),
                ));
            }
        }
        winners.push(first);
    }

    // Ownership against live HAProxy, per strategy.
    let mut accepted = Vec::new();
    for mut c in winners {
        let live_backend = live.backends.get(&c.backend);
        let ownership = match (c.kind, live_backend) {
            (BackendKind::Custom, Some(_)) => Ownership::Custom,
            (BackendKind::Custom, None) => {
                desired.diagnostics.push(diag(
                    &c.key,
                    Severity::Skipped,
                    Reason::MissingCustomBackend,
                    None,
                    format!("custom backend `{}` does not exist in HAProxy", c.backend),
                ));
                continue;
            }
            (_, None) => Ownership::Owned,
            (_, Some(b)) if b.owned => Ownership::Owned,
            (_, Some(b)) => match policy.backend_strategy {
                BackendStrategy::FailOnConflict => {
                    return Err(BuildError::BackendConflict {
                        service: c.key.clone(),
                        backend: c.backend.clone(),
                    });
                }
                BackendStrategy::CreateNew => {
                    desired.diagnostics.push(diag(
                        &c.key,
                        Severity::Skipped,
                        Reason::BackendExists,
                        None,
                        format!(
                            "backend `{}` already exists and is not managed by the connector (backend_strategy=create_new)",
                            c.backend
                        ),
                    ));
                    continue;
                }
                BackendStrategy::UseExisting => {
                    let mut problems = Vec::new();
                    if !b.supports_dynamic_servers() {
                        problems.push(format!(
                            "its balance algorithm `{}` cannot take servers at run time",
                            b.balance.as_deref().unwrap_or("roundrobin")
                        ));
                    }
                    if b.mode != c.settings.mode {
                        problems.push(format!(
                            "its mode is {} but the service needs {}",
                            b.mode.as_str(),
                            c.settings.mode.as_str()
                        ));
                    }
                    if !problems.is_empty() {
                        desired.diagnostics.push(diag(
                            &c.key,
                            Severity::Skipped,
                            Reason::IncompatibleBackend,
                            None,
                            format!(
                                "existing backend `{}` cannot be adopted: {}",
                                c.backend,
                                problems.join("; ")
                            ),
                        ));
                        desired.frozen.insert(c.backend.clone());
                        continue;
                    }
                    Ownership::Adopted
                }
            },
        };
        // Instances disagree on some backend settings: an existing owned backend keeps its live
        // values until they agree; a new one takes the newest instance's (already chosen).
        if ownership == Ownership::Owned
            && let Some(current) = live_backend.and_then(|b| b.settings.as_ref())
        {
            for field in &c.disagreements {
                match *field {
                    "mode" => c.settings.mode = current.mode,
                    "balance" => c.settings.balance = current.balance,
                    "check" => c.settings.check = current.check.clone(),
                    "timeouts" => c.settings.timeouts = current.timeouts,
                    "sticky" => c.settings.sticky = current.sticky.clone(),
                    "server.tls" => c.settings.tls = current.tls.clone(),
                    _ => c.settings.maxconn = current.maxconn,
                }
            }
        }
        for field in &c.disagreements {
            let keeping = if ownership == Ownership::Owned && live_backend.is_some() {
                "keeping the live value until they agree"
            } else {
                "using the newest instance's value"
            };
            desired.diagnostics.push(diag(
                &c.key,
                Severity::Warning,
                Reason::Disagreement,
                None,
                format!("instances disagree on {field}; {keeping}"),
            ));
        }
        accepted.push((c, ownership));
    }

    // Domain conflicts: one (kind, key) claimed by several services; the oldest wins.
    // Every claim as (domain, age, service index), sorted: each run of one domain is a group,
    // its first claimant the winner.
    let mut claims: Vec<Claim<'_>> = accepted
        .iter()
        .enumerate()
        .flat_map(|(i, (c, _))| c.domains.iter().map(move |d| (d, &c.age, i)))
        .collect();
    claims.sort_unstable();
    // Hosts to redirect to https: those of the routes won by a service that asks for it.
    let mut redirects: BTreeSet<String> = BTreeSet::new();
    let mut grouped: Vec<((MatchKind, String), Vec<usize>)> = Vec::new();
    for (domain, _, i) in claims {
        match grouped.last_mut() {
            Some((d, owners)) if d == domain => owners.push(i),
            _ => grouped.push((domain.clone(), vec![i])),
        }
    }
    for ((kind, key), owners) in grouped {
        if owners.len() > 1 {
            let names: Vec<String> = owners
                .iter()
                .map(|i| accepted[*i].0.key.to_string())
                .collect();
            for (rank, i) in owners.iter().enumerate() {
                let outcome = if rank == 0 {
                    "routed here (oldest registration)"
                } else {
                    "not routed here"
                };
                desired.diagnostics.push(diag(
                    &accepted[*i].0.key,
                    if rank == 0 {
                        Severity::Warning
                    } else {
                        Severity::Skipped
                    },
                    Reason::DomainConflict,
                    None,
                    format!(
                        "{} `{key}` is claimed by {}; {outcome}",
                        if kind == MatchKind::Path {
                            "path route".to_string()
                        } else {
                            format!("{} domain", kind.as_str())
                        },
                        names.join(", ")
                    ),
                ));
            }
        }
        let winner = &accepted[owners[0]].0;
        let value = match winner.strips.get(&key) {
            Some(n) if kind == MatchKind::Path => {
                crate::path_rules::route_value(&winner.backend, Some(*n))
            }
            _ => winner.backend.clone(),
        };
        if winner.redirect_https {
            match kind {
                MatchKind::Exact => {
                    redirects.insert(key.clone());
                }
                MatchKind::Path if !key.starts_with('/') => {
                    if let Some((host, _)) = key.split_once('/') {
                        redirects.insert(host.to_string());
                    }
                }
                _ => {}
            }
        }
        desired.routes.insert(RouteKey { kind, key }, value);
    }

    for host in redirects {
        desired.routes.insert(
            RouteKey {
                kind: MatchKind::Redirect,
                key: host,
            },
            crate::path_rules::REDIRECT_VALUE.to_string(),
        );
    }

    for (c, ownership) in accepted {
        // A skipped service may freeze only what no served service claims: a registration
        // naming someone else's backend must not stop that backend from being reconciled.
        desired.frozen.remove(&c.backend);
        desired.backends.insert(
            c.backend.clone(),
            DesiredBackend {
                name: c.backend,
                service: c.key,
                ownership,
                settings: c.settings,
                servers: c.servers,
            },
        );
    }
    desired.diagnostics.sort_by(|a, b| {
        (&a.namespace, &a.service, a.reason, &a.tag, &a.message).cmp(&(
            &b.namespace,
            &b.service,
            b.reason,
            &b.tag,
            &b.message,
        ))
    });
    desired.diagnostics.dedup();
    Ok(desired)
}

fn diag(
    key: &ServiceKey,
    severity: Severity,
    reason: Reason,
    tag: Option<(&str, &str)>,
    message: String,
) -> Diagnostic {
    Diagnostic {
        namespace: key.namespace.clone(),
        service: key.name.clone(),
        severity,
        reason,
        tag: tag.map(|(t, _)| t.to_string()),
        value: tag.map(|(_, v)| v.to_string()),
        message,
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod settings_tests;

#[cfg(test)]
mod path_tests;

#[cfg(test)]
mod redirect_tests;

#[cfg(test)]
mod default_domain_tests;
