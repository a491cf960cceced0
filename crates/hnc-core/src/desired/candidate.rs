//! One service's registrations parsed into a candidate backend: tags per distinct variant,
//! settings reconciled across instances, servers and domains, before cross-service checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::net::IpAddr;

use super::tags::{self, BackendKind, CheckType, InstanceTags};
use super::{
    DEFAULT_WEIGHT, Desired, Diagnostic, Policy, Reason, ServerSpec, Severity, backend_name, diag,
    grammar,
};
use crate::catalog::{Instance, NomadCheckKind, ServiceKey};
use crate::model::{
    BackendSettings, Balance, CheckSpec, CheckTiming, Endpoint, MAX_TIMER_MS, MatchKind, Mode,
    ServerTls,
};

/// One service after its registrations were parsed, before cross-service checks.
pub(super) struct Candidate {
    pub(super) key: ServiceKey,
    pub(super) kind: BackendKind,
    pub(super) backend: String,
    pub(super) settings: BackendSettings,
    /// Settings per field where instances disagree (field name), to resolve against live.
    pub(super) disagreements: Vec<&'static str>,
    pub(super) servers: BTreeMap<Endpoint, ServerSpec>,
    /// Route keys claimed: domains, and path routes ([`MatchKind::Path`]).
    pub(super) domains: BTreeSet<(MatchKind, String)>,
    /// Path route keys whose prefix is stripped, with its length in bytes.
    pub(super) strips: BTreeMap<String, usize>,
    /// `redirect.https`: the hosts of the routes it wins redirect plain HTTP to https.
    pub(super) redirect_https: bool,
    /// Age for conflict resolution: the oldest registration wins.
    pub(super) age: (u64, ServiceKey),
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
pub(super) fn candidate(
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
            Ok(t)
                if t.enabled
                    && policy.server_ca_file.is_none()
                    && t.tls.as_ref().is_some_and(|x| x.verify) =>
            {
                rejected.push(&inst.tags);
                let tag = [".server.verify=", ".server.ssl="]
                    .iter()
                    .find_map(|k| {
                        let k = format!("{prefix}{k}");
                        inst.tags.iter().find(|t| t.starts_with(&k)).cloned()
                    })
                    .unwrap_or_else(|| format!("{prefix}.server.ssl"));
                let value = tag.split_once('=').map_or("", |(_, v)| v).to_string();
                invalid.push(diag(
                    key,
                    Severity::Skipped,
                    Reason::InvalidTag,
                    Some((&tag, &value)),
                    "verifying the servers' certificates (server.verify=required, the default with server.ssl=true) needs haproxy.server_ca_file in the connector's configuration; set it, or server.verify=none; service skipped, its live objects left unchanged".into(),
                ));
            }
            Ok(mut t) if t.enabled => {
                if let Err(why) =
                    super::default_domain::apply(&mut t, key, policy.default_domain.as_deref())
                {
                    desired.diagnostics.push(diag(
                        key,
                        Severity::Warning,
                        Reason::InvalidDefaultDomain,
                        None,
                        format!(
                            "haproxy.default_domain renders {why}; the service is served without a default host route"
                        ),
                    ));
                }
                for u in &t.unknown {
                    desired.diagnostics.push(diag(
                        key,
                        Severity::Warning,
                        Reason::UnknownTag,
                        Some((u, u.split_once('=').map_or("", |(_, v)| v))),
                        format!("unknown key; known keys: {}", tags::KEYS.join(", ")),
                    ));
                }
                let (settings, warning) =
                    instance_settings(inst, &t, policy.server_ca_file.as_deref());
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
        .map(|(e, weight)| {
            let spec = ServerSpec {
                weight,
                failing_checks: false,
            };
            (e, spec)
        })
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
    if differs(&|a, b| a.timeouts != b.timeouts) {
        disagreements.push("timeouts");
    }
    if differs(&|a, b| a.sticky != b.sticky) {
        disagreements.push("sticky");
    }
    if differs(&|a, b| a.tls != b.tls) {
        disagreements.push("server.tls");
    }
    let domains = variants.iter().flat_map(|v| v.parsed.routes()).collect();
    let strips = variants.iter().flat_map(|v| v.parsed.strips()).collect();
    let redirect_https = variants.iter().any(|v| v.parsed.redirect_https);
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
        strips,
        redirect_https,
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
fn instance_settings(
    inst: &Instance,
    t: &InstanceTags,
    ca_file: Option<&str>,
) -> (BackendSettings, Option<String>) {
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
    let mode = t.mode.unwrap_or(
        if !t.domains.is_empty()
            || !t.paths.is_empty()
            || explicit.wants_http()
            || t.sticky.is_some()
        {
            Mode::Http
        } else {
            Mode::Tcp
        },
    );
    let settings = BackendSettings {
        mode,
        balance: t.balance.unwrap_or(Balance::Roundrobin),
        check,
        maxconn: t.maxconn,
        timeouts: t.timeouts,
        sticky: t.sticky.clone(),
        tls: t.tls.as_ref().map(|x| ServerTls {
            sni: x.sni.clone(),
            ca_file: x.verify.then(|| ca_file.map(str::to_string)).flatten(),
        }),
    };
    (settings, warning)
}
