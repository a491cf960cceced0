//! The admin server under a flood of idle connections, over real TCP: probes and scrapes keep
//! being answered at once, the server never holds more than its connection limit, and the idle
//! connections it holds are closed by the header-read timeout.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use haproxy_nomad_connector::http::{self, AppState, Limits, MAX_CONNECTIONS, Status};
use haproxy_nomad_connector::metrics::Metrics;
use haproxy_nomad_connector::reconcile::{PassReport, PassResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::limits::raise_open_files;

const IDLE: usize = 2_000;
/// How quickly a probe must be answered while the idle connections are open.
const PROMPT: Duration = Duration::from_secs(2);

/// One `GET` with `Connection: close`: the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// Whether the server still holds the connection open (nothing to read, no end of stream).
fn open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_stop_readyz_or_metrics() {
    // This process holds both ends of the connections.
    raise_open_files(8_192);
    let status = Arc::new(Status::new(Duration::from_secs(30), Instant::now()));
    status.record_pass(
        &PassReport::new(
            PassResult::Success,
            SystemTime::now(),
            Duration::from_millis(1),
        ),
        Instant::now(),
    );
    let metrics = Arc::new(Metrics::new("9.9.9").expect("metrics"));
    let listener = http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The shipped limits, with a shorter header-read timeout to keep the test short.
    let header_read_timeout = Duration::from_secs(3);
    let limits = Limits {
        header_read_timeout,
        ..Limits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve_with(
        listener,
        AppState::new(metrics, status),
        async {
            let _ = stopped.await;
        },
        limits,
    ));

    // Connections that never send a byte.
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i} not accepted within {PROMPT:?}"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        idle.push(stream);
    }
    let flooded = Instant::now();

    // Probes and scrapes are answered at once while all of them are open.
    for path in ["/readyz", "/metrics", "/healthz", "/readyz", "/metrics"] {
        let started = Instant::now();
        let (status, body) = tokio::time::timeout(PROMPT, get(addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path} not answered within {PROMPT:?}"));
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
        match path {
            "/readyz" => assert_eq!(body, "{\"ready\":true}"),
            "/metrics" => assert!(
                body.contains("hnc_build_info{version=\"9.9.9\"} 1"),
                "{body}"
            ),
            _ => {}
        }
        assert!(
            started.elapsed() < PROMPT,
            "{path}: {:?}",
            started.elapsed()
        );
    }

    // The server holds at most its limit: the connections idle the longest were closed to
    // make room (each probe was accepted after every idle connection, so all were seen).
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut held = idle.iter().filter(|s| open(s)).count();
    while held > MAX_CONNECTIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        held = idle.iter().filter(|s| open(s)).count();
    }
    assert!(
        held <= MAX_CONNECTIONS,
        "{held} idle connections still held"
    );
    assert!(
        held > 0,
        "the newest idle connections wait for the header-read timeout"
    );
    assert!(
        flooded.elapsed() < header_read_timeout,
        "the probes ran before the timeout could have closed anything"
    );

    // The header-read timeout closes the rest.
    let deadline = flooded + header_read_timeout + Duration::from_secs(5);
    for (i, stream) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 64];
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("connection {i} received {n} bytes without asking"),
            Err(_) => panic!("connection {i} still open after the header-read timeout"),
        }
    }
    drop(idle);

    // And the server still serves, and stops when asked.
    let (status, _) = tokio::time::timeout(PROMPT, get(addr, "/readyz"))
        .await
        .expect("answered after the flood");
    assert_eq!(status, "HTTP/1.1 200 OK");
    stop.send(()).expect("server running");
    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("server task");
    assert!(result.is_ok(), "{result:?}");
}
