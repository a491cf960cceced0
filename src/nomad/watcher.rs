//! The Nomad watcher: keeps the catalog [`Store`] equal to Nomad's service registrations.
//!
//! Events are hints, reads are the truth (CONTRACTS §1.5). Three inputs feed one loop:
//! - the **event stream** (one task per scope): every Service event means "re-read that
//!   service"; a burst for one service costs one read. Every (re)connect asks for a full relist,
//!   because Nomad silently skips ahead when the resume index has left its buffer;
//! - a **blocking list** of `/v1/services` (one task per scope) with the table-wide index, waiting
//!   up to the resync interval: it tells whether anything changed at all. An index that moved
//!   without events explaining it (after a short grace) causes a relist; an index that went
//!   backwards resets the indexes and relists;
//! - the **resync timer**: every interval, if the index moved since the last full read, re-read
//!   everything. An idle cluster therefore costs one list request per interval and scope.
//!
//! A full relist is `/v1/services` plus one read per enabled service, swapped into the store in
//! one step. A failed read keeps the last good data and marks the catalog stale, and the relist
//! is retried with backoff. With `namespace=*`, Nomad silently leaves out the namespaces the token
//! cannot read, so a namespace whose services all vanished is read alone before its removal is
//! believed: a 403 there keeps its services and marks the catalog stale (a denial).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use super::client::{Blocking, Indexed, MAX_BLOCKING_WAIT, NomadClient, NomadError};
use super::stats::NomadStats;
use super::stream::{Frame, LineBuffer, Resume, parse_line};
use super::wire::NamespaceServices;
use crate::catalog::{NomadCheck, Service, ServiceKey, Snapshot, Store, is_enabled};
use crate::config::{Namespaces, NomadConfig};

/// Timings that production leaves at their defaults and tests shorten.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// No byte on the stream for this long ⇒ reconnect. Nomad sends `{}` every 30 s.
    pub heartbeat_timeout: Duration,
    /// First retry delay after a failure (stream, list or read); doubles with jitter.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// A stream connection that lived this long resets the stream's backoff.
    pub stream_stable_after: Duration,
    /// How long an index move may wait for the events that explain it before a relist.
    pub explain_grace: Duration,
    /// At start, how long the first relist waits for the streams to subscribe (so one relist
    /// serves both the start and the first connect).
    pub startup_stream_wait: Duration,
    /// Service reads in flight at once during a relist.
    pub read_concurrency: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat_timeout: Duration::from_secs(45),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stream_stable_after: Duration::from_secs(30),
            explain_grace: Duration::from_secs(2),
            startup_stream_wait: Duration::from_secs(2),
            read_concurrency: 8,
        }
    }
}

impl Tuning {
    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.backoff_min)
            .with_max_delay(self.backoff_max)
            .without_max_times()
            .build()
    }
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatcherSettings {
    pub namespaces: Namespaces,
    pub namespace_deny: Vec<String>,
    pub tag_prefix: String,
    pub resync_interval: Duration,
    pub tuning: Tuning,
}

impl WatcherSettings {
    pub fn from_config(config: &NomadConfig) -> Self {
        WatcherSettings {
            namespaces: config.namespaces.clone(),
            namespace_deny: config.namespace_deny.clone(),
            tag_prefix: config.tag_prefix.clone(),
            resync_interval: config.resync_interval,
            tuning: Tuning::default(),
        }
    }

    /// The `namespace` values to list and subscribe with: `*`, or each listed namespace that is
    /// not denied.
    fn scopes(&self) -> Vec<String> {
        match &self.namespaces {
            Namespaces::All => vec!["*".to_string()],
            Namespaces::List(list) => list
                .iter()
                .filter(|n| !self.namespace_deny.contains(n))
                .cloned()
                .collect(),
        }
    }

    fn watches(&self, namespace: &str) -> bool {
        !self.namespace_deny.iter().any(|n| n == namespace)
            && match &self.namespaces {
                Namespaces::All => true,
                Namespaces::List(list) => list.iter().any(|n| n == namespace),
            }
    }

