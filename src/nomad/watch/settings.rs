//! What the watcher watches ([`WatcherSettings`]) and its timings ([`Tuning`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

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
    /// Service reads in flight at once during a relist; also check-result reads in flight.
    pub read_concurrency: usize,
    /// Period of the check-results poll (`nomad.gate_on_checks`): 5 s, or the resync interval
    /// when shorter.
    pub check_poll: Duration,
    /// Most allocations whose checks one poll reads; the next poll goes on from there.
    pub check_reads_max: usize,
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
            check_poll: Duration::from_secs(5),
            check_reads_max: 256,
        }
    }
}

impl Tuning {
    /// A fresh retry schedule: from `backoff_min`, doubling with jitter up to `backoff_max`,
    /// never giving up. The jitter comes from `seed`, so the schedule is a function of it.
    pub(super) fn backoff(&self, seed: u64) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_jitter()
            .with_jitter_seed(seed)
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
    /// Poll Nomad's check results (`nomad.gate_on_checks`).
    pub gate_on_checks: bool,
    pub tuning: Tuning,
}

impl WatcherSettings {
    pub fn from_config(config: &NomadConfig) -> Self {
        let mut tuning = Tuning::default();
        // Check results are polled at least once per resync (a shorter resync polls faster).
        tuning.check_poll = tuning.check_poll.min(config.resync_interval);
        WatcherSettings {
            namespaces: config.namespaces.clone(),
            namespace_deny: config.namespace_deny.clone(),
            tag_prefix: config.tag_prefix.clone(),
            resync_interval: config.resync_interval,
            gate_on_checks: config.gate_on_checks,
            tuning,
        }
    }

    /// The `namespace` values to list and subscribe with: `*`, or each listed namespace that is
    /// not denied.
    pub(super) fn scopes(&self) -> Vec<String> {
        match &self.namespaces {
            Namespaces::All => vec!["*".to_string()],
            Namespaces::List(list) => list
                .iter()
                .filter(|n| !self.namespace_deny.contains(n))
                .cloned()
                .collect(),
        }
    }

    pub(super) fn watches(&self, namespace: &str) -> bool {
        !self.namespace_deny.iter().any(|n| n == namespace)
            && match &self.namespaces {
                Namespaces::All => true,
                Namespaces::List(list) => list.iter().any(|n| n == namespace),
            }
    }

    pub(super) fn scope_covers(scope: &str, namespace: &str) -> bool {
        scope == "*" || scope == namespace
    }
}
