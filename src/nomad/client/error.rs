//! Errors of the Nomad client: a failed call ([`NomadError`]) and a configuration that cannot make
//! a client ([`SetupError`]), each keeping the error that caused it as its source.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::InvalidHeaderValue;

/// A failed call to Nomad. All are retryable except [`NomadError::Config`]; a
/// [`NomadError::PermissionDenied`] needs an operator before a retry can succeed.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// The configuration cannot make a client (unreadable PEM, bad token characters).
    #[error("cannot set up the Nomad client: {0}")]
    Config(#[source] SetupError),
    /// 403 (or the 500 `Permission denied` of older servers on the event stream): the token
    /// lacks `read-job` on the namespace. Never means "no services".
    #[error(
        "Nomad denied {what} ({status} {message}): the token needs the `read-job` capability on namespace `{namespace}`"
    )]
    PermissionDenied {
        what: String,
        namespace: String,
        status: u16,
        message: String,
    },
    /// Any other non-success status; the body is Nomad's plain-text message.
    #[error("Nomad answered {status} to {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    /// No answer: connection refused, TLS failure, timeout. The message carries the whole cause
    /// chain (e.g. the certificate problem), not just reqwest's summary.
    #[error("cannot reach Nomad for {what}: {}", error_chain(.source))]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// No answer within the endpoint's deadline where reqwest does not keep it (the event
    /// stream's headers).
    #[error("cannot reach Nomad for {what}: no answer within {after:?}")]
    Timeout { what: String, after: Duration },
    /// An answer that is not what Nomad sends.
    #[error("unexpected answer from Nomad to {what}: {reason}")]
    Protocol { what: String, reason: String },
    /// A body that is not the JSON Nomad sends for `what`.
    #[error("unexpected answer from Nomad to {what}: the body is not the expected JSON: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An error and all its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl NomadError {
    /// A transport error for `what`, without the request URL (which can carry user-info): every
    /// `Transport` is built here.
    pub fn transport(what: impl Into<String>, source: reqwest::Error) -> NomadError {
        NomadError::Transport {
            what: what.into(),
            source: source.without_url(),
        }
    }

    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NomadError::PermissionDenied { .. })
    }
}

/// Why the configuration cannot make a Nomad client.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token cannot be an HTTP header value (the token itself is never shown).
    #[error("the Nomad token holds characters not allowed in an HTTP header")]
    Token(#[source] InvalidHeaderValue),
    /// The base URL of a `unix://` address.
    #[error("{0}")]
    Url(#[source] url::ParseError),
    /// A TLS file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `nomad.ca_cert` is not a PEM bundle.
    #[error("{} is not a PEM CA bundle: {source}", path.display())]
    CaBundle {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    /// `nomad.client_cert` and `nomad.client_key` are not a PEM certificate and key.
    #[error("{} and {} are not a PEM certificate and key: {source}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    /// `nomad.tls_server_name` cannot be a URL host.
    #[error("`{name}` is not a valid TLS server name: {source}")]
    ServerName {
        name: String,
        #[source]
        source: url::ParseError,
    },
    /// The HTTP client cannot be built (TLS backend).
    #[error("{0}")]
    Build(#[source] reqwest::Error),
}
