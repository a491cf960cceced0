//! A thin typed client for the Data Plane API v3: Basic auth, timeouts, the
//! `Configuration-Version` and `Reload-ID` headers, errors parsed into [`DataplaneError`], and a
//! count of requests by endpoint and status for metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::error::DataplaneError;
use crate::config::Secret;

/// One answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// `Configuration-Version`, present on every DPAPI answer.
    pub version: Option<i64>,
    pub reload_id: Option<String>,
    pub body: Value,
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: Option<Secret>,
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Client {
    /// `base` is the API's address (`http://host:5555`); `/v3` is added.
    pub fn new(
        base: &Url,
        user: &str,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Result<Client, DataplaneError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| DataplaneError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base: base.clone(),
            user: user.to_string(),
            password,
            counts: Mutex::new(BTreeMap::new()),
        })
    }

    /// The URL for `/v3/<segments…>` with `query`; segments are percent-encoded (map keys may
    /// hold `^`, `\` or `$`).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, DataplaneError> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| {
                DataplaneError::Protocol(format!("{} cannot be a base URL", self.base))
            })?;
            path.pop_if_empty().push("v3");
            for s in segments {
                path.push(s);
            }
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends one request. `endpoint` is a short stable label for metrics (e.g. `backends`).
    pub async fn call(
        &self,
        method: Method,
        endpoint: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, DataplaneError> {
        let url = self.url(segments, query)?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .basic_auth(&self.user, self.password.as_ref().map(Secret::expose));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.count(endpoint, "error".to_string());
                return Err(DataplaneError::from_reqwest(&e));
            }
        };
        let status = resp.status().as_u16();
        self.count(endpoint, status.to_string());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let version = header("Configuration-Version").and_then(|v| v.parse().ok());
        let reload_id = header("Reload-ID");
        let text = resp
            .text()
            .await
            .map_err(|e| DataplaneError::from_reqwest(&e))?;
        if !(200..300).contains(&status) {
            tracing::debug!(%method, endpoint, status, body = %text, "Data Plane API refused a request");
            return Err(DataplaneError::from_status(status, &text));
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                DataplaneError::Protocol(format!("{endpoint}: answer is not JSON ({e})"))
            })?
        };
        Ok(Answer {
            status,
            version,
            reload_id,
            body,
        })
    }

    fn count(&self, endpoint: &'static str, status: String) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((endpoint, status)).or_default() += 1;
        }
    }

    /// Requests so far by (endpoint, status).
    pub fn request_counts(&self) -> BTreeMap<(&'static str, String), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Total requests so far.
    pub fn total_requests(&self) -> u64 {
        self.request_counts().values().sum()
    }
}
