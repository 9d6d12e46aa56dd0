//! The HTTP API (documented in `docs/api.md`): routing and parameter parsing. The append stream
//! lives in [`crate::stream`], everything else in [`Timeline`].
//!
//! Handlers call the timelines' blocking operations (file I/O, fdatasync, waiting for a group
//! commit) directly: the service is served with [`ibd_api::server::serve_threaded`], where every
//! connection has its own thread, so blocking one stalls nothing else and the thread that made a
//! commit durable writes its answer.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ibd_api::server::{
    bytes_response, error_response, json_response, metrics_response, query_param, read_body, read_json,
    HttpResponse, Service,
};
use ibd_api::walsync::{
    AcquireTermRequest, AppendResponse, Checkpoint, CheckpointHistory, CreateTimelineRequest, Geometry,
    GeometryHistory, TimelineList, CRC_HEADER, CRC_PARAM, MAX_CHUNK_LEN,
};
use prometheus_client::registry::Registry;

use crate::error::WalError;
use crate::stream::AppendStream;
use crate::timeline::Timeline;
use crate::timelines::Timelines;

const JSON_LIMIT: usize = 64 << 10;

pub struct WalsyncService {
    timelines: Arc<Timelines>,
    registry: Registry,
}

impl WalsyncService {
    pub fn new(timelines: Arc<Timelines>, registry: Registry) -> Self {
        Self { timelines, registry }
    }
}

