//! The routes of the double and their handlers.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::cli;
use super::model::{BackendModel, ConfigModel, MAPS_DIR, RtMapEntry, RtServer, render_map_file};
use super::schema::{
    self, Acl, AdminState, ApiError, Backend, BackendSwitchingRule, HttpCheck, HttpRequestRule,
    MapEntry, MapEntryValue, OperationalState, RuntimeAddServer, RuntimeServerPut, Server, Toggle,
    Validate, to_json,
};
use super::{Applied, Shared, State, Txn, TxnStatus, current_route, lock, reply, version_mismatch};

type Q = Query<HashMap<String, String>>;
type Resp = Result<Response, ApiError>;

const CONF: &str = "/v3/services/haproxy/configuration";
const RT: &str = "/v3/services/haproxy/runtime";

pub(crate) fn routes(st: &Shared) -> Router<Shared> {
    // Auth sits on each method router, so routing errors (404, 405) answer without credentials.
    let a = |mr: MethodRouter<Shared>| {
        mr.route_layer(middleware::from_fn_with_state(
            st.clone(),
            super::auth_and_count,
        ))
    };
    Router::new()
        .route("/v3/info", a(get(info)))
        .route("/v3/health", a(get(health)))
        .route(&format!("{CONF}/version"), a(get(version_get)))
        .route(
            &format!("{CONF}/backends"),
            a(get(backends_list).post(backend_post)),
        )
        .route(
            &format!("{CONF}/backends/{{name}}"),
            a(get(backend_get).put(backend_put).delete(backend_delete)),
        )
        .route(
            &format!("{CONF}/backends/{{parent_name}}/servers"),
            a(get(servers_list).post(server_post)),
        )
        .route(
            &format!("{CONF}/backends/{{parent_name}}/servers/{{name}}"),
            a(get(server_get).put(server_put).delete(server_delete)),
        )
        .route(
            &format!("{CONF}/backends/{{parent_name}}/http_checks"),
            a(get(il_list::<HttpChecks>).put(il_replace::<HttpChecks>)),
        )
        .route(
            &format!("{CONF}/backends/{{parent_name}}/http_checks/{{index}}"),
            a(get(il_get::<HttpChecks>)
                .post(il_insert::<HttpChecks>)
                .put(il_put::<HttpChecks>)
                .delete(il_delete::<HttpChecks>)),
        )
        .route(&format!("{CONF}/frontends"), a(get(frontends_list)))
        .route(&format!("{CONF}/frontends/{{name}}"), a(get(frontend_get)))
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/acls"),
            a(get(il_list::<Acls>).put(il_replace::<Acls>)),
        )
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/acls/{{index}}"),
            a(get(il_get::<Acls>)
                .post(il_insert::<Acls>)
                .put(il_put::<Acls>)
                .delete(il_delete::<Acls>)),
        )
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/backend_switching_rules"),
            a(get(il_list::<Rules>).put(il_replace::<Rules>)),
        )
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/backend_switching_rules/{{index}}"),
            a(get(il_get::<Rules>)
                .post(il_insert::<Rules>)
                .put(il_put::<Rules>)
                .delete(il_delete::<Rules>)),
        )
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/http_request_rules"),
            a(get(il_list::<Requests>).put(il_replace::<Requests>)),
        )
        .route(
            &format!("{CONF}/frontends/{{parent_name}}/http_request_rules/{{index}}"),
            a(get(il_get::<Requests>)
                .post(il_insert::<Requests>)
                .put(il_put::<Requests>)
                .delete(il_delete::<Requests>)),
        )
        .route(
            "/v3/services/haproxy/transactions",
            a(get(txn_list).post(txn_start)),
        )
        .route(
            "/v3/services/haproxy/transactions/{id}",
            a(get(txn_get).put(txn_commit).delete(txn_delete)),
        )
        .route("/v3/services/haproxy/reloads", a(get(reloads_list)))
        .route("/v3/services/haproxy/reloads/{id}", a(get(reload_get)))
        .route(
            &format!("{RT}/backends/{{parent_name}}/servers"),
            a(get(rt_servers_list).post(rt_server_post)),
        )
        .route(
            &format!("{RT}/backends/{{parent_name}}/servers/{{name}}"),
            a(get(rt_server_get)
                .put(rt_server_put)
                .delete(rt_server_delete)),
        )
        .route("/v3/services/haproxy/stats/native", a(get(stats_native)))
        .route(&format!("{RT}/maps"), a(get(rt_maps_list)))
        .route(&format!("{RT}/maps/{{name}}"), a(get(rt_map_get)))
        .route(
            &format!("{RT}/maps/{{parent_name}}/entries"),
            a(get(entries_list).post(entry_post)),
        )
        .route(
            &format!("{RT}/maps/{{parent_name}}/entries/{{id}}"),
            a(get(entry_get).put(entry_put).delete(entry_delete)),
        )
        .route(
            "/v3/services/haproxy/storage/maps",
            a(get(storage_list).post(storage_create)),
        )
        .route(
            "/v3/services/haproxy/storage/maps/{name}",
            a(get(storage_get).put(storage_put)),
        )
}

// ---------------------------------------------------------------- parameters

pub(crate) enum Staging {
    Txn(String),
    Version(i64),
}

pub(crate) struct WriteParams {
    pub staging: Staging,
    pub force_reload: bool,
    pub full_section: bool,
}

fn q_bool(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(v) => Err(ApiError::schema(
            schema::INVALID_TYPE,
            format!("{name} in query must be of type bool: {v:?}"),
        )),
    }
}

fn q_int(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::schema(
                schema::INVALID_TYPE,
                format!("{name} in query must be of type int64: {v:?}"),
            )
        }),
    }
}

fn q_txn(q: &HashMap<String, String>) -> Option<&str> {
    q.get("transaction_id")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// The rules every configuration write shares (§2.1): exactly one of `version` and
/// `transaction_id`, and no `force_reload` inside a transaction.
fn write_params(q: &HashMap<String, String>) -> Result<WriteParams, ApiError> {
    let txn = q_txn(q);
    let version = q_int(q, "version")?;
    let force_reload = q_bool(q, "force_reload")?;
    let full_section = q_bool(q, "full_section")?;
    if txn.is_some() && force_reload {
        return Err(ApiError::new(
            400,
            "Both force_reload and transaction specified, specify only one",
        ));
    }
    let staging = match (txn, version) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                400,
                "both version and transaction specified, specify only one",
            ));
        }
        (None, None) => {
            return Err(ApiError::new(
                400,
                "version or transaction not specified: version or transaction not specified, specify only one",
            ));
        }
        (Some(t), None) => Staging::Txn(t.to_string()),
        (None, Some(v)) => Staging::Version(v),
    };
    Ok(WriteParams {
        staging,
        force_reload,
        full_section,
    })
}

