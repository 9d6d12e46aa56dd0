//! HTTP/1.1 keep-alive client with bounded retries.
//!
//! Retries cover what a restart of a service looks like from outside: connection refused or reset,
//! and 502/503/504. A 4xx is the caller's mistake and is returned at once; so is any other status.
//! Every write API of our services is idempotent on an exact resend (WAL appends of acknowledged
//! bytes, page uploads of the same image), so a request whose answer was lost may be sent again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid URL {0:?}: expected http://host:port (plain HTTP: https is not supported)")]
    InvalidUrl(String),
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered {status} {}: {}", body.error, body.message)]
    Status {
        url: String,
        status: StatusCode,
        body: ErrorBody,
    },
    #[error("cannot decode the answer of {url}: {message}")]
    Decode { url: String, message: String },
    #[error("gave up on {url} after {attempts} attempts over {elapsed:?}: {last}")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        elapsed: Duration,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// HTTP status of the answer, if the server answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The machine-readable error code of the server's answer (`stale_term`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { body, .. } => Some(&body.error),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The server no longer has the history asked for (410 Gone): GC or retention removed it
    /// (pageserver `below_gc_horizon`, walsync `wal_removed`). Retrying cannot help; ask for a
    /// newer point.
    pub fn is_gone(&self) -> bool {
        self.status() == Some(StatusCode::GONE)
    }

    fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => matches!(
                *status,
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ),
            _ => false,
        }
    }
}

/// How long and how often a request is retried. `max_elapsed` bounds the total time (DESIGN.md
/// invariant 6: block and retry within a bounded, configurable time, then fail).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Retry for up to `limit` in total (attempt count unbounded within it).
    pub fn for_duration(limit: Duration) -> Self {
        Self {
            max_attempts: u32::MAX,
            max_elapsed: limit,
            ..Self::default()
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A raw answer: status and body bytes (headers the callers need are copied out).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    /// All response headers (services put per-answer metadata there, e.g. a page's CRC-32C).
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Keep-alive client bound to one service base URL (`http://127.0.0.1:8081`).
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    inner: Client<HttpConnector, Full<Bytes>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("base", &self.base).finish()
    }
}

/// The `host:port` to connect to for `base_url` (`http://host[:port][/]`, port 80 by default),
/// and the authority as given (the `host` header value; `http://` + it is the normalized base URL).
/// The one check of base URLs, for the pooled client and the append stream alike.
pub(crate) fn http_authority(base_url: &str) -> Result<(String, String), ClientError> {
    let invalid = || ClientError::InvalidUrl(base_url.to_string());
    let authority = base_url
        .strip_prefix("http://")
        .ok_or_else(invalid)?
        .trim_end_matches('/');
    let bad_char = |c: char| c.is_whitespace() || "/?#@".contains(c);
    if authority.is_empty() || authority.contains(bad_char) {
        return Err(invalid());
    }
    // A port follows the last ':' unless that is inside an IPv6 literal ("[::1]").
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid());
            }
            true
        }
        _ => false,
    };
    let connect = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((connect, authority.to_string()))
}

