//! Cheap shared counters about the conversation with Nomad, for the later metrics and status
//! pages. Writers are the client and the watcher; readers take a [`StatsSnapshot`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Which Nomad API a request went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `GET /v1/services`
    List,
    /// `GET /v1/service/:name`
    Service,
    /// `GET /v1/job/:id`
    Job,
    /// `GET /v1/status/leader`
    Leader,
    /// `GET /v1/event/stream`
    Stream,
    /// `GET /v1/client/allocation/:alloc_id/checks`
    Checks,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::List => "list",
            Endpoint::Service => "service",
            Endpoint::Job => "job",
            Endpoint::Leader => "leader",
            Endpoint::Stream => "stream",
            Endpoint::Checks => "checks",
        }
    }
}

#[derive(Debug, Default)]
pub struct NomadStats {
    /// (endpoint, status code or `error`) → count.
    requests: Mutex<BTreeMap<(Endpoint, String), u64>>,
    /// Event type → count (after resume filtering and de-duplication).
    events: Mutex<BTreeMap<String, u64>>,
    stream_reconnects: AtomicU64,
    /// Event streams currently subscribed (one per watched scope).
    streams_connected: AtomicUsize,
    full_relists: AtomicU64,
    last_index: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: BTreeMap<(Endpoint, String), u64>,
    pub events: BTreeMap<String, u64>,
    pub stream_reconnects: u64,
    /// Event streams currently subscribed (one per watched scope: `*`, or each namespace).
    pub streams_connected: usize,
    pub full_relists: u64,
    pub last_index: u64,
    pub last_error: Option<String>,
}

impl StatsSnapshot {
    /// Requests to `endpoint`, all statuses together.
    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        self.requests
            .iter()
            .filter(|((e, _), _)| *e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a counter half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NomadStats {
    pub fn record_request(&self, endpoint: Endpoint, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
    }

    pub fn record_event(&self, kind: &str) {
        *lock(&self.events).entry(kind.to_string()).or_default() += 1;
    }

    pub fn record_reconnect(&self) {
        self.stream_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_up(&self) {
        self.streams_connected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_down(&self) {
        self.streams_connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn record_full_relist(&self) {
        self.full_relists.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_last_index(&self, index: u64) {
        self.last_index.store(index, Ordering::Relaxed);
    }

    pub fn set_last_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: lock(&self.requests).clone(),
            events: lock(&self.events).clone(),
            stream_reconnects: self.stream_reconnects.load(Ordering::Relaxed),
            streams_connected: self.streams_connected.load(Ordering::Relaxed),
            full_relists: self.full_relists.load(Ordering::Relaxed),
            last_index: self.last_index.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}
