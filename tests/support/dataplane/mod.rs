//! A test double of the HAProxy Data Plane API v3 (v3.2 behaviour), built from
//! `shared/reference/CONTRACTS.md` §2 and the spec's definitions. It is strict where the real API
//! is strict (versions, transactions, 404/409/422 answers, what reloads and what goes through the
//! runtime) and stricter where the real API silently accepts a mistake (unknown or readOnly body
//! fields). See `tests/dataplane_double.rs` for every rule exercised over HTTP.
//!
//! ```text
//! let dp = DataplaneDouble::start(
//!     BaseConfig::new()
//!         .backend(json!({"name": "custom", "servers": {"static1": {"name": "static1", "address": "10.0.0.9", "port": 80}}}))
//!         .frontend(FrontendSpec::new("http-in").rule(json!({"name": "%[req.hdr(host),lower,map(/etc/haproxy/maps/hosts.map)]"})))
//!         .map_file("hosts.map", ""),
//!     Options::fast(),
//! ).await;
//! // driver under test talks to dp.url() with dp.user()/dp.password() …
//! dp.wait_reloads_idle().await;
//! assert_eq!(dp.reload_count(), 1);
//! ```

mod cli;
mod handlers;
pub mod model;
pub mod schema;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use model::{BackendModel, ConfigModel, FrontendModel, Runtime};
use schema::{Acl, ApiError, Backend, BackendSwitchingRule, DefaultServer, OperationalState};

/// The configuration HAProxy (and DPAPI) start from, and return to on [`DataplaneDouble::reset_to_base`].
#[derive(Debug, Clone)]
pub struct BaseConfig {
    model: ConfigModel,
    storage: BTreeMap<String, String>,
}

impl Default for BaseConfig {
    fn default() -> Self {
        BaseConfig::new()
    }
}

impl BaseConfig {
    /// An empty configuration: no backends, no frontends, no maps. Its file carries no
    /// `# _version` line, so it reads as version 1.
    pub fn new() -> BaseConfig {
        BaseConfig {
            model: ConfigModel {
                version: 1,
                defaults_default_server: None,
                backends: Vec::new(),
                frontends: Vec::new(),
            },
            storage: BTreeMap::new(),
        }
    }

    /// `default-server …` in the defaults section (a `default_server` JSON object).
    pub fn defaults_default_server(mut self, v: Value) -> BaseConfig {
        let d: DefaultServer = parse_fixture(v);
        self.model.defaults_default_server = Some(d);
        self
    }

    /// A hand-written backend, as a `backend` JSON object (as with `full_section=true`: `servers`
    /// is a map keyed by name, `http_check_list` an array).
    pub fn backend(mut self, v: Value) -> BaseConfig {
        let b: Backend = parse_fixture(v);
        self.model.backends.push(BackendModel::new(b));
        self
    }

    pub fn frontend(mut self, f: FrontendSpec) -> BaseConfig {
        self.model.frontends.push(f.0);
        self
    }

    /// A map file in the maps directory (`/etc/haproxy/maps/<name>`), `key value` per line. HAProxy
    /// loads it when the configuration references that path.
    pub fn map_file(mut self, name: &str, content: &str) -> BaseConfig {
        self.storage.insert(name.to_string(), content.to_string());
        self
    }

    /// The `# _version` in the file (1 when absent).
    pub fn version(mut self, v: i64) -> BaseConfig {
        self.model.version = v;
        self
    }
}

/// A hand-written frontend for the base configuration.
#[derive(Debug, Clone)]
pub struct FrontendSpec(FrontendModel);

