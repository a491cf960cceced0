//! The Nomad double itself answers as CONTRACTS.md §1 says Nomad does: a double that accepts what
//! Nomad rejects would hide bugs.

use std::time::Duration;

use crate::support::nomad::{NomadDouble, Options, RESUBSCRIBE, Reg};
use tokio::time::Instant;

async fn get(double: &NomadDouble, path: &str) -> (u16, Option<u64>, String) {
    let response = reqwest::get(format!("{}{path}", double.url()))
        .await
        .expect("request");
    let status = response.status().as_u16();
    let index = response
        .headers()
        .get("X-Nomad-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, index, response.text().await.expect("body"))
}

#[tokio::test]
async fn plain_text_errors_and_unknown_services() {
    let double = NomadDouble::start().await;
    assert_eq!(
        get(&double, "/v1/services?wait=soon&index=1").await,
        (400, None, "Invalid wait time".into())
    );
    assert_eq!(
        get(&double, "/v1/services?index=-1").await,
        (400, None, "Invalid index".into())
    );
    assert_eq!(
        get(&double, "/v1/service/nope").await,
        (200, Some(1), "[]".into()),
        "unknown service: 200 [] with the index floored at 1"
    );
    assert_eq!(get(&double, "/v1/service/").await.0, 400);
    assert_eq!(get(&double, "/v1/service/web/").await.0, 405);
    assert_eq!(
        get(&double, "/v1/event/stream?topic=Service:a:b").await,
        (400, None, "Invalid topic query: Service:a:b".into())
    );
    assert!(
        get(&double, "/v1/event/stream?topic=Service&index=x")
            .await
            .2
            .starts_with("Unable to parse index: ")
    );
    double.enable_acl();
    assert_eq!(
        get(&double, "/v1/services?namespace=default").await,
        (403, None, "Permission denied".into())
    );
    assert_eq!(
        get(&double, "/v1/services?namespace=*").await,
        (200, Some(0), "[]".into()),
        "`*` with nothing readable: [] at index 0"
    );
    assert_eq!(
        get(&double, "/v1/status/leader").await.2,
        "\"127.0.0.1:4647\""
    );
}

#[tokio::test]
async fn blocking_queries_on_the_table_wide_index() {
    // Indexes from 1, for readable numbers.
    let double = NomadDouble::start_with(Options {
        first_raft_index: 0,
        ..Options::default()
    })
    .await;
    double.register([Reg::new("default", "web", "a", "10.0.0.1", 1)]);
    double.register([Reg::new("prod", "api", "b", "10.0.0.2", 2)]);
    assert_eq!(double.table_index(), 2);

    // index=0 never blocks; an index below the current one returns at once.
    let t = Instant::now();
    assert_eq!(
        get(&double, "/v1/services?index=0&wait=5s").await.1,
        Some(2)
    );
    assert_eq!(
        get(&double, "/v1/service/web?index=1&wait=5s").await.1,
        Some(2)
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    // Timeout: 200 with the same data and index, after wait (+ up to wait/16).
    let t = Instant::now();
    let (status, index, body) = get(&double, "/v1/services?index=2&wait=300ms").await;
    assert_eq!((status, index), (200, Some(2)));
    assert!(
        body.contains("\"web\"") && !body.contains("\"api\""),
        "namespace defaults to default: {body}"
    );
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_millis(600));

    // A change anywhere moves the index seen on every service endpoint.
    let waiter = {
        let url = format!("{}/v1/service/web?index=2&wait=5s", double.url());
        tokio::spawn(async move {
            reqwest::get(url).await.expect("request").headers()["X-Nomad-Index"]
                .to_str()
                .map(str::to_string)
                .expect("header")
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    double.register([Reg::new("default", "web", "c", "10.0.0.3", 3)]);
    assert_eq!(waiter.await.expect("join"), "3");

    // An identical re-registration (tags compared as a set) changes nothing.
    let mut same = double.registrations()[&Reg::new("default", "web", "c", "", 0).id].clone();
    same.tags = Some(vec![
        "haproxy.enable=true".into(),
        "haproxy.enable=true".into(),
    ]);
    double.register([same]);
    assert_eq!(double.table_index(), 3);

    // `namespace=*` on the list only; literally on a service read.
    let (_, _, all) = get(&double, "/v1/services?namespace=*").await;
    assert!(
        all.contains("\"prod\"") && all.contains("\"default\""),
        "{all}"
    );
    assert_eq!(get(&double, "/v1/service/web?namespace=*").await.2, "[]");

    // Tags null survives as null.
    double.register([Reg::new("default", "bare", "d", "10.0.0.4", 4).tags(None)]);
    assert!(
        get(&double, "/v1/service/bare")
            .await
            .2
            .contains("\"Tags\":null")
    );
}

/// Reads a stream's body until `lines` complete lines (or EOF); returns them and whatever
/// trailing text followed the last newline.
async fn stream_lines(double: &NomadDouble, query: &str, lines: usize) -> (Vec<String>, String) {
    let mut response = reqwest::get(format!("{}/v1/event/stream?{query}", double.url()))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    loop {
        if text.matches('\n').count() >= lines {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    let mut parts: Vec<String> = text.split('\n').map(str::to_string).collect();
    let rest = parts.pop().unwrap_or_default();
    (parts, rest)
}

fn batch_index(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).expect("json")["Index"]
        .as_u64()
        .expect("index")
}

#[tokio::test]
async fn event_stream_heartbeat_and_index_rules() {
    let double = NomadDouble::start_with(Options {
        buffer_size: 3,
        first_raft_index: 0,
        ..Options::default()
    })
    .await;
    for n in 1..=5u16 {
        double.register([Reg::new("default", &format!("s{n}"), "a", "10.0.0.1", n)]);
    }
    // Buffer holds 3, 4, 5. index=0: from the oldest; `{}` comes first.
    let (lines, _) = stream_lines(&double, "topic=Service&index=0", 4).await;
    assert_eq!(lines[0], "{}");
    assert_eq!(
        lines[1..]
            .iter()
            .map(|l| batch_index(l))
            .collect::<Vec<_>>(),
        [3, 4, 5]
    );
    // Inclusive.
    let (lines, _) = stream_lines(&double, "topic=Service:*&index=4", 3).await;
    assert_eq!(
        lines[1..]
            .iter()
            .map(|l| batch_index(l))
            .collect::<Vec<_>>(),
        [4, 5]
    );
    // Older than the buffer: silently from the oldest.
    let (lines, _) = stream_lines(&double, "topic=Service&index=1", 4).await;
    assert_eq!(batch_index(&lines[1]), 3);
    // Newer than everything: the newest batch again.
    let (lines, _) = stream_lines(&double, "topic=Service&index=9", 2).await;
    assert_eq!(batch_index(&lines[1]), 5);
    // Another namespace sees nothing of default's; a key filter narrows.
    double.register([Reg::new("prod", "p", "b", "10.0.0.2", 9)]);
    let (lines, _) = stream_lines(&double, "topic=Service&namespace=prod&index=0", 2).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(batch_index(&lines[1]), 6);
    let (lines, _) = stream_lines(&double, "topic=Service:s4&index=0", 2).await;
    assert_eq!(batch_index(&lines[1]), 4);

    // A cut with error text: the raw text after the last line, then EOF.
    let url = format!("{}/v1/event/stream?topic=Service&index=6", double.url());
    let reader = tokio::spawn(async move {
        let mut response = reqwest::get(url).await.expect("request");
        let mut text = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    double.cut_streams_with_error(RESUBSCRIBE);
    let text = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .expect("EOF after the cut")
        .expect("join");
    assert!(text.starts_with("{}\n"), "{text}");
    assert!(text.ends_with(&format!("\n{RESUBSCRIBE}")), "{text}");

    // Deletions: AllocationUpdated events, and no event at all for GC.
    let id = Reg::new("default", "s5", "a", "", 0).id;
    double.delete_as_alloc_updated(&[&id]);
    let (lines, _) = stream_lines(&double, "topic=Service&index=7", 2).await;
    assert!(
        lines[1].contains("\"Type\":\"AllocationUpdated\""),
        "{}",
        lines[1]
    );
    let id = Reg::new("default", "s4", "a", "", 0).id;
    let before = double.table_index();
    double.delete_silently(&[&id]);
    assert_eq!(double.table_index(), before + 1);
    let (lines, _) = stream_lines(&double, &format!("topic=Service&index={}", before + 1), 2).await;
    assert_eq!(
        batch_index(&lines[1]),
        7,
        "no batch for the GC: the newest (7) is replayed"
    );
}

#[tokio::test]
async fn stream_acl_denials() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("reader", &["default"]);
    let client = reqwest::Client::new();
    let status = |token: &'static str, query: &'static str| {
        let request = client
            .get(format!("{}/v1/event/stream?{query}", double.url()))
            .header("X-Nomad-Token", token);
        async move { request.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(
        status("reader", "topic=Service&namespace=default").await,
        200
    );
    assert_eq!(status("reader", "topic=Service&namespace=prod").await, 403);
    assert_eq!(status("unknown", "topic=Service").await, 403);
    assert_eq!(
        status("reader", "index=0").await,
        403,
        "no topic means *: management only"
    );
    double.add_namespace("prod");
    assert_eq!(
        status("reader", "topic=Service&namespace=*").await,
        403,
        "1.9.6+: every namespace"
    );
}

/// A token losing `read-job` on one namespace (CONTRACTS §1.3, §1.9, §1.5): `*` lists silently
/// leave the namespace out with a normal index, a read of that namespace alone is 403, and an
/// open `*` stream (which needs every namespace) is closed with the resubscribe text while a
/// stream of a still-readable namespace carries on.
#[tokio::test]
async fn losing_read_on_one_namespace_filters_star_lists_and_denies_named_reads() {
    let double = NomadDouble::start().await;
    double.enable_acl();
    double.grant("t", &["default", "prod"]);
    double.register([Reg::new("default", "web", "a", "10.0.0.1", 1)]);
    double.register([Reg::new("prod", "api", "b", "10.0.0.2", 2)]);
    let client = reqwest::Client::new();
    let get_as = |path: String| {
        let request = client
            .get(format!("{}{path}", double.url()))
            .header("X-Nomad-Token", "t");
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let index = response
                .headers()
                .get("X-Nomad-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (status, index, response.text().await.expect("body"))
        }
    };
    let (status, _, body) = get_as("/v1/services?namespace=*".into()).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"prod\"") && body.contains("\"default\""),
        "{body}"
    );

    let mut star = client
        .get(format!(
            "{}/v1/event/stream?topic=Service&namespace=*",
            double.url()
        ))
        .header("X-Nomad-Token", "t")
        .send()
        .await
        .expect("stream");
    assert_eq!(star.status().as_u16(), 200);
    let mut default_only = client
        .get(format!(
            "{}/v1/event/stream?topic=Service&namespace=default",
            double.url()
        ))
        .header("X-Nomad-Token", "t")
        .send()
        .await
        .expect("stream");
    assert_eq!(default_only.status().as_u16(), 200);
    // Both got their first heartbeat.
    assert!(star.chunk().await.expect("chunk").is_some());
    assert!(default_only.chunk().await.expect("chunk").is_some());

    double.deny_namespace("prod", true);
    let table = double.table_index();
    let (status, index, body) = get_as("/v1/services?namespace=*".into()).await;
    assert_eq!(
        (status, index),
        (200, Some(table)),
        "filtered, not an error, and a normal index"
    );
    assert!(!body.contains("\"prod\""), "prod left out: {body}");
    assert!(body.contains("\"default\""), "{body}");
    assert_eq!(
        get_as("/v1/services?namespace=prod".into()).await,
        (403, None, "Permission denied".into()),
        "the namespace alone: 403"
    );
    assert_eq!(
        get_as("/v1/service/api?namespace=prod".into()).await,
        (403, None, "Permission denied".into())
    );

    // The policy change closes the `*` stream (no longer allowed) with Nomad's text.
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), star.chunk())
        .await
        .expect("the `*` stream ends")
        .expect("chunk")
    {
        rest.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&rest).ends_with(RESUBSCRIBE),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    // The default stream is still allowed and still delivers.
    double.register([Reg::new("default", "web", "c", "10.0.0.3", 3)]);
    let chunk = tokio::time::timeout(Duration::from_secs(5), default_only.chunk())
        .await
        .expect("the default stream lives on")
        .expect("chunk")
        .expect("data");
    assert!(
        String::from_utf8_lossy(&chunk).contains("\"Index\""),
        "{:?}",
        String::from_utf8_lossy(&chunk)
    );
    // Resubscribing to `*` is now refused (1.9.6+: every namespace).
    let again = client
        .get(format!(
            "{}/v1/event/stream?topic=Service&namespace=*",
            double.url()
        ))
        .header("X-Nomad-Token", "t")
        .send()
        .await
        .expect("stream");
    assert_eq!(again.status().as_u16(), 403);
}
