//! The watcher's decisions, as a pure state machine: [`Machine::step`] turns one [`Input`] (an
//! I/O result, a request, the clock coming around) into [`Command`]s for the executor. No I/O,
//! no tasks, no clock: `now` is passed in, the retry jitter comes from a seed.
//!
//! The machine owns the catalog [`Store`] and what is known about Nomad's indexes; it decides
//! when to relist, what to read, when a blocking list or an event stream is (re)opened and from
//! which index, and what to publish. Work the loop waits for (a relist's lists and reads, the
//! reads hinted by events) is one piece at a time: while it is in flight, the inputs that would
//! change the catalog are held back and handled, in order, once it is done (as a loop that awaits
//! its relist would find them queued).
//!
//! The executor's contract: run every command, feed every answer back as an input, and after
//! each batch of inputs (and when [`Machine::wake_at`] comes) feed [`Input::Tick`]: timers fire
//! and due work starts only on a tick, so everything queued before it is coalesced (a burst of
//! events for one service costs one read).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::ExponentialBackoff;
use tracing::{debug, warn};

use super::relist::Relist;
use super::settings::WatcherSettings;
use crate::catalog::{AllocHealth, Service, ServiceKey, Snapshot, Store};
use crate::nomad::client::{Indexed, NomadError};
use crate::nomad::stream::Resume;
use crate::nomad::wire::{Event, NamespaceServices};

/// What a `/v1/services` list answered.
pub type ListResult = Result<Indexed<Vec<NamespaceServices>>, NomadError>;
/// What a service read answered: the service as the catalog holds it, or `None` when it has no
/// registration or is not enabled.
pub type ReadResult = Result<Option<Service>, NomadError>;

/// What an allocation's check read answered: its health per service, `None` when Nomad no
/// longer knows the allocation.
pub type ChecksResult = Result<Option<AllocHealth>, NomadError>;

/// What happened, as the executor tells the machine.
#[derive(Debug)]
pub enum Input {
    /// The loop comes around (after a batch of inputs, or at [`Machine::wake_at`]): due timers
    /// fire, held-back inputs are handled, due work starts.
    Tick,
    /// A full relist was asked for from outside (the controller, for a held mass removal).
    RelistRequested,
    /// A blocking list of `scope` sent with index `sent` answered ([`Command::Poll`]).
    Polled {
        scope: String,
        sent: u64,
        result: ListResult,
    },
    /// `scope`'s event stream subscribed (its first line that is not an error arrived).
    StreamUp { scope: String },
    /// An event batch arrived on `scope`'s stream, as Nomad sent it.
    StreamBatch {
        scope: String,
        index: u64,
        events: Vec<Event>,
    },
    /// `scope`'s stream connection ended; `up` when it had subscribed.
    StreamEnded {
        scope: String,
        up: bool,
        end: StreamEnd,
    },
    /// The lists of a [`Command::List`], in its order.
    Listed(Vec<(String, ListResult)>),
    /// The reads of a [`Command::Read`].
    Read(Vec<(ServiceKey, ReadResult)>),
    /// The check reads of a [`Command::ReadChecks`], by allocation ID.
    ChecksRead(Vec<(String, ChecksResult)>),
    /// Stop: after the work in flight, if any.
    Shutdown,
}

/// Why a stream connection ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// Nomad ended it (EOF, trailing error text) or it went silent.
    Closed(String),
    /// It could not be opened or read.
    Failed(NomadError),
}

