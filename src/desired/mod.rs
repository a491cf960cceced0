//! The desired HAProxy model: a pure function of the catalog snapshot, the policy and the live
//! state (the live state only decides adoption and keeps settings stable while instances
//! disagree). No I/O.

pub mod grammar;
pub mod host_regex;
pub mod tags;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{Instance, NomadCheckKind, ServiceKey, Snapshot};
use crate::config::BackendStrategy;
use crate::live::Live;
use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, MAX_TIMER_MS, MatchKind, Mode,
    RouteKey,
};
use tags::{BackendKind, CheckType, InstanceTags};

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
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tag_prefix: "haproxy".into(),
            backend_strategy: BackendStrategy::UseExisting,
            drain_timeout: Duration::from_secs(30),
            allow_regex_domains: true,
            denied_ranges: Vec::new(),
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

/// One service after its registrations were parsed, before cross-service checks.
struct Candidate {
    key: ServiceKey,
    kind: BackendKind,
    backend: String,
    settings: BackendSettings,
    /// Settings per field where instances disagree (field name), to resolve against live.
    disagreements: Vec<&'static str>,
    servers: BTreeMap<Endpoint, ServerSpec>,
    domains: BTreeSet<(MatchKind, String)>,
    /// Age for conflict resolution: the oldest registration wins.
    age: (u64, ServiceKey),
}

/// Builds the desired model.
pub fn build(snapshot: &Snapshot, live: &Live, policy: &Policy) -> Result<Desired, BuildError> {
    let mut desired = Desired::default();
    let mut candidates = Vec::new();
    for (key, service) in &snapshot.services {
        if let Some(c) = candidate(key, &service.instances, policy, &mut desired) {
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
                        "{} domain `{key}` is claimed by {}; {outcome}",
                        kind.as_str(),
                        names.join(", ")
                    ),
                ));
            }
        }
        let winner = &accepted[owners[0]].0;
        desired
            .routes
            .insert(RouteKey { kind, key }, winner.backend.clone());
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

/// One distinct (tags, job check) combination among a service's registrations: most services
/// have one or two, so parsing and settings are computed once per combination, not per instance.
struct Variant<'a> {
    tags: &'a [String],
    nomad_check: &'a Option<crate::catalog::NomadCheck>,
    parsed: InstanceTags,
    settings: BackendSettings,
}

