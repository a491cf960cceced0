//! The connector binary as a process, for end-to-end tests: started with a clean environment
//! plus what the test gives, stopped (SIGTERM, then SIGKILL) on drop, with its log kept for
//! failure messages; its `/metrics` read with the strict parser of [`super::expo`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::expo::{self, Family, Kind, Sample};

pub const BIN: &str = env!("CARGO_BIN_EXE_haproxy-nomad-connector");

pub struct Connector {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Connector {
    /// `run` with `env` (on top of a clean environment) and the admin server on a free port.
    pub fn start(env: &[(&str, String)]) -> Connector {
        let port = super::haproxy::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("connector.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .env_clear()
            .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("LOG_LEVEL", "haproxy_nomad_connector=debug,info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the connector");
        let c = Connector {
            child,
            port,
            log,
            _dir: dir,
        };
        c.wait_for("admin endpoint", Duration::from_secs(20), |c| {
            c.get("/healthz").is_some()
        });
        c
    }

    /// The connector's process id (to inspect or limit the process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the admin server: (status, body), or `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        super::http::get(self.port, "localhost", path).ok()
    }

    /// Polls `cond` every 20 ms until it holds; fails the test with the connector's log when it
    /// does not within `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Connector) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; connector log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a pass has applied something and a quiet pass has followed it. (The first
    /// pass, before Nomad's first list, is a quiet one too, so "a noop pass" alone proves
    /// nothing; and a change shows in HAProxy before its pass is recorded.)
    pub fn wait_settled(&self) {
        self.wait_for(
            "an applying pass, then a quiet one",
            Duration::from_secs(20),
            |c| {
                let m = c.metrics();
                m.sum("hnc_passes_total", &[("result", "success")]) >= 1.0
                    && m.sum("hnc_passes_total", &[("result", "noop")]) >= 2.0
            },
        );
    }

    /// The parsed `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("metrics answer");
        assert_eq!(status, 200);
        expo::parse(&body)
            .map(|families| Metrics { families })
            .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{body}"))
    }

    /// Sends SIGTERM and waits up to `timeout`; returns the exit code and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate(Duration::from_secs(10));
        }
    }
}

/// The parsed `/metrics`: families by name, as [`expo::parse`] reads them.
#[derive(Debug)]
pub struct Metrics {
    pub families: BTreeMap<String, Family>,
}

impl Metrics {
    /// The samples named `name` (a family's own name, or `…_bucket`, `…_sum`, `…_count`).
    fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| self.families.contains_key(*f))
            })
            .unwrap_or(name);
        self.families
            .get(family)
            .into_iter()
            .flat_map(|f| &f.samples)
            .filter(move |s| s.name == name)
    }

    /// The sum of a series over the samples whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples(name).next().is_some()
    }

    /// The declared type of the family `name`.
    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.families.get(name).map(|f| f.kind)
    }

    /// A quantile estimated from a histogram's buckets (upper bound of the bucket it falls in).
    pub fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut bounds: Vec<(f64, f64)> = self
            .samples(&bucket)
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, s.value))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bounds.last()?.1;
        if total == 0.0 {
            return None;
        }
        bounds
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| *le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP hnc_passes_total Passes.
# TYPE hnc_passes_total counter
hnc_passes_total{result=\"success\"} 2
hnc_passes_total{result=\"noop\"} 3
# HELP hnc_pass_duration_seconds Pass duration.
# TYPE hnc_pass_duration_seconds histogram
hnc_pass_duration_seconds_bucket{le=\"0.1\"} 1
hnc_pass_duration_seconds_bucket{le=\"1\"} 4
hnc_pass_duration_seconds_bucket{le=\"+Inf\"} 5
hnc_pass_duration_seconds_sum 2.5
hnc_pass_duration_seconds_count 5
";

    #[test]
    fn metrics_read_series_by_sample_name_through_the_strict_parser() {
        let m = Metrics {
            families: expo::parse(TEXT).expect("valid"),
        };
        assert_eq!(m.sum("hnc_passes_total", &[]), 5.0);
        assert_eq!(m.sum("hnc_passes_total", &[("result", "noop")]), 3.0);
        assert_eq!(m.sum("hnc_passes_total", &[("result", "error")]), 0.0);
        assert_eq!(m.sum("hnc_pass_duration_seconds_count", &[]), 5.0);
        assert!(m.has("hnc_pass_duration_seconds_sum"));
        assert!(!m.has("hnc_pass_duration_seconds"));
        assert_eq!(m.kind("hnc_pass_duration_seconds"), Some(Kind::Histogram));
        assert_eq!(m.kind("hnc_passes_total"), Some(Kind::Counter));
        assert_eq!(
            m.histogram_quantile("hnc_pass_duration_seconds", 0.5),
            Some(1.0)
        );
        assert_eq!(
            m.histogram_quantile("hnc_pass_duration_seconds", 0.2),
            Some(0.1)
        );
        // What the old ad-hoc parser let through: a sample without `# TYPE`.
        assert!(expo::parse("hnc_passes_total 1\n").is_err());
    }
}