/// What the executor must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// One blocking list of `scope` from `index`; answer with [`Input::Polled`].
    Poll {
        scope: String,
        index: u64,
        wait: Duration,
    },
    /// Open `scope`'s event stream from `index` and forward what arrives
    /// ([`Input::StreamUp`], [`Input::StreamBatch`], then [`Input::StreamEnded`]).
    OpenStream { scope: String, index: u64 },
    /// Plain (non-blocking) lists of these scopes, in order; answer with [`Input::Listed`].
    List { scopes: Vec<String> },
    /// Read these services (job definitions are re-fetched once per relist `generation`);
    /// answer with [`Input::Read`].
    Read {
        keys: Vec<ServiceKey>,
        generation: u64,
    },
    /// Read the check results of these allocations, as (namespace, allocation ID); answer with
    /// [`Input::ChecksRead`].
    ReadChecks { allocs: Vec<(String, String)> },
    /// Drop the job definitions cached before relist generation `before`.
    ForgetJobs { before: u64 },
    /// A relist starts: relist requests made until now are served by it.
    ConsumeRelistRequests,
    /// Hand this catalog to the readers.
    Publish(Arc<Snapshot>),
    /// This many full relists have completed without error (the catalog is published first).
    CountRelists(u64),
    /// Update the shared Nomad counters.
    Stat(Stat),
    /// The watcher is done: end the loop.
    Stop,
}

/// A change to the shared [`NomadStats`](crate::nomad::NomadStats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stat {
    LastError(Option<String>),
    LastIndex(u64),
    FullRelist,
    Reconnect,
    StreamUp,
    StreamDown,
    /// An event of this type was accepted (after resume filtering and de-duplication).
    Event(String),
}

/// Inputs that change the catalog or the index bookkeeping: held back while work is in flight.
#[derive(Debug)]
pub(super) enum Held {
    Listed {
        scope: String,
        sent: u64,
        result: ListResult,
    },
    StreamUp {
        scope: String,
    },
    StreamDown {
        scope: String,
    },
    Hints {
        index: u64,
        keys: BTreeSet<ServiceKey>,
    },
    RelistRequested,
}

/// Work the loop waits for.
#[derive(Debug)]
pub(super) enum Work {
    Relist(Relist),
    /// Reads of services named by events.
    HintedRead,
    /// Reads of allocations' check results (`nomad.gate_on_checks`).
    Checks,
}

/// One scope's blocking list and event stream.
#[derive(Debug)]
pub(super) struct Scope {
    pub(super) name: String,
    /// The index the next blocking list sends.
    pub(super) poll_index: u64,
    pub(super) poll_backoff: ExponentialBackoff,
    /// When the next blocking list goes out (`None`: one is in flight).
    pub(super) poll_at: Option<Instant>,
    pub(super) resume: Resume,
    pub(super) stream_backoff: ExponentialBackoff,
    /// A stream was opened before: the next one is a reconnect.
    pub(super) stream_opened: bool,
    /// When the current connection was opened.
    pub(super) stream_started: Option<Instant>,
    /// When to (re)open the stream (`None`: a connection is open).
    pub(super) stream_at: Option<Instant>,
}

/// The watcher's state: the store plus what is known about Nomad's indexes.
#[derive(Debug)]
pub struct Machine {
    pub(super) settings: WatcherSettings,
    pub(super) scopes: Vec<Scope>,
    pub(super) store: Store,
    /// The store version last published.
    pub(super) published: u64,
    /// List index of the last full relist (0: none yet, or reset). Also the streams' floor:
    /// nothing older needs replaying.
    pub(super) full_read_index: u64,
    /// Newest index any blocking list returned.
    pub(super) latest_list_index: u64,
    /// Newest event batch index any stream delivered.
    pub(super) seen_event_index: u64,
    pub(super) relist_due: Option<Instant>,
    pub(super) relist_backoff: ExponentialBackoff,
    /// An unexplained list index and when to check it again.
    pub(super) explain: Option<(u64, Instant)>,
    pub(super) next_resync: Instant,
    /// Services to re-read because of events.
    pub(super) pending: BTreeSet<ServiceKey>,
    /// Relist generation: job definitions are re-fetched once per relist.
    pub(super) generation: u64,
    /// Relists completed without error.
    pub(super) clean_relists: u64,
    pub(super) work: Option<Work>,
    pub(super) held: VecDeque<Held>,
    pub(super) stopping: bool,
    /// When the next check-results poll starts (`None`: gating is off).
    pub(super) checks_at: Option<Instant>,
    /// Where the next check poll starts in the list of checked allocations, when there are
    /// more than one poll reads.
    pub(super) checks_cursor: usize,
    /// State of the jitter seeds handed to new backoffs.
    seed: u64,
}

