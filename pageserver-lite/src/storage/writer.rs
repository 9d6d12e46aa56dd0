//! The single writer: validates, appends, `fdatasync`s, publishes, answers.
//!
//! Every change goes through this one thread, so term checks, sequence numbers and namespace
//! changes need no further locking. Page uploads that arrive while a sync is under way are gathered
//! and share the next one (group commit). A namespace or timeline change first commits the pages
//! gathered before it, so it sees (and a checkpoint marker covers) everything acknowledged earlier.
//! Nothing is visible to readers before it is durable.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{mpsc, Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ibd_api::pageserver::{
    AcquireTermRequest, CheckpointMarker, CreateFileRequest, CreateTimelineRequest, FileInfo, FileKind,
    PageUpload, PutPagesResponse, ReadAt, RecordMarkerRequest, TermInfo, TimelineInfo, UpdateFileRequest,
    BLOCK_SIZE,
};
use tokio::sync::oneshot;

use super::compaction::MaintenanceReport;
use super::index::{Location, PageKey, PageVersion};
use super::record::{BatchEncoder, MetaRecord, PageMeta};
use super::{segment, State, StoreConfig, StoreError};
use crate::metrics::StoreMetrics;
use crate::namespace::{file_info, FileState, FileVersion};
use crate::timeline::Timeline;

/// Largest writer term a timeline accepts (see `AcquireTerm`).
pub const MAX_TERM: u64 = i64::MAX as u64;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

// Page files hold InnoDB pages: one block of the protocol is one page.
const _: () = assert!(BLOCK_SIZE == ibd_format::page::PAGE_SIZE);

/// A group commit is cut at this size so a flood of uploads still gets answered steadily.
const MAX_GROUP_BYTES: usize = 32 << 20;

