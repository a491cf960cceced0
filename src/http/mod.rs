//! The admin HTTP server: `/healthz`, `/readyz`, `/status` and `/metrics`.
//!
//! [`router`] builds the axum [`Router`] from an [`AppState`] (tests drive it with `oneshot`,
//! no socket); [`serve`] runs it on a listener until a shutdown future completes, within the
//! connection, header-read and request [`Limits`] described in [`server`]. Handlers only
//! read the [`Status`] board and the [`Metrics`] registry that the reconcile loop writes: no
//! handler does I/O or waits on the loop. Only `GET` and `HEAD` are routed (other methods get 405),
//! unknown paths 404. Responses carry no secrets: error texts are scrubbed when recorded (see
//! [`status::scrub`]) and the configuration is never shown.

pub mod server;
pub mod status;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
pub use server::{HEADER_READ_TIMEOUT, Limits, MAX_CONNECTIONS, REQUEST_TIMEOUT, SHUTDOWN_GRACE};
pub use status::{
    Condition, DriverState, Liveness, NomadState, NotReady, Readiness, Status, StatusView,
};

/// A failure of the HTTP server itself.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound (in use, not local, no permission). Not retryable.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where handlers read the time from.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Runs before each `/metrics` render, to copy in counts kept elsewhere (see
/// [`Metrics::sync_counter`]). It must be quick and must not block.
pub type ScrapeHook = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What the handlers share: the metrics, the status board, a clock and an optional scrape hook.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<Status>,
    clock: Clock,
    on_scrape: Option<ScrapeHook>,
}

impl AppState {
    /// State reading the real monotonic clock.
    pub fn new(metrics: Arc<Metrics>, status: Arc<Status>) -> AppState {
        AppState {
            metrics,
            status,
            clock: Arc::new(Instant::now),
            on_scrape: None,
        }
    }

    /// The same state calling `hook` before each `/metrics` render, for example to copy the
    /// watcher's event counters in with [`Metrics::sync_counter`].
    pub fn on_scrape(self, hook: impl Fn(&Metrics) + Send + Sync + 'static) -> AppState {
        AppState {
            on_scrape: Some(Arc::new(hook)),
            ..self
        }
    }

    /// The same state reading time from `clock` (tests pass a fake one).
    pub fn with_clock(self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> AppState {
        AppState {
            clock: Arc::new(clock),
            ..self
        }
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("metrics", &self.metrics)
            .field("status", &self.status)
            .field("on_scrape", &self.on_scrape.is_some())
            .finish_non_exhaustive()
    }
}

/// The admin router. `GET` and `HEAD` only.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_doc))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves [`router`] on `listener` with the default [`Limits`] until `shutdown` completes, then
/// lets requests in flight finish for up to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// [`serve`] with another grace period.
pub async fn serve_with_grace(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), HttpError> {
    let limits = Limits {
        shutdown_grace: grace,
        ..Limits::default()
    };
    serve_with(listener, state, shutdown, limits).await
}

/// [`serve`] within other limits (see [`server`] for what each does).
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            max_connections = limits.max_connections,
            header_read_timeout_ms = limits.header_read_timeout.as_millis(),
            request_timeout_ms = limits.request_timeout.as_millis(),
            "admin HTTP server listening"
        );
    }
    server::serve_router(listener, router(state), shutdown, limits).await;
    Ok(())
}

/// `GET /healthz`: 200 while the loop's last heartbeat is recent, else 503.
async fn healthz(State(state): State<AppState>) -> Response {
    let live = state.status.liveness(state.now());
    let code = if live.alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "alive": live.alive,
        "seconds_since_heartbeat": live.since_heartbeat.as_secs_f64(),
    });
    (code, Json(body)).into_response()
}

/// `GET /readyz`: 200 `{"ready":true}`, or 503 `{"ready":false,"reasons":[…]}`.
async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.status.readiness(state.now());
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

/// `GET /status`: the whole board as JSON.
async fn status_doc(State(state): State<AppState>) -> Response {
    Json(state.status.view(state.now())).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(hook) = &state.on_scrape {
        hook(&state.metrics);
    }
    match state.metrics.try_render() {
        Ok(text) => ([(header::CONTENT_TYPE, state.metrics.content_type())], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Logs each request at debug level (probes are frequent), failures at warn.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let status = response.status();
    if status.is_server_error() && path != "/healthz" && path != "/readyz" {
        tracing::warn!(%method, %path, status = status.as_u16(), "admin request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), "admin request");
    }
    response
}

#[cfg(test)]
mod tests;