fn check_path(field: &str, v: &str) -> Result<(), ApiError> {
    if schema::RE_PATH_PARAM.is_match(v) {
        Ok(())
    } else {
        Err(ApiError::schema(
            schema::PATTERN,
            format!("{field} in path should match '{}'", schema::PAT_PATH_PARAM),
        ))
    }
}

fn parse_index(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::schema(
            schema::INVALID_TYPE,
            format!("index in path must be of type int64: {raw:?}"),
        )
    })
}

/// Parses a JSON body, recording rejections for the test's `validation_failures()`.
fn body<T>(st: &Shared, headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError>
where
    T: DeserializeOwned + Validate + 'static,
{
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    schema::parse_body::<T>(ct, bytes).inspect_err(|e| {
        lock(st).counters.validation_failures.push(format!(
            "{}: {} {}",
            current_route(),
            e.status,
            e.message
        ));
    })
}

fn ok<T: Serialize>(v: &T) -> Resp {
    Ok(reply(200, Some(to_json(v)), None))
}

/// Ends a write that needs a reload: staged → 202 without `Reload-ID`; `force_reload` → a
/// synchronous reload and `forced`; otherwise the pending reload's ID with `normal`.
fn finish(
    s: &mut State,
    wp: &WriteParams,
    applied: Applied,
    normal: u16,
    forced: u16,
    body: Option<Value>,
) -> Resp {
    match applied {
        Applied::Staged => Ok(reply(202, body, None)),
        Applied::Written if wp.force_reload => {
            s.force_reload()?;
            Ok(reply(forced, if forced == 204 { None } else { body }, None))
        }
        Applied::Written => {
            let id = s.schedule_reload();
            Ok(reply(normal, body, Some(id)))
        }
    }
}

fn missing_parent(kind: &str, name: &str) -> ApiError {
    ApiError::new(400, format!("missing parent: {kind} {name} does not exist"))
}

fn missing_backend(name: &str) -> ApiError {
    ApiError::new(
        404,
        format!("missing object: Backend {name} does not exist"),
    )
}

fn missing_server(parent: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        format!("missing object: server {name} does not exist in {parent} backend"),
    )
}

// ---------------------------------------------------------------- informational

async fn info(AxState(st): AxState<Shared>) -> Resp {
    let Some(version) = lock(&st).opts.api_version.clone() else {
        return Err(ApiError::new(404, "path /v3/info was not found"));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(reply(
        200,
        Some(json!({
            "api": {"version": version, "build_date": "2025-01-01T00:00:00.000Z"},
            "system": {
                "hostname": "dataplane-double",
                "os_string": "Linux",
                "cpu_info": {"model": "double", "num_cpus": 2},
                "mem_info": {"total_memory": 0, "free_memory": 0, "dataplaneapi_memory": 0},
                "time": now,
                "uptime": 1
            }
        })),
        None,
    ))
}

async fn health(AxState(st): AxState<Shared>) -> Resp {
    let h = lock(&st).opts.health.clone();
    Ok(reply(200, Some(json!({ "haproxy": h })), None))
}

async fn version_get(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let s = lock(&st);
    let v = match q_txn(&q) {
        Some(id) => s.txns.get(id).map(|t| t.version).ok_or_else(|| {
            ApiError::new(
                404,
                format!("missing object: transaction {id} does not exist"),
            )
        })?,
        None => s.config.version,
    };
    Ok(reply(200, Some(json!(v)), None))
}

// ---------------------------------------------------------------- backends

async fn backends_list(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let full = q_bool(&q, "full_section")?;
    let s = lock(&st);
    let cfg = s.view(q_txn(&q))?;
    let list: Vec<Value> = cfg.backends.iter().map(|b| b.to_json(full)).collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

async fn backend_get(AxState(st): AxState<Shared>, Path(name): Path<String>, Query(q): Q) -> Resp {
    let full = q_bool(&q, "full_section")?;
    let s = lock(&st);
    let b = s
        .view(q_txn(&q))?
        .backend(&name)
        .ok_or_else(|| missing_backend(&name))?;
    Ok(reply(200, Some(b.to_json(full)), None))
}

fn backend_model(b: &Backend, full: bool, keep: Option<&BackendModel>) -> BackendModel {
    let mut base = b.clone();
    if !full {
        base.servers = None;
        base.http_check_list = None;
    }
    let mut m = BackendModel::new(base);
    if let (false, Some(old)) = (full, keep) {
        m.servers = old.servers.clone();
        m.http_checks = old.http_checks.clone();
    }
    m
}

async fn backend_post(
    AxState(st): AxState<Shared>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    let wp = write_params(&q)?;
    let b: Backend = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let model = backend_model(&b, wp.full_section, None);
    let (_, applied) = s.mutate(&wp, |cfg| {
        if cfg.backend(&b.name).is_some() {
            return Err(ApiError::new(
                409,
                format!("object already exists: backend {} already exists", b.name),
            ));
        }
        cfg.backends.push(model.clone());
        Ok(())
    })?;
    finish(
        &mut s,
        &wp,
        applied,
        202,
        201,
        Some(model.to_json(wp.full_section)),
    )
}

async fn backend_put(
    AxState(st): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    let wp = write_params(&q)?;
    let b: Backend = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let full = wp.full_section;
    let (echo, applied) = s.mutate(&wp, |cfg| {
        let idx = cfg
            .backends
            .iter()
            .position(|x| x.name() == name)
            .ok_or_else(|| missing_backend(&name))?;
        if b.name != name && cfg.backend(&b.name).is_some() {
            return Err(ApiError::new(
                409,
                format!("object already exists: backend {} already exists", b.name),
            ));
        }
        let model = backend_model(&b, full, Some(&cfg.backends[idx]));
        let echo = model.to_json(full);
        cfg.backends[idx] = model;
        Ok(echo)
    })?;
    finish(&mut s, &wp, applied, 202, 200, Some(echo))
}

async fn backend_delete(
    AxState(st): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Q,
) -> Resp {
    let wp = write_params(&q)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let idx = cfg
            .backends
            .iter()
            .position(|x| x.name() == name)
            .ok_or_else(|| missing_backend(&name))?;
        cfg.backends.remove(idx);
        Ok(())
    })?;
    finish(&mut s, &wp, applied, 202, 204, None)
}

// ---------------------------------------------------------------- servers (configuration)

async fn servers_list(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    let s = lock(&st);
    let cfg = s.view(q_txn(&q))?;
    // A missing backend answers 200 [] (HandleContainerGetError).
    let list = cfg
        .backend(&parent)
        .map(|b| b.servers.clone())
        .unwrap_or_default();
    ok(&list)
}

async fn server_get(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
    Query(q): Q,
) -> Resp {
    let s = lock(&st);
    let srv = s
        .view(q_txn(&q))?
        .backend(&parent)
        .and_then(|b| b.server(&name))
        .ok_or_else(|| missing_server(&parent, &name))?;
    ok(srv)
}

