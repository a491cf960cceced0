//! The HAProxy CLI over unix sockets: pure reply interpretation (mini-redis style: a function over
//! the bytes HAProxy sent) and a thin async client ([`Cli`]) that sends one command per
//! connection in non-interactive mode, under a timeout chosen by the command, and records each
//! command's duration in the [`CallMetrics`] it is built with.
//!
//! One command per connection keeps replies unambiguous: HAProxy 2.6 writes many messages without
//! a trailing LF and 3.0 always adds one (CONTRACTS §3.1), so the boundary between two replies in a
//! `;`-joined batch cannot be told apart on 2.6. A unix-socket connection costs tens of
//! microseconds, far below HAProxy's own command handling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::call_metrics::{CallMetrics, STATUS_ERROR, STATUS_TIMEOUT};

/// How long one ordinary CLI command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload may take to answer (and, in the driver, the new worker to show up).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// `endpoint` label of every command in `hnc_driver_requests_total` (with status `sent`).
pub const COUNTED_AS: (&str, &str) = ("socket_command", "sent");
/// `status` label of a command HAProxy answered (the answer may still be a refusal).
pub const STATUS_ANSWERED: &str = "answered";

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

/// The `endpoint` label of a command: its verb and object (`show_servers`, `add_server`,
/// `set_map`, `reload`, …) from a fixed set, `other` for anything else. Never an argument.
pub fn command_endpoint(cmd: &str) -> &'static str {
    let mut words = cmd.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let object = words.next().unwrap_or_default();
    match (verb, object) {
        ("reload", _) => "reload",
        ("show", "proc") => "show_proc",
        ("show", "info") => "show_info",
        ("show", "backend") => "show_backend",
        ("show", "servers") => "show_servers",
        ("show", "stat") => "show_stat",
        ("show", "map") => "show_map",
        ("add", "server") => "add_server",
        ("del", "server") => "del_server",
        ("set", "server") => "set_server",
        ("set", "weight") => "set_weight",
        ("add", "map") => "add_map",
        ("set", "map") => "set_map",
        ("del", "map") => "del_map",
        ("enable", "health") => "enable_health",
        ("disable", "health") => "disable_health",
        ("shutdown", "sessions") => "shutdown_sessions",
        _ => "other",
    }
}

/// The timeout of a command: [`RELOAD_TIMEOUT`] for `reload`, [`COMMAND_TIMEOUT`] otherwise.
pub fn command_timeout(endpoint: &str) -> Duration {
    if endpoint == "reload" {
        RELOAD_TIMEOUT
    } else {
        COMMAND_TIMEOUT
    }
}

/// The runtime driver's CLI client: worker commands through `route`, master commands on the
/// master socket, each under its [`command_timeout`], counted (`socket_command`/`sent`) and timed
/// by [`command_endpoint`] and outcome in `calls`.
#[derive(Clone, Debug)]
pub struct Cli {
    route: WorkerRoute,
    master: PathBuf,
    calls: CallMetrics,
}

impl Cli {
    pub fn new(route: WorkerRoute, master: PathBuf, calls: CallMetrics) -> Cli {
        Cli {
            route,
            master,
            calls,
        }
    }

    /// Where worker commands go.
    pub fn route(&self) -> &WorkerRoute {
        &self.route
    }

    /// The handles commands are recorded in (the driver adds its reload and validation counts).
    pub fn calls(&self) -> &CallMetrics {
        &self.calls
    }

    /// Runs one worker command.
    pub async fn worker(&self, cmd: &str) -> Result<String, SocketError> {
        match &self.route {
            WorkerRoute::Admin(p) => self.timed(p, cmd, cmd).await,
            WorkerRoute::Master(p) => self.timed(p, &format!("@1 {cmd}"), cmd).await,
        }
    }

    /// Runs one master command.
    pub async fn master(&self, cmd: &str) -> Result<String, SocketError> {
        self.timed(&self.master, cmd, cmd).await
    }

