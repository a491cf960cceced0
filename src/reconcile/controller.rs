//! The converge loop (kube-runtime's controller, on one page): triggers are catalog changes
//! (debounced), a resync timer, retries after errors (exponential backoff with jitter), and, while
//! a mass removal is held, the end of its hold and each completed Nomad relist (the loop asks the
//! watcher for one when the hold starts). One pass at a time, one writer; the pass never learns
//! which trigger started it. Each finished pass is reported as a [`PassReport`] for status and
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use super::pass::{MassCheck, run_guarded_pass};
use super::report::{PassReport, PassResult};
use crate::catalog::Snapshot;
use crate::desired::Policy;
use crate::haproxy::Driver;
use hnc_core::drains::DrainClock;
use hnc_core::guards::{MassDeleteGuard, Verdict};

/// Loop settings (see the README's configuration table for defaults).
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// Quiet period after a catalog change before a pass starts.
    pub debounce: Duration,
    /// Longest a steady stream of changes can delay a pass.
    pub debounce_max: Duration,
    /// Full reconcile against live HAProxy even when Nomad is quiet (repairs drift).
    pub resync: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub max_delete_ratio: f64,
    /// Real time a mass removal must stand before it is applied.
    pub mass_delete_hold: Duration,
    /// Minimum number of passes that must reach the same mass removal.
    pub mass_delete_confirmations: u32,
    /// How long the current pass may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: Policy::default(),
            debounce: Duration::from_millis(50),
            debounce_max: Duration::from_millis(500),
            resync: Duration::from_secs(30),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
            max_delete_ratio: 0.5,
            mass_delete_hold: Duration::from_secs(60),
            mass_delete_confirmations: 3,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Full Nomad relists, as the mass-delete guard needs them: how many have completed without
/// error (a watch the watcher bumps), and a way to ask the watcher for a fresh one.
pub struct Relists {
    completed: watch::Receiver<u64>,
    request: Box<dyn Fn() + Send + Sync>,
}

impl Relists {
    pub fn new(
        completed: watch::Receiver<u64>,
        request: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Relists {
            completed,
            request: Box::new(request),
        }
    }
}

/// The controller. `on_pass` is called after every pass; `shutdown` turning true stops it.
pub struct Controller<D: Driver> {
    driver: D,
    settings: Settings,
    catalog: watch::Receiver<Arc<Snapshot>>,
    relists: Relists,
    drains: DrainClock,
    mass: MassDeleteGuard,
}

