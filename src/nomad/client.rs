//! A small Nomad HTTP API client: the reads the watcher needs, with Nomad's conventions (query
//! meta headers, plain-text errors, `X-Nomad-Token`, region) and transport settings from the
//! configuration (TLS, `unix://` sockets).
//!
//! Each endpoint has its own deadline: a short read gets the slack ([`DEFAULT_REQUEST_SLACK`]),
//! a blocking list its wait plus Nomad's jitter plus the slack, and the event stream the slack to
//! answer with its headers (Nomad sends them, and a first `{}`, at once) and then no deadline at
//! all. Every request is counted and timed by endpoint and status in the client's
//! [`CallMetrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use url::Url;

use super::stats::{Endpoint, NomadStats};
use super::wire::{Job, NamespaceServices, Registration};
use crate::call_metrics::{CallMetrics, STATUS_ERROR, STATUS_TIMEOUT};
use crate::config::NomadConfig;

mod checks;
mod error;

pub use error::{NomadError, SetupError};

/// Nomad clamps a blocking wait to 300 s (`MaxBlockingRPCQueryTime`).
pub const MAX_BLOCKING_WAIT: Duration = Duration::from_secs(300);
/// Added to every request deadline beyond what Nomad may legitimately take.
pub const DEFAULT_REQUEST_SLACK: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Error bodies are quoted up to this many bytes.
const MAX_ERROR_BODY: usize = 512;

/// A blocking query: return when the index exceeds `index`, or after `wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub index: u64,
    pub wait: Duration,
}

/// A read's data with its `X-Nomad-Index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed<T> {
    pub index: u64,
    pub data: T,
}

#[derive(Clone, Debug)]
pub struct NomadClient {
    http: Client,
    /// Ends in `/`; `v1/...` is joined to it.
    base: Url,
    region: Option<String>,
    stats: Arc<NomadStats>,
    calls: CallMetrics,
    slack: Duration,
}

impl NomadClient {
    /// A client for the configured address, token, region and TLS settings, recording every
    /// request in `stats` (for the watcher and `/status`) and in `calls` (metrics).
    pub fn new(
        config: &NomadConfig,
        stats: Arc<NomadStats>,
        calls: CallMetrics,
    ) -> Result<NomadClient, NomadError> {
        Self::with_slack(config, stats, calls, DEFAULT_REQUEST_SLACK)
    }

