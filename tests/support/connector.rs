//! The connector binary as a process, for end-to-end tests: started with a clean environment
//! plus what the test gives, stopped (SIGTERM, then SIGKILL) on drop, with its log kept for
//! failure messages. Also a strict parser for the Prometheus text format.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        parse_metrics(&body)
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

/// A sample's labels.
pub type Labels = BTreeMap<String, String>;

/// Samples by series name, each with its labels.
#[derive(Debug, Default)]
pub struct Metrics {
    pub types: BTreeMap<String, String>,
    pub samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Metrics {
    /// The sum of a series over the samples whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|(l, _)| {
                        labels
                            .iter()
                            .all(|(k, val)| l.get(*k).map(String::as_str) == Some(*val))
                    })
                    .map(|(_, x)| x)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }

    /// A quantile estimated from a histogram's buckets (upper bound of the bucket it falls in).
    pub fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let buckets = self.samples.get(&format!("{name}_bucket"))?;
        let mut bounds: Vec<(f64, f64)> = buckets
            .iter()
            .filter_map(|(l, v)| {
                let le = l.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
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

/// Parses the Prometheus text exposition format strictly: `# HELP`/`# TYPE` lines, then
/// `name{label="value",…} number` samples; every sample's family must have a known type.
pub fn parse_metrics(text: &str) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("line {}: unknown type {kind}", n + 1));
                    }
                    m.types.insert(name.to_string(), kind.to_string());
                }
                (Some("HELP"), Some(_), _) => {}
                _ => return Err(format!("line {}: bad comment {line:?}", n + 1)),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no value in {line:?}", n + 1))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| format!("line {}: bad value {v:?}", n + 1))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("line {}: unclosed labels in {line:?}", n + 1))?;
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .ok_or_else(|| format!("line {}: bad label in {line:?}", n + 1))?;
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    value.push(match e {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let end =
                        end.ok_or_else(|| format!("line {}: unterminated label value", n + 1))?;
                    labels.insert(k.trim_start_matches(',').to_string(), value);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| m.types.contains_key(*f))
            })
            .unwrap_or(&name)
            .to_string();
        if !m.types.contains_key(&family) {
            return Err(format!("line {}: sample {name} has no # TYPE", n + 1));
        }
        m.samples.entry(name).or_default().push((labels, value));
    }
    Ok(m)
}