impl FrontendSpec {
    pub fn new(name: &str) -> FrontendSpec {
        FrontendSpec(FrontendModel {
            name: name.to_string(),
            mode: Some(schema::Mode::Http),
            default_backend: None,
            acls: Vec::new(),
            rules: Vec::new(),
            requests: Vec::new(),
        })
    }
    pub fn default_backend(mut self, b: &str) -> FrontendSpec {
        self.0.default_backend = Some(b.to_string());
        self
    }
    /// An `acl` JSON object, e.g. `{"acl_name":"is_api","criterion":"hdr(host)","value":"-i api.example"}`.
    pub fn acl(mut self, v: Value) -> FrontendSpec {
        self.0.acls.push(parse_fixture::<Acl>(v));
        self
    }
    /// A `backend_switching_rule` JSON object, e.g. `{"name":"api","cond":"if","cond_test":"is_api METH_GET"}`.
    pub fn rule(mut self, v: Value) -> FrontendSpec {
        self.0.rules.push(parse_fixture::<BackendSwitchingRule>(v));
        self
    }
    /// An `http_request_rule` JSON object, e.g. `{"type":"set-var","var_scope":"txn",…}`.
    pub fn request_rule(mut self, v: Value) -> FrontendSpec {
        self.0
            .requests
            .push(parse_fixture::<schema::HttpRequestRule>(v));
        self
    }
    /// The connector's route rules for maps under `maps_dir`, as a user writes them: its
    /// `http-request` rules and its `use_backend` rules (after those already added).
    pub fn connector_rules(mut self, maps_dir: &str) -> FrontendSpec {
        for r in haproxy_nomad_connector::path_rules::request_rules(maps_dir) {
            let body = haproxy_nomad_connector::haproxy::dataplane::objects::request_rule_body(&r);
            self = self.request_rule(serde_json::to_value(body).expect("json"));
        }
        for (name, cond) in haproxy_nomad_connector::model::route_rules(maps_dir) {
            self = self.rule(serde_json::json!({"name": name, "cond": "if", "cond_test": cond}));
        }
        self
    }
}

fn parse_fixture<T: serde::de::DeserializeOwned + schema::Validate + 'static>(v: Value) -> T {
    let bytes = serde_json::to_vec(&v).expect("json");
    match schema::parse_body::<T>(Some("application/json"), &bytes) {
        Ok(t) => t,
        Err(e) => panic!("invalid base-config fixture {v}: {}", e.message),
    }
}

/// Tunables of the double.
#[derive(Debug, Clone)]
pub struct Options {
    /// DPAPI's `--reload-delay`: the coalescing tick (5 s by default, like the real one).
    pub reload_delay: Duration,
    pub user: String,
    pub password: String,
    /// `--max-open-transactions` (20).
    pub max_open_transactions: usize,
    /// What `/v3/health` answers (`unknown` unless a status command is configured).
    pub health: String,
    /// `api.version` of `/v3/info`; `None`: no `/v3/info` at all (a 2.x API, which serves
    /// `/v2`), answered 404.
    pub api_version: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reload_delay: Duration::from_secs(5),
            user: "admin".to_string(),
            password: "adminpwd".to_string(),
            max_open_transactions: 20,
            health: "unknown".to_string(),
            api_version: Some("v3.2.1 (test double)".to_string()),
        }
    }
}

impl Options {
    /// Defaults with a 50 ms reload delay, for tests.
    pub fn fast() -> Options {
        Options {
            reload_delay: Duration::from_millis(50),
            ..Options::default()
        }
    }
}

/// One executed reload, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadEvent {
    pub id: String,
    /// `"<METHOD> <route template>"` of every request that asked for this reload.
    pub reasons: Vec<String>,
    pub succeeded: bool,
}

/// A server as the running HAProxy sees it, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeServerView {
    pub name: String,
    pub address: String,
    pub port: Option<i64>,
    pub admin_state: String,
    pub operational_state: String,
    pub check_enabled: bool,
    pub weight: i64,
    pub sessions: u32,
    pub from_config: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnStatus {
    InProgress,
    Outdated,
    Failed,
}

