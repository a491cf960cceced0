//! The Data Plane API double behaves like the real API (CONTRACTS §2).
mod support;

#[tokio::test]
async fn placeholder_compiles() {
    let dp = support::dataplane::DataplaneDouble::start(
        support::dataplane::BaseConfig::new(),
        support::dataplane::Options::fast(),
    )
    .await;
    assert!(dp.url().starts_with("http://127.0.0.1:"));
}