    /// Sends `line` to `path`; `cmd` (the command without a routing prefix) names it.
    async fn timed(&self, path: &Path, line: &str, cmd: &str) -> Result<String, SocketError> {
        let endpoint = command_endpoint(cmd);
        let started = Instant::now();
        let result = command(path, line, command_timeout(endpoint)).await;
        let status = match &result {
            Ok(_) => STATUS_ANSWERED,
            Err(SocketError::Timeout { .. }) => STATUS_TIMEOUT,
            Err(_) => STATUS_ERROR,
        };
        self.calls.count(COUNTED_AS.0, COUNTED_AS.1);
        self.calls.observe(endpoint, status, started.elapsed());
        result
    }
}

/// The outcome of a command that changes state, from its reply text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// HAProxy refused; its message, trimmed and without a severity prefix.
    Refused(String),
    /// No answer where one was due: zero bytes (HAProxy terminates every command it ran with a
    /// `\n`, so the command never ran, e.g. a line ending in `<<` put the CLI into payload mode),
    /// or an empty message from a command that must answer text (`add server`, `del server`).
    NoReply,
}

impl Outcome {
    /// Why the command did not take effect, or `None` when it did. `cmd` names the command.
    pub fn failure(&self, cmd: &str) -> Option<String> {
        match self {
            Outcome::Done => None,
            Outcome::Refused(m) => Some(format!("{cmd}: {m}")),
            Outcome::NoReply => Some(format!(
                "{cmd}: no reply from HAProxy where one was due (the command did not run)"
            )),
        }
    }
}

/// Interprets the reply to a state-changing command. `success` lists the messages that mean
/// success; an empty list means the command answers nothing on success. Checked on HAProxy 2.6.12
/// and 3.0.11, over the admin socket and through the master (`@1`), every reply ends with the
/// command terminator `\n`:
/// - nothing but the terminator on success: `add map`, `set map`, `del map`, `set server … state`,
///   `set server … weight`, `set weight`, `enable health`/`disable health`, `shutdown sessions`;
/// - a fixed text on success: `add server` (`New server registered.`), `del server`
///   (`Server deleted.`);
/// - anything else is a refusal (`Key not found.`, `No such server.`, `Unknown command…`).
///
/// A reply of zero bytes is never a success ([`Outcome::NoReply`]).
pub fn outcome(reply: &str, success: &[&str]) -> Outcome {
    if reply.is_empty() {
        return Outcome::NoReply;
    }
    let text = message(reply);
    if success.is_empty() {
        if text.is_empty() {
            Outcome::Done
        } else {
            Outcome::Refused(text)
        }
    } else if success.contains(&text.as_str()) {
        Outcome::Done
    } else if text.is_empty() {
        Outcome::NoReply
    } else {
        Outcome::Refused(text)
    }
}

/// The reply's text: trimmed, with a `[N]: ` severity prefix removed.
pub fn message(reply: &str) -> String {
    let t = reply.trim();
    let t = match t.strip_prefix('[').and_then(|rest| rest.split_once("]:")) {
        Some((sev, msg)) if sev.len() == 1 && sev.as_bytes()[0].is_ascii_digit() => msg,
        _ => t,
    };
    t.trim().to_string()
}

/// Why a value cannot be one argument of a CLI command. Such a command is never sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("an empty argument cannot be sent to HAProxy's CLI")]
    Empty,
    /// `;` separates commands, a line end ends the command, NUL ends the C string.
    #[error(
        "{arg:?} contains {what}, which HAProxy's CLI would not pass on as part of one argument"
    )]
    Separator { arg: String, what: &'static str },
    /// HAProxy 2.6 takes a line ending in `<<` as the start of a payload: the command would not
    /// run until an empty line, and the reply is empty.
    #[error("{arg:?} ends in `<<`, which puts HAProxy's CLI into payload mode")]
    Payload { arg: String },
    /// Map keys are read back from `show map` and written to map files, both split on whitespace.
    #[error("map key {arg:?} contains whitespace, which `show map` and map files cannot carry")]
    Whitespace { arg: String },
    /// A map-file line starting with `#` is a comment: the key would be lost at the next reload.
    #[error("map key {arg:?} starts with `#`, which a map file reads as a comment")]
    Comment { arg: String },
    /// The escaped form does not come back as the same single argument (a bug guard).
    #[error("{arg:?} would not survive HAProxy's CLI unescaping (it would arrive as {got:?})")]
    RoundTrip { arg: String, got: Vec<Vec<String>> },
}

