//! The watcher's I/O executor: one task that runs the [machine](super::machine)'s commands with
//! the Nomad client and feeds their answers back. Blocking lists, stream connections and the
//! relist's reads run as tasks of their own; their answers come back through one channel.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{Instrument, info_span};

use super::io::{Reader, stream_connection};
use super::machine::{Command, Input, Machine, Stat};
use super::settings::WatcherSettings;
use crate::catalog::Snapshot;
use crate::nomad::client::{Blocking, NomadClient};
use crate::nomad::stats::NomadStats;

/// A running watcher. Dropping it stops its tasks.
pub struct Watcher {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    relists: watch::Receiver<u64>,
    relist_request: Arc<Notify>,
    stats: Arc<NomadStats>,
    shutdown: watch::Sender<bool>,
    main: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching Nomad through `client` (the watcher's stats are the client's). Must be
    /// called inside a Tokio runtime.
    pub fn spawn(client: NomadClient, settings: WatcherSettings) -> Watcher {
        let seed = RandomState::new().hash_one(0u64);
        let machine = Machine::new(settings.clone(), Instant::now().into_std(), seed);
        let stats = client.stats().clone();
        let (snapshot_tx, snapshot) = watch::channel(machine.snapshot());
        let (relists_tx, relists) = watch::channel(0u64);
        let relist_request = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let executor = Executor {
            reader: Arc::new(Reader::new(client.clone(), settings.tag_prefix.clone())),
            client,
            settings,
            machine,
            tx,
            rx,
            snapshot: snapshot_tx,
            relists: relists_tx,
            relist_request: relist_request.clone(),
            stats: stats.clone(),
            helpers: HashMap::new(),
            work: None,
        };
        let main = tokio::spawn(
            executor
                .run(shutdown_rx)
                .instrument(info_span!("nomad_watcher")),
        );
        Watcher {
            snapshot,
            relists,
            relist_request,
            stats,
            shutdown,
            main: Some(main),
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
        if let Some(main) = self.main.take() {
            let _ = main.await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(main) = &self.main {
            // The executor owns its tasks: dropping it aborts them.
            main.abort();
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

/// A task aborted when its handle is dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which helper of a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Helper {
    Poll,
    Stream,
}

struct Executor {
    client: NomadClient,
    reader: Arc<Reader>,
    settings: WatcherSettings,
    machine: Machine,
    /// Where the tasks send their answers (the executor keeps one end so `rx` never closes).
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    relists: watch::Sender<u64>,
    relist_request: Arc<Notify>,
    stats: Arc<NomadStats>,
    /// The blocking list and the stream connection of each scope.
    helpers: HashMap<(Helper, String), Owned>,
    /// The relist phase or hinted reads in flight.
    work: Option<Owned>,
}

impl Executor {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let relist_request = self.relist_request.clone();
        let mut stopping = false;
        let mut inputs = vec![Input::Tick];
        loop {
            let now = Instant::now().into_std();
            for input in inputs.drain(..) {
                for command in self.machine.step(input, now) {
                    if !self.execute(command) {
                        return;
                    }
                }
            }
            let wake = self.machine.wake_at().map(Instant::from_std);
            let timer = async {
                match wake {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                changed = shutdown.changed(), if !stopping => {
                    if changed.is_err() || *shutdown.borrow() {
                        // The helpers stop at once; work in flight completes first.
                        stopping = true;
                        self.helpers.clear();
                        inputs.push(Input::Shutdown);
                    }
                }
                input = self.rx.recv() => {
                    let Some(input) = input else { return };
                    inputs.push(input);
                    // Coalesce: take everything already queued before the machine starts work.
                    while let Ok(input) = self.rx.try_recv() {
                        inputs.push(input);
                    }
                }
                () = relist_request.notified(), if !stopping => {
                    inputs.push(Input::RelistRequested);
                }
                () = timer => {}
            }
            inputs.push(Input::Tick);
        }
    }

    /// Runs one command; `false` when the loop must end.
    fn execute(&mut self, command: Command) -> bool {
        match command {
            Command::Poll { scope, index, wait } => {
                let client = self.client.clone();
                let tx = self.tx.clone();
                let span = info_span!("nomad_service_list", namespace = %scope);
                let key = scope.clone();
                let task = async move {
                    let result = client
                        .list_services(&scope, Some(Blocking { index, wait }))
                        .await;
                    let _ = tx.send(Input::Polled {
                        scope,
                        sent: index,
                        result,
                    });
                };
                self.helper(Helper::Poll, key, span, task);
            }
            Command::OpenStream { scope, index } => {
                let span = info_span!("nomad_event_stream", namespace = %scope);
                let key = scope.clone();
                let task = stream_connection(
                    self.client.clone(),
                    scope,
                    index,
                    self.settings.tuning.heartbeat_timeout,
                    self.tx.clone(),
                );
                self.helper(Helper::Stream, key, span, task);
            }
            Command::List { scopes } => {
                let client = self.client.clone();
                let tx = self.tx.clone();
                self.work(async move {
                    let mut results = Vec::with_capacity(scopes.len());
                    for scope in scopes {
                        let result = client.list_services(&scope, None).await;
                        results.push((scope, result));
                    }
                    let _ = tx.send(Input::Listed(results));
                });
            }
            Command::Read { keys, generation } => {
                let reader = self.reader.clone();
                let tx = self.tx.clone();
                let concurrency = self.settings.tuning.read_concurrency.max(1);
                self.work(async move {
                    let results = futures::stream::iter(keys)
                        .map(|key| {
                            let reader = reader.clone();
                            async move {
                                let result = reader.read(&key, generation).await;
                                (key, result)
                            }
                        })
                        .buffer_unordered(concurrency)
                        .collect()
                        .await;
                    let _ = tx.send(Input::Read(results));
                });
            }
            Command::ReadChecks { allocs } => {
                let client = self.client.clone();
                let tx = self.tx.clone();
                let concurrency = self.settings.tuning.read_concurrency.max(1);
                self.work(async move {
                    let results = futures::stream::iter(allocs)
                        .map(|(namespace, alloc)| {
                            let client = client.clone();
                            async move {
                                let result = client.alloc_checks(&namespace, &alloc).await;
                                (alloc, result)
                            }
                        })
                        .buffer_unordered(concurrency)
                        .collect()
                        .await;
                    let _ = tx.send(Input::ChecksRead(results));
                });
            }
            Command::ForgetJobs { before } => self.reader.forget_jobs_older_than(before),
            Command::ConsumeRelistRequests => {
                let _ = self.relist_request.notified().now_or_never();
            }
            Command::Publish(snapshot) => {
                self.snapshot.send_replace(snapshot);
            }
            Command::CountRelists(n) => {
                self.relists.send_replace(n);
            }
            Command::Stat(stat) => self.stat(stat),
            Command::Stop => return false,
        }
        true
    }

    /// Starts a scope's helper task (the one it replaces has sent its last answer).
    fn helper(
        &mut self,
        helper: Helper,
        scope: String,
        span: tracing::Span,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = tokio::spawn(task.instrument(span));
        self.helpers.insert((helper, scope), Owned(handle));
    }

    fn work(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.work = Some(Owned(tokio::spawn(task.in_current_span())));
    }

    fn stat(&self, stat: Stat) {
        match stat {
            Stat::LastError(error) => self.stats.set_last_error(error),
            Stat::LastIndex(index) => self.stats.set_last_index(index),
            Stat::FullRelist => self.stats.record_full_relist(),
            Stat::Reconnect => self.stats.record_reconnect(),
            Stat::StreamUp => self.stats.stream_up(),
            Stat::StreamDown => self.stats.stream_down(),
            Stat::Event(kind) => self.stats.record_event(&kind),
        }
    }
}