    fn scope_covers(scope: &str, namespace: &str) -> bool {
        scope == "*" || scope == namespace
    }
}

/// A running watcher. Dropping it stops its tasks.
pub struct Watcher {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    relists: watch::Receiver<u64>,
    relist_request: Arc<Notify>,
    stats: Arc<NomadStats>,
    shutdown: watch::Sender<bool>,
    main: Option<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching Nomad through `client` (the watcher's stats are the client's). Must be
    /// called inside a Tokio runtime.
    pub fn spawn(client: NomadClient, settings: WatcherSettings) -> Watcher {
        let stats = client.stats().clone();
        let store = Store::new(settings.tag_prefix.clone());
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(store.snapshot()));
        let (relists_tx, relists) = watch::channel(0u64);
        let relist_request = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        let (epoch, _) = watch::channel(0u64);
        let floor = Arc::new(AtomicU64::new(0));
        let settings = Arc::new(settings);

        let mut helpers = Vec::new();
        let wait = settings.resync_interval.min(MAX_BLOCKING_WAIT);
        for scope in settings.scopes() {
            let stream = StreamTask {
                client: client.clone(),
                scope: scope.clone(),
                settings: settings.clone(),
                tx: input_tx.clone(),
                floor: floor.clone(),
                epoch: epoch.subscribe(),
            };
            let span = info_span!("nomad_event_stream", namespace = %scope);
            helpers.push(tokio::spawn(stream.run().instrument(span)));
            let span = info_span!("nomad_service_list", namespace = %scope);
            helpers.push(tokio::spawn(
                poll_list(
                    client.clone(),
                    scope,
                    wait,
                    settings.tuning.clone(),
                    input_tx.clone(),
                )
                .instrument(span),
            ));
        }
        drop(input_tx);

        let now = Instant::now();
        let core = Core {
            reader: Arc::new(Reader {
                client: client.clone(),
                prefix: settings.tag_prefix.clone(),
                jobs: Mutex::new(HashMap::new()),
            }),
            client,
            store,
            snapshot: snapshot_tx,
            published: 0,
            stats: stats.clone(),
            floor,
            epoch,
            full_read_index: 0,
            latest_list_index: 0,
            seen_event_index: 0,
            relist_due: Some(now + settings.tuning.startup_stream_wait),
            relist_backoff: settings.tuning.backoff(),
            explain: None,
            next_resync: now + settings.resync_interval,
            pending: BTreeSet::new(),
            generation: 0,
            relists: relists_tx,
            relist_request: relist_request.clone(),
            settings,
        };
        let main = tokio::spawn(
            core.run(input_rx, shutdown_rx)
                .instrument(info_span!("nomad_watcher")),
        );
        Watcher {
            snapshot,
            relists,
            relist_request,
            stats,
            shutdown,
            main: Some(main),
            helpers,
        }
    }

    /// The catalog: the current snapshot now, and a notification on every change.
    pub fn snapshot(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn stats(&self) -> Arc<NomadStats> {
        self.stats.clone()
    }

    /// How many full relists have completed without any error (every scope listed, every
    /// enabled service read), and a notification when one more has. The mass-delete guard
    /// waits for one after a mass removal first shows.
    pub fn relists(&self) -> watch::Receiver<u64> {
        self.relists.clone()
    }

    /// Something that asks the watcher for a full relist as soon as possible (requests made
    /// before it starts one are served by that one).
    pub fn relist_requester(&self) -> RelistRequester {
        RelistRequester(self.relist_request.clone())
    }

    /// Stops the helper tasks at once and the loop after the step it is in (a relist or read in
    /// progress completes first; the store is never left half-written).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for helper in self.helpers.drain(..) {
            helper.abort();
        }
        if let Some(main) = self.main.take() {
            let _ = main.await;
        }
    }
}

/// Asks a [`Watcher`] for a fresh full relist.
#[derive(Clone, Debug)]
pub struct RelistRequester(Arc<Notify>);