/// The routes, each with its timeline id where it has one.
enum Route<'a> {
    Healthz,
    Metrics,
    ListTimelines,
    CreateTimeline(&'a str),
    Status(&'a str),
    AcquireTerm(&'a str),
    Append(&'a str),
    Read(&'a str),
    Stream(&'a str),
    PutGeometry(&'a str),
    GetGeometry(&'a str),
    AddCheckpoint(&'a str),
    GetCheckpoints(&'a str),
    Recovery(&'a str),
    Unknown,
}

fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Route::Healthz,
        (&Method::GET, ["metrics"]) => Route::Metrics,
        (&Method::GET, ["v1", "timelines"]) => Route::ListTimelines,
        (&Method::PUT, ["v1", "timelines", tl]) => Route::CreateTimeline(tl),
        (&Method::GET, ["v1", "timelines", tl, "status"]) => Route::Status(tl),
        (&Method::POST, ["v1", "timelines", tl, "term"]) => Route::AcquireTerm(tl),
        (&Method::POST, ["v1", "timelines", tl, "wal"]) => Route::Append(tl),
        (&Method::GET, ["v1", "timelines", tl, "wal"]) => Route::Read(tl),
        (&Method::POST, ["v1", "timelines", tl, "wal", "stream"]) => Route::Stream(tl),
        (&Method::PUT, ["v1", "timelines", tl, "geometry"]) => Route::PutGeometry(tl),
        (&Method::GET, ["v1", "timelines", tl, "geometry"]) => Route::GetGeometry(tl),
        (&Method::POST, ["v1", "timelines", tl, "checkpoints"]) => Route::AddCheckpoint(tl),
        (&Method::GET, ["v1", "timelines", tl, "checkpoints"]) => Route::GetCheckpoints(tl),
        (&Method::GET, ["v1", "timelines", tl, "recovery"]) => Route::Recovery(tl),
        _ => Route::Unknown,
    }
}

impl Service for WalsyncService {
    fn endpoint(&self, req: &Request<Incoming>) -> &'static str {
        match route(req.method(), req.uri().path()) {
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::ListTimelines => "list_timelines",
            Route::CreateTimeline(_) => "create_timeline",
            Route::Status(_) => "status",
            Route::AcquireTerm(_) => "acquire_term",
            Route::Append(_) => "append",
            Route::Read(_) => "read",
            Route::Stream(_) => "stream",
            Route::PutGeometry(_) => "put_geometry",
            Route::GetGeometry(_) => "get_geometry",
            Route::AddCheckpoint(_) => "add_checkpoint",
            Route::GetCheckpoints(_) => "get_checkpoints",
            Route::Recovery(_) => "recovery",
            Route::Unknown => "unknown",
        }
    }

    async fn call(&self, req: Request<Incoming>) -> HttpResponse {
        let path = req.uri().path().to_string();
        let result = match route(req.method(), &path) {
            Route::Healthz => Ok(bytes_response(StatusCode::OK, "text/plain", "ok\n")),
            Route::Metrics => Ok(metrics_response(&self.registry)),
            Route::ListTimelines => {
                let timelines = self.timelines.list().iter().map(|tl| tl.status()).collect();
                Ok(json_response(StatusCode::OK, &TimelineList { timelines }))
            }
            Route::CreateTimeline(tl) => self.create_timeline(tl, req).await,
            Route::Status(tl) => self.with_timeline(tl, |t| Ok(json_response(StatusCode::OK, &t.status()))),
            Route::AcquireTerm(tl) => self.acquire_term(tl, req).await,
            Route::Append(tl) => self.append(tl, req).await,
            Route::Read(tl) => self.read(tl, &req).await,
            Route::Stream(tl) => self.stream(tl, req).await,
            Route::PutGeometry(tl) => self.put_geometry(tl, req).await,
            Route::GetGeometry(tl) => self.with_timeline(tl, |t| {
                let geometry = t.with_meta(|m| m.geometry.clone());
                Ok(json_response(StatusCode::OK, &GeometryHistory { geometry }))
            }),
            Route::AddCheckpoint(tl) => self.add_checkpoint(tl, req).await,
            Route::GetCheckpoints(tl) => self.with_timeline(tl, |t| {
                let checkpoints = t.with_meta(|m| m.checkpoints.clone());
                Ok(json_response(StatusCode::OK, &CheckpointHistory { checkpoints }))
            }),
            Route::Recovery(tl) => self.recovery(tl, &req),
            Route::Unknown => Ok(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {} {path}; see walsync/docs/api.md", req.method()),
            )),
        };
        result.unwrap_or_else(Refusal::into_response)
    }
}

/// A refused request: a timeline error, or an answer the shared plumbing already built.
enum Refusal {
    Wal(WalError),
    Answer(Box<HttpResponse>),
}

impl From<WalError> for Refusal {
    fn from(e: WalError) -> Self {
        Refusal::Wal(e)
    }
}

impl From<HttpResponse> for Refusal {
    fn from(resp: HttpResponse) -> Self {
        Refusal::Answer(Box::new(resp))
    }
}

impl Refusal {
    fn into_response(self) -> HttpResponse {
        match self {
            Refusal::Wal(e) => wal_error(e),
            Refusal::Answer(resp) => *resp,
        }
    }
}

type Answer = Result<HttpResponse, Refusal>;

impl WalsyncService {
    fn timeline(&self, id: &str) -> Result<Arc<Timeline>, WalError> {
        self.timelines.get(id)
    }

    fn with_timeline(&self, id: &str, f: impl FnOnce(&Timeline) -> Answer) -> Answer {
        f(&*self.timeline(id)?)
    }

    async fn create_timeline(&self, id: &str, req: Request<Incoming>) -> Answer {
        let request: CreateTimelineRequest = read_optional_json(req).await?;
        let tl = self.timelines.create(id, request.parent)?;
        Ok(json_response(StatusCode::OK, &tl.status()))
    }

    async fn acquire_term(&self, id: &str, req: Request<Incoming>) -> Answer {
        let request: AcquireTermRequest = read_optional_json(req).await?;
        let tl = self.timelines.get_or_create(id)?;
        let granted = tl.acquire_term(request.term)?;
        Ok(json_response(StatusCode::OK, &granted))
    }

    async fn append(&self, id: &str, req: Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let term = u64_param(&req, "term")?;
        let start_lsn = u64_param(&req, "start_lsn")?;
        let sent_crc = crc_param(&req)?;
        let data = read_body(req, MAX_CHUNK_LEN).await?;
        let computed = ibd_api::crc32c(&data);
        if computed != sent_crc {
            return Err(WalError::CrcMismatch(format!(
                "body CRC-32C is {computed:08x}, the request says {sent_crc:08x}: nothing stored"
            ))
            .into());
        }
        let durable_lsn = tl.append(term, start_lsn, &data)?;
        Ok(json_response(StatusCode::OK, &AppendResponse { durable_lsn }))
    }

    async fn read(&self, id: &str, req: &Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let from = u64_param(req, "from")?;
        let to = u64_param(req, "to")?;
        let bytes = tl.read(from, to)?;
        // End to end: the reader checks this against what it received.
        let crc = hyper::header::HeaderValue::from_str(&format!("{:08x}", ibd_api::crc32c(&bytes)))
            .expect("hex digits are a valid header value");
        let mut resp = bytes_response(StatusCode::OK, "application/octet-stream", bytes);
        resp.headers_mut().insert(CRC_HEADER, crc);
        Ok(resp)
    }

    async fn put_geometry(&self, id: &str, req: Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let term = u64_param(&req, "term")?;
        let geometry: Geometry = read_json(req, JSON_LIMIT).await?;
        let record = tl.set_geometry(term, geometry)?;
        Ok(json_response(StatusCode::OK, &record))
    }

    async fn add_checkpoint(&self, id: &str, req: Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let term = u64_param(&req, "term")?;
        let checkpoint: Checkpoint = read_json(req, JSON_LIMIT).await?;
        let record = tl.add_checkpoint(term, checkpoint)?;
        Ok(json_response(StatusCode::OK, &record))
    }

    fn recovery(&self, id: &str, req: &Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let lsn = query_param(req, "lsn")
            .map(|_| u64_param(req, "lsn"))
            .transpose()?;
        let plan = tl.recovery_plan(lsn)?;
        Ok(json_response(StatusCode::OK, &plan))
    }

    /// The append stream: frames in on the request body, one ack line per frame out on the answer,
    /// in order. The first refused frame ends the stream with an error line.
    async fn stream(&self, id: &str, req: Request<Incoming>) -> Answer {
        let tl = self.timeline(id)?;
        let term = u64_param(&req, "term")?;
        // Refuse a stale writer with a plain 409 before the stream starts; each frame is checked
        // again under the writer lock.
        tl.check_term(term)?;
        let body = AppendStream::new(tl, term, req.into_body());
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body.boxed())
            .expect("static response parts are valid"))
    }
}

fn wal_error(e: WalError) -> HttpResponse {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    }
    error_response(status, e.code(), e.to_string())
}

/// A JSON body that may be left out (then the type's default).
async fn read_optional_json<T: Default + serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Refusal> {
    let body = read_body(req, JSON_LIMIT).await?;
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| WalError::BadRequest(format!("invalid JSON body: {e}")).into())
}

fn u64_param(req: &Request<Incoming>, name: &str) -> Result<u64, WalError> {
    let value = query_param(req, name)
        .ok_or_else(|| WalError::BadRequest(format!("missing query parameter {name}")))?;
    value.parse().map_err(|_| {
        WalError::BadRequest(format!(
            "query parameter {name}={value:?} is not an unsigned integer"
        ))
    })
}

/// The body's CRC-32C as 8 hex digits, from the `crc32c` parameter or the `x-crc32c` header.
fn crc_param(req: &Request<Incoming>) -> Result<u32, WalError> {
    let value = query_param(req, CRC_PARAM)
        .or_else(|| req.headers().get(CRC_HEADER).and_then(|v| v.to_str().ok()))
        .ok_or_else(|| {
            WalError::BadRequest(format!(
                "missing the body's CRC-32C: query parameter {CRC_PARAM} or header {CRC_HEADER}"
            ))
        })?;
    u32::from_str_radix(value, 16)
        .map_err(|_| WalError::BadRequest(format!("CRC-32C {value:?} is not 8 hex digits")))
}
