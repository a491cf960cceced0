//! Data Plane API errors: every answer that is not a success becomes a typed error carrying the
//! API's own message (`{"code": …, "message": …}`), and maps onto the driver's error kinds.
//! Transport failures and answers of the wrong shape keep the error that caused them as their
//! source.

use super::objects::wire::ApiError;
use super::segment::SegmentError;
use crate::haproxy::{Cause, DriverError};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// 401: bad or missing credentials.
    #[error(
        "the Data Plane API refused the credentials (401): {message}; check haproxy.username and haproxy.password"
    )]
    Unauthorized { message: String },
    /// 404: the object does not exist.
    #[error("not found (404): {message}")]
    NotFound { message: String },
    /// 409: version mismatch or object already exists.
    #[error("conflict (409): {message}")]
    Conflict { message: String },
    /// 406: the transaction is outdated or failed.
    #[error("transaction cannot be committed (406): {message}")]
    Outdated { message: String },
    /// 400, 415, 422: the request was invalid, or HAProxy rejected the configuration.
    #[error("rejected ({status}): {message}")]
    Invalid { status: u16, message: String },
    /// 429: too many open transactions.
    #[error("too many open transactions (429): {message}")]
    TooManyTransactions { message: String },
    /// 5xx.
    #[error("Data Plane API error ({status}): {message}")]
    Server { status: u16, message: String },
    /// The request timed out. `detail` is the whole chain of causes, without the request URL.
    #[error("request timed out: {detail}")]
    Timeout {
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API could not be reached. `detail` is the whole chain of causes, without the request
    /// URL.
    #[error("cannot reach the Data Plane API: {detail}")]
    Transport {
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    /// A request URL could not be built (a key or name no URL segment can carry); nothing was
    /// sent.
    #[error("cannot build the request URL: {0}")]
    Segment(#[from] SegmentError),
    /// The API is not a version the connector speaks (not 3.x).
    #[error("unsupported Data Plane API: {0}")]
    Unsupported(String),
    /// A success answer that does not have the expected shape.
    #[error("unexpected answer from the Data Plane API: {0}")]
    Protocol(String),
    /// A success answer whose body is not the object the spec gives for `endpoint`: `path` is the
    /// field that does not fit (`.` for the body itself), the source says how.
    #[error("unexpected answer from the Data Plane API ({endpoint}) at `{path}`: {source}")]
    Decode {
        endpoint: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// A request body could not be serialised (nothing was sent).
    #[error("cannot serialise the request body for {endpoint}: {source}")]
    Encode {
        endpoint: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl DataplaneError {
    /// The error for a non-success `status` with `body` (JSON `{"code","message"}`, or any text).
    pub fn from_status(status: u16, body: &str) -> DataplaneError {
        let message = serde_json::from_str::<ApiError>(body)
            .ok()
            .and_then(|e| e.message)
            .unwrap_or_else(|| {
                let t = body.trim();
                if t.is_empty() {
                    format!("HTTP {status}")
                } else {
                    t.to_string()
                }
            });
        match status {
            401 => DataplaneError::Unauthorized { message },
            404 => DataplaneError::NotFound { message },
            406 => DataplaneError::Outdated { message },
            409 => DataplaneError::Conflict { message },
            429 => DataplaneError::TooManyTransactions { message },
            500..=599 => DataplaneError::Server { status, message },
            _ => DataplaneError::Invalid { status, message },
        }
    }

    /// From a transport-level failure.
    /// The error's text without the request URL, which can carry user-info.
    pub fn from_reqwest(e: reqwest::Error) -> DataplaneError {
        let source = e.without_url();
        let detail = error_chain(&source);
        if source.is_timeout() {
            DataplaneError::Timeout { detail, source }
        } else {
            DataplaneError::Transport { detail, source }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<DataplaneError> for DriverError {
    /// The kind the error is, keeping it whole as the cause.
    fn from(e: DataplaneError) -> DriverError {
        let kind = match &e {
            DataplaneError::Conflict { .. } | DataplaneError::Outdated { .. } => {
                DriverError::Conflict
            }
            DataplaneError::Timeout { .. } | DataplaneError::Transport { .. } => {
                DriverError::Unreachable
            }
            DataplaneError::Invalid { .. }
            | DataplaneError::NotFound { .. }
            | DataplaneError::Server { .. }
            | DataplaneError::Segment(_) => DriverError::Rejected,
            DataplaneError::Unauthorized { .. }
            | DataplaneError::TooManyTransactions { .. }
            | DataplaneError::Unsupported(_)
            | DataplaneError::Protocol(_)
            | DataplaneError::Decode { .. }
            | DataplaneError::Encode { .. } => DriverError::Other,
        };
        kind(Cause::Dataplane(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: DataplaneError) -> &'static str {
        DriverError::from(e).kind()
    }

    #[test]
    fn every_status_maps_to_a_typed_error_with_the_api_message() {
        let body = |code: u16, msg: &str| format!(r#"{{"code":{code},"message":"{msg}"}}"#);
        let e =
            DataplaneError::from_status(401, &body(401, "unauthenticated for invalid credentials"));
        assert!(
            matches!(&e, DataplaneError::Unauthorized { message }
                if message == "unauthenticated for invalid credentials"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("check haproxy.username and haproxy.password")
        );
        assert_eq!(kind(e), "other");

        let e = DataplaneError::from_status(
            404,
            &body(404, "missing object: Backend web does not exist"),
        );
        assert_eq!(
            e.to_string(),
            "not found (404): missing object: Backend web does not exist"
        );
        assert_eq!(kind(e), "rejected");

        let e = DataplaneError::from_status(
            409,
            &body(
                409,
                "version mismatch: version in configuration file is 8, given version is 7",
            ),
        );
        assert!(
            matches!(&e, DataplaneError::Conflict { message } if message.starts_with("version mismatch"))
        );
        assert_eq!(kind(e), "conflict");

        let e = DataplaneError::from_status(
            406,
            &body(406, "transaction abc is outdated and cannot be committed"),
        );
        assert!(matches!(&e, DataplaneError::Outdated { .. }));
        assert_eq!(kind(e), "conflict");

        let e =
            DataplaneError::from_status(422, r#"{"code":616,"message":"unknown field \"chek\""}"#);
        assert!(
            matches!(&e, DataplaneError::Invalid { status: 422, message }
                if message == "unknown field \"chek\""),
            "{e:?}"
        );
        assert_eq!(kind(e), "rejected");

        let e = DataplaneError::from_status(
            400,
            &body(400, "validation error: [ALERT] unexpected argument"),
        );
        assert!(matches!(&e, DataplaneError::Invalid { status: 400, .. }));

        let e = DataplaneError::from_status(
            429,
            &body(
                429,
                "cannot start a new transaction, reached the maximum amount of 20 active transactions available",
            ),
        );
        assert!(
            matches!(&e, DataplaneError::TooManyTransactions { message } if message.contains("maximum amount of 20"))
        );
        assert_eq!(kind(e), "other");

        let e = DataplaneError::from_status(503, "upstream gone");
        assert!(
            matches!(&e, DataplaneError::Server { status: 503, message } if message == "upstream gone"),
            "{e:?}"
        );
        let e = DataplaneError::from_status(500, "");
        assert_eq!(e.to_string(), "Data Plane API error (500): HTTP 500");
    }

    #[tokio::test]
    async fn timeouts_and_unreachable_hosts_are_transport_errors() {
        // A listener that accepts and never answers: the request times out.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(200))
            .build()
            .expect("client");
        let e = client
            .get(format!("http://{addr}/v3/info"))
            .send()
            .await
            .expect_err("times out");
        let e = DataplaneError::from_reqwest(e);
        assert!(matches!(e, DataplaneError::Timeout { .. }), "{e:?}");
        // The reqwest error is kept as the source.
        assert!(
            std::error::Error::source(&e).is_some(),
            "source kept: {e:?}"
        );
        assert_eq!(kind(e), "unreachable");
        hold.abort();

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = client
            .get(format!("http://admin:s3cr3t@127.0.0.1:{port}/v3/info"))
            .send()
            .await
            .expect_err("refused");
        let e = DataplaneError::from_reqwest(e);
        assert!(matches!(e, DataplaneError::Transport { .. }), "{e:?}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "source kept: {e:?}"
        );
        // The request URL (which may carry user-info) is not in the message.
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(!format!("{e:?}").contains("s3cr3t"), "{e:?}");
        assert_eq!(kind(e), "unreachable");
    }
}
