//! The append stream (`POST /v1/timelines/{tl}/wal/stream`): WAL frames in on the request body,
//! one durable-LSN ack line per frame out on the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use ibd_api::walsync::{FrameDecoder, FrameError, StreamAck, WalFrame};

use crate::error::WalError;
use crate::timeline::Timeline;

/// Frames applied with one group commit, at most; more wait for the next. The bytes bound memory
/// per stream (with at most one partial frame, up to 16 MiB, in the decoder): a batch much larger
/// than what arrives during one fdatasync buys nothing.
const MAX_BATCH_FRAMES: usize = 1024;
const MAX_BATCH_BYTES: usize = 4 << 20;
/// See `poll_frame`.
const IDLE_POLLS_BEFORE_COMMIT: u32 = 2;

/// One append stream, driven entirely by the connection's own thread polling the answer's body:
/// it takes every frame that has arrived, appends them with one group commit (blocking this
/// thread, which serves only this connection), and yields their ack lines as one chunk. Meanwhile
/// the next frames wait in the socket: TCP pushes back on a client that runs ahead. Ends after the
/// first refusal, or once the request body ended and every frame is acknowledged.
pub struct AppendStream {
    tl: Arc<Timeline>,
    term: u64,
    request: Incoming,
    request_done: bool,
    decoder: FrameDecoder,
    /// Frames taken for the next group commit.
    batch: Vec<WalFrame>,
    batch_bytes: usize,
    /// Polls in a row that brought no frame while a batch was waiting.
    idle_polls: u32,
    /// Why the stream stops taking frames; sent after the acks of the frames before it.
    refusal: Option<WalError>,
    finished: bool,
}

impl AppendStream {
    pub fn new(tl: Arc<Timeline>, term: u64, request: Incoming) -> Self {
        Self {
            tl,
            term,
            request,
            request_done: false,
            decoder: FrameDecoder::default(),
            batch: Vec::new(),
            batch_bytes: 0,
            idle_polls: 0,
            refusal: None,
            finished: false,
        }
    }

    fn batch_full(&self) -> bool {
        self.batch.len() >= MAX_BATCH_FRAMES || self.batch_bytes >= MAX_BATCH_BYTES
    }

    /// Adds the complete frames that have arrived to the batch (reading the request until it has
    /// no more ready, or the batch is full); tells whether it added any.
    fn take_frames(&mut self, cx: &mut Context<'_>) -> bool {
        let before = self.batch.len();
        while self.refusal.is_none() && !self.batch_full() {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.batch_bytes += frame.data.len();
                    self.batch.push(frame);
                    continue;
                }
                Err(e @ FrameError::CrcMismatch { .. }) => {
                    self.refusal = Some(WalError::CrcMismatch(e.to_string()));
                    break;
                }
                Err(e @ FrameError::BadLength { .. }) => {
                    self.refusal = Some(WalError::BadRequest(e.to_string()));
                    break;
                }
                Ok(None) if self.request_done => break,
                Ok(None) => {}
            }
            match Pin::new(&mut self.request).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Poll::Ready(None) => {
                    self.request_done = true;
                    // Complete frames were taken before polling: what is left is a partial one.
                    if self.decoder.buffered() > 0 {
                        let message = format!(
                            "stream ended inside a frame ({} bytes buffered)",
                            self.decoder.buffered()
                        );
                        self.refusal = Some(WalError::BadRequest(message));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // The client went away: nothing to answer to, and nothing more to append.
                    tracing::debug!(timeline = self.tl.id(), error = %e, "append stream request ended");
                    self.request_done = true;
                    self.finished = true;
                    self.batch.clear();
                    break;
                }
                Poll::Pending => break,
            }
        }
        self.batch.len() > before
    }
}

impl Body for AppendStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.take_frames(cx) {
            this.idle_polls = 0;
        } else if !this.batch.is_empty() {
            this.idle_polls += 1;
        }
        let more_may_come = !this.request_done && this.refusal.is_none() && !this.batch_full();
        if !this.batch.is_empty() && more_may_come && this.idle_polls < IDLE_POLLS_BEFORE_COMMIT {
            // hyper hands the request over one chunk (one frame, from our client) per round of
            // its connection task, and polls this body twice a round: what it has already read
            // is all taken once two polls in a row bring nothing. Come straight back until then.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut lines = Vec::new();
        if !this.batch.is_empty() {
            this.idle_polls = 0;
            let frames = std::mem::take(&mut this.batch);
            this.batch_bytes = 0;
            let outcome = this.tl.append_batch(this.term, &frames);
            match outcome.durable {
                Some(Ok(durable_lsn)) => {
                    for _ in 0..outcome.accepted {
                        push_line(&mut lines, &StreamAck::Durable { durable_lsn });
                    }
                }
                Some(Err(e)) => {
                    push_line(&mut lines, &stream_error(&e));
                    this.finished = true;
                }
                None => {}
            }
            if let Some(e) = outcome.refused.filter(|_| !this.finished) {
                push_line(&mut lines, &stream_error(&e));
                this.finished = true;
            }
        }
        if !this.finished {
            if let Some(e) = this.refusal.take() {
                push_line(&mut lines, &stream_error(&e));
                this.finished = true;
            } else if this.request_done && this.decoder.buffered() == 0 {
                this.finished = true;
            }
        }
        if !lines.is_empty() {
            Poll::Ready(Some(Ok(Frame::data(lines.into()))))
        } else if this.finished {
            Poll::Ready(None)
        } else {
            // `take_frames` read the request until it was pending: its waker is registered.
            Poll::Pending
        }
    }
}

fn push_line(lines: &mut Vec<u8>, ack: &StreamAck) {
    serde_json::to_writer(&mut *lines, ack).expect("acks always serialize");
    lines.push(b'\n');
}

fn stream_error(e: &WalError) -> StreamAck {
    StreamAck::Failed {
        status: e.http_status(),
        error: e.code().to_string(),
        message: e.to_string(),
    }
}
