//! A Nomad HTTP API double (axum, in-process, 127.0.0.1:0 or a unix socket), faithful to
//! CONTRACTS.md §1.8 and §1.9 for the routes the connector uses:
//!
//! - `GET /v1/services` and `GET /v1/service/<name>`: blocking queries on the table-wide index
//!   (floored at 1; `index=0` never blocks; `wait` defaults to and is capped at 300 s, plus up
//!   to wait/16 of jitter; a timeout answers 200 with the same data and index); `namespace=*`
//!   honoured on the list only; `200 []` for unknown services; plain-text errors (`400 Invalid
//!   wait time`, `400 Invalid index`, `403 Permission denied`, `500 No cluster leader`).
//! - `GET /v1/job/<id>`, `GET /v1/status/leader`.
//! - `GET /v1/event/stream`: `{}` at once, then batches by the inclusive/closest index rules
//!   over a bounded buffer (100 batches by default), heartbeats at a set interval, trailing
//!   error text on a cut.
//! - ACLs per token and namespace (`read-job`), off by default.
//!
//! The control surface changes state the way Nomad would (identical re-registrations emit
//! nothing and keep the index; deletions as `AllocationUpdated`; deletions with no event),
//! cuts streams, restarts with an empty buffer, moves the index backwards, and counts requests
//! per route.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const RESUBSCRIBE: &str = "subscription closed by server, client should resubscribe";
const MAX_WAIT: Duration = Duration::from_secs(300);

/// One service registration as the double stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reg {
    pub id: String,
    pub service_name: String,
    pub namespace: String,
    pub node_id: String,
    pub datacenter: String,
    pub job_id: String,
    pub alloc_id: String,
    /// `None` is sent as `"Tags": null`.
    pub tags: Option<Vec<String>>,
    pub address: String,
    pub port: u16,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Reg {
    /// A registration of `service` in `namespace` for allocation `alloc`, tagged
    /// `haproxy.enable=true`, with Nomad's ID format.
    pub fn new(namespace: &str, service: &str, alloc: &str, address: &str, port: u16) -> Reg {
        Reg {
            id: format!("_nomad-task-{alloc}-group-{service}-{service}-http"),
            service_name: service.to_string(),
            namespace: namespace.to_string(),
            node_id: "7406e90b-de16-d118-80fe-60d0f2730cb3".into(),
            datacenter: "dc1".into(),
            job_id: format!("{service}-job"),
            alloc_id: alloc.to_string(),
            tags: Some(vec!["haproxy.enable=true".to_string()]),
            address: address.to_string(),
            port,
            create_index: 0,
            modify_index: 0,
        }
    }

    pub fn tags(mut self, tags: Option<&[&str]>) -> Reg {
        self.tags = tags.map(|t| t.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn job(mut self, job: &str) -> Reg {
        self.job_id = job.to_string();
        self
    }

    fn json(&self) -> Value {
        json!({
            "ID": self.id, "ServiceName": self.service_name, "Namespace": self.namespace,
            "NodeID": self.node_id, "Datacenter": self.datacenter, "JobID": self.job_id,
            "AllocID": self.alloc_id, "Tags": self.tags, "Address": self.address, "Port": self.port,
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        })
    }

    /// Equal as Nomad compares a re-registration: indexes ignored, tags as a set.
    fn same_as(&self, other: &Reg) -> bool {
        let set =
            |t: &Option<Vec<String>>| -> BTreeSet<String> { t.iter().flatten().cloned().collect() };
        self.service_name == other.service_name
            && self.namespace == other.namespace
            && self.node_id == other.node_id
            && self.datacenter == other.datacenter
            && self.job_id == other.job_id
            && self.alloc_id == other.alloc_id
            && set(&self.tags) == set(&other.tags)
            && self.address == other.address
            && self.port == other.port
    }
}

#[derive(Clone, Debug)]
struct EventRec {
    kind: &'static str,
    reg: Reg,
}

#[derive(Debug)]
struct Batch {
    index: u64,
    events: Vec<EventRec>,
}

#[derive(Clone, Debug)]
enum StreamMsg {
    Batch(Arc<Batch>),
    /// End every stream, after writing this text (no newline) when given.
    Cut(Option<String>),
    /// An ACL policy changed: every stream re-checks its token as at subscribe time and ends
    /// with the resubscribe text when it is no longer allowed (Nomad's
    /// `checkSubscriptionsAgainstACLChange`); streams still allowed carry on.
    PolicyChanged,
}

/// Options fixed at start.
#[derive(Clone, Debug)]
pub struct Options {
    pub buffer_size: usize,
    pub heartbeat: Duration,
    /// Nomad ≤ 1.9.5 answers a valid token lacking the capability on the stream with
    /// `500 Permission denied`; 1.9.6+ with 403.
    pub legacy_stream_denial: bool,
    /// The raft index before the first write. A real cluster has applied entries (elections,
    /// configuration, namespaces) before any service registers, so its first registration is
    /// never index 1 — which a client could not tell apart from the floored index of an empty
    /// table. Tests of the index rules themselves may start at 0 for readable numbers.
    pub first_raft_index: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            buffer_size: 100,
            heartbeat: Duration::from_secs(30),
            legacy_stream_denial: false,
            first_raft_index: 10,
        }
    }
}

