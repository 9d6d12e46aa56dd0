//! walsync: wire types, the append-stream framing, and the typed client.
//!
//! The API is documented in `walsync/docs/api.md`. In short: a timeline's WAL is addressed by LSN;
//! a writer acquires a term, then appends `(start_lsn, bytes)` that continue exactly at the durable
//! end, either one request per chunk ([`WalsyncClient::append`]) or over one long-lived stream
//! ([`WalAppendStream`]) whose answer carries the durable LSN as it advances. Every chunk carries
//! its CRC-32C. A quorum client can wrap several [`WalsyncClient`]s: every call is addressed by
//! (timeline, term, LSN) and idempotent on an exact resend, so it may be sent to N nodes and
//! counted when a majority answers.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{http_authority, ClientError, HttpClient, RetryPolicy};
use crate::error::ErrorBody;

/// Environment variable naming the walsync (safekeeper) URL.
pub const URL_ENV: &str = "SAFEKEEPER_URL";
pub const DEFAULT_URL: &str = "http://127.0.0.1:8082";

/// Largest WAL chunk accepted in one append or stream frame (InnoDB's largest mtr is 1 MiB).
pub const MAX_CHUNK_LEN: usize = 16 << 20;

/// Query parameter (or header `x-crc32c`) carrying the CRC-32C of a plain append's body, as 8 hex
/// digits; a WAL read answers with the header.
pub const CRC_PARAM: &str = "crc32c";
pub const CRC_HEADER: &str = "x-crc32c";

/// `PUT /v1/timelines/{tl}`: create a timeline, empty or as a branch of another at an LSN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTimelineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BranchPoint>,
}

/// Where a branch starts: its WAL below `lsn` is the parent's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPoint {
    pub timeline_id: String,
    pub lsn: u64,
}

/// `POST /v1/timelines/{tl}/term` body (optional). Without a term the node grants current + 1; with
/// one it adopts it if it is newer than every term it granted (how a quorum client aligns N nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireTermRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermResponse {
    pub term: u64,
    /// Where the new writer continues (`None` for an empty timeline).
    pub durable_lsn: Option<u64>,
}

/// Answer of a plain append, and the acknowledgement carried by the append stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    pub durable_lsn: u64,
}

/// The redo log geometry from the `ib_logfile0` header, effective from `at_lsn` on (a log resize
/// records a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub first_lsn: u64,
    pub file_size: u64,
    pub creator: String,
    pub at_lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeometryRecord {
    #[serde(flatten)]
    pub geometry: Geometry,
    /// walsync's durable LSN when the geometry arrived.
    pub durable_lsn_at_arrival: Option<u64>,
    pub received_at_unix_ms: u64,
}

/// A checkpoint block as InnoDB wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub checkpoint_lsn: u64,
    pub end_lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// walsync's durable LSN when the checkpoint arrived.
    pub durable_lsn_at_arrival: Option<u64>,
    pub received_at_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHistory {
    pub checkpoints: Vec<CheckpointRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeometryHistory {
    pub geometry: Vec<GeometryRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineStatus {
    pub timeline_id: String,
    pub parent: Option<BranchPoint>,
    pub term: u64,
    /// First LSN of this timeline's own WAL (a branch's WAL below it is read from the parent).
    pub wal_start_lsn: Option<u64>,
    pub durable_lsn: Option<u64>,
    /// The latest geometry (first LSN, file size, creator).
    pub geometry: Option<GeometryRecord>,
    pub latest_checkpoint: Option<CheckpointRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineList {
    pub timelines: Vec<TimelineStatus>,
}

/// `GET /v1/timelines/{tl}/recovery?lsn=T`: what a fresh node needs to synthesize `ib_logfile0`
/// that recovers to `wal_to`: the geometry in force, the checkpoint to start from, and the WAL range
/// `[wal_from, wal_to)` to fetch with `GET .../wal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPlan {
    pub timeline_id: String,
    pub geometry: Geometry,
    pub checkpoint: Checkpoint,
    pub wal_from: u64,
    pub wal_to: u64,
}

/// One line of the append stream's answer (JSON per line): the durable LSN after a frame, or the
/// error that ended the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamAck {
    Durable {
        durable_lsn: u64,
    },
    Failed {
        status: u16,
        error: String,
        message: String,
    },
}

/// A WAL chunk on the append stream. On the wire: `[u64 start_lsn][u32 len][u32 crc32c(data)][data]`,
/// little-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFrame {
    pub start_lsn: u64,
    pub data: Bytes,
}

