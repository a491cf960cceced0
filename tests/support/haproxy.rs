//! A real HAProxy process for tests: master-worker mode (`-W -S <master socket>`), an admin stats
//! socket, loopback ports, a private temp dir, and a stop on drop (no stray processes).
//!
//! The binary is `HAPROXY_BIN`, else `haproxy` on `PATH` or in `/usr/sbin`. Without one the test
//! **fails** with instructions: tests that need HAProxy never skip.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get a binary, printed when none is found.
const INSTALL_HINT: &str = "HAProxy is required by this test but no binary was found. \
Set HAPROXY_BIN=/path/to/haproxy, or install it: `apt-get install haproxy` (Debian 12: 2.6), \
`scripts/build-haproxy-3.0.sh` (3.0), or run `scripts/test.sh`, which installs both.";

/// The HAProxy binary to test against; panics (failing the test) when there is none.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("HAPROXY_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "HAPROXY_BIN={} does not name a file. {INSTALL_HINT}",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// `haproxy -v`'s first line, e.g. `HAProxy version 2.6.12-1+deb12u2 2025/…`.
pub fn version_line(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} -v: {e}", bin.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// A running HAProxy. Dropping it stops the master and its workers.
pub struct Haproxy {
    child: Child,
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub master_socket: PathBuf,
    pub admin_socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<PathBuf>,
}

impl Haproxy {
    /// Starts HAProxy with `body` (defaults, frontends, backends) after a generated `global`
    /// section that declares the admin stats socket. `extra` are more `-f` paths (files or
    /// directories), loaded after the main file.
    pub fn start(body: &str) -> Haproxy {
        Haproxy::start_with(body, &[])
    }

    pub fn start_with(body: &str, extra: &[PathBuf]) -> Haproxy {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("hnc-haproxy-")
            .tempdir()
            .expect("temp dir");
        let admin_socket = dir.path().join("admin.sock");
        let master_socket = dir.path().join("master.sock");
        let config = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let global = format!(
            "global\n    stats socket {} level admin mode 600\n    stats timeout 30s\n    pidfile {}\n\n",
            admin_socket.display(),
            dir.path().join("haproxy.pid").display()
        );
        std::fs::write(&config, format!("{global}{body}\n")).expect("write haproxy.cfg");
        let child = spawn(&bin, &master_socket, &config, extra, dir.path(), &log);
        let mut haproxy = Haproxy {
            child,
            bin,
            dir,
            config,
            master_socket,
            admin_socket,
            log,
            extra: extra.to_vec(),
        };
        haproxy.wait_ready();
        haproxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "HAProxy exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(info) = socket_command(&self.admin_socket, "show info")
                && info.contains("Name: HAProxy")
                && socket_command(&self.master_socket, "show proc")
                    .is_ok_and(|p| p.contains("worker"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not answer on its sockets within 15 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops HAProxy and starts it again from the same files and sockets (a crash and restart,
    /// or `systemctl restart`).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(
            &self.bin,
            &self.master_socket,
            &self.config,
            &self.extra,
            self.dir.path(),
            &self.log,
        );
        self.wait_ready();
    }

    /// The master's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command on the admin stats socket; the answer with surrounding whitespace trimmed.
    pub fn admin(&self, command: &str) -> String {
        socket_command(&self.admin_socket, command)
            .unwrap_or_else(|e| panic!("admin socket command `{command}` failed: {e}"))
            .trim()
            .to_string()
    }

    /// One command on the master CLI (prefix with `@1 ` to reach the current worker).
    pub fn master(&self, command: &str) -> String {
        socket_command(&self.master_socket, command)
            .unwrap_or_else(|e| panic!("master socket command `{command}` failed: {e}"))
            .trim()
            .to_string()
    }

    /// `Version:` from `show info`, e.g. `2.6.12-1+deb12u2`.
    pub fn version(&self) -> String {
        self.admin("show info")
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap_or_default()
            .to_string()
    }

    /// HAProxy's own output so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops HAProxy: SIGTERM to the master (which stops its workers), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(
    bin: &Path,
    master_socket: &Path,
    config: &Path,
    extra: &[PathBuf],
    dir: &Path,
    log: &Path,
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut cmd = Command::new(bin);
    cmd.arg("-W")
        .arg("-S")
        .arg(format!("{},mode,600", master_socket.display()))
        .arg("-f")
        .arg(config);
    for path in extra {
        cmd.arg("-f").arg(path);
    }
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .current_dir(dir);
    // If the test process dies without running Drop, the kernel stops HAProxy's master
    // (which takes its workers with it).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// Sends one line to a HAProxy CLI socket (non-interactive mode) and reads until it closes.
pub fn socket_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(command.as_bytes())?;
    stream.write_all(b"\n")?;
    // The master CLI answers only once the client has finished sending.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

/// Processes whose command line mentions `needle` (to prove nothing was left running).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}