impl TxnStatus {
    fn as_str(self) -> &'static str {
        match self {
            TxnStatus::InProgress => "in_progress",
            TxnStatus::Outdated => "outdated",
            TxnStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Txn {
    id: String,
    version: i64,
    status: TxnStatus,
    staged: ConfigModel,
}

impl Txn {
    fn to_json(&self) -> Value {
        json!({"_version": self.version, "id": self.id, "status": self.status.as_str()})
    }
}

#[derive(Debug, Clone)]
struct ReloadRecord {
    id: String,
    seq: u64,
    succeeded: bool,
    timestamp: u64,
    response: String,
}

#[derive(Debug, Clone)]
struct PendingReload {
    id: String,
    reasons: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    reloads: Vec<ReloadEvent>,
    commits: u64,
    runtime_commands: Vec<String>,
    requests: BTreeMap<String, u64>,
    validation_failures: Vec<String>,
}

/// Everything behind the lock.
pub(crate) struct State {
    opts: Options,
    base: BaseConfig,
    config: ConfigModel,
    last_good: ConfigModel,
    storage: BTreeMap<String, String>,
    runtime: Runtime,
    txns: BTreeMap<String, Txn>,
    txn_seq: u64,
    pending: Option<PendingReload>,
    records: Vec<ReloadRecord>,
    reload_seq: u64,
    last_success_seq: Option<u64>,
    fail_next: bool,
    /// Time a transaction commit takes before it is processed (a slow `haproxy -c` and reload).
    commit_delay: std::time::Duration,
    counters: Counters,
}

type Shared = Arc<Mutex<State>>;

tokio::task_local! {
    /// `"<METHOD> <route template>"` of the request being served (the reload reason).
    static ROUTE: String;
}

fn current_route() -> String {
    ROUTE
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "control".to_string())
}

impl State {
    fn new(base: BaseConfig, opts: Options) -> State {
        let runtime = Runtime::from_config(&base.model, &base.storage);
        State {
            opts,
            config: base.model.clone(),
            last_good: base.model.clone(),
            storage: base.storage.clone(),
            base,
            runtime,
            txns: BTreeMap::new(),
            txn_seq: 0,
            pending: None,
            records: Vec::new(),
            reload_seq: 0,
            last_success_seq: None,
            fail_next: false,
            commit_delay: std::time::Duration::ZERO,
            counters: Counters::default(),
        }
    }

    fn open_transactions(&self) -> usize {
        self.txns
            .values()
            .filter(|t| t.status == TxnStatus::InProgress)
            .count()
    }

    fn runtime_command(&mut self, cmd: String) {
        self.counters.runtime_commands.push(cmd);
    }

    /// The configuration a read sees: the live file, or a transaction's staged copy.
    fn view(&self, txn: Option<&str>) -> Result<&ConfigModel, ApiError> {
        match txn {
            None => Ok(&self.config),
            Some(id) => self
                .txns
                .get(id)
                .map(|t| &t.staged)
                .ok_or_else(|| txn_missing(id)),
        }
    }

    /// Applies a configuration change: staged into a transaction, or written as an implicit
    /// transaction (version check, `haproxy -c`, version +1).
    fn mutate<T>(
        &mut self,
        wp: &handlers::WriteParams,
        f: impl FnOnce(&mut ConfigModel) -> Result<T, ApiError>,
    ) -> Result<(T, Applied), ApiError> {
        match &wp.staging {
            handlers::Staging::Txn(id) => {
                let txn = self.txns.get_mut(id).ok_or_else(|| txn_missing(id))?;
                if txn.status != TxnStatus::InProgress {
                    return Err(ApiError::new(
                        400,
                        format!("transaction {id} is {}", txn.status.as_str()),
                    ));
                }
                let t = f(&mut txn.staged)?;
                Ok((t, Applied::Staged))
            }
            handlers::Staging::Version(v) => {
                let cur = self.config.version;
                if *v != cur {
                    return Err(version_mismatch(cur, *v));
                }
                let mut candidate = self.config.clone();
                let t = f(&mut candidate)?;
                candidate
                    .haproxy_check(&self.storage)
                    .map_err(|out| ApiError::new(400, format!("validation error: {out}")))?;
                candidate.version = cur + 1;
                self.config = candidate;
                Ok((t, Applied::Written))
            }
        }
    }

    /// The configuration HAProxy runs (the last one loaded), as JSON text.
    fn runtime_config_text(&self) -> String {
        self.last_good.to_json().to_string()
    }

