//! The runtime driver's file writes: the fragment, the six map files and the candidate fragment
//! `haproxy -c` checks. One rule for all of them, so HAProxy never reads half a file and the
//! connector never writes somewhere it was not asked to:
//!
//! - A new file is created exclusively (`O_CREAT|O_EXCL`, which also refuses to follow a link)
//!   under a random hidden name in the destination's directory (`.<name>.XXXXXX.tmp`: hidden and
//!   without a `.cfg` ending, so HAProxy never loads it from a configuration directory), written,
//!   fsynced, renamed over the destination, and the directory is fsynced so the rename survives
//!   a crash. A temporary file is removed on every failure.
//! - A destination that is a symbolic link is refused with an error naming it, and its target is
//!   left untouched: a rename would replace the link itself, silently undoing whatever the
//!   operator meant by it. A destination that is not a regular file is refused too.
//! - The replaced file's permission bits are kept; a new file gets `0666` less the umask, as
//!   `File::create` would give it.
//! - Every operation runs on Tokio's blocking pool (`spawn_blocking`), never on a worker thread.
//!   The `*_blocking` functions are for callers outside the runtime.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::{Builder, TempPath};

/// A file the driver could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The destination is a symbolic link: refused, its target untouched.
    #[error(
        "refusing to write {}: it is a symbolic link (the connector replaces its files and never writes through a link)",
        path.display()
    )]
    Symlink { path: PathBuf },
    /// The destination exists and is not a regular file (a directory, a socket, …).
    #[error("refusing to write {}: it is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// A system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The blocking task doing the file work panicked or was cancelled.
    #[error("the file task for {} did not finish: {source}", path.display())]
    Task {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl FileError {
    fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> FileError + 'p {
        move |source| FileError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Symlink { path }
            | FileError::NotAFile { path }
            | FileError::Io { path, .. }
            | FileError::Task { path, .. } => path,
        }
    }
}

/// Restoring the previous files after a failed check or reload failed for at least one file.
/// Every file was tried; `first` is the first failure, `more` the others.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore the previous files: {first}{}", more.iter().map(|e| format!("; {e}")).collect::<String>())]
pub struct RestoreError {
    #[source]
    pub first: FileError,
    pub more: Vec<FileError>,
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| FileError::Task {
            path: path.to_path_buf(),
            source,
        })?
}

/// What is at `path` now: `None` when nothing is. Refuses links and non-files.
fn existing(path: &Path) -> Result<Option<fs::Metadata>, FileError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(m) if !m.is_file() => Err(FileError::NotAFile {
            path: path.to_path_buf(),
        }),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::io("inspect", path)(e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, exclusively created, fsynced file with `content` beside `dest`, named
/// `.<dest name>.XXXXXX<suffix>`.
fn create_temp(dest: &Path, content: &[u8], suffix: &str) -> Result<TempPath, FileError> {
    let dir = parent(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut tmp = Builder::new()
        .prefix(&prefix)
        .suffix(suffix)
        .rand_bytes(12)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(FileError::io("create a temporary file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    tmp.write_all(content)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(FileError::io("write", &tmp_path))?;
    // Closing the file; the path still removes it when dropped.
    Ok(tmp.into_temp_path())
}

/// Renames `tmp` over `dest` (refused when `dest` is a link or not a file), keeping `dest`'s
/// permission bits, then fsyncs the directory. `tmp` is removed on failure.
fn install(tmp: TempPath, dest: &Path) -> Result<(), FileError> {
    if let Some(old) = existing(dest)? {
        fs::set_permissions(&tmp, old.permissions())
            .map_err(FileError::io("set the permissions of", &tmp))?;
    }
    tmp.persist(dest)
        .map_err(|e| FileError::io("replace", dest)(e.error))?;
    let dir = parent(dest);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::io("sync the directory", dir))
}

/// Replaces `path` with `content` atomically. Blocking: use [`write_atomic`] from async code.
pub fn write_atomic_blocking(path: &Path, content: &[u8]) -> Result<(), FileError> {
    // Refuse before creating anything; `install` checks again just before the rename.
    existing(path)?;
    let tmp = create_temp(path, content, ".tmp")?;
    install(tmp, path)
}

/// Replaces `path` with `content` unless it already holds exactly that. Returns whether it
/// wrote. Blocking: use [`write_if_changed`] from async code.
pub fn write_if_changed_blocking(path: &Path, content: &[u8]) -> Result<bool, FileError> {
    if existing(path)?.is_some() {
        match fs::read(path) {
            Ok(old) if old == content => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::io("read", path)(e)),
        }
    }
    write_atomic_blocking(path, content)?;
    Ok(true)
}

/// [`write_atomic_blocking`] on the blocking pool.
pub async fn write_atomic(path: &Path, content: String) -> Result<(), FileError> {
    let owned = path.to_path_buf();
    blocking(path, move || {
        write_atomic_blocking(&owned, content.as_bytes())
    })
    .await
}

/// [`write_if_changed_blocking`] on the blocking pool.
pub async fn write_if_changed(path: &Path, content: String) -> Result<bool, FileError> {
    let owned = path.to_path_buf();
    blocking(path, move || {
        write_if_changed_blocking(&owned, content.as_bytes())
    })
    .await
}

/// The file's text, `None` when it does not exist.
pub async fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::io("read", path)(e)),
    }
}

