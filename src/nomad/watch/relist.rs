//! The machine's work: a full relist in phases (list every scope, confirm namespaces that
//! vanished from the `*` list, read every enabled service, swap the result in) and the reads
//! hinted by events.
//!
//! A failed read keeps the last good data and marks the catalog stale, and the relist is retried
//! with backoff. With `namespace=*`, Nomad silently leaves out the namespaces the token cannot
//! read (CONTRACTS §1.3), so a namespace whose services all vanished is read alone before its
//! removal is believed: a 403 there keeps its services and marks the catalog stale (a denial).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::machine::{Command, ListResult, Machine, ReadResult, SUSPICIOUS_EMPTY, Stat, Work};
use crate::catalog::{Service, ServiceKey, is_enabled};
use crate::nomad::client::NomadError;

/// A relist in flight.
#[derive(Debug)]
pub(crate) struct Relist {
    phase: Phase,
    /// The catalog held data when the relist started (an empty answer is then suspicious).
    had_data: bool,
    errors: Vec<String>,
    denied: bool,
    /// The newest index of the scopes listed.
    index: Option<u64>,
    /// The catalog being built.
    next: BTreeMap<ServiceKey, Service>,
    to_read: Vec<ServiceKey>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the list of every scope.
    Listing,
    /// Waiting for the lists of the namespaces that vanished from the `*` list.
    Confirming,
    /// Waiting for the reads of the enabled services.
    Reading,
}

impl Machine {
    /// Starts a full relist: every scope is listed.
    pub(super) fn start_relist(&mut self, out: &mut Vec<Command>) {
        // This relist serves every request made so far: a stored request would start a second,
        // redundant one right after it.
        out.push(Command::ConsumeRelistRequests);
        self.relist_due = None;
        self.generation += 1;
        out.push(Command::Stat(Stat::FullRelist));
        self.work = Some(Work::Relist(Relist {
            phase: Phase::Listing,
            had_data: self.full_read_index > 0 || !self.store.is_empty(),
            errors: Vec::new(),
            denied: false,
            index: None,
            next: BTreeMap::new(),
            to_read: Vec::new(),
        }));
        out.push(Command::List {
            scopes: self.scopes.iter().map(|s| s.name.clone()).collect(),
        });
    }

    /// The lists of a relist's listing or confirming phase.
    pub(super) fn relist_listed(
        &mut self,
        results: Vec<(String, ListResult)>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let mut run = match self.work.take() {
            Some(Work::Relist(run)) if run.phase != Phase::Reading => run,
            other => {
                debug!("a list answer nothing waits for: ignored");
                self.work = other;
                return;
            }
        };
        let mut vanished = BTreeSet::new();
        for (scope, result) in results {
            match run.phase {
                Phase::Listing => vanished.extend(self.relist_scope(&mut run, &scope, result)),
                _ => self.confirm_vanished(&mut run, &scope, result),
            }
        }
        if !vanished.is_empty() {
            run.phase = Phase::Confirming;
            self.work = Some(Work::Relist(run));
            out.push(Command::List {
                scopes: vanished.into_iter().collect(),
            });
            return;
        }
        if run.to_read.is_empty() {
            self.finish_relist(run, now, out);
            return;
        }
        run.phase = Phase::Reading;
        let keys = std::mem::take(&mut run.to_read);
        self.work = Some(Work::Relist(run));
        out.push(Command::Read {
            keys,
            generation: self.generation,
        });
    }