/// The escaped form of `arg` as one argument of a CLI command line, proven to come back as
/// exactly `arg` through [`cli_split`] (HAProxy's tokenizer). HAProxy removes a backslash before
/// any character (so `\.` would arrive as `.`): backslashes, spaces and tabs are escaped. Values
/// that cannot be carried safely are refused: empty, containing `;`, a line end or NUL, or ending
/// in `<<`.
pub fn cli_arg(arg: &str) -> Result<String, ArgError> {
    if arg.is_empty() {
        return Err(ArgError::Empty);
    }
    let sep = |what| {
        Err(ArgError::Separator {
            arg: arg.to_string(),
            what,
        })
    };
    if arg.contains(';') {
        return sep("`;`");
    }
    if arg.contains(['\n', '\r']) {
        return sep("a line end");
    }
    if arg.contains('\0') {
        return sep("NUL");
    }
    if arg.ends_with("<<") {
        return Err(ArgError::Payload {
            arg: arg.to_string(),
        });
    }
    let mut out = String::with_capacity(arg.len() + 2);
    for c in arg.chars() {
        if matches!(c, '\\' | ' ' | '\t') {
            out.push('\\');
        }
        out.push(c);
    }
    let got = cli_split(&out);
    if got != [vec![arg.to_string()]] {
        return Err(ArgError::RoundTrip {
            arg: arg.to_string(),
            got,
        });
    }
    Ok(out)
}

/// [`cli_arg`] for a map key, which must also survive `show map` and the map file: no whitespace
/// and no leading `#`.
pub fn map_key(key: &str) -> Result<String, ArgError> {
    if key.chars().any(char::is_whitespace) {
        return Err(ArgError::Whitespace {
            arg: key.to_string(),
        });
    }
    if key.starts_with('#') {
        return Err(ArgError::Comment {
            arg: key.to_string(),
        });
    }
    cli_arg(key)
}