    /// Asks the reload agent for a reload; returns the pending reload's ID.
    fn schedule_reload(&mut self) -> String {
        let reason = current_route();
        if let Some(p) = &mut self.pending {
            p.reasons.push(reason);
            return p.id.clone();
        }
        let id = format!("{}-{}", today(), self.reload_seq);
        self.reload_seq += 1;
        self.pending = Some(PendingReload {
            id: id.clone(),
            reasons: vec![reason],
        });
        id
    }

    /// `force_reload=true`: reload synchronously, outside the coalescing queue.
    fn force_reload(&mut self) -> Result<(), ApiError> {
        let id = format!("{}-{}", today(), self.reload_seq);
        self.reload_seq += 1;
        let rec = self.execute_reload(id, vec![current_route()]);
        if rec.succeeded {
            Ok(())
        } else {
            Err(ApiError::new(
                400,
                format!("Reload failed: {}", rec.response),
            ))
        }
    }

    /// Runs the pending reload, if any.
    fn run_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.execute_reload(p.id, p.reasons);
        }
    }

    fn execute_reload(&mut self, id: String, reasons: Vec<String>) -> ReloadRecord {
        let seq = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // HAProxy reloads from the files: a configuration or map file it refuses (a storage
        // map rewritten with a pattern PCRE2 rejects) fails the reload like an injected failure.
        let check = self.config.haproxy_check(&self.storage);
        let injected = std::mem::take(&mut self.fail_next);
        let succeeded = !injected && check.is_ok();
        let response = if succeeded {
            self.last_good = self.config.clone();
            self.runtime = Runtime::from_config(&self.config, &self.storage);
            self.last_success_seq = Some(seq);
            String::new()
        } else {
            // DPAPI copies the last known good file back (and with it the version); HAProxy
            // keeps running the previous configuration.
            self.config = self.last_good.clone();
            match check {
                Err(alerts) if !injected => alerts,
                _ => "[ALERT]    (1) : config : reload failed (injected by the test double's fail_next_reload)"
                    .to_string(),
            }
        };
        let rec = ReloadRecord {
            id: id.clone(),
            seq,
            succeeded,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            response,
        };
        self.records.push(rec.clone());
        self.counters.reloads.push(ReloadEvent {
            id,
            reasons,
            succeeded,
        });
        rec
    }
}

/// Whether a write was staged in a transaction or written to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Staged,
    Written,
}

pub(crate) fn txn_missing(id: &str) -> ApiError {
    ApiError::new(
        400,
        format!("transaction does not exist: transaction {id} does not exist"),
    )
}

pub(crate) fn version_mismatch(cur: i64, given: i64) -> ApiError {
    ApiError::new(
        409,
        format!(
            "version mismatch: version in configuration file is {cur}, given version is {given}"
        ),
    )
}

/// Today's date as `YYYY-MM-DD` (UTC), for reload IDs.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    // Civil-from-days (proleptic Gregorian).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            axum::Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == 401 {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"API\""),
            );
        }
        resp
    }
}

/// The running double. Dropping it stops the server and the reload agent.
pub struct DataplaneDouble {
    addr: SocketAddr,
    state: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DataplaneDouble {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DataplaneDouble {
    /// Serves the API on `127.0.0.1:0` and starts the reload agent.
    pub async fn start(base: BaseConfig, opts: Options) -> DataplaneDouble {
        let delay = opts.reload_delay;
        let state: Shared = Arc::new(Mutex::new(State::new(base, opts)));
        let app = router(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind dataplane double");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("serve dataplane double");
        });
        let agent_state = state.clone();
        let agent = tokio::spawn(async move {
            // Like DPAPI's ticker: the first tick comes one delay after start, not at once.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + delay, delay);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                lock(&agent_state).run_pending();
            }
        });
        DataplaneDouble {
            addr,
            state,
            tasks: vec![server, agent],
        }
    }

    /// Base URL without the `/v3` base path, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `url()` + `/v3` + `path`.
    pub fn v3(&self, path: &str) -> String {
        format!("http://{}/v3{path}", self.addr)
    }

    pub fn user(&self) -> String {
        lock(&self.state).opts.user.clone()
    }