pub const FRAME_HEADER_LEN: usize = 16;

pub fn encode_frame(start_lsn: u64, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN + data.len());
    buf.put_u64_le(start_lsn);
    buf.put_u32_le(data.len() as u32);
    buf.put_u32_le(crate::crc32c(data));
    buf.put_slice(data);
    buf.freeze()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame at LSN {start_lsn}: CRC-32C mismatch (sent {sent:08x}, computed {computed:08x})")]
    CrcMismatch {
        start_lsn: u64,
        sent: u32,
        computed: u32,
    },
    #[error("frame at LSN {start_lsn}: length {len} is not in 1..={MAX_CHUNK_LEN}")]
    BadLength { start_lsn: u64, len: usize },
}

/// Splits a byte stream into [`WalFrame`]s, whatever the chunking of the transport.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<WalFrame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let mut header = &self.buf[..FRAME_HEADER_LEN];
        let start_lsn = header.get_u64_le();
        let len = header.get_u32_le() as usize;
        let sent = header.get_u32_le();
        if len == 0 || len > MAX_CHUNK_LEN {
            return Err(FrameError::BadLength { start_lsn, len });
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let data = self.buf.split_to(len).freeze();
        let computed = crate::crc32c(&data);
        if computed != sent {
            return Err(FrameError::CrcMismatch {
                start_lsn,
                sent,
                computed,
            });
        }
        Ok(Some(WalFrame { start_lsn, data }))
    }

    /// Bytes of an incomplete frame still buffered (non-zero at the end of a stream = truncated).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Typed client of one walsync node.
#[derive(Debug, Clone)]
pub struct WalsyncClient {
    http: HttpClient,
}