/// A model of how HAProxy's CLI reads one non-interactive line (2.6 and 3.0, `cli.c`): commands
/// are split on `;` and line ends not preceded by a backslash; each command is split into words on
/// unescaped spaces and tabs; then a backslash is removed and the character after it kept as is.
/// Empty commands are dropped.
pub fn cli_split(line: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                if let Some(next) = chars.next() {
                    w.push(next);
                }
            }
            ';' | '\n' => {
                words.extend(word.take());
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            ' ' | '\t' => words.extend(word.take()),
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word.take());
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_labelled_by_verb_and_object_and_a_reload_waits_longer() {
        assert_eq!(command_endpoint("show servers state web"), "show_servers");
        assert_eq!(
            command_endpoint("add server web/hnc_1 10.0.0.1:80 check"),
            "add_server"
        );
        assert_eq!(
            command_endpoint("set map /m/hnc_exact.map a.test web"),
            "set_map"
        );
        assert_eq!(command_endpoint("reload"), "reload");
        // Never an argument: anything unknown is `other`.
        assert_eq!(command_endpoint("show web/hnc_1"), "other");
        assert_eq!(command_endpoint(""), "other");
        assert_eq!(command_timeout("reload"), RELOAD_TIMEOUT);
        assert_eq!(command_timeout("show_proc"), COMMAND_TIMEOUT);
    }

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
        assert_eq!(outcome("\n\n", &[]), Outcome::Done);
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
    fn an_empty_reply_is_never_a_success() {
        // Zero bytes: the command never ran (2.6 in payload mode answers nothing at all).
        assert_eq!(outcome("", &[]), Outcome::NoReply);
        assert_eq!(outcome("", &["Server deleted."]), Outcome::NoReply);
        // Only the terminator, from a command that must answer text.
        assert_eq!(outcome("\n", &["New server registered."]), Outcome::NoReply);
        assert_eq!(outcome("[6]: \n\n", &["Server deleted."]), Outcome::NoReply);
        assert_eq!(
            Outcome::NoReply.failure("del map m k").as_deref(),
            Some("del map m k: no reply from HAProxy where one was due (the command did not run)")
        );
        assert_eq!(Outcome::Done.failure("x"), None);
        assert_eq!(
            Outcome::Refused("Key not found.".into())
                .failure("del map m k")
                .as_deref(),
            Some("del map m k: Key not found.")
        );
    }

    #[test]
    fn escaping_keeps_backslashes_and_spaces() {
        assert_eq!(
            cli_arg(r"^api\.example\.test$").as_deref(),
            Ok(r"^api\\.example\\.test$")
        );
        assert_eq!(cli_arg("plain.host").as_deref(), Ok("plain.host"));
        assert_eq!(cli_arg("a b").as_deref(), Ok(r"a\ b"));
        assert_eq!(cli_arg("a\tb").as_deref(), Ok("a\\\tb"));
        assert_eq!(cli_arg(r"ends\").as_deref(), Ok(r"ends\\"));
        assert_eq!(cli_arg("x<").as_deref(), Ok("x<"));
        assert_eq!(cli_arg("<<x").as_deref(), Ok("<<x"));
        assert_eq!(cli_arg("h\u{e9}.example").as_deref(), Ok("h\u{e9}.example"));
    }

    #[test]
    fn arguments_the_cli_cannot_carry_are_refused() {
        assert_eq!(cli_arg(""), Err(ArgError::Empty));
        assert!(matches!(
            cli_arg("a;b"),
            Err(ArgError::Separator { what: "`;`", .. })
        ));
        assert!(matches!(cli_arg("a\nb"), Err(ArgError::Separator { .. })));
        assert!(matches!(cli_arg("a\rb"), Err(ArgError::Separator { .. })));
        assert!(matches!(cli_arg("a\0b"), Err(ArgError::Separator { .. })));
        assert!(matches!(
            cli_arg("api.test<<"),
            Err(ArgError::Payload { .. })
        ));
        assert!(matches!(cli_arg("<<"), Err(ArgError::Payload { .. })));
        assert!(matches!(map_key("a b"), Err(ArgError::Whitespace { .. })));
        assert!(matches!(map_key("a\tb"), Err(ArgError::Whitespace { .. })));
        assert!(matches!(map_key("#a"), Err(ArgError::Comment { .. })));
        assert!(matches!(map_key("x<<"), Err(ArgError::Payload { .. })));
        assert_eq!(map_key(r"^a\.b$").as_deref(), Ok(r"^a\\.b$"));
        let e = cli_arg("a;b").expect_err("refused").to_string();
        assert!(e.contains("\"a;b\""), "{e}");
    }

    #[test]
    fn the_cli_model_splits_and_unescapes_like_haproxy() {
        // As observed on 2.6.12 and 3.0.11: `a\;b` is stored as `a;b`, `a\ b` as `a b`,
        // `^api\\.ex$` as `^api\.ex$`, `^a\.b$` as `^a.b$`; an unescaped `;` splits.
        assert_eq!(
            cli_split(r"add map f ^api\\.ex$ web"),
            vec![vec!["add", "map", "f", r"^api\.ex$", "web"]]
        );
        assert_eq!(cli_split(r"add map f ^a\.b$ web")[0][3], "^a.b$");
        assert_eq!(cli_split(r"add map f a\;b web")[0][3], "a;b");
        assert_eq!(cli_split(r"add map f a\ b web")[0][3], "a b");
        assert_eq!(
            cli_split("set severity-output number;add map f a;b web"),
            vec![
                vec!["set", "severity-output", "number"],
                vec!["add", "map", "f", "a"],
                vec!["b", "web"],
            ]
        );
        assert_eq!(cli_split("  a  \t b ;; "), vec![vec!["a", "b"]]);
    }

    #[test]
    fn escaped_arguments_round_trip_through_the_model() {
        for arg in [
            r"^api\.ex\.com$",
            r"\\",
            r"a\",
            "a b",
            " lead",
            "trail ",
            "\u{1f600}.example",
            "%2e",
            "..",
            "#x",
        ] {
            let escaped = cli_arg(arg).expect("escapable");
            let line = format!("del map f {escaped}");
            assert_eq!(
                cli_split(&line),
                vec![vec!["del", "map", "f", arg]],
                "{arg:?}"
            );
        }
    }
}
