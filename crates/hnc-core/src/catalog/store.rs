//! The catalog store (kube-runtime's reflector store): the registrations of the services the
//! connector is asked to route, keyed by (namespace, name).
//!
//! Everything here is pure `&mut self` logic with no I/O. The Nomad watcher drives it: a full
//! list replaces the whole content ([`Store::replace_all`]), a hint-driven read replaces one
//! service ([`Store::apply`]), and a failed read only marks the data stale
//! ([`Store::mark_stale`]): the store never empties itself because of an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{AllocHealth, Instance, Service, ServiceKey, Snapshot};

/// What one write changed, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.updated == 0 && self.removed == 0
    }
}

/// Whether any tag enables the connector for this registration: `<prefix>.enable=true` (the key
/// as written, the value in any case). The watcher applies it to the list's union of tags, the
/// desired model to each registration.
pub fn is_enabled<'a>(tags: impl IntoIterator<Item = &'a String>, prefix: &str) -> bool {
    tags.into_iter().any(|tag| {
        tag.split_once('=').is_some_and(|(key, value)| {
            key.strip_prefix(prefix)
                .is_some_and(|rest| rest == ".enable")
                && value.eq_ignore_ascii_case("true")
        })
    })
}

/// The catalog's writer side. Readers get [`Snapshot`]s.
#[derive(Debug)]
pub struct Store {
    tag_prefix: String,
    services: BTreeMap<ServiceKey, Arc<Service>>,
    synced: bool,
    stale: Option<String>,
    denied: bool,
    index: u64,
    /// Bumped on every change a reader can see; the watcher publishes when it moves.
    version: u64,
    check_health: BTreeMap<String, AllocHealth>,
}

impl Store {
    /// An empty, unsynced store that keeps only services tagged `<tag_prefix>.enable=true`.
    pub fn new(tag_prefix: impl Into<String>) -> Self {
        Store {
            tag_prefix: tag_prefix.into(),
            services: BTreeMap::new(),
            synced: false,
            stale: None,
            denied: false,
            index: 0,
            version: 0,
            check_health: BTreeMap::new(),
        }
    }

    pub fn tag_prefix(&self) -> &str {
        &self.tag_prefix
    }

    /// Does this service ask for the connector (the union of its instances' tags holds
    /// `<prefix>.enable=true`, as Nomad's list shows it)?
    pub fn wants(&self, service: &Service) -> bool {
        is_enabled(
            service.instances.iter().flat_map(|i| i.tags.iter()),
            &self.tag_prefix,
        )
    }

    /// A complete list: `services` becomes the whole content. Services not wanted (no enable tag,
    /// no instance) are dropped, keys absent from `services` are deleted (this is how silent
    /// deregistrations are caught), and an unchanged service keeps its `Arc`. Marks the store
    /// synced.
    pub fn replace_all(&mut self, services: BTreeMap<ServiceKey, Service>, index: u64) -> Applied {
        let mut applied = Applied::default();
        let mut old = std::mem::take(&mut self.services);
        for (key, service) in services {
            let service = normalise(service);
            if service.instances.is_empty() || !self.wants(&service) {
                continue;
            }
            let kept = match old.remove(&key) {
                Some(previous) if *previous == service => previous,
                Some(_) => {
                    applied.updated += 1;
                    Arc::new(service)
                }
                None => {
                    applied.added += 1;
                    Arc::new(service)
                }
            };
            self.services.insert(key, kept);
        }
        applied.removed = old.len();
        let changed = !applied.is_empty() || !self.synced || self.index != index;
        self.synced = true;
        self.index = index;
        if changed {
            self.version += 1;
        }
        applied
    }

    /// One service as just read: `None`, no instance, or no enable tag all mean "not in the
    /// catalog".
    pub fn apply(&mut self, key: ServiceKey, service: Option<Service>) -> Applied {
        let service = service
            .map(normalise)
            .filter(|s| !s.instances.is_empty() && self.wants(s));
        let mut applied = Applied::default();
        match service {
            None => {
                if self.services.remove(&key).is_some() {
                    applied.removed = 1;
                }
            }
            Some(service) => match self.services.get(&key) {
                Some(previous) if **previous == service => {}
                Some(_) => {
                    applied.updated = 1;
                    self.services.insert(key, Arc::new(service));
                }
                None => {
                    applied.added = 1;
                    self.services.insert(key, Arc::new(service));
                }
            },
        }
        if !applied.is_empty() {
            self.version += 1;
        }
        applied
    }

    /// The last read failed: keep the data, say why it may be out of date; `denied` when Nomad
    /// refused the token. Returns whether anything visible changed.
    pub fn mark_stale(&mut self, error: impl Into<String>, denied: bool) -> bool {
        let error = error.into();
        if self.stale.as_deref() == Some(error.as_str()) && self.denied == denied {
            return false;
        }
        self.stale = Some(error);
        self.denied = denied;
        self.version += 1;
        true
    }

