//! The Nomad client against the double: every request is counted and timed, by endpoint and
//! status, through the metric handles the client was built with.

use std::sync::Arc;
use std::time::Duration;

use crate::support::expo;
use crate::support::nomad::{NomadDouble, Reg};
use haproxy_nomad_connector::config::{Config, Layer};
use haproxy_nomad_connector::metrics::Metrics;
use haproxy_nomad_connector::nomad::{Blocking, NomadClient, NomadStats};

#[tokio::test]
async fn requests_are_counted_and_timed_by_endpoint_and_status() {
    let double = NomadDouble::start().await;
    double.register([
        Reg::new("default", "web", "a", "10.0.0.5", 8080).tags(Some(&["haproxy.enable=true"]))
    ]);
    let metrics = Metrics::new("test").expect("metrics");
    let mut config = Config::from_layer(&Layer::default())
        .expect("defaults")
        .nomad;
    config.address = double.url().parse().expect("url");
    let client = NomadClient::with_slack(
        &config,
        Arc::new(NomadStats::default()),
        metrics.nomad_calls(),
        Duration::from_secs(2),
    )
    .expect("client");

    let list = client.list_services("*", None).await.expect("list");
    // A blocking list with nothing new returns after its wait: the histogram times the wait.
    let wait = Duration::from_millis(300);
    client
        .list_services(
            "*",
            Some(Blocking {
                index: list.index,
                wait,
            }),
        )
        .await
        .expect("blocking list");
    client
        .read_service("default", "web")
        .await
        .expect("service");
    assert_eq!(client.read_job("default", "gone").await.expect("job"), None);
    let stream = client.event_stream("*", 0).await.expect("stream");
    drop(stream);

    let text = metrics.try_render().expect("render");
    let f = expo::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let durations = &f["hnc_nomad_request_duration_seconds"];
    let timed = |endpoint: &str, status: &str| {
        durations
            .value(
                "hnc_nomad_request_duration_seconds_count",
                &[("endpoint", endpoint), ("status", status)],
            )
            .unwrap_or(0.0)
    };
    let counted = |endpoint: &str, status: &str| {
        f["hnc_nomad_requests_total"]
            .value(
                "hnc_nomad_requests_total",
                &[("endpoint", endpoint), ("status", status)],
            )
            .unwrap_or(0.0)
    };
    for (endpoint, status, n) in [
        ("list", "200", 2.0),
        ("service", "200", 1.0),
        ("job", "404", 1.0),
        ("stream", "200", 1.0),
    ] {
        assert_eq!(timed(endpoint, status), n, "{endpoint} {status}:\n{text}");
        assert_eq!(counted(endpoint, status), n, "{endpoint} {status}:\n{text}");
    }
    let list_secs = durations
        .value(
            "hnc_nomad_request_duration_seconds_sum",
            &[("endpoint", "list"), ("status", "200")],
        )
        .expect("sum");
    assert!(
        list_secs >= wait.as_secs_f64() * 0.9,
        "the blocking list's wait is in its duration: {list_secs}"
    );
}
