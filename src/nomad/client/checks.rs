//! `GET /v1/client/allocation/<alloc_id>/checks`: the results of Nomad's own service checks for
//! one allocation (`nomad.gate_on_checks`).
//!
//! Facts from Nomad's source (v1.9):
//! - `command/agent/alloc_endpoint.go` routes `/v1/client/allocation/<id>/checks` to the
//!   `ClientAllocations.Checks` RPC; a server agent answers it by forwarding to the client that
//!   runs the allocation (`nomad/client_alloc_endpoint.go` `Checks`), so the connector asks its
//!   usual (server) address.
//! - ACL: `read-job` in the allocation's namespace (`AllowNsOp(alloc.Namespace,
//!   NamespaceCapabilityReadJob)`), else `ErrPermissionDenied`: 403 `Permission denied`. An
//!   unknown allocation is 404 (`IsErrUnknownAllocation`).
//! - The body is a map of check ID to `client/serviceregistration/checks` `QueryResult`
//!   (`ID`, `Mode` `healthiness`|`readiness`, `Status` `success`|`failure`|`pending`,
//!   `StatusCode`, `Output`, `Timestamp` in Unix seconds, `Group`, `Task`, `Service`, `Check`),
//!   or `null` when the allocation has no results yet (CONTRACTS §1.9).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{NomadClient, NomadError, json};
use crate::catalog::{AllocHealth, CheckHealth};
use crate::nomad::stats::Endpoint;

/// One check result as Nomad reports it (the fields the connector uses).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckResult {
    #[serde(default)]
    service: String,
    #[serde(default)]
    status: String,
}

/// Health per service of one allocation's check results: a service is failing when any of its
/// checks (healthiness or readiness) reports `failure`; `pending` and `success` are passing.
fn health(results: &BTreeMap<String, CheckResult>) -> AllocHealth {
    let mut out = AllocHealth::new();
    for r in results.values() {
        let h = if r.status == "failure" {
            CheckHealth::Failing
        } else {
            CheckHealth::Passing
        };
        let entry = out.entry(r.service.clone()).or_insert(h);
        *entry = (*entry).max(h);
    }
    out
}

impl NomadClient {
    /// The check health of allocation `alloc_id` (in `namespace`), per service; `None` when
    /// Nomad no longer knows the allocation (404).
    pub async fn alloc_checks(
        &self,
        namespace: &str,
        alloc_id: &str,
    ) -> Result<Option<AllocHealth>, NomadError> {
        let what = format!("reading the checks of allocation `{alloc_id}`");
        let url = self.url(
            &["v1", "client", "allocation", alloc_id, "checks"],
            &[("namespace", namespace)],
            None,
        );
        match self
            .send(Endpoint::Checks, &what, namespace, self.get(url, None))
            .await
        {
            Ok(response) => {
                let results: Option<BTreeMap<String, CheckResult>> = json(response, &what).await?;
                Ok(Some(results.as_ref().map(health).unwrap_or_default()))
            }
            Err(NomadError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_failure_fails_the_service_and_pending_passes() {
        let body = r#"{
          "c1": {"ID":"c1","Mode":"healthiness","Status":"success","Output":"ok","Timestamp":1700000000,"Group":"g","Service":"web","Check":"alive"},
          "c2": {"ID":"c2","Mode":"readiness","Status":"failure","StatusCode":503,"Output":"down","Timestamp":1700000000,"Group":"g","Service":"web","Check":"ready"},
          "c3": {"ID":"c3","Mode":"healthiness","Status":"pending","Timestamp":0,"Group":"g","Service":"api","Check":"alive"}
        }"#;
        let results: BTreeMap<String, CheckResult> = serde_json::from_str(body).expect("json");
        let h = health(&results);
        assert_eq!(h.get("web"), Some(&CheckHealth::Failing));
        assert_eq!(h.get("api"), Some(&CheckHealth::Passing));
        let none: Option<BTreeMap<String, CheckResult>> =
            serde_json::from_str("null").expect("null");
        assert!(none.is_none());
    }

    #[test]
    fn hostile_bodies_are_errors_or_harmless_never_panics() {
        for body in [
            r#"{"c": {"Status": 5}}"#,
            r#"{"c": "failure"}"#,
            r#"[1, 2]"#,
            "\u{0}",
            r#"{"c": {"Status": "failure""#,
        ] {
            assert!(
                serde_json::from_str::<Option<BTreeMap<String, CheckResult>>>(body).is_err(),
                "{body}"
            );
        }
        // Unknown statuses and odd service names are not failures; missing fields default.
        let body = r#"{"a": {"Status": "FAILURE", "Service": "wéb\u0007"}, "b": {}, "c": {"Status": "weird", "Service": ""}}"#;
        let results: BTreeMap<String, CheckResult> = serde_json::from_str(body).expect("json");
        let h = health(&results);
        assert!(h.values().all(|h| *h == CheckHealth::Passing), "{h:?}");
    }
}