impl WalsyncClient {
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Ok(Self {
            http: HttpClient::new(base_url, RetryPolicy::default())?,
        })
    }

    /// The node named by `SAFEKEEPER_URL`, or the default `http://127.0.0.1:8082`.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::new(&std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_string()))
    }

    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self {
            http: self.http.with_retry(retry),
        }
    }

    pub fn base_url(&self) -> &str {
        self.http.base_url()
    }

    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.http.get_bytes("/healthz").await.map(drop)
    }

    pub async fn list_timelines(&self) -> Result<TimelineList, ClientError> {
        self.http.get_json("/v1/timelines").await
    }

    /// Creates a timeline (idempotent when it exists with the same parent).
    pub async fn create_timeline(
        &self,
        timeline: &str,
        req: &CreateTimelineRequest,
    ) -> Result<TimelineStatus, ClientError> {
        self.put_json(&format!("/v1/timelines/{timeline}"), req).await
    }

    pub async fn status(&self, timeline: &str) -> Result<TimelineStatus, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/status"))
            .await
    }

    /// Acquires a new term (creating the timeline if needed); see [`AcquireTermRequest`].
    pub async fn acquire_term(&self, timeline: &str, term: Option<u64>) -> Result<TermResponse, ClientError> {
        self.http
            .post_json(
                &format!("/v1/timelines/{timeline}/term"),
                &AcquireTermRequest { term },
            )
            .await
    }

    /// Appends `data` at `start_lsn` and returns once it is durable.
    pub async fn append(
        &self,
        timeline: &str,
        term: u64,
        start_lsn: u64,
        data: Bytes,
    ) -> Result<AppendResponse, ClientError> {
        let crc = crate::crc32c(&data);
        let path =
            format!("/v1/timelines/{timeline}/wal?term={term}&start_lsn={start_lsn}&{CRC_PARAM}={crc:08x}");
        self.http.post_bytes(&path, data).await
    }

    /// Reads the durable WAL bytes `[from, to)`, checking the answer's length and CRC-32C.
    pub async fn read_wal(&self, timeline: &str, from: u64, to: u64) -> Result<Bytes, ClientError> {
        let path = format!("/v1/timelines/{timeline}/wal?from={from}&to={to}");
        let resp = self.http.get_bytes(&path).await?;
        let computed = crate::crc32c(&resp.body);
        let sent = resp
            .headers
            .get(CRC_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u32::from_str_radix(v, 16).ok());
        let problem = if resp.body.len() as u64 != to.saturating_sub(from) {
            Some(format!(
                "expected {} bytes, got {}",
                to.saturating_sub(from),
                resp.body.len()
            ))
        } else if sent != Some(computed) {
            Some(format!(
                "CRC-32C {computed:08x} does not match the {CRC_HEADER} header {sent:08x?}"
            ))
        } else {
            None
        };
        match problem {
            Some(message) => Err(ClientError::Decode {
                url: format!("{}{path}", self.base_url()),
                message,
            }),
            None => Ok(resp.body),
        }
    }

    pub async fn put_geometry(
        &self,
        timeline: &str,
        term: u64,
        geometry: &Geometry,
    ) -> Result<GeometryRecord, ClientError> {
        self.put_json(
            &format!("/v1/timelines/{timeline}/geometry?term={term}"),
            geometry,
        )
        .await
    }

    pub async fn geometry_history(&self, timeline: &str) -> Result<GeometryHistory, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/geometry"))
            .await
    }

    pub async fn add_checkpoint(
        &self,
        timeline: &str,
        term: u64,
        checkpoint: &Checkpoint,
    ) -> Result<CheckpointRecord, ClientError> {
        self.http
            .post_json(
                &format!("/v1/timelines/{timeline}/checkpoints?term={term}"),
                checkpoint,
            )
            .await
    }

    pub async fn checkpoints(&self, timeline: &str) -> Result<CheckpointHistory, ClientError> {
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/checkpoints"))
            .await
    }

    /// What a fresh node needs to recover to `lsn` (default: the durable LSN).
    pub async fn recovery_plan(&self, timeline: &str, lsn: Option<u64>) -> Result<RecoveryPlan, ClientError> {
        let query = lsn.map(|l| format!("?lsn={l}")).unwrap_or_default();
        self.http
            .get_json(&format!("/v1/timelines/{timeline}/recovery{query}"))
            .await
    }

    /// Opens a long-lived append stream on its own connection.
    pub async fn open_stream(&self, timeline: &str, term: u64) -> Result<WalAppendStream, ClientError> {
        WalAppendStream::open(self.base_url(), timeline, term, STREAM_ANSWER_TIMEOUT).await
    }

    async fn put_json<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base_url());
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let resp = self
            .http
            .send(Method::PUT, path, Some("application/json"), body.into())
            .await?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Decode {
            url,
            message: e.to_string(),
        })
    }
}

/// What the readers of a stream's acknowledgements have seen so far.
#[derive(Debug, Clone, Default)]
struct StreamState {
    durable_lsn: Option<u64>,
    /// Set when the stream ended: `None` inside = closed cleanly after the last ack.
    ended: Option<Option<StreamFailure>>,
}

#[derive(Debug, Clone)]
struct StreamFailure {
    status: Option<StatusCode>,
    body: ErrorBody,
}

impl StreamFailure {
    fn transport(message: impl Into<String>) -> Self {
        Self {
            status: None,
            body: ErrorBody::new("transport", message),
        }
    }
}

/// Where the decoder of the answer's chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
}

/// The answer's body as it arrives: chunked transfer coding around ack lines.
#[derive(Debug)]
struct AckReader {
    /// Received bytes not decoded yet.
    buf: BytesMut,
    chunked: Chunked,
    /// Decoded body bytes not yet split into lines.
    lines: BytesMut,
    state: StreamState,
}

