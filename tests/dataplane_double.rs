//! The Data Plane API double behaves like the real API (CONTRACTS §2.1–2.13), checked over HTTP
//! with reqwest, the way the driver will talk to it.

use std::time::Duration;

use crate::support::dataplane::{BaseConfig, DataplaneDouble, FrontendSpec, Options};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const CONF: &str = "/services/haproxy/configuration";
const HOSTS_MAP: &str = "%[req.hdr(host),lower,map(/etc/haproxy/maps/hosts.map)]";

/// A base configuration like a user's: a hand-written backend with a static server and hand-set
/// timeouts, one with `default-server check`, an empty `svc` backend, and a frontend with an ACL,
/// a map-lookup rule and a multi-condition rule.
fn mk_base() -> BaseConfig {
    BaseConfig::new()
        .backend(json!({
            "name": "custom", "mode": "http", "balance": {"algorithm": "roundrobin"},
            "connect_timeout": 4000, "server_timeout": 45000,
            "servers": {"static1": {"name": "static1", "address": "10.0.0.9", "port": 80, "check": "enabled"}}
        }))
        .backend(json!({"name": "legacy", "mode": "http", "default_server": {"check": "enabled", "inter": 2000}}))
        .backend(json!({
            "name": "svc", "mode": "http",
            "servers": {"s1": {"name": "s1", "address": "10.0.1.1", "port": 8080, "check": "enabled"}}
        }))
        .frontend(
            FrontendSpec::new("http-in")
                .default_backend("custom")
                .acl(json!({"acl_name": "is_api", "criterion": "hdr(host)", "value": "-i api.example"}))
                .rule(json!({"name": HOSTS_MAP, "cond": "if",
                    "cond_test": "{ req.hdr(host),lower,map(/etc/haproxy/maps/hosts.map) -m found }"}))
                .rule(json!({"name": "custom", "cond": "if", "cond_test": "is_api METH_GET"})),
        )
        .map_file("hosts.map", "a.example custom\n")
        .map_file("other.map", "")
}

struct T {
    dp: DataplaneDouble,
    http: reqwest::Client,
}