    /// The allocations (among those the catalog still holds) whose Nomad check results were read,
    /// with their health: a read answer replaces what was known of them; allocations that left
    /// the catalog are forgotten. Returns whether anything visible changed.
    pub fn set_check_health(&mut self, read: BTreeMap<String, AllocHealth>) -> bool {
        let mut next = self.check_health.clone();
        next.extend(read);
        let live: std::collections::BTreeSet<&str> = self
            .services
            .values()
            .flat_map(|s| s.instances.iter().map(|i| i.alloc_id.as_str()))
            .collect();
        next.retain(|alloc, _| live.contains(alloc.as_str()));
        let changed = next != self.check_health;
        self.check_health = next;
        if changed {
            self.version += 1;
        }
        changed
    }

    /// Allocation IDs of the registrations whose job declares a check, with their namespace,
    /// sorted and unique: what a check-health read covers.
    pub fn checked_allocations(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .services
            .iter()
            .flat_map(|(key, s)| {
                s.instances
                    .iter()
                    .filter(|i| i.nomad_check.is_some())
                    .map(|i| (key.namespace.clone(), i.alloc_id.clone()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Reads succeed again.
    pub fn clear_stale(&mut self) -> bool {
        self.denied = false;
        if self.stale.take().is_some() {
            self.version += 1;
            true
        } else {
            false
        }
    }

    /// Nomad's index went backwards (restore, rebuilt cluster): forget the index. The data stays
    /// until the relist that must follow replaces it.
    pub fn reset_index(&mut self) {
        if self.index != 0 {
            self.index = 0;
            self.version += 1;
        }
    }

    pub fn get(&self, key: &ServiceKey) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    /// Changes whenever a snapshot would differ from the previous one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// An immutable view (clones `Arc`s only).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.clone(),
            synced: self.synced,
            stale: self.stale.clone(),
            denied: self.denied,
            index: self.index,
            check_health: self.check_health.clone(),
        }
    }
}

/// Instances sorted by registration ID, duplicates (same ID) dropped.
fn normalise(mut service: Service) -> Service {
    service
        .instances
        .sort_by(|a: &Instance, b: &Instance| a.id.cmp(&b.id));
    service.instances.dedup_by(|a, b| a.id == b.id);
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_instance(id: &str, tags: &[&str]) -> Instance {
        Instance {
            id: id.to_string(),
            job_id: "job".into(),
            alloc_id: format!("alloc-{id}"),
            node_id: "node".into(),
            datacenter: "dc1".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: "10.0.0.1".into(),
            port: 8080,
            create_index: 1,
            modify_index: 1,
            nomad_check: None,
        }
    }

    fn mk_service(ids: &[&str]) -> Service {
        Service {
            instances: ids
                .iter()
                .map(|id| mk_instance(id, &["haproxy.enable=true"]))
                .collect(),
        }
    }

    fn key(ns: &str, name: &str) -> ServiceKey {
        ServiceKey::new(ns, name)
    }

    #[test]
    fn enable_tag_value_is_case_insensitive_and_key_exact() {
        let t = |tags: &[&str]| {
            let tags: Vec<String> = tags.iter().map(|s| s.to_string()).collect();
            is_enabled(&tags, "haproxy")
        };
        assert!(t(&["haproxy.enable=true"]));
        assert!(t(&["x", "haproxy.enable=TRUE"]));
        assert!(t(&["haproxy.enable=True"]));
        assert!(!t(&["haproxy.enable=false"]));
        assert!(!t(&["haproxy.enable"]));
        assert!(!t(&["haproxy.enabled=true"]));
        assert!(!t(&["xhaproxy.enable=true"]));
        assert!(!t(&["haproxy.enable=true "]));
        assert!(!t(&[]));
    }

    #[test]
    fn first_full_list_syncs_and_filters_unwanted_services() {
        let mut store = Store::new("haproxy");
        assert!(!store.synced());
        let mut list = BTreeMap::new();
        list.insert(key("default", "web"), mk_service(&["b", "a"]));
        list.insert(
            key("default", "plain"),
            Service {
                instances: vec![mk_instance("p", &["other"])],
            },
        );
        list.insert(key("default", "empty"), Service::default());
        let applied = store.replace_all(list, 7);
        assert_eq!(
            applied,
            Applied {
                added: 1,
                updated: 0,
                removed: 0
            }
        );
        let snap = store.snapshot();
        assert!(snap.synced);
        assert_eq!(snap.index, 7);
        assert_eq!(snap.services.len(), 1);
        let ids: Vec<_> = snap.services[&key("default", "web")]
            .instances
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"], "instances sorted by ID");
    }

    #[test]
    fn full_list_deletes_what_it_no_longer_holds_and_keeps_unchanged_arcs() {
        let mut store = Store::new("haproxy");
        let mut list = BTreeMap::new();
        list.insert(key("default", "web"), mk_service(&["a"]));
        list.insert(key("default", "api"), mk_service(&["b"]));
        list.insert(key("prod", "web"), mk_service(&["c"]));
        store.replace_all(list, 5);
        let before = store.get(&key("default", "web")).cloned().expect("web");

        let mut list = BTreeMap::new();
        list.insert(key("default", "web"), mk_service(&["a"]));
        list.insert(key("prod", "web"), mk_service(&["c", "d"]));
        let applied = store.replace_all(list, 9);
        assert_eq!(
            applied,
            Applied {
                added: 0,
                updated: 1,
                removed: 1
            }
        );
        assert!(Arc::ptr_eq(
            &before,
            store.get(&key("default", "web")).expect("web")
        ));
        assert_eq!(store.len(), 2, "same name in two namespaces: two entries");
        assert!(store.get(&key("default", "api")).is_none());
    }

    #[test]
    fn hint_read_adds_updates_and_removes_one_service() {
        let mut store = Store::new("haproxy");
        store.replace_all(BTreeMap::new(), 1);
        let v0 = store.version();
        assert!(store.apply(key("a", "web"), Some(mk_service(&["x"]))).added == 1);
        assert!(
            store
                .apply(key("a", "web"), Some(mk_service(&["x"])))
                .is_empty()
        );
        assert!(
            store
                .apply(key("a", "web"), Some(mk_service(&["x", "y"])))
                .updated
                == 1
        );
        // Tags changed so that the enable tag is gone: the service leaves the catalog.
        let untagged = Service {
            instances: vec![mk_instance("x", &["haproxy.enable=false"])],
        };
        assert_eq!(store.apply(key("a", "web"), Some(untagged)).removed, 1);
        assert!(store.apply(key("a", "web"), None).is_empty());
        assert_eq!(store.version(), v0 + 3);
    }

    #[test]
    fn errors_mark_stale_and_never_empty_the_store() {
        let mut store = Store::new("haproxy");
        let mut list = BTreeMap::new();
        list.insert(key("default", "web"), mk_service(&["a"]));
        store.replace_all(list, 3);
        assert!(store.mark_stale("403 in namespace default", true));
        assert!(
            !store.mark_stale("403 in namespace default", true),
            "same error"
        );
        let snap = store.snapshot();
        assert_eq!(snap.stale.as_deref(), Some("403 in namespace default"));
        assert!(snap.denied);
        assert_eq!(snap.services.len(), 1, "last good data kept");
        assert!(store.clear_stale());
        assert!(!store.clear_stale());
    }

    #[test]
    fn index_reset_keeps_data_until_the_relist() {
        let mut store = Store::new("haproxy");
        let mut list = BTreeMap::new();
        list.insert(key("default", "web"), mk_service(&["a"]));
        store.replace_all(list.clone(), 100);
        store.reset_index();
        assert_eq!(store.index(), 0);
        assert_eq!(store.len(), 1);
        store.replace_all(list, 12);
        assert_eq!(store.index(), 12);
    }

    #[test]
    fn a_random_sequence_of_writes_matches_a_model() {
        use proptest::prelude::*;
        let op = (0u8..3, 0usize..4, proptest::collection::vec(0u8..4, 0..3));
        proptest!(|(ops in proptest::collection::vec(op, 1..40))| {
            let names = ["a", "b", "c", "d"];
            let mut store = Store::new("haproxy");
            let mut model: BTreeMap<ServiceKey, Vec<String>> = BTreeMap::new();
            for (kind, n, ids) in ops {
                let k = key("ns", names[n]);
                let ids: Vec<String> = ids.iter().map(|i| format!("i{i}")).collect();
                let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                match kind {
                    0 => {
                        store.apply(k.clone(), Some(mk_service(&id_refs)));
                        let mut sorted = ids.clone();
                        sorted.sort();
                        sorted.dedup();
                        if sorted.is_empty() { model.remove(&k); } else { model.insert(k, sorted); }
                    }
                    1 => {
                        store.apply(k.clone(), None);
                        model.remove(&k);
                    }
                    _ => {
                        // A full list holding only this service.
                        let mut list = BTreeMap::new();
                        list.insert(k.clone(), mk_service(&id_refs));
                        store.replace_all(list, 1);
                        let mut sorted = ids.clone();
                        sorted.sort();
                        sorted.dedup();
                        model.clear();
                        if !sorted.is_empty() { model.insert(k, sorted); }
                    }
                }
                let seen: BTreeMap<ServiceKey, Vec<String>> = store
                    .snapshot()
                    .services
                    .iter()
                    .map(|(k, s)| (k.clone(), s.instances.iter().map(|i| i.id.clone()).collect()))
                    .collect();
                prop_assert_eq!(&seen, &model);
            }
        });
    }
}