impl<D: Driver> Controller<D> {
    pub fn new(
        driver: D,
        catalog: watch::Receiver<Arc<Snapshot>>,
        relists: Relists,
        settings: Settings,
    ) -> Self {
        let mass = MassDeleteGuard::new(
            settings.max_delete_ratio,
            settings.mass_delete_hold,
            settings.mass_delete_confirmations,
        );
        Controller {
            driver,
            settings,
            catalog,
            relists,
            drains: DrainClock::default(),
            mass,
        }
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Runs until `shutdown` becomes true. A pass in progress when it does gets
    /// `shutdown_grace` to finish; past that it is dropped and the driver releases what it held
    /// open.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut on_pass: impl FnMut(&PassReport),
    ) {
        let s = self.settings.clone();
        let mut resync = tokio::time::interval(s.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let backoff_builder = ExponentialBuilder::default()
            .with_min_delay(s.retry_min)
            .with_max_delay(s.retry_max)
            .with_jitter()
            .without_max_times();
        let mut backoff = backoff_builder.build();
        let mut first_change: Option<Instant> = None;
        let mut last_change: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut catalog_open = true;
        let mut relists_open = true;
        // The completed-relist count at which a relist was last asked for (at most one request
        // per count: the watcher retries a failed relist by itself).
        let mut relist_asked_at: Option<u64> = None;
        let mut applied_version: Option<Arc<Snapshot>> = None;
        let mut seen: Arc<Snapshot> = self.catalog.borrow().clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let debounce_at = match (first_change, last_change) {
                (Some(first), Some(last)) => Some((last + s.debounce).min(first + s.debounce_max)),
                _ => None,
            };
            let wake = match (debounce_at, retry_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                r = self.catalog.changed(), if catalog_open => {
                    if r.is_err() {
                        catalog_open = false;
                    } else {
                        // Only what a pass reads counts: a new list index alone is no change.
                        let current = self.catalog.borrow().clone();
                        if !same_content(&seen, &current) {
                            let now = Instant::now();
                            first_change.get_or_insert(now);
                            last_change = Some(now);
                        }
                        seen = current;
                    }
                    continue;
                }
                r = self.relists.completed.changed(), if relists_open => {
                    if r.is_err() {
                        relists_open = false;
                    } else if self.mass.is_holding() {
                        // A held mass removal waits for a fresh relist: re-check now.
                        retry_at = Some(Instant::now());
                    }
                    continue;
                }
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = resync.tick() => {}
            }
            let change = first_change.take();
            last_change = None;
            retry_at = None;
            // The relist count first: the watcher publishes a relist's catalog before counting
            // it, so a count read first never belongs to a newer catalog than the one passed.
            let relists = *self.relists.completed.borrow_and_update();
            let snapshot = self.catalog.borrow_and_update().clone();
            seen = snapshot.clone();
            let drift = change.is_none()
                && applied_version
                    .as_ref()
                    .is_some_and(|v| same_content(v, &snapshot));
            let started = Instant::now();
            tracing::debug!(
                services = snapshot.services.len(),
                synced = snapshot.synced,
                "pass starting"
            );
            let outcome = {
                let pass = run_guarded_pass(
                    &self.driver,
                    &snapshot,
                    &s.policy,
                    &mut self.drains,
                    Some(MassCheck {
                        guard: &mut self.mass,
                        relists,
                        now: Instant::now().into_std(),
                    }),
                    true,
                );
                tokio::pin!(pass);
                tokio::select! {
                    r = &mut pass => Some(r),
                    _ = wait_true(&mut shutdown) => {
                        tracing::info!(grace = ?s.shutdown_grace, "shutdown: letting the current pass finish");
                        tokio::time::timeout(s.shutdown_grace, &mut pass).await.ok()
                    }
                }
            };
            let Some(outcome) = outcome else {
                tracing::warn!("shutdown: the current pass did not finish in time; abandoning it");
                self.driver.abandon().await;
                break;
            };
            let report = PassReport::from_outcome(&snapshot, outcome, started, drift, change);
            tracing::debug!(result = report.result.as_str(), ops = report.ops.len(), took = ?report.duration, "pass finished");
            match report.result {
                PassResult::Error => {
                    let delay = backoff.next().unwrap_or(s.retry_max);
                    retry_at = Some(Instant::now() + delay);
                    tracing::warn!(error = report.error.as_deref().unwrap_or(""), retry_in = ?delay, "pass failed");
                    // The change is not applied yet: keep measuring from it.
                    first_change = first_change.or(change);
                }
                _ => {
                    backoff = backoff_builder.build();
                    applied_version = Some(snapshot.clone());
                    let now = Instant::now();
                    let soon = now + s.retry_min.max(Duration::from_millis(500)).min(s.resync);
                    if report.held_untrusted > 0 || !report.pending_drains.is_empty() {
                        // Come back soon: drains finish, and the catalog may be trusted again.
                        retry_at = Some(soon);
                    }
                    if let Some(Verdict::Held {
                        until, relisted, ..
                    }) = &report.held_mass_delete
                    {
                        let until = Instant::from_std(*until);
                        // The hold's time is up: the relist that confirms it must start now.
                        if until <= now && !relisted && relist_asked_at != Some(relists) {
                            tracing::info!(
                                "mass removal held: asking Nomad for a fresh full relist"
                            );
                            (self.relists.request)();
                            relist_asked_at = Some(relists);
                        }
                        // Wake when the hold's time is up; past it, re-check soon (more passes
                        // needed) or when the relist it waits for completes.
                        let at = if until > now {
                            Some(until)
                        } else if *relisted {
                            Some(soon)
                        } else {
                            None
                        };
                        retry_at = match (retry_at, at) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                }
            }
            on_pass(&report);
        }
    }
}

/// Whether two snapshots hold the same services (the same shared entries) and trust state; the
/// list index is not part of what a pass reads.
fn same_content(a: &Snapshot, b: &Snapshot) -> bool {
    a.synced == b.synced
        && a.stale == b.stale
        && a.denied == b.denied
        && a.services.len() == b.services.len()
        && a.services
            .iter()
            .zip(&b.services)
            .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            // The sender is gone: nobody can ask for shutdown any more.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::haproxy::{ApplyReport, DriverError};
    use crate::live::{Live, LiveBackend, LiveServer};
    use crate::model::{AdminState, Mode, OpState};
    use crate::plan::Plan;

    /// HAProxy with one owned backend of four serving servers that Nomad no longer lists. It
    /// records what it is asked to apply and changes nothing, so every pass plans the same.
    struct Fake {
        live: Live,
        applied: Mutex<Vec<Vec<&'static str>>>,
    }

    impl Fake {
        fn new() -> Fake {
            let servers = (1..=4)
                .map(|i| {
                    let name = format!("hnc_10.0.0.{i}_80");
                    let server = LiveServer {
                        name: name.clone(),
                        endpoint: None,
                        admin: AdminState::Ready,
                        op: OpState::Up,
                        check_enabled: true,
                        weight: 1,
                        sessions: 0,
                        drain_started: None,
                    };
                    (name, server)
                })
                .collect();
            let mut live = Live::default();
            live.backends.insert(
                "web".into(),
                LiveBackend {
                    name: "web".into(),
                    owned: true,
                    mode: Mode::Http,
                    balance: None,
                    settings: None,
                    servers,
                },
            );
            Fake {
                live,
                applied: Mutex::new(Vec::new()),
            }
        }

        fn removals_applied(&self) -> usize {
            self.applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|ops| ops.contains(&"drain_server"))
                .count()
        }
    }