struct R {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl R {
    fn h(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_string())
    }
    fn version(&self) -> i64 {
        self.h("Configuration-Version")
            .expect("Configuration-Version on every response")
            .parse()
            .expect("integer")
    }
    fn msg(&self) -> String {
        self.body["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    fn code(&self) -> i64 {
        self.body["code"].as_i64().expect("error code")
    }
}

async fn start(base: BaseConfig) -> T {
    start_with(base, Options::fast()).await
}

/// A double whose reload agent never ticks on its own: the test fires it with
/// `flush_reloads()`, so coalescing does not depend on scheduling on a busy machine.
async fn start_manual(base: BaseConfig) -> T {
    let opts = Options {
        reload_delay: Duration::from_secs(3600),
        ..Options::fast()
    };
    start_with(base, opts).await
}

async fn start_with(base: BaseConfig, opts: Options) -> T {
    T {
        dp: DataplaneDouble::start(base, opts).await,
        http: reqwest::Client::new(),
    }
}

impl T {
    async fn send(&self, m: Method, path: &str, body: Option<Value>, auth: bool) -> R {
        let mut req = self.http.request(m, self.dp.v3(path));
        if auth {
            req = req.basic_auth(self.dp.user(), Some(self.dp.password()));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        R {
            status,
            headers,
            body,
        }
    }
    async fn get(&self, path: &str) -> R {
        self.send(Method::GET, path, None, true).await
    }
    async fn post(&self, path: &str, body: Value) -> R {
        self.send(Method::POST, path, Some(body), true).await
    }
    async fn put(&self, path: &str, body: Value) -> R {
        self.send(Method::PUT, path, Some(body), true).await
    }
    async fn delete(&self, path: &str) -> R {
        self.send(Method::DELETE, path, None, true).await
    }
    async fn raw(&self, m: Method, path: &str, ct: &str, body: &'static str) -> R {
        let resp = self
            .http
            .request(m, self.dp.v3(path))
            .basic_auth(self.dp.user(), Some(self.dp.password()))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        R {
            status,
            headers,
            body,
        }
    }
}

fn backend(name: &str) -> Value {
    json!({"name": name, "mode": "http", "balance": {"algorithm": "roundrobin"}})
}

fn server(name: &str, port: u16) -> Value {
    json!({"name": name, "address": "10.0.2.1", "port": port, "check": "enabled"})
}

#[tokio::test]
async fn auth_routing_and_version_header_on_every_response() {
    let t = start(mk_base()).await;

    let r = t.send(Method::GET, "/info", None, false).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.msg(), "unauthenticated for invalid credentials");
    assert!(
        r.h("WWW-Authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );
    assert_eq!(r.version(), 1);
    let wrong = t
        .http
        .get(t.dp.v3("/info"))
        .basic_auth(t.dp.user(), Some("nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);

    // Routing runs before auth: unknown path 404, wrong method 405, both without credentials.
    let r = t.send(Method::GET, "/nothing/here", None, false).await;
    assert_eq!((r.status, r.version()), (404, 1));
    let r = t.send(Method::PATCH, "/info", None, false).await;
    assert_eq!((r.status, r.code(), r.version()), (405, 405, 1));

    let r = t.get(&format!("{CONF}/version")).await;
    assert_eq!((r.status, r.body.clone(), r.version()), (200, json!(1), 1));
    let r = t
        .get(&format!("{CONF}/version?transaction_id=unknown"))
        .await;
    assert_eq!((r.status, r.version()), (404, 0));
    let r = t.get("/health").await;
    assert_eq!(r.body, json!({"haproxy": "unknown"}));
    assert!(t.get("/info").await.body["api"]["version"].is_string());
    assert_eq!(t.dp.request_count("GET /v3/info"), 3);
    assert_eq!(
        t.dp.request_count("PATCH /v3/info"),
        0,
        "405s are not routed"
    );
}

#[tokio::test]
async fn writes_take_exactly_one_of_version_and_transaction() {
    let t = start(mk_base()).await;
    let b = format!("{CONF}/backends");

    let r = t.post(&b, backend("web")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.msg(),
        "version or transaction not specified: version or transaction not specified, specify only one"
    );
    let r = t
        .post(&format!("{b}?version=1&transaction_id=x"), backend("web"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.msg(),
        "both version and transaction specified, specify only one"
    );
    let r = t
        .post(
            &format!("{b}?transaction_id=x&force_reload=true"),
            backend("web"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.msg(),
        "Both force_reload and transaction specified, specify only one"
    );

    let r = t.post(&format!("{b}?version=7"), backend("web")).await;
    assert_eq!((r.status, r.version()), (409, 1));
    assert_eq!(
        r.msg(),
        "version mismatch: version in configuration file is 1, given version is 7"
    );

    let r = t.post(&format!("{b}?version=1"), backend("web")).await;
    assert_eq!((r.status, r.version()), (202, 2));
    assert!(r.h("Reload-ID").is_some());
    let r = t.post(&format!("{b}?version=2"), backend("web")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.msg(), "object already exists: backend web already exists");
    assert_eq!(
        t.dp.version(),
        2,
        "a failed write does not bump the version"
    );

    // Runtime endpoints never change the version.
    let r = t
        .post(
            "/services/haproxy/runtime/maps/hosts.map/entries",
            json!({"key": "b.example", "value": "web"}),
        )
        .await;
    assert_eq!((r.status, r.version()), (201, 2));
}

#[tokio::test]
async fn transaction_stages_then_commits_once_with_one_reload() {
    let t = start(mk_base()).await;
    let before = t.dp.config_snapshot();

    let r = t
        .post("/services/haproxy/transactions?version=1", json!(null))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        (r.body["_version"].clone(), r.body["status"].clone()),
        (json!(1), json!("in_progress"))
    );
    let id = r.body["id"].as_str().expect("id").to_string();
    let q = format!("transaction_id={id}");

    let staged = [
        t.post(&format!("{CONF}/backends?{q}"), backend("web"))
            .await,
        t.post(
            &format!("{CONF}/backends/web/servers?{q}"),
            server("web1", 8080),
        )
        .await,
        t.put(
            &format!("{CONF}/backends/web/http_checks?{q}"),
            json!([{"type": "send", "method": "GET", "uri": "/health", "version": "HTTP/1.1",
                    "headers": [{"name": "Host", "fmt": "a.example"}]},
                   {"type": "expect", "match": "status", "pattern": "200-399"}]),
        )
        .await,
    ];
    for r in &staged {
        assert_eq!((r.status, r.h("Reload-ID"), r.version()), (202, None, 1));
    }
    assert_eq!(
        t.dp.config_snapshot(),
        before,
        "nothing applied before commit"
    );
    assert_eq!(t.get(&format!("{CONF}/backends/web?{q}")).await.status, 200);
    assert_eq!(t.get(&format!("{CONF}/backends/web")).await.status, 404);
    assert_eq!(t.dp.open_transactions(), 1);

    let r = t
        .put(&format!("/services/haproxy/transactions/{id}"), json!(null))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        r.body,
        json!({"_version": 1, "id": id, "status": "success"})
    );
    assert!(r.h("Reload-ID").is_some());
    assert_eq!(r.version(), 2, "+1 however many operations");
    assert_eq!(t.dp.commit_count(), 1);
    assert_eq!(
        t.get(&format!("/services/haproxy/transactions/{id}"))
            .await
            .status,
        404
    );

    t.dp.wait_reloads_idle().await;
    let reloads = t.dp.reloads();
    assert_eq!(reloads.len(), 1);
    assert_eq!(
        reloads[0].reasons,
        ["PUT /v3/services/haproxy/transactions/{id}"]
    );
    let full = t
        .get(&format!("{CONF}/backends/web?full_section=true"))
        .await;
    assert_eq!(full.body["servers"]["web1"]["port"], json!(8080));
    assert_eq!(
        full.body["http_check_list"][0]["headers"][0]["fmt"],
        json!("a.example")
    );
    let rs =
        t.dp.runtime_server("web", "web1")
            .expect("running after reload");
    assert_eq!((rs.admin_state.as_str(), rs.check_enabled), ("ready", true));
}

#[tokio::test]
async fn lost_races_answer_406_or_409_and_aborts_free_slots() {
    let t = start(mk_base()).await;
    // `version` is required when starting a transaction.
    let r = t.post("/services/haproxy/transactions", json!(null)).await;
    assert_eq!((r.status, r.code()), (422, 602));

    let a = t
        .post("/services/haproxy/transactions?version=1", json!(null))
        .await
        .body["id"]
        .clone();
    let b = t
        .post("/services/haproxy/transactions?version=1", json!(null))
        .await
        .body["id"]
        .clone();
    let (a, b) = (
        a.as_str().unwrap().to_string(),
        b.as_str().unwrap().to_string(),
    );
    assert_eq!(
        t.put(&format!("/services/haproxy/transactions/{a}"), json!(null))
            .await
            .status,
        202
    );
    let r = t
        .put(&format!("/services/haproxy/transactions/{b}"), json!(null))
        .await;
    assert_eq!(r.status, 406);
    assert_eq!(
        r.msg(),
        format!("transaction {b} is outdated and cannot be committed")
    );

    let c = t
        .post("/services/haproxy/transactions?version=2", json!(null))
        .await
        .body["id"]
        .clone();
    let c = c.as_str().unwrap().to_string();
    t.dp.bump_version_foreign();
    let r = t
        .put(&format!("/services/haproxy/transactions/{c}"), json!(null))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        r.msg(),
        "version mismatch: version mismatch, transaction version: 2, configured version: 3"
    );

    let r = t.get("/services/haproxy/transactions?status=bogus").await;
    assert_eq!((r.status, r.code()), (422, 606));
    assert_eq!(
        t.get("/services/haproxy/transactions?status=in_progress")
            .await
            .body,
        json!([])
    );
    assert_eq!(
        t.delete(&format!("/services/haproxy/transactions/{b}"))
            .await
            .status,
        204
    );
    assert_eq!(
        t.delete(&format!("/services/haproxy/transactions/{b}"))
            .await
            .status,
        404
    );
    assert_eq!(
        t.delete(&format!("/services/haproxy/transactions/{c}"))
            .await
            .status,
        204
    );
    assert_eq!(t.dp.open_transactions(), 0);
}

#[tokio::test]
async fn twentieth_open_transaction_is_the_last() {
    let t = start(mk_base()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = t
            .post("/services/haproxy/transactions?version=1", json!(null))
            .await;
        assert_eq!(r.status, 201);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let r = t
        .post("/services/haproxy/transactions?version=1", json!(null))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.msg(),
        "cannot start a new transaction, reached the maximum amount of 20 active transactions available"
    );
    // The limit is checked before the version.
    assert_eq!(
        t.post("/services/haproxy/transactions?version=99", json!(null))
            .await
            .status,
        429
    );
    assert_eq!(
        t.delete(&format!("/services/haproxy/transactions/{}", ids[0]))
            .await
            .status,
        204
    );
    assert_eq!(
        t.post("/services/haproxy/transactions?version=1", json!(null))
            .await
            .status,
        201
    );
    assert_eq!(t.dp.open_transactions(), 20);
}

#[tokio::test]
async fn reloads_coalesce_within_one_tick_and_report_status() {
    // The test decides when the agent fires, so both writes are in one window.
    let t = start_manual(mk_base()).await;
    let r1 = t
        .post(&format!("{CONF}/backends?version=1"), backend("a"))
        .await;
    let r2 = t
        .post(&format!("{CONF}/backends?version=2"), backend("b"))
        .await;
    let id = r1.h("Reload-ID").expect("reload id");
    assert_eq!(r2.h("Reload-ID").as_deref(), Some(id.as_str()));
    let (date, n) = id.rsplit_once('-').unwrap();
    assert_eq!((date.len(), n), (10, "0"));

    let pending = t.get(&format!("/services/haproxy/reloads/{id}")).await;
    assert_eq!(pending.body, json!({"id": "", "status": "in_progress"}));
    t.dp.flush_reloads();
    assert_eq!(t.dp.reload_count(), 1);
    assert_eq!(t.dp.reloads()[0].reasons.len(), 2);
    let done = t.get(&format!("/services/haproxy/reloads/{id}")).await;
    assert_eq!(
        (done.body["id"].as_str(), done.body["status"].as_str()),
        (Some(id.as_str()), Some("succeeded"))
    );

    assert_eq!(
        t.get("/services/haproxy/reloads/not-an-id").await.status,
        422
    );
    let r = t.get(&format!("/services/haproxy/reloads/{date}-9")).await;
    assert_eq!(
        (r.status, r.msg()),
        (404, format!("Reload with ID {date}-9 does not exist"))
    );
    let r = t
        .put(&format!("{CONF}/backends/a?version=3"), backend("a"))
        .await;
    let second = r.h("Reload-ID").unwrap();
    assert_ne!(second, id);
    t.dp.flush_reloads();
    // Quirk: any ID older than the last success reads as succeeded.
    let r = t.get("/services/haproxy/reloads/1999-01-01-0").await;
    assert_eq!(r.body["status"], json!("succeeded"));
    assert_eq!(
        t.get("/services/haproxy/reloads")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn server_post_uses_the_runtime_only_without_default_server() {
    let t = start_manual(mk_base()).await;
    let svc = format!("{CONF}/backends/svc/servers");

    let r = t
        .post(&format!("{svc}?version=1"), server("s2", 8081))
        .await;
    assert_eq!((r.status, r.h("Reload-ID"), r.version()), (201, None, 2));
    let rs = t.dp.runtime_server("svc", "s2").expect("added at runtime");
    assert_eq!(
        (rs.admin_state.as_str(), rs.check_enabled),
        ("maint", false)
    );
    assert_eq!(
        t.dp.runtime_commands(),
        ["add server svc/s2 10.0.2.1:8081 check"]
    );
    assert!(!t.dp.reload_pending());
    assert_eq!(
        t.get(&format!("{svc}/s2")).await.status,
        200,
        "also written to the file"
    );

    // default_server in the backend (or in defaults) forces the reload path.
    let r = t
        .post(
            &format!("{CONF}/backends/legacy/servers?version=2"),
            server("l1", 80),
        )
        .await;
    assert_eq!(r.status, 202);
    let reload = r.h("Reload-ID").expect("reload");
    // So does an `id` in the body, and a backend that is not running yet.
    let mut with_id = server("s3", 8082);
    with_id["id"] = json!(42);
    let r = t.post(&format!("{svc}?version=3"), with_id).await;
    assert_eq!((r.status, r.h("Reload-ID")), (202, Some(reload.clone())));
    assert_eq!(
        t.post(&format!("{CONF}/backends?version=4"), backend("fresh"))
            .await
            .status,
        202
    );
    let r = t
        .post(
            &format!("{CONF}/backends/fresh/servers?version=5"),
            server("f1", 80),
        )
        .await;
    assert_eq!((r.status, r.h("Reload-ID")), (202, Some(reload)));
    assert_eq!(t.dp.runtime_commands().len(), 1);

    let r = t
        .post(
            &format!("{CONF}/backends/nope/servers?version=6"),
            server("x", 80),
        )
        .await;
    assert_eq!(
        (r.status, r.msg()),
        (
            400,
            "missing parent: backend nope does not exist".to_string()
        )
    );

    t.dp.flush_reloads();
    let rs = t.dp.runtime_server("svc", "s2").unwrap();
    assert_eq!(
        (rs.admin_state.as_str(), rs.check_enabled),
        ("ready", true),
        "a reload rebuilds it from the file"
    );
    assert!(
        t.dp.runtime_server("legacy", "l1").unwrap().check_enabled,
        "default-server check"
    );

    let r = t
        .post(
            &format!("{svc}?version=6&force_reload=true"),
            server("s4", 8084),
        )
        .await;
    assert_eq!((r.status, r.h("Reload-ID")), (201, None));
    assert_eq!(t.dp.reload_count(), 2, "force_reload reloads synchronously");

    let with_defaults = start(mk_base().defaults_default_server(json!({"check": "enabled"}))).await;
    let r = with_defaults
        .post(&format!("{svc}?version=1"), server("s2", 8081))
        .await;
    assert_eq!(r.status, 202, "default_server in defaults forces a reload");
}

#[tokio::test]
async fn server_put_of_runtime_fields_skips_the_reload_and_delete_always_reloads() {
    let t = start_manual(mk_base()).await;
    let s1 = format!("{CONF}/backends/svc/servers/s1");
    let mut body = json!({"name": "s1", "address": "10.0.1.2", "port": 9090, "check": "enabled",
                          "maintenance": "enabled", "weight": 50});
    let r = t.put(&format!("{s1}?version=1"), body.clone()).await;
    assert_eq!((r.status, r.h("Reload-ID"), r.version()), (200, None, 2));
    let rs = t.dp.runtime_server("svc", "s1").unwrap();
    assert_eq!(
        (
            rs.admin_state.as_str(),
            rs.address.as_str(),
            rs.port,
            rs.weight
        ),
        ("maint", "10.0.1.2", Some(9090), 50)
    );
    assert!(!t.dp.reload_pending());

    body["maintenance"] = json!("disabled");
    let r = t.put(&format!("{s1}?version=2"), body.clone()).await;
    assert_eq!(r.status, 200);
    let rs = t.dp.runtime_server("svc", "s1").unwrap();
    assert_eq!((rs.admin_state.as_str(), rs.check_enabled), ("ready", true));

    body["inter"] = json!(3000);
    let r = t.put(&format!("{s1}?version=3"), body).await;
    assert_eq!(r.status, 202);
    assert!(r.h("Reload-ID").is_some());

    let r = t.delete(&format!("{s1}?version=4")).await;
    assert_eq!(r.status, 202);
    assert!(r.h("Reload-ID").is_some());
    let r = t
        .delete(&format!(
            "{CONF}/backends/custom/servers/static1?version=5&force_reload=true"
        ))
        .await;
    assert_eq!(r.status, 204);
    let r = t.delete(&format!("{s1}?version=6")).await;
    assert_eq!(
        (r.status, r.msg()),
        (
            404,
            "missing object: server s1 does not exist in svc backend".to_string()
        )
    );
    t.dp.flush_reloads();
    assert!(t.dp.runtime_server("svc", "s1").is_none());
    assert_eq!(t.dp.reload_count(), 2);
}

#[tokio::test]
async fn reload_rebuilds_the_runtime_from_the_file() {
    let t = start(mk_base()).await;
    let rt = "/services/haproxy/runtime";
    let r = t
        .post(
            &format!("{rt}/backends/svc/servers"),
            json!({"name": "rt1", "address": "10.0.3.1", "port": 80}),
        )
        .await;
    assert_eq!(r.status, 201);
    let list = t.get(&format!("{rt}/backends/svc/servers")).await;
    assert_eq!(list.body[1]["admin_state"], json!("maint"));
    assert_eq!(
        t.post(
            &format!("{rt}/backends/svc/servers"),
            json!({"name": "rt1", "address": "10.0.3.1"})
        )
        .await
        .status,
        409
    );
    let r = t
        .put(
            &format!("{rt}/backends/svc/servers/rt1"),
            json!({"admin_state": "ready"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["admin_state"].clone()),
        (200, json!("ready"))
    );

    let entries = format!("{rt}/maps/hosts.map/entries");
    // force_sync writes the running map (all of it) to the file; later entries stay runtime-only.
    assert_eq!(
        t.post(
            &format!("{entries}?force_sync=true"),
            json!({"key": "c.example", "value": "svc"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        t.post(&entries, json!({"key": "b.example", "value": "svc"}))
            .await
            .status,
        201
    );
    assert_eq!(
        t.post(&entries, json!({"key": "c.example", "value": "x"}))
            .await
            .status,
        409
    );
    assert_eq!(
        t.get(&format!("{entries}/b.example")).await.body["value"],
        json!("svc")
    );
    // A map file HAProxy did not load at the last reload.
    assert_eq!(
        t.post(
            &format!("{rt}/maps/other.map/entries"),
            json!({"key": "k", "value": "v"})
        )
        .await
        .status,
        400
    );
    assert_eq!(t.get(&format!("{rt}/maps/other/entries")).await.status, 404);
    assert_eq!(t.dp.version(), 1);

    let r = t
        .put(
            &format!("{CONF}/backends/custom?version=1"),
            json!({"name": "custom"}),
        )
        .await;
    assert_eq!(r.status, 202);
    t.dp.wait_reloads_idle().await;
    assert!(
        t.dp.runtime_server("svc", "rt1").is_none(),
        "runtime-only server lost"
    );
    let hosts = t.get(&entries).await.body;
    let keys: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["a.example", "c.example"],
        "unsynced entry lost, synced one kept"
    );
    assert!(
        t.dp.map_file("hosts.map")
            .unwrap()
            .contains("c.example svc")
    );
    // Backend PUT replaces the whole section: hand-set timeouts are gone, children kept.
    let custom = t
        .get(&format!("{CONF}/backends/custom?full_section=true"))
        .await
        .body;
    assert_eq!(custom.get("connect_timeout"), None);
    assert!(custom["servers"]["static1"].is_object());
}

#[tokio::test]
async fn runtime_server_errors_follow_haproxy() {
    let t = start(mk_base()).await;
    let rt = "/services/haproxy/runtime/backends";
    assert_eq!(t.get(&format!("{rt}/nope/servers")).await.status, 404);
    let r = t.get(&format!("{rt}/svc/servers/zz")).await;
    assert_eq!(
        (r.status, r.msg()),
        (404, "no data for svc/zz: not found".to_string())
    );
    let r = t
        .put(
            &format!("{rt}/svc/servers/s1"),
            json!({"admin_state": "drain", "weight": 3}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, 616));
    let r = t
        .put(
            &format!("{rt}/svc/servers/s1"),
            json!({"name": "s1", "admin_state": "drain"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, 619), "readOnly field");
    assert_eq!(
        t.put(
            &format!("{rt}/svc/servers/s1"),
            json!({"admin_state": "drain"})
        )
        .await
        .status,
        200
    );
    t.dp.set_sessions("svc", "s1", 3);
    let r = t.delete(&format!("{rt}/svc/servers/s1")).await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.msg(),
        "Server still has connections attached to it, cannot remove it. [del server svc/s1]"
    );
    assert_eq!(
        t.dp.runtime_server("svc", "s1").unwrap().admin_state,
        "maint",
        "disabled before del"
    );
    t.dp.set_sessions("svc", "s1", 0);
    assert_eq!(t.delete(&format!("{rt}/svc/servers/s1")).await.status, 204);
    assert_eq!(
        t.dp.runtime_commands(),
        [
            "set server svc/s1 state drain",
            "disable server svc/s1",
            "del server svc/s1",
            "del server svc/s1"
        ]
    );
    assert_eq!(t.dp.version(), 1);
}

#[tokio::test]
async fn a_failed_reload_restores_the_last_good_file_and_version() {
    let t = start(mk_base()).await;
    t.dp.fail_next_reload();
    let r = t
        .post(&format!("{CONF}/backends?version=1"), backend("web"))
        .await;
    assert_eq!(r.version(), 2);
    let id = r.h("Reload-ID").unwrap();
    t.dp.wait_reloads_idle().await;
    let status = t.get(&format!("/services/haproxy/reloads/{id}")).await;
    assert_eq!(status.body["status"], json!("failed"));
    assert_eq!(t.dp.version(), 1);
    assert_eq!(t.get(&format!("{CONF}/backends/web")).await.status, 404);
    assert!(!t.dp.reloads()[0].succeeded);

    t.dp.fail_next_reload();
    let r = t
        .post(
            &format!("{CONF}/backends?version=1&force_reload=true"),
            backend("web"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.msg().starts_with("Reload failed: "), "{}", r.msg());
    assert_eq!(t.dp.version(), 1);
}

#[tokio::test]
async fn bodies_are_validated_against_the_spec() {
    let t = start(mk_base()).await;
    let b = format!("{CONF}/backends?version=1");
    let s = format!("{CONF}/backends/svc/servers?version=1");

    let cases: Vec<(String, Value, u16, i64, &str)> = vec![
        (
            b.clone(),
            json!({"name": "web", "timeout_connect": 5}),
            422,
            616,
            "unknown field `timeout_connect`",
        ),
        (
            b.clone(),
            json!({"name": "web", "mode": "https"}),
            422,
            606,
            "mode in body should be one of [http tcp log]",
        ),
        (
            b.clone(),
            json!({"name": "web one"}),
            422,
            605,
            "name in body should match '^[A-Za-z0-9-_.:]+$'",
        ),
        (
            b.clone(),
            json!({"name": "web", "balance": {"algorithm": "rr"}}),
            422,
            606,
            "balance.algorithm",
        ),
        (
            b.clone(),
            json!({"name": "web", "connect_timeout": "5s"}),
            400,
            400,
            "connect_timeout",
        ),
        (
            b.clone(),
            json!({"name": "web", "default_server": {"check": true}}),
            400,
            400,
            "default_server.check",
        ),
        (
            b.clone(),
            json!({"name": "web", "httpchk_params": {"method": "GET", "uri": "/a b"}}),
            422,
            605,
            "httpchk_params.uri",
        ),
        (
            b.clone(),
            json!({"mode": "http"}),
            422,
            602,
            "name in body is required",
        ),
        (
            s.clone(),
            json!({"name": "x", "address": "10.0.0.1", "check": true}),
            400,
            400,
            "check",
        ),
        (
            s.clone(),
            json!({"name": "x", "address": "10.0.0.1", "port": 70000}),
            422,
            608,
            "port in body should be less than or equal to 65535",
        ),
        (
            s.clone(),
            json!({"name": "x", "address": "10.0.0.1", "port": 0}),
            422,
            609,
            "port",
        ),
        (
            s.clone(),
            json!({"name": "x"}),
            422,
            602,
            "address in body is required",
        ),
        (
            s.clone(),
            json!({"name": "x", "address": "10.0.0.1", "maintenance": "on"}),
            422,
            606,
            "maintenance",
        ),
        (
            format!("{CONF}/backends/svc/http_checks?version=1"),
            json!([{"type": "expect", "pattern": "200"}]),
            422,
            602,
            "match in body is required",
        ),
        (
            format!("{CONF}/backends/svc/http_checks?version=1"),
            json!([{"type": "send", "headers": [{"name": "Host"}]}]),
            422,
            602,
            "fmt in body is required",
        ),
        (
            format!("{CONF}/frontends/http-in/backend_switching_rules/0?version=1"),
            json!({"name": "svc", "cond": "when", "cond_test": "x"}),
            422,
            606,
            "cond",
        ),
        (
            format!("{CONF}/frontends/http-in/acls/0?version=1"),
            json!({"acl_name": "a"}),
            422,
            602,
            "criterion in body is required",
        ),
        (
            "/services/haproxy/runtime/maps/hosts.map/entries".to_string(),
            json!({"id": "1", "key": "k", "value": "v"}),
            422,
            619,
            "id in body is readOnly",
        ),
    ];
    for (path, body, status, code, text) in &cases {
        let r = if path.contains("/http_checks?") {
            t.put(path, body.clone()).await
        } else {
            t.post(path, body.clone()).await
        };
        assert_eq!(
            (r.status, r.code()),
            (*status, *code),
            "{path} {body}: {}",
            r.msg()
        );
        assert!(r.msg().contains(text), "{path} {body}: {}", r.msg());
    }
    assert_eq!(t.dp.validation_failures().len(), cases.len());

    let r = t.raw(Method::POST, &b, "application/json", "").await;
    assert_eq!(
        (r.status, r.code(), r.msg()),
        (422, 602, "data in body is required".to_string())
    );
    let r = t
        .raw(Method::POST, &b, "text/plain", "{\"name\":\"web\"}")
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(t.dp.version(), 1, "no rejected body changed anything");
    assert_eq!(t.dp.total_requests(), cases.len() as u64 + 2);
}

#[tokio::test]
async fn haproxy_rejects_httpchk_host_at_commit() {
    let t = start(mk_base()).await;
    let id = t
        .post("/services/haproxy/transactions?version=1", json!(null))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = json!({"name": "svc", "mode": "http", "adv_check": "httpchk",
                     "httpchk_params": {"method": "GET", "uri": "/health", "version": "HTTP/1.1", "host": "a.example"}});
    let r = t
        .put(
            &format!("{CONF}/backends/svc?transaction_id={id}"),
            bad.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "the schema allows host");
    let r = t
        .put(&format!("/services/haproxy/transactions/{id}"), json!(null))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.msg().starts_with("validation error: "), "{}", r.msg());
    assert!(
        r.msg()
            .contains("'option httpchk' cannot handle unexpected argument 'a.example'")
    );
    assert_eq!(
        t.get(&format!("/services/haproxy/transactions/{id}"))
            .await
            .body["status"],
        json!("failed")
    );
    assert_eq!(
        t.put(&format!("/services/haproxy/transactions/{id}"), json!(null))
            .await
            .status,
        406
    );

    let r = t.put(&format!("{CONF}/backends/svc?version=1"), bad).await;
    assert_eq!(r.status, 400);
    assert!(r.msg().starts_with("validation error: "));
    assert_eq!(t.dp.version(), 1);
    assert_eq!(t.dp.commit_count(), 0);
    assert_eq!(t.dp.reload_count(), 0);

    // A use_backend naming a missing backend fails the same way.
    let r = t
        .post(
            &format!("{CONF}/frontends/http-in/backend_switching_rules/0?version=1"),
            json!({"name": "ghost", "cond": "if", "cond_test": "is_api"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.msg()
            .contains("unable to find required use_backend: 'ghost'")
    );
}

#[tokio::test]
async fn missing_objects_and_index_addressed_lists() {
    let t = start_manual(mk_base()).await;
    let r = t.get(&format!("{CONF}/backends/nope")).await;
    assert_eq!(
        (r.status, r.msg()),
        (
            404,
            "missing object: Backend nope does not exist".to_string()
        )
    );
    let r = t.get(&format!("{CONF}/backends/svc/servers/nope")).await;
    assert_eq!(
        (r.status, r.msg()),
        (
            404,
            "missing object: server nope does not exist in svc backend".to_string()
        )
    );
    let r = t.get(&format!("{CONF}/backends/nope/servers")).await;
    assert_eq!((r.status, r.body), (200, json!([])));

    let acls = format!("{CONF}/frontends/http-in/acls");
    assert_eq!(t.get(&acls).await.body.as_array().unwrap().len(), 1);
    assert_eq!(t.get(&format!("{acls}/5")).await.status, 404);
    let acl = json!({"acl_name": "is_b", "criterion": "hdr(host)", "value": "-i b.example"});
    assert_eq!(
        t.put(&format!("{acls}/5?version=1"), acl.clone())
            .await
            .status,
        404
    );
    assert_eq!(t.delete(&format!("{acls}/5?version=1")).await.status, 404);
    assert_eq!(
        t.post(&format!("{acls}/5?version=1"), acl.clone())
            .await
            .status,
        400
    );
    assert_eq!(
        t.get(&format!("{CONF}/frontends/nope/acls/0")).await.status,
        400
    );
    let r = t.post(&format!("{acls}/1?version=1"), acl).await;
    assert_eq!((r.status, r.version()), (202, 2));
    assert!(r.h("Reload-ID").is_some());

    // Inserting the one owned rule at index 0 leaves the hand-written rules intact, shifted.
    let rules = format!("{CONF}/frontends/http-in/backend_switching_rules");
    let r = t
        .post(
            &format!("{rules}/0?version=2"),
            json!({"name": "svc", "cond": "if", "cond_test": "is_b"}),
        )
        .await;
    assert_eq!(r.status, 202);
    let list = t.get(&rules).await.body;
    assert_eq!(list[1]["name"], json!(HOSTS_MAP));
    assert_eq!(
        list[2],
        json!({"name": "custom", "cond": "if", "cond_test": "is_api METH_GET"})
    );
    let fe = t
        .get(&format!("{CONF}/frontends/http-in?full_section=true"))
        .await
        .body;
    assert_eq!(
        fe["backend_switching_rule_list"].as_array().unwrap().len(),
        3
    );
    assert_eq!(fe["default_backend"], json!("custom"));
    t.dp.flush_reloads();
    assert_eq!(t.dp.reload_count(), 1);
}

#[tokio::test]
async fn restart_from_base_resets_file_version_and_runtime() {
    let t = start(mk_base()).await;
    let base = t.dp.config_snapshot();
    assert_eq!(
        t.post(&format!("{CONF}/backends?version=1"), backend("web"))
            .await
            .status,
        202
    );
    t.dp.wait_reloads_idle().await;
    assert!(t.dp.runtime_snapshot()["backends"]["web"].is_array());
    t.dp.reset_to_base();
    assert_eq!(t.dp.config_snapshot(), base);
    assert_eq!(t.dp.version(), 1);
    assert!(t.dp.runtime_snapshot()["backends"].get("web").is_none());
    assert_eq!(
        t.get(&format!("{CONF}/backends"))
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// Map entries go through HAProxy's CLI the way client-native sends them: unescaped, so the CLI's
/// backslash removal and word splitting apply to what is stored, `show map` is read back with
/// whitespace splitting, and the `{id}` path parameter has the spec's pattern.
#[tokio::test]
async fn map_entries_pass_through_the_cli_unescaping() {
    let t = start(mk_base()).await;
    let entries = "/services/haproxy/runtime/maps/hosts.map/entries";
    let keys = |body: &Value| -> Vec<(String, String)> {
        body.as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    // A regex key sent as is loses its backslashes (what real DPAPI does).
    let r = t
        .post(entries, json!({"key": r"^api\.ex\.com$", "value": "svc"}))
        .await;
    assert_eq!(r.status, 201);
    // Escaped for the CLI, it is stored exactly.
    let r = t
        .post(entries, json!({"key": r"^b\\.ex\\.com", "value": "svc"}))
        .await;
    assert_eq!(r.status, 201);
    // An unescaped space splits the key: key `a`, value `b`.
    let r = t.post(entries, json!({"key": "a b", "value": "svc"})).await;
    assert_eq!(r.status, 201);
    // An unescaped `;` ends the command early: `add map` misses its value.
    let r = t.post(entries, json!({"key": "x;y", "value": "svc"})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let stored = keys(&t.get(entries).await.body);
    for want in [("^api.ex.com$", "svc"), (r"^b\.ex\.com", "svc"), ("a", "b")] {
        assert!(
            stored.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {stored:?}"
        );
    }
    assert!(
        !stored.iter().any(|(k, _)| k.starts_with('x')),
        "{stored:?}"
    );
    let cmds = t.dp.runtime_commands();
    assert!(
        cmds.contains(&r"add map /etc/haproxy/maps/hosts.map ^b\\.ex\\.com svc".to_string()),
        "{cmds:?}"
    );

    // `{id}` is the key as sent to `set map`/`del map`: escaped, it finds the stored key.
    let by_key = format!("{entries}/%5Eb%5C%5C.ex%5C%5C.com");
    let r = t.put(&by_key, json!({"value": "other"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(keys(&t.get(entries).await.body).contains(&(r"^b\.ex\.com".into(), "other".into())));
    // Unescaped, the CLI removes the backslashes and nothing matches.
    let r = t.delete(&format!("{entries}/%5Eb%5C.ex%5C.com")).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = t.delete(&by_key).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert!(
        !keys(&t.get(entries).await.body)
            .iter()
            .any(|(k, _)| k.starts_with("^b"))
    );
    // `get map` with an escaped id never reports the entry (client-native compares the stored
    // key with the id as sent).
    t.post(entries, json!({"key": r"c\\.ex", "value": "svc"}))
        .await;
    assert_eq!(t.get(&format!("{entries}/c%5C%5C.ex")).await.status, 404);
    assert_eq!(
        t.get(&format!("{entries}/a")).await.body["value"],
        json!("b")
    );

    // The spec's path pattern on `{id}` refuses `$`, `#`, `*`, `{`, `<`, … with 422.
    for id in ["%5Eapi.ex.com%24", "a%23b", "a%2A", "x%3C%3C"] {
        let r = t.delete(&format!("{entries}/{id}")).await;
        assert_eq!(r.status, 422, "{id}: {:?}", r.body);
        let r = t
            .put(&format!("{entries}/{id}"), json!({"value": "v"}))
            .await;
        assert_eq!(r.status, 422, "{id}: {:?}", r.body);
    }
    // A value ending in `<<` makes 2.6 wait for a payload: nothing runs, yet the API succeeds.
    let r = t
        .put(&format!("{entries}/a"), json!({"value": "z<<"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.get(&format!("{entries}/a")).await.body["value"],
        json!("b")
    );
}

#[tokio::test]
async fn haproxy_rejects_timers_past_its_range_at_commit() {
    let t = start(mk_base()).await;
    let r = t
        .post(
            &format!("{CONF}/backends?version=1"),
            json!({"name": "slow", "mode": "http", "balance": {"algorithm": "roundrobin"}}),
        )
        .await;
    assert!(r.status < 300, "{}", r.msg());
    let version = t.dp.version();
    // 600 h: over 2^31-1 ms.
    let r = t
        .post(
            &format!("{CONF}/backends/slow/servers?version={version}"),
            json!({"name": "s1", "address": "10.0.0.1", "port": 80, "check": "enabled", "inter": 2_160_000_000i64}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.msg());
    assert!(r.msg().starts_with("validation error: "), "{}", r.msg());
    assert!(r.msg().contains("timer overflow"), "{}", r.msg());
    // 24 h is fine.
    let r = t
        .post(
            &format!("{CONF}/backends/slow/servers?version={version}"),
            json!({"name": "s1", "address": "10.0.0.1", "port": 80, "check": "enabled", "inter": 86_400_000i64}),
        )
        .await;
    assert!(r.status < 300, "{}", r.msg());
}

#[tokio::test]
async fn storage_maps_are_created_by_multipart_upload_and_rules_need_their_files() {
    let t = start(mk_base()).await;
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"file_upload\"; filename=\"new.map\"\r\nContent-Type: text/plain\r\n\r\nk.example custom\n\r\n--XyZ--\r\n";
    let r = t
        .raw(
            Method::POST,
            "/services/haproxy/storage/maps",
            "multipart/form-data; boundary=XyZ",
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["storage_name"], "new.map");
    assert!(r.body.get("id").is_none(), "not loaded: no runtime id");
    assert_eq!(
        t.dp.map_file("new.map").as_deref(),
        Some("k.example custom\n")
    );
    // Uploading it again is a conflict; a body that is not multipart is a bad request.
    let again = t
        .raw(
            Method::POST,
            "/services/haproxy/storage/maps",
            "multipart/form-data; boundary=XyZ",
            body,
        )
        .await;
    assert_eq!(again.status, 409);
    let plain = t
        .raw(
            Method::POST,
            "/services/haproxy/storage/maps",
            "text/plain",
            "k v\n",
        )
        .await;
    assert_eq!(plain.status, 400);
    // A rule naming a map file that does not exist fails `haproxy -c` at commit.
    let version = t.dp.version();
    let r = t
        .post(
            &format!("{CONF}/frontends/http-in/backend_switching_rules/0?version={version}"),
            json!({"name": "%[req.hdr(host),lower,map(/etc/haproxy/maps/absent.map)]", "cond": "if",
                   "cond_test": "{ req.hdr(host),lower,map(/etc/haproxy/maps/absent.map) -m found }"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.msg().contains("failed to open pattern file"),
        "{}",
        r.msg()
    );
    // The uploaded one is fine.
    let r = t
        .post(
            &format!("{CONF}/frontends/http-in/backend_switching_rules/0?version={version}"),
            json!({"name": "%[req.hdr(host),lower,map(/etc/haproxy/maps/new.map)]", "cond": "if",
                   "cond_test": "{ req.hdr(host),lower,map(/etc/haproxy/maps/new.map) -m found }"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
}