/// Parses a service's enabled registrations; `None` when it is not served (not enabled, static,
/// or skipped with a diagnostic).
fn candidate(
    key: &ServiceKey,
    instances: &[Instance],
    policy: &Policy,
    desired: &mut Desired,
) -> Option<Candidate> {
    let prefix = policy.tag_prefix.as_str();
    let enable_key = format!("{prefix}.enable=");
    let mut variants: Vec<Variant<'_>> = Vec::new();
    // (instance, index into variants), enabled instances only.
    let mut members: Vec<(&Instance, usize)> = Vec::new();
    let mut invalid: Vec<Diagnostic> = Vec::new();
    let mut rejected: Vec<&[String]> = Vec::new();
    for inst in instances {
        if let Some(i) = variants
            .iter()
            .position(|v| v.tags == inst.tags.as_slice() && v.nomad_check == &inst.nomad_check)
        {
            members.push((inst, i));
            continue;
        }
        if rejected.contains(&inst.tags.as_slice()) {
            continue;
        }
        // `get` and a byte comparison: a tag is arbitrary Unicode, and slicing it at a byte
        // offset that is not a character boundary would panic.
        let has_enable = inst.tags.iter().any(|t| {
            t.len() > enable_key.len()
                && t.as_bytes()
                    .get(..enable_key.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(enable_key.as_bytes()))
        });
        if !has_enable {
            rejected.push(&inst.tags);
            continue;
        }
        match tags::parse(&inst.tags, prefix) {
            Ok(t)
                if t.enabled
                    && !policy.allow_regex_domains
                    && t.domains.iter().any(|(k, _)| *k == MatchKind::Regex) =>
            {
                rejected.push(&inst.tags);
                let tag = inst
                    .tags
                    .iter()
                    .find(|t| t.starts_with(&format!("{prefix}.domain.type=")))
                    .map_or_else(|| format!("{prefix}.domain.type"), Clone::clone);
                invalid.push(Diagnostic {
                    namespace: key.namespace.clone(),
                    service: key.name.clone(),
                    severity: Severity::Skipped,
                    reason: Reason::RegexDomainsDisabled,
                    value: Some("regex".into()),
                    tag: Some(tag),
                    message: "regex domains are disabled on this connector (haproxy.allow_regex_domains=false); service skipped, its live objects left unchanged".into(),
                });
            }
            Ok(t) if t.enabled => {
                for u in &t.unknown {
                    desired.diagnostics.push(diag(
                        key,
                        Severity::Warning,
                        Reason::UnknownTag,
                        Some((u, u.split_once('=').map_or("", |(_, v)| v))),
                        format!("unknown key; known keys: {}", tags::KEYS.join(", ")),
                    ));
                }
                let (settings, warning) = instance_settings(inst, &t);
                if let Some(message) = warning {
                    desired.diagnostics.push(diag(
                        key,
                        Severity::Warning,
                        Reason::InvalidTag,
                        None,
                        message,
                    ));
                }
                variants.push(Variant {
                    tags: &inst.tags,
                    nomad_check: &inst.nomad_check,
                    parsed: t,
                    settings,
                });
                members.push((inst, variants.len() - 1));
            }
            Ok(_) => rejected.push(&inst.tags),
            Err(e) => {
                rejected.push(&inst.tags);
                invalid.push(diag(
                    key,
                    Severity::Skipped,
                    Reason::InvalidTag,
                    Some((&e.tag, &e.value)),
                    format!(
                        "{} (value `{}`); service skipped, its live objects left unchanged",
                        e.reason, e.value
                    ),
                ));
            }
        }
    }
    let custom_name = variants.iter().find_map(|v| v.parsed.backend_name.clone());
    let freeze = |desired: &mut Desired, d: Diagnostic| {
        desired.frozen.insert(backend_name(key));
        if let Some(n) = &custom_name {
            desired.frozen.insert(n.clone());
        }
        desired.diagnostics.push(d);
    };
    if !invalid.is_empty() {
        invalid.sort_by(|a, b| (&a.tag, &a.message).cmp(&(&b.tag, &b.message)));
        invalid.dedup();
        for d in invalid {
            freeze(desired, d);
        }
        return None;
    }
    if members.is_empty() {
        return None;
    }
    // The newest registration's values are what a new backend takes when instances disagree;
    // with a single variant there is nothing to choose.
    let newest_variant = if variants.len() == 1 {
        0
    } else {
        members
            .iter()
            .max_by(|(a, _), (b, _)| {
                // A total order on everything that can differ, so the choice never depends on
                // input order (Nomad's IDs are unique, but a double or a bug may repeat one).
                (
                    a.modify_index,
                    a.create_index,
                    &a.id,
                    &a.address,
                    a.port,
                    &a.tags,
                )
                    .cmp(&(
                        b.modify_index,
                        b.create_index,
                        &b.id,
                        &b.address,
                        b.port,
                        &b.tags,
                    ))
            })
            .map(|(_, v)| *v)?
    };

    let kinds: BTreeSet<_> = variants
        .iter()
        .map(|v| {
            (
                kind_rank(v.parsed.backend),
                v.parsed.backend_name.as_deref(),
            )
        })
        .collect();
    if kinds.len() > 1 {
        let d = diag(
            key,
            Severity::Skipped,
            Reason::Disagreement,
            None,
            "instances disagree on backend / backend.name; service skipped, its live objects left unchanged until they agree"
                .into(),
        );
        freeze(desired, d);
        return None;
    }
    let newest = &variants[newest_variant];
    if newest.parsed.backend == BackendKind::Static {
        return None;
    }
    let kind = newest.parsed.backend;
    let backend = match (kind, &newest.parsed.backend_name) {
        (BackendKind::Custom, Some(n)) => n.clone(),
        _ => backend_name(key),
    };
    if kind == BackendKind::Dynamic && newest.parsed.backend_name.is_some() {
        desired.diagnostics.push(diag(
            key,
            Severity::Warning,
            Reason::UnknownTag,
            Some((
                &format!("{prefix}.backend.name"),
                newest.parsed.backend_name.as_deref().unwrap_or(""),
            )),
            "backend.name applies only with backend=custom; ignored".into(),
        ));
    }
    if !crate::model::is_haproxy_name(&backend) {
        let d = diag(
            key,
            Severity::Skipped,
            Reason::InvalidTag,
            None,
            format!("service name gives the invalid backend name `{backend}`"),
        );
        freeze(desired, d);
        return None;
    }

    // Collected, sorted and merged, then built in one go: much cheaper than inserting one by
    // one into a map at tens of thousands of instances.
    let mut endpoints: Vec<(Endpoint, u16)> = Vec::with_capacity(members.len());
    let mut bad: Option<&Instance> = None;
    let mut denied: Vec<(&Instance, String)> = Vec::new();
    for (inst, v) in &members {
        let addr: IpAddr = match inst.address.parse::<IpAddr>() {
            // `::ffff:169.254.169.254` is 169.254.169.254: judge and name the canonical form.
            Ok(a) if inst.port != 0 => a.to_canonical(),
            _ => {
                // Report the same registration whatever the input order.
                if bad.is_none_or(|b| {
                    (&inst.id, &inst.address, inst.port) < (&b.id, &b.address, b.port)
                }) {
                    bad = Some(inst);
                }
                continue;
            }
        };
        if let Some(why) = policy.address_denied(addr) {
            denied.push((inst, why));
            continue;
        }
        let weight = variants[*v].parsed.weight.unwrap_or(DEFAULT_WEIGHT);
        endpoints.push((Endpoint::new(addr, inst.port), weight));
    }
    // A denied address costs only its registration: the service keeps its other instances.
    denied.sort_by(|a, b| (&a.0.id, &a.0.address).cmp(&(&b.0.id, &b.0.address)));
    for (inst, why) in denied {
        desired.diagnostics.push(diag(
            key,
            Severity::Skipped,
            Reason::DeniedAddress,
            None,
            format!(
                "registration {} has address `{}`, which is {why}; that instance is not routed",
                inst.id, inst.address
            ),
        ));
    }
    // Duplicate endpoints keep the highest weight.
    endpoints.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    endpoints.dedup_by_key(|(e, _)| *e);
    let servers: BTreeMap<Endpoint, ServerSpec> = endpoints
        .into_iter()
        .map(|(e, weight)| (e, ServerSpec { weight }))
        .collect();
    if let Some(inst) = bad {
        let d = diag(
            key,
            Severity::Skipped,
            Reason::InvalidAddress,
            None,
            format!(
                "registration {} has address `{}` port {}, which is not an IP address and port; service skipped",
                inst.id, inst.address, inst.port
            ),
        );
        freeze(desired, d);
        return None;
    }

    let newest_settings = newest.settings.clone();
    let differs = |f: &dyn Fn(&BackendSettings, &BackendSettings) -> bool| {
        variants.iter().any(|v| f(&v.settings, &newest_settings))
    };
    let mut disagreements = Vec::new();
    if differs(&|a, b| a.mode != b.mode) {
        disagreements.push("mode");
    }
    if differs(&|a, b| a.balance != b.balance) {
        disagreements.push("balance");
    }
    if differs(&|a, b| a.check != b.check) {
        disagreements.push("check");
    }
    if differs(&|a, b| a.maxconn != b.maxconn) {
        disagreements.push("maxconn");
    }
    let domains = variants
        .iter()
        .flat_map(|v| v.parsed.domains.iter().cloned())
        .collect();
    let oldest = members
        .iter()
        .map(|(i, _)| i.create_index)
        .min()
        .unwrap_or(0);
    Some(Candidate {
        key: key.clone(),
        kind,
        backend,
        settings: newest_settings,
        disagreements,
        servers,
        domains,
        age: (oldest, key.clone()),
    })
}

