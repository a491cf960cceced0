//! Gating on Nomad's own check results (`nomad.gate_on_checks`): an endpoint whose registrations
//! all have failing checks stays a server, marked to be taken out of rotation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::ServerSpec;
use crate::catalog::{Instance, ServiceKey, Snapshot};
use crate::model::Endpoint;

/// Marks the servers whose every registration (same address and port) has failing Nomad checks.
/// A registration without check results (no checks declared, gating off, not read yet) is never
/// gated, and one passing registration keeps the endpoint in rotation.
pub(super) fn mark_failing(
    servers: &mut BTreeMap<Endpoint, ServerSpec>,
    key: &ServiceKey,
    instances: &[Instance],
    snapshot: &Snapshot,
) {
    if snapshot.check_health.is_empty() {
        return;
    }
    // Per endpoint: (any registration failing, any registration not failing).
    let mut seen: BTreeMap<Endpoint, (bool, bool)> = BTreeMap::new();
    for inst in instances {
        let Ok(addr) = inst.address.parse::<IpAddr>() else {
            continue;
        };
        let endpoint = Endpoint::new(addr.to_canonical(), inst.port);
        let entry = seen.entry(endpoint).or_default();
        if snapshot.checks_failing(&inst.alloc_id, &key.name) {
            entry.0 = true;
        } else {
            entry.1 = true;
        }
    }
    for (endpoint, spec) in servers.iter_mut() {
        spec.failing_checks = seen
            .get(endpoint)
            .is_some_and(|(failing, passing)| *failing && !*passing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CheckHealth;

    fn inst(alloc: &str, address: &str) -> Instance {
        Instance {
            id: format!("_nomad-task-{alloc}-group-web-web-http"),
            job_id: "web".into(),
            alloc_id: alloc.into(),
            node_id: "n".into(),
            datacenter: "dc1".into(),
            tags: vec![],
            address: address.into(),
            port: 80,
            create_index: 1,
            modify_index: 1,
            nomad_check: None,
        }
    }

    fn health(entries: &[(&str, &str, CheckHealth)]) -> Snapshot {
        let mut snap = Snapshot::default();
        for (alloc, service, h) in entries {
            snap.check_health
                .entry(alloc.to_string())
                .or_default()
                .insert(service.to_string(), *h);
        }
        snap
    }

    fn servers(addrs: &[&str]) -> BTreeMap<Endpoint, ServerSpec> {
        addrs
            .iter()
            .map(|a| {
                let spec = ServerSpec {
                    weight: 1,
                    failing_checks: false,
                };
                (Endpoint::new(a.parse().expect("ip"), 80), spec)
            })
            .collect()
    }

    #[test]
    fn only_endpoints_whose_registrations_all_fail_are_marked() {
        let key = ServiceKey::new("default", "web");
        let instances = [
            inst("a1", "10.0.0.1"),
            inst("a2", "10.0.0.2"),
            inst("a3", "10.0.0.3"),
            inst("a4", "10.0.0.3"),
            inst("a5", "10.0.0.5"),
        ];
        let snap = health(&[
            ("a1", "web", CheckHealth::Failing),
            ("a2", "web", CheckHealth::Passing),
            ("a3", "web", CheckHealth::Failing),
            // Another service of the same allocation fails: not this one's business.
            ("a5", "other", CheckHealth::Failing),
        ]);
        let mut s = servers(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]);
        mark_failing(&mut s, &key, &instances, &snap);
        let failing: Vec<String> = s
            .iter()
            .filter(|(_, spec)| spec.failing_checks)
            .map(|(e, _)| e.to_string())
            .collect();
        // 10.0.0.3 has one failing and one unread registration: kept in rotation.
        assert_eq!(failing, ["10.0.0.1:80"]);
    }

    #[test]
    fn no_check_results_means_nothing_is_gated() {
        let key = ServiceKey::new("default", "web");
        let mut s = servers(&["10.0.0.1"]);
        mark_failing(
            &mut s,
            &key,
            &[inst("a1", "10.0.0.1")],
            &Snapshot::default(),
        );
        assert!(s.values().all(|spec| !spec.failing_checks));
    }
}