pub(crate) enum WriteOp {
    PutPages {
        timeline: String,
        term: u64,
        pages: Vec<PageUpload>,
        reply: Reply<PutPagesResponse>,
    },
    Control {
        op: ControlOp,
        reply: Reply<ControlOutcome>,
    },
    Maintain {
        reply: Reply<MaintenanceReport>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

#[derive(Debug)]
pub(crate) enum ControlOp {
    CreateTimeline(CreateTimelineRequest),
    AcquireTerm(String, AcquireTermRequest),
    CreateFile(String, CreateFileRequest),
    UpdateFile(String, u64, UpdateFileRequest),
    UnlinkFile(String, u64, u64),
    RecordMarker(String, RecordMarkerRequest),
}

#[derive(Debug)]
pub(crate) enum ControlOutcome {
    Timeline(TimelineInfo),
    Term(TermInfo),
    File(FileInfo),
    Unlinked(u64),
    Marker(CheckpointMarker),
}

/// The segment appended to.
pub(crate) struct ActiveSegment {
    pub id: u64,
    pub file: Arc<File>,
    pub len: u64,
}

/// Uploads gathered for one group commit. Locations are relative to `buf` until committed.
#[derive(Default)]
struct Staged {
    buf: Vec<u8>,
    pages: Vec<(PageKey, PageVersion)>,
    replies: Vec<(Reply<PutPagesResponse>, PutPagesResponse)>,
    next_seq: HashMap<u32, u64>,
}

pub(crate) struct Writer {
    pub(super) state: Arc<RwLock<State>>,
    pub(super) metrics: StoreMetrics,
    pub(super) config: StoreConfig,
    pub(super) active: ActiveSegment,
    /// Set once a write or sync failed: after a failed fsync the file's state is unknown, so the
    /// store refuses further writes rather than acknowledge on top of it.
    failed: Option<String>,
    /// Something changed since the last index snapshot.
    pub(super) dirty: bool,
    next_maintenance: Option<Instant>,
    next_snapshot: Option<Instant>,
}

impl Writer {
    pub fn new(
        state: Arc<RwLock<State>>,
        metrics: StoreMetrics,
        config: StoreConfig,
        active: ActiveSegment,
    ) -> Self {
        let now = Instant::now();
        Self {
            next_maintenance: config.maintenance_interval.map(|i| now + i),
            next_snapshot: config.snapshot_interval.map(|i| now + i),
            state,
            metrics,
            config,
            active,
            failed: None,
            dirty: false,
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        loop {
            let due = [self.next_maintenance, self.next_snapshot]
                .into_iter()
                .flatten()
                .min();
            let first = match due {
                Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => break,
                },
            };
            if let Some(op) = first {
                if !self.handle(op, &rx) {
                    return;
                }
            }
            self.run_background_work();
        }
        // Every handle is gone without a shutdown: like a crash, the next start replays the log.
    }

    /// Handles `first` and whatever else is queued; false once shut down.
    fn handle(&mut self, first: WriteOp, rx: &mpsc::Receiver<WriteOp>) -> bool {
        let mut staged = Staged::default();
        let mut requests = 0;
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                WriteOp::PutPages {
                    timeline,
                    term,
                    pages,
                    reply,
                } => {
                    requests += 1;
                    match self.stage(&mut staged, &timeline, term, &pages) {
                        Ok(answer) => staged.replies.push((reply, answer)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                WriteOp::Control { op, reply } => {
                    self.commit(&mut staged, &mut requests);
                    let _ = reply.send(self.control(op));
                }
                WriteOp::Maintain { reply } => {
                    self.commit(&mut staged, &mut requests);
                    let _ = reply.send(self.maintain());
                }
                WriteOp::Shutdown { reply } => {
                    self.commit(&mut staged, &mut requests);
                    self.snapshot_logged();
                    let _ = reply.send(());
                    return false;
                }
            }
            if staged.buf.len() >= MAX_GROUP_BYTES {
                self.commit(&mut staged, &mut requests);
            }
            // A steady stream of requests must not starve GC, compaction and snapshots.
            if self.background_due() {
                break;
            }
            next = rx.try_recv().ok();
        }
        self.commit(&mut staged, &mut requests);
        true
    }

    fn background_due(&self) -> bool {
        let now = Instant::now();
        [self.next_maintenance, self.next_snapshot]
            .into_iter()
            .flatten()
            .any(|t| t <= now)
    }

    fn run_background_work(&mut self) {
        let now = Instant::now();
        if self.next_maintenance.is_some_and(|t| t <= now) {
            if let Err(e) = self.maintain() {
                tracing::error!(error = %e, "background maintenance failed");
            }
            self.next_maintenance = self.config.maintenance_interval.map(|i| Instant::now() + i);
        }
        if self.next_snapshot.is_some_and(|t| t <= now) {
            if self.dirty {
                self.snapshot_logged();
            }
            self.next_snapshot = self.config.snapshot_interval.map(|i| Instant::now() + i);
        }
    }

    fn snapshot_logged(&mut self) {
        if let Err(e) = self.write_snapshot() {
            tracing::error!(error = %e, "cannot write the index snapshot; start-up will replay more");
        }
    }

    pub(super) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    fn check_term(&self, tl: &Timeline, term: u64) -> Result<(), StoreError> {
        let current = tl.term;
        if term == current {
            return Ok(());
        }
        self.metrics.stale_term_refusals.inc();
        Err(if term < current {
            StoreError::StaleTerm { given: term, current }
        } else {
            StoreError::UnknownTerm { given: term, current }
        })
    }

    /// Validates one upload and adds it to the group; refuses it whole if any page is invalid.
    fn stage(
        &mut self,
        staged: &mut Staged,
        timeline: &str,
        term: u64,
        pages: &[PageUpload],
    ) -> Result<PutPagesResponse, StoreError> {
        self.check_writable()?;
        let (num, last_seq, kinds) = {
            let state = self.read_state();
            let num = state.timeline_num(timeline)?;
            let tl = state.timelines.get(num).expect("numbered timeline exists");
            self.check_term(tl, term)?;
            let ancestry = state.timelines.ancestry(num, ReadAt::Latest);
            let mut kinds = Vec::with_capacity(pages.len());
            for p in pages {
                let (_, file) = state
                    .timelines
                    .file_at(&ancestry, p.file)
                    .ok_or_else(|| StoreError::FileNotFound(format!("file {}", p.file)))?;
                check_block(file, p)?;
                kinds.push(file.kind);
            }
            (num, tl.last_seq, kinds)
        };
        let next_seq = staged.next_seq.entry(num).or_insert(last_seq);
        let first_seq = *next_seq + 1;
        let written_at_ms = now_ms();
        // One batch per upload: after a crash it is all there or not at all.
        let mut batch = BatchEncoder::new(&mut staged.buf);
        let mut versions = Vec::with_capacity(pages.len());
        for (p, kind) in pages.iter().zip(kinds) {
            *next_seq += 1;
            let mut lsn = p.lsn;
            if kind == FileKind::Page {
                self.count_innodb_checksum(p);
                // A page file's LSN is in its header: a client may leave it to the server.
                if lsn == 0 {
                    lsn = ibd_format::page::page_lsn(&p.image);
                }
            }
            let meta = PageMeta {
                timeline: num,
                file: p.file,
                block: p.block,
                seq: *next_seq,
                lsn,
                written_at_ms,
            };
            batch.page(&meta, &p.image, p.crc32c);
            let key = PageKey {
                timeline: num,
                file: p.file,
                block: p.block,
            };
            versions.push((
                key,
                PageVersion {
                    seq: meta.seq,
                    lsn,
                    crc32c: p.crc32c,
                    image_len: p.image.len() as u32,
                    written_at_ms,
                    location: Location {
                        segment: 0,
                        offset: 0,
                        len: 0,
                    },
                    damaged: false,
                },
            ));
        }
        for ((key, mut version), (offset, len)) in versions.into_iter().zip(batch.finish()) {
            version.location.offset = offset;
            version.location.len = len;
            staged.pages.push((key, version));
        }
        let count = pages.len() as u64;
        Ok(PutPagesResponse {
            count,
            first_seq: if count == 0 { 0 } else { first_seq },
            last_seq: if count == 0 { 0 } else { *next_seq },
        })
    }

    /// InnoDB decides what a bad InnoDB checksum means (DESIGN.md invariant 5): count, log, store.
    fn count_innodb_checksum(&self, page: &PageUpload) {
        if let Err(e) = ibd_format::page::verify_checksum(&page.image) {
            self.metrics.innodb_checksum_failures.inc();
            tracing::warn!(file = page.file, block = page.block, error = %e, "uploaded page fails its InnoDB checksum; stored as written");
        }
    }

    /// Makes the staged uploads durable with one sync, publishes them, answers them.
    fn commit(&mut self, staged: &mut Staged, requests: &mut u64) {
        let staged = std::mem::take(staged);
        if *requests > 0 {
            self.metrics.group_commit_requests.observe(*requests as f64);
            *requests = 0;
        }
        if staged.replies.is_empty() {
            return;
        }
        let (segment, base) = match self.append(&staged.buf) {
            Ok(at) => at,
            Err(e) => {
                for (reply, _) in staged.replies {
                    let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
                }
                return;
            }
        };
        {
            let mut state = self.write_state();
            for (key, mut version) in staged.pages {
                version.location.segment = segment;
                version.location.offset += base;
                state.apply_page(key, version);
            }
            state.publish_gauges(&self.metrics);
        }
        let pages: u64 = staged.replies.iter().map(|(_, r)| r.count).sum();
        self.metrics.pages_written.inc_by(pages);
        self.metrics.page_bytes_written.inc_by(staged.buf.len() as u64);
        for (reply, answer) in staged.replies {
            let _ = reply.send(Ok(answer));
        }
    }

    /// Appends `buf` durably to the active segment (starting a new one when it is full). Returns
    /// the segment and the offset `buf` starts at. A failure marks the store failed.
    pub(super) fn append(&mut self, buf: &[u8]) -> Result<(u64, u64), StoreError> {
        self.check_writable()?;
        let result = self.roll_if_full().and_then(|()| {
            let started = Instant::now();
            let failed = || StoreError::io(format!("cannot write segment {}", self.active.id));
            segment::append_durable(&self.active.file, self.active.len, buf).map_err(failed())?;
            if let Some(hook) = &self.config.sync_hook {
                hook.synced(self.active.id, self.active.len + buf.len() as u64)
                    .map_err(failed())?;
            }
            self.metrics
                .fsync_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "write failed; refusing further writes until restart");
            self.failed = Some(e.to_string());
            return Err(e);
        }
        let at = (self.active.id, self.active.len);
        self.active.len += buf.len() as u64;
        let len = self.active.len;
        self.write_state()
            .segments
            .get_mut(at.0)
            .expect("active segment is registered")
            .len = len;
        self.dirty = true;
        Ok(at)
    }

    fn roll_if_full(&mut self) -> Result<(), StoreError> {
        if self.active.len < self.config.segment_size {
            return Ok(());
        }
        let dir = self.config.segment_dir();
        let id = self.read_state().segments.next_id();
        let file = Arc::new(
            segment::create(&dir, id).map_err(StoreError::io(format!("cannot create segment {id}")))?,
        );
        self.write_state().segments.insert(id, file.clone());
        self.active = ActiveSegment { id, file, len: 0 };
        tracing::debug!(segment = id, "started a new segment");
        Ok(())
    }

    /// Writes metadata records durably and applies them.
    pub(super) fn commit_meta(&mut self, records: &[MetaRecord]) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut batch = BatchEncoder::new(&mut buf);
        for r in records {
            batch.meta(r);
        }
        let placed = batch.finish();
        let (segment, base) = self.append(&buf)?;
        let mut state = self.write_state();
        for (r, (offset, len)) in records.iter().zip(placed) {
            let at = Location {
                segment,
                offset: base + offset,
                len,
            };
            state.apply_meta(r, at);
        }
        state.publish_gauges(&self.metrics);
        Ok(())
    }

    fn commit_file_version(
        &mut self,
        timeline: u32,
        file: u64,
        seq: u64,
        state: Option<FileState>,
        truncated_to: Option<u64>,
    ) -> Result<(), StoreError> {
        let version = FileVersion {
            seq,
            state,
            truncated_to,
            at_ms: now_ms(),
        };
        self.commit_meta(&[MetaRecord::FileVersion {
            timeline,
            file,
            version,
        }])
    }

    fn control(&mut self, op: ControlOp) -> Result<ControlOutcome, StoreError> {
        self.check_writable()?;
        match op {
            ControlOp::CreateTimeline(req) => self.create_timeline(req),
            ControlOp::AcquireTerm(timeline, req) => {
                let (num, current) = {
                    let state = self.read_state();
                    let num = state.timeline_num(&timeline)?;
                    (num, state.timelines.get(num).expect("exists").term)
                };
                // Terms are u64 but must always leave room for a successor: a client could
                // otherwise wedge a timeline (or overflow `current + 1`) with `u64::MAX`.
                let term = match req.term {
                    Some(t) if t > MAX_TERM => {
                        return Err(StoreError::BadRequest(format!(
                            "term {t} is above the largest allowed term {MAX_TERM}"
                        )));
                    }
                    Some(t) => t,
                    None if current >= MAX_TERM => {
                        return Err(StoreError::BadRequest(format!(
                            "timeline {timeline:?} has used up its terms"
                        )));
                    }
                    None => current + 1,
                };
                if term < current {
                    self.metrics.stale_term_refusals.inc();
                    return Err(StoreError::StaleTerm { given: term, current });
                }
                if term == current {
                    // A resend whose answer was lost (terms are handed out uniquely upstream).
                    return Ok(ControlOutcome::Term(TermInfo { term }));
                }
                self.commit_meta(&[MetaRecord::TermAcquired { timeline: num, term }])?;
                Ok(ControlOutcome::Term(TermInfo { term }))
            }
            ControlOp::CreateFile(timeline, req) => {
                let state = FileState {
                    path: req.path,
                    kind: req.kind,
                    size: req.size,
                    space_id: req.space_id,
                };
                check_path(&state.path)?;
                let (num, seq, file) = {
                    let s = self.read_state();
                    let (num, tl) = self.writable_timeline(&s, &timeline, req.term)?;
                    if let Some(other) = tl.paths.get(&state.path) {
                        return Err(StoreError::PathExists {
                            timeline,
                            path: state.path,
                            file: other,
                        });
                    }
                    (num, tl.last_seq + 1, s.next_file_id.max(1))
                };
                self.commit_file_version(num, file, seq, Some(state.clone()), None)?;
                Ok(ControlOutcome::File(file_info(file, seq, &state)))
            }
            ControlOp::UpdateFile(timeline, file, req) => {
                let (num, seq, old) = self.current_file(&timeline, file, req.term)?;
                let mut new = old.clone();
                let mut replaced = None;
                if let Some(path) = req.path {
                    check_path(&path)?;
                    let s = self.read_state();
                    let taken_by = s.timelines.get(num).and_then(|tl| tl.paths.get(&path));
                    match taken_by {
                        Some(other) if other != file && req.replace => replaced = Some(other),
                        Some(other) if other != file => {
                            return Err(StoreError::PathExists {
                                timeline,
                                path,
                                file: other,
                            });
                        }
                        _ => {}
                    }
                    new.path = path;
                } else if req.replace {
                    return Err(StoreError::BadRequest(
                        "\"replace\" is about a rename: give \"path\" too".into(),
                    ));
                }
                if let Some(size) = req.size {
                    new.size = size;
                }
                if let Some(space) = req.space_id {
                    if new.kind != FileKind::Page {
                        return Err(StoreError::BadRequest(format!(
                            "file {file} is a {:?} file; only page files have a space id",
                            new.kind
                        )));
                    }
                    new.space_id = Some(space);
                }
                let truncated_to = (new.size < old.size).then_some(new.size);
                let version = FileVersion {
                    seq,
                    state: Some(new.clone()),
                    truncated_to,
                    at_ms: now_ms(),
                };
                let record = match replaced {
                    // One record: the target's unlink and the rename are durable together.
                    Some(replaced) => MetaRecord::RenameReplace {
                        timeline: num,
                        file,
                        version,
                        replaced,
                    },
                    None => MetaRecord::FileVersion {
                        timeline: num,
                        file,
                        version,
                    },
                };
                self.commit_meta(&[record])?;
                Ok(ControlOutcome::File(file_info(file, seq, &new)))
            }
            ControlOp::UnlinkFile(timeline, file, term) => {
                let (num, seq, _) = self.current_file(&timeline, file, term)?;
                self.commit_file_version(num, file, seq, None, None)?;
                Ok(ControlOutcome::Unlinked(seq))
            }
            ControlOp::RecordMarker(timeline, req) => {
                let (num, last_seq) = {
                    let s = self.read_state();
                    let (num, tl) = self.writable_timeline(&s, &timeline, req.term)?;
                    (num, tl.last_seq)
                };
                let page_store_seq = req.page_store_seq.unwrap_or(last_seq);
                if page_store_seq > last_seq {
                    return Err(StoreError::BadRequest(format!(
                        "page_store_seq {page_store_seq} is beyond the newest durable seq {last_seq}"
                    )));
                }
                let marker = CheckpointMarker {
                    checkpoint_lsn: req.checkpoint_lsn,
                    checkpoint_end_lsn: req.checkpoint_end_lsn,
                    log_end_lsn_at_write: req.log_end_lsn_at_write,
                    page_store_seq,
                };
                self.commit_meta(&[MetaRecord::Marker {
                    timeline: num,
                    marker,
                }])?;
                Ok(ControlOutcome::Marker(marker))
            }
        }
    }

    fn writable_timeline<'s>(
        &self,
        s: &'s State,
        timeline: &str,
        term: u64,
    ) -> Result<(u32, &'s Timeline), StoreError> {
        let num = s.timeline_num(timeline)?;
        let tl = s.timelines.get(num).expect("numbered timeline exists");
        self.check_term(tl, term)?;
        Ok((num, tl))
    }

    /// A live file of a writable timeline: (timeline, seq of the change to make, current state).
    fn current_file(
        &self,
        timeline: &str,
        file: u64,
        term: u64,
    ) -> Result<(u32, u64, FileState), StoreError> {
        let s = self.read_state();
        let (num, tl) = self.writable_timeline(&s, timeline, term)?;
        let ancestry = s.timelines.ancestry(num, ReadAt::Latest);
        let (_, state) = s
            .timelines
            .file_at(&ancestry, file)
            .ok_or_else(|| StoreError::FileNotFound(format!("file {file}")))?;
        Ok((num, tl.last_seq + 1, state.clone()))
    }

    fn create_timeline(&mut self, req: CreateTimelineRequest) -> Result<ControlOutcome, StoreError> {
        let valid_id = !req.id.is_empty()
            && req.id.len() <= 64
            && req
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid_id {
            return Err(StoreError::BadRequest(format!(
                "timeline id {:?} must be 1-64 characters of [A-Za-z0-9_.-]",
                req.id
            )));
        }
        let record = {
            let s = self.read_state();
            let parent = match &req.parent {
                None if req.branch_seq.is_some() || req.branch_lsn.is_some() => {
                    return Err(StoreError::BadRequest(
                        "branch_seq/branch_lsn need a parent".into(),
                    ));
                }
                None => None,
                Some(p) => Some(s.timeline_num(p)?),
            };
            let branch_seq = match (parent, req.branch_seq, req.branch_lsn) {
                (None, ..) => 0,
                (Some(_), Some(_), Some(_)) => {
                    return Err(StoreError::BadRequest(
                        "give branch_seq or branch_lsn, not both".into(),
                    ));
                }
                (Some(p), Some(seq), None) => {
                    let last = s.timelines.get(p).expect("exists").last_seq;
                    if seq > last {
                        return Err(StoreError::BadRequest(format!(
                            "branch_seq {seq} is beyond the parent's newest seq {last}"
                        )));
                    }
                    seq
                }
                (Some(p), None, Some(lsn)) => {
                    s.timelines
                        .marker_for_lsn(p, lsn)
                        .ok_or_else(|| StoreError::NoMarker {
                            timeline: req.parent.clone().unwrap_or_default(),
                            lsn,
                        })?
                        .page_store_seq
                }
                (Some(p), None, None) => s.timelines.get(p).expect("exists").last_seq,
            };
            if let Some(existing) = s.timelines.by_id(&req.id) {
                // An exact resend (its answer lost) succeeds again; anything else is a conflict.
                let same = existing.parent == parent
                    && existing.branch_lsn == req.branch_lsn
                    && (req.branch_seq.is_none() || existing.branch_seq == branch_seq);
                return if same {
                    Ok(ControlOutcome::Timeline(s.timelines.info(existing)))
                } else {
                    Err(StoreError::TimelineExists(req.id))
                };
            }
            if let Some(p) = parent {
                // The branch reads its ancestors at branch_seq forever: GC must not have been there.
                let ancestry = s.timelines.ancestry(p, ReadAt::Seq(branch_seq));
                s.timelines
                    .check_gc_horizon(&ancestry)
                    .map_err(|below| StoreError::BelowGcHorizon {
                        what: format!("cannot create branch {:?} at seq {branch_seq}", req.id),
                        below,
                    })?;
            }
            MetaRecord::TimelineCreated {
                num: s.timelines.next_num(),
                id: req.id.clone(),
                parent,
                branch_seq,
                branch_lsn: req.branch_lsn,
            }
        };
        self.commit_meta(&[record])?;
        let s = self.read_state();
        let tl = s.timelines.by_id(&req.id).expect("just created");
        Ok(ControlOutcome::Timeline(s.timelines.info(tl)))
    }
}

fn check_block(file: &FileState, page: &PageUpload) -> Result<(), StoreError> {
    let bad = |why: String| {
        Err(StoreError::BadRequest(format!(
            "file {} block {}: {why}",
            page.file, page.block
        )))
    };
    if page.block > u64::MAX / BLOCK_SIZE as u64 - 1 {
        return bad("block number out of range".into());
    }
    match file.kind {
        FileKind::Page if page.image.len() != BLOCK_SIZE => bad(format!(
            "a page file takes whole {BLOCK_SIZE}-byte pages, got {} bytes",
            page.image.len()
        )),
        FileKind::Redo | FileKind::Scratch => bad(format!("{:?} files hold no blocks here", file.kind)),
        _ => Ok(()),
    }
}

fn check_path(path: &str) -> Result<(), StoreError> {
    if path.is_empty() || path.contains('\0') {
        return Err(StoreError::BadRequest(format!("invalid path {path:?}")));
    }
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