fn kind_rank(k: BackendKind) -> u8 {
    match k {
        BackendKind::Dynamic => 0,
        BackendKind::Custom => 1,
        BackendKind::Static => 2,
    }
}

/// The backend settings one registration asks for. Check precedence: explicit tags > the check
/// in the Nomad job > a TCP connect check. The job's check is untrusted too: a value that fails
/// its grammar turns that check into a TCP check, with a warning.
fn instance_settings(inst: &Instance, t: &InstanceTags) -> (BackendSettings, Option<String>) {
    let mut warning = None;
    let exact_domain = t
        .domains
        .iter()
        .find(|(k, _)| *k == MatchKind::Exact)
        .map(|(_, d)| d.clone());
    let explicit = &t.check;
    let mut timing = CheckTiming::default();
    let nomad = inst.nomad_check.as_ref();
    if let Some(n) = nomad {
        // The job's durations are bounded like tags' (HAProxy refuses timers past 2^31-1 ms):
        // a longer one is cut to the bound, with a warning.
        let bounded = |what: &str, d: Option<Duration>, warning: &mut Option<String>| {
            let ms = d?.as_millis();
            if ms < 10 {
                return None;
            }
            if ms > u128::from(MAX_TIMER_MS) {
                *warning = Some(format!(
                    "the check {what} declared in job {} ({}) exceeds HAProxy's range; using {}",
                    inst.job_id,
                    humantime::format_duration(d.unwrap_or_default()),
                    humantime::format_duration(Duration::from_millis(u64::from(MAX_TIMER_MS)))
                ));
                return Some(MAX_TIMER_MS);
            }
            u32::try_from(ms).ok()
        };
        if let Some(i) = bounded("interval", n.interval, &mut warning) {
            timing.interval_ms = i;
            timing.timeout_ms = i;
        }
        if let Some(t) = bounded("timeout", n.timeout, &mut warning) {
            timing.timeout_ms = t;
        }
    }
    if let Some(i) = explicit.interval_ms {
        timing.interval_ms = i;
        if explicit.timeout_ms.is_none() && nomad.and_then(|n| n.timeout).is_none() {
            timing.timeout_ms = i;
        }
    }
    if let Some(v) = explicit.timeout_ms {
        timing.timeout_ms = v;
    }
    if let Some(v) = explicit.rise {
        timing.rise = v;
    }
    if let Some(v) = explicit.fall {
        timing.fall = v;
    }

    let check = if explicit.disabled == Some(true) || explicit.kind == Some(CheckType::None) {
        CheckSpec::None
    } else if explicit.wants_http() {
        CheckSpec::Http {
            method: explicit.method.clone().unwrap_or_else(|| "GET".into()),
            path: explicit.path.clone().unwrap_or_else(|| "/".into()),
            host: explicit.host.clone().or(exact_domain.clone()),
            expect: explicit.expect,
            timing,
        }
    } else if explicit.kind == Some(CheckType::Tcp) {
        CheckSpec::Tcp { timing }
    } else {
        match nomad.map(|n| (&n.kind, n)) {
            Some((NomadCheckKind::Http, n)) => {
                let path = n.path.as_deref().map_or(Ok("/".to_string()), grammar::path);
                let method = n
                    .method
                    .as_deref()
                    .map_or(Ok("GET".to_string()), grammar::method);
                let host = n.host.as_deref().map(grammar::host_header).transpose();
                match (path, method, host) {
                    (Ok(path), Ok(method), Ok(host)) => CheckSpec::Http {
                        method,
                        path,
                        host: host.or(exact_domain),
                        expect: None,
                        timing,
                    },
                    (path, method, host) => {
                        let reason = [path.err(), method.err(), host.err()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>();
                        warning = Some(format!(
                            "the HTTP check declared in job {} is unusable ({}); using a TCP check",
                            inst.job_id,
                            reason.join("; ")
                        ));
                        CheckSpec::Tcp { timing }
                    }
                }
            }
            _ => CheckSpec::Tcp { timing },
        }
    };
    let mode = t
        .mode
        .unwrap_or(if !t.domains.is_empty() || explicit.wants_http() {
            Mode::Http
        } else {
            Mode::Tcp
        });
    let settings = BackendSettings {
        mode,
        balance: t.balance.unwrap_or(Balance::Roundrobin),
        check,
        maxconn: t.maxconn,
    };
    (settings, warning)
}

#[cfg(test)]
pub(crate) mod tests;