async fn server_post(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let wp = write_params(&q)?;
    let srv: Server = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let b = cfg
            .backend_mut(&parent)
            .ok_or_else(|| missing_parent("backend", &parent))?;
        if b.server(&srv.name).is_some() {
            return Err(ApiError::new(
                409,
                format!(
                    "object already exists: server {} already exists in {parent} backend",
                    srv.name
                ),
            ));
        }
        b.servers.push(srv.clone());
        Ok(())
    })?;
    let echo = to_json(&srv);
    // The runtime path (§2.5): no transaction, no force_reload, no default_server anywhere, no
    // `id` in the body, and `add server` accepted by the running HAProxy. The file is written
    // either way (version +1 above).
    if applied == Applied::Written
        && !wp.force_reload
        && !s.config.has_default_server(&parent)
        && srv.id.is_none()
    {
        let add = AddServer {
            name: srv.name.clone(),
            address: srv.address.clone(),
            port: srv.port,
            check: srv.check,
            weight: srv.weight,
        };
        if runtime_add_server(&mut s, &parent, &add).is_ok() {
            return Ok(reply(201, Some(echo), None));
        }
    }
    finish(&mut s, &wp, applied, 202, 201, Some(echo))
}

/// Fields a server PUT can change through `set server …` without a reload (§2.5).
const RUNTIME_FIELDS: &[&str] = &[
    "weight",
    "address",
    "port",
    "maintenance",
    "agent-check",
    "agent-addr",
    "agent-send",
    "health_check_port",
];

/// Scalar fields that differ between two servers (arrays and objects are ignored, as DPAPI does).
fn changed_fields(old: &Server, new: &Server) -> Vec<String> {
    let (a, b) = (to_json(old), to_json(new));
    let (a, b) = (a.as_object().expect("obj"), b.as_object().expect("obj"));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            let (x, y) = (a.get(*k), b.get(*k));
            let compound = |v: Option<&Value>| v.is_some_and(|v| v.is_array() || v.is_object());
            x != y && !compound(x) && !compound(y)
        })
        .cloned()
        .collect()
}

async fn server_put(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let wp = write_params(&q)?;
    let srv: Server = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let (old, applied) = s.mutate(&wp, |cfg| {
        let b = cfg
            .backend_mut(&parent)
            .ok_or_else(|| missing_parent("backend", &parent))?;
        let idx = b
            .servers
            .iter()
            .position(|x| x.name == name)
            .ok_or_else(|| missing_server(&parent, &name))?;
        if srv.name != name && b.server(&srv.name).is_some() {
            return Err(ApiError::new(
                409,
                format!(
                    "object already exists: server {} already exists in {parent} backend",
                    srv.name
                ),
            ));
        }
        Ok(std::mem::replace(&mut b.servers[idx], srv.clone()))
    })?;
    let echo = to_json(&srv);
    if applied == Applied::Written && !wp.force_reload {
        let diffs = changed_fields(&old, &srv);
        if diffs.iter().all(|f| RUNTIME_FIELDS.contains(&f.as_str()))
            && runtime_set_server(&mut s, &parent, &srv, &diffs).is_ok()
        {
            return Ok(reply(200, Some(echo), None));
        }
    }
    finish(&mut s, &wp, applied, 202, 200, Some(echo))
}

async fn server_delete(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    let wp = write_params(&q)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let b = cfg
            .backend_mut(&parent)
            .ok_or_else(|| missing_parent("backend", &parent))?;
        let idx = b
            .servers
            .iter()
            .position(|x| x.name == name)
            .ok_or_else(|| missing_server(&parent, &name))?;
        b.servers.remove(idx);
        Ok(())
    })?;
    // DELETE never uses `del server`: always a reload.
    finish(&mut s, &wp, applied, 202, 204, None)
}

struct AddServer {
    name: String,
    address: String,
    port: Option<i64>,
    check: Option<Toggle>,
    weight: Option<i64>,
}

/// `add server b/s addr:port …`: the new server starts in MAINT with its check disabled.
fn runtime_add_server(s: &mut State, parent: &str, add: &AddServer) -> Result<(), ApiError> {
    let rb = s
        .runtime
        .backends
        .get_mut(parent)
        .ok_or_else(|| ApiError::new(404, "No such backend."))?;
    if !rb.dynamic {
        return Err(ApiError::new(
            500,
            "Backend must use a dynamic load balancing to support dynamic servers.",
        ));
    }
    if rb.server(&add.name).is_some() {
        return Err(ApiError::new(
            409,
            "Already exists a server with the same name in backend.",
        ));
    }
    let id = rb.next_id;
    rb.next_id += 1;
    rb.servers.push(RtServer {
        id,
        name: add.name.clone(),
        address: add.address.clone(),
        port: add.port,
        admin: AdminState::Maint,
        op: OperationalState::Down,
        check_enabled: false,
        weight: add.weight.unwrap_or(1),
        sessions: 0,
        from_config: false,
    });
    let mut cmd = format!("add server {parent}/{} {}", add.name, add.address);
    if let Some(p) = add.port {
        cmd.push_str(&format!(":{p}"));
    }
    if add.check == Some(Toggle::Enabled) {
        cmd.push_str(" check");
    }
    if let Some(w) = add.weight {
        cmd.push_str(&format!(" weight {w}"));
    }
    s.runtime_command(cmd);
    Ok(())
}

/// `set server …` for the runtime-capable fields of a server PUT.
fn runtime_set_server(
    s: &mut State,
    parent: &str,
    srv: &Server,
    diffs: &[String],
) -> Result<(), ApiError> {
    let exists = s
        .runtime
        .backends
        .get(parent)
        .and_then(|b| b.server(&srv.name))
        .is_some();
    if !exists {
        return Err(ApiError::new(500, "No such server."));
    }
    let target = format!("{parent}/{}", srv.name);
    let mut cmds = Vec::new();
    let rs = s
        .runtime
        .backends
        .get_mut(parent)
        .and_then(|b| b.server_mut(&srv.name))
        .expect("checked above");
    let mut addr_done = false;
    for f in diffs {
        match f.as_str() {
            "weight" => {
                rs.weight = srv.weight.unwrap_or(1);
                cmds.push(format!("set server {target} weight {}", rs.weight));
            }
            "address" | "port" if !addr_done => {
                addr_done = true;
                rs.address = srv.address.clone();
                rs.port = srv.port;
                let port = srv.port.map(|p| format!(" port {p}")).unwrap_or_default();
                cmds.push(format!("set server {target} addr {}{port}", srv.address));
            }
            "maintenance" => {
                if srv.maintenance == Some(Toggle::Enabled) {
                    rs.admin = AdminState::Maint;
                    rs.op = OperationalState::Down;
                    cmds.push(format!("set server {target} state maint"));
                } else {
                    if rs.admin == AdminState::Maint {
                        rs.op = OperationalState::Up;
                    }
                    rs.admin = AdminState::Ready;
                    cmds.push(format!("set server {target} state ready"));
                }
            }
            "agent-check" => {
                let verb = if srv.agent_check == Some(Toggle::Enabled) {
                    "enable"
                } else {
                    "disable"
                };
                cmds.push(format!("{verb} agent {target}"));
            }
            "agent-addr" => cmds.push(format!(
                "set server {target} agent-addr {}",
                srv.agent_addr.clone().unwrap_or_default()
            )),
            "agent-send" => cmds.push(format!(
                "set server {target} agent-send {}",
                srv.agent_send.clone().unwrap_or_default()
            )),
            "health_check_port" => cmds.push(format!(
                "set server {target} check-port {}",
                srv.health_check_port.unwrap_or(0)
            )),
            _ => {}
        }
    }
    for c in cmds {
        s.runtime_command(c);
    }
    Ok(())
}