    pub fn password(&self) -> String {
        lock(&self.state).opts.password.clone()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    // ---- control surface ----

    /// The current configuration version.
    pub fn version(&self) -> i64 {
        self.st().config.version
    }

    /// Someone else wrote the configuration (version +1, nothing else changes).
    pub fn bump_version_foreign(&self) {
        self.st().config.version += 1;
    }

    /// HAProxy and DPAPI restarted from the base configuration: file, version, runtime, maps,
    /// transactions and the reload queue all start over (the reload ID counter restarts at 0).
    /// Test counters are kept.
    pub fn reset_to_base(&self) {
        let mut s = self.st();
        let base = s.base.clone();
        s.config = base.model.clone();
        s.last_good = base.model.clone();
        s.storage = base.storage.clone();
        s.runtime = Runtime::from_config(&base.model, &base.storage);
        s.txns.clear();
        s.pending = None;
        s.records.clear();
        s.reload_seq = 0;
        s.last_success_seq = None;
        s.fail_next = false;
    }

    /// The next reload fails: its ID reports `failed` and the file (with its version) goes back to
    /// the last good one.
    pub fn fail_next_reload(&self) {
        self.st().fail_next = true;
    }

    /// Every transaction commit from now on takes `delay` before it is processed, as a slow
    /// configuration check and reload would.
    pub fn set_commit_delay(&self, delay: std::time::Duration) {
        self.st().commit_delay = delay;
    }

    /// Runs the pending reload now instead of waiting for the agent's tick.
    pub fn flush_reloads(&self) {
        self.st().run_pending();
    }

    /// Waits until no reload is pending (panics after 10 s).
    pub async fn wait_reloads_idle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.st().pending.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reload still pending after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether a reload is waiting for the agent's tick.
    pub fn reload_pending(&self) -> bool {
        self.st().pending.is_some()
    }

    /// The configuration file model: `{"version", "defaults", "backends" (full sections),
    /// "frontends" (with acl_list/backend_switching_rule_list)}`.
    pub fn config_snapshot(&self) -> Value {
        self.st().config.to_json()
    }

    /// The running HAProxy: `{"backends": {b: [server…]}, "maps": {name: [[key, value]…]}}`;
    /// servers carry `check_enabled`, `weight`, `sessions` and `from_config` besides the API fields.
    pub fn runtime_snapshot(&self) -> Value {
        self.st().runtime.to_json()
    }

    pub fn runtime_server(&self, backend: &str, server: &str) -> Option<RuntimeServerView> {
        let s = self.st();
        let srv = s.runtime.backends.get(backend)?.server(server)?;
        Some(RuntimeServerView {
            name: srv.name.clone(),
            address: srv.address.clone(),
            port: srv.port,
            admin_state: srv.admin.as_str().to_string(),
            operational_state: srv.op.as_str().to_string(),
            check_enabled: srv.check_enabled,
            weight: srv.weight,
            sessions: srv.sessions,
            from_config: srv.from_config,
        })
    }

    /// Simulates connections attached to a running server (blocks `del server`).
    pub fn set_sessions(&self, backend: &str, server: &str, sessions: u32) {
        let mut s = self.st();
        let srv = s
            .runtime
            .backends
            .get_mut(backend)
            .and_then(|b| b.server_mut(server))
            .expect("runtime server exists");
        srv.sessions = sessions;
    }

    /// Simulates a health-check verdict (`up`, `down`, `stopping`).
    pub fn set_operational_state(&self, backend: &str, server: &str, state: &str) {
        let op: OperationalState =
            serde_json::from_value(json!(state)).expect("up, down or stopping");
        let mut s = self.st();
        let srv = s
            .runtime
            .backends
            .get_mut(backend)
            .and_then(|b| b.server_mut(server))
            .expect("runtime server exists");
        srv.op = op;
    }

    /// The content of a map file in storage.
    pub fn map_file(&self, name: &str) -> Option<String> {
        self.st().storage.get(name).cloned()
    }

    // ---- counters ----

    /// Reloads executed (succeeded or failed).
    pub fn reload_count(&self) -> usize {
        self.st().counters.reloads.len()
    }

    pub fn reloads(&self) -> Vec<ReloadEvent> {
        self.st().counters.reloads.clone()
    }

    /// Successful transaction commits.
    pub fn commit_count(&self) -> u64 {
        self.st().counters.commits
    }

    /// Runtime (stats socket) commands sent, e.g. `add server web/s1 10.0.0.1:80`.
    pub fn runtime_commands(&self) -> Vec<String> {
        self.st().counters.runtime_commands.clone()
    }

    /// Requests per `"<METHOD> <route template>"` (e.g.
    /// `"POST /v3/services/haproxy/configuration/backends/{parent_name}/servers"`), counted
    /// before authentication; unknown paths are not counted.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.st().counters.requests.clone()
    }

