//! The admin server's connection handling: an accept loop over hyper's HTTP/1 connections, with
//! limits so that clients of the admin port (probes, scrapers, or anything that can reach it)
//! cannot take the connector's file descriptors or tasks away from its Nomad and HAProxy
//! connections.
//!
//! - **Connections**: at most [`Limits::max_connections`] are served at once (plus the one just
//!   accepted that waits for a slot). When all slots are taken, the connection idle the longest (no request in flight: it has sent nothing yet, sends
//!   its headers slowly, or waits between keep-alive requests) is closed to make room, so a flood
//!   of idle connections cannot lock probes out; a probe sends its request at once and is
//!   answered. Only when every connection has a request in flight does the server stop accepting
//!   until one finishes (the kernel's listen backlog holds the newcomers meanwhile).
//! - **Header read timeout**: a connection must deliver a request's complete headers within
//!   [`Limits::header_read_timeout`] of the server starting to wait for them (that includes the
//!   wait between keep-alive requests); otherwise it is closed.
//! - **Request timeout**: a handler taking longer than [`Limits::request_timeout`] is abandoned
//!   with `503`.
//! - **Shutdown**: the listener closes at once, idle connections are closed, requests in flight
//!   may finish within [`Limits::shutdown_grace`]; whatever is left then is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Default [`Limits::max_connections`]: far more than probes and scrapers need, far below the
/// usual 1024 open files of a service.
pub const MAX_CONNECTIONS: usize = 256;
/// Default [`Limits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`super::serve`] waits for requests in flight after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, for instance) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While every slot is taken by a request in flight: how often to look for an idle one again.
const FULL_RECHECK: Duration = Duration::from_millis(50);
/// At most one warning about the connection limit per this period.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The admin server's limits. [`Default`] gives the named constants of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most (at least 1).
    pub max_connections: usize,
    /// Time a connection has to deliver a request's headers, and to send the next request on a
    /// kept-alive connection.
    pub header_read_timeout: Duration,
    /// Time a handler may take.
    pub request_timeout: Duration,
    /// Time requests in flight may take to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being handled.
    in_flight: AtomicUsize,
    /// When the connection last became idle (accepted, or its last request answered).
    idle_since: Mutex<Instant>,
    /// Asked to close to make room.
    closing: AtomicBool,
    close: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks a request in flight on its connection for as long as it lives.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: &Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections, by id.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, id: u64, conn: Arc<Conn>) {
        self.lock().insert(id, conn);
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the connection idle the longest to close, unless one is closing already (its slot
    /// is about to be free, within the request timeout at worst). Does nothing while every
    /// connection has a request in flight.
    fn make_room(&self) {
        let conns = self.lock();
        if conns.values().any(|c| c.closing.load(Ordering::Acquire)) {
            return;
        }
        let victim = conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.idle_since());
        if let Some(c) = victim {
            c.closing.store(true, Ordering::Release);
            c.close.notify_one();
        }
    }
}

/// `router` with the per-request timeout.
pub(crate) fn limited(router: Router, limits: Limits) -> Router {
    router.layer(middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ))
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, limit_ms = limit.as_millis(), "admin request timed out");
            (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes (see the module
/// documentation).
pub(crate) async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let router = limited(router, limits);
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry::default());
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    'accept: loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an admin HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = tasks.join_next() => continue,
        };
        // A slot for it. Room is made only for a connection that is actually waiting, so a
        // newcomer is never closed before it had the chance to send its request.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|t| t.elapsed() >= FULL_WARNING_EVERY) {
                    tracing::warn!(
                        max_connections = max,
                        "admin HTTP server at its connection limit; closing the connections idle the longest to make room"
                    );
                    warned = Some(Instant::now());
                }
                loop {
                    registry.make_room();
                    tokio::select! {
                        slot = Arc::clone(&slots).acquire_owned() => match slot {
                            Ok(slot) => break slot,
                            // Never closed; stop serving rather than spin if it were.
                            Err(_) => break 'accept,
                        },
                        () = &mut shutdown => break 'accept,
                        Some(_) = tasks.join_next() => {}
                        () = tokio::time::sleep(FULL_RECHECK) => {}
                    }
                }
            }
        };
        next_id += 1;
        let conn = Arc::new(Conn::new());
        registry.insert(next_id, Arc::clone(&conn));
        tasks.spawn(connection(
            stream,
            router.clone(),
            conn,
            Arc::clone(&registry),
            next_id,
            stopping.clone(),
            limits.header_read_timeout,
            limits.request_timeout,
            slot,
        ));
    }
    drop(listener);
    // Nobody listening only means every connection has ended already.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_ms = limits.shutdown_grace.as_millis(),
            open = tasks.len(),
            "admin HTTP connections still open after the shutdown grace period; closing"
        );
        tasks.abort_all();
    }
}

