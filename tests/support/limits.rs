//! Process limits. The tests of the binary run as threads of one process, so a limit is shared:
//! it is only ever raised, under a lock, and high enough for every test holding its files at once.

use std::sync::{Mutex, PoisonError};

/// Open files for all the tests that hold many at the same time (the admin-server flood holds
/// both ends of 2,000 connections, each hostile admin-port flood the client ends of 2,000).
const OPEN_FILES: u64 = 16_384;

static LOCK: Mutex<()> = Mutex::new(());

/// The open-file limit of process `pid` (0: this process).
pub fn open_files_of(pid: libc::pid_t) -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the limit of `pid` into the struct passed; nothing is set.
    let got = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    limit
}

/// Sets the soft open-file limit of process `pid` (0: this process) to `soft`.
pub fn set_open_files_of(pid: libc::pid_t, soft: u64) {
    let mut limit = open_files_of(pid);
    assert!(
        limit.rlim_max >= soft,
        "{soft} open files needed; the hard limit is {}",
        limit.rlim_max
    );
    limit.rlim_cur = soft;
    // SAFETY: prlimit sets the limit of `pid` from the struct passed; nothing is read back.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Makes sure this process may open at least `want` files, and enough for the other tests
/// running beside the caller: raises the soft limit to 16,384 (or the hard limit if lower, which
/// must still cover `want`), never lowers it.
pub fn raise_open_files(want: u64) {
    let _serial = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let limit = open_files_of(0);
    assert!(
        limit.rlim_max >= want,
        "this test needs {want} open files; the hard limit is {}",
        limit.rlim_max
    );
    let target = OPEN_FILES.min(limit.rlim_max).max(want);
    if limit.rlim_cur < target {
        set_open_files_of(0, target);
    }
}
