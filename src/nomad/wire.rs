//! Nomad's JSON, as it arrives (PascalCase), and its conversion into catalog values. Only the
//! fields the connector reads are declared; unknown fields are ignored, `null` lists are empty.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{Instance, NomadCheck, NomadCheckKind};

/// One element of `GET /v1/services`: a namespace and the names registered in it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NamespaceServices {
    pub namespace: String,
    #[serde(default)]
    pub services: Option<Vec<ServiceStub>>,
}

/// A service name with the union of its registrations' tags.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStub {
    pub service_name: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl ServiceStub {
    pub fn tags(&self) -> &[String] {
        self.tags.as_deref().unwrap_or_default()
    }
}

/// One element of `GET /v1/service/:name`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(rename = "Datacenter", default)]
    pub datacenter: String,
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    #[serde(rename = "AllocID", default)]
    pub alloc_id: String,
    /// `null` from older clients: an empty list.
    #[serde(rename = "Tags", default)]
    pub tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    pub address: String,
    /// An int on the wire; validated into a port by [`Registration::to_instance`].
    #[serde(rename = "Port", default)]
    pub port: i64,
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl Registration {
    /// The catalog instance, or why this registration cannot be one (a port out of range).
    pub fn to_instance(&self, nomad_check: Option<NomadCheck>) -> Result<Instance, String> {
        let port = u16::try_from(self.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {} is not a TCP port", self.port))?;
        Ok(Instance {
            id: self.id.clone(),
            job_id: self.job_id.clone(),
            alloc_id: self.alloc_id.clone(),
            node_id: self.node_id.clone(),
            datacenter: self.datacenter.clone(),
            tags: self.tags.clone().unwrap_or_default(),
            address: self.address.clone(),
            port,
            create_index: self.create_index,
            modify_index: self.modify_index,
            nomad_check,
        })
    }
}

/// One line of the event stream. `{}` (index 0, no events) is a heartbeat.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct StreamFrame {
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub events: Option<Vec<Event>>,
}

impl StreamFrame {
    pub fn is_heartbeat(&self) -> bool {
        self.index == 0 && self.events.as_ref().is_none_or(Vec::is_empty)
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Event {
    #[serde(rename = "Topic", default)]
    pub topic: String,
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "Key", default)]
    pub key: String,
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    #[serde(rename = "FilterKeys", default)]
    pub filter_keys: Option<Vec<String>>,
    #[serde(rename = "Index", default)]
    pub index: u64,
    #[serde(rename = "Payload", default)]
    pub payload: Option<EventPayload>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventPayload {
    #[serde(rename = "Service", default)]
    pub service: Option<EventService>,
}

/// The part of a payload's registration the watcher needs: which service to re-read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct EventService {
    #[serde(rename = "ServiceName", default)]
    pub service_name: String,
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
}

impl Event {
    /// (namespace, service name) this Service event is about: the payload's registration, else
    /// the filter keys `[JobID, ServiceName]`.
    pub fn service(&self) -> Option<(String, String)> {
        let from_payload = self.payload.as_ref().and_then(|p| p.service.as_ref());
        let name = from_payload
            .map(|s| s.service_name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                self.filter_keys
                    .as_ref()
                    .and_then(|k| k.get(1).cloned())
                    .filter(|n| !n.is_empty())
            })?;
        let namespace = Some(self.namespace.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| from_payload.map(|s| s.namespace.clone()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        Some((namespace, name))
    }
}

/// The parts of `GET /v1/job/:id` that declare service checks.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Job {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    pub modify_index: u64,
    #[serde(default)]
    pub task_groups: Option<Vec<TaskGroup>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskGroup {
    #[serde(default)]
    pub services: Option<Vec<JobService>>,
    #[serde(default)]
    pub tasks: Option<Vec<Task>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(default)]
    pub services: Option<Vec<JobService>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct JobService {
    #[serde(default)]
    pub name: String,
    /// `nomad` or `consul`; only `nomad` services are in Nomad's catalog.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub checks: Option<Vec<JobCheck>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct JobCheck {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Nanoseconds.
    #[serde(default)]
    pub interval: Option<i64>,
    /// Nanoseconds.
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub header: Option<BTreeMap<String, Vec<String>>>,
}

impl Job {
    /// The check declared for each Nomad-provider service of the job, by service name (group-level
    /// and task-level services alike). With several checks, the first HTTP one wins, then the
    /// first TCP one, then the first of any type. Names are as written in the job: a name built
    /// from interpolation (`${NOMAD_JOB_NAME}-web`) does not match its registrations.
    pub fn checks(&self) -> BTreeMap<String, Option<NomadCheck>> {
        let mut out = BTreeMap::new();
        let groups = self.task_groups.as_deref().unwrap_or_default();
        let services = groups.iter().flat_map(|g| {
            g.services.as_deref().unwrap_or_default().iter().chain(
                g.tasks
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|t| t.services.as_deref().unwrap_or_default()),
            )
        });
        for service in services {
            if service
                .provider
                .as_deref()
                .is_some_and(|p| !p.is_empty() && p != "nomad")
            {
                continue;
            }
            let checks = service.checks.as_deref().unwrap_or_default();
            let pick = checks
                .iter()
                .find(|c| c.kind.eq_ignore_ascii_case("http"))
                .or_else(|| checks.iter().find(|c| c.kind.eq_ignore_ascii_case("tcp")))
                .or_else(|| checks.first());
            let entry = out.entry(service.name.clone()).or_insert(None);
            if entry.is_none() {
                *entry = pick.map(JobCheck::to_check);
            }
        }
        out
    }
}