    /// One scope's list in a relist; returns the namespaces that vanished from a `*` list.
    fn relist_scope(&self, run: &mut Relist, scope: &str, result: ListResult) -> BTreeSet<String> {
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                if e.is_permission_denied() {
                    warn!(namespace = %scope, error = %e, "cannot list services; keeping the last good data");
                } else {
                    warn!(namespace = %scope, error = %e, "service list failed; keeping the last good data");
                }
                run.denied |= e.is_permission_denied();
                run.errors.push(e.to_string());
                self.keep_scope(scope, &mut run.next);
                return BTreeSet::new();
            }
        };
        let mut names = 0;
        for ns in &page.data {
            if !self.settings.watches(&ns.namespace) {
                continue;
            }
            for stub in ns.services.as_deref().unwrap_or_default() {
                names += 1;
                if is_enabled(stub.tags(), &self.settings.tag_prefix) {
                    run.to_read
                        .push(ServiceKey::new(&ns.namespace, &stub.service_name));
                }
            }
        }
        if page.index == 0 && names == 0 && run.had_data {
            warn!(namespace = %scope, "{SUSPICIOUS_EMPTY}");
            run.errors.push(SUSPICIOUS_EMPTY.to_string());
            run.denied = true;
            self.keep_scope(scope, &mut run.next);
            return BTreeSet::new();
        }
        run.index = Some(run.index.map_or(page.index, |i| i.max(page.index)));
        if scope != "*" {
            return BTreeSet::new();
        }
        // `*` silently leaves out the namespaces the token cannot read (CONTRACTS §1.3): a
        // namespace whose services all vanished in one list is confirmed with a read of that
        // namespace alone.
        let listed: BTreeSet<&str> = page.data.iter().map(|ns| ns.namespace.as_str()).collect();
        self.store
            .keys()
            .map(|k| k.namespace.clone())
            .filter(|ns| !listed.contains(ns.as_str()))
            .collect()
    }

    /// A namespace whose services all vanished from the `*` list, read alone: is it really
    /// empty (`[]`), or did the token lose `read-job` on it (403)? Hinted reads need no such
    /// check: they always name their namespace, so a lost permission is a 403 there.
    fn confirm_vanished(&self, run: &mut Relist, namespace: &str, result: ListResult) {
        match result {
            Ok(page) => {
                let keys: Vec<ServiceKey> = page
                    .data
                    .iter()
                    .filter(|ns| ns.namespace == namespace)
                    .flat_map(|ns| ns.services.as_deref().unwrap_or_default())
                    .filter(|stub| is_enabled(stub.tags(), &self.settings.tag_prefix))
                    .map(|stub| ServiceKey::new(namespace, &stub.service_name))
                    .collect();
                if keys.is_empty() {
                    info!(
                        %namespace,
                        "every service of the namespace is gone, and reading it alone confirms it: removing them"
                    );
                } else {
                    debug!(%namespace, services = keys.len(), "namespace missing from the `*` list but readable alone");
                }
                run.to_read.extend(keys);
            }
            Err(e) => {
                if e.is_permission_denied() {
                    warn!(
                        %namespace,
                        error = %e,
                        capability = "read-job",
                        "namespace vanished from the `*` list and Nomad refuses to read it: the token lost `read-job` on it; keeping its services and holding every removal"
                    );
                } else {
                    warn!(
                        %namespace,
                        error = %e,
                        "namespace vanished from the `*` list and could not be read alone; keeping its services"
                    );
                }
                run.denied |= e.is_permission_denied();
                run.errors.push(e.to_string());
                self.keep_scope(namespace, &mut run.next);
            }
        }
    }

    /// The reads of a relist, or of the services named by events.
    pub(super) fn read_done(
        &mut self,
        results: Vec<(ServiceKey, ReadResult)>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        match self.work.take() {
            Some(Work::Relist(mut run)) if run.phase == Phase::Reading => {
                for (key, result) in results {
                    match result {
                        Ok(Some(service)) => {
                            run.next.insert(key, service);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            log_read_error(&key, &e);
                            run.denied |= e.is_permission_denied();
                            run.errors.push(e.to_string());
                            if let Some(previous) = self.store.get(&key) {
                                run.next.insert(key, (**previous).clone());
                            }
                        }
                    }
                }
                self.finish_relist(run, now, out);
            }
            Some(Work::HintedRead) => self.hinted_read_done(results, now, out),
            other => {
                debug!("a read answer nothing waits for: ignored");
                self.work = other;
            }
        }
    }

    /// Swaps a relist's catalog in. Scopes and services whose read failed keep their last good
    /// data.
    fn finish_relist(&mut self, run: Relist, now: Instant, out: &mut Vec<Command>) {
        out.push(Command::ForgetJobs {
            before: self.generation.saturating_sub(1),
        });
        let Relist {
            mut errors,
            denied,
            index,
            next,
            ..
        } = run;
        let clean = errors.is_empty() && index.is_some();
        if let Some(index) = index {
            if self.full_read_index > 0 && index < self.full_read_index {
                warn!(
                    returned = index,
                    previous = self.full_read_index,
                    "Nomad's service index went backwards (restore or another cluster): replacing the catalog"
                );
                self.reset_indexes();
                self.latest_list_index = index;
            }
            let applied = self.store.replace_all(next, index);
            if !applied.is_empty() {
                info!(
                    added = applied.added,
                    updated = applied.updated,
                    removed = applied.removed,
                    index,
                    "catalog relisted"
                );
            }
            self.full_read_index = index;
            self.latest_list_index = self.latest_list_index.max(index);
            if self.explain.is_some_and(|(target, _)| target <= index) {
                self.explain = None;
            }
            self.next_resync = now + self.settings.resync_interval;
        }
        if errors.is_empty() {
            self.store.clear_stale();
            out.push(Command::Stat(Stat::LastError(None)));
            self.relist_backoff = self.backoff();
        } else {
            errors.dedup();
            let error = errors.join("; ");
            out.push(Command::Stat(Stat::LastError(Some(error.clone()))));
            self.store.mark_stale(error, denied);
            self.relist_due = Some(now + self.next_relist_delay());
        }
        self.publish(out);
        if clean {
            // After the publish: whoever waits for a relist then reads its catalog.
            self.clean_relists += 1;
            out.push(Command::CountRelists(self.clean_relists));
        }
        if self.stopping {
            out.push(Command::Stop);
        }
    }

    /// Applies the re-reads of the services named by events, one read each however many events
    /// named them.
    fn hinted_read_done(
        &mut self,
        results: Vec<(ServiceKey, ReadResult)>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let mut errors = Vec::new();
        let mut denied = false;
        for (key, result) in results {
            match result {
                Ok(service) => {
                    let applied = self.store.apply(key.clone(), service);
                    if !applied.is_empty() {
                        debug!(namespace = %key.namespace, service = %key.name, ?applied, "service re-read");
                    }
                }
                Err(e) => {
                    log_read_error(&key, &e);
                    denied |= e.is_permission_denied();
                    errors.push(e.to_string());
                }
            }
        }
        if !errors.is_empty() {
            let error = errors.join("; ");
            out.push(Command::Stat(Stat::LastError(Some(error.clone()))));
            self.store.mark_stale(error, denied);
            if self.relist_due.is_none() {
                self.relist_due = Some(now + self.next_relist_delay());
            }
        }
        self.publish(out);
        if self.stopping {
            out.push(Command::Stop);
        }
    }

    fn next_relist_delay(&mut self) -> std::time::Duration {
        self.relist_backoff
            .next()
            .unwrap_or(self.settings.tuning.backoff_max)
    }
}

fn log_read_error(key: &ServiceKey, e: &NomadError) {
    if e.is_permission_denied() {
        warn!(namespace = %key.namespace, service = %key.name, error = %e, "cannot read service; keeping the last good data");
    } else {
        warn!(namespace = %key.namespace, service = %key.name, error = %e, "service read failed; keeping the last good data");
    }
}