impl AckReader {
    /// Decodes what `buf` holds; tells whether the state changed.
    fn decode(&mut self) -> bool {
        let before = (self.state.durable_lsn, self.state.ended.is_some());
        while self.state.ended.is_none() {
            match self.chunked {
                Chunked::Size | Chunked::Trailer => {
                    let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
                        break;
                    };
                    let line = self.buf.split_to(nl + 1);
                    let line = std::str::from_utf8(&line).unwrap_or("").trim();
                    if self.chunked == Chunked::Trailer {
                        if line.is_empty() {
                            self.end(None);
                        }
                        continue;
                    }
                    let size = line.split(';').next().unwrap_or("");
                    match usize::from_str_radix(size.trim(), 16) {
                        Ok(0) => self.chunked = Chunked::Trailer,
                        Ok(n) => self.chunked = Chunked::Data(n),
                        Err(_) => self.fail("bad_ack", format!("bad chunk size line {line:?}")),
                    }
                }
                Chunked::Data(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let take = left.min(self.buf.len());
                    let data = self.buf.split_to(take);
                    self.lines.extend_from_slice(&data);
                    self.chunked = match left - take {
                        0 => Chunked::DataEnd,
                        rest => Chunked::Data(rest),
                    };
                    self.take_lines();
                }
                Chunked::DataEnd => {
                    if self.buf.len() < 2 {
                        break;
                    }
                    if &self.buf[..2] == b"\r\n" {
                        self.buf.advance(2);
                        self.chunked = Chunked::Size;
                    } else {
                        self.fail("bad_ack", "chunk data not followed by CRLF".into());
                    }
                }
            }
        }
        before != (self.state.durable_lsn, self.state.ended.is_some())
    }

    fn take_lines(&mut self) {
        while let Some(nl) = self.lines.iter().position(|b| *b == b'\n') {
            let line = self.lines.split_to(nl + 1);
            match serde_json::from_slice::<StreamAck>(&line[..nl]) {
                Ok(StreamAck::Durable { durable_lsn }) => {
                    self.state.durable_lsn = self.state.durable_lsn.max(Some(durable_lsn));
                }
                Ok(StreamAck::Failed {
                    status,
                    error,
                    message,
                }) => {
                    self.end(Some(StreamFailure {
                        status: StatusCode::from_u16(status).ok(),
                        body: ErrorBody::new(error, message),
                    }));
                    return;
                }
                Err(e) => {
                    self.fail("bad_ack", format!("undecodable ack line: {e}"));
                    return;
                }
            }
        }
    }

    fn end(&mut self, failure: Option<StreamFailure>) {
        if self.state.ended.is_none() {
            self.state.ended = Some(failure);
        }
    }

    fn fail(&mut self, error: &str, message: String) {
        self.end(Some(StreamFailure {
            status: None,
            body: ErrorBody::new(error, message),
        }));
    }
}

/// The connection of one append stream, shared by the tasks sending and waiting on it.
#[derive(Debug)]
struct StreamConn {
    tcp: tokio::net::TcpStream,
    /// Frames are written whole and in order, one writer at a time.
    writing: tokio::sync::Mutex<()>,
    acks: std::sync::Mutex<AckReader>,
    /// Signalled when the state changes, so waiters another task read for look again.
    changed: tokio::sync::Notify,
}

impl StreamConn {
    fn acks(&self) -> std::sync::MutexGuard<'_, AckReader> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads and decodes whatever has arrived, without waiting.
    fn pump(&self) {
        let mut acks = self.acks();
        let mut changed = false;
        while acks.state.ended.is_none() {
            acks.buf.reserve(4096);
            let room = acks.buf.capacity() - acks.buf.len();
            match self.tcp.try_read_buf(&mut acks.buf) {
                Ok(0) => {
                    let message = "walsync closed the append stream before its end";
                    acks.end(Some(StreamFailure::transport(message)));
                    changed = true;
                }
                Ok(n) => {
                    changed |= acks.decode();
                    // A short read took all there was: the read that would say so (EAGAIN) can
                    // wait for the next pump, off the way from this ack to the caller.
                    if n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    acks.end(Some(StreamFailure::transport(e.to_string())));
                    changed = true;
                }
            }
        }
        drop(acks);
        if changed {
            self.changed.notify_waiters();
        }
    }

    fn state(&self) -> StreamState {
        self.acks().state.clone()
    }

