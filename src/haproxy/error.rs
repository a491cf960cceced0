//! Driver failures: the kind a caller branches on ([`DriverError`]) around the error that caused
//! it, kept whole ([`Cause`]). `std::error::Error::source` of a [`DriverError`] is that original
//! error (a [`DataplaneError`], a [`SocketError`], a [`FileError`], …), so a caller can walk the
//! chain down to the `reqwest` or `io` error and downcast it; the text is the one operators know.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

use super::dataplane::error::DataplaneError;
use super::runtime::files::{FileError, RestoreError};
use super::runtime::socket::{ArgError, SocketError};
use super::runtime::state::ParseError;

/// A driver failure. Variants are those a caller branches on; each keeps its [`Cause`], and
/// [`Error::source`] is the cause's original error (none for a [`Cause::Message`]).
#[derive(Debug)]
pub enum DriverError {
    /// Lost a race with another writer (version conflict, outdated transaction): observe again
    /// and re-plan. Retryable at once.
    Conflict(Cause),
    /// HAProxy or its API could not be reached or timed out. Retryable with backoff.
    Unreachable(Cause),
    /// HAProxy (or the API) refused a change; the message is HAProxy's. Retryable with backoff
    /// (the next pass re-plans from a fresh observation).
    Rejected(Cause),
    /// Anything else (bad credentials, unexpected answers).
    Other(Cause),
}

impl DriverError {
    /// A stable label for metrics and `/readyz`.
    pub fn kind(&self) -> &'static str {
        match self {
            DriverError::Conflict(_) => "conflict",
            DriverError::Unreachable(_) => "unreachable",
            DriverError::Rejected(_) => "rejected",
            DriverError::Other(_) => "other",
        }
    }

    /// What caused it.
    pub fn cause(&self) -> &Cause {
        match self {
            DriverError::Conflict(c)
            | DriverError::Unreachable(c)
            | DriverError::Rejected(c)
            | DriverError::Other(c) => c,
        }
    }

    /// The same kind of error, its cause changed by `f`.
    fn map_cause(self, f: impl FnOnce(Cause) -> Cause) -> DriverError {
        match self {
            DriverError::Conflict(c) => DriverError::Conflict(f(c)),
            DriverError::Unreachable(c) => DriverError::Unreachable(f(c)),
            DriverError::Rejected(c) => DriverError::Rejected(f(c)),
            DriverError::Other(c) => DriverError::Other(f(c)),
        }
    }

    /// This error (a failed check or reload) with the failure to restore the previous files
    /// kept beside it: same kind, same source, both in the text.
    pub fn with_restore_failure(self, restore: RestoreError) -> DriverError {
        self.map_cause(|failure| Cause::Unrestored {
            failure: Box::new(failure),
            restore,
        })
    }

    /// The failure to restore the previous files after this error, if there was one.
    pub fn restore_failure(&self) -> Option<&RestoreError> {
        match self.cause() {
            Cause::Unrestored { restore, .. } => Some(restore),
            _ => None,
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Conflict(c) => write!(f, "conflict with another writer: {c}"),
            DriverError::Unreachable(c) => write!(f, "HAProxy unreachable: {c}"),
            DriverError::Rejected(c) => write!(f, "HAProxy rejected the change: {c}"),
            DriverError::Other(c) => write!(f, "{c}"),
        }
    }
}

impl Error for DriverError {
    /// The original error of the cause (not the [`Cause`] wrapper, whose text is the same).
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause().original()
    }
}

/// What caused a [`DriverError`]: the error of the layer below, kept as it is, or the driver's
/// (or HAProxy's) own words where no error value exists. Its text is the part of the message
/// after the kind's prefix.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A Data Plane API request failed.
    #[error("{0}")]
    Dataplane(#[source] DataplaneError),
    /// A CLI command could not be sent or answered.
    #[error("{0}")]
    Socket(#[source] SocketError),
    /// A file of the runtime driver could not be read or written.
    #[error("{0}")]
    File(#[source] FileError),
    /// A `show` reply is not the dump it should be.
    #[error("{0}")]
    Parse(#[source] ParseError),
    /// A map file path cannot be one CLI argument.
    #[error("map file {file}: {source}")]
    MapFile {
        file: String,
        #[source]
        source: ArgError,
    },
    /// `haproxy -c` could not be started.
    #[error("cannot run {} -c: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The driver's decision or HAProxy's own message (a refusal, a failed reload); no error
    /// value lies below it.
    #[error("{0}")]
    Message(String),
    /// `failure` (a failed check or reload), then restoring the previous files failed too.
    #[error("{failure}; {restore}")]
    Unrestored {
        #[source]
        failure: Box<Cause>,
        restore: RestoreError,
    },
}

impl Cause {
    /// A cause in words.
    pub fn message(text: impl Into<String>) -> Cause {
        Cause::Message(text.into())
    }

    /// The original error: the inner error of each variant; through an [`Cause::Unrestored`],
    /// that of the failure (its restore failure is [`DriverError::restore_failure`]).
    pub fn original(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Cause::Dataplane(e) => Some(e),
            Cause::Socket(e) => Some(e),
            Cause::File(e) => Some(e),
            Cause::Parse(e) => Some(e),
            Cause::MapFile { source, .. } => Some(source),
            Cause::Spawn { source, .. } => Some(source),
            Cause::Message(_) => None,
            Cause::Unrestored { failure, .. } => failure.original(),
        }
    }
}