// ---------------------------------------------------------------- frontends

async fn frontends_list(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let full = q_bool(&q, "full_section")?;
    let s = lock(&st);
    let list: Vec<Value> = s
        .view(q_txn(&q))?
        .frontends
        .iter()
        .map(|f| f.to_json(full))
        .collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

async fn frontend_get(AxState(st): AxState<Shared>, Path(name): Path<String>, Query(q): Q) -> Resp {
    let full = q_bool(&q, "full_section")?;
    let s = lock(&st);
    let f = s.view(q_txn(&q))?.frontend(&name).ok_or_else(|| {
        ApiError::new(
            404,
            format!("missing object: Frontend {name} does not exist"),
        )
    })?;
    Ok(reply(200, Some(f.to_json(full)), None))
}

// ---------------------------------------------------------------- index-addressed lists

/// A child list addressed by position: http_checks, acls, backend_switching_rules,
/// http_request_rules.
pub(crate) trait IndexList: Send + Sync + 'static {
    type Item: Serialize + DeserializeOwned + Validate + Clone + Send + 'static;
    const PARENT: &'static str;
    const ITEM: &'static str;
    fn list<'a>(cfg: &'a ConfigModel, parent: &str) -> Option<&'a Vec<Self::Item>>;
    fn list_mut<'a>(cfg: &'a mut ConfigModel, parent: &str) -> Option<&'a mut Vec<Self::Item>>;
}

pub(crate) struct HttpChecks;
pub(crate) struct Acls;
pub(crate) struct Rules;

impl IndexList for HttpChecks {
    type Item = HttpCheck;
    const PARENT: &'static str = "backend";
    const ITEM: &'static str = "http check";
    fn list<'a>(cfg: &'a ConfigModel, parent: &str) -> Option<&'a Vec<HttpCheck>> {
        cfg.backend(parent).map(|b| &b.http_checks)
    }
    fn list_mut<'a>(cfg: &'a mut ConfigModel, parent: &str) -> Option<&'a mut Vec<HttpCheck>> {
        cfg.backend_mut(parent).map(|b| &mut b.http_checks)
    }
}

impl IndexList for Acls {
    type Item = Acl;
    const PARENT: &'static str = "frontend";
    const ITEM: &'static str = "acl";
    fn list<'a>(cfg: &'a ConfigModel, parent: &str) -> Option<&'a Vec<Acl>> {
        cfg.frontend(parent).map(|f| &f.acls)
    }
    fn list_mut<'a>(cfg: &'a mut ConfigModel, parent: &str) -> Option<&'a mut Vec<Acl>> {
        cfg.frontend_mut(parent).map(|f| &mut f.acls)
    }
}

impl IndexList for Rules {
    type Item = BackendSwitchingRule;
    const PARENT: &'static str = "frontend";
    const ITEM: &'static str = "backend switching rule";
    fn list<'a>(cfg: &'a ConfigModel, parent: &str) -> Option<&'a Vec<BackendSwitchingRule>> {
        cfg.frontend(parent).map(|f| &f.rules)
    }
    fn list_mut<'a>(
        cfg: &'a mut ConfigModel,
        parent: &str,
    ) -> Option<&'a mut Vec<BackendSwitchingRule>> {
        cfg.frontend_mut(parent).map(|f| &mut f.rules)
    }
}

pub(crate) struct Requests;

impl IndexList for Requests {
    type Item = HttpRequestRule;
    const PARENT: &'static str = "frontend";
    const ITEM: &'static str = "http request rule";
    fn list<'a>(cfg: &'a ConfigModel, parent: &str) -> Option<&'a Vec<HttpRequestRule>> {
        cfg.frontend(parent).map(|f| &f.requests)
    }
    fn list_mut<'a>(
        cfg: &'a mut ConfigModel,
        parent: &str,
    ) -> Option<&'a mut Vec<HttpRequestRule>> {
        cfg.frontend_mut(parent).map(|f| &mut f.requests)
    }
}

fn il_missing<L: IndexList>(parent: &str, index: i64) -> ApiError {
    ApiError::new(
        404,
        format!(
            "missing object: {} with index {index} does not exist in {} {parent}",
            L::ITEM,
            L::PARENT
        ),
    )
}

fn il_slot<L: IndexList>(len: usize, parent: &str, index: i64) -> Result<usize, ApiError> {
    usize::try_from(index)
        .ok()
        .filter(|i| *i < len)
        .ok_or_else(|| il_missing::<L>(parent, index))
}

async fn il_list<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    let s = lock(&st);
    let cfg = s.view(q_txn(&q))?;
    let list = L::list(cfg, &parent).cloned().unwrap_or_default();
    ok(&list)
}

async fn il_replace<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let wp = write_params(&q)?;
    let items: Vec<L::Item> = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let list = L::list_mut(cfg, &parent).ok_or_else(|| missing_parent(L::PARENT, &parent))?;
        *list = items.clone();
        Ok(())
    })?;
    finish(&mut s, &wp, applied, 202, 200, Some(to_json(&items)))
}

async fn il_get<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path((parent, index)): Path<(String, String)>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    let index = parse_index(&index)?;
    let s = lock(&st);
    let list =
        L::list(s.view(q_txn(&q))?, &parent).ok_or_else(|| missing_parent(L::PARENT, &parent))?;
    let i = il_slot::<L>(list.len(), &parent, index)?;
    ok(&list[i])
}

async fn il_insert<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path((parent, index)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let index = parse_index(&index)?;
    let wp = write_params(&q)?;
    let item: L::Item = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let list = L::list_mut(cfg, &parent).ok_or_else(|| missing_parent(L::PARENT, &parent))?;
        let i = usize::try_from(index)
            .ok()
            .filter(|i| *i <= list.len())
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    format!(
                        "index out of range: {} index {index} is out of range, {} {parent} has {} entries",
                        L::ITEM,
                        L::PARENT,
                        list.len()
                    ),
                )
            })?;
        list.insert(i, item.clone());
        Ok(())
    })?;
    finish(&mut s, &wp, applied, 202, 201, Some(to_json(&item)))
}