    /// Writes `bytes` whole. While the socket is full, reads acks too: the server may be waiting
    /// for room to send them before it reads more frames.
    async fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.tcp.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.pump();
                    if let Some(Some(failure)) = &self.acks().state.ended {
                        let message = format!("{}: {}", failure.body.error, failure.body.message);
                        return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, message));
                    }
                    tokio::select! {
                        ready = self.tcp.writable() => ready?,
                        ready = self.tcp.readable() => ready?,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Marks the stream broken unless disarmed: a frame cut off by a cancelled `send` leaves the
/// request body unparseable, so nothing more may be sent on it (dropping the stream closes it).
struct PartialWrite<'a>(Option<&'a StreamConn>);

impl Drop for PartialWrite<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            let message = "a send was cancelled inside a frame; the stream is unusable";
            conn.acks().end(Some(StreamFailure::transport(message)));
            conn.changed.notify_waiters();
        }
    }
}

/// A long-lived append: frames go out on a chunked request body, durable-LSN acks come back on the
/// streamed answer. Frames are pipelined: [`send`](Self::send) does not wait for durability;
/// [`wait_durable`](Self::wait_durable) does. The stream ends at the first refused frame.
///
/// No task sits between the caller and the socket: `send` writes the frame itself, and whoever
/// waits reads the acks that have arrived, so a commit costs no hand-off between threads on the
/// client either (HTTP/1.1 is spoken directly on the connection for this one request).
#[derive(Debug)]
pub struct WalAppendStream {
    url: String,
    conn: std::sync::Arc<StreamConn>,
}

