//! The HTTP routes (see `docs/api.md`): parse, call [`Store`], encode. Nothing else lives here.
//!
//! Page reads run inline on the request task: they are one index lookup and one `pread` of a
//! segment the OS page cache almost always holds, cheaper than a hop to a blocking pool.
//!
//! Handlers return `Result<HttpResponse, HttpResponse>` like `ibd_api::server::read_body`: the
//! error is the answer itself, built once per failed request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ibd_api::pageserver::{
    decode_upload, encode_read_response, error_code, AcquireTermRequest, CreateFileRequest,
    CreateTimelineRequest, Page, PageAddr, ReadAt, ReadPagesRequest, RecordMarkerRequest, UnlinkFileRequest,
    UnlinkFileResponse, UpdateFileRequest, HEADER_CRC32C, HEADER_FOUND, HEADER_PAGE_LSN, HEADER_SEQ,
    READ_HEADER_LEN,
};
use ibd_api::server::{
    bytes_response, error_response, full_body, json_response, metrics_response, query_param, read_body,
    read_json, HttpResponse, Service,
};
use prometheus_client::registry::Registry;

use crate::storage::{Store, StoreError};

/// Largest upload body: 32 MiB of pages plus their headers.
const MAX_UPLOAD_BYTES: usize = 33 << 20;
const MAX_JSON_BYTES: usize = 1 << 20;
/// Most pages one batched read may ask for (16 MiB of answer).
const MAX_READ_PAGES: usize = 1024;

pub struct PageService {
    store: Store,
    registry: Arc<Registry>,
}