impl HttpClient {
    pub fn new(base_url: &str, retry: RetryPolicy) -> Result<Self, ClientError> {
        let (_, authority) = http_authority(base_url)?;
        let base = format!("http://{authority}");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self { base, inner, retry })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A copy of this client (sharing its connection pool) with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self {
            retry,
            ..self.clone()
        }
    }

    /// Sends a request, retrying per the policy; non-2xx answers become [`ClientError::Status`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let result = self.send_once(&method, &url, content_type, body.clone()).await;
            attempt += 1;
            let err = match result {
                Ok(resp) => return Ok(resp),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let wait = self.retry.backoff(attempt - 1);
            if attempt >= self.retry.max_attempts || started.elapsed() + wait > self.retry.max_elapsed {
                if attempt == 1 {
                    return Err(err);
                }
                return Err(ClientError::RetriesExhausted {
                    url,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    last: Box::new(err),
                });
            }
            tracing::debug!(%url, attempt, error = %err, "retrying after {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let mut builder = Request::builder().method(method.clone()).uri(url);
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|_| ClientError::InvalidUrl(url.to_string()))?;
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
            url: url.to_string(),
            message: e.to_string(),
        };
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| transport(&ErrorChain(&e)))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(&e))?
            .to_bytes();
        if status.is_success() {
            return Ok(RawResponse {
                status,
                content_type,
                headers,
                body,
            });
        }
        let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| {
            ErrorBody::new(
                "http_error",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(500)
                    .collect::<String>(),
            )
        });
        Err(ClientError::Status {
            url: url.to_string(),
            status,
            body,
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::GET, path, None, Bytes::new()).await?;
        self.decode(path, &resp.body)
    }

    pub async fn get_bytes(&self, path: &str) -> Result<RawResponse, ClientError> {
        self.send(Method::GET, path, None, Bytes::new()).await
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: format!("{}{}", self.base, path),
            message: e.to_string(),
        })?;
        let resp = self
            .send(Method::POST, path, Some("application/json"), body.into())
            .await?;
        self.decode(path, &resp.body)
    }

    pub async fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: Bytes) -> Result<T, ClientError> {
        let resp = self
            .send(Method::POST, path, Some("application/octet-stream"), body)
            .await?;
        self.decode(path, &resp.body)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            url: format!("{}{}", self.base, path),
            message: e.to_string(),
        })
    }
}

/// Displays an error with its whole `source()` chain (hyper's top-level messages are terse).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_parsed_not_trimmed() {
        let ok = |url: &str| http_authority(url).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:8082"),
            ("127.0.0.1:8082".into(), "127.0.0.1:8082".into())
        );
        assert_eq!(
            ok("http://127.0.0.1:8082/"),
            ("127.0.0.1:8082".into(), "127.0.0.1:8082".into())
        );
        assert_eq!(ok("http://walsync"), ("walsync:80".into(), "walsync".into()));
        assert_eq!(
            ok("http://[::1]:9000"),
            ("[::1]:9000".into(), "[::1]:9000".into())
        );
        assert_eq!(ok("http://[::1]").0, "[::1]:80");
        for bad in [
            "https://127.0.0.1:8082",
            "127.0.0.1:8082",
            "http://",
            "http://host:port",
            "http://host:8082/prefix",
            "http://user@host:1",
            "http://:8082",
        ] {
            let err = http_authority(bad).unwrap_err();
            assert!(matches!(err, ClientError::InvalidUrl(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_urls_that_are_not_plain_http_host_port() {
        assert!(HttpClient::new("https://x:1", RetryPolicy::none()).is_err());
        assert!(HttpClient::new("http://x:1/path", RetryPolicy::none()).is_err());
        assert!(HttpClient::new("http://", RetryPolicy::none()).is_err());
    }

    #[test]
    fn gone_is_recognised_through_retries() {
        let gone = ClientError::Status {
            url: "http://x:1/a".into(),
            status: StatusCode::GONE,
            body: ErrorBody::new("below_gc_horizon", "GC has dropped it"),
        };
        assert!(gone.is_gone());
        let conflict = ClientError::Status {
            url: "http://x:1/a".into(),
            status: StatusCode::CONFLICT,
            body: ErrorBody::new("stale_term", "no"),
        };
        assert!(!conflict.is_gone());
        let wrapped = ClientError::RetriesExhausted {
            url: "http://x:1/a".into(),
            attempts: 2,
            elapsed: Duration::ZERO,
            last: Box::new(gone),
        };
        assert!(wrapped.is_gone());
        assert_eq!(wrapped.code(), Some("below_gc_horizon"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_millis(20));
        assert_eq!(p.backoff(1), Duration::from_millis(40));
        assert_eq!(p.backoff(30), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_reported_with_attempts() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let policy = RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let client = HttpClient::new(&format!("http://127.0.0.1:{port}"), policy).unwrap();
        let err = client.get_bytes("/healthz").await.unwrap_err();
        match err {
            ClientError::RetriesExhausted { attempts, .. } => assert_eq!(attempts, 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}