/// Writes every `(path, content)` back (only where it differs), trying all of them; reports
/// every failure.
pub async fn restore(files: Vec<(PathBuf, String)>) -> Result<(), RestoreError> {
    let mut failures = Vec::new();
    for (path, content) in files {
        if let Err(e) = write_if_changed(&path, content).await {
            failures.push(e);
        }
    }
    let mut failures = failures.into_iter();
    match failures.next() {
        None => Ok(()),
        Some(first) => Err(RestoreError {
            first,
            more: failures.collect(),
        }),
    }
}

/// A candidate file beside its destination, for a check before it replaces the destination
/// ([`Candidate::install`]). Removed when discarded or dropped.
#[derive(Debug)]
pub struct Candidate {
    path: PathBuf,
    tmp: Option<TempPath>,
}

impl Candidate {
    /// Writes `content` to a new `.<dest name>.XXXXXX.candidate` file beside `dest`.
    pub async fn create(dest: &Path, content: String) -> Result<Candidate, FileError> {
        let owned = dest.to_path_buf();
        let tmp = blocking(dest, move || {
            create_temp(&owned, content.as_bytes(), ".candidate")
        })
        .await?;
        Ok(Candidate {
            path: tmp.to_path_buf(),
            tmp: Some(tmp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the candidate over `dest` (see the module documentation).
    pub async fn install(mut self, dest: &Path) -> Result<(), FileError> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        let owned = dest.to_path_buf();
        blocking(dest, move || install(tmp, &owned)).await
    }

    /// Removes the candidate.
    pub async fn discard(mut self) -> Result<(), FileError> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(());
        };
        let path = self.path.clone();
        blocking(&self.path, move || {
            tmp.close().map_err(FileError::io("remove", &path))
        })
        .await
    }
}

impl Drop for Candidate {
    /// A candidate neither installed nor discarded (the apply future was dropped): removed on the
    /// blocking pool when there is a runtime, here otherwise.
    fn drop(&mut self) {
        let Some(tmp) = self.tmp.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || drop(tmp));
            }
            Err(_) => drop(tmp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::symlink;

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn writes_replace_atomically_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hnc.cfg");
        write_atomic(&path, "one\n".into()).await.expect("create");
        assert_eq!(fs::read_to_string(&path).expect("read"), "one\n");
        // The operator's permission bits survive a rewrite.
        fs::set_permissions(&path, Permissions::from_mode(0o640)).expect("chmod");
        assert!(
            write_if_changed(&path, "two\n".into())
                .await
                .expect("rewrite")
        );
        assert_eq!(fs::read_to_string(&path).expect("read"), "two\n");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o640
        );
        assert!(
            !write_if_changed(&path, "two\n".into())
                .await
                .expect("same text")
        );
        assert_eq!(names(dir.path()), BTreeSet::from(["hnc.cfg".to_string()]));
    }

    #[tokio::test]
    async fn a_symlinked_destination_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        fs::write(&target, "precious\n").expect("write target");
        let link = dir.path().join("exact.map");
        symlink(&target, &link).expect("symlink");
        for result in [
            write_atomic(&link, "x\n".into()).await,
            write_if_changed(&link, "x\n".into()).await.map(|_| ()),
            // Even when the target already holds the text.
            write_if_changed(&link, "precious\n".into())
                .await
                .map(|_| ()),
        ] {
            let e = result.expect_err("a link is refused");
            assert!(matches!(e, FileError::Symlink { .. }), "{e:?}");
            assert_eq!(e.path(), link);
            assert!(
                e.to_string().contains(&link.display().to_string()),
                "names the path: {e}"
            );
        }
        // A dangling link (its target would be created by a write through it) likewise.
        let dangling = dir.path().join("prefix.map");
        let nowhere = dir.path().join("nowhere");
        symlink(&nowhere, &dangling).expect("symlink");
        assert!(matches!(
            write_atomic(&dangling, "x\n".into()).await,
            Err(FileError::Symlink { .. })
        ));
        assert!(!nowhere.exists());
        assert_eq!(fs::read_to_string(&target).expect("read"), "precious\n");
        assert!(
            fs::symlink_metadata(&link)
                .expect("stat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            names(dir.path()),
            BTreeSet::from([
                "elsewhere".to_string(),
                "exact.map".to_string(),
                "prefix.map".to_string()
            ]),
            "no temporary file left behind"
        );
        // Not a regular file.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).expect("mkdir");
        assert!(matches!(
            write_atomic(&sub, "x".into()).await,
            Err(FileError::NotAFile { .. })
        ));
    }

    #[test]
    fn temporary_names_are_unpredictable_and_created_exclusively() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("hnc.cfg");
        let a = create_temp(&dest, b"a", ".tmp").expect("temp");
        let b = create_temp(&dest, b"b", ".tmp").expect("temp");
        let (na, nb) = (
            a.file_name().expect("name").to_string_lossy().into_owned(),
            b.file_name().expect("name").to_string_lossy().into_owned(),
        );
        assert_ne!(na, nb);
        for n in [&na, &nb] {
            // Hidden, random in the middle, never ending in `.cfg`.
            assert!(n.starts_with(".hnc.cfg.") && n.ends_with(".tmp"), "{n}");
            assert_eq!(n.len(), ".hnc.cfg.".len() + 12 + ".tmp".len(), "{n}");
        }
        drop((a, b));
        assert!(
            names(dir.path()).is_empty(),
            "dropped temporaries are removed"
        );
        // A link planted where a temporary file would go is never followed: with the name
        // random and the creation exclusive, the write goes to a fresh file.
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write");
        for i in 0..64 {
            symlink(&target, dir.path().join(format!(".hnc.cfg.planted{i}.tmp"))).expect("link");
        }
        write_atomic_blocking(&dest, b"new").expect("write");
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep");
        assert_eq!(fs::read_to_string(&dest).expect("read"), "new");
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The file is written, then installing it fails (the destination turned out to be a
        // directory): the temporary file goes with the error.
        let dest = dir.path().join("busy");
        fs::create_dir(&dest).expect("mkdir");
        let c = Candidate::create(&dest, "data".into())
            .await
            .expect("candidate");
        assert!(c.path().exists());
        let e = c.install(&dest).await.expect_err("a directory");
        assert!(matches!(e, FileError::NotAFile { .. }), "{e:?}");
        assert_eq!(
            names(dir.path()),
            BTreeSet::from(["busy".to_string()]),
            "the temporary file went with the failed install"
        );
        // A directory that cannot be written: nothing is created, the error names it.
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).expect("mkdir");
        fs::set_permissions(&ro, Permissions::from_mode(0o555)).expect("chmod");
        let dest = ro.join("hnc.cfg");
        let result = write_atomic(&dest, "x".into()).await;
        fs::set_permissions(&ro, Permissions::from_mode(0o755)).expect("chmod back");
        if nix_root() {
            // root ignores directory permissions: the write succeeds, and leaves only the file.
            result.expect("root writes anyway");
            assert_eq!(names(&ro), BTreeSet::from(["hnc.cfg".to_string()]));
        } else {
            let e = result.expect_err("read-only directory");
            assert!(e.to_string().contains(&ro.display().to_string()), "{e}");
            assert!(names(&ro).is_empty());
        }
    }

    /// Whether the tests run as root (which ignores permission bits).
    fn nix_root() -> bool {
        let probe = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(probe.path(), Permissions::from_mode(0o555)).expect("chmod");
        let writable = File::create(probe.path().join("probe")).is_ok();
        fs::set_permissions(probe.path(), Permissions::from_mode(0o755)).expect("chmod back");
        writable
    }

    #[tokio::test]
    async fn candidates_are_installed_or_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("hnc.cfg");
        let c = Candidate::create(&dest, "first\n".into())
            .await
            .expect("candidate");
        let name = c.path().file_name().expect("name").to_string_lossy();
        assert!(
            name.starts_with(".hnc.cfg.") && name.ends_with(".candidate"),
            "{name}"
        );
        c.install(&dest).await.expect("install");
        assert_eq!(fs::read_to_string(&dest).expect("read"), "first\n");
        let c = Candidate::create(&dest, "second\n".into())
            .await
            .expect("candidate");
        c.discard().await.expect("discard");
        let c = Candidate::create(&dest, "third\n".into())
            .await
            .expect("candidate");
        let dropped = c.path().to_path_buf();
        drop(c);
        // Removed on the blocking pool.
        for _ in 0..100 {
            if !dropped.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(names(dir.path()), BTreeSet::from(["hnc.cfg".to_string()]));
        assert_eq!(fs::read_to_string(&dest).expect("read"), "first\n");
        // Installing over a link is refused; the candidate does not linger.
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write");
        let link = dir.path().join("linked.cfg");
        symlink(&target, &link).expect("link");
        let c = Candidate::create(&link, "x".into())
            .await
            .expect("candidate");
        assert!(matches!(
            c.install(&link).await,
            Err(FileError::Symlink { .. })
        ));
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep");
        assert_eq!(
            names(dir.path()),
            BTreeSet::from([
                "hnc.cfg".to_string(),
                "linked.cfg".to_string(),
                "target".to_string()
            ])
        );
    }

    #[tokio::test]
    async fn restore_tries_every_file_and_reports_each_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.map");
        fs::write(&good, "new\n").expect("write");
        let target = dir.path().join("target");
        fs::write(&target, "keep\n").expect("write");
        let (link1, link2) = (dir.path().join("l1.map"), dir.path().join("l2.map"));
        symlink(&target, &link1).expect("link");
        symlink(&target, &link2).expect("link");
        let e = restore(vec![
            (link1.clone(), "old\n".into()),
            (good.clone(), "old\n".into()),
            (link2.clone(), "old\n".into()),
        ])
        .await
        .expect_err("two links");
        assert_eq!(e.first.path(), link1);
        assert_eq!(e.more.len(), 1);
        assert_eq!(e.more[0].path(), link2);
        let text = e.to_string();
        assert!(
            text.starts_with("cannot restore the previous files: "),
            "{text}"
        );
        assert!(text.contains("l1.map") && text.contains("l2.map"), "{text}");
        assert!(std::error::Error::source(&e).is_some(), "keeps its source");
        // The file that could be restored was.
        assert_eq!(fs::read_to_string(&good).expect("read"), "old\n");
        assert_eq!(fs::read_to_string(&target).expect("read"), "keep\n");
        restore(vec![(good.clone(), "old\n".into())])
            .await
            .expect("nothing to do");
    }
}