impl PageService {
    pub fn new(store: Store, registry: Arc<Registry>) -> Self {
        Self { store, registry }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Healthz,
    Metrics,
    Timelines,
    Timeline(&'a str),
    Term(&'a str),
    Files(&'a str),
    File(&'a str, u64),
    Unlink(&'a str, u64),
    Page(&'a str, PageAddr),
    PageVersions(&'a str, PageAddr),
    PutPages(&'a str),
    ReadPages(&'a str),
    Markers(&'a str),
    NotFound,
}

impl Route<'_> {
    fn name(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::Timelines => "timelines",
            Route::Timeline(_) => "timeline",
            Route::Term(_) => "term",
            Route::Files(_) => "files",
            Route::File(..) => "file",
            Route::Unlink(..) => "unlink",
            Route::Page(_, PageAddr::File { .. }) => "get_page",
            Route::Page(_, PageAddr::Space { .. }) => "get_page_by_space",
            Route::PageVersions(..) => "page_versions",
            Route::PutPages(_) => "put_pages",
            Route::ReadPages(_) => "read_pages",
            Route::Markers(_) => "markers",
            Route::NotFound => "not_found",
        }
    }
}

fn route(path: &str) -> Result<Route<'_>, String> {
    fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("{s:?} is not a valid number"))
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    Ok(match parts.as_slice() {
        ["healthz"] => Route::Healthz,
        ["metrics"] => Route::Metrics,
        ["v1", "timelines"] => Route::Timelines,
        ["v1", "timelines", tl] => Route::Timeline(tl),
        ["v1", "timelines", tl, "term"] => Route::Term(tl),
        ["v1", "timelines", tl, "files"] => Route::Files(tl),
        ["v1", "timelines", tl, "files", f] => Route::File(tl, num(f)?),
        ["v1", "timelines", tl, "files", f, "unlink"] => Route::Unlink(tl, num(f)?),
        ["v1", "timelines", tl, "files", f, "blocks", b, rest @ ..] if rest.len() <= 1 => {
            let addr = PageAddr::File {
                file: num(f)?,
                block: num(b)?,
            };
            match rest {
                [] => Route::Page(tl, addr),
                ["versions"] => Route::PageVersions(tl, addr),
                _ => Route::NotFound,
            }
        }
        ["v1", "timelines", tl, "spaces", s, "pages", p, rest @ ..] if rest.len() <= 1 => {
            let addr = PageAddr::Space {
                space: num(s)?,
                page: num(p)?,
            };
            match rest {
                [] => Route::Page(tl, addr),
                ["versions"] => Route::PageVersions(tl, addr),
                _ => Route::NotFound,
            }
        }
        ["v1", "timelines", tl, "pages"] => Route::PutPages(tl),
        ["v1", "timelines", tl, "pages", "read"] => Route::ReadPages(tl),
        ["v1", "timelines", tl, "markers"] => Route::Markers(tl),
        _ => Route::NotFound,
    })
}

impl Service for PageService {
    fn endpoint(&self, req: &Request<Incoming>) -> &'static str {
        route(req.uri().path()).map_or("bad_request", Route::name)
    }

    async fn call(&self, req: Request<Incoming>) -> HttpResponse {
        match self.handle(req).await {
            Ok(resp) | Err(resp) => resp,
        }
    }
}

type Answer = Result<HttpResponse, HttpResponse>;

impl PageService {
    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        let route = route(&path).map_err(|e| error_response(StatusCode::BAD_REQUEST, "bad_request", e))?;
        let store = &self.store;
        let method = req.method().clone();
        match (method, route) {
            (Method::GET, Route::Healthz) => Ok(bytes_response(StatusCode::OK, "text/plain", "ok\n")),
            (Method::GET, Route::Metrics) => Ok(metrics_response(&self.registry)),
            (Method::GET, Route::Timelines) => Ok(json_response(StatusCode::OK, &store.timelines())),
            (Method::POST, Route::Timelines) => {
                let body: CreateTimelineRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(store.create_timeline(body).await)
            }
            (Method::GET, Route::Timeline(tl)) => ok_json(store.timeline(tl)),
            (Method::POST, Route::Term(tl)) => {
                let body: AcquireTermRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(store.acquire_term(tl, body).await)
            }
            (Method::GET, Route::Files(tl)) => ok_json(store.files(tl, read_at(&req)?)),
            (Method::POST, Route::Files(tl)) => {
                let body: CreateFileRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(store.create_file(tl, body).await)
            }
            (Method::GET, Route::File(tl, file)) => ok_json(store.file(tl, file, read_at(&req)?)),
            (Method::POST, Route::File(tl, file)) => {
                let body: UpdateFileRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(store.update_file(tl, file, body).await)
            }
            (Method::POST, Route::Unlink(tl, file)) => {
                let body: UnlinkFileRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(
                    store
                        .unlink_file(tl, file, body.term)
                        .await
                        .map(|seq| UnlinkFileResponse { seq }),
                )
            }
            (Method::GET, Route::Page(tl, addr)) => {
                let page = store.read_page(tl, addr, read_at(&req)?).map_err(store_error)?;
                Ok(page_response(page))
            }
            (Method::GET, Route::PageVersions(tl, addr)) => {
                let from = u64_param(&req, "from_lsn")?.unwrap_or(0);
                let to = u64_param(&req, "to_lsn")?.unwrap_or(u64::MAX);
                ok_json(store.page_versions(tl, addr, from, to))
            }
            (Method::POST, Route::PutPages(tl)) => {
                let term = u64_param(&req, "term")?.ok_or_else(|| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "query parameter term is required",
                    )
                })?;
                let body = read_body(req, MAX_UPLOAD_BYTES).await?;
                let pages = decode_upload(&body)
                    .map_err(|e| error_response(StatusCode::BAD_REQUEST, "bad_frame", e.to_string()))?;
                ok_json(store.put_pages(tl, term, pages).await)
            }
            (Method::POST, Route::ReadPages(tl)) => {
                let body: ReadPagesRequest = read_json(req, MAX_JSON_BYTES).await?;
                if body.pages.len() > MAX_READ_PAGES {
                    return Err(error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!(
                            "at most {MAX_READ_PAGES} pages per batched read, asked for {}",
                            body.pages.len()
                        ),
                    ));
                }
                let pages = store.read_pages(tl, &body.pages, body.at).map_err(store_error)?;
                let mut buf =
                    BytesMut::with_capacity(pages.iter().map(|p| READ_HEADER_LEN + p.image.len()).sum());
                encode_read_response(&pages, &mut buf);
                Ok(bytes_response(
                    StatusCode::OK,
                    "application/octet-stream",
                    buf.freeze(),
                ))
            }
            (Method::GET, Route::Markers(tl)) => ok_json(store.markers(tl)),
            (Method::POST, Route::Markers(tl)) => {
                let body: RecordMarkerRequest = read_json(req, MAX_JSON_BYTES).await?;
                ok_json(store.record_marker(tl, body).await)
            }
            (_, Route::NotFound) => Err(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {path}; see pageserver-lite/docs/api.md"),
            )),
            (method, route) => Err(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path} ({})", route.name()),
            )),
        }
    }
}

