//! HTTP server plumbing shared by the services: an accept loop with graceful shutdown, per-endpoint
//! request metrics, and helpers for JSON, bytes and error answers. A service implements [`Service`]
//! (routing and handlers) and nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ErrorBody;

/// Response bodies may be whole buffers or streams (the WAL append stream sends acks as it goes).
pub type ResponseBody = BoxBody<Bytes, std::io::Error>;
pub type HttpResponse = Response<ResponseBody>;

/// A service's routes. `endpoint` names the route for metrics (a fixed, low-cardinality label).
pub trait Service: Send + Sync + 'static {
    fn endpoint(&self, req: &Request<Incoming>) -> &'static str;
    fn call(&self, req: Request<Incoming>) -> impl Future<Output = HttpResponse> + Send;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    endpoint: &'static str,
    status: u16,
}

/// `<prefix>_http_request_duration_seconds{endpoint}` and `<prefix>_http_requests_total{endpoint,status}`.
#[derive(Clone)]
pub struct RequestMetrics {
    duration: Family<EndpointLabels, Histogram>,
    requests: Family<StatusLabels, Counter>,
}

impl RequestMetrics {
    /// Registers the request metrics in `registry` (already prefixed by the service name).
    pub fn register(registry: &mut Registry) -> Self {
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            // 10 us .. ~10 s
            Histogram::new(exponential_buckets(10e-6, 2.0, 21))
        });
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by endpoint",
            duration.clone(),
        );
        registry.register(
            "http_requests",
            "Requests answered, by endpoint and status",
            requests.clone(),
        );
        Self { duration, requests }
    }

    fn observe(&self, endpoint: &'static str, status: StatusCode, started: Instant) {
        self.duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&StatusLabels {
                endpoint,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    metrics: RequestMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = service_fn(service.clone(), metrics.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log_connection_error(peer, &e);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// How [`serve_threaded`] bounds its connections.
#[derive(Debug, Clone)]
pub struct ThreadedConfig {
    /// Connections served at once (one thread each). A connection beyond them is answered `503
    /// busy` and closed at once, rather than left waiting in the listen backlog.
    pub max_connections: usize,
    /// Time a connection may take to send a request head, and may stay idle between requests,
    /// before it is closed and its thread and slot freed. Keep it above clients' idle-pool
    /// timeout, so a client does not reuse a connection the server is closing.
    pub header_read_timeout: Duration,
    /// TCP keepalive idle time: a peer that vanished (host down, cable cut) is detected after
    /// this plus a few probes, ending even a connection inside a long request (an append stream).
    pub tcp_keepalive: Duration,
    pub thread_name: String,
}

/// Like [`serve`], but every connection is served by its own thread with its own single-threaded
/// runtime. A handler may then block (a WAL `fdatasync`) without stalling other connections, and the
/// thread that did the work writes the answer: no hand-off between threads on the way, which is
/// what a commit's latency is made of. See [`ThreadedConfig`] for the limits.
pub async fn serve_threaded<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    metrics: RequestMetrics,
    shutdown: impl Future<Output = ()>,
    config: ThreadedConfig,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(config.tcp_keepalive)
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "connection limit reached; answering 503");
            tokio::spawn(refuse_busy(stream, config.max_connections));
            continue;
        };
        // Leaves this runtime's poller; the connection's thread registers it with its own.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection to a thread");
                continue;
            }
        };
        let svc = service_fn(service.clone(), metrics.clone());
        let watcher = graceful.watcher();
        let header_read_timeout = config.header_read_timeout;
        let spawned = std::thread::Builder::new()
            .name(config.thread_name.clone())
            .spawn(move || {
                let _slot = slot;
                // I/O and timers only: no signal or child-process driver to check at every park.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "cannot start a connection runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let stream = match TcpStream::from_std(stream) {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot register the connection");
                            return;
                        }
                    };
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_read_timeout)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        log_connection_error(peer, &e);
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::error!(%peer, error = %e, "cannot start a connection thread; dropping the connection");
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit `503 busy` and closes it: once its request head has
/// arrived (a client may not expect an answer before it has sent its request), or after a second
/// without one. What else arrives is read and dropped for a moment after the answer, so closing
/// with it unread does not reset the connection before the client has read the answer.
async fn refuse_busy(mut stream: TcpStream, max_connections: usize) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    let body = serde_json::to_vec(&ErrorBody::new(
        "busy",
        format!("the server is serving its maximum of {max_connections} connections; retry later"),
    ))
    .expect("ErrorBody always serializes");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let answered = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(1), answered)
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// The per-request wrapper of `service`: routing, timing and counting.
fn service_fn<S: Service>(
    service: Arc<S>,
    metrics: RequestMetrics,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = HttpResponse,
    Error = Infallible,
    Future = impl Future<Output = Result<HttpResponse, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let service = service.clone();
        let metrics = metrics.clone();
        async move {
            let started = Instant::now();
            let endpoint = service.endpoint(&req);
            let resp = service.call(req).await;
            metrics.observe(endpoint, resp.status(), started);
            Ok::<_, Infallible>(resp)
        }
    })
}

