//! Client tests: URLs, configuration errors, transport errors and per-endpoint deadlines.

use super::*;
use crate::config::{Config, Layer, Secret};

fn config(address: &str) -> NomadConfig {
    let mut c = Config::from_layer(&Layer::default())
        .expect("defaults")
        .nomad;
    c.address = Url::parse(address).expect("url");
    c
}

#[test]
fn urls_carry_namespace_region_and_blocking_parameters() {
    let mut c = config("http://127.0.0.1:4646/prefix");
    c.region = Some("eu".into());
    let client = NomadClient::new(&c, Arc::default(), CallMetrics::disabled()).expect("client");
    let url = client.url(
        &["v1", "service", "a b/c"],
        &[("namespace", "*")],
        Some(Blocking {
            index: 42,
            wait: Duration::from_secs(900),
        }),
    );
    assert_eq!(
        url.as_str(),
        "http://127.0.0.1:4646/prefix/v1/service/a%20b%2Fc?namespace=*&region=eu&index=42&wait=300000ms"
    );
}

#[tokio::test]
async fn transport_errors_never_carry_the_urls_user_info() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = NomadClient::new(
        &config(&format!("http://ops:s3cr3t@127.0.0.1:{port}")),
        Arc::default(),
        CallMetrics::disabled(),
    )
    .expect("client");
    let e = client
        .list_services("*", None)
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, NomadError::Transport { .. }), "{e:?}");
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    assert!(!format!("{e:?}").contains("s3cr3t"), "{e:?}");
}

/// The event stream must answer with its headers within the slack (Nomad sends them at
/// once); a server that accepts and stays silent is a timeout, counted and timed as one.
#[tokio::test]
async fn a_silent_event_stream_times_out_after_the_slack_and_is_timed_as_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts and holds connections without ever answering.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let requests = prometheus::IntCounterVec::new(
        prometheus::Opts::new("r_total", "r"),
        &["endpoint", "status"],
    )
    .expect("counter");
    let durations = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("d_seconds", "d"),
        &["endpoint", "status"],
    )
    .expect("histogram");
    let slack = Duration::from_millis(300);
    let client = NomadClient::with_slack(
        &config(&format!("http://127.0.0.1:{port}")),
        Arc::default(),
        CallMetrics::new(requests.clone(), durations.clone(), None),
        slack,
    )
    .expect("client");
    let started = Instant::now();
    let e = client.event_stream("*", 0).await.expect_err("no answer");
    let took = started.elapsed();
    assert!(matches!(e, NomadError::Timeout { .. }), "{e:?}");
    assert!(took >= slack && took < slack * 10, "gave up after {took:?}");
    assert_eq!(requests.with_label_values(&["stream", "error"]).get(), 1);
    let h = durations.with_label_values(&["stream", "timeout"]);
    assert_eq!(h.get_sample_count(), 1);
    assert!(h.get_sample_sum() >= slack.as_secs_f64());
    assert_eq!(client.stats().snapshot().requests_to(Endpoint::Stream), 1);
    silent.abort();
}

#[test]
fn unix_addresses_use_a_local_base() {
    let client = NomadClient::new(
        &config("unix:///secrets/api.sock"),
        Arc::default(),
        CallMetrics::disabled(),
    )
    .expect("client");
    assert_eq!(client.base.as_str(), "http://localhost/");
}

#[test]
fn bad_token_and_missing_pem_are_config_errors() {
    let mut c = config("http://127.0.0.1:4646");
    c.token = Some(Secret::new("bad\ntoken"));
    let e = NomadClient::new(&c, Arc::default(), CallMetrics::disabled()).expect_err("bad token");
    assert!(matches!(e, NomadError::Config(_)), "{e}");
    assert!(!e.to_string().contains("bad\ntoken"));
    // The header error is kept below the setup error.
    assert!(
        matches!(e, NomadError::Config(SetupError::Token(_))),
        "{e:?}"
    );
    assert!(
        source_of::<reqwest::header::InvalidHeaderValue>(&e).is_some(),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "cannot set up the Nomad client: the Nomad token holds characters not allowed in an HTTP header"
    );

    let mut c = config("https://127.0.0.1:4646");
    c.tls.client_cert = Some("/nonexistent/cert.pem".into());
    c.tls.client_key = Some("/nonexistent/key.pem".into());
    let e = NomadClient::new(&c, Arc::default(), CallMetrics::disabled()).expect_err("missing PEM");
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    // The io::Error is kept, and the text still quotes it.
    assert!(
        matches!(&e, NomadError::Config(SetupError::Read { path, .. }) if path.as_os_str() == "/nonexistent/cert.pem"),
        "{e:?}"
    );
    let io = source_of::<std::io::Error>(&e).expect("the io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        format!("cannot set up the Nomad client: cannot read /nonexistent/cert.pem: {io}")
    );
}

/// The first error of type `T` in `e`'s source chain (below `e`).
fn source_of<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        next = s.source();
    }
    None
}

#[tokio::test]
async fn a_body_that_is_not_json_keeps_the_parse_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let body = "not json";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(answer.as_bytes()).await.expect("write");
    });
    let client = NomadClient::new(
        &config(&format!("http://127.0.0.1:{port}")),
        Arc::default(),
        CallMetrics::disabled(),
    )
    .expect("client");
    let e = client.leader().await.expect_err("not JSON");
    server.await.expect("server");
    assert!(matches!(e, NomadError::Decode { .. }), "{e:?}");
    let json = source_of::<serde_json::Error>(&e).expect("the parse error is the source");
    assert_eq!(
        e.to_string(),
        format!(
            "unexpected answer from Nomad to reading the leader status: the body is not the expected JSON: {json}"
        )
    );
}

#[test]
fn permission_error_names_namespace_and_capability() {
    let e = NomadError::PermissionDenied {
        what: "reading the service list in namespace `prod`".into(),
        namespace: "prod".into(),
        status: 403,
        message: "Permission denied".into(),
    };
    assert_eq!(
        e.to_string(),
        "Nomad denied reading the service list in namespace `prod` (403 Permission denied): the token needs the `read-job` capability on namespace `prod`"
    );
}