fn ok_json<T: serde::Serialize>(result: Result<T, StoreError>) -> Answer {
    result
        .map(|v| json_response(StatusCode::OK, &v))
        .map_err(store_error)
}

fn page_response(page: Page) -> HttpResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(HEADER_FOUND, u16::from(page.found))
        .header(HEADER_SEQ, page.seq)
        .header(HEADER_PAGE_LSN, page.lsn)
        .header(HEADER_CRC32C, page.crc32c)
        .body(full_body(page.image))
        .expect("page response parts are valid")
}

fn store_error(e: StoreError) -> HttpResponse {
    let (status, code) = match &e {
        StoreError::TimelineNotFound(_) => (StatusCode::NOT_FOUND, "timeline_not_found"),
        StoreError::TimelineExists(_) => (StatusCode::CONFLICT, "timeline_exists"),
        StoreError::FileNotFound(_) => (StatusCode::NOT_FOUND, "file_not_found"),
        StoreError::PathExists { .. } => (StatusCode::CONFLICT, error_code::PATH_EXISTS),
        StoreError::StaleTerm { .. } => (StatusCode::CONFLICT, "stale_term"),
        StoreError::UnknownTerm { .. } => (StatusCode::CONFLICT, "unknown_term"),
        StoreError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        StoreError::CrcMismatch(_) => (StatusCode::BAD_REQUEST, "crc_mismatch"),
        StoreError::NoMarker { .. } => (StatusCode::CONFLICT, "no_checkpoint_marker"),
        StoreError::BelowGcHorizon { .. } => (StatusCode::GONE, error_code::BELOW_GC_HORIZON),
        StoreError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_page"),
        StoreError::TimelineDamaged(_) => (StatusCode::INTERNAL_SERVER_ERROR, "timeline_damaged"),
        StoreError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
        StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    error_response(status, code, e.to_string())
}

fn u64_param(req: &Request<Incoming>, name: &str) -> Result<Option<u64>, HttpResponse> {
    query_param(req, name)
        .map(|v| {
            v.parse().map_err(|_| {
                error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("query parameter {name}={v:?} is not a number"),
                )
            })
        })
        .transpose()
}

/// `?seq=S` or `?lsn=T` (not both); neither means latest.
fn read_at(req: &Request<Incoming>) -> Result<ReadAt, HttpResponse> {
    match (u64_param(req, "seq")?, u64_param(req, "lsn")?) {
        (Some(_), Some(_)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give seq or lsn, not both",
        )),
        (Some(seq), None) => Ok(ReadAt::Seq(seq)),
        (None, Some(lsn)) => Ok(ReadAt::Lsn(lsn)),
        (None, None) => Ok(ReadAt::Latest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_bad_numbers_are_refused() {
        assert_eq!(
            route("/v1/timelines/main/files/3/blocks/7").unwrap(),
            Route::Page("main", PageAddr::File { file: 3, block: 7 })
        );
        assert_eq!(
            route("/v1/timelines/main/spaces/5/pages/2/versions").unwrap(),
            Route::PageVersions("main", PageAddr::Space { space: 5, page: 2 })
        );
        assert_eq!(
            route("/v1/timelines/main/pages/read").unwrap(),
            Route::ReadPages("main")
        );
        assert_eq!(route("/v1/nothing").unwrap(), Route::NotFound);
        assert!(route("/v1/timelines/main/files/x/blocks/1").is_err());
        assert!(route("/v1/timelines/main/spaces/1/pages/99999999999").is_err());
    }
}