impl Machine {
    /// A machine that starts at `now`: the first tick opens every scope's stream and blocking
    /// list, and the first relist waits `startup_stream_wait` for the streams to subscribe.
    pub fn new(settings: WatcherSettings, now: Instant, seed: u64) -> Machine {
        let mut machine = Machine {
            scopes: Vec::new(),
            store: Store::new(settings.tag_prefix.clone()),
            published: 0,
            full_read_index: 0,
            latest_list_index: 0,
            seen_event_index: 0,
            relist_due: Some(now + settings.tuning.startup_stream_wait),
            relist_backoff: settings.tuning.backoff(seed),
            explain: None,
            next_resync: now + settings.resync_interval,
            pending: BTreeSet::new(),
            generation: 0,
            clean_relists: 0,
            work: None,
            held: VecDeque::new(),
            stopping: false,
            checks_at: settings.gate_on_checks.then_some(now),
            checks_cursor: 0,
            seed,
            settings,
        };
        for name in machine.settings.scopes() {
            let poll_backoff = machine.backoff();
            let stream_backoff = machine.backoff();
            machine.scopes.push(Scope {
                name,
                poll_index: 0,
                poll_backoff,
                poll_at: Some(now),
                resume: Resume::default(),
                stream_backoff,
                stream_opened: false,
                stream_started: None,
                stream_at: Some(now),
            });
        }
        machine
    }

