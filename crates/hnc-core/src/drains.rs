//! Remembers when each draining server was first seen draining, across passes. The drain timeout
//! counts from there; a server that leaves drain is forgotten. Pure: no timers, no I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::live::Live;
use crate::model::{AdminState, is_owned_server};

#[derive(Clone, Debug, Default)]
pub struct DrainClock {
    since: BTreeMap<(String, String), Instant>,
}

impl DrainClock {
    /// Stamps `drain_started` on the connector's draining servers in `live`, from memory or
    /// `now` for a newly seen drain, and forgets servers that no longer drain.
    pub fn stamp(&mut self, live: &mut Live, now: Instant) {
        let mut seen = BTreeMap::new();
        for b in live.backends.values_mut() {
            for s in b.servers.values_mut() {
                if !is_owned_server(&s.name) || s.admin == AdminState::Ready {
                    continue;
                }
                let key = (b.name.clone(), s.name.clone());
                let started = self.since.get(&key).copied().unwrap_or(now);
                s.drain_started = Some(started);
                seen.insert(key, started);
            }
        }
        self.since = seen;
    }

    /// Number of servers currently draining.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{LiveBackend, LiveServer};
    use crate::model::{Mode, OpState};
    use std::time::Duration;

    fn live_with(admin: AdminState) -> Live {
        let mut live = Live::default();
        let server = LiveServer {
            name: "hnc_10.0.0.1_80".into(),
            endpoint: None,
            admin,
            op: OpState::Up,
            check_enabled: true,
            weight: 1,
            sessions: 1,
            drain_started: None,
        };
        live.backends.insert(
            "web".into(),
            LiveBackend {
                name: "web".into(),
                owned: true,
                mode: Mode::Http,
                balance: None,
                settings: None,
                servers: [(server.name.clone(), server)].into(),
            },
        );
        live
    }

    #[test]
    fn remembers_the_first_sighting_and_forgets_on_ready() {
        let t0 = Instant::now();
        let mut clock = DrainClock::default();
        let mut live = live_with(AdminState::Drain);
        clock.stamp(&mut live, t0);
        let mut later = live_with(AdminState::Drain);
        clock.stamp(&mut later, t0 + Duration::from_secs(10));
        assert_eq!(
            later.backends["web"].servers["hnc_10.0.0.1_80"].drain_started,
            Some(t0)
        );
        clock.stamp(
            &mut live_with(AdminState::Ready),
            t0 + Duration::from_secs(11),
        );
        assert!(clock.is_empty());
        let mut again = live_with(AdminState::Maint);
        clock.stamp(&mut again, t0 + Duration::from_secs(12));
        assert_eq!(
            again.backends["web"].servers["hnc_10.0.0.1_80"].drain_started,
            Some(t0 + Duration::from_secs(12))
        );
    }
}