fn log_connection_error(peer: SocketAddr, e: &hyper::Error) {
    if e.is_incomplete_message() || e.is_closed() {
        tracing::debug!(%peer, error = %e, "connection closed");
    } else {
        tracing::warn!(%peer, error = %e, "connection error");
    }
}

pub fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

pub fn bytes_response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(full_body(body))
        .expect("static response parts are valid")
}

pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => bytes_response(status, "application/json", body),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "encode_error", e.to_string()),
    }
}

/// The JSON error every service answers with; see [`ErrorBody`].
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    let body = ErrorBody::new(code, message);
    let bytes = serde_json::to_vec(&body).expect("ErrorBody always serializes");
    bytes_response(status, "application/json", bytes)
}

/// Reads a whole request body, refusing (413) one larger than `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, HttpResponse> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read body: {e}"),
        )),
    }
}

/// Parses a JSON request body, answering 400 with the parser's message on failure.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, HttpResponse> {
    let body = read_body(req, limit).await?;
    serde_json::from_slice(&body).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("invalid JSON body: {e}"),
        )
    })
}

/// Prometheus text exposition of `registry`.
pub fn metrics_response(registry: &Registry) -> HttpResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => bytes_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "encode_error", e.to_string()),
    }
}

/// The value of query parameter `name` (no percent-decoding: our parameters are numbers and ids).
pub fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::client::{HttpClient, RetryPolicy};

    /// `/block` says it arrived, then blocks its thread until released; anything else answers at
    /// once.
    struct Blocking {
        arrived: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Service for Blocking {
        fn endpoint(&self, _req: &Request<Incoming>) -> &'static str {
            "test"
        }

        fn call(&self, req: Request<Incoming>) -> impl Future<Output = HttpResponse> + Send {
            if req.uri().path() == "/block" {
                let _ = self.arrived.lock().unwrap().send(());
                let _ = self.release.lock().unwrap().recv();
            }
            async { bytes_response(StatusCode::OK, "text/plain", "done") }
        }
    }

    struct TestServer {
        url: String,
        release: std::sync::mpsc::Sender<()>,
        arrived: std::sync::mpsc::Receiver<()>,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(max_connections: usize, header_read_timeout: Duration) -> TestServer {
        let (release, released) = std::sync::mpsc::channel();
        let (arrived_tx, arrived) = std::sync::mpsc::channel();
        let service = Arc::new(Blocking {
            arrived: Mutex::new(arrived_tx),
            release: Mutex::new(released),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let metrics = RequestMetrics::register(&mut Registry::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ThreadedConfig {
            max_connections,
            header_read_timeout,
            tcp_keepalive: Duration::from_secs(60),
            thread_name: "test-conn".into(),
        };
        let server = tokio::spawn(serve_threaded(
            listener,
            service,
            metrics,
            async {
                let _ = stopped.await;
            },
            config,
        ));
        TestServer {
            url,
            release,
            arrived,
            stop,
            server,
        }
    }

    impl TestServer {
        async fn stop(self) {
            drop(self.release);
            self.stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.server)
                .await
                .expect("shutdown finishes")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_blocking_its_thread_stalls_no_other() {
        let server = start(8, Duration::from_secs(60)).await;
        let client = HttpClient::new(&server.url, RetryPolicy::none()).unwrap();
        let blocked = tokio::spawn({
            let client = client.clone();
            async move { client.get_bytes("/block").await }
        });
        // The handler is blocking its thread now.
        tokio::task::block_in_place(|| server.arrived.recv().unwrap());
        // Served on its own thread while the other connection's thread is blocked.
        let other = tokio::time::timeout(Duration::from_secs(5), client.get_bytes("/other")).await;
        assert_eq!(&other.expect("not stalled").unwrap().body[..], b"done");
        assert!(!blocked.is_finished());
        server.release.send(()).unwrap();
        assert_eq!(&blocked.await.unwrap().unwrap().body[..], b"done");
        drop(client);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_over_the_limit_is_refused_at_once_not_left_waiting() {
        let server = start(1, Duration::from_secs(60)).await;
        // Holds the only slot: connected, no request yet.
        let _idle = TcpStream::connect(server.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let client = HttpClient::new(&server.url, RetryPolicy::none()).unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), client.get_bytes("/other"))
            .await
            .expect("answered, not left in the backlog")
            .unwrap_err();
        assert_eq!(
            (refused.status().map(|s| s.as_u16()), refused.code()),
            (Some(503), Some("busy")),
            "{refused}"
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_connection_is_closed_and_its_slot_freed() {
        let server = start(1, Duration::from_millis(300)).await;
        let mut idle = TcpStream::connect(server.url.trim_start_matches("http://"))
            .await
            .unwrap();
        // No request head within the timeout: the server closes the connection.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
            .await
            .expect("the server closed the idle connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Its slot serves the next connection (its thread may still be ending: retry briefly).
        let client = HttpClient::new(&server.url, RetryPolicy::none()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match client.get_bytes("/other").await {
                Ok(answer) => {
                    assert_eq!(&answer.body[..], b"done");
                    break;
                }
                Err(e) if e.code() == Some("busy") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        drop(client);
        server.stop().await;
    }
}
