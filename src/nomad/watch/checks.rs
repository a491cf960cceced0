//! The check-results poll (`nomad.gate_on_checks`), as part of the watcher's state machine.
//!
//! Every `check_poll` (once the catalog is synced, when no other work is in flight), the machine
//! asks for the check results of the allocations whose job declares a check, at most
//! `check_reads_max` per poll (the next poll goes on from where this one stopped), read
//! `read_concurrency` at a time by the executor. The answers go into the store, which publishes
//! a new snapshot only when some health changed. A failed read keeps what was known of that
//! allocation: an error never gates nor un-gates an instance.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::{debug, warn};

use super::machine::{ChecksResult, Command, Machine, Work};

impl Machine {
    /// Starts a check poll when one is due and there is something to read.
    pub(super) fn start_checks(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(at) = self.checks_at else {
            return;
        };
        if at > now || !self.store.synced() || self.work.is_some() {
            return;
        }
        let all = self.store.checked_allocations();
        let max = self.settings.tuning.check_reads_max.max(1);
        if all.is_empty() {
            self.checks_at = Some(now + self.settings.tuning.check_poll);
            // Nothing to read, but results of allocations that left must be forgotten.
            self.store.set_check_health(BTreeMap::new());
            self.publish(out);
            return;
        }
        let start = if self.checks_cursor >= all.len() {
            0
        } else {
            self.checks_cursor
        };
        let allocs: Vec<(String, String)> = all
            .iter()
            .cycle()
            .skip(start)
            .take(max.min(all.len()))
            .cloned()
            .collect();
        self.checks_cursor = (start + allocs.len()) % all.len();
        debug!(
            allocations = allocs.len(),
            of = all.len(),
            "reading Nomad check results"
        );
        self.work = Some(Work::Checks);
        out.push(Command::ReadChecks { allocs });
    }

    /// A check poll answered.
    pub(super) fn checks_done(
        &mut self,
        results: Vec<(String, ChecksResult)>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        match self.work.take() {
            Some(Work::Checks) => {}
            other => {
                debug!("a check read answer nothing waits for: ignored");
                self.work = other;
                return;
            }
        }
        let mut read = BTreeMap::new();
        for (alloc, result) in results {
            match result {
                Ok(health) => {
                    read.insert(alloc, health.unwrap_or_default());
                }
                Err(e) if e.is_permission_denied() => {
                    warn!(allocation = %alloc, error = %e, "cannot read Nomad check results (the token needs `read-job` in the allocation's namespace); keeping the last known health");
                }
                Err(e) => {
                    warn!(allocation = %alloc, error = %e, "reading Nomad check results failed; keeping the last known health");
                }
            }
        }
        if self.store.set_check_health(read) {
            debug!("Nomad check health changed");
        }
        self.publish(out);
        self.checks_at = Some(now + self.settings.tuning.check_poll);
        if self.stopping {
            out.push(Command::Stop);
        }
    }
}