impl JobCheck {
    pub fn to_check(&self) -> NomadCheck {
        let kind = match self.kind.to_ascii_lowercase().as_str() {
            "http" => NomadCheckKind::Http,
            "tcp" => NomadCheckKind::Tcp,
            _ => NomadCheckKind::Other(self.kind.clone()),
        };
        let nanos = |n: Option<i64>| {
            n.and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(Duration::from_nanos)
        };
        let host = self.header.as_ref().and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("host"))
                .and_then(|(_, v)| v.first().cloned())
        });
        NomadCheck {
            kind,
            path: self.path.clone().filter(|p| !p.is_empty()),
            method: self.method.clone().filter(|m| !m.is_empty()),
            interval: nanos(self.interval),
            timeout: nanos(self.timeout),
            host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_with_null_tags_and_ipv6_address() {
        let regs: Vec<Registration> = serde_json::from_str(
            r#"[{"ID":"_nomad-task-a-web-web-http","ServiceName":"web","Namespace":"default",
                "NodeID":"n","Datacenter":"dc1","JobID":"webapp","AllocID":"a","Tags":null,
                "Address":"2001:db8::1","Port":8080,"CreateIndex":3,"ModifyIndex":4,"Extra":1}]"#,
        )
        .expect("parses");
        let i = regs[0].to_instance(None).expect("valid");
        assert!(i.tags.is_empty());
        assert_eq!(i.address, "2001:db8::1");
        assert_eq!((i.port, i.create_index, i.modify_index), (8080, 3, 4));
        let mut bad = regs[0].clone();
        bad.port = 70000;
        assert_eq!(
            bad.to_instance(None).expect_err("bad port"),
            "port 70000 is not a TCP port"
        );
    }

    #[test]
    fn list_entries_and_heartbeat() {
        let list: Vec<NamespaceServices> = serde_json::from_str(
            r#"[{"Namespace":"default","Services":[{"ServiceName":"web","Tags":["a"]},{"ServiceName":"x","Tags":null}]}]"#,
        )
        .expect("parses");
        let services = list[0].services.as_deref().unwrap_or_default();
        assert_eq!(services[0].tags(), ["a"]);
        assert!(services[1].tags().is_empty());
        let hb: StreamFrame = serde_json::from_str("{}").expect("parses");
        assert!(hb.is_heartbeat());
    }

    #[test]
    fn event_names_its_service() {
        let frame: StreamFrame = serde_json::from_str(
            r#"{"Index":7,"Events":[
              {"Topic":"Service","Type":"AllocationUpdated","Key":"k","Namespace":"prod",
               "FilterKeys":["job","web"],"Index":7,"Payload":{"Service":{"ServiceName":"web","Namespace":"prod"}}},
              {"Topic":"Service","Type":"NodeStreamEvent","Key":"k2","Namespace":"",
               "FilterKeys":["job","api"],"Index":7}]}"#,
        )
        .expect("parses");
        let events = frame.events.expect("events");
        assert_eq!(events[0].service(), Some(("prod".into(), "web".into())));
        assert_eq!(events[1].service(), Some(("default".into(), "api".into())));
    }

    #[test]
    fn job_checks_from_group_and_task_services() {
        let job: Job = serde_json::from_str(
            r#"{"ID":"webapp","ModifyIndex":12,"TaskGroups":[
              {"Name":"g","Services":[{"Name":"web","Provider":"nomad","Checks":[
                 {"Type":"tcp","Interval":5000000000,"Timeout":1000000000},
                 {"Type":"http","Path":"/health","Method":"GET","Interval":10000000000,
                  "Timeout":2000000000,"Header":{"host":["web.example"]}}]}],
               "Tasks":[{"Name":"t","Services":[
                 {"Name":"api","Provider":"nomad","Checks":[{"Type":"tcp","Interval":3000000000}]},
                 {"Name":"consul-only","Provider":"consul","Checks":[{"Type":"tcp"}]},
                 {"Name":"nocheck","Provider":"nomad","Checks":null}]}]}]}"#,
        )
        .expect("parses");
        let checks = job.checks();
        let web = checks["web"].clone().expect("web check");
        assert_eq!(web.kind, NomadCheckKind::Http);
        assert_eq!(web.path.as_deref(), Some("/health"));
        assert_eq!(web.method.as_deref(), Some("GET"));
        assert_eq!(web.interval, Some(Duration::from_secs(10)));
        assert_eq!(web.timeout, Some(Duration::from_secs(2)));
        assert_eq!(web.host.as_deref(), Some("web.example"));
        let api = checks["api"].clone().expect("api check");
        assert_eq!(api.kind, NomadCheckKind::Tcp);
        assert_eq!(api.timeout, None);
        assert!(!checks.contains_key("consul-only"));
        assert_eq!(checks["nocheck"], None);
    }
}
