//! The watcher's machine, driven by synthetic inputs and a synthetic clock: every behaviour of
//! the watcher, without Nomad, tasks or time passing. This file holds the inputs, the harness
//! and its helpers; [`catalog`] what the catalog becomes, [`timing`] when things happen.

mod catalog;
mod checks;
mod timing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::machine::{Command, Input, ListResult, Machine, ReadResult, Stat, StreamEnd};
use super::settings::{Tuning, WatcherSettings};
use crate::catalog::{Instance, Service, ServiceKey, Snapshot};
use crate::config::Namespaces;
use crate::nomad::client::{Indexed, NomadError};
use crate::nomad::wire::{Event, NamespaceServices, ServiceStub};

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const RESYNC: Duration = Duration::from_secs(10);
pub(super) const MIN: Duration = Duration::from_millis(100);
pub(super) const MAX: Duration = Duration::from_millis(1600);
pub(super) const GRACE: Duration = Duration::from_millis(200);
pub(super) const STARTUP: Duration = Duration::from_millis(500);
pub(super) const STABLE: Duration = Duration::from_secs(1);
pub(super) const CHECK_POLL: Duration = Duration::from_secs(3);

pub(super) fn settings(namespaces: Namespaces) -> WatcherSettings {
    WatcherSettings {
        namespaces,
        namespace_deny: vec!["secret".into()],
        tag_prefix: "haproxy".into(),
        resync_interval: RESYNC,
        gate_on_checks: false,
        tuning: Tuning {
            heartbeat_timeout: Duration::from_secs(5),
            backoff_min: MIN,
            backoff_max: MAX,
            stream_stable_after: STABLE,
            explain_grace: GRACE,
            startup_stream_wait: STARTUP,
            read_concurrency: 8,
            check_poll: CHECK_POLL,
            check_reads_max: 2,
        },
    }
}

pub(super) fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

/// A `/v1/services` answer: `(namespace, [(name, enabled)])`.
pub(super) fn page(index: u64, namespaces: &[(&str, &[(&str, bool)])]) -> ListResult {
    let data = namespaces
        .iter()
        .map(|(ns, names)| NamespaceServices {
            namespace: ns.to_string(),
            services: Some(
                names
                    .iter()
                    .map(|(name, enabled)| ServiceStub {
                        service_name: name.to_string(),
                        tags: Some(vec![format!("haproxy.enable={enabled}")]),
                    })
                    .collect(),
            ),
        })
        .collect();
    Ok(Indexed { index, data })
}

pub(super) fn service(id: &str) -> Service {
    Service {
        instances: vec![Instance {
            id: id.into(),
            job_id: "job".into(),
            alloc_id: id.into(),
            node_id: "node".into(),
            datacenter: "dc1".into(),
            tags: vec!["haproxy.enable=true".into()],
            address: "10.0.0.1".into(),
            port: 8080,
            create_index: 1,
            modify_index: 1,
            nomad_check: None,
        }],
    }
}

pub(super) fn read(k: &ServiceKey) -> (ServiceKey, ReadResult) {
    (k.clone(), Ok(Some(service(&k.name))))
}

pub(super) fn outage() -> NomadError {
    NomadError::Status {
        what: "the service list".into(),
        status: 500,
        message: "No cluster leader".into(),
    }
}

pub(super) fn denied(namespace: &str) -> NomadError {
    NomadError::PermissionDenied {
        what: "the service list".into(),
        namespace: namespace.into(),
        status: 403,
        message: "Permission denied".into(),
    }
}

pub(super) fn event(ns: &str, name: &str) -> Event {
    Event {
        topic: "Service".into(),
        kind: "ServiceRegistration".into(),
        key: format!("{ns}/{name}"),
        namespace: ns.into(),
        filter_keys: Some(vec!["job".into(), name.into()]),
        ..Event::default()
    }
}

pub(super) fn batch(scope: &str, index: u64, events: Vec<Event>) -> Input {
    Input::StreamBatch {
        scope: scope.into(),
        index,
        events,
    }
}

pub(super) fn polled(scope: &str, sent: u64, result: ListResult) -> Input {
    Input::Polled {
        scope: scope.into(),
        sent,
        result,
    }
}

pub(super) fn lists(commands: &[Command]) -> Vec<Vec<String>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::List { scopes } => Some(scopes.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn reads(commands: &[Command]) -> Vec<Vec<ServiceKey>> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Read { keys, .. } => Some(keys.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn published(commands: &[Command]) -> Option<Arc<Snapshot>> {
    commands.iter().rev().find_map(|c| match c {
        Command::Publish(s) => Some(s.clone()),
        _ => None,
    })
}

pub(super) fn opened(commands: &[Command]) -> Vec<(String, u64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::OpenStream { scope, index } => Some((scope.clone(), *index)),
            _ => None,
        })
        .collect()
}

pub(super) fn polls(commands: &[Command]) -> Vec<(String, u64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Poll { scope, index, .. } => Some((scope.clone(), *index)),
            _ => None,
        })
        .collect()
}

pub(super) fn has(commands: &[Command], wanted: &Command) -> bool {
    commands.contains(wanted)
}

/// A machine and its synthetic clock.
pub(super) struct Harness {
    pub(super) m: Machine,
    pub(super) now: Instant,
}

impl Harness {
    pub(super) fn new(namespaces: Namespaces) -> Harness {
        let now = Instant::now();
        Harness {
            m: Machine::new(settings(namespaces), now, 7),
            now,
        }
    }

    pub(super) fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    pub(super) fn step(&mut self, input: Input) -> Vec<Command> {
        self.m.step(input, self.now)
    }

    /// As the executor does: a batch of inputs, then a tick.
    pub(super) fn feed(&mut self, inputs: Vec<Input>) -> Vec<Command> {
        let mut out = Vec::new();
        for input in inputs {
            out.extend(self.step(input));
        }
        out.extend(self.step(Input::Tick));
        out
    }

    pub(super) fn tick(&mut self) -> Vec<Command> {
        self.feed(Vec::new())
    }

    /// Runs one relist that is due now to its end: the lists answer `listed` and every read
    /// finds its service.
    pub(super) fn relist(&mut self, listed: Vec<(String, ListResult)>) -> Vec<Command> {
        let mut out = self.tick();
        assert_eq!(lists(&out).len(), 1, "a relist starts: {out:?}");
        let answer = self.feed(vec![Input::Listed(listed)]);
        out.extend(answer.iter().cloned());
        if let Some(keys) = reads(&answer).pop() {
            out.extend(self.feed(vec![Input::Read(keys.iter().map(read).collect())]));
        }
        out
    }

    /// A machine watching `*`, synced at `index` with these enabled services.
    pub(super) fn synced(index: u64, services: &[(&str, &str)]) -> Harness {
        let mut h = Harness::new(Namespaces::All);
        h.tick();
        h.step(Input::StreamUp { scope: "*".into() });
        let mut by_ns: Vec<(&str, Vec<(&str, bool)>)> = Vec::new();
        for (ns, name) in services {
            match by_ns.iter_mut().find(|(n, _)| n == ns) {
                Some((_, names)) => names.push((name, true)),
                None => by_ns.push((ns, vec![(name, true)])),
            }
        }
        let namespaces: Vec<(&str, &[(&str, bool)])> = by_ns
            .iter()
            .map(|(ns, names)| (*ns, names.as_slice()))
            .collect();
        let out = h.relist(vec![("*".into(), page(index, &namespaces))]);
        let snapshot = published(&out).expect("published");
        assert!(snapshot.synced);
        assert_eq!(snapshot.services.len(), services.len());
        h
    }
}