/// Completes when the server stops (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Serves one connection until it ends, is asked to make room, or the server stops.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
    id: u64,
    mut stopping: watch::Receiver<bool>,
    header_read_timeout: Duration,
    close_grace: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let on_request = Arc::clone(&conn);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&on_request);
        let router = router.clone();
        async move {
            let response = router.oneshot(req).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let http = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    let result = tokio::select! {
        result = http.as_mut() => result,
        () = stopped(&mut stopping) => {
            http.as_mut().graceful_shutdown();
            http.as_mut().await
        }
        () = conn.close.notified() => {
            // Nothing runs on this connection while this branch does: idle now means no
            // request is cut off by dropping it.
            if conn.in_flight.load(Ordering::Acquire) == 0 {
                tracing::debug!("admin HTTP connection closed to make room");
                Ok(())
            } else {
                // Let the request in flight finish, within the request timeout: a client that
                // stops reading its answer must not hold the slot (and every later eviction,
                // which waits for a closing connection) forever.
                http.as_mut().graceful_shutdown();
                match tokio::time::timeout(close_grace, http.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::debug!("admin HTTP connection closed after its grace to make room");
                        Ok(())
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "admin HTTP connection ended with an error");
    }
    registry.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_is_abandoned_with_503() {
        let limits = Limits {
            request_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }));
        let app = limited(router, limits);
        let call = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .expect("request");
                app.oneshot(req).await.expect("infallible").status()
            }
        };
        let started = tokio::time::Instant::now();
        assert_eq!(call("/slow").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(call("/fast").await, StatusCode::OK);
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    /// At the limit, the idle connection is closed to make room, never the one with a request
    /// in flight; a newcomer is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_limit_the_idle_connection_makes_room_not_the_busy_one() {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let (r, e) = (Arc::clone(&release), Arc::clone(&entered));
        let router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let (r, e) = (Arc::clone(&r), Arc::clone(&e));
                    async move {
                        e.notify_one();
                        r.notified().await;
                        "slow done"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast done" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(
            listener,
            router,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        let request =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

        // The busy one: a request in flight.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(request("/slow").as_bytes())
            .await
            .expect("write");
        entered.notified().await;
        // The idle one: connected, silent.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A newcomer: served, at the idle one's expense.
        let mut newcomer = TcpStream::connect(addr).await.expect("connect");
        newcomer
            .write_all(request("/fast").as_bytes())
            .await
            .expect("write");
        let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut newcomer))
            .await
            .expect("newcomer answered");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("fast done"), "{answer}");
        let closed = tokio::time::timeout(Duration::from_secs(5), read_all(&mut idle))
            .await
            .expect("idle connection closed");
        assert_eq!(closed, "", "closed without a response");
        // The busy request was not cut off.
        release.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_all(&mut busy))
            .await
            .expect("busy answered");
        assert!(answer.ends_with("slow done"), "{answer}");

        stop.send(()).expect("running");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .expect("task");
    }

    /// A kept-alive connection that sends no further request is closed by the header-read
    /// timeout; a request in flight at shutdown finishes within the grace period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_idles_out_and_shutdown_lets_requests_finish() {
        let release = Arc::new(Notify::new());
        let entered = Arc::new(Notify::new());
        let (r, e) = (Arc::clone(&release), Arc::clone(&entered));
        let router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let (r, e) = (Arc::clone(&r), Arc::clone(&e));
                    async move {
                        e.notify_one();
                        r.notified().await;
                        "slow done"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast done" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            header_read_timeout: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(5),
            ..Limits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(
            listener,
            router,
            async {
                let _ = stopped.await;
            },
            limits,
        ));

        let mut kept = TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let text = tokio::time::timeout(Duration::from_secs(5), read_all(&mut kept))
            .await
            .expect("closed after the header-read timeout");
        assert!(text.ends_with("fast done"), "{text}");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "kept alive first: {:?}",
            started.elapsed()
        );

        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        entered.notified().await;
        stop.send(()).expect("running");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener closes at once"
        );
        release.notify_one();
        let text = tokio::time::timeout(Duration::from_secs(5), read_all(&mut busy))
            .await
            .expect("answered during the grace period");
        assert!(text.ends_with("slow done"), "{text}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("stops once the request is done")
            .expect("task");
    }
}
