//! The executor's I/O: one service read (with its jobs' check definitions, cached), one stream
//! connection, forwarded line by line. Decisions live in the [machine](super::machine).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::warn;

use super::machine::{Input, StreamEnd};
use crate::catalog::{NomadCheck, Service, ServiceKey, is_enabled};
use crate::nomad::client::{NomadClient, NomadError};
use crate::nomad::stream::{Frame, LineBuffer, parse_line};

/// Reads one service with its jobs' check definitions.
pub(super) struct Reader {
    client: NomadClient,
    prefix: String,
    /// (namespace, job ID) → checks.
    jobs: Mutex<HashMap<(String, String), CachedJob>>,
}

#[derive(Clone, Debug)]
struct CachedJob {
    modify_index: u64,
    /// Registrations of this job up to this ModifyIndex were present when it was fetched.
    covers: u64,
    /// The relist generation of the fetch.
    generation: u64,
    checks: BTreeMap<String, Option<NomadCheck>>,
}

impl Reader {
    pub(super) fn new(client: NomadClient, prefix: String) -> Reader {
        Reader {
            client,
            prefix,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CachedJob>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The service as the catalog holds it, or `None` when it has no registration or no
    /// `<prefix>.enable=true` tag.
    pub(super) async fn read(
        &self,
        key: &ServiceKey,
        generation: u64,
    ) -> Result<Option<Service>, NomadError> {
        let registrations = self
            .client
            .read_service(&key.namespace, &key.name)
            .await?
            .data;
        if !is_enabled(
            registrations.iter().flat_map(|r| r.tags.iter().flatten()),
            &self.prefix,
        ) {
            return Ok(None);
        }
        let mut newest_by_job: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &registrations {
            let newest = newest_by_job.entry(r.job_id.as_str()).or_default();
            *newest = (*newest).max(r.modify_index);
        }
        let mut checks_by_job: BTreeMap<&str, Option<NomadCheck>> = BTreeMap::new();
        for (job, newest) in newest_by_job {
            let checks = self
                .job_checks(&key.namespace, job, newest, generation)
                .await?;
            checks_by_job.insert(job, checks.get(&key.name).cloned().flatten());
        }
        let mut instances = Vec::with_capacity(registrations.len());
        for r in &registrations {
            let check = checks_by_job.get(r.job_id.as_str()).cloned().flatten();
            match r.to_instance(check) {
                Ok(instance) => instances.push(instance),
                Err(reason) => warn!(
                    namespace = %key.namespace,
                    service = %key.name,
                    id = %r.id,
                    %reason,
                    "skipping a registration"
                ),
            }
        }
        Ok(Some(Service { instances }))
    }

    /// A job's checks by service name: from the cache when no registration is newer than the
    /// fetch and the job was fetched in this relist generation; otherwise re-fetched (and
    /// re-parsed only when the job's ModifyIndex changed).
    async fn job_checks(
        &self,
        namespace: &str,
        job: &str,
        newest_registration: u64,
        generation: u64,
    ) -> Result<BTreeMap<String, Option<NomadCheck>>, NomadError> {
        let cache_key = (namespace.to_string(), job.to_string());
        let cached = self.jobs().get(&cache_key).cloned();
        if let Some(c) = &cached
            && newest_registration <= c.covers
            && c.generation >= generation
        {
            return Ok(c.checks.clone());
        }
        if job.is_empty() {
            return Ok(BTreeMap::new());
        }
        let fetched = self.client.read_job(namespace, job).await?;
        let modify_index = fetched.as_ref().map_or(0, |j| j.modify_index);
        let checks = match (&cached, &fetched) {
            (Some(c), Some(j)) if c.modify_index == j.modify_index => c.checks.clone(),
            (_, Some(j)) => j.checks(),
            (_, None) => BTreeMap::new(),
        };
        self.jobs().insert(
            cache_key,
            CachedJob {
                modify_index,
                covers: newest_registration.max(cached.map_or(0, |c| c.covers)),
                generation,
                checks: checks.clone(),
            },
        );
        Ok(checks)
    }

    pub(super) fn forget_jobs_older_than(&self, generation: u64) {
        self.jobs().retain(|_, c| c.generation >= generation);
    }
}

/// One connection of `scope`'s event stream from `index`: forwards its first line as
/// [`Input::StreamUp`], each batch as [`Input::StreamBatch`], and how it ended as
/// [`Input::StreamEnded`]. No byte for `heartbeat_timeout` ends it.
pub(super) async fn stream_connection(
    client: NomadClient,
    scope: String,
    index: u64,
    heartbeat_timeout: Duration,
    tx: mpsc::UnboundedSender<Input>,
) {
    let mut up = false;
    let end = forward(&client, &scope, index, heartbeat_timeout, &tx, &mut up).await;
    let _ = tx.send(Input::StreamEnded { scope, up, end });
}

async fn forward(
    client: &NomadClient,
    scope: &str,
    index: u64,
    heartbeat_timeout: Duration,
    tx: &mpsc::UnboundedSender<Input>,
    up: &mut bool,
) -> StreamEnd {
    let mut response = match client.event_stream(scope, index).await {
        Ok(r) => r,
        Err(e) => return StreamEnd::Failed(e),
    };
    let mut lines = LineBuffer::default();
    loop {
        let chunk = match timeout(heartbeat_timeout, response.chunk()).await {
            Err(_) => {
                return StreamEnd::Closed(format!(
                    "no data for {} (heartbeats stopped)",
                    humantime::format_duration(heartbeat_timeout)
                ));
            }
            Ok(Err(source)) => {
                return StreamEnd::Failed(NomadError::transport(
                    "reading the event stream",
                    source,
                ));
            }
            Ok(Ok(None)) => {
                return match lines.finish() {
                    Some(rest) => match parse_line(&rest) {
                        Frame::Error(text) => {
                            StreamEnd::Closed(format!("Nomad ended the stream: {text}"))
                        }
                        _ => StreamEnd::Closed("Nomad closed the stream mid-line".into()),
                    },
                    None => StreamEnd::Closed("Nomad closed the stream".into()),
                };
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        let complete = match lines.push(&chunk) {
            Ok(complete) => complete,
            Err(_) => return StreamEnd::Closed("a stream line exceeded the size limit".into()),
        };
        for line in complete {
            let frame = parse_line(&line);
            if !*up && !matches!(frame, Frame::Error(_)) {
                *up = true;
                let scope = scope.to_string();
                if tx.send(Input::StreamUp { scope }).is_err() {
                    return StreamEnd::Closed("watcher stopped".into());
                }
            }
            match frame {
                Frame::Heartbeat => {}
                Frame::Batch { index, events } => {
                    let scope = scope.to_string();
                    let batch = Input::StreamBatch {
                        scope,
                        index,
                        events,
                    };
                    if tx.send(batch).is_err() {
                        return StreamEnd::Closed("watcher stopped".into());
                    }
                }
                Frame::Error(text) => {
                    return StreamEnd::Closed(format!("Nomad ended the stream: {text}"));
                }
            }
        }
    }
}
