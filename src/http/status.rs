//! The status board: what the reconcile loop reports about itself, read by `/healthz`, `/readyz`
//! and `/status`.
//!
//! The loop writes; handlers read. Every method takes the current [`Instant`] explicitly, so the
//! liveness and readiness rules are plain functions of recorded times (tests use a fake clock).
//! Error texts are scrubbed of credentials when they are recorded, so nothing secret can reach an
//! HTTP response.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{LazyLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde::{Serialize, Serializer};

use crate::desired::Diagnostic;
use crate::plan::PendingDrain;
use crate::reconcile::{PassReport, PassResult};

/// `/healthz` fails when the last heartbeat is older than this many resync intervals.
pub const LIVENESS_INTERVALS: u32 = 3;
/// `/readyz` fails when the last successful pass is older than this many resync intervals.
pub const STALENESS_INTERVALS: u32 = 3;
/// `/status` lists the reasons of this many most recent reloads.
pub const RECENT_RELOADS: usize = 10;

/// A not-ready condition the loop (or the watcher, or the driver) sets and clears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Nomad cannot be reached (connection refused, timeout, 5xx).
    NomadUnreachable,
    /// Nomad refuses the token (401/403).
    NomadDenied,
    /// HAProxy (its Data Plane API or runtime socket) cannot be reached.
    HaproxyUnreachable,
    /// The last pass failed. Maintained by [`Status::record_pass`].
    LastPassFailed,
    /// The mass-delete guard is holding a plan back. Maintained by [`Status::record_pass`].
    MassDeleteHeld,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::NomadUnreachable => "nomad_unreachable",
            Condition::NomadDenied => "nomad_denied",
            Condition::HaproxyUnreachable => "haproxy_unreachable",
            Condition::LastPassFailed => "last_pass_failed",
            Condition::MassDeleteHeld => "mass_delete_held",
        }
    }
}

/// Why `/readyz` answers 503. Serialized as its `as_str` code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NotReady {
    /// Shutdown has started.
    ShuttingDown,
    /// No pass has succeeded yet since start.
    NotYetConverged,
    /// The last successful pass is older than [`STALENESS_INTERVALS`] resync intervals.
    LastSuccessStale,
    /// A condition set by the loop.
    Condition(Condition),
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::ShuttingDown => "shutting_down",
            NotReady::NotYetConverged => "not_yet_converged",
            NotReady::LastSuccessStale => "last_success_stale",
            NotReady::Condition(c) => c.as_str(),
        }
    }
}

impl Serialize for NotReady {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the board keeps of the last pass's report.
#[derive(Clone, Debug, PartialEq)]
struct LastPassRecord {
    at: SystemTime,
    duration: Duration,
    result: PassResult,
    /// Operation counts by name; empty when nothing was planned.
    summary: BTreeMap<&'static str, usize>,
    /// The error, scrubbed of credentials.
    error: Option<String>,
}

/// The Nomad side, as the watcher reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NomadState {
    /// The event stream is connected.
    pub connected: bool,
    /// The first full list of services has completed.
    pub synced: bool,
    /// The last Nomad index seen (stream or list).
    pub last_index: u64,
    /// Stream reconnections so far.
    pub reconnects: u64,
    /// The last error talking to Nomad, if the last attempt failed.
    pub last_error: Option<String>,
}

/// The HAProxy side, as the driver reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriverState {
    /// The driver in use (`dataplane`, `runtime`).
    pub name: String,
    /// The last error talking to HAProxy, if the last attempt failed.
    pub last_error: Option<String>,
    /// Reloads caused so far.
    pub reloads: u64,
    /// Reasons of the most recent reloads, newest last.
    pub recent_reload_reasons: Vec<String>,
}

/// Whether the loop is alive (`/healthz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub alive: bool,
    /// Time since the last heartbeat.
    pub since_heartbeat: Duration,
}

/// Whether the connector is ready (`/readyz`); `reasons` is empty exactly when `ready`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<NotReady>,
}

/// The shared board. Cheap to read; written by the loop a few times per pass.
#[derive(Debug)]
pub struct Status {
    board: RwLock<Board>,
}

#[derive(Debug)]
struct Board {
    resync_interval: Duration,
    last_beat: Instant,
    shutting_down: bool,
    /// Instant and wall time of the last successful pass; `None` before the first.
    last_success: Option<(Instant, SystemTime)>,
    conditions: BTreeSet<Condition>,
    last_pass: Option<LastPassRecord>,
    passes: BTreeMap<&'static str, u64>,
    diagnostics: Vec<Diagnostic>,
    pending_drains: Vec<PendingDrain>,
    nomad: NomadState,
    driver: DriverState,
}