/// How long opening a stream waits for the answer's head (the server answers at once, or `503
/// busy` when it is serving all the connections it can).
const STREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl WalAppendStream {
    async fn open(
        base_url: &str,
        timeline: &str,
        term: u64,
        answer_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let (connect_to, authority) = http_authority(base_url)?;
        let base_url = format!("http://{authority}");
        let path = format!("/v1/timelines/{timeline}/wal/stream?term={term}");
        let url = format!("{base_url}{path}");
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        let mut tcp = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&connect_to),
        )
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| transport(e.to_string()))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/octet-stream\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes())
            .await
            .map_err(|e| transport(e.to_string()))?;
        let (status, body_start, mut buf) =
            tokio::time::timeout(answer_timeout, read_response_head(&mut tcp))
                .await
                .map_err(|_| transport(format!("no answer within {answer_timeout:?}")))?
                .map_err(|e| transport(e.to_string()))?;
        if status != StatusCode::OK {
            let body = read_error_body(&mut tcp, &mut buf, body_start).await;
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| ErrorBody::new("http_error", String::from_utf8_lossy(&body)));
            return Err(ClientError::Status { url, status, body });
        }
        if !body_start.chunked {
            return Err(transport("the append stream's answer is not chunked".into()));
        }
        let acks = AckReader {
            buf: buf.split_off(body_start.offset),
            chunked: Chunked::Size,
            lines: BytesMut::new(),
            state: StreamState::default(),
        };
        let conn = std::sync::Arc::new(StreamConn {
            tcp,
            writing: tokio::sync::Mutex::new(()),
            acks: std::sync::Mutex::new(acks),
            changed: tokio::sync::Notify::new(),
        });
        conn.acks().decode();
        Ok(Self { url, conn })
    }

    /// Sends `data` at `start_lsn` (written to the connection before this returns, not waited
    /// for); fails if the stream already ended.
    pub async fn send(&self, start_lsn: u64, data: &[u8]) -> Result<(), ClientError> {
        self.check()?;
        // One write per frame: chunk size line, frame, CRLF.
        let frame_len = FRAME_HEADER_LEN + data.len();
        let mut chunk = BytesMut::with_capacity(frame_len + 16);
        chunk.put_slice(format!("{frame_len:x}\r\n").as_bytes());
        chunk.put_slice(&encode_frame(start_lsn, data));
        chunk.put_slice(b"\r\n");
        let _writing = self.conn.writing.lock().await;
        let mut guard = PartialWrite(Some(&self.conn));
        let written = self.conn.write_all(&chunk).await;
        guard.0 = None;
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                // The server may have said why it closed the stream: report that if so.
                self.conn.pump();
                self.check()?;
                Err(self.failure_error(&StreamFailure::transport(e.to_string())))
            }
        }
    }

    /// The durable LSN acknowledged so far (as far as acks have been read: waiting reads them).
    pub fn durable_lsn(&self) -> Option<u64> {
        self.conn.pump();
        self.conn.state().durable_lsn
    }

    /// Waits until the durable LSN reaches `lsn`, returning it. Several tasks may wait at once.
    pub async fn wait_durable(&self, lsn: u64) -> Result<u64, ClientError> {
        let reached = |s: &StreamState| s.durable_lsn.filter(|d| *d >= lsn);
        match self.wait_for(|s| reached(s).is_some()).await? {
            state if reached(&state).is_some() => Ok(state.durable_lsn.unwrap_or(lsn)),
            _ => Err(self.closed_error(&format!(
                "the append stream ended before LSN {lsn} was acknowledged"
            ))),
        }
    }

    /// Ends the request body and waits for the server to acknowledge everything sent.
    pub async fn finish(self) -> Result<Option<u64>, ClientError> {
        self.check()?;
        {
            let _writing = self.conn.writing.lock().await;
            // If this fails the connection is gone; the wait below says how.
            let _ = self.conn.write_all(b"0\r\n\r\n").await;
        }
        self.wait_for(|_| false).await.map(|s| s.durable_lsn)
    }

    /// Waits until `done` holds or the stream ended (cleanly: the state is returned; with a failure:
    /// it is returned as the error). Reads the acks itself: no task does it for the waiters.
    async fn wait_for(&self, done: impl Fn(&StreamState) -> bool) -> Result<StreamState, ClientError> {
        loop {
            // Registered before looking, so a change made meanwhile by another waiter wakes us.
            let changed = self.conn.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.conn.pump();
            let state = self.conn.state();
            match &state.ended {
                Some(Some(failure)) => return Err(self.failure_error(failure)),
                Some(None) => return Ok(state),
                None if done(&state) => return Ok(state),
                None => {}
            }
            tokio::select! {
                ready = self.conn.tcp.readable() => {
                    if let Err(e) = ready {
                        self.conn.acks().end(Some(StreamFailure::transport(e.to_string())));
                    }
                }
                () = &mut changed => {}
            }
        }
    }

    fn closed_error(&self, message: &str) -> ClientError {
        self.failure_error(&StreamFailure {
            status: None,
            body: ErrorBody::new("stream_closed", message),
        })
    }

    /// Fails if the stream is known to have ended. Does not read: a send should not pay for a
    /// system call on its way out (acks are read by whoever waits, and by a send that finds the
    /// socket full).
    fn check(&self) -> Result<(), ClientError> {
        match &self.conn.state().ended {
            Some(Some(failure)) => Err(self.failure_error(failure)),
            Some(None) => Err(self.closed_error("the append stream has ended")),
            None => Ok(()),
        }
    }

    fn failure_error(&self, failure: &StreamFailure) -> ClientError {
        match failure.status {
            Some(status) => ClientError::Status {
                url: self.url.clone(),
                status,
                body: failure.body.clone(),
            },
            None => ClientError::Transport {
                url: self.url.clone(),
                message: format!("{}: {}", failure.body.error, failure.body.message),
            },
        }
    }
}

/// Where an answer's body starts in the bytes read, and how it is framed.
struct BodyStart {
    offset: usize,
    chunked: bool,
    content_length: Option<usize>,
}

/// Reads an answer's status line and headers (and whatever follows them).
async fn read_response_head(
    tcp: &mut tokio::net::TcpStream,
) -> std::io::Result<(StatusCode, BodyStart, BytesMut)> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(invalid("connection closed before the answer's head".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(offset)) => {
                let status = StatusCode::from_u16(response.code.unwrap_or(0))
                    .map_err(|e| invalid(format!("bad status: {e}")))?;
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let chunked =
                    header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
                let start = BodyStart {
                    offset,
                    chunked,
                    content_length,
                };
                return Ok((status, start, buf));
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 << 10 => {}
            Ok(httparse::Status::Partial) => return Err(invalid("answer head over 64 KiB".into())),
            Err(e) => return Err(invalid(format!("bad answer head: {e}"))),
        }
    }
}