    /// As [`NomadClient::new`], with a custom deadline slack (tests use a short one).
    pub fn with_slack(
        config: &NomadConfig,
        stats: Arc<NomadStats>,
        calls: CallMetrics,
        slack: Duration,
    ) -> Result<NomadClient, NomadError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &config.token {
            let mut value = HeaderValue::from_str(token.expose().trim())
                .map_err(|source| NomadError::Config(SetupError::Token(source)))?;
            value.set_sensitive(true);
            headers.insert("X-Nomad-Token", value);
        }
        let mut builder = Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!(
                "haproxy-nomad-connector/",
                env!("CARGO_PKG_VERSION")
            ));
        let mut base = config.address.clone();
        match base.scheme() {
            "unix" => {
                #[cfg(unix)]
                {
                    builder = builder.unix_socket(std::path::PathBuf::from(base.path()));
                }
                base = Url::parse("http://localhost/")
                    .map_err(|source| NomadError::Config(SetupError::Url(source)))?;
            }
            "https" => {
                let tls = &config.tls;
                if let Some(path) = &tls.ca_cert {
                    let pem = read(path)?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                        NomadError::Config(SetupError::CaBundle {
                            path: path.clone(),
                            source,
                        })
                    })?;
                    for cert in certs {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                    let mut pem = read(cert)?;
                    pem.push(b'\n');
                    pem.extend(read(key)?);
                    let identity = reqwest::Identity::from_pem(&pem).map_err(|source| {
                        NomadError::Config(SetupError::Identity {
                            cert: cert.clone(),
                            key: key.clone(),
                            source,
                        })
                    })?;
                    builder = builder.identity(identity);
                }
                if tls.skip_verify {
                    builder = builder.danger_accept_invalid_certs(true);
                }
                if let Some(name) = &tls.server_name {
                    // Verify the certificate against `name` while connecting to the configured
                    // host: ask for `name` and resolve it to the configured host's addresses.
                    let host = base.host_str().unwrap_or_default().to_string();
                    builder = builder.dns_resolver(Arc::new(ServerNameResolver {
                        server_name: name.clone(),
                        host,
                    }));
                    base.set_host(Some(name)).map_err(|source| {
                        NomadError::Config(SetupError::ServerName {
                            name: name.clone(),
                            source,
                        })
                    })?;
                }
            }
            _ => {}
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = builder
            .build()
            .map_err(|source| NomadError::Config(SetupError::Build(source)))?;
        Ok(NomadClient {
            http,
            base,
            region: config.region.clone(),
            stats,
            calls,
            slack,
        })
    }

    pub fn stats(&self) -> &Arc<NomadStats> {
        &self.stats
    }

    /// `GET /v1/services?namespace=<namespace>` (`*` for all readable namespaces), blocking when
    /// `blocking` is given.
    pub async fn list_services(
        &self,
        namespace: &str,
        blocking: Option<Blocking>,
    ) -> Result<Indexed<Vec<NamespaceServices>>, NomadError> {
        let what = "reading the service list".to_string();
        let url = self.url(&["v1", "services"], &[("namespace", namespace)], blocking);
        let response = self
            .send(Endpoint::List, &what, namespace, self.get(url, blocking))
            .await?;
        let index = index_header(&response, &what)?;
        let data = json(response, &what).await?;
        Ok(Indexed { index, data })
    }

    /// `GET /v1/service/<name>?namespace=<namespace>`: every registration of one name.
    pub async fn read_service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Indexed<Vec<Registration>>, NomadError> {
        let what = format!("reading service `{name}`");
        let url = self.url(&["v1", "service", name], &[("namespace", namespace)], None);
        let response = self
            .send(Endpoint::Service, &what, namespace, self.get(url, None))
            .await?;
        let index = index_header(&response, &what)?;
        let data: Option<Vec<Registration>> = json(response, &what).await?;
        Ok(Indexed {
            index,
            data: data.unwrap_or_default(),
        })
    }

    /// `GET /v1/job/<id>?namespace=<namespace>`; `None` when the job no longer exists (404).
    pub async fn read_job(&self, namespace: &str, id: &str) -> Result<Option<Job>, NomadError> {
        let what = format!("reading job `{id}`");
        let url = self.url(&["v1", "job", id], &[("namespace", namespace)], None);
        match self
            .send(Endpoint::Job, &what, namespace, self.get(url, None))
            .await
        {
            Ok(response) => json(response, &what).await.map(Some),
            Err(NomadError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/status/leader`: the leader's address, `""` when the cluster has none.
    pub async fn leader(&self) -> Result<String, NomadError> {
        let what = "reading the leader status".to_string();
        let url = self.url(&["v1", "status", "leader"], &[], None);
        let response = self
            .send(Endpoint::Leader, &what, "", self.get(url, None))
            .await?;
        json(response, &what).await
    }

    /// Opens `GET /v1/event/stream?topic=Service:*&namespace=<namespace>&index=<index>`. The
    /// answer's headers must come within the slack (Nomad sends them at once); the caller reads
    /// the NDJSON body, with no overall deadline (the stream lives until closed).
    pub async fn event_stream(&self, namespace: &str, index: u64) -> Result<Response, NomadError> {
        let what = "subscribing to the event stream".to_string();
        let index = index.to_string();
        let url = self.url(
            &["v1", "event", "stream"],
            &[
                ("topic", "Service:*"),
                ("namespace", namespace),
                ("index", &index),
            ],
            None,
        );
        self.send(Endpoint::Stream, &what, namespace, self.http.get(url))
            .await
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)], blocking: Option<Blocking>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            if let Some(region) = &self.region {
                pairs.append_pair("region", region);
            }
            if let Some(b) = blocking {
                pairs.append_pair("index", &b.index.to_string());
                pairs.append_pair("wait", &format!("{}ms", clamp_wait(b.wait).as_millis()));
            }
        }
        url
    }

    /// A GET whose deadline outlasts Nomad's longest legitimate answer: the wait plus Nomad's
    /// jitter of up to wait/16, plus slack.
    fn get(&self, url: Url, blocking: Option<Blocking>) -> RequestBuilder {
        let deadline = match blocking {
            Some(b) => {
                let wait = clamp_wait(b.wait);
                wait + wait / 16 + self.slack
            }
            None => self.slack,
        };
        self.http.get(url).timeout(deadline)
    }

    /// The one request path: the endpoint's deadline to the response headers (the stream's;
    /// the others carry theirs on `request`), recording, and a typed error for a non-success
    /// status.
    async fn send(
        &self,
        endpoint: Endpoint,
        what: &str,
        namespace: &str,
        request: RequestBuilder,
    ) -> Result<Response, NomadError> {
        let started = Instant::now();
        let sent = match endpoint {
            Endpoint::Stream => match tokio::time::timeout(self.slack, request.send()).await {
                Ok(r) => r.map_err(|e| (e.is_timeout(), NomadError::transport(what, e))),
                Err(_) => Err((
                    true,
                    NomadError::Timeout {
                        what: what.to_string(),
                        after: self.slack,
                    },
                )),
            },
            _ => request
                .send()
                .await
                .map_err(|e| (e.is_timeout(), NomadError::transport(what, e))),
        };
        let response = match sent {
            Ok(r) => r,
            Err((timeout, error)) => {
                self.stats.record_request(endpoint, None);
                let status = if timeout {
                    STATUS_TIMEOUT
                } else {
                    STATUS_ERROR
                };
                self.calls.count(endpoint.as_str(), STATUS_ERROR);
                self.calls
                    .observe(endpoint.as_str(), status, started.elapsed());
                return Err(error);
            }
        };
        let status = response.status();
        self.stats.record_request(endpoint, Some(status.as_u16()));
        // Timed to the response headers: a blocking list's time is mostly Nomad's wait.
        self.calls
            .record(endpoint.as_str(), status.as_str(), started.elapsed());
        if status.is_success() {
            return Ok(response);
        }
        let message = error_text(response).await;
        let what = if namespace.is_empty() {
            what.to_string()
        } else {
            format!("{what} in namespace `{namespace}`")
        };
        let denied = status == StatusCode::FORBIDDEN
            || (endpoint == Endpoint::Stream
                && status == StatusCode::INTERNAL_SERVER_ERROR
                && message == "Permission denied");
        Err(if denied {
            NomadError::PermissionDenied {
                what,
                namespace: namespace.to_string(),
                status: status.as_u16(),
                message,
            }
        } else {
            NomadError::Status {
                what,
                status: status.as_u16(),
                message,
            }
        })
    }
}

/// Nomad's accepted range for `wait`: (0, 300 s].
fn clamp_wait(wait: Duration) -> Duration {
    wait.clamp(Duration::from_millis(1), MAX_BLOCKING_WAIT)
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, NomadError> {
    std::fs::read(path).map_err(|source| {
        NomadError::Config(SetupError::Read {
            path: path.to_path_buf(),
            source,
        })
    })
}

fn index_header(response: &Response, what: &str) -> Result<u64, NomadError> {
    let header = response
        .headers()
        .get("X-Nomad-Index")
        .ok_or_else(|| NomadError::Protocol {
            what: what.to_string(),
            reason: "no X-Nomad-Index header".into(),
        })?;
    header
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| NomadError::Protocol {
            what: what.to_string(),
            reason: format!("X-Nomad-Index {header:?} is not a number"),
        })
}

async fn json<T: serde::de::DeserializeOwned>(
    response: Response,
    what: &str,
) -> Result<T, NomadError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|source| NomadError::transport(what, source))?;
    serde_json::from_slice(&bytes).map_err(|source| NomadError::Decode {
        what: what.to_string(),
        source,
    })
}

/// Nomad's error bodies are plain text; quote them trimmed and bounded.
async fn error_text(response: Response) -> String {
    match response.bytes().await {
        Ok(bytes) => {
            let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
            String::from_utf8_lossy(cut).trim().to_string()
        }
        Err(e) => format!("(unreadable body: {e})"),
    }
}

/// Resolves the TLS server name to the configured host, so the certificate is checked against
/// the name while the connection goes to the address.
struct ServerNameResolver {
    server_name: String,
    host: String,
}

impl reqwest::dns::Resolve for ServerNameResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = if name.as_str() == self.server_name {
            self.host.clone()
        } else {
            name.as_str().to_string()
        };
        Box::pin(async move {
            let host = target
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests;