impl Status {
    /// A board for a loop that resyncs every `resync_interval`. Creation counts as the first
    /// heartbeat, so the process is live while it starts.
    pub fn new(resync_interval: Duration, now: Instant) -> Status {
        Status {
            board: RwLock::new(Board {
                resync_interval,
                last_beat: now,
                shutting_down: false,
                last_success: None,
                conditions: BTreeSet::new(),
                last_pass: None,
                passes: PassResult::ALL.iter().map(|r| (r.as_str(), 0)).collect(),
                diagnostics: Vec::new(),
                pending_drains: Vec::new(),
                nomad: NomadState::default(),
                driver: DriverState::default(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Board> {
        self.board.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Board> {
        self.board.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the resync interval the liveness and staleness windows are derived from.
    pub fn set_resync_interval(&self, interval: Duration) {
        self.write().resync_interval = interval;
    }

    /// The loop is alive at `now`. Call it every loop iteration (at least once per resync).
    pub fn beat(&self, now: Instant) {
        self.write().last_beat = now;
    }

    /// Sets (`active`) or clears a not-ready condition.
    pub fn set_condition(&self, condition: Condition, active: bool) {
        let mut b = self.write();
        if active {
            b.conditions.insert(condition);
        } else {
            b.conditions.remove(&condition);
        }
    }

    /// Shutdown has started: readiness is false from now on.
    pub fn begin_shutdown(&self) {
        self.write().shutting_down = true;
    }

    /// Records a finished pass from its report (also a heartbeat). A successful pass (`success`,
    /// `noop`) marks the first converge, refreshes the last success and clears `last_pass_failed`
    /// and `mass_delete_held`; an `error` sets `last_pass_failed`; a `held` pass sets
    /// `mass_delete_held` and clears `last_pass_failed`. `haproxy_unreachable` follows the pass.
    /// Unless the pass failed, its diagnostics and pending drains replace the board's. The driver
    /// section takes the pass's error and adds its reloads (keeping the [`RECENT_RELOADS`] most
    /// recent reasons). Error texts are scrubbed of credentials.
    pub fn record_pass(&self, report: &PassReport, now: Instant) {
        let error = report.error.as_deref().map(scrub);
        let mut summary = BTreeMap::new();
        for op in &report.ops {
            *summary.entry(op.name).or_default() += 1;
        }
        let mut b = self.write();
        b.last_beat = now;
        *b.passes.entry(report.result.as_str()).or_default() += 1;
        match report.result {
            PassResult::Success | PassResult::Noop => {
                b.last_success = Some((now, report.finished_at));
                b.conditions.remove(&Condition::LastPassFailed);
                b.conditions.remove(&Condition::MassDeleteHeld);
            }
            PassResult::Error => {
                b.conditions.insert(Condition::LastPassFailed);
            }
            PassResult::Held => {
                b.conditions.insert(Condition::MassDeleteHeld);
                b.conditions.remove(&Condition::LastPassFailed);
            }
        }
        if report.haproxy_unreachable {
            b.conditions.insert(Condition::HaproxyUnreachable);
        } else {
            b.conditions.remove(&Condition::HaproxyUnreachable);
        }
        if report.result != PassResult::Error {
            b.diagnostics = report.diagnostics.clone();
            b.pending_drains = report.pending_drains.clone();
        }
        let driver = &mut b.driver;
        driver.last_error = error.clone();
        driver.reloads += report.reloads.len() as u64;
        driver
            .recent_reload_reasons
            .extend(report.reloads.iter().map(|r| scrub(&r.detail)));
        let excess = driver
            .recent_reload_reasons
            .len()
            .saturating_sub(RECENT_RELOADS);
        driver.recent_reload_reasons.drain(..excess);
        b.last_pass = Some(LastPassRecord {
            at: report.finished_at,
            duration: report.duration,
            result: report.result,
            summary,
            error,
        });
    }

    /// Names the driver in use (`/status`'s `driver.name`).
    pub fn set_driver_name(&self, name: &str) {
        self.write().driver.name = name.to_string();
    }

    /// The current per-service diagnostics (`Desired::diagnostics` of the last pass).
    pub fn set_diagnostics(&self, diagnostics: Vec<Diagnostic>) {
        self.write().diagnostics = diagnostics;
    }

    /// The servers currently draining (`Plan::pending_drains` of the last pass).
    pub fn set_pending_drains(&self, drains: Vec<PendingDrain>) {
        self.write().pending_drains = drains;
    }

    /// The Nomad watcher's state; its error text is scrubbed of credentials.
    pub fn set_nomad(&self, mut nomad: NomadState) {
        nomad.last_error = nomad.last_error.as_deref().map(scrub);
        self.write().nomad = nomad;
    }

    /// The driver's state; its error text is scrubbed of credentials.
    pub fn set_driver(&self, mut driver: DriverState) {
        driver.last_error = driver.last_error.as_deref().map(scrub);
        driver.recent_reload_reasons = driver
            .recent_reload_reasons
            .iter()
            .map(|r| scrub(r))
            .collect();
        self.write().driver = driver;
    }

    /// Liveness at `now`: a heartbeat within [`LIVENESS_INTERVALS`] resync intervals.
    pub fn liveness(&self, now: Instant) -> Liveness {
        let b = self.read();
        let since = now.saturating_duration_since(b.last_beat);
        Liveness {
            alive: since <= b.resync_interval.saturating_mul(LIVENESS_INTERVALS),
            since_heartbeat: since,
        }
    }

    /// Readiness at `now`: not shutting down, converged at least once, the last success within
    /// [`STALENESS_INTERVALS`] resync intervals, and no condition set.
    pub fn readiness(&self, now: Instant) -> Readiness {
        readiness(&self.read(), now)
    }

    /// Everything on the board, for `/status`.
    pub fn view(&self, now: Instant) -> StatusView {
        let b = self.read();
        let since = now.saturating_duration_since(b.last_beat);
        StatusView {
            readiness: readiness(&b, now),
            alive: since <= b.resync_interval.saturating_mul(LIVENESS_INTERVALS),
            seconds_since_heartbeat: since.as_secs_f64(),
            resync_interval_seconds: b.resync_interval.as_secs_f64(),
            last_success: b.last_success.map(|(at, wall)| LastSuccess {
                at: rfc3339(wall),
                at_unix: unix(wall),
                seconds_ago: now.saturating_duration_since(at).as_secs_f64(),
            }),
            last_pass: b.last_pass.as_ref().map(|p| LastPass {
                at: rfc3339(p.at),
                at_unix: unix(p.at),
                duration_ms: p.duration.as_secs_f64() * 1000.0,
                result: p.result,
                plan: p.summary.clone(),
                error: p.error.clone(),
            }),
            passes: b.passes.clone(),
            diagnostics: b.diagnostics.clone(),
            pending_drains: b.pending_drains.clone(),
            nomad: b.nomad.clone(),
            driver: b.driver.clone(),
        }
    }
}

fn readiness(b: &Board, now: Instant) -> Readiness {
    let mut reasons = Vec::new();
    if b.shutting_down {
        reasons.push(NotReady::ShuttingDown);
    }
    match b.last_success {
        None => reasons.push(NotReady::NotYetConverged),
        Some((at, _)) => {
            if now.saturating_duration_since(at)
                > b.resync_interval.saturating_mul(STALENESS_INTERVALS)
            {
                reasons.push(NotReady::LastSuccessStale);
            }
        }
    }
    reasons.extend(b.conditions.iter().copied().map(NotReady::Condition));
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub readiness: Readiness,
    pub alive: bool,
    pub seconds_since_heartbeat: f64,
    pub resync_interval_seconds: f64,
    pub last_success: Option<LastSuccess>,
    pub last_pass: Option<LastPass>,
    /// Passes since start, by result.
    pub passes: BTreeMap<&'static str, u64>,
    pub diagnostics: Vec<Diagnostic>,
    pub pending_drains: Vec<PendingDrain>,
    pub nomad: NomadState,
    pub driver: DriverState,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastSuccess {
    /// RFC 3339, UTC.
    pub at: Option<String>,
    pub at_unix: Option<f64>,
    pub seconds_ago: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastPass {
    /// RFC 3339, UTC.
    pub at: Option<String>,
    pub at_unix: Option<f64>,
    pub duration_ms: f64,
    pub result: PassResult,
    /// Operation counts by name.
    pub plan: BTreeMap<&'static str, usize>,
    pub error: Option<String>,
}

/// Seconds since the epoch of the latest time `humantime` can format (10000-01-01).
const MAX_RFC3339_SECS: u64 = 253_402_300_800;

fn rfc3339(t: SystemTime) -> Option<String> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() < MAX_RFC3339_SECS).then(|| humantime::format_rfc3339_millis(t).to_string())
}

fn unix(t: SystemTime) -> Option<f64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

static URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    // Up to the last `@` of the authority: a password may hold an `@` itself.
    Regex::new(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]+@").expect("valid regex")
});
static SECRET_PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?P<key>[A-Za-z_\-]*(?:token|password|passwd|secret|api_key|apikey)[A-Za-z_\-]*)(?P<sep>\s*[=:]\s*)[^&\s,;]+")
        .expect("valid regex")
});
static AUTH_SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?P<scheme>basic|bearer)\s+[A-Za-z0-9+/=._~\-]+").expect("valid regex")
});

/// Removes credentials from an error text: URL user-info (`http://user:pass@host`),
/// `token=…`/`password: …`-style pairs and `Basic …`/`Bearer …` values.
pub fn scrub(text: &str) -> String {
    let s = URL_USERINFO.replace_all(text, "${scheme}<redacted>@");
    let s = SECRET_PARAM.replace_all(&s, "${key}${sep}<redacted>");
    AUTH_SCHEME
        .replace_all(&s, "${scheme} <redacted>")
        .into_owned()
}
