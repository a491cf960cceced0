//! A thin typed client for the Data Plane API v3: Basic auth, a timeout per kind of call, the
//! `Configuration-Version` and `Reload-ID` headers, errors parsed into [`DataplaneError`], and
//! every request counted and timed by endpoint and status in the [`CallMetrics`] it is built with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::error::DataplaneError;
use super::objects::wire;
use super::segment::{decode, url_segment};
use crate::call_metrics::{CallMetrics, STATUS_ERROR, STATUS_TIMEOUT};
use crate::config::Secret;

/// How long one request may take, by what it waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An ordinary read or write, answered at once (DPAPI writes through the runtime API or
    /// stages into a transaction).
    pub call: Duration,
    /// A request that waits for HAProxy to reload: a transaction commit (DPAPI reloads
    /// synchronously before answering) or a write with `force_reload=true`.
    pub reload: Duration,
}

/// Default [`Timeouts::call`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Timeouts::reload`]: HAProxy parses the whole configuration and starts a worker.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(90);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            call: CALL_TIMEOUT,
            reload: RELOAD_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The timeout of one request: [`Timeouts::reload`] for a commit (`PUT` on `transactions`)
    /// and for a request carrying `force_reload=true`, [`Timeouts::call`] otherwise.
    pub fn of(&self, method: &Method, endpoint: &str, query: &[(&str, String)]) -> Duration {
        let commit = *method == Method::PUT && endpoint == "transactions";
        let forces_reload = query
            .iter()
            .any(|(k, v)| *k == "force_reload" && v == "true");
        if commit || forces_reload {
            self.reload
        } else {
            self.call
        }
    }
}

/// One answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The endpoint label of the request.
    pub endpoint: &'static str,
    pub status: u16,
    /// `Configuration-Version`, present on every DPAPI answer.
    pub version: Option<i64>,
    pub reload_id: Option<String>,
    /// The body as received; read it with [`Answer::parse`].
    pub body: String,
}

impl Answer {
    /// The body read as the API object `T` (`objects::wire`); a body of another shape is a
    /// [`DataplaneError::Decode`] naming the endpoint and the field.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, DataplaneError> {
        wire::decode(self.endpoint, &self.body)
    }
}

/// No request body, for [`Client::call`].
pub const NO_BODY: Option<&()> = None;

/// A request body.
enum Body {
    None,
    /// Serialised JSON.
    Json(Vec<u8>),
    Text(String),
    Multipart(reqwest::multipart::Form),
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: Option<Secret>,
    timeouts: Timeouts,
    calls: CallMetrics,
    /// Requests sent so far (for `ApplyReport::requests`).
    sent: AtomicU64,
}

