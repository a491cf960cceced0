//! The machine's helpers, one pair per scope: the **blocking list** of `/v1/services` (it tells
//! whether anything changed at all; each answer sends the next request, blocking on the index it
//! returned, floored at 1 so an index-0 answer cannot spin; a failure waits a backoff) and the
//! **event stream** (its events are hints; it reconnects forever with backoff, reset once a
//! connection lived `stream_stable_after`, and resumes where it left off, never before the last
//! full relist).

use std::collections::BTreeSet;
use std::time::Instant;

use tracing::{debug, warn};

use super::machine::{Command, ListResult, Machine, Stat, StreamEnd};
use crate::catalog::ServiceKey;
use crate::nomad::client::MAX_BLOCKING_WAIT;
use crate::nomad::wire::Event;

impl Machine {
    /// Opens the blocking lists and streams whose time has come.
    pub(super) fn lifecycle_timers(&mut self, now: Instant, out: &mut Vec<Command>) {
        let wait = self.settings.resync_interval.min(MAX_BLOCKING_WAIT);
        let floor = self.full_read_index;
        for scope in &mut self.scopes {
            if scope.poll_at.is_some_and(|at| at <= now) {
                scope.poll_at = None;
                out.push(Command::Poll {
                    scope: scope.name.clone(),
                    index: scope.poll_index,
                    wait,
                });
            }
            if scope.stream_at.is_some_and(|at| at <= now) {
                if scope.stream_opened {
                    out.push(Command::Stat(Stat::Reconnect));
                }
                scope.stream_opened = true;
                scope.stream_at = None;
                scope.stream_started = Some(now);
                out.push(Command::OpenStream {
                    scope: scope.name.clone(),
                    index: scope.resume.connect(floor),
                });
            }
        }
    }

    /// A blocking list answered: the next one goes out now, or after a backoff if it failed.
    pub(super) fn polled(
        &mut self,
        scope: &str,
        result: &ListResult,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let wait = self.settings.resync_interval.min(MAX_BLOCKING_WAIT);
        let Some(i) = self.scopes.iter().position(|s| s.name == scope) else {
            debug!(namespace = %scope, "a list answer for a scope not watched: ignored");
            return;
        };
        match result {
            Ok(page) => {
                let backoff = self.backoff();
                let s = &mut self.scopes[i];
                s.poll_index = page.index.max(1);
                s.poll_backoff = backoff;
                if !self.stopping {
                    out.push(Command::Poll {
                        scope: s.name.clone(),
                        index: s.poll_index,
                        wait,
                    });
                }
            }
            Err(_) => {
                let max = self.settings.tuning.backoff_max;
                let s = &mut self.scopes[i];
                s.poll_at = Some(now + s.poll_backoff.next().unwrap_or(max));
            }
        }
    }

    /// The events of a batch that are new (resume rules), counted; returns the watched
    /// services they name.
    pub(super) fn accept_batch(
        &mut self,
        scope: &str,
        index: u64,
        events: Vec<Event>,
        out: &mut Vec<Command>,
    ) -> BTreeSet<ServiceKey> {
        let mut keys = BTreeSet::new();
        let Some(s) = self.scopes.iter_mut().find(|s| s.name == scope) else {
            debug!(namespace = %scope, "events for a scope not watched: ignored");
            return keys;
        };
        for event in s.resume.accept(index, events) {
            out.push(Command::Stat(Stat::Event(event.kind.clone())));
            if event.topic != "Service" {
                continue;
            }
            if let Some((namespace, name)) = event.service()
                && self.settings.watches(&namespace)
            {
                keys.insert(ServiceKey::new(namespace, name));
            }
        }
        keys
    }

    /// A stream connection ended: it reconnects after a backoff, reset when the connection was
    /// stable.
    pub(super) fn stream_ended(
        &mut self,
        scope: &str,
        end: StreamEnd,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        match &end {
            StreamEnd::Closed(why)
                if why.contains("Permission denied") || why.contains("ACL token") =>
            {
                warn!(namespace = %scope, reason = %why, "event stream closed; reconnecting");
            }
            StreamEnd::Closed(why) => {
                debug!(namespace = %scope, reason = %why, "event stream closed; reconnecting");
            }
            StreamEnd::Failed(e) if e.is_permission_denied() => {
                warn!(namespace = %scope, error = %e, "cannot subscribe to the event stream");
                out.push(Command::Stat(Stat::LastError(Some(e.to_string()))));
            }
            StreamEnd::Failed(e) => {
                debug!(namespace = %scope, error = %e, "event stream failed; reconnecting");
            }
        }
        let Some(i) = self.scopes.iter().position(|s| s.name == scope) else {
            return;
        };
        let stable = self.settings.tuning.stream_stable_after;
        if self.scopes[i]
            .stream_started
            .is_some_and(|started| now.saturating_duration_since(started) >= stable)
        {
            self.scopes[i].stream_backoff = self.backoff();
        }
        let max = self.settings.tuning.backoff_max;
        let s = &mut self.scopes[i];
        s.stream_started = None;
        s.stream_at = Some(now + s.stream_backoff.next().unwrap_or(max));
    }
}