async fn il_put<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path((parent, index)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let index = parse_index(&index)?;
    let wp = write_params(&q)?;
    let item: L::Item = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let list = L::list_mut(cfg, &parent).ok_or_else(|| missing_parent(L::PARENT, &parent))?;
        let i = il_slot::<L>(list.len(), &parent, index)?;
        list[i] = item.clone();
        Ok(())
    })?;
    finish(&mut s, &wp, applied, 202, 200, Some(to_json(&item)))
}

async fn il_delete<L: IndexList>(
    AxState(st): AxState<Shared>,
    Path((parent, index)): Path<(String, String)>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    let index = parse_index(&index)?;
    let wp = write_params(&q)?;
    let mut s = lock(&st);
    let (_, applied) = s.mutate(&wp, |cfg| {
        let list = L::list_mut(cfg, &parent).ok_or_else(|| missing_parent(L::PARENT, &parent))?;
        let i = il_slot::<L>(list.len(), &parent, index)?;
        list.remove(i);
        Ok(())
    })?;
    finish(&mut s, &wp, applied, 202, 204, None)
}

// ---------------------------------------------------------------- transactions

fn txn_not_found(id: &str) -> ApiError {
    ApiError::new(
        404,
        format!("missing object: transaction {id} does not exist"),
    )
}

async fn txn_start(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let version = q_int(&q, "version")?
        .ok_or_else(|| ApiError::schema(schema::REQUIRED, "version in query is required"))?;
    let mut s = lock(&st);
    let max = s.opts.max_open_transactions;
    if s.open_transactions() >= max {
        return Err(ApiError::new(
            429,
            format!(
                "cannot start a new transaction, reached the maximum amount of {max} active transactions available"
            ),
        ));
    }
    if version != s.config.version {
        return Err(version_mismatch(s.config.version, version));
    }
    s.txn_seq += 1;
    let n = s.txn_seq;
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        0x5eed_0000u32 ^ (n as u32),
        n & 0xffff,
        (n >> 16) & 0xfff,
        (n >> 28) & 0xfff,
        n.wrapping_mul(0x9e37_79b9_7f4a) & 0xffff_ffff_ffff
    );
    let txn = Txn {
        id: id.clone(),
        version,
        status: TxnStatus::InProgress,
        staged: s.config.clone(),
    };
    let body = txn.to_json();
    s.txns.insert(id, txn);
    Ok(reply(201, Some(body), None))
}

