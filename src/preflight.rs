//! `check-config --connect`: a preflight an operator runs once before `run`. Nomad reachable and
//! the token able to list and read services and jobs in every watched namespace; the HAProxy side
//! as its driver needs it (Data Plane API: reachable, 3.x, credentials, the frontend, the map
//! files; runtime driver: the sockets answer, `haproxy -c` accepts the configuration). Every
//! result is a line; the command exits 1 when any is a problem.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::app::AnyDriver;
use crate::call_metrics::CallMetrics;
use crate::config::{Config, Namespaces, redact_url};
use crate::nomad::NomadClient;

/// The results, in order: `Ok` lines say what was found, `Err` lines what is wrong.
pub async fn run(config: &Config) -> Vec<Result<String, String>> {
    let mut out = nomad(config).await;
    match AnyDriver::from_config(config, CallMetrics::disabled()) {
        Ok(AnyDriver::Dataplane(d)) => out.extend(d.preflight().await),
        Ok(AnyDriver::Runtime(d)) => out.extend(d.preflight().await),
        Err(e) => out.push(Err(format!("HAProxy driver: {e}"))),
    }
    out
}

async fn nomad(config: &Config) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let address = redact_url(config.nomad.address.as_str());
    let client = match NomadClient::new(&config.nomad, Arc::default(), CallMetrics::disabled()) {
        Ok(c) => c,
        Err(e) => return vec![Err(format!("Nomad client: {e}"))],
    };
    match client.leader().await {
        Ok(leader) if leader.is_empty() => {
            out.push(Err(format!(
                "Nomad {address}: reachable, but the cluster has no leader"
            )));
        }
        Ok(_) => out.push(Ok(format!(
            "Nomad {address}: reachable, a leader is elected"
        ))),
        // The leader status needs no ACL: any refusal (a proxy in front, …) is a problem too.
        Err(e) => {
            out.push(Err(format!("Nomad {address}: {e}")));
            return out;
        }
    }
    // The namespaces to prove: the list as configured; with `*`, those the token can see (Nomad
    // silently leaves out the ones it cannot read, so name them in nomad.namespaces to check them).
    let namespaces: BTreeSet<String> = match &config.nomad.namespaces {
        Namespaces::List(list) => list.iter().cloned().collect(),
        Namespaces::All => match client.list_services("*", None).await {
            Ok(list) => {
                out.push(Ok(
                    "the token can list services in all namespaces (`*`; unreadable namespaces are left out silently: list them in nomad.namespaces to check them one by one)".to_string(),
                ));
                list.data.into_iter().map(|n| n.namespace).collect()
            }
            Err(e) if e.is_permission_denied() => {
                out.push(Err(format!(
                    "the token cannot list services in any namespace (needs namespace:read-job): {e}"
                )));
                return out;
            }
            Err(e) => {
                out.push(Err(format!("listing services in all namespaces: {e}")));
                return out;
            }
        },
    };
    for ns in namespaces
        .iter()
        .filter(|n| !config.nomad.namespace_deny.contains(n))
    {
        let list = match client.list_services(ns, None).await {
            Ok(l) => l,
            Err(e) if e.is_permission_denied() => {
                out.push(Err(format!(
                    "namespace `{ns}`: the token cannot list services (needs read-job on namespace {ns})"
                )));
                continue;
            }
            Err(e) => {
                out.push(Err(format!("namespace `{ns}`: listing services: {e}")));
                continue;
            }
        };
        let first = list
            .data
            .iter()
            .flat_map(|n| n.services.iter().flatten())
            .map(|s| s.service_name.clone())
            .next();
        let Some(service) = first else {
            out.push(Ok(format!(
                "namespace `{ns}`: services listed (none registered yet)"
            )));
            continue;
        };
        let regs = match client.read_service(ns, &service).await {
            Ok(r) => r.data,
            Err(e) if e.is_permission_denied() => {
                out.push(Err(format!(
                    "namespace `{ns}`: the token cannot read service `{service}` (needs read-job on namespace {ns})"
                )));
                continue;
            }
            Err(e) => {
                out.push(Err(format!(
                    "namespace `{ns}`: reading service `{service}`: {e}"
                )));
                continue;
            }
        };
        let Some(job) = regs.first().map(|r| r.job_id.clone()) else {
            out.push(Ok(format!("namespace `{ns}`: services listed and read")));
            continue;
        };
        match client.read_job(ns, &job).await {
            Ok(_) => out.push(Ok(format!(
                "namespace `{ns}`: services listed and read, job `{job}` read"
            ))),
            Err(e) if e.is_permission_denied() => out.push(Err(format!(
                "namespace `{ns}`: the token cannot read job `{job}` (needs read-job on namespace {ns})"
            ))),
            Err(e) => out.push(Err(format!("namespace `{ns}`: reading job `{job}`: {e}"))),
        }
    }
    out
}
