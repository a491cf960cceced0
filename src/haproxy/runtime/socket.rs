//! The HAProxy CLI over unix sockets: pure reply interpretation (mini-redis style: a function over
//! the bytes HAProxy sent) and a thin async client that sends one command per connection in
//! non-interactive mode.
//!
//! One command per connection keeps replies unambiguous: HAProxy 2.6 writes many messages without
//! a trailing LF and 3.0 always adds one (CONTRACTS §3.1), so the boundary between two replies in a
//! `;`-joined batch cannot be told apart on 2.6. A unix-socket connection costs tens of
//! microseconds, far below HAProxy's own command handling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Where worker commands go: the admin stats socket, or the master CLI with the `@1` prefix
/// (the current worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerRoute {
    Admin(PathBuf),
    Master(PathBuf),
}

/// A CLI transport failure (the command's fate is unknown).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error on {} while running `{command}`: {source}", path.display())]
    Io {
        path: PathBuf,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete answer from {} to `{command}` within {timeout:?}", path.display())]
    Timeout {
        path: PathBuf,
        command: String,
        timeout: Duration,
    },
}

/// Sends `command` (one line) to the CLI socket at `path` and reads until HAProxy closes the
/// connection.
pub async fn command(path: &Path, command: &str, timeout: Duration) -> Result<String, SocketError> {
    let run = async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| SocketError::Connect {
                    path: path.to_path_buf(),
                    source,
                })?;
        let io = |source| SocketError::Io {
            path: path.to_path_buf(),
            command: command.to_string(),
            source,
        };
        let mut line = Vec::with_capacity(command.len() + 1);
        line.extend_from_slice(command.as_bytes());
        line.push(b'\n');
        stream.write_all(&line).await.map_err(io)?;
        // The master CLI answers only once the client has finished sending.
        stream.shutdown().await.map_err(io)?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.map_err(io)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(SocketError::Timeout {
            path: path.to_path_buf(),
            command: command.to_string(),
            timeout,
        }),
    }
}

impl WorkerRoute {
    /// Runs one worker command.
    pub async fn run(&self, cmd: &str, timeout: Duration) -> Result<String, SocketError> {
        match self {
            WorkerRoute::Admin(p) => command(p, cmd, timeout).await,
            WorkerRoute::Master(p) => command(p, &format!("@1 {cmd}"), timeout).await,
        }
    }
}

/// The outcome of a command that changes state, from its reply text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// HAProxy refused; its message, trimmed and without a severity prefix.
    Refused(String),
}

/// Interprets the reply to a state-changing command. HAProxy answers these with nothing on
/// success (`set server`, `enable health`, `add map`, …) or with one known success message
/// (`New server registered.`, `Server deleted.`); anything else is a refusal. This holds on 2.6 and
/// 3.0, over the admin socket and through the master, with or without `set severity-output`.
pub fn outcome(reply: &str, success: &[&str]) -> Outcome {
    let text = message(reply);
    if text.is_empty() || success.contains(&text.as_str()) {
        Outcome::Done
    } else {
        Outcome::Refused(text)
    }
}

/// The reply's text: trimmed, with a `[N]: ` severity prefix removed.
pub fn message(reply: &str) -> String {
    let t = reply.trim();
    let t = match t.strip_prefix('[') {
        Some(rest) if rest.len() > 4 && rest.as_bytes()[0].is_ascii_digit() => rest
            .split_once("]: ")
            .map_or(t, |(sev, msg)| if sev.len() == 1 { msg } else { t }),
        _ => t,
    };
    t.trim().to_string()
}

/// Escapes one argument for the HAProxy CLI tokenizer, which removes a backslash before any
/// character (so `\.` would arrive as `.`): backslashes are doubled. Spaces and `;` never reach
/// here (the tag grammar rejects them); they are escaped anyway so an argument stays one argument.
pub fn escape_arg(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    for c in arg.chars() {
        if matches!(c, '\\' | ' ' | '\t' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_on_both_versions_framing() {
        // 3.0: one trailing LF on the message plus the command terminator; 2.6: often none.
        assert_eq!(
            outcome("No such server.\n\n", &[]),
            Outcome::Refused("No such server.".into())
        );
        assert_eq!(
            outcome("No such server.\n", &[]),
            Outcome::Refused("No such server.".into())
        );
        assert_eq!(
            outcome("[3]: No such backend.\n", &[]),
            Outcome::Refused("No such backend.".into())
        );
        assert_eq!(
            outcome("New server registered.\n\n", &["New server registered."]),
            Outcome::Done
        );
        assert_eq!(
            outcome("[6]: New server registered.\n", &["New server registered."]),
            Outcome::Done
        );
        assert_eq!(outcome("\n", &[]), Outcome::Done);
        assert_eq!(outcome("", &[]), Outcome::Done);
        // Unknown commands come with severity 6 (info) on 2.6 and 3.0: still a refusal.
        assert!(matches!(
            outcome(
                "[6]: Unknown command: 'bogus', but maybe one of the following ones is a better match:\n  x\n",
                &[]
            ),
            Outcome::Refused(m) if m.starts_with("Unknown command")
        ));
    }

    #[test]
    fn message_keeps_text_that_merely_starts_with_a_bracket() {
        assert_eq!(message("[abc]: x"), "[abc]: x");
        assert_eq!(message("  [4]: careful \n\n"), "careful");
    }

    #[test]
    fn escaping_keeps_backslashes() {
        assert_eq!(
            escape_arg(r"^api\.example\.test$"),
            r"^api\\.example\\.test$"
        );
        assert_eq!(escape_arg("plain.host"), "plain.host");
    }
}
