//! Each kind of runtime-driver failure keeps the error that caused it: `source()` walks down to
//! the socket, file or parse error and on to the `io::Error`, and the text is the one operators
//! and `/readyz` know. The runtime driver never reports a conflict (no other writer has a
//! version to race). Sockets here are missing, dead or a stand-in that answers nonsense.

use std::error::Error;
use std::io::ErrorKind;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::haproxy::Cause;
use crate::haproxy::runtime::files::FileError;
use crate::haproxy::runtime::socket::SocketError;
use crate::haproxy::runtime::state::ParseError;

/// The first error of type `T` in `e`'s source chain (below `e`).
fn source_of<'e, T: Error + 'static>(e: &'e (dyn Error + 'static)) -> Option<&'e T> {
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        next = s.source();
    }
    None
}

#[tokio::test]
async fn a_missing_or_dead_socket_is_unreachable_down_to_the_io_error() {
    let files = Files::new("exit 0");
    let master = files.cfg.master_socket.clone();

    // Nothing at the socket's path.
    let err = files.driver().observe().await.expect_err("no socket");
    assert_eq!(err.kind(), "unreachable");
    let socket = source_of::<SocketError>(&err).expect("the socket error is the source");
    assert!(
        matches!(socket, SocketError::Connect { path, .. } if *path == master),
        "{socket:?}"
    );
    let io = source_of::<std::io::Error>(&err).expect("then the io::Error");
    assert_eq!(io.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!(
            "HAProxy unreachable: cannot connect to {}: {io}",
            master.display()
        )
    );

    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&master).expect("bind"));
    let err = files.driver().observe().await.expect_err("dead socket");
    assert!(
        matches!(
            &err,
            DriverError::Unreachable(Cause::Socket(SocketError::Connect { .. }))
        ),
        "{err:?}"
    );
    let io = source_of::<std::io::Error>(&err).expect("the io::Error");
    assert_eq!(io.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(
        err.to_string(),
        format!(
            "HAProxy unreachable: cannot connect to {}: {io}",
            master.display()
        )
    );
}

#[tokio::test]
async fn a_refused_check_is_rejected_in_haproxys_words_with_no_error_below() {
    let files = Files::new("echo '[ALERT] fake check failed' >&2; exit 1");
    let err = apply(&files.driver()).await.expect_err("the check fails");
    assert!(
        matches!(&err, DriverError::Rejected(Cause::Message(_))),
        "{err:?}"
    );
    assert!(err.source().is_none(), "HAProxy's words have no source");
    assert!(err.restore_failure().is_none());
    assert_eq!(
        err.to_string(),
        "HAProxy rejected the change: haproxy -c refused the candidate configuration: [ALERT] fake check failed"
    );
}

#[tokio::test]
async fn file_spawn_and_parse_failures_are_other_errors_keeping_theirs() {
    // A file: the maps directory cannot be created under a regular file.
    let files = Files::new("exit 0");
    let blocker = files.dir.path().join("not-a-dir");
    fs::write(&blocker, "").expect("write");
    let mut cfg = files.cfg.clone();
    cfg.maps_dir = blocker.join("maps").display().to_string();
    let err = RuntimeDriver::new(cfg, CallMetrics::disabled())
        .ensure_files()
        .expect_err("cannot create the maps directory");
    assert_eq!(err.kind(), "other");
    let file = source_of::<FileError>(&err).expect("the file error is the source");
    assert!(
        matches!(file, FileError::Io { action: "create", path, .. } if *path == blocker.join("maps")),
        "{file:?}"
    );
    let io = source_of::<std::io::Error>(&err).expect("then the io::Error");
    assert_eq!(io.kind(), ErrorKind::NotADirectory);
    assert_eq!(
        err.to_string(),
        format!("cannot create {}: {io}", blocker.join("maps").display())
    );

    // A spawn: `haproxy -c` cannot be run.
    let mut cfg = files.cfg.clone();
    cfg.binary = files.dir.path().join("no-such-haproxy");
    let err = apply(&RuntimeDriver::new(cfg.clone(), CallMetrics::disabled()))
        .await
        .expect_err("no binary");
    assert!(
        matches!(&err, DriverError::Other(Cause::Spawn { binary, .. }) if *binary == cfg.binary),
        "{err:?}"
    );
    let io = source_of::<std::io::Error>(&err).expect("the io::Error is the source");
    assert_eq!(io.kind(), ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!("cannot run {} -c: {io}", cfg.binary.display())
    );

    // A parse: the socket answers something that is not `show backend`'s dump.
    let listener = tokio::net::UnixListener::bind(&files.cfg.master_socket).expect("bind");
    let answering = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut command = Vec::new();
            let _ = conn.read_to_end(&mut command).await;
            let _ = conn.write_all(b"Unknown command.\n").await;
        }
    });
    let err = files.driver().observe().await.expect_err("not a dump");
    answering.abort();
    assert_eq!(err.kind(), "other");
    let parse = source_of::<ParseError>(&err).expect("the parse error is the source");
    assert_eq!(parse.command, "show backend");
    assert_eq!(
        err.to_string(),
        "unexpected answer to `show backend`: Unknown command."
    );
}

#[tokio::test]
async fn a_failed_reload_and_a_failed_restore_keep_both_errors() {
    // The "check" replaces the exact map with a link and passes; the reload then cannot reach
    // the master socket, and restoring the map is refused.
    let placeholder = Files::new("exit 0");
    let map = placeholder.exact_map();
    let target = placeholder.target("precious\n");
    let check = format!("ln -sfn {} {}; exit 0", target.display(), map.display());
    let mut cfg = placeholder.cfg.clone();
    cfg.configs = vec![PathBuf::from(check)];
    let driver = RuntimeDriver::new(cfg.clone(), CallMetrics::disabled());

    let err = apply(&driver).await.expect_err("the reload fails");
    // The reload's failure decides the kind and is the source...
    assert!(
        matches!(&err, DriverError::Unreachable(Cause::Unrestored { failure, .. })
            if matches!(**failure, Cause::Socket(SocketError::Connect { .. }))),
        "{err:?}"
    );
    let io = source_of::<std::io::Error>(&err).expect("the reload's io::Error");
    assert_eq!(io.kind(), ErrorKind::NotFound);
    // ...and the restore failure is kept beside it, whole.
    let restore = err.restore_failure().expect("the restore failure is kept");
    assert!(
        matches!(&restore.first, FileError::Symlink { path } if *path == map),
        "{restore:?}"
    );
    assert!(restore.more.is_empty(), "{restore:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "HAProxy unreachable: cannot connect to {}: {io}; cannot restore the previous files: refusing to write {}: it is a symbolic link (the connector replaces its files and never writes through a link)",
            cfg.master_socket.display(),
            map.display()
        )
    );
    assert_eq!(fs::read_to_string(&target).expect("target"), "precious\n");
}
