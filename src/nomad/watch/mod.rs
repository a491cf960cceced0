//! The Nomad watcher: keeps the catalog [`Store`](crate::catalog::Store) equal to Nomad's
//! service registrations.
//!
//! Events are hints, reads are the truth (CONTRACTS §1.5). Three inputs feed one loop:
//! - the **event stream** (one per scope): every Service event means "re-read that service"; a
//!   burst for one service costs one read. Every (re)connect asks for a full relist, because
//!   Nomad silently skips ahead when the resume index has left its buffer;
//! - a **blocking list** of `/v1/services` (one per scope) with the table-wide index, waiting up
//!   to the resync interval: it tells whether anything changed at all. An index that moved
//!   without events explaining it (after a short grace) causes a relist; an index that went
//!   backwards resets the indexes and relists;
//! - the **resync timer**: every interval, if the index moved since the last full read, re-read
//!   everything. An idle cluster therefore costs one list request per interval and scope.
//!
//! A full relist is `/v1/services` plus one read per enabled service, swapped into the store in
//! one step (see [`relist`]).
//!
//! Every decision is made by a pure state machine ([`machine`]: inputs in, commands out, the
//! clock passed in); the [`executor`] runs its commands with the Nomad client and feeds the
//! answers back ([`io`] holds the reads and the stream connection).

mod checks;
mod executor;
mod io;
pub(crate) mod machine;
mod relist;
mod settings;
mod streams;

#[cfg(test)]
mod machine_tests;

pub use executor::{RelistRequester, Watcher};
pub use settings::{Tuning, WatcherSettings};
