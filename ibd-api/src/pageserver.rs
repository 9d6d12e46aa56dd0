//! Wire types, binary framing and the typed client of `pageserver-lite`.
//!
//! The server documents the API in `pageserver-lite/docs/api.md`; this module is the one place
//! where its bodies are encoded and decoded, for the server and for every client alike.
//!
//! Pages travel as raw bytes in a small little-endian framing ([`encode_upload`],
//! [`encode_read_response`]); metadata is JSON. Every page carries the writer's CRC-32C
//! (DESIGN.md invariant 5): the server checks it on upload and returns it with every read, and
//! [`PageserverClient`] checks it again on every page it returns, so a corrupted page is an error,
//! never data.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, HttpClient, RawResponse, RetryPolicy};

/// Size of a page or block: InnoDB pages (16 KiB, `innodb_page_size` default) and the blocks of
/// generic files alike.
pub const BLOCK_SIZE: usize = 16384;

/// Default address of the page server (DESIGN.md section 6).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// Machine-readable `error` codes of the pageserver's answers that callers act on (the full list
/// is in `pageserver-lite/docs/api.md`).
pub mod error_code {
    /// 410: the read point or branch point is below the timeline's GC horizon.
    pub const BELOW_GC_HORIZON: &str = "below_gc_horizon";
    /// 409: another live file of the timeline has the path (create, or rename without replace).
    pub const PATH_EXISTS: &str = "path_exists";
}

/// Response headers of a single-page read.
pub const HEADER_CRC32C: &str = "x-crc32c";
pub const HEADER_PAGE_LSN: &str = "x-page-lsn";
pub const HEADER_SEQ: &str = "x-seq";
pub const HEADER_FOUND: &str = "x-page-found";

/// How a file's blocks are treated (DESIGN.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// InnoDB page file (`*.ibd`, `ibdata*`, `undo*`): every block is a whole 16 KiB page with an
    /// LSN; InnoDB checksums are validated (and failures counted) on upload.
    Page,
    /// Any other persistent file: blocks of up to 16 KiB, no LSN semantics (LSN 0).
    Generic,
    /// The redo log; stored by walsync, but named here so a namespace can list it.
    Redo,
    /// Local-only files; named so a namespace can list them, never holding blocks.
    Scratch,
}

/// One file of a timeline's namespace at some point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Assigned by the server at creation, unique across all timelines, never reused.
    pub id: u64,
    pub path: String,
    pub kind: FileKind,
    /// Size in bytes as last told by the client.
    pub size: u64,
    /// InnoDB space id of a page file, once known (a new `.ibd` can be all zero).
    pub space_id: Option<u32>,
    /// Sequence number of the namespace change that produced this state.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateFileRequest {
    pub term: u64,
    pub path: String,
    pub kind: FileKind,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub space_id: Option<u32>,
}

/// Rename, resize (truncate or extend) or set the space id; absent fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateFileRequest {
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_id: Option<u32>,
    /// With `path`: if another live file has that path, unlink it in the same durable change
    /// (POSIX `rename` over an existing target). Without it such a rename is refused with 409
    /// `path_exists`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkFileRequest {
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkFileResponse {
    pub seq: u64,
}

/// Create a timeline; with `parent`, a branch at `branch_seq`, or at `branch_lsn` (resolved through
/// the parent's checkpoint markers, DESIGN.md section 5), or else at the parent's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTimelineRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_lsn: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub id: String,
    pub parent: Option<String>,
    /// Parent sequence number the branch sees (every parent version with seq <= branch_seq).
    pub branch_seq: Option<u64>,
    /// The LSN the branch was asked for, if it was created by LSN.
    pub branch_lsn: Option<u64>,
    /// Current writer term; uploads must carry exactly this term.
    pub term: u64,
    /// Newest durable sequence number (a child's own numbers start after its branch point).
    pub last_seq: u64,
    /// GC horizon: GC has dropped versions a read at a seq below `gc_horizon_seq` (other than a
    /// descendant's branch point) or at an LSN below `gc_horizon_lsn` would return, so such reads
    /// and branches there are refused with 410 `below_gc_horizon`. 0 until GC drops something.
    #[serde(default)]
    pub gc_horizon_seq: u64,
    #[serde(default)]
    pub gc_horizon_lsn: u64,
}