/// The body of an error answer (up to its length, or as much as arrives before the close).
async fn read_error_body(tcp: &mut tokio::net::TcpStream, buf: &mut BytesMut, start: BodyStart) -> Bytes {
    let mut body = buf.split_off(start.offset);
    let want = start.content_length.unwrap_or(64 << 10);
    while body.len() < want {
        match tokio::time::timeout(Duration::from_secs(2), tcp.read_buf(&mut body)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    body.truncate(want);
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opening_a_stream_gives_up_on_a_server_that_never_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accepts, reads, never answers.
        let _server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut sink).await;
        });
        let opened = tokio::time::timeout(
            Duration::from_secs(10),
            WalAppendStream::open(&url, "tl", 1, Duration::from_millis(200)),
        )
        .await
        .expect("gave up on its own");
        let err = opened.unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err}");
    }

    #[test]
    fn frames_decode_across_arbitrary_splits() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_frame(100, b"hello"));
        wire.extend_from_slice(&encode_frame(105, &[7u8; 300]));
        for split in 0..wire.len() {
            let mut dec = FrameDecoder::default();
            let mut frames = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.push(part);
                while let Some(f) = dec.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0].start_lsn, 100);
            assert_eq!(&frames[0].data[..], b"hello");
            assert_eq!(frames[1].start_lsn, 105);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn corrupted_frame_is_refused() {
        let mut wire = encode_frame(1, b"abc").to_vec();
        *wire.last_mut().unwrap() ^= 1;
        let mut dec = FrameDecoder::default();
        dec.push(&wire);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::CrcMismatch { start_lsn: 1, .. })
        ));
        let mut dec = FrameDecoder::default();
        dec.push(&encode_frame(1, b"")[..]);
        assert!(matches!(dec.next_frame(), Err(FrameError::BadLength { .. })));
    }

    fn reader() -> AckReader {
        AckReader {
            buf: BytesMut::new(),
            chunked: Chunked::Size,
            lines: BytesMut::new(),
            state: StreamState::default(),
        }
    }

    #[test]
    fn the_chunked_answer_decodes_across_arbitrary_splits() {
        let body = concat!(
            "14\r\n{\"durable_lsn\":100}\n\r\n",
            "28\r\n{\"durable_lsn\":250}\n{\"durable_lsn\":250}\n\r\n",
            "3;ext=1\r\n{\"d\r\n",
            "11\r\nurable_lsn\":300}\n\r\n",
            "0\r\n\r\n"
        );
        for split in 0..body.len() {
            let mut r = reader();
            for part in [&body[..split], &body[split..]] {
                r.buf.extend_from_slice(part.as_bytes());
                r.decode();
            }
            assert_eq!(r.state.durable_lsn, Some(300), "split at {split}");
            assert!(matches!(r.state.ended, Some(None)), "split at {split}");
        }

        // An error line ends the stream with its status and code.
        let mut r = reader();
        let line = "{\"status\":409,\"error\":\"gap\",\"message\":\"m\"}\n";
        r.buf.extend_from_slice(
            format!(
                "14\r\n{{\"durable_lsn\":100}}\n\r\n{:x}\r\n{line}\r\n",
                line.len()
            )
            .as_bytes(),
        );
        assert!(r.decode());
        let failure = r.state.ended.clone().unwrap().unwrap();
        assert_eq!(
            (failure.status, failure.body.error.as_str()),
            (Some(StatusCode::CONFLICT), "gap")
        );
        assert_eq!(r.state.durable_lsn, Some(100));

        // Garbage framing is a failure, not a hang.
        let mut r = reader();
        r.buf.extend_from_slice(b"zz\r\n");
        r.decode();
        assert_eq!(r.state.ended.unwrap().unwrap().body.error, "bad_ack");
    }

    #[test]
    fn acks_round_trip_as_json_lines() {
        let ok = serde_json::to_string(&StreamAck::Durable { durable_lsn: 42 }).unwrap();
        assert_eq!(ok, r#"{"durable_lsn":42}"#);
        let failed: StreamAck =
            serde_json::from_str(r#"{"status":409,"error":"gap","message":"m"}"#).unwrap();
        assert!(matches!(failed, StreamAck::Failed { status: 409, .. }));
    }
}
