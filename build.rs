//! Sets `HNC_VERSION` for the crate: the package version, followed by the git commit in
//! parentheses when it is known (`0.1.0 (abc1234)`). The commit comes from `HNC_GIT_COMMIT` when
//! set and not empty (the Dockerfile passes it, its build context has no `.git`), else from
//! `git rev-parse --short HEAD` when building from a checkout; without either, just `0.1.0`.
//! Never fails the build.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A commit as printed: hex digits only, so nothing odd reaches `--version`.
fn plausible_commit(s: &str) -> bool {
    (4..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Asks Cargo to rerun this script when `path` changes; only for files that exist (Cargo reruns
/// every build for a missing one).
fn watch(path: PathBuf) {
    if path.is_file() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HNC_GIT_COMMIT");
    let from_env = std::env::var("HNC_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = match from_env {
        Some(c) => Some(c),
        None => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
                watch(dir.join("HEAD"));
                // The reflog moves with every commit, even when the branch ref is packed.
                watch(dir.join("logs").join("HEAD"));
                if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from) {
                    watch(common.join("packed-refs"));
                    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
                        watch(common.join(reference));
                    }
                }
            }
            git(&["rev-parse", "--short", "HEAD"])
        }
    };
    // Regex domains must be checked with the PCRE2 HAProxy links: without the system library
    // pcre2-sys silently builds its bundled, newer copy. Say so.
    let system_pcre2 = Command::new("pkg-config")
        .args(["--exists", "libpcre2-8"])
        .status()
        .is_ok_and(|s| s.success());
    if !system_pcre2 {
        println!(
            "cargo:warning=libpcre2-8 not found by pkg-config: regex domains will be checked with pcre2-sys's bundled PCRE2, which may accept patterns your HAProxy's refuses (apt-get install libpcre2-dev pkg-config)"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    match commit.filter(|c| plausible_commit(c)) {
        Some(c) => println!("cargo:rustc-env=HNC_VERSION={version} ({c})"),
        None => println!("cargo:rustc-env=HNC_VERSION={version}"),
    }
}