/// Acquire a new writer term: `term` if given (it must not be lower than the current one; equal is
/// a resend), else the current term + 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireTermRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermInfo {
    pub term: u64,
}

/// A checkpoint marker (DESIGN.md invariant 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMarker {
    pub checkpoint_lsn: u64,
    pub checkpoint_end_lsn: u64,
    pub log_end_lsn_at_write: u64,
    /// Every page upload acknowledged before the marker has seq <= page_store_seq.
    pub page_store_seq: u64,
}

/// Record a marker; `page_store_seq` absent means "the newest durable seq at record time".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMarkerRequest {
    pub term: u64,
    pub checkpoint_lsn: u64,
    pub checkpoint_end_lsn: u64,
    pub log_end_lsn_at_write: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_store_seq: Option<u64>,
}

/// Which version of a page a read returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAt {
    /// The newest durable version.
    #[default]
    Latest,
    /// The newest version with seq <= S (a snapshot, DESIGN.md section 5).
    Seq(u64),
    /// The newest version whose page LSN is <= T.
    Lsn(u64),
}

impl ReadAt {
    /// Query string (with leading `?`, or empty) selecting this read point.
    pub fn query(self) -> String {
        match self {
            ReadAt::Latest => String::new(),
            ReadAt::Seq(s) => format!("?seq={s}"),
            ReadAt::Lsn(l) => format!("?lsn={l}"),
        }
    }
}

/// A page addressed by file and block, or by InnoDB space id and page number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PageAddr {
    File { file: u64, block: u64 },
    Space { space: u32, page: u32 },
}

impl PageAddr {
    fn path(self, timeline: &str) -> String {
        match self {
            PageAddr::File { file, block } => {
                format!("/v1/timelines/{timeline}/files/{file}/blocks/{block}")
            }
            PageAddr::Space { space, page } => {
                format!("/v1/timelines/{timeline}/spaces/{space}/pages/{page}")
            }
        }
    }
}

/// Body of a batched read (`POST /v1/timelines/{tl}/pages/read`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPagesRequest {
    #[serde(default)]
    pub at: ReadAt,
    pub pages: Vec<PageAddr>,
}

/// One version of a page, as listed by `GetPageVersions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVersionInfo {
    /// The timeline that wrote it (an ancestor's versions are listed up to the branch point).
    pub timeline: String,
    pub seq: u64,
    pub lsn: u64,
    pub crc32c: u32,
    pub len: u32,
    /// Commit time, milliseconds since the Unix epoch.
    pub written_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutPagesResponse {
    pub count: u64,
    /// Sequence numbers assigned, in upload order: `first_seq ..= last_seq` (0, 0 if empty).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A page to upload. `crc32c` is computed by the writer over `image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageUpload {
    pub file: u64,
    pub block: u64,
    /// `FIL_PAGE_LSN` of a page file's page (0: the server reads it from the header); 0 for
    /// generic files.
    pub lsn: u64,
    pub crc32c: u32,
    pub image: Bytes,
}

impl PageUpload {
    /// A page with its CRC-32C computed here.
    pub fn new(file: u64, block: u64, lsn: u64, image: Bytes) -> Self {
        Self {
            file,
            block,
            lsn,
            crc32c: crate::crc32c(&image),
            image,
        }
    }
}

/// A page as read: `found == false` means never written (the image is then all zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub found: bool,
    pub seq: u64,
    pub lsn: u64,
    pub crc32c: u32,
    pub image: Bytes,
}

/// Why a binary body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Malformed(String),
    /// A page does not match its CRC-32C: damaged in store or in transit, never to be used.
    #[error("{0}")]
    CrcMismatch(String),
}

/// Upload framing, per page: `[file u64][block u64][lsn u64][crc32c u32][len u32][len bytes]`,
/// little-endian, pages back to back.
pub const UPLOAD_HEADER_LEN: usize = 32;