impl RelistRequester {
    pub fn request(&self) {
        self.0.notify_one();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for helper in &self.helpers {
            helper.abort();
        }
        if let Some(main) = &self.main {
            main.abort();
        }
    }
}

/// What the helper tasks tell the loop.
#[derive(Debug)]
enum Input {
    /// A blocking list returned (or failed).
    Listed {
        scope: String,
        sent: u64,
        result: Result<Indexed<Vec<NamespaceServices>>, NomadError>,
    },
    /// A stream subscribed (its first line arrived).
    StreamUp { scope: String },
    /// A stream ended; it reconnects by itself.
    StreamDown { scope: String },
    /// New events up to `index`, about these watched services.
    Hints {
        index: u64,
        keys: BTreeSet<ServiceKey>,
    },
}

/// The loop's state: the store plus what is known about Nomad's indexes.
struct Core {
    client: NomadClient,
    settings: Arc<WatcherSettings>,
    reader: Arc<Reader>,
    store: Store,
    snapshot: watch::Sender<Arc<Snapshot>>,
    published: u64,
    stats: Arc<NomadStats>,
    /// The index of the last full relist, shared with the streams (nothing older needs replay).
    floor: Arc<AtomicU64>,
    /// Bumped when Nomad's index went backwards: streams forget their resume index.
    epoch: watch::Sender<u64>,
    /// List index of the last full relist (0: none yet, or reset).
    full_read_index: u64,
    /// Newest index any blocking list returned.
    latest_list_index: u64,
    /// Newest event batch index any stream delivered.
    seen_event_index: u64,
    relist_due: Option<Instant>,
    relist_backoff: ExponentialBackoff,
    /// An unexplained list index and when to check it again.
    explain: Option<(u64, Instant)>,
    next_resync: Instant,
    /// Services to re-read because of events.
    pending: BTreeSet<ServiceKey>,
    /// Relist generation: job definitions are re-fetched once per relist.
    generation: u64,
    /// Count of relists completed without error.
    relists: watch::Sender<u64>,
    /// Relists asked for from outside (the controller, for a held mass removal).
    relist_request: Arc<Notify>,
}

const SUSPICIOUS_EMPTY: &str = "Nomad listed no services at index 0 after having listed some: the token can probably read no namespace any more (it needs `read-job`); keeping the last good data";