impl Client {
    /// `base` is the API's address (`http://host:5555`); `/v3` is added. Every request is
    /// recorded in `calls`.
    pub fn new(
        base: &Url,
        user: &str,
        password: Option<Secret>,
        timeouts: Timeouts,
        calls: CallMetrics,
    ) -> Result<Client, DataplaneError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.call.min(Duration::from_secs(5)))
            .build()
            .map_err(DataplaneError::from_reqwest)?;
        Ok(Client {
            http,
            base: base.clone(),
            user: user.to_string(),
            password,
            timeouts,
            calls,
            sent: AtomicU64::new(0),
        })
    }

    /// The URL for `/v3/<segments…>` with `query`. Every segment goes through
    /// [`url_segment`] (percent-encoded, round trip proven, dot segments refused), and the whole
    /// URL is checked to carry exactly these segments: a request never reaches another path (for
    /// instance the collection, when a key would vanish).
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, DataplaneError> {
        let mut url = self.base.clone();
        if url.cannot_be_a_base() {
            return Err(DataplaneError::Protocol(format!(
                "{} cannot be a base URL",
                self.base
            )));
        }
        let mut path = url.path().trim_end_matches('/').to_string();
        path.push_str("/v3");
        for s in segments {
            path.push('/');
            path.push_str(&url_segment(s)?);
        }
        url.set_path(&path);
        let got: Vec<Option<String>> = url
            .path_segments()
            .into_iter()
            .flatten()
            .rev()
            .take(segments.len())
            .map(decode)
            .collect();
        let want = segments.iter().rev().map(|s| Some((*s).to_string()));
        if !got.iter().cloned().eq(want) {
            return Err(DataplaneError::Protocol(format!(
                "the request URL {url} does not carry the segments {segments:?}"
            )));
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends one request with a JSON body (an API object of `objects::wire`), or none
    /// ([`NO_BODY`]). `endpoint` is a short stable label for metrics (e.g. `backends`).
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        endpoint: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Answer, DataplaneError> {
        let body = match body {
            None => Body::None,
            Some(b) => Body::Json(
                serde_json::to_vec(b)
                    .map_err(|source| DataplaneError::Encode { endpoint, source })?,
            ),
        };
        let (status, headers, text) = self.send(method, endpoint, segments, query, body).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Answer {
            endpoint,
            status,
            version: header("Configuration-Version").and_then(|v| v.parse().ok()),
            reload_id: header("Reload-ID"),
            body: text,
        })
    }

    /// Uploads `content` as the file `filename` in the multipart form field `field` (storage
    /// creation, `multipart/form-data`); returns the status.
    pub async fn upload(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        field: &'static str,
        filename: &str,
        content: String,
    ) -> Result<u16, DataplaneError> {
        let part = reqwest::multipart::Part::text(content)
            .file_name(filename.to_string())
            .mime_str("text/plain")
            .map_err(DataplaneError::from_reqwest)?;
        let form = reqwest::multipart::Form::new().part(field, part);
        let body = Body::Multipart(form);
        let (status, ..) = self
            .send(Method::POST, endpoint, segments, &[], body)
            .await?;
        Ok(status)
    }

    /// Sends one request with a `text/plain` body (storage files); returns the status.
    pub async fn call_text(
        &self,
        method: Method,
        endpoint: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: String,
    ) -> Result<u16, DataplaneError> {
        let (status, ..) = self
            .send(method, endpoint, segments, query, Body::Text(body))
            .await?;
        Ok(status)
    }

    /// The one request path: credentials, the call's timeout, counting and timing by endpoint
    /// and status, and a typed error for any non-2xx answer. Returns the status, headers and
    /// body text.
    async fn send(
        &self,
        method: Method,
        endpoint: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), DataplaneError> {
        let url = self.url(segments, query)?;
        let timeout = self.timeouts.of(&method, endpoint, query);
        let req = self
            .http
            .request(method.clone(), url)
            .timeout(timeout)
            .basic_auth(&self.user, self.password.as_ref().map(Secret::expose));
        let req = match body {
            Body::None => req,
            Body::Json(bytes) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
            Body::Text(t) => req
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(t),
            Body::Multipart(form) => req.multipart(form),
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.calls.count(endpoint, STATUS_ERROR);
                let status = if e.is_timeout() {
                    STATUS_TIMEOUT
                } else {
                    STATUS_ERROR
                };
                self.calls.observe(endpoint, status, started.elapsed());
                return Err(DataplaneError::from_reqwest(e));
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await;
        // Timed to the end of the body: a commit's answer follows HAProxy's reload.
        self.calls
            .record(endpoint, &status.to_string(), started.elapsed());
        let text = text.map_err(DataplaneError::from_reqwest)?;
        if !(200..300).contains(&status) {
            tracing::debug!(%method, endpoint, status, body = %text, "Data Plane API refused a request");
            return Err(DataplaneError::from_status(status, &text));
        }
        Ok((status, headers, text))
    }

    /// Total requests sent so far.
    pub fn total_requests(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::dataplane::segment::SegmentError;

    fn client(base: &str) -> Client {
        Client::new(
            &Url::parse(base).expect("base"),
            "u",
            None,
            Timeouts {
                call: Duration::from_secs(1),
                reload: Duration::from_secs(1),
            },
            CallMetrics::disabled(),
        )
        .expect("client")
    }

    #[test]
    fn a_call_that_waits_for_a_reload_gets_the_reload_timeout() {
        let t = Timeouts {
            call: Duration::from_secs(1),
            reload: Duration::from_secs(9),
        };
        let force = [("force_reload", "true".to_string())];
        let version = [("version", "3".to_string())];
        assert_eq!(t.of(&Method::PUT, "transactions", &[]), t.reload, "commit");
        assert_eq!(t.of(&Method::PUT, "servers", &force), t.reload);
        assert_eq!(t.of(&Method::POST, "transactions", &version), t.call);
        assert_eq!(t.of(&Method::DELETE, "transactions", &[]), t.call);
        assert_eq!(t.of(&Method::PUT, "servers", &version), t.call);
        assert_eq!(t.of(&Method::GET, "backends", &[]), t.call);
    }

    #[test]
    fn every_segment_is_encoded_and_proven() {
        let c = client("http://dp.test:5555");
        let url = c
            .url(
                &[
                    "services", "haproxy", "runtime", "maps", "m", "entries", r"^a\\.b",
                ],
                &[("force_sync", "true".into())],
            )
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://dp.test:5555/v3/services/haproxy/runtime/maps/m/entries/%5Ea%5C%5C.b?force_sync=true"
        );
        // A base with a path prefix keeps it.
        let c = client("http://dp.test/api/");
        let url = c.url(&["maps", "a/b", "%2e"], &[]).expect("url");
        assert_eq!(url.as_str(), "http://dp.test/api/v3/maps/a%2Fb/%252e");
    }

    #[test]
    fn a_key_that_would_vanish_never_becomes_a_request() {
        let c = client("http://dp.test:5555");
        for (key, want) in [
            ("..", SegmentError::Dot("..".into())),
            (".", SegmentError::Dot(".".into())),
            ("", SegmentError::Empty),
        ] {
            let got = c.url(&["maps", "m", "entries", key], &[]);
            assert!(
                matches!(&got, Err(DataplaneError::Segment(e)) if *e == want),
                "{key:?}: {got:?}"
            );
        }
    }
}