    /// The catalog as it is now (the executor publishes it before the first step).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::new(self.store.snapshot())
    }

    /// When the executor must tick next if no input comes first (`None`: only inputs matter).
    pub fn wake_at(&self) -> Option<Instant> {
        if self.stopping {
            return None;
        }
        let lifecycle = self
            .scopes
            .iter()
            .flat_map(|s| [s.poll_at, s.stream_at])
            .flatten();
        let core = match self.work {
            Some(_) => Vec::new(),
            None => [
                Some(self.next_resync),
                self.relist_due,
                self.explain.map(|(_, at)| at),
                self.checks_at.filter(|_| self.store.synced()),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        lifecycle.chain(core).min()
    }

    /// One input in, the commands it causes out.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Tick => self.tick(now, &mut out),
            Input::RelistRequested => self.hold(Held::RelistRequested, now, &mut out),
            Input::Polled {
                scope,
                sent,
                result,
            } => {
                self.polled(&scope, &result, now, &mut out);
                self.hold(
                    Held::Listed {
                        scope,
                        sent,
                        result,
                    },
                    now,
                    &mut out,
                );
            }
            Input::StreamUp { scope } => {
                out.push(Command::Stat(Stat::StreamUp));
                self.hold(Held::StreamUp { scope }, now, &mut out);
            }
            Input::StreamBatch {
                scope,
                index,
                events,
            } => {
                let keys = self.accept_batch(&scope, index, events, &mut out);
                self.hold(Held::Hints { index, keys }, now, &mut out);
            }
            Input::StreamEnded { scope, up, end } => {
                if up {
                    out.push(Command::Stat(Stat::StreamDown));
                }
                self.stream_ended(&scope, end, now, &mut out);
                if up {
                    self.hold(Held::StreamDown { scope }, now, &mut out);
                }
            }
            Input::Listed(results) => self.relist_listed(results, now, &mut out),
            Input::Read(results) => self.read_done(results, now, &mut out),
            Input::ChecksRead(results) => self.checks_done(results, now, &mut out),
            Input::Shutdown => {
                self.stopping = true;
                if self.work.is_none() {
                    out.push(Command::Stop);
                }
            }
        }
        out
    }

    /// A fresh backoff with its own jitter seed (splitmix64 over the machine's seed).
    pub(super) fn backoff(&mut self) -> ExponentialBackoff {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.settings.tuning.backoff(z ^ (z >> 31))
    }

    fn hold(&mut self, input: Held, now: Instant, out: &mut Vec<Command>) {
        if self.work.is_some() || !self.held.is_empty() {
            self.held.push_back(input);
        } else {
            self.handle(input, now, out);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.stopping {
            return;
        }
        self.lifecycle_timers(now, out);
        self.advance(now, out);
        if self.work.is_none() && !self.held.is_empty() {
            for input in std::mem::take(&mut self.held) {
                self.handle(input, now, out);
            }
            self.advance(now, out);
        }
    }

    /// Due timers fire and due work starts (at most one piece of work).
    fn advance(&mut self, now: Instant, out: &mut Vec<Command>) {
        while self.work.is_none() {
            if self.relist_due.is_some_and(|due| due <= now) {
                self.start_relist(out);
                return;
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
                let keys: Vec<ServiceKey> = std::mem::take(&mut self.pending).into_iter().collect();
                self.work = Some(Work::HintedRead);
                out.push(Command::Read {
                    keys,
                    generation: self.generation,
                });
                return;
            }
            self.start_checks(now, out);
            return;
        }
    }

    fn handle(&mut self, input: Held, now: Instant, out: &mut Vec<Command>) {
        match input {
            Held::Listed {
                scope,
                sent,
                result: Ok(page),
            } => self.listed(&scope, sent, page, now, out),
            Held::Listed {
                scope,
                result: Err(e),
                ..
            } => {
                if e.is_permission_denied() {
                    warn!(namespace = %scope, error = %e, "cannot list services");
                } else {
                    warn!(namespace = %scope, error = %e, "service list failed; retrying");
                }
                out.push(Command::Stat(Stat::LastError(Some(e.to_string()))));
                self.store
                    .mark_stale(e.to_string(), e.is_permission_denied());
                self.publish(out);
            }
            Held::StreamUp { scope } => {
                debug!(namespace = %scope, "event stream subscribed: full relist");
                self.relist_due = Some(now);
            }
            Held::StreamDown { scope } => {
                debug!(namespace = %scope, "event stream down");
                if !self.store.synced() {
                    self.relist_due = Some(now);
                }
            }
            Held::Hints { index, keys } => {
                self.seen_event_index = self.seen_event_index.max(index);
                let relist_now = self.relist_due.is_some_and(|due| due <= now);
                if relist_now || !self.store.synced() || index <= self.full_read_index {
                    // The coming (or just finished) full relist covers these.
                    return;
                }
                self.pending.extend(keys);
            }
            Held::RelistRequested => {
                debug!("full relist requested");
                self.relist_due = Some(now);
            }
        }
    }

    /// A blocking list answered: decide whether the index move needs a relist.
    fn listed(
        &mut self,
        scope: &str,
        sent: u64,
        page: Indexed<Vec<NamespaceServices>>,
        now: Instant,
        out: &mut Vec<Command>,
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
            out.push(Command::Stat(Stat::LastError(Some(
                SUSPICIOUS_EMPTY.to_string(),
            ))));
            // With `namespace=*`, this is how Nomad answers a token that can read no namespace
            // (CONTRACTS §1.9): a denial, not an outage.
            self.store.mark_stale(SUSPICIOUS_EMPTY, true);
            self.publish(out);
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
        out.push(Command::Stat(Stat::LastIndex(self.latest_list_index)));
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

    /// Nomad's index went backwards: forget every index, and make the streams forget theirs.
    pub(super) fn reset_indexes(&mut self) {
        self.full_read_index = 0;
        self.seen_event_index = 0;
        for scope in &mut self.scopes {
            scope.resume.reset();
        }
        self.store.reset_index();
        self.explain = None;
    }

    pub(super) fn publish(&mut self, out: &mut Vec<Command>) {
        if self.store.version() != self.published {
            self.published = self.store.version();
            out.push(Command::Publish(self.snapshot()));
        }
    }

    /// The services a relist read keeps from the last good data for `scope`.
    pub(super) fn keep_scope(&self, scope: &str, next: &mut BTreeMap<ServiceKey, Service>) {
        for key in self.store.keys() {
            if WatcherSettings::scope_covers(scope, &key.namespace)
                && let Some(service) = self.store.get(key)
            {
                next.insert(key.clone(), (**service).clone());
            }
        }
    }
}

pub(super) const SUSPICIOUS_EMPTY: &str = "Nomad listed no services at index 0 after having listed some: the token can probably read no namespace any more (it needs `read-job`); keeping the last good data";