pub fn encode_upload(pages: &[PageUpload]) -> Bytes {
    let len = pages.iter().map(|p| UPLOAD_HEADER_LEN + p.image.len()).sum();
    let mut buf = BytesMut::with_capacity(len);
    for p in pages {
        buf.put_u64_le(p.file);
        buf.put_u64_le(p.block);
        buf.put_u64_le(p.lsn);
        buf.put_u32_le(p.crc32c);
        buf.put_u32_le(p.image.len() as u32);
        buf.put_slice(&p.image);
    }
    buf.freeze()
}

/// Decodes an upload body. Images are zero-copy slices of `body`. The CRC-32C is not checked here
/// (the server checks it and answers `crc_mismatch`).
pub fn decode_upload(body: &Bytes) -> Result<Vec<PageUpload>, FrameError> {
    let mut pages = Vec::with_capacity(body.len() / (BLOCK_SIZE + UPLOAD_HEADER_LEN) + 1);
    let mut at = 0;
    while at < body.len() {
        let header = body
            .get(at..at + UPLOAD_HEADER_LEN)
            .ok_or_else(|| FrameError::Malformed(format!("truncated page header at byte {at}")))?;
        let len = u32_at(header, 28) as usize;
        if len > BLOCK_SIZE {
            return Err(FrameError::Malformed(format!(
                "page at byte {at} is {len} bytes, more than {BLOCK_SIZE}"
            )));
        }
        let start = at + UPLOAD_HEADER_LEN;
        if start + len > body.len() {
            return Err(FrameError::Malformed(format!(
                "truncated page image at byte {start}"
            )));
        }
        pages.push(PageUpload {
            file: u64_at(header, 0),
            block: u64_at(header, 8),
            lsn: u64_at(header, 16),
            crc32c: u32_at(header, 24),
            image: body.slice(start..start + len),
        });
        at = start + len;
    }
    Ok(pages)
}

/// Batched-read answer framing, per requested page in request order:
/// `[found u8][0u8; 3][len u32][seq u64][lsn u64][crc32c u32][0u8; 4][len bytes]`, little-endian.
/// A never-written page is sent as `found = 0, len = 0` and stands for 16 KiB of zeros.
pub const READ_HEADER_LEN: usize = 32;

pub fn encode_read_response(pages: &[Page], buf: &mut BytesMut) {
    for p in pages {
        let image: &[u8] = if p.found { &p.image } else { &[] };
        buf.put_u8(u8::from(p.found));
        buf.put_bytes(0, 3);
        buf.put_u32_le(image.len() as u32);
        buf.put_u64_le(p.seq);
        buf.put_u64_le(p.lsn);
        buf.put_u32_le(p.crc32c);
        buf.put_bytes(0, 4);
        buf.put_slice(image);
    }
}

/// Decodes a batched-read answer and checks every page's CRC-32C.
pub fn decode_read_response(body: &Bytes) -> Result<Vec<Page>, FrameError> {
    let mut pages = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let header = body
            .get(at..at + READ_HEADER_LEN)
            .ok_or_else(|| FrameError::Malformed(format!("truncated page header at byte {at}")))?;
        let found = header[0] != 0;
        let len = u32_at(header, 4) as usize;
        let start = at + READ_HEADER_LEN;
        if len > BLOCK_SIZE || start + len > body.len() {
            return Err(FrameError::Malformed(format!(
                "bad page length {len} at byte {at}"
            )));
        }
        let page = if found {
            Page {
                found,
                seq: u64_at(header, 8),
                lsn: u64_at(header, 16),
                crc32c: u32_at(header, 24),
                image: body.slice(start..start + len),
            }
        } else {
            zero_page()
        };
        check_page_crc(&page)?;
        pages.push(page);
        at = start + len;
    }
    Ok(pages)
}

/// The answer for a never-written page.
pub fn zero_page() -> Page {
    static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
    Page {
        found: false,
        seq: 0,
        lsn: 0,
        crc32c: zero_page_crc(),
        image: Bytes::from_static(&ZEROS),
    }
}

/// CRC-32C of 16 KiB of zeros.
pub fn zero_page_crc() -> u32 {
    static CRC: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crate::crc32c(&[0; BLOCK_SIZE]))
}