impl Core {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let relist_request = self.relist_request.clone();
        loop {
            let now = Instant::now();
            if self.relist_due.is_some_and(|due| due <= now) {
                self.relist().await;
                continue;
            }
            if let Some((target, at)) = self.explain
                && at <= now
            {
                self.explain = None;
                if self.seen_event_index < target && self.full_read_index < target {
                    debug!(
                        index = target,
                        events_up_to = self.seen_event_index,
                        "index moved without events explaining it: relisting"
                    );
                    self.relist_due = Some(now);
                }
                continue;
            }
            if self.next_resync <= now {
                self.next_resync = now + self.settings.resync_interval;
                if self.store.synced() && self.latest_list_index != self.full_read_index {
                    debug!(
                        index = self.latest_list_index,
                        last_full_read = self.full_read_index,
                        "periodic resync: index moved since the last full read"
                    );
                    self.relist_due = Some(now);
                }
                continue;
            }
            if !self.pending.is_empty() {
                self.read_hinted().await;
                continue;
            }
            let mut deadline = self.next_resync;
            if let Some(due) = self.relist_due {
                deadline = deadline.min(due);
            }
            if let Some((_, at)) = self.explain {
                deadline = deadline.min(at);
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.handle(input);
                    // Coalesce: take everything already queued before reading anything.
                    while let Ok(input) = rx.try_recv() {
                        self.handle(input);
                    }
                }
                () = relist_request.notified() => {
                    debug!("full relist requested");
                    self.relist_due = Some(Instant::now());
                }
                () = sleep_until(deadline) => {}
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Listed {
                scope,
                sent,
                result: Ok(page),
            } => self.listed(&scope, sent, page, now),
            Input::Listed {
                scope,
                result: Err(e),
                ..
            } => {
                if e.is_permission_denied() {
                    warn!(namespace = %scope, error = %e, "cannot list services");
                } else {
                    warn!(namespace = %scope, error = %e, "service list failed; retrying");
                }
                self.stats.set_last_error(Some(e.to_string()));
                self.store
                    .mark_stale(e.to_string(), e.is_permission_denied());
                self.publish();
            }
            Input::StreamUp { scope } => {
                debug!(namespace = %scope, "event stream subscribed: full relist");
                self.relist_due = Some(now);
            }
            Input::StreamDown { scope } => {
                debug!(namespace = %scope, "event stream down");
                if !self.store.synced() {
                    self.relist_due = Some(now);
                }
            }
            Input::Hints { index, keys } => {
                self.seen_event_index = self.seen_event_index.max(index);
                let relist_now = self.relist_due.is_some_and(|due| due <= now);
                if relist_now || !self.store.synced() || index <= self.full_read_index {
                    // The coming (or just finished) full relist covers these.
                    return;
                }
                self.pending.extend(keys);
            }
        }
    }

    fn listed(
        &mut self,
        scope: &str,
        sent: u64,
        page: Indexed<Vec<NamespaceServices>>,
        now: Instant,
    ) {
        let watched_names = page
            .data
            .iter()
            .filter(|ns| self.settings.watches(&ns.namespace))
            .map(|ns| ns.services.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
        if page.index == 0
            && watched_names == 0
            && (self.full_read_index > 0 || !self.store.is_empty())
        {
            warn!(namespace = %scope, "{SUSPICIOUS_EMPTY}");
            self.stats
                .set_last_error(Some(SUSPICIOUS_EMPTY.to_string()));
            // With `namespace=*`, this is how Nomad answers a token that can read no namespace
            // (CONTRACTS §1.9): a denial, not an outage.
            self.store.mark_stale(SUSPICIOUS_EMPTY, true);
            self.publish();
            return;
        }
        let backwards = (sent > 1 && page.index < sent)
            || (self.full_read_index > 0 && page.index < self.full_read_index);
        if backwards {
            warn!(
                namespace = %scope,
                sent,
                returned = page.index,
                "Nomad's service index went backwards (restore or another cluster): resetting and relisting"
            );
            self.reset_indexes();
            self.latest_list_index = page.index;
            self.relist_due = Some(now);
            return;
        }
        self.latest_list_index = self.latest_list_index.max(page.index);
        self.stats.set_last_index(self.latest_list_index);
        if !self.store.synced() || self.relist_due.is_some_and(|due| due <= now) {
            return;
        }
        if self.store.stale().is_some() {
            // The list works again: a relist can clear the stale mark.
            if self.relist_due.is_none() {
                self.relist_due = Some(now);
            }
            return;
        }
        if page.index > self.full_read_index && page.index > self.seen_event_index {
            let at = self
                .explain
                .map_or(now + self.settings.tuning.explain_grace, |(_, at)| at);
            let target = self.explain.map_or(page.index, |(t, _)| t.max(page.index));
            self.explain = Some((target, at));
        }
    }

    fn reset_indexes(&mut self) {
        self.full_read_index = 0;
        self.seen_event_index = 0;
        self.floor.store(0, Ordering::Relaxed);
        self.epoch.send_modify(|e| *e += 1);
        self.store.reset_index();
        self.explain = None;
    }

    /// Lists every scope and reads every enabled service, then swaps the result in. Scopes and
    /// services whose read failed keep their last good data.
    async fn relist(&mut self) {
        // This relist serves every request made so far: a stored request permit would start a
        // second, redundant one right after it.
        let _ = futures::FutureExt::now_or_never(self.relist_request.notified());
        self.relist_due = None;
        self.generation += 1;
        self.stats.record_full_relist();
        let had_data = self.full_read_index > 0 || !self.store.is_empty();
        let mut errors: Vec<String> = Vec::new();
        let mut denied = false;
        let mut index: Option<u64> = None;
        let mut next: BTreeMap<ServiceKey, Service> = BTreeMap::new();
        let mut to_read: Vec<ServiceKey> = Vec::new();
        for scope in self.settings.scopes() {
            match self.client.list_services(&scope, None).await {
                Ok(page) => {
                    let mut names = 0;
                    for ns in &page.data {
                        if !self.settings.watches(&ns.namespace) {
                            continue;
                        }
                        for stub in ns.services.as_deref().unwrap_or_default() {
                            names += 1;
                            if is_enabled(stub.tags(), &self.settings.tag_prefix) {
                                to_read.push(ServiceKey::new(&ns.namespace, &stub.service_name));
                            }
                        }
                    }
                    if page.index == 0 && names == 0 && had_data {
                        warn!(namespace = %scope, "{SUSPICIOUS_EMPTY}");
                        errors.push(SUSPICIOUS_EMPTY.to_string());
                        denied = true;
                        self.keep_scope(&scope, &mut next);
                        continue;
                    }
                    index = Some(index.map_or(page.index, |i: u64| i.max(page.index)));
                    if scope == "*" {
                        // `*` silently leaves out the namespaces the token cannot read
                        // (CONTRACTS §1.3): a namespace whose services all vanished in one
                        // list is confirmed with a read of that namespace alone.
                        let listed: BTreeSet<&str> =
                            page.data.iter().map(|ns| ns.namespace.as_str()).collect();
                        let vanished: BTreeSet<String> = self
                            .store
                            .keys()
                            .map(|k| k.namespace.clone())
                            .filter(|ns| !listed.contains(ns.as_str()))
                            .collect();
                        for namespace in vanished {
                            match self.confirm_vanished(&namespace).await {
                                Ok(keys) => to_read.extend(keys),
                                Err(e) => {
                                    denied |= e.is_permission_denied();
                                    errors.push(e.to_string());
                                    self.keep_scope(&namespace, &mut next);
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    if e.is_permission_denied() {
                        warn!(namespace = %scope, error = %e, "cannot list services; keeping the last good data");
                    } else {
                        warn!(namespace = %scope, error = %e, "service list failed; keeping the last good data");
                    }
                    denied |= e.is_permission_denied();
                    errors.push(e.to_string());
                    self.keep_scope(&scope, &mut next);
                }
            }
        }

        let results = self.read_all(to_read).await;
        for (key, result) in results {
            match result {
                Ok(Some(service)) => {
                    next.insert(key, service);
                }
                Ok(None) => {}
                Err(e) => {
                    log_read_error(&key, &e);
                    denied |= e.is_permission_denied();
                    errors.push(e.to_string());
                    if let Some(previous) = self.store.get(&key) {
                        next.insert(key, (**previous).clone());
                    }
                }
            }
        }
        self.reader
            .forget_jobs_older_than(self.generation.saturating_sub(1));

        let now = Instant::now();
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
            self.floor.store(index, Ordering::Relaxed);
            if self.explain.is_some_and(|(target, _)| target <= index) {
                self.explain = None;
            }
            self.next_resync = now + self.settings.resync_interval;
        }
        if errors.is_empty() {
            self.store.clear_stale();
            self.stats.set_last_error(None);
            self.relist_backoff = self.settings.tuning.backoff();
        } else {
            errors.dedup();
            let error = errors.join("; ");
            self.stats.set_last_error(Some(error.clone()));
            self.store.mark_stale(error, denied);
            let delay = self
                .relist_backoff
                .next()
                .unwrap_or(self.settings.tuning.backoff_max);
            self.relist_due = Some(now + delay);
        }
        self.publish();
        if clean {
            // After the publish: whoever waits for a relist then reads its catalog.
            self.relists.send_modify(|n| *n += 1);
        }
    }

    /// A namespace whose services all vanished from the `*` list: is it really empty, or did
    /// the token lose `read-job` on it? Reads the namespace alone (403 when unreadable, `[]`
    /// when empty) and returns the enabled services it holds now. Hinted reads need no such
    /// check: they always name their namespace, so a lost permission is a 403 there.
    async fn confirm_vanished(&self, namespace: &str) -> Result<Vec<ServiceKey>, NomadError> {
        match self.client.list_services(namespace, None).await {
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
                Ok(keys)
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
                Err(e)
            }
        }
    }

    fn keep_scope(&self, scope: &str, next: &mut BTreeMap<ServiceKey, Service>) {
        for key in self.store.keys() {
            if WatcherSettings::scope_covers(scope, &key.namespace)
                && let Some(service) = self.store.get(key)
            {
                next.insert(key.clone(), (**service).clone());
            }
        }
    }

    /// Reads `keys` concurrently (at most `read_concurrency` at a time).
    async fn read_all(
        &self,
        keys: impl IntoIterator<Item = ServiceKey>,
    ) -> Vec<(ServiceKey, Result<Option<Service>, NomadError>)> {
        let generation = self.generation;
        let reader = self.reader.clone();
        futures::stream::iter(keys)
            .map(|key| {
                let reader = reader.clone();
                async move {
                    let result = reader.read(&key, generation).await;
                    (key, result)
                }
            })
            .buffer_unordered(self.settings.tuning.read_concurrency.max(1))
            .collect()
            .await
    }

    /// Re-reads the services named by events, one read each however many events named them.
    async fn read_hinted(&mut self) {
        let keys = std::mem::take(&mut self.pending);
        let results = self.read_all(keys).await;
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
            self.stats.set_last_error(Some(error.clone()));
            self.store.mark_stale(error, denied);
            if self.relist_due.is_none() {
                let delay = self
                    .relist_backoff
                    .next()
                    .unwrap_or(self.settings.tuning.backoff_max);
                self.relist_due = Some(Instant::now() + delay);
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        if self.store.version() != self.published {
            self.published = self.store.version();
            self.snapshot.send_replace(Arc::new(self.store.snapshot()));
        }
    }
}

fn log_read_error(key: &ServiceKey, e: &NomadError) {
    if e.is_permission_denied() {
        warn!(namespace = %key.namespace, service = %key.name, error = %e, "cannot read service; keeping the last good data");
    } else {
        warn!(namespace = %key.namespace, service = %key.name, error = %e, "service read failed; keeping the last good data");
    }
}

/// Reads one service with its jobs' check definitions.
struct Reader {
    client: NomadClient,
    prefix: String,
    /// (namespace, job ID) → checks.
    jobs: Mutex<HashMap<(String, String), CachedJob>>,
}

#[derive(Clone, Debug)]
struct CachedJob {
    modify_index: u64,
    /// Registrations of this job up to this ModifyIndex were present when it was fetched.
    covers: u64,
    /// The relist generation of the fetch.
    generation: u64,
    checks: BTreeMap<String, Option<NomadCheck>>,
}

impl Reader {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CachedJob>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The service as the catalog holds it, or `None` when it has no registration or no
    /// `<prefix>.enable=true` tag.
    async fn read(&self, key: &ServiceKey, generation: u64) -> Result<Option<Service>, NomadError> {
        let registrations = self
            .client
            .read_service(&key.namespace, &key.name)
            .await?
            .data;
        if !is_enabled(
            registrations.iter().flat_map(|r| r.tags.iter().flatten()),
            &self.prefix,
        ) {
            return Ok(None);
        }
        let mut newest_by_job: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &registrations {
            let newest = newest_by_job.entry(r.job_id.as_str()).or_default();
            *newest = (*newest).max(r.modify_index);
        }
        let mut checks_by_job: BTreeMap<&str, Option<NomadCheck>> = BTreeMap::new();
        for (job, newest) in newest_by_job {
            let checks = self
                .job_checks(&key.namespace, job, newest, generation)
                .await?;
            checks_by_job.insert(job, checks.get(&key.name).cloned().flatten());
        }
        let mut instances = Vec::with_capacity(registrations.len());
        for r in &registrations {
            let check = checks_by_job.get(r.job_id.as_str()).cloned().flatten();
            match r.to_instance(check) {
                Ok(instance) => instances.push(instance),
                Err(reason) => warn!(
                    namespace = %key.namespace,
                    service = %key.name,
                    id = %r.id,
                    %reason,
                    "skipping a registration"
                ),
            }
        }
        Ok(Some(Service { instances }))
    }

    /// A job's checks by service name: from the cache when no registration is newer than the
    /// fetch and the job was fetched in this relist generation; otherwise re-fetched (and
    /// re-parsed only when the job's ModifyIndex changed).
    async fn job_checks(
        &self,
        namespace: &str,
        job: &str,
        newest_registration: u64,
        generation: u64,
    ) -> Result<BTreeMap<String, Option<NomadCheck>>, NomadError> {
        let cache_key = (namespace.to_string(), job.to_string());
        let cached = self.jobs().get(&cache_key).cloned();
        if let Some(c) = &cached
            && newest_registration <= c.covers
            && c.generation >= generation
        {
            return Ok(c.checks.clone());
        }
        if job.is_empty() {
            return Ok(BTreeMap::new());
        }
        let fetched = self.client.read_job(namespace, job).await?;
        let modify_index = fetched.as_ref().map_or(0, |j| j.modify_index);
        let checks = match (&cached, &fetched) {
            (Some(c), Some(j)) if c.modify_index == j.modify_index => c.checks.clone(),
            (_, Some(j)) => j.checks(),
            (_, None) => BTreeMap::new(),
        };
        self.jobs().insert(
            cache_key,
            CachedJob {
                modify_index,
                covers: newest_registration.max(cached.map_or(0, |c| c.covers)),
                generation,
                checks: checks.clone(),
            },
        );
        Ok(checks)
    }

    fn forget_jobs_older_than(&self, generation: u64) {
        self.jobs().retain(|_, c| c.generation >= generation);
    }
}

/// Blocking list of one scope, forever: each answer goes to the loop, and the next request
/// blocks on the index it returned (floored at 1, so an index-0 answer cannot spin).
async fn poll_list(
    client: NomadClient,
    scope: String,
    wait: Duration,
    tuning: Tuning,
    tx: mpsc::UnboundedSender<Input>,
) {
    let mut index = 0;
    let mut backoff = tuning.backoff();
    loop {
        let sent = index;
        let result = client
            .list_services(&scope, Some(Blocking { index: sent, wait }))
            .await;
        let failed = match &result {
            Ok(page) => {
                index = page.index.max(1);
                backoff = tuning.backoff();
                false
            }
            Err(_) => true,
        };
        let input = Input::Listed {
            scope: scope.clone(),
            sent,
            result,
        };
        if tx.send(input).is_err() {
            return;
        }
        if failed {
            sleep(backoff.next().unwrap_or(tuning.backoff_max)).await;
        }
    }
}

/// One scope's event stream, reconnecting forever.
struct StreamTask {
    client: NomadClient,
    scope: String,
    settings: Arc<WatcherSettings>,
    tx: mpsc::UnboundedSender<Input>,
    floor: Arc<AtomicU64>,
    epoch: watch::Receiver<u64>,
}

/// Why a connection ended.
enum End {
    /// Nomad ended it (EOF, trailing error text) or it went silent.
    Closed(String),
    /// It could not be opened or read.
    Failed(NomadError),
}

impl StreamTask {
    async fn run(mut self) {
        let tuning = self.settings.tuning.clone();
        let stats = self.client.stats().clone();
        let mut resume = Resume::default();
        let mut backoff = tuning.backoff();
        let mut first = true;
        loop {
            if self.epoch.has_changed().unwrap_or(false) {
                self.epoch.borrow_and_update();
                resume.reset();
            }
            if !first {
                stats.record_reconnect();
            }
            first = false;
            let requested = resume.connect(self.floor.load(Ordering::Relaxed));
            let started = Instant::now();
            let end = self.connection(requested, &mut resume, &tuning).await;
            if self.tx.is_closed() {
                return;
            }
            match end {
                End::Closed(why)
                    if why.contains("Permission denied") || why.contains("ACL token") =>
                {
                    warn!(namespace = %self.scope, reason = %why, "event stream closed; reconnecting");
                }
                End::Closed(why) => {
                    debug!(namespace = %self.scope, reason = %why, "event stream closed; reconnecting");
                }
                End::Failed(e) if e.is_permission_denied() => {
                    warn!(namespace = %self.scope, error = %e, "cannot subscribe to the event stream");
                    stats.set_last_error(Some(e.to_string()));
                }
                End::Failed(e) => {
                    debug!(namespace = %self.scope, error = %e, "event stream failed; reconnecting");
                }
            }
            if started.elapsed() >= tuning.stream_stable_after {
                backoff = tuning.backoff();
            }
            sleep(backoff.next().unwrap_or(tuning.backoff_max)).await;
        }
    }

    async fn connection(&mut self, requested: u64, resume: &mut Resume, tuning: &Tuning) -> End {
        let stats = self.client.stats().clone();
        let mut response = match self.client.event_stream(&self.scope, requested).await {
            Ok(r) => r,
            Err(e) => return End::Failed(e),
        };
        let mut lines = LineBuffer::default();
        let mut up = false;
        let end = 'read: loop {
            let chunk = match timeout(tuning.heartbeat_timeout, response.chunk()).await {
                Err(_) => {
                    break End::Closed(format!(
                        "no data for {} (heartbeats stopped)",
                        humantime::format_duration(tuning.heartbeat_timeout)
                    ));
                }
                Ok(Err(source)) => {
                    break End::Failed(NomadError::transport("reading the event stream", source));
                }
                Ok(Ok(None)) => {
                    break match lines.finish() {
                        Some(rest) => match parse_line(&rest) {
                            Frame::Error(text) => {
                                End::Closed(format!("Nomad ended the stream: {text}"))
                            }
                            _ => End::Closed("Nomad closed the stream mid-line".into()),
                        },
                        None => End::Closed("Nomad closed the stream".into()),
                    };
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            let complete = match lines.push(&chunk) {
                Ok(complete) => complete,
                Err(_) => break End::Closed("a stream line exceeded the size limit".into()),
            };
            for line in complete {
                let frame = parse_line(&line);
                if !up && !matches!(frame, Frame::Error(_)) {
                    up = true;
                    stats.stream_up();
                    if self
                        .tx
                        .send(Input::StreamUp {
                            scope: self.scope.clone(),
                        })
                        .is_err()
                    {
                        break 'read End::Closed("watcher stopped".into());
                    }
                }
                match frame {
                    Frame::Heartbeat => {}
                    Frame::Batch { index, events } => {
                        if self.epoch.has_changed().unwrap_or(false) {
                            self.epoch.borrow_and_update();
                            resume.reset();
                        }
                        let mut keys = BTreeSet::new();
                        for event in resume.accept(index, events) {
                            stats.record_event(&event.kind);
                            if event.topic != "Service" {
                                continue;
                            }
                            if let Some((namespace, name)) = event.service()
                                && self.settings.watches(&namespace)
                            {
                                keys.insert(ServiceKey::new(namespace, name));
                            }
                        }
                        if self.tx.send(Input::Hints { index, keys }).is_err() {
                            break 'read End::Closed("watcher stopped".into());
                        }
                    }
                    Frame::Error(text) => {
                        break 'read End::Closed(format!("Nomad ended the stream: {text}"));
                    }
                }
            }
        };
        if up {
            stats.stream_down();
            let _ = self.tx.send(Input::StreamDown {
                scope: self.scope.clone(),
            });
        }
        end
    }
}
