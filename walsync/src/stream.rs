//! The append stream (`POST /v1/timelines/{tl}/wal/stream`): WAL frames in on the request body,
//! one durable-LSN ack line per frame out on the answer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use ibd_api::walsync::{FrameDecoder, FrameError, StreamAck};
use tokio::sync::oneshot;

use crate::error::WalError;
use crate::timeline::Timeline;

/// Frames of one stream submitted to the writer and not yet acknowledged, at most. Past it the
/// request body is not read, so TCP pushes back on the client.
const STREAM_WINDOW: usize = 1024;

/// One append stream, driven entirely by the connection polling the answer's body: it reads frames
/// from the request body, submits them to the timeline's writer, and yields an ack line per frame
/// in order (the lines ready together as one chunk). No task in between: a reply from the writer
/// wakes the connection, which writes the ack. Ends after the first refusal, or once the request
/// body ended and every frame is acknowledged.
pub struct AppendStream {
    tl: Arc<Timeline>,
    term: u64,
    request: Incoming,
    request_done: bool,
    decoder: FrameDecoder,
    waiting: VecDeque<oneshot::Receiver<Result<u64, WalError>>>,
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
            waiting: VecDeque::new(),
            refusal: None,
            finished: false,
        }
    }

    /// Submits every complete frame, reading more of the request while the window allows.
    fn take_frames(&mut self, cx: &mut Context<'_>) {
        while self.refusal.is_none() && self.waiting.len() < STREAM_WINDOW {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    match self.tl.submit_append(self.term, frame.start_lsn, frame.data) {
                        Ok(reply) => self.waiting.push_back(reply),
                        Err(e) => self.refusal = Some(e),
                    }
                    continue;
                }
                Err(e @ FrameError::CrcMismatch { .. }) => {
                    self.refusal = Some(WalError::CrcMismatch(e.to_string()));
                    return;
                }
                Err(e @ FrameError::BadLength { .. }) => {
                    self.refusal = Some(WalError::BadRequest(e.to_string()));
                    return;
                }
                Ok(None) if self.request_done => return,
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
                    if self.decoder.buffered() > 0 {
                        let message = format!(
                            "stream ended inside a frame ({} bytes buffered)",
                            self.decoder.buffered()
                        );
                        self.refusal = Some(WalError::BadRequest(message));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // The client went away: nothing to answer to.
                    tracing::debug!(timeline = self.tl.id(), error = %e, "append stream request ended");
                    self.request_done = true;
                    self.finished = true;
                    return;
                }
                Poll::Pending => return,
            }
        }
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
        let mut lines = Vec::new();
        while !this.finished {
            this.take_frames(cx);
            let Some(reply) = this.waiting.front_mut() else {
                if let Some(e) = this.refusal.take() {
                    push_line(&mut lines, &stream_error(&e));
                    this.finished = true;
                } else if this.request_done {
                    this.finished = true;
                }
                break;
            };
            let ack = match Pin::new(reply).poll(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Ok(durable_lsn))) => StreamAck::Durable { durable_lsn },
                Poll::Ready(Ok(Err(e))) => stream_error(&e),
                Poll::Ready(Err(_)) => {
                    stream_error(&WalError::Failed("the timeline's writer has stopped".into()))
                }
            };
            this.waiting.pop_front();
            this.finished = matches!(ack, StreamAck::Failed { .. });
            push_line(&mut lines, &ack);
        }
        if !lines.is_empty() {
            Poll::Ready(Some(Ok(Frame::data(lines.into()))))
        } else if this.finished {
            Poll::Ready(None)
        } else {
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