#[derive(Debug, Default)]
struct Cluster {
    raft_index: u64,
    table_index: u64,
    registrations: BTreeMap<String, Reg>,
    jobs: BTreeMap<(String, String), Value>,
    extra_namespaces: BTreeSet<String>,
    buffer: VecDeque<Arc<Batch>>,
    /// `None`: ACLs disabled. Token → namespaces it may `read-job` in (`*`: all, management).
    acl: Option<HashMap<String, BTreeSet<String>>>,
    denied_namespaces: BTreeSet<String>,
    counters: BTreeMap<&'static str, u64>,
    outage: bool,
    /// Check results by allocation ID: check ID → Nomad's `QueryResult` JSON.
    checks: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Cluster {
    fn namespaces(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .registrations
            .values()
            .map(|r| r.namespace.clone())
            .collect();
        out.insert("default".into());
        out.extend(self.extra_namespaces.iter().cloned());
        out
    }

    fn can_read(&self, token: Option<&str>, namespace: &str) -> bool {
        // A management token cannot be restricted in Nomad: the denial applies to policies.
        if self.acl.is_some() && self.is_management(token) {
            return true;
        }
        if self.denied_namespaces.contains(namespace) {
            return false;
        }
        match &self.acl {
            None => true,
            Some(tokens) => token
                .and_then(|t| tokens.get(t))
                .is_some_and(|ns| ns.contains("*") || ns.contains(namespace)),
        }
    }

    fn is_management(&self, token: Option<&str>) -> bool {
        match &self.acl {
            None => true,
            Some(tokens) => token
                .and_then(|t| tokens.get(t))
                .is_some_and(|ns| ns.contains("*")),
        }
    }

    fn known_token(&self, token: Option<&str>) -> bool {
        match &self.acl {
            None => true,
            Some(tokens) => token.is_some_and(|t| tokens.contains_key(t)),
        }
    }

    fn table_index_floored(&self) -> u64 {
        self.table_index.max(1)
    }
}

struct Shared {
    state: Mutex<Cluster>,
    options: Options,
    /// Bumped on every table write: wakes blocking queries.
    changed: watch::Sender<u64>,
    live: broadcast::Sender<StreamMsg>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running double. Stops (and cuts its streams) when dropped.
pub struct NomadDouble {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl NomadDouble {
    pub async fn start() -> NomadDouble {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> NomadDouble {
        let shared = Self::shared(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Nomad double");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        // As Go's net/http (Nomad) does on every TCP connection: a small write (an event
        // stream's line after its headers) must not wait for the client's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        NomadDouble {
            shared,
            server,
            url: format!("http://{addr}"),
            _dir: None,
        }
    }

    /// The double over HTTPS (`tls http = true`), with `tls` (the server certificate, and client
    /// verification when Nomad's `verify_https_client` is on). A client that speaks plain HTTP
    /// or does not trust the certificate fails the handshake.
    pub async fn start_tls(
        options: Options,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> NomadDouble {
        let shared = Self::shared(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Nomad double");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let app = router(shared.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        NomadDouble {
            shared,
            server,
            url: format!("https://{addr}"),
            _dir: None,
        }
    }

    /// The double on a unix socket in a private temp dir; its URL is `unix:///…/nomad.sock`.
    pub async fn start_unix(options: Options) -> NomadDouble {
        let shared = Self::shared(options);
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("nomad.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the unix socket");
        let app = router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        NomadDouble {
            shared,
            server,
            url: format!("unix://{}", path.display()),
            _dir: Some(dir),
        }
    }

    fn shared(options: Options) -> Arc<Shared> {
        let (changed, _) = watch::channel(0);
        let (live, _) = broadcast::channel(options.buffer_size.max(1));
        Arc::new(Shared {
            state: Mutex::new(Cluster {
                raft_index: options.first_raft_index,
                ..Cluster::default()
            }),
            options,
            changed,
            live,
        })
    }

    /// `http://127.0.0.1:<port>` or `unix:///path`.
    pub fn url(&self) -> &str {
        &self.url
    }

    // ---- state changes ----

    /// Upserts registrations in one raft apply (one event batch). Identical re-registrations are
    /// dropped; when nothing is left, nothing happens (no event, index unchanged).
    pub fn register(&self, regs: impl IntoIterator<Item = Reg>) {
        let mut st = self.shared.lock();
        let changed: Vec<Reg> = regs
            .into_iter()
            .filter(|r| {
                st.registrations
                    .get(&r.id)
                    .is_none_or(|old| !old.same_as(r))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        st.raft_index += 1;
        let index = st.raft_index;
        let mut events = Vec::new();
        for mut reg in changed {
            reg.create_index = st
                .registrations
                .get(&reg.id)
                .map_or(index, |old| old.create_index);
            reg.modify_index = index;
            st.registrations.insert(reg.id.clone(), reg.clone());
            events.push(EventRec {
                kind: "ServiceRegistration",
                reg,
            });
        }
        self.commit(st, index, Some(events));
    }

    /// Changes one registration's tags (a new upsert).
    pub fn set_tags(&self, id: &str, tags: Option<&[&str]>) {
        let reg = self.shared.lock().registrations.get(id).cloned();
        let reg = reg.unwrap_or_else(|| panic!("no registration {id}"));
        self.register([reg.tags(tags)]);
    }

    /// A task stopped: `ServiceDeregistration`.
    pub fn deregister(&self, ids: &[&str]) {
        self.delete(ids, Some("ServiceDeregistration"));
    }

    /// The client reported the allocation terminal: the Service events say `AllocationUpdated`.
    pub fn delete_as_alloc_updated(&self, ids: &[&str]) {
        self.delete(ids, Some("AllocationUpdated"));
    }

    /// Garbage collection through eval deletion: registrations go, the index moves, no event.
    pub fn delete_silently(&self, ids: &[&str]) {
        self.delete(ids, None);
    }

    fn delete(&self, ids: &[&str], kind: Option<&'static str>) {
        let mut st = self.shared.lock();
        let removed: Vec<Reg> = ids
            .iter()
            .filter_map(|id| st.registrations.remove(*id))
            .collect();
        assert!(!removed.is_empty(), "no such registrations: {ids:?}");
        st.raft_index += 1;
        let index = st.raft_index;
        let events = kind.map(|kind| {
            removed
                .into_iter()
                .map(|reg| EventRec { kind, reg })
                .collect()
        });
        self.commit(st, index, events);
    }

    fn commit(&self, mut st: MutexGuard<'_, Cluster>, index: u64, events: Option<Vec<EventRec>>) {
        st.table_index = index;
        if let Some(events) = events {
            let batch = Arc::new(Batch { index, events });
            st.buffer.push_back(batch.clone());
            while st.buffer.len() > self.shared.options.buffer_size {
                st.buffer.pop_front();
            }
            // Sent under the lock, so a subscriber sees each batch once: in its replay or live.
            let _ = self.shared.live.send(StreamMsg::Batch(batch));
        }
        drop(st);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    pub fn put_job(&self, namespace: &str, id: &str, mut job: Value) {
        let mut st = self.shared.lock();
        st.raft_index += 1;
        job["ID"] = json!(id);
        job["Namespace"] = json!(namespace);
        job["ModifyIndex"] = json!(st.raft_index);
        st.jobs.insert((namespace.to_string(), id.to_string()), job);
    }

    /// Sets the result of check `check` of `service` in allocation `alloc` (`status`:
    /// `success`, `failure` or `pending`), as the Nomad client running it reports it.
    pub fn set_check(&self, alloc: &str, service: &str, check: &str, status: &str) {
        let mut st = self.shared.lock();
        let id = format!("{alloc}-{service}-{check}");
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = json!({
            "ID": id, "Mode": "healthiness", "Status": status,
            "Output": if status == "failure" { "HTTP 503" } else { "HTTP 200" },
            "Timestamp": timestamp, "Group": service, "Service": service, "Check": check,
        });
        st.checks
            .entry(alloc.to_string())
            .or_default()
            .insert(id, result);
    }

    pub fn add_namespace(&self, namespace: &str) {
        self.shared.lock().extra_namespaces.insert(namespace.into());
    }

    /// Registrations currently held, by ID.
    pub fn registrations(&self) -> BTreeMap<String, Reg> {
        self.shared.lock().registrations.clone()
    }

    pub fn table_index(&self) -> u64 {
        self.shared.lock().table_index
    }

    // ---- streams and cluster events ----

    /// Ends every open event stream cleanly (EOF).
    pub fn cut_streams(&self) {
        let _st = self.shared.lock();
        let _ = self.shared.live.send(StreamMsg::Cut(None));
    }

    /// Ends every open event stream after appending `text` (not JSON, no newline).
    pub fn cut_streams_with_error(&self, text: &str) {
        let _st = self.shared.lock();
        let _ = self
            .shared
            .live
            .send(StreamMsg::Cut(Some(text.to_string())));
    }

    /// A server restart: the event buffer is empty and open streams end.
    pub fn restart_with_empty_buffer(&self) {
        let mut st = self.shared.lock();
        st.buffer.clear();
        let _ = self.shared.live.send(StreamMsg::Cut(None));
    }

    /// A snapshot restore to an older state: the raft and table indexes drop to `index`, the
    /// registrations become `regs` (their indexes clamped to `index`), the buffer empties, and
    /// streams end with the resubscribe text.
    pub fn restore_snapshot(&self, index: u64, regs: Vec<Reg>) {
        let mut st = self.shared.lock();
        assert!(index < st.table_index, "not backwards");
        st.raft_index = index;
        st.table_index = index;
        st.registrations = regs
            .into_iter()
            .map(|mut r| {
                r.create_index = r.create_index.clamp(1, index);
                r.modify_index = r.modify_index.clamp(1, index);
                (r.id.clone(), r)
            })
            .collect();
        st.buffer.clear();
        let _ = self
            .shared
            .live
            .send(StreamMsg::Cut(Some(RESUBSCRIBE.to_string())));
        drop(st);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// The index goes backwards with the same registrations (see
    /// [`NomadDouble::restore_snapshot`]).
    pub fn move_index_backwards(&self, index: u64) {
        let regs = self.shared.lock().registrations.values().cloned().collect();
        self.restore_snapshot(index, regs);
    }

    /// No leader: reads answer `500 No cluster leader`, the leader probe `""`.
    pub fn set_outage(&self, outage: bool) {
        self.shared.lock().outage = outage;
        if outage {
            let _ = self.shared.live.send(StreamMsg::Cut(None));
        }
        self.shared.changed.send_modify(|v| *v += 1);
    }

    // ---- ACLs ----

    /// Turns ACLs on; tokens then need a policy (see [`NomadDouble::grant`]).
    pub fn enable_acl(&self) {
        self.shared.lock().acl.get_or_insert_with(HashMap::new);
    }

    /// Gives `token` `read-job` in `namespaces` (`*`: management), replacing what it had. A
    /// policy change: open streams re-check their token.
    pub fn grant(&self, token: &str, namespaces: &[&str]) {
        let mut st = self.shared.lock();
        let acl = st.acl.get_or_insert_with(HashMap::new);
        acl.insert(
            token.to_string(),
            namespaces.iter().map(|s| s.to_string()).collect(),
        );
        drop(st);
        let _ = self.shared.live.send(StreamMsg::PolicyChanged);
    }

    /// Deletes `token`: it becomes unknown (403 everywhere), and open streams end with
    /// Nomad's resubscribe text.
    pub fn deny_token(&self, token: &str) {
        let mut st = self.shared.lock();
        if let Some(acl) = st.acl.as_mut() {
            acl.remove(token);
        }
        let _ = self
            .shared
            .live
            .send(StreamMsg::Cut(Some(RESUBSCRIBE.to_string())));
    }

    /// Every policy token loses `read-job` on `namespace` (`deny` false undoes it; management
    /// tokens, granted `*`, cannot be restricted, as in Nomad): a policy change,
    /// so open streams re-check their token. Only possible with ACLs enabled, as in Nomad
    /// (without ACLs every read is allowed).
    pub fn deny_namespace(&self, namespace: &str, deny: bool) {
        let mut st = self.shared.lock();
        assert!(
            st.acl.is_some(),
            "deny_namespace needs enable_acl(): without ACLs Nomad denies nothing"
        );
        if deny {
            st.denied_namespaces.insert(namespace.to_string());
        } else {
            st.denied_namespaces.remove(namespace);
        }
        drop(st);
        let _ = self.shared.live.send(StreamMsg::PolicyChanged);
    }

    // ---- counters ----

    /// Requests received on a route: `list`, `service`, `job`, `leader`, `stream`, `checks`.
    pub fn requests(&self, route: &str) -> u64 {
        self.shared
            .lock()
            .counters
            .get(route)
            .copied()
            .unwrap_or_default()
    }

    pub fn reset_counters(&self) {
        self.shared.lock().counters.clear();
    }
}

impl Drop for NomadDouble {
    fn drop(&mut self) {
        let _ = self.shared.live.send(StreamMsg::Cut(None));
        self.server.abort();
    }
}

// ---- HTTP ----

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/services", get(list_services).fallback(invalid_method))
        .route("/v1/service/", get(missing_name).fallback(invalid_method))
        .route(
            "/v1/service/{*rest}",
            get(read_service).fallback(invalid_method),
        )
        .route("/v1/job/{id}", get(read_job).fallback(invalid_method))
        .route(
            "/v1/client/allocation/{id}/checks",
            get(alloc_checks).fallback(invalid_method),
        )
        .route("/v1/status/leader", get(leader).fallback(invalid_method))
        .route(
            "/v1/event/stream",
            get(event_stream).fallback(invalid_method),
        )
        .with_state(shared)
}

/// An error answer before it becomes a response: status and Nomad's plain text.
type Failure = (StatusCode, String);

fn denied() -> Failure {
    (StatusCode::FORBIDDEN, "Permission denied".to_string())
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [("Content-Type", "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn invalid_method() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "Invalid method")
}

async fn missing_name() -> Response {
    text(StatusCode::BAD_REQUEST, "missing service name")
}

fn indexed(index: u64, body: Value) -> Response {
    let mut response = (
        StatusCode::OK,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("X-Nomad-Index", HeaderValue::from(index));
    headers.insert("X-Nomad-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Nomad-LastContact", HeaderValue::from_static("0"));
    response
}

/// The query parameters every blocking read parses.
struct Query {
    pairs: Vec<(String, String)>,
    namespace: String,
    index: u64,
    wait: Duration,
}

impl Query {
    fn parse(raw: Option<String>) -> Result<Query, Failure> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let namespace = get("namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let wait = match get("wait") {
            None => MAX_WAIT,
            Some(w) => match parse_go_duration(&w) {
                // Clamped to (0, 300 s]: zero or negative means the default.
                Some(d) if d.is_zero() => MAX_WAIT,
                Some(d) => d.min(MAX_WAIT),
                None => return Err((StatusCode::BAD_REQUEST, "Invalid wait time".to_string())),
            },
        };
        let index = match get("index") {
            None => 0,
            Some(i) => match i.parse::<u64>() {
                Ok(i) => i,
                Err(_) => return Err((StatusCode::BAD_REQUEST, "Invalid index".to_string())),
            },
        };
        if let Some(stale) = get("stale")
            && !stale.is_empty()
            && !matches!(
                stale.as_str(),
                "1" | "t"
                    | "T"
                    | "true"
                    | "TRUE"
                    | "True"
                    | "0"
                    | "f"
                    | "F"
                    | "false"
                    | "FALSE"
                    | "False"
            )
        {
            return Err((
                StatusCode::BAD_REQUEST,
                "Expect `true` or `false` for `stale` query string parameter".to_string(),
            ));
        }
        Ok(Query {
            pairs,
            namespace,
            index,
            wait,
        })
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Go's `time.ParseDuration` for the forms clients send (`10s`, `5m`, `1500ms`, `1m30s`);
/// zero or negative waits are clamped by Nomad, not rejected, so they parse here too.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(value * unit);
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("X-Nomad-Token").and_then(|v| v.to_str().ok()) {
        let t = t.trim();
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    let auth = headers.get("Authorization")?.to_str().ok()?;
    let (scheme, rest) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.split_whitespace().next().map(str::to_string))
        .flatten()
}

fn count(shared: &Shared, route: &'static str) {
    *shared.lock().counters.entry(route).or_default() += 1;
}

/// Runs `read` until its index exceeds the requested one or the wait (plus Nomad's jitter of up
/// to wait/16) runs out, as Nomad's blockingRPC does.
async fn blocking(
    shared: &Shared,
    query: &Query,
    read: impl Fn(&Cluster) -> Result<(u64, Value), Failure>,
) -> Response {
    let jitter = if query.wait.is_zero() {
        Duration::ZERO
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        query.wait / 16 * (nanos % 1000) / 1000
    };
    let deadline = Instant::now() + query.wait + jitter;
    let mut changed = shared.changed.subscribe();
    loop {
        let result = {
            let st = shared.lock();
            if st.outage {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
            }
            read(&st)
        };
        let (index, body) = match result {
            Ok(r) => r,
            Err((status, message)) => return text(status, &message),
        };
        if query.index == 0 || index > query.index || Instant::now() >= deadline {
            return indexed(index, body);
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            // Timed out: one last read, answered whatever its index.
            continue;
        }
    }
}

async fn list_services(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    count(&shared, "list");
    let query = match Query::parse(raw) {
        Ok(q) => q,
        Err((status, message)) => return text(status, &message),
    };
    let token = token(&headers);
    blocking(&shared, &query, |st| {
        let namespaces: Vec<String> = if query.namespace == "*" {
            let readable: Vec<String> = st
                .namespaces()
                .into_iter()
                .filter(|n| st.can_read(token.as_deref(), n))
                .collect();
            if readable.is_empty() {
                // §1.9: `[]` with index 0, not floored.
                return Ok((0, json!([])));
            }
            readable
        } else {
            if !st.can_read(token.as_deref(), &query.namespace) {
                return Err(denied());
            }
            vec![query.namespace.clone()]
        };
        let mut by_ns: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
        for reg in st.registrations.values() {
            if namespaces.contains(&reg.namespace) {
                let tags = by_ns
                    .entry(&reg.namespace)
                    .or_default()
                    .entry(&reg.service_name)
                    .or_default();
                tags.extend(reg.tags.iter().flatten().map(String::as_str));
            }
        }
        let body: Vec<Value> = by_ns
            .into_iter()
            .map(|(ns, services)| {
                let services: Vec<Value> = services
                    .into_iter()
                    .map(|(name, tags)| json!({"ServiceName": name, "Tags": tags}))
                    .collect();
                json!({"Namespace": ns, "Services": services})
            })
            .collect();
        Ok((st.table_index_floored(), Value::Array(body)))
    })
    .await
}

async fn read_service(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    count(&shared, "service");
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [""] => return missing_name().await,
        [_] => {}
        // `/v1/service/<name>/<id>` is the DELETE route; a trailing slash lands there too.
        [_, _] => return invalid_method().await,
        _ => return text(StatusCode::BAD_REQUEST, "invalid URI"),
    }
    let name = segments[0].to_string();
    let query = match Query::parse(raw) {
        Ok(q) => q,
        Err((status, message)) => return text(status, &message),
    };
    let token = token(&headers);
    blocking(&shared, &query, |st| {
        if query.namespace == "*" {
            // `*` is a literal namespace here: `[]` if the token reads anything, else 403.
            let any = st
                .namespaces()
                .iter()
                .any(|n| st.can_read(token.as_deref(), n));
            return if any {
                Ok((st.table_index_floored(), json!([])))
            } else {
                Err(denied())
            };
        }
        if !st.can_read(token.as_deref(), &query.namespace) {
            return Err(denied());
        }
        let regs: Vec<Value> = st
            .registrations
            .values()
            .filter(|r| r.namespace == query.namespace && r.service_name == name)
            .map(Reg::json)
            .collect();
        Ok((st.table_index_floored(), Value::Array(regs)))
    })
    .await
}

async fn read_job(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    count(&shared, "job");
    let query = match Query::parse(raw) {
        Ok(q) => q,
        Err((status, message)) => return text(status, &message),
    };
    let token = token(&headers);
    let st = shared.lock();
    if st.outage {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
    }
    if !st.can_read(token.as_deref(), &query.namespace) {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    match st.jobs.get(&(query.namespace.clone(), id)) {
        Some(job) => indexed(st.raft_index.max(1), job.clone()),
        None => text(StatusCode::NOT_FOUND, "job not found"),
    }
}

/// `GET /v1/client/allocation/<id>/checks`, as a server agent answers it (Nomad
/// `nomad/client_alloc_endpoint.go` `Checks`): the token must authenticate (else 403), the
/// allocation must exist (404 `Unknown allocation`), and the token needs `read-job` in the
/// allocation's own namespace (the `namespace` parameter plays no part), else 403
/// `Permission denied`. The body is the map of check ID to result, `null` when there are none.
async fn alloc_checks(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    count(&shared, "checks");
    let token = token(&headers);
    let st = shared.lock();
    if st.outage {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
    }
    if !st.known_token(token.as_deref()) {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    let Some(namespace) = st
        .registrations
        .values()
        .find(|r| r.alloc_id == id)
        .map(|r| r.namespace.clone())
    else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("Unknown allocation \"{id}\""),
        );
    };
    if !st.can_read(token.as_deref(), &namespace) {
        return text(StatusCode::FORBIDDEN, "Permission denied");
    }
    let body = match st.checks.get(&id) {
        Some(results) if !results.is_empty() => json!(results),
        _ => Value::Null,
    };
    (
        StatusCode::OK,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    count(&shared, "leader");
    let outage = shared.lock().outage;
    let body = if outage { "\"\"" } else { "\"127.0.0.1:4647\"" };
    (StatusCode::OK, [("Content-Type", "application/json")], body).into_response()
}

/// A topic filter: `Service:*`, `Service:<key>`.
struct Topic {
    topic: String,
    key: String,
}

impl Topic {
    fn matches(&self, event: &EventRec) -> bool {
        (self.topic == "*" || self.topic == "Service")
            && (self.key == "*"
                || self.key == event.reg.id
                || self.key == event.reg.job_id
                || self.key == event.reg.service_name)
    }
}

async fn event_stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    count(&shared, "stream");
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let query = Query {
        namespace: pairs
            .iter()
            .find(|(k, _)| k == "namespace")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "default".into()),
        index: 0,
        wait: Duration::ZERO,
        pairs,
    };
    let mut topics = Vec::new();
    for value in query.all("topic") {
        let parts: Vec<&str> = value.split(':').collect();
        match parts.as_slice() {
            [topic] => topics.push(Topic {
                topic: topic.to_string(),
                key: "*".into(),
            }),
            [topic, key] => topics.push(Topic {
                topic: topic.to_string(),
                key: key.to_string(),
            }),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid topic query: {value}"),
                );
            }
        }
    }
    if topics.is_empty() {
        topics.push(Topic {
            topic: "*".into(),
            key: "*".into(),
        });
    }
    let index = match query.all("index").first() {
        None => 0,
        Some(i) => match i.parse::<u64>() {
            Ok(i) => i,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Unable to parse index: {e}"),
                );
            }
        },
    };
    let token = token(&headers);
    let st = shared.lock();
    if st.outage {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader");
    }
    let namespaces: BTreeSet<String> = if query.namespace == "*" {
        st.namespaces()
    } else {
        [query.namespace.clone()].into()
    };
    let needs_management = topics.iter().any(|t| t.topic == "*");
    let allowed = {
        let namespaces = namespaces.clone();
        let token = token.clone();
        move |st: &Cluster| {
            if needs_management {
                st.is_management(token.as_deref())
            } else {
                namespaces.iter().all(|n| st.can_read(token.as_deref(), n))
            }
        }
    };
    if !allowed(&st) {
        let status = if shared.options.legacy_stream_denial && st.known_token(token.as_deref()) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::FORBIDDEN
        };
        return text(status, "Permission denied");
    }
    // Inclusive / closest: the first buffered batch at or after `index`; none ⇒ the newest
    // buffered one (re-delivered); `index=0` ⇒ the oldest.
    let start = if st.buffer.is_empty() {
        0
    } else {
        st.buffer
            .iter()
            .position(|b| b.index >= index)
            .unwrap_or(st.buffer.len() - 1)
    };
    let replay: Vec<Arc<Batch>> = st.buffer.iter().skip(start).cloned().collect();
    let mut live = shared.live.subscribe();
    drop(st);

    let filter = move |batch: &Batch| -> Option<String> {
        let mut events = Vec::new();
        for event in &batch.events {
            if !namespaces.contains(&event.reg.namespace) {
                continue;
            }
            // An event matching two topic keys appears twice (§1.9).
            for _ in topics.iter().filter(|t| t.matches(event)) {
                events.push(json!({
                    "Topic": "Service", "Type": event.kind, "Key": event.reg.id,
                    "Namespace": event.reg.namespace,
                    "FilterKeys": [event.reg.job_id, event.reg.service_name],
                    "Index": batch.index,
                    "Payload": {"Service": event.reg.json()},
                }));
            }
        }
        (!events.is_empty())
            .then(|| format!("{}\n", json!({"Index": batch.index, "Events": events})))
    };
    let heartbeat = shared.options.heartbeat;
    let recheck = shared.clone();
    let (tx, rx) = mpsc::channel::<Result<String, Infallible>>(64);
    tokio::spawn(async move {
        if tx.send(Ok("{}\n".into())).await.is_err() {
            return;
        }
        for batch in &replay {
            if let Some(line) = filter(batch)
                && tx.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        loop {
            let line = tokio::select! {
                _ = ticker.tick() => "{}\n".to_string(),
                msg = live.recv() => match msg {
                    Ok(StreamMsg::Batch(batch)) => match filter(&batch) {
                        Some(line) => line,
                        None => continue,
                    },
                    Ok(StreamMsg::PolicyChanged) => {
                        if allowed(&recheck.lock()) {
                            continue;
                        }
                        let _ = tx.send(Ok(RESUBSCRIBE.to_string())).await;
                        return;
                    }
                    Ok(StreamMsg::Cut(None)) | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(StreamMsg::Cut(Some(text))) => {
                        let _ = tx.send(Ok(text)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok("event dropped from buffer".into())).await;
                        return;
                    }
                },
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response build failed"))
}