    pub fn request_count(&self, method_and_route: &str) -> u64 {
        self.st()
            .counters
            .requests
            .get(method_and_route)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.st().counters.requests.values().sum()
    }

    /// Transactions in progress (the ones the 20-limit counts).
    pub fn open_transactions(&self) -> usize {
        self.st().open_transactions()
    }

    /// Every request body the double rejected (`"<route>: <status> <message>"`). A driver test
    /// can assert this is empty to prove every body it sent was spec-valid.
    pub fn validation_failures(&self) -> Vec<String> {
        self.st().counters.validation_failures.clone()
    }

    pub fn reset_counters(&self) {
        self.st().counters = Counters::default();
    }
}

pub(crate) fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(state: Shared) -> Router {
    let api = handlers::routes(&state).fallback(|req: Request| async move {
        ApiError::new(404, format!("path {} was not found", req.uri().path()))
    });
    api.layer(middleware::from_fn_with_state(
        state.clone(),
        version_header,
    ))
    .with_state(state)
}

/// Counts the request by route template, then checks HTTP Basic credentials. Runs only for
/// matched routes: unknown paths (404) and methods (405) answer without credentials.
pub(crate) async fn auth_and_count(
    AxState(state): AxState<Shared>,
    matched: MatchedPath,
    req: Request,
    next: Next,
) -> Response {
    let route = format!("{} {}", req.method(), matched.as_str());
    let expected = {
        let mut s = lock(&state);
        *s.counters.requests.entry(route.clone()).or_default() += 1;
        format!(
            "Basic {}",
            base64(format!("{}:{}", s.opts.user, s.opts.password).as_bytes())
        )
    };
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    if !ok {
        return ApiError::new(401, "unauthenticated for invalid credentials").into_response();
    }
    let delay = lock(&state).commit_delay;
    if route == "PUT /v3/services/haproxy/transactions/{id}" && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    ROUTE.scope(route, next.run(req)).await
}

/// Adds `Configuration-Version` to every response (the transaction's version with
/// `?transaction_id=`, `0` for an unknown one) and gives 405s a JSON body.
async fn version_header(AxState(state): AxState<Shared>, req: Request, next: Next) -> Response {
    let txn = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "transaction_id")
            .map(|(_, v)| v.into_owned())
    });
    let method = req.method().clone();
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = resp
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut r = ApiError::new(
            405,
            format!("method {method} is not allowed, but [{allow}] are"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        resp = r;
    }
    let version = {
        let s = lock(&state);
        match txn.filter(|t| !t.is_empty()) {
            Some(id) => s.txns.get(&id).map(|t| t.version).unwrap_or(0),
            None => s.config.version,
        }
    };
    resp.headers_mut().insert(
        "Configuration-Version",
        HeaderValue::from_str(&version.to_string()).expect("digits"),
    );
    resp
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON response with a status (and optionally a `Reload-ID`).
pub(crate) fn reply(status: u16, body: Option<Value>, reload_id: Option<String>) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    let mut resp = match body {
        Some(v) => (status, axum::Json(v)).into_response(),
        None => (status, Body::empty()).into_response(),
    };
    if let Some(id) = reload_id {
        resp.headers_mut()
            .insert("Reload-ID", HeaderValue::from_str(&id).expect("id"));
    }
    resp
}