fn check_page_crc(page: &Page) -> Result<(), FrameError> {
    let actual = crate::crc32c(&page.image);
    if actual != page.crc32c {
        return Err(FrameError::CrcMismatch(format!(
            "CRC-32C mismatch on a page (seq {}, lsn {}): stored {:#010x}, received {:#010x}",
            page.seq, page.lsn, page.crc32c, actual
        )));
    }
    Ok(())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Typed client of `pageserver-lite`: keep-alive connections, bounded retries with backoff (see
/// [`HttpClient`]), CRC-32C verification of every page read.
#[derive(Debug, Clone)]
pub struct PageserverClient {
    http: HttpClient,
}

/// How often a page read whose CRC-32C does not match is fetched again before failing.
const CRC_RETRIES: u32 = 2;

impl PageserverClient {
    pub fn new(url: &str) -> Result<Self, ClientError> {
        Self::with_retry(url, RetryPolicy::default())
    }

    pub fn with_retry(url: &str, retry: RetryPolicy) -> Result<Self, ClientError> {
        Ok(Self {
            http: HttpClient::new(url, retry)?,
        })
    }

    /// `PAGE_SERVER_URL`, else [`DEFAULT_URL`].
    pub fn from_env() -> Result<Self, ClientError> {
        let url = std::env::var("PAGE_SERVER_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        Self::new(&url)
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.http.get_bytes("/healthz").await.map(drop)
    }

    pub async fn create_timeline(&self, req: &CreateTimelineRequest) -> Result<TimelineInfo, ClientError> {
        self.http.post_json("/v1/timelines", req).await
    }

    pub async fn list_timelines(&self) -> Result<Vec<TimelineInfo>, ClientError> {
        self.http.get_json("/v1/timelines").await
    }

    pub async fn timeline(&self, timeline: &str) -> Result<TimelineInfo, ClientError> {
        self.http.get_json(&format!("/v1/timelines/{timeline}")).await
    }

    pub async fn acquire_term(&self, timeline: &str, term: Option<u64>) -> Result<TermInfo, ClientError> {
        self.http
            .post_json(
                &format!("/v1/timelines/{timeline}/term"),
                &AcquireTermRequest { term },
            )
            .await
    }

    pub async fn create_file(
        &self,
        timeline: &str,
        req: &CreateFileRequest,
    ) -> Result<FileInfo, ClientError> {
        self.http
            .post_json(&format!("/v1/timelines/{timeline}/files"), req)
            .await
    }

    pub async fn update_file(
        &self,
        timeline: &str,
        file: u64,
        req: &UpdateFileRequest,
    ) -> Result<FileInfo, ClientError> {
        self.http
            .post_json(&format!("/v1/timelines/{timeline}/files/{file}"), req)
            .await
    }

    /// Renames `file` to `path`. If another live file has that path: with `replace`, that file
    /// is unlinked by the same durable change (POSIX `rename` over an existing target: nobody
    /// ever sees neither or both); without it the rename is refused with 409
    /// [`error_code::PATH_EXISTS`].
    pub async fn rename_file(
        &self,
        timeline: &str,
        file: u64,
        term: u64,
        path: &str,
        replace: bool,
    ) -> Result<FileInfo, ClientError> {
        let req = UpdateFileRequest {
            term,
            path: Some(path.to_string()),
            replace,
            ..Default::default()
        };
        self.update_file(timeline, file, &req).await
    }

    pub async fn unlink_file(
        &self,
        timeline: &str,
        file: u64,
        term: u64,
    ) -> Result<UnlinkFileResponse, ClientError> {
        self.http
            .post_json(
                &format!("/v1/timelines/{timeline}/files/{file}/unlink"),
                &UnlinkFileRequest { term },
            )
            .await
    }

    pub async fn list_files(&self, timeline: &str, at: ReadAt) -> Result<Vec<FileInfo>, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/files{}", at.query()))
            .await
    }

    pub async fn file(&self, timeline: &str, file: u64, at: ReadAt) -> Result<FileInfo, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/files/{file}{}", at.query()))
            .await
    }

    /// Uploads a batch atomically: all pages are durable when this returns Ok, none if it fails.
    pub async fn put_pages(
        &self,
        timeline: &str,
        term: u64,
        pages: &[PageUpload],
    ) -> Result<PutPagesResponse, ClientError> {
        self.http
            .post_bytes(
                &format!("/v1/timelines/{timeline}/pages?term={term}"),
                encode_upload(pages),
            )
            .await
    }

    /// `GetPage`: one page by file and block, or by space id and page number.
    pub async fn get_page(&self, timeline: &str, addr: PageAddr, at: ReadAt) -> Result<Page, ClientError> {
        let path = format!("{}{}", addr.path(timeline), at.query());
        self.read_checked(&path, || async {
            let resp = self.http.get_bytes(&path).await?;
            page_from_response(resp)
        })
        .await
    }

    /// Batched read; pages come back in request order.
    pub async fn read_pages(&self, timeline: &str, req: &ReadPagesRequest) -> Result<Vec<Page>, ClientError> {
        let path = format!("/v1/timelines/{timeline}/pages/read");
        let body = Bytes::from(serde_json::to_vec(req).map_err(|e| self.decode_error(&path, e))?);
        self.read_checked(&path, || async {
            let resp = self
                .http
                .send(Method::POST, &path, Some("application/json"), body.clone())
                .await?;
            let pages = decode_read_response(&resp.body)?;
            if pages.len() != req.pages.len() {
                let message = format!("asked for {} pages, got {}", req.pages.len(), pages.len());
                return Err(FrameError::Malformed(message).into());
            }
            Ok(pages)
        })
        .await
    }

    /// `GetPageVersions`: versions of a page with `from_lsn <= lsn <= to_lsn`, oldest first.
    pub async fn page_versions(
        &self,
        timeline: &str,
        addr: PageAddr,
        from_lsn: u64,
        to_lsn: u64,
    ) -> Result<Vec<PageVersionInfo>, ClientError> {
        self.http
            .get_json(&format!(
                "{}/versions?from_lsn={from_lsn}&to_lsn={to_lsn}",
                addr.path(timeline)
            ))
            .await
    }

    pub async fn record_marker(
        &self,
        timeline: &str,
        req: &RecordMarkerRequest,
    ) -> Result<CheckpointMarker, ClientError> {
        self.http
            .post_json(&format!("/v1/timelines/{timeline}/markers"), req)
            .await
    }

    pub async fn list_markers(&self, timeline: &str) -> Result<Vec<CheckpointMarker>, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/markers"))
            .await
    }

    /// Runs a page read; a CRC-32C mismatch is read again (the damage may be in transit), then
    /// reported as [`ClientError::Decode`].
    async fn read_checked<T, F, Fut>(&self, path: &str, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ReadFailure>>,
    {
        let mut tries = 0;
        loop {
            let message = match attempt().await {
                Ok(value) => return Ok(value),
                Err(ReadFailure::Client(e)) => return Err(e),
                Err(ReadFailure::Frame(FrameError::CrcMismatch(m))) if tries < CRC_RETRIES => m,
                Err(ReadFailure::Frame(e)) => return Err(self.decode_error(path, e)),
            };
            tries += 1;
            tracing::warn!(url = %self.url(path), %message, "page failed its CRC-32C check, reading again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.http.base_url(), path)
    }

    fn decode_error(&self, path: &str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Decode {
            url: self.url(path),
            message: e.to_string(),
        }
    }
}

/// How one attempt of a page read failed.
enum ReadFailure {
    Client(ClientError),
    Frame(FrameError),
}

impl From<ClientError> for ReadFailure {
    fn from(e: ClientError) -> Self {
        ReadFailure::Client(e)
    }
}

impl From<FrameError> for ReadFailure {
    fn from(e: FrameError) -> Self {
        ReadFailure::Frame(e)
    }
}

fn page_from_response(resp: RawResponse) -> Result<Page, ReadFailure> {
    let header = |name: &str| -> Result<u64, FrameError> {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| FrameError::Malformed(format!("missing or invalid header {name}")))
    };
    let page = Page {
        found: header(HEADER_FOUND)? != 0,
        seq: header(HEADER_SEQ)?,
        lsn: header(HEADER_PAGE_LSN)?,
        crc32c: header(HEADER_CRC32C)? as u32,
        image: resp.body,
    };
    check_page_crc(&page)?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8, len: usize) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn upload_framing_round_trips() {
        let pages = vec![
            PageUpload::new(1, 2, 3, page(7, BLOCK_SIZE)),
            PageUpload::new(4, 5, 0, page(9, 100)),
        ];
        let body = encode_upload(&pages);
        assert_eq!(decode_upload(&body).unwrap(), pages);
    }

    #[test]
    fn upload_framing_rejects_truncation_and_oversized_pages() {
        let body = encode_upload(&[PageUpload::new(1, 2, 3, page(7, BLOCK_SIZE))]);
        assert!(decode_upload(&body.slice(..body.len() - 1)).is_err());
        assert!(decode_upload(&body.slice(..10)).is_err());
        let mut big = BytesMut::new();
        big.put_bytes(0, 28);
        big.put_u32_le(BLOCK_SIZE as u32 + 1);
        assert!(decode_upload(&big.freeze()).is_err());
    }

    #[test]
    fn read_framing_round_trips_and_expands_zero_pages() {
        let image = page(3, BLOCK_SIZE);
        let found = Page {
            found: true,
            seq: 5,
            lsn: 6,
            crc32c: crate::crc32c(&image),
            image,
        };
        let mut buf = BytesMut::new();
        encode_read_response(&[found.clone(), zero_page()], &mut buf);
        let buf = buf.freeze();
        assert_eq!(buf.len(), 2 * READ_HEADER_LEN + BLOCK_SIZE);
        assert_eq!(decode_read_response(&buf).unwrap(), vec![found, zero_page()]);
    }

    #[test]
    fn read_framing_refuses_a_page_whose_crc_does_not_match() {
        let image = page(3, BLOCK_SIZE);
        let bad = Page {
            found: true,
            seq: 1,
            lsn: 1,
            crc32c: crate::crc32c(&image) ^ 1,
            image,
        };
        let mut buf = BytesMut::new();
        encode_read_response(&[bad], &mut buf);
        let err = decode_read_response(&buf.freeze()).unwrap_err();
        assert!(matches!(err, FrameError::CrcMismatch(_)), "{err}");
    }

    #[test]
    fn read_points_and_addresses_serialize_as_documented() {
        let req = ReadPagesRequest {
            at: ReadAt::Lsn(42),
            pages: vec![
                PageAddr::File { file: 1, block: 2 },
                PageAddr::Space { space: 5, page: 3 },
            ],
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"at":{"lsn":42},"pages":[{"file":1,"block":2},{"space":5,"page":3}]}"#
        );
        assert_eq!(serde_json::from_str::<ReadPagesRequest>(&json).unwrap(), req);
        assert_eq!(serde_json::to_string(&ReadAt::Latest).unwrap(), r#""latest""#);
    }

    /// A server that answers every GetPage with a page whose body does not match its `x-crc32c`.
    async fn serve_damaged_pages() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = vec![1u8; BLOCK_SIZE];
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{HEADER_FOUND}: 1\r\n{HEADER_SEQ}: 1\r\n\
                             {HEADER_PAGE_LSN}: 1\r\n{HEADER_CRC32C}: {}\r\n\r\n",
                            body.len(),
                            crate::crc32c(&body) ^ 1
                        );
                        conn.write_all(head.as_bytes()).await.unwrap();
                        conn.write_all(&body).await.unwrap();
                    }
                });
            }
        });
        (url, served)
    }

    #[tokio::test]
    async fn a_page_failing_its_crc_is_read_again_then_refused() {
        let (url, served) = serve_damaged_pages().await;
        let client = PageserverClient::with_retry(&url, RetryPolicy::none()).unwrap();
        let err = client
            .get_page("main", PageAddr::File { file: 1, block: 0 }, ReadAt::Latest)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Decode { message, .. } if message.contains("CRC-32C")),
            "{err}"
        );
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1 + CRC_RETRIES);
    }
}