async fn txn_list(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let filter = match q.get("status").map(String::as_str) {
        None => None,
        Some("failed") => Some(TxnStatus::Failed),
        Some("in_progress") => Some(TxnStatus::InProgress),
        Some(_) => {
            return Err(ApiError::schema(
                schema::ENUM,
                "status in query should be one of [failed in_progress]",
            ));
        }
    };
    let s = lock(&st);
    let list: Vec<Value> = s
        .txns
        .values()
        .filter(|t| filter.is_none_or(|f| t.status == f))
        .map(Txn::to_json)
        .collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

async fn txn_get(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Resp {
    let s = lock(&st);
    let t = s.txns.get(&id).ok_or_else(|| txn_not_found(&id))?;
    Ok(reply(200, Some(t.to_json()), None))
}

async fn txn_commit(AxState(st): AxState<Shared>, Path(id): Path<String>, Query(q): Q) -> Resp {
    let force = q_bool(&q, "force_reload")?;
    let mut s = lock(&st);
    let cur = s.config.version;
    let storage = s.storage.clone();
    let txn = s.txns.get_mut(&id).ok_or_else(|| txn_not_found(&id))?;
    if txn.status != TxnStatus::InProgress {
        return Err(ApiError::new(
            406,
            format!(
                "transaction {id} is {} and cannot be committed",
                txn.status.as_str()
            ),
        ));
    }
    if txn.version != cur {
        txn.status = TxnStatus::Outdated;
        return Err(ApiError::new(
            409,
            format!(
                "version mismatch: version mismatch, transaction version: {}, configured version: {cur}",
                txn.version
            ),
        ));
    }
    if let Err(out) = txn.staged.haproxy_check(&storage) {
        txn.status = TxnStatus::Failed;
        return Err(ApiError::new(400, format!("validation error: {out}")));
    }
    let txn = s.txns.remove(&id).expect("present");
    let mut new = txn.staged;
    new.version = cur + 1;
    s.config = new;
    for other in s.txns.values_mut() {
        if other.status == TxnStatus::InProgress && other.version <= txn.version {
            other.status = TxnStatus::Outdated;
        }
    }
    s.counters.commits += 1;
    let body = json!({"_version": txn.version, "id": id, "status": "success"});
    if force {
        s.force_reload()?;
        return Ok(reply(200, Some(body), None));
    }
    let rid = s.schedule_reload();
    Ok(reply(202, Some(body), Some(rid)))
}

async fn txn_delete(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Resp {
    let mut s = lock(&st);
    s.txns.remove(&id).ok_or_else(|| txn_not_found(&id))?;
    Ok(reply(204, None, None))
}

// ---------------------------------------------------------------- reloads

fn reload_json(id: &str, status: &str, ts: Option<u64>, response: &str) -> Value {
    let mut v = json!({"id": id, "status": status});
    if let Some(ts) = ts {
        v["reload_timestamp"] = json!(ts);
    }
    if !response.is_empty() {
        v["response"] = json!(response);
    }
    v
}

async fn reloads_list(AxState(st): AxState<Shared>) -> Resp {
    let s = lock(&st);
    let mut list: Vec<Value> = s
        .records
        .iter()
        .map(|r| {
            let status = if r.succeeded { "succeeded" } else { "failed" };
            reload_json(&r.id, status, Some(r.timestamp), &r.response)
        })
        .collect();
    if let Some(p) = &s.pending {
        list.push(reload_json(&p.id, "in_progress", None, ""));
    }
    Ok(reply(200, Some(Value::Array(list)), None))
}

async fn reload_get(AxState(st): AxState<Shared>, Path(id): Path<String>) -> Resp {
    if !schema::RE_RELOAD_ID.is_match(&id) {
        return Err(ApiError::schema(
            schema::PATTERN,
            format!("id in path should match '{}'", schema::PAT_RELOAD_ID),
        ));
    }
    let s = lock(&st);
    if s.pending.as_ref().is_some_and(|p| p.id == id) {
        // The pending ID reports the *running* reload's ID, which is "" between reloads.
        return Ok(reply(
            200,
            Some(reload_json("", "in_progress", None, "")),
            None,
        ));
    }
    if let Some(r) = s.records.iter().rev().find(|r| r.id == id) {
        let status = if r.succeeded { "succeeded" } else { "failed" };
        return Ok(reply(
            200,
            Some(reload_json(&r.id, status, Some(r.timestamp), &r.response)),
            None,
        ));
    }
    let seq: u64 = id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if s.last_success_seq.is_some_and(|last| seq < last) {
        // An ID older than the last success is reported as succeeded, even if unknown.
        return Ok(reply(
            200,
            Some(reload_json(&id, "succeeded", None, "")),
            None,
        ));
    }
    Err(ApiError::new(
        404,
        format!("Reload with ID {id} does not exist"),
    ))
}

// ---------------------------------------------------------------- runtime servers

fn rt_server_missing(parent: &str, name: &str) -> ApiError {
    ApiError::new(404, format!("no data for {parent}/{name}: not found"))
}

async fn rt_servers_list(AxState(st): AxState<Shared>, Path(parent): Path<String>) -> Resp {
    check_path("parent_name", &parent)?;
    let s = lock(&st);
    let b = s
        .runtime
        .backends
        .get(&parent)
        .ok_or_else(|| ApiError::new(404, format!("no data for {parent}: not found")))?;
    let list: Vec<Value> = b.servers.iter().map(RtServer::to_api_json).collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

/// `GET /v3/services/haproxy/stats/native[?type=&name=&parent=]`: one `native_stats` object (the
/// spec's 200 schema, not an array), built from the runtime model: `show stat` as DPAPI returns it.
async fn stats_native(AxState(st): AxState<Shared>, Query(q): Q) -> Resp {
    let kind = q.get("type").map(String::as_str);
    if let Some(k) = kind
        && !matches!(k, "frontend" | "backend" | "server")
    {
        return Err(ApiError::schema(
            606,
            format!("type in query should be one of [frontend backend server]: {k:?}"),
        ));
    }
    let s = lock(&st);
    let mut stats = Vec::new();
    for (bname, b) in &s.runtime.backends {
        if q.get("parent").is_some_and(|p| p != bname) {
            continue;
        }
        if matches!(kind, None | Some("server")) {
            for srv in &b.servers {
                if q.get("name").is_some_and(|n| n != &srv.name) {
                    continue;
                }
                let status = match (srv.admin, srv.op) {
                    (AdminState::Maint, _) => "MAINT",
                    (AdminState::Drain, _) => "DRAIN",
                    (_, _) if !srv.check_enabled => "no check",
                    (_, OperationalState::Up) => "UP",
                    (_, OperationalState::Down) => "DOWN",
                    (_, OperationalState::Stopping) => "NOLB",
                };
                let addr = match srv.port {
                    Some(p) => format!("{}:{p}", srv.address),
                    None => srv.address.clone(),
                };
                stats.push(json!({
                    "type": "server",
                    "name": srv.name,
                    "backend_name": bname,
                    "stats": {
                        "scur": srv.sessions,
                        "qcur": 0,
                        "status": status,
                        "weight": srv.weight,
                        "addr": addr,
                        "check_status": if srv.check_enabled { "L7OK" } else { "" },
                    }
                }));
            }
        }
        if matches!(kind, None | Some("backend")) && q.get("name").is_none_or(|n| n == bname) {
            let scur: u64 = b.servers.iter().map(|x| u64::from(x.sessions)).sum();
            stats.push(
                json!({"type": "backend", "name": bname, "stats": {"scur": scur, "status": "UP"}}),
            );
        }
    }
    Ok(reply(
        200,
        Some(json!({"runtimeAPI": "/var/run/haproxy/admin.sock", "stats": stats})),
        None,
    ))
}

async fn rt_server_get(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("name", &name)?;
    let s = lock(&st);
    let srv = s
        .runtime
        .backends
        .get(&parent)
        .and_then(|b| b.server(&name))
        .ok_or_else(|| rt_server_missing(&parent, &name))?;
    Ok(reply(200, Some(srv.to_api_json()), None))
}

async fn rt_server_post(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let add: RuntimeAddServer = body(&st, &headers, &bytes)?;
    let name = add
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::new(400, "the new server must have a name"))?;
    let mut s = lock(&st);
    let spec = AddServer {
        name,
        address: add.address.clone().unwrap_or_default(),
        port: add.port,
        check: add.check,
        weight: add.weight,
    };
    runtime_add_server(&mut s, &parent, &spec)?;
    Ok(reply(201, Some(to_json(&add)), None))
}

async fn rt_server_put(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("name", &name)?;
    let put: RuntimeServerPut = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let target = format!("{parent}/{name}");
    let srv = s
        .runtime
        .backends
        .get_mut(&parent)
        .and_then(|b| b.server_mut(&name))
        .ok_or_else(|| rt_server_missing(&parent, &name))?;
    let mut cmds = Vec::new();
    if let Some(op) = put.operational_state {
        srv.op = op;
        cmds.push(format!("set server {target} health {}", op.as_str()));
    }
    if let Some(admin) = put.admin_state {
        match admin {
            AdminState::Maint => srv.op = OperationalState::Down,
            _ if srv.admin == AdminState::Maint => srv.op = OperationalState::Up,
            _ => {}
        }
        srv.admin = admin;
        cmds.push(format!("set server {target} state {}", admin.as_str()));
    }
    let out = srv.to_api_json();
    for c in cmds {
        s.runtime_command(c);
    }
    Ok(reply(200, Some(out), None))
}

async fn rt_server_delete(
    AxState(st): AxState<Shared>,
    Path((parent, name)): Path<(String, String)>,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("name", &name)?;
    let mut s = lock(&st);
    let target = format!("{parent}/{name}");
    let b = s
        .runtime
        .backends
        .get_mut(&parent)
        .ok_or_else(|| rt_server_missing(&parent, &name))?;
    let idx = b
        .servers
        .iter()
        .position(|x| x.name == name)
        .ok_or_else(|| rt_server_missing(&parent, &name))?;
    let mut cmds = Vec::new();
    if b.servers[idx].admin != AdminState::Maint {
        b.servers[idx].admin = AdminState::Maint;
        b.servers[idx].op = OperationalState::Down;
        cmds.push(format!("disable server {target}"));
    }
    cmds.push(format!("del server {target}"));
    let busy = b.servers[idx].sessions > 0;
    if !busy {
        b.servers.remove(idx);
    }
    for c in cmds {
        s.runtime_command(c);
    }
    if busy {
        return Err(ApiError::new(
            500,
            format!(
                "Server still has connections attached to it, cannot remove it. [del server {target}]"
            ),
        ));
    }
    Ok(reply(204, None, None))
}

// ---------------------------------------------------------------- runtime maps

const UNKNOWN_MAP: &str = "Unknown map identifier. Please use #<id> or <file>.";

/// `{name}` → storage name: `#<id>` by runtime id, else the basename with `.map` added.
fn map_name(s: &State, raw: &str) -> Option<String> {
    if let Some(id) = raw.strip_prefix('#') {
        let id: u32 = id.parse().ok()?;
        return s
            .runtime
            .maps
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(n, _)| n.clone());
    }
    let base = raw.rsplit('/').next().unwrap_or(raw);
    Some(if base.ends_with(".map") {
        base.to_string()
    } else {
        format!("{base}.map")
    })
}

fn map_json(name: &str, id: Option<u32>, size: Option<usize>) -> Value {
    let file = format!("{MAPS_DIR}/{name}");
    let mut v = json!({"file": file, "storage_name": name});
    match id {
        Some(id) => {
            v["id"] = json!(id.to_string());
            v["description"] = json!(format!("pattern loaded from file '{file}' used by map"));
        }
        None => v["description"] = json!("managed but not loaded map file (no runtime ID)"),
    }
    if let Some(n) = size {
        v["size"] = json!(n);
    }
    v
}

async fn rt_maps_list(AxState(st): AxState<Shared>) -> Resp {
    let s = lock(&st);
    let list: Vec<Value> = s
        .runtime
        .maps
        .iter()
        .map(|(n, m)| map_json(n, Some(m.id), Some(m.entries.len())))
        .collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

async fn rt_map_get(AxState(st): AxState<Shared>, Path(name): Path<String>) -> Resp {
    check_path("name", &name)?;
    let s = lock(&st);
    let n = map_name(&s, &name).ok_or_else(|| ApiError::new(404, UNKNOWN_MAP))?;
    let m = s
        .runtime
        .maps
        .get(&n)
        .ok_or_else(|| ApiError::new(404, UNKNOWN_MAP))?;
    Ok(reply(
        200,
        Some(map_json(&n, Some(m.id), Some(m.entries.len()))),
        None,
    ))
}

fn entry_json(e: &RtMapEntry) -> Value {
    json!({"id": e.id, "key": e.key, "value": e.value})
}

/// Resolves a loaded map or answers `status` with HAProxy's text.
fn loaded_map(s: &State, raw: &str, status: u16) -> Result<String, ApiError> {
    map_name(s, raw)
        .filter(|n| s.runtime.maps.contains_key(n))
        .ok_or_else(|| ApiError::new(status, UNKNOWN_MAP))
}

/// `force_sync=true`: write the running map's entries to its file.
fn sync_map(s: &mut State, name: &str) {
    let text = render_map_file(&s.runtime.maps[name].entries);
    s.storage.insert(name.to_string(), text);
}

/// `GET …/entries`: client-native runs `show map <file>` and reads each line with
/// `strings.Fields`, so a key holding whitespace comes back cut.
async fn entries_list(AxState(st): AxState<Shared>, Path(parent): Path<String>) -> Resp {
    check_path("parent_name", &parent)?;
    let s = lock(&st);
    let n = loaded_map(&s, &parent, 404)?;
    let list: Vec<Value> = s.runtime.maps[&n]
        .entries
        .iter()
        .filter_map(|e| {
            cli::show_map_fields(&e.id, &e.key, &e.value)
                .map(|(key, value)| json!({"id": e.id, "key": key, "value": value}))
        })
        .collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

/// client-native's `get map <file> <id>` check: HAProxy looks the unescaped id up (modelled as
/// an exact key match) and prints the stored key, which client-native compares with the id as
/// sent, so an escaped id is never "found".
fn get_map<'a>(s: &'a State, map: &str, raw_id: &str) -> Option<&'a RtMapEntry> {
    let line = format!("get map {MAPS_DIR}/{map} {raw_id}");
    if cli::starts_payload(&line) {
        return None;
    }
    let words = cli::first(&line);
    let sample = words.get(3)?;
    s.runtime.maps[map]
        .entries
        .iter()
        .find(|x| &x.key == sample)
        .filter(|x| x.key == raw_id)
}

/// `POST …/entries`: `add map <file> <key> <value>` with the body's strings as they are, through
/// HAProxy's CLI ([`cli`]): what is stored is the CLI's unescaped words.
/// Whether the running configuration reads map `n` with `map_reg` (its keys are regexes).
fn map_is_regex(s: &State, n: &str) -> bool {
    let needle = format!("map_reg({MAPS_DIR}/{n})");
    s.runtime_config_text().contains(&needle)
}

async fn entry_post(
    AxState(st): AxState<Shared>,
    Path(parent): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    let force_sync = q_bool(&q, "force_sync")?;
    let e: MapEntry = body(&st, &headers, &bytes)?;
    let (key, value) = match (e.key.clone(), e.value.clone()) {
        (Some(k), Some(v)) if !k.is_empty() => (k, v),
        _ => {
            return Err(ApiError::new(
                400,
                "'add map' expects three parameters: map identifier, key and value.",
            ));
        }
    };
    let mut s = lock(&st);
    let n = loaded_map(&s, &parent, 400)?;
    if get_map(&s, &n, &key).is_some() {
        return Err(ApiError::new(
            409,
            format!("object already exists: key {key} already exists in map {MAPS_DIR}/{n}"),
        ));
    }
    let line = format!("add map {MAPS_DIR}/{n} {key} {value}");
    s.runtime_command(line.clone());
    if !cli::starts_payload(&line) {
        let words = cli::first(&line);
        let (Some(stored_key), Some(stored_value)) = (words.get(3), words.get(4)) else {
            return Err(ApiError::new(
                400,
                "unknown error: [3]: 'add map' expects three parameters (map identifier, key and value) or one parameter (map identifier) and a payload",
            ));
        };
        // A map the configuration reads with `map_reg` compiles each key with PCRE2 as it is
        // added (no UTF mode, as HAProxy builds it): a pattern it rejects is not added.
        if map_is_regex(&s, &n)
            && let Err(e) = pcre2::bytes::RegexBuilder::new()
                .utf(false)
                .build(stored_key)
        {
            return Err(ApiError::new(
                400,
                format!("unknown error: [3]: regex '{stored_key}' is invalid ({e})"),
            ));
        }
        let id = s.runtime.new_entry_id();
        s.runtime
            .maps
            .get_mut(&n)
            .expect("loaded")
            .entries
            .push(RtMapEntry {
                id,
                key: stored_key.clone(),
                value: stored_value.clone(),
            });
        if force_sync {
            sync_map(&mut s, &n);
        }
    }
    Ok(reply(201, Some(json!({"key": key, "value": value})), None))
}

fn entry_missing(key: &str, map: &str) -> ApiError {
    ApiError::new(
        404,
        format!("missing object: key {key} does not exist in map {MAPS_DIR}/{map}"),
    )
}

/// `GET …/entries/{id}`: `get map <file> <id>` (see [`get_map`]).
async fn entry_get(
    AxState(st): AxState<Shared>,
    Path((parent, key)): Path<(String, String)>,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("id", &key)?;
    let s = lock(&st);
    let n = loaded_map(&s, &parent, 404)?;
    let e = get_map(&s, &n, &key).ok_or_else(|| entry_missing(&key, &n))?;
    Ok(reply(200, Some(entry_json(e)), None))
}

/// `PUT …/entries/{id}`: `set map <file> <id> <value>` through the CLI; every entry with the
/// unescaped key gets the unescaped value.
async fn entry_put(
    AxState(st): AxState<Shared>,
    Path((parent, key)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("id", &key)?;
    let force_sync = q_bool(&q, "force_sync")?;
    let v: MapEntryValue = body(&st, &headers, &bytes)?;
    let mut s = lock(&st);
    let n = loaded_map(&s, &parent, 404)?;
    let line = format!("set map {MAPS_DIR}/{n} {key} {}", v.value);
    s.runtime_command(line.clone());
    if !cli::starts_payload(&line) {
        let words = cli::first(&line);
        let (Some(k), Some(value)) = (words.get(3), words.get(4)) else {
            return Err(entry_missing(&key, &n));
        };
        let map = s.runtime.maps.get_mut(&n).expect("loaded");
        let mut found = false;
        for e in map.entries.iter_mut().filter(|x| &x.key == k) {
            e.value = value.clone();
            found = true;
        }
        if !found {
            return Err(entry_missing(&key, &n));
        }
        if force_sync {
            sync_map(&mut s, &n);
        }
    }
    Ok(reply(
        200,
        Some(json!({"key": key, "value": v.value})),
        None,
    ))
}

/// `DELETE …/entries/{id}`: `del map <file> <id>` through the CLI; removes every entry with the
/// unescaped key. On 2.6 an id ending in `<<` starts a payload: nothing runs, nothing is
/// answered, and the API reports success.
async fn entry_delete(
    AxState(st): AxState<Shared>,
    Path((parent, key)): Path<(String, String)>,
    Query(q): Q,
) -> Resp {
    check_path("parent_name", &parent)?;
    check_path("id", &key)?;
    let force_sync = q_bool(&q, "force_sync")?;
    let mut s = lock(&st);
    let n = loaded_map(&s, &parent, 404)?;
    let line = format!("del map {MAPS_DIR}/{n} {key}");
    s.runtime_command(line.clone());
    if cli::starts_payload(&line) {
        return Ok(reply(204, None, None));
    }
    let words = cli::first(&line);
    let Some(k) = words.get(3) else {
        return Err(entry_missing(&key, &n));
    };
    let map = s.runtime.maps.get_mut(&n).expect("loaded");
    let before = map.entries.len();
    map.entries.retain(|x| &x.key != k);
    if map.entries.len() == before {
        return Err(entry_missing(&key, &n));
    }
    if force_sync {
        sync_map(&mut s, &n);
    }
    Ok(reply(204, None, None))
}

// ---------------------------------------------------------------- storage maps

async fn storage_list(AxState(st): AxState<Shared>) -> Resp {
    let s = lock(&st);
    let list: Vec<Value> = s
        .storage
        .keys()
        .map(|n| map_json(n, s.runtime.maps.get(n).map(|m| m.id), None))
        .collect();
    Ok(reply(200, Some(Value::Array(list)), None))
}

/// `POST /storage/maps`: `multipart/form-data` with the file in the field `file_upload`; the
/// storage name is the upload's file name (its base name). 201 with the map object (not loaded,
/// no runtime ID: nothing reloads), 409 when the file exists (DPAPI
/// `handlers/storage/maps`, client-native's storage `Create`).
async fn storage_create(AxState(st): AxState<Shared>, headers: HeaderMap, bytes: Bytes) -> Resp {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (name, content) = multipart_file(ct, &bytes, "file_upload")?;
    let name = name.rsplit('/').next().unwrap_or(&name).to_string();
    if name.is_empty() {
        return Err(ApiError::new(400, "no file name in the upload"));
    }
    let mut s = lock(&st);
    if s.storage.contains_key(&name) {
        return Err(ApiError::new(
            409,
            format!("file {MAPS_DIR}/{name} already exists"),
        ));
    }
    let size = content.len();
    s.storage.insert(name.clone(), content);
    let mut v = map_json(&name, None, Some(size));
    v["description"] = json!("managed but not loaded map file (no runtime ID)");
    Ok(reply(201, Some(v), None))
}

/// The file in form field `field` of a `multipart/form-data` body: (file name, content). Errors
/// as Go's `ParseMultipartForm` / `FormFile` answer them (400).
fn multipart_file(
    content_type: &str,
    body: &[u8],
    field: &str,
) -> Result<(String, String), ApiError> {
    let bad = |m: &str| ApiError::new(400, m.to_string());
    let mut parts = content_type.split(';').map(str::trim);
    if parts.next() != Some("multipart/form-data") {
        return Err(bad("request Content-Type isn't multipart/form-data"));
    }
    let boundary = parts
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| bad("no multipart boundary param in Content-Type"))?;
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    for part in text.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, rest)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or("");
        let param = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        if param("name").as_deref() != Some(field) {
            continue;
        }
        let filename = param("filename").ok_or_else(|| bad("http: no such file"))?;
        let content = rest.strip_suffix("\r\n").unwrap_or(rest).to_string();
        return Ok((filename, content));
    }
    Err(bad("http: no such file"))
}