    impl Driver for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        async fn observe(&self) -> Result<Live, DriverError> {
            Ok(self.live.clone())
        }

        fn profile(&self) -> crate::plan::DriverProfile {
            crate::plan::DriverProfile::NEUTRAL
        }

        async fn apply(&self, plan: &Plan) -> Result<ApplyReport, DriverError> {
            self.applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(plan.ops.iter().map(|o| o.action.name()).collect());
            Ok(ApplyReport::default())
        }
    }

    /// Under paused time: the held mass removal wakes the loop when the hold is up (no resync,
    /// no catalog change, not at the debounce pace), asks then for the relist that confirms it,
    /// and applies as soon as that relist completes.
    #[tokio::test(start_paused = true)]
    async fn a_held_mass_removal_waits_for_the_hold_and_a_relist_and_wakes_itself() {
        let driver = Arc::new(Fake::new());
        let empty = Snapshot {
            synced: true,
            ..Snapshot::default()
        };
        let (_catalog_tx, catalog) = watch::channel(Arc::new(empty));
        let (relists_tx, relists_rx) = watch::channel(0u64);
        let asked = Arc::new(AtomicU64::new(0));
        let relists = {
            let asked = asked.clone();
            Relists::new(relists_rx, move || {
                asked.fetch_add(1, Ordering::SeqCst);
            })
        };
        let settings = Settings {
            // No resync pass during the test: only the controller's own wake-ups.
            resync: Duration::from_secs(3600),
            mass_delete_hold: Duration::from_secs(60),
            mass_delete_confirmations: 2,
            ..Settings::default()
        };
        let controller = Controller::new(driver.clone(), catalog, relists, settings);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (records_tx, mut records) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(controller.run(shutdown, move |r: &PassReport| {
            let _ = records_tx.send((Instant::now(), r.held_mass_delete.clone()));
        }));
        let t0 = Instant::now();

        // The first pass (the interval's first tick) holds; a relist now would confirm nothing.
        let (_, held) = records.recv().await.expect("first pass");
        assert!(
            matches!(
                held,
                Some(Verdict::Held {
                    servers: 4,
                    owned: 4,
                    relisted: false,
                    ..
                })
            ),
            "{held:?}"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 0, "no relist asked yet");
        assert_eq!(driver.removals_applied(), 0);

        // Nothing happens until the hold is up; then the loop wakes by itself, still holds,
        // and asks for the relist that confirms the end of the hold.
        let (at, held) = records.recv().await.expect("pass at the end of the hold");
        assert!(
            at - t0 >= Duration::from_secs(60) && at - t0 < Duration::from_secs(62),
            "woke at {:?}",
            at - t0
        );
        assert!(
            matches!(
                held,
                Some(Verdict::Held {
                    relisted: false,
                    seen: 2,
                    ..
                })
            ),
            "{held:?}"
        );
        assert_eq!(asked.load(Ordering::SeqCst), 1, "the relist was asked for");
        assert_eq!(driver.removals_applied(), 0);

        // Ten seconds later the relist completes: an immediate re-check, which proceeds.
        tokio::time::sleep(Duration::from_secs(10)).await;
        relists_tx.send_replace(1);
        let (at, held) = records.recv().await.expect("re-check after the relist");
        assert!(at - t0 < Duration::from_secs(72), "{:?}", at - t0);
        assert_eq!(held, None, "proceeded");
        assert_eq!(asked.load(Ordering::SeqCst), 1, "no second request");
        assert_eq!(driver.removals_applied(), 1, "the removals were applied");

        shutdown_tx.send_replace(true);
        task.await.expect("controller stops");
    }
}