fn storage_missing(name: &str) -> ApiError {
    ApiError::new(404, format!("missing object: file {name} doesn't exist"))
}

async fn storage_get(AxState(st): AxState<Shared>, Path(name): Path<String>) -> Resp {
    let s = lock(&st);
    let text = s.storage.get(&name).ok_or_else(|| storage_missing(&name))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        text.clone(),
    )
        .into_response())
}

async fn storage_put(
    AxState(st): AxState<Shared>,
    Path(name): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    bytes: Bytes,
) -> Resp {
    let skip_reload = q_bool(&q, "skip_reload")?;
    let force_reload = q_bool(&q, "force_reload")?;
    if bytes.is_empty() {
        return Err(ApiError::schema(
            schema::REQUIRED,
            "data in body is required",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != "text/plain" {
        return Err(ApiError::new(
            415,
            format!("unsupported media type {ct:?}, only [text/plain] are allowed"),
        ));
    }
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::new(400, "map file is not valid UTF-8"))?;
    let mut s = lock(&st);
    if !s.storage.contains_key(&name) {
        return Err(storage_missing(&name));
    }
    s.storage.insert(name, text.clone());
    if skip_reload {
        return Ok(reply(204, None, None));
    }
    if force_reload {
        s.force_reload()?;
        return Ok(reply(202, Some(json!(text)), None));
    }
    let id = s.schedule_reload();
    Ok(reply(202, Some(json!(text)), Some(id)))
}
